//! JSON as the gateway reads and writes it. Bodies are parsed under structural limits (depth, array
//! length, element count, string size), so a small body cannot become a huge tree; large base64 strings
//! (media) stay out of the tree as reference-counted [`Payload`]s behind marker strings, so the mapping
//! engine and its templates never hold megabytes; writing a tree back splices the payloads in as chunks
//! of the original buffer, in the encoding the receiver needs.

mod limits;
mod parse;
mod payload;
mod write;

pub use limits::{LimitKind, LimitViolation, Limits};
pub use parse::{ParseError, parse, parse_text};
pub use payload::{PAYLOAD_MIN_BYTES, Payload, Payloads, contains_marker, is_marker, is_valid_base64};
pub use write::{Chunk, OutgoingBody, SpliceError, form_body, json_body};
