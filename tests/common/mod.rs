//! Shared helpers for the end-to-end tests: a real gateway on a loopback port with the Canvas simulator,
//! a client, and the seed's create example.
#![allow(dead_code)]

use std::time::Duration;

use ehr_gateway::config::{Config, token_hash};
use ehr_gateway::server::{self, Running};
use serde_json::Value;

pub const TOKEN: &str = "demo-token";
pub const OTHER_TOKEN: &str = "other-token";
pub const PATIENT: &str = "b8dfa97bdcdf4754bcd8197ca78ef0f0";
pub const ENCOUNTER: &str = "eae3c8a5-a129-4960-9715-fc26da30eccc";

pub fn mappings_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/mappings").to_string()
}

/// The sandbox config on an ephemeral port, plus a second organization the demo client may not use.
pub fn sandbox_config(extra_connection: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
mappings_dir = "{mappings}"
body_limit_bytes = 65536
[[clients]]
name = "demo"
token_sha256 = "{demo}"
organizations = ["demo-canvas"]
[[clients]]
name = "other"
token_sha256 = "{other}"
organizations = ["other-canvas"]
[connections.demo-canvas]
ehr = "canvas"
simulator = true
{extra_connection}
[connections.other-canvas]
ehr = "canvas"
simulator = true
[[organizations]]
id = "org-canvas-demo"
slug = "demo-canvas"
name = "Canvas demo practice"
connection = "demo-canvas"
mapping = "canvas"
[[organizations]]
id = "org-canvas-other"
slug = "other-canvas"
name = "Another Canvas practice"
connection = "other-canvas"
mapping = "canvas"
"#,
        mappings = mappings_dir(),
        demo = token_hash(TOKEN),
        other = token_hash(OTHER_TOKEN),
    )
}

pub async fn start_with(config: &str) -> Running {
    let config = Config::from_toml_str(config).unwrap_or_else(|e| panic!("{e}"));
    server::start(config).await.unwrap_or_else(|e| panic!("{e}"))
}

pub async fn start() -> Running {
    start_with(&sandbox_config("")).await
}

pub fn base(running: &Running) -> String {
    format!("http://{}/organizations/demo-canvas/fhir/4", running.addr)
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

pub fn create_body() -> Value {
    serde_json::from_str(include_str!("../fixtures/canvas-create.json")).unwrap()
}

pub fn create_body_on(encounter: &str) -> Value {
    let mut body = create_body();
    body["encounter"]["reference"] = Value::String(format!("Encounter/{encounter}"));
    body
}

pub async fn post_media(client: &reqwest::Client, base: &str, body: Value) -> reqwest::Response {
    client
        .post(format!("{base}/Media"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).bearer_auth(TOKEN).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Follows `next` links from a first search page, returning every entry's resource.
pub async fn search_all(client: &reqwest::Client, first: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut url = Some(first.to_string());
    let mut pages = 0;
    while let Some(u) = url {
        let (status, bundle) = get_json(client, &u).await;
        assert_eq!(status, 200, "{bundle}");
        out.extend(bundle["entry"].as_array().cloned().unwrap_or_default().into_iter().map(|e| e["resource"].clone()));
        url = bundle["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str().map(str::to_string));
        pages += 1;
        assert!(pages < 500, "paging does not end");
    }
    out
}

/// Copies a folder tree (mappings, cassettes) so a test can change it.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

pub const ATHENA_PATIENT: &str = "1234";

/// The athena demo connection (simulator) and organization, as config lines.
pub const ATHENA_DEMO_ORG: &str = r#"[connections.demo-athena]
ehr = "athena"
simulator = true
[[organizations]]
id = "org-athena-demo"
slug = "demo-athena"
name = "athenahealth demo practice"
connection = "demo-athena"
mapping = "athena"
"#;

/// The sandbox config with the athena demo organization (simulator) on an ephemeral port.
pub fn athena_config(extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
mappings_dir = "{mappings}"
[[clients]]
name = "demo"
token_sha256 = "{demo}"
organizations = ["demo-athena"]
{ATHENA_DEMO_ORG}{extra}
"#,
        mappings = mappings_dir(),
        demo = token_hash(TOKEN),
    )
}

pub fn athena_base(running: &Running) -> String {
    format!("http://{}/organizations/demo-athena/fhir/4", running.addr)
}

/// Sends a JSON body with the demo token: `(status, headers, body)`.
pub async fn send_json(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    content_type: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client
        .request(method, url)
        .bearer_auth(TOKEN)
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.unwrap();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// GETs raw bytes with the demo token: `(status, content type, bytes)`.
pub async fn get_bytes(client: &reqwest::Client, url: &str) -> (u16, String, Vec<u8>) {
    let r = client.get(url).bearer_auth(TOKEN).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (status, ct, r.bytes().await.unwrap().to_vec())
}
