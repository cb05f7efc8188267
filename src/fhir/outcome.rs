//! Renders a `GatewayError` as a FHIR `OperationOutcome` response; the only place errors become HTTP.

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use serde_json::{Value, json};

use crate::body::{self, Body};
use crate::error::{GatewayError, Side};

/// The OperationOutcome JSON for an error. Upstream failures name the EHR and say whether retrying may help.
pub fn operation_outcome(error: &GatewayError) -> Value {
    let issues: Vec<Value> = error
        .issues
        .iter()
        .map(|issue| {
            let mut diagnostics = issue.message.clone();
            if let Side::Upstream(ehr) = &error.side {
                diagnostics = format!(
                    "{diagnostics} (upstream: {ehr}; {})",
                    if error.retryable { "retrying later may help" } else { "retrying will not help" }
                );
            }
            let mut v = json!({
                "severity": "error",
                "code": issue.code.as_str(),
                "diagnostics": diagnostics,
            });
            if !issue.expression.is_empty() {
                v["expression"] = json!(issue.expression);
            }
            v
        })
        .collect();
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

pub fn into_response(error: &GatewayError) -> Response<Body> {
    let bytes = serde_json::to_vec(&operation_outcome(error)).unwrap_or_default();
    let mut response = Response::new(body::full(Bytes::from(bytes)));
    *response.status_mut() = error.status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(super::FHIR_JSON));
    if let Some(allow) = error.allow.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
        headers.insert(header::ALLOW, allow);
    }
    if error.status == http::StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(after) = error.retry_after
        && let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string())
    {
        headers.insert(header::RETRY_AFTER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::IssueCode;
    use http::StatusCode;

    #[test]
    fn upstream_errors_name_the_ehr_and_retry_advice() {
        let e = GatewayError::new(
            StatusCode::BAD_GATEWAY,
            IssueCode::Exception,
            Side::Upstream("Canvas".into()),
            "Canvas failed",
        )
        .retryable(true);
        let oo = operation_outcome(&e);
        assert_eq!(oo["issue"][0]["code"], "exception");
        let d = oo["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(d.contains("upstream: Canvas") && d.contains("retrying later may help"), "{d}");
    }

    #[test]
    fn expressions_and_status_reach_the_response() {
        let e = GatewayError::invalid("bad date").with_expression("Media.createdDateTime");
        let r = into_response(&e);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/fhir+json");
        let oo = operation_outcome(&e);
        assert_eq!(oo["issue"][0]["expression"][0], "Media.createdDateTime");
    }
}
