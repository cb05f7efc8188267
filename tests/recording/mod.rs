//! A full recording: every EHR, every category and every interaction it serves, errors included,
//! through a gateway recording cassettes from the simulators. Used to re-record `tests/replay/`, and by
//! the tests that check a fresh recording replays, holds no patient data and does not change when
//! recorded again.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ehr_gateway::commands::replay::cassette_files;
use ehr_gateway::sim::athena::UNASSIGNED_PATIENT_ID;
use ehr_gateway::sim::canvas::{Fault, FaultAction};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

const FHIR: &str = "application/fhir+json";
const XC: &str = "http://xcaliber-fhir/structureDefinition/";

/// Patient data the flows put in, which no cassette may hold.
pub const NOTE_WITH_PHI: &str = "Seen by Jane Doe, born 1984-07-21";
pub const INTERNAL_NOTE: &str = "Scanned at the front desk by Mary Major";

fn jpeg(tag: &str) -> Vec<u8> {
    let mut bytes = include_bytes!("../fixtures/pixel.jpg").to_vec();
    let eoi = bytes.len() - 2;
    bytes.splice(eoi..eoi, tag.bytes());
    bytes
}

fn pdf(tag: &str) -> Vec<u8> {
    format!("%PDF-1.4\n% {tag}\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n").into_bytes()
}

/// The config both organizations are recorded with: a fixed public base, so links are the same in every
/// recording.
fn recording_config(dir: &Path) -> String {
    sandbox_config("")
        .replace(
            "body_limit_bytes = 65536",
            &format!(
                "body_limit_bytes = 1048576\npublic_base_url = \"http://127.0.0.1:8080\"\n[record]\ndir = {:?}",
                dir.display().to_string()
            ),
        )
        .replace("organizations = [\"demo-canvas\"]", "organizations = [\"demo-canvas\", \"demo-athena\"]")
        + "\n"
        + ATHENA_DEMO_ORG
}

/// Links carry the recorded public base; the server itself listens on an ephemeral port.
fn local(url: &str, gw: &ehr_gateway::server::Running) -> String {
    url.replace("http://127.0.0.1:8080", &format!("http://{}", gw.addr))
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == "next")?["url"].as_str().map(str::to_string)
}

async fn send(client: &reqwest::Client, method: Method, url: &str, content_type: &str, body: &Value) -> (u16, Value) {
    let (status, _, value) = send_json(client, method, url, content_type, body).await;
    (status, value)
}

async fn bytes_of(client: &reqwest::Client, url: &str) -> u16 {
    get_bytes(client, url).await.0
}

/// Runs every interaction of both EHRs through a gateway recording into `dir`; returns the cassettes.
pub async fn record_all(dir: &Path) -> Vec<PathBuf> {
    let gw = start_with(&recording_config(dir)).await;
    let client = http();
    record_canvas(&gw, &client).await;
    record_athena(&gw, &client).await;
    drop(gw);
    cassette_files(dir)
}

async fn record_canvas(gw: &ehr_gateway::server::Running, client: &reqwest::Client) {
    let base = base(gw);
    let sim = gw.canvas_sim("demo-canvas").unwrap();
    let mut seed = create_body();
    seed["note"][1]["text"] = json!(NOTE_WITH_PHI);

    // create (on an encounter, and into a new note), read, content, vread, history
    let created: Value =
        serde_json::from_slice(&post_media(client, &base, seed.clone()).await.bytes().await.unwrap()).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let mut no_encounter = seed.clone();
    no_encounter.as_object_mut().unwrap().remove("encounter");
    assert_eq!(post_media(client, &base, no_encounter).await.status(), 201);
    assert_eq!(get_json(client, &format!("{base}/Media/{id}")).await.0, 200);
    assert_eq!(bytes_of(client, &format!("{base}/Media/{id}/$content")).await, 200);
    assert_eq!(get_json(client, &format!("{base}/Media/{id}/_history/1")).await.0, 200);
    assert_eq!(get_json(client, &format!("{base}/Media/{id}/_history")).await.0, 200);
    // Type history answers from the gateway's memory: served, but not recorded (a replay lacks it).
    assert_eq!(get_json(client, &format!("{base}/Media/_history")).await.0, 200);
    // searches: by patient over two pages, by id, by POST
    let (_, page1) = get_json(client, &format!("{base}/Media?patient=Patient/{PATIENT}&_count=1")).await;
    let next = next_link(&page1).expect("a second page");
    assert_eq!(get_json(client, &local(&next, gw)).await.0, 200);
    assert_eq!(get_json(client, &format!("{base}/Media?_id={id}")).await.0, 200);
    let posted = client
        .post(format!("{base}/Media/_search"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("patient={PATIENT}"))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    // errors: refused before Canvas, translated from Canvas, and after retries
    let mut pdf = seed.clone();
    pdf["content"]["contentType"] = json!("application/pdf");
    assert_eq!(post_media(client, &base, pdf).await.status(), 422);
    assert_eq!(post_media(client, &base, create_body_on("00000000-0000-4000-8000-00000000dead")).await.status(), 422);
    assert_eq!(get_json(client, &format!("{base}/Media/cv.00000000-0000-4000-8000-000000000000")).await.0, 404);
    assert_eq!(get_json(client, &format!("{base}/Media?patient=Patient/{PATIENT}&status=completed")).await.0, 400);
    sim.inject(Fault::new(FaultAction::Status(500)).with_method(http::Method::GET).repeat(3));
    assert_eq!(get_json(client, &format!("{base}/Media/{id}")).await.0, 502);
    // Connections that break without an answer are recorded as such and replay the same way.
    sim.inject(Fault::new(FaultAction::Reset).with_method(http::Method::GET).repeat(3));
    assert_eq!(get_json(client, &format!("{base}/Media/{id}")).await.0, 502);
    let delete = client.delete(format!("{base}/Media/{id}")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(delete.status(), 405);
}

fn image_media(bytes: &[u8], extra: Value) -> Value {
    let mut media = json!({
        "resourceType": "Media", "status": "completed",
        "subject": {"reference": format!("Patient/{ATHENA_PATIENT}")},
        "content": {"contentType": "image/jpeg", "data": BASE64.encode(bytes)}
    });
    if let (Some(m), Some(e)) = (media.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    media
}

fn document_media(tag: &str) -> Value {
    json!({
        "resourceType": "Media", "status": "in-progress",
        "subject": {"reference": format!("Patient/{ATHENA_PATIENT}")},
        "operator": {"reference": "Practitioner/71"},
        "createdDateTime": "2024-05-06T10:00:00Z",
        "content": {"contentType": "application/pdf", "data": BASE64.encode(pdf(tag)), "title": "Scanned form"},
        "extension": [
            {"url": format!("{XC}priority"), "valueInteger": 2},
            {"url": format!("{XC}internal-note"), "valueString": INTERNAL_NOTE}
        ]
    })
}

/// An update of an image: the Media as read, with a new image.
fn with_new_image(current: &Value, tag: &str) -> Value {
    let mut media = current.clone();
    media["content"] = json!({"contentType": "image/jpeg", "data": BASE64.encode(jpeg(tag))});
    media
}

/// A document class's subclass (athena needs one for admin and medical-record documents).
fn subclass(category: &str) -> Option<&'static str> {
    match category {
        "admin" => Some("ADMIN_CONSENT"),
        "clinicaldocument" => Some("CLINICALDOCUMENT"),
        "medicalrecord" => Some("MEDICALRECORD_HISTORICAL"),
        _ => None,
    }
}

async fn record_athena(gw: &ehr_gateway::server::Running, client: &reqwest::Client) {
    let base = athena_base(gw);
    let sim = gw.athena_sim("demo-athena").unwrap();
    let json_patch = "application/json-patch+json";

    // Insurance cards: the seeded primary card, a new card on the secondary insurance.
    let card = image_media(&jpeg("card"), json!({"partOf": [{"reference": "Coverage/5679"}]}));
    let (status, created) =
        send(client, Method::POST, &format!("{base}/Media?category=insurance-card"), FHIR, &card).await;
    assert_eq!(status, 201, "{created}");
    let card_id = created["id"].as_str().unwrap().to_string();
    let seeded = format!("ic.195900.{ATHENA_PATIENT}.5678");
    for url in [
        format!("{base}/Media/{seeded}"),
        format!("{base}/Media/{seeded}/_history/1"),
        format!("{base}/Media/{seeded}/_history"),
    ] {
        assert_eq!(get_json(client, &url).await.0, 200, "{url}");
    }
    assert_eq!(bytes_of(client, &format!("{base}/Media/{seeded}/$content")).await, 200);
    let (_, page1) =
        get_json(client, &format!("{base}/Media?patient={ATHENA_PATIENT}&category=insurance-card&_count=1")).await;
    if let Some(next) = next_link(&page1) {
        assert_eq!(get_json(client, &local(&next, gw)).await.0, 200);
    }
    let replaced = with_new_image(&created, "card-2");
    let (status, answer) = send(client, Method::PUT, &format!("{base}/Media/{card_id}"), FHIR, &replaced).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(client.delete(format!("{base}/Media/{card_id}")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);

    // The single-slot images: prescription card, driver's licence, photo.
    for category in ["prescription-card", "driver-license", "patient-photo"] {
        let url = format!("{base}/Media?category={category}");
        let (status, created) = send(client, Method::POST, &url, FHIR, &image_media(&jpeg(category), json!({}))).await;
        assert_eq!(status, 201, "{category}: {created}");
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(get_json(client, &format!("{base}/Media/{id}")).await.0, 200);
        assert_eq!(bytes_of(client, &format!("{base}/Media/{id}/$content")).await, 200);
        let search = format!("{base}/Media?patient={ATHENA_PATIENT}&category={category}");
        assert_eq!(get_json(client, &search).await.0, 200);
        let again = with_new_image(&created, &format!("{category}-2"));
        let (status, answer) = send(client, Method::PUT, &format!("{base}/Media/{id}"), FHIR, &again).await;
        assert_eq!(status, 200, "{category}: {answer}");
        assert_eq!(client.delete(format!("{base}/Media/{id}")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    }

    // Documents of every class: create, read, pages, original, update, patch, search, delete.
    for category in ["admin", "clinicaldocument", "imagingresult", "medicalrecord"] {
        let mut media = document_media(category);
        if let Some(code) = subclass(category) {
            media["modality"] =
                json!({"coding": [{"system": "https://docs.athenahealth.com/api/documentsubclass", "code": code}]});
        }
        let (status, created) =
            send(client, Method::POST, &format!("{base}/Media?category={category}"), FHIR, &media).await;
        assert_eq!(status, 201, "{category}: {created}");
        let id = created["id"].as_str().unwrap().to_string();
        let (status, read) = get_json(client, &format!("{base}/Media/{id}")).await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(bytes_of(client, &format!("{base}/Media/{id}/$content?original=true")).await, 200);
        if let Some(page) = read["contained"][0]["content"]["url"].as_str() {
            assert_eq!(bytes_of(client, &local(page, gw)).await, 200);
        }
        let mut updated = read.clone();
        if let Some(ext) = updated["extension"].as_array_mut() {
            ext.retain(|e| e["url"] != format!("{XC}priority"));
            ext.push(json!({"url": format!("{XC}priority"), "valueInteger": 1}));
        }
        let (status, answer) = send(client, Method::PUT, &format!("{base}/Media/{id}"), FHIR, &updated).await;
        assert!(status == 200 || status == 422, "{category} update: {answer}");
        let patch = json!([{"op": "replace", "path": "/operator", "value": {"reference": "Practitioner/72"}}]);
        let (status, answer) = send(client, Method::PATCH, &format!("{base}/Media/{id}"), json_patch, &patch).await;
        assert!(status == 200 || status == 422, "{category} patch: {answer}");
        let search = format!("{base}/Media?patient={ATHENA_PATIENT}&category={category}&_count=2");
        let (status, page) = get_json(client, &search).await;
        assert_eq!(status, 200, "{page}");
        if let Some(next) = next_link(&page) {
            assert_eq!(get_json(client, &local(&next, gw)).await.0, 200);
        }
        assert_eq!(client.delete(format!("{base}/Media/{id}")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
        assert_eq!(get_json(client, &format!("{base}/Media/{id}")).await.0, 200, "a soft-deleted document still reads");
    }
    let range =
        format!("{base}/Media?patient={ATHENA_PATIENT}&category=admin&created=ge2023-01-01&created=le2023-12-31");
    assert_eq!(get_json(client, &range).await.0, 200);

    // Errors: refused at the front door, translated from athena, and after retries.
    assert_eq!(get_json(client, &format!("{base}/Media?patient={ATHENA_PATIENT}&category=x-rays")).await.0, 400);
    let no_department = format!("{base}/Media?patient={UNASSIGNED_PATIENT_ID}&category=admin");
    assert_eq!(get_json(client, &no_department).await.0, 400);
    let unknown_insurance = image_media(&jpeg("x"), json!({"partOf": [{"reference": "Coverage/9999"}]}));
    let (status, _) =
        send(client, Method::POST, &format!("{base}/Media?category=insurance-card"), FHIR, &unknown_insurance).await;
    assert_eq!(status, 422);
    let mut pdf_card = image_media(&pdf("card"), json!({}));
    pdf_card["content"]["contentType"] = json!("application/pdf");
    assert_eq!(
        send(client, Method::POST, &format!("{base}/Media?category=insurance-card"), FHIR, &pdf_card).await.0,
        422
    );
    assert_eq!(get_json(client, &format!("{base}/Media/ad.999.{ATHENA_PATIENT}.44987")).await.0, 404);
    sim.inject(ehr_gateway::sim::athena::Fault::new(ehr_gateway::sim::athena::FaultAction::Status(503)).repeat(3));
    let (status, _) = get_json(client, &format!("{base}/Media/{seeded}")).await;
    assert!(status >= 500, "{status}");
}

/// The demo patient ids, names, birth dates, notes, user names and credentials, and the demo media:
/// what no cassette may hold. Ids are found as whole tokens, so a pseudonym that happens to contain
/// their digits is not a hit.
pub fn assert_clean(files: &[PathBuf]) {
    let canvas_jpeg = create_body()["content"]["data"].as_str().unwrap().to_string();
    let athena_jpeg = BASE64.encode(jpeg("card"));
    // Every demo PDF starts `%PDF-1.4\n`; a placeholder keeps only the signature, then zeros.
    let pdf_header = BASE64.encode(pdf("any"))[..12].to_string();
    assert!(!files.is_empty());
    let token = regex::Regex::new(&format!(r"(^|[^0-9A-Za-z]){ATHENA_PATIENT}([^0-9A-Za-z]|$)")).unwrap();
    let loopback_port = regex::Regex::new(r"127\.0\.0\.1:([0-9]+)").unwrap();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for forbidden in [
            TOKEN,
            "demo-canvas-secret",
            "demo-athena-secret",
            "access_token",
            "Bearer",
            PATIENT,
            &canvas_jpeg,
            &canvas_jpeg[..40],
            &athena_jpeg[..40],
            &pdf_header,
            NOTE_WITH_PHI,
            INTERNAL_NOTE,
            "Note #1",
            "Image title",
            "Jane",
            "JANE",
            "Doe",
            "Sandbox",
            "SANDBOX",
            "Mary Major",
            "1984-07-21",
            "01/15/1980",
            "6175551234",
            "provider71",
            "Seeded document",
            "Scanned form",
        ] {
            assert!(!text.contains(forbidden), "{} contains `{forbidden}`", file.display());
        }
        assert!(!token.is_match(&text), "{} holds the athena patient id {ATHENA_PATIENT}", file.display());
        // Hosts are the fixed public base or the replay host: no simulator's ephemeral port.
        for port in loopback_port.captures_iter(&text) {
            assert_eq!(&port[1], "8080", "{} names a simulator's host", file.display());
        }
        // Presigned storage URLs keep their shape but not their host or signature.
        for (i, _) in text.match_indices("X-Amz-Signature=") {
            assert!(text[i..].starts_with("X-Amz-Signature=redacted"), "{} holds a signature", file.display());
        }
    }
}
