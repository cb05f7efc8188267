//! The pure mapping engine: canonical request → upstream request plan, upstream response → FHIR.
//!
//! No I/O, no clocks, no globals. An interaction is a [`Run`]: ask it for the next upstream request, feed
//! it the response, repeat until it yields an [`Outcome`]. The upstream client does the I/O in between.

mod changes;
mod errors;
mod paging;
mod resource;
mod run;

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::Value;

use super::transform::TransformContext;
use super::{Category, Mapping};
use crate::error::GatewayError;
use crate::json::{Limits, OutgoingBody, Payloads};

pub use changes::{appended, changed_elements, changes, keep_current, unchanged};
pub use errors::{
    matching_rule, matching_rule_in, not_supported, translate_error, translate_error_in, unsupported_param,
};
pub use paging::{PageToken, decode_page_token, encode_page_token};
pub use resource::{normalize, run_checks};
pub use run::Run;

/// One request for the upstream client. Paths are relative to the connection's base URL.
/// `Debug` leaves out query values, headers and the body: they can carry patient data.
#[derive(Clone, PartialEq)]
pub struct UpstreamRequest {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Option<OutgoingBody>,
    pub content_type: Option<&'static str>,
    /// Sending it twice has the effect of sending it once (the mapping's step says so).
    pub idempotent: bool,
}

impl std::fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query_keys", &self.query.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("body_bytes", &self.body.as_ref().map(OutgoingBody::len))
            .finish_non_exhaustive()
    }
}

impl UpstreamRequest {
    /// Safe to send again: the EHR ends up in the same state however often it arrives.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the gateway needs to build client-facing values and upstream requests.
#[derive(Debug, Clone)]
pub struct Context {
    /// The organization's FHIR base as clients see it, e.g. `http://127.0.0.1:8080/organizations/demo-canvas/fhir/4`.
    pub fhir_base: String,
    /// The connection's `params` (the mapping's `connection_params`), e.g. athena's `practice`.
    pub params: BTreeMap<String, String>,
    /// The gateway request id, sent upstream when the mapping names a `request_id_header`.
    pub request_id: Option<String>,
    /// The media of the request (and, while a run reads them, of the EHR's answers) that its values
    /// stand for by marker.
    pub payloads: Payloads,
    /// How large an EHR's JSON answer may be.
    pub upstream_limits: Limits,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            fhir_base: String::new(),
            params: BTreeMap::new(),
            request_id: None,
            payloads: Payloads::default(),
            upstream_limits: Limits::UPSTREAM,
        }
    }
}

/// Where the next page of a search starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextPage {
    /// An upstream `next` link (relative to the base URL).
    Link(String),
    /// The `_offset` of the next page (gateway paging).
    Offset(u64),
}

impl std::fmt::Display for NextPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NextPage::Link(l) => f.write_str(l),
            NextPage::Offset(o) => write!(f, "_offset={o}"),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Resource(Value),
    /// A write succeeded upstream but a later step (the read-back) failed: the resource exists under
    /// `id`, and `problem` says what could not be done. The client must not resend the write.
    Written {
        id: String,
        problem: GatewayError,
    },
    Page {
        entries: Vec<Value>,
        total: Option<u64>,
        next: Option<NextPage>,
    },
    /// The content step succeeded; the caller streams its body.
    Bytes,
    /// A step with `result = "none"` succeeded (a delete).
    Done,
}

/// A condition value counts as true unless it is missing, `false`, `"false"`, empty text or an empty list.
pub fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !(s.is_empty() || s.eq_ignore_ascii_case("false")),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What transforms may use while mapping within `category` of `mapping`.
fn env<'a>(
    mapping: &'a Mapping,
    category: Option<&'a Category>,
    payloads: Option<&'a Payloads>,
) -> TransformContext<'a> {
    TransformContext { id_template: category.map(|c| &c.id), code_tables: Some(&mapping.code_tables), payloads }
}
