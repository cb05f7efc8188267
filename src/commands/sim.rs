//! `ehr-gateway sim <ehr>`: run an EHR simulator on its own, on fixed loopback ports, until Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;

use crate::sim::athena::{AthenaSim, AthenaSimConfig};
use crate::sim::canvas::{CanvasSim, CanvasSimConfig};

pub async fn canvas(instance: SocketAddr, fhir: SocketAddr, s3: SocketAddr) -> ExitCode {
    crate::logging::init("pretty");
    let config = CanvasSimConfig::default();
    let (id, secret) = (config.client_id.clone(), config.client_secret.clone());
    match CanvasSim::start_on(config, instance, fhir, s3).await {
        Ok(handle) => {
            println!("Canvas simulator: FHIR base {} token URL {}", handle.fhir_base(), handle.token_url());
            println!("demo client credentials: client_id={id} client_secret={secret}");
            let _ = tokio::signal::ctrl_c().await;
            handle.shutdown();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot start the Canvas simulator: {e}");
            ExitCode::FAILURE
        }
    }
}

pub async fn athena(listen: SocketAddr) -> ExitCode {
    crate::logging::init("pretty");
    let config = AthenaSimConfig::default();
    let (id, secret) = (config.client_id.clone(), config.client_secret.clone());
    match AthenaSim::start_on(config, listen).await {
        Ok(handle) => {
            println!("athenahealth simulator: base URL {} token URL {}", handle.base_url(), handle.token_url());
            println!("demo client credentials: client_id={id} client_secret={secret}");
            let _ = tokio::signal::ctrl_c().await;
            handle.shutdown();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot start the athenahealth simulator: {e}");
            ExitCode::FAILURE
        }
    }
}
