//! The compiled model: what a checked mapping file becomes, and the set of them one load produces. The
//! engine runs it as it is; nothing in it changes after compiling.

use super::spec::RedactSpec;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, StatusCode};
use regex::Regex;

use super::Diagnostic;
use super::ids::IdTemplate;
use super::template::{Expression, Template, TextTemplate};
use super::transform;
use crate::error::IssueCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Form,
    Basic,
}

#[derive(Debug, Clone)]
pub struct Auth {
    pub client_auth: ClientAuth,
    pub scope: Option<String>,
    pub refresh_before_expiry_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Form,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepResult {
    Resource,
    Bundle,
    Bytes,
    /// The step's success is the whole outcome (a delete).
    None,
}

/// The client error answered when a step's `bind` finds nothing.
#[derive(Debug)]
pub struct Unresolved {
    pub status: StatusCode,
    pub code: IssueCode,
    pub expression: Option<String>,
    pub message: TextTemplate,
}

#[derive(Debug)]
pub struct Step {
    pub method: Method,
    pub path: TextTemplate,
    pub query: Vec<(String, TextTemplate)>,
    pub headers: Vec<(String, TextTemplate)>,
    pub body: Option<Template>,
    pub encoding: Encoding,
    pub expect: Vec<u16>,
    pub bind: Vec<(String, Expression)>,
    pub result: Option<StepResult>,
    pub when: Option<Expression>,
    pub unless: Option<Expression>,
    pub success: Option<Expression>,
    pub select: Option<Expression>,
    pub empty_on: Vec<u16>,
    pub idempotent: bool,
    /// Cache key template and lifetime of the step's bound values.
    pub cache: Option<(TextTemplate, std::time::Duration)>,
    pub unresolved: Option<Unresolved>,
}

#[derive(Debug)]
pub struct Unchangeable {
    pub path: Expression,
    pub expression: String,
    pub message: String,
}

/// A text element the EHR can only append to; the added text becomes the variable `bind`.
#[derive(Debug)]
pub struct AppendOnly {
    pub path: Expression,
    pub bind: String,
    pub expression: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// Follow the upstream's `next` link.
    Link,
    /// The gateway pages with `_offset`.
    Offset,
}

#[derive(Debug)]
pub struct Each {
    pub step: Step,
    pub drop_on: Vec<u16>,
}

#[derive(Debug)]
pub struct Check {
    pub path: Expression,
    pub expression: String,
    pub required: bool,
    pub one_of: Option<Vec<String>>,
    pub pattern: Option<Regex>,
    pub status: StatusCode,
    pub code: IssueCode,
    pub message: String,
}

#[derive(Debug)]
pub struct Interaction {
    pub serialize_writes_by: Vec<Expression>,
    pub checks: Vec<Check>,
    pub bind: Vec<(String, Expression)>,
    pub unchangeable: Vec<Unchangeable>,
    /// Elements an update may change (`Media.x`, `Media.extension('url')`); empty: any.
    pub changeable: Vec<String>,
    /// Elements the EHR maintains; the client's copy is replaced by the current value.
    pub ignore_changes: Vec<String>,
    pub append_only: Vec<AppendOnly>,
    pub params: Vec<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug)]
pub struct Search {
    pub params: BTreeMap<String, Expression>,
    pub require_one_of: Vec<String>,
    pub count_default: u32,
    pub count_max: u32,
    pub steps: Vec<Step>,
    pub entries: Expression,
    pub total: Option<Expression>,
    pub next: Option<Expression>,
    pub paging: Paging,
    pub each: Option<Each>,
}

#[derive(Debug)]
pub struct Category {
    pub name: String,
    pub description: String,
    /// Constants the category's templates and steps may use as variables.
    pub vars: BTreeMap<String, String>,
    pub id: IdTemplate,
    pub bind: Vec<(String, Expression)>,
    pub template: Template,
    pub create: Option<Interaction>,
    pub read: Option<Interaction>,
    pub update: Option<Interaction>,
    pub delete: Option<Interaction>,
    pub search: Option<Search>,
    pub content: Option<Interaction>,
}

impl Category {
    /// The HTTP methods `Media/{id}` of this category allows (its 405s' `Allow` header).
    pub fn instance_methods(&self) -> String {
        let mut methods = vec!["GET"];
        if self.update.is_some() {
            methods.extend(["PUT", "PATCH"]);
        }
        if self.delete.is_some() {
            methods.push("DELETE");
        }
        methods.join(", ")
    }
}

#[derive(Debug, Clone)]
pub enum StatusMatch {
    Exact(u16),
    Class(u16),
}

impl std::fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusMatch::Exact(s) => write!(f, "{s}"),
            StatusMatch::Class(c) => write!(f, "{c}xx"),
        }
    }
}

impl StatusMatch {
    pub fn matches(&self, status: u16) -> bool {
        match self {
            StatusMatch::Exact(s) => *s == status,
            StatusMatch::Class(c) => status / 100 == *c,
        }
    }
}

#[derive(Debug)]
pub struct ErrorRule {
    pub status: StatusMatch,
    /// The interactions the rule applies to; empty: all.
    pub interactions: Vec<String>,
    pub when: Option<Expression>,
    pub matches: Option<Regex>,
    pub expressions: Option<Expression>,
    pub gateway_status: StatusCode,
    pub code: IssueCode,
    pub retryable: bool,
    pub message: TextTemplate,
}

/// One compiled mapping file: how one EHR family is spoken to.
#[derive(Debug)]
pub struct Mapping {
    pub name: String,
    pub ehr: String,
    pub display_name: String,
    pub default_category: String,
    pub auth: Auth,
    pub unsupported: BTreeMap<String, String>,
    pub categories: BTreeMap<String, Category>,
    pub code_tables: transform::CodeTables,
    pub errors: Vec<ErrorRule>,
    pub connection_params: Vec<String>,
    pub request_id_header: Option<String>,
    pub category_extension: Option<String>,
    pub max_upload_bytes: Option<u64>,
    /// Where the EHR's exchanges hold what a cassette must not keep.
    pub redact: RedactSpec,
}

impl Mapping {
    pub fn category(&self, name: &str) -> Option<&Category> {
        self.categories.get(name)
    }

    /// Finds the category whose id template matches a gateway id, with the id's variables.
    pub fn category_for_id(&self, id: &str) -> Option<(&Category, BTreeMap<String, String>)> {
        self.categories.values().find_map(|c| c.id.parse(id).map(|vars| (c, vars)))
    }
}

/// Every mapping of one load, with its version. Cloning shares the compiled mappings.
#[derive(Debug, Clone)]
pub struct MappingSet {
    pub mappings: BTreeMap<String, Arc<Mapping>>,
    /// Content hash of all files (first 16 hex chars of SHA-256).
    pub version: String,
    pub loaded_at: SystemTime,
    pub dir: PathBuf,
    /// Problems that did not stop the load.
    pub warnings: Vec<Diagnostic>,
}

impl MappingSet {
    pub fn get(&self, name: &str) -> Option<&Arc<Mapping>> {
        self.mappings.get(name)
    }
}
