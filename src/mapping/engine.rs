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
    /// Sending it twice has the effect of sending it once (the mapping's step says so).
    pub idempotent: bool,
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
    /// Safe to send again: the EHR ends up in the same state however often it arrives.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the gateway needs to build client-facing values and upstream requests.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The organization's FHIR base as clients see it, e.g. `http://127.0.0.1:8080/organizations/demo-canvas/fhir/4`.
    pub fhir_base: String,
    /// The connection's `params` (the mapping's `connection_params`), e.g. athena's `practice`.
    pub params: BTreeMap<String, String>,
    /// The gateway request id, sent upstream when the mapping names a `request_id_header`.
    pub request_id: Option<String>,
}

/// Where the next page of a search starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextPage {
    /// An upstream `next` link (relative to the base URL).
    Link(String),
    /// The `_offset` of the next page (gateway paging).
    Offset(u64),
}

impl std::fmt::Display for NextPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NextPage::Link(l) => f.write_str(l),
            NextPage::Offset(o) => write!(f, "_offset={o}"),
        }
    }
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
        next: Option<NextPage>,
    },
    /// The content step succeeded; the caller streams its body.
    Bytes,
    /// A step with `result = "none"` succeeded (a delete).
    Done,
}

/// A search page whose entries each still need their `each` request.
struct Pending {
    raw: Vec<Value>,
    kept: Vec<Value>,
    index: usize,
    next: Option<NextPage>,
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
    pending: Option<Pending>,
    /// What the last answered step bound (for the client's cache).
    last_bound: BTreeMap<String, Value>,
    /// A create's `serialize_writes_by` (empty for every other interaction).
    serialize_by: &'m [super::template::Expression],
    /// The client error when no step applies to the request (a content URL without a known parameter);
    /// otherwise that is a mapping defect.
    nothing_applies: Option<String>,
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

/// A condition value counts as true unless it is missing, `false`, `"false"`, empty text or an empty list.
pub fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !(s.is_empty() || s.eq_ignore_ascii_case("false")),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

impl<'m> Run<'m> {
    fn new(
        mapping: &'m Mapping,
        category: &'m Category,
        steps: &'m [Step],
        vars: BTreeMap<String, Value>,
        input: Value,
        ctx: Context,
    ) -> Result<Self, GatewayError> {
        let mut run = Run::assemble(mapping, category, steps, vars, input, ctx);
        run.skip_inactive()?;
        Ok(run)
    }

    /// A run at its first step, before steps that do not apply are skipped.
    fn assemble(
        mapping: &'m Mapping,
        category: &'m Category,
        steps: &'m [Step],
        mut vars: BTreeMap<String, Value>,
        input: Value,
        ctx: Context,
    ) -> Self {
        for (k, v) in ctx.params.iter().chain(&category.vars) {
            vars.entry(k.clone()).or_insert_with(|| Value::String(v.clone()));
        }
        Run {
            mapping,
            category,
            steps,
            index: 0,
            vars,
            input,
            ctx,
            next_link: None,
            wrote: false,
            pending: None,
            last_bound: BTreeMap::new(),
            serialize_by: &[],
            nothing_applies: None,
        }
    }

    /// Variables bound from the inbound resource by the interaction's `bind`.
    fn bind_input(&mut self, interaction: &Interaction) -> Result<(), GatewayError> {
        let mut bound = Vec::new();
        {
            let scope = self.scope(&self.input, None);
            for (name, expr) in &interaction.bind {
                match expr.eval(&scope) {
                    Ok(Some(v)) => bound.push((name.clone(), v)),
                    Ok(None) => {}
                    Err(e) => return Err(GatewayError::invalid(e)),
                }
            }
        }
        self.vars.extend(bound);
        self.skip_inactive()
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
        let mut run = Run::new(mapping, category, &interaction.steps, BTreeMap::new(), resource, ctx)?;
        run.serialize_by = &interaction.serialize_writes_by;
        run.bind_input(interaction)?;
        Ok(run)
    }

    /// A read of the object named by the id's variables.
    pub fn read(
        mapping: &'m Mapping,
        category: &'m Category,
        gateway_id: &str,
        ctx: Context,
    ) -> Result<Self, GatewayError> {
        let interaction = category.read.as_ref().ok_or_else(|| not_supported(mapping, "read", Some(category)))?;
        let vars = id_vars(category, gateway_id, &ctx)?;
        Run::new(mapping, category, &interaction.steps, vars, Value::Null, ctx)
    }

    /// An update of `gateway_id` to `resource`; `current` is the resource as it is now, against which
    /// the mapping's unchangeable elements are compared.
    pub fn update(
        mapping: &'m Mapping,
        category: &'m Category,
        gateway_id: &str,
        resource: Value,
        current: &Value,
        ctx: Context,
    ) -> Result<Self, GatewayError> {
        let interaction = category.update.as_ref().ok_or_else(|| not_supported(mapping, "update", Some(category)))?;
        let vars = id_vars(category, gateway_id, &ctx)?;
        let mut problems: Vec<Issue> = Vec::new();
        let empty = BTreeMap::new();
        let env = env(mapping, Some(category));
        let new_scope = Scope { document: &resource, vars: &empty, headers: None, transforms: env };
        let old_scope = Scope { document: current, vars: &empty, headers: None, transforms: env };
        for rule in &interaction.unchangeable {
            let new = rule.path.eval(&new_scope).ok().flatten();
            let old = rule.path.eval(&old_scope).ok().flatten();
            // An element left out is left as it is; one given must equal the current value.
            if new.is_some() && new != old {
                problems.push(Issue {
                    code: IssueCode::BusinessRule,
                    message: rule.message.clone(),
                    expression: vec![rule.expression.clone()],
                });
            }
        }
        if !problems.is_empty() {
            return Err(GatewayError::client_issues(StatusCode::UNPROCESSABLE_ENTITY, problems));
        }
        run_checks(mapping, interaction, &resource, category)?;
        // The steps see only what changed, so fields the EHR appends to (athena's internal note) are
        // not sent again unchanged.
        let mut run = Run::new(mapping, category, &interaction.steps, vars, changes(current, &resource), ctx)?;
        run.bind_input(interaction)?;
        Ok(run)
    }

    /// A delete of the object named by the id's variables.
    pub fn delete(
        mapping: &'m Mapping,
        category: &'m Category,
        gateway_id: &str,
        ctx: Context,
    ) -> Result<Self, GatewayError> {
        let interaction = category.delete.as_ref().ok_or_else(|| not_supported(mapping, "delete", Some(category)))?;
        let vars = id_vars(category, gateway_id, &ctx)?;
        Run::new(mapping, category, &interaction.steps, vars, Value::Null, ctx)
    }

    /// The fetch of the bytes behind a Media's `content.url`; `params` are that URL's query parameters.
    pub fn content(
        mapping: &'m Mapping,
        category: &'m Category,
        gateway_id: &str,
        params: &[(String, String)],
        ctx: Context,
    ) -> Result<Self, GatewayError> {
        let interaction = category.content.as_ref().ok_or_else(|| {
            GatewayError::not_found(format!(
                "{} {} media have no content to fetch",
                mapping.display_name, category.name
            ))
        })?;
        let mut vars = id_vars(category, gateway_id, &ctx)?;
        let mut input = serde_json::Map::new();
        for (k, v) in params {
            if !interaction.params.contains(k) {
                let known =
                    if interaction.params.is_empty() { "none".to_string() } else { interaction.params.join(", ") };
                return Err(GatewayError::invalid(format!(
                    "`{k}` is not a parameter of this content URL; known: {known}"
                ))
                .with_expression(k.clone()));
            }
            input.insert(k.clone(), Value::String(v.clone()));
            vars.insert(k.clone(), Value::String(v.clone()));
        }
        let input = Value::Object(input);
        run_checks(mapping, interaction, &input, category)?;
        let given = !params.is_empty();
        let mut run = Run::assemble(mapping, category, &interaction.steps, vars, input, ctx);
        if !interaction.params.is_empty() {
            let what = interaction.params.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(" or ");
            let why = if given { "these parameters name nothing to fetch" } else { "no parameter given" };
            run.nothing_applies = Some(format!("this content URL needs {what} ({why}); use the URL from the Media"));
        }
        run.skip_inactive()?;
        Ok(run)
    }

    /// A search with the given FHIR parameters, the raw `_count` (default and cap from the mapping) and,
    /// for gateway paging, the offset of the page.
    pub fn search(
        mapping: &'m Mapping,
        category: &'m Category,
        params: &[(String, String)],
        count: Option<&str>,
        offset: Option<u64>,
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
        if search.paging == super::Paging::Offset {
            vars.insert("_offset".to_string(), Value::from(offset.unwrap_or(0)));
        }
        // A parameter given more than once (a date range) is a list.
        let mut raw: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in params {
            match raw.get_mut(k) {
                None => {
                    raw.insert(k.clone(), Value::String(v.clone()));
                }
                Some(Value::Array(list)) => list.push(Value::String(v.clone())),
                Some(first) => *first = Value::Array(vec![first.clone(), Value::String(v.clone())]),
            }
        }
        let mut issues = Vec::new();
        for name in raw.keys() {
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
                    expression: vec![name.clone()],
                }),
            }
        }
        if !issues.is_empty() {
            return Err(GatewayError::client_issues(StatusCode::BAD_REQUEST, issues));
        }
        if !search.require_one_of.is_empty() && !search.require_one_of.iter().any(|p| vars.contains_key(p)) {
            return Err(GatewayError::client(
                StatusCode::BAD_REQUEST,
                IssueCode::Required,
                format!(
                    "{} {} search needs one of these parameters: {}",
                    mapping.display_name,
                    category.name,
                    search.require_one_of.join(", ")
                ),
            )
            .with_expression(search.require_one_of[0].clone()));
        }
        let run = Run::new(mapping, category, &search.steps, vars, Value::Null, ctx)?;
        // Render every request now so a bad parameter value is reported before any upstream call (values
        // later steps bind are not known yet: only the caller's mistakes count here).
        for step in &search.steps {
            if let Err(e) = run.render(step)
                && e.status == StatusCode::BAD_REQUEST
            {
                return Err(e);
            }
        }
        Ok(run)
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
        if search.paging != super::Paging::Link {
            return Err(bad());
        }
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
            Run::new(mapping, category, &search.steps[search.steps.len() - 1..], BTreeMap::new(), Value::Null, ctx)?;
        run.next_link = Some((path.to_string(), query));
        Ok(run)
    }

    /// The key writes must be serialized by (first expression with a value), if any.
    pub fn serialize_key(&self) -> Option<String> {
        let scope = self.scope(&self.input, None);
        self.serialize_by.iter().find_map(|e| match e.eval(&scope).ok()?? {
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

    /// Moves past steps whose `when`/`unless` say they do not apply.
    fn skip_inactive(&mut self) -> Result<(), GatewayError> {
        while let Some(step) = self.steps.get(self.index) {
            let scope = self.scope(&self.input, None);
            let check = |e: &Option<super::template::Expression>| -> Result<Option<bool>, GatewayError> {
                match e {
                    None => Ok(None),
                    Some(e) => Ok(Some(truthy(e.eval(&scope).map_err(GatewayError::invalid)?.as_ref()))),
                }
            };
            let active = check(&step.when)?.unwrap_or(true) && !check(&step.unless)?.unwrap_or(false);
            if active {
                break;
            }
            self.index += 1;
        }
        if self.is_done() && self.pending.is_none() {
            return Err(match &self.nothing_applies {
                Some(message) => GatewayError::invalid(message.clone()),
                None => {
                    mapping_error(self.mapping, format!("no step of {} applies to this request", self.category.name))
                }
            });
        }
        Ok(())
    }

    /// The cache key and lifetime of the current step's bound values, if the mapping caches them.
    pub fn cache_key(&self) -> Option<(String, std::time::Duration)> {
        if self.pending.is_some() || self.next_link.is_some() {
            return None;
        }
        let step = self.steps.get(self.index)?;
        let (key, ttl) = step.cache.as_ref()?;
        let key = key.render(&self.scope(&self.input, None)).ok()??;
        Some((format!("{}:{}", self.category.name, key), *ttl))
    }

    /// What the last answered step bound (for the client to cache under `cache_key`).
    pub fn last_bound(&self) -> &BTreeMap<String, Value> {
        &self.last_bound
    }

    /// Completes the current (cached) step with values remembered from an earlier answer.
    pub fn use_cached(&mut self, bound: &BTreeMap<String, Value>) -> Result<(), GatewayError> {
        self.vars.extend(bound.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.index += 1;
        self.skip_inactive()
    }

    /// The request for the current step.
    pub fn next_request(&self) -> Result<UpstreamRequest, GatewayError> {
        if let Some(pending) = &self.pending {
            let each = self.each().ok_or_else(|| GatewayError::gateway("search has no `each` step"))?;
            let raw = pending.raw.get(pending.index).ok_or_else(|| GatewayError::gateway("no entry left"))?;
            let vars = self.entry_vars(raw)?;
            let scope = Scope {
                document: &Value::Null,
                vars: &vars,
                headers: None,
                transforms: self.scope(raw, None).transforms,
            };
            return self.render_with(&each.step, &scope);
        }
        let step = self.steps.get(self.index).ok_or_else(|| GatewayError::gateway("mapping run has no step left"))?;
        if let Some((path, query)) = &self.next_link {
            return Ok(UpstreamRequest {
                method: step.method.clone(),
                path: path.clone(),
                query: query.clone(),
                headers: self.request_id_header(),
                body: None,
                content_type: None,
                idempotent: step.idempotent,
            });
        }
        self.render(step)
    }

    fn request_id_header(&self) -> Vec<(String, String)> {
        match (&self.mapping.request_id_header, &self.ctx.request_id) {
            (Some(name), Some(id)) => vec![(name.clone(), id.clone())],
            _ => vec![],
        }
    }

    fn render(&self, step: &Step) -> Result<UpstreamRequest, GatewayError> {
        self.render_with(step, &self.scope(&self.input, None))
    }

    fn render_with(&self, step: &Step, scope: &Scope) -> Result<UpstreamRequest, GatewayError> {
        // Values that fail to render come from the caller's input (ids, parameters).
        let client_err = |e: String| GatewayError::invalid(e);
        let path = step.path.render(scope).map_err(client_err)?.ok_or_else(|| {
            mapping_error(
                self.mapping,
                format!("the upstream path of {} needs a value the request does not have", self.category.name),
            )
        })?;
        // Values from the request end up in the path: they must not add segments, a query or escapes.
        let unsafe_char = |c: char| matches!(c, '?' | '#' | '%' | '\\') || c.is_whitespace() || c.is_control();
        if path.contains(unsafe_char) || path.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(GatewayError::invalid(
                "an id or parameter of the request holds characters that cannot be part of an upstream path",
            ));
        }
        let mut query = Vec::new();
        for (k, t) in &step.query {
            if let Some(v) = t.render(scope).map_err(client_err)? {
                query.push((k.clone(), v));
            }
        }
        let mut headers = self.request_id_header();
        for (k, t) in &step.headers {
            if let Some(v) = t.render(scope).map_err(client_err)? {
                headers.push((k.clone(), v));
            }
        }
        let (body, content_type) = match &step.body {
            None => (None, None),
            Some(t) => {
                let value = t.render(scope).map_err(client_err)?.unwrap_or(Value::Object(Default::default()));
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
        Ok(UpstreamRequest {
            method: step.method.clone(),
            path,
            query,
            headers,
            body,
            content_type,
            idempotent: step.idempotent,
        })
    }

    fn each(&self) -> Option<&'m super::Each> {
        self.category.search.as_ref()?.each.as_ref()
    }

    /// The run's variables plus what the category binds from one upstream entry (and its gateway id).
    fn entry_vars(&self, raw: &Value) -> Result<BTreeMap<String, Value>, GatewayError> {
        let mut vars = self.vars.clone();
        let bound = bind_object(self.mapping, self.category, raw, &self.vars)?;
        vars.extend(bound);
        Ok(vars)
    }

    /// Parses an answer body as JSON (empty and byte bodies are `null`).
    fn document(&self, step: Option<&Step>, response: &UpstreamResponse) -> Result<Value, GatewayError> {
        if step.is_some_and(|s| s.result == Some(StepResult::Bytes))
            || response.body.iter().all(u8::is_ascii_whitespace)
        {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&response.body).map_err(|_| {
            mapping_error(self.mapping, format!("{} answered with a body that is not JSON", self.mapping.display_name))
        })
    }

    /// Checks an answer's status and success predicate; `Err` is the translated failure.
    fn accept(&self, step: &Step, response: &UpstreamResponse, document: &Value) -> Result<(), GatewayError> {
        let failed = !step.expect.contains(&response.status)
            || step.success.as_ref().is_some_and(|s| {
                !truthy(s.eval(&self.scope(document, Some(&response.headers))).ok().flatten().as_ref())
            });
        if !failed {
            return Ok(());
        }
        let mut error = translate_error(self.mapping, response, &self.vars);
        if !step.idempotent && response.status >= 500 {
            // The EHR may have acted before failing: resending could write twice.
            error.retryable = false;
            if let Some(issue) = error.issues.first_mut() {
                issue.message.push_str("; the write may or may not have happened, so search before sending it again");
            }
        }
        Err(error)
    }

    /// Feeds the current step's response. `Ok(None)`: send the next request.
    pub fn on_response(&mut self, response: &UpstreamResponse) -> Result<Option<Outcome>, GatewayError> {
        if self.pending.is_some() {
            return self.on_entry_response(response);
        }
        let step = self.steps.get(self.index).ok_or_else(|| GatewayError::gateway("mapping run has no step left"))?;
        if step.empty_on.contains(&response.status) && step.result == Some(StepResult::Bundle) {
            self.index += 1;
            return Ok(Some(Outcome::Page { entries: vec![], total: Some(0), next: None }));
        }
        let document =
            if step.expect.contains(&response.status) { self.document(Some(step), response)? } else { Value::Null };
        self.accept(step, response, &document)?;
        let mut bound = BTreeMap::new();
        {
            let scope = self.scope(&document, Some(&response.headers));
            for (name, expr) in &step.bind {
                match expr.eval(&scope) {
                    Ok(Some(v)) => {
                        bound.insert(name.clone(), v);
                    }
                    Ok(None) => {
                        if let Some(u) = &step.unresolved {
                            let message = u
                                .message
                                .render(&self.scope(&self.input, None))
                                .ok()
                                .flatten()
                                .unwrap_or_else(|| format!("`{name}` could not be resolved"));
                            let mut e = GatewayError::client(u.status, u.code, message);
                            if let Some(x) = &u.expression {
                                e = e.with_expression(x.clone());
                            }
                            return Err(e);
                        }
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
        self.vars.extend(bound.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.last_bound = bound;
        if !self.vars.contains_key("gateway_id") {
            let id_vars: BTreeMap<String, String> = self
                .category
                .id
                .variables()
                .filter_map(|v| Some((v.to_string(), scalar_text(self.vars.get(v)?)?)))
                .collect();
            if let Some(id) = self.category.id.render(&id_vars) {
                self.vars.insert("gateway_id".into(), Value::String(id));
            }
        }
        self.wrote |= !matches!(step.method, Method::GET | Method::HEAD);
        self.index += 1;
        let outcome = match step.result {
            None if !self.is_done() => {
                self.skip_inactive()?;
                return Ok(None);
            }
            None => return Err(GatewayError::gateway("mapping ended without a result")),
            Some(StepResult::Bytes) => Outcome::Bytes,
            Some(StepResult::None) => Outcome::Done,
            Some(StepResult::Resource) => {
                let object = match &step.select {
                    Some(select) => select
                        .eval(&self.scope(&document, None))
                        .map_err(|e| mapping_error(self.mapping, e))?
                        .ok_or_else(|| {
                            mapping_error(
                                self.mapping,
                                format!(
                                    "{} answered without the object ({})",
                                    self.mapping.display_name,
                                    select.text()
                                ),
                            )
                        })?,
                    None => document,
                };
                Outcome::Resource(normalize(self.mapping, self.category, &object, &self.ctx, &self.vars)?)
            }
            Some(StepResult::Bundle) => return self.page(&document),
        };
        Ok(Some(outcome))
    }

    fn on_entry_response(&mut self, response: &UpstreamResponse) -> Result<Option<Outcome>, GatewayError> {
        let each = self.each().ok_or_else(|| GatewayError::gateway("search has no `each` step"))?;
        let Some(pending) = self.pending.as_ref() else { return Ok(None) };
        let raw = pending.raw.get(pending.index).cloned().unwrap_or(Value::Null);
        if !each.drop_on.contains(&response.status) {
            let document = if each.step.expect.contains(&response.status) {
                self.document(Some(&each.step), response)?
            } else {
                Value::Null
            };
            self.accept(&each.step, response, &document)?;
            // The entry is the per-entry answer (e.g. the image), read with the listed object's variables.
            let vars = self.entry_vars(&raw)?;
            let entry = normalize(self.mapping, self.category, &document, &self.ctx, &vars)?;
            if let Some(p) = self.pending.as_mut() {
                p.kept.push(entry);
            }
        }
        let Some(pending) = self.pending.as_mut() else { return Ok(None) };
        pending.index += 1;
        if pending.index < pending.raw.len() {
            return Ok(None);
        }
        let pending = self.pending.take().map(|p| (p.kept, p.next)).unwrap_or_default();
        // Entries were filtered, so the upstream's total no longer counts what the client sees.
        Ok(Some(Outcome::Page { entries: pending.0, total: None, next: pending.1 }))
    }

    fn page(&mut self, document: &Value) -> Result<Option<Outcome>, GatewayError> {
        let search = self.category.search.as_ref().ok_or_else(|| GatewayError::gateway("not a search"))?;
        let scope = self.scope(document, None);
        let err = |e: String| mapping_error(self.mapping, e);
        let raw = match search.entries.eval(&scope).map_err(err)? {
            None => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(one) => vec![one],
        };
        let total = match &search.total {
            Some(t) => t.eval(&scope).map_err(err)?.and_then(|v| match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }),
            None => None,
        };
        let link = match &search.next {
            Some(n) => match n.eval(&scope).map_err(err)? {
                Some(Value::String(s)) => Some(s),
                Some(Value::Array(a)) => a.first().and_then(|v| v.as_str()).map(str::to_string),
                _ => None,
            },
            None => None,
        };
        let next = match search.paging {
            super::Paging::Link => link.map(NextPage::Link),
            super::Paging::Offset => {
                let offset = self.vars.get("_offset").and_then(Value::as_u64).unwrap_or(0);
                let after = offset + raw.len() as u64;
                let more = match total {
                    Some(t) => after < t,
                    None => link.is_some(),
                };
                (more && !raw.is_empty()).then_some(NextPage::Offset(after))
            }
        };
        if search.each.is_some() && !raw.is_empty() {
            self.pending = Some(Pending { raw, kept: Vec::new(), index: 0, next });
            return Ok(None);
        }
        let entries = raw
            .iter()
            .map(|e| normalize(self.mapping, self.category, e, &self.ctx, &self.vars))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Outcome::Page { entries, total, next }))
    }
}

/// The elements of `new` that differ from `current`: top-level elements compared whole, extensions one by
/// one. `resourceType` and `id` are kept. Empty (apart from those) when nothing changed.
pub fn changes(current: &Value, new: &Value) -> Value {
    let (Some(cur), Some(new)) = (current.as_object(), new.as_object()) else { return new.clone() };
    let mut out = serde_json::Map::new();
    for (k, v) in new {
        if k == "resourceType" || k == "id" {
            out.insert(k.clone(), v.clone());
        } else if k == "extension" {
            let old: Vec<&Value> = cur.get(k).and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
            let changed: Vec<Value> =
                v.as_array().into_iter().flatten().filter(|e| !old.contains(e)).cloned().collect();
            if !changed.is_empty() {
                out.insert(k.clone(), Value::Array(changed));
            }
        } else if cur.get(k) != Some(v) {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// True when an update would change nothing (see [`changes`]).
pub fn unchanged(current: &Value, new: &Value) -> bool {
    changes(current, new).as_object().is_some_and(|m| m.keys().all(|k| k == "resourceType" || k == "id"))
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The variables encoded in a gateway id, plus `gateway_id` itself (for messages). An id part named
/// like a connection parameter must carry the connection's value (another practice's id is not ours).
fn id_vars(category: &Category, gateway_id: &str, ctx: &Context) -> Result<BTreeMap<String, Value>, GatewayError> {
    let not_ours = || GatewayError::not_found(format!("Media/{gateway_id} is not a known Media id"));
    let vars = category.id.parse(gateway_id).ok_or_else(not_ours)?;
    if vars.iter().any(|(k, v)| ctx.params.get(k).is_some_and(|own| own != v)) {
        return Err(not_ours());
    }
    let mut vars = string_vars(vars);
    vars.insert("gateway_id".into(), Value::String(gateway_id.to_string()));
    Ok(vars)
}

fn string_vars(vars: BTreeMap<String, String>) -> BTreeMap<String, Value> {
    vars.into_iter().map(|(k, v)| (k, Value::String(v))).collect()
}

/// The category's `resource.bind` values for one upstream object (which may read `vars`), as text.
fn bind_object(
    mapping: &Mapping,
    category: &Category,
    upstream: &Value,
    vars: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, GatewayError> {
    let scope = Scope { document: upstream, vars, headers: None, transforms: env(mapping, Some(category)) };
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
    let mut bound = string_vars(id_vars);
    bound.insert("gateway_id".into(), Value::String(gateway_id));
    Ok(bound)
}

/// Maps one upstream object to a FHIR Media with the gateway's id and content URL. `vars` are the
/// interaction's variables, which the category's `bind` may read (e.g. the patient of a card image).
pub fn normalize(
    mapping: &Mapping,
    category: &Category,
    upstream: &Value,
    ctx: &Context,
    vars: &BTreeMap<String, Value>,
) -> Result<Value, GatewayError> {
    let bound = bind_object(mapping, category, upstream, vars)?;
    let mut vars = vars.clone();
    vars.extend(bound);
    let gateway_id = vars.get("gateway_id").and_then(Value::as_str).unwrap_or_default().to_string();
    vars.insert("content_url".into(), Value::String(format!("{}/Media/{gateway_id}/$content", ctx.fhir_base)));
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

/// The index of the error rule that applies to an upstream answer, if any (first match wins).
pub fn matching_rule(mapping: &Mapping, response: &UpstreamResponse) -> Option<usize> {
    let document: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let empty = BTreeMap::new();
    let scope =
        Scope { document: &document, vars: &empty, headers: Some(&response.headers), transforms: env(mapping, None) };
    mapping.errors.iter().position(|r| {
        r.status.matches(response.status)
            && r.when.as_ref().is_none_or(|w| {
                let value = w.eval(&scope).ok().flatten();
                truthy(value.as_ref())
                    && r.matches.as_ref().is_none_or(|re| {
                        let text = match &value {
                            Some(Value::String(s)) => s.clone(),
                            Some(other) => other.to_string(),
                            None => String::new(),
                        };
                        re.is_match(&text)
                    })
            })
    })
}

/// Applies the mapping's error table to an upstream answer that is not a success.
pub fn translate_error(mapping: &Mapping, response: &UpstreamResponse, vars: &BTreeMap<String, Value>) -> GatewayError {
    let side = Side::Upstream(mapping.display_name.clone());
    let document: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let retry_after = response
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    match matching_rule(mapping, response).map(|i| &mapping.errors[i]) {
        Some(rule) => {
            let scope =
                Scope { document: &document, vars, headers: Some(&response.headers), transforms: env(mapping, None) };
            let message = rule
                .message
                .render(&scope)
                .ok()
                .flatten()
                .unwrap_or_else(|| format!("{} answered HTTP {}", mapping.display_name, response.status));
            let expressions: Vec<String> = match rule.expressions.as_ref().and_then(|e| e.eval(&scope).ok().flatten()) {
                Some(Value::Array(items)) => items.iter().filter_map(scalar_text).collect(),
                Some(one) => scalar_text(&one).into_iter().collect(),
                None => vec![],
            };
            let mut error = GatewayError::new(rule.gateway_status, rule.code, side, message)
                .retryable(rule.retryable)
                .with_retry_after(retry_after);
            if let Some(issue) = error.issues.first_mut() {
                issue.expression = expressions;
            }
            error
        }
        None if (200..300).contains(&response.status) => GatewayError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueCode::BusinessRule,
            side,
            format!("{} did not accept the request", mapping.display_name),
        ),
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

/// Where a `_page` token continues a search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageToken {
    /// At an upstream link.
    Link { category: String, link: String },
    /// The same search again (its FHIR parameters, `_count` included) at an offset.
    Offset { category: String, params: Vec<(String, String)>, offset: u64 },
}

/// Opaque paging token (the client sends it back as `_page`).
pub fn encode_page_token(token: &PageToken) -> String {
    let v = match token {
        PageToken::Link { category, link } => json!({ "c": category, "l": link }),
        PageToken::Offset { category, params, offset } => json!({ "c": category, "p": params, "o": offset }),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

pub fn decode_page_token(token: &str) -> Option<PageToken> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let category = v.get("c")?.as_str()?.to_string();
    if let Some(link) = v.get("l") {
        return Some(PageToken::Link { category, link: link.as_str()?.to_string() });
    }
    let params = serde_json::from_value::<Vec<(String, String)>>(v.get("p")?.clone()).ok()?;
    Some(PageToken::Offset { category, params, offset: v.get("o")?.as_u64()? })
}
