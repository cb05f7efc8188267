//! `ehr-gateway serve`: load and validate the config, start the gateway (and, in sandbox mode, its
//! simulators), and serve until Ctrl-C.
//!
//! Before anything starts, the mapping folder is checked against the configuration in the same run as
//! the configuration itself (`mappings_dir` exists, every organization's mapping is there and fits its
//! connection), so a first run lists every problem at once instead of one per attempt.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, ConfigErrors, DEFAULT_CONFIG, KeyPath, Loaded};
use crate::mapping::MappingSet;
use crate::state::reload;

/// `config` is `None` when `--config` was not given (the default file, relative to the current folder).
pub async fn run(config: Option<&Path>, listen: Option<SocketAddr>, record: Option<PathBuf>) -> ExitCode {
    let mut config = match load(config) {
        Ok(c) => c,
        Err(message) => {
            eprint!("{message}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    if record.is_some() {
        config.record.dir = record;
    }
    crate::logging::init(&config.server.log_format);
    let running = match crate::server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("ehr-gateway serving on http://{} (Ctrl-C stops)", running.addr);
    let _ = tokio::signal::ctrl_c().await;
    running.shutdown();
    ExitCode::SUCCESS
}

/// The configuration, checked with the mapping folder; `Err` is the whole report to print.
fn load(config: Option<&Path>) -> Result<Config, String> {
    let path = config.unwrap_or(Path::new(DEFAULT_CONFIG));
    if config.is_none() && !path.exists() {
        return Err(format!(
            "no configuration file at {} (the default, {DEFAULT_CONFIG}, is looked for in the current folder); \
             run from the ehr-gateway repository folder, or point at a file with --config FILE\n",
            absolute(path).display()
        ));
    }
    let mut loaded = Config::read(path).map_err(|e| e.to_string())?;
    let mapping_problems = check_mappings(&mut loaded);
    let config = loaded.into_result();
    let mut report = config.as_ref().err().map(ConfigErrors::to_string).unwrap_or_default();
    report.push_str(&mapping_problems);
    match config {
        Ok(config) if report.is_empty() => Ok(config),
        _ => Err(report),
    }
}

/// Adds to `loaded` the problems of the configuration with its mapping folder; returns the report of
/// problems inside the mapping files themselves (empty when they load).
fn check_mappings(loaded: &mut Loaded) -> String {
    let key = KeyPath::from("server.mappings_dir");
    if loaded.failed(&key) {
        return String::new();
    }
    let dir = absolute(&loaded.config.server.mappings_dir);
    if !dir.is_dir() {
        let relative = if loaded.config.server.mappings_dir.is_relative() {
            " (a relative mappings_dir is taken from the current folder)"
        } else {
            ""
        };
        let what = if dir.exists() { "is not a folder" } else { "does not exist" };
        loaded.report(&key, format!("{key}: the mapping folder {} {what}{relative}", dir.display()));
        return String::new();
    }
    let set = match MappingSet::load_dir(&dir) {
        Ok(set) => set,
        Err(diagnostics) => {
            let n = diagnostics.len();
            // A TOML error spans lines; they stay inside their item.
            let lines: String = diagnostics
                .iter()
                .map(|d| format!("  - {}\n", d.to_string().trim_end().replace('\n', "\n    ")))
                .collect();
            let noun = if n == 1 { "problem" } else { "problems" };
            return format!("the mapping files in {} have {n} {noun}:\n{lines}", dir.display());
        }
    };
    let mut pending = Vec::new();
    // One organization at a time, so the check can leave out what already failed (a mapping name that
    // did not read, a connection with a problem of its own) without repeating it.
    for (i, org) in loaded.config.organizations.iter().enumerate() {
        let at = KeyPath::root().key("organizations").at(i);
        if loaded.failed(&at.key("mapping")) {
            continue;
        }
        let mut one = loaded.config.clone();
        one.organizations = vec![org.clone()];
        // `fit_problems` reads a connection's ehr, simulator and params; without them trustworthy it
        // checks the mapping alone.
        let connection = KeyPath::root().key("connections").key(&org.connection);
        let usable = !loaded.failed(&at.key("connection"))
            && ["ehr", "simulator", "params"].iter().all(|key| !loaded.failed(&connection.key(key)));
        one.connections.retain(|name, _| usable && name == &org.connection);
        for problem in reload::fit_problems(&one, &set) {
            // `fit_problems` numbers the organizations it was given: here only this one, at 0.
            let problem = match problem.strip_prefix("organizations[0]") {
                Some(rest) => format!("{at}{rest}"),
                None => problem,
            };
            let path = problem.split([':', ' ']).next().unwrap_or_default();
            pending.push((KeyPath::from(path), problem));
        }
    }
    for (path, problem) in pending {
        loaded.report(&path, problem);
    }
    String::new()
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
