//! JSONPath evaluation (RFC 9535) over queries parsed by jsonpath-rust, yielding references into the
//! document. jsonpath-rust's own evaluator builds a path string for every node it passes and every match;
//! a mapping only needs the values, so this walks the parsed query directly: no strings, no copies, and
//! the caller clones only what it outputs.

use std::borrow::Cow;
use std::cmp::Ordering;

use jsonpath_rust::parser::model::{
    Comparable, Comparison, Filter, FilterAtom, FnArg, JpQuery, Literal, Segment, Selector, SingularQuery,
    SingularQuerySegment, Test, TestFunction,
};
use regex::Regex;
use serde_json::Value;

/// The nodes `query` selects in `root`, in document order.
pub fn select<'v>(query: &JpQuery, root: &'v Value) -> Vec<&'v Value> {
    select_from(&query.segments, root, root)
}

fn select_from<'v>(segments: &[Segment], start: &'v Value, root: &'v Value) -> Vec<&'v Value> {
    let mut nodes = vec![start];
    for segment in segments {
        let mut next = Vec::new();
        for node in nodes {
            apply_segment(segment, node, root, &mut next);
        }
        nodes = next;
        if nodes.is_empty() {
            break;
        }
    }
    nodes
}

fn apply_segment<'v>(segment: &Segment, node: &'v Value, root: &'v Value, out: &mut Vec<&'v Value>) {
    match segment {
        Segment::Selector(s) => apply_selector(s, node, root, out),
        Segment::Selectors(list) => list.iter().for_each(|s| apply_selector(s, node, root, out)),
        Segment::Descendant(inner) => {
            // The node itself, then every descendant, depth first in document order.
            let mut stack = vec![node];
            while let Some(n) = stack.pop() {
                apply_segment(inner, n, root, out);
                match n {
                    Value::Array(items) => stack.extend(items.iter().rev()),
                    Value::Object(map) => stack.extend(map.values().rev()),
                    _ => {}
                }
            }
        }
    }
}

fn apply_selector<'v>(selector: &Selector, node: &'v Value, root: &'v Value, out: &mut Vec<&'v Value>) {
    match (selector, node) {
        (Selector::Name(name), Value::Object(map)) => out.extend(map.get(name)),
        (Selector::Wildcard, Value::Array(items)) => out.extend(items),
        (Selector::Wildcard, Value::Object(map)) => out.extend(map.values()),
        (Selector::Index(i), Value::Array(items)) => out.extend(index(items, *i)),
        (Selector::Slice(start, end, step), Value::Array(items)) => slice(items, *start, *end, *step, out),
        (Selector::Filter(filter), Value::Array(items)) => {
            out.extend(items.iter().filter(|item| holds(filter, item, root)));
        }
        (Selector::Filter(filter), Value::Object(map)) => {
            out.extend(map.values().filter(|item| holds(filter, item, root)));
        }
        _ => {}
    }
}

fn index(items: &[Value], i: i64) -> Option<&Value> {
    let at = if i < 0 { items.len().checked_sub(i.unsigned_abs() as usize)? } else { i as usize };
    items.get(at)
}

fn slice<'v>(items: &'v [Value], start: Option<i64>, end: Option<i64>, step: Option<i64>, out: &mut Vec<&'v Value>) {
    let len = items.len() as i64;
    let step = step.unwrap_or(1);
    if step == 0 {
        return;
    }
    let norm = |i: i64| if i >= 0 { i } else { len + i };
    if step > 0 {
        let lower = norm(start.unwrap_or(0)).clamp(0, len);
        let upper = norm(end.unwrap_or(len)).clamp(0, len);
        let mut i = lower;
        while i < upper {
            out.push(&items[i as usize]);
            i += step;
        }
    } else {
        let upper = norm(start.unwrap_or(len - 1)).clamp(-1, len - 1);
        let lower = end.map(norm).unwrap_or(-len - 1).clamp(-1, len - 1);
        let mut i = upper;
        while lower < i {
            out.push(&items[i as usize]);
            i += step;
        }
    }
}

/// A filter expression on the current node `current`.
fn holds(filter: &Filter, current: &Value, root: &Value) -> bool {
    match filter {
        Filter::Or(list) => list.iter().any(|f| holds(f, current, root)),
        Filter::And(list) => list.iter().all(|f| holds(f, current, root)),
        Filter::Atom(FilterAtom::Filter { expr, not }) => holds(expr, current, root) != *not,
        Filter::Atom(FilterAtom::Test { expr, not }) => test(expr, current, root) != *not,
        Filter::Atom(FilterAtom::Comparison(c)) => compare(c, current, root),
    }
}

fn test(t: &Test, current: &Value, root: &Value) -> bool {
    match t {
        Test::RelQuery(segments) => !select_from(segments, current, root).is_empty(),
        Test::AbsQuery(q) => !select(q, root).is_empty(),
        Test::Function(f) => match function(f, current, root) {
            Fn::Logical(b) => b,
            Fn::Value(v) => v.is_some(),
        },
    }
}

/// What a function gives: a logical (match, search) or a value (length, count, value).
enum Fn<'v> {
    Logical(bool),
    Value(Option<Cow<'v, Value>>),
}

fn function<'v>(f: &TestFunction, current: &'v Value, root: &'v Value) -> Fn<'v> {
    match f {
        TestFunction::Length(arg) => Fn::Value(arg_value(arg, current, root).and_then(|v| {
            let n = match v.as_ref() {
                Value::String(s) => s.chars().count(),
                Value::Array(a) => a.len(),
                Value::Object(o) => o.len(),
                _ => return None,
            };
            Some(Cow::Owned(Value::from(n)))
        })),
        TestFunction::Count(arg) => Fn::Value(Some(Cow::Owned(Value::from(arg_nodes(arg, current, root).len())))),
        TestFunction::Value(arg) => {
            let nodes = arg_nodes(arg, current, root);
            Fn::Value((nodes.len() == 1).then(|| Cow::Borrowed(nodes[0])))
        }
        TestFunction::Match(text, pattern) | TestFunction::Search(text, pattern) => {
            let whole = matches!(f, TestFunction::Match(..));
            let (Some(text), Some(pattern)) = (arg_value(text, current, root), arg_value(pattern, current, root))
            else {
                return Fn::Logical(false);
            };
            let (Value::String(text), Value::String(pattern)) = (text.as_ref(), pattern.as_ref()) else {
                return Fn::Logical(false);
            };
            let pattern = if whole { format!("^(?:{pattern})$") } else { pattern.clone() };
            Fn::Logical(Regex::new(&pattern).is_ok_and(|re| re.is_match(text)))
        }
        // jsonpath-rust's grammar admits only the five functions above; `Custom` is never parsed.
        TestFunction::Custom(..) => Fn::Logical(false),
    }
}

fn arg_nodes<'v>(arg: &FnArg, current: &'v Value, root: &'v Value) -> Vec<&'v Value> {
    match arg {
        FnArg::Test(t) => match t.as_ref() {
            Test::RelQuery(segments) => select_from(segments, current, root),
            Test::AbsQuery(q) => select(q, root),
            // RFC 9535 has no function that returns nodes.
            Test::Function(_) => vec![],
        },
        _ => vec![],
    }
}

fn arg_value<'v>(arg: &FnArg, current: &'v Value, root: &'v Value) -> Option<Cow<'v, Value>> {
    match arg {
        FnArg::Literal(l) => Some(Cow::Owned(literal(l))),
        FnArg::Filter(f) => Some(Cow::Owned(Value::Bool(holds(f, current, root)))),
        FnArg::Test(t) => match t.as_ref() {
            Test::Function(f) => match function(f, current, root) {
                Fn::Value(v) => v,
                Fn::Logical(b) => Some(Cow::Owned(Value::Bool(b))),
            },
            _ => {
                let nodes = arg_nodes(arg, current, root);
                (nodes.len() == 1).then(|| Cow::Borrowed(nodes[0]))
            }
        },
    }
}

fn literal(l: &Literal) -> Value {
    match l {
        Literal::Int(i) => Value::from(*i),
        Literal::Float(f) => Value::from(*f),
        Literal::String(s) => Value::String(s.clone()),
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Null => Value::Null,
    }
}

fn comparable<'v>(c: &Comparable, current: &'v Value, root: &'v Value) -> Option<Cow<'v, Value>> {
    match c {
        Comparable::Literal(l) => Some(Cow::Owned(literal(l))),
        Comparable::SingularQuery(q) => {
            let (mut node, segments) = match q {
                SingularQuery::Current(s) => (current, s),
                SingularQuery::Root(s) => (root, s),
            };
            for segment in segments {
                node = match (segment, node) {
                    (SingularQuerySegment::Name(n), Value::Object(map)) => map.get(n)?,
                    (SingularQuerySegment::Index(i), Value::Array(items)) => index(items, *i)?,
                    _ => return None,
                };
            }
            Some(Cow::Borrowed(node))
        }
        Comparable::Function(f) => match function(f, current, root) {
            Fn::Value(v) => v,
            Fn::Logical(b) => Some(Cow::Owned(Value::Bool(b))),
        },
    }
}

fn compare(c: &Comparison, current: &Value, root: &Value) -> bool {
    let (a, b) = c.vals();
    let (a, b) = (comparable(a, current, root), comparable(b, current, root));
    let (a, b) = (a.as_deref(), b.as_deref());
    match c {
        Comparison::Eq(..) => equal(a, b),
        Comparison::Ne(..) => !equal(a, b),
        Comparison::Lt(..) => less(a, b),
        Comparison::Gt(..) => less(b, a),
        Comparison::Lte(..) => less(a, b) || equal(a, b),
        Comparison::Gte(..) => less(b, a) || equal(a, b),
    }
}

/// RFC 9535 equality: numbers by value, everything else structurally; nothing equals only nothing.
fn equal(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => json_equal(a, b),
        _ => false,
    }
}

fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

fn less(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64().partial_cmp(&y.as_f64()) == Some(Ordering::Less),
        (Some(Value::String(x)), Some(Value::String(y))) => x < y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use jsonpath_rust::parser::parse_json_path;
    use jsonpath_rust::query::js_path_process;
    use serde_json::json;

    use super::*;

    fn doc() -> Value {
        json!({
            "resourceType": "Bundle",
            "total": 3,
            "link": [{"relation": "self", "url": "/a"}, {"relation": "next", "url": "/b"}],
            "entry": [
                {"resource": {"id": "1", "status": "completed", "note": [{"text": "a"}, {"text": "b"}],
                    "extension": [{"url": "u1", "valueString": "x"}, {"url": "u2", "valueInteger": 2}]}},
                {"resource": {"id": "2", "status": "entered-in-error", "size": 10,
                    "extension": [{"url": "u2", "valueInteger": 5}]}},
                {"resource": {"id": "3", "status": "completed", "size": 2.5, "tags": ["t1", "t2"]}}
            ],
            "insurances": [{"sequencenumber": "1", "insuranceid": "5678"}, {"sequencenumber": 2, "insuranceid": "5679"}],
            "": {"empty key": true}
        })
    }

    /// The same queries through jsonpath-rust's evaluator: this one must select the same values.
    #[test]
    fn selects_what_jsonpath_rust_selects() {
        let doc = doc();
        let queries = [
            "$",
            "$.total",
            "$.link[*].url",
            "$.link[?@.relation=='next'].url",
            "$.entry[*].resource.id",
            "$.entry[0].resource.note[*].text",
            "$.entry[-1].resource.id",
            "$.entry[5]",
            "$.entry[-9]",
            "$.entry[1:]",
            "$.entry[:2].resource.id",
            "$.entry[::2].resource.id",
            "$.entry[::-1].resource.id",
            "$.entry[-2:].resource.id",
            "$..id",
            "$..extension[?@.url=='u2'].valueInteger",
            "$..[?@.valueInteger > 3]",
            "$.entry[?@.resource.status=='completed'].resource.id",
            "$.entry[?@.resource.size >= 2.5].resource.id",
            "$.entry[?@.resource.size < 10 || @.resource.note].resource.id",
            "$.entry[?@.resource.note && @.resource.id=='1'].resource.id",
            "$.entry[?!@.resource.note].resource.id",
            "$.insurances[?@.sequencenumber=='1'].insuranceid",
            "$.insurances[?@.sequencenumber==2].insuranceid",
            "$.entry[?length(@.resource.extension) == 2].resource.id",
            "$.entry[?count(@.resource.*) > 4].resource.id",
            "$.entry[?match(@.resource.status, 'comp.*')].resource.id",
            "$.entry[?search(@.resource.status, 'error')].resource.id",
            "$.entry[*].resource.tags[1]",
            "$['link'][0]['url']",
            "$.link[0,1].relation",
            "$.*.total",
            "$.missing.deeper",
            "$['']['empty key']",
            "$.entry[?value(@.resource.id) == '3'].resource.status",
            "$.entry[?@.resource.id != '1'].resource.id",
        ];
        for q in queries {
            let query = parse_json_path(q).unwrap_or_else(|e| panic!("{q}: {e}"));
            let ours: Vec<&Value> = select(&query, &doc);
            let theirs: Vec<&Value> = js_path_process(&query, &doc).unwrap().into_iter().map(|r| r.val()).collect();
            assert_eq!(ours, theirs, "{q}");
        }
    }

    #[test]
    fn results_point_into_the_document() {
        let doc = doc();
        let query = parse_json_path("$.entry[0].resource.note").unwrap();
        let found = select(&query, &doc);
        assert!(std::ptr::eq(found[0], &doc["entry"][0]["resource"]["note"]));
    }
}
