//! Resolves `/organizations/{id|slug}/…` to the organization (its connection and mapping set name);
//! an unknown organization is a 404. Other paths pass through untouched.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{CheckedFuture, GatewayRequest, GatewayResponse};
use crate::error::GatewayError;
use crate::state::Directory;

#[derive(Clone)]
pub struct OrganizationLayer {
    directory: Arc<Directory>,
}

impl OrganizationLayer {
    pub fn new(directory: Arc<Directory>) -> Self {
        OrganizationLayer { directory }
    }
}

impl<S> Layer<S> for OrganizationLayer {
    type Service = ResolveOrganization<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ResolveOrganization { inner, directory: self.directory.clone() }
    }
}

#[derive(Clone)]
pub struct ResolveOrganization<S> {
    inner: S,
    directory: Arc<Directory>,
}

/// The `{id|slug}` segment of an organization path.
pub fn organization_segment(path: &str) -> Option<&str> {
    path.strip_prefix("/organizations/")?.split('/').next().filter(|s| !s.is_empty())
}

impl<S> Service<GatewayRequest> for ResolveOrganization<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = GatewayError>,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = CheckedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: GatewayRequest) -> Self::Future {
        let Some(key) = organization_segment(req.uri().path()) else {
            return CheckedFuture::inner(self.inner.call(req));
        };
        match self.directory.get(key) {
            Some(org) => {
                req.extensions_mut().insert(org);
                CheckedFuture::inner(self.inner.call(req))
            }
            None => {
                let shown: String = key.chars().take(64).collect();
                CheckedFuture::rejected(GatewayError::not_found(format!(
                    "organization `{shown}` is not configured on this gateway; use its id or slug"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{Recorder, empty, request};
    use crate::state::Organization;
    use http::StatusCode;
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn resolves_by_id_or_slug_and_404s_unknown() {
        let directory = Arc::new(Directory::for_tests(&[("org-1", "demo")]));
        let rec = Recorder::default();
        let svc = ServiceBuilder::new().layer(OrganizationLayer::new(directory)).service(rec.service());
        for path in ["/organizations/org-1/fhir/4/Media", "/organizations/demo/fhir/4/metadata"] {
            svc.clone().oneshot(empty(request("GET", path))).await.unwrap();
        }
        let resolved: Vec<String> = rec
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.extensions.get::<Arc<Organization>>().unwrap().id.clone())
            .collect();
        assert_eq!(resolved, ["org-1", "org-1"]);
        let e = svc.clone().oneshot(empty(request("GET", "/organizations/nope/fhir/4/Media"))).await.unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(svc.oneshot(empty(request("GET", "/healthz"))).await.is_ok());
    }
}
