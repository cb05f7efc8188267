//! Gateway Media ids: templates such as `cv.{media_id}` that encode upstream ids so reads route without a search.

use std::collections::BTreeMap;

use regex::Regex;

/// A compiled id template: literal text and `{var}` parts; variables may not contain `.`.
#[derive(Debug, Clone)]
pub struct IdTemplate {
    source: String,
    parts: Vec<Part>,
    pattern: Regex,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Var(String),
}

impl IdTemplate {
    pub fn compile(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut pattern = String::from("^");
        let mut rest = source;
        while let Some(start) = rest.find('{') {
            let literal = &rest[..start];
            let end = rest[start..].find('}').ok_or("unclosed `{` in id template")? + start;
            let var = &rest[start + 1..end];
            if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("`{{{var}}}` is not a variable name"));
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(literal.to_string()));
                pattern.push_str(&regex::escape(literal));
            } else if matches!(parts.last(), Some(Part::Var(_))) {
                return Err("two variables need a separator between them".into());
            }
            parts.push(Part::Var(var.to_string()));
            pattern.push_str(&format!("(?P<{var}>[A-Za-z0-9-]+)"));
            rest = &rest[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
            pattern.push_str(&regex::escape(rest));
        }
        pattern.push('$');
        if !parts.iter().any(|p| matches!(p, Part::Var(_))) {
            return Err("an id template needs at least one `{variable}`".into());
        }
        if !source.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.{}_".contains(&b)) {
            return Err("id templates may only use letters, digits, `-`, `.` and `{variables}`".into());
        }
        let pattern = Regex::new(&pattern).map_err(|e| e.to_string())?;
        Ok(IdTemplate { source: source.to_string(), parts, pattern })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Builds an id; `None` if a variable is missing or the result is not a valid FHIR id.
    pub fn render(&self, vars: &BTreeMap<String, String>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Var(v) => {
                    let value = vars.get(v)?;
                    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                        return None;
                    }
                    out.push_str(value);
                }
            }
        }
        (out.len() <= 64).then_some(out)
    }

    /// Splits an id back into its variables; `None` if it does not have this template's shape.
    pub fn parse(&self, id: &str) -> Option<BTreeMap<String, String>> {
        let caps = self.pattern.captures(id)?;
        Some(self.variables().filter_map(|v| Some((v.to_string(), caps.name(v)?.as_str().to_string()))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_multi_part_ids() {
        let t = IdTemplate::compile("ic.{practice}.{patient}.{insurance}").unwrap();
        let vars: BTreeMap<_, _> = [("practice", "195900"), ("patient", "1234"), ("insurance", "5678")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        let id = t.render(&vars).unwrap();
        assert_eq!(id, "ic.195900.1234.5678");
        assert_eq!(t.parse(&id).unwrap(), vars);
        assert!(t.parse("ic.195900.1234").is_none());
        assert!(t.parse("xx.1.2.3").is_none());
    }

    #[test]
    fn rejects_values_that_would_break_the_id() {
        let t = IdTemplate::compile("cv.{media_id}").unwrap();
        let bad: BTreeMap<_, _> = [("media_id".to_string(), "a.b".to_string())].into();
        assert!(t.render(&bad).is_none());
        let long: BTreeMap<_, _> = [("media_id".to_string(), "a".repeat(70))].into();
        assert!(t.render(&long).is_none());
        assert!(IdTemplate::compile("cv.{a}{b}").is_err());
        assert!(IdTemplate::compile("plain").is_err());
    }
}
