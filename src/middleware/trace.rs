//! Opens the request's tracing span (request id, organization, interaction, parsed `log-cdata`) and logs
//! one line when the request finishes: status and outcome code. Never logs bodies, query values or tokens.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::{Instrument, Span, instrument::Instrumented};

use super::request_id::RequestId;
use super::{GatewayRequest, GatewayResponse};
use crate::error::GatewayError;
use crate::request::Route;

#[derive(Debug, Clone, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S> Service<GatewayRequest> for Trace<S>
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
        let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        let route = Route::classify(req.method(), req.uri().path());
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %req.method(),
            org = route.organization().unwrap_or(""),
            interaction = route.interaction(),
            cdata = tracing::field::Empty,
        );
        let header = |name: &str| req.headers().get(name).map(|v| v.to_str().map_err(|_| ()));
        let parsed = match (header("log-cdata"), header("log-cdata-format")) {
            (None, Some(_)) => Err("log-cdata-format was sent without log-cdata".to_string()),
            (None, None) => Ok(None),
            (Some(Err(())), _) | (_, Some(Err(()))) => Err("log-cdata headers must be visible ASCII".to_string()),
            (Some(Ok(v)), f) => super::cdata::parse(v, f.and_then(Result::ok)).map(Some),
        };
        let start = Instant::now();
        match parsed {
            Err(message) => {
                let error = GatewayError::invalid(message).with_expression("log-cdata");
                ResponseFuture::Rejected { error: Some(error), span, start }
            }
            Ok(cdata) => {
                if let Some(c) = cdata.filter(|c| !c.is_empty()) {
                    span.record("cdata", serde_json::to_string(&c).unwrap_or_default());
                }
                ResponseFuture::Inner { future: self.inner.call(req).instrument(span.clone()), span, start }
            }
        }
    }
}

pin_project! {
    #[project = TraceProj]
    pub enum ResponseFuture<F> {
        Rejected { error: Option<GatewayError>, span: Span, start: Instant },
        Inner { #[pin] future: Instrumented<F>, span: Span, start: Instant },
    }
}

fn finish(span: &Span, start: Instant, result: &Result<GatewayResponse, GatewayError>) {
    let _entered = span.enter();
    let ms = start.elapsed().as_millis() as u64;
    match result {
        Ok(r) => tracing::info!(status = r.status().as_u16(), duration_ms = ms, "request finished"),
        Err(e) => {
            let side = match &e.side {
                crate::error::Side::Client => "client",
                crate::error::Side::Gateway => "gateway",
                crate::error::Side::Upstream(_) => "upstream",
            };
            if e.status.is_server_error() {
                tracing::warn!(
                    status = e.status.as_u16(),
                    code = e.code().as_str(),
                    side,
                    retryable = e.retryable,
                    duration_ms = ms,
                    "request failed"
                );
            } else {
                tracing::info!(
                    status = e.status.as_u16(),
                    code = e.code().as_str(),
                    side,
                    duration_ms = ms,
                    "request refused"
                );
            }
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<GatewayResponse, GatewayError>>,
{
    type Output = Result<GatewayResponse, GatewayError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match self.project() {
            TraceProj::Rejected { error, span, start } => {
                let result =
                    Err(error.take().unwrap_or_else(|| GatewayError::gateway("response polled after completion")));
                finish(span, *start, &result);
                result
            }
            TraceProj::Inner { future, span, start } => match future.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => {
                    finish(span, *start, &result);
                    result
                }
            },
        };
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{Recorder, empty, request};
    use http::StatusCode;
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn bad_cdata_is_a_400_and_good_cdata_passes() {
        let rec = Recorder::default();
        let svc = ServiceBuilder::new().layer(TraceLayer).service(rec.service());
        let e = svc.clone().oneshot(empty(request("GET", "/x").header("log-cdata", "a=1;a=2"))).await.unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.issues[0].expression, ["log-cdata"]);
        let e = svc.clone().oneshot(empty(request("GET", "/x").header("log-cdata-format", "json"))).await.unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let ok = svc
            .oneshot(empty(
                request("GET", "/x").header("log-cdata", r#"{"app":"x"}"#).header("log-cdata-format", "json"),
            ))
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(rec.count(), 1);
    }
}
