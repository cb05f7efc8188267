//! Lets an authenticated client use only the organizations it lists (by id or slug); others are 403.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::StatusCode;
use tower::{Layer, Service};

use super::auth::ClientIdentity;
use super::{CheckedFuture, GatewayRequest, GatewayResponse};
use crate::error::{GatewayError, IssueCode};
use crate::state::Organization;

#[derive(Debug, Clone, Default)]
pub struct AuthorizeLayer;

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
}

impl<S> Service<GatewayRequest> for Authorize<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = GatewayError>,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = CheckedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        let Some(org) = req.extensions().get::<Arc<Organization>>() else {
            return CheckedFuture::inner(self.inner.call(req));
        };
        let allowed = req
            .extensions()
            .get::<Arc<ClientIdentity>>()
            .is_some_and(|c| c.organizations.contains(&org.id) || c.organizations.contains(&org.slug));
        if allowed {
            CheckedFuture::inner(self.inner.call(req))
        } else {
            CheckedFuture::rejected(GatewayError::client(
                StatusCode::FORBIDDEN,
                IssueCode::Forbidden,
                format!("this client is not allowed to use organization `{}`", org.slug),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{Recorder, request};
    use crate::state::Directory;
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn only_listed_organizations_pass() {
        let directory = Directory::for_tests(&[("org-1", "one"), ("org-2", "two")]);
        let rec = Recorder::default();
        let svc = ServiceBuilder::new().layer(AuthorizeLayer).service(rec.service());
        let client = Arc::new(ClientIdentity { name: "c".into(), organizations: ["one".to_string()].into() });
        let call = |org: &str| {
            request("GET", "/x")
                .extension(directory.get(org).unwrap())
                .extension(client.clone())
                .body(crate::body::empty())
                .unwrap()
        };
        assert!(svc.clone().oneshot(call("org-1")).await.is_ok());
        let e = svc.oneshot(call("two")).await.unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(e.code(), IssueCode::Forbidden);
        assert_eq!(rec.count(), 1);
    }
}
