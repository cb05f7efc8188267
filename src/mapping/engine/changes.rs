//! What an update changes: the elements of the new resource that differ from the current one.

use serde_json::Value;

/// The elements of `new` that differ from `current`: top-level elements compared whole, extensions one by
/// one. `resourceType` and `id` are kept; `meta` is the server's (the EHR sets `lastUpdated`), so a client's
/// copy of it, stale or not, is no change. Empty (apart from those) when nothing changed.
pub fn changes(current: &Value, new: &Value) -> Value {
    let (Some(cur), Some(new)) = (current.as_object(), new.as_object()) else { return new.clone() };
    let mut out = serde_json::Map::new();
    for (k, v) in new {
        if k == "meta" {
            continue;
        }
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

/// The elements that differ between `current` and `new` (see [`changes`]), named as
/// `Media.<element>` and `Media.extension('<url>')`.
pub fn changed_elements(current: &Value, new: &Value) -> Vec<String> {
    let Some(changed) = changes(current, new).as_object().cloned() else { return vec![] };
    let mut names = Vec::new();
    for (k, v) in changed {
        match k.as_str() {
            "resourceType" | "id" => {}
            "extension" => {
                for e in v.as_array().into_iter().flatten() {
                    let url = e.get("url").and_then(Value::as_str).unwrap_or_default();
                    names.push(format!("Media.extension('{url}')"));
                }
            }
            _ => names.push(format!("Media.{k}")),
        }
    }
    names
}

/// `new` with the `elements` (named as by [`changed_elements`]) taken from `current`: the EHR maintains
/// them, so the client's copy does not count.
pub fn keep_current(current: &Value, mut new: Value, elements: &[String]) -> Value {
    let Some(object) = new.as_object_mut() else { return new };
    for element in elements {
        let Some(name) = element.strip_prefix("Media.") else { continue };
        match name.strip_prefix("extension('").and_then(|n| n.strip_suffix("')")) {
            Some(url) => {
                let is_it = |e: &Value| e.get("url").and_then(Value::as_str) == Some(url);
                let mut kept: Vec<Value> = object
                    .get("extension")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter(|e| !is_it(e)).cloned().collect())
                    .unwrap_or_default();
                kept.extend(current["extension"].as_array().into_iter().flatten().filter(|e| is_it(e)).cloned());
                if kept.is_empty() {
                    object.remove("extension");
                } else {
                    object.insert("extension".into(), Value::Array(kept));
                }
            }
            None => match current.get(name) {
                Some(v) => {
                    object.insert(name.to_string(), v.clone());
                }
                None => {
                    object.remove(name);
                }
            },
        }
    }
    new
}

/// What `new` adds to `current`, an append-only text: `new` must be `current` followed by more text, the
/// whitespace between words compared loosely (the EHR chooses its own separator). `None` when `new` does
/// not begin with `current`; `Some("")` when it adds nothing.
pub fn appended<'a>(current: &str, new: &'a str) -> Option<&'a str> {
    let mut rest = new;
    let mut words = current.split_whitespace().peekable();
    if words.peek().is_none() {
        return Some(new.trim());
    }
    for word in words {
        rest = rest.trim_start().strip_prefix(word)?;
    }
    // The current text must end at a word boundary: `ab` does not continue `a`.
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return None;
    }
    Some(rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn appended_text_is_what_follows_the_current_text() {
        assert_eq!(appended("A", "A more"), Some("more"));
        assert_eq!(appended("A b", "A\nb\n  more text\n"), Some("more text"));
        assert_eq!(appended("", "first"), Some("first"));
        assert_eq!(appended("A", "A  "), Some(""));
        assert_eq!(appended("A", "Ab"), None);
        assert_eq!(appended("A", "replaced"), None);
        assert_eq!(appended("A b", "A"), None);
    }

    #[test]
    fn elements_the_ehr_maintains_keep_their_current_value() {
        let current = json!({"status": "completed", "extension": [{"url": "seen", "valueDateTime": "t2"}, {"url": "n", "valueString": "a"}]});
        let new = json!({"status": "completed", "extension": [{"url": "n", "valueString": "b"}, {"url": "seen", "valueDateTime": "t1"}], "note": []});
        let kept = keep_current(&current, new, &["Media.extension('seen')".into(), "Media.note".into()]);
        assert_eq!(changed_elements(&current, &kept), ["Media.extension('n')"]);
        assert_eq!(kept["extension"][1], json!({"url": "seen", "valueDateTime": "t2"}));
        assert!(kept.get("note").is_none());
    }

    #[test]
    fn changed_elements_are_named_and_meta_is_not_a_change() {
        let current = json!({"resourceType": "Media", "id": "1", "meta": {"lastUpdated": "t1"}, "status": "completed",
            "extension": [{"url": "u1", "valueString": "a"}, {"url": "u2", "valueString": "b"}]});
        let new = json!({"resourceType": "Media", "id": "1", "meta": {"lastUpdated": "t0"}, "status": "completed",
            "note": [{"text": "x"}], "extension": [{"url": "u1", "valueString": "a"}, {"url": "u2", "valueString": "c"}]});
        assert_eq!(changed_elements(&current, &new), ["Media.extension('u2')", "Media.note"]);
        let stale = json!({"resourceType": "Media", "id": "1", "meta": {"lastUpdated": "t0"}, "status": "completed",
            "extension": [{"url": "u1", "valueString": "a"}, {"url": "u2", "valueString": "b"}]});
        assert!(unchanged(&current, &stale));
    }
}
