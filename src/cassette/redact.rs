//! Redaction applied to a cassette before anything reaches disk: secrets removed, patient identifiers
//! replaced by stable pseudonyms (same id → same pseudonym under one key), and names, birth dates,
//! free text and media bytes replaced by placeholders of the same type and length.
//!
//! Sensitive values are found by *where* they appear (keys, parameters, reference patterns) and then
//! replaced *everywhere* they occur in the cassette — paths, queries, bodies, messages and the gateway's
//! paging tokens — so the redacted front-door request still produces the redacted upstream requests.

use std::collections::BTreeSet;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use regex::Regex;
use serde_json::Value;
use sha2::Sha256;

use super::{Cassette, RecordedBody, RecordedRequest, RecordedResponse};
use crate::config::CompiledRedaction;
use crate::config::RedactionPolicy;

/// Applies a compiled redaction policy to cassettes.
pub struct Redactor {
    compiled: CompiledRedaction,
}

impl Redactor {
    /// See [`RedactionPolicy::compile`]: the configured lists widen the defaults.
    pub fn new(configured: RedactionPolicy) -> Result<Self, String> {
        Ok(Redactor { compiled: configured.compile()? })
    }

    /// A stable pseudonym of the same shape: hex stays hex, digits stay digits, letters stay letters.
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
    pub fn redact(&self, cassette: &mut Cassette) -> Result<(), String> {
        let mut found = Found::default();
        visit(cassette, &mut |s, key, parent| self.collect(s, key, parent, &mut found));
        let plan = self.plan(&found)?;
        visit(cassette, &mut |s, key, parent| self.rewrite(s, key, parent, &plan));
        Ok(())
    }

    fn key_in(list: &[String], key: Option<&str>) -> bool {
        key.is_some_and(|k| list.iter().any(|l| l.eq_ignore_ascii_case(k)))
    }

    /// `value` inside an `identifier` or `telecom` entry is as sensitive as free text.
    fn is_text(&self, key: Option<&str>, parent: Option<&str>) -> bool {
        Self::key_in(&self.compiled.policy.text_keys, key)
            || (key == Some("value") && Self::key_in(&self.compiled.policy.value_container_keys, parent))
    }

    fn collect(&self, s: &str, key: Option<&str>, parent: Option<&str>, found: &mut Found) {
        for p in &self.compiled.patient_id_patterns {
            for c in p.captures_iter(s) {
                if let Some(m) = c.get(1) {
                    found.ids.insert(m.as_str().to_string());
                }
            }
        }
        for token in page_tokens(s).into_iter().chain((key == Some("_page")).then(|| s.to_string())) {
            if let Some(decoded) = decode_page_token(&token) {
                self.collect(&decoded, None, None, found);
            }
        }
        if s.is_empty() {
            return;
        }
        if Self::key_in(&self.compiled.policy.patient_id_keys, key) {
            let bare = s.rsplit('/').next().unwrap_or(s);
            if !bare.is_empty() {
                found.ids.insert(bare.to_string());
            }
        }
        if self.is_text(key, parent) {
            found.texts.insert(s.to_string());
        }
        if Self::key_in(&self.compiled.policy.date_keys, key) {
            found.dates.insert(s.to_string());
        }
        if Self::key_in(&self.compiled.policy.data_keys, key) {
            found.data.insert(s.to_string());
        }
    }

    fn plan(&self, found: &Found) -> Result<Plan, String> {
        let mut plan = Plan::default();
        // Whole values are looked up, not matched: media can be megabytes.
        for d in &found.data {
            plan.whole.insert(d.clone(), placeholder_base64(d));
        }
        for d in &found.dates {
            plan.whole.insert(d.clone(), placeholder_date(d));
        }
        let mut inside: Vec<(&String, String)> = found.ids.iter().map(|id| (id, self.pseudonym(id))).collect();
        for t in &found.texts {
            let placeholder: String = t.chars().map(|c| if c.is_whitespace() { c } else { 'x' }).collect();
            if t.chars().count() < 6 {
                // Short texts ("Doe", "left") would match inside unrelated words: whole values only.
                plan.whole.insert(t.clone(), placeholder);
            } else {
                inside.push((t, placeholder));
            }
        }
        // Longest first, so a value containing another is replaced whole.
        inside.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
        for (original, replacement) in inside {
            // A value stands alone when not inside a longer word; `%2F` (an encoded `/`) counts as a separator.
            let pattern = format!(r"(^|[^A-Za-z0-9]|%[0-9A-Fa-f]{{2}}){}($|[^A-Za-z0-9])", regex::escape(original));
            let re = Regex::new(&pattern)
                .map_err(|e| format!("cannot redact a value of {} characters: {e}", original.len()))?;
            plan.inside.push((re, replacement));
        }
        Ok(plan)
    }

    fn rewrite(&self, s: &mut String, key: Option<&str>, _parent: Option<&str>, plan: &Plan) {
        if Self::key_in(&self.compiled.policy.secret_keys, key) {
            *s = "[redacted]".into();
            return;
        }
        if key == Some("_page")
            && let Some(decoded) = decode_page_token(s)
        {
            *s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(plan.apply(&decoded));
            return;
        }
        *s = plan.apply(s);
        if let Some(signing) = &self.compiled.signing {
            *s = signing.replace_all(s, "${1}redacted").into_owned();
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

/// What to replace: whole values by lookup, and values inside longer strings by pattern.
#[derive(Default)]
struct Plan {
    whole: std::collections::HashMap<String, String>,
    inside: Vec<(Regex, String)>,
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

/// Called with a string, the key it sits under, and that key's parent.
type StringVisitor<'a> = dyn FnMut(&mut String, Option<&str>, Option<&str>) + 'a;

/// Calls `f` on every string of a cassette that can carry data, with the key it sits under and that
/// key's parent: paths, query and form values (keyed by parameter name), header values, JSON strings.
fn visit(c: &mut Cassette, f: &mut StringVisitor<'_>) {
    fn request(r: &mut RecordedRequest, f: &mut StringVisitor<'_>) {
        f(&mut r.path, None, None);
        for (name, value) in r.query.iter_mut() {
            f(value, Some(name.as_str()), None);
        }
        for (name, value) in r.headers.iter_mut() {
            f(value, Some(name.as_str()), None);
        }
        body(&mut r.body, f);
    }
    fn response(r: &mut RecordedResponse, f: &mut StringVisitor<'_>) {
        for (name, value) in r.headers.iter_mut() {
            f(value, Some(name.as_str()), None);
        }
        body(&mut r.body, f);
    }
    fn body(b: &mut RecordedBody, f: &mut StringVisitor<'_>) {
        match b {
            RecordedBody::Json(v) => json(v, None, None, f),
            RecordedBody::Form(pairs) => {
                for (name, value) in pairs.iter_mut() {
                    f(value, Some(name.as_str()), None);
                }
            }
            // A text body is free text as a whole.
            RecordedBody::Text(t) => f(t, Some("text"), None),
            RecordedBody::None | RecordedBody::RedactedBytes(_) => {}
        }
    }
    fn json(v: &mut Value, key: Option<&str>, parent: Option<&str>, f: &mut StringVisitor<'_>) {
        match v {
            Value::String(s) => f(s, key, parent),
            // Array items sit under the array's key.
            Value::Array(items) => items.iter_mut().for_each(|i| json(i, key, parent, f)),
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    json(child, Some(k.as_str()), key, f);
                }
            }
            _ => {}
        }
    }
    request(&mut c.request, f);
    response(&mut c.response, f);
    for e in c.upstream.iter_mut() {
        request(&mut e.request, f);
        response(&mut e.response, f);
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

/// `1984-07-21` → `1900-02-13` (same length and separators); `07/21/1984` → `02/13/1900`; other text →
/// digits zeroed.
fn placeholder_date(original: &str) -> String {
    // Day and month differ, so a swapped day/month still shows in a replay.
    const TEMPLATE: &str = "1900-02-13T00:00:00";
    if original.len() <= TEMPLATE.len()
        && original.bytes().zip(TEMPLATE.bytes()).all(|(a, b)| a.is_ascii_digit() == b.is_ascii_digit())
    {
        return TEMPLATE[..original.len()].to_string();
    }
    original.chars().map(|c| if c.is_ascii_digit() { '0' } else { c }).collect()
}

/// Same-length valid base64 of zero bytes.
fn placeholder_base64(original: &str) -> String {
    let padding = original.chars().rev().take_while(|c| *c == '=').count();
    let body = original.chars().filter(|c| !c.is_whitespace()).count().saturating_sub(padding);
    format!("{}{}", "A".repeat(body), "=".repeat(padding))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cassette::*;
    use crate::config::SecretRef;
    use serde_json::json;

    fn cassette() -> Cassette {
        let patient = "b8dfa97bdcdf4754bcd8197ca78ef0f0";
        Cassette {
            format: FORMAT_VERSION,
            organization: OrganizationInfo { slug: "demo".into(), ehr: "canvas".into(), mapping: "canvas".into() },
            gateway_base: "http://127.0.0.1:8080".into(),
            interaction: "create".into(),
            request: RecordedRequest {
                method: "POST".into(),
                path: "/organizations/demo/fhir/4/Media".into(),
                query: vec![],
                headers: Default::default(),
                body: RecordedBody::Json(json!({
                    "resourceType": "Media", "subject": {"reference": format!("Patient/{patient}")},
                    "content": {"data": "aGVsbG8gd29ybGQ=", "title": "Jane Doe ID card"},
                    "note": [{"text": "Patient reports pain in the left hand"}],
                    "contained": [{"resourceType": "Patient", "name": [{"family": "Doe", "given": ["Jane"]}], "birthDate": "1984-07-21"}]
                })),
            },
            response: RecordedResponse { status: 201, headers: Default::default(), body: RecordedBody::None },
            upstream: vec![UpstreamExchange {
                request: RecordedRequest {
                    method: "GET".into(),
                    path: "/Media".into(),
                    query: vec![("patient".into(), format!("Patient/{patient}")), ("_count".into(), "10".into())],
                    headers: Default::default(),
                    body: RecordedBody::Form(vec![("client_secret".into(), "hunter2".into())]),
                },
                response: RecordedResponse {
                    status: 200,
                    headers: Default::default(),
                    body: RecordedBody::Json(
                        json!({"link": [{"url": format!("/Media?_page={}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"l\":\"/Media?patient=Patient%2F{patient}\"}}")))}], "access_token": "tok"}),
                    ),
                },
                failure: None,
            }],
        }
    }

    #[test]
    fn removes_secrets_and_phi_and_keeps_shapes() {
        let redactor = Redactor::new(RedactionPolicy::default()).unwrap();
        let mut c = cassette();
        redactor.redact(&mut c).unwrap();
        let text = c.to_pretty_json();
        for secret in [
            "b8dfa97bdcdf4754bcd8197ca78ef0f0",
            "hunter2",
            "\"tok\"",
            "Jane",
            "Doe",
            "1984-07-21",
            "aGVsbG8gd29ybGQ=",
            "left hand",
        ] {
            assert!(!text.contains(secret), "`{secret}` survived:\n{text}");
        }
        let RecordedBody::Json(body) = &c.request.body else { panic!() };
        assert_eq!(body["content"]["data"], "AAAAAAAAAAAAAAA=");
        assert_eq!(body["contained"][0]["birthDate"], "1900-02-13");
        assert_eq!(body["note"][0]["text"].as_str().unwrap().len(), "Patient reports pain in the left hand".len());
        let pseudonym = redactor.pseudonym("b8dfa97bdcdf4754bcd8197ca78ef0f0");
        assert_eq!(pseudonym.len(), 32);
        assert!(pseudonym.bytes().all(|b| b.is_ascii_hexdigit()));
        // The same id has the same pseudonym in the body, the upstream query and inside the paging token.
        assert_eq!(body["subject"]["reference"], format!("Patient/{pseudonym}"));
        assert_eq!(c.upstream[0].request.query[0].1, format!("Patient/{pseudonym}"));
        let RecordedBody::Json(page) = &c.upstream[0].response.body else { panic!() };
        let token = page["link"][0]["url"].as_str().unwrap().trim_start_matches("/Media?_page=");
        let decoded =
            String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).unwrap()).unwrap();
        assert!(decoded.contains(&pseudonym), "{decoded}");
    }

    #[test]
    fn pseudonyms_are_stable_per_key_and_keep_the_shape() {
        let a = Redactor::new(RedactionPolicy::default()).unwrap();
        assert_eq!(a.pseudonym("1234"), a.pseudonym("1234"));
        assert_ne!(a.pseudonym("1234"), "1234");
        assert!(a.pseudonym("1234").bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(a.pseudonym("erXuFYUfucBZaryVksYEcMg3").len(), 24);
        let path = std::env::temp_dir().join(format!("ehrgw-key-{}", std::process::id()));
        std::fs::write(&path, "another key").unwrap();
        let policy = RedactionPolicy {
            pseudonym_key: Some(SecretRef { env: None, file: Some(path.clone()) }),
            ..Default::default()
        };
        let b = Redactor::new(policy).unwrap();
        assert_ne!(a.pseudonym("1234"), b.pseudonym("1234"));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_policy_decides_what_is_text() {
        let policy = RedactionPolicy { text_keys: vec!["remark".into()], ..Default::default() };
        let redactor = Redactor::new(policy).unwrap();
        let mut c = cassette();
        c.request.body =
            RecordedBody::Json(json!({"remark": "Call Jane Doe", "text": "the defaults stay", "code": "kept as is"}));
        redactor.redact(&mut c).unwrap();
        let RecordedBody::Json(body) = &c.request.body else { panic!() };
        assert_eq!(body["remark"], "xxxx xxxx xxx");
        assert_eq!(body["text"], "xxx xxxxxxxx xxxx", "configured lists add to the defaults");
        assert_eq!(body["code"], "kept as is");
    }

    #[test]
    fn tricky_values_neither_break_the_cassette_nor_escape() {
        let redactor = Redactor::new(RedactionPolicy::default()).unwrap();
        let mut c = cassette();
        let big = "QUFB".repeat(500_000);
        c.request.body = RecordedBody::Json(json!({
            "note": [{"text": "none"}],
            "name": [{"given": ["Jane", "Marie"]}],
            "identifier": [{"system": "urn:mrn", "value": "MRN-778899"}],
            "content": {"data": big},
        }));
        c.request.query = vec![("patient".into(), "none".into())];
        redactor.redact(&mut c).unwrap();
        assert_eq!(c.response.body, RecordedBody::None, "enum tags are not data");
        let RecordedBody::Json(body) = &c.request.body else { panic!() };
        assert_eq!(body["name"][0]["given"], json!(["xxxx", "xxxxx"]));
        assert_eq!(body["identifier"][0]["value"], "xxxxxxxxxx");
        assert_eq!(body["identifier"][0]["system"], "urn:mrn");
        assert_eq!(body["content"]["data"].as_str().unwrap().len(), big.len());
        assert!(body["content"]["data"].as_str().unwrap().bytes().all(|b| b == b'A'));
        assert_ne!(c.request.query[0].1, "none");
    }

    #[test]
    fn presigned_url_signatures_are_removed() {
        let redactor = Redactor::new(RedactionPolicy::default()).unwrap();
        let mut c = cassette();
        c.request.body = RecordedBody::Json(
            json!({"valueUri": "https://s3.example/x.jpg?X-Amz-Expires=3600&X-Amz-Signature=abc123&AWSAccessKeyId=AKIA1"}),
        );
        redactor.redact(&mut c).unwrap();
        let RecordedBody::Json(body) = &c.request.body else { panic!() };
        assert_eq!(
            body["valueUri"],
            "https://s3.example/x.jpg?X-Amz-Expires=3600&X-Amz-Signature=redacted&AWSAccessKeyId=redacted"
        );
    }

    #[test]
    fn ids_are_replaced_only_as_whole_tokens() {
        let redactor = Redactor::new(RedactionPolicy::default()).unwrap();
        let mut c = cassette();
        c.request.body = RecordedBody::Json(
            json!({"subject": {"reference": "Patient/12"}, "count": "5123", "path": "/patients/12/docs"}),
        );
        redactor.redact(&mut c).unwrap();
        let RecordedBody::Json(body) = &c.request.body else { panic!() };
        assert_eq!(body["count"], "5123", "a longer number containing the id is untouched");
        assert_eq!(body["path"], format!("/patients/{}/docs", redactor.pseudonym("12")));
    }
}
