//! Unit tests of the athena simulator over real HTTP: OAuth, patients, image slots, faults, hostile input; the
//! document tests live in `documents`.

use super::*;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{Method, StatusCode};
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use serde_json::{Value, json};

const FORM: &str = "application/x-www-form-urlencoded";
const PDF: &[u8] = b"%PDF-1.7\n% test document\n%%EOF\n";
const JPEG: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00card-front-bytes\xff\xd9";

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("reqwest client")
}

async fn start() -> (AthenaSimHandle, reqwest::Client) {
    (AthenaSim::start(AthenaSimConfig::default()).await.expect("sim starts"), http())
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        serializer.append_pair(k, v);
    }
    serializer.finish()
}

async fn token_request(sim: &AthenaSimHandle, http: &reqwest::Client) -> reqwest::Response {
    http.post(sim.token_url())
        .basic_auth("demo-athena-client", Some("demo-athena-secret"))
        .header(CONTENT_TYPE, FORM)
        .body(form(&[("grant_type", "client_credentials"), ("scope", MDP_SCOPE)]))
        .send()
        .await
        .expect("token request")
}

async fn token(sim: &AthenaSimHandle, http: &reqwest::Client) -> String {
    let response = token_request(sim, http).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    body["access_token"].as_str().expect("access_token").to_owned()
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn get(http: &reqwest::Client, url: &str, token: &str) -> (StatusCode, Value) {
    json_of(http.get(url).bearer_auth(token).send().await.expect("get")).await
}

async fn send_form(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: &str,
    pairs: &[(&str, &str)],
) -> (StatusCode, Value) {
    let response = http
        .request(method, url)
        .bearer_auth(token)
        .header(CONTENT_TYPE, FORM)
        .body(form(pairs))
        .send()
        .await
        .expect("write");
    json_of(response).await
}

fn docs_url(sim: &AthenaSimHandle, class: &str) -> String {
    format!("{}/patients/{DEMO_PATIENT_ID}/documents/{class}", sim.base_url())
}

mod documents;
mod listed;

#[tokio::test]
async fn token_flow_uses_basic_auth_and_limits_new_tokens_per_minute() {
    let (sim, http) = start().await;
    assert!(sim.base_url().ends_with("/v1/195900"));
    assert!(sim.token_url().ends_with("/oauth2/v1/token"));
    let good = form(&[("grant_type", "client_credentials"), ("scope", MDP_SCOPE)]);

    // Credentials in the body instead of HTTP Basic are not client authentication.
    let body = format!("{good}&client_id=demo-athena-client&client_secret=demo-athena-secret");
    let r = http.post(sim.token_url()).header(CONTENT_TYPE, FORM).body(body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .post(sim.token_url())
        .basic_auth("demo-athena-client", Some("wrong"))
        .header(CONTENT_TYPE, FORM)
        .body(good.clone())
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    // JSON body, wrong grant, missing scope.
    let r = http
        .post(sim.token_url())
        .basic_auth("demo-athena-client", Some("demo-athena-secret"))
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"grant_type":"client_credentials"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    for bad in
        [form(&[("grant_type", "password"), ("scope", MDP_SCOPE)]), form(&[("grant_type", "client_credentials")])]
    {
        let r = http
            .post(sim.token_url())
            .basic_auth("demo-athena-client", Some("demo-athena-secret"))
            .header(CONTENT_TYPE, FORM)
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    // Five new tokens in a minute are fine; the sixth is refused with 429 and athena's error body.
    for _ in 0..5 {
        let (status, body) = json_of(token_request(&sim, &http).await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], "3600");
        assert_eq!(body["scope"], MDP_SCOPE);
    }
    let r = token_request(&sim, &http).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = r.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    let (_, body) = json_of(r).await;
    assert_eq!(body["error"], "Too many requests.");
    assert!(body["detailedmessage"].is_string());
    let stats = sim.stats();
    assert_eq!(stats.token_requests, 11);
    assert_eq!(stats.tokens_refused_rate_limited, 1);
    assert_eq!(stats.requests, 0);
}

#[tokio::test]
async fn api_requires_a_valid_unexpired_bearer() {
    let (sim, http) = start().await;
    let ping = format!("{}/ping", sim.base_url());

    let (status, body) = json_of(http.get(&ping).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "Developer Inactive");
    let (status, body) = get(&http, &ping, "not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].is_string() && body["detailedmessage"].is_string());

    let token = token(&sim, &http).await;
    let (status, body) = get(&http, &ping, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"Pong": "true"}));

    // Unknown practice and paths outside the API.
    let other = format!("{}/v1/999999/ping", sim.host_url());
    let (status, body) = get(&http, &other, &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "Invalid practice.");
    let r = http.get(format!("{}/v2/ping", sim.host_url())).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.text().await.unwrap(), "Service not registered with API gateway.");

    sim.expire_all_tokens();
    let (status, _) = get(&http, &ping, &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    sim.set_token_ttl(Duration::from_millis(150));
    let short = super::tests::token(&sim, &http).await;
    assert_eq!(get(&http, &ping, &short).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(get(&http, &ping, &short).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn patient_lookup_gives_department_and_primary_insurance() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let (status, body) = get(&http, &format!("{}/patients/1234", sim.base_url()), &token).await;
    assert_eq!(status, StatusCode::OK);
    let patient = &body[0];
    assert_eq!(patient["patientid"], "1234");
    assert_eq!(patient["primarydepartmentid"], "1");
    assert_eq!(patient["patientphoto"], "true");
    let (_, body) = get(&http, &format!("{}/patients/1234?omitphotoinformation=true", sim.base_url()), &token).await;
    assert!(body[0].get("patientphoto").is_none());
    let (status, _) = get(&http, &format!("{}/patients/4321", sim.base_url()), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = get(&http, &format!("{}/patients/1234/insurances", sim.base_url()), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["totalcount"], 3);
    let primary = &body["insurances"][0];
    assert_eq!(primary["insuranceid"], DEMO_PRIMARY_INSURANCE_ID);
    assert_eq!(primary["sequencenumber"], "1");
    assert_eq!(body["insurances"][1]["insuranceid"], DEMO_SECONDARY_INSURANCE_ID);
    assert_eq!(body["insurances"][2]["insuranceid"], DEMO_TERTIARY_INSURANCE_ID);
    let (_, body) =
        get(&http, &format!("{}/patients/1234/insurances?showcancelled=true", sim.base_url()), &token).await;
    assert_eq!(body["totalcount"], 4);
}

#[tokio::test]
async fn insurance_card_image_upload_and_read() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let url = format!("{}/patients/1234/insurances/{DEMO_SECONDARY_INSURANCE_ID}/image", sim.base_url());

    let (status, _) = get(&http, &url, &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = send_form(&http, Method::POST, &url, &token, &[("departmentid", "1")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["missingfields"], json!(["image"]));
    let (status, _) = send_form(&http, Method::POST, &url, &token, &[("image", "%%%not-base64")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let encoded = BASE64.encode(JPEG);
    let (status, body) =
        send_form(&http, Method::POST, &url, &token, &[("image", &encoded), ("departmentid", "1")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"success": true}));
    let (status, body) = get(&http, &url, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"image": encoded}));
    let r = http.get(format!("{url}?jpegoutput=true")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.headers()[CONTENT_TYPE], "image/jpeg");
    assert_eq!(r.bytes().await.unwrap().as_ref(), JPEG);
    let r = http.get(&url).bearer_auth(&token).header(ACCEPT, "image/jpeg").send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), JPEG);

    // The primary insurance has a seeded card; unknown insurances are 404.
    let primary = format!("{}/patients/1234/insurances/{DEMO_PRIMARY_INSURANCE_ID}/image", sim.base_url());
    assert_eq!(get(&http, &primary, &token).await.0, StatusCode::OK);
    let unknown = format!("{}/patients/1234/insurances/1111/image", sim.base_url());
    assert_eq!(get(&http, &unknown, &token).await.0, StatusCode::NOT_FOUND);

    let (status, body) = json_of(http.delete(&url).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true);
    assert_eq!(get(&http, &url, &token).await.0, StatusCode::NOT_FOUND);

    // Photo and prescription card answer success as a string; the card has no PUT.
    let rx = format!("{}/patients/1234/insurances/prescription/card", sim.base_url());
    let (status, body) = send_form(&http, Method::POST, &rx, &token, &[("image", &encoded)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], "true");
    let (status, _) = send_form(&http, Method::PUT, &rx, &token, &[("image", &encoded)]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let dl = format!("{}/patients/1234/driverslicense", sim.base_url());
    let (status, body) = send_form(&http, Method::PUT, &dl, &token, &[("image", &encoded)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true);
}

#[tokio::test]
async fn multipart_image_upload_carries_raw_bytes() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let url = format!("{}/patients/1234/photo", sim.base_url());
    let mut body = Vec::new();
    body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"departmentid\"\r\n\r\n1\r\n");
    body.extend_from_slice(
        b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n",
    );
    body.extend_from_slice(JPEG);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let r = http
        .post(&url)
        .bearer_auth(&token)
        .header(CONTENT_TYPE, "multipart/form-data; boundary=XyZ")
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], "true");
    let (_, body) = get(&http, &url, &token).await;
    assert_eq!(body["image"], BASE64.encode(JPEG));
}

#[tokio::test]
async fn tertiary_insurance_is_active_without_a_card_image() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let (status, body) = get(&http, &format!("{}/patients/1234/insurances", sim.base_url()), &token).await;
    assert_eq!(status, StatusCode::OK);
    let insurances = body["insurances"].as_array().unwrap();
    let tertiary = insurances.iter().find(|i| i["insuranceid"] == DEMO_TERTIARY_INSURANCE_ID).expect("listed");
    assert_eq!(tertiary["sequencenumber"], "3");
    assert!(tertiary.get("cancelled").is_none());
    assert!(insurances.iter().all(|i| i["insuranceid"] != DEMO_CANCELLED_INSURANCE_ID));

    let url = format!("{}/patients/1234/insurances/{DEMO_TERTIARY_INSURANCE_ID}/image", sim.base_url());
    assert_eq!(get(&http, &url, &token).await.0, StatusCode::NOT_FOUND);
    let encoded = BASE64.encode(JPEG);
    let (status, body) = send_form(&http, Method::POST, &url, &token, &[("image", &encoded)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"success": true}));
    assert_eq!(get(&http, &url, &token).await, (StatusCode::OK, json!({"image": encoded})));
}

#[tokio::test]
async fn token_rate_limit_429_carries_retry_after() {
    let config = AthenaSimConfig { token_limit_per_minute: 1, ..AthenaSimConfig::default() };
    let sim = AthenaSim::start(config).await.expect("sim starts");
    let http = http();
    assert_eq!(token_request(&sim, &http).await.status(), StatusCode::OK);
    for _ in 0..2 {
        let r = token_request(&sim, &http).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = r.headers()[RETRY_AFTER].to_str().unwrap().parse().expect("whole seconds");
        // The only slot frees a minute after the first token, which was minted moments ago.
        assert!((50..=60).contains(&retry_after), "{retry_after}");
    }
    assert_eq!(sim.stats().tokens_refused_rate_limited, 2);
}

#[tokio::test]
async fn faults_fire_as_configured() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let ping = format!("{}/ping", sim.base_url());

    sim.inject(Fault::new(FaultAction::Status(503)).repeat(2));
    let r = http.get(&ping).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()[RETRY_AFTER], "1");
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(get(&http, &ping, &token).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&http, &ping, &token).await.0, StatusCode::OK);

    // Throttling 403 looks like Mashery's.
    sim.inject(Fault::new(FaultAction::Status(403)).with_method(Method::GET));
    let r = http.get(&ping).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.headers()["x-mashery-error-code"], "ERR_403_DEVELOPER_OVER_QPS");

    // Prefix-less faults never hit the token endpoint; prefixed ones do.
    sim.inject(Fault::new(FaultAction::Status(500)));
    assert_eq!(token_request(&sim, &http).await.status(), StatusCode::OK);
    sim.clear_faults();
    sim.inject(Fault::new(FaultAction::Status(500)).with_path_prefix("/oauth2/"));
    assert_eq!(token_request(&sim, &http).await.status(), StatusCode::INTERNAL_SERVER_ERROR);

    sim.inject(Fault::new(FaultAction::Reset));
    assert!(http.get(&ping).bearer_auth(&token).send().await.is_err());

    sim.inject(Fault::new(FaultAction::Latency(Duration::from_millis(200))));
    let started = std::time::Instant::now();
    assert_eq!(get(&http, &ping, &token).await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));

    sim.inject(Fault::new(FaultAction::Hang));
    let hung = http.get(&ping).bearer_auth(&token).timeout(Duration::from_millis(200)).send().await;
    assert!(hung.unwrap_err().is_timeout());

    let stats = sim.stats();
    assert!(stats.requests >= 7);
    assert!(stats.max_concurrent_requests >= 1);
    sim.reset_stats();
    assert_eq!(sim.stats().requests, 0);
}

#[tokio::test]
async fn hostile_input_does_not_panic() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let base = sim.base_url();
    for path in [
        "/patients/1234/documents/admin/99999999999999999999999",
        "/patients/1234/documents/nope",
        "/patients/%FF/documents/admin?departmentid=%FF",
        "/patients/1234/documents/admin?departmentid=1&offset=18446744073709551615&limit=10000",
        "/patients/1234/documents/admin/44987/pages/1",
        "/patients/1234/insurances?limit=-1",
        "/patients/1234/documents?departmentid=1&startdate=%FF&documentclass=%00,,",
        "/patients/1234/documents?departmentid=1&startdate=99/99/9999&enddate=00/00/0000",
        "/patients//",
        "/",
    ] {
        let r = http.get(format!("{base}{path}")).bearer_auth(&token).send().await.unwrap();
        assert!(r.status().is_client_error() || r.status().is_success(), "{path}: {}", r.status());
    }
    let r = http
        .post(docs_url(&sim, "admin"))
        .bearer_auth(&token)
        .header(CONTENT_TYPE, "multipart/form-data; boundary=x")
        .body("--x\r\nbroken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    sim.shutdown();
}
