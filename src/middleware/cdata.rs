//! Parses the caller's `log-cdata` header (context to attach to logs) in the `kv` or `json` format.
//!
//! Grammar of `kv` (the default): `pair (";" pair)*`, `pair = key "=" value`, whitespace around tokens
//! ignored; `key = [A-Za-z0-9_.-]{1,64}`; `value` is either bare (`[^;"=\s]*`) or a double-quoted string
//! where `\"` and `\\` escape. `json`: one flat JSON object whose values are strings, numbers, booleans
//! or null. Both: at most 32 entries, keys unique, header at most 2048 bytes, values at most 256 chars.

use std::collections::BTreeMap;

use serde_json::Value;

pub const MAX_HEADER_BYTES: usize = 2048;
pub const MAX_ENTRIES: usize = 32;
pub const MAX_VALUE_CHARS: usize = 256;

pub type Cdata = BTreeMap<String, Value>;

fn key_ok(key: &str) -> bool {
    (1..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn insert(out: &mut Cdata, key: &str, value: Value) -> Result<(), String> {
    if !key_ok(key) {
        return Err(format!(
            "log-cdata key `{}` must match [A-Za-z0-9_.-]{{1,64}}",
            key.chars().take(64).collect::<String>()
        ));
    }
    if value.as_str().is_some_and(|s| s.chars().count() > MAX_VALUE_CHARS) {
        return Err(format!("log-cdata value of `{key}` is longer than {MAX_VALUE_CHARS} characters"));
    }
    if out.insert(key.to_string(), value).is_some() {
        return Err(format!("log-cdata key `{key}` appears twice"));
    }
    if out.len() > MAX_ENTRIES {
        return Err(format!("log-cdata has more than {MAX_ENTRIES} entries"));
    }
    Ok(())
}

/// Parses the header; `format` is the `log-cdata-format` header (`kv` when absent).
pub fn parse(value: &str, format: Option<&str>) -> Result<Cdata, String> {
    if value.len() > MAX_HEADER_BYTES {
        return Err(format!("log-cdata is longer than {MAX_HEADER_BYTES} bytes"));
    }
    match format.map(str::trim) {
        None | Some("kv") => parse_kv(value),
        Some("json") => parse_json(value),
        Some(other) => Err(format!(
            "log-cdata-format `{}` is not supported; use `kv` or `json`",
            other.chars().take(32).collect::<String>()
        )),
    }
}

fn parse_json(value: &str) -> Result<Cdata, String> {
    let parsed: Value =
        serde_json::from_str(value).map_err(|_| "log-cdata is not valid JSON (log-cdata-format: json)".to_string())?;
    let Value::Object(map) = parsed else { return Err("log-cdata (json) must be a JSON object".into()) };
    let mut out = Cdata::new();
    for (k, v) in map {
        if matches!(v, Value::Array(_) | Value::Object(_)) {
            return Err(format!("log-cdata value of `{k}` must be a string, number, boolean or null"));
        }
        insert(&mut out, &k, v)?;
    }
    Ok(out)
}

fn parse_kv(value: &str) -> Result<Cdata, String> {
    let mut out = Cdata::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ';' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("log-cdata entry `{}` needs `key=value`", key.chars().take(64).collect::<String>()));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\')) => val.push(c),
                        _ => {
                            return Err(format!(
                                "log-cdata value of `{key}` has a bad escape; only \\\" and \\\\ are allowed"
                            ));
                        }
                    },
                    Some('"') => break,
                    Some(c) if c.is_control() => {
                        return Err(format!("log-cdata value of `{key}` contains a control character"));
                    }
                    Some(c) => val.push(c),
                    None => return Err(format!("log-cdata value of `{key}` has no closing quote")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ';' || c.is_whitespace() {
                    break;
                }
                if c == '"' || c == '=' || c.is_control() {
                    return Err(format!(
                        "log-cdata value of `{key}` must be quoted to contain `\"`, `=` or control characters"
                    ));
                }
                val.push(c);
                chars.next();
            }
        }
        insert(&mut out, &key, Value::String(val))?;
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => break,
            Some(';') => continue,
            Some(_) => return Err(format!("log-cdata entries must be separated by `;` (after `{key}`)")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kv_pairs_with_quotes_and_spaces() {
        let c = parse(r#"app=scanner; batch="a;b \"c\""; n=3"#, None).unwrap();
        assert_eq!(c["app"], json!("scanner"));
        assert_eq!(c["batch"], json!("a;b \"c\""));
        assert_eq!(c["n"], json!("3"));
        assert!(parse("", Some("kv")).unwrap().is_empty());
    }

    #[test]
    fn json_objects_flat_only() {
        let c = parse(r#"{"app":"scanner","n":3,"ok":true}"#, Some("json")).unwrap();
        assert_eq!(c["n"], json!(3));
        assert!(parse(r#"{"a":{"b":1}}"#, Some("json")).is_err());
        assert!(parse(r#"[1]"#, Some("json")).is_err());
        assert!(parse(r#"{"a":"#, Some("json")).is_err());
    }

    #[test]
    fn bad_values_are_rejected_with_a_reason() {
        for (bad, format) in [
            ("novalue", None),
            ("a=1;a=2", None),
            ("bad key=1", None),
            ("a=\"open", None),
            ("a=x\"y", None),
            ("a=1 b=2", None),
            ("a=1", Some("xml")),
        ] {
            assert!(parse(bad, format).is_err(), "{bad:?} should fail");
        }
        assert!(parse(&format!("a={}", "x".repeat(300)), None).is_err());
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(parse(&many.join(";"), None).is_err());
        assert!(parse(&"a".repeat(3000), None).is_err());
    }
}
