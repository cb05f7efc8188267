//! What serde cannot check: values in range, cross-references between sections, secrets that resolve.
//! Every check runs even when other parts of the configuration failed to read, and stays quiet about a
//! key that already failed (and about references to it), so each mistake is reported once.

use super::errors::{KeyPath, options_words};
use super::read::Reader;
use super::{Config, KNOWN_EHRS};

pub(super) fn check(config: &Config, r: &mut Reader) {
    server(config, r);
    record(config, r);
    connections(config, r);
    organizations(config, r);
    clients(config, r);
}

/// Reports `text` about `path` unless `path` (or what it depends on) already failed.
fn problem(r: &mut Reader, path: &KeyPath, text: impl std::fmt::Display) {
    if !r.failed(path) {
        r.report(path, format!("{path}: {text}"));
        r.flag(path);
    }
}

fn server(config: &Config, r: &mut Reader) {
    let s = &config.server;
    let at = KeyPath::root().key("server");
    for (key, value) in [
        ("body_limit_bytes", s.body_limit_bytes),
        ("request_timeout_ms", s.request_timeout_ms),
        ("max_upstream_answer_bytes", s.max_upstream_answer_bytes),
    ] {
        if value == 0 {
            problem(r, &at.key(key), "must be greater than 0");
        }
    }
    for (side, limits) in [("client", s.limits.client()), ("upstream", s.limits.upstream())] {
        for p in limits.problems() {
            // `Limits::problems` says "max_depth must be …": the key, then what is wrong.
            let (key, text) = p.split_once(' ').unwrap_or((&p, ""));
            problem(r, &at.key("limits").key(side).key(key), text);
        }
    }
    if let Some(budget) = s.memory_budget_bytes
        && budget < s.body_limit_bytes
        && !r.failed(&at.key("body_limit_bytes"))
    {
        problem(
            r,
            &at.key("memory_budget_bytes"),
            format_args!(
                "{budget} must be at least server.body_limit_bytes ({}), or no body of the largest allowed size \
                 could ever be taken",
                s.body_limit_bytes
            ),
        );
    }
    if !matches!(s.log_format.as_str(), "json" | "pretty") {
        problem(r, &at.key("log_format"), format_args!("expected `json` or `pretty`, found text {:?}", s.log_format));
    }
    if let Some(url) = &s.public_base_url
        && !is_http_url(url)
    {
        problem(r, &at.key("public_base_url"), format_args!("expected an http(s) URL, found text {url:?}"));
    }
}

fn record(config: &Config, r: &mut Reader) {
    let at = KeyPath::root().key("record").key("redact");
    if r.failed(&at) {
        return;
    }
    if let Err(e) = config.record.redact.clone().compile() {
        // The policy names its own key (`record.redact.patient_id_patterns: …`).
        let key = KeyPath::from(e.split(':').next().unwrap_or_default());
        r.report(&key, e);
        r.flag(&key);
    }
}

fn connections(config: &Config, r: &mut Reader) {
    for (name, c) in &config.connections {
        let at = KeyPath::root().key("connections").key(name);
        if !KNOWN_EHRS.contains(&c.ehr.as_str()) {
            problem(r, &at.key("ehr"), format_args!("unknown EHR `{}`; supported: {}", c.ehr, KNOWN_EHRS.join(", ")));
        }
        // Whether the EHR settings are needed depends on `simulator`; when it failed, nothing is said.
        let simulator = (!r.failed(&at.key("simulator"))).then_some(c.simulator);
        if simulator == Some(true) {
            #[cfg(not(feature = "sandbox"))]
            problem(r, &at.key("simulator"), super::NO_SIMULATORS);
        } else if simulator == Some(false) {
            for (key, value) in [("base_url", &c.base_url), ("token_url", &c.token_url), ("client_id", &c.client_id)] {
                match value {
                    None => problem(r, &at.key(key), "required unless `simulator = true`"),
                    Some(url) if key != "client_id" && !is_http_url(url) => {
                        problem(r, &at.key(key), format_args!("expected an http(s) URL, found text {url:?}"))
                    }
                    _ => {}
                }
            }
            match &c.client_secret {
                None => problem(r, &at.key("client_secret"), "required unless `simulator = true`"),
                Some(secret) => {
                    if let Err(e) = secret.resolve() {
                        problem(r, &at.key("client_secret"), e);
                    }
                }
            }
        }
        for (key, zero) in [
            ("timeout_ms", c.timeout_ms == 0),
            ("connect_timeout_ms", c.connect_timeout_ms == 0),
            ("max_concurrency", c.max_concurrency == 0),
            ("max_attempts", c.max_attempts == 0),
        ] {
            if zero {
                problem(r, &at.key(key), "must be greater than 0");
            }
        }
    }
}

fn organizations(config: &Config, r: &mut Reader) {
    // Which organization first took an id or slug (an organization may use one text for both).
    let mut taken = std::collections::HashMap::new();
    let known: Vec<&str> = config.connections.keys().map(String::as_str).collect();
    for (i, org) in config.organizations.iter().enumerate() {
        let at = KeyPath::root().key("organizations").at(i);
        for (key, value) in [("id", &org.id), ("slug", &org.slug)] {
            if r.failed(&at.key(key)) {
                continue;
            }
            if !crate::fhir::validate::is_valid_id(value) {
                problem(
                    r,
                    &at.key(key),
                    format_args!("`{value}` is not usable in a URL path segment (use [A-Za-z0-9-.]{{1,64}})"),
                );
            }
            if *taken.entry(value.clone()).or_insert(i) != i {
                problem(r, &at.key(key), format_args!("`{value}` is already the id or slug of another organization"));
            }
        }
        let connection = KeyPath::root().key("connections").key(&org.connection);
        // A connection that is there but failed to read is not "unknown": its own problem is reported.
        if !config.connections.contains_key(&org.connection) && !r.failed(&connection) {
            problem(
                r,
                &at.key("connection"),
                format_args!(
                    "unknown connection `{}`{}",
                    org.connection,
                    options_words(&org.connection, &known, "defined connections")
                ),
            );
        }
    }
}

fn clients(config: &Config, r: &mut Reader) {
    let organizations = KeyPath::root().key("organizations");
    // An organization whose id or slug failed to read could be the one a client names.
    let unreadable = r.failed_at(&organizations)
        || (0..config.organizations.len()).any(|i| {
            let at = organizations.at(i);
            r.failed(&at.key("id")) || r.failed(&at.key("slug"))
        });
    for (i, client) in config.clients.iter().enumerate() {
        let at = KeyPath::root().key("clients").at(i);
        let hash = &client.token_sha256;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            problem(r, &at.key("token_sha256"), "must be 64 hex characters (the SHA-256 of the token)");
        }
        for org in &client.organizations {
            if !unreadable && !config.organizations.iter().any(|o| &o.id == org || &o.slug == org) {
                problem(r, &at.key("organizations"), format_args!("unknown organization `{org}`"));
            }
        }
    }
}

fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}
