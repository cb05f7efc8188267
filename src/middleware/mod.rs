//! The tower stack in front of the router, outermost first: request id → edge (errors become
//! OperationOutcomes) → trace span with `log-cdata` → body limit → timeout → client authentication →
//! organization resolution → authorization → memory budget → router. Each middleware is a `FooLayer`
//! holding its config and a `Foo<S>` service, in the tower-http shape, and is tested on its own.

pub mod auth;
pub mod authorize;
pub mod body_limit;
pub mod cdata;
pub mod edge;
pub mod memory_budget;
pub mod organization;
pub mod request_id;
pub mod timeout;
pub mod trace;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::error::GatewayError;
pub use crate::request::{GatewayRequest, GatewayResponse};

pin_project! {
    /// Response future of the middlewares that either reject a request up front or pass it on unchanged.
    #[project = CheckedProj]
    pub enum CheckedFuture<F> {
        Rejected { error: Option<GatewayError> },
        Inner { #[pin] future: F },
    }
}

impl<F> CheckedFuture<F> {
    pub fn rejected(error: GatewayError) -> Self {
        CheckedFuture::Rejected { error: Some(error) }
    }
    pub fn inner(future: F) -> Self {
        CheckedFuture::Inner { future }
    }
}

impl<F> Future for CheckedFuture<F>
where
    F: Future<Output = Result<GatewayResponse, GatewayError>>,
{
    type Output = Result<GatewayResponse, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CheckedProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| GatewayError::gateway("response polled after completion")))),
            CheckedProj::Inner { future } => future.poll(cx),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A scripted inner service for middleware tests: records what reached it and answers 200.
    use std::sync::{Arc, Mutex};

    use http::{Request, Response};

    use super::*;
    use crate::body;

    #[derive(Clone, Default)]
    pub struct Recorder {
        pub seen: Arc<Mutex<Vec<http::request::Parts>>>,
    }

    impl Recorder {
        pub fn service(
            &self,
        ) -> impl tower::Service<GatewayRequest, Response = GatewayResponse, Error = GatewayError, Future = impl Send> + Clone
        {
            let seen = self.seen.clone();
            tower::service_fn(move |req: GatewayRequest| {
                let seen = seen.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    use http_body_util::BodyExt;
                    let bytes = body.collect().await.map_err(|e| crate::body::body_error(e.as_ref()))?.to_bytes();
                    seen.lock().unwrap().push(parts);
                    Ok::<_, GatewayError>(Response::new(body::full(bytes)))
                }
            })
        }

        pub fn count(&self) -> usize {
            self.seen.lock().unwrap().len()
        }
    }

    pub fn request(method: &str, uri: &str) -> http::request::Builder {
        Request::builder().method(method).uri(uri)
    }

    pub fn empty(b: http::request::Builder) -> GatewayRequest {
        b.body(body::empty()).unwrap()
    }
}
