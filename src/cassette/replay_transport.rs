//! The replay transport: answers upstream requests from a cassette instead of the network. A request
//! matches a recorded one on method, path, normalized query and body digest; an unmatched request is
//! reported with the closest recorded candidates and how they differ.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::redact::{MappingFields, Redactor};
use super::tap::recorded_upstream_request;
use super::{RecordedRequest, UpstreamExchange};
use crate::mapping::engine::UpstreamResponse;
use crate::upstream::transport::{BoxFuture, HttpRequest, StreamingResponse, Transport, TransportError};

/// Where replayed connections point; the replay transport answers both.
pub const INJECTED_BASE_URL: &str = "http://upstream.replay.invalid";
pub const INJECTED_TOKEN_URL: &str = "http://upstream.replay.invalid/oauth2/token";

pub struct ReplayTransport {
    exchanges: Vec<UpstreamExchange>,
    state: Mutex<ReplayState>,
    /// The placeholders recording gave texts, dates and media, applied to what is sent now before it is
    /// compared (set once the mapping is loaded).
    placeholders: Mutex<Option<(Arc<Redactor>, Arc<MappingFields>)>>,
}

#[derive(Default)]
struct ReplayState {
    used: Vec<bool>,
    /// Every request the gateway sent, in order.
    sent: Vec<RecordedRequest>,
    /// Problems: unmatched requests with their nearest candidates.
    problems: Vec<String>,
}

impl ReplayTransport {
    pub fn new(exchanges: Vec<UpstreamExchange>) -> Self {
        let used = vec![false; exchanges.len()];
        ReplayTransport {
            exchanges,
            state: Mutex::new(ReplayState { used, ..Default::default() }),
            placeholders: Mutex::new(None),
        }
    }

    /// Applies `redactor`'s placeholders (with the mapping's `fields`) to every request before matching.
    pub fn set_placeholders(&self, redactor: Arc<Redactor>, fields: Arc<MappingFields>) {
        *self.placeholders.lock().unwrap_or_else(|p| p.into_inner()) = Some((redactor, fields));
    }

    /// Requests sent, and problems: unmatched requests and recorded exchanges never requested.
    pub fn finish(&self) -> (Vec<RecordedRequest>, Vec<String>) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // The gateway retries reads, so one unmatched request can be reported several times.
        let mut problems: Vec<String> = Vec::new();
        for p in &state.problems {
            if !problems.contains(p) {
                problems.push(p.clone());
            }
        }
        for (i, used) in state.used.iter().enumerate() {
            if !used {
                let r = &self.exchanges[i].request;
                problems.push(format!("upstream[{i}]: recorded {} {} was not sent this time", r.method, r.path));
            }
        }
        (state.sent.clone(), problems)
    }

    fn answer(&self, request: &HttpRequest) -> Result<(u16, HeaderMap, Bytes), TransportError> {
        if request.url == INJECTED_TOKEN_URL {
            let body = r#"{"access_token":"replay","token_type":"Bearer","expires_in":3600}"#;
            let mut headers = HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return Ok((200, headers, Bytes::from_static(body.as_bytes())));
        }
        let mut actual = recorded_upstream_request(request, INJECTED_BASE_URL);
        if let Some((redactor, fields)) = self.placeholders.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            // A failed placeholder pass leaves the request as sent; the comparison then reports it.
            let _ = redactor.placeholders_in_request(&mut actual, fields);
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.sent.push(actual.clone());
        let index = (0..self.exchanges.len())
            .find(|&i| !state.used[i] && differences(&self.exchanges[i].request, &actual).is_empty());
        let Some(index) = index else {
            let message = self.unmatched(&actual);
            state.problems.push(message);
            return Err(TransportError::Broken);
        };
        state.used[index] = true;
        if let Some(failure) = &self.exchanges[index].failure {
            return Err(failure.clone());
        }
        let response = &self.exchanges[index].response;
        let mut headers = HeaderMap::new();
        for (k, v) in &response.headers {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                headers.insert(name, value);
            }
        }
        Ok((response.status, headers, response.body.to_bytes()))
    }

    fn unmatched(&self, actual: &RecordedRequest) -> String {
        let mut candidates: Vec<(usize, Vec<String>)> =
            self.exchanges.iter().enumerate().map(|(i, e)| (i, differences(&e.request, actual))).collect();
        candidates.sort_by_key(|(_, d)| d.len());
        let mut message = format!(
            "no recorded upstream exchange matches {} {}{}; closest recorded:",
            actual.method,
            actual.path,
            if actual.query.is_empty() { String::new() } else { format!("?{}", query_text(&actual.query)) }
        );
        if candidates.is_empty() {
            message.push_str(" none (the cassette has no upstream exchanges)");
        }
        for (i, diffs) in candidates.iter().take(3) {
            message.push_str(&format!("\n           upstream[{i}]: {}", diffs.join("; ")));
        }
        message
    }
}

fn query_text(query: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish()
}

/// How a recorded request differs from an actual one (empty = match).
pub fn differences(recorded: &RecordedRequest, actual: &RecordedRequest) -> Vec<String> {
    let mut out = Vec::new();
    if recorded.method != actual.method {
        out.push(format!("method {} (now {})", recorded.method, actual.method));
    }
    if recorded.path != actual.path {
        out.push(format!("path {} (now {})", recorded.path, actual.path));
    }
    let (r, a) = (recorded.normalized_query(), actual.normalized_query());
    if r != a {
        let only_recorded: Vec<String> = r.iter().filter(|p| !a.contains(p)).map(|(k, v)| format!("{k}={v}")).collect();
        let only_actual: Vec<String> = a.iter().filter(|p| !r.contains(p)).map(|(k, v)| format!("{k}={v}")).collect();
        out.push(format!("query has [{}], now [{}]", only_recorded.join(", "), only_actual.join(", ")));
    }
    if recorded.headers != actual.headers {
        out.push(format!("headers {:?} (now {:?})", recorded.headers, actual.headers));
    }
    if recorded.body.digest() != actual.body.digest() {
        let mut body_diff = Vec::new();
        if let (super::RecordedBody::Json(r), super::RecordedBody::Json(a)) = (&recorded.body, &actual.body) {
            crate::mapping::golden::diff("body", r, a, &mut body_diff);
        }
        if body_diff.is_empty() {
            out.push("body differs".into());
        } else {
            out.push(body_diff.join(", "));
        }
    }
    out
}

impl Transport for ReplayTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<UpstreamResponse, TransportError>> {
        let result = self.answer(&request).map(|(status, headers, body)| UpstreamResponse { status, headers, body });
        Box::pin(async move { result })
    }

    fn stream(&self, request: HttpRequest) -> BoxFuture<'_, Result<StreamingResponse, TransportError>> {
        let result = self.answer(&request).map(|(status, headers, body)| StreamingResponse {
            status,
            headers,
            body: futures_util::stream::once(async move { Ok(body) }).boxed(),
        });
        Box::pin(async move { result })
    }
}
