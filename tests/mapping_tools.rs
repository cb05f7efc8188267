//! The operator tooling as `cargo test` sees it: golden cases pass and cover every interaction, a changed
//! template fails with a diff naming the field, the editor schema is current and accepts every mapping,
//! and `mappings check` reports every mistake with file:line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::copy_dir;
use ehr_gateway::mapping::{MappingSet, editor_schema, golden};

fn mappings() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ehrgw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&mappings(), &dir);
    dir
}

#[test]
fn golden_cases_pass_and_cover_every_interaction_and_error_translation() {
    let set = MappingSet::load_dir(&mappings()).unwrap();
    let reports = golden::run_dir(&set, &mappings());
    assert!(reports.len() >= 10);
    let rendered = golden::render(&reports, &mappings());
    assert!(reports.iter().all(|r| r.passed()), "{rendered}");
    assert_eq!(golden::coverage_gaps(&set, &reports), Vec::<String>::new());
}

#[test]
fn a_changed_field_template_fails_with_a_diff_naming_the_field() {
    let dir = scratch("golden");
    let file = dir.join("canvas.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let changed = text.replacen("title = \"$.content.title\", url", "title = \"$.content.contentType\", url", 1);
    assert_ne!(text, changed);
    std::fs::write(&file, changed).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ehr-gateway")).args(["mappings", "test"]).arg(&dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL canvas/tests/read.toml"), "{stdout}");
    assert!(stdout.contains("result.resource.content.title: expected \"Image title\", got \"image/jpeg\""), "{stdout}");
    assert!(stdout.lines().last().unwrap().ends_with("failed") && !stdout.contains(" 0 failed"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_reports_every_mistake_across_files_with_lines() {
    let dir = scratch("check");
    let canvas = dir.join("canvas.toml");
    let text = std::fs::read_to_string(&canvas).unwrap();
    let broken = text.replacen("entries = \"$.entry[*].resource\"", "entries = \"$.entry[*.resource\"", 1).replacen(
        "| location_id",
        "| location_idd",
        1,
    );
    std::fs::write(&canvas, broken).unwrap();
    // A second file with an unknown key.
    let second = text.replacen("default_category =", "colour = \"blue\"\ndefault_category =", 1);
    std::fs::write(dir.join("canvas2.toml"), second).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_ehr-gateway")).args(["mappings", "check"]).arg(&dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line_of = |file: &str, needle: &str| {
        let t = std::fs::read_to_string(dir.join(file)).unwrap();
        t.lines().position(|l| l.contains(needle)).unwrap() + 1
    };
    let expect = [
        format!("canvas.toml:{}:", line_of("canvas.toml", "$.entry[*.resource")),
        format!("canvas.toml:{}:", line_of("canvas.toml", "location_idd")),
        format!("canvas2.toml:{}:", line_of("canvas2.toml", "colour")),
    ];
    for e in &expect {
        assert!(stdout.contains(e.as_str()), "missing {e} in\n{stdout}");
    }
    assert!(stdout.contains("bad JSONPath"), "{stdout}");
    assert!(stdout.contains("unknown transform `location_idd`; did you mean `location_id`?"), "{stdout}");
    assert!(stdout.contains("unknown field `colour`"), "{stdout}");
    assert!(stdout.contains("3 error(s)"), "{stdout}");

    let clean =
        Command::new(env!("CARGO_BIN_EXE_ehr-gateway")).args(["mappings", "check"]).arg(mappings()).output().unwrap();
    assert_eq!(clean.status.code(), Some(0), "{}", String::from_utf8_lossy(&clean.stdout));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_editor_schema_is_current_and_accepts_every_shipped_mapping() {
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/mapping.schema.json")).unwrap();
    assert_eq!(
        committed.trim_end(),
        editor_schema().trim_end(),
        "docs/mapping.schema.json is stale: run `cargo run -- mappings schema > docs/mapping.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&committed).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(mappings()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let value: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let json = serde_json::to_value(value).unwrap();
            let errors: Vec<String> =
                validator.iter_errors(&json).map(|e| format!("{e} at {}", e.instance_path)).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 1);
    // The schema flags mistakes too.
    let bad = serde_json::json!({"ehr": "canvas", "display_name": "x", "default_category": "c", "auth": {"flow": "client_credentials", "client_auth": "form"}, "categories": {}, "colour": "blue"});
    assert!(!validator.is_valid(&bad));
}
