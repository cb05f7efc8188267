//! Gives every request an id: a sane caller-supplied `X-Request-Id` is kept, otherwise one is generated;
//! it is stored as a request extension and echoed on the response.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{GatewayRequest, GatewayResponse};

pub const X_REQUEST_ID: &str = "x-request-id";

pub use crate::request::RequestId;

#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

impl<S> Service<GatewayRequest> for RequestIdService<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible>,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: GatewayRequest) -> Self::Future {
        let id = req
            .headers()
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| acceptable(v))
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let header = HeaderValue::from_str(&id).ok();
        req.extensions_mut().insert(RequestId(id));
        ResponseFuture { future: self.inner.call(req), header }
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        header: Option<HeaderValue>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<GatewayResponse, Infallible>>,
{
    type Output = Result<GatewayResponse, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.future.poll(cx) {
            Poll::Ready(Ok(r)) => r,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => return Poll::Pending,
        };
        if let Some(h) = this.header.take() {
            response.headers_mut().insert(X_REQUEST_ID, h);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::edge::EdgeLayer;
    use crate::middleware::testing::{Recorder, empty, request};
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn keeps_a_good_id_and_replaces_a_bad_one() {
        let rec = Recorder::default();
        let svc = ServiceBuilder::new().layer(RequestIdLayer).layer(EdgeLayer).service(rec.service());
        let r = svc.clone().oneshot(empty(request("GET", "/x").header(X_REQUEST_ID, "abc-123"))).await.unwrap();
        assert_eq!(r.headers()[X_REQUEST_ID], "abc-123");
        let r =
            svc.clone().oneshot(empty(request("GET", "/x").header(X_REQUEST_ID, "bad id\twith spaces"))).await.unwrap();
        let generated = r.headers()[X_REQUEST_ID].to_str().unwrap().to_string();
        assert_ne!(generated, "bad id\twith spaces");
        assert_eq!(generated.len(), 36);
        let r = svc.oneshot(empty(request("GET", "/x"))).await.unwrap();
        assert!(r.headers().contains_key(X_REQUEST_ID));
        assert_eq!(rec.seen.lock().unwrap()[0].extensions.get::<RequestId>().unwrap().0, "abc-123");
    }
}
