//! Named built-in transforms usable in mapping expressions (`$.x | name(arg)`): pure functions on JSON.

use base64::Engine as _;
use std::collections::BTreeMap;

use serde_json::Value;

use super::ids::IdTemplate;
use crate::json::{Payload, Payloads};

/// Code tables by name: source code → target code.
pub type CodeTables = BTreeMap<String, BTreeMap<String, String>>;

/// What a transform may look at besides its input.
#[derive(Clone, Copy, Default)]
pub struct TransformContext<'a> {
    /// The id template of the category being mapped, for `id_part`.
    pub id_template: Option<&'a IdTemplate>,
    /// The mapping's code tables, for `code`.
    pub code_tables: Option<&'a CodeTables>,
    /// The media values stand for by marker, for `base64_size` and `base64_media_type`.
    pub payloads: Option<&'a Payloads>,
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
    ("lookup", true, "a code → its entry in the named code table, or no value when not listed"),
    ("code_or_keep", true, "a code → its entry in the named code table, or the code itself when not listed"),
    ("first", false, "a list → its first item (a single value stays as is)"),
    ("join", false, "a list → its items as text joined by `, `"),
    ("date_lower", false, "FHIR date search value(s) such as `ge2024-01-01` → the inclusive lower bound date, if any"),
    ("date_upper", false, "FHIR date search value(s) such as `lt2024-02-01` → the inclusive upper bound date, if any"),
    ("base64_media_type", false, "base64 image bytes → `image/jpeg`, `image/png`, `image/gif` or `application/pdf`"),
];

/// Transforms that take a whole list; every other transform applies to each item of a list.
const LIST_TRANSFORMS: &[&str] = &["first", "join", "date_lower", "date_upper"];

pub fn exists(name: &str) -> Option<bool> {
    TRANSFORMS.iter().find(|(n, _, _)| *n == name).map(|(_, takes_arg, _)| *takes_arg)
}

/// Applies a transform. `Ok(None)` means "no value" (the field is omitted); `Err` explains bad input.
/// Item transforms given a list apply to each item (items without a value are left out).
pub fn apply(name: &str, arg: Option<&str>, input: &Value, ctx: &TransformContext) -> Result<Option<Value>, String> {
    if let Value::Array(items) = input
        && !LIST_TRANSFORMS.contains(&name)
    {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Some(v) = apply_one(name, arg, item, ctx)? {
                out.push(v);
            }
        }
        return Ok((!out.is_empty()).then_some(Value::Array(out)));
    }
    apply_one(name, arg, input, ctx)
}

fn apply_one(name: &str, arg: Option<&str>, input: &Value, ctx: &TransformContext) -> Result<Option<Value>, String> {
    let text = || -> Result<String, String> {
        match input {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(format!("`{name}` needs a text value")),
        }
    };
    let arg = arg.unwrap_or("");
    // Media held outside the tree: its size and type come from the payload, never from the marker text.
    let payload = ctx.payloads.and_then(|p| p.of(input));
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
        "base64_size" if payload.is_some() => Value::from(payload.map_or(0, Payload::decoded_len)),
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
            // athena adds a time to some dates (`03/05/2024 09:30:00`); without a zone only the date is safe.
            let full = text()?;
            let s = full.split_whitespace().next().unwrap_or("").to_string();
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
        "lookup" => {
            let s = text()?;
            let table = ctx.code_tables.and_then(|t| t.get(arg)).ok_or_else(|| format!("no code table `{arg}`"))?;
            return Ok(table.get(&s).map(|v| Value::String(v.clone())));
        }
        "code_or_keep" => {
            let s = text()?;
            let table = ctx.code_tables.and_then(|t| t.get(arg)).ok_or_else(|| format!("no code table `{arg}`"))?;
            Value::String(table.get(&s).cloned().unwrap_or(s))
        }
        "first" => match input {
            Value::Array(items) => return Ok(items.first().cloned()),
            other => other.clone(),
        },
        "join" => match input {
            Value::Array(items) => Value::String(
                items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            other => return Ok(Some(Value::String(text().or_else(|_| Ok::<_, String>(other.to_string()))?))),
        },
        "date_lower" | "date_upper" => {
            let values: Vec<Value> = match input {
                Value::Array(items) => items.clone(),
                other => vec![other.clone()],
            };
            let mut bound: Option<String> = None;
            for v in &values {
                let s = v.as_str().ok_or("a date search value must be text")?;
                let (prefix, date) = date_search_value(s)?;
                let candidate = match (name, prefix) {
                    ("date_lower", "ge" | "eq" | "sa" | "gt") => {
                        Some(if prefix == "gt" || prefix == "sa" { next_day(&date)? } else { date })
                    }
                    ("date_upper", "le" | "eq" | "eb" | "lt") => {
                        Some(if prefix == "lt" || prefix == "eb" { previous_day(&date)? } else { date })
                    }
                    (_, "ne" | "ap") => {
                        return Err(format!(
                            "the `{prefix}` prefix is not supported for dates here; use ge, gt, le, lt or eq"
                        ));
                    }
                    _ => None,
                };
                if let Some(c) = candidate {
                    // Several bounds of one kind: the narrowest wins.
                    bound = Some(match bound {
                        Some(b) if (name == "date_lower") == (b > c) => b,
                        _ => c,
                    });
                }
            }
            return Ok(bound.map(Value::String));
        }
        "base64_media_type" => {
            let bytes = match payload {
                Some(p) => p.head(12),
                None => {
                    let s = text()?;
                    let head: String = s.chars().take(16).collect();
                    let head = head.get(..head.len() / 4 * 4).unwrap_or("");
                    base64::engine::general_purpose::STANDARD
                        .decode(head.as_bytes())
                        .map_err(|_| "not valid base64".to_string())?
                }
            };
            let kind = if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
                "image/jpeg"
            } else if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
                "image/png"
            } else if bytes.starts_with(b"GIF8") {
                "image/gif"
            } else if bytes.starts_with(b"%PDF") {
                "application/pdf"
            } else {
                return Ok(None);
            };
            Value::String(kind.into())
        }
        other => return Err(format!("unknown transform `{other}`")),
    }))
}

/// A FHIR date search value: its prefix (`eq` when none) and the date (`YYYY-MM-DD`; a longer dateTime is
/// cut to its date). Year or year-month values are not narrowed here.
fn date_search_value(s: &str) -> Result<(&str, String), String> {
    let prefixes = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
    let (prefix, rest) = match s.get(..2) {
        Some(p) if prefixes.contains(&p) => (p, &s[2..]),
        _ => ("eq", s),
    };
    let (y, m, d) = split_fhir_date(rest)
        .ok_or_else(|| format!("`{s}` is not a date search value; use e.g. `ge2024-01-31` (prefix + YYYY-MM-DD)"))?;
    let valid =
        m.parse::<u32>().is_ok_and(|m| (1..=12).contains(&m)) && d.parse::<u32>().is_ok_and(|d| (1..=31).contains(&d));
    if !valid {
        return Err(format!("`{s}` is not a valid date"));
    }
    Ok((prefix, format!("{y}-{m}-{d}")))
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn shift_day(date: &str, forward: bool) -> Result<String, String> {
    let (y, m, d) = split_fhir_date(date).ok_or("not a date")?;
    let (mut y, mut m, mut d): (i64, u32, u32) =
        (y.parse().map_err(|_| "bad year")?, m.parse().map_err(|_| "bad month")?, d.parse().map_err(|_| "bad day")?);
    if forward {
        d += 1;
        if d > days_in_month(y, m) {
            d = 1;
            m += 1;
            if m > 12 {
                m = 1;
                y += 1;
            }
        }
    } else if d > 1 {
        d -= 1;
    } else {
        if m == 1 {
            m = 12;
            y -= 1;
        } else {
            m -= 1;
        }
        d = days_in_month(y, m);
    }
    Ok(format!("{y:04}-{m:02}-{d:02}"))
}

fn next_day(date: &str) -> Result<String, String> {
    shift_day(date, true)
}

fn previous_day(date: &str) -> Result<String, String> {
    shift_day(date, false)
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
        let ctx = TransformContext { id_template: None, code_tables: Some(&tables), payloads: None };
        assert_eq!(apply("code", Some("side"), &json!("left"), &ctx).unwrap(), Some(json!("L")));
        let e = apply("code", Some("side"), &json!("right"), &ctx).unwrap_err();
        assert!(e.contains("known codes: left"), "{e}");
    }

    #[test]
    fn date_search_values_become_inclusive_bounds() {
        let lower = |v: Value| run("date_lower", None, v).unwrap();
        let upper = |v: Value| run("date_upper", None, v).unwrap();
        assert_eq!(lower(json!("ge2024-01-31")), Some(json!("2024-01-31")));
        assert_eq!(lower(json!("gt2024-01-31")), Some(json!("2024-02-01")));
        assert_eq!(upper(json!("lt2024-03-01")), Some(json!("2024-02-29")));
        assert_eq!(upper(json!("lt2023-01-01")), Some(json!("2022-12-31")));
        assert_eq!(upper(json!("ge2024-01-31")), None);
        assert_eq!(lower(json!("2024-05-06")), Some(json!("2024-05-06")));
        assert_eq!(upper(json!(["ge2024-01-01", "le2024-06-30", "le2024-03-31"])), Some(json!("2024-03-31")));
        assert_eq!(lower(json!(["ge2024-01-01", "ge2024-02-01"])), Some(json!("2024-02-01")));
        assert!(run("date_lower", None, json!("yesterday")).is_err());
        assert!(run("date_lower", None, json!("ap2024-01-01")).is_err());
        assert!(run("date_lower", None, json!("ge2024-13-01")).is_err());
    }

    #[test]
    fn item_transforms_map_over_lists_and_list_transforms_take_them_whole() {
        let tables: CodeTables =
            [("f".to_string(), [("departmentid".to_string(), "departmentId".to_string())].into())].into();
        let ctx = TransformContext { id_template: None, code_tables: Some(&tables), payloads: None };
        assert_eq!(
            apply("code_or_keep", Some("f"), &json!(["departmentid", "image"]), &ctx).unwrap(),
            Some(json!(["departmentId", "image"]))
        );
        assert_eq!(run("upper", None, json!(["a", "b"])).unwrap(), Some(json!(["A", "B"])));
        assert_eq!(run("first", None, json!(["a", "b"])).unwrap(), Some(json!("a")));
        assert_eq!(apply("lookup", Some("f"), &json!("departmentid"), &ctx).unwrap(), Some(json!("departmentId")));
        assert_eq!(apply("lookup", Some("f"), &json!("other"), &ctx).unwrap(), None);
        assert_eq!(run("first", None, json!([])).unwrap(), None);
        assert_eq!(run("join", None, json!(["a", 2])).unwrap(), Some(json!("a, 2")));
    }

    #[test]
    fn media_types_are_sniffed_from_base64() {
        assert_eq!(run("base64_media_type", None, json!("/9j/4AAQSkZJRgABAQ==")).unwrap(), Some(json!("image/jpeg")));
        assert_eq!(
            run("base64_media_type", None, json!("iVBORw0KGgoAAAANSUhEUg==")).unwrap(),
            Some(json!("image/png"))
        );
        assert_eq!(run("base64_media_type", None, json!("JVBERi0xLjQK")).unwrap(), Some(json!("application/pdf")));
        assert_eq!(run("base64_media_type", None, json!("aGVsbG8=")).unwrap(), None);
        assert_eq!(run("date_from_mmddyyyy", None, json!("03/05/2024 09:30:00")).unwrap(), Some(json!("2024-03-05")));
    }

    #[test]
    fn every_listed_transform_is_implemented() {
        for (name, _, _) in TRANSFORMS {
            let r = run(name, Some("Patient"), json!("x"));
            assert!(!matches!(&r, Err(e) if e.starts_with("unknown transform")), "{name}");
        }
    }
}
