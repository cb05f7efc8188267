//! The canonical FHIR R4 Media API: what happens to a request that passed the middleware — dispatch by
//! route to the interaction's handler, and the shared pieces they answer with (the organization's
//! context, resource responses, reads).

mod bundle;
mod capabilities;
mod content;
mod history;
mod input;
pub mod record;
mod search;
mod write;

use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

pub use search::SEARCH_PARAMS;

use crate::body;
use crate::error::{GatewayError, IssueCode};
use crate::fhir::{self, validate};
use crate::json::{self, Limits, Payloads};
use crate::mapping::engine::{Context, Outcome, Run};
use crate::mapping::{Category, Mapping};
use crate::request::{GatewayRequest, GatewayResponse, RequestId, Route};
use crate::state::{AppState, Organization};
use crate::upstream::UpstreamClient;

/// Everything a handler needs about the organization a request is for.
struct OrgCtx {
    org: Arc<Organization>,
    mapping: Arc<Mapping>,
    client: Arc<UpstreamClient>,
    fhir_base: String,
    request_id: Option<String>,
    /// How large a client's JSON body may be.
    client_limits: Limits,
    upstream_limits: Limits,
}

impl OrgCtx {
    fn context(&self) -> Context {
        self.context_with(Payloads::default())
    }

    /// The context of a run over a body whose media are `payloads`.
    fn context_with(&self, payloads: Payloads) -> Context {
        Context {
            fhir_base: self.fhir_base.clone(),
            params: self.client.settings().params.clone(),
            request_id: self.request_id.clone(),
            payloads,
            upstream_limits: self.upstream_limits,
        }
    }
}

fn org_ctx(state: &AppState, req: &GatewayRequest, key: &str) -> Result<OrgCtx, GatewayError> {
    let org = req
        .extensions()
        .get::<Arc<Organization>>()
        .cloned()
        .ok_or_else(|| GatewayError::gateway("organization was not resolved"))?;
    let set = state.registry.snapshot();
    let mapping = set.get(&org.mapping).cloned().ok_or_else(|| {
        GatewayError::gateway(format!(
            "organization `{}` uses mapping `{}`, which is not loaded",
            org.slug, org.mapping
        ))
    })?;
    let client = state
        .clients
        .get(&org.connection)
        .cloned()
        .ok_or_else(|| GatewayError::gateway(format!("organization `{}` has no upstream connection", org.slug)))?;
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let limits = &state.config.server.limits;
    Ok(OrgCtx {
        fhir_base: state.fhir_base(key),
        org,
        mapping,
        client,
        request_id,
        client_limits: limits.client(),
        upstream_limits: limits.upstream(),
    })
}

/// A FHIR JSON response of a value the gateway built itself.
pub fn json_response(status: StatusCode, value: &Value) -> GatewayResponse {
    with_fhir_json(status, body::full(serde_json::to_vec(value).unwrap_or_default()))
}

/// A FHIR JSON response of a value a run produced: media it refers to are spliced in as they stream.
fn run_response(status: StatusCode, value: &Value, payloads: &Payloads) -> Result<GatewayResponse, GatewayError> {
    let body = json::json_body(value, payloads).map_err(|e| match e {
        json::SpliceError::Unknown => GatewayError::gateway("a media value of the answer is no longer held"),
        json::SpliceError::Misplaced => {
            GatewayError::gateway("the answer puts media inside a text; media can only be copied whole")
        }
    })?;
    Ok(with_fhir_json(status, body::from_outgoing(body)))
}

fn with_fhir_json(status: StatusCode, body: body::Body) -> GatewayResponse {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(fhir::FHIR_JSON));
    r
}

/// Handles one request that passed the middleware stack.
pub async fn handle(state: Arc<AppState>, req: GatewayRequest) -> Result<GatewayResponse, GatewayError> {
    let route = Route::classify(req.method(), req.uri().path());
    match route {
        Route::Healthz => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        Route::AdminMappings => Ok(admin_json(StatusCode::OK, &state.reloader.status())),
        Route::AdminReload => {
            let reloader = state.reloader.clone();
            let outcome = tokio::task::spawn_blocking(move || reloader.reload("admin request"))
                .await
                .map_err(|_| GatewayError::gateway("the reload task failed"))?;
            let status = if outcome.accepted { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
            Ok(admin_json(status, &state.reloader.status()))
        }
        Route::NotFound { .. } => Err(GatewayError::not_found(
            "no such endpoint; the API lives at /organizations/{id|slug}/fhir/4/Media and /metadata",
        )),
        Route::MethodNotAllowed { allowed, .. } => Err(GatewayError::client(
            StatusCode::METHOD_NOT_ALLOWED,
            IssueCode::NotSupported,
            format!("this endpoint allows only {allowed}"),
        )
        .with_allow(allowed)),
        Route::Metadata { ref org } => {
            let o = org_ctx(&state, &req, org)?;
            Ok(json_response(StatusCode::OK, &capabilities::capability_statement(&o, &state)))
        }
        Route::Create { ref org } => {
            let o = org_ctx(&state, &req, org)?;
            write::create(&state, &o, req).await
        }
        Route::Read { ref org, ref id } => {
            let o = org_ctx(&state, &req, org)?;
            let (resource, payloads) = read(&o, id).await?;
            resource_response(StatusCode::OK, &resource, &payloads)
        }
        Route::VRead { ref org, ref id, ref version } => {
            history::vread(&org_ctx(&state, &req, org)?, id, version).await
        }
        Route::HistoryInstance { ref org, ref id } => {
            let o = org_ctx(&state, &req, org)?;
            history::instance(&o, &input::query_params(&req)?, id).await
        }
        Route::HistoryType { ref org } => {
            let o = org_ctx(&state, &req, org)?;
            history::of_type(&state, &o, &input::query_params(&req)?)
        }
        Route::Update { ref org, ref id } => {
            let o = org_ctx(&state, &req, org)?;
            write::put(&state, &o, id, req).await
        }
        Route::Patch { ref org, ref id } => {
            let o = org_ctx(&state, &req, org)?;
            write::patch(&state, &o, id, req).await
        }
        Route::Delete { ref org, ref id } => {
            let o = org_ctx(&state, &req, org)?;
            write::delete(&state, &o, id).await
        }
        Route::Search { ref org } => {
            let o = org_ctx(&state, &req, org)?;
            search::search(&o, input::query_params(&req)?).await
        }
        Route::SearchPost { ref org } => {
            let o = org_ctx(&state, &req, org)?;
            search::search_post(&o, req).await
        }
        Route::Content { ref org, ref id } => {
            let o = org_ctx(&state, &req, org)?;
            content::content(&o, id, &input::query_params(&req)?).await
        }
    }
}

fn admin_json(status: StatusCode, value: &Value) -> GatewayResponse {
    let mut r = json_response(status, value);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The category named by the `category` parameter, or the mapping's default.
fn choose_category<'a>(mapping: &'a Mapping, requested: Option<&str>) -> Result<&'a Category, GatewayError> {
    let name = requested.unwrap_or(&mapping.default_category);
    mapping.category(name).ok_or_else(|| {
        let known: Vec<&str> = mapping.categories.keys().map(String::as_str).collect();
        GatewayError::invalid(format!(
            "category `{}` does not exist for {}; use one of: {}",
            name.chars().take(64).collect::<String>(),
            mapping.display_name,
            known.join(", ")
        ))
        .with_expression("category")
    })
}

/// 201 (or 200) for a write the EHR accepted but the gateway could not read back: the Location is real,
/// and an OperationOutcome warning says what failed, so the client does not send the write again.
fn written_but_unread(o: &OrgCtx, id: &str, problem: &GatewayError, status: StatusCode) -> GatewayResponse {
    let outcome = json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "warning",
            "code": problem.code().as_str(),
            "diagnostics": format!(
                "{} stored Media/{id}, but reading it back failed: {}. Do not send the write again; read it later.",
                o.mapping.display_name,
                problem.message()
            ),
        }]
    });
    let mut response = json_response(status, &outcome);
    if let Ok(location) = HeaderValue::from_str(&format!("{}/Media/{id}", o.fhir_base)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn version_of(resource: &Value) -> String {
    resource.pointer("/meta/versionId").and_then(Value::as_str).unwrap_or("1").to_string()
}

fn resource_response(
    status: StatusCode,
    resource: &Value,
    payloads: &Payloads,
) -> Result<GatewayResponse, GatewayError> {
    let mut r = run_response(status, resource, payloads)?;
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{}\"", version_of(resource))) {
        r.headers_mut().insert(header::ETAG, etag);
    }
    Ok(r)
}

fn category_for<'a>(o: &'a OrgCtx, id: &str) -> Result<&'a Category, GatewayError> {
    if !validate::is_valid_id(id) {
        return Err(GatewayError::invalid("a Media id is 1-64 characters of A-Z, a-z, 0-9, `-` and `.`")
            .with_expression("Media.id"));
    }
    o.mapping.category_for_id(id).map(|(c, _)| c).ok_or_else(|| {
        GatewayError::not_found(format!("Media/{id} is not a {} Media id of this organization", o.mapping.display_name))
    })
}

/// The current resource, with the media it refers to (if any).
async fn read(o: &OrgCtx, id: &str) -> Result<(Value, Payloads), GatewayError> {
    let category = category_for(o, id)?;
    let mut run = Run::read(&o.mapping, category, id, o.context())?;
    match o.client.run(&mut run).await? {
        Outcome::Resource(r) => Ok((r, run.take_payloads())),
        _ => Err(GatewayError::gateway("read did not produce a resource")),
    }
}
