//! Reading what a client sent: FHIR JSON and JSON Patch bodies (415, 413 and 400 for the wrong type,
//! size or syntax), structural validation of a Media, and query parameters.

use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::body::body_error;
use crate::error::{GatewayError, Issue, IssueCode};
use crate::fhir::{self, validate};
use crate::request::GatewayRequest;

pub(super) fn unsupported_media_type(message: &str) -> GatewayError {
    GatewayError::client(StatusCode::UNSUPPORTED_MEDIA_TYPE, IssueCode::NotSupported, message)
}

pub(super) async fn read_body(req: GatewayRequest) -> Result<Bytes, GatewayError> {
    Ok(req.into_body().collect().await.map_err(|e| body_error(e.as_ref()))?.to_bytes())
}

/// Reads a FHIR JSON body: 415 for other media types, 413 over the limit, 400 for malformed JSON.
pub(super) async fn read_fhir_body(req: GatewayRequest) -> Result<(http::request::Parts, Value), GatewayError> {
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

pub(super) async fn check_patch_document(req: GatewayRequest) -> Result<json_patch::Patch, GatewayError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.split(';').next().map(str::trim) != Some("application/json-patch+json") {
        return Err(unsupported_media_type("PATCH needs an application/json-patch+json body (RFC 6902)"));
    }
    let bytes = read_body(req).await?;
    serde_json::from_slice::<json_patch::Patch>(&bytes)
        .map_err(|e| GatewayError::invalid(format!("the body is not a JSON Patch document (RFC 6902): {e}")))
}

pub(super) fn validate_resource(resource: &Value) -> Result<(), GatewayError> {
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

pub(super) fn query_params(req: &GatewayRequest) -> Result<Vec<(String, String)>, GatewayError> {
    Ok(req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default())
}

pub(super) fn single(params: &[(String, String)], name: &str) -> Result<Option<String>, GatewayError> {
    let mut values = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone());
    let first = values.next();
    if values.next().is_some() {
        return Err(GatewayError::invalid(format!("`{name}` may be given only once")).with_expression(name.to_string()));
    }
    Ok(first)
}
