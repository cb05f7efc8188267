//! Runs the examples of docs/mappings.md: the transform table, the how-to fragments spliced into the
//! shipped Canvas mapping (which must still compile) with their golden cases, and the commands.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use ehr_gateway::mapping::golden;
use ehr_gateway::mapping::ids::IdTemplate;
use ehr_gateway::mapping::transform::{self, CodeTables, TransformContext};
use ehr_gateway::mapping::{Severity, compile_file};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn guide() -> String {
    std::fs::read_to_string(root().join("docs/mappings.md")).unwrap()
}

/// A fenced block preceded by `<!-- doc-test … -->`.
struct Example {
    directive: String,
    lang: String,
    code: String,
}

fn examples(doc: &str) -> Vec<Example> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(directive) = line.trim().strip_prefix("<!-- doc-test").and_then(|d| d.strip_suffix("-->")) else {
            continue;
        };
        let fence = lines[i + 1].trim();
        assert!(fence.starts_with("```"), "a doc-test directive must precede a code block (line {})", i + 1);
        let end = lines[i + 2..].iter().position(|l| l.trim() == "```").expect("closed block") + i + 2;
        out.push(Example {
            directive: directive.trim().to_string(),
            lang: fence.trim_start_matches('`').to_string(),
            code: lines[i + 2..end].join("\n"),
        });
    }
    out
}

fn attr(directive: &str, name: &str) -> Option<String> {
    let start = directive.find(&format!("{name}="))? + name.len() + 1;
    let rest = &directive[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next()?),
                '"' => return Some(value),
                c => value.push(c),
            }
        }
        None
    } else {
        Some(rest.split_whitespace().next()?.to_string())
    }
}

#[test]
fn every_how_to_fragment_compiles_and_its_golden_case_passes() {
    let doc = guide();
    let canvas = std::fs::read_to_string(root().join("mappings/canvas.toml")).unwrap();
    let mut scenarios: BTreeMap<String, Vec<Example>> = BTreeMap::new();
    for e in examples(&doc) {
        if let Some(s) = attr(&e.directive, "scenario") {
            scenarios.entry(s).or_default().push(e);
        }
    }
    assert_eq!(scenarios.keys().collect::<Vec<_>>(), ["category", "codes", "field"]);
    let dir = std::env::temp_dir().join(format!("ehrgw-doc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, steps) in scenarios {
        let mut text = canvas.clone();
        let mut goldens = Vec::new();
        for e in steps {
            assert_eq!(e.lang, "toml", "{name}");
            if let Some(anchor) = attr(&e.directive, "insert-after") {
                let at = text.find(&anchor).unwrap_or_else(|| panic!("{name}: anchor not in canvas.toml: {anchor}"));
                let line_end = text[at..].find('\n').map(|n| at + n + 1).unwrap_or(text.len());
                text.insert_str(line_end, &format!("{}\n", e.code));
            } else if e.directive.contains("append") {
                text.push_str(&format!("\n{}\n", e.code));
            } else if e.directive.contains("golden") {
                goldens.push(e.code);
            } else {
                panic!("{name}: unknown directive {}", e.directive);
            }
        }
        let (mapping, warnings) = compile_file("canvas", Path::new("canvas.toml"), &text)
            .unwrap_or_else(|d| panic!("{name}: {}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")));
        assert!(warnings.iter().all(|w| w.severity == Severity::Warning));
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
        assert!(!goldens.is_empty(), "{name} shows no golden case");
        // A how-to must not break what the mapping already does: every shipped case still passes.
        let shipped_dir = root().join("mappings/canvas/tests");
        for entry in std::fs::read_dir(&shipped_dir).unwrap() {
            let report = golden::run_file(&mapping, &entry.unwrap().path());
            assert!(report.passed(), "{name} breaks {}: {:?}", report.file.display(), report.failures);
        }
        for (i, case) in goldens.iter().enumerate() {
            let file = dir.join(format!("{name}-{i}.toml"));
            std::fs::write(&file, case).unwrap();
            let report = golden::run_file(&mapping, &file);
            assert!(report.passed(), "{name}: {:?}", report.failures);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_transform_table_is_complete_and_true() {
    let doc = guide();
    let table = doc.split("<!-- transforms:begin -->").nth(1).unwrap().split("<!-- transforms:end -->").next().unwrap();
    let codes_block = examples(&doc)
        .into_iter()
        .find(|e| e.directive.contains("scenario=codes") && e.directive.contains("append"))
        .expect("code table example");
    #[derive(serde::Deserialize)]
    struct Tables {
        code_tables: CodeTables,
    }
    let tables: Tables = toml::from_str(&codes_block.code).unwrap();
    let id = IdTemplate::compile("cv.{media_id}").unwrap();
    let ctx = TransformContext { id_template: Some(&id), code_tables: Some(&tables.code_tables), payloads: None };
    let mut documented = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(|c| c.trim().trim_matches('`')).collect();
        let (call, input, output) = (cells[1], cells[2], cells[3]);
        let (name, arg) = match call.split_once('(') {
            Some((n, a)) => (n, Some(a.trim_end_matches(')'))),
            None => (call, None),
        };
        let input: Value = serde_json::from_str(input).unwrap();
        let output: Value = serde_json::from_str(output).unwrap();
        assert_eq!(transform::apply(name, arg, &input, &ctx).unwrap(), Some(output), "{row}");
        documented.push(name.to_string());
    }
    for (name, _, _) in transform::TRANSFORMS {
        assert!(documented.iter().any(|d| d == name), "transform `{name}` is not in docs/mappings.md");
    }
}

#[test]
fn the_commands_in_the_guide_work() {
    let doc = guide();
    let block = examples(&doc).into_iter().find(|e| e.directive == "commands").expect("commands block");
    for line in block.code.lines() {
        let command = line.split('#').next().unwrap().trim();
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        assert_eq!(command.split_whitespace().next(), Some("ehr-gateway"), "{line}");
        let out = Command::new(env!("CARGO_BIN_EXE_ehr-gateway")).args(&args).current_dir(root()).output().unwrap();
        assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stdout));
        if args == ["mappings", "schema"] {
            let committed = std::fs::read_to_string(root().join("docs/mapping.schema.json")).unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), committed.trim_end());
        }
    }
}
