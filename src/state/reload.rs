//! Hot reload of the mapping set: on a file change in the mapping folder (debounced) or SIGHUP, the
//! folder is loaded and checked; a valid set is published atomically, an invalid one is rejected with
//! all its diagnostics logged while the previous set keeps serving. Requests in flight keep the set they
//! started with (they hold an `Arc` snapshot).
//!
//! The `[auth]` section of a mapping is read when upstream clients are built, so auth changes need a
//! restart; everything else takes effect on the next request.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};
use serde_json::{Value, json};

use crate::config::Config;
use crate::fhir::primitive::rfc3339;
use crate::mapping::{MappingRegistry, MappingSet};

/// Organizations whose mapping is missing from `set` or made for another EHR than their connection.
pub fn fit_problems(config: &Config, set: &MappingSet) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, org) in config.organizations.iter().enumerate() {
        match set.get(&org.mapping) {
            None => problems.push(format!(
                "organizations[{i}].mapping: no mapping `{}` in {}",
                org.mapping,
                set.dir.display()
            )),
            Some(m) => {
                if let Some(c) = config.connections.get(&org.connection) {
                    if c.ehr != m.ehr {
                        problems.push(format!(
                            "organizations[{i}]: connection `{}` is {} but mapping `{}` is for {}",
                            org.connection, c.ehr, org.mapping, m.ehr
                        ));
                    }
                    for param in &m.connection_params {
                        if !c.simulator && !c.params.contains_key(param) {
                            problems.push(format!(
                                "connections.{}.params.{param}: mapping `{}` needs it (e.g. the practice id)",
                                org.connection, org.mapping
                            ));
                        }
                    }
                }
            }
        }
    }
    problems
}

/// The outcome of the last reload attempt, shown at `GET /admin/mappings`.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub at: SystemTime,
    pub trigger: String,
    pub accepted: bool,
    /// Accepted with another version than the one serving before.
    pub changed: bool,
    /// Accepted after the previous attempt was rejected.
    pub recovered: bool,
    pub version: Option<String>,
    pub diagnostics: Vec<String>,
    /// Warnings of an accepted set (files skipped as not mappings among them).
    pub warnings: Vec<String>,
}

pub struct Reloader {
    /// One reload at a time (watcher, SIGHUP and admin requests), so an older set is never published last.
    running: Mutex<()>,
    registry: Arc<MappingRegistry>,
    config: Config,
    dir: PathBuf,
    last: Mutex<Option<ReloadOutcome>>,
}

impl Reloader {
    pub fn new(registry: Arc<MappingRegistry>, config: Config) -> Self {
        let dir = config.server.mappings_dir.clone();
        Reloader { running: Mutex::new(()), registry, config, dir, last: Mutex::new(None) }
    }

    /// Loads the folder and publishes it if valid; returns the outcome either way, and logs it: every
    /// outcome says what is serving afterwards, so an operator reading the log after an edit, a SIGHUP
    /// or an admin request knows which version answers.
    pub fn reload(&self, trigger: &str) -> ReloadOutcome {
        let _one_at_a_time = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.registry.snapshot();
        let current = previous.version.clone();
        let after_rejection = self.last().is_some_and(|o| !o.accepted);
        let mut outcome = ReloadOutcome {
            at: SystemTime::now(),
            trigger: trigger.into(),
            accepted: false,
            changed: false,
            recovered: false,
            version: None,
            diagnostics: vec![],
            warnings: vec![],
        };
        match MappingSet::load_dir(&self.dir) {
            Ok(set) => {
                let problems = fit_problems(&self.config, &set);
                if problems.is_empty() {
                    outcome.accepted = true;
                    outcome.recovered = after_rejection;
                    outcome.changed = set.version != current;
                    outcome.version = Some(set.version.clone());
                    outcome.warnings = set.warnings.iter().map(ToString::to_string).collect();
                    // The same version serves the same mappings; the set is still swapped when its
                    // warnings differ (a stray file came or went), so /admin/mappings shows the folder as it is.
                    if outcome.changed || set.warnings != previous.warnings {
                        self.registry.publish(set);
                    }
                } else {
                    outcome.diagnostics = problems;
                }
            }
            Err(diagnostics) => outcome.diagnostics = diagnostics.iter().map(ToString::to_string).collect(),
        }
        log(&outcome, &current);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome.clone());
        outcome
    }

    pub fn last(&self) -> Option<ReloadOutcome> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The admin view: active set and last reload.
    pub fn status(&self) -> Value {
        let set = self.registry.snapshot();
        let last = self.last().map(|o| {
            json!({
                "at": rfc3339(o.at),
                "trigger": o.trigger,
                "outcome": if o.accepted { "accepted" } else { "rejected" },
                "changed": o.changed,
                "recovered": o.recovered,
                "version": o.version,
                "diagnostics": o.diagnostics,
                "warnings": o.warnings,
            })
        });
        json!({
            "active": {
                "version": set.version,
                "loaded_at": rfc3339(set.loaded_at),
                "dir": set.dir.display().to_string(),
                "mappings": set.mappings.keys().collect::<Vec<_>>(),
                "warnings": set.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            },
            "last_reload": last,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Logs a reload's outcome at info (accepted, unchanged, recovered) or warn (rejected), with its
/// trigger and the version serving afterwards. Diagnostics and warnings name files, lines and keys of the
/// mapping files: no request data.
fn log(o: &ReloadOutcome, serving: &str) {
    let trigger = o.trigger.as_str();
    let version = o.version.as_deref().unwrap_or(serving);
    let recovered = o.recovered;
    match (o.accepted, o.changed, o.recovered) {
        (true, true, false) => {
            tracing::info!(
                trigger,
                version,
                previous = serving,
                "mapping set reloaded; version {version} now serves (was {serving})"
            )
        }
        (true, true, true) => tracing::info!(
            trigger,
            version,
            previous = serving,
            recovered,
            "mapping reload recovered after a rejected reload; version {version} now serves (was {serving})"
        ),
        (true, false, false) => {
            tracing::info!(trigger, version, "mapping files unchanged; version {version} keeps serving")
        }
        (true, false, true) => tracing::info!(
            trigger,
            version,
            recovered,
            "mapping reload recovered after a rejected reload: the files are back to version {version}, which keeps serving"
        ),
        (false, ..) => {
            tracing::warn!(
                trigger,
                problems = o.diagnostics.len(),
                kept = serving,
                "mapping reload rejected; version {serving} keeps serving"
            );
            for d in &o.diagnostics {
                tracing::warn!(trigger, diagnostic = %d, "mapping problem");
            }
        }
    }
    for w in &o.warnings {
        tracing::warn!(trigger, diagnostic = %w, "mapping warning");
    }
}

/// Watches the mapping folder and listens for SIGHUP, reloading on either, until the process ends.
/// File events are debounced: a reload starts once the folder has been quiet for `debounce`, so an
/// editor's save (write, rename, chmod) costs one reload. Reads (our own included) are not changes.
/// Returns the watcher, which must be kept alive.
pub fn spawn(reloader: Arc<Reloader>, debounce: Duration) -> Result<impl Send, String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let file_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
        if let Ok(event) = result
            && matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_))
        {
            let _ = file_tx.send("file change");
        }
    })
    .map_err(|e| format!("cannot watch the mapping folder: {e}"))?;
    watcher
        .watch(reloader.dir(), RecursiveMode::Recursive)
        .map_err(|e| format!("cannot watch {}: {e}", reloader.dir().display()))?;
    #[cfg(unix)]
    {
        let hup_tx = tx.clone();
        if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    if hup_tx.send("SIGHUP").is_err() {
                        break;
                    }
                }
            });
        }
    }
    tokio::spawn(async move {
        while let Some(mut trigger) = rx.recv().await {
            // Debounce: wait until no event arrived for `debounce`.
            while let Ok(Some(next)) = tokio::time::timeout(debounce, rx.recv()).await {
                if next == "SIGHUP" {
                    trigger = next;
                }
            }
            // Loading reads files: keep it off the async workers.
            let r = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload(trigger)).await;
        }
    });
    Ok(watcher)
}
