//! Redaction applied to a cassette before anything reaches disk: secrets removed, identifiers of
//! patients and records replaced by stable pseudonyms (same id → same pseudonym under one key), and
//! names, free text, dates and media replaced by placeholders of the same shape.
//!
//! Sensitive values are found by *where* they appear — the gateway's defaults (`[record.redact]`) plus
//! what the organization's mapping declares about its EHR (`[redact]`: which parts of its gateway ids
//! and which fields hold identifiers, text, dates and media) — and then replaced *everywhere* they occur
//! in the cassette: gateway ids, paths, queries, JSON (numbers as well as strings) and form bodies,
//! messages and the gateway's paging tokens. So the redacted front-door request still produces exactly
//! the redacted upstream requests when replayed.

mod placeholder;

use std::collections::{BTreeSet, HashMap};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use regex::Regex;
use serde_json::{Number, Value};
use sha2::Sha256;

use super::{Cassette, RecordedBody, RecordedRequest, RecordedResponse};
use crate::config::{CompiledRedaction, RedactionPolicy};
use crate::mapping::Mapping;
use crate::mapping::ids::IdTemplate;
pub use placeholder::{placeholder_base64, placeholder_date, signature};

/// What a mapping says about where its EHR's exchanges hold sensitive values.
#[derive(Default)]
pub struct MappingFields {
    /// Each category's id template with the variables of it that identify someone or something.
    id_templates: Vec<(IdTemplate, Vec<String>)>,
    identifier_fields: Vec<String>,
    text_fields: Vec<String>,
    text_extensions: Vec<String>,
    date_fields: Vec<String>,
    media_fields: Vec<String>,
}

impl MappingFields {
    pub fn of(mapping: &Mapping) -> Self {
        let r = &mapping.redact;
        let id_templates = mapping
            .categories
            .values()
            .map(|c| {
                let parts = c.id.variables().filter(|v| r.id_parts.iter().any(|p| p == v)).map(String::from);
                (c.id.clone(), parts.collect::<Vec<_>>())
            })
            .filter(|(_, parts)| !parts.is_empty())
            .collect();
        MappingFields {
            id_templates,
            identifier_fields: r.identifier_fields.clone(),
            text_fields: r.text_fields.clone(),
            text_extensions: r.text_extensions.clone(),
            date_fields: r.date_fields.clone(),
            media_fields: r.media_fields.clone(),
        }
    }
}

/// Applies a compiled redaction policy to cassettes.
pub struct Redactor {
    compiled: CompiledRedaction,
}

/// The policy's lists and the mapping's, side by side: a key is sensitive if either names it.
struct Keys<'a> {
    policy: &'a RedactionPolicy,
    fields: &'a MappingFields,
}

/// Media elements that are CodeableConcepts: their `text` is the concept's label.
const CODED_ELEMENTS: &[&str] = &["type", "modality", "view", "reasonCode", "bodySite"];

fn key_in(list: &[String], key: Option<&str>) -> bool {
    key.is_some_and(|k| list.iter().any(|l| l.eq_ignore_ascii_case(k)))
}

impl Keys<'_> {
    fn is_id(&self, key: Option<&str>) -> bool {
        key_in(&self.policy.patient_id_keys, key) || key_in(&self.fields.identifier_fields, key)
    }
    /// `value` inside an `identifier` or `telecom` entry, and the value of a text extension, are as
    /// sensitive as free text.
    fn is_text(&self, at: &At) -> bool {
        // A code's label (`coding.display`) and a coded concept's text (`modality.text`) name a code,
        // not a person: they stay, so a request that carries them back is still the one recorded.
        let code_label = (at.key == Some("display") && at.parent == Some("coding"))
            || (at.key == Some("text") && CODED_ELEMENTS.iter().any(|c| Some(*c) == at.parent));
        at.text_extension
            || (!code_label && (key_in(&self.policy.text_keys, at.key) || key_in(&self.fields.text_fields, at.key)))
            || (at.key == Some("value") && key_in(&self.policy.value_container_keys, at.parent))
    }
    fn is_date(&self, key: Option<&str>) -> bool {
        key_in(&self.policy.date_keys, key) || key_in(&self.fields.date_fields, key)
    }
    fn is_media(&self, key: Option<&str>) -> bool {
        key_in(&self.policy.data_keys, key) || key_in(&self.fields.media_fields, key)
    }
}

impl Redactor {
    /// See [`RedactionPolicy::compile`]: the configured lists widen the defaults.
    pub fn new(configured: RedactionPolicy) -> Result<Self, String> {
        Ok(Redactor { compiled: configured.compile()? })
    }

    /// A stable pseudonym of the same shape: hex stays hex, digits stay digits (a leading non-zero digit
    /// stays non-zero, so a numeric id can still be a JSON number), letters stay letters.
    pub fn pseudonym(&self, id: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.compiled.key).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        let digest = mac.finalize().into_bytes();
        let all_hex =
            id.bytes().any(|b| matches!(b, b'a'..=b'f')) && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        id.bytes()
            .enumerate()
            .map(|(i, b)| {
                let r = digest[i % digest.len()].wrapping_add((i / digest.len()) as u8);
                match b {
                    b'1'..=b'9' if i == 0 && !all_hex => char::from(b'1' + r % 9),
                    b'0'..=b'9' if !all_hex => char::from(b'0' + r % 10),
                    b if all_hex && b.is_ascii_hexdigit() => char::from(b"0123456789abcdef"[(r % 16) as usize]),
                    b'a'..=b'z' => char::from(b'a' + r % 26),
                    b'A'..=b'Z' => char::from(b'A' + r % 26),
                    other => char::from(other),
                }
            })
            .collect()
    }

    /// Redacts a cassette in place. On error nothing may be written: the cassette is left half done.
    pub fn redact(&self, cassette: &mut Cassette, fields: &MappingFields) -> Result<(), String> {
        let keys = Keys { policy: &self.compiled.policy, fields };
        let mut found = Found::default();
        visit_cassette(cassette, fields, &mut |slot: Slot<'_>, at: At<'_>| self.collect(slot, at, &keys, &mut found));
        let plan = self.plan(&found, true)?;
        walk_cassette(cassette, fields, &mut |slot: SlotMut<'_>, at: At<'_>| self.rewrite(slot, at, &keys, &plan));
        Ok(())
    }

    /// Replaces texts, dates, media and secrets in a response the way recording does, but leaves ids
    /// alone: a replay's answer already carries pseudonyms, and comparing it with the recorded one needs
    /// the placeholders the mapping's own constants and derived values got when they were recorded.
    pub fn placeholders(&self, response: &mut RecordedResponse, fields: &MappingFields) -> Result<(), String> {
        let keys = Keys { policy: &self.compiled.policy, fields };
        let mut found = Found::default();
        visit_response(response, fields, &mut |slot: Slot<'_>, at: At<'_>| self.collect(slot, at, &keys, &mut found));
        found.ids.clear();
        let plan = self.plan(&found, false)?;
        walk_response(response, fields, &mut |slot: SlotMut<'_>, at: At<'_>| self.rewrite(slot, at, &keys, &plan));
        Ok(())
    }

    /// The same, for an upstream request the gateway sends during a replay.
    pub fn placeholders_in_request(&self, request: &mut RecordedRequest, fields: &MappingFields) -> Result<(), String> {
        let keys = Keys { policy: &self.compiled.policy, fields };
        let mut found = Found::default();
        visit_request(request, fields, &mut |slot: Slot<'_>, at: At<'_>| self.collect(slot, at, &keys, &mut found));
        found.ids.clear();
        let plan = self.plan(&found, false)?;
        walk_request(request, fields, &mut |slot: SlotMut<'_>, at: At<'_>| self.rewrite(slot, at, &keys, &plan));
        Ok(())
    }

    fn collect(&self, slot: Slot<'_>, at: At<'_>, keys: &Keys<'_>, found: &mut Found) {
        let s = match slot {
            Slot::Number(n) => {
                if keys.is_id(at.key) {
                    found.ids.insert(n.to_string());
                }
                return;
            }
            Slot::Text(s) => s,
        };
        for p in &self.compiled.patient_id_patterns {
            for c in p.captures_iter(s) {
                if let Some(m) = c.get(1) {
                    found.ids.insert(m.as_str().to_string());
                }
            }
        }
        // Gateway ids carry the EHR's ids (`ic.195900.1234.5678`): the mapping says which parts matter.
        for token in s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')) {
            for (template, parts) in &keys.fields.id_templates {
                if let Some(vars) = template.parse(token) {
                    found.ids.extend(parts.iter().filter_map(|p| vars.get(p).cloned()));
                }
            }
        }
        for token in page_tokens(s).into_iter().chain((at.key == Some("_page")).then(|| s.to_string())) {
            if let Some(decoded) = decode_page_token(&token) {
                self.collect(Slot::Text(&decoded), At::default(), keys, found);
            }
        }
        if s.is_empty() {
            return;
        }
        if keys.is_id(at.key) {
            let bare = s.rsplit('/').next().unwrap_or(s);
            if !bare.is_empty() {
                found.ids.insert(bare.to_string());
            }
        }
        if keys.is_text(&at) {
            found.texts.insert(s.to_string());
        }
        if keys.is_date(at.key) {
            found.dates.insert(s.to_string());
        }
        if keys.is_media(at.key) {
            found.data.insert(s.to_string());
        }
    }

    fn plan(&self, found: &Found, ids: bool) -> Result<Plan, String> {
        let mut plan = Plan::default();
        // Whole values are looked up, not matched: media can be megabytes.
        for d in &found.data {
            plan.whole.insert(d.clone(), placeholder_base64(d));
        }
        for d in &found.dates {
            plan.whole.insert(d.clone(), placeholder_date(d));
        }
        let mut inside: Vec<(String, String)> = Vec::new();
        if ids {
            for id in &found.ids {
                let pseudonym = self.pseudonym(id);
                if let (Ok(n), Ok(p)) = (id.parse::<u64>(), pseudonym.parse::<u64>())
                    && n.to_string() == *id
                {
                    plan.numbers.insert(n, p);
                }
                // A UUID also appears without its dashes (in storage keys): that form goes too.
                if id.len() == 36 && id.matches('-').count() == 4 {
                    inside.push((id.replace('-', ""), pseudonym.replace('-', "")));
                }
                inside.push((id.clone(), pseudonym));
            }
        }
        for t in &found.texts {
            // Where a text sits under a text key it is replaced there, whatever it says. Elsewhere only
            // free text (words with spaces) is looked for, inside messages and the like: a one-word
            // text such as a document class name may also be a code the request needs as it is.
            if t.chars().count() >= 8 && t.trim().contains(char::is_whitespace) {
                inside.push((t.clone(), text_placeholder(t)));
            }
        }
        // Longest first, so a value containing another is replaced whole.
        inside.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        for (original, replacement) in inside {
            // A value stands alone when not inside a longer word; `%2F` (an encoded `/`) counts as a separator.
            let pattern = format!(r"(^|[^A-Za-z0-9]|%[0-9A-Fa-f]{{2}}){}($|[^A-Za-z0-9])", regex::escape(&original));
            // The error's text would quote the pattern, which holds the value itself: it must not reach a log.
            let re = Regex::new(&pattern)
                .map_err(|_| format!("cannot redact a value of {} characters: no pattern fits it", original.len()))?;
            plan.inside.push((re, replacement));
        }
        Ok(plan)
    }

    fn rewrite(&self, slot: SlotMut<'_>, at: At<'_>, keys: &Keys<'_>, plan: &Plan) {
        let s = match slot {
            SlotMut::Number(v) => {
                if let Some(p) = v.as_u64().and_then(|n| plan.numbers.get(&n)) {
                    *v = Value::Number(Number::from(*p));
                }
                return;
            }
            SlotMut::Text(s) => s,
        };
        if key_in(&self.compiled.policy.secret_keys, at.key) {
            *s = "[redacted]".into();
            return;
        }
        if keys.is_text(&at) && !s.is_empty() {
            *s = text_placeholder(s);
            return;
        }
        if at.key == Some("_page")
            && let Some(decoded) = decode_page_token(s)
        {
            *s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(plan.apply(&decoded));
            return;
        }
        *s = plan.apply(s);
        if let Some(signing) = &self.compiled.signing
            && signing.is_match(s)
        {
            *s = signing.replace_all(s, "${1}redacted").into_owned();
            // A presigned URL also names the storage host and bucket: neither belongs in a cassette.
            if let Some(rest) = s.find("://").and_then(|i| s[i + 3..].find('/').map(|j| i + 3 + j)) {
                *s = format!("https://storage.redacted{}", &s[rest..]);
            }
        }
        // Paging tokens inside links are base64 JSON: redact inside them too.
        for token in page_tokens(s) {
            if let Some(decoded) = decode_page_token(&token) {
                let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(plan.apply(&decoded));
                *s = s.replace(&token, &encoded);
            }
        }
    }
}

/// `x` for every character but white space.
fn text_placeholder(text: &str) -> String {
    text.chars().map(|c| if c.is_whitespace() { c } else { 'x' }).collect()
}

/// What to replace: whole values by lookup, values inside longer strings by pattern, numeric ids by value.
#[derive(Default)]
struct Plan {
    whole: HashMap<String, String>,
    inside: Vec<(Regex, String)>,
    numbers: HashMap<u64, u64>,
}

impl Plan {
    fn apply(&self, s: &str) -> String {
        if let Some(r) = self.whole.get(s) {
            return r.clone();
        }
        let mut out = s.to_string();
        for (re, replacement) in &self.inside {
            if re.is_match(&out) {
                // Keep the boundary characters captured around the value.
                out =
                    re.replace_all(&out, |c: &regex::Captures| format!("{}{replacement}{}", &c[1], &c[2])).into_owned();
            }
        }
        out
    }
}

/// Where a value sits: the key it is under, that key's parent, and whether it is the value of an
/// extension whose URL the mapping names as text.
#[derive(Clone, Copy, Default)]
struct At<'k> {
    key: Option<&'k str>,
    parent: Option<&'k str>,
    text_extension: bool,
}

enum Slot<'v> {
    Text(&'v str),
    Number(&'v Number),
}

enum SlotMut<'v> {
    Text(&'v mut String),
    Number(&'v mut Value),
}

/// Called with every value of a cassette that can carry data.
trait Visitor {
    fn visit(&mut self, slot: SlotMut<'_>, at: At<'_>);
}

impl<F: FnMut(SlotMut<'_>, At<'_>)> Visitor for F {
    fn visit(&mut self, slot: SlotMut<'_>, at: At<'_>) {
        self(slot, at)
    }
}

/// Adapts a read-only visitor (collecting) to the walk, which always hands out mutable slots.
fn reading<'f>(f: &'f mut dyn FnMut(Slot<'_>, At<'_>)) -> impl FnMut(SlotMut<'_>, At<'_>) + 'f {
    move |slot, at| match slot {
        SlotMut::Text(s) => f(Slot::Text(s), at),
        SlotMut::Number(Value::Number(n)) => f(Slot::Number(n), at),
        SlotMut::Number(_) => {}
    }
}

fn visit_cassette(c: &mut Cassette, fields: &MappingFields, f: &mut dyn FnMut(Slot<'_>, At<'_>)) {
    let mut v = reading(f);
    walk_cassette(c, fields, &mut v)
}

fn visit_response(r: &mut RecordedResponse, fields: &MappingFields, f: &mut dyn FnMut(Slot<'_>, At<'_>)) {
    let mut v = reading(f);
    walk_response(r, fields, &mut v)
}

fn visit_request(r: &mut RecordedRequest, fields: &MappingFields, f: &mut dyn FnMut(Slot<'_>, At<'_>)) {
    let mut v = reading(f);
    walk_request(r, fields, &mut v)
}

// The rewrite passes go through the same walks with mutable slots.
fn walk_cassette(c: &mut Cassette, fields: &MappingFields, v: &mut dyn Visitor) {
    walk_request(&mut c.request, fields, v);
    walk_response(&mut c.response, fields, v);
    for e in c.upstream.iter_mut() {
        walk_request(&mut e.request, fields, v);
        walk_response(&mut e.response, fields, v);
    }
}

fn walk_request(r: &mut RecordedRequest, fields: &MappingFields, v: &mut dyn Visitor) {
    v.visit(SlotMut::Text(&mut r.path), At::default());
    for (name, value) in r.query.iter_mut() {
        v.visit(SlotMut::Text(value), At { key: Some(name.as_str()), ..At::default() });
    }
    for (name, value) in r.headers.iter_mut() {
        v.visit(SlotMut::Text(value), At { key: Some(name.as_str()), ..At::default() });
    }
    walk_body(&mut r.body, fields, v);
}

fn walk_response(r: &mut RecordedResponse, fields: &MappingFields, v: &mut dyn Visitor) {
    for (name, value) in r.headers.iter_mut() {
        v.visit(SlotMut::Text(value), At { key: Some(name.as_str()), ..At::default() });
    }
    walk_body(&mut r.body, fields, v);
}

fn walk_body(b: &mut RecordedBody, fields: &MappingFields, v: &mut dyn Visitor) {
    match b {
        RecordedBody::Json(value) => walk_json(value, At::default(), fields, v),
        RecordedBody::Form(pairs) => {
            for (name, value) in pairs.iter_mut() {
                v.visit(SlotMut::Text(value), At { key: Some(name.as_str()), ..At::default() });
            }
        }
        // A text body is free text as a whole.
        RecordedBody::Text(t) => v.visit(SlotMut::Text(t), At { key: Some("text"), ..At::default() }),
        RecordedBody::None | RecordedBody::RedactedBytes(_) | RecordedBody::RedactedFile { .. } => {}
    }
}

fn walk_json(value: &mut Value, at: At<'_>, fields: &MappingFields, v: &mut dyn Visitor) {
    match value {
        Value::String(s) => v.visit(SlotMut::Text(s), at),
        number @ Value::Number(_) => v.visit(SlotMut::Number(number), at),
        // Array items sit under the array's key.
        Value::Array(items) => items.iter_mut().for_each(|i| walk_json(i, at, fields, v)),
        Value::Object(map) => {
            let text_extension = map
                .get("url")
                .and_then(Value::as_str)
                .is_some_and(|url| fields.text_extensions.iter().any(|t| t == url));
            for (k, child) in map.iter_mut() {
                let is_value = text_extension && k.starts_with("value");
                walk_json(child, At { key: Some(k.as_str()), parent: at.key, text_extension: is_value }, fields, v);
            }
        }
        _ => {}
    }
}

#[derive(Default)]
struct Found {
    ids: BTreeSet<String>,
    texts: BTreeSet<String>,
    dates: BTreeSet<String>,
    data: BTreeSet<String>,
}

fn page_tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("_page=") {
        let token: String =
            rest[i + 6..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
        if !token.is_empty() {
            out.push(token.clone());
        }
        rest = &rest[i + 6 + token.len()..];
    }
    out
}

fn decode_page_token(token: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests;
