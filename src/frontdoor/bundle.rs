//! Bundles the front door answers with: searchset pages and history.

use serde_json::{Value, json};

use super::{OrgCtx, version_of};

/// A searchset page: `links` (self, next), the entries as matches, and the total when the EHR gave one.
pub(super) fn searchset(o: &OrgCtx, links: Vec<Value>, entries: Vec<Value>, total: Option<u64>) -> Value {
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            json!({"fullUrl": format!("{}/Media/{id}", o.fhir_base), "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    let mut bundle = json!({"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries});
    if let Some(total) = total {
        bundle["total"] = json!(total);
    }
    if bundle["entry"].as_array().is_some_and(Vec::is_empty) {
        bundle.as_object_mut().map(|b| b.remove("entry"));
    }
    bundle
}

pub(super) fn history(o: &OrgCtx, resources: &[Value], total: usize) -> Value {
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
            json!({
                "fullUrl": format!("{}/Media/{id}", o.fhir_base),
                "resource": r,
                "request": {"method": "POST", "url": "Media"},
                "response": {"status": "201 Created", "etag": format!("W/\"{}\"", version_of(r))},
            })
        })
        .collect();
    let mut bundle = json!({"resourceType": "Bundle", "type": "history", "total": total, "entry": entries});
    if resources.is_empty() {
        bundle.as_object_mut().map(|b| b.remove("entry"));
    }
    bundle
}
