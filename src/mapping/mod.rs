//! Declarative mapping sets: loading and compiling `mappings/*.toml`, reporting every problem at once.
//!
//! A compiled [`MappingSet`] is immutable; a reload builds a new one and swaps it in (see
//! [`MappingRegistry`]), so requests in flight finish on the set they started with.

pub mod engine;
pub mod golden;
pub mod ids;
pub mod spec;
pub mod template;
pub mod transform;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use http::{Method, StatusCode};
use regex::Regex;
use serde_json::Value;

use crate::error::IssueCode;
use ids::IdTemplate;
use template::{Expression, Template, TextTemplate, suggest};

/// Front-door interactions, as named in mapping files (`[unsupported]`) and the CapabilityStatement.
pub const INTERACTIONS: &[&str] =
    &["create", "read", "vread", "update", "patch", "delete", "search", "history-instance", "history-type"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The mapping cannot be used.
    Error,
    /// Suspicious but usable (unused code tables, unreachable steps).
    Warning,
}

/// The JSON Schema of the mapping file format, generated from the types in `spec` (committed as
/// `docs/mapping.schema.json` for editors; a test keeps it current).
pub fn editor_schema() -> String {
    let schema = schemars::schema_for!(spec::MappingFile);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// One problem in a mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based line and column when known.
    pub position: Option<(usize, usize)>,
    /// Key path inside the file, e.g. `categories.photo.create.steps[0].path`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.severity {
            Severity::Error => "error: ",
            Severity::Warning => "warning: ",
        })?;
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}", self.file.display())?,
            None => write!(f, "{}", self.file.display())?,
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

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

/// Every mapping of one load, with its version.
#[derive(Debug)]
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
    /// Loads and compiles every `*.toml` directly in `dir`; returns every problem found.
    pub fn load_dir(dir: &Path) -> Result<MappingSet, Vec<Diagnostic>> {
        let mut diagnostics = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                return Err(vec![Diagnostic {
                    severity: Severity::Error,
                    file: dir.to_path_buf(),
                    position: None,
                    key: String::new(),
                    message: format!("cannot read mapping folder: {e}"),
                }]);
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        if files.is_empty() {
            diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: dir.to_path_buf(),
                position: None,
                key: String::new(),
                message: "no mapping files (*.toml) found".into(),
            });
        }
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        let mut mappings = BTreeMap::new();
        let mut warnings = Vec::new();
        for file in files {
            let name = file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    hasher.update(name.as_bytes());
                    hasher.update([0]);
                    hasher.update(text.as_bytes());
                    match compile_file(&name, &file, &text) {
                        Ok((m, mut w)) => {
                            warnings.append(&mut w);
                            mappings.insert(name, Arc::new(m));
                        }
                        Err(mut d) => diagnostics.append(&mut d),
                    }
                }
                Err(e) => diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: file.clone(),
                    position: None,
                    key: String::new(),
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        if !diagnostics.is_empty() {
            diagnostics.append(&mut warnings);
            return Err(diagnostics);
        }
        let version = hex::encode(hasher.finalize())[..16].to_string();
        Ok(MappingSet { mappings, version, loaded_at: SystemTime::now(), dir: dir.to_path_buf(), warnings })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Mapping>> {
        self.mappings.get(name)
    }
}

/// The currently published mapping set; readers take a snapshot, reloads swap the whole set.
#[derive(Debug)]
pub struct MappingRegistry {
    current: RwLock<Arc<MappingSet>>,
}

impl MappingRegistry {
    pub fn new(set: MappingSet) -> Self {
        MappingRegistry { current: RwLock::new(Arc::new(set)) }
    }

    pub fn snapshot(&self) -> Arc<MappingSet> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn publish(&self, set: MappingSet) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }
}

/// Finds the 1-based line/column of a key path (`errors[3].code`, `categories.x.create.steps[0].path`) in
/// the TOML text, best effort: each key is looked for after the line where its parent was found, and
/// `name[i]` picks the i-th `[[…name]]` table of an array of tables.
fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let header_components = |line: &str| -> Option<(bool, Vec<String>)> {
        let t = line.trim();
        let (array, inner) = if let Some(i) = t.strip_prefix("[[") {
            (true, i.split("]]").next()?)
        } else {
            (false, t.strip_prefix('[')?.split(']').next()?)
        };
        Some((array, inner.split('.').map(|c| c.trim().trim_matches('"').to_string()).collect()))
    };
    let mut from = 0;
    let mut found = None;
    for segment in key.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').split("][").next().and_then(|i| i.parse::<usize>().ok())),
            None => (segment, None),
        };
        let name = name.trim_matches('"');
        if name.is_empty() {
            continue;
        }
        let mut hit = None;
        if let Some(index) = index {
            let mut seen = 0;
            for (i, line) in lines.iter().enumerate().skip(from) {
                if let Some((true, comps)) = header_components(line)
                    && comps.last().map(String::as_str) == Some(name)
                {
                    if seen == index {
                        hit = Some(i);
                        break;
                    }
                    seen += 1;
                }
            }
        }
        if hit.is_none() {
            hit = lines.iter().enumerate().skip(from).find_map(|(i, line)| {
                let t = line.trim_start();
                if t.starts_with('#') {
                    return None;
                }
                if let Some((_, comps)) = header_components(line) {
                    return comps.iter().any(|c| c == name).then_some(i);
                }
                let defines = t.starts_with(&format!("{name} ="))
                    || t.starts_with(&format!("{name}="))
                    || t.starts_with(&format!("\"{name}\""));
                let inline = line.contains(&format!("{{ {name} =")) || line.contains(&format!(", {name} ="));
                (defines || inline).then_some(i)
            });
        }
        if let Some(i) = hit {
            let col = lines[i].find(name).map(|c| c + 1).unwrap_or(1);
            found = Some((i + 1, col));
            from = i;
        }
    }
    found
}

struct Compiler<'a> {
    file: &'a Path,
    text: &'a str,
    diagnostics: Vec<Diagnostic>,
    /// Names of the file's code tables, and those some `code(table)` uses.
    tables: BTreeSet<String>,
    used_tables: BTreeSet<String>,
}

/// Variables an expression may read at some point of the mapping.
type Known = BTreeSet<String>;

fn known<'a>(names: impl IntoIterator<Item = &'a str>) -> Known {
    names.into_iter().map(str::to_string).collect()
}

impl Compiler<'_> {
    fn push(&mut self, severity: Severity, key: &str, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            position: locate(self.text, key),
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.push(Severity::Error, key, message);
    }

    fn warning(&mut self, key: &str, message: impl Into<String>) {
        self.push(Severity::Warning, key, message);
    }

    /// Load-time checks every compiled expression gets: code tables exist, variables are defined.
    fn inspect<'e>(&mut self, key: &str, expressions: impl IntoIterator<Item = &'e Expression>, vars: Option<&Known>) {
        for e in expressions {
            for (name, arg) in e.transforms() {
                if matches!(name, "code" | "code_or_keep" | "lookup") {
                    let table = arg.unwrap_or_default().to_string();
                    if self.tables.contains(&table) {
                        self.used_tables.insert(table);
                    } else {
                        let hint = suggest(&table, self.tables.iter().map(String::as_str));
                        self.error(
                            key,
                            format!("unknown code table `{table}`{hint}; define it under [code_tables.{table}]"),
                        );
                    }
                }
            }
            for var in e.variables() {
                if let Some(vars) = vars
                    && !vars.contains(var)
                {
                    let hint = suggest(var, vars.iter().map(String::as_str));
                    let available = vars.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
                    self.error(key, format!("unknown variable `{var}`{hint} (available here: {available})"));
                }
            }
        }
    }

    fn expression(&mut self, key: &str, text: &str, vars: Option<&Known>) -> Option<Expression> {
        let e = Expression::compile(text).map_err(|e| self.error(key, e)).ok()?;
        self.inspect(key, [&e], vars);
        Some(e)
    }

    fn text_template(&mut self, key: &str, text: &str, vars: Option<&Known>) -> Option<TextTemplate> {
        let t = TextTemplate::compile(text).map_err(|e| self.error(key, e)).ok()?;
        self.inspect(key, t.expressions().collect::<Vec<_>>(), vars);
        Some(t)
    }

    fn template(&mut self, key: &str, value: &Value, vars: &Known) -> Template {
        let mut problems = Vec::new();
        let t = Template::compile(value, key, &mut problems);
        for (at, message) in problems {
            self.error(&at, message);
        }
        self.inspect(key, t.expressions(), Some(vars));
        t
    }

    /// Compiles steps; `vars` are the variables defined before the first step. Each step's `bind` adds to them.
    fn steps(
        &mut self,
        key: &str,
        specs: &[spec::StepSpec],
        result_needed: Option<StepResult>,
        mut vars: Known,
    ) -> Vec<Step> {
        if specs.is_empty() {
            self.error(key, "at least one step is needed");
        }
        let mut steps = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let at = format!("{key}[{i}]");
            if i > 0 && specs[i - 1].result.is_some() && specs[i - 1].when.is_none() && specs[i - 1].unless.is_none() {
                self.warning(&at, "this step can never run: the step before it already produces the result");
            }
            if let Some(step) = self.step(&at, s, &vars) {
                steps.push(step);
            }
            vars.extend(s.bind.keys().cloned());
        }
        if let Some(needed) = result_needed
            && specs.last().is_some_and(|_| steps.last().and_then(|s| s.result) != Some(needed))
        {
            self.error(key, format!("the last step must have `result = \"{}\"`", format!("{needed:?}").to_lowercase()));
        }
        steps
    }

    /// Compiles one step; `vars` are the variables defined before it.
    fn step(&mut self, at: &str, s: &spec::StepSpec, vars: &Known) -> Option<Step> {
        let method = match s.method.to_ascii_uppercase().as_str() {
            m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE") => Method::from_bytes(m.as_bytes()).ok(),
            other => {
                self.error(&format!("{at}.method"), format!("`{other}` is not one of GET, POST, PUT, PATCH, DELETE"));
                None
            }
        };
        if !s.path.starts_with('/') {
            self.error(
                &format!("{at}.path"),
                "the path must start with `/` (it is relative to the connection's base URL)",
            );
        }
        let path = self.text_template(&format!("{at}.path"), &s.path, Some(vars));
        let query = s
            .query
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), self.text_template(&format!("{at}.query.{k}"), v, Some(vars))?)))
            .collect();
        let headers = s
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), self.text_template(&format!("{at}.headers.{k}"), v, Some(vars))?)))
            .collect();
        let body = s.body.as_ref().map(|b| self.template(&format!("{at}.body"), b, vars));
        let encoding = match s.encoding.as_deref() {
            None | Some("json") => Encoding::Json,
            Some("form") => Encoding::Form,
            Some(other) => {
                self.error(&format!("{at}.encoding"), format!("unknown encoding `{other}`; use `json` or `form`"));
                Encoding::Json
            }
        };
        if s.expect.is_empty() || s.expect.iter().chain(&s.empty_on).any(|c| !(100..=599).contains(c)) {
            self.error(&format!("{at}.expect"), "list the HTTP statuses (100-599) that mean success");
        }
        let bind = s
            .bind
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), self.expression(&format!("{at}.bind.{k}"), v, Some(vars))?)))
            .collect();
        let result = match s.result.as_deref() {
            None => None,
            Some("resource") => Some(StepResult::Resource),
            Some("bundle") => Some(StepResult::Bundle),
            Some("bytes") => Some(StepResult::Bytes),
            Some("none") => Some(StepResult::None),
            Some(other) => {
                self.error(
                    &format!("{at}.result"),
                    format!("unknown result `{other}`; use resource, bundle, bytes or none"),
                );
                None
            }
        };
        let optional = |c: &mut Self, name: &str, text: &Option<String>| {
            text.as_ref().and_then(|t| c.expression(&format!("{at}.{name}"), t, Some(vars)))
        };
        let when = optional(self, "when", &s.when);
        let unless = optional(self, "unless", &s.unless);
        let success = optional(self, "success", &s.success);
        let select = optional(self, "select", &s.select);
        let cache = s.cache.as_ref().and_then(|c| {
            if s.bind.is_empty() {
                self.error(&format!("{at}.cache"), "only a step with `bind` values has something to cache");
            }
            let key = self.text_template(&format!("{at}.cache.key"), &c.key, Some(vars))?;
            Some((key, std::time::Duration::from_secs(c.ttl_secs)))
        });
        let unresolved = s.unresolved.as_ref().and_then(|u| {
            let status = match StatusCode::from_u16(u.status) {
                Ok(s) if s.is_client_error() => s,
                _ => {
                    self.error(&format!("{at}.unresolved.status"), "must be a 4xx: the request lacks what is needed");
                    StatusCode::BAD_REQUEST
                }
            };
            let code = self.issue_code(&format!("{at}.unresolved.code"), &u.code);
            let message = self.text_template(&format!("{at}.unresolved.message"), &u.message, Some(vars))?;
            Some(Unresolved { status, code, expression: u.expression.clone(), message })
        });
        let method = method?;
        let idempotent =
            s.idempotent.unwrap_or(matches!(method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE));
        Some(Step {
            method,
            path: path?,
            query,
            headers,
            body,
            encoding,
            expect: s.expect.clone(),
            bind,
            result,
            when,
            unless,
            success,
            select,
            empty_on: s.empty_on.clone(),
            idempotent,
            cache,
            unresolved,
        })
    }

    fn interaction(&mut self, key: &str, spec: &spec::InteractionSpec, result: StepResult, vars: Known) -> Interaction {
        let serialize_writes_by = spec
            .serialize_writes_by
            .iter()
            .enumerate()
            .filter_map(|(i, e)| self.expression(&format!("{key}.serialize_writes_by[{i}]"), e, Some(&Known::new())))
            .collect();
        let mut checks = Vec::new();
        for (i, c) in spec.checks.iter().enumerate() {
            let at = format!("{key}.checks[{i}]");
            let path = self.expression(&format!("{at}.path"), &c.path, Some(&Known::new()));
            let pattern = c
                .pattern
                .as_ref()
                .and_then(|p| Regex::new(p).map_err(|e| self.error(&format!("{at}.pattern"), e.to_string())).ok());
            let status = match StatusCode::from_u16(c.status.unwrap_or(400)) {
                Ok(s) if s.is_client_error() => s,
                _ => {
                    self.error(&format!("{at}.status"), "a check's status must be a 4xx");
                    StatusCode::BAD_REQUEST
                }
            };
            let code = self.issue_code(&format!("{at}.code"), c.code.as_deref().unwrap_or("invalid"));
            if let Some(path) = path {
                checks.push(Check {
                    path,
                    expression: c.expression.clone(),
                    required: c.required,
                    one_of: c.one_of.clone(),
                    pattern,
                    status,
                    code,
                    message: c.message.clone(),
                });
            }
        }
        let bind = spec
            .bind
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), self.expression(&format!("{key}.bind.{k}"), v, Some(&vars))?)))
            .collect();
        let unchangeable = spec
            .unchangeable
            .iter()
            .enumerate()
            .filter_map(|(i, u)| {
                Some(Unchangeable {
                    path: self.expression(&format!("{key}.unchangeable[{i}].path"), &u.path, Some(&Known::new()))?,
                    expression: u.expression.clone(),
                    message: u.message.clone(),
                })
            })
            .collect();
        let mut vars = vars;
        vars.extend(spec.bind.keys().cloned());
        vars.extend(spec.params.iter().cloned());
        let steps = self.steps(&format!("{key}.steps"), &spec.steps, Some(result), vars);
        Interaction { serialize_writes_by, checks, bind, unchangeable, params: spec.params.clone(), steps }
    }

    fn issue_code(&mut self, key: &str, code: &str) -> IssueCode {
        IssueCode::parse(code).unwrap_or_else(|| {
            let known = [
                "invalid",
                "required",
                "not-found",
                "not-supported",
                "business-rule",
                "conflict",
                "security",
                "forbidden",
                "throttled",
                "timeout",
                "transient",
                "exception",
            ];
            let hint = suggest(code, known.into_iter());
            self.error(key, format!("unknown OperationOutcome code `{code}`{hint}"));
            IssueCode::Exception
        })
    }
}

/// Deserializes the file. An unknown key on a one-line entry is reported and that line set aside, so
/// the rest of the file is still checked and every mistake shows in one run; other structural errors
/// (syntax, wrong types, missing keys) stop here.
fn parse_spec(file: &Path, text: &str) -> Result<(spec::MappingFile, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    let mut current = text.to_string();
    for _ in 0..50 {
        let e = match toml::from_str::<spec::MappingFile>(&current) {
            Ok(spec) => return Ok((spec, diagnostics)),
            Err(e) => e,
        };
        let position = e.span().map(|span| line_col(&current, span.start));
        diagnostics.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            position,
            key: String::new(),
            message: e.message().trim().to_string(),
        });
        // Only unknown keys on single-line entries are safe to set aside and retry without.
        let Some((line, _)) = position.filter(|_| e.message().starts_with("unknown field")) else { break };
        let mut lines: Vec<String> = current.lines().map(str::to_string).collect();
        let Some(entry) = lines.get_mut(line - 1) else { break };
        let balanced = entry.matches(['[', '{']).count() == entry.matches([']', '}']).count();
        if !entry.contains('=') || !balanced {
            break;
        }
        *entry = format!("# {entry}");
        current = lines.join("\n");
    }
    Err(diagnostics)
}

/// Parses and compiles one mapping file: the mapping and its warnings, or every problem found.
pub fn compile_file(name: &str, file: &Path, text: &str) -> Result<(Mapping, Vec<Diagnostic>), Vec<Diagnostic>> {
    let (spec, mut structural) = parse_spec(file, text)?;
    let mut c = Compiler {
        file,
        text,
        diagnostics: Vec::new(),
        tables: spec.code_tables.keys().cloned().collect(),
        used_tables: BTreeSet::new(),
    };
    if spec.auth.flow != "client_credentials" {
        c.error("auth.flow", format!("unknown auth flow `{}`; supported: client_credentials", spec.auth.flow));
    }
    let client_auth = match spec.auth.client_auth.as_str() {
        "form" => ClientAuth::Form,
        "basic" => ClientAuth::Basic,
        other => {
            c.error("auth.client_auth", format!("unknown client_auth `{other}`; use `form` or `basic`"));
            ClientAuth::Form
        }
    };
    for key in spec.unsupported.keys() {
        if !INTERACTIONS.contains(&key.as_str()) {
            let hint = suggest(key, INTERACTIONS.iter().copied());
            c.error(&format!("unsupported.{key}"), format!("unknown interaction `{key}`{hint}"));
        }
    }
    if let Some(h) = &spec.request_id_header
        && http::HeaderName::from_bytes(h.as_bytes()).is_err()
    {
        c.error("request_id_header", format!("`{h}` is not a header name"));
    }
    if !spec.categories.contains_key(&spec.default_category) {
        c.error("default_category", format!("`{}` is not one of the categories defined below", spec.default_category));
    }
    // A category with a `base` takes what it does not define from that category.
    let mut resolved: BTreeMap<String, spec::CategorySpec> = BTreeMap::new();
    for (cname, cs) in &spec.categories {
        let mut cs = cs.clone();
        if let Some(base_name) = &cs.base {
            match spec.categories.get(base_name) {
                Some(base) if base.base.is_none() => {
                    let base = base.clone();
                    cs.resource = cs.resource.or(base.resource);
                    cs.create = cs.create.or(base.create);
                    cs.read = cs.read.or(base.read);
                    cs.update = cs.update.or(base.update);
                    cs.delete = cs.delete.or(base.delete);
                    cs.search = cs.search.or(base.search);
                    cs.content = cs.content.or(base.content);
                    let mut vars = base.vars;
                    vars.extend(cs.vars);
                    cs.vars = vars;
                }
                Some(_) => c.error(
                    &format!("categories.{cname}.base"),
                    format!("`{base_name}` has a base of its own; a base must be a category without one"),
                ),
                None => {
                    let hint = suggest(base_name, spec.categories.keys().map(String::as_str));
                    c.error(&format!("categories.{cname}.base"), format!("no category `{base_name}`{hint}"));
                }
            }
        }
        resolved.insert(cname.clone(), cs);
    }
    let mut categories = BTreeMap::new();
    for (cname, cs) in &resolved {
        let at = format!("categories.{cname}");
        let Some(resource) = &cs.resource else {
            c.error(&at, "a category needs a `resource` (or a `base` that has one)");
            continue;
        };
        let id = match IdTemplate::compile(&cs.id) {
            Ok(t) => Some(t),
            Err(e) => {
                c.error(&format!("{at}.id"), e);
                None
            }
        };
        if let Some(id) = &id {
            for var in id.variables() {
                if !resource.bind.contains_key(var) {
                    c.error(
                        &format!("{at}.resource.bind"),
                        format!("the id template uses `{{{var}}}` but `bind` does not define `{var}`"),
                    );
                }
            }
        }
        let bind = resource
            .bind
            .iter()
            .filter_map(|(k, v)| {
                // May read the interaction's variables (which differ per interaction), so not checked here.
                Some((k.clone(), c.expression(&format!("{at}.resource.bind.{k}"), v, None)?))
            })
            .collect();
        let base: Known = spec.connection_params.iter().chain(cs.vars.keys()).cloned().collect();
        let resource_vars: Known = resource
            .bind
            .keys()
            .cloned()
            .chain(base.iter().cloned())
            .chain(["gateway_id".to_string(), "content_url".to_string()])
            .collect();
        let template = c.template(&format!("{at}.resource.template"), &resource.template, &resource_vars);
        // Reads, updates, deletes and content fetches start from the variables encoded in the gateway id.
        let id_vars: Known = id
            .as_ref()
            .map(|t| t.variables().map(str::to_string).chain(["gateway_id".to_string()]).collect())
            .unwrap_or_default();
        let id_vars: Known = id_vars.union(&base).cloned().collect();
        let interactions = [
            ("create", &cs.create),
            ("read", &cs.read),
            ("update", &cs.update),
            ("delete", &cs.delete),
            ("content", &cs.content),
        ];
        for (name, spec) in interactions {
            let Some(spec) = spec else { continue };
            if name != "update" && !spec.unchangeable.is_empty() {
                c.error(&format!("{at}.{name}.unchangeable"), "only an update has unchangeable elements");
            }
            if name != "content" && !spec.params.is_empty() {
                c.error(&format!("{at}.{name}.params"), "only a content fetch takes URL parameters");
            }
            if !matches!(name, "create" | "update") && !spec.bind.is_empty() {
                c.error(
                    &format!("{at}.{name}.bind"),
                    "only a create or an update has an inbound resource to bind from",
                );
            }
        }
        let create =
            cs.create.as_ref().map(|i| c.interaction(&format!("{at}.create"), i, StepResult::Resource, base.clone()));
        let read =
            cs.read.as_ref().map(|i| c.interaction(&format!("{at}.read"), i, StepResult::Resource, id_vars.clone()));
        let update = cs
            .update
            .as_ref()
            .map(|i| c.interaction(&format!("{at}.update"), i, StepResult::Resource, id_vars.clone()));
        let delete =
            cs.delete.as_ref().map(|i| c.interaction(&format!("{at}.delete"), i, StepResult::None, id_vars.clone()));
        let content =
            cs.content.as_ref().map(|i| c.interaction(&format!("{at}.content"), i, StepResult::Bytes, id_vars));
        let search = cs.search.as_ref().map(|s| {
            let sat = format!("{at}.search");
            let params = s
                .params
                .iter()
                .filter_map(|(k, v)| {
                    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                        c.error(&format!("{sat}.params.{k}"), format!("`{k}` is not a search parameter name"));
                    }
                    Some((k.clone(), c.expression(&format!("{sat}.params.{k}"), v, Some(&known([k.as_str()])))?))
                })
                .collect();
            for p in &s.require_one_of {
                if !s.params.contains_key(p) {
                    c.error(&format!("{sat}.require_one_of"), format!("`{p}` is not in `params`"));
                }
            }
            if s.count.default == 0 || s.count.default > s.count.max {
                c.error(&format!("{sat}.count"), "need 0 < default <= max");
            }
            let paging = match s.paging.as_deref() {
                None | Some("link") => Paging::Link,
                Some("offset") => Paging::Offset,
                Some(other) => {
                    c.error(&format!("{sat}.paging"), format!("unknown paging `{other}`; use `link` or `offset`"));
                    Paging::Link
                }
            };
            let search_vars: Known = s
                .params
                .keys()
                .cloned()
                .chain(["_count".to_string(), "_offset".to_string()])
                .chain(base.iter().cloned())
                .collect();
            let steps = c.steps(&format!("{sat}.steps"), &s.steps, Some(StepResult::Bundle), search_vars.clone());
            let entries = c.expression(&format!("{sat}.entries"), &s.entries, Some(&Known::new()));
            let total = s.total.as_ref().and_then(|t| c.expression(&format!("{sat}.total"), t, Some(&Known::new())));
            let next = s.next.as_ref().and_then(|t| c.expression(&format!("{sat}.next"), t, Some(&Known::new())));
            let each = s.each.as_ref().and_then(|e| {
                let mut vars = search_vars.clone();
                for spec in &s.steps {
                    vars.extend(spec.bind.keys().cloned());
                }
                vars.extend(resource.bind.keys().cloned());
                vars.insert("gateway_id".into());
                let step = c.step(&format!("{sat}.each.step"), &e.step, &vars)?;
                Some(Each { step, drop_on: e.drop_on.clone() })
            });
            Search {
                params,
                require_one_of: s.require_one_of.clone(),
                count_default: s.count.default,
                count_max: s.count.max,
                steps,
                entries: entries.unwrap_or_else(|| Expression::compile("$.none").expect("constant path compiles")),
                total,
                next,
                paging,
                each,
            }
        });
        if let Some(id) = id {
            categories.insert(
                cname.clone(),
                Category {
                    name: cname.clone(),
                    description: cs.description.clone(),
                    vars: cs.vars.clone(),
                    id,
                    bind,
                    template,
                    create,
                    read,
                    update,
                    delete,
                    search,
                    content,
                },
            );
        }
    }
    let mut errors = Vec::new();
    for (i, r) in spec.errors.iter().enumerate() {
        let at = format!("errors[{i}]");
        let status = match (r.status.parse::<u16>(), r.status.strip_suffix("xx").and_then(|c| c.parse::<u16>().ok())) {
            (Ok(s), _) if (100..=599).contains(&s) => Some(StatusMatch::Exact(s)),
            (_, Some(class)) if (1..=5).contains(&class) => Some(StatusMatch::Class(class)),
            _ => {
                c.error(&format!("{at}.status"), format!("`{}` is neither a status (404) nor a class (5xx)", r.status));
                None
            }
        };
        let gateway_status = StatusCode::from_u16(r.gateway_status).ok().filter(|s| s.as_u16() >= 400);
        if gateway_status.is_none() {
            c.error(&format!("{at}.gateway_status"), "must be an HTTP error status (400-599)");
        }
        let code = c.issue_code(&format!("{at}.code"), &r.code);
        let message = c.text_template(&format!("{at}.message"), &r.message, None);
        let when = r.when.as_ref().and_then(|w| c.expression(&format!("{at}.when"), w, None));
        let matches = r
            .matches
            .as_ref()
            .and_then(|p| Regex::new(p).map_err(|e| c.error(&format!("{at}.matches"), e.to_string())).ok());
        if r.matches.is_some() && r.when.is_none() {
            c.error(&format!("{at}.matches"), "`matches` tests the value of `when`; add `when`");
        }
        let expressions = r.expressions.as_ref().and_then(|e| c.expression(&format!("{at}.expressions"), e, None));
        if let (Some(status), Some(gateway_status), Some(message)) = (status, gateway_status, message) {
            errors.push(ErrorRule {
                status,
                when,
                matches,
                expressions,
                gateway_status,
                code,
                retryable: r.retryable,
                message,
            });
        }
    }
    for table in spec.code_tables.keys() {
        if !c.used_tables.contains(table) {
            c.warning(
                &format!("code_tables.{table}"),
                format!("code table `{table}` is never used by a `code({table})` transform"),
            );
        }
    }
    structural.append(&mut c.diagnostics);
    c.diagnostics = structural;
    if c.diagnostics.iter().any(|d| d.severity == Severity::Error) {
        return Err(c.diagnostics);
    }
    Ok((
        Mapping {
            name: name.to_string(),
            ehr: spec.ehr,
            display_name: spec.display_name,
            default_category: spec.default_category,
            auth: Auth {
                client_auth,
                scope: spec.auth.scope,
                refresh_before_expiry_secs: spec.auth.refresh_before_expiry_secs,
            },
            unsupported: spec.unsupported,
            categories,
            code_tables: spec.code_tables,
            errors,
            connection_params: spec.connection_params,
            request_id_header: spec.request_id_header,
            category_extension: spec.category_extension,
        },
        c.diagnostics,
    ))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_mappings_compile() {
        let set = MappingSet::load_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings")))
            .unwrap_or_else(|d| panic!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")));
        let canvas = set.get("canvas").expect("canvas mapping");
        assert_eq!(canvas.display_name, "Canvas Medical");
        assert!(canvas.category(&canvas.default_category).is_some());
        assert_eq!(set.version.len(), 16);
    }

    #[test]
    fn all_mistakes_are_reported_with_lines() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/canvas.toml")).unwrap();
        let broken = text
            .replacen("| location_id", "| location_idd", 1)
            .replacen("entries = \"$.entry[*].resource\"", "entries = \"$.entry[*.resource\"", 1)
            .replacen("code = \"not-found\"", "code = \"notfound\"", 1);
        let d = compile_file("canvas", Path::new("canvas.toml"), &broken).unwrap_err();
        let all = d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
        assert!(all.contains("unknown transform `location_idd`; did you mean `location_id`?"), "{all}");
        assert!(all.contains("bad JSONPath"), "{all}");
        assert!(all.contains("unknown OperationOutcome code `notfound`; did you mean `not-found`?"), "{all}");
        assert_eq!(d.len(), 3, "{all}");
        for diag in &d {
            let (line, _) = diag.position.expect("position");
            let text_line = broken.lines().nth(line - 1).unwrap();
            assert!(
                ["location_idd", "$.entry[*.resource", "notfound"].iter().any(|n| text_line.contains(n)),
                "{diag} points at `{text_line}`"
            );
        }
    }

    #[test]
    fn unknown_variables_and_code_tables_are_errors_unused_tables_and_dead_steps_warnings() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/canvas.toml")).unwrap();
        let broken = text
            .replacen("path = \"/Media/{media_id}/files/content\"", "path = \"/Media/{media_idd}/files/content\"", 1)
            .replacen("status = \"$.status\"", "status = \"$.status | code(statuses)\"", 1);
        let d = compile_file("canvas", Path::new("canvas.toml"), &broken).unwrap_err();
        let all = d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
        assert!(all.contains("unknown variable `media_idd`; did you mean `media_id`?"), "{all}");
        assert!(all.contains("unknown code table `statuses`"), "{all}");

        let warned = format!("{text}\n[code_tables.unused]\na = \"b\"\n").replacen(
            "result = \"bytes\"",
            "result = \"bytes\"\n\n[[categories.visual-exam-finding.content.steps]]\nmethod = \"GET\"\npath = \"/x\"\nexpect = [200]\nresult = \"bytes\"",
            1,
        );
        let (_, warnings) = compile_file("canvas", Path::new("canvas.toml"), &warned).expect("warnings do not fail");
        let all = warnings.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
        assert!(warnings.iter().all(|w| w.severity == Severity::Warning));
        assert!(all.contains("code table `unused` is never used"), "{all}");
        assert!(all.contains("this step can never run"), "{all}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line_and_do_not_hide_other_mistakes() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/canvas.toml")).unwrap();
        let broken = text.replacen("default_category =", "colour = \"blue\"\ndefault_category =", 1).replacen(
            "| location_id",
            "| location_idd",
            1,
        );
        let d = compile_file("canvas", Path::new("canvas.toml"), &broken).unwrap_err();
        assert!(d[0].message.contains("unknown field `colour`"), "{:?}", d);
        let (line, _) = d[0].position.unwrap();
        assert!(broken.lines().nth(line - 1).unwrap().contains("colour"));
        assert!(d.iter().any(|d| d.message.contains("unknown transform `location_idd`")), "{d:?}");
    }
}
