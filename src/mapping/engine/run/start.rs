//! Starting a [`Run`], one constructor per interaction: the request's checks, the variables it brings
//! (from the gateway id, the inbound resource or the search parameters) and the first step that applies.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::Value;

use super::Run;
use crate::error::{GatewayError, Issue, IssueCode};
use crate::json::Payloads;
use crate::mapping::engine::resource::id_vars;
use crate::mapping::engine::{
    Context, appended, changed_elements, changes, env, keep_current, not_supported, run_checks, unsupported_param,
};
use crate::mapping::template::Scope;
use crate::mapping::transform::TransformContext;
use crate::mapping::{Category, Interaction, Mapping, Paging, Step};

/// Where a run starts: its mapping, category, interaction and steps.
struct Plan<'m> {
    mapping: &'m Mapping,
    category: &'m Category,
    interaction: &'static str,
    steps: &'m [Step],
}

impl<'m> Run<'m> {
    fn new(plan: Plan<'m>, vars: BTreeMap<String, Value>, input: Value, ctx: Context) -> Result<Self, GatewayError> {
        let mut run = Run::assemble(plan, vars, input, ctx);
        run.skip_inactive()?;
        Ok(run)
    }

    /// A run at its first step, before steps that do not apply are skipped.
    fn assemble(plan: Plan<'m>, mut vars: BTreeMap<String, Value>, input: Value, ctx: Context) -> Self {
        let Plan { mapping, category, interaction, steps } = plan;
        for (k, v) in ctx.params.iter().chain(&category.vars) {
            vars.entry(k.clone()).or_insert_with(|| Value::String(v.clone()));
        }
        Run {
            mapping,
            category,
            interaction,
            steps,
            index: 0,
            vars,
            input,
            ctx,
            next_link: None,
            wrote: false,
            pending: None,
            carried: Vec::new(),
            last_bound: BTreeMap::new(),
            upload_answered: false,
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
        check_upload_size(mapping, &resource, &ctx.payloads)?;
        run_checks(mapping, interaction, &resource, category, &ctx.payloads)?;
        let plan = Plan { mapping, category, interaction: "create", steps: &interaction.steps };
        let mut run = Run::new(plan, BTreeMap::new(), resource, ctx)?;
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
        Run::new(Plan { mapping, category, interaction: "read", steps: &interaction.steps }, vars, Value::Null, ctx)
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
        let mut vars = id_vars(category, gateway_id, &ctx)?;
        // What the EHR maintains (a last-modified time) is as the EHR has it, whatever the client's copy says.
        let resource = keep_current(current, resource, &interaction.ignore_changes);
        let mut problems: Vec<Issue> = Vec::new();
        let empty = BTreeMap::new();
        let env = env(mapping, Some(category), Some(&ctx.payloads));
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
        // Elements the mapping does not say the EHR can change (read-only facts such as athena's document
        // source) are refused by name, rather than sent as an update of nothing. The specific messages of
        // `unchangeable` come first.
        if problems.is_empty() && !interaction.changeable.is_empty() {
            for element in changed_elements(current, &resource) {
                if !interaction.changeable.contains(&element) {
                    problems.push(Issue {
                        code: IssueCode::BusinessRule,
                        message: format!(
                            "{} cannot change {element} of a {} Media; an update can change only {}",
                            mapping.display_name,
                            category.name,
                            interaction.changeable.join(", ")
                        ),
                        expression: vec![element],
                    });
                }
            }
        }
        // Text the EHR only appends to: the new value must continue the current one, and only what it adds
        // is sent, so a resent or repeated update cannot add the same text twice.
        for rule in &interaction.append_only {
            let text = |scope: &Scope| -> Option<String> { rule.path.eval_string(scope).ok().flatten() };
            let Some(new) = text(&new_scope) else { continue };
            match appended(&text(&old_scope).unwrap_or_default(), &new) {
                Some("") => {}
                Some(added) => {
                    vars.insert(rule.bind.clone(), Value::String(added.to_string()));
                }
                None => problems.push(Issue {
                    code: IssueCode::BusinessRule,
                    message: rule.message.clone(),
                    expression: vec![rule.expression.clone()],
                }),
            }
        }
        if !problems.is_empty() {
            return Err(GatewayError::client_issues(StatusCode::UNPROCESSABLE_ENTITY, problems));
        }
        check_upload_size(mapping, &resource, &ctx.payloads)?;
        run_checks(mapping, interaction, &resource, category, &ctx.payloads)?;
        // The steps see only what changed, so fields the EHR appends to (athena's internal note) are
        // not sent again unchanged.
        let plan = Plan { mapping, category, interaction: "update", steps: &interaction.steps };
        let mut run = Run::new(plan, vars, changes(current, &resource), ctx)?;
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
        Run::new(Plan { mapping, category, interaction: "delete", steps: &interaction.steps }, vars, Value::Null, ctx)
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
        run_checks(mapping, interaction, &input, category, &ctx.payloads)?;
        let given = !params.is_empty();
        let plan = Plan { mapping, category, interaction: "content", steps: &interaction.steps };
        let mut run = Run::assemble(plan, vars, input, ctx);
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
        if search.paging == Paging::Offset {
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
            let scope = Scope {
                document: &Value::Null,
                vars: &raw,
                headers: None,
                transforms: env(mapping, Some(category), None),
            };
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
        let run =
            Run::new(Plan { mapping, category, interaction: "search", steps: &search.steps }, vars, Value::Null, ctx)?;
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
        if search.paging != Paging::Link {
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
        let plan = Plan { mapping, category, interaction: "search", steps: &search.steps[search.steps.len() - 1..] };
        let mut run = Run::new(plan, BTreeMap::new(), Value::Null, ctx)?;
        run.next_link = Some((path.to_string(), query));
        Ok(run)
    }
}

/// 413 when the file (`content.data`, decoded) is larger than the EHR takes (`max_upload_bytes`).
fn check_upload_size(mapping: &Mapping, resource: &Value, payloads: &Payloads) -> Result<(), GatewayError> {
    let Some(limit) = mapping.max_upload_bytes else { return Ok(()) };
    let data = resource.pointer("/content/data");
    let size = match (data.and_then(|d| payloads.of(d)), data.and_then(Value::as_str)) {
        (Some(payload), _) => payload.decoded_len() as u64,
        (None, Some(text)) => {
            let padding = text.bytes().rev().take_while(|&b| b == b'=').count();
            (text.len() / 4 * 3).saturating_sub(padding) as u64
        }
        (None, None) => return Ok(()),
    };
    if size <= limit {
        return Ok(());
    }
    Err(GatewayError::client(
        StatusCode::PAYLOAD_TOO_LARGE,
        IssueCode::TooLong,
        format!(
            "{} takes files up to {limit} bytes (the mapping's max_upload_bytes); this one is {size} bytes",
            mapping.display_name
        ),
    )
    .with_expression("Media.content.data"))
}
