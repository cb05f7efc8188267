//! What an update changes: the elements of the new resource that differ from the current one.

use serde_json::Value;

/// The elements of `new` that differ from `current`: top-level elements compared whole, extensions one by
/// one. `resourceType` and `id` are kept. Empty (apart from those) when nothing changed.
pub fn changes(current: &Value, new: &Value) -> Value {
    let (Some(cur), Some(new)) = (current.as_object(), new.as_object()) else { return new.clone() };
    let mut out = serde_json::Map::new();
    for (k, v) in new {
        if k == "resourceType" || k == "id" {
            out.insert(k.clone(), v.clone());
        } else if k == "extension" {
            let old: Vec<&Value> = cur.get(k).and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
            let changed: Vec<Value> =
                v.as_array().into_iter().flatten().filter(|e| !old.contains(e)).cloned().collect();
            if !changed.is_empty() {
                out.insert(k.clone(), Value::Array(changed));
            }
        } else if cur.get(k) != Some(v) {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// True when an update would change nothing (see [`changes`]).
pub fn unchanged(current: &Value, new: &Value) -> bool {
    changes(current, new).as_object().is_some_and(|m| m.keys().all(|k| k == "resourceType" || k == "id"))
}
