//! In-process simulators of the EHR APIs the gateway fronts, real HTTP servers on loopback.

pub mod athena;
pub mod canvas;
pub mod fault;
mod support;
