//! Search: which parameters the front door takes (FHIR's Media parameters plus those a mapping adds),
//! paging tokens that continue an upstream search without exposing it, and `POST _search`.

use http::{StatusCode, header};
use serde_json::json;

use super::input::{query_params, read_body, single, unsupported_media_type};
use super::{OrgCtx, bundle, choose_category, run_response};
use crate::error::{GatewayError, IssueCode};
use crate::mapping::engine::{self, Outcome, Run};
use crate::request::{GatewayRequest, GatewayResponse};

/// FHIR R4 Media search parameters (plus `_id`, `_language`); `_count`, `_page` and `category` are the
/// gateway's own controls.
pub const SEARCH_PARAMS: &[&str] = &[
    "_id",
    "_language",
    "based-on",
    "created",
    "device",
    "encounter",
    "identifier",
    "modality",
    "operator",
    "patient",
    "site",
    "status",
    "subject",
    "type",
    "view",
];

/// Search parameters whose repeats make a range (AND of bounds) rather than an unsupported AND.
const RANGE_PARAMS: &[&str] = &["created"];

pub(super) async fn search(o: &OrgCtx, params: Vec<(String, String)>) -> Result<GatewayResponse, GatewayError> {
    let category_name = single(&params, "category")?;
    let page = single(&params, "_page")?;
    let count = single(&params, "_count")?;
    // Parameters a mapping adds for its EHR (athena's `departmentId`) are accepted besides FHIR's own.
    let extra: Vec<&str> = o
        .mapping
        .categories
        .values()
        .flat_map(|c| c.search.iter().flat_map(|s| s.params.keys().map(String::as_str)))
        .filter(|p| !SEARCH_PARAMS.contains(p))
        .collect();
    let mut search_params = Vec::new();
    for (name, value) in &params {
        if matches!(name.as_str(), "category" | "_page" | "_count" | "_format") {
            continue;
        }
        let base = name.split(':').next().unwrap_or(name);
        if !SEARCH_PARAMS.contains(&base) && !extra.contains(&base) {
            let mut known: Vec<&str> = SEARCH_PARAMS.iter().copied().chain(extra.iter().copied()).collect();
            known.push("_count");
            return Err(GatewayError::invalid(format!(
                "`{}` is not a Media search parameter; use {}",
                name.chars().take(64).collect::<String>(),
                known.join(", ")
            ))
            .with_expression(name.chars().take(64).collect::<String>()));
        }
        if search_params.iter().any(|(k, _): &(String, String)| k == name) && !RANGE_PARAMS.contains(&name.as_str()) {
            return Err(GatewayError::client(
                StatusCode::BAD_REQUEST,
                IssueCode::NotSupported,
                format!(
                    "repeating `{name}` (AND) is not supported; give it once, with comma-separated values where the EHR allows"
                ),
            ));
        }
        if value.is_empty() {
            return Err(GatewayError::invalid(format!("search parameter `{name}` has an empty value"))
                .with_expression(name.clone()));
        }
        search_params.push((name.clone(), value.clone()));
    }
    let (category, mut run, own_params) = match page {
        Some(token) => {
            if !search_params.is_empty() || count.is_some() {
                return Err(GatewayError::invalid(
                    "`_page` continues an earlier search; send it without other parameters",
                ));
            }
            let invalid = || {
                GatewayError::invalid("the `_page` token is not valid; start the search again").with_expression("_page")
            };
            match engine::decode_page_token(&token).ok_or_else(invalid)? {
                engine::PageToken::Link { category, link } => {
                    let category = choose_category(&o.mapping, Some(&category)).map_err(|_| invalid())?;
                    (category, Run::search_page(&o.mapping, category, &link, o.context())?, vec![])
                }
                engine::PageToken::Offset { category, params, offset } => {
                    let category = choose_category(&o.mapping, Some(&category)).map_err(|_| invalid())?;
                    let count = params.iter().find(|(k, _)| k == "_count").map(|(_, v)| v.clone());
                    let fhir: Vec<(String, String)> = params.iter().filter(|(k, _)| k != "_count").cloned().collect();
                    let run = Run::search(&o.mapping, category, &fhir, count.as_deref(), Some(offset), o.context())?;
                    (category, run, params)
                }
            }
        }
        None => {
            let category = choose_category(&o.mapping, category_name.as_deref())?;
            let run = Run::search(&o.mapping, category, &search_params, count.as_deref(), None, o.context())?;
            let mut own = search_params.clone();
            if let Some(c) = &count {
                own.push(("_count".into(), c.clone()));
            }
            (category, run, own)
        }
    };
    let outcome = o.client.run(&mut run).await?;
    let Outcome::Page { entries, total, next } = outcome else {
        return Err(GatewayError::gateway("search did not produce a page"));
    };
    let mut links =
        vec![json!({"relation": "self", "url": format!("{}/Media?{}", o.fhir_base, encode_query(&params))})];
    if let Some(next) = next {
        let token = match next {
            engine::NextPage::Link(link) => engine::PageToken::Link {
                category: category.name.clone(),
                link: relative_link(&link, &o.client.settings().base_url),
            },
            engine::NextPage::Offset(offset) => {
                engine::PageToken::Offset { category: category.name.clone(), params: own_params, offset }
            }
        };
        let token = engine::encode_page_token(&token);
        links.push(json!({"relation": "next", "url": format!("{}/Media?_page={token}", o.fhir_base)}));
    }
    run_response(StatusCode::OK, &bundle::searchset(o, links, entries, total), run.payloads())
}

/// `POST _search`: form parameters join the query's.
pub(super) async fn search_post(o: &OrgCtx, req: GatewayRequest) -> Result<GatewayResponse, GatewayError> {
    let mut params = query_params(&req)?;
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if content_type.split(';').next().map(str::trim) != Some("application/x-www-form-urlencoded") {
        return Err(unsupported_media_type("POST _search needs an application/x-www-form-urlencoded body"));
    }
    let bytes = read_body(req).await?;
    params.extend(form_urlencoded::parse(&bytes).into_owned());
    search(o, params).await
}

/// An upstream `next` link relative to the connection's base URL. Canvas sends relative links; an EHR
/// that sends absolute ones (its own host, perhaps with the base path) gets the same treatment, and the
/// host is never trusted: pages are always fetched from the configured base URL.
fn relative_link(link: &str, base_url: &str) -> String {
    if let Some(rest) = link.strip_prefix(base_url.trim_end_matches('/')) {
        return rest.to_string();
    }
    match link.split_once("://") {
        Some((_, after_scheme)) => {
            let path = after_scheme.find('/').map(|i| &after_scheme[i..]).unwrap_or("/");
            // Drop the base URL's own path prefix, if the link carries it.
            let base_path = base_url.split_once("://").and_then(|(_, a)| a.find('/').map(|i| &a[i..])).unwrap_or("");
            let base_path = base_path.trim_end_matches('/');
            path.strip_prefix(base_path).filter(|p| p.starts_with('/')).unwrap_or(path).to_string()
        }
        None => link.to_string(),
    }
}

fn encode_query(params: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_become_relative_to_the_base_url() {
        let base = "https://fumage-x.canvasmedical.com";
        assert_eq!(relative_link("/Media?_offset=10", base), "/Media?_offset=10");
        assert_eq!(relative_link("https://fumage-x.canvasmedical.com/Media?_offset=10", base), "/Media?_offset=10");
        assert_eq!(relative_link("https://elsewhere.example/Media?_offset=10", base), "/Media?_offset=10");
        assert_eq!(relative_link("https://h.example/fhir/r4/Media?x=1", "https://h.example/fhir/r4/"), "/Media?x=1");
        assert_eq!(relative_link("https://other.example/fhir/r4/Media?x=1", "https://h.example/fhir/r4"), "/Media?x=1");
    }
}
