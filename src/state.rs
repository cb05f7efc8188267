//! Shared server state: organizations by id and slug, upstream clients per connection, the published
//! mapping set, and the gateway's own record of the Media it has created (for history until a version
//! store exists).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::Value;

use crate::config::Config;
use crate::mapping::MappingRegistry;
use crate::reload::Reloader;
use crate::upstream::UpstreamClient;

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

/// Media created through this gateway, newest last, per organization (bounded).
#[derive(Debug, Default)]
pub struct CreatedLog {
    entries: Mutex<HashMap<String, VecDeque<(SystemTime, Value)>>>,
}

const CREATED_LOG_LIMIT: usize = 1000;

impl CreatedLog {
    pub fn record(&self, org_id: &str, resource: Value) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(org_id.to_string()).or_default();
        if list.len() >= CREATED_LOG_LIMIT {
            list.pop_front();
        }
        list.push_back((SystemTime::now(), resource));
    }

    /// A Media written again through the gateway: its entry moves to now with the new content.
    pub fn replace(&self, org_id: &str, resource: &Value) {
        self.remove(org_id, resource.get("id").and_then(Value::as_str).unwrap_or_default());
        self.record(org_id, resource.clone());
    }

    pub fn remove(&self, org_id: &str, id: &str) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(org_id) {
            list.retain(|(_, r)| r.get("id").and_then(Value::as_str) != Some(id));
        }
    }

    /// Newest first, created at or after `since`.
    pub fn list(&self, org_id: &str, since: Option<SystemTime>) -> Vec<(SystemTime, Value)> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(org_id)
            .map(|l| l.iter().rev().filter(|(t, _)| since.is_none_or(|s| *t >= s)).cloned().collect())
            .unwrap_or_default()
    }
}

pub struct AppState {
    pub config: Config,
    pub directory: Arc<Directory>,
    pub registry: Arc<MappingRegistry>,
    pub clients: HashMap<String, Arc<UpstreamClient>>,
    pub public_base: String,
    pub created: CreatedLog,
    pub reloader: Arc<Reloader>,
    /// Set when recording replay cassettes.
    pub recorder: Option<Arc<crate::replay::record::Recorder>>,
}

impl AppState {
    /// The FHIR base of an organization as clients see it (by the key they used).
    pub fn fhir_base(&self, org_key: &str) -> String {
        format!("{}/organizations/{org_key}/fhir/4", self.public_base)
    }
}
