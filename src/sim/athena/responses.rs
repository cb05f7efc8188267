//! athena-shaped answers: its JSON error bodies, `success` in string or boolean form, and the gateway's plain text.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::sim::support::{SimResponse, json_response};

/// An early answer from a validation step, boxed to keep `Result`s small.
pub(super) type Refusal = Box<SimResponse>;

pub(super) fn refuse(response: SimResponse) -> Refusal {
    Box::new(response)
}

/// At most 64 characters of caller input, for echoing in error messages.
pub(super) fn clip(value: &str) -> &str {
    match value.char_indices().nth(64) {
        Some((index, _)) => &value[..index],
        None => value,
    }
}

/// `{"success": true}` or `{"success": "true"}`.
pub(super) fn success(stringly: bool, ok: bool) -> Value {
    if stringly { json!({"success": ok.to_string()}) } else { json!({"success": ok}) }
}

/// A rejected class-specific write: 200 with `success` false and an `errormessage`.
pub(super) fn failure(stringly: bool, message: &str) -> Value {
    let mut body = success(stringly, false);
    body["errormessage"] = json!(message);
    body
}

pub(super) fn plain_response(status: StatusCode, text: &'static str) -> SimResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

pub(super) fn bytes_response(bytes: Bytes, content_type: &'static str) -> SimResponse {
    let mut response = Response::new(Full::new(bytes));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// athenaNet's error body: `error`, usually `detailedmessage` (athena.md §3.1).
pub(super) fn athena_error(status: StatusCode, error: &str, detailed: Option<&str>) -> SimResponse {
    let mut body = json!({ "error": error });
    if let Some(detailed) = detailed {
        body["detailedmessage"] = json!(detailed);
    }
    json_response(status, &body)
}

pub(super) fn missing_fields(fields: &[&str]) -> SimResponse {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({
            "error": "Additional fields are required.",
            "detailedmessage": format!("The following fields are required: {}.", fields.join(", ")),
            "missingfields": fields,
        }),
    )
}

pub(super) fn invalid_data(detail: &str) -> SimResponse {
    athena_error(StatusCode::BAD_REQUEST, "The data provided is invalid.", Some(detail))
}

pub(super) fn invalid_practice() -> SimResponse {
    athena_error(StatusCode::NOT_FOUND, "Invalid practice.", Some("The practice ID does not exist."))
}

pub(super) fn invalid_path() -> SimResponse {
    athena_error(StatusCode::NOT_FOUND, "Invalid path.", Some("The requested resource does not exist."))
}

pub(super) fn document_not_found() -> SimResponse {
    athena_error(StatusCode::NOT_FOUND, "Document not found.", Some("The document does not exist."))
}

pub(super) fn method_not_allowed(allow: &'static str) -> SimResponse {
    let mut response = athena_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.", None);
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// What athena's API gateway answers for paths it does not route (plain text, no JSON).
pub(super) fn gateway_not_registered() -> SimResponse {
    plain_response(StatusCode::NOT_FOUND, "Service not registered with API gateway.")
}
