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

/// Maps an error from reading a request body: the limit becomes 413, anything else a 400.
pub fn body_error(error: &(dyn std::error::Error + 'static)) -> GatewayError {
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
