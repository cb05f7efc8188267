//! The `ehr-gateway` commands: `serve`, `mappings check|test|schema`, `replay` and `sim`. They sit on top
//! of everything (they may use the composition root and any module); nothing uses them. `main.rs` only
//! parses arguments and calls them.

pub mod mappings;
pub mod replay;
pub mod serve;
#[cfg(feature = "sandbox")]
pub mod sim;
