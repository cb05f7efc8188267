//! Parsing a body into a `serde_json::Value` in one pass, under [`Limits`], with long base64 strings
//! taken out as payloads (zero-copy slices of the body when they hold no escapes).

use std::cell::{Cell, RefCell};
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::limits::{LimitKind, LimitViolation, Limits};
use super::payload::{PAYLOAD_MIN_BYTES, Payloads, contains_marker, is_valid_base64};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON: where and why.
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    Limit(LimitViolation),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Syntax { line, column, message } => write!(f, "{message} (line {line}, column {column})"),
            ParseError::Limit(v) => write!(f, "`{}` {v}", v.expression("$")),
        }
    }
}

/// Parses `body`; payloads go into `payloads`.
pub fn parse(body: &Bytes, limits: &Limits, payloads: &mut Payloads) -> Result<Value, ParseError> {
    parse_with(body, limits, Some(payloads))
}

/// Parses `body` keeping long base64 as text (bounded by `max_string_bytes`): for documents that are
/// only read for words, such as an EHR's error answer, whose values may end up in a message.
pub fn parse_text(body: &Bytes, limits: &Limits) -> Result<Value, ParseError> {
    parse_with(body, limits, None)
}

fn parse_with(body: &Bytes, limits: &Limits, payloads: Option<&mut Payloads>) -> Result<Value, ParseError> {
    let ctx = Ctx { limits, body, nodes: Cell::new(0), payloads: RefCell::new(payloads), broken: RefCell::new(None) };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    // serde_json's own nesting guard stays on beneath ours.
    let result = ValueSeed { ctx: &ctx, depth: 0 }.deserialize(&mut deserializer).and_then(|v| {
        deserializer.end()?;
        Ok(v)
    });
    match result {
        Ok(v) => Ok(v),
        Err(e) => match ctx.broken.into_inner() {
            Some(mut broken) => {
                broken.path.reverse();
                Err(ParseError::Limit(LimitViolation { kind: broken.kind, limit: broken.limit, path: broken.path() }))
            }
            None => Err(ParseError::Syntax {
                line: e.line(),
                column: e.column(),
                message: e.to_string().split(" at line").next().unwrap_or("not JSON").to_string(),
            }),
        },
    }
}

enum Segment {
    Key(String),
    Index(usize),
}

/// A broken limit on its way up: the path is collected in reverse as the error unwinds, so nothing is
/// spent on paths while parsing succeeds.
struct Broken {
    kind: LimitKind,
    limit: usize,
    path: Vec<Segment>,
}

impl Broken {
    fn path(&self) -> String {
        let mut out = String::new();
        for segment in &self.path {
            match segment {
                Segment::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.extend(k.chars().take(64));
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

struct Ctx<'c> {
    limits: &'c Limits,
    body: &'c Bytes,
    nodes: Cell<usize>,
    payloads: RefCell<Option<&'c mut Payloads>>,
    broken: RefCell<Option<Broken>>,
}

impl Ctx<'_> {
    fn fail<E: de::Error>(&self, kind: LimitKind, limit: usize) -> E {
        *self.broken.borrow_mut() = Some(Broken { kind, limit, path: Vec::new() });
        E::custom("limit")
    }

    /// Adds the segment a failure below happened under.
    fn under<E>(&self, segment: impl FnOnce() -> Segment, error: E) -> E {
        if let Some(broken) = self.broken.borrow_mut().as_mut() {
            broken.path.push(segment());
        }
        error
    }

    fn count<E: de::Error>(&self) -> Result<(), E> {
        let n = self.nodes.get() + 1;
        if n > self.limits.max_nodes {
            return Err(self.fail(LimitKind::Nodes, self.limits.max_nodes));
        }
        self.nodes.set(n);
        Ok(())
    }

    /// A string value: a payload marker when it is long base64, refused when it is long otherwise or
    /// when it holds what looks like a marker (no text from outside may pose as a payload).
    fn string<E: de::Error>(&self, text: &str, borrowed: bool) -> Result<Value, E> {
        self.count()?;
        if contains_marker(text) {
            return Err(self.fail(LimitKind::ReservedText, 0));
        }
        if text.len() >= PAYLOAD_MIN_BYTES
            && let Some(payloads) = self.payloads.borrow_mut().as_deref_mut()
            && is_valid_base64(text)
        {
            // Escaped base64 (`\/`) arrives unescaped in serde_json's scratch space and is copied once.
            let bytes = if borrowed { self.body.slice_ref(text.as_bytes()) } else { Bytes::from(text.to_owned()) };
            return Ok(Value::String(payloads.add(bytes)));
        }
        if text.len() > self.limits.max_string_bytes {
            return Err(self.fail(LimitKind::StringBytes, self.limits.max_string_bytes));
        }
        Ok(Value::String(text.to_owned()))
    }
}

struct ValueSeed<'a, 'c> {
    ctx: &'a Ctx<'c>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ValueSeed<'_, '_> {
    fn nested<E: de::Error>(&self) -> Result<(), E> {
        self.ctx.count()?;
        if self.depth >= self.ctx.limits.max_depth {
            return Err(self.ctx.fail(LimitKind::Depth, self.ctx.limits.max_depth));
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.ctx.count()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.ctx.count()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.ctx.count()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.ctx.count()?;
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Value, E> {
        self.ctx.string(v, true)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.ctx.string(v, false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.ctx.count()?;
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.nested()?;
        let mut items = Vec::new();
        loop {
            if items.len() == self.ctx.limits.max_array_items {
                // One more item would break the limit; an array that ends here is fine.
                let seed = ValueSeed { ctx: self.ctx, depth: self.depth + 1 };
                return match seq.next_element_seed(seed) {
                    Ok(None) => Ok(Value::Array(items)),
                    Ok(Some(_)) => Err(self.ctx.fail(LimitKind::ArrayItems, self.ctx.limits.max_array_items)),
                    Err(e) => Err(self.ctx.under(|| Segment::Index(items.len()), e)),
                };
            }
            let index = items.len();
            match seq.next_element_seed(ValueSeed { ctx: self.ctx, depth: self.depth + 1 }) {
                Ok(Some(v)) => items.push(v),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => return Err(self.ctx.under(|| Segment::Index(index), e)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.nested()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.len() > self.ctx.limits.max_string_bytes {
                return Err(self.ctx.fail(LimitKind::StringBytes, self.ctx.limits.max_string_bytes));
            }
            match map.next_value_seed(ValueSeed { ctx: self.ctx, depth: self.depth + 1 }) {
                Ok(v) => {
                    out.insert(key, v);
                }
                Err(e) => return Err(self.ctx.under(|| Segment::Key(key), e)),
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::json;

    use super::*;

    fn parse_with(text: &str, limits: Limits) -> (Result<Value, ParseError>, Payloads) {
        let mut payloads = Payloads::default();
        let body = Bytes::from(text.to_string());
        (parse(&body, &limits, &mut payloads), payloads)
    }

    const SMALL: Limits = Limits { max_depth: 4, max_array_items: 3, max_nodes: 50, max_string_bytes: 10 };

    #[test]
    fn parses_like_serde_json_within_the_limits() {
        let text = r#"{"a":[1,-2,3.5],"b":{"c":null,"d":true},"e":"x\"y"}"#;
        let (v, _) = parse_with(text, SMALL);
        assert_eq!(v.unwrap(), serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn each_limit_names_where_it_was_broken() {
        let cases = [
            (r#"{"note":[{"t":1},{"t":2},{"t":3},{"t":4}]}"#, LimitKind::ArrayItems, "note"),
            (r#"{"a":{"b":{"c":{"d":{"e":1}}}}}"#, LimitKind::Depth, "a.b.c.d"),
            (r#"{"x":[{"y":"0123456789A"}]}"#, LimitKind::StringBytes, "x[0].y"),
            (r#"[[1,2,3],[1,2,3],[1,2,3]]"#, LimitKind::Nodes, "[2][2]"),
        ];
        let tight = Limits { max_nodes: 12, ..SMALL };
        for (text, kind, path) in cases {
            let (result, _) = parse_with(text, tight);
            match result {
                Err(ParseError::Limit(v)) => {
                    assert_eq!((v.kind, v.path.as_str()), (kind, path), "{text}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // Exactly at the limits is fine.
        assert!(parse_with(r#"{"note":[1,2,3],"s":"0123456789"}"#, SMALL).0.is_ok());
    }

    #[test]
    fn syntax_errors_say_where() {
        let (result, _) = parse_with("{\n  \"a\": [1,\n}", SMALL);
        let Err(ParseError::Syntax { line, .. }) = result else { panic!("{result:?}") };
        assert_eq!(line, 3);
        assert!(matches!(parse_with("{} trailing", SMALL).0, Err(ParseError::Syntax { .. })));
    }

    #[test]
    fn long_base64_becomes_a_payload_sliced_from_the_body() {
        // 0xff bytes encode as `/`, which some encoders escape as `\/`.
        let data = base64::engine::general_purpose::STANDARD.encode(vec![0xffu8; 100_000]);
        assert!(data.contains('/'));
        let body = Bytes::from(json!({"content": {"data": data, "title": "x"}}).to_string());
        let mut payloads = Payloads::default();
        let v = parse(&body, &Limits::CLIENT, &mut payloads).unwrap();
        let marker = v["content"]["data"].as_str().unwrap();
        assert!(marker.len() < 64);
        let payload = payloads.get(marker).unwrap();
        assert_eq!(payload.text().as_ref(), data.as_bytes());
        assert_eq!(payload.decoded_len(), 100_000);
        // The same allocation as the body: a slice, not a copy.
        let start = body.as_ptr() as usize;
        let at = payload.text().as_ptr() as usize;
        assert!(at > start && at < start + body.len());
        // Escaped base64 (`\/`) is still a payload, unescaped.
        let escaped = Bytes::from(format!("{{\"d\":\"{}\"}}", data.replace('/', "\\/")));
        let v = parse(&escaped, &Limits::CLIENT, &mut payloads).unwrap();
        assert_eq!(payloads.get(v["d"].as_str().unwrap()).unwrap().text().as_ref(), data.as_bytes());
    }

    #[test]
    fn text_posing_as_a_marker_is_refused_and_text_mode_keeps_base64_as_text() {
        let mut payloads = Payloads::default();
        let marker = payloads.add(Bytes::from_static(b"aGk="));
        let body = Bytes::from(json!({"note": [{"text": format!("see {marker}")}]}).to_string());
        let Err(ParseError::Limit(v)) = parse(&body, &Limits::CLIENT, &mut payloads) else { panic!() };
        assert_eq!((v.kind, v.path.as_str()), (LimitKind::ReservedText, "note[0].text"));
        let data = base64::engine::general_purpose::STANDARD.encode(vec![1u8; 100_000]);
        let body = Bytes::from(json!({"image": data}).to_string());
        assert_eq!(parse_text(&body, &Limits::UPSTREAM).unwrap()["image"], data.as_str());
    }

    #[test]
    fn long_text_that_is_not_base64_is_refused() {
        let text = format!("{{\"note\":[{{\"text\":\"{}\"}}]}}", "a b ".repeat(300_000));
        let (result, payloads) = parse_with(&text, Limits::CLIENT);
        let Err(ParseError::Limit(v)) = result else { panic!() };
        assert_eq!((v.kind, v.expression("Media")), (LimitKind::StringBytes, "Media.note[0].text".to_string()));
        assert_eq!(payloads.held(), 0);
    }
}
