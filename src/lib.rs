//! ehr-gateway: one FHIR R4 Media API in front of many EHRs, driven by declarative mapping files.
//! See ARCHITECTURE.md for the layers, the code map and the invariants. Modules are grouped by layer,
//! bottom up; a module never uses one of a higher group (`tests/layers.rs` checks the order, and
//! `../shared/tools/modcycles.py` in CI checks that no modules form a cycle).

// Shared types.
pub mod body;
pub mod config;
pub mod error;
pub mod fhir;
pub mod json;
pub mod logging;
pub mod request;

// The pure mapping engine.
pub mod mapping;

// I/O to EHRs.
pub mod upstream;

// Cassettes recorded from that I/O and replayed into it.
pub mod cassette;

// Server state.
pub mod state;

// The FHIR front door.
pub mod frontdoor;

// The tower stack in front of it.
pub mod middleware;

// The composition root.
pub mod server;

// The commands.
pub mod commands;

// The EHR simulators (sandbox builds only): they use nothing of the gateway.
#[cfg(feature = "sandbox")]
pub mod sim;
