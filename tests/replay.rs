//! Replay tests: the cassettes in tests/replay (recorded from the simulators, redacted) replay through
//! the current mappings; a mapping change shows up as a diff naming the field; `--accept` rewrites only
//! what changed; an unmatched upstream request names its nearest recorded candidates.
//!
//! Re-record the cassettes with:
//!     cargo test --test replay -- --ignored rerecord_cassettes_from_the_simulators

mod common;
mod recording;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use ehr_gateway::commands::replay::{cassette_files, replay_dir};
use recording::{assert_clean, record_all};
use serde_json::Value;

fn cassettes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/replay")
}

fn scratch(name: &str, from: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ehrgw-replay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(from, &dir);
    dir
}

#[tokio::test]
#[ignore = "re-records tests/replay from the simulators; run on purpose"]
async fn rerecord_cassettes_from_the_simulators() {
    let dir = cassettes();
    for file in cassette_files(&dir) {
        std::fs::remove_file(file).unwrap();
    }
    record_all(&dir).await;
}

#[tokio::test]
async fn a_fresh_recording_of_every_ehr_is_redacted_replays_and_is_the_same_when_recorded_again() {
    let first = std::env::temp_dir().join(format!("ehrgw-record-1-{}", std::process::id()));
    let second = std::env::temp_dir().join(format!("ehrgw-record-2-{}", std::process::id()));
    for dir in [&first, &second] {
        let _ = std::fs::remove_dir_all(dir);
    }
    let files = record_all(&first).await;
    assert_clean(&files);
    let mut out = Vec::new();
    let reports = replay_dir(&first, Path::new(&mappings_dir()), false, &mut out).await;
    assert!(reports.iter().all(|r| r.problems.is_empty()), "{}", String::from_utf8_lossy(&out));
    // The same requests against the same simulators give the same files, byte for byte.
    let again = record_all(&second).await;
    assert_eq!(files.len(), again.len());
    for (a, b) in files.iter().zip(&again) {
        assert_eq!(a.strip_prefix(&first).unwrap(), b.strip_prefix(&second).unwrap());
        let (x, y) = (std::fs::read_to_string(a).unwrap(), std::fs::read_to_string(b).unwrap());
        assert!(x == y, "{} differs when recorded again:\n{}", a.display(), first_difference(&x, &y));
    }
    for dir in [first, second] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn first_difference(a: &str, b: &str) -> String {
    a.lines().zip(b.lines()).find(|(x, y)| x != y).map(|(x, y)| format!("  {x}\n  {y}")).unwrap_or_default()
}

#[tokio::test]
async fn every_cassette_replays_through_the_current_mappings() {
    let mut out = Vec::new();
    let reports = replay_dir(&cassettes(), Path::new(&mappings_dir()), false, &mut out).await;
    let printed = String::from_utf8_lossy(&out);
    assert!(reports.iter().all(|r| r.problems.is_empty()), "{printed}");
    // Every interaction each mapping serves is covered, errors included.
    let names = |org: &str| -> Vec<String> {
        reports
            .iter()
            .filter(|r| r.file.parent().is_some_and(|p| p.ends_with(org)))
            .map(|r| r.file.file_name().unwrap().to_string_lossy().to_string())
            .collect()
    };
    for (org, interactions) in [
        ("demo-canvas", &["create", "read", "vread", "history-instance", "search-type", "content", "delete"][..]),
        (
            "demo-athena",
            &["create", "read", "vread", "history-instance", "search-type", "content", "update", "patch", "delete"][..],
        ),
    ] {
        let names = names(org);
        for interaction in interactions {
            assert!(names.iter().any(|n| n.ends_with(&format!("-{interaction}.json"))), "{org}: no {interaction}");
        }
    }
    let cassettes: Vec<Value> = cassette_files(&cassettes())
        .iter()
        .map(|f| serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap())
        .collect();
    for status in [201, 200, 400, 404, 405, 422, 502] {
        assert!(cassettes.iter().any(|c| c["response"]["status"] == status), "no cassette answering {status}");
    }
    // Every athena category appears in a front-door request or a gateway id.
    for prefix in ["ic.", "rx.", "dl.", "ph.", "ad.", "cd.", "ir.", "mr."] {
        assert!(
            cassettes.iter().any(|c| c["organization"]["slug"] == "demo-athena" && c.to_string().contains(prefix)),
            "no athena {prefix} cassette"
        );
    }
    let texts: Vec<String> = cassettes.iter().map(Value::to_string).collect();
    assert!(texts.iter().any(|t| t.contains("\"failure\":\"broken\"")), "no cassette with a broken connection");
}

#[test]
fn committed_cassettes_hold_no_credentials_patient_data_or_media() {
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
    // The replayed answer is compared as recording would have left it: the title now holds the content
    // type, a text, so it gets a text's placeholder.
    assert!(printed.contains("content.title: expected \"xxxxx xxxxx\", got \"xxxxxxxxxx\""), "{printed}");
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

#[tokio::test]
async fn accept_leaves_a_cassette_whose_upstream_request_changed_failing_with_re_record() {
    let mappings = scratch("accept-changed", Path::new(&mappings_dir()));
    let file = mappings.join("canvas.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("_count = \"{_count}\" }", "limit = \"{_count}\" }", 1)).unwrap();
    let copy = scratch("accept-changed-cassettes", &cassettes());
    let before: Vec<(PathBuf, String)> =
        cassette_files(&copy).into_iter().map(|f| (f.clone(), std::fs::read_to_string(f).unwrap())).collect();
    let mut out = Vec::new();
    let reports = replay_dir(&copy, &mappings, true, &mut out).await;
    let printed = String::from_utf8_lossy(&out);
    let searches: Vec<_> = reports
        .iter()
        .filter(|r| r.file.parent().is_some_and(|p| p.ends_with("demo-canvas")))
        .filter(|r| r.file.to_string_lossy().ends_with("-search-type.json"))
        .collect();
    // A search continued with `_page` follows the recorded upstream link, which did not change.
    let changed: Vec<_> = searches.iter().filter(|r| !r.problems.is_empty() || r.rewritten).collect();
    assert!(changed.len() >= 2, "{printed}");
    for search in changed {
        assert!(!search.rewritten, "{} was accepted", search.file.display());
        assert!(search.problems.iter().any(|p| p.contains("re-record this exchange")), "{printed}");
    }
    for (file, original) in before {
        let rewritten = reports.iter().any(|r| r.file == file && r.rewritten);
        if !rewritten {
            assert_eq!(std::fs::read_to_string(&file).unwrap(), original, "{} changed", file.display());
        }
    }
    let _ = std::fs::remove_dir_all(copy);
    let _ = std::fs::remove_dir_all(mappings);
}
