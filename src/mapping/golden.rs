//! Golden mapping tests kept as data beside the mappings (`mappings/<name>/tests/*.toml`): a canonical
//! request, the upstream requests the mapping must produce with the answers to feed back, and the
//! expected FHIR result or OperationOutcome. Runs on the pure engine: no network, no clock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};

use super::engine::{Context, Outcome, Run, UpstreamRequest, UpstreamResponse};
use super::{Mapping, MappingSet};
use crate::error::GatewayError;

mod accept;

pub use accept::{AcceptReport, Action, accept_dir, accept_file, render_accept};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenCase {
    pub description: String,
    /// `create`, `read`, `update`, `delete`, `search` or `content`.
    pub interaction: String,
    /// Defaults to the mapping's default category (or, for reads, the category of the id).
    #[serde(default)]
    pub category: Option<String>,
    /// The organization's FHIR base as clients see it.
    #[serde(default = "default_fhir_base")]
    pub fhir_base: String,
    /// The connection's `params` (e.g. `{ practice = "195900" }`).
    #[serde(default)]
    pub connection: BTreeMap<String, String>,
    /// The request id sent upstream when the mapping has a `request_id_header`.
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub request: RequestSpec,
    #[serde(default)]
    pub exchanges: Vec<Exchange>,
    pub result: ResultSpec,
}

fn default_fhir_base() -> String {
    "https://gateway.example/organizations/demo/fhir/4".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// The Media of a create or update.
    #[serde(default)]
    pub resource: Option<Value>,
    /// An update's current resource (what unchangeable elements are compared with); defaults to `resource`.
    #[serde(default)]
    pub current: Option<Value>,
    /// The gateway id of a read, update, delete or content fetch.
    #[serde(default)]
    pub id: Option<String>,
    /// Search parameters, `_count` included (a list for a repeated parameter), or the content URL's
    /// parameters.
    #[serde(default)]
    pub params: BTreeMap<String, ParamValue>,
    /// The `_offset` of a gateway-paged search page.
    #[serde(default)]
    pub offset: Option<u64>,
    /// Continue a search at this upstream `next` link instead.
    #[serde(default)]
    pub page_link: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    One(String),
    Many(Vec<String>),
}

impl ParamValue {
    fn values(&self) -> Vec<String> {
        match self {
            ParamValue::One(v) => vec![v.clone()],
            ParamValue::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    pub expect: ExpectedRequest,
    pub respond: Respond,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedRequest {
    pub method: String,
    pub path: String,
    /// Compared exactly (order-insensitive); omitted means no query.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Only the headers listed are compared.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body, or form fields for form-encoded steps; omitted means no body.
    #[serde(default)]
    pub body: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<Value>,
    /// A non-JSON body, sent as is.
    #[serde(default)]
    pub body_text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultSpec {
    #[serde(default)]
    pub resource: Option<Value>,
    #[serde(default)]
    pub page: Option<PageSpec>,
    /// The content step succeeded (the bytes are streamed by the gateway).
    #[serde(default)]
    pub bytes: bool,
    /// A delete succeeded.
    #[serde(default)]
    pub done: bool,
    #[serde(default)]
    pub error: Option<ErrorSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageSpec {
    pub entries: Vec<Value>,
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorSpec {
    pub status: u16,
    pub code: String,
    /// Text every OperationOutcome diagnostics line must contain, when given.
    #[serde(default)]
    pub message_contains: Option<String>,
    /// Whether the OperationOutcome must say retrying may help, when given.
    #[serde(default)]
    pub retryable: Option<bool>,
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseReport {
    pub file: PathBuf,
    pub mapping: String,
    pub interaction: String,
    pub category: String,
    pub description: String,
    /// Readable differences; empty when the case passed.
    pub failures: Vec<String>,
    /// The error rule (index in `errors`) that translated the last upstream answer, if one did.
    pub translated_rule: Option<usize>,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every case of every mapping in `set` found under `dir/<mapping>/tests/`.
pub fn run_dir(set: &MappingSet, dir: &Path) -> Vec<CaseReport> {
    let mut reports = Vec::new();
    for (name, mapping) in &set.mappings {
        for file in case_files(&dir.join(name).join("tests")) {
            reports.push(run_file(mapping, &file));
        }
    }
    reports
}

/// The `*.toml` case files of a mapping's `tests` folder, in name order.
fn case_files(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|e| {
            e.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

pub fn run_file(mapping: &Mapping, file: &Path) -> CaseReport {
    let mut report = CaseReport {
        file: file.to_path_buf(),
        mapping: mapping.name.clone(),
        interaction: String::new(),
        category: String::new(),
        description: String::new(),
        failures: Vec::new(),
        translated_rule: None,
    };
    let case: GoldenCase = match std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|t| toml::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            report.failures.push(format!("cannot read the case: {e}"));
            return report;
        }
    };
    report.interaction = case.interaction.clone();
    report.description = case.description.clone();
    // An error result after upstream answers checks the error table: which rule translated the last one.
    report.translated_rule =
        case.exchanges.last().filter(|_| case.result.error.is_some()).and_then(|e| response(&e.respond).ok()).and_then(
            |r| {
                // As the engine does: a `$content` fetch's errors are translated outside any interaction.
                let interaction = Some(case.interaction.as_str()).filter(|i| *i != "content");
                super::engine::matching_rule_in(mapping, &r, interaction)
            },
        );
    match run_case(mapping, &case, &mut report.category) {
        Ok(failures) => report.failures = failures,
        Err(e) => report.failures.push(e),
    }
    report
}

fn run_case(mapping: &Mapping, case: &GoldenCase, category_name: &mut String) -> Result<Vec<String>, String> {
    let trace = trace_case(mapping, case)?;
    *category_name = trace.category.clone();
    Ok(compare(case, &trace))
}

/// What the mapping did with a case's request and scripted answers: the requests it sent (one per
/// exchange answered), a further request the case has no answer for, and the outcome.
struct Trace {
    category: String,
    sent: Vec<SentRequest>,
    /// The mapping asked for one more request than the case answers; there is no outcome then.
    unanswered: Option<SentRequest>,
    outcome: Option<Result<Outcome, GatewayError>>,
}

/// An upstream request as a case compares it: the query as a map, a form body as its fields.
struct SentRequest {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    headers: Vec<(String, String)>,
    body: Option<Value>,
}

impl SentRequest {
    fn of(request: &UpstreamRequest) -> SentRequest {
        let body = request.body.as_ref().map(|b| b.to_bytes()).map(|b| match request.content_type {
            Some("application/x-www-form-urlencoded") => {
                json!(form_urlencoded::parse(&b).into_owned().collect::<BTreeMap<String, String>>())
            }
            _ => serde_json::from_slice(&b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into_owned())),
        });
        SentRequest {
            method: request.method.to_string(),
            path: request.path.clone(),
            query: request.query.iter().cloned().collect(),
            headers: request.headers.clone(),
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Runs the case's request through the mapping, answering its requests with the case's exchanges.
fn trace_case(mapping: &Mapping, case: &GoldenCase) -> Result<Trace, String> {
    let ctx = Context {
        fhir_base: case.fhir_base.clone(),
        params: case.connection.clone(),
        request_id: case.request_id.clone(),
        ..Context::default()
    };
    let category = match (&case.category, &case.request.id) {
        (Some(c), _) => mapping.category(c).ok_or_else(|| format!("no category `{c}`"))?,
        (None, Some(id)) if case.interaction != "create" => {
            mapping.category_for_id(id).map(|(c, _)| c).ok_or_else(|| format!("`{id}` matches no category id"))?
        }
        _ => mapping.category(&mapping.default_category).ok_or("no default category")?,
    };
    let id = || case.request.id.clone().ok_or("this interaction needs `request.id`".to_string());
    let params: Vec<(String, String)> = case
        .request
        .params
        .iter()
        .filter(|(k, _)| *k != "_count")
        .flat_map(|(k, v)| v.values().into_iter().map(move |v| (k.clone(), v)))
        .collect();
    let resource = || case.request.resource.clone().ok_or(format!("a {} needs `request.resource`", case.interaction));
    let started = match case.interaction.as_str() {
        "create" => Run::create(mapping, category, resource()?, ctx),
        "read" => Run::read(mapping, category, &id()?, ctx),
        "update" => {
            let resource = resource()?;
            let current = case.request.current.clone().unwrap_or_else(|| resource.clone());
            Run::update(mapping, category, &id()?, resource, &current, ctx)
        }
        "delete" => Run::delete(mapping, category, &id()?, ctx),
        "content" => Run::content(mapping, category, &id()?, &params, ctx),
        "search" => match &case.request.page_link {
            Some(link) => Run::search_page(mapping, category, link, ctx),
            None => {
                let count = case.request.params.get("_count").map(|v| v.values().join(","));
                Run::search(mapping, category, &params, count.as_deref(), case.request.offset, ctx)
            }
        },
        other => {
            return Err(format!("unknown interaction `{other}`; use create, read, update, delete, search or content"));
        }
    };
    let mut trace = Trace { category: category.name.clone(), sent: Vec::new(), unanswered: None, outcome: None };
    let mut exchanges = case.exchanges.iter();
    trace.outcome = Some(match started {
        Err(e) => Err(e),
        Ok(mut run) => loop {
            let request = match run.next_request() {
                Ok(r) => SentRequest::of(&r),
                Err(e) => break Err(e),
            };
            let Some(exchange) = exchanges.next() else {
                trace.unanswered = Some(request);
                return Ok(trace);
            };
            trace.sent.push(request);
            match run.on_response(&response(&exchange.respond)?) {
                Ok(Some(outcome)) => break Ok(outcome),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
        },
    });
    Ok(trace)
}

/// The differences between what the case expects and what the mapping did.
fn compare(case: &GoldenCase, trace: &Trace) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, (exchange, sent)) in case.exchanges.iter().zip(&trace.sent).enumerate() {
        compare_request(&format!("exchanges[{i}]"), &exchange.expect, sent, &mut failures);
    }
    if let Some(request) = &trace.unanswered {
        failures.push(format!(
            "unexpected upstream request #{}: {} {}",
            case.exchanges.len() + 1,
            request.method,
            request.path
        ));
        return failures;
    }
    if let Some(e) = case.exchanges.get(trace.sent.len()) {
        failures.push(format!(
            "exchanges[{}]: expected {} {} but the mapping sent no more requests",
            trace.sent.len(),
            e.expect.method,
            e.expect.path
        ));
    }
    if let Some(outcome) = &trace.outcome {
        compare_result(&case.result, outcome, &mut failures);
    }
    failures
}

fn response(respond: &Respond) -> Result<UpstreamResponse, String> {
    let mut headers = HeaderMap::new();
    for (k, v) in &respond.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("bad header name `{k}`"))?;
        headers.insert(name, HeaderValue::from_str(v).map_err(|_| format!("bad header value for `{k}`"))?);
    }
    let body = match (&respond.body, &respond.body_text) {
        (Some(v), _) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
        (None, Some(t)) => Bytes::from(t.clone()),
        (None, None) => Bytes::new(),
    };
    Ok(UpstreamResponse { status: respond.status, headers, body })
}

fn compare_request(at: &str, expected: &ExpectedRequest, actual: &SentRequest, failures: &mut Vec<String>) {
    if !expected.method.eq_ignore_ascii_case(&actual.method) {
        failures.push(format!("{at}.method: expected {}, got {}", expected.method, actual.method));
    }
    if expected.path != actual.path {
        failures.push(format!("{at}.path: expected {:?}, got {:?}", expected.path, actual.path));
    }
    diff(&format!("{at}.query"), &json!(expected.query), &json!(actual.query), failures);
    for (name, value) in &expected.headers {
        let got = actual.header(name);
        if got != Some(value.as_str()) {
            failures.push(format!("{at}.headers.{name}: expected {value:?}, got {got:?}"));
        }
    }
    match (&expected.body, &actual.body) {
        (None, None) => {}
        (Some(e), Some(a)) => diff(&format!("{at}.body"), e, a, failures),
        (Some(_), None) => failures.push(format!("{at}.body: expected a body, the mapping sent none")),
        (None, Some(_)) => failures.push(format!("{at}.body: the mapping sent a body the case does not expect")),
    }
}

fn compare_result(expected: &ResultSpec, actual: &Result<Outcome, GatewayError>, failures: &mut Vec<String>) {
    match (expected, actual) {
        (ResultSpec { error: Some(e), .. }, Err(got)) => {
            if got.status.as_u16() != e.status {
                failures.push(format!("result.error.status: expected {}, got {}", e.status, got.status.as_u16()));
            }
            if got.code().as_str() != e.code {
                failures.push(format!("result.error.code: expected {}, got {}", e.code, got.code().as_str()));
            }
            if let Some(retryable) = e.retryable
                && retryable != got.retryable
            {
                failures.push(format!("result.error.retryable: expected {retryable}, got {}", got.retryable));
            }
            if let Some(text) = &e.message_contains
                && !got.issues.iter().all(|i| i.message.contains(text.as_str()))
            {
                failures.push(format!("result.error.message: expected to contain {text:?}, got {:?}", got.message()));
            }
        }
        (ResultSpec { error: None, .. }, Err(got)) => {
            failures.push(format!("result: expected success, got error {got}"))
        }
        (ResultSpec { error: Some(e), .. }, Ok(_)) => {
            failures.push(format!("result: expected error {} {}, got success", e.status, e.code))
        }
        (ResultSpec { resource: Some(e), .. }, Ok(Outcome::Resource(r))) => diff("result.resource", e, r, failures),
        (ResultSpec { page: Some(p), .. }, Ok(Outcome::Page { entries, total, next })) => {
            diff("result.page.entries", &json!(p.entries), &json!(entries), failures);
            if p.total != *total {
                failures.push(format!("result.page.total: expected {:?}, got {total:?}", p.total));
            }
            let next = next.as_ref().map(|n| n.to_string());
            if p.next != next {
                failures.push(format!("result.page.next: expected {:?}, got {next:?}", p.next));
            }
        }
        (ResultSpec { bytes: true, .. }, Ok(Outcome::Bytes)) => {}
        (ResultSpec { done: true, .. }, Ok(Outcome::Done)) => {}
        (_, Ok(other)) => {
            failures.push(format!("result: the case expects another kind of result than {}", kind(other)))
        }
    }
}

fn kind(o: &Outcome) -> &'static str {
    match o {
        Outcome::Resource(_) => "a resource",
        Outcome::Page { .. } => "a search page",
        Outcome::Bytes => "bytes",
        Outcome::Written { .. } => "a write whose read-back failed",
        Outcome::Done => "a completed delete",
    }
}

/// Lists the differences between two JSON values as `path: expected …, got …` lines.
pub fn diff(at: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                match a.get(k) {
                    Some(av) => diff(&format!("{at}.{k}"), ev, av, out),
                    None => out.push(format!("{at}.{k}: expected {ev}, missing")),
                }
            }
            for (k, av) in a {
                if !e.contains_key(k) {
                    out.push(format!("{at}.{k}: unexpected {av}"));
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                diff(&format!("{at}[{i}]"), ev, av, out);
            }
        }
        (e, a) if e != a => out.push(format!("{at}: expected {e}, got {a}")),
        _ => {}
    }
}

/// The one-line-per-case report with diffs, and a closing `N passed, M failed` line.
pub fn render(reports: &[CaseReport], root: &Path) -> String {
    let mut out = String::new();
    for r in reports {
        let file = r.file.strip_prefix(root).unwrap_or(&r.file).display();
        let status = if r.passed() { "ok  " } else { "FAIL" };
        let _ = writeln!(out, "{status} {file} ({} {}): {}", r.interaction, r.category, r.description);
        for f in &r.failures {
            let _ = writeln!(out, "       {f}");
        }
    }
    let passed = reports.iter().filter(|r| r.passed()).count();
    let _ = writeln!(out, "mappings: {passed} passed, {} failed", reports.len() - passed);
    out
}

/// Interactions and categories of `set` that no case covers, and mappings without an error-translation case.
pub fn coverage_gaps(set: &MappingSet, reports: &[CaseReport]) -> Vec<String> {
    let mut gaps = Vec::new();
    let covered =
        |m: &str, c: &str, i: &str| reports.iter().any(|r| r.mapping == m && r.category == c && r.interaction == i);
    for (name, mapping) in &set.mappings {
        for (cname, c) in &mapping.categories {
            let declared = [
                ("create", c.create.is_some()),
                ("read", c.read.is_some()),
                ("update", c.update.is_some()),
                ("delete", c.delete.is_some()),
                ("search", c.search.is_some()),
                ("content", c.content.is_some()),
            ];
            for (interaction, present) in declared {
                if present && !covered(name, cname, interaction) {
                    gaps.push(format!("{name}: no golden case for {interaction} of category {cname}"));
                }
            }
        }
        for (i, rule) in mapping.errors.iter().enumerate() {
            let covered = reports.iter().any(|r| &r.mapping == name && r.translated_rule == Some(i));
            if !covered {
                gaps.push(format!("{name}: no golden case translates an upstream {} with errors[{i}]", rule.status));
            }
        }
    }
    gaps
}
