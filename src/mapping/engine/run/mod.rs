//! [`Run`], an interaction in progress: the request to send next, what each answer means, and when the
//! answers add up to an [`Outcome`].

mod start;

use std::collections::BTreeMap;

use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

use super::errors::{mapping_error, translate_error_in};
use super::resource::{bind_object, normalize};
use super::{Context, NextPage, Outcome, UpstreamRequest, UpstreamResponse, env, scalar_text, truthy};
use crate::error::{GatewayError, IssueCode, Side};
use crate::json::{self, LimitKind, ParseError, Payloads, SpliceError};
use crate::mapping::template::{Expression, Scope};
use crate::mapping::{Category, Each, Encoding, Mapping, Paging, Step, StepResult};

/// A search page whose entries each still need their `each` request.
struct Pending {
    raw: Vec<Value>,
    kept: Vec<Value>,
    index: usize,
    next: Option<NextPage>,
    /// Gateway paging (`_offset`): the upstream offset of `raw[0]`, whether the upstream has entries after
    /// `raw`, and the step that lists them. The page is filled to `_count` entries from further upstream
    /// pages, since `each` leaves some out.
    fill: Option<Fill>,
}

#[derive(Clone, Copy)]
struct Fill {
    start: u64,
    more: bool,
    step: usize,
}

/// An interaction in progress.
pub struct Run<'m> {
    mapping: &'m Mapping,
    category: &'m Category,
    /// `create`, `read`, `update`, `delete`, `search` or `content`: which error rules apply.
    interaction: &'static str,
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
    /// Entries an `each` search kept from earlier upstream pages, while it reads the next one.
    carried: Vec<Value>,
    /// What the last answered step bound (for the client's cache).
    last_bound: BTreeMap<String, Value>,
    /// The step just answered was a write after which no step sends a body.
    upload_answered: bool,
    /// A create's `serialize_writes_by` (empty for every other interaction).
    serialize_by: &'m [Expression],
    /// The client error when no step applies to the request (a content URL without a known parameter);
    /// otherwise that is a mapping defect.
    nothing_applies: Option<String>,
}

impl<'m> Run<'m> {
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
        let transforms = env(self.mapping, Some(self.category), Some(&self.ctx.payloads));
        Scope { document, vars: &self.vars, headers, transforms }
    }

    /// Moves past steps whose `when`/`unless` say they do not apply.
    fn skip_inactive(&mut self) -> Result<(), GatewayError> {
        while let Some(step) = self.steps.get(self.index) {
            let scope = self.scope(&self.input, None);
            let check = |e: &Option<Expression>| -> Result<Option<bool>, GatewayError> {
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
        // Media belong in bodies: a value that large cannot go into a URL or a header.
        if std::iter::once(&path)
            .chain(query.iter().map(|q| &q.1))
            .chain(headers.iter().map(|h| &h.1))
            .any(|v| json::contains_marker(v))
        {
            return Err(GatewayError::invalid(
                "a value of the request is too large for an upstream URL or header; send media in content.data",
            ));
        }
        let unknown = |e| match e {
            SpliceError::Unknown => GatewayError::gateway("a media value of this request is no longer held"),
            SpliceError::Misplaced => mapping_error(
                self.mapping,
                "the mapping puts media inside a text or transforms them; media can only be copied whole".into(),
            ),
        };
        let (body, content_type) = match &step.body {
            None => (None, None),
            Some(t) => {
                let value = t.render(scope).map_err(client_err)?.unwrap_or(Value::Object(Default::default()));
                match step.encoding {
                    Encoding::Json => {
                        (Some(json::json_body(&value, &self.ctx.payloads).map_err(unknown)?), Some("application/json"))
                    }
                    Encoding::Form => {
                        let mut fields = Vec::new();
                        if let Value::Object(map) = &value {
                            for (k, v) in map {
                                let text = match v {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                };
                                fields.push((k.clone(), text));
                            }
                        }
                        let body = json::form_body(&fields, &self.ctx.payloads).map_err(unknown)?;
                        (Some(body), Some("application/x-www-form-urlencoded"))
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

    fn each(&self) -> Option<&'m Each> {
        self.category.search.as_ref()?.each.as_ref()
    }

    /// The run's variables plus what the category binds from one upstream entry (and its gateway id).
    fn entry_vars(&self, raw: &Value) -> Result<BTreeMap<String, Value>, GatewayError> {
        let mut vars = self.vars.clone();
        let bound = bind_object(self.mapping, self.category, raw, &self.vars)?;
        vars.extend(bound);
        Ok(vars)
    }

    /// Parses an answer body as JSON (empty and byte bodies are `null`), under the upstream limits, its
    /// media kept as payloads.
    fn document(&mut self, step: Option<&Step>, response: &UpstreamResponse) -> Result<Value, GatewayError> {
        if step.is_some_and(|s| s.result == Some(StepResult::Bytes))
            || response.body.iter().all(u8::is_ascii_whitespace)
        {
            return Ok(Value::Null);
        }
        let ehr = &self.mapping.display_name;
        json::parse(&response.body, &self.ctx.upstream_limits, &mut self.ctx.payloads).map_err(|e| match e {
            ParseError::Syntax { .. } => {
                mapping_error(self.mapping, format!("{ehr} answered with a body that is not JSON"))
            }
            ParseError::Limit(v) if v.kind == LimitKind::ReservedText => GatewayError::new(
                StatusCode::BAD_GATEWAY,
                IssueCode::Exception,
                Side::Upstream(ehr.clone()),
                format!("{ehr} answered with `{}`, which {v}", v.expression("$")),
            ),
            ParseError::Limit(v) => GatewayError::new(
                StatusCode::BAD_GATEWAY,
                IssueCode::TooCostly,
                Side::Upstream(ehr.clone()),
                format!(
                    "{ehr} answered with `{}`, which {v} (the gateway's limit for EHR answers, \
                     server.limits.upstream.{}); the gateway does not process answers that large",
                    v.expression("$"),
                    v.key()
                ),
            ),
        })
    }

    /// The media of this run's inputs and answers.
    pub fn payloads(&self) -> &Payloads {
        &self.ctx.payloads
    }

    /// The media of this run, for a value that outlives it.
    pub fn take_payloads(&mut self) -> Payloads {
        std::mem::take(&mut self.ctx.payloads)
    }

    /// Drops the media numbered in `range` that no value the run keeps points at.
    fn release(&mut self, range: std::ops::Range<usize>, outcome: Option<&Outcome>) {
        let Run { vars, pending, ctx, carried, .. } = self;
        let mut keep: Vec<&Value> = vars.values().chain(carried.iter()).collect();
        if let Some(p) = pending {
            keep.extend(p.raw.iter().chain(&p.kept));
        }
        match outcome {
            Some(Outcome::Resource(r)) => keep.push(r),
            Some(Outcome::Page { entries, .. }) => keep.extend(entries),
            _ => {}
        }
        ctx.payloads.release_unreferenced_in(range, keep);
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
        // A `$content` fetch's errors are translated outside any interaction, as the front door does.
        let interaction = Some(self.interaction).filter(|i| *i != "content");
        let mut error = translate_error_in(self.mapping, response, &self.vars, interaction);
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
        // An answer's media live only as long as something taken from the answer refers to them: a
        // search that reads twenty images holds one at a time.
        let mark = self.ctx.payloads.mark();
        self.upload_answered = false;
        let result = self.read_response(response);
        if let Ok(outcome) = &result {
            self.release(mark..self.ctx.payloads.mark(), outcome.as_ref());
            if self.upload_answered {
                // The write is answered and no later step sends a body: the request's media (the
                // upload buffer) go now, before a read-back brings the EHR's copy.
                self.release(0..mark, outcome.as_ref());
            }
        }
        result
    }

    fn read_response(&mut self, response: &UpstreamResponse) -> Result<Option<Outcome>, GatewayError> {
        if self.pending.is_some() {
            return self.on_entry_response(response);
        }
        let step = self.steps.get(self.index).ok_or_else(|| GatewayError::gateway("mapping run has no step left"))?;
        if step.empty_on.contains(&response.status) && step.result == Some(StepResult::Bundle) {
            self.index += 1;
            // Nothing (more) upstream: the page is what earlier upstream pages gave.
            let entries = std::mem::take(&mut self.carried);
            let total = entries.is_empty().then_some(0);
            return Ok(Some(Outcome::Page { entries, total, next: None }));
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
        let writes = !matches!(step.method, Method::GET | Method::HEAD);
        self.wrote |= writes;
        self.index += 1;
        self.upload_answered = writes && self.steps[self.index..].iter().all(|s| s.body.is_none());
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
        let want = self.vars.get("_count").and_then(Value::as_u64).unwrap_or(u64::MAX) as usize;
        let Some(pending) = self.pending.as_mut() else { return Ok(None) };
        // Entries were filtered, so the upstream's total no longer counts what the client sees.
        if let Some(fill) = pending.fill
            && pending.kept.len() > want
        {
            // The page is full; this entry only shows that more exist: the next page starts with it.
            pending.kept.pop();
            let next = NextPage::Offset(fill.start + pending.index as u64);
            let entries = std::mem::take(&mut pending.kept);
            self.pending = None;
            return Ok(Some(Outcome::Page { entries, total: None, next: Some(next) }));
        }
        pending.index += 1;
        if pending.index < pending.raw.len() {
            return Ok(None);
        }
        let Some(pending) = self.pending.take() else { return Ok(None) };
        match pending.fill {
            Some(fill) if fill.more => {
                // Short of `_count` (or not yet sure whether more exist): read the upstream's next page,
                // keeping what this one gave.
                self.carried = pending.kept;
                self.vars.insert("_offset".into(), Value::from(fill.start + pending.raw.len() as u64));
                self.index = fill.step;
                Ok(None)
            }
            Some(_) => Ok(Some(Outcome::Page { entries: pending.kept, total: None, next: None })),
            None => Ok(Some(Outcome::Page { entries: pending.kept, total: None, next: pending.next })),
        }
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
        let (next, fill) = match search.paging {
            Paging::Link => (link.map(NextPage::Link), None),
            Paging::Offset => {
                let offset = self.vars.get("_offset").and_then(Value::as_u64).unwrap_or(0);
                let after = offset + raw.len() as u64;
                let more = match total {
                    Some(t) => after < t,
                    None => link.is_some(),
                } && !raw.is_empty();
                // This step was just answered: `index` has moved past it.
                let fill = Fill { start: offset, more, step: self.index.saturating_sub(1) };
                (more.then_some(NextPage::Offset(after)), Some(fill))
            }
        };
        if search.each.is_some() && !raw.is_empty() {
            let kept = std::mem::take(&mut self.carried);
            self.pending = Some(Pending { raw, kept, index: 0, next, fill });
            return Ok(None);
        }
        if !self.carried.is_empty() {
            // A further upstream page with nothing on it: the page is what the earlier ones gave.
            return Ok(Some(Outcome::Page { entries: std::mem::take(&mut self.carried), total: None, next: None }));
        }
        let entries = raw
            .iter()
            .map(|e| normalize(self.mapping, self.category, e, &self.ctx, &self.vars))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Outcome::Page { entries, total, next }))
    }
}

#[cfg(test)]
mod tests;
