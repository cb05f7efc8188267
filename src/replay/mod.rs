//! Replay tests: recording front-door exchanges with their upstream exchanges as redacted cassettes,
//! and replaying them through the current mappings without calling an EHR.

pub mod cassette;
pub mod record;
pub mod redact;
