//! The one HTTP body type used inside the gateway, helpers to build it, and what a failed read means.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

use crate::error::{BoxError, GatewayError, IssueCode};

pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// How soon a client turned away by the memory budget may send again.
pub const BUDGET_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// A body read stopped because the gateway's memory budget for request bodies is used up.
#[derive(Debug)]
pub struct BudgetExhausted;

impl std::fmt::Display for BudgetExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the gateway's memory budget for request bodies is used up")
    }
}

impl std::error::Error for BudgetExhausted {}

/// Maps an error from reading a request body: the limit becomes 413, the memory budget 503, anything
/// else a 400.
pub fn body_error(error: &(dyn std::error::Error + 'static)) -> GatewayError {
    if error.is::<BudgetExhausted>() {
        return GatewayError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            IssueCode::Transient,
            crate::error::Side::Gateway,
            "the gateway is handling as many request bodies as its memory budget allows; send this again shortly",
        )
        .retryable(true)
        .with_retry_after(Some(BUDGET_RETRY_AFTER));
    }
    if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
        GatewayError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueCode::TooLong,
            "the request body is larger than the gateway's limit",
        )
    } else {
        GatewayError::invalid("the request body could not be read completely")
    }
}

/// An outgoing JSON body (payloads spliced in as chunks) as a gateway body, streamed when in chunks.
pub fn from_outgoing(body: crate::json::OutgoingBody) -> Body {
    match body.as_single() {
        Some(bytes) => full(bytes.clone()),
        None => {
            let frames = futures_util::StreamExt::map(body.stream(), |piece| piece.map(http_body::Frame::data));
            boxed(http_body_util::StreamBody::new(frames))
        }
    }
}
