//! Writes: create (choosing the category from the parameter or the mapping's extension), update and
//! JSON Patch (both built on the current resource), and delete.

use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::input::{check_patch_document, query_params, read_fhir_body, single, validate_resource};
use super::{OrgCtx, category_for, choose_category, json_response, read, resource_response, written_but_unread};
use crate::error::{GatewayError, IssueCode};
use crate::json::Payloads;
use crate::mapping::engine::{self, Outcome, Run};
use crate::mapping::{Category, Interaction, Mapping};
use crate::request::{GatewayRequest, GatewayResponse};
use crate::state::AppState;

pub(super) async fn create(state: &AppState, o: &OrgCtx, req: GatewayRequest) -> Result<GatewayResponse, GatewayError> {
    let params = query_params(&req)?;
    let requested = single(&params, "category")?;
    let (resource, payloads) = read_fhir_body(req, &o.client_limits).await?;
    validate_resource(&resource)?;
    if resource.get("id").is_some() {
        return Err(
            GatewayError::invalid("a create must not carry an id; the gateway assigns it").with_expression("Media.id")
        );
    }
    let from_extension = category_extension(&o.mapping, &resource)?;
    if let (Some(q), Some(e)) = (&requested, &from_extension)
        && q != e
    {
        return Err(GatewayError::invalid(format!(
            "the `category` parameter (`{q}`) and the category extension (`{e}`) disagree; give one"
        ))
        .with_expression("category"));
    }
    let category = choose_category(&o.mapping, requested.or(from_extension).as_deref())?;
    let mut run = Run::create(&o.mapping, category, resource, o.context_with(payloads))?;
    let created = match o.client.run(&mut run).await? {
        Outcome::Resource(r) => r,
        Outcome::Written { id, problem } => return Ok(written_but_unread(o, &id, &problem, StatusCode::CREATED)),
        _ => return Err(GatewayError::gateway("create did not produce a resource")),
    };
    state.created.record(&o.org.id, &created);
    let mut response = resource_response(StatusCode::CREATED, &created, run.payloads())?;
    if let Some(id) = created.get("id").and_then(Value::as_str)
        && let Ok(location) = HeaderValue::from_str(&format!("{}/Media/{id}", o.fhir_base))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The category a Media names in the mapping's category extension (`valueCode` or `valueString`).
fn category_extension(mapping: &Mapping, resource: &Value) -> Result<Option<String>, GatewayError> {
    let Some(url) = &mapping.category_extension else { return Ok(None) };
    let values: Vec<&str> = resource
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("url").and_then(Value::as_str) == Some(url))
        .filter_map(|e| e.get("valueCode").or_else(|| e.get("valueString")).and_then(Value::as_str))
        .collect();
    match values.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).to_string())),
        _ => Err(GatewayError::invalid(format!("give the category extension `{url}` once"))
            .with_expression("Media.extension")),
    }
}

/// `PUT`: the body replaces the current resource.
pub(super) async fn put(
    state: &AppState,
    o: &OrgCtx,
    id: &str,
    req: GatewayRequest,
) -> Result<GatewayResponse, GatewayError> {
    let category = category_for(o, id)?;
    let (resource, payloads) = read_fhir_body(req, &o.client_limits).await?;
    validate_resource(&resource)?;
    declared(o, category, "update", category.update.as_ref())?;
    match resource.get("id").and_then(Value::as_str) {
        Some(body_id) if body_id == id => {}
        _ => {
            return Err(GatewayError::invalid(format!("an update must carry the id of the URL: set `id` to `{id}`"))
                .with_expression("Media.id"));
        }
    }
    update(state, o, category, id, payloads, |_| Ok(resource)).await
}

/// `PATCH` with a JSON Patch document, applied to the current resource.
pub(super) async fn patch(
    state: &AppState,
    o: &OrgCtx,
    id: &str,
    req: GatewayRequest,
) -> Result<GatewayResponse, GatewayError> {
    let category = category_for(o, id)?;
    // The document is checked first, so a malformed patch is reported as such even where the EHR
    // cannot update.
    let (patch, payloads) = check_patch_document(req, &o.client_limits).await?;
    declared(o, category, "patch", category.update.as_ref())?;
    update(state, o, category, id, payloads, move |current| {
        let mut patched = current.clone();
        json_patch::patch(&mut patched, &patch).map_err(|e| {
            GatewayError::client(
                StatusCode::UNPROCESSABLE_ENTITY,
                IssueCode::BusinessRule,
                format!("the patch does not apply to the current Media: {e}"),
            )
        })?;
        if patched.get("id") != current.get("id") {
            return Err(GatewayError::invalid("a patch may not change the id").with_expression("Media.id"));
        }
        Ok(patched)
    })
    .await
}

pub(super) async fn delete(state: &AppState, o: &OrgCtx, id: &str) -> Result<GatewayResponse, GatewayError> {
    let category = category_for(o, id)?;
    declared(o, category, "delete", category.delete.as_ref())?;
    let mut run = Run::delete(&o.mapping, category, id, o.context())?;
    match o.client.run(&mut run).await? {
        Outcome::Done => {}
        _ => return Err(GatewayError::gateway("delete did not complete")),
    }
    state.created.remove(&o.org.id, id);
    let outcome = json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": format!("Media/{id} was deleted in {}", o.mapping.display_name)}]
    });
    Ok(json_response(StatusCode::OK, &outcome))
}

/// A 405 naming the EHR and the methods it allows, unless the category declares the interaction.
fn declared<'c>(
    o: &OrgCtx,
    category: &Category,
    interaction: &str,
    declared: Option<&'c Interaction>,
) -> Result<&'c Interaction, GatewayError> {
    declared.ok_or_else(|| {
        engine::not_supported(&o.mapping, interaction, Some(category)).with_allow(category.instance_methods())
    })
}

/// Reads the current resource, builds the new one from it (`make`), validates it and runs the update.
async fn update(
    state: &AppState,
    o: &OrgCtx,
    category: &Category,
    id: &str,
    payloads: Payloads,
    make: impl FnOnce(&Value) -> Result<Value, GatewayError>,
) -> Result<GatewayResponse, GatewayError> {
    // What an EHR answers carries its media as content URLs, so `current` refers to none of its own.
    let (current, current_payloads) = read(o, id).await?;
    let resource = make(&current)?;
    validate_resource(&resource)?;
    if engine::unchanged(&current, &resource) {
        return resource_response(StatusCode::OK, &current, &current_payloads);
    }
    let mut run = Run::update(&o.mapping, category, id, resource, &current, o.context_with(payloads))?;
    let updated = match o.client.run(&mut run).await? {
        Outcome::Resource(r) => r,
        Outcome::Written { id, problem } => return Ok(written_but_unread(o, &id, &problem, StatusCode::OK)),
        _ => return Err(GatewayError::gateway("update did not produce a resource")),
    };
    state.created.replace(&o.org.id, &updated);
    resource_response(StatusCode::OK, &updated, run.payloads())
}
