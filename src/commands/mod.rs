//! The `ehr-gateway` commands: `serve`, `mappings check|test|schema`, `replay` and `sim`. They sit on top
//! of everything (they may use the composition root and any module); nothing uses them. `main.rs` only
//! parses arguments and calls them. `sim` and `replay` exist in sandbox builds only: `replay` stands in
//! for the sandbox connection a cassette was recorded from, with the facts its simulator stands for.

pub mod mappings;
#[cfg(feature = "sandbox")]
pub mod replay;
pub mod serve;
#[cfg(feature = "sandbox")]
pub mod sim;
