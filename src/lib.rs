//! ehr-gateway: one FHIR R4 Media API in front of many EHRs, driven by declarative mapping files.
//! See ARCHITECTURE.md for the layers, the code map and the invariants. Modules are listed bottom up;
//! a module uses only those above it in this list (checked by `../shared/tools/modcycles.py` in CI).

// Shared types.
pub mod body;
pub mod config;
pub mod error;
pub mod fhir;
pub mod logging;
pub mod request;
// The pure mapping engine.
pub mod mapping;
// I/O to EHRs, and cassettes recorded from it.
pub mod cassette;
pub mod upstream;
// Server state, the front door and the tower stack.
pub mod frontdoor;
pub mod middleware;
pub mod state;
// The composition root and the commands.
pub mod commands;
pub mod server;
// The EHR simulators (sandbox builds only): they use nothing of the gateway.
#[cfg(feature = "sandbox")]
pub mod sim;

pub use commands::replay;
