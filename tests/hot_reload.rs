//! Hot reload against a running gateway: a valid edit is live on the next request without a restart, an
//! invalid one is rejected (visible at /admin/mappings) while the old set keeps serving, and a load of
//! concurrent requests across the reloads sees no failure. SIGHUP also reloads.

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
    // Not inside the mapping folder: every *.toml there is a mapping.
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
