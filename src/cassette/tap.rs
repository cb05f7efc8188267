//! The recording tap: a transport wrapper that notes every upstream exchange made while a front-door
//! request runs (a task-local collects them), so the recorder can store them with that request. Token
//! requests go through the unwrapped transport and are never recorded.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use http::HeaderMap;

use super::replay_transport::INJECTED_BASE_URL;
use super::{RecordedBody, RecordedRequest, RecordedResponse, UpstreamExchange};
use crate::mapping::engine::UpstreamResponse;
use crate::upstream::transport::{BoxFuture, HttpRequest, StreamingResponse, Transport, TransportError};

tokio::task_local! {
    static CURRENT: Arc<Mutex<Vec<UpstreamExchange>>>;
}

/// Headers worth keeping in a cassette: they shape the exchange and carry no credentials.
const KEPT_HEADERS: &[&str] = &["content-type", "location", "retry-after", "etag", "log-cdata", "log-cdata-format"];

pub fn kept_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    KEPT_HEADERS
        .iter()
        .filter_map(|name| Some((name.to_string(), headers.get(*name)?.to_str().ok()?.to_string())))
        .collect()
}

/// Runs `future`, collecting the upstream exchanges every `RecordingTransport` sees meanwhile.
pub async fn capture<F: Future>(future: F) -> (F::Output, Vec<UpstreamExchange>) {
    let exchanges = Arc::new(Mutex::new(Vec::new()));
    let output = CURRENT.scope(exchanges.clone(), future).await;
    let recorded = std::mem::take(&mut *exchanges.lock().unwrap_or_else(|p| p.into_inner()));
    (output, recorded)
}

/// Wraps a connection's transport and notes every exchange in the current request's recording.
pub struct RecordingTransport {
    inner: Arc<dyn Transport>,
    base_url: String,
}

impl RecordingTransport {
    pub fn new(inner: Arc<dyn Transport>, base_url: &str) -> Self {
        RecordingTransport { inner, base_url: base_url.trim_end_matches('/').to_string() }
    }
}

/// An upstream request as a cassette records it: path relative to the base URL, no credentials.
pub fn recorded_upstream_request(request: &HttpRequest, base_url: &str) -> RecordedRequest {
    let relative = request.url.strip_prefix(base_url).unwrap_or(&request.url);
    let (path, query) = relative.split_once('?').unwrap_or((relative, ""));
    let mut headers = BTreeMap::new();
    for (k, v) in &request.headers {
        if KEPT_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
            headers.insert(k.to_ascii_lowercase(), v.clone());
        }
    }
    let content_type = headers.get("content-type").map(String::as_str);
    RecordedRequest {
        method: request.method.to_string(),
        path: path.to_string(),
        query: form_urlencoded::parse(query.as_bytes()).into_owned().collect(),
        body: request.body.as_ref().map(|b| RecordedBody::from_bytes(content_type, &b.to_bytes())).unwrap_or_default(),
        headers,
    }
}

fn note(exchange: UpstreamExchange) {
    let _ = CURRENT.try_with(|c| c.lock().unwrap_or_else(|p| p.into_inner()).push(exchange));
}

impl RecordingTransport {
    /// An answer as a cassette records it. Links into the EHR name the connection's host, which is
    /// configuration (and an ephemeral port for a simulator), not part of the exchange: it is recorded as
    /// the host replays answer from, so recordings of one exchange are the same wherever they were made.
    fn recorded_response(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> RecordedResponse {
        let origin = origin(&self.base_url);
        let mut kept = kept_headers(headers);
        if let Some(origin) = origin {
            for value in kept.values_mut() {
                *value = value.replace(origin, INJECTED_BASE_URL);
            }
        }
        let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let body = match (origin, std::str::from_utf8(body)) {
            (Some(origin), Ok(text)) if text.contains(origin) => {
                RecordedBody::from_bytes(content_type, text.replace(origin, INJECTED_BASE_URL).as_bytes())
            }
            _ => RecordedBody::from_bytes(content_type, body),
        };
        RecordedResponse { status, headers: kept, body }
    }
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> Option<&str> {
    let after_scheme = url.find("://")? + 3;
    let end = url[after_scheme..].find('/').map_or(url.len(), |i| after_scheme + i);
    Some(&url[..end])
}

impl Transport for RecordingTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<UpstreamResponse, TransportError>> {
        Box::pin(async move {
            let recorded = recorded_upstream_request(&request, &self.base_url);
            match self.inner.send(request).await {
                Ok(response) => {
                    let answer = self.recorded_response(response.status, &response.headers, &response.body);
                    note(UpstreamExchange { request: recorded, response: answer, failure: None });
                    Ok(response)
                }
                Err(e) => {
                    // No answer: recorded too, so a replay fails the same way.
                    let answer = RecordedResponse { status: 0, headers: BTreeMap::new(), body: RecordedBody::None };
                    note(UpstreamExchange { request: recorded, response: answer, failure: Some(e.clone()) });
                    Err(e)
                }
            }
        })
    }

    fn stream(&self, request: HttpRequest) -> BoxFuture<'_, Result<StreamingResponse, TransportError>> {
        Box::pin(async move {
            let recorded = recorded_upstream_request(&request, &self.base_url);
            let response = self.inner.stream(request).await?;
            // Recording buffers the content: it is a diagnostic mode, not the serving path.
            let mut bytes = Vec::new();
            let mut stream = response.body;
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk.map_err(|_| TransportError::Broken)?);
            }
            note(UpstreamExchange {
                request: recorded,
                response: self.recorded_response(response.status, &response.headers, &bytes),
                failure: None,
            });
            let body = futures_util::stream::once(async move { Ok(Bytes::from(bytes)) }).boxed();
            Ok(StreamingResponse { status: response.status, headers: response.headers, body })
        })
    }
}
