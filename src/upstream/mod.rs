//! All I/O to EHRs: tokens, timeouts, retries, per-connection concurrency and per-key write serialization.
//!
//! The upstream client drives a pure [`Run`](crate::mapping::engine::Run) — it sends what the run asks
//! for and feeds back what the EHR said. It never sees the front door's HTTP types.

pub mod lock;
pub mod retry;
pub mod token;
pub mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::Semaphore;

use crate::config::Secret;
use crate::error::{GatewayError, IssueCode, Side};
use crate::mapping::engine::{Outcome, Run, UpstreamRequest, UpstreamResponse};
use lock::KeyedLocks;
use retry::{Attempt, retry_delay};
use token::TokenCache;
use transport::{HttpRequest, StreamingResponse, Transport, TransportError};

/// An answer's `Retry-After`, as a delay from now.
fn retry_after_of(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, std::time::SystemTime::now()))
}

/// Settings of one connection's client.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub name: String,
    /// The EHR's display name, used in error messages.
    pub ehr: String,
    pub base_url: String,
    pub timeout: Duration,
    pub max_concurrency: usize,
    pub max_attempts: u32,
    pub serialize_writes: bool,
    /// The connection's `params` (the mapping's `connection_params`, e.g. athena's practice).
    pub params: std::collections::BTreeMap<String, String>,
    /// Remember lookups a mapping marks `cache`. Off while recording, so every cassette holds the
    /// lookups its request needs and replays on its own.
    pub cache_lookups: bool,
}

/// Values a mapping step bound, remembered per connection (e.g. a patient's primary department).
#[derive(Clone)]
struct Cached {
    bound: Arc<std::collections::BTreeMap<String, serde_json::Value>>,
    expires: std::time::Instant,
}

/// Longest a lookup is kept, whatever the mapping asks; bounds memory and staleness.
const LOOKUP_CACHE_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
const LOOKUP_CACHE_CAPACITY: u64 = 100_000;

/// Holds a write-serialization key. If the write did not settle (no answer, or the request future was
/// dropped because the client left or the front door timed out), the key stays held for a grace period
/// in a background task, so the next write to the same encounter cannot overlap one Canvas may still be
/// processing.
struct WriteGuard {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    settled: bool,
    grace: Duration,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let (Some(guard), Ok(handle)) = (self.guard.take(), tokio::runtime::Handle::try_current()) {
            let grace = self.grace;
            handle.spawn(async move {
                tokio::time::sleep(grace).await;
                drop(guard);
            });
        }
    }
}

pub struct UpstreamClient {
    settings: ClientSettings,
    transport: Arc<dyn Transport>,
    tokens: TokenCache,
    permits: Semaphore,
    write_locks: KeyedLocks,
    serialize_writes: AtomicBool,
    lookups: moka::sync::Cache<String, Cached>,
}

impl UpstreamClient {
    pub fn new(settings: ClientSettings, transport: Arc<dyn Transport>, tokens: TokenCache) -> Self {
        UpstreamClient {
            permits: Semaphore::new(settings.max_concurrency),
            serialize_writes: AtomicBool::new(settings.serialize_writes),
            settings,
            transport,
            tokens,
            write_locks: KeyedLocks::new(),
            lookups: moka::sync::Cache::builder()
                .max_capacity(LOOKUP_CACHE_CAPACITY)
                .time_to_live(LOOKUP_CACHE_MAX_TTL)
                .build(),
        }
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// Turns per-key write serialization on or off (tests prove the EHR loses writes without it).
    pub fn set_serialize_writes(&self, on: bool) {
        self.serialize_writes.store(on, Ordering::SeqCst);
    }

    fn side(&self) -> Side {
        Side::Upstream(self.settings.ehr.clone())
    }

    /// Drives a mapping run to its outcome. Writes with a serialization key hold that key's lock
    /// for the whole run, so the next write to the same encounter starts only after this one's 201.
    pub async fn run(&self, run: &mut Run<'_>) -> Result<Outcome, GatewayError> {
        let mut guard = match run.serialize_key() {
            Some(key) if self.serialize_writes.load(Ordering::SeqCst) => Some(WriteGuard {
                guard: Some(self.write_locks.lock(&key).await),
                settled: false,
                grace: self.settings.timeout,
            }),
            _ => None,
        };
        let mut mapped_attempts = 0;
        let result = loop {
            let cache_key = run.cache_key();
            if let Some((key, _)) = &cache_key
                && self.settings.cache_lookups
                && let Some(hit) = self.lookups.get(key).filter(|c| c.expires > std::time::Instant::now())
            {
                match run.use_cached(&hit.bound) {
                    Ok(()) => continue,
                    Err(e) => break Err(e),
                }
            }
            let request = match run.next_request() {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            let response = match self.execute(&request).await {
                Ok(r) => r,
                Err(e) => break run.recover(e),
            };
            match run.on_response(&response) {
                Ok(Some(outcome)) => break Ok(outcome),
                Ok(None) => {
                    if let Some((key, ttl)) = cache_key.filter(|_| self.settings.cache_lookups) {
                        let expires = std::time::Instant::now() + ttl.min(LOOKUP_CACHE_MAX_TTL);
                        self.lookups.insert(key, Cached { bound: Arc::new(run.last_bound().clone()), expires });
                    }
                }
                // The mapping says this answer is worth retrying (e.g. athena's throttling 403) and the
                // request may be sent twice: back off and send it again. (429 and 5xx were retried
                // already by `execute`.)
                Err(e) if e.retryable && !(response.status == 429 || response.status >= 500) => {
                    mapped_attempts += 1;
                    let outcome = retry::Attempt::Refused { retry_after: e.retry_after };
                    match retry_delay(&outcome, request.is_idempotent(), mapped_attempts, self.settings.max_attempts) {
                        Some(delay) => {
                            tracing::debug!(connection = %self.settings.name, status = response.status, "retrying an upstream answer the mapping marks retryable");
                            tokio::time::sleep(delay).await;
                        }
                        None => break run.recover(e),
                    }
                }
                Err(e) => break run.recover(e),
            }
        };
        // Without an answer (timeout, broken connection) the EHR may still be writing: the guard then
        // holds the key a while longer (see `WriteGuard`).
        if let Some(g) = guard.as_mut() {
            g.settled = !matches!(&result, Err(e) if e.no_answer);
        }
        result
    }

    /// Opens the content stream of a run whose single step yields bytes. Until the first byte reaches
    /// the client it is retried like any read (connect errors, resets, timeouts, 5xx, 429); once bytes
    /// flow, a broken stream ends the response.
    pub async fn stream(&self, run: &Run<'_>) -> Result<StreamingResponse, GatewayError> {
        let request = run.next_request()?;
        let _permit = self.permits.acquire().await.map_err(|_| GatewayError::gateway("connection closed"))?;
        let idempotent = request.is_idempotent();
        let mut refreshed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.tokens.get().await?;
            let result = self.transport.stream(self.http_request(&request, &token)).await;
            // No borrow of the response may live across an await: its body stream is not `Sync`.
            let outcome = match &result {
                Ok(r) => Attempt::Status { status: r.status, retry_after: retry_after_of(&r.headers) },
                Err(e) => Attempt::Failed(e.clone()),
            };
            if matches!(outcome, Attempt::Status { status: 401, .. }) && !refreshed {
                refreshed = true;
                attempt -= 1;
                drop(result);
                self.tokens.invalidate(&token).await;
                continue;
            }
            if let Some(delay) = self.retry_plan(&outcome, idempotent, attempt) {
                drop(result);
                tokio::time::sleep(delay).await;
                continue;
            }
            return result.map_err(|e| self.transport_error(e, idempotent));
        }
    }

    /// How long to wait before sending again, for an outcome the transport-level retries cover
    /// (failures, 429 and 5xx); `None` to answer with it.
    fn retry_plan(&self, outcome: &Attempt, idempotent: bool, attempt: u32) -> Option<std::time::Duration> {
        let retryable_status = matches!(outcome, Attempt::Status { status, .. } if *status == 429 || *status >= 500);
        if !(matches!(outcome, Attempt::Failed(_)) || retryable_status) {
            return None;
        }
        let delay = retry_delay(outcome, idempotent, attempt, self.settings.max_attempts)?;
        tracing::debug!(connection = %self.settings.name, attempt, delay_ms = delay.as_millis() as u64, "retrying upstream request");
        Some(delay)
    }

    fn http_request(&self, request: &UpstreamRequest, token: &Secret) -> HttpRequest {
        let mut url = format!("{}{}", self.settings.base_url, request.path);
        if !request.query.is_empty() {
            let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(&request.query).finish();
            url.push('?');
            url.push_str(&query);
        }
        let mut headers = request.headers.clone();
        headers.push(("authorization".into(), format!("Bearer {}", token.expose())));
        headers.push(("accept".into(), "application/json".into()));
        if let Some(ct) = request.content_type {
            headers.push(("content-type".into(), ct.into()));
        }
        HttpRequest {
            method: request.method.clone(),
            url,
            headers,
            body: request.body.clone(),
            timeout: self.settings.timeout,
        }
    }

    /// Sends one request with auth, the concurrency limit, one refresh on 401 and safe retries.
    pub async fn execute(&self, request: &UpstreamRequest) -> Result<UpstreamResponse, GatewayError> {
        let _permit = self.permits.acquire().await.map_err(|_| GatewayError::gateway("connection closed"))?;
        let idempotent = request.is_idempotent();
        let mut refreshed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.tokens.get().await?;
            let result = self.transport.send(self.http_request(request, &token)).await;
            let outcome = match &result {
                Ok(r) if r.status == 401 && !refreshed => {
                    // A 401 means the EHR did not act on the request, so even a create may be resent once.
                    refreshed = true;
                    attempt -= 1;
                    self.tokens.invalidate(&token).await;
                    continue;
                }
                Ok(r) => Attempt::Status { status: r.status, retry_after: retry_after_of(&r.headers) },
                Err(e) => Attempt::Failed(e.clone()),
            };
            if let Some(delay) = self.retry_plan(&outcome, idempotent, attempt) {
                tokio::time::sleep(delay).await;
                continue;
            }
            return result.map_err(|e| self.transport_error(e, idempotent));
        }
    }

    fn transport_error(&self, error: TransportError, idempotent: bool) -> GatewayError {
        let no_answer = matches!(error, TransportError::Timeout | TransportError::Broken);
        let mut e = self.describe_transport_error(error, idempotent);
        e.no_answer = no_answer;
        e
    }

    fn describe_transport_error(&self, error: TransportError, idempotent: bool) -> GatewayError {
        let ehr = &self.settings.ehr;
        match error {
            TransportError::Timeout if !idempotent => GatewayError::new(
                StatusCode::GATEWAY_TIMEOUT,
                IssueCode::Timeout,
                self.side(),
                format!(
                    "{ehr} did not answer in time; the write may or may not have happened, so search before sending it again"
                ),
            ),
            TransportError::Timeout => GatewayError::new(
                StatusCode::GATEWAY_TIMEOUT,
                IssueCode::Timeout,
                self.side(),
                format!("{ehr} did not answer in time"),
            )
            .retryable(true),
            TransportError::Connect => GatewayError::new(
                StatusCode::GATEWAY_TIMEOUT,
                IssueCode::Timeout,
                self.side(),
                format!("{ehr} could not be reached"),
            )
            .retryable(true),
            TransportError::Broken if !idempotent => GatewayError::new(
                StatusCode::BAD_GATEWAY,
                IssueCode::Exception,
                self.side(),
                format!(
                    "the connection to {ehr} broke; the write may or may not have happened, so search before sending it again"
                ),
            ),
            TransportError::Broken => GatewayError::new(
                StatusCode::BAD_GATEWAY,
                IssueCode::Transient,
                self.side(),
                format!("the connection to {ehr} broke"),
            )
            .retryable(true),
            TransportError::TooLarge => GatewayError::new(
                StatusCode::BAD_GATEWAY,
                IssueCode::TooCostly,
                self.side(),
                format!(
                    "{ehr} answered with more bytes than the gateway reads into memory \
                     (server.max_upstream_answer_bytes){}",
                    if idempotent { "" } else { "; the write happened, so do not send it again" }
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::ClientAuth;
    use crate::upstream::token::TokenSource;
    use crate::upstream::transport::BoxFuture;
    use bytes::Bytes;
    use http::Method;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// Token endpoint answers `tok-N`; the API answers from a script, recording what it was sent.
    struct Scripted {
        api: Mutex<VecDeque<Result<u16, TransportError>>>,
        sent: Mutex<Vec<(Method, String)>>,
        tokens: Mutex<u32>,
    }

    impl Transport for Scripted {
        fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<UpstreamResponse, TransportError>> {
            Box::pin(async move {
                if request.url.ends_with("/token") {
                    let mut n = self.tokens.lock().unwrap();
                    *n += 1;
                    let body = format!(r#"{{"access_token":"tok-{n}","expires_in":3600}}"#);
                    return Ok(UpstreamResponse { status: 200, headers: Default::default(), body: body.into() });
                }
                let auth = request.headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.clone()).unwrap();
                self.sent.lock().unwrap().push((request.method.clone(), auth));
                let next = self.api.lock().unwrap().pop_front().unwrap_or(Ok(200));
                next.map(|status| UpstreamResponse { status, headers: Default::default(), body: Bytes::new() })
            })
        }
        fn stream(&self, _: HttpRequest) -> BoxFuture<'_, Result<StreamingResponse, TransportError>> {
            Box::pin(async { Err(TransportError::Broken) })
        }
    }

    fn scripted_client(script: Vec<Result<u16, TransportError>>) -> (UpstreamClient, Arc<Scripted>) {
        let transport =
            Arc::new(Scripted { api: Mutex::new(script.into()), sent: Mutex::default(), tokens: Mutex::new(0) });
        let tokens = TokenCache::new(
            TokenSource {
                ehr: "Canvas Medical".into(),
                token_url: "http://127.0.0.1:1/token".into(),
                client_id: "id".into(),
                client_secret: Secret::new("secret"),
                client_auth: ClientAuth::Form,
                scope: None,
                refresh_before: Duration::from_secs(60),
                timeout: Duration::from_secs(5),
            },
            transport.clone(),
        );
        let settings = ClientSettings {
            name: "c".into(),
            ehr: "Canvas Medical".into(),
            base_url: "http://127.0.0.1:1".into(),
            timeout: Duration::from_secs(5),
            max_concurrency: 4,
            max_attempts: 3,
            serialize_writes: true,
            params: Default::default(),
            cache_lookups: true,
        };
        (UpstreamClient::new(settings, transport.clone(), tokens), transport)
    }

    fn request(method: Method) -> UpstreamRequest {
        UpstreamRequest {
            method: method.clone(),
            path: "/Media".into(),
            query: vec![],
            headers: vec![],
            body: None,
            content_type: None,
            idempotent: method == Method::GET,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unsettled_write_keeps_its_key_for_the_grace_period() {
        let locks = Arc::new(KeyedLocks::new());
        let grace = Duration::from_secs(20);
        drop(WriteGuard { guard: Some(locks.lock("enc").await), settled: false, grace });
        assert!(tokio::time::timeout(grace - Duration::from_millis(1), locks.lock("enc")).await.is_err());
        assert!(tokio::time::timeout(Duration::from_millis(10), locks.lock("enc")).await.is_ok());
        // A settled write releases at once.
        drop(WriteGuard { guard: Some(locks.lock("enc2").await), settled: true, grace });
        assert!(tokio::time::timeout(Duration::from_millis(1), locks.lock("enc2")).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_retried_through_server_errors() {
        let (client, t) = scripted_client(vec![Ok(503), Err(TransportError::Broken), Ok(200)]);
        assert_eq!(client.execute(&request(Method::GET)).await.unwrap().status, 200);
        assert_eq!(t.sent.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_give_up_after_max_attempts() {
        let (client, t) = scripted_client(vec![Ok(500), Ok(500), Ok(500), Ok(200)]);
        assert_eq!(client.execute(&request(Method::GET)).await.unwrap().status, 500);
        assert_eq!(t.sent.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_is_never_resent_after_it_may_have_arrived() {
        let (client, t) = scripted_client(vec![Ok(503)]);
        assert_eq!(client.execute(&request(Method::POST)).await.unwrap().status, 503);
        let (client2, t2) = scripted_client(vec![Err(TransportError::Timeout)]);
        let e = client2.execute(&request(Method::POST)).await.unwrap_err();
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(e.message().contains("may or may not have happened"));
        assert_eq!(t.sent.lock().unwrap().len() + t2.sent.lock().unwrap().len(), 2);
        // Connection refused means it never left: resending is safe.
        let (client3, t3) = scripted_client(vec![Err(TransportError::Connect), Ok(201)]);
        assert_eq!(client3.execute(&request(Method::POST)).await.unwrap().status, 201);
        assert_eq!(t3.sent.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_401_refreshes_the_token_once_and_retries_once() {
        let (client, t) = scripted_client(vec![Ok(401), Ok(200)]);
        assert_eq!(client.execute(&request(Method::POST)).await.unwrap().status, 200);
        let sent = t.sent.lock().unwrap().clone();
        assert_eq!(sent.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(), ["Bearer tok-1", "Bearer tok-2"]);

        let (client, t) = scripted_client(vec![Ok(401), Ok(401), Ok(200)]);
        assert_eq!(client.execute(&request(Method::GET)).await.unwrap().status, 401, "second 401 is final");
        assert_eq!(t.sent.lock().unwrap().len(), 2);
        assert_eq!(*t.tokens.lock().unwrap(), 2);
    }
}
