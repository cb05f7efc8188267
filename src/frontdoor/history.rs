//! vread and history. No EHR keeps versions of media, so these answer from what the gateway knows: the
//! current resource for vread and instance history, and its own record of writes for type history.

use std::time::SystemTime;

use http::StatusCode;
use serde_json::Value;

use super::{OrgCtx, bundle, json_response, read, resource_response, run_response, version_of};
use crate::error::GatewayError;
use crate::fhir::primitive::{is_valid_instant, parse_instant};
use crate::request::GatewayResponse;
use crate::state::AppState;

pub(super) async fn vread(o: &OrgCtx, id: &str, version: &str) -> Result<GatewayResponse, GatewayError> {
    let (resource, payloads) = read(o, id).await?;
    let current = version_of(&resource);
    if *version != current {
        return Err(GatewayError::not_found(format!(
            "Media/{id} has no version `{}`; the gateway knows only the current version {current}",
            version.chars().take(64).collect::<String>()
        )));
    }
    resource_response(StatusCode::OK, &resource, &payloads)
}

/// Takes the query parameters rather than the request: the request body is not `Sync`, and this future
/// must be `Send`.
pub(super) async fn instance(
    o: &OrgCtx,
    params: &[(String, String)],
    id: &str,
) -> Result<GatewayResponse, GatewayError> {
    history_controls(params, false)?;
    let (resource, payloads) = read(o, id).await?;
    run_response(StatusCode::OK, &bundle::history(o, &[resource], 1), &payloads)
}

pub(super) fn of_type(
    state: &AppState,
    o: &OrgCtx,
    params: &[(String, String)],
) -> Result<GatewayResponse, GatewayError> {
    let (count, since) = history_controls(params, true)?;
    let known = state.created.list(&o.org.id, since);
    let total = known.len();
    let page: Vec<Value> = known.into_iter().take(count).map(|(_, r)| r).collect();
    Ok(json_response(StatusCode::OK, &bundle::history(o, &page, total)))
}

/// `_count` and `_since` for history; other parameters are refused.
fn history_controls(
    params: &[(String, String)],
    allow_since: bool,
) -> Result<(usize, Option<SystemTime>), GatewayError> {
    let mut count = 50;
    let mut since = None;
    for (k, v) in params {
        match k.as_str() {
            "_count" => {
                count = v.parse::<usize>().ok().filter(|n| *n >= 1).map(|n| n.min(1000)).ok_or_else(|| {
                    GatewayError::invalid("`_count` must be a whole number of at least 1").with_expression("_count")
                })?
            }
            "_since" => {
                if !is_valid_instant(v) {
                    return Err(GatewayError::invalid("`_since` must be a FHIR instant such as 2024-01-31T10:00:00Z")
                        .with_expression("_since"));
                }
                if allow_since {
                    since = parse_instant(v);
                }
            }
            "_format" => {}
            other => {
                return Err(GatewayError::invalid(format!(
                    "history supports only _count and _since, not `{}`",
                    other.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    Ok((count, since))
}
