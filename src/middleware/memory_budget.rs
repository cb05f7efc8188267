//! Caps the request-body bytes in flight across all requests (`server.memory_budget_bytes`), so many
//! large uploads at once wait or are turned away instead of exhausting memory. A body with a declared
//! `Content-Length` reserves its size before it is read, waiting up to `server.memory_budget_wait_ms`;
//! a body without one reserves each piece as it arrives. The reservation lasts until the response is
//! produced, because the body is held in memory while the request is handled. Over budget: 503
//! `transient` with `Retry-After`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::{GatewayRequest, GatewayResponse};
use crate::body::{self, BUDGET_RETRY_AFTER, Body, BudgetExhausted};
use crate::error::{BoxError, GatewayError, IssueCode, Side};

/// Permits count KiB, so a budget of gigabytes fits the semaphore's `u32` requests.
const UNIT: u64 = 1024;

/// The reservations of one request: shared by its body (which adds to them while it is read) and its
/// response future (which releases them when the response is ready).
type Held = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

fn hold(held: &Held, permit: OwnedSemaphorePermit) {
    let mut slot = held.lock().unwrap_or_else(|p| p.into_inner());
    match slot.as_mut() {
        Some(existing) => existing.merge(permit),
        None => *slot = Some(permit),
    }
}

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

fn exhausted(budget: u64) -> GatewayError {
    GatewayError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        IssueCode::Transient,
        Side::Gateway,
        format!(
            "the gateway is handling as many request bodies as its memory budget allows ({} MiB); send this again shortly",
            budget / (1024 * 1024)
        ),
    )
    .retryable(true)
    .with_retry_after(Some(BUDGET_RETRY_AFTER))
}

#[derive(Debug, Clone)]
pub struct MemoryBudgetLayer {
    semaphore: Arc<Semaphore>,
    budget: u64,
    wait: Duration,
}

impl MemoryBudgetLayer {
    pub fn new(budget: u64, wait: Duration) -> Self {
        // Rounded up like reservations are, so a body of exactly the budget fits.
        let permits = usize::try_from(budget.div_ceil(UNIT)).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        MemoryBudgetLayer { semaphore: Arc::new(Semaphore::new(permits)), budget, wait }
    }
}

impl<S> Layer<S> for MemoryBudgetLayer {
    type Service = MemoryBudget<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MemoryBudget { inner, semaphore: self.semaphore.clone(), budget: self.budget, wait: self.wait }
    }
}

#[derive(Debug, Clone)]
pub struct MemoryBudget<S> {
    inner: S,
    semaphore: Arc<Semaphore>,
    budget: u64,
    wait: Duration,
}

impl<S> Service<GatewayRequest> for MemoryBudget<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        let held: Held = Arc::default();
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let has_body = declared.is_some_and(|n| n > 0) || req.headers().contains_key(http::header::TRANSFER_ENCODING);
        if !has_body {
            return ResponseFuture::Inner { future: self.inner.call(req), held };
        }
        // The inner service that was made ready is the one to call; leave a clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (semaphore, wait, budget) = (self.semaphore.clone(), self.wait, self.budget);
        let req = match declared {
            // A body of unknown length reserves as it is read.
            None => req.map(|b| {
                body::boxed(BudgetedBody { inner: b, semaphore: semaphore.clone(), held: held.clone(), read: 0 })
            }),
            Some(_) => req,
        };
        let reserve = declared.map(units).unwrap_or(0);
        let inner: Box<dyn CallOnce<S::Future>> = Box::new(inner);
        ResponseFuture::Waiting {
            acquire: Box::pin(async move {
                if reserve == 0 {
                    return Ok(None);
                }
                match tokio::time::timeout(wait, semaphore.acquire_many_owned(reserve)).await {
                    Ok(Ok(permit)) => Ok(Some(permit)),
                    _ => Err(exhausted(budget)),
                }
            }),
            call: Some((inner, req)),
            held,
        }
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<Option<OwnedSemaphorePermit>, GatewayError>> + Send>>;

pin_project! {
    #[project = ResponseProj]
    pub enum ResponseFuture<F> {
        Waiting { acquire: Acquire, call: Option<(Box<dyn CallOnce<F>>, GatewayRequest)>, held: Held },
        Inner { #[pin] future: F, held: Held },
    }
}

/// The inner service, called once the reservation is made.
pub trait CallOnce<F>: Send {
    fn call_once(self: Box<Self>, req: GatewayRequest) -> F;
}

impl<S> CallOnce<S::Future> for S
where
    S: Service<GatewayRequest> + Send,
{
    fn call_once(mut self: Box<Self>, req: GatewayRequest) -> S::Future {
        self.call(req)
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<GatewayResponse, GatewayError>>,
{
    type Output = Result<GatewayResponse, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                ResponseProj::Waiting { acquire, call, held } => {
                    let permit = match acquire.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(permit)) => permit,
                    };
                    if let Some(permit) = permit {
                        hold(held, permit);
                    }
                    let held = held.clone();
                    let Some((inner, req)) = call.take() else {
                        return Poll::Ready(Err(GatewayError::gateway("response polled after completion")));
                    };
                    let future = inner.call_once(req);
                    self.set(ResponseFuture::Inner { future, held });
                }
                ResponseProj::Inner { future, held } => {
                    let result = std::task::ready!(future.poll(cx));
                    // The body has been handled: its bytes are no longer held for this request.
                    held.lock().unwrap_or_else(|p| p.into_inner()).take();
                    return Poll::Ready(result);
                }
            }
        }
    }
}

pin_project! {
    /// A body of unknown length that reserves budget for each piece before handing it on.
    struct BudgetedBody {
        #[pin]
        inner: Body,
        semaphore: Arc<Semaphore>,
        held: Held,
        // Bytes read so far: units are reserved for the running total, so many tiny pieces cost what
        // their sum does.
        read: u64,
    }
}

impl HttpBody for BudgetedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    // Pieces arrive while the budget is checked: a piece that does not fit fails the read
                    // at once rather than waiting with a half-read body.
                    let before = units(*this.read);
                    *this.read += data.len() as u64;
                    let more = units(*this.read) - before;
                    if more > 0 {
                        match this.semaphore.clone().try_acquire_many_owned(more) {
                            Ok(permit) => hold(this.held, permit),
                            Err(_) => return Poll::Ready(Some(Err(Box::new(BudgetExhausted)))),
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::sync::Notify;
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::middleware::testing::{empty, request};

    fn post(len: usize) -> GatewayRequest {
        request("POST", "/x").header("content-length", len.to_string()).body(body::full(vec![b'a'; len])).unwrap()
    }

    /// An inner service that reads the body, then holds the request until released.
    fn holding(
        release: Arc<Notify>,
        entered: Arc<AtomicUsize>,
    ) -> impl Service<GatewayRequest, Response = GatewayResponse, Error = GatewayError, Future = impl Send>
    + Clone
    + Send
    + 'static {
        tower::service_fn(move |req: GatewayRequest| {
            let (release, entered) = (release.clone(), entered.clone());
            async move {
                let bytes = req.into_body().collect().await.map_err(|e| body::body_error(e.as_ref()))?.to_bytes();
                entered.fetch_add(1, Ordering::SeqCst);
                release.notified().await;
                Ok::<_, GatewayError>(GatewayResponse::new(body::full(bytes)))
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_over_the_budget_wait_then_get_503_with_retry_after() {
        let (release, entered) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let svc = ServiceBuilder::new()
            .layer(MemoryBudgetLayer::new(10 * 1024, Duration::from_millis(500)))
            .service(holding(release.clone(), entered.clone()));
        let first = tokio::spawn(svc.clone().oneshot(post(8 * 1024)));
        while entered.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // 8 KiB are held; 4 more do not fit: the second waits out its 500 ms, then is turned away.
        let error = svc.clone().oneshot(post(4 * 1024)).await.unwrap_err();
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.code(), IssueCode::Transient);
        assert_eq!(error.retry_after, Some(BUDGET_RETRY_AFTER));
        assert_eq!(entered.load(Ordering::SeqCst), 1, "the refused body was never handed on");
        // A body that fits goes through meanwhile, and one that waits gets in once the first is done.
        let small = tokio::spawn(svc.clone().oneshot(post(1024)));
        let waiting = tokio::spawn(svc.clone().oneshot(post(4 * 1024)));
        while entered.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        release.notify_waiters();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        small.await.unwrap().unwrap();
        while entered.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        release.notify_waiters();
        assert_eq!(waiting.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    /// Reads the body and answers 200: what the router does with a body, minus the mapping.
    fn reading() -> impl Service<GatewayRequest, Response = GatewayResponse, Error = GatewayError, Future = impl Send>
    + Clone
    + Send
    + 'static {
        tower::service_fn(|req: GatewayRequest| async move {
            req.into_body().collect().await.map_err(|e| body::body_error(e.as_ref()))?;
            Ok::<_, GatewayError>(GatewayResponse::new(body::empty()))
        })
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_reserves_as_it_arrives() {
        let svc =
            ServiceBuilder::new().layer(MemoryBudgetLayer::new(4 * 1024, Duration::from_millis(10))).service(reading());
        let chunked = |len: usize| {
            request("POST", "/x").header("transfer-encoding", "chunked").body(body::full(vec![b'a'; len])).unwrap()
        };
        assert_eq!(svc.clone().oneshot(chunked(3 * 1024)).await.unwrap().status(), StatusCode::OK);
        let error = svc.clone().oneshot(chunked(6 * 1024)).await.unwrap_err();
        assert_eq!((error.status, error.code()), (StatusCode::SERVICE_UNAVAILABLE, IssueCode::Transient));
        // Everything was given back: the budget is whole again.
        assert_eq!(svc.clone().oneshot(chunked(4 * 1024)).await.unwrap().status(), StatusCode::OK);
        // Many tiny pieces cost what their sum does, not a unit each.
        let pieces =
            futures_util::stream::iter((0..3000).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"a")))));
        let tiny = request("POST", "/x")
            .header("transfer-encoding", "chunked")
            .body(body::boxed(http_body_util::StreamBody::new(pieces)))
            .unwrap();
        assert_eq!(svc.oneshot(tiny).await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn requests_without_a_body_reserve_nothing() {
        // A budget of one unit, all of it taken by a body that never finishes: GETs still pass.
        let (release, entered) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let svc = ServiceBuilder::new()
            .layer(MemoryBudgetLayer::new(1024, Duration::ZERO))
            .service(holding(release, entered.clone()));
        let _stuck = tokio::spawn(svc.clone().oneshot(post(1024)));
        while entered.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let get = svc.clone().oneshot(empty(request("GET", "/x")));
        assert!(tokio::time::timeout(Duration::from_millis(100), get).await.is_err(), "reaches the held inner service");
        assert_eq!(entered.load(Ordering::SeqCst), 2, "the GET was handed on without waiting for budget");
        let error = svc.oneshot(post(10)).await.unwrap_err();
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE, "a body still waits for budget");
    }
}
