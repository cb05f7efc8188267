//! `ehr-gateway replay DIR`: replays recorded cassettes through the current mappings without calling an
//! EHR — each cassette's front-door request runs through a gateway whose connection is answered by the
//! cassette's upstream exchanges — and reports, or with `--accept` rewrites, what changed.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::cassette::redact::{MappingFields, Redactor};
use crate::cassette::replay_transport::ReplayTransport;
use crate::cassette::{Cassette, RecordedBody, RecordedResponse};
use crate::config::{Config, RedactionPolicy, token_hash};
use crate::mapping::MappingSet;

const REPLAY_TOKEN: &str = "replay-client-token";

/// Runs the command: exit 1 when there are no cassettes or any regressed.
pub async fn run(dir: &Path, mappings: &Path, accept: bool) -> ExitCode {
    let mut stdout = std::io::stdout();
    let reports = replay_dir(dir, mappings, accept, &mut stdout).await;
    if reports.is_empty() {
        println!("no cassettes (*.json) under {}", dir.display());
        return ExitCode::FAILURE;
    }
    if reports.iter().all(|r| r.problems.is_empty()) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The outcome of replaying one cassette.
#[derive(Debug)]
pub struct CassetteReport {
    pub file: PathBuf,
    /// Readable regressions; empty when the cassette still holds.
    pub problems: Vec<String>,
    /// With `accept`: the cassette was rewritten.
    pub rewritten: bool,
}

/// Every `*.json` cassette below `dir`, sorted.
pub fn cassette_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Replays one cassette through a loaded mapping set.
async fn replay_file_with(file: &Path, set: &MappingSet, accept: bool) -> CassetteReport {
    let mut report = CassetteReport { file: file.to_path_buf(), problems: Vec::new(), rewritten: false };
    let cassette: Cassette = match std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            report.problems.push(format!("cannot read the cassette: {e}"));
            return report;
        }
    };
    match replay(&cassette, set).await {
        Err(e) => report.problems.push(e),
        Ok((upstream_problems, response_diffs, replayed)) => {
            // Accept rewrites what the mapping now produces, but only when every upstream request still
            // found a recorded answer: otherwise the cassette must be recorded again.
            if accept && upstream_problems.is_empty() {
                if replayed != cassette {
                    match std::fs::write(file, replayed.to_pretty_json()) {
                        Ok(()) => report.rewritten = true,
                        Err(e) => report.problems.push(format!("cannot rewrite: {e}")),
                    }
                }
            } else {
                let changed_upstream = !upstream_problems.is_empty();
                report.problems = upstream_problems.into_iter().chain(response_diffs).collect();
                if accept && changed_upstream {
                    // Accepting would pair a request with the answer the EHR gave to another one.
                    report.problems.push(
                        "not accepted: the upstream requests changed, so the recorded answers no longer apply; re-record this exchange"
                            .into(),
                    );
                }
            }
        }
    }
    report
}

/// Runs the cassette's front-door request against its recorded upstream answers; returns the upstream
/// problems, the front-door differences, and the cassette as it would be recorded now.
async fn replay(cassette: &Cassette, set: &MappingSet) -> Result<(Vec<String>, Vec<String>, Cassette), String> {
    let mappings_dir = &set.dir;
    let org = &cassette.organization;
    let toml = format!(
        "[server]\nmappings_dir = {mappings:?}\npublic_base_url = {base:?}\n[connections.replay]\nehr = {ehr:?}\nsimulator = true\n\
         [[organizations]]\nid = \"replay-org\"\nslug = {slug:?}\nname = \"replay\"\nconnection = \"replay\"\nmapping = {mapping:?}\n\
         [[clients]]\nname = \"replay\"\ntoken_sha256 = {hash:?}\norganizations = [{slug:?}]\n",
        mappings = mappings_dir.display().to_string(),
        base = cassette.gateway_base,
        ehr = org.ehr,
        slug = org.slug,
        mapping = org.mapping,
        hash = token_hash(REPLAY_TOKEN),
    );
    let config = Config::from_toml_str(&toml).map_err(|e| e.to_string())?;
    let transport = Arc::new(ReplayTransport::new(cassette.upstream.clone()));
    let (state, _) = crate::server::build_state_from(config, set.clone(), Some(transport.clone())).await?;
    // Both sides are compared as recording left them: the mapping's own constants and the values it
    // derives get the placeholders they got when the cassette was recorded.
    let fields =
        Arc::new(state.registry.snapshot().get(&org.mapping).map(|m| MappingFields::of(m)).unwrap_or_default());
    let redactor = Arc::new(Redactor::new(RedactionPolicy::default())?);
    transport.set_placeholders(redactor.clone(), fields.clone());
    let service = crate::server::build_service(state);

    let r = &cassette.request;
    let mut uri = r.path.clone();
    if !r.query.is_empty() {
        uri.push('?');
        uri.push_str(&form_urlencoded::Serializer::new(String::new()).extend_pairs(&r.query).finish());
    }
    let mut builder = http::Request::builder()
        .method(r.method.as_str())
        .uri(uri)
        .header("authorization", format!("Bearer {REPLAY_TOKEN}"));
    for (k, v) in &r.headers {
        builder = builder.header(k, v);
    }
    let request =
        builder.body(crate::body::full(r.body.to_bytes())).map_err(|e| format!("bad recorded request: {e}"))?;
    let Ok(response) = service.oneshot(request).await;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map(|c| c.to_bytes()).map_err(|e| format!("reading the response: {e}"))?;
    let content_type = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    // The headers the recorder keeps, so a recorded header is compared, never reported missing.
    let headers = crate::cassette::tap::kept_headers(&parts.headers);
    let mut now = RecordedResponse {
        status: parts.status.as_u16(),
        headers,
        body: RecordedBody::from_bytes(content_type, &bytes),
    };
    redactor.placeholders(&mut now, &fields)?;

    let (sent, upstream_problems) = transport.finish();
    let mut problems = Vec::new();
    let was = &cassette.response;
    if was.status != now.status {
        problems.push(format!("response.status: expected {}, got {}", was.status, now.status));
    }
    for (k, v) in &was.headers {
        if now.headers.get(k) != Some(v) {
            problems.push(format!("response.headers.{k}: expected {v:?}, got {:?}", now.headers.get(k)));
        }
    }
    match (&was.body, &now.body) {
        (RecordedBody::Json(a), RecordedBody::Json(b)) => {
            crate::mapping::golden::diff("response.body", a, b, &mut problems)
        }
        (a, b) if a != b => problems.push(format!("response.body: expected {}, got {}", brief(a), brief(b))),
        _ => {}
    }
    let mut updated = cassette.clone();
    updated.response = now;
    for (exchange, request) in updated.upstream.iter_mut().zip(sent) {
        exchange.request = request;
    }
    Ok((upstream_problems, problems, updated))
}

fn brief(body: &RecordedBody) -> String {
    match body {
        RecordedBody::None => "no body".into(),
        RecordedBody::Json(v) => v.to_string().chars().take(120).collect(),
        RecordedBody::Form(f) => format!("form {f:?}"),
        RecordedBody::Text(t) => format!("text {:?}", t.chars().take(80).collect::<String>()),
        RecordedBody::RedactedBytes(n) => format!("{n} bytes"),
        RecordedBody::RedactedFile { len, signature } => format!("{len} bytes starting {signature}"),
    }
}

/// Replays every cassette below `dir`, printing progress (a bar on a terminal, a line per cassette
/// otherwise), a diff per regression and a summary. Returns the reports.
pub async fn replay_dir(dir: &Path, mappings_dir: &Path, accept: bool, out: &mut dyn Write) -> Vec<CassetteReport> {
    let files = cassette_files(dir);
    let terminal = std::io::stderr().is_terminal();
    let mut reports = Vec::new();
    // Compiled once for all cassettes.
    let set = crate::server::load_mappings(mappings_dir);
    for (i, file) in files.iter().enumerate() {
        let report = match &set {
            Ok(set) => replay_file_with(file, set, accept).await,
            Err(e) => CassetteReport { file: file.clone(), problems: vec![e.clone()], rewritten: false },
        };
        let name = file.strip_prefix(dir).unwrap_or(file).display().to_string();
        if terminal {
            let done = (i + 1) * 30 / files.len().max(1);
            eprint!("\r[{}{}] {}/{} {name:<50.50}", "#".repeat(done), " ".repeat(30 - done), i + 1, files.len());
        }
        let status = match (report.problems.is_empty(), report.rewritten) {
            (_, true) => "accepted",
            (true, false) => "ok",
            (false, false) => "FAIL",
        };
        if !terminal || !report.problems.is_empty() {
            if terminal {
                eprintln!();
            }
            let _ = writeln!(out, "{status:<8} {name}");
            for p in &report.problems {
                let _ = writeln!(out, "         {p}");
            }
        }
        reports.push(report);
    }
    if terminal {
        eprintln!();
    }
    let failed = reports.iter().filter(|r| !r.problems.is_empty()).count();
    let rewritten = reports.iter().filter(|r| r.rewritten).count();
    if accept {
        let _ = writeln!(
            out,
            "replay: {rewritten} cassette(s) rewritten, {} unchanged",
            reports.len() - rewritten - failed
        );
    }
    let _ = writeln!(out, "replay: {} passed, {failed} failed", reports.len() - failed);
    reports
}
