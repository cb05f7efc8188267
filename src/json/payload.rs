//! Payloads: long base64 strings kept out of a JSON tree. The tree holds a short marker string in their
//! place; the bytes stay in the buffer they arrived in (a reference-counted slice, not a copy) until a
//! writer splices them into an outgoing body.
//!
//! A marker carries a random number drawn per table, so text a client or an EHR sends can never name a
//! payload, and a marker from one request means nothing in another.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;

/// Base64 strings at least this long become payloads.
pub const PAYLOAD_MIN_BYTES: usize = 64 * 1024;

const MARKER_PREFIX: &str = "\u{0}\u{1}payload:";

/// True when `text` is a payload marker (of any table).
pub fn is_marker(text: &str) -> bool {
    text.starts_with(MARKER_PREFIX)
}

/// True when `text` has a payload marker in it (rendered into a longer text).
pub fn contains_marker(text: &str) -> bool {
    text.contains(MARKER_PREFIX)
}

/// True if `s` is a FHIR `base64Binary` as accepted here: non-empty, standard
/// alphabet (`A-Z a-z 0-9 + /`), length a multiple of 4, `=` padding only at
/// the end (at most two), no whitespace, and canonical (unused trailing bits
/// zero) so that strict decoders accept it.
pub fn is_valid_base64(s: &str) -> bool {
    let bytes = s.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return false;
    }
    let padding = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    if padding > 2 {
        return false;
    }
    let Some(body) = bytes.get(..bytes.len() - padding) else {
        return false;
    };
    let mut last_sextet = 0u8;
    for &b in body {
        match base64_sextet(b) {
            Some(v) => last_sextet = v,
            None => return false,
        }
    }
    // With padding, the last data character carries bits that must be zero.
    match padding {
        1 => last_sextet & 0b11 == 0,
        2 => last_sextet & 0b1111 == 0,
        _ => true,
    }
}

fn base64_sextet(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// A base64 string held outside the tree.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    text: Bytes,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Media bytes never reach a log.
        write!(f, "Payload({} base64 bytes)", self.text.len())
    }
}

impl Payload {
    /// The base64 text, as received (standard alphabet, padded, no whitespace).
    pub fn text(&self) -> &Bytes {
        &self.text
    }

    /// The size of the decoded bytes.
    pub fn decoded_len(&self) -> usize {
        let padding = self.text.iter().rev().take_while(|&&b| b == b'=').count();
        (self.text.len() / 4 * 3).saturating_sub(padding)
    }

    /// The first decoded bytes (enough to recognize a file type), without decoding the rest.
    pub fn head(&self, bytes: usize) -> Vec<u8> {
        let take = (bytes.div_ceil(3) * 4).min(self.text.len());
        let mut head = base64::engine::general_purpose::STANDARD.decode(&self.text[..take]).unwrap_or_default();
        head.truncate(bytes);
        head
    }
}

/// The payloads of one request (its body and the EHR's answers), by marker. Cloning shares the bytes.
#[derive(Debug, Clone)]
pub struct Payloads {
    nonce: u64,
    items: Vec<Option<Payload>>,
}

impl Default for Payloads {
    fn default() -> Self {
        Payloads { nonce: rand::random(), items: Vec::new() }
    }
}

impl Payloads {
    /// Keeps `text` (valid base64) and returns the marker that stands for it.
    pub fn add(&mut self, text: Bytes) -> String {
        self.items.push(Some(Payload { text }));
        format!("{MARKER_PREFIX}{:016x}:{}", self.nonce, self.items.len() - 1)
    }

    fn index(&self, marker: &str) -> Option<usize> {
        let rest = marker.strip_prefix(MARKER_PREFIX)?;
        let (nonce, index) = rest.split_once(':')?;
        (u64::from_str_radix(nonce, 16).ok()? == self.nonce).then(|| index.parse().ok())?
    }

    /// True when `marker` is one of this table's (held or released).
    pub fn owns(&self, marker: &str) -> bool {
        self.index(marker).is_some_and(|i| i < self.items.len())
    }

    /// The payload a marker of this table stands for, if it is still held.
    pub fn get(&self, marker: &str) -> Option<&Payload> {
        self.items.get(self.index(marker)?)?.as_ref()
    }

    /// The payload a string value stands for, if it is a marker of this table.
    pub fn of(&self, value: &Value) -> Option<&Payload> {
        value.as_str().filter(|s| is_marker(s)).and_then(|s| self.get(s))
    }

    /// How many payloads are held.
    pub fn held(&self) -> usize {
        self.items.iter().flatten().count()
    }

    /// Releases payloads added since `mark` that none of `keep` refers to: an answer's media, once the
    /// values taken from that answer no longer point at them.
    pub fn release_unreferenced_since<'v>(&mut self, mark: usize, keep: impl IntoIterator<Item = &'v Value>) {
        self.release_unreferenced_in(mark..self.items.len(), keep);
    }

    /// Releases the payloads with markers numbered in `range` that none of `keep` refers to.
    pub fn release_unreferenced_in<'v>(
        &mut self,
        range: std::ops::Range<usize>,
        keep: impl IntoIterator<Item = &'v Value>,
    ) {
        if range.is_empty() {
            return;
        }
        let mut referenced = vec![false; self.items.len()];
        let mut stack: Vec<&Value> = keep.into_iter().collect();
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) if is_marker(s) => {
                    if let Some(i) = self.index(s) {
                        referenced[i] = true;
                    }
                }
                Value::Array(items) => stack.extend(items),
                Value::Object(map) => stack.extend(map.values()),
                _ => {}
            }
        }
        for (i, item) in self.items.iter_mut().enumerate().skip(range.start).take(range.len()) {
            if !referenced[i] {
                *item = None;
            }
        }
    }

    /// The number of markers handed out so far (a mark for [`Payloads::release_unreferenced_since`]).
    pub fn mark(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn markers_name_payloads_of_their_own_table_only() {
        let mut a = Payloads::default();
        let mut b = Payloads::default();
        let ma = a.add(Bytes::from_static(b"aGVsbG8="));
        let mb = b.add(Bytes::from_static(b"d29ybGQ="));
        assert!(is_marker(&ma));
        assert_eq!(a.get(&ma).unwrap().text(), &Bytes::from_static(b"aGVsbG8="));
        assert!(a.get(&mb).is_none(), "another request's marker");
        let forged = format!("{MARKER_PREFIX}{:016x}:0", a.nonce ^ 1);
        assert!(a.get(&forged).is_none(), "a guessed marker");
        assert!(a.get("plain text").is_none());
    }

    #[test]
    fn sizes_and_heads_come_without_decoding_everything() {
        let mut p = Payloads::default();
        let marker = p.add(Bytes::from(base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.4 and more")));
        let payload = p.get(&marker).unwrap();
        assert_eq!(payload.decoded_len(), 17);
        assert_eq!(payload.head(5), b"%PDF-");
        let padded = p.add(Bytes::from_static(b"aGk="));
        assert_eq!(p.get(&padded).unwrap().decoded_len(), 2);
    }

    #[test]
    fn unreferenced_payloads_of_an_answer_are_released() {
        let mut p = Payloads::default();
        let input = p.add(Bytes::from_static(b"aW5wdXQ="));
        let mark = p.mark();
        let kept = p.add(Bytes::from_static(b"a2VwdA=="));
        let dropped = p.add(Bytes::from_static(b"ZHJvcA=="));
        p.release_unreferenced_since(mark, [&json!({"a": [kept.clone()]})]);
        assert!(p.get(&input).is_some(), "added before the mark");
        assert!(p.get(&kept).is_some());
        assert!(p.get(&dropped).is_none());
        assert_eq!(p.held(), 2);
    }
}
