//! Shared server state: organizations by id and slug, upstream clients per connection, the published
//! mapping set and its reloader, the gateway's own record of the Media it has created (for history until
//! a version store exists), and the cassette recorder when recording.

mod created;
mod directory;
pub mod reload;

use std::collections::HashMap;
use std::sync::Arc;

pub use created::CreatedLog;
pub use directory::{Directory, Organization};

use crate::cassette::recorder::Recorder;
use crate::config::Config;
use crate::mapping::MappingRegistry;
use crate::upstream::UpstreamClient;
use reload::Reloader;

pub struct AppState {
    pub config: Config,
    pub directory: Arc<Directory>,
    pub registry: Arc<MappingRegistry>,
    pub clients: HashMap<String, Arc<UpstreamClient>>,
    pub public_base: String,
    pub created: CreatedLog,
    pub reloader: Arc<Reloader>,
    /// Set when recording replay cassettes.
    pub recorder: Option<Arc<Recorder>>,
}

impl AppState {
    /// The FHIR base of an organization as clients see it (by the key they used).
    pub fn fhir_base(&self, org_key: &str) -> String {
        format!("{}/organizations/{org_key}/fhir/4", self.public_base)
    }
}
