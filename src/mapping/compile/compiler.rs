//! The `Compiler`: compiles the pieces of a mapping file (expressions, templates, steps, interactions)
//! and records every problem with the key it belongs to, so one run reports them all.

use std::collections::BTreeSet;
use std::path::Path;

use http::{Method, StatusCode};
use regex::Regex;
use serde_json::Value;

use super::locate::locate;
use crate::error::IssueCode;
use crate::mapping::template::{Expression, Template, TextTemplate, suggest};
use crate::mapping::{
    AppendOnly, Check, Diagnostic, Encoding, Interaction, Severity, Step, StepResult, Unchangeable, Unresolved, spec,
};

pub(super) struct Compiler<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) diagnostics: Vec<Diagnostic>,
    /// Names of the file's code tables, and those some `code(table)` uses.
    pub(super) tables: BTreeSet<String>,
    pub(super) used_tables: BTreeSet<String>,
}

/// Variables an expression may read at some point of the mapping.
pub(super) type Known = BTreeSet<String>;

pub(super) fn known<'a>(names: impl IntoIterator<Item = &'a str>) -> Known {
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

    pub(super) fn error(&mut self, key: &str, message: impl Into<String>) {
        self.push(Severity::Error, key, message);
    }

    pub(super) fn warning(&mut self, key: &str, message: impl Into<String>) {
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

    pub(super) fn expression(&mut self, key: &str, text: &str, vars: Option<&Known>) -> Option<Expression> {
        let e = Expression::compile(text).map_err(|e| self.error(key, e)).ok()?;
        self.inspect(key, [&e], vars);
        Some(e)
    }

    pub(super) fn text_template(&mut self, key: &str, text: &str, vars: Option<&Known>) -> Option<TextTemplate> {
        let t = TextTemplate::compile(text).map_err(|e| self.error(key, e)).ok()?;
        self.inspect(key, t.expressions().collect::<Vec<_>>(), vars);
        Some(t)
    }

    pub(super) fn template(&mut self, key: &str, value: &Value, vars: &Known) -> Template {
        let mut problems = Vec::new();
        let t = Template::compile(value, key, &mut problems);
        for (at, message) in problems {
            self.error(&at, message);
        }
        self.inspect_fields(key, value, vars);
        t
    }

    /// Inspects a template field by field, so an unknown variable or code table is reported at the
    /// field that uses it rather than at the template's table.
    fn inspect_fields(&mut self, key: &str, value: &Value, vars: &Known) {
        match value {
            // `$each` is an expression whatever it starts with (a variable name too).
            Value::Object(map) if map.contains_key("$each") => {
                if let Some(Value::String(source)) = map.get("$each")
                    && let Ok(e) = Expression::compile(source)
                {
                    self.inspect(&format!("{key}.$each"), [&e], Some(vars));
                }
                if let Some(item) = map.get("$item") {
                    self.inspect_fields(&format!("{key}.$item"), item, vars);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    self.inspect_fields(&format!("{key}.{k}"), v, vars);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.inspect_fields(&format!("{key}[{i}]"), v, vars);
                }
            }
            Value::String(_) => {
                // Syntax problems were reported by the whole template's compile; only inspect here.
                let field = Template::compile(value, key, &mut Vec::new());
                self.inspect(key, field.expressions(), Some(vars));
            }
            _ => {}
        }
    }

    /// Compiles steps; `vars` are the variables defined before the first step. Each step's `bind` adds to them.
    pub(super) fn steps(
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
            // Said of the last step, where the `result` belongs.
            self.error(
                &format!("{key}[{}]", specs.len() - 1),
                format!("the last step must have `result = \"{}\"`", format!("{needed:?}").to_lowercase()),
            );
        }
        steps
    }

    /// Compiles one step; `vars` are the variables defined before it.
    pub(super) fn step(&mut self, at: &str, s: &spec::StepSpec, vars: &Known) -> Option<Step> {
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

    pub(super) fn interaction(
        &mut self,
        key: &str,
        spec: &spec::InteractionSpec,
        result: StepResult,
        vars: Known,
    ) -> Interaction {
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
        let named = [("changeable", &spec.changeable), ("ignore_changes", &spec.ignore_changes)];
        for (list, elements) in named {
            for (i, element) in elements.iter().enumerate() {
                if !changeable_name_ok(element) {
                    self.error(
                        &format!("{key}.{list}[{i}]"),
                        format!("`{element}` names no element; write `Media.<element>` or `Media.extension('<url>')`"),
                    );
                }
            }
        }
        let append_only: Vec<AppendOnly> = spec
            .append_only
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let at = format!("{key}.append_only[{i}]");
                if a.bind.is_empty() || !a.bind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    self.error(&format!("{at}.bind"), format!("`{}` is not a variable name", a.bind));
                }
                Some(AppendOnly {
                    path: self.expression(&format!("{at}.path"), &a.path, Some(&Known::new()))?,
                    bind: a.bind.clone(),
                    expression: a.expression.clone(),
                    message: a.message.clone(),
                })
            })
            .collect();
        let mut vars = vars;
        vars.extend(spec.bind.keys().cloned());
        vars.extend(spec.params.iter().cloned());
        vars.extend(append_only.iter().map(|a| a.bind.clone()));
        let steps = self.steps(&format!("{key}.steps"), &spec.steps, Some(result), vars);
        // Text the EHR appends is added again by every resend: a step that sends it must not be resent.
        for (i, step) in steps.iter().enumerate() {
            let sends = step_variables(step);
            if let Some(a) = append_only.iter().find(|a| step.idempotent && sends.contains(&a.bind.as_str())) {
                self.error(
                    &format!("{key}.steps[{i}].idempotent"),
                    format!(
                        "this step sends `{}`, which the EHR appends: resending it would append twice; set `idempotent = false`",
                        a.bind
                    ),
                );
            }
        }
        Interaction {
            serialize_writes_by,
            checks,
            bind,
            unchangeable,
            changeable: spec.changeable.clone(),
            ignore_changes: spec.ignore_changes.clone(),
            append_only,
            params: spec.params.clone(),
            steps,
        }
    }

    pub(super) fn issue_code(&mut self, key: &str, code: &str) -> IssueCode {
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

/// `Media.<element>` or `Media.extension('<url>')`.
fn changeable_name_ok(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("Media.") else { return false };
    match rest.strip_prefix("extension('").and_then(|r| r.strip_suffix("')")) {
        Some(url) => !url.is_empty() && !url.contains('\''),
        None => !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()),
    }
}

/// The variables a step's request (path, query, headers, body) reads.
fn step_variables(step: &Step) -> Vec<&str> {
    let mut expressions: Vec<&Expression> = step.path.expressions().collect();
    for (_, t) in step.query.iter().chain(&step.headers) {
        expressions.extend(t.expressions());
    }
    if let Some(body) = &step.body {
        expressions.extend(body.expressions());
    }
    expressions.iter().flat_map(|e| e.variables()).collect()
}
