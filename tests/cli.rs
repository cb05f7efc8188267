//! The command line as operators use it: environment overrides, all config problems at once (in the
//! operator's words, each naming the file or environment variable it came from), a first run from the
//! wrong folder, `--help`, and the standalone simulator.

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

/// Runs `ehr-gateway serve --config FILE` on `text`, with `env` added to the environment, expecting it
/// to refuse to start: `(FILE, stderr)`.
fn refused(name: &str, text: &str, env: &[(&str, &str)]) -> (String, String) {
    let config = temp_config(name, text);
    let out = Command::new(env!("CARGO_BIN_EXE_ehr-gateway"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&config);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    (config.display().to_string(), stderr)
}

/// The report `serve` prints for `problems`, each a full line.
fn report(problems: &[String]) -> String {
    let noun = if problems.len() == 1 { "problem" } else { "problems" };
    let lines: String = problems.iter().map(|p| format!("  - {p}\n")).collect();
    format!("configuration has {} {noun}:\n{lines}", problems.len())
}

/// The demo organizations on simulators, with the repository's mappings; tests change one thing each.
fn demo_config() -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
mappings_dir = "{mappings}"
log_format = "json"
[[clients]]
name = "demo"
token_sha256 = "{token}"
organizations = ["demo-canvas", "demo-athena"]
[connections.demo-canvas]
ehr = "canvas"
simulator = true
[connections.demo-athena]
ehr = "athena"
simulator = true
[[organizations]]
id = "org-canvas-demo"
slug = "demo-canvas"
name = "Canvas demo practice"
connection = "demo-canvas"
mapping = "canvas"
[[organizations]]
id = "org-athena-demo"
slug = "demo-athena"
name = "athenahealth demo practice"
connection = "demo-athena"
mapping = "athena"
"#,
        mappings = mappings_dir(),
        token = ehr_gateway::config::token_hash(TOKEN),
    )
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
    let (file, stderr) = refused("bad", &bad, &[]);
    let problems = [
        "connections.demo-canvas.ehr: unknown EHR `cerner`; supported: canvas, athena",
        "connections.demo-canvas.base_url: required unless `simulator = true`",
        "connections.demo-canvas.token_url: required unless `simulator = true`",
        "connections.demo-canvas.client_id: required unless `simulator = true`",
        "connections.demo-canvas.client_secret: required unless `simulator = true`",
        "organizations[1].connection: unknown connection `nowhere`; defined connections: demo-canvas, other-canvas",
        "unknown section `surprise`; allowed: server, clients, connections, organizations, record",
    ];
    assert_eq!(stderr, report(&problems.map(|p| format!("{file}: {p}"))));
}

#[test]
fn config_errors_name_keys_in_reading_order() {
    let bad = demo_config()
        .replace("listen = \"127.0.0.1:0\"", "listen = \"localhost\"")
        .replace("ehr = \"canvas\"\nsimulator = true", "ehr = \"canvas\"\nsimulator = true\nclient_secret = 7");
    let (file, stderr) = refused("order", &bad, &[]);
    assert_eq!(
        stderr,
        report(&[
            format!("{file}: server.listen: expected an address like 127.0.0.1:8080, found text \"localhost\""),
            format!(
                "{file}: connections.demo-canvas.client_secret: expected a table with `env` or `file`, found a number"
            ),
        ])
    );
}

#[test]
fn config_errors_use_no_rust_type_names() {
    let bad = demo_config()
        .replace("log_format = \"json\"", "log_format = \"json\"\nbody_limit_bytes = \"abc\"\nrequest_timeout_ms = -5")
        .replace(
            "ehr = \"athena\"\nsimulator = true",
            "ehr = \"athena\"\nsimulator = \"yes\"\nparams = [\"practice\"]\nclient_secret = \"hunter2\"",
        );
    let (file, stderr) = refused("types", &bad, &[]);
    assert_eq!(
        stderr,
        report(&[
            format!("{file}: server.body_limit_bytes: expected a whole number, found text \"abc\""),
            format!("{file}: server.request_timeout_ms: expected a whole number of 0 or more, found -5"),
            // The secret itself is not repeated.
            format!(
                "{file}: connections.demo-athena.client_secret: expected a table with `env` or `file`, found text (a \
                 secret is never written in the config file: give {{ env = \"VARIABLE\" }} or {{ file = \"path\" }})"
            ),
            format!("{file}: connections.demo-athena.params: expected a table, found a list"),
            format!("{file}: connections.demo-athena.simulator: expected true or false, found text \"yes\""),
        ])
    );
    for rust in ["struct", "u64", "SecretRef", "sequence", "hunter2"] {
        assert!(!stderr.contains(rust), "`{rust}` in:\n{stderr}");
    }
}

#[test]
fn a_mistyped_environment_variable_is_blamed_not_the_file() {
    let (file, stderr) = refused(
        "env-typo",
        &demo_config(),
        &[("EHRGW_SERVER__LISTN", "0.0.0.0:8080"), ("EHRGW_SERVER__BODY_LIMIT_BYTES", "lots")],
    );
    assert!(!stderr.contains(&file), "the file is not to blame:\n{stderr}");
    assert_eq!(
        stderr,
        report(&[
            "environment variable EHRGW_SERVER__BODY_LIMIT_BYTES: server.body_limit_bytes: expected a whole number, \
             found text \"lots\""
                .to_string(),
            "environment variable EHRGW_SERVER__LISTN: unknown key `server.listn`; did you mean `listen`?".to_string(),
        ])
    );
}

#[test]
fn a_connection_that_failed_to_read_is_not_also_unknown() {
    // demo-canvas is a table with one bad key, demo-athena is not a table at all: the organizations that
    // use them are not told their connection is unknown.
    let bad = demo_config()
        .replace("[connections.demo-athena]\nehr = \"athena\"\nsimulator = true\n", "")
        .replace("[connections.demo-canvas]", "[connections]\ndemo-athena = \"athena\"\n[connections.demo-canvas]")
        .replace("ehr = \"canvas\"\nsimulator = true", "ehr = \"canvas\"\nsimulator = true\nmax_attempts = \"3\"");
    let (file, stderr) = refused("follow-on", &bad, &[]);
    assert_eq!(
        stderr,
        report(&[
            format!("{file}: connections.demo-athena: expected a table, found text \"athena\""),
            format!("{file}: connections.demo-canvas.max_attempts: expected a whole number, found text \"3\""),
        ])
    );
}

#[test]
fn every_problem_is_listed_in_one_run_with_the_mapping_folder() {
    let bad = demo_config()
        .replace("log_format = \"json\"", "log_format = \"yaml\"")
        .replace("mapping = \"athena\"", "mapping = \"athena-v2\"")
        .replace("name = \"demo\"", "name = \"demo\"\nscopes = [\"all\"]")
        + "[[organizations]]\nid = \"org-3\"\nslug = \"third\"\nname = \"Third\"\nconnection = \"demo-athena\"\nmapping = \"canvas\"\n";
    let (file, stderr) = refused("all-at-once", &bad, &[]);
    let mappings = mappings_dir();
    assert_eq!(
        stderr,
        report(&[
            format!("{file}: server.log_format: expected `json` or `pretty`, found text \"yaml\""),
            format!("{file}: unknown key `clients[0].scopes`; allowed: name, token_sha256, organizations"),
            format!("{file}: organizations[1].mapping: no mapping `athena-v2` in {mappings}"),
            format!("{file}: organizations[2]: connection `demo-athena` is athena but mapping `canvas` is for canvas"),
        ])
    );

    let missing = demo_config().replace(&mappings, "/nonexistent/mappings").replace("\"json\"", "\"xml\"");
    let (file, stderr) = refused("no-mappings", &missing, &[]);
    assert_eq!(
        stderr,
        report(&[
            format!("{file}: server.log_format: expected `json` or `pretty`, found text \"xml\""),
            format!("{file}: server.mappings_dir: the mapping folder /nonexistent/mappings does not exist"),
        ])
    );
}

#[test]
fn a_missing_default_config_says_where_it_looked() {
    let elsewhere = std::env::temp_dir().join(format!("ehrgw-cli-elsewhere-{}", std::process::id()));
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ehr-gateway")).arg("serve").current_dir(&elsewhere).output().unwrap();
    // The gateway sees the folder as the system names it (without symbolic links).
    let looked = std::fs::canonicalize(&elsewhere).unwrap().join("config/default.toml");
    let _ = std::fs::remove_dir(&elsewhere);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "no configuration file at {} (the default, config/default.toml, is looked for in the current folder); \
             run from the ehr-gateway repository folder, or point at a file with --config FILE\n",
            looked.display()
        )
    );
}

#[test]
fn help_describes_every_command_argument_and_option() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ehr-gateway")).args(args).arg("-h").output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let expect = |args: &[&str], lines: &[&str]| {
        let text = help(args);
        let have: Vec<&str> = text.lines().map(str::trim).collect();
        for line in lines {
            assert!(have.contains(line), "`{args:?} -h` lacks the line\n{line}\nin:\n{text}");
        }
    };
    expect(
        &[],
        &[
            "One FHIR R4 Media API in front of EHRs (Canvas Medical and athenahealth), driven by declarative mapping \
             files",
            "serve     Serve the gateway (the default config runs sandbox mode with in-process EHR simulators)",
            "mappings  Check, test or describe mapping files",
            "replay    Replay recorded cassettes through the current mappings (no EHR is called); exit 1 on regressions",
            "sim       Run an EHR simulator on its own, until Ctrl-C (port 0 in an address picks a free port)",
        ],
    );
    expect(
        &["serve"],
        &[
            "--config <FILE>  Configuration file [default: config/default.toml, in the current folder]",
            "--listen <ADDR>  Listen address, overriding the config and the environment (e.g. 127.0.0.1:8080; port 0 \
             picks a free port)",
            "--record <DIR>   Record every front-door exchange with its upstream exchanges as redacted cassettes in \
             DIR (overrides `record.dir`)",
        ],
    );
    expect(&["mappings", "check"], &["[DIR]  Folder of mapping files (*.toml) [default: mappings]"]);
    expect(
        &["mappings", "test"],
        &[
            "[DIR]  Folder of mapping files, with each mapping's golden cases under <mapping>/tests/ [default: mappings]",
        ],
    );
    expect(
        &["replay"],
        &[
            "<DIR>  Folder of cassettes (*.json, searched recursively), e.g. tests/replay",
            "--mappings <DIR>  Folder of mapping files to replay through [default: mappings]",
            "--accept          Rewrite the cassettes whose outcome changed with what the mappings produce now",
        ],
    );
    expect(
        &["sim", "canvas"],
        &[
            "--instance <ADDR>  Address of the Canvas instance host, which issues OAuth tokens [default: \
             127.0.0.1:9101]",
            "--fhir <ADDR>      Address of the FHIR API host [default: 127.0.0.1:9102]",
            "--s3 <ADDR>        Address of the stand-in for S3, which serves the media bytes behind presigned links \
             [default: 127.0.0.1:9103]",
        ],
    );
    expect(
        &["sim", "athena"],
        &["--listen <ADDR>  Address of the simulator's one host (token endpoint and API) [default: 127.0.0.1:9111]"],
    );
    let all = [help(&[]), help(&["serve"])].concat();
    assert!(!all.contains("next"), "no promises of what comes next:\n{all}");
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
