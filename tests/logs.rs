//! Runs the real binary through a whole flow and checks its captured JSON logs hold ids and outcomes
//! but no body, token, media bytes, note text or patient id.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn logs_of_a_full_flow_carry_no_phi_or_secrets() {
    let dir = std::env::temp_dir().join(format!("ehrgw-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(&config, sandbox_config("")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ehr-gateway"))
        .args(["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("ehr-gateway serving on http://") {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("gateway did not start");
    let base = format!("http://{addr}/organizations/demo-canvas/fhir/4");
    let client = http();

    let body = create_body();
    let data = body["content"]["data"].as_str().unwrap().to_string();
    let r = client
        .post(format!("{base}/Media"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/fhir+json")
        .header("log-cdata", "app=scanner;batch=7")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let id = created["id"].as_str().unwrap();
    let (status, media) = get_json(&client, &format!("{base}/Media/{id}")).await;
    assert_eq!(status, 200);
    let content = client.get(media["content"]["url"].as_str().unwrap()).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(content.status(), 200);
    content.bytes().await.unwrap();
    assert_eq!(post_media(&client, &base, create_body()).await.status(), 201);
    let all = search_all(&client, &format!("{base}/Media?patient=Patient/{PATIENT}&_count=1")).await;
    assert_eq!(all.len(), 2, "paged through _page tokens");
    assert_eq!(get_json(&client, &format!("{base}/Media/cv.00000000-0000-4000-8000-000000000000")).await.0, 404);
    assert_eq!(post_media(&client, &base, serde_json::json!({"resourceType": "Media"})).await.status(), 400);
    assert_eq!(client.get(format!("{base}/Media/{id}")).bearer_auth("wrong-token").send().await.unwrap().status(), 401);

    // SIGINT-free stop: kill, then read everything logged.
    child.kill().unwrap();
    let _ = child.wait();
    let logs = logs.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let lines: Vec<Value> =
        logs.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect();
    let finished: Vec<&Value> = lines.iter().filter(|l| l["fields"]["message"] == "request finished").collect();
    assert!(finished.len() >= 4, "{logs}");
    // Ids and outcomes are there...
    assert!(finished.iter().all(|l| l["span"]["request_id"].is_string() && l["fields"]["status"].is_number()));
    assert!(
        lines.iter().any(|l| l["span"]["cdata"].as_str().is_some_and(|c| c.contains("scanner"))),
        "log-cdata is attached"
    );
    assert!(lines.iter().any(|l| l["fields"]["status"] == 401 && l["fields"]["code"] == "security"));
    // ...and nothing else.
    for forbidden in [
        TOKEN,
        "wrong-token",
        "Bearer",
        "access_token",
        "demo-canvas-secret",
        PATIENT,
        "Note #1",
        "Image title",
        &data,
        &data[..24],
        "canvas-client-media",
        "X-Amz-Signature",
    ] {
        assert!(!logs.contains(forbidden), "logs contain `{forbidden}`:\n{logs}");
    }
}
