//! Between gateway resources and upstream objects: the variables a gateway id encodes, the FHIR Media an
//! upstream object maps to, and the checks an inbound resource must pass.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::Value;

use super::errors::mapping_error;
use super::{Context, env};
use crate::error::{GatewayError, Issue, IssueCode};
use crate::json::Payloads;
use crate::mapping::template::Scope;
use crate::mapping::{Category, Interaction, Mapping};

/// The variables encoded in a gateway id, plus `gateway_id` itself (for messages). An id part named
/// like a connection parameter must carry the connection's value (another practice's id is not ours).
pub(super) fn id_vars(
    category: &Category,
    gateway_id: &str,
    ctx: &Context,
) -> Result<BTreeMap<String, Value>, GatewayError> {
    let not_ours = || GatewayError::not_found(format!("Media/{gateway_id} is not a known Media id"));
    let vars = category.id.parse(gateway_id).ok_or_else(not_ours)?;
    if vars.iter().any(|(k, v)| ctx.params.get(k).is_some_and(|own| own != v)) {
        return Err(not_ours());
    }
    let mut vars = string_vars(vars);
    vars.insert("gateway_id".into(), Value::String(gateway_id.to_string()));
    Ok(vars)
}

fn string_vars(vars: BTreeMap<String, String>) -> BTreeMap<String, Value> {
    vars.into_iter().map(|(k, v)| (k, Value::String(v))).collect()
}

/// The category's `resource.bind` values for one upstream object (which may read `vars`), as text.
pub(super) fn bind_object(
    mapping: &Mapping,
    category: &Category,
    upstream: &Value,
    vars: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, GatewayError> {
    let scope = Scope { document: upstream, vars, headers: None, transforms: env(mapping, Some(category), None) };
    let mut id_vars = BTreeMap::new();
    for (name, expr) in &category.bind {
        let value = expr.eval_string(&scope).map_err(|e| mapping_error(mapping, e))?.ok_or_else(|| {
            mapping_error(mapping, format!("{} returned a {} without `{name}`", mapping.display_name, category.name))
        })?;
        id_vars.insert(name.clone(), value);
    }
    let gateway_id = category.id.render(&id_vars).ok_or_else(|| {
        mapping_error(mapping, format!("{} returned an id that does not fit a FHIR id", mapping.display_name))
    })?;
    let mut bound = string_vars(id_vars);
    bound.insert("gateway_id".into(), Value::String(gateway_id));
    Ok(bound)
}

/// Maps one upstream object to a FHIR Media with the gateway's id and content URL. `vars` are the
/// interaction's variables, which the category's `bind` may read (e.g. the patient of a card image).
pub fn normalize(
    mapping: &Mapping,
    category: &Category,
    upstream: &Value,
    ctx: &Context,
    vars: &BTreeMap<String, Value>,
) -> Result<Value, GatewayError> {
    let bound = bind_object(mapping, category, upstream, vars)?;
    let mut vars = vars.clone();
    vars.extend(bound);
    let gateway_id = vars.get("gateway_id").and_then(Value::as_str).unwrap_or_default().to_string();
    vars.insert("content_url".into(), Value::String(format!("{}/Media/{gateway_id}/$content", ctx.fhir_base)));
    let transforms = env(mapping, Some(category), Some(&ctx.payloads));
    let scope = Scope { document: upstream, vars: &vars, headers: None, transforms };
    category
        .template
        .render(&scope)
        .map_err(|e| mapping_error(mapping, e))?
        .ok_or_else(|| mapping_error(mapping, "the resource template rendered nothing".into()))
}

/// Runs a create's checks, reporting every failing one.
pub fn run_checks(
    mapping: &Mapping,
    interaction: &Interaction,
    resource: &Value,
    category: &Category,
    payloads: &Payloads,
) -> Result<(), GatewayError> {
    let empty = BTreeMap::new();
    let transforms = env(mapping, Some(category), Some(payloads));
    let scope = Scope { document: resource, vars: &empty, headers: None, transforms };
    let mut failures: Vec<(StatusCode, Issue)> = Vec::new();
    for check in &interaction.checks {
        let issue = |code, message: String| Issue { code, message, expression: vec![check.expression.clone()] };
        match check.path.eval(&scope) {
            Ok(None) if check.required => {
                failures.push((StatusCode::BAD_REQUEST, issue(IssueCode::Required, check.message.clone())))
            }
            Ok(None) => {}
            Ok(Some(value)) => {
                let text = match &value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let allowed = check.one_of.as_ref().is_none_or(|set| set.contains(&text));
                let matches = check.pattern.as_ref().is_none_or(|p| p.is_match(&text));
                if !allowed || !matches {
                    failures.push((check.status, issue(check.code, check.message.clone())));
                }
            }
            Err(e) => failures.push((check.status, issue(check.code, format!("{}: {e}", check.message)))),
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    // The most basic problem decides the status: a missing or malformed element (400) before a rule (422).
    let status = failures.iter().map(|f| f.0).min().unwrap_or(StatusCode::BAD_REQUEST);
    Err(GatewayError::client_issues(status, failures.into_iter().map(|f| f.1).collect()))
}
