//! Query strings as athena reads them (case-insensitive names, last value wins), and its limit/offset paging with
//! relative `next`/`previous` links.

use serde_json::{Value, json};

use super::responses::{Refusal, clip, invalid_data};

/// Query parameters in arrival order; names are matched case-insensitively (athena's own `next` links upper-case
/// them), and a repeated name takes its last value.
pub(super) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub(super) fn parse(raw: &str) -> Self {
        Self { pairs: form_urlencoded::parse(raw.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect() }
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The parameter names, in arrival order.
    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(k, _)| k.as_str())
    }

    pub(super) fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
    }
}

pub(super) fn paging(query: &Query, default: usize, max: usize) -> Result<(usize, usize), Refusal> {
    let limit = match query.get("limit").map(str::trim) {
        None | Some("") => default,
        Some(v) => match v.parse::<usize>() {
            Ok(0) => default,
            Ok(n) => n.min(max),
            Err(_) => {
                return Err(Box::new(invalid_data(&format!(
                    "Expecting format integer for limit, but value is '{}'.",
                    clip(v)
                ))));
            }
        },
    };
    let offset = match query.get("offset").map(str::trim) {
        None | Some("") => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                return Err(Box::new(invalid_data(&format!(
                    "Expecting format integer for offset, but value is '{}'.",
                    clip(v)
                ))));
            }
        },
    };
    Ok((limit, offset))
}

/// Adds athena's relative `next` / `previous` links: the original query with upper-cased parameter names (as in
/// athena's fixtures), then a lower-case `offset`.
pub(super) fn add_paging_links(body: &mut Value, path: &str, query: &Query, limit: usize, offset: usize, total: usize) {
    let link = |offset: usize| {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (key, value) in &query.pairs {
            if !key.eq_ignore_ascii_case("offset") {
                serializer.append_pair(&key.to_ascii_uppercase(), value);
            }
        }
        serializer.append_pair("offset", &offset.to_string());
        format!("{path}?{}", serializer.finish())
    };
    if offset.saturating_add(limit) < total {
        body["next"] = json!(link(offset + limit));
    }
    if offset > 0 {
        body["previous"] = json!(link(offset.saturating_sub(limit)));
    }
}
