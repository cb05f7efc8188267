//! ehr-gateway: one FHIR R4 Media API in front of many EHRs, driven by declarative mapping files.
//! See ARCHITECTURE.md for the code map and invariants.

pub mod body;
pub mod config;
pub mod error;
pub mod fhir;
pub mod frontdoor;
pub mod logging;
pub mod mapping;
pub mod middleware;
pub mod reload;
pub mod replay;
pub mod server;
pub mod sim;
pub mod state;
pub mod upstream;
