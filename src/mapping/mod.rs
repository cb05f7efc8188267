//! Declarative mapping sets: loading and compiling `mappings/*.toml`, reporting every problem at once.
//!
//! A compiled [`MappingSet`] is immutable; a reload builds a new one and swaps it in (see
//! [`MappingRegistry`]), so requests in flight finish on the set they started with.

mod compile;
mod diagnostics;
pub mod engine;
pub mod golden;
pub mod ids;
mod jsonpath;
mod model;
mod registry;
pub mod spec;
pub mod template;
pub mod transform;

pub use compile::compile_file;
pub use diagnostics::{Diagnostic, Severity};
pub use model::{
    AppendOnly, Auth, Category, Check, ClientAuth, Each, Encoding, ErrorRule, Interaction, Mapping, MappingSet, Paging,
    Search, StatusMatch, Step, StepResult, Unchangeable, Unresolved,
};
pub use registry::MappingRegistry;

/// Front-door interactions, as named in mapping files (`[unsupported]`) and the CapabilityStatement.
pub const INTERACTIONS: &[&str] =
    &["create", "read", "vread", "update", "patch", "delete", "search", "history-instance", "history-type"];

/// The JSON Schema of the mapping file format, generated from the types in `spec` (committed as
/// `docs/mapping.schema.json` for editors; a test keeps it current).
pub fn editor_schema() -> String {
    let schema = schemars::schema_for!(spec::MappingFile);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}
