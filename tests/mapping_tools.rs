//! The operator tooling as `cargo test` sees it: golden cases pass and cover every interaction, a changed
//! template fails with a diff naming the field, the editor schema is current and accepts every mapping,
//! and `mappings check` reports every mistake with file:line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::copy_dir;
use ehr_gateway::mapping::{MappingSet, compile_file, editor_schema, golden};

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
    // A second file (a variant of the Canvas mapping) with an unknown key.
    let second = text.replacen("default_category =", "colour = \"blue\"\ndefault_category =", 1);
    std::fs::write(dir.join("canvas.second.toml"), second).unwrap();

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
        format!("canvas.second.toml:{}:", line_of("canvas.second.toml", "colour")),
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

/// A mapping with every interaction, each of two steps that all have a `path`, so a diagnostic found
/// by the first `path` (or the first `steps`) in the file would point at the wrong line. Every `{bad_…}`
/// is an unknown variable or another mistake planted at one key.
fn every_interaction_mapping() -> String {
    let mut text = String::from(
        r#"ehr = "demo"
display_name = "Demo EHR"
default_category = "photo"

[auth]
flow = "client_credentials"
client_auth = "form"

[categories.photo]
description = "every interaction, two steps each"
id = "d.{media_id}"

[categories.photo.resource]
bind = { media_id = "$.id" }

[categories.photo.resource.template]
resourceType = "Media"
id = "{gateway_id}"
content = { contentType = "$.mime", title = "{bad_template}", url = "{content_url}" }

[categories.photo.create]
serialize_writes_by = [
  "$.encounter.reference",
  "$.note[",
]

[[categories.photo.create.checks]]
path = "$.status"
expression = "Media.status"
message = "status"

[[categories.photo.create.checks]]
path = "$.subject.reference"
expression = "Media.subject"
pattern = "(bad_pattern"
message = "subject"
"#,
    );
    let results = [
        ("create", "resource"),
        ("read", "resource"),
        ("update", "resource"),
        ("delete", "none"),
        ("content", "bytes"),
    ];
    for (interaction, result) in results {
        if interaction != "create" {
            text.push_str(&format!("\n[categories.photo.{interaction}]\n"));
        }
        for n in 0..2 {
            let path = if n == 1 { format!("/{interaction}/{{bad_{interaction}}}") } else { format!("/{interaction}") };
            text.push_str(&format!(
                "\n[[categories.photo.{interaction}.steps]]\nmethod = \"GET\"\npath = \"{path}\"\nexpect = [200]\n"
            ));
            if n == 0 {
                text.push_str("bind = { media_id = \"$.id\" }\n");
                text.push_str(&format!(
                    "[categories.photo.{interaction}.steps.body]\nnote = \"{{bad_{interaction}_body}}\"\n"
                ));
            } else {
                text.push_str(&format!("result = \"{result}\"\n"));
            }
        }
    }
    text.push_str(
        r#"
[categories.photo.search]
params = { patient = "patient | reference(Patient)", _id = "_id | bad_transform" }
count = { default = 10, max = 100 }
entries = "$.entry[*]"

[[categories.photo.search.steps]]
method = "GET"
path = "/search"
expect = [200]

[[categories.photo.search.steps]]
method = "GET"
path = "/search/{bad_search}"
expect = [200]
result = "bundle"

[categories.photo.search.each]
drop_on = [404]

[categories.photo.search.each.step]
method = "GET"
path = "/search-each/{bad_each}"
expect = [200]

[[errors]]
status = "404"
gateway_status = 404
code = "not-found"
message = "gone"

[[errors]]
status = "5xx"
gateway_status = 502
code = "bad-code"
message = "failed"
"#,
    );
    text
}

#[test]
fn every_problem_points_at_the_line_of_its_own_key_in_every_interaction() {
    let text = every_interaction_mapping();
    let d = compile_file("demo", Path::new("demo.toml"), &text).unwrap_err();
    let line_of =
        |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}")) + 1;
    let mut expected = vec![
        ("categories.photo.resource.template.content.title", line_of("{bad_template}")),
        ("categories.photo.create.serialize_writes_by[1]", line_of("\"$.note[\"")),
        ("categories.photo.create.checks[1].pattern", line_of("(bad_pattern")),
        ("categories.photo.search.params._id", line_of("bad_transform")),
        ("categories.photo.search.steps[1].path", line_of("{bad_search}")),
        ("categories.photo.search.each.step.path", line_of("{bad_each}")),
        ("errors[1].code", line_of("bad-code")),
    ];
    let interactions = ["create", "read", "update", "delete", "content"];
    let keys: Vec<(String, String)> = interactions
        .iter()
        .flat_map(|i| {
            [
                (format!("categories.photo.{i}.steps[1].path"), format!("{{bad_{i}}}")),
                (format!("categories.photo.{i}.steps[0].body.note"), format!("{{bad_{i}_body}}")),
            ]
        })
        .collect();
    expected.extend(keys.iter().map(|(k, needle)| (k.as_str(), line_of(needle))));
    let all = d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
    for (key, line) in &expected {
        let found = d.iter().find(|d| d.key == *key).unwrap_or_else(|| panic!("no diagnostic for {key} in\n{all}"));
        assert_eq!(
            found.position.map(|p| p.0),
            Some(*line),
            "{found}\nexpected line {line}: `{}`",
            text.lines().nth(line - 1).unwrap()
        );
    }
    assert_eq!(d.len(), expected.len(), "{all}");
}

#[test]
fn backups_and_strays_beside_the_mappings_are_skipped_with_a_warning_each() {
    let dir = scratch("strays");
    let canvas = std::fs::read_to_string(dir.join("canvas.toml")).unwrap();
    // Not even parsed: a broken backup does not fail the check.
    let strays = [
        ("canvas-backup.toml", "this is = not [valid toml".to_string(), "`canvas-backup` is not `<ehr>`"),
        ("canvas.toml.bak", canvas.clone(), "a backup or temporary file (`.bak`)"),
        (".#canvas.toml", canvas.clone(), "a hidden or editor's file"),
        ("canvas.toml~", canvas.clone(), "an editor's backup (`~`)"),
        ("canvas.toml.orig", canvas.clone(), "a backup or temporary file (`.orig`)"),
        ("canvas.orig.toml", canvas.clone(), "the variant `orig` names a backup"),
        ("photos.toml", canvas.clone(), "its `ehr` is `canvas`, so it is not a `photos` mapping"),
    ];
    for (name, text, _) in &strays {
        std::fs::write(dir.join(name), text).unwrap();
    }
    // A variant named by the rule is a mapping of its own.
    std::fs::write(dir.join("canvas.staging.toml"), &canvas).unwrap();

    let set = MappingSet::load_dir(&dir).unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(set.mappings.keys().collect::<Vec<_>>(), ["athena", "canvas", "canvas.staging"]);
    let out = Command::new(env!("CARGO_BIN_EXE_ehr-gateway")).args(["mappings", "check"]).arg(&dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for (name, _, why) in &strays {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("/{name}: skipped, not loaded as a mapping: ")))
            .unwrap_or_else(|| panic!("{name} not reported in\n{stdout}"));
        assert!(line.starts_with("warning: ") && line.contains(why), "{line}");
    }
    assert!(stdout.contains("3 mapping(s) OK"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Every golden case file under `dir` with its bytes.
fn case_bytes(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for mapping in ["athena", "canvas"] {
        for entry in std::fs::read_dir(dir.join(mapping).join("tests")).unwrap() {
            let path = entry.unwrap().path();
            out.insert(
                format!("{mapping}/tests/{}", path.file_name().unwrap().to_string_lossy()),
                std::fs::read(path).unwrap(),
            );
        }
    }
    out
}

fn mappings_test(dir: &Path, accept: bool) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ehr-gateway"));
    command.args(["mappings", "test"]).arg(dir);
    if accept {
        command.arg("--accept");
    }
    let out = command.output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The case files named on lines starting with `prefix` (`FAIL`, `rewrote`).
fn listed(stdout: &str, prefix: &str) -> std::collections::BTreeSet<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn accept_rewrites_exactly_the_cases_a_template_change_breaks_and_only_their_changed_fields() {
    let dir = scratch("accept");
    let before = case_bytes(&dir);
    let file = dir.join("canvas.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let header = "[categories.visual-exam-finding.resource.template]\n";
    assert!(text.contains(header));
    std::fs::write(&file, text.replacen(header, &format!("{header}language = \"en\"\n"), 1)).unwrap();

    let (code, failing) = mappings_test(&dir, false);
    assert_eq!(code, Some(1), "{failing}");
    let failing = listed(&failing, "FAIL ");
    assert!(failing.len() >= 6 && failing.contains("canvas/tests/read.toml"), "{failing:?}");

    let (code, accepted) = mappings_test(&dir, true);
    assert_eq!(code, Some(0), "{accepted}");
    assert_eq!(listed(&accepted, "rewrote "), failing, "{accepted}");
    assert!(accepted.contains("result.resource.language: unexpected \"en\""), "{accepted}");
    assert!(accepted.contains(&format!("mappings: {} rewritten", failing.len())), "{accepted}");

    let after = case_bytes(&dir);
    let changed: std::collections::BTreeSet<String> =
        after.iter().filter(|(name, bytes)| before.get(*name) != Some(bytes)).map(|(n, _)| n.clone()).collect();
    assert_eq!(changed, failing, "exactly the failing cases are rewritten; the others are byte-identical");
    for name in &changed {
        let new = String::from_utf8(after[name].clone()).unwrap();
        // One field per line: the change is one added line per resource, comments and all else kept.
        let without: String = new.lines().filter(|l| *l != "language = \"en\"").map(|l| format!("{l}\n")).collect();
        assert_eq!(without, String::from_utf8(before[name].clone()).unwrap(), "{name}:\n{new}");
        assert!(new.lines().all(|l| !l.contains("= {")), "{name} has an inline table:\n{new}");
    }

    let (code, out) = mappings_test(&dir, false);
    assert_eq!(code, Some(0), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn accept_does_not_invent_answers_for_requests_a_case_does_not_script() {
    let dir = scratch("accept-refused");
    let file = dir.join("canvas.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    // A read now asks Canvas something first; the cases script one answer only.
    let read = "[categories.visual-exam-finding.read]\n";
    let extra = "[[categories.visual-exam-finding.read.steps]]\nmethod = \"GET\"\npath = \"/Media/{media_id}/audit\"\nexpect = [200]\n\n";
    std::fs::write(&file, text.replacen(read, &format!("{read}{extra}"), 1)).unwrap();
    let read_case = dir.join("canvas/tests/read.toml");
    let not_found = dir.join("canvas/tests/read-not-found.toml");
    let (read_before, not_found_before) =
        (std::fs::read_to_string(&read_case).unwrap(), std::fs::read_to_string(&not_found).unwrap());

    let (code, out) = mappings_test(&dir, true);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL     canvas/tests/read.toml"), "{out}");
    assert!(
        out.contains(
            "not rewritten: the mapping now sends upstream request #2 (GET /Media/729e5242-bad6-4bd7-905d-9716ae262971)"
        ),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&read_case).unwrap(), read_before, "a refused case is left as it was");
    // The 404 now comes from the first request: only its path changes.
    assert!(out.contains("rewrote  canvas/tests/read-not-found.toml"), "{out}");
    let rewritten = std::fs::read_to_string(&not_found).unwrap();
    let changed: Vec<(&str, &str)> = not_found_before.lines().zip(rewritten.lines()).filter(|(a, b)| a != b).collect();
    assert_eq!(changed.len(), 1, "{rewritten}");
    assert!(changed[0].1.starts_with("path = \"/Media/") && changed[0].1.ends_with("/audit\""), "{changed:?}");
    let _ = std::fs::remove_dir_all(dir);
}
