//! Runs the examples of docs/mappings.md: the transform table, the how-to fragments spliced into the
//! shipped Canvas mapping (which must still compile) with their golden cases, the commands, and the safe
//! edit loop step by step against a running gateway.

mod common;

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

/// The guide's safe edit loop, line by line, in a work folder holding a copy of the mappings as the live
/// folder of a running gateway and the replay cassettes: every step must succeed, and the published edit
/// must be what the gateway then serves. The editor step is a comment-only edit, so the copy behaves as
/// the shipped mappings do (the cassettes and cases pass unchanged).
#[cfg(all(unix, feature = "sandbox"))]
#[tokio::test]
async fn the_safe_edit_loop_runs_step_by_step_and_publishes_to_a_running_gateway() {
    use std::io::BufRead;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let doc = guide();
    let block = examples(&doc).into_iter().find(|e| e.directive == "loop").expect("the loop block");
    let work = std::env::temp_dir().join(format!("ehrgw-loop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    common::copy_dir(&root().join("mappings"), &work.join("mappings"));
    std::fs::create_dir_all(work.join("tests")).unwrap();
    std::os::unix::fs::symlink(root().join("tests/replay"), work.join("tests/replay")).unwrap();

    let live = work.join("mappings");
    let config = work.join("gateway.toml");
    std::fs::write(&config, common::sandbox_config("").replace(&common::mappings_dir(), live.to_str().unwrap()))
        .unwrap();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_ehr-gateway"))
        .args(["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = gateway.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("ehr-gateway serving on http://") {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("the gateway started");
    let admin = format!("http://{addr}/admin/mappings");
    let client = common::http();
    let (_, status) = common::get_json(&client, &admin).await;
    let served = status["active"]["version"].as_str().unwrap().to_string();

    let mut ran = Vec::new();
    for line in block.code.lines() {
        let command = line.split('#').next().unwrap().trim();
        if let Some(file) = command.strip_prefix("$EDITOR ") {
            let path = work.join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, format!("{text}\n# reviewed in the safe edit loop\n")).unwrap();
            ran.push("edit".to_string());
            continue;
        }
        let out = match command.strip_prefix("ehr-gateway ") {
            Some(args) => Command::new(env!("CARGO_BIN_EXE_ehr-gateway"))
                .args(args.split_whitespace())
                .current_dir(&work)
                .output()
                .unwrap(),
            None => Command::new("sh").arg("-c").arg(command).current_dir(&work).output().unwrap(),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command}:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
        if command.split_whitespace().any(|word| word == "--accept") {
            assert!(stdout.contains("mappings: 0 rewritten"), "nothing to record on this copy:\n{stdout}");
            ran.push("--accept".to_string());
        }
        ran.push(command.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    }
    for step in ["edit", "ehr-gateway mappings check", "ehr-gateway mappings test", "ehr-gateway replay tests/replay"] {
        assert!(ran.iter().any(|r| r == step), "the loop lacks `{step}`: {ran:?}");
    }
    assert!(ran.iter().any(|r| r == "--accept"), "the loop records changes with --accept: {ran:?}");

    // Published: the live folder holds the edit, and the running gateway serves it.
    let published = std::fs::read_to_string(live.join("canvas.toml")).unwrap();
    assert!(published.ends_with("# reviewed in the safe edit loop\n"));
    assert_eq!(published, std::fs::read_to_string(work.join("mappings-next/canvas.toml")).unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let (_, status) = common::get_json(&client, &admin).await;
        if status["active"]["version"] != served.as_str() && status["last_reload"]["outcome"] == "accepted" {
            break status;
        }
        assert!(Instant::now() < deadline, "the published edit was not loaded: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["active"]["warnings"], serde_json::json!([]), "the temporary name was never loaded or left");
    let _ = gateway.kill();
    let _ = gateway.wait();
    let _ = std::fs::remove_dir_all(&work);
}
