//! Hot reload against a running gateway: a valid edit is live on the next request without a restart, an
//! invalid one is rejected (visible at /admin/mappings) while the old set keeps serving, and a load of
//! concurrent requests across the reloads sees no failure. SIGHUP also reloads. Every outcome (accepted,
//! unchanged, rejected, recovered) is logged whatever triggered it, and a stray file in the folder is
//! skipped with a warning in the log and at /admin/mappings.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn copy_mappings(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ehrgw-reload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(Path::new(&mappings_dir()).join("canvas.toml"), dir.join("canvas.toml")).unwrap();
    dir
}

const TITLE: &str = "title = \"$.content.title\", url";

fn set_title_template(file: &Path, template: &str) {
    let original = std::fs::read_to_string(Path::new(&mappings_dir()).join("canvas.toml")).unwrap();
    let edited = original.replacen(TITLE, &format!("title = \"{template}\", url"), 1);
    assert_ne!(original, edited);
    // Write to a temporary file and rename, as editors do, so no reader sees half a file.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, edited).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

async fn wait_for<F: Fn(&Value) -> bool>(client: &reqwest::Client, url: &str, what: &str, check: F) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = get_json(client, url).await;
        if check(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_apply_live_invalid_edits_are_rejected_and_no_request_fails() {
    let dir = copy_mappings("live");
    let file = dir.join("canvas.toml");
    let config = sandbox_config("").replace(&mappings_dir(), dir.to_str().unwrap());
    let gw = start_with(&config).await;
    let client = http();
    let base = base(&gw);
    let admin = format!("http://{}/admin/mappings", gw.addr);
    let created: Value =
        serde_json::from_slice(&post_media(&client, &base, create_body()).await.bytes().await.unwrap()).unwrap();
    let read_url = format!("{base}/Media/{}", created["id"].as_str().unwrap());
    let (_, status) = get_json(&client, &admin).await;
    let first_version = status["active"]["version"].as_str().unwrap().to_string();

    // Background load: bounded in count and time, every response must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, stop, ok, failed) =
                (client.clone(), read_url.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                for _ in 0..20_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let (status, _) = get_json(&client, &url).await;
                    if status == 200 {
                        ok.fetch_add(1, Ordering::SeqCst)
                    } else {
                        failed.fetch_add(1, Ordering::SeqCst)
                    };
                }
            })
        })
        .collect();

    // 1. A valid edit shows on the next requests, without a restart.
    set_title_template(&file, "Reloaded: {$.content.title}");
    wait_for(&client, &read_url, "the edited template", |m| m["content"]["title"] == "Reloaded: Image title").await;
    let (_, status) = get_json(&client, &admin).await;
    assert_ne!(status["active"]["version"].as_str().unwrap(), first_version);
    assert_eq!(status["last_reload"]["outcome"], "accepted");
    // Reloading reads the files; reads must not trigger further reloads.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, later) = get_json(&client, &admin).await;
    assert_eq!(later["last_reload"], status["last_reload"], "the reload triggered itself");

    // 2. An invalid edit is rejected with its diagnostics; the previous set keeps serving.
    set_title_template(&file, "$.content[.title");
    let status = wait_for(&client, &admin, "the rejected reload", |s| s["last_reload"]["outcome"] == "rejected").await;
    let diagnostics = status["last_reload"]["diagnostics"].to_string();
    assert!(diagnostics.contains("canvas.toml:") && diagnostics.contains("bad JSONPath"), "{diagnostics}");
    let (code, media) = get_json(&client, &read_url).await;
    assert_eq!((code, media["content"]["title"].as_str()), (200, Some("Reloaded: Image title")));

    // 3. Fixing it makes the new set active.
    set_title_template(&file, "Fixed: {$.content.title}");
    wait_for(&client, &read_url, "the fixed template", |m| m["content"]["title"] == "Fixed: Image title").await;

    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed during reloads");
    assert!(ok.load(Ordering::SeqCst) >= 20, "the load ran ({} requests)", ok.load(Ordering::SeqCst));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let dir = copy_mappings("hup");
    // Not inside the mapping folder: it would be reported there as a skipped file.
    let config_file = dir.with_extension("gateway.toml");
    std::fs::write(&config_file, sandbox_config("").replace(&mappings_dir(), dir.to_str().unwrap())).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ehr-gateway"))
        .args(["serve", "--config", config_file.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let addr = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr).lines().map_while(Result::ok).find_map(|l| {
            l.strip_prefix("ehr-gateway serving on http://")
                .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
        })
    })
    .join()
    .unwrap()
    .expect("gateway started");
    let client = http();
    let admin = format!("http://{addr}/admin/mappings");
    let (_, before) = get_json(&client, &admin).await;
    assert!(before["last_reload"].is_null());
    let kill = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = wait_for(&client, &admin, "the SIGHUP reload", |s| s["last_reload"]["trigger"] == "SIGHUP").await;
    assert_eq!(status["last_reload"]["outcome"], "accepted");
    child.kill().unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(config_file);
}

/// The gateway binary on `dir`, its JSON log lines collected as they come.
struct Binary {
    child: std::process::Child,
    addr: String,
    logs: Arc<std::sync::Mutex<Vec<Value>>>,
    config_file: PathBuf,
}

impl Binary {
    fn start(dir: &Path) -> Binary {
        use std::io::BufRead;
        let config_file = dir.with_extension("gateway.toml");
        std::fs::write(&config_file, sandbox_config("").replace(&mappings_dir(), dir.to_str().unwrap())).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ehr-gateway"))
            .args(["serve", "--config", config_file.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stdout, sink) = (child.stdout.take().unwrap(), logs.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
                sink.lock().unwrap().push(value);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("ehr-gateway serving on http://") {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or_default().to_string());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).expect("gateway started");
        Binary { child, addr, logs, config_file }
    }

    /// Waits for a log line after the first `from` lines with `message` containing `text`; returns its
    /// index and the line.
    fn wait_log(&self, from: usize, text: &str) -> (usize, Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let logs = self.logs.lock().unwrap();
                if let Some((i, l)) = logs
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, l)| l["fields"]["message"].as_str().is_some_and(|m| m.contains(text)))
                {
                    return (i, l.clone());
                }
                assert!(
                    Instant::now() < deadline,
                    "no log line with `{text}` after line {from}:\n{}",
                    logs.iter().skip(from).map(Value::to_string).collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_file);
    }
}

/// Replaces the mapping by rename from a hidden temporary name, as the guide says to publish: a reload
/// never sees half a file, and would skip the temporary one if it ever saw it.
fn publish(dir: &Path, text: &str) {
    let tmp = dir.join(".canvas.toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("canvas.toml")).unwrap();
}

#[tokio::test]
async fn every_reload_outcome_is_logged_whatever_triggered_it() {
    let dir = copy_mappings("logged");
    let original = std::fs::read_to_string(dir.join("canvas.toml")).unwrap();
    let gw = Binary::start(&dir);
    let client = http();
    let admin = format!("http://{}/admin/mappings", gw.addr);
    let (_, status) = get_json(&client, &admin).await;
    let v1 = status["active"]["version"].as_str().unwrap().to_string();
    let level = |l: &Value| l["level"].as_str().unwrap_or_default().to_string();

    // SIGHUP with nothing changed.
    assert!(Command::new("kill").args(["-HUP", &gw.child.id().to_string()]).status().unwrap().success());
    let (at, line) = gw.wait_log(0, &format!("mapping files unchanged; version {v1} keeps serving"));
    assert_eq!((level(&line).as_str(), line["fields"]["trigger"].as_str()), ("INFO", Some("SIGHUP")), "{line}");

    // A rejected edit, then the file back as it was: a recovery to the version that kept serving.
    publish(&dir, &original.replacen(TITLE, "title = \"$.content[.title\", url", 1));
    let (at, line) = gw.wait_log(at + 1, &format!("mapping reload rejected; version {v1} keeps serving"));
    assert_eq!((level(&line).as_str(), line["fields"]["trigger"].as_str()), ("WARN", Some("file change")), "{line}");
    let (at, problem) = gw.wait_log(at + 1, "mapping problem");
    assert!(problem["fields"]["diagnostic"].as_str().unwrap().contains("bad JSONPath"), "{problem}");
    publish(&dir, &original);
    let (at, line) =
        gw.wait_log(at + 1, &format!("recovered after a rejected reload: the files are back to version {v1}"));
    assert_eq!((level(&line).as_str(), line["fields"]["recovered"].as_bool()), ("INFO", Some(true)), "{line}");

    // An accepted edit names the new version and the one before.
    publish(&dir, &original.replacen(TITLE, "title = \"Edited: {$.content.title}\", url", 1));
    let (at, line) = gw.wait_log(at + 1, "mapping set reloaded; version ");
    let v2 = line["fields"]["version"].as_str().unwrap().to_string();
    assert_ne!(v2, v1);
    assert!(line["fields"]["message"].as_str().unwrap().ends_with(&format!("now serves (was {v1})")), "{line}");

    // Rejected, then fixed with another edit: recovered with a new version.
    publish(&dir, &original.replacen(TITLE, "title = \"$.content[.title\", url", 1));
    let (at, _) = gw.wait_log(at + 1, &format!("mapping reload rejected; version {v2} keeps serving"));
    publish(&dir, &original.replacen(TITLE, "title = \"Fixed: {$.content.title}\", url", 1));
    let (at, line) = gw.wait_log(at + 1, "mapping reload recovered after a rejected reload; version ");
    assert!(line["fields"]["message"].as_str().unwrap().ends_with(&format!("now serves (was {v2})")), "{line}");
    let v3 = line["fields"]["version"].as_str().unwrap().to_string();

    // An admin request with nothing changed.
    let r = client.post(format!("{admin}/reload")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (at, line) = gw.wait_log(at + 1, &format!("mapping files unchanged; version {v3} keeps serving"));
    assert_eq!(line["fields"]["trigger"], "admin request", "{line}");

    // A backup beside the mapping is skipped: never served, a warning in the log and at /admin/mappings.
    std::fs::write(dir.join("canvas-backup.toml"), &original).unwrap();
    let (_, line) = gw.wait_log(at + 1, "mapping warning");
    let warning = line["fields"]["diagnostic"].as_str().unwrap();
    assert!(warning.contains("canvas-backup.toml: skipped, not loaded as a mapping"), "{line}");
    let status = wait_for(&client, &admin, "the skipped file among the warnings", |s| {
        s["active"]["warnings"].to_string().contains("canvas-backup.toml: skipped")
    })
    .await;
    assert_eq!(status["active"]["version"], v3.as_str(), "a skipped file changes no version");
    assert_eq!(status["active"]["mappings"], serde_json::json!(["canvas"]));
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}
