//! The edge: the one place a `GatewayError` becomes an `OperationOutcome` response.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{GatewayRequest, GatewayResponse};
use crate::error::GatewayError;
use crate::fhir::outcome;

#[derive(Debug, Clone, Default)]
pub struct EdgeLayer;

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Edge { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
}

impl<S> Service<GatewayRequest> for Edge<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = GatewayError>,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Inner services are always ready (they are clones of a stateless stack); surface a failure anyway.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                // Status and code only: messages can quote client input.
                tracing::error!(status = e.status.as_u16(), code = e.code().as_str(), "inner service failed readiness");
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        ResponseFuture { future: self.inner.call(req) }
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<GatewayResponse, GatewayError>>,
{
    type Output = Result<GatewayResponse, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().future.poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(Ok(r)),
            Poll::Ready(Err(e)) => Poll::Ready(Ok(outcome::into_response(&e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{empty, request};
    use http::StatusCode;
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn errors_become_operation_outcomes() {
        let svc = ServiceBuilder::new().layer(EdgeLayer).service(tower::service_fn(|_req: GatewayRequest| async {
            Err::<GatewayResponse, _>(GatewayError::not_found("no such thing"))
        }));
        let r = svc.oneshot(empty(request("GET", "/x"))).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        use http_body_util::BodyExt;
        let body: serde_json::Value =
            serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert_eq!(body["issue"][0]["code"], "not-found");
    }
}
