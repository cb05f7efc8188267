//! Cassettes for replay tests: the format (one front-door exchange and every upstream exchange it
//! caused, as pretty JSON — diff-friendly: sorted keys, one field a line; documented in docs/replay.md),
//! redaction, the recording tap and recorder, and the transport that answers from a cassette.
//!
//! This sits above `upstream` (it wraps and implements its `Transport`) and below `state`; what runs a
//! request through the front door while recording is the front door's (`frontdoor::record`), and
//! replaying a folder is a command (`replay`).

pub mod recorder;
pub mod redact;
pub mod replay_transport;
pub mod tap;

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const FORMAT_VERSION: u32 = 1;

/// The most zero bytes a replay serves for one redacted binary body.
pub const MAX_REPLAY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cassette {
    pub format: u32,
    pub organization: OrganizationInfo,
    /// The gateway's public base URL when recorded; replay serves under the same base.
    pub gateway_base: String,
    pub interaction: String,
    pub request: RecordedRequest,
    pub response: RecordedResponse,
    /// In the order the gateway sent them. Token requests are never recorded.
    pub upstream: Vec<UpstreamExchange>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganizationInfo {
    pub slug: String,
    pub ehr: String,
    pub mapping: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamExchange {
    pub request: RecordedRequest,
    pub response: RecordedResponse,
    /// The request got no answer (`response` is then empty); replay fails it the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<crate::upstream::transport::TransportError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedRequest {
    pub method: String,
    /// Path only; for upstream requests relative to the connection's base URL.
    pub path: String,
    #[serde(default)]
    pub query: Vec<(String, String)>,
    /// Only headers that shape the exchange (content type, log-cdata); never credentials.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: RecordedBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedResponse {
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: RecordedBody,
}

/// A body: nothing, JSON, form fields, text, or binary content kept only as its length.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedBody {
    #[default]
    None,
    Json(Value),
    Form(Vec<(String, String)>),
    Text(String),
    /// Media bytes are never stored: replay serves this many zero bytes.
    RedactedBytes(usize),
    /// A file of a known type: replay serves its signature (hex), then zeros, `len` bytes in all, so
    /// what a mapping reads from the type still holds.
    RedactedFile {
        len: usize,
        signature: String,
    },
}

impl RecordedBody {
    /// Classifies a body by its content type.
    pub fn from_bytes(content_type: Option<&str>, bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            return RecordedBody::None;
        }
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        if (ct.contains("json") || ct.is_empty())
            && let Ok(v) = serde_json::from_slice::<Value>(bytes)
        {
            return RecordedBody::Json(v);
        }
        if ct.starts_with("application/x-www-form-urlencoded") {
            return RecordedBody::Form(form_urlencoded::parse(bytes).into_owned().collect());
        }
        let textual = ct.starts_with("text/") || ct.contains("json") || ct.contains("xml") || ct.is_empty();
        match std::str::from_utf8(bytes) {
            Ok(s) if textual => RecordedBody::Text(s.to_string()),
            _ => match redact::signature(bytes) {
                Some(sig) => RecordedBody::RedactedFile { len: bytes.len(), signature: hex::encode(sig) },
                None => RecordedBody::RedactedBytes(bytes.len()),
            },
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        match self {
            RecordedBody::None => Bytes::new(),
            RecordedBody::Json(v) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            RecordedBody::Form(pairs) => {
                Bytes::from(form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish())
            }
            RecordedBody::Text(t) => Bytes::from(t.clone()),
            // Bounded: a cassette is input too.
            RecordedBody::RedactedBytes(n) => Bytes::from(vec![0u8; (*n).min(MAX_REPLAY_BYTES)]),
            RecordedBody::RedactedFile { len, signature } => {
                let mut bytes = hex::decode(signature).unwrap_or_default();
                bytes.resize((*len).min(MAX_REPLAY_BYTES), 0);
                Bytes::from(bytes)
            }
        }
    }

    /// A short digest of the canonical body, for matching requests.
    pub fn digest(&self) -> String {
        let canonical = match self {
            RecordedBody::None => Vec::new(),
            RecordedBody::Json(v) => serde_json::to_vec(v).unwrap_or_default(),
            RecordedBody::RedactedBytes(n) => format!("redacted bytes: {n}").into_bytes(),
            RecordedBody::RedactedFile { len, signature } => format!("redacted file: {signature} {len}").into_bytes(),
            other => other.to_bytes().to_vec(),
        };
        if canonical.is_empty() {
            return "none".into();
        }
        hex::encode(&Sha256::digest(&canonical)[..8])
    }
}

impl RecordedRequest {
    /// Query pairs sorted, so order does not matter when matching.
    pub fn normalized_query(&self) -> Vec<(String, String)> {
        let mut q = self.query.clone();
        q.sort();
        q
    }
}

impl Cassette {
    pub fn to_pretty_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}
