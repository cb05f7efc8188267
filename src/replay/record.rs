//! Recording: a tap layer innermost in the stack writes one redacted cassette per front-door exchange,
//! with the upstream exchanges the `RecordingTransport` saw while that request ran (a task-local).
//! Token requests go through the unwrapped transport and are never recorded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Response};
use http_body_util::BodyExt;

use super::cassette::*;
use super::redact::Redactor;
use crate::body;
use crate::error::GatewayError;
use crate::fhir::outcome;
use crate::frontdoor::Route;
use crate::mapping::engine::UpstreamResponse;
use crate::middleware::body_limit::body_error;
use crate::middleware::{GatewayRequest, GatewayResponse};
use crate::state::{AppState, Organization};
use crate::upstream::transport::{BoxFuture, HttpRequest, StreamingResponse, Transport, TransportError};

tokio::task_local! {
    static CURRENT: Arc<Mutex<Vec<UpstreamExchange>>>;
}

/// Headers worth keeping in a cassette: they shape the exchange and carry no credentials.
const KEPT_HEADERS: &[&str] = &["content-type", "location", "retry-after", "etag", "log-cdata", "log-cdata-format"];

fn kept_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    KEPT_HEADERS
        .iter()
        .filter_map(|name| Some((name.to_string(), headers.get(*name)?.to_str().ok()?.to_string())))
        .collect()
}

/// Writes cassettes into `dir/<organization slug>/`.
pub struct Recorder {
    dir: PathBuf,
    redactor: Redactor,
    public_base: String,
    counter: AtomicU64,
}

impl Recorder {
    pub fn new(dir: PathBuf, redactor: Redactor, public_base: String) -> Self {
        // Continue numbering after existing cassettes so a second run adds rather than overwrites.
        let existing = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .flat_map(|org| std::fs::read_dir(org.path()).into_iter().flatten().filter_map(|e| e.ok()))
            .filter_map(|f| f.file_name().to_str()?.split('-').next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        Recorder { dir, redactor, public_base, counter: AtomicU64::new(existing) }
    }

    fn write(&self, mut cassette: Cassette) {
        if let Err(e) = self.redactor.redact(&mut cassette) {
            // Never write what could not be redacted.
            tracing::warn!(error = %e, "cassette not written: redaction failed");
            return;
        }
        let n = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        let dir = self.dir.join(&cassette.organization.slug);
        let file = dir.join(format!("{n:04}-{}.json", cassette.interaction));
        let result = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&file, cassette.to_pretty_json()));
        match result {
            Ok(()) => tracing::debug!(cassette = %file.display(), "recorded"),
            Err(e) => tracing::warn!(error = %e, dir = %dir.display(), "cannot write cassette"),
        }
    }
}

/// Handles a request through the front door and records it (when it is a recordable interaction of an
/// organization). Wraps the router rather than being a generic layer: it must see the final answer,
/// errors included, and the upstream exchanges made while answering.
pub async fn handle_recorded(
    recorder: Arc<Recorder>,
    state: Arc<AppState>,
    req: GatewayRequest,
) -> Result<GatewayResponse, GatewayError> {
    let route = Route::classify(req.method(), req.uri().path());
    let org = req.extensions().get::<Arc<Organization>>().cloned();
    let recordable = !matches!(
        route,
        Route::Healthz
            | Route::AdminMappings
            | Route::AdminReload
            // Type history answers from this process's memory, which a replay does not have.
            | Route::HistoryType { .. }
            | Route::Metadata { .. }
            | Route::NotFound { .. }
            | Route::MethodNotAllowed { .. }
    );
    let (Some(org), true) = (org, recordable) else {
        return crate::frontdoor::handle(state, req).await;
    };
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.map(|c| c.to_bytes()).map_err(|e| body_error(e.as_ref()))?;
    let content_type = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let recorded_request = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default(),
        headers: kept_headers(&parts.headers),
        body: RecordedBody::from_bytes(content_type, &bytes),
    };
    let req = GatewayRequest::from_parts(parts, body::full(bytes));
    let exchanges = Arc::new(Mutex::new(Vec::new()));
    let result = CURRENT.scope(exchanges.clone(), crate::frontdoor::handle(state, req)).await;
    // Errors are recorded as the edge will render them, and passed on unchanged.
    let (status, headers, body_bytes, passthrough) = match result {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            (parts.status, parts.headers.clone(), bytes.clone(), Ok(Response::from_parts(parts, body::full(bytes))))
        }
        Err(e) => {
            let rendered = outcome::into_response(&e);
            let (parts, body) = rendered.into_parts();
            let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            (parts.status, parts.headers, bytes, Err(e))
        }
    };
    let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let cassette = Cassette {
        format: FORMAT_VERSION,
        organization: OrganizationInfo { slug: org.slug.clone(), ehr: org.ehr.clone(), mapping: org.mapping.clone() },
        gateway_base: recorder.public_base.clone(),
        interaction: route.interaction().to_string(),
        request: recorded_request,
        response: RecordedResponse {
            status: status.as_u16(),
            headers: kept_headers(&headers),
            body: RecordedBody::from_bytes(content_type, &body_bytes),
        },
        upstream: std::mem::take(&mut *exchanges.lock().unwrap_or_else(|p| p.into_inner())),
    };
    let r = recorder.clone();
    let _ = tokio::task::spawn_blocking(move || r.write(cassette)).await;
    passthrough
}

/// Wraps a connection's transport and notes every exchange in the current request's recording.
pub struct RecordingTransport {
    inner: Arc<dyn Transport>,
    base_url: String,
}

impl RecordingTransport {
    pub fn new(inner: Arc<dyn Transport>, base_url: &str) -> Self {
        RecordingTransport { inner, base_url: base_url.trim_end_matches('/').to_string() }
    }
}

/// An upstream request as a cassette records it: path relative to the base URL, no credentials.
pub fn recorded_upstream_request(request: &HttpRequest, base_url: &str) -> RecordedRequest {
    let relative = request.url.strip_prefix(base_url).unwrap_or(&request.url);
    let (path, query) = relative.split_once('?').unwrap_or((relative, ""));
    let mut headers = BTreeMap::new();
    for (k, v) in &request.headers {
        if KEPT_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
            headers.insert(k.to_ascii_lowercase(), v.clone());
        }
    }
    let content_type = headers.get("content-type").map(String::as_str);
    RecordedRequest {
        method: request.method.to_string(),
        path: path.to_string(),
        query: form_urlencoded::parse(query.as_bytes()).into_owned().collect(),
        body: request.body.as_ref().map(|b| RecordedBody::from_bytes(content_type, b)).unwrap_or_default(),
        headers,
    }
}

fn note(exchange: UpstreamExchange) {
    let _ = CURRENT.try_with(|c| c.lock().unwrap_or_else(|p| p.into_inner()).push(exchange));
}

fn recorded_response(status: u16, headers: &HeaderMap, body: &[u8]) -> RecordedResponse {
    let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    RecordedResponse { status, headers: kept_headers(headers), body: RecordedBody::from_bytes(content_type, body) }
}

impl Transport for RecordingTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<UpstreamResponse, TransportError>> {
        Box::pin(async move {
            let recorded = recorded_upstream_request(&request, &self.base_url);
            match self.inner.send(request).await {
                Ok(response) => {
                    let answer = recorded_response(response.status, &response.headers, &response.body);
                    note(UpstreamExchange { request: recorded, response: answer, failure: None });
                    Ok(response)
                }
                Err(e) => {
                    // No answer: recorded too, so a replay fails the same way.
                    let answer = RecordedResponse { status: 0, headers: BTreeMap::new(), body: RecordedBody::None };
                    note(UpstreamExchange { request: recorded, response: answer, failure: Some(e.clone()) });
                    Err(e)
                }
            }
        })
    }

    fn stream(&self, request: HttpRequest) -> BoxFuture<'_, Result<StreamingResponse, TransportError>> {
        Box::pin(async move {
            let recorded = recorded_upstream_request(&request, &self.base_url);
            let response = self.inner.stream(request).await?;
            // Recording buffers the content: it is a diagnostic mode, not the serving path.
            let mut bytes = Vec::new();
            let mut stream = response.body;
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk.map_err(|_| TransportError::Broken)?);
            }
            note(UpstreamExchange {
                request: recorded,
                response: recorded_response(response.status, &response.headers, &bytes),
                failure: None,
            });
            let body = futures_util::stream::once(async move { Ok(Bytes::from(bytes)) }).boxed();
            Ok(StreamingResponse { status: response.status, headers: response.headers, body })
        })
    }
}
