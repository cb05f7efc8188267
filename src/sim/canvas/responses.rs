//! Canvas-shaped error bodies: OperationOutcomes as canvas.md §1.4 shows them, and Django's plain HTML pages.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;

use crate::sim::support::{SimResponse, json_response};

pub(super) fn html_response(status: StatusCode, body: &'static str) -> SimResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

/// An OperationOutcome exactly as canvas.md §1.4 shows it.
pub(super) fn outcome(status: StatusCode, code: &str, text: &str) -> SimResponse {
    json_response(
        status,
        &json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "details": {"text": text}}],
        }),
    )
}

pub(super) fn bad_request(reason: &'static str) -> SimResponse {
    tracing::debug!(reason, "canvas sim: bad request");
    outcome(StatusCode::BAD_REQUEST, "invalid", "Bad request")
}

pub(super) fn unauthorized() -> SimResponse {
    outcome(StatusCode::UNAUTHORIZED, "unknown", "Authentication failed")
}

pub(super) fn not_found(text: &str) -> SimResponse {
    outcome(StatusCode::NOT_FOUND, "not-found", text)
}

pub(super) fn not_found_media(id: &str) -> SimResponse {
    not_found(&format!("Unknown Media resource '{id}'"))
}

pub(super) fn not_supported() -> SimResponse {
    outcome(StatusCode::METHOD_NOT_ALLOWED, "not-supported", "Operation is not supported")
}

pub(super) fn internal_error() -> SimResponse {
    outcome(StatusCode::INTERNAL_SERVER_ERROR, "exception", "Internal server error")
}
