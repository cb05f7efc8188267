//! The pure mapping engine: canonical request → upstream request plan, upstream response → FHIR.
//!
//! No I/O, no clocks, no globals. An interaction is a [`Run`]: ask it for the next upstream request, feed
//! it the response, repeat until it yields an [`Outcome`]. The upstream client does the I/O in between.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

use super::template::Scope;
use super::transform::TransformContext;
use super::{Category, Encoding, Interaction, Mapping, Step, StepResult};
use crate::error::{GatewayError, Issue, IssueCode, Side};

/// One request for the upstream client. Paths are relative to the connection's base URL.
/// `Debug` leaves out query values, headers and the body: they can carry patient data.
#[derive(Clone, PartialEq)]
pub struct UpstreamRequest {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
    pub content_type: Option<&'static str>,
}

impl std::fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query_keys", &self.query.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("body_bytes", &self.body.as_ref().map(Bytes::len))
            .finish_non_exhaustive()
    }
}

impl UpstreamRequest {
    /// Safe to send again: the EHR cannot have changed anything because of it.
    pub fn is_idempotent(&self) -> bool {
        matches!(self.method, Method::GET | Method::HEAD)
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the gateway needs to build client-facing values.
#[derive(Debug, Clone)]
pub struct Context {
    /// The organization's FHIR base as clients see it, e.g. `http://127.0.0.1:8080/organizations/demo-canvas/fhir/4`.
    pub fhir_base: String,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Resource(Value),
    /// A write succeeded upstream but a later step (the read-back) failed: the resource exists under
    /// `id`, and `problem` says what could not be done. The client must not resend the write.
    Written {
        id: String,
        problem: GatewayError,
    },
    Page {
        entries: Vec<Value>,
        total: Option<u64>,
        next: Option<String>,
    },
    /// The content step succeeded; the caller streams its body.
    Bytes,
}

/// An interaction in progress.
pub struct Run<'m> {
    mapping: &'m Mapping,
    category: &'m Category,
    steps: &'m [Step],
    index: usize,
    vars: BTreeMap<String, Value>,
    input: Value,
    ctx: Context,
    /// A `next` link to follow instead of rendering the search step (paging).
    next_link: Option<(String, Vec<(String, String)>)>,
    /// A non-idempotent step has succeeded: the EHR changed.
    wrote: bool,
}

fn mapping_error(mapping: &Mapping, message: String) -> GatewayError {
    // A template that cannot render an upstream answer is a gateway/mapping defect, not the caller's.
    GatewayError::new(
        StatusCode::BAD_GATEWAY,
        IssueCode::Exception,
        Side::Upstream(mapping.display_name.clone()),
        message,
    )
}

impl<'m> Run<'m> {
    fn new(
        mapping: &'m Mapping,
        category: &'m Category,
        steps: &'m [Step],
        vars: BTreeMap<String, Value>,
        input: Value,
        ctx: Context,
    ) -> Self {
        Run { mapping, category, steps, index: 0, vars, input, ctx, next_link: None, wrote: false }
    }

    /// A create: runs the category's checks on `resource` and prepares the steps.
    pub fn create(
        mapping: &'m Mapping,
        category: &'m Category,
        resource: Value,
        ctx: Context,
    ) -> Result<Self, GatewayError> {
        let interaction = category.create.as_ref().ok_or_else(|| not_supported(mapping, "create", Some(category)))?;
        run_checks(mapping, interaction, &resource, category)?;
        Ok(Run::new(mapping, category, &interaction.steps, BTreeMap::new(), resource, ctx))
    }

    /// A read (or the content fetch) of the object named by the id's variables.
    pub fn read(
        mapping: &'m Mapping,
        category: &'m Category,
        gateway_id: &str,
        ctx: Context,
    ) -> Result<Self, GatewayError> {
        let interaction = category.read.as_ref().ok_or_else(|| not_supported(mapping, "read", Some(category)))?;
        Ok(Run::new(mapping, category, &interaction.steps, id_vars(category, gateway_id)?, Value::Null, ctx))
    }

    /// The fetch of the bytes behind a Media's `content.url`.
    pub fn content(
        mapping: &'m Mapping,
        category: &'m Category,
        gateway_id: &str,
        ctx: Context,
    ) -> Result<Self, GatewayError> {
        let interaction = category.content.as_ref().ok_or_else(|| {
            GatewayError::not_found(format!(
                "{} {} media have no content to fetch",
                mapping.display_name, category.name
            ))
        })?;
        Ok(Run::new(mapping, category, &interaction.steps, id_vars(category, gateway_id)?, Value::Null, ctx))
    }

    /// A search with the given FHIR parameters and the raw `_count` (default and cap from the mapping).
    pub fn search(
        mapping: &'m Mapping,
        category: &'m Category,
        params: &[(String, String)],
        count: Option<&str>,
        ctx: Context,
    ) -> Result<Self, GatewayError> {
        let search = category.search.as_ref().ok_or_else(|| not_supported(mapping, "search", Some(category)))?;
        let count = match count {
            None => search.count_default,
            Some(c) => match c.parse::<u32>() {
                Ok(n) if n >= 1 => n.min(search.count_max),
                _ => {
                    return Err(GatewayError::invalid("`_count` must be a whole number of at least 1")
                        .with_expression("_count"));
                }
            },
        };
        if let Some((name, _)) = params.iter().find(|(name, _)| !search.params.contains_key(name)) {
            return Err(unsupported_param(mapping, category, name));
        }
        let mut vars = BTreeMap::new();
        vars.insert("_count".to_string(), Value::from(count));
        let raw: BTreeMap<String, Value> = params.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let mut issues = Vec::new();
        for (name, value) in params {
            let Some(expr) = search.params.get(name) else {
                return Err(unsupported_param(mapping, category, name));
            };
            let scope =
                Scope { document: &Value::Null, vars: &raw, headers: None, transforms: env(mapping, Some(category)) };
            match expr.eval(&scope) {
                Ok(Some(v)) => {
                    vars.insert(name.clone(), v);
                }
                Ok(None) => {}
                Err(e) => issues.push(Issue {
                    code: IssueCode::Invalid,
                    message: format!("search parameter `{name}`: {e}"),
                    expression: vec![],
                }),
            }
            let _ = value;
        }
        if !issues.is_empty() {
            return Err(GatewayError::client_issues(StatusCode::BAD_REQUEST, issues));
        }
        if !search.require_one_of.is_empty() && !search.require_one_of.iter().any(|p| vars.contains_key(p)) {
            return Err(GatewayError::client(
                StatusCode::BAD_REQUEST,
                IssueCode::Required,
                format!(
                    "{} search needs one of these parameters: {}",
                    mapping.display_name,
                    search.require_one_of.join(", ")
                ),
            ));
        }
        Ok(Run::new(mapping, category, &search.steps, vars, Value::Null, ctx))
    }

    /// Continues a search at an upstream `next` link (relative), checked to stay on the search's own path.
    pub fn search_page(
        mapping: &'m Mapping,
        category: &'m Category,
        link: &str,
        ctx: Context,
    ) -> Result<Self, GatewayError> {
        let search = category.search.as_ref().ok_or_else(|| not_supported(mapping, "search", Some(category)))?;
        let bad = || {
            GatewayError::invalid("the `_page` token is not valid for this search; start the search again")
                .with_expression("_page")
        };
        let step = search.steps.last().ok_or_else(bad)?;
        let (path, query) = link.split_once('?').unwrap_or((link, ""));
        let expected = step.path.render(&Scope {
            document: &Value::Null,
            vars: &BTreeMap::new(),
            headers: None,
            transforms: TransformContext::default(),
        });
        if !path.starts_with('/') || path.starts_with("//") || expected.ok().flatten().as_deref() != Some(path) {
            return Err(bad());
        }
        let mut query: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        // The token comes back from the client: allow only what the search step itself sends, plus the
        // offset, require something that narrows the search, and keep the page size cap, so a forged
        // link cannot widen the search or pull in other resources.
        let allowed = |k: &str| k == "_offset" || step.query.iter().any(|(q, _)| q == k);
        let narrows = |k: &str| k != "_count" && k != "_offset";
        if query.iter().any(|(k, _)| !allowed(k)) || !query.iter().any(|(k, _)| narrows(k)) {
            return Err(bad());
        }
        for (k, v) in query.iter_mut() {
            if k == "_count" {
                let n = v.parse::<u32>().map_err(|_| bad())?;
                *v = n.clamp(1, search.count_max).to_string();
            }
        }
        let mut run =
            Run::new(mapping, category, &search.steps[search.steps.len() - 1..], BTreeMap::new(), Value::Null, ctx);
        run.next_link = Some((path.to_string(), query));
        Ok(run)
    }

    /// The key writes must be serialized by (first expression with a value), if any.
    pub fn serialize_key(&self) -> Option<String> {
        let interaction: &Interaction = self.category.create.as_ref()?;
        let scope = self.scope(&self.input, None);
        interaction.serialize_writes_by.iter().find_map(|e| match e.eval(&scope).ok()?? {
            Value::String(s) => Some(s),
            Value::Array(a) => a.first().and_then(|v| v.as_str().map(str::to_string)),
            other => Some(other.to_string()),
        })
    }

    /// Turns a failure after a successful write into `Outcome::Written` when the new id is known, so the
    /// client learns the write happened instead of resending it.
    pub fn recover(&self, error: GatewayError) -> Result<Outcome, GatewayError> {
        match self.vars.get("gateway_id").and_then(Value::as_str) {
            Some(id) if self.wrote => Ok(Outcome::Written { id: id.to_string(), problem: error }),
            _ => Err(error),
        }
    }

    pub fn is_done(&self) -> bool {
        self.index >= self.steps.len()
    }

    fn scope<'a>(&'a self, document: &'a Value, headers: Option<&'a HeaderMap>) -> Scope<'a> {
        Scope { document, vars: &self.vars, headers, transforms: env(self.mapping, Some(self.category)) }
    }

    /// The request for the current step.
    pub fn next_request(&self) -> Result<UpstreamRequest, GatewayError> {
        let step = self.steps.get(self.index).ok_or_else(|| GatewayError::gateway("mapping run has no step left"))?;
        if let Some((path, query)) = &self.next_link {
            return Ok(UpstreamRequest {
                method: step.method.clone(),
                path: path.clone(),
                query: query.clone(),
                headers: vec![],
                body: None,
                content_type: None,
            });
        }
        let scope = self.scope(&self.input, None);
        // Values that fail to render come from the caller's input (ids, parameters).
        let client_err = |e: String| GatewayError::invalid(e);
        let path = step.path.render(&scope).map_err(client_err)?.ok_or_else(|| {
            mapping_error(
                self.mapping,
                format!("the upstream path of {} needs a value the request does not have", self.category.name),
            )
        })?;
        let mut query = Vec::new();
        for (k, t) in &step.query {
            if let Some(v) = t.render(&scope).map_err(client_err)? {
                query.push((k.clone(), v));
            }
        }
        let mut headers = Vec::new();
        for (k, t) in &step.headers {
            if let Some(v) = t.render(&scope).map_err(client_err)? {
                headers.push((k.clone(), v));
            }
        }
        let (body, content_type) = match &step.body {
            None => (None, None),
            Some(t) => {
                let value = t.render(&scope).map_err(client_err)?.unwrap_or(Value::Object(Default::default()));
                match step.encoding {
                    Encoding::Json => {
                        (Some(Bytes::from(serde_json::to_vec(&value).unwrap_or_default())), Some("application/json"))
                    }
                    Encoding::Form => {
                        let mut form = form_urlencoded::Serializer::new(String::new());
                        if let Value::Object(map) = &value {
                            for (k, v) in map {
                                let text = match v {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                };
                                form.append_pair(k, &text);
                            }
                        }
                        (Some(Bytes::from(form.finish())), Some("application/x-www-form-urlencoded"))
                    }
                }
            }
        };
        Ok(UpstreamRequest { method: step.method.clone(), path, query, headers, body, content_type })
    }

    /// Feeds the current step's response. `Ok(None)`: send the next request.
    pub fn on_response(&mut self, response: &UpstreamResponse) -> Result<Option<Outcome>, GatewayError> {
        let step = self.steps.get(self.index).ok_or_else(|| GatewayError::gateway("mapping run has no step left"))?;
        if !step.expect.contains(&response.status) {
            let mut error = translate_error(self.mapping, response, &self.vars);
            if !matches!(step.method, Method::GET | Method::HEAD) && response.status >= 500 {
                // The EHR may have acted before failing: resending could write twice.
                error.retryable = false;
                if let Some(issue) = error.issues.first_mut() {
                    issue
                        .message
                        .push_str("; the write may or may not have happened, so search before sending it again");
                }
            }
            return Err(error);
        }
        // Body-less results (bytes, empty 201s) have no JSON to read.
        let document: Value =
            if step.result == Some(StepResult::Bytes) || response.body.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(&response.body).map_err(|_| {
                    mapping_error(
                        self.mapping,
                        format!("{} answered with a body that is not JSON", self.mapping.display_name),
                    )
                })?
            };
        let mut bound = Vec::new();
        {
            let scope = self.scope(&document, Some(&response.headers));
            for (name, expr) in &step.bind {
                match expr.eval(&scope) {
                    Ok(Some(v)) => bound.push((name.clone(), v)),
                    Ok(None) => {
                        return Err(mapping_error(
                            self.mapping,
                            format!("{}'s answer lacks `{name}` ({})", self.mapping.display_name, expr.text()),
                        ));
                    }
                    Err(e) => {
                        return Err(mapping_error(
                            self.mapping,
                            format!("reading `{name}` from {}'s answer: {e}", self.mapping.display_name),
                        ));
                    }
                }
            }
        }
        self.vars.extend(bound);
        if !self.vars.contains_key("gateway_id") {
            let id_vars: BTreeMap<String, String> = self
                .category
                .id
                .variables()
                .filter_map(|v| Some((v.to_string(), self.vars.get(v)?.as_str()?.to_string())))
                .collect();
            if let Some(id) = self.category.id.render(&id_vars) {
                self.vars.insert("gateway_id".into(), Value::String(id));
            }
        }
        if !matches!(step.method, Method::GET | Method::HEAD) {
            self.wrote = true;
        }
        self.index += 1;
        let outcome = match step.result {
            None if !self.is_done() => return Ok(None),
            None => return Err(GatewayError::gateway("mapping ended without a result")),
            Some(StepResult::Bytes) => Outcome::Bytes,
            Some(StepResult::Resource) => {
                Outcome::Resource(normalize(self.mapping, self.category, &document, &self.ctx)?)
            }
            Some(StepResult::Bundle) => self.page(&document)?,
        };
        Ok(Some(outcome))
    }

    fn page(&self, document: &Value) -> Result<Outcome, GatewayError> {
        let search = self.category.search.as_ref().ok_or_else(|| GatewayError::gateway("not a search"))?;
        let scope = self.scope(document, None);
        let err = |e: String| mapping_error(self.mapping, e);
        let entries = match search.entries.eval(&scope).map_err(err)? {
            None => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(one) => vec![one],
        };
        let entries = entries
            .iter()
            .map(|e| normalize(self.mapping, self.category, e, &self.ctx))
            .collect::<Result<Vec<_>, _>>()?;
        let total = match &search.total {
            Some(t) => t.eval(&scope).map_err(err)?.and_then(|v| v.as_u64()),
            None => None,
        };
        let next = match &search.next {
            Some(n) => match n.eval(&scope).map_err(err)? {
                Some(Value::String(s)) => Some(s),
                Some(Value::Array(a)) => a.first().and_then(|v| v.as_str()).map(str::to_string),
                _ => None,
            },
            None => None,
        };
        Ok(Outcome::Page { entries, total, next })
    }
}

/// The variables encoded in a gateway id, plus `gateway_id` itself (for messages).
fn id_vars(category: &Category, gateway_id: &str) -> Result<BTreeMap<String, Value>, GatewayError> {
    let vars = category
        .id
        .parse(gateway_id)
        .ok_or_else(|| GatewayError::not_found(format!("Media/{gateway_id} is not a known Media id")))?;
    let mut vars = string_vars(vars);
    vars.insert("gateway_id".into(), Value::String(gateway_id.to_string()));
    Ok(vars)
}

fn string_vars(vars: BTreeMap<String, String>) -> BTreeMap<String, Value> {
    vars.into_iter().map(|(k, v)| (k, Value::String(v))).collect()
}

/// Maps one upstream object to a FHIR Media with the gateway's id and content URL.
pub fn normalize(
    mapping: &Mapping,
    category: &Category,
    upstream: &Value,
    ctx: &Context,
) -> Result<Value, GatewayError> {
    let empty = BTreeMap::new();
    let scope = Scope { document: upstream, vars: &empty, headers: None, transforms: env(mapping, Some(category)) };
    let mut id_vars = BTreeMap::new();
    for (name, expr) in &category.bind {
        let value = expr.eval_string(&scope).map_err(|e| mapping_error(mapping, e))?.ok_or_else(|| {
            mapping_error(mapping, format!("{} returned a {} without `{name}`", mapping.display_name, category.name))
        })?;
        id_vars.insert(name.clone(), value);
    }
    let gateway_id = category.id.render(&id_vars).ok_or_else(|| {
        mapping_error(mapping, format!("{} returned an id that does not fit a FHIR id", mapping.display_name))
    })?;
    let mut vars = string_vars(id_vars);
    vars.insert("content_url".into(), Value::String(format!("{}/Media/{gateway_id}/$content", ctx.fhir_base)));
    vars.insert("gateway_id".into(), Value::String(gateway_id));
    let scope = Scope { document: upstream, vars: &vars, headers: None, transforms: env(mapping, Some(category)) };
    category
        .template
        .render(&scope)
        .map_err(|e| mapping_error(mapping, e))?
        .ok_or_else(|| mapping_error(mapping, "the resource template rendered nothing".into()))
}

/// Runs a create's checks, reporting every failing one.
pub fn run_checks(
    mapping: &Mapping,
    interaction: &Interaction,
    resource: &Value,
    category: &Category,
) -> Result<(), GatewayError> {
    let empty = BTreeMap::new();
    let scope = Scope { document: resource, vars: &empty, headers: None, transforms: env(mapping, Some(category)) };
    let mut failures: Vec<(StatusCode, Issue)> = Vec::new();
    for check in &interaction.checks {
        let issue = |code, message: String| Issue { code, message, expression: vec![check.expression.clone()] };
        match check.path.eval(&scope) {
            Ok(None) if check.required => {
                failures.push((StatusCode::BAD_REQUEST, issue(IssueCode::Required, check.message.clone())))
            }
            Ok(None) => {}
            Ok(Some(value)) => {
                let text = match &value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let allowed = check.one_of.as_ref().is_none_or(|set| set.contains(&text));
                let matches = check.pattern.as_ref().is_none_or(|p| p.is_match(&text));
                if !allowed || !matches {
                    failures.push((check.status, issue(check.code, check.message.clone())));
                }
            }
            Err(e) => failures.push((check.status, issue(check.code, format!("{}: {e}", check.message)))),
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    // The most basic problem decides the status: a missing or malformed element (400) before a rule (422).
    let status = failures.iter().map(|f| f.0).min().unwrap_or(StatusCode::BAD_REQUEST);
    Err(GatewayError::client_issues(status, failures.into_iter().map(|f| f.1).collect()))
}

/// The 405 for an interaction this EHR cannot do, naming the EHR and the reason.
pub fn not_supported(mapping: &Mapping, interaction: &str, category: Option<&Category>) -> GatewayError {
    let reason = mapping.unsupported.get(interaction).cloned().unwrap_or_else(|| match category {
        Some(c) => format!("the `{}` category declares no {interaction}", c.name),
        None => format!("the mapping declares no {interaction}"),
    });
    GatewayError::client(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueCode::NotSupported,
        format!("{} does not support Media {interaction}: {reason}", mapping.display_name),
    )
}

pub fn unsupported_param(mapping: &Mapping, category: &Category, name: &str) -> GatewayError {
    let supported: Vec<&str> = category.search.iter().flat_map(|s| s.params.keys().map(String::as_str)).collect();
    GatewayError::client(
        StatusCode::BAD_REQUEST,
        IssueCode::NotSupported,
        format!(
            "search parameter `{name}` is not supported for {}; supported: {}, _count",
            mapping.display_name,
            supported.join(", ")
        ),
    )
    .with_expression(name.to_string())
}

/// Applies the mapping's error table to a non-success upstream answer.
pub fn translate_error(mapping: &Mapping, response: &UpstreamResponse, vars: &BTreeMap<String, Value>) -> GatewayError {
    let side = Side::Upstream(mapping.display_name.clone());
    let document: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let retry_after = response
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    match mapping.errors.iter().find(|r| r.status.matches(response.status)) {
        Some(rule) => {
            let scope =
                Scope { document: &document, vars, headers: Some(&response.headers), transforms: env(mapping, None) };
            let message = rule
                .message
                .render(&scope)
                .ok()
                .flatten()
                .unwrap_or_else(|| format!("{} answered HTTP {}", mapping.display_name, response.status));
            GatewayError::new(rule.gateway_status, rule.code, side, message)
                .retryable(rule.retryable)
                .with_retry_after(retry_after)
        }
        None => GatewayError::new(
            StatusCode::BAD_GATEWAY,
            IssueCode::Exception,
            side,
            format!("{} answered HTTP {}, which the mapping does not translate", mapping.display_name, response.status),
        ),
    }
}

/// What transforms may use while mapping within `category` of `mapping`.
fn env<'a>(mapping: &'a Mapping, category: Option<&'a Category>) -> TransformContext<'a> {
    TransformContext { id_template: category.map(|c| &c.id), code_tables: Some(&mapping.code_tables) }
}

/// Opaque paging token: which category, and the upstream link to continue at.
pub fn encode_page_token(category: &str, link: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({ "c": category, "l": link }).to_string())
}

pub fn decode_page_token(token: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some((v.get("c")?.as_str()?.to_string(), v.get("l")?.as_str()?.to_string()))
}
