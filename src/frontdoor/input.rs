//! Reading what a client sent: FHIR JSON and JSON Patch bodies (415, 413 and 400 for the wrong type,
//! size or syntax), structural validation of a Media, and query parameters.

use bytes::{Bytes, BytesMut};
use http::{StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::body::body_error;
use crate::error::{GatewayError, Issue, IssueCode};
use crate::fhir::{self, validate};
use crate::json::{self, LimitKind, Limits, ParseError, Payloads};
use crate::request::GatewayRequest;

pub(super) fn unsupported_media_type(message: &str) -> GatewayError {
    GatewayError::client(StatusCode::UNSUPPORTED_MEDIA_TYPE, IssueCode::NotSupported, message)
}

/// Reads a whole body into one buffer, sized up front from `Content-Length`: frames are moved in as they
/// arrive, so a large body is held once, not once in frames and again joined.
pub(super) async fn read_body(req: GatewayRequest) -> Result<Bytes, GatewayError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = req.into_body();
    let mut buffer = BytesMut::with_capacity(declared);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| body_error(e.as_ref()))?;
        if let Ok(data) = frame.into_data() {
            if buffer.is_empty() && data.len() >= declared {
                // One frame holds it all: keep it as it is.
                buffer = BytesMut::from(data);
            } else {
                buffer.extend_from_slice(&data);
            }
        }
    }
    Ok(buffer.freeze())
}

/// Parses a client's JSON body under the client limits, media kept as payloads: 400 for malformed JSON,
/// 413 (400 for nesting) naming the element that breaks a limit.
fn parse_client_json(bytes: &Bytes, limits: &Limits, payloads: &mut Payloads) -> Result<Value, GatewayError> {
    json::parse(bytes, limits, payloads).map_err(|e| match e {
        ParseError::Syntax { line, column, .. } => {
            GatewayError::invalid(format!("the body is not valid JSON (line {line}, column {column}): fix the syntax"))
        }
        ParseError::Limit(v) => {
            let expression = v.expression("Media");
            let (status, code, fix) = match v.kind {
                LimitKind::ReservedText => (StatusCode::BAD_REQUEST, IssueCode::Invalid, "remove it".to_string()),
                kind => (
                    if kind == LimitKind::Depth { StatusCode::BAD_REQUEST } else { StatusCode::PAYLOAD_TOO_LARGE },
                    if kind == LimitKind::Depth { IssueCode::Invalid } else { IssueCode::TooLong },
                    format!("the gateway takes at most {} (server.limits.client.{}): send less", v.limit, v.key()),
                ),
            };
            GatewayError::client(status, code, format!("`{expression}` {v}; {fix}")).with_expression(expression)
        }
    })
}

/// Reads a FHIR JSON body: 415 for other media types, 413 over the limits, 400 for malformed JSON.
pub(super) async fn read_fhir_body(req: GatewayRequest, limits: &Limits) -> Result<(Value, Payloads), GatewayError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !fhir::is_fhir_json(content_type) {
        return Err(unsupported_media_type(
            "send the resource as application/fhir+json (application/json and application/json+fhir are accepted too)",
        ));
    }
    let bytes = read_body(req).await?;
    let mut payloads = Payloads::default();
    let value = parse_client_json(&bytes, limits, &mut payloads)?;
    Ok((value, payloads))
}

/// Reads a JSON Patch document; values in it that are media stay payloads.
pub(super) async fn check_patch_document(
    req: GatewayRequest,
    limits: &Limits,
) -> Result<(json_patch::Patch, Payloads), GatewayError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.split(';').next().map(str::trim) != Some("application/json-patch+json") {
        return Err(unsupported_media_type("PATCH needs an application/json-patch+json body (RFC 6902)"));
    }
    let bytes = read_body(req).await?;
    let mut payloads = Payloads::default();
    let value = parse_client_json(&bytes, limits, &mut payloads)?;
    let patch = serde_json::from_value::<json_patch::Patch>(value)
        .map_err(|e| GatewayError::invalid(format!("the body is not a JSON Patch document (RFC 6902): {e}")))?;
    Ok((patch, payloads))
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
