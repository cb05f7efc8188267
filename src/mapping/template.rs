//! Mapping expressions and templates, compiled once at load and rendered purely against a scope.
//!
//! * An **expression** is a source followed by transforms: `$.subject.reference | strip_reference(Patient)`.
//!   Sources: a JSONPath into the current document (`$…`), a header (`header.Location`) or a variable
//!   (`media_id`). A JSONPath that can select several nodes (wildcards, filters, slices, `..`) yields an
//!   array; a definite one yields the node or nothing.
//! * A **template** is JSON whose strings are rendered: `"$…"` is an expression giving any JSON value;
//!   text with `{expression}` parts is interpolated (`"cv.{media_id}"`); other text is literal (`{{` and
//!   `}}` escape braces). A field whose value renders to nothing is omitted, and so is an object or array
//!   left empty by that.

use std::collections::BTreeMap;

use http::HeaderMap;
use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use serde_json::{Map, Value};

use super::jsonpath;
use super::transform::{self, TransformContext};

/// What expressions read from.
pub struct Scope<'a> {
    pub document: &'a Value,
    pub vars: &'a BTreeMap<String, Value>,
    pub headers: Option<&'a HeaderMap>,
    pub transforms: TransformContext<'a>,
}

#[derive(Debug, Clone)]
enum Source {
    Path {
        query: Box<JpQuery>,
        definite: bool,
    },
    Header(String),
    Var(String),
    /// `'text'`: a constant (a default after `??`).
    Literal(String),
}

#[derive(Debug, Clone)]
pub struct Expression {
    text: String,
    source: Source,
    transforms: Vec<(String, Option<String>)>,
    /// `a ?? b`: evaluated when this one has no value.
    fallback: Option<Box<Expression>>,
}

impl Expression {
    pub fn compile(text: &str) -> Result<Self, String> {
        let alternatives = split_top_level(text, "??");
        if alternatives.len() > 1 {
            let mut compiled = alternatives.iter().map(|a| Expression::compile(a)).collect::<Result<Vec<_>, _>>()?;
            let mut last = compiled.pop().expect("split gives at least one part");
            while let Some(mut e) = compiled.pop() {
                e.fallback = Some(Box::new(last));
                last = e;
            }
            last.text = text.to_string();
            return Ok(last);
        }
        let mut pieces = split_pipes(text).into_iter();
        let head = pieces.next().unwrap_or_default();
        let head = head.trim();
        let source = if head.starts_with('$') {
            let query = parse_json_path(head).map_err(|e| {
                // The parser's message spans several lines with an ASCII pointer; keep it to one line.
                let detail = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
                format!("bad JSONPath `{head}`: {detail}")
            })?;
            let definite = !head.contains('*')
                && !head.contains("..")
                && !head.contains('?')
                && !head.contains(':')
                && !head.contains(',');
            Source::Path { query: Box::new(query), definite }
        } else if head.len() >= 2 && head.starts_with('\'') && head.ends_with('\'') {
            Source::Literal(head[1..head.len() - 1].to_string())
        } else if let Some(name) = head.strip_prefix("header.") {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(format!("`{head}` is not a header name"));
            }
            Source::Header(name.to_string())
        } else if !head.is_empty() && head.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            Source::Var(head.to_string())
        } else {
            return Err(format!(
                "`{head}` is neither a JSONPath (`$…`), a header (`header.Name`), a variable name nor a `'literal'`"
            ));
        };
        let mut transforms = Vec::new();
        for piece in pieces {
            let piece = piece.trim();
            let (name, arg) = match piece.find('(') {
                Some(open) if piece.ends_with(')') => {
                    (&piece[..open], Some(piece[open + 1..piece.len() - 1].trim().to_string()))
                }
                Some(_) => return Err(format!("`{piece}`: a transform argument needs a closing `)`")),
                None => (piece, None),
            };
            match transform::exists(name) {
                None => {
                    let hint = suggest(name, transform::TRANSFORMS.iter().map(|t| t.0));
                    return Err(format!("unknown transform `{name}`{hint}"));
                }
                Some(true) if arg.as_deref().is_none_or(str::is_empty) => {
                    return Err(format!("transform `{name}` needs an argument: `{name}(…)`"));
                }
                Some(false) if arg.is_some() => return Err(format!("transform `{name}` takes no argument")),
                _ => {}
            }
            transforms.push((name.to_string(), arg));
        }
        Ok(Expression { text: text.to_string(), source, transforms, fallback: None })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The transforms applied (in every alternative), with their arguments.
    pub fn transforms(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        let mut all: Vec<(&str, Option<&str>)> =
            self.transforms.iter().map(|(n, a)| (n.as_str(), a.as_deref())).collect();
        if let Some(f) = &self.fallback {
            all.extend(f.transforms());
        }
        all.into_iter()
    }

    /// The variable this expression reads, if its source is a variable.
    pub fn variable(&self) -> Option<&str> {
        match &self.source {
            Source::Var(v) => Some(v),
            _ => None,
        }
    }

    /// The variables every alternative reads.
    pub fn variables(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.variable().into_iter().collect();
        if let Some(f) = &self.fallback {
            all.extend(f.variables());
        }
        all
    }

    /// Evaluates to a value, or `None` when the source has nothing. Errors come from transforms.
    pub fn eval(&self, scope: &Scope) -> Result<Option<Value>, String> {
        let mut value = match &self.source {
            Source::Path { query, definite } => {
                let values: Vec<Value> =
                    jsonpath::select(query, scope.document).into_iter().filter(|v| !v.is_null()).cloned().collect();
                if *definite {
                    values.into_iter().next()
                } else if values.is_empty() {
                    None
                } else {
                    Some(Value::Array(values))
                }
            }
            Source::Header(name) => scope
                .headers
                .and_then(|h| h.get(name.as_str()))
                .and_then(|v| v.to_str().ok())
                .map(|s| Value::String(s.to_string())),
            Source::Var(name) => scope.vars.get(name).cloned(),
            Source::Literal(text) => Some(Value::String(text.clone())),
        };
        for (name, arg) in &self.transforms {
            let Some(input) = value else { break };
            value = transform::apply(name, arg.as_deref(), &input, &scope.transforms)?;
        }
        match (&value, &self.fallback) {
            (None, Some(f)) => f.eval(scope),
            _ => Ok(value),
        }
    }

    pub fn eval_string(&self, scope: &Scope) -> Result<Option<String>, String> {
        Ok(match self.eval(scope)? {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(v.to_string()),
            Some(_) => return Err(format!("`{}` gives a list or object where text is needed", self.text)),
        })
    }
}

/// Splits on `sep` outside brackets, quotes and parentheses.
fn split_top_level(text: &str, sep: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let (mut depth, mut quote) = (0i32, None::<char>);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if quote.is_none() && depth == 0 && rest.starts_with(sep) {
            out.push(String::new());
            rest = &rest[sep.len()..];
            continue;
        }
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | '(') => depth += 1,
            (None, ']' | ')') => depth -= 1,
            _ => {}
        }
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Splits on `|` that are outside brackets, quotes and parentheses (JSONPath filters may hold `||`).
fn split_pipes(text: &str) -> Vec<String> {
    split_top_level(text, "|")
}

/// `; did you mean `x`?` when a known name is close to the typed one.
pub fn suggest<'a>(typed: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (edit_distance(typed, k), k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 3))
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[derive(Debug, Clone)]
enum TextPart {
    Literal(String),
    Expr(Expression),
}

/// A string with `{expression}` parts.
#[derive(Debug, Clone)]
pub struct TextTemplate {
    parts: Vec<TextPart>,
}

impl TextTemplate {
    pub fn compile(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let end = rest.find('}').ok_or_else(|| format!("unclosed `{{` in `{text}`"))?;
                    if !literal.is_empty() {
                        parts.push(TextPart::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(TextPart::Expr(Expression::compile(&rest[..end])?));
                    for _ in 0..rest[..end].chars().count() + 1 {
                        chars.next();
                    }
                }
                '}' => return Err(format!("stray `}}` in `{text}`; write `}}}}` for a literal brace")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(TextPart::Literal(literal));
        }
        Ok(TextTemplate { parts })
    }

    /// Renders; `None` when any part has no value.
    pub fn render(&self, scope: &Scope) -> Result<Option<String>, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TextPart::Literal(l) => out.push_str(l),
                TextPart::Expr(e) => match e.eval_string(scope)? {
                    Some(s) => out.push_str(&s),
                    None => return Ok(None),
                },
            }
        }
        Ok(Some(out))
    }

    pub fn expressions(&self) -> impl Iterator<Item = &Expression> {
        self.parts.iter().filter_map(|p| match p {
            TextPart::Expr(e) => Some(e),
            TextPart::Literal(_) => None,
        })
    }
}

/// A JSON template (see the module docs).
#[derive(Debug, Clone)]
pub enum Template {
    Literal(Value),
    Expr(Expression),
    Text(TextTemplate),
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
    /// `{ "$each" = "<expression>", "$item" = <template> }`: the item rendered once per value the
    /// expression finds, with `$` meaning that value; inside an array the items are spliced in.
    Each(Expression, Box<Template>),
}

impl Template {
    /// Compiles, collecting every problem with its location inside the template (`a.b[2]`).
    pub fn compile(value: &Value, at: &str, problems: &mut Vec<(String, String)>) -> Template {
        match value {
            Value::String(s) if s.starts_with('$') => match Expression::compile(s) {
                Ok(e) => Template::Expr(e),
                Err(e) => {
                    problems.push((at.to_string(), e));
                    Template::Literal(Value::Null)
                }
            },
            Value::String(s) if s.contains('{') || s.contains('}') => match TextTemplate::compile(s) {
                Ok(t) => Template::Text(t),
                Err(e) => {
                    problems.push((at.to_string(), e));
                    Template::Literal(Value::Null)
                }
            },
            Value::Object(map) if map.contains_key("$each") || map.contains_key("$item") => {
                let (Some(Value::String(source)), Some(item), 2) = (map.get("$each"), map.get("$item"), map.len())
                else {
                    problems.push((
                        at.to_string(),
                        "a repeated element needs exactly `$each` (an expression) and `$item` (a template)".into(),
                    ));
                    return Template::Literal(Value::Null);
                };
                match Expression::compile(source) {
                    Ok(e) => Template::Each(e, Box::new(Template::compile(item, &format!("{at}.$item"), problems))),
                    Err(e) => {
                        problems.push((format!("{at}.$each"), e));
                        Template::Literal(Value::Null)
                    }
                }
            }
            Value::Object(map) => Template::Object(
                map.iter().map(|(k, v)| (k.clone(), Template::compile(v, &format!("{at}.{k}"), problems))).collect(),
            ),
            Value::Array(items) => Template::Array(
                items.iter().enumerate().map(|(i, v)| Template::compile(v, &format!("{at}[{i}]"), problems)).collect(),
            ),
            other => Template::Literal(other.clone()),
        }
    }

    /// True when the template holds no expression: it always renders the same value.
    pub fn is_static(&self) -> bool {
        match self {
            Template::Literal(_) => true,
            Template::Expr(_) | Template::Text(_) | Template::Each(..) => false,
            Template::Object(fields) => fields.iter().all(|(_, t)| t.is_static()),
            Template::Array(items) => items.iter().all(Template::is_static),
        }
    }

    /// Every expression in the template, for load-time checks.
    pub fn expressions(&self) -> Vec<&Expression> {
        match self {
            Template::Literal(_) => vec![],
            Template::Expr(e) => vec![e],
            Template::Text(t) => t.expressions().collect(),
            Template::Object(fields) => fields.iter().flat_map(|(_, t)| t.expressions()).collect(),
            Template::Array(items) => items.iter().flat_map(Template::expressions).collect(),
            Template::Each(source, item) => std::iter::once(source).chain(item.expressions()).collect(),
        }
    }

    fn render_each(&self, scope: &Scope) -> Result<Vec<Value>, String> {
        let Template::Each(source, item) = self else { return Ok(vec![]) };
        let values = match source.eval(scope)? {
            None => vec![],
            Some(Value::Array(values)) => values,
            Some(one) => vec![one],
        };
        let mut out = Vec::new();
        for value in &values {
            let inner =
                Scope { document: value, vars: scope.vars, headers: scope.headers, transforms: scope.transforms };
            if let Some(v) = item.render(&inner)? {
                out.push(v);
            }
        }
        Ok(out)
    }

    pub fn render(&self, scope: &Scope) -> Result<Option<Value>, String> {
        Ok(match self {
            Template::Literal(v) => Some(v.clone()),
            Template::Expr(e) => e.eval(scope)?,
            Template::Text(t) => t.render(scope)?.map(Value::String),
            Template::Object(fields) => {
                let mut map = Map::new();
                let mut data_found = false;
                for (k, t) in fields {
                    if let Some(v) = t.render(scope)? {
                        // Literal scalars (`system`, `resourceType`) label data; they are not data themselves.
                        data_found |= !matches!(t, Template::Literal(v) if !v.is_object() && !v.is_array());
                        map.insert(k.clone(), v);
                    }
                }
                // An object made of literals plus expressions that found nothing (a `system` beside a
                // missing `code`) carries no data: leave it out rather than emit a stray shell.
                let has_dynamic = fields.iter().any(|(_, t)| !t.is_static());
                (!map.is_empty() && (data_found || !has_dynamic)).then_some(Value::Object(map))
            }
            Template::Array(items) => {
                let mut out = Vec::new();
                for t in items {
                    if matches!(t, Template::Each(..)) {
                        out.extend(t.render_each(scope)?);
                    } else if let Some(v) = t.render(scope)? {
                        out.push(v);
                    }
                }
                (!out.is_empty()).then_some(Value::Array(out))
            }
            Template::Each(..) => {
                let out = self.render_each(scope)?;
                (!out.is_empty()).then_some(Value::Array(out))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: Value, doc: Value, vars: &[(&str, Value)]) -> Option<Value> {
        let mut problems = Vec::new();
        let t = Template::compile(&template, "t", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let vars: BTreeMap<String, Value> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        t.render(&Scope { document: &doc, vars: &vars, headers: None, transforms: Default::default() }).unwrap()
    }

    #[test]
    fn each_renders_an_item_per_value_and_splices_into_arrays() {
        let doc = json!({"pages": [{"id": "1", "n": 1}, {"id": "2", "n": 2}]});
        let t = json!({"contained": [
            {"$each": "$.pages[*]", "$item": {"id": "p{$.id}", "order": "$.n", "of": "{doc}"}},
            {"id": "original"}
        ]});
        let out = render(t, doc, &[("doc", json!("d1"))]).unwrap();
        assert_eq!(
            out,
            json!({"contained": [{"id": "p1", "order": 1, "of": "d1"}, {"id": "p2", "order": 2, "of": "d1"}, {"id": "original"}]})
        );
        let none = render(json!({"x": {"$each": "$.missing[*]", "$item": {"a": "$.a"}}}), json!({}), &[]);
        assert_eq!(none, None);
        let mut problems = Vec::new();
        Template::compile(&json!({"$each": "$.a"}), "t", &mut problems);
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn renders_paths_interpolation_literals_and_drops_missing_fields() {
        let out = render(
            json!({"resourceType": "Media", "id": "cv.{$.id}", "status": "$.status", "subject": {"reference": "$.subject.reference"}, "encounter": {"reference": "$.encounter.reference"}, "url": "{base}/Media/{{x}}"}),
            json!({"id": "u1", "status": "completed", "subject": {"reference": "Patient/1"}}),
            &[("base", json!("http://g"))],
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"resourceType": "Media", "id": "cv.u1", "status": "completed", "subject": {"reference": "Patient/1"}, "url": "http://g/Media/{x}"})
        );
    }

    #[test]
    fn objects_whose_expressions_find_nothing_are_left_out() {
        let template = json!({"bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "$.site"}]}, "fixed": {"a": 1}});
        assert_eq!(render(template.clone(), json!({}), &[]).unwrap(), json!({"fixed": {"a": 1}}));
        assert_eq!(
            render(template, json!({"site": "x"}), &[]).unwrap(),
            json!({"bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "x"}]}, "fixed": {"a": 1}})
        );
    }

    #[test]
    fn indefinite_paths_give_arrays_and_filters_work() {
        let doc = json!({"extension": [{"url": "a", "valueId": "1"}, {"url": "b", "valueUri": "x"}], "link": [{"relation": "next", "url": "/n"}]});
        let out =
            render(json!({"ext": "$.extension[?@.url=='a']", "next": "$.link[?@.relation=='next'].url"}), doc, &[])
                .unwrap();
        assert_eq!(out, json!({"ext": [{"url": "a", "valueId": "1"}], "next": ["/n"]}));
    }

    #[test]
    fn transforms_apply_in_order_and_report_bad_input() {
        let out =
            render(json!({"p": "{patient | reference(Patient)}"}), json!({}), &[("patient", json!("123"))]).unwrap();
        assert_eq!(out, json!({"p": "Patient/123"}));
        let e = Expression::compile("patient | reference(Patient)").unwrap();
        let vars = [("patient".to_string(), json!("Practitioner/1"))].into();
        assert!(
            e.eval(&Scope { document: &json!({}), vars: &vars, headers: None, transforms: Default::default() })
                .is_err()
        );
    }

    #[test]
    fn compile_errors_say_what_is_wrong_with_a_hint() {
        let err = Expression::compile("$.a | date_mmddyyyy").unwrap_err();
        assert!(err.contains("did you mean `date_to_mmddyyyy`"), "{err}");
        assert!(Expression::compile("$.a[").unwrap_err().contains("bad JSONPath"));
        assert!(Expression::compile("$.a | reference").unwrap_err().contains("needs an argument"));
        let mut problems = Vec::new();
        Template::compile(&json!({"a": "$..[", "b": ["{x"]}), "body", &mut problems);
        let at: Vec<&str> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(at, ["body.a", "body.b[0]"]);
    }
}
