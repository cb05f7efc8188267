//! Sandbox mode: in-process EHR simulators started for connections with `simulator = true`, and the
//! connection facts each simulator stands for. Only in builds with the `sandbox` feature (the default);
//! a production build (`--no-default-features`) has no simulators, and its config refuses them.

use std::collections::{BTreeMap, HashMap};

use super::SimulatorEndpoint;
use crate::config::Secret;
use crate::sim::athena::{AthenaSim, AthenaSimConfig, AthenaSimHandle};
use crate::sim::canvas::{CanvasSim, CanvasSimConfig, CanvasSimHandle};

/// A simulator started for a sandbox connection.
#[derive(Clone)]
pub enum Simulator {
    Canvas(CanvasSimHandle),
    Athena(AthenaSimHandle),
}

/// The simulators of a running gateway, by connection name.
#[derive(Default)]
pub struct Sandbox {
    simulators: HashMap<String, Simulator>,
}

impl Sandbox {
    /// Starts the simulator of `ehr` for the connection `name`.
    pub async fn start(&mut self, name: &str, ehr: &str) -> Result<SimulatorEndpoint, String> {
        let (simulator, endpoint) = match ehr {
            "canvas" => {
                let config = CanvasSimConfig::default();
                let (client_id, secret) = (config.client_id.clone(), config.client_secret.clone());
                let handle =
                    CanvasSim::start(config).await.map_err(|e| format!("cannot start the Canvas simulator: {e}"))?;
                tracing::info!(connection = %name, fhir_base = %handle.fhir_base(), "started Canvas simulator");
                let endpoint = SimulatorEndpoint {
                    base_url: handle.fhir_base(),
                    token_url: handle.token_url(),
                    client_id,
                    client_secret: Secret::new(secret),
                };
                (Simulator::Canvas(handle), endpoint)
            }
            "athena" => {
                let config = AthenaSimConfig::default();
                let (client_id, secret) = (config.client_id.clone(), config.client_secret.clone());
                let handle = AthenaSim::start(config)
                    .await
                    .map_err(|e| format!("cannot start the athenahealth simulator: {e}"))?;
                tracing::info!(connection = %name, base_url = %handle.base_url(), "started athenahealth simulator");
                let endpoint = SimulatorEndpoint {
                    base_url: handle.base_url(),
                    token_url: handle.token_url(),
                    client_id,
                    client_secret: Secret::new(secret),
                };
                (Simulator::Athena(handle), endpoint)
            }
            other => return Err(format!("no simulator for EHR `{other}`")),
        };
        self.simulators.insert(name.to_string(), simulator);
        Ok(endpoint)
    }

    pub fn canvas(&self, connection: &str) -> Option<&CanvasSimHandle> {
        match self.simulators.get(connection)? {
            Simulator::Canvas(h) => Some(h),
            _ => None,
        }
    }

    pub fn athena(&self, connection: &str) -> Option<&AthenaSimHandle> {
        match self.simulators.get(connection)? {
            Simulator::Athena(h) => Some(h),
            _ => None,
        }
    }

    pub fn shutdown(&self) {
        for sim in self.simulators.values() {
            match sim {
                Simulator::Canvas(h) => h.shutdown(),
                Simulator::Athena(h) => h.shutdown(),
            }
        }
    }
}

/// The connection params a sandbox simulator stands for (its demo practice, …).
pub fn simulator_params(ehr: &str) -> BTreeMap<String, String> {
    match ehr {
        "athena" => [("practice".to_string(), crate::sim::athena::DEMO_PRACTICE_ID.to_string())].into(),
        _ => BTreeMap::new(),
    }
}
