//! athena's side of fault injection: which queued faults a request takes, before it is handled or after it took
//! effect, and injected errors shaped like athena's (OAuth errors on the token endpoint, Mashery's throttling 403,
//! empty gateway errors).

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;

use super::State;
use super::auth::oauth_error;
use super::responses::{athena_error, invalid_data, invalid_practice};
use crate::sim::fault::{self, FaultAction};
use crate::sim::support::{self, ResetConnection, SimResponse, empty_response};

impl State {
    /// Pops the first queued fault matching this request, if any.
    fn take_fault(&self, method: &Method, path: &str) -> Option<FaultAction> {
        let mut data = self.data();
        fault::take(&mut data.faults, method, path, path.starts_with("/v1/"))
    }

    /// Applies a fault queued with `inject_after_processing` to the answer of a request that has been handled: the
    /// EHR acted, and then the answer fails, comes late, never comes or is lost in a reset. This is what makes
    /// resending a non-idempotent write (athena's appended internal note) write twice.
    pub(super) async fn apply_after_fault(
        &self,
        method: &Method,
        path: &str,
        response: SimResponse,
    ) -> Result<SimResponse, ResetConnection> {
        let action = {
            let mut data = self.data();
            fault::take(&mut data.after_faults, method, path, path.starts_with("/v1/"))
        };
        match action {
            None => Ok(response),
            Some(FaultAction::Latency(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(response)
            }
            Some(FaultAction::Hang) => support::hang(&self.signal).await,
            Some(FaultAction::Reset) => Err(ResetConnection),
            Some(FaultAction::Status(code)) => Ok(fault_response(code, path.starts_with("/oauth2/"))),
        }
    }

    pub(super) async fn apply_fault(
        &self,
        method: &Method,
        path: &str,
    ) -> Result<Option<SimResponse>, ResetConnection> {
        match self.take_fault(method, path) {
            None => Ok(None),
            Some(action) => {
                action.perform(&self.signal, |code| fault_response(code, path.starts_with("/oauth2/"))).await
            }
        }
    }
}

/// The response a `FaultAction::Status` produces, shaped like athena's real errors.
fn fault_response(code: u16, token_endpoint: bool) -> SimResponse {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if token_endpoint {
        match status.as_u16() {
            400 => oauth_error(status, "invalid_request", "The request is invalid."),
            401 => oauth_error(status, "invalid_client", "Client authentication failed."),
            429 => athena_error(
                status,
                "Too many requests.",
                Some("The limit of new access tokens per minute has been reached."),
            ),
            _ => empty_response(status),
        }
    } else {
        match status.as_u16() {
            400 => invalid_data("Injected fault."),
            401 => athena_error(
                status,
                "Invalid or expired access token.",
                Some("The access token is invalid or has expired."),
            ),
            403 => {
                // The throttling meaning of 403: Mashery-style HTML page and error-code header.
                let mut response = Response::new(Full::new(Bytes::from_static(b"<h1>Developer Over Qps</h1>")));
                *response.status_mut() = status;
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
                headers.insert("x-mashery-error-code", HeaderValue::from_static("ERR_403_DEVELOPER_OVER_QPS"));
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            404 => invalid_practice(),
            409 => athena_error(status, "Conflict.", Some("The request conflicts with the current state.")),
            429 => athena_error(status, "Too many requests.", None),
            500 => athena_error(status, "An internal error occurred.", None),
            // Gateway-level errors carry no JSON body (athena.md §3.1).
            502..=504 => empty_response(status),
            _ => athena_error(status, status.canonical_reason().unwrap_or("Error"), None),
        }
    };
    if matches!(status.as_u16(), 429 | 503) && !response.headers().contains_key(header::RETRY_AFTER) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
