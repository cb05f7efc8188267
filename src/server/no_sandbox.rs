//! What stands in for `sandbox.rs` in a production build (without the `sandbox` feature): the same
//! interface, with no simulators. The config already refuses `simulator = true` in such a build.

use std::collections::BTreeMap;

use super::SimulatorEndpoint;
use crate::config::NO_SIMULATORS;

#[derive(Default)]
pub struct Sandbox {}

impl Sandbox {
    pub async fn start(&mut self, name: &str, _ehr: &str) -> Result<SimulatorEndpoint, String> {
        Err(format!("connections.{name}.simulator: {NO_SIMULATORS}"))
    }

    pub fn shutdown(&self) {}
}

pub fn simulator_params(_ehr: &str) -> BTreeMap<String, String> {
    BTreeMap::new()
}
