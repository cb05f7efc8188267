//! Fault injection shared by the simulators: a queue of faults, each hitting the next matching
//! requests a number of times (status, latency, hang, reset), for resilience tests.

use std::time::Duration;

use http::Method;

use super::support::{self, ResetConnection, ShutdownSignal, SimResponse};

/// A queued fault. It applies to the next `times` matching requests, then disappears.
///
/// Matching: `method` (if set) must equal the request method and `path_prefix` (if set) must prefix the
/// request path. A fault **without** `path_prefix` matches the simulator's API requests only (not its token
/// endpoint or storage host), so a blanket fault never lands on the token fetch that precedes the request
/// under test; give a prefix (e.g. `/auth/token/`, `/oauth2/`) to hit those. `times: 0` makes the fault
/// inert; use `usize::MAX` for "always". Faults act before authentication and before the body is read,
/// like a failing proxy in front of the EHR.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Only requests with this method (any method if `None`).
    pub method: Option<Method>,
    /// Only paths starting with this prefix (the API's paths if `None`).
    pub path_prefix: Option<String>,
    /// How many matching requests the fault still applies to.
    pub times: usize,
    /// What happens to a matching request.
    pub action: FaultAction,
}

impl Fault {
    /// A fault that hits the next API request of any kind, once.
    pub fn new(action: FaultAction) -> Self {
        Self { method: None, path_prefix: None, times: 1, action }
    }

    /// Restrict to one HTTP method.
    pub fn with_method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Restrict to paths starting with `prefix`.
    pub fn with_path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Apply to the next `times` matching requests.
    pub fn repeat(mut self, times: usize) -> Self {
        self.times = times;
        self
    }
}

/// What a matching fault does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer this status with the body the simulated EHR would send (each simulator documents its bodies);
    /// 429 and 503 add `Retry-After: 1`.
    Status(u16),
    /// Wait this long, then serve normally.
    Latency(Duration),
    /// Never answer; the client's timeout must fire. The connection is reset when the simulator stops.
    Hang,
    /// Close the connection with a TCP reset and no response.
    Reset,
}

/// Takes the action of the first fault matching the request, counting it down. `api_request` says whether
/// the request belongs to the simulator's API (what prefix-less faults target).
pub fn take(faults: &mut Vec<Fault>, method: &Method, path: &str, api_request: bool) -> Option<FaultAction> {
    let index = faults.iter().position(|fault| {
        let method_ok = fault.method.as_ref().is_none_or(|m| m == method);
        let path_ok = match &fault.path_prefix {
            Some(prefix) => path.starts_with(prefix.as_str()),
            None => api_request,
        };
        method_ok && path_ok && fault.times > 0
    })?;
    let fault = &mut faults[index];
    let action = fault.action;
    fault.times -= 1;
    if fault.times == 0 {
        faults.remove(index);
    }
    Some(action)
}

impl FaultAction {
    /// Performs the action for a request: `Ok(None)` serves it normally (after any latency), `Ok(Some)`
    /// answers instead, `Err` resets the connection. `status` builds the EHR's own body for a status.
    pub(crate) async fn perform(
        self,
        signal: &ShutdownSignal,
        status: impl FnOnce(u16) -> SimResponse,
    ) -> Result<Option<SimResponse>, ResetConnection> {
        match self {
            FaultAction::Latency(delay) => {
                tokio::time::sleep(delay).await;
                Ok(None)
            }
            FaultAction::Hang => support::hang(signal).await.map(Some),
            FaultAction::Reset => Err(ResetConnection),
            FaultAction::Status(code) => Ok(Some(status(code))),
        }
    }
}
