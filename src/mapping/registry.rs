//! Publishing mapping sets: readers take the current one, a reload swaps in a whole new one.

use std::sync::{Arc, RwLock};

use super::MappingSet;

/// The currently published mapping set; readers take a snapshot, reloads swap the whole set.
#[derive(Debug)]
pub struct MappingRegistry {
    current: RwLock<Arc<MappingSet>>,
}

impl MappingRegistry {
    pub fn new(set: MappingSet) -> Self {
        MappingRegistry { current: RwLock::new(Arc::new(set)) }
    }

    pub fn snapshot(&self) -> Arc<MappingSet> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn publish(&self, set: MappingSet) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }
}
