//! The production build (`cargo build --no-default-features`): no simulators, so a config that asks for
//! one is refused with the reason, and the sandbox-only commands are absent. These tests compile only in
//! that build (`cargo test --no-default-features`, which `.ci/run` runs).
#![cfg(not(feature = "sandbox"))]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary; a run that does not end within 30 s fails the test instead of hanging it.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ehr-gateway"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("`ehr-gateway {}` did not end: it should have refused at once", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn the_sandbox_config_is_refused_with_the_reason() {
    let out = run(&["serve", "--config", "config/default.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for connection in ["demo-canvas", "demo-athena"] {
        assert!(
            stderr.contains(&format!(
                "connections.{connection}.simulator: `simulator = true` needs the in-process EHR simulators"
            )),
            "{stderr}"
        );
    }
    assert!(stderr.contains("give the connection base_url, token_url, client_id and client_secret"), "{stderr}");
}

#[test]
fn the_sandbox_commands_are_absent() {
    for command in [["sim", "canvas"], ["replay", "tests/replay"]] {
        let out = run(&command);
        assert_eq!(out.status.code(), Some(2), "{command:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"), "{command:?}");
    }
}
