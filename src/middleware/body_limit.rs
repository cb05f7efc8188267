//! Caps request bodies: a declared `Content-Length` over the limit is refused at once, and bodies are
//! wrapped so a stream that grows past the limit fails with 413 when read.

use std::task::{Context, Poll};

use http::StatusCode;
use http_body_util::Limited;
use tower::{Layer, Service};

use super::{CheckedFuture, GatewayRequest, GatewayResponse};
use crate::body;
use crate::error::{GatewayError, IssueCode};

#[derive(Debug, Clone)]
pub struct BodyLimitLayer {
    limit: usize,
}

impl BodyLimitLayer {
    pub fn new(limit: usize) -> Self {
        BodyLimitLayer { limit }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit { inner, limit: self.limit }
    }
}

#[derive(Debug, Clone)]
pub struct BodyLimit<S> {
    inner: S,
    limit: usize,
}

pub fn too_large(limit: usize) -> GatewayError {
    GatewayError::client(
        StatusCode::PAYLOAD_TOO_LARGE,
        IssueCode::TooLong,
        format!("the request body is larger than the gateway's limit of {limit} bytes; send smaller media"),
    )
}

impl<S> Service<GatewayRequest> for BodyLimit<S>
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
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limit as u64) {
            return CheckedFuture::rejected(too_large(self.limit));
        }
        let req = req.map(|b| body::boxed(Limited::new(b, self.limit)));
        CheckedFuture::inner(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{Recorder, request};
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn declared_and_streamed_oversize_bodies_are_413() {
        let rec = Recorder::default();
        let svc = ServiceBuilder::new().layer(BodyLimitLayer::new(10)).service(rec.service());
        let declared = request("POST", "/x").header("content-length", "11").body(body::full(vec![0u8; 11])).unwrap();
        assert_eq!(svc.clone().oneshot(declared).await.unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(rec.count(), 0, "refused before reaching the inner service");
        // No Content-Length: the limit is enforced while reading.
        let streamed = request("POST", "/x").body(body::full(vec![0u8; 11])).unwrap();
        assert_eq!(svc.clone().oneshot(streamed).await.unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
        let fine = request("POST", "/x").body(body::full(vec![0u8; 10])).unwrap();
        assert_eq!(svc.oneshot(fine).await.unwrap().status(), StatusCode::OK);
    }
}
