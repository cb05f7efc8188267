//! Replay tests: the cassettes in tests/replay (recorded from the simulators, redacted) replay through
//! the current mappings; a mapping change shows up as a diff naming the field; `--accept` rewrites only
//! what changed; an unmatched upstream request names its nearest recorded candidates.
//!
//! Re-record the cassettes with:
//!     cargo test --test replay -- --ignored rerecord_cassettes_from_the_simulators

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use ehr_gateway::commands::replay::{cassette_files, replay_dir};
use ehr_gateway::sim::canvas::{Fault, FaultAction};
use serde_json::{Value, json};

fn cassettes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/replay")
}

fn scratch(name: &str, from: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ehrgw-replay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(from, &dir);
    dir
}

const NOTE_WITH_PHI: &str = "Seen by Jane Doe, born 1984-07-21";

/// Runs every Canvas interaction (errors included) through a gateway recording into `dir`.
async fn record_flows(dir: &Path) {
    let config = sandbox_config("").replace(
        "body_limit_bytes = 65536",
        &format!(
            "body_limit_bytes = 65536\npublic_base_url = \"http://127.0.0.1:8080\"\n[record]\ndir = {:?}",
            dir.display().to_string()
        ),
    );
    let gw = start_with(&config).await;
    let client = http();
    let base = base(&gw);
    let sim = gw.canvas_sim("demo-canvas").unwrap();
    let mut seed = create_body();
    seed["note"][1]["text"] = json!(NOTE_WITH_PHI);

    // create, read, content, vread, history
    let created: Value =
        serde_json::from_slice(&post_media(&client, &base, seed.clone()).await.bytes().await.unwrap()).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let mut no_encounter = seed.clone();
    no_encounter.as_object_mut().unwrap().remove("encounter");
    assert_eq!(post_media(&client, &base, no_encounter).await.status(), 201);
    assert_eq!(get_json(&client, &format!("{base}/Media/{id}")).await.0, 200);
    let content = client.get(format!("{base}/Media/{id}/$content")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(content.status(), 200);
    content.bytes().await.unwrap();
    assert_eq!(get_json(&client, &format!("{base}/Media/{id}/_history/1")).await.0, 200);
    assert_eq!(get_json(&client, &format!("{base}/Media/{id}/_history")).await.0, 200);
    // Type history answers from the gateway's memory: served, but not recorded (a replay lacks it).
    assert_eq!(get_json(&client, &format!("{base}/Media/_history")).await.0, 200);
    // searches: by patient over two pages, by id, by POST
    let (_, page1) = get_json(&client, &format!("{base}/Media?patient=Patient/{PATIENT}&_count=1")).await;
    let next = page1["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    // Links carry the recorded public base; the server itself listens on an ephemeral port.
    let next = next.replace("http://127.0.0.1:8080", &format!("http://{}", gw.addr));
    assert_eq!(get_json(&client, &next).await.0, 200);
    assert_eq!(get_json(&client, &format!("{base}/Media?_id={id}")).await.0, 200);
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
    assert_eq!(post_media(&client, &base, pdf).await.status(), 422);
    assert_eq!(post_media(&client, &base, create_body_on("00000000-0000-4000-8000-00000000dead")).await.status(), 422);
    assert_eq!(get_json(&client, &format!("{base}/Media/cv.00000000-0000-4000-8000-000000000000")).await.0, 404);
    assert_eq!(get_json(&client, &format!("{base}/Media?patient=Patient/{PATIENT}&status=completed")).await.0, 400);
    sim.inject(Fault::new(FaultAction::Status(500)).with_method(http::Method::GET).repeat(3));
    assert_eq!(get_json(&client, &format!("{base}/Media/{id}")).await.0, 502);
    // Connections that break without an answer are recorded as such and replay the same way.
    sim.inject(Fault::new(FaultAction::Reset).with_method(http::Method::GET).repeat(3));
    assert_eq!(get_json(&client, &format!("{base}/Media/{id}")).await.0, 502);
    let delete = client.delete(format!("{base}/Media/{id}")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(delete.status(), 405);
    drop(gw);
    let files = cassette_files(dir);
    assert!(files.len() >= 15);
    assert!(!files.iter().any(|f| f.to_string_lossy().ends_with("-history-type.json")), "type history was recorded");
}

#[tokio::test]
#[ignore = "re-records tests/replay from the simulators; run on purpose"]
async fn rerecord_cassettes_from_the_simulators() {
    let dir = cassettes();
    for file in cassette_files(&dir) {
        std::fs::remove_file(file).unwrap();
    }
    record_flows(&dir).await;
}

/// What no cassette may contain: the demo credentials, patient id, media bytes and the PHI in notes.
fn assert_clean(files: &[PathBuf]) {
    let jpeg = create_body()["content"]["data"].as_str().unwrap().to_string();
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for forbidden in [
            TOKEN,
            "demo-canvas-secret",
            "access_token",
            "Bearer",
            PATIENT,
            &jpeg,
            &jpeg[..40],
            "Note #1",
            "Image title",
            "Jane Doe",
            "1984-07-21",
        ] {
            assert!(!text.contains(forbidden), "{} contains `{forbidden}`", file.display());
        }
        // Presigned storage URLs keep their shape but not their signature.
        for (i, _) in text.match_indices("X-Amz-Signature=") {
            assert!(text[i..].starts_with("X-Amz-Signature=redacted"), "{} holds a signature", file.display());
        }
    }
}

#[tokio::test]
async fn a_fresh_recording_is_redacted_and_replays() {
    let dir = std::env::temp_dir().join(format!("ehrgw-record-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    record_flows(&dir).await;
    let files = cassette_files(&dir);
    assert_clean(&files);
    let mut out = Vec::new();
    let reports = replay_dir(&dir, Path::new(&mappings_dir()), false, &mut out).await;
    assert!(reports.iter().all(|r| r.problems.is_empty()), "{}", String::from_utf8_lossy(&out));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn every_cassette_replays_through_the_current_mappings() {
    let mut out = Vec::new();
    let reports = replay_dir(&cassettes(), Path::new(&mappings_dir()), false, &mut out).await;
    let printed = String::from_utf8_lossy(&out);
    assert!(reports.len() >= 15, "{printed}");
    assert!(reports.iter().all(|r| r.problems.is_empty()), "{printed}");
    // Every interaction the Canvas mapping serves is covered, errors included.
    let names: Vec<String> =
        reports.iter().map(|r| r.file.file_name().unwrap().to_string_lossy().to_string()).collect();
    for interaction in ["create", "read", "vread", "history-instance", "search-type", "content", "delete"] {
        assert!(
            names.iter().any(|n| n.ends_with(&format!("-{interaction}.json"))),
            "no {interaction} cassette: {names:?}"
        );
    }
    let statuses: Vec<u64> = cassette_files(&cassettes())
        .iter()
        .map(|f| {
            serde_json::from_str::<Value>(&std::fs::read_to_string(f).unwrap()).unwrap()["response"]["status"]
                .as_u64()
                .unwrap()
        })
        .collect();
    for status in [201, 200, 400, 404, 405, 422, 502] {
        assert!(statuses.contains(&status), "no cassette answering {status}");
    }
    let texts: Vec<String> = cassette_files(&cassettes()).iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    assert!(texts.iter().any(|t| t.contains("\"failure\": \"broken\"")), "no cassette with a broken connection");
}

#[test]
fn committed_cassettes_hold_no_credentials_patient_ids_or_media() {
    assert_clean(&cassette_files(&cassettes()));
}

#[tokio::test]
async fn a_one_field_mapping_change_is_a_regression_and_accept_rewrites_only_what_changed() {
    let mappings = scratch("mappings", Path::new(&mappings_dir()));
    let file = mappings.join("canvas.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replacen("title = \"$.content.title\", url", "title = \"$.content.contentType\", url", 1),
    )
    .unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_ehr-gateway"))
        .arg("replay")
        .arg(cassettes())
        .arg("--mappings")
        .arg(&mappings)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(printed.contains("content.title: expected \"xxxxx xxxxx\", got \"image/jpeg\""), "{printed}");
    let failing = printed.lines().filter(|l| l.starts_with("FAIL")).count();
    assert!(failing >= 3, "{printed}");

    let copy = scratch("accept", &cassettes());
    let before: Vec<(PathBuf, String)> =
        cassette_files(&copy).into_iter().map(|f| (f.clone(), std::fs::read_to_string(f).unwrap())).collect();
    let mut sink = Vec::new();
    let reports = replay_dir(&copy, &mappings, true, &mut sink).await;
    let rewritten = reports.iter().filter(|r| r.rewritten).count();
    assert_eq!(rewritten, failing, "{}", String::from_utf8_lossy(&sink));
    for (file, original) in before {
        let now = std::fs::read_to_string(&file).unwrap();
        let was_rewritten = reports.iter().any(|r| r.file == file && r.rewritten);
        assert_eq!(now != original, was_rewritten, "{}", file.display());
    }
    // After accepting, the changed mapping replays clean.
    let mut sink = Vec::new();
    assert!(replay_dir(&copy, &mappings, false, &mut sink).await.iter().all(|r| r.problems.is_empty()));
    let _ = std::fs::remove_dir_all(copy);
    let _ = std::fs::remove_dir_all(mappings);
}

#[tokio::test]
async fn an_unmatched_upstream_request_names_its_nearest_candidates() {
    let mappings = scratch("unmatched", Path::new(&mappings_dir()));
    let file = mappings.join("canvas.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("_count = \"{_count}\" }", "limit = \"{_count}\" }", 1)).unwrap();
    let mut out = Vec::new();
    let reports = replay_dir(&cassettes(), &mappings, false, &mut out).await;
    let printed = String::from_utf8_lossy(&out);
    let search = reports
        .iter()
        .find(|r| r.file.to_string_lossy().ends_with("-search-type.json") && !r.problems.is_empty())
        .expect("a search regresses");
    let all = search.problems.join("\n");
    assert!(all.contains("no recorded upstream exchange matches GET /Media?"), "{all}");
    assert!(all.contains("closest recorded:") && all.contains("upstream[0]: query has [_count="), "{all}");
    assert!(all.contains("now [limit="), "{all}\n{printed}");
    let _ = std::fs::remove_dir_all(mappings);
}
