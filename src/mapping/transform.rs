//! Named built-in transforms usable in mapping expressions (`$.x | name(arg)`): pure functions on JSON.

use base64::Engine as _;
use std::collections::BTreeMap;

use serde_json::Value;

use super::ids::IdTemplate;

/// Code tables by name: source code → target code.
pub type CodeTables = BTreeMap<String, BTreeMap<String, String>>;

/// What a transform may look at besides its input.
#[derive(Clone, Copy, Default)]
pub struct TransformContext<'a> {
    /// The id template of the category being mapped, for `id_part`.
    pub id_template: Option<&'a IdTemplate>,
    /// The mapping's code tables, for `code`.
    pub code_tables: Option<&'a CodeTables>,
}

/// Every built-in transform: name, whether it takes an argument, and a one-line description.
pub const TRANSFORMS: &[(&str, bool, &str)] = &[
    ("code", true, "a code → its entry in the named code table (arg: the table, from `[code_tables]`)"),
    ("reference", true, "`123` or `Type/123` → `Type/123` (arg: the resource type)"),
    ("strip_reference", true, "`Type/123` or `123` → `123` (arg: the resource type)"),
    ("location_id", false, "a Location URL → its id (last path segment, ignoring `/_history/<vid>`)"),
    ("id_part", true, "a gateway Media id → the named part of it (arg: the variable in the category's `id`)"),
    ("base64_size", false, "base64 text → the decoded size in bytes"),
    ("date_to_mmddyyyy", false, "FHIR date/dateTime `2024-03-05…` → `03/05/2024`"),
    ("date_from_mmddyyyy", false, "`03/05/2024` → FHIR date `2024-03-05`"),
    ("string", false, "any scalar → its text"),
    ("integer", false, "a number or numeric text → an integer"),
    ("lower", false, "text → lower case"),
    ("upper", false, "text → upper case"),
];

pub fn exists(name: &str) -> Option<bool> {
    TRANSFORMS.iter().find(|(n, _, _)| *n == name).map(|(_, takes_arg, _)| *takes_arg)
}

/// Applies a transform. `Ok(None)` means "no value" (the field is omitted); `Err` explains bad input.
pub fn apply(name: &str, arg: Option<&str>, input: &Value, ctx: &TransformContext) -> Result<Option<Value>, String> {
    let text = || -> Result<String, String> {
        match input {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(format!("`{name}` needs a text value")),
        }
    };
    let arg = arg.unwrap_or("");
    Ok(Some(match name {
        "code" => {
            let s = text()?;
            let table = ctx.code_tables.and_then(|t| t.get(arg)).ok_or_else(|| format!("no code table `{arg}`"))?;
            match table.get(&s) {
                Some(v) => Value::String(v.clone()),
                None => {
                    let known: Vec<&str> = table.keys().map(String::as_str).collect();
                    return Err(format!("`{s}` is not in code table `{arg}`; known codes: {}", known.join(", ")));
                }
            }
        }
        "reference" => {
            let s = text()?;
            let id = s.strip_prefix(&format!("{arg}/")).unwrap_or(&s);
            if id.is_empty() || id.contains('/') {
                return Err(format!("`{s}` is not a {arg} reference; use `{arg}/<id>`"));
            }
            Value::String(format!("{arg}/{id}"))
        }
        "strip_reference" => {
            let s = text()?;
            let id = s.strip_prefix(&format!("{arg}/")).unwrap_or(&s);
            if id.is_empty() || id.contains('/') {
                return Err(format!("`{s}` is not a {arg} reference; use `{arg}/<id>`"));
            }
            Value::String(id.to_string())
        }
        "location_id" => {
            let s = text()?;
            let path = s.split(['?', '#']).next().unwrap_or("");
            let mut segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
            if segments.len() >= 2 && segments[segments.len() - 2] == "_history" {
                segments.truncate(segments.len() - 2);
            }
            match segments.last() {
                Some(id) if !id.is_empty() && !id.contains(':') => Value::String((*id).to_string()),
                _ => return Err("the Location header holds no resource id".into()),
            }
        }
        "id_part" => {
            let s = text()?;
            let template = ctx.id_template.ok_or("`id_part` is only available inside a category")?;
            let vars = template
                .parse(&s)
                .ok_or_else(|| format!("`{s}` is not a Media id of this kind ({})", template.source()))?;
            match vars.get(arg) {
                Some(v) => Value::String(v.clone()),
                None => return Err(format!("the category id has no part `{arg}`")),
            }
        }
        "base64_size" => {
            let s = text()?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|_| "not valid base64".to_string())?;
            Value::from(bytes.len())
        }
        "date_to_mmddyyyy" => {
            let s = text()?;
            let (y, m, d) = split_fhir_date(&s).ok_or_else(|| format!("`{s}` is not a FHIR date (YYYY-MM-DD)"))?;
            Value::String(format!("{m}/{d}/{y}"))
        }
        "date_from_mmddyyyy" => {
            let s = text()?;
            let parts: Vec<&str> = s.split('/').collect();
            match parts.as_slice() {
                [m, d, y]
                    if m.len() == 2
                        && d.len() == 2
                        && y.len() == 4
                        && s.bytes().all(|b| b.is_ascii_digit() || b == b'/') =>
                {
                    Value::String(format!("{y}-{m}-{d}"))
                }
                _ => return Err(format!("`{s}` is not a date in MM/DD/YYYY form")),
            }
        }
        "string" => match input {
            Value::Null => return Ok(None),
            Value::Array(_) | Value::Object(_) => return Err("`string` needs a scalar".into()),
            _ => Value::String(text()?),
        },
        "integer" => match input {
            Value::Number(n) if n.is_i64() || n.is_u64() => input.clone(),
            Value::String(s) => Value::from(s.trim().parse::<i64>().map_err(|_| format!("`{s}` is not an integer"))?),
            _ => return Err("`integer` needs a number".into()),
        },
        "lower" => Value::String(text()?.to_lowercase()),
        "upper" => Value::String(text()?.to_uppercase()),
        other => return Err(format!("unknown transform `{other}`")),
    }))
}

fn split_fhir_date(s: &str) -> Option<(&str, &str, &str)> {
    let date = s.get(..10)?;
    let b = date.as_bytes();
    let ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && date.bytes().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    ok.then(|| (&date[..4], &date[5..7], &date[8..10]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(name: &str, arg: Option<&str>, input: Value) -> Result<Option<Value>, String> {
        apply(name, arg, &input, &TransformContext::default())
    }

    #[test]
    fn references_are_normalized_both_ways() {
        assert_eq!(run("reference", Some("Patient"), json!("123")).unwrap(), Some(json!("Patient/123")));
        assert_eq!(run("reference", Some("Patient"), json!("Patient/123")).unwrap(), Some(json!("Patient/123")));
        assert!(run("reference", Some("Patient"), json!("Practitioner/1")).is_err());
        assert_eq!(run("strip_reference", Some("Patient"), json!("Patient/9")).unwrap(), Some(json!("9")));
    }

    #[test]
    fn location_id_tolerates_history_suffix_and_trailing_slash() {
        for loc in ["http://h/Media/abc", "http://h/Media/abc/", "http://h/Media/abc/_history/2", "/Media/abc"] {
            assert_eq!(run("location_id", None, json!(loc)).unwrap(), Some(json!("abc")), "{loc}");
        }
        assert!(run("location_id", None, json!("")).is_err());
    }

    #[test]
    fn dates_convert_between_fhir_and_mmddyyyy() {
        assert_eq!(run("date_to_mmddyyyy", None, json!("2024-03-05T10:00:00Z")).unwrap(), Some(json!("03/05/2024")));
        assert_eq!(run("date_from_mmddyyyy", None, json!("03/05/2024")).unwrap(), Some(json!("2024-03-05")));
        assert!(run("date_from_mmddyyyy", None, json!("3/5/2024")).is_err());
    }

    #[test]
    fn base64_size_counts_decoded_bytes() {
        assert_eq!(run("base64_size", None, json!("aGVsbG8=")).unwrap(), Some(json!(5)));
        assert!(run("base64_size", None, json!("%%%")).is_err());
    }

    #[test]
    fn code_tables_translate_and_reject_unknown_codes() {
        let tables: CodeTables = [("side".to_string(), [("left".to_string(), "L".to_string())].into())].into();
        let ctx = TransformContext { id_template: None, code_tables: Some(&tables) };
        assert_eq!(apply("code", Some("side"), &json!("left"), &ctx).unwrap(), Some(json!("L")));
        let e = apply("code", Some("side"), &json!("right"), &ctx).unwrap_err();
        assert!(e.contains("known codes: left"), "{e}");
    }

    #[test]
    fn every_listed_transform_is_implemented() {
        for (name, _, _) in TRANSFORMS {
            let r = run(name, Some("Patient"), json!("x"));
            assert!(!matches!(&r, Err(e) if e.starts_with("unknown transform")), "{name}");
        }
    }
}
