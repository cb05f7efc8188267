//! The CapabilityStatement of an organization, derived from what its mapping declares, so it says what
//! its EHR really supports.

use serde_json::{Value, json};

use super::OrgCtx;
use super::search::SEARCH_PARAMS;
use crate::fhir::primitive::rfc3339;
use crate::mapping::Category;
use crate::state::AppState;

pub(super) fn capability_statement(o: &OrgCtx, state: &AppState) -> Value {
    let set = state.registry.snapshot();
    let m = &o.mapping;
    let supports = |check: &dyn Fn(&Category) -> bool| m.categories.values().any(check);
    let mut interactions = vec![];
    if supports(&|c| c.create.is_some()) {
        interactions.push("create");
    }
    if supports(&|c| c.read.is_some()) {
        // vread and instance history answer from the current version.
        interactions.extend(["read", "vread", "history-instance"]);
    }
    if supports(&|c| c.update.is_some()) {
        interactions.extend(["update", "patch"]);
    }
    if supports(&|c| c.delete.is_some()) {
        interactions.push("delete");
    }
    if supports(&|c| c.search.is_some()) {
        interactions.push("search-type");
    }
    interactions.push("history-type");
    let mut params: Vec<&str> =
        m.categories.values().flat_map(|c| c.search.iter().flat_map(|s| s.params.keys().map(String::as_str))).collect();
    params.sort();
    params.dedup();
    let search_params: Vec<Value> = params
        .iter()
        .map(|p| {
            let kind = match *p {
                "_id" | "_language" | "status" | "identifier" | "modality" | "site" | "type" | "view" => "token",
                "created" => "date",
                p if !SEARCH_PARAMS.contains(&p) => "string",
                _ => "reference",
            };
            json!({"name": p, "type": kind})
        })
        .collect();
    let unsupported: Vec<String> = m.unsupported.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": rfc3339(set.loaded_at),
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "software": {"name": "ehr-gateway", "version": format!("{} (mappings {})", env!("CARGO_PKG_VERSION"), set.version)},
        "implementation": {"description": format!("{} via {}", o.org.name, m.display_name), "url": o.fhir_base},
        "rest": [{
            "mode": "server",
            "documentation": format!("Not supported by {}: {}", m.display_name, if unsupported.is_empty() { "nothing".into() } else { unsupported.join("; ") }),
            "resource": [{
                "type": "Media",
                "interaction": interactions.iter().map(|i| json!({"code": i})).collect::<Vec<_>>(),
                "searchParam": search_params,
            }]
        }]
    })
}
