//! Table of bad inputs: each gets the right status and OperationOutcome code, and the server keeps serving.

mod common;

use common::*;
use serde_json::{Value, json};

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    token: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// Text the diagnostics must contain (says what to fix).
    says: &'static str,
}

fn with(f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut b = create_body();
    f(&mut b);
    b.to_string().into_bytes()
}

fn fhir() -> Vec<(&'static str, &'static str)> {
    vec![("content-type", "application/fhir+json")]
}

fn cases() -> Vec<Case> {
    let media = "/organizations/demo-canvas/fhir/4/Media";
    let one = "/organizations/demo-canvas/fhir/4/Media/cv.729e5242-bad6-4bd7-905d-9716ae262971";
    let c = |name, method, path, headers, body: Vec<u8>, status, code, says| Case {
        name,
        method,
        path,
        token: Some(TOKEN),
        headers,
        body,
        status,
        code,
        says,
    };
    vec![
        c(
            "malformed JSON",
            "POST",
            media,
            fhir(),
            b"{\"resourceType\": \"Media\",".to_vec(),
            400,
            "invalid",
            "not valid JSON",
        ),
        c(
            "wrong resourceType",
            "POST",
            media,
            fhir(),
            with(|b| b["resourceType"] = json!("Patient")),
            400,
            "invalid",
            "Media",
        ),
        c(
            "PDF content type",
            "POST",
            media,
            fhir(),
            with(|b| b["content"]["contentType"] = json!("application/pdf")),
            422,
            "not-supported",
            "image/heic, image/jpeg and image/png",
        ),
        c(
            "missing subject",
            "POST",
            media,
            fhir(),
            with(|b| {
                b.as_object_mut().unwrap().remove("subject");
            }),
            400,
            "required",
            "Patient/<id>",
        ),
        c(
            "invalid base64",
            "POST",
            media,
            fhir(),
            with(|b| b["content"]["data"] = json!("not*base64!")),
            400,
            "invalid",
            "base64",
        ),
        c(
            "status outside the value set",
            "POST",
            media,
            fhir(),
            with(|b| b["status"] = json!("done")),
            400,
            "invalid",
            "completed",
        ),
        c(
            "bad dateTime",
            "POST",
            media,
            fhir(),
            with(|b| b["createdDateTime"] = json!("2023-02-30")),
            400,
            "invalid",
            "createdDateTime",
        ),
        c("oversized body", "POST", media, fhir(), vec![b' '; 70_000], 413, "too-long", "limit"),
        c(
            "unknown organization",
            "GET",
            "/organizations/nope/fhir/4/Media?patient=1",
            vec![],
            vec![],
            404,
            "not-found",
            "nope",
        ),
        Case { token: None, ..c("missing token", "GET", one, vec![], vec![], 401, "security", "Authorization") },
        Case { token: Some("guess"), ..c("unknown token", "GET", one, vec![], vec![], 401, "security", "not a known") },
        Case {
            token: Some(OTHER_TOKEN),
            ..c("other organization's token", "GET", one, vec![], vec![], 403, "forbidden", "demo-canvas")
        },
        c(
            "unsupported search parameter",
            "GET",
            "/organizations/demo-canvas/fhir/4/Media?patient=Patient/1&status=completed",
            vec![],
            vec![],
            400,
            "not-supported",
            "not supported for Canvas",
        ),
        c(
            "unknown search parameter",
            "GET",
            "/organizations/demo-canvas/fhir/4/Media?colour=red",
            vec![],
            vec![],
            400,
            "invalid",
            "colour",
        ),
        c(
            "bad _count",
            "GET",
            "/organizations/demo-canvas/fhir/4/Media?patient=1&_count=-3",
            vec![],
            vec![],
            400,
            "invalid",
            "_count",
        ),
        c("DELETE on Canvas", "DELETE", one, vec![], vec![], 405, "not-supported", "Canvas Medical"),
        c(
            "PUT on Canvas",
            "PUT",
            one,
            fhir(),
            with(|b| b["id"] = json!("cv.729e5242-bad6-4bd7-905d-9716ae262971")),
            405,
            "not-supported",
            "create-only",
        ),
        c(
            "bad JSON Patch",
            "PATCH",
            one,
            vec![("content-type", "application/json-patch+json")],
            br#"[{"op": "frobnicate", "path": "/status"}]"#.to_vec(),
            400,
            "invalid",
            "JSON Patch",
        ),
        c("bad log-cdata", "GET", one, vec![("log-cdata", "a=1;a=2")], vec![], 400, "invalid", "appears twice"),
        c(
            "bad log-cdata-format",
            "GET",
            one,
            vec![("log-cdata", "a=1"), ("log-cdata-format", "yaml")],
            vec![],
            400,
            "invalid",
            "kv",
        ),
        c(
            "unsupported media type",
            "POST",
            media,
            vec![("content-type", "application/xml")],
            b"<Media/>".to_vec(),
            415,
            "not-supported",
            "application/fhir+json",
        ),
        c(
            "id not FHIR-shaped",
            "GET",
            "/organizations/demo-canvas/fhir/4/Media/bad$id",
            vec![],
            vec![],
            400,
            "invalid",
            "Media id",
        ),
        c(
            "unknown category",
            "POST",
            "/organizations/demo-canvas/fhir/4/Media?category=xray",
            fhir(),
            with(|_| {}),
            400,
            "invalid",
            "visual-exam-finding",
        ),
        c(
            "create with id",
            "POST",
            media,
            fhir(),
            with(|b| b["id"] = json!("abc")),
            400,
            "invalid",
            "must not carry an id",
        ),
        c("unknown path", "GET", "/nothing-here", vec![], vec![], 404, "not-found", "/organizations/"),
        c(
            "empty organization",
            "GET",
            "/organizations//fhir/4/Media?patient=1",
            vec![],
            vec![],
            404,
            "not-found",
            "/organizations/",
        ),
    ]
}

#[tokio::test]
async fn every_bad_input_gets_a_precise_operation_outcome() {
    let gw = start().await;
    let client = http();
    let root = format!("http://{}", gw.addr);
    let cases = cases();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for case in &cases {
        let mut req = client.request(case.method.parse().unwrap(), format!("{root}{}", case.path));
        if let Some(t) = case.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in &case.headers {
            req = req.header(*k, *v);
        }
        let r = req.body(case.body.clone()).send().await.unwrap();
        let status = r.status().as_u16();
        let r_allow = r.headers().get("allow").map(|v| v.to_str().unwrap().to_string());
        let content_type = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
        let diagnostics: Vec<&str> =
            body["issue"].as_array().into_iter().flatten().filter_map(|i| i["diagnostics"].as_str()).collect();
        let codes: Vec<&str> =
            body["issue"].as_array().into_iter().flatten().filter_map(|i| i["code"].as_str()).collect();
        if status == 405 && r_allow.is_none() {
            failures.push(format!("{}: a 405 without an Allow header", case.name));
        }
        let ok = status == case.status
            && body["resourceType"] == "OperationOutcome"
            && content_type.as_deref() == Some("application/fhir+json")
            && codes.contains(&case.code)
            && diagnostics.iter().any(|d| d.contains(case.says));
        if !ok {
            failures.push(format!("{}: got {status} {body}", case.name));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // Still serving, and the Canvas simulator saw no write.
    let (status, _) = get_json(&client, &format!("{root}/healthz")).await;
    assert_eq!(status, 200);
    assert_eq!(gw.canvas_sim("demo-canvas").unwrap().stats().creates_received, 0);
    assert_eq!(post_media(&client, &base(&gw), create_body()).await.status(), 201);
}

#[tokio::test]
async fn validation_reports_every_problem_with_expressions() {
    let gw = start().await;
    let client = http();
    let mut body = create_body();
    body["status"] = json!("done");
    body["createdDateTime"] = json!("yesterday");
    body["content"]["data"] = json!("@@@");
    let r = post_media(&client, &base(&gw), body).await;
    assert_eq!(r.status(), 400);
    let oo: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let expressions: Vec<&str> = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["expression"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()))
        .collect();
    for e in ["Media.status", "Media.createdDateTime", "Media.content.data"] {
        assert!(expressions.contains(&e), "{expressions:?}");
    }
}
