//! Tests of cassette redaction: secrets, identifiers by where they live, texts, dates and media.

use super::*;
use crate::cassette::*;
use crate::config::SecretRef;
use regex::Regex;
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
    redactor.redact(&mut c, &MappingFields::default()).unwrap();
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
    let decoded = String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).unwrap()).unwrap();
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
    redactor.redact(&mut c, &MappingFields::default()).unwrap();
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
    redactor.redact(&mut c, &MappingFields::default()).unwrap();
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
    redactor.redact(&mut c, &MappingFields::default()).unwrap();
    let RecordedBody::Json(body) = &c.request.body else { panic!() };
    assert_eq!(
        body["valueUri"],
        "https://storage.redacted/x.jpg?X-Amz-Expires=3600&X-Amz-Signature=redacted&AWSAccessKeyId=redacted"
    );
}

#[test]
fn ids_are_replaced_only_as_whole_tokens() {
    let redactor = Redactor::new(RedactionPolicy::default()).unwrap();
    let mut c = cassette();
    c.request.body = RecordedBody::Json(
        json!({"subject": {"reference": "Patient/12"}, "count": "5123", "path": "/patients/12/docs"}),
    );
    redactor.redact(&mut c, &MappingFields::default()).unwrap();
    let RecordedBody::Json(body) = &c.request.body else { panic!() };
    assert_eq!(body["count"], "5123", "a longer number containing the id is untouched");
    assert_eq!(body["path"], format!("/patients/{}/docs", redactor.pseudonym("12")));
}

/// What the athena mapping declares, as recording uses it.
fn athena_fields() -> MappingFields {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let set = crate::mapping::MappingSet::load_dir(&dir).unwrap();
    MappingFields::of(set.get("athena").unwrap())
}

#[test]
fn the_mapping_says_where_identifiers_text_dates_and_media_live() {
    let redactor = Redactor::new(RedactionPolicy::default()).unwrap();
    let jpeg = base64::engine::general_purpose::STANDARD.encode([0xff, 0xd8, 0xff, 0xe0, 9, 9, 9, 9, 9, 9, 9, 9]);
    let mut c = cassette();
    c.request.path = "/organizations/demo-athena/fhir/4/Media/ic.195900.1234.5678/$content".into();
    c.request.body = RecordedBody::None;
    c.upstream[0].request.path = "/patients/1234/insurances/5678/image".into();
    c.upstream[0].request.query = vec![];
    c.upstream[0].request.body = RecordedBody::Form(vec![("internalnote".into(), "call Jane about it".into())]);
    c.upstream[0].response.body = RecordedBody::Json(json!([{
        "patientid": 1234, "documentid": "44987", "providerusername": "drsmith", "departmentid": "1",
        "createddatetime": "2023-11-14T17:13:20-05:00", "documentdate": "11/14/2023", "image": jpeg
    }]));
    c.response.body = RecordedBody::Json(json!({
        "id": "ic.195900.1234.5678",
        "extension": [
            {"url": "http://xcaliber-fhir/structureDefinition/internal-note", "valueString": "call Jane about it"},
            {"url": "http://xcaliber-fhir/structureDefinition/department-id", "valueString": "1"}
        ]
    }));
    redactor.redact(&mut c, &athena_fields()).unwrap();
    let text = c.to_pretty_json();
    let token = Regex::new(r"(^|[^0-9])(1234|5678|44987)([^0-9]|$)").unwrap();
    assert!(!token.is_match(&text), "an id survived:\n{text}");
    for gone in ["Jane", "drsmith", "2023", "11/14", "CQkJ"] {
        assert!(!text.contains(gone), "`{gone}` survived:\n{text}");
    }
    let (p, i) = (redactor.pseudonym("1234"), redactor.pseudonym("5678"));
    assert_eq!(c.request.path, format!("/organizations/demo-athena/fhir/4/Media/ic.195900.{p}.{i}/$content"));
    assert_eq!(c.upstream[0].request.path, format!("/patients/{p}/insurances/{i}/image"), "the same pseudonyms");
    let RecordedBody::Json(answer) = &c.upstream[0].response.body else { panic!() };
    assert_eq!(answer[0]["patientid"], json!(p.parse::<u64>().unwrap()), "a number stays a number");
    assert_eq!(answer[0]["departmentid"], "1", "what the mapping does not name stays");
    assert_eq!(answer[0]["createddatetime"], "1900-02-13T00:00:00-05:00");
    assert_eq!(answer[0]["documentdate"], "02/13/1900");
    let image = base64::engine::general_purpose::STANDARD.decode(answer[0]["image"].as_str().unwrap()).unwrap();
    assert_eq!((&image[..3], image.len()), (&[0xff, 0xd8, 0xff][..], 12), "the file signature and size stay");
    let RecordedBody::Json(front) = &c.response.body else { panic!() };
    assert_eq!(front["extension"][0]["valueString"], "xxxx xxxx xxxxx xx", "a text extension");
    assert_eq!(front["extension"][1]["valueString"], "1");
    let RecordedBody::Form(form) = &c.upstream[0].request.body else { panic!() };
    assert_eq!(form[0].1, "xxxx xxxx xxxxx xx", "the same text, the same placeholder, in the form");
}

#[test]
fn replay_placeholders_leave_pseudonyms_alone() {
    let redactor = Redactor::new(RedactionPolicy::default()).unwrap();
    let mut response = RecordedResponse {
        status: 200,
        headers: Default::default(),
        body: RecordedBody::Json(json!({
            "subject": {"reference": "Patient/5312"}, "content": {"title": "Insurance card"},
            "createdDateTime": "2023-11-14T17:13:20-05:00"
        })),
    };
    redactor.placeholders(&mut response, &athena_fields()).unwrap();
    let RecordedBody::Json(body) = &response.body else { panic!() };
    assert_eq!(body["subject"]["reference"], "Patient/5312", "already a pseudonym");
    assert_eq!(body["content"]["title"], "xxxxxxxxx xxxx", "the mapping's constant gets its recorded placeholder");
    assert_eq!(body["createdDateTime"], "1900-02-13T00:00:00-05:00");
}

#[test]
fn presigned_urls_lose_their_host_and_undashed_ids_go_too() {
    let redactor = Redactor::new(RedactionPolicy::default()).unwrap();
    let mut c = cassette();
    let id = "48e4beba-ee9a-446c-b76e-e056a7e33bc6";
    c.request.body = RecordedBody::Json(json!({
        "id": format!("Patient/{id}"),
        "valueUri": format!("http://127.0.0.1:38633/bucket/{}.jpg?X-Amz-Signature=abc", id.replace('-', ""))
    }));
    redactor.redact(&mut c, &MappingFields::default()).unwrap();
    let RecordedBody::Json(body) = &c.request.body else { panic!() };
    let pseudonym = redactor.pseudonym(id).replace('-', "");
    assert_eq!(body["valueUri"], format!("https://storage.redacted/bucket/{pseudonym}.jpg?X-Amz-Signature=redacted"));
}
