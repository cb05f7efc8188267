//! Unit tests of the Canvas simulator over real HTTP: OAuth, Media create/read/search, the lost-write race, faults.

use super::*;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{Method, StatusCode};
use reqwest::header::{CONTENT_TYPE, LOCATION};
use serde_json::{Value, json};

const JPEG: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00sim-image-bytes\xff\xd9";

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().expect("reqwest client")
}

async fn start(config: CanvasSimConfig) -> (CanvasSimHandle, reqwest::Client) {
    let sim = CanvasSim::start(config).await.expect("sim starts");
    (sim, http())
}

async fn token(sim: &CanvasSimHandle, http: &reqwest::Client) -> String {
    let response = http
        .post(sim.token_url())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=demo-canvas-client&client_secret=demo-canvas-secret")
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
    body["access_token"].as_str().expect("access_token").to_owned()
}

fn media(encounter: Option<&str>, content_type: &str, data: &[u8]) -> Value {
    let mut body = json!({
        "resourceType": "Media",
        "status": "completed",
        "subject": {"reference": format!("Patient/{DEMO_PATIENT_ID}")},
        "content": {"contentType": content_type, "data": BASE64.encode(data), "title": "Image title"},
        "note": [{"text": "Note #1"}, {"text": "Note #2"}],
    });
    if let Some(encounter) = encounter {
        body["encounter"] = json!({"reference": format!("Encounter/{encounter}")});
    }
    body
}

async fn post_raw(sim: &CanvasSimHandle, http: &reqwest::Client, token: &str, body: String) -> reqwest::Response {
    http.post(format!("{}/Media", sim.fhir_base()))
        .bearer_auth(token)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .expect("create request")
}

async fn post_media(sim: &CanvasSimHandle, http: &reqwest::Client, token: &str, body: &Value) -> reqwest::Response {
    post_raw(sim, http, token, body.to_string()).await
}

/// Creates and returns the new id (asserting the 201 shape on the way).
async fn create_ok(sim: &CanvasSimHandle, http: &reqwest::Client, token: &str, body: &Value) -> String {
    let response = post_media(sim, http, token, body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()[LOCATION].to_str().expect("ascii").to_owned();
    location.rsplit('/').next().expect("id").to_owned()
}

async fn get_json(http: &reqwest::Client, url: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("get");
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn issue(outcome: &Value) -> (&str, &str) {
    let issue = &outcome["issue"][0];
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(issue["severity"], "error");
    (issue["code"].as_str().unwrap_or(""), issue["details"]["text"].as_str().unwrap_or(""))
}

fn fast() -> CanvasSimConfig {
    CanvasSimConfig { write_latency: Duration::ZERO, ..CanvasSimConfig::default() }
}

#[tokio::test]
async fn token_endpoint_is_strict_oauth() {
    let (sim, http) = start(fast()).await;
    let form = "application/x-www-form-urlencoded";
    let good = "grant_type=client_credentials&client_id=demo-canvas-client&client_secret=demo-canvas-secret";

    // No trailing slash: not a route.
    let url = sim.token_url();
    let no_slash = url.trim_end_matches('/');
    let r = http.post(no_slash).header(CONTENT_TYPE, form).body(good).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let r = http.post(&url).header(CONTENT_TYPE, "application/json").body(good).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = http
        .post(&url)
        .header(CONTENT_TYPE, form)
        .body("grant_type=password&client_id=demo-canvas-client&client_secret=demo-canvas-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body, json!({"error": "unsupported_grant_type"}));

    let r = http
        .post(&url)
        .header(CONTENT_TYPE, form)
        .body("grant_type=client_credentials&client_id=demo-canvas-client&client_secret=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body, json!({"error": "invalid_client"}));

    let r = http.post(&url).header(CONTENT_TYPE, form).body(good).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["expires_in"], 36_000);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["scope"].is_string());
    assert!(body.get("refresh_token").is_none());
    assert_eq!(body["access_token"].as_str().unwrap().len(), 30);

    // Only the POSTs to /auth/token/ count (the no-slash 404 does not).
    assert_eq!(sim.stats().token_requests, 4);
}

#[tokio::test]
async fn fumage_requires_valid_unexpired_bearer() {
    let (sim, http) = start(fast()).await;
    let read_url = format!("{}/Media/a47c7b0e-bbb4-42cd-bc4a-df259d148ea1", sim.fhir_base());

    let (status, body) = get_json(&http, &read_url, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"unknown","details":{"text":"Authentication failed"}}]})
    );
    let (status, _) = get_json(&http, &read_url, Some("not-a-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let token = token(&sim, &http).await;
    let (status, body) = get_json(&http, &read_url, Some(&token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(issue(&body), ("not-found", "Unknown Media resource 'a47c7b0e-bbb4-42cd-bc4a-df259d148ea1'"));

    sim.expire_all_tokens();
    let (status, _) = get_json(&http, &read_url, Some(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Short TTL knob: reported in expires_in and enforced.
    sim.set_token_ttl(Duration::from_millis(150));
    let short = super::tests::token(&sim, &http).await;
    let (status, _) = get_json(&http, &read_url, Some(&short)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (status, _) = get_json(&http, &read_url, Some(&short)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn create_read_and_content_round_trip() {
    let (sim, http) = start(fast()).await;
    let token = token(&sim, &http).await;

    let response = post_media(&sim, &http, &token, &media(Some(DEMO_ENCOUNTER_ID), "image/jpeg", JPEG)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(response.bytes().await.unwrap().is_empty(), "create body must be empty");
    let prefix = format!("{}/Media/", sim.fhir_base());
    assert!(location.starts_with(&prefix), "{location}");
    assert!(!location.contains("_history"));
    let id = location[prefix.len()..].to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());

    let (status, read) = get_json(&http, &location, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["resourceType"], "Media");
    assert_eq!(read["id"], id.as_str());
    assert_eq!(read["status"], "completed");
    assert_eq!(read["subject"], json!({"reference": format!("Patient/{DEMO_PATIENT_ID}"), "type": "Patient"}));
    assert_eq!(read["encounter"]["reference"], format!("Encounter/{DEMO_ENCOUNTER_ID}"));
    assert_eq!(read["operator"]["reference"], format!("Practitioner/{CANVAS_BOT_PRACTITIONER_ID}"));
    assert!(read["content"].get("data").is_none(), "reads never carry data");
    assert_eq!(read["content"]["contentType"], "image/jpeg");
    assert_eq!(read["content"]["title"], "Image title");
    let content_url = format!("{location}/files/content");
    assert_eq!(read["content"]["url"], content_url.as_str());
    assert_eq!(read["note"], json!([{"text": "Note #1"}, {"text": "Note #2"}]));
    let extensions = read["extension"].as_array().unwrap();
    assert!(extensions.contains(&json!({
        "url": NOTE_ID_EXTENSION_URL,
        "valueId": note_id_for_encounter(DEMO_ENCOUNTER_ID)
    })));
    assert!(extensions.iter().any(|e| {
        e["url"] == DEPRECATED_URL_EXTENSION_URL
            && e["valueUri"].as_str().is_some_and(|u| u.contains("X-Amz-Signature="))
    }));

    // Content needs the bearer token and redirects to S3.
    let r = http.get(&content_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http.get(&content_url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let s3_url = r.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(s3_url.contains("/canvas-client-media/"));
    assert!(s3_url.contains("X-Amz-Expires=3600"));
    assert!(!s3_url.starts_with(&sim.fhir_base()));

    // The presigned URL works without a bearer and returns the exact bytes.
    let r = http.get(&s3_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_TYPE], "image/jpeg");
    assert_eq!(r.bytes().await.unwrap().as_ref(), JPEG);

    // Tampered or missing signature: S3-style 403.
    let tampered = format!("{}0", s3_url);
    let r = http.get(&tampered).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let text = r.text().await.unwrap();
    assert!(text.contains("<Error><Code>AccessDenied</Code>"), "{text}");
    let unsigned = s3_url.split('?').next().unwrap();
    let r = http.get(unsigned).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A client following the redirect itself (reqwest drops Authorization on cross-origin redirects) gets the
    // bytes in one call.
    let following = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = following.get(&content_url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), JPEG);
    // Forwarding the bearer token to S3 is refused, as by real S3.
    let r = http.get(&s3_url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("InvalidArgument"));

    // The deprecated-url extension also carries a working presigned URL.
    let deprecated = extensions
        .iter()
        .find(|e| e["url"] == DEPRECATED_URL_EXTENSION_URL)
        .and_then(|e| e["valueUri"].as_str())
        .unwrap();
    let r = http.get(deprecated).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), JPEG);

    assert_eq!(sim.media_bytes(&id).unwrap().as_ref(), JPEG);
    let stored = sim.media_for_patient(DEMO_PATIENT_ID);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["id"], id.as_str());
    assert!(stored[0]["content"].get("data").is_none());
    let stats = sim.stats();
    assert_eq!(stats.creates_received, 1);
    assert_eq!(stats.creates_lost, 0);
}

#[tokio::test]
async fn create_validation_matches_canvas() {
    let (sim, http) = start(fast()).await;
    let token = token(&sim, &http).await;

    let check = |status: StatusCode, code: &'static str| (status, code);
    let mut cases: Vec<(&str, Value, (StatusCode, &str))> = Vec::new();

    cases.push((
        "pdf",
        media(None, "application/pdf", b"%PDF-1.4"),
        check(StatusCode::UNPROCESSABLE_ENTITY, "business-rule"),
    ));
    let mut v = media(None, "image/png", JPEG);
    v.as_object_mut().unwrap().remove("status");
    cases.push(("missing status", v, check(StatusCode::BAD_REQUEST, "invalid")));
    let mut v = media(None, "image/png", JPEG);
    v["status"] = json!("preliminary");
    cases.push(("bad status", v, check(StatusCode::UNPROCESSABLE_ENTITY, "business-rule")));
    let mut v = media(None, "image/png", JPEG);
    v.as_object_mut().unwrap().remove("subject");
    cases.push(("missing subject", v, check(StatusCode::BAD_REQUEST, "invalid")));
    let mut v = media(None, "image/png", JPEG);
    v["subject"] = json!({"reference": "Patient/ffffffffffffffffffffffffffffffff"});
    cases.push(("unknown patient", v, check(StatusCode::UNPROCESSABLE_ENTITY, "business-rule")));
    let mut v = media(None, "image/png", JPEG);
    v["content"]["data"] = json!("not base64!!");
    cases.push(("bad base64", v, check(StatusCode::BAD_REQUEST, "invalid")));
    let mut v = media(None, "image/png", JPEG);
    v["content"].as_object_mut().unwrap().remove("data");
    cases.push(("missing data", v, check(StatusCode::BAD_REQUEST, "invalid")));
    let mut v = media(None, "image/png", JPEG);
    v["note"] = json!([{"author": "x"}]);
    cases.push(("note without text", v, check(StatusCode::BAD_REQUEST, "invalid")));
    cases.push((
        "unknown encounter",
        media(Some("00000000-0000-4000-8000-000000000000"), "image/png", JPEG),
        check(StatusCode::UNPROCESSABLE_ENTITY, "business-rule"),
    ));
    let mut v = media(Some(DEMO_ENCOUNTER_ID), "image/png", JPEG);
    v["extension"] = json!([{
        "url": NOTE_ID_EXTENSION_URL,
        "valueId": note_id_for_encounter(DEMO_EXTRA_ENCOUNTER_IDS[0])
    }]);
    cases.push(("encounter/note mismatch", v, check(StatusCode::UNPROCESSABLE_ENTITY, "business-rule")));
    let mut v = media(None, "image/png", JPEG);
    v["resourceType"] = json!("Patient");
    cases.push(("wrong resourceType", v, check(StatusCode::BAD_REQUEST, "invalid")));

    for (name, body, (status, code)) in cases {
        let r = post_media(&sim, &http, &token, &body).await;
        assert_eq!(r.status(), status, "{name}");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json", "{name}");
        let outcome: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let (got_code, text) = issue(&outcome);
        assert_eq!(got_code, code, "{name}");
        if status == StatusCode::BAD_REQUEST {
            assert_eq!(text, "Bad request", "{name}");
        }
    }

    // The PDF message names the allowed types.
    let r = post_media(&sim, &http, &token, &media(None, "application/pdf", b"%PDF")).await;
    let outcome: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let (_, text) = issue(&outcome);
    assert!(text.contains("image/heic, image/jpeg, image/png"), "{text}");

    // Not JSON at all, and a non-JSON content type.
    let r = post_raw(&sim, &http, &token, "{not json".to_owned()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = http
        .post(format!("{}/Media", sim.fhir_base()))
        .bearer_auth(&token)
        .header(CONTENT_TYPE, "text/plain")
        .body(media(None, "image/png", JPEG).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // The matching note-id is accepted; nothing invalid was stored.
    let mut v = media(Some(DEMO_ENCOUNTER_ID), "image/png", JPEG);
    v["extension"] = json!([{"url": NOTE_ID_EXTENSION_URL, "valueId": note_id_for_encounter(DEMO_ENCOUNTER_ID)}]);
    v["operator"] = json!({"reference": format!("Practitioner/{DEMO_PRACTITIONER_ID}")});
    create_ok(&sim, &http, &token, &v).await;
    assert_eq!(sim.media_for_patient(DEMO_PATIENT_ID).len(), 1);
    assert_eq!(sim.stats().creates_received, 1);
}

#[tokio::test]
async fn unsupported_interactions_and_paths() {
    let (sim, http) = start(fast()).await;
    let token = token(&sim, &http).await;
    let id = create_ok(&sim, &http, &token, &media(None, "image/jpeg", JPEG)).await;
    let url = format!("{}/Media/{id}", sim.fhir_base());

    for method in [Method::DELETE, Method::PUT, Method::PATCH] {
        let r = http
            .request(method.clone(), &url)
            .bearer_auth(&token)
            .header(CONTENT_TYPE, "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        let outcome: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(issue(&outcome), ("not-supported", "Operation is not supported"));
    }
    let (status, _) = get_json(&http, &format!("{url}/_history/1"), Some(&token)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, body) = get_json(&http, &format!("{}/Nope/x/y/z", sim.fhir_base()), Some(&token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(issue(&body).0, "not-found");
    // Still stored: delete did nothing.
    assert!(sim.media_bytes(&id).is_some());
}

#[tokio::test]
async fn search_pages_with_relative_links_and_caps_count() {
    let (sim, http) = start(fast()).await;
    let token = token(&sim, &http).await;
    let mut created = Vec::new();
    for _ in 0..105 {
        created.push(create_ok(&sim, &http, &token, &media(None, "image/png", JPEG)).await);
    }

    // Follow `next` from the first page; links are relative and resolved against the fumage base.
    let mut url = format!("{}/Media?patient=Patient%2F{DEMO_PATIENT_ID}", sim.fhir_base());
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, bundle) = get_json(&http, &url, Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(bundle["type"], "searchset");
        assert_eq!(bundle["total"], 105);
        for entry in bundle["entry"].as_array().unwrap() {
            assert!(entry["resource"]["content"].get("data").is_none());
            assert!(entry["fullUrl"].as_str().unwrap().starts_with(&sim.fhir_base()));
            seen.push(entry["resource"]["id"].as_str().unwrap().to_owned());
        }
        let links = bundle["link"].as_array().unwrap();
        let link =
            |rel: &str| links.iter().find(|l| l["relation"] == rel).and_then(|l| l["url"].as_str()).map(str::to_owned);
        if pages == 0 {
            assert_eq!(
                link("self").unwrap(),
                format!("/Media?patient=Patient%2F{DEMO_PATIENT_ID}&_count=10&_offset=0")
            );
            assert_eq!(
                link("last").unwrap(),
                format!("/Media?patient=Patient%2F{DEMO_PATIENT_ID}&_count=10&_offset=100")
            );
        }
        assert!(link("first").is_some());
        pages += 1;
        match link("next") {
            Some(next) => {
                assert!(next.starts_with("/Media?"), "relative: {next}");
                url = format!("{}{next}", sim.fhir_base());
            }
            None => break,
        }
    }
    assert_eq!(pages, 11);
    assert_eq!(seen, created, "all results, in creation order");

    // _count above 100 is capped.
    let url = format!("{}/Media?patient=Patient%2F{DEMO_PATIENT_ID}&_count=500", sim.fhir_base());
    let (_, bundle) = get_json(&http, &url, Some(&token)).await;
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 100);
    let links = bundle["link"].as_array().unwrap();
    assert!(
        links
            .iter()
            .any(|l| { l["relation"] == "self" && l["url"].as_str().unwrap().ends_with("&_count=100&_offset=0") })
    );

    // _id search.
    let url = format!("{}/Media?_id={}", sim.fhir_base(), created[7]);
    let (_, bundle) = get_json(&http, &url, Some(&token)).await;
    assert_eq!(bundle["total"], 1);
    assert_eq!(bundle["entry"][0]["resource"]["id"], created[7].as_str());

    // Unsupported parameter and a bare patient id are 400 "Bad request".
    for query in [
        format!("patient=Patient%2F{DEMO_PATIENT_ID}&date=2024-01-01"),
        format!("patient={DEMO_PATIENT_ID}"),
        "_sort=-date".to_owned(),
        "_count=ten".to_owned(),
    ] {
        let url = format!("{}/Media?{query}", sim.fhir_base());
        let (status, body) = get_json(&http, &url, Some(&token)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(issue(&body), ("invalid", "Bad request"));
    }
}

#[tokio::test]
async fn overlapping_creates_on_one_encounter_lose_data() {
    let config = CanvasSimConfig { write_latency: Duration::from_millis(300), ..CanvasSimConfig::default() };
    let (sim, http) = start(config).await;
    let token = token(&sim, &http).await;
    let first = media(Some(DEMO_ENCOUNTER_ID), "image/jpeg", b"first");
    let second = media(Some(DEMO_ENCOUNTER_ID), "image/jpeg", b"second");
    let (a, b) = tokio::join!(post_media(&sim, &http, &token, &first), post_media(&sim, &http, &token, &second));
    assert_eq!(a.status(), StatusCode::CREATED);
    assert_eq!(b.status(), StatusCode::CREATED);
    let ids: Vec<String> = [&a, &b]
        .iter()
        .map(|r| r.headers()[LOCATION].to_str().unwrap().rsplit('/').next().unwrap().to_owned())
        .collect();

    let stored = sim.media_for_patient(DEMO_PATIENT_ID);
    assert_eq!(stored.len(), 1, "only the last write survives");
    assert!(ids.iter().any(|id| stored[0]["id"] == id.as_str()));
    let lost: Vec<&String> = ids.iter().filter(|id| sim.media_bytes(id).is_none()).collect();
    assert_eq!(lost.len(), 1);
    let (status, _) = get_json(&http, &format!("{}/Media/{}", sim.fhir_base(), lost[0]), Some(&token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let stats = sim.stats();
    assert_eq!(stats.creates_received, 2);
    assert_eq!(stats.creates_lost, 1);
    assert_eq!(stats.max_concurrent_creates_same_encounter, 2);

    // Sequential creates on the same encounter are both kept.
    sim.reset_stats();
    create_ok(&sim, &http, &token, &first).await;
    create_ok(&sim, &http, &token, &second).await;
    assert_eq!(sim.media_for_patient(DEMO_PATIENT_ID).len(), 3);
    assert_eq!(sim.stats().creates_lost, 0);
    assert_eq!(sim.stats().max_concurrent_creates_same_encounter, 1);
}

#[tokio::test]
async fn overlapping_creates_on_different_encounters_run_in_parallel() {
    let config = CanvasSimConfig { write_latency: Duration::from_millis(300), ..CanvasSimConfig::default() };
    let (sim, http) = start(config).await;
    let token = token(&sim, &http).await;
    let extra = demo_extra_encounters();
    let first = media(Some(DEMO_ENCOUNTER_ID), "image/jpeg", b"first");
    let second = media(Some(&extra[0]), "image/jpeg", b"second");
    let third = media(None, "image/jpeg", b"third");
    let fourth = media(None, "image/jpeg", b"fourth");
    let (a, b) = tokio::join!(post_media(&sim, &http, &token, &first), post_media(&sim, &http, &token, &second));
    assert_eq!(a.status(), StatusCode::CREATED);
    assert_eq!(b.status(), StatusCode::CREATED);
    assert_eq!(sim.media_for_patient(DEMO_PATIENT_ID).len(), 2);
    let stats = sim.stats();
    // Both writes were in flight inside the sim at once: no global lock.
    assert_eq!(stats.max_concurrent_creates, 2);
    assert_eq!(stats.max_concurrent_creates_same_encounter, 1);
    assert!(stats.max_concurrent_requests >= 2);
    assert_eq!(stats.creates_lost, 0);

    // Without encounter or note-id each create gets its own new Data Import note, so they never race.
    let (c, d) = tokio::join!(post_media(&sim, &http, &token, &third), post_media(&sim, &http, &token, &fourth));
    assert_eq!(c.status(), StatusCode::CREATED);
    assert_eq!(d.status(), StatusCode::CREATED);
    let stored = sim.media_for_patient(DEMO_PATIENT_ID);
    assert_eq!(stored.len(), 4);
    let note_of = |m: &Value| m["extension"][0]["valueId"].as_str().unwrap().to_owned();
    assert_ne!(note_of(&stored[2]), note_of(&stored[3]));
    assert!(stored[2].get("encounter").is_none());
}

#[tokio::test]
async fn faults_fire_as_configured() {
    let (sim, http) = start(fast()).await;
    let token = token(&sim, &http).await;
    let body = media(None, "image/jpeg", JPEG);

    // Status fault: Canvas-shaped body plus Retry-After on 503; applies once.
    sim.inject(Fault::new(FaultAction::Status(503)).with_method(Method::POST));
    let r = post_media(&sim, &http, &token, &body).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()[reqwest::header::RETRY_AFTER], "1");
    let outcome: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(issue(&outcome), ("exception", "Internal server error"));
    create_ok(&sim, &http, &token, &body).await;

    // Prefix-less faults never hit the token endpoint.
    sim.inject(Fault::new(FaultAction::Status(500)));
    let fresh = super::tests::token(&sim, &http).await;
    let (status, _) = get_json(&http, &format!("{}/Media", sim.fhir_base()), Some(&fresh)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    // ...but an explicit prefix does.
    sim.inject(Fault::new(FaultAction::Status(503)).with_path_prefix(TOKEN_PATH));
    let r = http
        .post(sim.token_url())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=demo-canvas-client&client_secret=demo-canvas-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Reset: no response at all.
    sim.inject(Fault::new(FaultAction::Reset).with_path_prefix("/Media"));
    let err = http.get(format!("{}/Media", sim.fhir_base())).bearer_auth(&token).send().await;
    assert!(err.is_err(), "reset must surface as a transport error");

    // Reset is a real TCP RST, not a clean close.
    sim.inject(Fault::new(FaultAction::Reset));
    let addr = sim.fhir_base().trim_start_matches("http://").to_owned();
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        b"GET /Media HTTP/1.1\r\nhost: sim\r\nauthorization: Bearer x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::io::AsyncReadExt::read(&mut raw, &mut buf).await;
    assert_eq!(read.map_err(|e| e.kind()), Err(std::io::ErrorKind::ConnectionReset));

    // Hang: the client's timeout fires.
    sim.inject(Fault::new(FaultAction::Hang));
    let err = http
        .get(format!("{}/Media", sim.fhir_base()))
        .bearer_auth(&token)
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .expect_err("hang");
    assert!(err.is_timeout());
    // Once the client gave up, the hung request no longer counts as in flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    sim.reset_stats();
    get_json(&http, &format!("{}/Media", sim.fhir_base()), Some(&token)).await;
    assert_eq!(sim.stats().max_concurrent_requests, 1);

    // Latency then normal service; repeat(2) covers two requests, clear_faults drops the rest.
    sim.inject(Fault::new(FaultAction::Latency(Duration::from_millis(300))).repeat(2));
    let started = std::time::Instant::now();
    let (status, _) = get_json(&http, &format!("{}/Media", sim.fhir_base()), Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    sim.clear_faults();
    let started = std::time::Instant::now();
    get_json(&http, &format!("{}/Media", sim.fhir_base()), Some(&token)).await;
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn shutdown_closes_listeners() {
    let (sim, http) = start(fast()).await;
    let token = token(&sim, &http).await;
    let url = format!("{}/Media", sim.fhir_base());
    let (status, _) = get_json(&http, &url, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    sim.shutdown();
    // Give the accept loop a moment to observe the stop, then a fresh client cannot connect.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let result = super::tests::http().get(&url).bearer_auth(&token).send().await;
    assert!(result.is_err());
}
