//! The canonical FHIR R4 Media API: routes, request validation, and turning mapping outcomes into FHIR
//! responses (Media, searchset and history Bundles, CapabilityStatement, streamed content).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use serde_json::{Value, json};

use crate::body::{self, Body};
use crate::error::{GatewayError, Issue, IssueCode};
use crate::fhir::{self, validate};
use crate::mapping::engine::{self, Context, Outcome, Run, UpstreamResponse};
use crate::mapping::{Category, Mapping};
use crate::middleware::body_limit::body_error;
use crate::middleware::{GatewayRequest, GatewayResponse};
use crate::state::{AppState, Organization};
use crate::upstream::UpstreamClient;

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

const FHIR_PREFIX: &str = "/fhir/4";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    /// `GET /admin/mappings`: the active mapping set and the last reload.
    AdminMappings,
    /// `POST /admin/mappings/reload`: reload the mapping folder now.
    AdminReload,
    Metadata {
        org: String,
    },
    Create {
        org: String,
    },
    Search {
        org: String,
    },
    SearchPost {
        org: String,
    },
    HistoryType {
        org: String,
    },
    Read {
        org: String,
        id: String,
    },
    Update {
        org: String,
        id: String,
    },
    Patch {
        org: String,
        id: String,
    },
    Delete {
        org: String,
        id: String,
    },
    HistoryInstance {
        org: String,
        id: String,
    },
    VRead {
        org: String,
        id: String,
        version: String,
    },
    Content {
        org: String,
        id: String,
    },
    MethodNotAllowed {
        org: Option<String>,
        allowed: &'static str,
    },
    NotFound {
        org: Option<String>,
    },
}

impl Route {
    pub fn classify(method: &Method, path: &str) -> Route {
        if path == "/healthz" {
            return if method == Method::GET {
                Route::Healthz
            } else {
                Route::MethodNotAllowed { org: None, allowed: "GET" }
            };
        }
        match (path, method) {
            ("/admin/mappings", &Method::GET) => return Route::AdminMappings,
            ("/admin/mappings/reload", &Method::POST) => return Route::AdminReload,
            ("/admin/mappings", _) => return Route::MethodNotAllowed { org: None, allowed: "GET" },
            ("/admin/mappings/reload", _) => return Route::MethodNotAllowed { org: None, allowed: "POST" },
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/organizations/") else { return Route::NotFound { org: None } };
        let (org, rest) = rest.split_once('/').unwrap_or((rest, ""));
        if org.is_empty() {
            return Route::NotFound { org: None };
        }
        let org = org.to_string();
        let Some(rest) = format!("/{rest}").strip_prefix(FHIR_PREFIX).map(str::to_string) else {
            return Route::NotFound { org: Some(org) };
        };
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let m = method.clone();
        let not_allowed = |allowed| Route::MethodNotAllowed { org: Some(org.clone()), allowed };
        match segments.as_slice() {
            ["metadata"] => {
                if m == Method::GET {
                    Route::Metadata { org }
                } else {
                    not_allowed("GET")
                }
            }
            ["Media"] => match m {
                Method::GET => Route::Search { org },
                Method::POST => Route::Create { org },
                _ => not_allowed("GET, POST"),
            },
            ["Media", "_search"] => {
                if m == Method::POST {
                    Route::SearchPost { org }
                } else {
                    not_allowed("POST")
                }
            }
            ["Media", "_history"] => {
                if m == Method::GET {
                    Route::HistoryType { org }
                } else {
                    not_allowed("GET")
                }
            }
            ["Media", id] => {
                let id = id.to_string();
                match m {
                    Method::GET => Route::Read { org, id },
                    Method::PUT => Route::Update { org, id },
                    Method::PATCH => Route::Patch { org, id },
                    Method::DELETE => Route::Delete { org, id },
                    _ => not_allowed("GET, PUT, PATCH, DELETE"),
                }
            }
            ["Media", id, "_history"] => {
                if m == Method::GET {
                    Route::HistoryInstance { org, id: id.to_string() }
                } else {
                    not_allowed("GET")
                }
            }
            ["Media", id, "_history", version] => {
                if m == Method::GET {
                    Route::VRead { org, id: id.to_string(), version: version.to_string() }
                } else {
                    not_allowed("GET")
                }
            }
            ["Media", id, "$content"] => {
                if m == Method::GET {
                    Route::Content { org, id: id.to_string() }
                } else {
                    not_allowed("GET")
                }
            }
            _ => Route::NotFound { org: Some(org) },
        }
    }

    pub fn organization(&self) -> Option<&str> {
        match self {
            Route::Healthz | Route::AdminMappings | Route::AdminReload => None,
            Route::MethodNotAllowed { org, .. } | Route::NotFound { org } => org.as_deref(),
            Route::Metadata { org }
            | Route::Create { org }
            | Route::Search { org }
            | Route::SearchPost { org }
            | Route::HistoryType { org }
            | Route::Read { org, .. }
            | Route::Update { org, .. }
            | Route::Patch { org, .. }
            | Route::Delete { org, .. }
            | Route::HistoryInstance { org, .. }
            | Route::VRead { org, .. }
            | Route::Content { org, .. } => Some(org),
        }
    }

    /// The interaction name used in logs.
    pub fn interaction(&self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::AdminMappings => "admin-mappings",
            Route::AdminReload => "admin-reload",
            Route::Metadata { .. } => "capabilities",
            Route::Create { .. } => "create",
            Route::Search { .. } | Route::SearchPost { .. } => "search-type",
            Route::HistoryType { .. } => "history-type",
            Route::Read { .. } => "read",
            Route::Update { .. } => "update",
            Route::Patch { .. } => "patch",
            Route::Delete { .. } => "delete",
            Route::HistoryInstance { .. } => "history-instance",
            Route::VRead { .. } => "vread",
            Route::Content { .. } => "content",
            Route::MethodNotAllowed { .. } | Route::NotFound { .. } => "unknown",
        }
    }
}

/// Everything a handler needs about the organization a request is for.
struct OrgCtx {
    org: Arc<Organization>,
    mapping: Arc<Mapping>,
    client: Arc<UpstreamClient>,
    fhir_base: String,
    request_id: Option<String>,
}

impl OrgCtx {
    fn context(&self) -> Context {
        Context {
            fhir_base: self.fhir_base.clone(),
            params: self.client.settings().params.clone(),
            request_id: self.request_id.clone(),
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
    let request_id = req.extensions().get::<crate::middleware::request_id::RequestId>().map(|r| r.0.clone());
    Ok(OrgCtx { fhir_base: state.fhir_base(key), org, mapping, client, request_id })
}

pub fn json_response(status: StatusCode, value: &Value) -> GatewayResponse {
    let mut r = Response::new(body::full(serde_json::to_vec(value).unwrap_or_default()));
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
            Ok(json_response(StatusCode::OK, &capability_statement(&o, &state)))
        }
        Route::Create { ref org } => {
            let o = org_ctx(&state, &req, org)?;
            create(&state, &o, req).await
        }
        Route::Read { ref org, ref id } => {
            let o = org_ctx(&state, &req, org)?;
            let resource = read(&o, id).await?;
            Ok(resource_response(StatusCode::OK, &resource))
        }
        Route::VRead { ref org, ref id, ref version } => {
            let o = org_ctx(&state, &req, org)?;
            let resource = read(&o, id).await?;
            let current = version_of(&resource);
            if *version != current {
                return Err(GatewayError::not_found(format!(
                    "Media/{id} has no version `{}`; the gateway knows only the current version {current}",
                    version.chars().take(64).collect::<String>()
                )));
            }
            Ok(resource_response(StatusCode::OK, &resource))
        }
        Route::HistoryInstance { ref org, ref id } => {
            let o = org_ctx(&state, &req, org)?;
            let params = query_params(&req)?;
            history_controls(&params, false)?;
            let resource = read(&o, id).await?;
            Ok(json_response(StatusCode::OK, &history_bundle(&o, &[resource], 1)))
        }
        Route::HistoryType { ref org } => {
            let o = org_ctx(&state, &req, org)?;
            let params = query_params(&req)?;
            let (count, since) = history_controls(&params, true)?;
            let known = state.created.list(&o.org.id, since);
            let total = known.len();
            let page: Vec<Value> = known.into_iter().take(count).map(|(_, r)| r).collect();
            Ok(json_response(StatusCode::OK, &history_bundle(&o, &page, total)))
        }
        Route::Update { ref org, ref id } => {
            let o = org_ctx(&state, &req, org)?;
            let category = category_for(&o, id)?;
            let (_, resource) = read_fhir_body(req).await?;
            validate_resource(&resource)?;
            if category.update.is_none() {
                return Err(
                    engine::not_supported(&o.mapping, "update", Some(category)).with_allow(category.instance_methods())
                );
            }
            match resource.get("id").and_then(Value::as_str) {
                Some(body_id) if body_id == id => {}
                _ => {
                    return Err(GatewayError::invalid(format!(
                        "an update must carry the id of the URL: set `id` to `{id}`"
                    ))
                    .with_expression("Media.id"));
                }
            }
            update(&state, &o, category, id, |_| Ok(resource)).await
        }
        Route::Patch { ref org, ref id } => {
            let o = org_ctx(&state, &req, org)?;
            let category = category_for(&o, id)?;
            // The document is checked first, so a malformed patch is reported as such even where the EHR
            // cannot update.
            let patch = check_patch_document(req).await?;
            if category.update.is_none() {
                return Err(
                    engine::not_supported(&o.mapping, "patch", Some(category)).with_allow(category.instance_methods())
                );
            }
            update(&state, &o, category, id, move |current| {
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
        Route::Delete { ref org, ref id } => {
            let o = org_ctx(&state, &req, org)?;
            let category = category_for(&o, id)?;
            if category.delete.is_none() {
                return Err(
                    engine::not_supported(&o.mapping, "delete", Some(category)).with_allow(category.instance_methods())
                );
            }
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
        Route::Search { ref org } => {
            let o = org_ctx(&state, &req, org)?;
            let params = query_params(&req)?;
            search(&o, params).await
        }
        Route::SearchPost { ref org } => {
            let o = org_ctx(&state, &req, org)?;
            let mut params = query_params(&req)?;
            let content_type =
                req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            if content_type.split(';').next().map(str::trim) != Some("application/x-www-form-urlencoded") {
                return Err(unsupported_media_type("POST _search needs an application/x-www-form-urlencoded body"));
            }
            let bytes = read_body(req).await?;
            params.extend(form_urlencoded::parse(&bytes).into_owned());
            search(&o, params).await
        }
        Route::Content { ref org, ref id } => {
            let o = org_ctx(&state, &req, org)?;
            let params = query_params(&req)?;
            content(&o, id, &params).await
        }
    }
}

/// Reads the current resource, builds the new one from it (`make`), validates it and runs the update.
async fn update(
    state: &AppState,
    o: &OrgCtx,
    category: &Category,
    id: &str,
    make: impl FnOnce(&Value) -> Result<Value, GatewayError>,
) -> Result<GatewayResponse, GatewayError> {
    let current = read(o, id).await?;
    let resource = make(&current)?;
    validate_resource(&resource)?;
    if engine::unchanged(&current, &resource) {
        return Ok(resource_response(StatusCode::OK, &current));
    }
    let mut run = Run::update(&o.mapping, category, id, resource, &current, o.context())?;
    let updated = match o.client.run(&mut run).await? {
        Outcome::Resource(r) => r,
        Outcome::Written { id, problem } => return Ok(written_but_unread(o, &id, &problem, StatusCode::OK)),
        _ => return Err(GatewayError::gateway("update did not produce a resource")),
    };
    state.created.replace(&o.org.id, &updated);
    Ok(resource_response(StatusCode::OK, &updated))
}

fn admin_json(status: StatusCode, value: &Value) -> GatewayResponse {
    let mut r = json_response(status, value);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn unsupported_media_type(message: &str) -> GatewayError {
    GatewayError::client(StatusCode::UNSUPPORTED_MEDIA_TYPE, IssueCode::NotSupported, message)
}

async fn read_body(req: GatewayRequest) -> Result<Bytes, GatewayError> {
    Ok(req.into_body().collect().await.map_err(|e| body_error(e.as_ref()))?.to_bytes())
}

/// Reads a FHIR JSON body: 415 for other media types, 413 over the limit, 400 for malformed JSON.
async fn read_fhir_body(req: GatewayRequest) -> Result<(http::request::Parts, Value), GatewayError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !fhir::is_fhir_json(content_type) {
        return Err(unsupported_media_type(
            "send the resource as application/fhir+json (application/json and application/json+fhir are accepted too)",
        ));
    }
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.map_err(|e| body_error(e.as_ref()))?.to_bytes();
    let value = serde_json::from_slice(&bytes).map_err(|e| {
        GatewayError::invalid(format!(
            "the body is not valid JSON (line {}, column {}): fix the syntax",
            e.line(),
            e.column()
        ))
    })?;
    Ok((parts, value))
}

async fn check_patch_document(req: GatewayRequest) -> Result<json_patch::Patch, GatewayError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.split(';').next().map(str::trim) != Some("application/json-patch+json") {
        return Err(unsupported_media_type("PATCH needs an application/json-patch+json body (RFC 6902)"));
    }
    let bytes = read_body(req).await?;
    serde_json::from_slice::<json_patch::Patch>(&bytes)
        .map_err(|e| GatewayError::invalid(format!("the body is not a JSON Patch document (RFC 6902): {e}")))
}

fn validate_resource(resource: &Value) -> Result<(), GatewayError> {
    let problems = validate::validate_media(resource);
    if problems.is_empty() {
        return Ok(());
    }
    let issues = problems
        .into_iter()
        .map(|p| Issue {
            code: match p.kind {
                validate::ProblemKind::Required => IssueCode::Required,
                validate::ProblemKind::Invalid => IssueCode::Invalid,
            },
            message: p.message,
            expression: vec![p.expression],
        })
        .collect();
    Err(GatewayError::client_issues(StatusCode::BAD_REQUEST, issues))
}

fn query_params(req: &GatewayRequest) -> Result<Vec<(String, String)>, GatewayError> {
    Ok(req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default())
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

async fn create(state: &AppState, o: &OrgCtx, req: GatewayRequest) -> Result<GatewayResponse, GatewayError> {
    let params = query_params(&req)?;
    let requested = single(&params, "category")?;
    let (_, resource) = read_fhir_body(req).await?;
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
    let mut run = Run::create(&o.mapping, category, resource, o.context())?;
    let created = match o.client.run(&mut run).await? {
        Outcome::Resource(r) => r,
        Outcome::Written { id, problem } => return Ok(written_but_unread(o, &id, &problem, StatusCode::CREATED)),
        _ => return Err(GatewayError::gateway("create did not produce a resource")),
    };
    state.created.record(&o.org.id, created.clone());
    let mut response = resource_response(StatusCode::CREATED, &created);
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

fn resource_response(status: StatusCode, resource: &Value) -> GatewayResponse {
    let mut r = json_response(status, resource);
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{}\"", version_of(resource))) {
        r.headers_mut().insert(header::ETAG, etag);
    }
    r
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

async fn read(o: &OrgCtx, id: &str) -> Result<Value, GatewayError> {
    let category = category_for(o, id)?;
    let mut run = Run::read(&o.mapping, category, id, o.context())?;
    match o.client.run(&mut run).await? {
        Outcome::Resource(r) => Ok(r),
        _ => Err(GatewayError::gateway("read did not produce a resource")),
    }
}

fn single(params: &[(String, String)], name: &str) -> Result<Option<String>, GatewayError> {
    let mut values = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone());
    let first = values.next();
    if values.next().is_some() {
        return Err(GatewayError::invalid(format!("`{name}` may be given only once")).with_expression(name.to_string()));
    }
    Ok(first)
}

/// Search parameters whose repeats make a range (AND of bounds) rather than an unsupported AND.
const RANGE_PARAMS: &[&str] = &["created"];

async fn search(o: &OrgCtx, params: Vec<(String, String)>) -> Result<GatewayResponse, GatewayError> {
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
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            json!({"fullUrl": format!("{}/Media/{id}", o.fhir_base), "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    let mut bundle = json!({"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries});
    if let Some(total) = total {
        bundle["total"] = json!(total);
    }
    if bundle["entry"].as_array().is_some_and(Vec::is_empty) {
        bundle.as_object_mut().map(|b| b.remove("entry"));
    }
    Ok(json_response(StatusCode::OK, &bundle))
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
                if !validate::is_valid_instant(v) {
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

/// Parses a FHIR instant (already validated) into a SystemTime, honouring its offset.
fn parse_instant(v: &str) -> Option<SystemTime> {
    let date: Vec<i64> = v.get(..10)?.split('-').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let time: Vec<i64> = v.get(11..19)?.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let (y, m, d) = (date[0], date[1], date[2]);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut secs = days * 86_400 + time[0] * 3600 + time[1] * 60 + time[2];
    let tz = &v[19..];
    let tz = tz.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    if let Some(sign @ ('+' | '-')) = tz.chars().next() {
        let h: i64 = tz.get(1..3)?.parse().ok()?;
        let mi: i64 = tz.get(4..6)?.parse().ok()?;
        let off = h * 3600 + mi * 60;
        secs -= if sign == '+' { off } else { -off };
    }
    if secs < 0 {
        return Some(SystemTime::UNIX_EPOCH);
    }
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64))
}

fn history_bundle(o: &OrgCtx, resources: &[Value], total: usize) -> Value {
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
            json!({
                "fullUrl": format!("{}/Media/{id}", o.fhir_base),
                "resource": r,
                "request": {"method": "POST", "url": "Media"},
                "response": {"status": "201 Created", "etag": format!("W/\"{}\"", version_of(r))},
            })
        })
        .collect();
    let mut bundle = json!({"resourceType": "Bundle", "type": "history", "total": total, "entry": entries});
    if resources.is_empty() {
        bundle.as_object_mut().map(|b| b.remove("entry"));
    }
    bundle
}

async fn content(o: &OrgCtx, id: &str, params: &[(String, String)]) -> Result<GatewayResponse, GatewayError> {
    let category = category_for(o, id)?;
    let run = Run::content(&o.mapping, category, id, params, o.context())?;
    let upstream = o.client.stream(&run).await?;
    if upstream.status != 200 {
        // Error bodies are small; read a bounded prefix to translate them.
        let mut collected = Vec::new();
        let mut stream = upstream.body;
        while let Some(Ok(chunk)) = stream.next().await {
            collected.extend_from_slice(&chunk);
            if collected.len() > 64 * 1024 {
                break;
            }
        }
        let vars: BTreeMap<String, Value> = [("gateway_id".to_string(), Value::String(id.to_string()))].into();
        let response = UpstreamResponse { status: upstream.status, headers: upstream.headers, body: collected.into() };
        return Err(engine::translate_error(&o.mapping, &response, &vars));
    }
    let content_type = upstream.headers.get(header::CONTENT_TYPE).cloned();
    let length = upstream.headers.get(header::CONTENT_LENGTH).cloned();
    let frames = upstream.body.map(|chunk| chunk.map(hyper::body::Frame::data));
    let mut response: Response<Body> = Response::new(body::boxed(StreamBody::new(frames)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type.unwrap_or(HeaderValue::from_static("application/octet-stream")));
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, length);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(response)
}

fn capability_statement(o: &OrgCtx, state: &AppState) -> Value {
    let set = state.registry.snapshot();
    let m = &o.mapping;
    let supports = |check: &dyn Fn(&Category) -> bool| m.categories.values().any(check);
    let mut interactions = vec![];
    if supports(&|c| c.create.is_some()) {
        interactions.push("create");
    }
    if supports(&|c| c.read.is_some()) {
        // vread and instance history answer from the current version.
        interactions.extend(["read", "vread", "history-instance"]);
    }
    if supports(&|c| c.update.is_some()) {
        interactions.extend(["update", "patch"]);
    }
    if supports(&|c| c.delete.is_some()) {
        interactions.push("delete");
    }
    if supports(&|c| c.search.is_some()) {
        interactions.push("search-type");
    }
    interactions.push("history-type");
    let mut params: Vec<&str> =
        m.categories.values().flat_map(|c| c.search.iter().flat_map(|s| s.params.keys().map(String::as_str))).collect();
    params.sort();
    params.dedup();
    let search_params: Vec<Value> = params
        .iter()
        .map(|p| {
            let kind = match *p {
                "_id" | "_language" | "status" | "identifier" | "modality" | "site" | "type" | "view" => "token",
                "created" => "date",
                p if !SEARCH_PARAMS.contains(&p) => "string",
                _ => "reference",
            };
            json!({"name": p, "type": kind})
        })
        .collect();
    let unsupported: Vec<String> = m.unsupported.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": rfc3339(set.loaded_at),
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "software": {"name": "ehr-gateway", "version": format!("{} (mappings {})", env!("CARGO_PKG_VERSION"), set.version)},
        "implementation": {"description": format!("{} via {}", o.org.name, m.display_name), "url": o.fhir_base},
        "rest": [{
            "mode": "server",
            "documentation": format!("Not supported by {}: {}", m.display_name, if unsupported.is_empty() { "nothing".into() } else { unsupported.join("; ") }),
            "resource": [{
                "type": "Media",
                "interaction": interactions.iter().map(|i| json!({"code": i})).collect::<Vec<_>>(),
                "searchParam": search_params,
            }]
        }]
    })
}

/// RFC 3339 / FHIR instant text (UTC, seconds) of a time.
pub fn rfc3339(t: SystemTime) -> String {
    chrono_free::Iso::from(t).0
}

/// Minimal RFC 3339 formatting of a SystemTime (UTC), without a date-time crate.
mod chrono_free {
    use std::time::SystemTime;

    pub struct Iso(pub String);

    impl From<SystemTime> for Iso {
        fn from(t: SystemTime) -> Self {
            let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
            let days = secs.div_euclid(86_400);
            let rem = secs.rem_euclid(86_400);
            // Civil from days (Howard Hinnant's algorithm).
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let m = if mp < 10 { mp + 3 } else { mp - 9 };
            let y = yoe + era * 400 + i64::from(m <= 2);
            Iso(format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_every_interaction() {
        let r = |m: &str, p: &str| Route::classify(&Method::from_bytes(m.as_bytes()).unwrap(), p);
        let base = "/organizations/demo/fhir/4";
        assert_eq!(r("GET", &format!("{base}/metadata")), Route::Metadata { org: "demo".into() });
        assert_eq!(r("POST", &format!("{base}/Media")), Route::Create { org: "demo".into() });
        assert_eq!(r("GET", &format!("{base}/Media")), Route::Search { org: "demo".into() });
        assert_eq!(r("POST", &format!("{base}/Media/_search")), Route::SearchPost { org: "demo".into() });
        assert_eq!(r("GET", &format!("{base}/Media/_history")), Route::HistoryType { org: "demo".into() });
        assert_eq!(r("GET", &format!("{base}/Media/x")), Route::Read { org: "demo".into(), id: "x".into() });
        assert_eq!(r("PUT", &format!("{base}/Media/x")), Route::Update { org: "demo".into(), id: "x".into() });
        assert_eq!(r("PATCH", &format!("{base}/Media/x")), Route::Patch { org: "demo".into(), id: "x".into() });
        assert_eq!(r("DELETE", &format!("{base}/Media/x")), Route::Delete { org: "demo".into(), id: "x".into() });
        assert_eq!(
            r("GET", &format!("{base}/Media/x/_history")),
            Route::HistoryInstance { org: "demo".into(), id: "x".into() }
        );
        assert_eq!(
            r("GET", &format!("{base}/Media/x/_history/1")),
            Route::VRead { org: "demo".into(), id: "x".into(), version: "1".into() }
        );
        assert_eq!(
            r("GET", &format!("{base}/Media/x/$content")),
            Route::Content { org: "demo".into(), id: "x".into() }
        );
        assert!(matches!(r("POST", &format!("{base}/Media/x")), Route::MethodNotAllowed { .. }));
        assert!(matches!(r("GET", "/organizations/demo/fhir/3/Media"), Route::NotFound { .. }));
        assert!(matches!(r("GET", "/elsewhere"), Route::NotFound { org: None }));
    }

    #[test]
    fn next_links_become_relative_to_the_base_url() {
        let base = "https://fumage-x.canvasmedical.com";
        assert_eq!(relative_link("/Media?_offset=10", base), "/Media?_offset=10");
        assert_eq!(relative_link("https://fumage-x.canvasmedical.com/Media?_offset=10", base), "/Media?_offset=10");
        assert_eq!(relative_link("https://elsewhere.example/Media?_offset=10", base), "/Media?_offset=10");
        assert_eq!(relative_link("https://h.example/fhir/r4/Media?x=1", "https://h.example/fhir/r4/"), "/Media?x=1");
        assert_eq!(relative_link("https://other.example/fhir/r4/Media?x=1", "https://h.example/fhir/r4"), "/Media?x=1");
    }

    #[test]
    fn instants_parse_with_offsets() {
        let utc = parse_instant("2024-01-31T10:00:00Z").unwrap();
        let plus = parse_instant("2024-01-31T12:00:00.123+02:00").unwrap();
        assert_eq!(utc, plus);
        assert_eq!(chrono_free::Iso::from(utc).0, "2024-01-31T10:00:00Z");
    }
}
