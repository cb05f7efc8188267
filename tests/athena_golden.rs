//! Records the athena golden cases (`mappings/athena/tests/*.toml`) from the athena simulator: each case runs
//! the pure mapping engine against the real simulator over loopback and writes the exchanges and the result
//! as data. It is a tool, run on purpose after a mapping or simulator change:
//!
//! `cargo test --test athena_golden -- --ignored regenerate_athena_golden_cases`
//!
//! then review the diff. The cases themselves run in every `cargo test` through `ehr-gateway mappings test`
//! (tests/mapping_tools.rs); `recorded_cases_replay_against_the_mapping` below checks a fresh recording too.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ehr_gateway::mapping::MappingSet;
use ehr_gateway::mapping::engine::{Context, Outcome, Run, UpstreamResponse};
use ehr_gateway::sim::athena::{AthenaSim, AthenaSimConfig, AthenaSimHandle, Fault, FaultAction};
use serde_json::{Value, json};

const FHIR_BASE: &str = "https://gateway.example/organizations/demo/fhir/4";
const REQUEST_ID: &str = "golden-request-1";
const XC: &str = "http://xcaliber-fhir/structureDefinition/";

/// How one case starts.
enum Start {
    Create(Value),
    Read(&'static str),
    Update(&'static str, fn(&mut Value)),
    Delete(&'static str),
    Search(Vec<(&'static str, &'static str)>, Option<u64>),
    Content(&'static str, Vec<(&'static str, &'static str)>),
}

struct Case {
    name: &'static str,
    description: &'static str,
    category: &'static str,
    start: Start,
    /// Answer the first request with this instead of asking the simulator (shapes the simulator never
    /// produces on its own: athena error bodies quoted in upstreams/athena.md; a string is a plain-text body).
    canned: Option<(u16, Value)>,
    /// A fault the simulator injects into the next API request.
    fault: Option<u16>,
}

/// A real JPEG (tests/fixtures/pixel.jpg) made distinct by a comment segment carrying `tag`, base64.
fn image(tag: &str) -> String {
    let pixel = include_bytes!("fixtures/pixel.jpg");
    let mut bytes = pixel[..2].to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(&u16::try_from(tag.len() + 2).unwrap().to_be_bytes());
    bytes.extend_from_slice(tag.as_bytes());
    bytes.extend_from_slice(&pixel[2..]);
    BASE64.encode(bytes)
}

fn image_media(extra: Value) -> Value {
    let mut m = json!({
        "resourceType": "Media", "status": "completed",
        "subject": {"reference": "Patient/1234"},
        "content": {"contentType": "image/jpeg", "data": image("golden")}
    });
    m.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    m
}

fn document_media(subclass: Option<&str>) -> Value {
    let mut m = json!({
        "resourceType": "Media", "status": "completed",
        "subject": {"reference": "Patient/1234"},
        "operator": {"reference": "Practitioner/71"},
        "createdDateTime": "2024-05-06T10:00:00Z",
        "content": {"contentType": "application/pdf", "data": BASE64.encode(b"%PDF-1.4\n% golden\n%%EOF\n"), "title": "Signed consent"},
        "extension": [
            {"url": format!("{XC}priority"), "valueInteger": 1},
            {"url": format!("{XC}internal-note"), "valueString": "scanned at the front desk"},
            {"url": format!("{XC}department-id"), "valueString": "1"}
        ]
    });
    if let Some(s) = subclass {
        m["modality"] =
            json!({"coding": [{"system": "https://docs.athenahealth.com/api/documentsubclass", "code": s}]});
    }
    m
}

fn imaging_media() -> Value {
    let mut m = document_media(None);
    let extensions = m["extension"].as_array_mut().unwrap();
    extensions.push(json!({"url": format!("{XC}external-accession-id"), "valueString": "ACC-2024-77"}));
    extensions.push(json!({"url": format!("{XC}internal-accession-id"), "valueString": "IAC-77"}));
    m
}

/// A medical record: athena's medical-record create has no autoclose, so a new one goes to review.
fn medical_record_media() -> Value {
    let mut m = document_media(Some("MEDICALRECORD_HISTORICAL"));
    m["status"] = json!("in-progress");
    m
}

fn set_note(m: &mut Value, note: impl Fn(&str) -> String) {
    for e in m["extension"].as_array_mut().into_iter().flatten() {
        if e["url"] == format!("{XC}internal-note") {
            e["valueString"] = json!(note(e["valueString"].as_str().unwrap_or_default()));
        }
    }
}

fn append_note(m: &mut Value) {
    set_note(m, |current| format!("{current}\nfaxed to the insurer"));
}

fn replace_note(m: &mut Value) {
    set_note(m, |_| "rewritten by the front desk".to_string());
}

fn new_source(m: &mut Value) {
    for e in m["extension"].as_array_mut().into_iter().flatten() {
        if e["url"] == format!("{XC}document-source") {
            e["valueString"] = json!("FAX");
        }
    }
}

fn new_image(m: &mut Value) {
    m["content"]["data"] = json!(image("replacement"));
}

fn new_priority(m: &mut Value) {
    for e in m["extension"].as_array_mut().into_iter().flatten() {
        if e["url"] == format!("{XC}priority") {
            e["valueInteger"] = json!(1);
        }
    }
    m["operator"] = json!({"reference": "Practitioner/72"});
}

fn new_file(m: &mut Value) {
    m["content"]["data"] = json!(BASE64.encode(b"%PDF-1.4\n% other\n%%EOF\n"));
}

fn case(name: &'static str, description: &'static str, category: &'static str, start: Start) -> Case {
    Case { name, description, category, start, canned: None, fault: None }
}

fn cases() -> Vec<Case> {
    use Start::*;
    let mut v = vec![
        case(
            "ic-create",
            "insurance card for a named insurance: form POST to its slot, then read back",
            "insurance-card",
            Create(image_media(json!({"partOf": [{"reference": "Coverage/5679"}]}))),
        ),
        case(
            "ic-create-primary",
            "insurance card without partOf goes to the primary insurance (looked up)",
            "insurance-card",
            Create(image_media(json!({}))),
        ),
        case("ic-read", "insurance card image read as JSON base64", "insurance-card", Read("ic.195900.1234.5678")),
        case(
            "ic-update",
            "insurance card update uploads to the same slot",
            "insurance-card",
            Update("ic.195900.1234.5679", new_image),
        ),
        case(
            "ic-search",
            "insurance cards: list insurances, ask each for its image; a full page looks ahead for a next one",
            "insurance-card",
            Search(vec![("patient", "Patient/1234"), ("_count", "1")], None),
        ),
        case(
            "ic-search-page-2",
            "insurance cards, second page by offset: insurances without a card are dropped, so the page reads on",
            "insurance-card",
            Search(vec![("patient", "Patient/1234"), ("_count", "1")], Some(1)),
        ),
        case(
            "ic-read-unknown",
            "the card of an insurance athena does not know is not found",
            "insurance-card",
            Read("ic.195900.1234.1111"),
        ),
        case(
            "ic-content",
            "insurance card bytes with jpegoutput",
            "insurance-card",
            Content("ic.195900.1234.5678", vec![]),
        ),
        case("ic-delete", "insurance card delete", "insurance-card", Delete("ic.195900.1234.5679")),
        case("rx-create", "prescription card add-or-update", "prescription-card", Create(image_media(json!({})))),
        case("rx-read", "prescription card read", "prescription-card", Read("rx.195900.1234")),
        case("rx-update", "prescription card replace", "prescription-card", Update("rx.195900.1234", new_image)),
        case(
            "rx-search",
            "prescription card search: the single slot",
            "prescription-card",
            Search(vec![("patient", "1234")], None),
        ),
        case("rx-content", "prescription card bytes", "prescription-card", Content("rx.195900.1234", vec![])),
        case("rx-delete", "prescription card delete", "prescription-card", Delete("rx.195900.1234")),
        case(
            "rx-search-empty",
            "after the delete the search page is empty (athena answers 404)",
            "prescription-card",
            Search(vec![("patient", "1234")], None),
        ),
        case("dl-create", "driver's licence upload", "driver-license", Create(image_media(json!({})))),
        case("dl-read", "driver's licence read", "driver-license", Read("dl.195900.1234")),
        case("dl-update", "driver's licence replace", "driver-license", Update("dl.195900.1234", new_image)),
        case("dl-search", "driver's licence search", "driver-license", Search(vec![("patient", "1234")], None)),
        case("dl-content", "driver's licence bytes", "driver-license", Content("dl.195900.1234", vec![])),
        case("dl-delete", "driver's licence delete", "driver-license", Delete("dl.195900.1234")),
        case("ph-read", "seeded patient photo read", "patient-photo", Read("ph.195900.1234")),
        case("ph-update", "patient photo replace", "patient-photo", Update("ph.195900.1234", new_image)),
        case("ph-search", "patient photo search", "patient-photo", Search(vec![("patient", "1234")], None)),
        case("ph-content", "patient photo bytes", "patient-photo", Content("ph.195900.1234", vec![])),
        case("ph-delete", "patient photo delete", "patient-photo", Delete("ph.195900.1234")),
        case("ph-create", "patient photo upload", "patient-photo", Create(image_media(json!({})))),
        case(
            "ad-create",
            "admin document: form POST with PDF, department from the extension, read back",
            "admin",
            Create(document_media(Some("ADMIN_CONSENT"))),
        ),
        case(
            "ad-read",
            "admin document read with pages and athena fields as extensions",
            "admin",
            Read("ad.195900.1234.44987"),
        ),
        case(
            "ad-update",
            "admin document metadata update sends only what changed",
            "admin",
            Update("ad.195900.1234.44988", new_priority),
        ),
        case(
            "ad-update-note",
            "an admin document's note grows: only the added text is sent, and that PUT is never resent",
            "admin",
            Update("ad.195900.1234.44988", append_note),
        ),
        case(
            "ad-update-note-replace",
            "an admin document's note cannot be replaced (athena appends): 422 before any call",
            "admin",
            Update("ad.195900.1234.44988", replace_note),
        ),
        case(
            "ad-update-read-only",
            "what athena keeps about a document (its source) cannot change: 422 naming it",
            "admin",
            Update("ad.195900.1234.44988", new_source),
        ),
        case(
            "cd-update-note",
            "a clinical document's note is replaced (replaceinternalnote)",
            "clinicaldocument",
            Update("cd.195900.1234.45001", replace_note),
        ),
        case(
            "ad-create-no-subclass",
            "an admin document needs a subclass: 400 required before any call",
            "admin",
            Create(document_media(None)),
        ),
        case(
            "ad-search",
            "admin documents: primary department looked up, generic list by class, offset paging",
            "admin",
            Search(vec![("patient", "1234"), ("_count", "3")], None),
        ),
        case(
            "ad-search-created",
            "created range becomes startdate/enddate in MM/DD/YYYY",
            "admin",
            Search(
                vec![
                    ("patient", "1234"),
                    ("departmentId", "1"),
                    ("created", "ge2023-11-15"),
                    ("created", "lt2023-11-17"),
                ],
                None,
            ),
        ),
        case(
            "ad-content-page",
            "a document page's bytes",
            "admin",
            Content("ad.195900.1234.44987", vec![("page", "900001")]),
        ),
        case(
            "ad-content-original",
            "the original upload",
            "admin",
            Content("ad.195900.1234.44987", vec![("original", "true")]),
        ),
        case("ad-delete", "admin document soft delete", "admin", Delete("ad.195900.1234.44989")),
        case(
            "ad-read-deleted",
            "a soft-deleted document reads as entered-in-error",
            "admin",
            Read("ad.195900.1234.44994"),
        ),
        case(
            "cd-create",
            "clinical document with the default subclass",
            "clinicaldocument",
            Create(document_media(None)),
        ),
        case("cd-read", "clinical document read", "clinicaldocument", Read("cd.195900.1234.45001")),
        case(
            "cd-update",
            "clinical document metadata update",
            "clinicaldocument",
            Update("cd.195900.1234.45002", new_priority),
        ),
        case(
            "cd-search-deleted",
            "status=entered-in-error lists deleted documents only",
            "clinicaldocument",
            Search(vec![("patient", "1234"), ("departmentId", "1"), ("status", "entered-in-error")], None),
        ),
        case(
            "cd-content",
            "clinical document page",
            "clinicaldocument",
            Content("cd.195900.1234.45001", vec![("page", "900009")]),
        ),
        case("cd-delete", "clinical document soft delete", "clinicaldocument", Delete("cd.195900.1234.45002")),
        case("ir-create", "imaging result with accession ids", "imagingresult", Create(imaging_media())),
        case("ir-read", "imaging result read", "imagingresult", Read("ir.195900.1234.45011")),
        case(
            "ir-update",
            "imaging result metadata update",
            "imagingresult",
            Update("ir.195900.1234.45011", new_priority),
        ),
        case(
            "ir-search",
            "imaging results",
            "imagingresult",
            Search(vec![("patient", "1234"), ("departmentId", "1")], None),
        ),
        case(
            "ir-content",
            "imaging result page",
            "imagingresult",
            Content("ir.195900.1234.45011", vec![("page", "900011")]),
        ),
        case("ir-delete", "imaging result soft delete", "imagingresult", Delete("ir.195900.1234.45012")),
        case(
            "mr-create",
            "medical record with a subclass: only the fields athena's medical-record create takes",
            "medicalrecord",
            Create(medical_record_media()),
        ),
        case("mr-read", "medical record read", "medicalrecord", Read("mr.195900.1234.45021")),
        case(
            "mr-update",
            "medical record metadata update",
            "medicalrecord",
            Update("mr.195900.1234.45021", new_priority),
        ),
        case(
            "mr-search",
            "medical records",
            "medicalrecord",
            Search(vec![("patient", "1234"), ("departmentId", "1")], None),
        ),
        case(
            "mr-content",
            "medical record original",
            "medicalrecord",
            Content("mr.195900.1234.45021", vec![("original", "true")]),
        ),
        case("mr-delete", "medical record soft delete", "medicalrecord", Delete("mr.195900.1234.45021")),
        // Errors, one per rule of the error table.
        case(
            "err-not-in-department",
            "a department the patient is not in",
            "admin",
            Search(vec![("patient", "1234"), ("departmentId", "2")], None),
        ),
        case(
            "err-no-insurance",
            "partOf names an insurance athena does not know for the patient",
            "insurance-card",
            Create(image_media(json!({"partOf": [{"reference": "Coverage/9999"}]}))),
        ),
        case("err-read-not-found", "a document athena does not have", "admin", Read("ad.195900.1234.99999")),
        case(
            "err-success-false",
            "deleting a deleted document: 200 with success false",
            "admin",
            Delete("ad.195900.1234.44994"),
        ),
        case(
            "err-update-file",
            "replacing a document's file is refused before any call",
            "admin",
            Update("ad.195900.1234.44990", new_file),
        ),
    ];
    let mut canned = |name, description, category, start, status, body: Value| {
        v.push(Case { name, description, category, start, canned: Some((status, body)), fault: None });
    };
    canned(
        "err-attachment-type",
        "athena's invalid attachment type (the gateway sends only PDF)",
        "admin",
        Start::Create(document_media(Some("ADMIN_CONSENT"))),
        400,
        json!({"error": "Invalid attachment type id."}),
    );
    canned(
        "err-invalid-data",
        "athena's invalid-data 400 (a date in the wrong format)",
        "admin",
        Start::Update("ad.195900.1234.44991", new_priority),
        400,
        json!({"error": "The data provided is invalid.", "detailedmessage": "Expecting format date, but value is '2024-05-06'."}),
    );
    canned(
        "err-missingfields",
        "athena's missingfields become a 400 required naming where to set them",
        "admin",
        Start::Create(document_media(Some("ADMIN_CONSENT"))),
        400,
        json!({"error": "Additional fields are required.", "detailedmessage": "The following fields are required: departmentid.", "missingfields": ["departmentid"]}),
    );
    canned(
        "err-other-400",
        "another athena 400",
        "admin",
        Start::Read("ad.195900.1234.44987"),
        400,
        json!({"error": "Invalid documentid.", "detailedmessage": "The document id must be a number."}),
    );
    canned(
        "err-practice-config",
        "athena's practice configuration 400 is the connection's problem, a 502",
        "admin",
        Start::Read("ad.195900.1234.44987"),
        400,
        json!({"error": "Practice is not configured correctly."}),
    );
    canned(
        "err-gateway-text",
        "a plain-text 404 from athena's API gateway (no JSON body) is a 502, not a missing Media",
        "admin",
        Start::Read("ad.195900.1234.44987"),
        404,
        json!("Service not registered with API gateway."),
    );
    canned(
        "err-403-business",
        "a 403 that is not throttling",
        "admin",
        Start::Read("ad.195900.1234.44987"),
        403,
        json!({"error": "Not authorized for this department."}),
    );
    for (name, description, status) in [
        ("err-401", "a 401 after the client's refresh is a credentials problem", 401u16),
        ("err-403-throttled", "athena's throttling 403 (Developer Over Qps)", 403),
        ("err-409", "a conflict", 409),
        ("err-429", "throttled", 429),
        ("err-503", "unavailable", 503),
        ("err-500", "an internal error", 500),
    ] {
        v.push(Case {
            name,
            description,
            category: "patient-photo",
            start: Start::Read("ph.195900.1234"),
            canned: None,
            fault: Some(status),
        });
    }
    v
}

async fn token(sim: &AthenaSimHandle, http: &reqwest::Client) -> String {
    let config = AthenaSimConfig::default();
    let r = http
        .post(sim.token_url())
        .basic_auth(&config.client_id, Some(&config.client_secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=athena%2Fservice%2FAthenanet.MDP.*")
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// JSON without nulls (TOML has none; the engine treats null as absent).
fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), strip_nulls(v))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().filter(|v| !v.is_null()).map(strip_nulls).collect()),
        other => other.clone(),
    }
}

async fn record(dir: &Path) -> Vec<String> {
    let set = MappingSet::load_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"))).unwrap();
    let mapping = set.get("athena").unwrap().clone();
    let sim = AthenaSim::start(AthenaSimConfig::default()).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let bearer = token(&sim, &http).await;
    std::fs::create_dir_all(dir).unwrap();
    let mut written = Vec::new();
    for case in cases() {
        let category = mapping.category(case.category).unwrap();
        let ctx = Context {
            fhir_base: FHIR_BASE.into(),
            params: [("practice".to_string(), "195900".to_string())].into(),
            request_id: Some(REQUEST_ID.into()),
            ..Context::default()
        };
        let mut request_spec = serde_json::Map::new();
        let interaction;
        let run = match &case.start {
            Start::Create(r) => {
                interaction = "create";
                request_spec.insert("resource".into(), r.clone());
                Run::create(&mapping, category, r.clone(), ctx)
            }
            Start::Read(id) => {
                interaction = "read";
                request_spec.insert("id".into(), json!(id));
                Run::read(&mapping, category, id, ctx)
            }
            Start::Update(id, change) => {
                interaction = "update";
                // The current resource comes from a read, as the front door does it.
                let mut read = Run::read(&mapping, category, id, ctx.clone()).unwrap();
                let current = loop {
                    let req = read.next_request().unwrap();
                    let resp = send(&http, &sim, &bearer, &req).await;
                    if let Some(Outcome::Resource(r)) = read.on_response(&resp).unwrap() {
                        break r;
                    }
                };
                let mut new = current.clone();
                change(&mut new);
                request_spec.insert("id".into(), json!(id));
                request_spec.insert("resource".into(), new.clone());
                request_spec.insert("current".into(), current.clone());
                Run::update(&mapping, category, id, new, &current, ctx)
            }
            Start::Delete(id) => {
                interaction = "delete";
                request_spec.insert("id".into(), json!(id));
                Run::delete(&mapping, category, id, ctx)
            }
            Start::Search(params, offset) => {
                interaction = "search";
                let mut map: BTreeMap<String, Value> = BTreeMap::new();
                for (k, v) in params {
                    match map.get_mut(*k) {
                        Some(Value::Array(a)) => a.push(json!(v)),
                        Some(one) => *one = json!([one.clone(), v]),
                        None => {
                            map.insert(k.to_string(), json!(v));
                        }
                    }
                }
                request_spec.insert("params".into(), json!(map));
                if let Some(o) = offset {
                    request_spec.insert("offset".into(), json!(o));
                }
                let fhir: Vec<(String, String)> = params
                    .iter()
                    .filter(|(k, _)| *k != "_count")
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let count = params.iter().find(|(k, _)| *k == "_count").map(|(_, v)| *v);
                Run::search(&mapping, category, &fhir, count, *offset, ctx)
            }
            Start::Content(id, params) => {
                interaction = "content";
                request_spec.insert("id".into(), json!(id));
                let p: BTreeMap<&str, &str> = params.iter().cloned().collect();
                request_spec.insert("params".into(), json!(p));
                let params: Vec<(String, String)> =
                    params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                Run::content(&mapping, category, id, &params, ctx)
            }
        };
        if let Some(status) = case.fault {
            sim.inject(Fault::new(FaultAction::Status(status)).with_path_prefix("/v1/"));
        }
        let mut exchanges = Vec::new();
        let outcome = match run {
            Err(e) => Err(e),
            Ok(mut run) => loop {
                let req = match run.next_request() {
                    Ok(r) => r,
                    Err(e) => break Err(e),
                };
                let mut resp = send(&http, &sim, &bearer, &req).await;
                if let Some((status, body)) = &case.canned
                    && exchanges.is_empty()
                {
                    // The first request of the interaction gets the quoted athena answer.
                    // A string is a plain-text body (athena's API gateway), anything else JSON.
                    let body = match body {
                        Value::String(text) => text.clone().into_bytes(),
                        other => serde_json::to_vec(other).unwrap(),
                    };
                    resp = UpstreamResponse { status: *status, headers: Default::default(), body: body.into() };
                }
                exchanges.push(exchange(&req, &resp));
                match run.on_response(&resp) {
                    Ok(Some(o)) => break Ok(o),
                    Ok(None) => {}
                    Err(e) => break Err(e),
                }
            },
        };
        sim.clear_faults();
        let result = match outcome {
            Ok(Outcome::Resource(r)) => json!({"resource": strip_nulls(&r)}),
            Ok(Outcome::Page { entries, total, next }) => {
                let mut page = json!({"entries": strip_nulls(&json!(entries))});
                if let Some(t) = total {
                    page["total"] = json!(t);
                }
                if let Some(n) = next {
                    page["next"] = json!(n.to_string());
                }
                json!({"page": page})
            }
            Ok(Outcome::Bytes) => json!({"bytes": true}),
            Ok(Outcome::Done) => json!({"done": true}),
            Ok(Outcome::Written { .. }) => panic!("{}: a write whose read-back failed", case.name),
            Err(e) => {
                let message: String = e.message().chars().take(60).collect();
                json!({"error": {"status": e.status.as_u16(), "code": e.code().as_str(), "message_contains": message, "retryable": e.retryable}})
            }
        };
        let mut doc = json!({
            "description": case.description,
            "interaction": interaction,
            "category": case.category,
            "fhir_base": FHIR_BASE,
            "connection": {"practice": "195900"},
            "request_id": REQUEST_ID,
            "request": Value::Object(request_spec),
            "result": result,
        });
        if !exchanges.is_empty() {
            doc["exchanges"] = json!(exchanges);
        }
        let text = format!(
            "# Recorded from the athena simulator by tests/athena_golden.rs; review changes before committing.\n{}",
            toml::to_string(&strip_nulls(&doc)).unwrap()
        );
        let file = dir.join(format!("{}.toml", case.name));
        std::fs::write(&file, text).unwrap();
        written.push(case.name.to_string());
    }
    written
}

async fn send(
    http: &reqwest::Client,
    sim: &AthenaSimHandle,
    bearer: &str,
    req: &ehr_gateway::mapping::engine::UpstreamRequest,
) -> UpstreamResponse {
    let mut url = format!("{}{}", sim.base_url(), req.path);
    if !req.query.is_empty() {
        url.push('?');
        url.push_str(&form_urlencoded::Serializer::new(String::new()).extend_pairs(&req.query).finish());
    }
    let mut b = http.request(req.method.clone(), &url).bearer_auth(bearer);
    for (k, v) in &req.headers {
        b = b.header(k, v);
    }
    if let Some(ct) = req.content_type {
        b = b.header("content-type", ct);
    }
    if let Some(body) = &req.body {
        b = b.body(body.to_bytes());
    }
    let r = b.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap();
    UpstreamResponse { status, headers, body }
}

fn exchange(req: &ehr_gateway::mapping::engine::UpstreamRequest, resp: &UpstreamResponse) -> Value {
    let mut expect = json!({"method": req.method.as_str(), "path": req.path});
    if !req.query.is_empty() {
        let q: BTreeMap<&str, &str> = req.query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        expect["query"] = json!(q);
    }
    let headers: BTreeMap<&str, &str> = req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if !headers.is_empty() {
        expect["headers"] = json!(headers);
    }
    if let Some(body) = req.body.as_ref().map(|b| b.to_bytes()) {
        let body = &body[..];
        expect["body"] = match req.content_type {
            Some("application/x-www-form-urlencoded") => {
                json!(form_urlencoded::parse(body).into_owned().collect::<BTreeMap<String, String>>())
            }
            _ => serde_json::from_slice(body).unwrap_or(Value::Null),
        };
    }
    let mut respond = json!({"status": resp.status});
    let kept: BTreeMap<&str, &str> = ["retry-after", "x-mashery-error-code"]
        .into_iter()
        .filter_map(|h| Some((h, resp.headers.get(h)?.to_str().ok()?)))
        .collect();
    if !kept.is_empty() {
        respond["headers"] = json!(kept);
    }
    match serde_json::from_slice::<Value>(&resp.body) {
        Ok(v) => respond["body"] = v,
        Err(_) => {
            if let Ok(text) = std::str::from_utf8(&resp.body)
                && !text.is_empty()
            {
                respond["body_text"] = json!(text);
            }
        }
    }
    json!({"expect": expect, "respond": respond})
}

#[tokio::test]
#[ignore = "a tool: rewrites mappings/athena/tests from the simulator"]
async fn regenerate_athena_golden_cases() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/athena/tests"));
    let written = record(dir).await;
    println!("wrote {} cases to {}", written.len(), dir.display());
}

#[tokio::test]
async fn recorded_cases_replay_against_the_mapping() {
    // A fresh recording into a temp folder must pass the golden runner: recording and replay agree.
    let tmp = std::env::temp_dir().join(format!("athena-golden-{}", std::process::id()));
    let mappings = tmp.join("mappings");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&mappings).unwrap();
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/athena.toml"), mappings.join("athena.toml")).unwrap();
    record(&mappings.join("athena").join("tests")).await;
    let set = MappingSet::load_dir(&mappings).unwrap();
    let reports = ehr_gateway::mapping::golden::run_dir(&set, &mappings);
    let failed: Vec<String> =
        reports.iter().filter(|r| !r.passed()).map(|r| format!("{:?}: {:?}", r.file, r.failures)).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(reports.len() >= 60, "{}", reports.len());
    let gaps = ehr_gateway::mapping::golden::coverage_gaps(&set, &reports);
    assert!(gaps.is_empty(), "{gaps:#?}");
    let _ = std::fs::remove_dir_all(&tmp);
}
