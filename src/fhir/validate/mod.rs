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

use serde_json::{Map, Value};

use super::primitive::is_valid_code;
pub use super::primitive::{is_valid_base64, is_valid_date_time, is_valid_id, is_valid_instant};

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

/// Quotes a code, id or element name for a message, truncated to 64 chars.
fn echo(s: &str) -> String {
    if crate::json::is_marker(s) {
        // Media held outside the document: say what it is, never its marker.
        return "'<base64 media>'".to_string();
    }
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
        // A payload marker stands for base64 the parser already checked.
        Prim::Base64 if !is_valid_base64(s) && !crate::json::is_marker(s) => p.invalid(
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
mod tests;
