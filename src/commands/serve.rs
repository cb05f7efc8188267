//! `ehr-gateway serve`: load and validate the config, start the gateway (and, in sandbox mode, its
//! simulators), and serve until Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;

pub async fn run(config: &Path, listen: Option<SocketAddr>, record: Option<PathBuf>) -> ExitCode {
    let mut config = match Config::load(config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
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
