//! Writing a tree back into bytes with its payloads spliced in: an [`OutgoingBody`] is a list of chunks,
//! so a payload travels as a slice of the buffer it arrived in. JSON takes base64 as it is; a form body
//! percent-encodes it chunk by chunk while it is sent. Without payloads the bytes are exactly
//! `serde_json::to_vec` and `form_urlencoded`'s.

use std::convert::Infallible;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde_json::Value;

use super::payload::{Payload, Payloads, contains_marker, is_marker};

/// How much of a payload is percent-encoded at a time while sending a form.
const FORM_PIECE: usize = 64 * 1024;

#[derive(Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Bytes sent as they are.
    Raw(Bytes),
    /// Bytes sent `application/x-www-form-urlencoded`-encoded; `encoded_len` is their encoded size.
    FormEncoded { bytes: Bytes, encoded_len: usize },
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Raw(b) => b.len(),
            Chunk::FormEncoded { encoded_len, .. } => *encoded_len,
        }
    }
}

/// A request body for an upstream: chunks, a known length, cheap to clone for a retry.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OutgoingBody {
    chunks: Vec<Chunk>,
    len: usize,
}

impl std::fmt::Debug for OutgoingBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutgoingBody({} bytes in {} chunks)", self.len, self.chunks.len())
    }
}

impl From<Bytes> for OutgoingBody {
    fn from(bytes: Bytes) -> Self {
        let mut body = OutgoingBody::default();
        body.push(Chunk::Raw(bytes));
        body
    }
}

impl OutgoingBody {
    fn push(&mut self, chunk: Chunk) {
        if chunk.len() > 0 {
            self.len += chunk.len();
            self.chunks.push(chunk);
        }
    }

    /// The size in bytes as sent.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The body in one buffer: for small bodies, tests and recordings (it copies payloads).
    pub fn to_bytes(&self) -> Bytes {
        match self.chunks.as_slice() {
            [] => Bytes::new(),
            [Chunk::Raw(only)] => only.clone(),
            chunks => {
                let mut out = BytesMut::with_capacity(self.len);
                for chunk in chunks {
                    match chunk {
                        Chunk::Raw(b) => out.extend_from_slice(b),
                        Chunk::FormEncoded { bytes, .. } => {
                            out.extend(form_urlencoded::byte_serialize(bytes).flat_map(str::bytes))
                        }
                    }
                }
                out.freeze()
            }
        }
    }

    /// The body in one piece without copying, when it is one raw chunk.
    pub fn as_single(&self) -> Option<&Bytes> {
        match self.chunks.as_slice() {
            [Chunk::Raw(only)] => Some(only),
            [] => None,
            _ => None,
        }
    }

    /// The bytes as sent, in pieces; payloads are encoded piece by piece, never whole.
    pub fn stream(&self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        let pieces = self.chunks.clone().into_iter().flat_map(|chunk| -> Box<dyn Iterator<Item = Bytes> + Send> {
            match chunk {
                Chunk::Raw(b) => Box::new(std::iter::once(b)),
                Chunk::FormEncoded { bytes, .. } => Box::new((0..bytes.len()).step_by(FORM_PIECE).map(move |at| {
                    let piece = &bytes[at..(at + FORM_PIECE).min(bytes.len())];
                    let mut encoded = String::with_capacity(form_encoded_len(piece));
                    encoded.extend(form_urlencoded::byte_serialize(piece));
                    Bytes::from(encoded)
                })),
            }
        });
        futures_util::stream::iter(pieces.map(Ok))
    }
}

/// What went wrong splicing payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceError {
    /// A marker whose payload is no longer held (a gateway defect).
    Unknown,
    /// A marker inside a longer text, or changed by a transform: media can only be copied whole.
    Misplaced,
}

fn payload<'p>(payloads: &'p Payloads, text: &str) -> Result<Option<&'p Payload>, SpliceError> {
    if !is_marker(text) {
        return if contains_marker(text) { Err(SpliceError::Misplaced) } else { Ok(None) };
    }
    payloads.get(text).map(Some).ok_or(if payloads.owns(text) { SpliceError::Unknown } else { SpliceError::Misplaced })
}

struct Writer<'p> {
    payloads: &'p Payloads,
    body: OutgoingBody,
    buffer: Vec<u8>,
}

impl Writer<'_> {
    fn flush(&mut self) {
        if !self.buffer.is_empty() {
            let bytes = Bytes::from(std::mem::take(&mut self.buffer));
            self.body.push(Chunk::Raw(bytes));
        }
    }

    fn finish(mut self) -> OutgoingBody {
        self.flush();
        self.body
    }

    fn json(&mut self, value: &Value) -> Result<(), SpliceError> {
        match value {
            Value::String(s) => match payload(self.payloads, s)? {
                // Base64 needs no JSON escaping: the payload goes between the quotes as it is.
                Some(p) => {
                    self.buffer.push(b'"');
                    self.flush();
                    self.body.push(Chunk::Raw(p.text().clone()));
                    self.buffer.push(b'"');
                }
                None => self.scalar(value),
            },
            Value::Array(items) => {
                self.buffer.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.buffer.push(b',');
                    }
                    self.json(item)?;
                }
                self.buffer.push(b']');
            }
            Value::Object(map) => {
                self.buffer.push(b'{');
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        self.buffer.push(b',');
                    }
                    self.scalar(&Value::String(k.clone()));
                    self.buffer.push(b':');
                    self.json(v)?;
                }
                self.buffer.push(b'}');
            }
            scalar => self.scalar(scalar),
        }
        Ok(())
    }

    fn scalar(&mut self, value: &Value) {
        // serde_json formats and escapes scalars exactly as `to_vec` would.
        let _ = serde_json::to_writer(&mut self.buffer, value);
    }
}

/// `value` as a JSON body, payloads spliced in.
pub fn json_body(value: &Value, payloads: &Payloads) -> Result<OutgoingBody, SpliceError> {
    let mut writer = Writer { payloads, body: OutgoingBody::default(), buffer: Vec::new() };
    writer.json(value)?;
    Ok(writer.finish())
}

/// Fields as an `application/x-www-form-urlencoded` body, payloads spliced in (encoded while sent).
pub fn form_body(fields: &[(String, String)], payloads: &Payloads) -> Result<OutgoingBody, SpliceError> {
    let mut writer = Writer { payloads, body: OutgoingBody::default(), buffer: Vec::new() };
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            writer.buffer.push(b'&');
        }
        writer.buffer.extend(form_urlencoded::byte_serialize(name.as_bytes()).flat_map(str::bytes));
        writer.buffer.push(b'=');
        match payload(payloads, value)? {
            Some(p) => {
                writer.flush();
                let bytes = p.text().clone();
                let encoded_len = form_encoded_len(&bytes);
                writer.body.push(Chunk::FormEncoded { bytes, encoded_len });
            }
            None => writer.buffer.extend(form_urlencoded::byte_serialize(value.as_bytes()).flat_map(str::bytes)),
        }
    }
    Ok(writer.finish())
}

/// The size of bytes once form-encoded: unreserved bytes and the space stay one byte, the rest are `%XX`.
fn form_encoded_len(bytes: &[u8]) -> usize {
    bytes.iter().map(|b| if b.is_ascii_alphanumeric() || b"*-._ ".contains(b) { 1 } else { 3 }).sum()
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use futures_util::StreamExt;
    use serde_json::json;

    use super::*;

    fn payload_text(n: usize) -> String {
        base64::engine::general_purpose::STANDARD.encode((0..n).map(|i| (i * 7 % 256) as u8).collect::<Vec<_>>())
    }

    #[test]
    fn without_payloads_json_is_serde_jsons() {
        let v = json!({"b": [1, 2.5, null, true, "q\"\n\u{7f}é"], "a": {"x": -3}, "": ""});
        let body = json_body(&v, &Payloads::default()).unwrap();
        assert_eq!(body.to_bytes(), Bytes::from(serde_json::to_vec(&v).unwrap()));
        assert_eq!(body.len(), body.to_bytes().len());
    }

    #[test]
    fn payloads_are_spliced_as_slices_of_their_buffer() {
        let mut payloads = Payloads::default();
        let text = Bytes::from(payload_text(200_000));
        let marker = payloads.add(text.clone());
        let v = json!({"content": {"data": marker, "title": "t"}, "n": 1});
        let body = json_body(&v, &payloads).unwrap();
        let expected = json!({"content": {"data": std::str::from_utf8(&text).unwrap(), "title": "t"}, "n": 1});
        assert_eq!(body.to_bytes(), Bytes::from(serde_json::to_vec(&expected).unwrap()));
        assert!(body.chunks.iter().any(|c| matches!(c, Chunk::Raw(b) if b.as_ptr() == text.as_ptr())));
    }

    #[tokio::test]
    async fn forms_encode_payloads_piece_by_piece_with_the_right_length() {
        let mut payloads = Payloads::default();
        let text = payload_text(300_000);
        let marker = payloads.add(Bytes::from(text.clone()));
        let fields = vec![
            ("departmentid".to_string(), "1".to_string()),
            ("image".to_string(), marker),
            ("n".into(), "a b".into()),
        ];
        let body = form_body(&fields, &payloads).unwrap();
        let expected = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([("departmentid", "1"), ("image", text.as_str()), ("n", "a b")])
            .finish();
        assert_eq!(body.to_bytes(), Bytes::from(expected.clone()));
        assert_eq!(body.len(), expected.len());
        let streamed: Vec<u8> = body.stream().map(|p| p.unwrap().to_vec()).concat().await;
        assert_eq!(streamed, expected.into_bytes());
    }

    #[test]
    fn a_marker_whose_payload_is_gone_is_an_error() {
        let mut other = Payloads::default();
        let marker = other.add(Bytes::from_static(b"aGk="));
        assert_eq!(json_body(&json!({"d": marker}), &Payloads::default()), Err(SpliceError::Misplaced));
        let mut mine = Payloads::default();
        let marker = mine.add(Bytes::from_static(b"aGk="));
        mine.release_unreferenced_since(0, []);
        assert_eq!(json_body(&json!({"d": &marker}), &mine), Err(SpliceError::Unknown));
        let mut held = Payloads::default();
        let marker = held.add(Bytes::from_static(b"aGk="));
        let inside = format!("x{marker}");
        assert_eq!(json_body(&json!({"d": &inside}), &held), Err(SpliceError::Misplaced));
        assert_eq!(form_body(&[("d".into(), inside)], &held), Err(SpliceError::Misplaced));
    }
}
