//! `mappings test --accept`: a case whose upstream requests or result differ from what the mapping does
//! now is rewritten with what it does, so an intended change is recorded by a command and reviewed as a
//! diff instead of being typed into long expected values by hand. The scripted EHR answers (`respond`),
//! the request and the case's own settings are kept; only `exchanges[].expect` and `result` change. A
//! case that passes is not touched (byte for byte).
//!
//! Rewritten cases are written the way the athena recorder (`tests/athena_golden.rs`) writes its cases:
//! the comment lines at the top of the file, then the case serialized by `toml::to_string` — keys in
//! alphabetical order, every table and array of tables under a header of its own, one field per line.
//! An accepted athena case and a re-recorded one are therefore byte-comparable, and after a first
//! rewrite a later accept changes only the lines of the fields that changed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{CaseReport, GoldenCase, SentRequest, Trace, compare, run_file, trace_case};
use crate::error::GatewayError;
use crate::mapping::engine::Outcome;
use crate::mapping::{Mapping, MappingSet};

/// What `--accept` did with one case.
#[derive(Debug)]
pub enum Action {
    /// The case passes; its file was not touched.
    Unchanged,
    /// The file was rewritten; the differences it records.
    Rewritten(Vec<String>),
    /// The case fails and cannot be rewritten from what the mapping did: why, and its differences.
    Refused(String, Vec<String>),
}

#[derive(Debug)]
pub struct AcceptReport {
    pub file: PathBuf,
    pub case: CaseReport,
    pub action: Action,
}

/// Accepts every case of every mapping in `set` under `dir/<mapping>/tests/`.
pub fn accept_dir(set: &MappingSet, dir: &Path) -> Vec<AcceptReport> {
    let mut out = Vec::new();
    for (name, mapping) in &set.mappings {
        for file in super::case_files(&dir.join(name).join("tests")) {
            out.push(accept_file(mapping, &file));
        }
    }
    out
}

/// Runs one case; rewrites its file when it fails and the mapping's behaviour can be written down.
pub fn accept_file(mapping: &Mapping, file: &Path) -> AcceptReport {
    let case = run_file(mapping, file);
    let action = if case.passed() {
        Action::Unchanged
    } else {
        match rewrite(mapping, file) {
            Ok(()) => Action::Rewritten(case.failures.clone()),
            Err(why) => Action::Refused(why, case.failures.clone()),
        }
    };
    AcceptReport { file: file.to_path_buf(), case, action }
}

fn rewrite(mapping: &Mapping, file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read the case: {e}"))?;
    let case: GoldenCase = toml::from_str(&text).map_err(|e| format!("cannot read the case: {e}"))?;
    let trace = trace_case(mapping, &case)?;
    let new_text = accepted_text(&text, &trace)?;
    // Written only if the rewritten case passes: what cannot be said in a case is not half-recorded.
    let rewritten: GoldenCase =
        toml::from_str(&new_text).map_err(|e| format!("the rewritten case does not read: {e}"))?;
    let again = trace_case(mapping, &rewritten)?;
    let left = compare(&rewritten, &again);
    if !left.is_empty() {
        return Err(format!("the rewritten case would still fail: {}", left.join("; ")));
    }
    std::fs::write(file, new_text).map_err(|e| format!("cannot write: {e}"))
}

/// The case's text with `exchanges[].expect` and `result` taken from `trace`.
fn accepted_text(text: &str, trace: &Trace) -> Result<String, String> {
    if let Some(request) = &trace.unanswered {
        return Err(format!(
            "the mapping now sends upstream request #{} ({} {}), which the case has no answer for; add an \
             [[exchanges]] entry with the EHR's answer (`respond`), then accept again",
            trace.sent.len() + 1,
            request.method,
            request.path
        ));
    }
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| format!("cannot read the case: {e}"))?;
    let mut exchanges = match doc.remove("exchanges") {
        Some(toml::Value::Array(items)) => items,
        _ => Vec::new(),
    };
    // Answers the mapping no longer asks for go; the ones it asks for keep their `respond`.
    exchanges.truncate(trace.sent.len());
    for (exchange, sent) in exchanges.iter_mut().zip(&trace.sent) {
        let toml::Value::Table(exchange) = exchange else { return Err("an exchange is not a table".into()) };
        let old = exchange.get("expect").and_then(toml::Value::as_table);
        let expect = to_toml(&expected_request(old, sent))?;
        exchange.insert("expect".into(), expect);
    }
    if !exchanges.is_empty() {
        doc.insert("exchanges".into(), toml::Value::Array(exchanges));
    }
    let old_result = doc.get("result").and_then(toml::Value::as_table).cloned();
    let outcome = trace.outcome.as_ref().ok_or("the mapping produced no outcome")?;
    doc.insert("result".into(), to_toml(&expected_result(old_result.as_ref(), outcome)?)?);
    written(text, &doc)
}

/// `doc` as the text of a case file: `text`'s leading comments, then the TOML.
fn written(text: &str, doc: &toml::Table) -> Result<String, String> {
    let body = toml::to_string(doc).map_err(|e| format!("cannot write the case as TOML: {e}"))?;
    Ok(format!("{}{body}", leading_comments(text)))
}

/// The comment lines a case starts with (blank lines between them kept, trailing ones not).
fn leading_comments(text: &str) -> String {
    let lines: Vec<&str> =
        text.lines().take_while(|l| l.trim().is_empty() || l.trim_start().starts_with('#')).collect();
    let kept = lines.iter().rposition(|l| !l.trim().is_empty()).map_or(0, |i| i + 1);
    lines[..kept].iter().map(|l| format!("{l}\n")).collect()
}

/// `expect` for a request the mapping sent. The method keeps the case's spelling when it matches, and
/// only the headers the case listed are listed again (with the values sent), as the comparison does.
fn expected_request(old: Option<&toml::Table>, sent: &SentRequest) -> Value {
    let old_method = old.and_then(|t| t.get("method")).and_then(toml::Value::as_str);
    let method = old_method.filter(|m| m.eq_ignore_ascii_case(&sent.method)).unwrap_or(&sent.method);
    let mut expect = json!({"method": method, "path": sent.path});
    // A key the case wrote stays (even empty), so a rewrite changes only what differs.
    let had = |key: &str| old.is_some_and(|t| t.contains_key(key));
    if !sent.query.is_empty() || had("query") {
        expect["query"] = json!(sent.query);
    }
    let listed = old.and_then(|t| t.get("headers")).and_then(toml::Value::as_table);
    let headers: serde_json::Map<String, Value> = listed
        .into_iter()
        .flat_map(|t| t.keys())
        .filter_map(|name| Some((name.clone(), json!(sent.header(name)?))))
        .collect();
    if listed.is_some() {
        expect["headers"] = Value::Object(headers);
    }
    if let Some(body) = &sent.body {
        expect["body"] = body.clone();
    }
    expect
}

/// `result` for an outcome. An error keeps the keys the case checked (`message_contains`,
/// `retryable`) with what is true now; a new error result gets both.
fn expected_result(old: Option<&toml::Table>, outcome: &Result<Outcome, GatewayError>) -> Result<Value, String> {
    Ok(match outcome {
        Ok(Outcome::Resource(r)) => json!({"resource": r}),
        Ok(Outcome::Page { entries, total, next }) => {
            let mut page = json!({"entries": entries});
            if let Some(t) = total {
                page["total"] = json!(t);
            }
            if let Some(n) = next {
                page["next"] = json!(n.to_string());
            }
            json!({"page": page})
        }
        Ok(Outcome::Bytes) => json!({"bytes": true}),
        Ok(Outcome::Done) => json!({"done": true}),
        Ok(Outcome::Written { .. }) => {
            return Err("the mapping wrote but could not read the result back, which a case cannot express".into());
        }
        Err(e) => {
            let old = old.and_then(|t| t.get("error")).and_then(toml::Value::as_table);
            let mut error = json!({"status": e.status.as_u16(), "code": e.code().as_str()});
            // The case's own text is kept while every issue still says it.
            if old.is_none_or(|t| t.contains_key("message_contains")) {
                let old_text = old.and_then(|t| t.get("message_contains")).and_then(toml::Value::as_str);
                let text = old_text
                    .filter(|t| e.issues.iter().all(|i| i.message.contains(t)))
                    .map(str::to_string)
                    .unwrap_or_else(|| common_prefix(e.issues.iter().map(|i| i.message.as_str())));
                if !text.is_empty() {
                    error["message_contains"] = json!(text);
                }
            }
            if old.is_none_or(|t| t.contains_key("retryable")) {
                error["retryable"] = json!(e.retryable);
            }
            json!({"error": error})
        }
    })
}

/// The text every message starts with (the whole message when there is one).
fn common_prefix<'a>(mut messages: impl Iterator<Item = &'a str>) -> String {
    let Some(first) = messages.next() else { return String::new() };
    let mut prefix = first.to_string();
    for m in messages {
        let same = prefix.chars().zip(m.chars()).take_while(|(a, b)| a == b).count();
        prefix = prefix.chars().take(same).collect();
    }
    prefix.trim_end().to_string()
}

/// JSON as TOML. TOML has no null; the engine treats null as absent, so nulls are left out (as the
/// athena recorder does).
fn to_toml(value: &Value) -> Result<toml::Value, String> {
    fn strip(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), strip(v))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().filter(|v| !v.is_null()).map(strip).collect()),
            other => other.clone(),
        }
    }
    toml::Value::try_from(strip(value)).map_err(|e| format!("cannot write as TOML: {e}"))
}

/// One line per rewritten or refused case with the differences it records, and a closing summary.
pub fn render_accept(reports: &[AcceptReport], root: &Path) -> String {
    let mut out = String::new();
    for r in reports {
        let file = r.file.strip_prefix(root).unwrap_or(&r.file).display();
        let what = format!("{file} ({} {}): {}", r.case.interaction, r.case.category, r.case.description);
        let (head, lines) = match &r.action {
            Action::Unchanged => continue,
            Action::Rewritten(diffs) => (format!("rewrote  {what}"), diffs),
            Action::Refused(why, diffs) => (format!("FAIL     {what}\n         not rewritten: {why}"), diffs),
        };
        let _ = writeln!(out, "{head}");
        for d in lines {
            let _ = writeln!(out, "         {d}");
        }
    }
    let count = |f: fn(&Action) -> bool| reports.iter().filter(|r| f(&r.action)).count();
    let _ = writeln!(
        out,
        "mappings: {} rewritten, {} unchanged, {} failed",
        count(|a| matches!(a, Action::Rewritten(_))),
        count(|a| matches!(a, Action::Unchanged)),
        count(|a| matches!(a, Action::Refused(..)))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leading_comment_block_is_kept_without_trailing_blank_lines() {
        assert_eq!(leading_comments("# one\n\n# two\n\ndescription = \"x\"\n# later\n"), "# one\n\n# two\n");
        assert_eq!(leading_comments("description = \"x\"\n"), "");
    }

    #[test]
    fn an_error_message_is_matched_by_what_all_its_issues_say() {
        assert_eq!(common_prefix(["Canvas failed: a", "Canvas failed: b"].into_iter()), "Canvas failed:");
        assert_eq!(common_prefix(["one message"].into_iter()), "one message");
    }
}
