//! The fumage (FHIR) host's front door: request counting, faults, the bearer check, and routing of `/Media` paths
//! to their handlers.

use std::sync::Arc;

use http::{Method, Request};
use hyper::body::Incoming;

use super::State;
use super::faults::Host;
use super::responses::{not_found, not_supported, unauthorized};
use crate::sim::support::{HandlerResult, SimResponse};

/// Counts a fumage request as in flight for as long as it lives.
struct InFlightRequest<'a> {
    state: &'a State,
}

impl Drop for InFlightRequest<'_> {
    fn drop(&mut self) {
        let mut data = self.state.data();
        data.in_flight_requests = data.in_flight_requests.saturating_sub(1);
    }
}

impl State {
    pub(super) async fn handle_fumage(self: &Arc<Self>, req: Request<Incoming>) -> HandlerResult {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let _in_flight = self.enter_request();
        let response = match self.apply_fault(Host::Fumage, &method, &path).await? {
            Some(response) => response,
            None => self.route_fumage(req, &method, &path).await,
        };
        tracing::debug!(host = "canvas-fumage", %method, path, status = response.status().as_u16(), "sim");
        Ok(response)
    }

    fn enter_request(&self) -> InFlightRequest<'_> {
        let mut data = self.data();
        data.stats.requests += 1;
        data.in_flight_requests += 1;
        data.stats.max_concurrent_requests = data.stats.max_concurrent_requests.max(data.in_flight_requests);
        InFlightRequest { state: self }
    }

    async fn route_fumage(self: &Arc<Self>, req: Request<Incoming>, method: &Method, path: &str) -> SimResponse {
        if !self.authorized(req.headers()) {
            return unauthorized();
        }
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        match segments.as_slice() {
            ["Media"] => match *method {
                Method::GET => self.search(req.uri().query().unwrap_or("")),
                Method::POST => self.create(req).await,
                _ => not_supported(),
            },
            ["Media", id] if !id.is_empty() => match *method {
                Method::GET => self.read(id),
                _ => not_supported(),
            },
            ["Media", id, "files", "content"] if !id.is_empty() => match *method {
                Method::GET => self.content_redirect(id),
                _ => not_supported(),
            },
            // vread and history are not offered by Canvas for Media.
            ["Media", id, "_history", ..] if !id.is_empty() => not_supported(),
            [resource_type, id] if !resource_type.is_empty() && !id.is_empty() => {
                not_found(&format!("Unknown {resource_type} resource '{id}'"))
            }
            _ => not_found("Unknown resource"),
        }
    }
}
