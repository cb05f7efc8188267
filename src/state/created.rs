//! The gateway's own bounded record of the Media written through it, per organization, which answers
//! type history until a version store exists.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::Value;

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
