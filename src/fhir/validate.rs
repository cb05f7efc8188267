//! Structural checks of inbound FHIR R4 Media resources: datatypes, value sets and required elements, reported all at once with FHIRPath-style expressions.
//!
//! The checks are independent of any EHR: they only look at the shape of the
//! JSON (types, cardinality, primitive formats, required elements and the
//! `event-status` value set). Every problem found is reported; validation
//! never stops at the first one.
//!
//! Messages say what to fix. They never echo values that could carry PHI
//! (names, notes, attachment data, dates); only codes, ids and element names
//! are quoted, truncated to 64 characters.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

/// Kind of a structural problem; maps to the OperationOutcome issue codes
/// `required` / `invalid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// A mandatory element is missing (`required`).
    Required,
    /// An element is present but malformed, of the wrong type or unknown
    /// (`invalid`).
    Invalid,
}

/// One problem found in an inbound resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// What kind of problem this is.
    pub kind: ProblemKind,
    /// FHIRPath-style location, e.g. `Media.content.data` or `Media.note[1].text`.
    pub expression: String,
    /// Human-readable description of what to fix (never echoes PHI).
    pub message: String,
}

/// The FHIR R4 event-status value set used by Media.status.
pub const EVENT_STATUS: &[&str] =
    &["preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "entered-in-error", "unknown"];

/// FHIR R4 narrative-status value set (Narrative.status).
const NARRATIVE_STATUS: &[&str] = &["generated", "extensions", "additional", "empty"];

/// FHIR R4 identifier-use value set (Identifier.use).
const IDENTIFIER_USE: &[&str] = &["usual", "official", "temp", "secondary", "old"];

/// Every element of the FHIR R4 Media definition (plus `resourceType`).
const MEDIA_ELEMENTS: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "implicitRules",
    "language",
    "text",
    "contained",
    "extension",
    "modifierExtension",
    "identifier",
    "basedOn",
    "partOf",
    "status",
    "type",
    "modality",
    "view",
    "subject",
    "encounter",
    "createdDateTime",
    "createdPeriod",
    "issued",
    "operator",
    "reasonCode",
    "bodySite",
    "deviceName",
    "device",
    "height",
    "width",
    "frames",
    "duration",
    "content",
    "note",
];

/// Top-level Media elements of a primitive type; only these may carry a
/// `_`-prefixed sibling holding the primitive's id/extensions.
const MEDIA_PRIMITIVES: &[&str] = &[
    "id",
    "implicitRules",
    "language",
    "status",
    "createdDateTime",
    "issued",
    "deviceName",
    "height",
    "width",
    "frames",
    "duration",
];

/// Longest prefix of a code, id or element name quoted back in a message.
const MAX_ECHO_CHARS: usize = 64;

/// Upper bound of FHIR `integer`, `unsignedInt` and `positiveInt`.
const MAX_INT32: u64 = 2_147_483_647;

static ID_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9\-\.]{1,64}$").expect("FHIR id regex compiles"));

static CODE_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[^\s]+(\s[^\s]+)*$").expect("FHIR code regex compiles"));

static DATE_TIME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?)$",
    )
    .expect("FHIR dateTime regex compiles")
});

static INSTANT_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))$",
    )
    .expect("FHIR instant regex compiles")
});

/// True if `s` is a FHIR `id`: 1 to 64 characters from `A-Z a-z 0-9 - .`.
pub fn is_valid_id(s: &str) -> bool {
    ID_RE.is_match(s)
}

/// True if `s` matches the FHIR R4 `dateTime` regex (year, year-month, date,
/// or full date-time with timezone) and names a real calendar date.
pub fn is_valid_date_time(s: &str) -> bool {
    DATE_TIME_RE.is_match(s) && calendar_date_exists(s)
}

/// True if `s` matches the FHIR R4 `instant` regex (full date-time with
/// timezone) and names a real calendar date.
pub fn is_valid_instant(s: &str) -> bool {
    INSTANT_RE.is_match(s) && calendar_date_exists(s)
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

fn is_valid_code(s: &str) -> bool {
    CODE_RE.is_match(s)
}

fn is_leap_year(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Checks the day against the month length for a string that already matched
/// the dateTime or instant regex (`YYYY[-MM[-DD[...]]]`).
fn calendar_date_exists(s: &str) -> bool {
    let (Some(year), Some(month), Some(day)) = (s.get(0..4), s.get(5..7), s.get(8..10)) else {
        // Year or year-month precision: nothing calendar-dependent to check.
        return true;
    };
    match (year.parse::<u32>(), month.parse::<u32>(), day.parse::<u32>()) {
        (Ok(y), Ok(m), Ok(d)) => (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m),
        _ => false,
    }
}

/// Quotes a code, id or element name for a message, truncated to 64 chars.
fn echo(s: &str) -> String {
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(MAX_ECHO_CHARS).collect();
    if chars.next().is_some() { format!("'{head}...'") } else { format!("'{head}'") }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Default)]
struct Problems(Vec<FieldProblem>);

impl Problems {
    fn required(&mut self, expression: &str, message: String) {
        self.0.push(FieldProblem { kind: ProblemKind::Required, expression: expression.to_owned(), message });
    }

    fn invalid(&mut self, expression: &str, message: String) {
        self.0.push(FieldProblem { kind: ProblemKind::Invalid, expression: expression.to_owned(), message });
    }
}

/// FHIR primitive datatypes checked here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prim {
    String,
    Markdown,
    Uri,
    Url,
    Canonical,
    Code,
    Id,
    Base64,
    DateTime,
    Instant,
    UnsignedInt,
    PositiveInt,
    Decimal,
    Boolean,
    Xhtml,
}

impl Prim {
    fn fhir_name(self) -> &'static str {
        match self {
            Prim::String => "string",
            Prim::Markdown => "markdown",
            Prim::Uri => "uri",
            Prim::Url => "url",
            Prim::Canonical => "canonical",
            Prim::Code => "code",
            Prim::Id => "id",
            Prim::Base64 => "base64Binary",
            Prim::DateTime => "dateTime",
            Prim::Instant => "instant",
            Prim::UnsignedInt => "unsignedInt",
            Prim::PositiveInt => "positiveInt",
            Prim::Decimal => "decimal",
            Prim::Boolean => "boolean",
            Prim::Xhtml => "xhtml",
        }
    }
}

/// Signature shared by the complex-datatype checkers.
type Check = fn(&mut Problems, &Value, &str);

fn child(base: &str, key: &str) -> String {
    format!("{base}.{key}")
}

/// Checks one primitive value against its FHIR datatype.
fn check_prim(p: &mut Problems, v: &Value, expr: &str, prim: Prim) {
    let name = prim.fhir_name();
    match prim {
        Prim::UnsignedInt | Prim::PositiveInt => {
            let min = if prim == Prim::PositiveInt { 1 } else { 0 };
            match v {
                Value::Number(n) => {
                    if !n.as_u64().is_some_and(|n| (min..=MAX_INT32).contains(&n)) {
                        p.invalid(
                            expr,
                            format!(
                                "{expr} must be a whole number from {min} to {MAX_INT32} \
                                 (FHIR {name}), without a fractional part"
                            ),
                        );
                    }
                }
                other => {
                    p.invalid(expr, format!("{expr} must be a JSON number (FHIR {name}), found {}", json_type(other)))
                }
            }
        }
        Prim::Decimal => {
            if !v.is_number() {
                p.invalid(expr, format!("{expr} must be a JSON number (FHIR decimal), found {}", json_type(v)));
            }
        }
        Prim::Boolean => {
            if !v.is_boolean() {
                p.invalid(expr, format!("{expr} must be a JSON boolean (true or false), found {}", json_type(v)));
            }
        }
        _ => {
            let Some(s) = v.as_str() else {
                p.invalid(expr, format!("{expr} must be a JSON string (FHIR {name}), found {}", json_type(v)));
                return;
            };
            if s.is_empty() {
                p.invalid(expr, format!("{expr} must not be an empty string; omit the element instead"));
                return;
            }
            check_string_format(p, s, expr, prim);
        }
    }
}

fn check_string_format(p: &mut Problems, s: &str, expr: &str, prim: Prim) {
    match prim {
        Prim::Code if !is_valid_code(s) => p.invalid(
            expr,
            format!(
                "{expr} value {} is not a valid FHIR code: it must not have leading, \
                 trailing or repeated whitespace",
                echo(s)
            ),
        ),
        Prim::Id if !is_valid_id(s) => p.invalid(
            expr,
            format!(
                "{expr} value {} is not a valid FHIR id: use 1 to 64 characters from \
                 A-Z, a-z, 0-9, '-' and '.'",
                echo(s)
            ),
        ),
        Prim::Uri | Prim::Url | Prim::Canonical if s.chars().any(char::is_whitespace) => {
            p.invalid(expr, format!("{expr} must be a FHIR {} without whitespace", prim.fhir_name()))
        }
        Prim::Base64 if !is_valid_base64(s) => p.invalid(
            expr,
            format!(
                "{expr} must be base64Binary: standard alphabet (A-Z, a-z, 0-9, '+', '/'), \
                 '=' padding to a multiple of 4 characters, no whitespace or line breaks"
            ),
        ),
        Prim::DateTime if !is_valid_date_time(s) => p.invalid(
            expr,
            format!(
                "{expr} must be a FHIR dateTime (YYYY, YYYY-MM, YYYY-MM-DD or \
                 YYYY-MM-DDThh:mm:ss[.sss] with Z or a +hh:mm/-hh:mm offset) naming a real \
                 calendar date"
            ),
        ),
        Prim::Instant if !is_valid_instant(s) => p.invalid(
            expr,
            format!(
                "{expr} must be a FHIR instant (YYYY-MM-DDThh:mm:ss[.sss] with Z or a \
                 +hh:mm/-hh:mm offset) naming a real calendar date"
            ),
        ),
        _ => {}
    }
}

/// Checks `obj[key]` against a primitive type if it is present.
fn opt_prim(p: &mut Problems, obj: &Map<String, Value>, key: &str, base: &str, prim: Prim) {
    if let Some(v) = obj.get(key) {
        check_prim(p, v, &child(base, key), prim);
    }
}

/// Checks `obj[key]` against a primitive type, reporting `required` if absent.
fn req_prim(p: &mut Problems, obj: &Map<String, Value>, key: &str, base: &str, prim: Prim) {
    let expr = child(base, key);
    match obj.get(key) {
        Some(v) => check_prim(p, v, &expr, prim),
        None => p.required(&expr, format!("{expr} is required (FHIR {})", prim.fhir_name())),
    }
}

/// Checks that a string-valued code is in a value set (type problems are left
/// to [`check_prim`]).
fn check_in_value_set(p: &mut Problems, v: &Value, expr: &str, set_name: &str, set: &[&str]) {
    if let Some(s) = v.as_str()
        && !s.is_empty()
        && !set.contains(&s)
    {
        p.invalid(
            expr,
            format!("{expr} value {} is not in the {set_name} value set; allowed codes: {}", echo(s), set.join(", ")),
        );
    }
}

/// Returns the object if `v` is one, otherwise reports a type problem.
fn as_object<'a>(p: &mut Problems, v: &'a Value, expr: &str, type_name: &str) -> Option<&'a Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        Value::Array(_) => {
            p.invalid(
                expr,
                format!(
                    "{expr} must be a single JSON object (FHIR {type_name}, at most one), \
                     found an array"
                ),
            );
            None
        }
        other => {
            p.invalid(expr, format!("{expr} must be a JSON object (FHIR {type_name}), found {}", json_type(other)));
            None
        }
    }
}

/// Returns the items if `v` is a non-empty array, otherwise reports a problem.
fn as_array<'a>(p: &mut Problems, v: &'a Value, expr: &str, type_name: &str) -> Option<&'a [Value]> {
    match v {
        Value::Array(items) if items.is_empty() => {
            p.invalid(expr, format!("{expr} must not be an empty array; omit the element instead"));
            None
        }
        Value::Array(items) => Some(items),
        other => {
            p.invalid(
                expr,
                format!("{expr} must be a JSON array of {type_name} (repeating element), found {}", json_type(other)),
            );
            None
        }
    }
}

/// Checks a 0..1 complex element if present.
fn opt_single(p: &mut Problems, obj: &Map<String, Value>, key: &str, base: &str, check: Check) {
    if let Some(v) = obj.get(key) {
        check(p, v, &child(base, key));
    }
}

/// Checks a 0..* complex element if present: an array whose items are checked.
fn opt_array(p: &mut Problems, obj: &Map<String, Value>, key: &str, base: &str, type_name: &str, check: Check) {
    let Some(v) = obj.get(key) else { return };
    let expr = child(base, key);
    if let Some(items) = as_array(p, v, &expr, type_name) {
        for (i, item) in items.iter().enumerate() {
            check(p, item, &format!("{expr}[{i}]"));
        }
    }
}

/// Checks a 0..* primitive element if present.
fn opt_prim_array(p: &mut Problems, obj: &Map<String, Value>, key: &str, base: &str, prim: Prim) {
    let Some(v) = obj.get(key) else { return };
    let expr = child(base, key);
    if let Some(items) = as_array(p, v, &expr, prim.fhir_name()) {
        for (i, item) in items.iter().enumerate() {
            check_prim(p, item, &format!("{expr}[{i}]"), prim);
        }
    }
}

/// Elements every complex datatype inherits from Element: `id`, `extension`.
fn check_element_base(p: &mut Problems, obj: &Map<String, Value>, expr: &str) {
    opt_prim(p, obj, "id", expr, Prim::String);
    opt_array(p, obj, "extension", expr, "Extension", check_extension);
}

fn check_extension(p: &mut Problems, v: &Value, expr: &str) {
    let Some(obj) = as_object(p, v, expr, "Extension") else {
        return;
    };
    check_element_base(p, obj, expr);
    req_prim(p, obj, "url", expr, Prim::Uri);
}

fn check_coding(p: &mut Problems, v: &Value, expr: &str) {
    let Some(obj) = as_object(p, v, expr, "Coding") else {
        return;
    };
    check_element_base(p, obj, expr);
    opt_prim(p, obj, "system", expr, Prim::Uri);
    opt_prim(p, obj, "version", expr, Prim::String);
    opt_prim(p, obj, "code", expr, Prim::Code);
    opt_prim(p, obj, "display", expr, Prim::String);
    opt_prim(p, obj, "userSelected", expr, Prim::Boolean);
}

fn check_codeable_concept(p: &mut Problems, v: &Value, expr: &str) {
    let Some(obj) = as_object(p, v, expr, "CodeableConcept") else {
        return;
    };
    check_element_base(p, obj, expr);
    opt_array(p, obj, "coding", expr, "Coding", check_coding);
    opt_prim(p, obj, "text", expr, Prim::String);
}

fn check_period(p: &mut Problems, v: &Value, expr: &str) {
    let Some(obj) = as_object(p, v, expr, "Period") else {
        return;
    };
    check_element_base(p, obj, expr);
    opt_prim(p, obj, "start", expr, Prim::DateTime);
    opt_prim(p, obj, "end", expr, Prim::DateTime);
}

fn check_identifier(p: &mut Problems, v: &Value, expr: &str) {
    let Some(obj) = as_object(p, v, expr, "Identifier") else {
        return;
    };
    check_element_base(p, obj, expr);
    if let Some(u) = obj.get("use") {
        let use_expr = child(expr, "use");
        check_prim(p, u, &use_expr, Prim::Code);
        check_in_value_set(p, u, &use_expr, "identifier-use", IDENTIFIER_USE);
    }
    opt_single(p, obj, "type", expr, check_codeable_concept);
    opt_prim(p, obj, "system", expr, Prim::Uri);
    opt_prim(p, obj, "value", expr, Prim::String);
    opt_single(p, obj, "period", expr, check_period);
    opt_single(p, obj, "assigner", expr, check_reference);
}

fn check_reference(p: &mut Problems, v: &Value, expr: &str) {
    let Some(obj) = as_object(p, v, expr, "Reference") else {
        return;
    };
    check_element_base(p, obj, expr);
    opt_prim(p, obj, "reference", expr, Prim::String);
    opt_prim(p, obj, "type", expr, Prim::Uri);
    opt_single(p, obj, "identifier", expr, check_identifier);
    opt_prim(p, obj, "display", expr, Prim::String);
}

fn check_attachment(p: &mut Problems, v: &Value, expr: &str) {
    let Some(obj) = as_object(p, v, expr, "Attachment") else {
        return;
    };
    check_element_base(p, obj, expr);
    opt_prim(p, obj, "contentType", expr, Prim::Code);
    opt_prim(p, obj, "language", expr, Prim::Code);
    opt_prim(p, obj, "data", expr, Prim::Base64);
    opt_prim(p, obj, "url", expr, Prim::Url);
    opt_prim(p, obj, "size", expr, Prim::UnsignedInt);
    opt_prim(p, obj, "hash", expr, Prim::Base64);
    opt_prim(p, obj, "title", expr, Prim::String);
    opt_prim(p, obj, "creation", expr, Prim::DateTime);
    // att-1: If the Attachment has data, it SHALL have a contentType.
    if obj.contains_key("data") && !obj.contains_key("contentType") {
        let ct = child(expr, "contentType");
        p.required(&ct, format!("{ct} is required when data is present (FHIR invariant att-1)"));
    }
}

fn check_annotation(p: &mut Problems, v: &Value, expr: &str) {
    let Some(obj) = as_object(p, v, expr, "Annotation") else {
        return;
    };
    check_element_base(p, obj, expr);
    opt_single(p, obj, "authorReference", expr, check_reference);
    opt_prim(p, obj, "authorString", expr, Prim::String);
    if obj.contains_key("authorReference") && obj.contains_key("authorString") {
        let author = child(expr, "author");
        p.invalid(
            &author,
            format!(
                "{author} is a choice element: give either authorReference or authorString, \
                 not both"
            ),
        );
    }
    opt_prim(p, obj, "time", expr, Prim::DateTime);
    req_prim(p, obj, "text", expr, Prim::Markdown);
}

fn check_meta(p: &mut Problems, v: &Value, expr: &str) {
    let Some(obj) = as_object(p, v, expr, "Meta") else {
        return;
    };
    check_element_base(p, obj, expr);
    opt_prim(p, obj, "versionId", expr, Prim::Id);
    opt_prim(p, obj, "lastUpdated", expr, Prim::Instant);
    opt_prim(p, obj, "source", expr, Prim::Uri);
    opt_prim_array(p, obj, "profile", expr, Prim::Canonical);
    opt_array(p, obj, "security", expr, "Coding", check_coding);
    opt_array(p, obj, "tag", expr, "Coding", check_coding);
}

fn check_narrative(p: &mut Problems, v: &Value, expr: &str) {
    let Some(obj) = as_object(p, v, expr, "Narrative") else {
        return;
    };
    check_element_base(p, obj, expr);
    req_prim(p, obj, "status", expr, Prim::Code);
    if let Some(s) = obj.get("status") {
        check_in_value_set(p, s, &child(expr, "status"), "narrative-status", NARRATIVE_STATUS);
    }
    req_prim(p, obj, "div", expr, Prim::Xhtml);
}

fn check_contained_resource(p: &mut Problems, v: &Value, expr: &str) {
    let Some(obj) = as_object(p, v, expr, "Resource") else {
        return;
    };
    req_prim(p, obj, "resourceType", expr, Prim::String);
    opt_prim(p, obj, "id", expr, Prim::Id);
}

/// `_x` sibling of a primitive element: an Element holding `id`/`extension`.
fn check_primitive_sibling(p: &mut Problems, v: &Value, element: &str) {
    let expr = child("Media", element);
    match v {
        Value::Object(obj) => check_element_base(p, obj, &expr),
        other => p.invalid(
            &expr,
            format!("'_{element}' (the id/extensions of {expr}) must be a JSON object, found {}", json_type(other)),
        ),
    }
}

/// Validates a Media resource body. Returns every problem found (empty = valid).
pub fn validate_media(resource: &Value) -> Vec<FieldProblem> {
    let mut p = Problems::default();
    let base = "Media";
    let Some(obj) = resource.as_object() else {
        p.invalid(
            base,
            format!("the resource must be a JSON object (a FHIR Media resource), found {}", json_type(resource)),
        );
        return p.0;
    };

    let rt = child(base, "resourceType");
    match obj.get("resourceType") {
        None => p.required(&rt, format!("{rt} is required and must be 'Media'")),
        Some(Value::String(s)) if s == "Media" => {}
        Some(Value::String(s)) => {
            p.invalid(&rt, format!("{rt} must be 'Media' (the expected resource type), found {}", echo(s)))
        }
        Some(other) => p.invalid(&rt, format!("{rt} must be the JSON string 'Media', found {}", json_type(other))),
    }

    // Resource / DomainResource elements.
    opt_prim(&mut p, obj, "id", base, Prim::Id);
    opt_single(&mut p, obj, "meta", base, check_meta);
    opt_prim(&mut p, obj, "implicitRules", base, Prim::Uri);
    opt_prim(&mut p, obj, "language", base, Prim::Code);
    opt_single(&mut p, obj, "text", base, check_narrative);
    opt_array(&mut p, obj, "contained", base, "Resource", check_contained_resource);
    opt_array(&mut p, obj, "extension", base, "Extension", check_extension);
    opt_array(&mut p, obj, "modifierExtension", base, "Extension", check_extension);

    // Media elements.
    opt_array(&mut p, obj, "identifier", base, "Identifier", check_identifier);
    opt_array(&mut p, obj, "basedOn", base, "Reference", check_reference);
    opt_array(&mut p, obj, "partOf", base, "Reference", check_reference);

    let status = child(base, "status");
    match obj.get("status") {
        Some(v) => {
            check_prim(&mut p, v, &status, Prim::Code);
            check_in_value_set(&mut p, v, &status, "event-status", EVENT_STATUS);
        }
        None => p.required(&status, format!("{status} is required; use one of: {}", EVENT_STATUS.join(", "))),
    }

    opt_single(&mut p, obj, "type", base, check_codeable_concept);
    opt_single(&mut p, obj, "modality", base, check_codeable_concept);
    opt_single(&mut p, obj, "view", base, check_codeable_concept);
    opt_single(&mut p, obj, "subject", base, check_reference);
    opt_single(&mut p, obj, "encounter", base, check_reference);

    opt_prim(&mut p, obj, "createdDateTime", base, Prim::DateTime);
    opt_single(&mut p, obj, "createdPeriod", base, check_period);
    if obj.contains_key("createdDateTime") && obj.contains_key("createdPeriod") {
        let created = child(base, "created");
        p.invalid(
            &created,
            format!(
                "{created} is a choice element: give either createdDateTime or createdPeriod, \
                 not both"
            ),
        );
    }
    opt_prim(&mut p, obj, "issued", base, Prim::Instant);

    opt_single(&mut p, obj, "operator", base, check_reference);
    opt_array(&mut p, obj, "reasonCode", base, "CodeableConcept", check_codeable_concept);
    opt_single(&mut p, obj, "bodySite", base, check_codeable_concept);
    opt_prim(&mut p, obj, "deviceName", base, Prim::String);
    opt_single(&mut p, obj, "device", base, check_reference);
    opt_prim(&mut p, obj, "height", base, Prim::PositiveInt);
    opt_prim(&mut p, obj, "width", base, Prim::PositiveInt);
    opt_prim(&mut p, obj, "frames", base, Prim::PositiveInt);
    opt_prim(&mut p, obj, "duration", base, Prim::Decimal);

    let content = child(base, "content");
    match obj.get("content") {
        Some(v) => check_attachment(&mut p, v, &content),
        None => p.required(&content, format!("{content} is required (FHIR Attachment holding the media)")),
    }

    opt_array(&mut p, obj, "note", base, "Annotation", check_annotation);

    // Unknown elements, and `_x` siblings of primitive elements.
    for (key, value) in obj {
        if MEDIA_ELEMENTS.contains(&key.as_str()) {
            continue;
        }
        if let Some(element) = key.strip_prefix('_')
            && MEDIA_PRIMITIVES.contains(&element)
        {
            check_primitive_sibling(&mut p, value, element);
            continue;
        }
        let shown: String = key.chars().take(MAX_ECHO_CHARS).collect();
        let expr = child(base, &shown);
        p.invalid(
            &expr,
            format!(
                "unknown element {}: it is not part of the FHIR R4 Media definition; remove it \
                 or carry it in an extension",
                echo(key)
            ),
        );
    }

    p.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::json;

    fn minimal() -> Value {
        json!({
            "resourceType": "Media",
            "status": "completed",
            "content": { "contentType": "image/png", "url": "https://example.org/x.png" }
        })
    }

    fn canvas_seed() -> Value {
        json!({
            "resourceType": "Media",
            "status": "completed",
            "subject": { "reference": "Patient/5350cd20de8a470aa570a852859ac87e" },
            "encounter": { "reference": "Encounter/eae3c8a5-a129-4960-9715-fc26da30eccc" },
            "operator": { "reference": "Practitioner/76428138e7644ce6b7eb426fdbbf2f39" },
            "content": {
                "contentType": "image/jpeg",
                "data": STANDARD.encode(b"\xff\xd8\xff\xe0 not really a jpeg"),
                "title": "Left forearm rash"
            },
            "note": [ { "text": "Rash improving since last visit" } ]
        })
    }

    /// Applies `f` to a copy of the minimal Media and validates it.
    fn with(f: impl FnOnce(&mut Map<String, Value>)) -> Vec<FieldProblem> {
        let mut v = minimal();
        if let Some(obj) = v.as_object_mut() {
            f(obj);
        }
        validate_media(&v)
    }

    fn set(key: &str, value: Value) -> Vec<FieldProblem> {
        with(|o| {
            o.insert(key.to_owned(), value);
        })
    }

    fn exprs(problems: &[FieldProblem]) -> Vec<&str> {
        problems.iter().map(|p| p.expression.as_str()).collect()
    }

    /// Asserts exactly one problem, of the given kind and expression.
    #[track_caller]
    fn assert_one(problems: &[FieldProblem], kind: ProblemKind, expression: &str) {
        assert_eq!(problems.len(), 1, "expected one problem, got {problems:#?}");
        assert_eq!(problems[0].kind, kind, "{problems:#?}");
        assert_eq!(problems[0].expression, expression, "{problems:#?}");
    }

    #[track_caller]
    fn assert_invalid(problems: &[FieldProblem], expression: &str) {
        assert_one(problems, ProblemKind::Invalid, expression);
    }

    // ---- whole resources -------------------------------------------------

    #[test]
    fn minimal_media_is_valid() {
        assert_eq!(validate_media(&minimal()), vec![]);
    }

    #[test]
    fn minimal_with_empty_content_object_is_valid() {
        let v = json!({"resourceType": "Media", "status": "preparation", "content": {}});
        assert_eq!(validate_media(&v), vec![]);
    }

    #[test]
    fn canvas_seed_example_is_valid() {
        assert_eq!(validate_media(&canvas_seed()), vec![]);
    }

    #[test]
    fn fully_populated_media_is_valid() {
        let v = json!({
            "resourceType": "Media",
            "id": "media-1.v2",
            "meta": {
                "versionId": "3",
                "lastUpdated": "2024-02-29T13:45:00.123+01:00",
                "source": "urn:uuid:1b4f",
                "profile": ["http://example.org/StructureDefinition/media"],
                "tag": [{ "system": "http://example.org/tags", "code": "inbound" }]
            },
            "implicitRules": "http://example.org/rules",
            "language": "en-US",
            "text": { "status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>" },
            "contained": [{ "resourceType": "Device", "id": "cam" }],
            "extension": [{ "url": "http://example.org/ext", "valueString": "x" }],
            "modifierExtension": [{ "url": "http://example.org/mod", "valueBoolean": false }],
            "identifier": [{ "use": "official", "system": "urn:oid:1.2.3", "value": "A-1",
                             "period": { "start": "2020" } }],
            "basedOn": [{ "reference": "ServiceRequest/1" }],
            "partOf": [{ "reference": "Procedure/2", "display": "Biopsy" }],
            "status": "in-progress",
            "_status": { "extension": [{ "url": "http://example.org/why", "valueString": "y" }] },
            "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/media-type",
                                   "code": "image", "display": "Image" }] },
            "modality": { "text": "Digital photo" },
            "view": { "coding": [{ "code": "AP", "userSelected": true }] },
            "subject": { "reference": "Patient/1", "type": "Patient" },
            "encounter": { "reference": "Encounter/1" },
            "createdPeriod": { "start": "2024-01-31T23:59:60Z", "end": "2024-02-01" },
            "issued": "2024-02-01T00:00:00Z",
            "operator": { "identifier": { "system": "urn:x", "value": "op" } },
            "reasonCode": [{ "text": "Wound follow-up" }],
            "bodySite": { "coding": [{ "system": "http://snomed.info/sct", "code": "368209003" }] },
            "deviceName": "Clinic camera",
            "device": { "reference": "#cam" },
            "height": 480,
            "width": 640,
            "frames": 1,
            "duration": 0.5,
            "content": {
                "contentType": "image/jpeg",
                "language": "en",
                "data": "aGVsbG8=",
                "url": "https://example.org/a.jpg",
                "size": 0,
                "hash": "2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
                "title": "Photo",
                "creation": "2024-02-01T10:00:00-05:00"
            },
            "note": [
                { "authorString": "Nurse", "time": "2024-02-01", "text": "first" },
                { "authorReference": { "reference": "Practitioner/9" }, "text": "second" }
            ]
        });
        assert_eq!(validate_media(&v), vec![]);
    }

    #[test]
    fn non_object_body_is_invalid() {
        for body in [json!([]), json!("Media"), json!(null), json!(42)] {
            assert_invalid(&validate_media(&body), "Media");
        }
    }

    #[test]
    fn multiple_problems_are_all_reported() {
        let v = json!({
            "resourceType": "Patient",
            "id": "bad id!",
            "status": "done",
            "subject": "Patient/1",
            "height": 0,
            "content": { "data": "not base64", "size": -1 },
            "note": [ { "text": "ok" }, { "time": "2023-02-30" } ],
            "photo": true
        });
        let problems = validate_media(&v);
        let got = exprs(&problems);
        for expected in [
            "Media.resourceType",
            "Media.id",
            "Media.status",
            "Media.subject",
            "Media.height",
            "Media.content.data",
            "Media.content.size",
            "Media.content.contentType",
            "Media.note[1].time",
            "Media.note[1].text",
            "Media.photo",
        ] {
            assert!(got.contains(&expected), "missing {expected} in {problems:#?}");
        }
        assert_eq!(problems.len(), 11, "{problems:#?}");
        let required: Vec<&str> =
            problems.iter().filter(|p| p.kind == ProblemKind::Required).map(|p| p.expression.as_str()).collect();
        assert_eq!(required, vec!["Media.content.contentType", "Media.note[1].text"]);
    }

    #[test]
    fn empty_object_reports_all_required() {
        let problems = validate_media(&json!({}));
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems.iter().all(|p| p.kind == ProblemKind::Required));
        assert_eq!(exprs(&problems), vec!["Media.resourceType", "Media.status", "Media.content"]);
    }

    // ---- resourceType, id, meta ----------------------------------------

    #[test]
    fn resource_type_missing_is_required() {
        let problems = with(|o| {
            o.remove("resourceType");
        });
        assert_one(&problems, ProblemKind::Required, "Media.resourceType");
    }

    #[test]
    fn resource_type_other_names_expected_type() {
        let problems = set("resourceType", json!("Observation"));
        assert_invalid(&problems, "Media.resourceType");
        assert!(problems[0].message.contains("'Media'"));
        assert!(problems[0].message.contains("'Observation'"));
    }

    #[test]
    fn resource_type_wrong_json_type() {
        let problems = set("resourceType", json!(1));
        assert_invalid(&problems, "Media.resourceType");
        assert!(problems[0].message.contains("found a number"));
    }

    #[test]
    fn id_checks() {
        assert_eq!(set("id", json!("abc-DEF.123")), vec![]);
        assert_invalid(&set("id", json!("has space")), "Media.id");
        assert_invalid(&set("id", json!("a".repeat(65))), "Media.id");
        assert_invalid(&set("id", json!("")), "Media.id");
        assert_invalid(&set("id", json!(12)), "Media.id");
        assert_invalid(&set("id", json!("under_score")), "Media.id");
    }

    #[test]
    fn bad_id_is_echoed_truncated() {
        let long = format!("{}!", "x".repeat(100));
        let problems = set("id", json!(long));
        assert_invalid(&problems, "Media.id");
        let msg = &problems[0].message;
        assert!(msg.contains(&format!("'{}...'", "x".repeat(64))), "{msg}");
        assert!(!msg.contains(&"x".repeat(65)), "{msg}");
    }

    #[test]
    fn meta_checks() {
        assert_invalid(&set("meta", json!({"versionId": "v 1"})), "Media.meta.versionId");
        assert_invalid(&set("meta", json!({"lastUpdated": "2024-01-01"})), "Media.meta.lastUpdated");
        assert_invalid(&set("meta", json!({"lastUpdated": "2023-02-29T00:00:00Z"})), "Media.meta.lastUpdated");
        assert_invalid(&set("meta", json!("v1")), "Media.meta");
        assert_invalid(&set("meta", json!({"tag": [{"code": 5}]})), "Media.meta.tag[0].code");
        assert_invalid(&set("meta", json!({"profile": "http://x"})), "Media.meta.profile");
        assert_eq!(set("meta", json!({"versionId": "1", "lastUpdated": "2024-02-29T23:59:59.999Z"})), vec![]);
    }

    // ---- status ------------------------------------------------------------

    #[test]
    fn status_missing_is_required() {
        let problems = with(|o| {
            o.remove("status");
        });
        assert_one(&problems, ProblemKind::Required, "Media.status");
    }

    #[test]
    fn status_not_in_value_set_lists_allowed_codes() {
        let problems = set("status", json!("final"));
        assert_invalid(&problems, "Media.status");
        let msg = &problems[0].message;
        for code in EVENT_STATUS {
            assert!(msg.contains(code), "{msg} lacks {code}");
        }
        assert!(msg.contains("'final'"));
    }

    #[test]
    fn every_event_status_is_accepted() {
        for code in EVENT_STATUS {
            assert_eq!(set("status", json!(code)), vec![], "{code}");
        }
    }

    #[test]
    fn status_wrong_type_or_case() {
        assert_invalid(&set("status", json!(true)), "Media.status");
        assert_invalid(&set("status", json!("Completed")), "Media.status");
        assert_invalid(&set("status", json!("")), "Media.status");
        assert_invalid(&set("status", json!(["completed"])), "Media.status");
    }

    // ---- content (Attachment) ----------------------------------------------

    #[test]
    fn content_missing_is_required() {
        let problems = with(|o| {
            o.remove("content");
        });
        assert_one(&problems, ProblemKind::Required, "Media.content");
    }

    #[test]
    fn content_must_be_single_object() {
        assert_invalid(&set("content", json!([{}])), "Media.content");
        let problems = set("content", json!("data"));
        assert_invalid(&problems, "Media.content");
        assert!(problems[0].message.contains("Attachment"));
    }

    #[test]
    fn content_field_checks() {
        let cases = [
            (json!({"contentType": "image jpeg  x"}), "Media.content.contentType"),
            (json!({"contentType": " image/png"}), "Media.content.contentType"),
            (json!({"contentType": 3}), "Media.content.contentType"),
            (json!({"url": 7}), "Media.content.url"),
            (json!({"url": "http://a b"}), "Media.content.url"),
            (json!({"size": -1}), "Media.content.size"),
            (json!({"size": 1.5}), "Media.content.size"),
            (json!({"size": "10"}), "Media.content.size"),
            (json!({"size": 2_147_483_648u64}), "Media.content.size"),
            (json!({"hash": "abc"}), "Media.content.hash"),
            (json!({"title": 1}), "Media.content.title"),
            (json!({"title": ""}), "Media.content.title"),
            (json!({"creation": "2023-13-01"}), "Media.content.creation"),
            (json!({"language": "en US "}), "Media.content.language"),
            (json!({"contentType": "image/png", "data": "a b="}), "Media.content.data"),
        ];
        for (content, expr) in cases {
            let problems = set("content", content.clone());
            assert_invalid(&problems, expr);
        }
        assert_eq!(set("content", json!({"size": 0})), vec![]);
        assert_eq!(set("content", json!({"size": 2_147_483_647u64})), vec![]);
        assert_eq!(set("content", json!({"contentType": "text/plain; charset=UTF-8"})), vec![]);
    }

    #[test]
    fn data_without_content_type_is_required() {
        let problems = set("content", json!({"data": "aGk="}));
        assert_one(&problems, ProblemKind::Required, "Media.content.contentType");
    }

    #[test]
    fn messages_do_not_echo_phi() {
        let secret = "JohnDoeSSN123456789";
        let v = json!({
            "resourceType": "Media",
            "status": "completed",
            "deviceName": 5,
            "content": {
                "contentType": "image/png",
                "data": format!("{secret}!"),
                "title": ["John Doe"],
                "creation": format!("{secret}-01-01")
            },
            "note": [{ "text": 42, "authorString": secret, "authorReference": {"display": secret} }]
        });
        let problems = validate_media(&v);
        assert_eq!(
            exprs(&problems),
            vec![
                "Media.deviceName",
                "Media.content.data",
                "Media.content.title",
                "Media.content.creation",
                "Media.note[0].author",
                "Media.note[0].text",
            ]
        );
        for p in &problems {
            assert!(!p.message.contains(secret), "{p:?}");
            assert!(!p.message.contains("John"), "{p:?}");
        }
    }

    // ---- created[x], issued, numbers ---------------------------------------

    #[test]
    fn created_choice_checks() {
        assert_eq!(set("createdDateTime", json!("2024-03-01T08:00:00Z")), vec![]);
        assert_invalid(&set("createdDateTime", json!("2024-03-01T08:00:00")), "Media.createdDateTime");
        assert_invalid(&set("createdDateTime", json!(20240301)), "Media.createdDateTime");
        assert_invalid(&set("createdPeriod", json!({"start": "2024-02-30"})), "Media.createdPeriod.start");
        assert_invalid(&set("createdPeriod", json!({"end": "yesterday"})), "Media.createdPeriod.end");
        assert_invalid(&set("createdPeriod", json!("2024")), "Media.createdPeriod");
        let both = with(|o| {
            o.insert("createdDateTime".into(), json!("2024"));
            o.insert("createdPeriod".into(), json!({"start": "2024"}));
        });
        assert_invalid(&both, "Media.created");
    }

    #[test]
    fn issued_is_instant() {
        assert_eq!(set("issued", json!("2015-02-07T13:28:17.239+02:00")), vec![]);
        assert_invalid(&set("issued", json!("2015-02-07")), "Media.issued");
        assert_invalid(&set("issued", json!("2015-02-07T13:28:17")), "Media.issued");
    }

    #[test]
    fn positive_ints_and_decimal() {
        for key in ["height", "width", "frames"] {
            let expr = format!("Media.{key}");
            assert_eq!(set(key, json!(1)), vec![]);
            assert_invalid(&set(key, json!(0)), &expr);
            assert_invalid(&set(key, json!(-3)), &expr);
            assert_invalid(&set(key, json!(2.5)), &expr);
            assert_invalid(&set(key, json!("640")), &expr);
            assert_invalid(&set(key, json!(3_000_000_000u64)), &expr);
        }
        assert_eq!(set("duration", json!(12)), vec![]);
        assert_eq!(set("duration", json!(-0.25)), vec![]);
        assert_invalid(&set("duration", json!("1.5")), "Media.duration");
    }

    // ---- references ----------------------------------------------------------

    #[test]
    fn single_references() {
        for key in ["subject", "encounter", "operator", "device"] {
            let expr = format!("Media.{key}");
            assert_eq!(set(key, json!({"reference": "X/1"})), vec![]);
            assert_invalid(&set(key, json!("X/1")), &expr);
            assert_invalid(&set(key, json!([{"reference": "X/1"}])), &expr);
            assert_invalid(&set(key, json!({"reference": 1})), &format!("{expr}.reference"));
            assert_invalid(&set(key, json!({"display": {"text": "x"}})), &format!("{expr}.display"));
        }
    }

    #[test]
    fn array_references() {
        for key in ["basedOn", "partOf"] {
            let expr = format!("Media.{key}");
            assert_eq!(set(key, json!([{"reference": "X/1"}, {"display": "y"}])), vec![]);
            assert_invalid(&set(key, json!({"reference": "X/1"})), &expr);
            assert_invalid(&set(key, json!([])), &expr);
            assert_invalid(
                &set(key, json!([{"reference": "X/1"}, {"reference": false}])),
                &format!("{expr}[1].reference"),
            );
            assert_invalid(&set(key, json!([{}, "X/1"])), &format!("{expr}[1]"));
        }
    }

    // ---- CodeableConcepts ----------------------------------------------------

    #[test]
    fn single_codeable_concepts() {
        for key in ["type", "modality", "view", "bodySite"] {
            let expr = format!("Media.{key}");
            assert_eq!(set(key, json!({"coding": [{"code": "x"}], "text": "t"})), vec![]);
            assert_invalid(&set(key, json!("image")), &expr);
            assert_invalid(&set(key, json!([{"text": "t"}])), &expr);
            assert_invalid(&set(key, json!({"coding": {"code": "x"}})), &format!("{expr}.coding"));
            assert_invalid(&set(key, json!({"coding": ["x"]})), &format!("{expr}.coding[0]"));
            assert_invalid(
                &set(key, json!({"coding": [{"code": "x"}, {"system": 1}]})),
                &format!("{expr}.coding[1].system"),
            );
            assert_invalid(&set(key, json!({"coding": [{"display": null}]})), &format!("{expr}.coding[0].display"));
            assert_invalid(&set(key, json!({"text": 1})), &format!("{expr}.text"));
        }
    }

    #[test]
    fn reason_code_is_array_of_codeable_concepts() {
        assert_eq!(set("reasonCode", json!([{"text": "a"}, {"text": "b"}])), vec![]);
        assert_invalid(&set("reasonCode", json!({"text": "a"})), "Media.reasonCode");
        assert_invalid(
            &set("reasonCode", json!([{"text": "a"}, {"coding": [{"code": " x"}]}])),
            "Media.reasonCode[1].coding[0].code",
        );
    }

    // ---- identifier, note, extension --------------------------------------

    #[test]
    fn identifier_checks() {
        assert_eq!(set("identifier", json!([{"system": "urn:x", "value": "1"}])), vec![]);
        assert_invalid(&set("identifier", json!({"value": "1"})), "Media.identifier");
        assert_invalid(&set("identifier", json!(["1"])), "Media.identifier[0]");
        assert_invalid(&set("identifier", json!([{"value": 1}])), "Media.identifier[0].value");
        assert_invalid(&set("identifier", json!([{"use": "primary"}])), "Media.identifier[0].use");
    }

    #[test]
    fn note_checks() {
        assert_eq!(set("note", json!([{"text": "a"}, {"text": "b"}])), vec![]);
        assert_one(
            &set("note", json!([{"text": "a"}, {"authorString": "x"}])),
            ProblemKind::Required,
            "Media.note[1].text",
        );
        assert_invalid(&set("note", json!([{"text": ["a"]}])), "Media.note[0].text");
        assert_invalid(&set("note", json!({"text": "a"})), "Media.note");
        assert_invalid(&set("note", json!(["a"])), "Media.note[0]");
        assert_invalid(&set("note", json!([{"text": "a", "time": "2023-02-29"}])), "Media.note[0].time");
        assert_invalid(
            &set("note", json!([{"text": "a", "authorReference": "Practitioner/1"}])),
            "Media.note[0].authorReference",
        );
    }

    #[test]
    fn extension_checks() {
        for key in ["extension", "modifierExtension"] {
            let expr = format!("Media.{key}");
            assert_eq!(set(key, json!([{"url": "http://x", "valueInteger": 1}])), vec![]);
            assert_one(&set(key, json!([{"valueString": "x"}])), ProblemKind::Required, &format!("{expr}[0].url"));
            assert_invalid(&set(key, json!([{"url": 1}])), &format!("{expr}[0].url"));
            assert_invalid(&set(key, json!({"url": "http://x"})), &expr);
            assert_invalid(&set(key, json!(["http://x"])), &format!("{expr}[0]"));
        }
        // Nested extension inside a datatype.
        assert_one(
            &set("subject", json!({"reference": "P/1", "extension": [{}]})),
            ProblemKind::Required,
            "Media.subject.extension[0].url",
        );
    }

    // ---- unknown elements and primitive siblings ---------------------------

    #[test]
    fn unknown_elements_are_invalid() {
        let problems = set("patient", json!({"reference": "Patient/1"}));
        assert_invalid(&problems, "Media.patient");
        assert!(problems[0].message.contains("unknown element 'patient'"));
        assert_invalid(&set("_subject", json!({})), "Media._subject");
        assert_invalid(&set("_foo", json!({})), "Media._foo");
        assert_invalid(&set("created", json!("2024")), "Media.created");
    }

    #[test]
    fn primitive_siblings_are_allowed() {
        assert_eq!(set("_status", json!({"extension": [{"url": "http://x", "valueCode": "y"}]})), vec![]);
        assert_eq!(set("_createdDateTime", json!({"id": "a"})), vec![]);
        assert_invalid(&set("_status", json!("x")), "Media.status");
        assert_one(&set("_status", json!({"extension": [{}]})), ProblemKind::Required, "Media.status.extension[0].url");
    }

    #[test]
    fn narrative_and_contained() {
        assert_invalid(&set("text", json!("hello")), "Media.text");
        let problems = set("text", json!({}));
        assert_eq!(exprs(&problems), vec!["Media.text.status", "Media.text.div"]);
        assert_invalid(&set("text", json!({"status": "final", "div": "<div/>"})), "Media.text.status");
        assert_one(&set("contained", json!([{"id": "x"}])), ProblemKind::Required, "Media.contained[0].resourceType");
        assert_invalid(&set("language", json!(3)), "Media.language");
        assert_invalid(&set("implicitRules", json!(false)), "Media.implicitRules");
    }

    // ---- primitive format functions ------------------------------------------

    #[test]
    fn date_time_formats() {
        for ok in [
            "2018",
            "1973-06",
            "1905-08-23",
            "2015-02-07T13:28:17-05:00",
            "2017-01-01T00:00:00.000Z",
            "2017-01-01T00:00:00Z",
            "2016-12-31T23:59:60Z",
            "2024-06-30T12:00:00+14:00",
            "0001-01-01",
            "9999-12-31",
        ] {
            assert!(is_valid_date_time(ok), "{ok}");
        }
        for bad in [
            "",
            "18",
            "0000",
            "2018-1",
            "2018-00",
            "2018-13",
            "2018-01-00",
            "2018-01-32",
            "2015-02-07T13:28:17", // time without timezone
            "2015-02-07T13:28Z",   // seconds required
            "2015-02-07T24:00:00Z",
            "2015-02-07T13:28:17+14:01",
            "2015-02-07T13:28:17+15:00",
            "2015-02-07 13:28:17Z",
            "2015-02-07T13:28:17.Z",
            " 2015",
            "2015 ",
            "2015-02-07\n",
        ] {
            assert!(!is_valid_date_time(bad), "{bad:?}");
        }
    }

    #[test]
    fn calendar_edge_cases() {
        // Month lengths.
        for ok in ["2023-01-31", "2023-03-31", "2023-04-30", "2023-12-31", "2023-02-28"] {
            assert!(is_valid_date_time(ok), "{ok}");
        }
        for bad in ["2023-02-30", "2023-02-31", "2023-04-31", "2023-06-31", "2023-09-31", "2023-11-31"] {
            assert!(!is_valid_date_time(bad), "{bad}");
        }
        // Leap years.
        assert!(is_valid_date_time("2024-02-29"));
        assert!(is_valid_date_time("2000-02-29"));
        assert!(is_valid_date_time("1600-02-29"));
        assert!(!is_valid_date_time("2023-02-29"));
        assert!(!is_valid_date_time("1900-02-29"));
        assert!(!is_valid_date_time("2100-02-29"));
        assert!(is_valid_instant("2024-02-29T00:00:00Z"));
        assert!(!is_valid_instant("2023-02-29T00:00:00Z"));
        assert!(!is_valid_instant("2023-02-30T12:00:00+01:00"));
        assert!(!is_valid_date_time("2023-02-30T12:00:00+01:00"));
        // Partial precision cannot be checked against a calendar.
        assert!(is_valid_date_time("2023-02"));
    }

    #[test]
    fn instant_formats() {
        for ok in ["2015-02-07T13:28:17.239+02:00", "2017-01-01T00:00:00Z", "2017-01-01T00:00:00.1-14:00"] {
            assert!(is_valid_instant(ok), "{ok}");
        }
        for bad in [
            "2017",
            "2017-01",
            "2017-01-01",
            "2017-01-01T00:00:00",
            "2017-01-01T00:00Z",
            "2017-01-01T00:00:00z",
            "2017-01-01T00:00:00+0100",
            "2017-01-01T00:00:00Z ",
        ] {
            assert!(!is_valid_instant(bad), "{bad:?}");
        }
    }

    #[test]
    fn id_format() {
        assert!(is_valid_id("a"));
        assert!(is_valid_id("A-z.0-9"));
        assert!(is_valid_id(&"x".repeat(64)));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a_b"));
        assert!(!is_valid_id("é"));
        assert!(!is_valid_id("abc\n"));
    }

    #[test]
    fn base64_edge_cases() {
        for ok in ["aGVsbG8=", "aGk=", "QQ==", "AAAA", "+/+/", "aGVsbG8gd29ybGQh"] {
            assert!(is_valid_base64(ok), "{ok}");
        }
        for bad in [
            "",           // empty
            "a",          // not a multiple of 4
            "aGk",        // missing padding
            "aGVsbG8",    // missing padding
            "====",       // padding only
            "a===",       // too much padding
            "aG=k",       // padding in the middle
            "aGk=aGk=",   // padding then more data
            "aG k",       // whitespace
            "aGk=\n",     // trailing newline
            "aGVs\nbG8=", // line break
            "aGk-",       // URL-safe alphabet
            "aGk_",       // URL-safe alphabet
            "QR==",       // non-canonical trailing bits
            "aGl=",       // non-canonical trailing bits
            "é===",       // non-ASCII
        ] {
            assert!(!is_valid_base64(bad), "{bad:?}");
        }
    }

    #[test]
    fn base64_agrees_with_strict_decoder() {
        let alphabet = ["A", "Q", "g", "w", "/", "+", "=", "a", "-", " "];
        // All strings of length 4 and 8 over a small alphabet.
        let mut candidates = vec![String::new()];
        for _ in 0..4 {
            candidates = candidates.iter().flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}"))).collect();
        }
        for s in &candidates {
            let decodes = STANDARD.decode(s).is_ok();
            assert_eq!(is_valid_base64(s), decodes, "{s:?}");
            let longer = format!("AAAA{s}");
            assert_eq!(is_valid_base64(&longer), STANDARD.decode(&longer).is_ok(), "{longer:?}");
        }
        for len in 1..40usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            assert!(is_valid_base64(&STANDARD.encode(&bytes)));
        }
    }

    #[test]
    fn echo_truncates_on_char_boundaries() {
        assert_eq!(echo("abc"), "'abc'");
        let long: String = "é".repeat(70);
        let shown = echo(&long);
        assert_eq!(shown.chars().filter(|&c| c == 'é').count(), 64);
        assert!(shown.ends_with("...'"));
    }

    #[test]
    fn unknown_long_key_is_truncated_in_expression() {
        let key = "k".repeat(200);
        let problems = set(&key, json!(1));
        assert_invalid(&problems, &format!("Media.{}", "k".repeat(64)));
    }
}
