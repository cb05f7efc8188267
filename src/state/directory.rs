//! The configured organizations, found by id or slug; a resolved one travels as a request extension.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;

/// A configured organization, as a request extension after resolution.
#[derive(Debug, Clone)]
pub struct Organization {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub connection: String,
    /// The connection's EHR family (`canvas`, …).
    pub ehr: String,
    pub mapping: String,
}

/// Organizations by id and by slug.
#[derive(Debug, Default)]
pub struct Directory {
    by_key: HashMap<String, Arc<Organization>>,
}

impl Directory {
    pub fn from_config(config: &Config) -> Self {
        let mut by_key = HashMap::new();
        for o in &config.organizations {
            let org = Arc::new(Organization {
                id: o.id.clone(),
                slug: o.slug.clone(),
                name: o.name.clone(),
                connection: o.connection.clone(),
                ehr: config.connections.get(&o.connection).map(|c| c.ehr.clone()).unwrap_or_default(),
                mapping: o.mapping.clone(),
            });
            by_key.insert(o.id.clone(), org.clone());
            by_key.insert(o.slug.clone(), org);
        }
        Directory { by_key }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Organization>> {
        self.by_key.get(key).cloned()
    }

    #[cfg(test)]
    pub fn for_tests(orgs: &[(&str, &str)]) -> Self {
        let mut by_key = HashMap::new();
        for (id, slug) in orgs {
            let org = Arc::new(Organization {
                id: id.to_string(),
                slug: slug.to_string(),
                name: id.to_string(),
                connection: "c".into(),
                ehr: "canvas".into(),
                mapping: "canvas".into(),
            });
            by_key.insert(id.to_string(), org.clone());
            by_key.insert(slug.to_string(), org);
        }
        Directory { by_key }
    }
}
