//! Authenticates gateway clients by bearer token. Tokens are compared as SHA-256 hashes, so the
//! configuration never holds them. `/healthz` is open.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::StatusCode;
use tower::{Layer, Service};

use super::{CheckedFuture, GatewayRequest, GatewayResponse};
use crate::config::{ClientConfig, token_hash};
use crate::error::{GatewayError, IssueCode};

/// The authenticated caller, as a request extension.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub name: String,
    /// Organization ids and slugs this client may use.
    pub organizations: HashSet<String>,
}

#[derive(Debug, Clone)]
pub struct AuthLayer {
    clients: Arc<HashMap<String, Arc<ClientIdentity>>>,
}

impl AuthLayer {
    pub fn new(clients: &[ClientConfig]) -> Self {
        let clients = clients
            .iter()
            .map(|c| {
                let identity =
                    ClientIdentity { name: c.name.clone(), organizations: c.organizations.iter().cloned().collect() };
                (c.token_sha256.to_ascii_lowercase(), Arc::new(identity))
            })
            .collect();
        AuthLayer { clients: Arc::new(clients) }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, clients: self.clients.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    clients: Arc<HashMap<String, Arc<ClientIdentity>>>,
}

fn unauthenticated(message: &str) -> GatewayError {
    GatewayError::client(StatusCode::UNAUTHORIZED, IssueCode::Security, message)
}

impl<S> Service<GatewayRequest> for Auth<S>
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
        if req.uri().path() == "/healthz" {
            return CheckedFuture::inner(self.inner.call(req));
        }
        let Some(value) = req.headers().get(http::header::AUTHORIZATION) else {
            return CheckedFuture::rejected(unauthenticated(
                "send `Authorization: Bearer <token>` with a gateway client token",
            ));
        };
        let token = value.to_str().ok().and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return CheckedFuture::rejected(unauthenticated("the Authorization header must be `Bearer <token>`"));
        };
        match self.clients.get(&token_hash(token)) {
            Some(identity) => {
                req.extensions_mut().insert(identity.clone());
                CheckedFuture::inner(self.inner.call(req))
            }
            None => CheckedFuture::rejected(unauthenticated("the bearer token is not a known gateway client token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{Recorder, empty, request};
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn missing_malformed_and_unknown_tokens_are_401() {
        let clients =
            [ClientConfig { name: "demo".into(), token_sha256: token_hash("good"), organizations: vec!["o".into()] }];
        let rec = Recorder::default();
        let svc = ServiceBuilder::new().layer(AuthLayer::new(&clients)).service(rec.service());
        for auth in [None, Some("Basic abc"), Some("Bearer "), Some("Bearer wrong")] {
            let mut b = request("GET", "/organizations/o/fhir/4/Media/x");
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            let e = svc.clone().oneshot(empty(b)).await.unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        }
        assert_eq!(rec.count(), 0);
        let ok = svc.clone().oneshot(empty(request("GET", "/x").header("authorization", "bearer good"))).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(rec.seen.lock().unwrap()[0].extensions.get::<Arc<ClientIdentity>>().unwrap().name, "demo");
        assert!(svc.oneshot(empty(request("GET", "/healthz"))).await.is_ok());
    }
}
