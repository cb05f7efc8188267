//! The gateway errors of a mapping: an interaction or search parameter this EHR does not support, an
//! upstream failure translated by the mapping's error table, and a defect of the mapping itself.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::Value;

use super::{UpstreamResponse, env, scalar_text, truthy};
use crate::error::{GatewayError, IssueCode, Side};
use crate::mapping::template::Scope;
use crate::mapping::{Category, Mapping};

pub(super) fn mapping_error(mapping: &Mapping, message: String) -> GatewayError {
    // A template that cannot render an upstream answer is a gateway/mapping defect, not the caller's.
    GatewayError::new(
        StatusCode::BAD_GATEWAY,
        IssueCode::Exception,
        Side::Upstream(mapping.display_name.clone()),
        message,
    )
}

/// The 405 for an interaction this EHR cannot do, naming the EHR and the reason.
pub fn not_supported(mapping: &Mapping, interaction: &str, category: Option<&Category>) -> GatewayError {
    let reason = mapping.unsupported.get(interaction).cloned().unwrap_or_else(|| match category {
        Some(c) => format!("the `{}` category declares no {interaction}", c.name),
        None => format!("the mapping declares no {interaction}"),
    });
    GatewayError::client(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueCode::NotSupported,
        format!("{} does not support Media {interaction}: {reason}", mapping.display_name),
    )
}

pub fn unsupported_param(mapping: &Mapping, category: &Category, name: &str) -> GatewayError {
    let supported: Vec<&str> = category.search.iter().flat_map(|s| s.params.keys().map(String::as_str)).collect();
    GatewayError::client(
        StatusCode::BAD_REQUEST,
        IssueCode::NotSupported,
        format!(
            "search parameter `{name}` is not supported for {}; supported: {}, _count",
            mapping.display_name,
            supported.join(", ")
        ),
    )
    .with_expression(name.to_string())
}

/// An error answer's body as JSON, `null` when it is not JSON or too large to be an error message.
fn error_document(response: &UpstreamResponse) -> Value {
    // Text mode: values of an error answer end up in messages, so nothing in it may become a marker.
    crate::json::parse_text(&response.body, &crate::json::Limits::UPSTREAM).unwrap_or(Value::Null)
}

/// The index of the error rule that applies to an upstream answer, if any (first match wins), outside any
/// interaction: rules limited to interactions do not apply (a `$content` fetch).
pub fn matching_rule(mapping: &Mapping, response: &UpstreamResponse) -> Option<usize> {
    matching_rule_in(mapping, response, None)
}

/// The index of the error rule that applies to an upstream answer of `interaction` (create, read, update,
/// delete, search), if any; with `None`, rules limited to interactions do not apply.
pub fn matching_rule_in(mapping: &Mapping, response: &UpstreamResponse, interaction: Option<&str>) -> Option<usize> {
    let document = error_document(response);
    let empty = BTreeMap::new();
    let scope = Scope {
        document: &document,
        vars: &empty,
        headers: Some(&response.headers),
        transforms: env(mapping, None, None),
    };
    mapping.errors.iter().position(|r| {
        let in_scope = r.interactions.is_empty() || interaction.is_some_and(|i| r.interactions.iter().any(|s| s == i));
        in_scope
            && r.status.matches(response.status)
            && r.when.as_ref().is_none_or(|w| {
                let value = w.eval(&scope).ok().flatten();
                truthy(value.as_ref())
                    && r.matches.as_ref().is_none_or(|re| {
                        let text = match &value {
                            Some(Value::String(s)) => s.clone(),
                            Some(other) => other.to_string(),
                            None => String::new(),
                        };
                        re.is_match(&text)
                    })
            })
    })
}

/// Applies the mapping's error table to an upstream answer that is not a success, outside any interaction
/// (see [`matching_rule`]).
pub fn translate_error(mapping: &Mapping, response: &UpstreamResponse, vars: &BTreeMap<String, Value>) -> GatewayError {
    translate_error_in(mapping, response, vars, None)
}

/// Applies the mapping's error table to an upstream answer of `interaction` that is not a success.
pub fn translate_error_in(
    mapping: &Mapping,
    response: &UpstreamResponse,
    vars: &BTreeMap<String, Value>,
    interaction: Option<&str>,
) -> GatewayError {
    let side = Side::Upstream(mapping.display_name.clone());
    let document = error_document(response);
    let retry_after = response
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    match matching_rule_in(mapping, response, interaction).map(|i| &mapping.errors[i]) {
        Some(rule) => {
            let scope = Scope {
                document: &document,
                vars,
                headers: Some(&response.headers),
                transforms: env(mapping, None, None),
            };
            let message = rule
                .message
                .render(&scope)
                .ok()
                .flatten()
                .unwrap_or_else(|| format!("{} answered HTTP {}", mapping.display_name, response.status));
            let expressions: Vec<String> = match rule.expressions.as_ref().and_then(|e| e.eval(&scope).ok().flatten()) {
                Some(Value::Array(items)) => items.iter().filter_map(scalar_text).collect(),
                Some(one) => scalar_text(&one).into_iter().collect(),
                None => vec![],
            };
            let mut error = GatewayError::new(rule.gateway_status, rule.code, side, message)
                .retryable(rule.retryable)
                .with_retry_after(retry_after);
            if let Some(issue) = error.issues.first_mut() {
                issue.expression = expressions;
            }
            error
        }
        None if (200..300).contains(&response.status) => GatewayError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueCode::BusinessRule,
            side,
            format!("{} did not accept the request", mapping.display_name),
        ),
        None => GatewayError::new(
            StatusCode::BAD_GATEWAY,
            IssueCode::Exception,
            side,
            format!("{} answered HTTP {}, which the mapping does not translate", mapping.display_name, response.status),
        ),
    }
}
