//! The gateway's own bounded record of the Media written through it, per organization, which answers
//! type history until a version store exists. It keeps a summary of each Media (ids, status, references
//! and content metadata; never notes, extensions or bytes), bounded by count and by bytes, so nothing
//! large outlives the request that wrote it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

/// Most Media remembered per organization.
const CREATED_LOG_LIMIT: usize = 1000;
/// Most bytes of summaries remembered per organization.
const CREATED_LOG_BYTES: usize = 1024 * 1024;
/// Longest text kept in a summary (a title); longer ones are cut.
const SUMMARY_TEXT_CHARS: usize = 200;

/// Elements a summary keeps; the rest (notes, extensions, contained pages, data) is left out.
const SUMMARY_ELEMENTS: &[&str] =
    &["resourceType", "id", "meta", "status", "subject", "encounter", "operator", "partOf", "createdDateTime"];
const SUMMARY_CONTENT: &[&str] = &["contentType", "url", "size", "title", "creation"];

/// The FHIR tag for a resource that leaves out elements (`SUBSETTED`).
fn subsetted_tag() -> Value {
    json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"})
}

/// What the log keeps of a Media, and its size in bytes.
pub fn summary(resource: &Value) -> (Value, usize) {
    let mut out = Map::new();
    let keep = |v: &Value| match v {
        Value::String(s) if s.chars().count() > SUMMARY_TEXT_CHARS => {
            Value::String(s.chars().take(SUMMARY_TEXT_CHARS).collect())
        }
        other => other.clone(),
    };
    if let Some(map) = resource.as_object() {
        for key in SUMMARY_ELEMENTS {
            if let Some(v) = map.get(*key) {
                out.insert((*key).to_string(), keep(v));
            }
        }
        if let Some(content) = map.get("content").and_then(Value::as_object) {
            let kept: Map<String, Value> =
                SUMMARY_CONTENT.iter().filter_map(|k| Some(((*k).to_string(), keep(content.get(*k)?)))).collect();
            out.insert("content".into(), Value::Object(kept));
        }
    }
    let meta = out.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        match meta.get_mut("tag").and_then(Value::as_array_mut) {
            Some(tags) => tags.push(subsetted_tag()),
            None => {
                meta.insert("tag".into(), json!([subsetted_tag()]));
            }
        }
    }
    let summary = Value::Object(out);
    let bytes = serde_json::to_vec(&summary).map_or(0, |v| v.len());
    (summary, bytes)
}

#[derive(Debug, Default)]
struct OrgLog {
    entries: VecDeque<(SystemTime, Value, usize)>,
    bytes: usize,
}

impl OrgLog {
    fn push(&mut self, at: SystemTime, resource: &Value) {
        let (summary, bytes) = summary(resource);
        while !self.entries.is_empty()
            && (self.entries.len() >= CREATED_LOG_LIMIT || self.bytes + bytes > CREATED_LOG_BYTES)
        {
            if let Some((_, _, b)) = self.entries.pop_front() {
                self.bytes -= b;
            }
        }
        self.bytes += bytes;
        self.entries.push_back((at, summary, bytes));
    }

    fn remove(&mut self, id: &str) {
        let mut freed = 0;
        self.entries.retain(|(_, r, b)| {
            let keep = r.get("id").and_then(Value::as_str) != Some(id);
            if !keep {
                freed += b;
            }
            keep
        });
        self.bytes -= freed;
    }
}

/// Media written through this gateway, newest last, per organization, as summaries (bounded).
#[derive(Debug, Default)]
pub struct CreatedLog {
    orgs: Mutex<HashMap<String, OrgLog>>,
}

impl CreatedLog {
    pub fn record(&self, org_id: &str, resource: &Value) {
        let mut orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        orgs.entry(org_id.to_string()).or_default().push(SystemTime::now(), resource);
    }

    /// A Media written again through the gateway: its entry moves to now with the new content.
    pub fn replace(&self, org_id: &str, resource: &Value) {
        let mut orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        let log = orgs.entry(org_id.to_string()).or_default();
        log.remove(resource.get("id").and_then(Value::as_str).unwrap_or_default());
        log.push(SystemTime::now(), resource);
    }

    pub fn remove(&self, org_id: &str, id: &str) {
        let mut orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(log) = orgs.get_mut(org_id) {
            log.remove(id);
        }
    }

    /// Newest first, written at or after `since`.
    pub fn list(&self, org_id: &str, since: Option<SystemTime>) -> Vec<(SystemTime, Value)> {
        let orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        orgs.get(org_id)
            .map(|l| {
                l.entries
                    .iter()
                    .rev()
                    .filter(|(t, _, _)| since.is_none_or(|s| *t >= s))
                    .map(|(t, r, _)| (*t, r.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(id: &str, notes: usize) -> Value {
        json!({
            "resourceType": "Media", "id": id, "status": "completed",
            "subject": {"reference": "Patient/1"},
            "content": {"contentType": "image/jpeg", "url": "http://g/Media/x/$content", "title": "t".repeat(1000), "data": "AAAA"},
            "note": (0..notes).map(|i| json!({"text": format!("note {i}")})).collect::<Vec<_>>(),
            "extension": [{"url": "u", "valueString": "v"}]
        })
    }

    #[test]
    fn summaries_keep_ids_and_metadata_only_and_say_so() {
        let (s, bytes) = summary(&media("m1", 500));
        assert_eq!(s["id"], "m1");
        assert_eq!(s["content"]["contentType"], "image/jpeg");
        assert!(s.get("note").is_none() && s.get("extension").is_none() && s["content"].get("data").is_none());
        assert_eq!(s["content"]["title"].as_str().unwrap().len(), SUMMARY_TEXT_CHARS);
        assert_eq!(s["meta"]["tag"][0]["code"], "SUBSETTED");
        assert!(bytes < 1024, "{bytes}");
    }

    #[test]
    fn the_log_is_bounded_by_count_and_bytes() {
        let log = CreatedLog::default();
        for i in 0..(CREATED_LOG_LIMIT + 10) {
            log.record("org", &media(&format!("m{i}"), 1000));
        }
        let kept = log.list("org", None);
        assert_eq!(kept.len(), CREATED_LOG_LIMIT, "small summaries: the count bounds the log");
        // Large summaries (a long display in a kept reference): the bytes bound it first.
        let big = CreatedLog::default();
        for i in 0..200 {
            let mut m = media(&format!("b{i}"), 0);
            m["subject"]["display"] = json!("x".repeat(20_000));
            big.record("org", &m);
        }
        let kept = big.list("org", None);
        let total: usize = kept.iter().map(|(_, r)| serde_json::to_vec(r).unwrap().len()).sum();
        assert!(total <= CREATED_LOG_BYTES && kept.len() < 60, "{total} bytes in {} entries", kept.len());
        let kept = log.list("org", None);
        assert_eq!(kept[0].1["id"], format!("m{}", CREATED_LOG_LIMIT + 9), "newest first");
        log.remove("org", &format!("m{}", CREATED_LOG_LIMIT + 9));
        assert_ne!(log.list("org", None)[0].1["id"], format!("m{}", CREATED_LOG_LIMIT + 9));
    }
}
