//! Canvas's side of fault injection: which queued faults a request on each host takes, and injected errors shaped
//! like that host's real ones.

use http::{HeaderValue, Method, StatusCode, header};

use super::State;
use super::auth::oauth_error;
use super::responses::{bad_request, html_response, not_found, not_supported, outcome, unauthorized};
use super::s3::s3_error;
use crate::sim::fault::{self, FaultAction};
use crate::sim::support::{ResetConnection, SimResponse};

/// Which listener a request arrived on; decides how faults match and what error bodies look like.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Host {
    Instance,
    Fumage,
    S3,
}

impl State {
    /// Pops the first queued fault matching this request, if any.
    fn take_fault(&self, host: Host, method: &Method, path: &str) -> Option<FaultAction> {
        let mut data = self.data();
        fault::take(&mut data.faults, method, path, host == Host::Fumage)
    }

    /// Applies a fault. `Ok(None)` means "serve normally" (possibly after a delay).
    pub(super) async fn apply_fault(
        &self,
        host: Host,
        method: &Method,
        path: &str,
    ) -> Result<Option<SimResponse>, ResetConnection> {
        match self.take_fault(host, method, path) {
            None => Ok(None),
            Some(action) => action.perform(&self.signal, |code| fault_response(host, code, path)).await,
        }
    }
}

/// The response a `FaultAction::Status` produces, shaped like the host's real errors.
fn fault_response(host: Host, code: u16, path: &str) -> SimResponse {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match host {
        Host::Fumage => match status.as_u16() {
            400 => bad_request("injected fault"),
            401 => unauthorized(),
            403 => outcome(status, "forbidden", "Authorization failed"),
            404 => {
                let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                match segments.as_slice() {
                    [resource_type, id, ..] if !id.is_empty() => {
                        not_found(&format!("Unknown {resource_type} resource '{id}'"))
                    }
                    _ => not_found("Unknown resource"),
                }
            }
            405 => not_supported(),
            412 => outcome(status, "processing", "Precondition failed"),
            422 => outcome(status, "business-rule", "Unprocessable entity"),
            429 => outcome(status, "throttled", "Too many requests"),
            500..=599 => outcome(status, "exception", "Internal server error"),
            _ => outcome(status, "processing", status.canonical_reason().unwrap_or("Error")),
        },
        // The token endpoint speaks OAuth for client errors and Django's plain pages otherwise.
        Host::Instance => match status.as_u16() {
            400 => oauth_error(status, "invalid_request"),
            401 => oauth_error(status, "invalid_client"),
            _ => {
                let mut response = html_response(StatusCode::OK, "<h1>Server Error</h1>");
                *response.status_mut() = status;
                response
            }
        },
        Host::S3 => match status.as_u16() {
            403 => s3_error(status, "AccessDenied", "Access Denied"),
            404 => s3_error(status, "NoSuchKey", "The specified key does not exist."),
            503 => s3_error(status, "SlowDown", "Please reduce your request rate."),
            _ => s3_error(status, "InternalError", "We encountered an internal error. Please try again."),
        },
    };
    if matches!(status.as_u16(), 429 | 503) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
