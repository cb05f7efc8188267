//! Media at real size through the front door, over loopback against the simulators: megabytes in and
//! exact bytes back, the structural limits that keep a small body from becoming a huge tree, the EHR's
//! upload limit, the memory budget, and `$content` retried like a read. (Memory itself is measured by
//! `benches/memory.py`, not here.)

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::*;
use ehr_gateway::sim::canvas::{Fault, FaultAction};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

fn jpeg(size: usize, seed: u8) -> Vec<u8> {
    let mut bytes = vec![0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J', b'F', b'I', b'F', 0];
    bytes.extend((0..size - 13).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    bytes.extend([0xff, 0xd9]);
    bytes
}

fn canvas_media(bytes: &[u8]) -> Value {
    let mut body = create_body();
    body["content"]["data"] = Value::String(BASE64.encode(bytes));
    body
}

/// The sandbox config with room for bodies of `limit` bytes.
fn config_with_limit(limit: usize, extra_server: &str) -> String {
    sandbox_config("").replace("body_limit_bytes = 65536", &format!("body_limit_bytes = {limit}\n{extra_server}"))
}

/// Creates `media` in `category`, asserting a 201, and gives the created Media.
async fn create_in(client: &reqwest::Client, base: &str, category: &str, media: &Value) -> Value {
    let url = format!("{base}/Media?category={category}");
    let (status, _, created) = send_json(client, reqwest::Method::POST, &url, "application/fhir+json", media).await;
    assert_eq!(status, 201, "{created}");
    created
}

async fn json_of(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

fn digest(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

#[tokio::test]
async fn megabytes_go_in_and_the_same_bytes_come_back() {
    let gw = start_with(&config_with_limit(16 * MIB, "")).await;
    let client = http();
    let base = base(&gw);
    let image = jpeg(3 * MIB, 7);
    let r = post_media(&client, &base, canvas_media(&image)).await;
    assert_eq!(r.status(), 201);
    let created = json_of(r).await;
    assert!(created["content"].get("data").is_none(), "reads give a content URL, not the bytes");
    let (status, content_type, bytes) = get_bytes(&client, created["content"]["url"].as_str().unwrap()).await;
    assert_eq!((status, content_type.as_str()), (200, "image/jpeg"));
    assert_eq!(digest(&bytes), digest(&image), "exact bytes back");

    // athena: a card image (form field) and a PDF document, both beyond the payload threshold.
    let gw = start_with(
        &athena_config("").replace("mappings_dir", &format!("body_limit_bytes = {}\nmappings_dir", 16 * MIB)),
    )
    .await;
    let base = athena_base(&gw);
    let card = jpeg(2 * MIB, 9);
    let media = json!({
        "resourceType": "Media", "status": "completed",
        "subject": {"reference": format!("Patient/{ATHENA_PATIENT}")},
        "partOf": [{"reference": "Coverage/5679"}],
        "content": {"contentType": "image/jpeg", "data": BASE64.encode(&card)}
    });
    let created = create_in(&client, &base, "insurance-card", &media).await;
    assert_eq!(created["content"]["size"], card.len(), "the size comes from the stored image: {created}");
    let (_, _, bytes) = get_bytes(&client, created["content"]["url"].as_str().unwrap()).await;
    assert_eq!(digest(&bytes), digest(&card));

    let mut pdf = b"%PDF-1.4\n".to_vec();
    pdf.extend((0..2 * MIB).map(|i| (i % 251) as u8));
    pdf.extend_from_slice(b"\n%%EOF\n");
    let document = json!({
        "resourceType": "Media", "status": "in-progress",
        "subject": {"reference": format!("Patient/{ATHENA_PATIENT}")},
        "modality": {"coding": [{"system": "https://docs.athenahealth.com/api/documentsubclass", "code": "ADMIN_CONSENT"}]},
        "content": {"contentType": "application/pdf", "data": BASE64.encode(&pdf), "title": "scan"}
    });
    let created = create_in(&client, &base, "admin", &document).await;
    let url = format!("{base}/Media/{}/$content?original=true", created["id"].as_str().unwrap());
    let (status, content_type, bytes) = get_bytes(&client, &url).await;
    assert_eq!((status, content_type.as_str()), (200, "application/pdf"), "{url}: {}", String::from_utf8_lossy(&bytes));
    assert_eq!(digest(&bytes), digest(&pdf));
}

#[tokio::test]
async fn bodies_that_would_grow_a_huge_tree_are_refused_naming_the_element() {
    let gw = start_with(&config_with_limit(8 * MIB, "")).await;
    let client = http();
    let base = base(&gw);
    let sim = gw.canvas_sim("demo-canvas").unwrap();

    let mut many_notes = create_body();
    many_notes["note"] = Value::Array((0..50_000).map(|_| json!({"text": "n"})).collect());
    let mut long_note = create_body();
    long_note["note"] = json!([{"text": "a b ".repeat(600_000)}]);
    let mut deep = create_body();
    let mut nested = json!({"url": "u", "valueString": "x"});
    for _ in 0..40 {
        nested = json!({"url": "u", "extension": [nested]});
    }
    deep["extension"] = json!([nested]);
    let cases = [
        (many_notes, 413, "too-long", "Media.note", "server.limits.client.max_array_items"),
        (long_note, 413, "too-long", "Media.note[0].text", "server.limits.client.max_string_bytes"),
        (deep, 400, "invalid", "Media.extension[0].extension[0]", "server.limits.client.max_depth"),
    ];
    for (body, status, code, expression, key) in cases {
        let r = post_media(&client, &base, body).await;
        assert_eq!(r.status().as_u16(), status);
        let oo = json_of(r).await;
        let issue = &oo["issue"][0];
        assert_eq!(issue["code"], code);
        assert!(issue["expression"][0].as_str().unwrap().starts_with(expression), "{oo}");
        assert!(issue["diagnostics"].as_str().unwrap().contains(key), "{oo}");
    }
    assert_eq!(sim.stats().creates_received, 0, "nothing reached the EHR");
}

#[tokio::test]
async fn an_upload_larger_than_the_ehr_takes_is_refused_before_any_call() {
    // A copy of the mappings whose athena mapping takes at most 1 MiB.
    let dir = std::env::temp_dir().join(format!("ehrgw-upload-limit-{}", std::process::id()));
    copy_dir(std::path::Path::new(&mappings_dir()), &dir);
    let athena = std::fs::read_to_string(dir.join("athena.toml")).unwrap();
    let limited = athena.replace("max_upload_bytes = 31457280", "max_upload_bytes = 1048576");
    assert_ne!(limited, athena, "the shipped mapping declares its limit");
    std::fs::write(dir.join("athena.toml"), limited).unwrap();
    let config = athena_config("")
        .replace(&mappings_dir(), dir.to_str().unwrap())
        .replace("mappings_dir", &format!("body_limit_bytes = {}\nmappings_dir", 8 * MIB));
    let gw = start_with(&config).await;
    let sim = gw.athena_sim("demo-athena").unwrap().clone();
    let client = http();
    let media = json!({
        "resourceType": "Media", "status": "completed",
        "subject": {"reference": format!("Patient/{ATHENA_PATIENT}")},
        "content": {"contentType": "image/jpeg", "data": BASE64.encode(jpeg(MIB + 1, 3))}
    });
    sim.reset_stats();
    let url = format!("{}/Media?category=patient-photo", athena_base(&gw));
    let (status, _, oo) = send_json(&client, reqwest::Method::POST, &url, "application/fhir+json", &media).await;
    assert_eq!(status, 413, "{oo}");
    assert_eq!(oo["issue"][0]["code"], "too-long");
    assert_eq!(oo["issue"][0]["expression"][0], "Media.content.data");
    let text = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(text.contains("athenahealth takes files up to 1048576 bytes") && text.contains("1048577"), "{text}");
    assert_eq!(sim.stats().requests, 0, "refused before any upstream call");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn bodies_beyond_the_memory_budget_are_turned_away_with_retry_after() {
    // Room for one 600 KiB body at a time; a second waits 200 ms, then is turned away.
    let budget = "memory_budget_bytes = 1048576\nmemory_budget_wait_ms = 200";
    let gw = start_with(&config_with_limit(MIB, budget)).await;
    let client = http();
    let base = base(&gw);
    let sim = gw.canvas_sim("demo-canvas").unwrap();
    // The first create is held up in Canvas for a second, holding its share of the budget.
    sim.inject(Fault::new(FaultAction::Latency(Duration::from_secs(1))).with_method(http::Method::POST));
    let body = canvas_media(&jpeg(450 * 1024, 1));
    let first = tokio::spawn({
        let (client, base, body) = (client.clone(), base.clone(), body.clone());
        async move { post_media(&client, &base, body).await.status().as_u16() }
    });
    // Once Canvas has the first create, its body holds the budget (it was reserved before it was read).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sim.stats().requests == 0 {
        assert!(std::time::Instant::now() < deadline, "the first create never reached Canvas");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = post_media(&client, &base, body.clone()).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
    let oo = json_of(r).await;
    assert_eq!(oo["issue"][0]["code"], "transient");
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("memory budget"));
    assert_eq!(first.await.unwrap(), 201);
    // Once the first is done, the budget is whole again.
    assert_eq!(post_media(&client, &base, body).await.status(), 201);
    assert_eq!(sim.stats().creates_received, 2, "the turned-away create never reached Canvas");
}

#[tokio::test]
async fn content_is_retried_like_a_read_and_a_write_is_never_resent() {
    let gw = start_with(&config_with_limit(8 * MIB, "")).await;
    let client = http();
    let base = base(&gw);
    let sim = gw.canvas_sim("demo-canvas").unwrap();
    let image = jpeg(MIB, 5);
    let created = json_of(post_media(&client, &base, canvas_media(&image)).await).await;
    let url = created["content"]["url"].as_str().unwrap().to_string();
    let media_path = format!("/Media/{}", created["id"].as_str().unwrap().trim_start_matches("cv."));

    // A 503 and then a reset on Canvas's content endpoint: the gateway tries again, the client sees the bytes.
    for action in [FaultAction::Status(503), FaultAction::Reset] {
        sim.inject(Fault::new(action).with_method(http::Method::GET).with_path_prefix(format!("{media_path}/files")));
    }
    sim.reset_stats();
    let (status, _, bytes) = get_bytes(&client, &url).await;
    assert_eq!(status, 200);
    assert_eq!(digest(&bytes), digest(&image));
    assert_eq!(sim.stats().requests, 3, "two failed attempts, then the one that served the bytes");

    // A create that meets a 503 is sent once, never again.
    sim.reset_stats();
    sim.inject(Fault::new(FaultAction::Status(503)).with_method(http::Method::POST));
    let r = post_media(&client, &base, canvas_media(&jpeg(MIB, 6))).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(sim.stats().requests, 1, "the create reached Canvas once and was not resent");
}

#[tokio::test]
async fn an_ehr_answer_larger_than_the_gateway_reads_is_a_502_and_not_sent_again() {
    let config = athena_config("").replace(
        "mappings_dir",
        &format!("body_limit_bytes = {}\nmax_upstream_answer_bytes = 524288\nmappings_dir", 4 * MIB),
    );
    let gw = start_with(&config).await;
    let sim = gw.athena_sim("demo-athena").unwrap().clone();
    let client = http();
    let base = athena_base(&gw);
    let media = json!({
        "resourceType": "Media", "status": "completed",
        "subject": {"reference": format!("Patient/{ATHENA_PATIENT}")},
        "content": {"contentType": "image/jpeg", "data": BASE64.encode(jpeg(MIB, 4))}
    });
    // The upload is fine; reading the 1.3 MB image answer back is more than the gateway reads.
    let created = create_in(&client, &base, "patient-photo", &media).await;
    assert_eq!(created["issue"][0]["severity"], "warning", "stored but not read back: {created}");
    sim.reset_stats();
    let (status, oo) = get_json(&client, &format!("{base}/Media/ph.195900.{ATHENA_PATIENT}")).await;
    assert_eq!(status, 502, "{oo}");
    assert_eq!(oo["issue"][0]["code"], "too-costly");
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("server.max_upstream_answer_bytes"));
    assert_eq!(sim.stats().requests, 1, "an answer that came is not asked for again");
}

#[tokio::test]
async fn an_ehr_answer_beyond_the_upstream_limits_is_a_clear_502() {
    let config = format!("{}\n[server.limits.upstream]\nmax_array_items = 1\n", config_with_limit(MIB, ""));
    let gw = start_with(&config).await;
    let client = http();
    let base = base(&gw);
    let (status, oo) = get_json(&client, &format!("{base}/Media?patient=Patient/{PATIENT}&_count=10")).await;
    assert_eq!(status, 502, "{oo}");
    let issue = &oo["issue"][0];
    assert_eq!(issue["code"], "too-costly");
    let text = issue["diagnostics"].as_str().unwrap();
    assert!(
        text.contains("Canvas Medical answered with `$.") && text.contains("server.limits.upstream.max_array_items"),
        "{text}"
    );
}
