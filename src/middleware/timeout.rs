//! Bounds the whole request at the front door; past the deadline the caller gets a 504 `timeout`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use super::{GatewayRequest, GatewayResponse};
use crate::error::{GatewayError, IssueCode, Side};

#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Timeout { inner, timeout: self.timeout }
    }
}

#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<GatewayRequest> for Timeout<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = GatewayError>,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        let idempotent = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
        ResponseFuture {
            future: self.inner.call(req),
            sleep: tokio::time::sleep(self.timeout),
            timeout: self.timeout,
            idempotent,
        }
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        #[pin]
        sleep: Sleep,
        timeout: Duration,
        idempotent: bool,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<GatewayResponse, GatewayError>>,
{
    type Output = Result<GatewayResponse, GatewayError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.future.poll(cx) {
            return Poll::Ready(r);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(GatewayError::new(
                StatusCode::GATEWAY_TIMEOUT,
                IssueCode::Timeout,
                Side::Gateway,
                if *this.idempotent {
                    format!("the request did not complete within {} ms", this.timeout.as_millis())
                } else {
                    format!(
                        "the request did not complete within {} ms; the write may still have happened, so search before sending it again",
                        this.timeout.as_millis()
                    )
                },
            )
            .retryable(*this.idempotent))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use crate::middleware::testing::{empty, request};
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn slow_inner_service_gives_504_fast_one_passes() {
        let svc = ServiceBuilder::new().layer(TimeoutLayer::new(Duration::from_secs(1))).service(tower::service_fn(
            |req: GatewayRequest| async move {
                let wait = if req.uri().path() == "/slow" { 5 } else { 0 };
                tokio::time::sleep(Duration::from_secs(wait)).await;
                Ok::<_, GatewayError>(http::Response::new(body::empty()))
            },
        ));
        let e = svc.clone().oneshot(empty(request("GET", "/slow"))).await.unwrap_err();
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.code(), IssueCode::Timeout);
        assert!(svc.oneshot(empty(request("GET", "/fast"))).await.is_ok());
    }
}
