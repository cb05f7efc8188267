//! End to end over real HTTP on loopback: the gateway in front of the Canvas simulator.

mod common;

use common::*;
use ehr_gateway::sim::canvas::demo_extra_encounters;
use futures_util::future::join_all;
use serde_json::Value;

#[tokio::test]
async fn seed_create_read_content_and_paged_search() {
    let gw = start().await;
    let client = http();
    let base = base(&gw);

    let r = post_media(&client, &base, create_body()).await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let created: Value = r.json_body().await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("{base}/Media/{id}"));
    assert!(id.starts_with("cv.") && id.len() <= 64);

    let (status, media) = get_json(&client, &location).await;
    assert_eq!(status, 200);
    assert_eq!(media["subject"]["reference"], format!("Patient/{PATIENT}"));
    assert_eq!(media["encounter"]["reference"], format!("Encounter/{ENCOUNTER}"));
    assert_eq!(media["operator"]["reference"], "Practitioner/76428138e7644ce6b7eb426fdbbf2f39");
    assert_eq!(media["note"], serde_json::json!([{"text": "Note #1"}, {"text": "Note #2"}]));
    assert!(media["content"].get("data").is_none());
    let url = media["content"]["url"].as_str().unwrap();
    assert_eq!(url, format!("{base}/Media/{id}/$content"));
    // No Canvas or S3 URL leaks to the client.
    let text = media.to_string();
    assert!(
        !text.contains("canvas-client-media") && !text.contains("deprecated-url") && !text.contains("X-Amz"),
        "{text}"
    );

    let bytes = client.get(url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(bytes.status(), 200);
    assert_eq!(bytes.headers()["content-type"], "image/jpeg");
    let expected = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pixel.jpg")).unwrap();
    assert_eq!(bytes.bytes().await.unwrap().to_vec(), expected);
    let unauthenticated = client.get(url).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);

    for _ in 0..2 {
        assert_eq!(post_media(&client, &base, create_body()).await.status(), 201);
    }
    let first = format!("{base}/Media?patient=Patient/{PATIENT}&_count=1");
    let (_, page1) = get_json(&client, &first).await;
    assert_eq!(page1["type"], "searchset");
    assert_eq!(page1["total"], 3);
    assert_eq!(page1["entry"].as_array().unwrap().len(), 1);
    let next =
        page1["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"].as_str().unwrap();
    assert!(next.starts_with(&format!("{base}/Media?_page=")), "gateway link, not Canvas's: {next}");
    let all = search_all(&client, &first).await;
    assert_eq!(all.len(), 3);
    let ids: std::collections::HashSet<_> = all.iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 3, "pages do not repeat entries");
    assert!(ids.contains(&id));

    // Bare patient ids and `_id` searches work too.
    let (_, by_id) = get_json(&client, &format!("{base}/Media?_id={id}")).await;
    assert_eq!(by_id["total"], 1);
    let posted = client
        .post(format!("{base}/Media/_search"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("patient={PATIENT}&_count=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let posted: Value = posted.json_body().await;
    assert_eq!(posted["entry"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn vread_and_history_answer_from_what_the_gateway_knows() {
    let gw = start().await;
    let client = http();
    let base = base(&gw);
    let created: Value = post_media(&client, &base, create_body()).await.json_body().await;
    let id = created["id"].as_str().unwrap();
    let (status, v1) = get_json(&client, &format!("{base}/Media/{id}/_history/1")).await;
    assert_eq!((status, &v1["id"]), (200, &created["id"]));
    let (status, _) = get_json(&client, &format!("{base}/Media/{id}/_history/2")).await;
    assert_eq!(status, 404);
    let (status, history) = get_json(&client, &format!("{base}/Media/{id}/_history")).await;
    assert_eq!(status, 200);
    assert_eq!((history["type"].as_str(), history["total"].as_u64()), (Some("history"), Some(1)));
    let (status, type_history) = get_json(&client, &format!("{base}/Media/_history?_count=10")).await;
    assert_eq!(status, 200);
    assert_eq!(type_history["entry"][0]["resource"]["id"], created["id"]);
    let (_, later) = get_json(&client, &format!("{base}/Media/_history?_since=2999-01-01T00:00:00Z")).await;
    assert_eq!(later["total"], 0);
    let (status, cap) = get_json(&client, &format!("{base}/metadata")).await;
    assert_eq!(status, 200);
    let interactions: Vec<&str> = cap["rest"][0]["resource"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert!(interactions.contains(&"create") && interactions.contains(&"search-type"));
    assert!(!interactions.contains(&"delete") && !interactions.contains(&"update"));
}

#[tokio::test]
async fn twenty_concurrent_creates_on_one_encounter_all_land() {
    let gw = start().await;
    let client = http();
    let base = base(&gw);
    let sim = gw.canvas_sim("demo-canvas").unwrap();
    let results = join_all((0..20).map(|_| post_media(&client, &base, create_body()))).await;
    assert!(results.iter().all(|r| r.status() == 201), "{:?}", results.iter().map(|r| r.status()).collect::<Vec<_>>());
    let found = search_all(&client, &format!("{base}/Media?patient=Patient/{PATIENT}&_count=100")).await;
    assert_eq!(found.len(), 20);
    let stats = sim.stats();
    assert_eq!(stats.creates_lost, 0);
    assert_eq!(stats.max_concurrent_creates_same_encounter, 1);
}

#[tokio::test]
async fn without_serialization_canvas_loses_concurrent_writes() {
    let gw = start().await;
    gw.state.clients["demo-canvas"].set_serialize_writes(false);
    let client = http();
    let base = base(&gw);
    let sim = gw.canvas_sim("demo-canvas").unwrap();
    let results = join_all((0..10).map(|_| post_media(&client, &base, create_body()))).await;
    // Canvas acknowledges every write (a lost one is answered 201 with a read-back warning)...
    assert!(results.iter().all(|r| r.status() == 201), "{:?}", results.iter().map(|r| r.status()).collect::<Vec<_>>());
    // ...but keeps only some of them.
    let stats = sim.stats();
    assert!(stats.creates_lost > 0, "{stats:?}");
    assert!(stats.max_concurrent_creates_same_encounter > 1);
    let found = search_all(&client, &format!("{base}/Media?patient=Patient/{PATIENT}&_count=100")).await;
    assert!(found.len() < 10, "found {}", found.len());
}

#[tokio::test]
async fn creates_on_different_encounters_overlap() {
    let gw = start().await;
    let client = http();
    let base = base(&gw);
    let sim = gw.canvas_sim("demo-canvas").unwrap();
    let encounters = demo_extra_encounters();
    assert!(encounters.len() >= 4);
    let results = join_all(encounters.iter().map(|e| post_media(&client, &base, create_body_on(e)))).await;
    assert!(results.iter().all(|r| r.status() == 201));
    let stats = sim.stats();
    assert!(stats.max_concurrent_creates > 1, "different encounters ran one at a time: {stats:?}");
    assert_eq!(stats.creates_lost, 0);
}

#[tokio::test]
async fn a_thousand_cold_reads_make_one_token_request() {
    // Gateway A writes a Media; gateway B, cold, points at A's simulator as a real (non-sandbox) connection.
    let a = start().await;
    let client = http();
    let created: Value = post_media(&client, &base(&a), create_body()).await.json_body().await;
    let id = created["id"].as_str().unwrap().to_string();
    let sim = a.canvas_sim("demo-canvas").unwrap().clone();
    let secret_file = std::env::temp_dir().join(format!("ehrgw-canvas-secret-{}", std::process::id()));
    std::fs::write(&secret_file, "demo-canvas-secret\n").unwrap();
    let real = format!(
        "[connections.real]\nehr = \"canvas\"\nbase_url = \"{}\"\ntoken_url = \"{}\"\nclient_id = \"demo-canvas-client\"\nclient_secret = {{ file = \"{}\" }}\n",
        sim.fhir_base(),
        sim.token_url(),
        secret_file.display()
    );
    let config = sandbox_config(&real).replacen("connection = \"demo-canvas\"", "connection = \"real\"", 1);
    let b = start_with(&config).await;
    sim.reset_stats();

    let service = ehr_gateway::server::build_service(b.state.clone());
    let uri = format!("/organizations/demo-canvas/fhir/4/Media/{id}");
    let reads = (0..1000).map(|_| {
        let req = http::Request::get(&uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(ehr_gateway::body::empty())
            .unwrap();
        tower::ServiceExt::oneshot(service.clone(), req)
    });
    let responses = join_all(reads).await;
    assert!(responses.iter().all(|r| r.as_ref().unwrap().status() == 200));
    assert_eq!(sim.stats().token_requests, 1);

    // An expired token is refreshed once and the request still succeeds.
    sim.expire_all_tokens();
    let (status, _) = get_json(&client, &format!("{}/Media/{id}", base(&b))).await;
    assert_eq!(status, 200);
    assert_eq!(sim.stats().token_requests, 2);
    let _ = std::fs::remove_file(secret_file);
    drop(a);
}

#[tokio::test]
async fn upstream_faults_become_clear_outcomes() {
    use ehr_gateway::sim::canvas::{Fault, FaultAction};
    let gw = start().await;
    let client = http();
    let base = base(&gw);
    let sim = gw.canvas_sim("demo-canvas").unwrap();
    let created: Value = post_media(&client, &base, create_body()).await.json_body().await;
    let id = created["id"].as_str().unwrap();

    // A read survives one 503 (retried).
    sim.inject(Fault::new(FaultAction::Status(503)).with_method(http::Method::GET));
    let (status, _) = get_json(&client, &format!("{base}/Media/{id}")).await;
    assert_eq!(status, 200);

    // A create that hits a 500 is not resent and says which upstream failed.
    sim.reset_stats();
    sim.inject(Fault::new(FaultAction::Status(500)).with_method(http::Method::POST));
    let r = post_media(&client, &base, create_body()).await;
    assert_eq!(r.status(), 502);
    let oo: Value = r.json_body().await;
    assert_eq!(oo["issue"][0]["code"], "exception");
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("Canvas Medical"));
    assert_eq!(sim.stats().creates_received, 0);

    // Unknown Canvas ids are 404 with the gateway id in the text.
    let (status, oo) = get_json(&client, &format!("{base}/Media/cv.00000000-0000-4000-8000-000000000000")).await;
    assert_eq!(status, 404);
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("cv.00000000-0000-4000-8000-000000000000"));
}

#[tokio::test]
async fn a_create_whose_read_back_fails_is_still_a_201_with_its_location() {
    use ehr_gateway::sim::canvas::{Fault, FaultAction};
    let gw = start().await;
    let client = http();
    let base = base(&gw);
    let sim = gw.canvas_sim("demo-canvas").unwrap();
    sim.inject(
        Fault::new(FaultAction::Status(503)).with_method(http::Method::GET).with_path_prefix("/Media/").repeat(3),
    );
    let r = post_media(&client, &base, create_body()).await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let oo: Value = r.json_body().await;
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["severity"], "warning");
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("Do not send the write again"));
    assert_eq!(sim.stats().creates_received, 1);
    let (status, media) = get_json(&client, &location).await;
    assert_eq!(status, 200, "the Location is real: {media}");
}

#[tokio::test]
async fn a_forged_page_token_cannot_widen_the_search() {
    use base64::Engine as _;
    let gw = start().await;
    let client = http();
    let base = base(&gw);
    let forge = |link: &str| {
        let token = serde_json::json!({"c": "visual-exam-finding", "l": link}).to_string();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
    };
    for link in [
        "/Media?_count=100000",
        "/Media?patient=Patient%2Fx&_revinclude=*",
        "/Patient?_count=10",
        "//evil.example/Media?patient=x",
        "http://evil.example/Media?patient=x",
    ] {
        let (status, oo) = get_json(&client, &format!("{base}/Media?_page={}", forge(link))).await;
        assert_eq!(status, 400, "{link}: {oo}");
        assert_eq!(oo["issue"][0]["expression"][0], "_page", "{link}");
    }
    let (status, _) = get_json(&client, &format!("{base}/Media?_page=not-base64!")).await;
    assert_eq!(status, 400);
    // An honest one still works, with the page size capped.
    let (status, page) = get_json(
        &client,
        &format!("{base}/Media?_page={}", forge(&format!("/Media?patient=Patient%2F{PATIENT}&_count=500&_offset=0"))),
    )
    .await;
    assert_eq!(status, 200, "{page}");
}

/// Small helper so tests read a JSON body in one call.
trait JsonBody {
    async fn json_body(self) -> Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> Value {
        let bytes = self.bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    }
}
