//! Unit tests of the Media structure checks: every element, datatype and message rule.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::*;

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
        assert_invalid(&set(key, json!([{"reference": "X/1"}, {"reference": false}])), &format!("{expr}[1].reference"));
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
