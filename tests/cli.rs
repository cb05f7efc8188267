//! The command line as operators use it: environment overrides, all config problems at once, and the
//! standalone simulator.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ehrgw-cli-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn environment_overrides_the_config_file() {
    let config =
        temp_config("env", &sandbox_config("").replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:9\""));
    let mut child = Command::new(env!("CARGO_BIN_EXE_ehr-gateway"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("EHRGW_SERVER__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).expect("the gateway says where it serves");
    child.kill().unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_file(config);
    let addr = line.strip_prefix("ehr-gateway serving on http://").unwrap_or_else(|| panic!("{line}"));
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    assert_ne!(addr.split_whitespace().next(), Some("127.0.0.1:9"), "the environment did not override the file");
}

#[test]
fn an_invalid_config_lists_every_problem_and_exits_1() {
    let bad = sandbox_config("")
        .replace(
            "ehr = \"canvas\"\nsimulator = true\n\n[connections.other-canvas]",
            "ehr = \"cerner\"\n\n[connections.other-canvas]",
        )
        .replace("connection = \"other-canvas\"", "connection = \"nowhere\"")
        + "\n[surprise]\nx = 1\n";
    let config = temp_config("bad", &bad);
    let out = Command::new(env!("CARGO_BIN_EXE_ehr-gateway"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in ["unknown EHR `cerner`", "unknown connection `nowhere`", "unknown section `surprise`"] {
        assert!(stderr.contains(needle), "missing {needle}:\n{stderr}");
    }
}

#[tokio::test]
async fn the_canvas_simulator_runs_standalone() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ehr-gateway"))
        .args(["sim", "canvas", "--instance", "127.0.0.1:0", "--fhir", "127.0.0.1:0", "--s3", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = std::thread::spawn(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).find(|l| l.starts_with("Canvas simulator"))
    })
    .join()
    .unwrap()
    .expect("banner");
    let words: Vec<&str> = line.split_whitespace().collect();
    let (fhir, token) = (words[4], words[7]);
    let client = http();
    let unauthenticated = client.get(format!("{fhir}/Media?patient=Patient/{PATIENT}")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let token = client
        .post(token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=demo-canvas-client&client_secret=demo-canvas-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 200);
    child.kill().unwrap();
    let _ = child.wait();
}
