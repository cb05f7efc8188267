//! The wire under the upstream client: one trait, a reqwest implementation, and the errors that matter
//! for retry decisions (did the request possibly reach the EHR or not).

use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, Method};

use crate::json::OutgoingBody;
use crate::mapping::engine::UpstreamResponse;

pub type BoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A fully resolved HTTP request. `Debug` shows only the method and the URL's path: headers carry
/// tokens, bodies carry secrets or patient data, queries carry search values.
#[derive(Clone)]
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<OutgoingBody>,
    pub timeout: Duration,
}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.url.split('?').next().unwrap_or("");
        f.debug_struct("HttpRequest").field("method", &self.method).field("path", &path).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportError {
    /// The connection was never established: the EHR cannot have seen the request.
    Connect,
    /// No answer in time: the EHR may or may not have acted on it.
    Timeout,
    /// The connection broke after the request may have been sent.
    Broken,
    /// The answer was larger than the gateway reads (`server.max_upstream_answer_bytes`); the request was
    /// answered, so it is not sent again.
    TooLarge,
}

pub struct StreamingResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: ByteStream,
}

pub trait Transport: Send + Sync + 'static {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<UpstreamResponse, TransportError>>;
    /// Like `send`, but hands back the body as a stream (media bytes).
    fn stream(&self, request: HttpRequest) -> BoxFuture<'_, Result<StreamingResponse, TransportError>>;
}

/// reqwest over HTTP/1.1 and TLS. API and token requests never follow redirects (a redirected POST
/// could carry a client secret or a write elsewhere). Content downloads follow them (Canvas content →
/// S3); reqwest drops the `Authorization` header when a redirect leaves the host, so EHR tokens never
/// reach the storage host.
pub struct ReqwestTransport {
    client: reqwest::Client,
    content_client: reqwest::Client,
    /// The most bytes of one answer read into memory (streamed content is not held and not capped).
    max_answer_bytes: u64,
}

impl ReqwestTransport {
    pub fn new(connect_timeout: Duration, max_answer_bytes: u64) -> Result<Self, String> {
        let build = |redirects| {
            reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                .redirect(redirects)
                .no_proxy()
                .pool_max_idle_per_host(64)
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        };
        Ok(ReqwestTransport {
            client: build(reqwest::redirect::Policy::none())?,
            content_client: build(reqwest::redirect::Policy::limited(5))?,
            max_answer_bytes,
        })
    }

    fn build(client: &reqwest::Client, request: HttpRequest) -> reqwest::RequestBuilder {
        let mut builder = client.request(request.method, &request.url).timeout(request.timeout);
        for (k, v) in request.headers {
            builder = builder.header(k, v);
        }
        if let Some(body) = request.body {
            builder = match body.as_single() {
                Some(bytes) => builder.body(bytes.clone()),
                // A body in chunks (media spliced in) streams, with its length declared up front.
                None => builder
                    .header(http::header::CONTENT_LENGTH, body.len())
                    .body(reqwest::Body::wrap_stream(body.stream())),
            };
        }
        builder
    }
}

/// The most an answer's `Content-Length` reserves up front; a larger answer grows as it arrives.
const MAX_PREALLOCATED: u64 = 256 * 1024 * 1024;

fn classify(e: &reqwest::Error) -> TransportError {
    if e.is_timeout() {
        TransportError::Timeout
    } else if e.is_connect() {
        TransportError::Connect
    } else {
        TransportError::Broken
    }
}

impl Transport for ReqwestTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<UpstreamResponse, TransportError>> {
        let builder = Self::build(&self.client, request);
        Box::pin(async move {
            let mut response = builder.send().await.map_err(|e| classify(&e))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            // Chunks are moved into one buffer sized from Content-Length as they arrive, so an answer
            // is held once (collecting them first and joining them after would hold it twice).
            let max = self.max_answer_bytes;
            if response.content_length().is_some_and(|n| n > max) {
                return Err(TransportError::TooLarge);
            }
            let declared = response.content_length().unwrap_or(0).min(MAX_PREALLOCATED) as usize;
            let mut body = BytesMut::with_capacity(declared);
            while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e))? {
                if (body.len() + chunk.len()) as u64 > max {
                    return Err(TransportError::TooLarge);
                }
                if body.is_empty() && chunk.len() >= declared {
                    body = BytesMut::from(chunk);
                } else {
                    body.extend_from_slice(&chunk);
                }
            }
            Ok(UpstreamResponse { status, headers, body: body.freeze() })
        })
    }

    fn stream(&self, request: HttpRequest) -> BoxFuture<'_, Result<StreamingResponse, TransportError>> {
        let builder = Self::build(&self.content_client, request);
        Box::pin(async move {
            let response = builder.send().await.map_err(|e| classify(&e))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.bytes_stream().map(|r| r.map_err(std::io::Error::other)).boxed();
            Ok(StreamingResponse { status, headers, body })
        })
    }
}
