//! The front door with a recorder around it (`serve --record DIR`): each recordable exchange of an
//! organization is written as one redacted cassette with the upstream exchanges it caused. It wraps the
//! router rather than being a generic layer: it must see the final answer, errors included, and the
//! upstream exchanges made while answering.

use std::sync::Arc;

use http::Response;
use http_body_util::BodyExt;

use crate::body::{self, body_error};
use crate::cassette::recorder::Recorder;
use crate::cassette::redact::MappingFields;
use crate::cassette::tap::{capture, kept_headers};
use crate::cassette::{Cassette, FORMAT_VERSION, OrganizationInfo, RecordedBody, RecordedRequest, RecordedResponse};
use crate::error::GatewayError;
use crate::fhir::outcome;
use crate::request::{GatewayRequest, GatewayResponse, Route};
use crate::state::{AppState, Organization};

/// Handles a request through the front door and records it (when it is a recordable interaction of an
/// organization).
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
        return super::handle(state, req).await;
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
    let (result, upstream) = capture(super::handle(state.clone(), req)).await;
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
        gateway_base: recorder.public_base().to_string(),
        interaction: route.interaction().to_string(),
        request: recorded_request,
        response: RecordedResponse {
            status: status.as_u16(),
            headers: kept_headers(&headers),
            body: RecordedBody::from_bytes(content_type, &body_bytes),
        },
        upstream,
    };
    let fields = state.registry.snapshot().get(&org.mapping).map(|m| MappingFields::of(m)).unwrap_or_default();
    let r = recorder.clone();
    let _ = tokio::task::spawn_blocking(move || r.write(cassette, &fields)).await;
    passthrough
}
