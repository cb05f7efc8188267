//! Gateway configuration: one TOML file (`--config`, default `config/default.toml`) plus `EHRGW_`
//! environment overrides, validated all at once.
//!
//! Loading never stops at the first problem: every section is extracted on its own and then cross-checked,
//! so an operator sees the whole list of mistakes (with the file and key) in one run.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::json::Limits;

mod redaction;
mod secret;

pub use redaction::{CompiledRedaction, RedactionPolicy, SANDBOX_PSEUDONYM_KEY};
pub use secret::{Secret, SecretRef};

pub const DEFAULT_CONFIG: &str = "config/default.toml";
/// Lets a 25 MiB image through as base64 in FHIR JSON (about 35 MB).
pub const DEFAULT_BODY_LIMIT: u64 = 40 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (413 beyond).
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: u64,
    /// Whole-request deadline at the front door, in milliseconds (504 beyond).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Base URL clients reach the gateway at; links and `content.url` are built from it.
    /// Defaults to `http://{listen}`.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// Folder of mapping files.
    #[serde(default = "default_mappings_dir")]
    pub mappings_dir: PathBuf,
    /// Log format: `json` (default) or `pretty`.
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// How large parsed JSON may grow (`[server.limits.client]`, `[server.limits.upstream]`).
    #[serde(default)]
    pub limits: JsonLimits,
    /// Bytes of request bodies in flight across all requests at once; a request that would go beyond
    /// waits up to `memory_budget_wait_ms`, then gets 503 with `Retry-After`. Default: a quarter of the
    /// machine's memory, at least twice the body limit, at most 4 GiB.
    #[serde(default)]
    pub memory_budget_bytes: Option<u64>,
    #[serde(default = "default_memory_budget_wait_ms")]
    pub memory_budget_wait_ms: u64,
    /// The most bytes of one EHR answer read into memory (media streamed by `$content` are not held);
    /// larger answers are 502 `too-costly`.
    #[serde(default = "default_max_upstream_answer_bytes")]
    pub max_upstream_answer_bytes: u64,
}

/// Structural limits on JSON the gateway parses; each key left out keeps its default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonLimits {
    /// Bodies clients send (a Media, a JSON Patch); defaults in `json::Limits::CLIENT`.
    #[serde(default)]
    pub client: LimitOverrides,
    /// Answers EHRs send; defaults in `json::Limits::UPSTREAM`.
    #[serde(default)]
    pub upstream: LimitOverrides,
}

impl JsonLimits {
    pub fn client(&self) -> Limits {
        self.client.over(Limits::CLIENT)
    }
    pub fn upstream(&self) -> Limits {
        self.upstream.over(Limits::UPSTREAM)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub max_depth: Option<usize>,
    pub max_array_items: Option<usize>,
    pub max_nodes: Option<usize>,
    pub max_string_bytes: Option<usize>,
}

impl LimitOverrides {
    fn over(&self, base: Limits) -> Limits {
        Limits {
            max_depth: self.max_depth.unwrap_or(base.max_depth),
            max_array_items: self.max_array_items.unwrap_or(base.max_array_items),
            max_nodes: self.max_nodes.unwrap_or(base.max_nodes),
            max_string_bytes: self.max_string_bytes.unwrap_or(base.max_string_bytes),
        }
    }
}
fn default_memory_budget_wait_ms() -> u64 {
    2_000
}
fn default_max_upstream_answer_bytes() -> u64 {
    128 * 1024 * 1024
}

impl ServerConfig {
    /// The memory budget: configured, or sized for the machine.
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget_bytes.unwrap_or_else(|| {
            let quarter = machine_memory().map_or(1024 * 1024 * 1024, |m| m / 4);
            quarter.min(4 * 1024 * 1024 * 1024).max(2 * self.body_limit_bytes)
        })
    }
}

/// Total memory of the machine, from /proc/meminfo where there is one.
fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_body_limit() -> u64 {
    DEFAULT_BODY_LIMIT
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_mappings_dir() -> PathBuf {
    PathBuf::from("mappings")
}
fn default_log_format() -> String {
    "json".into()
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            body_limit_bytes: default_body_limit(),
            request_timeout_ms: default_request_timeout_ms(),
            public_base_url: None,
            mappings_dir: default_mappings_dir(),
            log_format: default_log_format(),
            limits: JsonLimits::default(),
            memory_budget_bytes: None,
            memory_budget_wait_ms: default_memory_budget_wait_ms(),
            max_upstream_answer_bytes: default_max_upstream_answer_bytes(),
        }
    }
}

/// A gateway client: who may call the front door, and for which organizations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub name: String,
    /// Lower-case hex SHA-256 of the bearer token; the token itself is never stored.
    pub token_sha256: String,
    /// Organization ids or slugs this client may use.
    pub organizations: Vec<String>,
}

/// How the gateway reaches one EHR tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// `canvas` or `athena` (others arrive with their connectors).
    pub ehr: String,
    /// Start the in-process simulator of this EHR and point the connection at it (sandbox mode).
    #[serde(default)]
    pub simulator: bool,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    #[serde(default = "default_upstream_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Most upstream requests in flight at once on this connection.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Attempts for a safe (idempotent) request, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Serialize writes per encounter/note (Canvas loses concurrent writes). Only tests turn this off.
    #[serde(default = "default_true")]
    pub serialize_writes: bool,
    /// Values the mapping's `connection_params` ask for, e.g. athena's `practice = "195900"`
    /// (a simulator supplies its own).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

fn default_upstream_timeout_ms() -> u64 {
    20_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_max_concurrency() -> usize {
    64
}
fn default_max_attempts() -> u32 {
    3
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganizationConfig {
    pub id: String,
    pub slug: String,
    pub name: String,
    /// Name of an entry in `[connections]`.
    pub connection: String,
    /// Name of the mapping set (a file `mappings/{name}.toml`).
    pub mapping: String,
}

/// Recording of replay cassettes (`serve --record DIR` sets `dir`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default)]
    pub redact: RedactionPolicy,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub record: RecordConfig,
    pub clients: Vec<ClientConfig>,
    pub connections: BTreeMap<String, ConnectionConfig>,
    pub organizations: Vec<OrganizationConfig>,
    pub source: String,
}

/// Every problem found while loading, each with where it was found.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "configuration has {} problem(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub const KNOWN_EHRS: &[&str] = &["canvas", "athena"];

/// Why a production build refuses `simulator = true`.
pub const NO_SIMULATORS: &str = "`simulator = true` needs the in-process EHR simulators, and this binary was built \
     without them (the `sandbox` feature is off); give the connection base_url, token_url, client_id and \
     client_secret of the real EHR, or run a default build (`cargo build --release`) for sandbox mode";

impl Config {
    /// Loads `path` and applies `EHRGW_` environment overrides (`EHRGW_SERVER__LISTEN=…`).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let figment = Figment::new().merge(Toml::file_exact(path)).merge(Env::prefixed("EHRGW_").split("__"));
        Self::from_figment(figment, &path.display().to_string())
    }

    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigErrors> {
        Self::from_figment(Figment::new().merge(Toml::string(toml)), "<inline>")
    }

    fn from_figment(figment: Figment, source: &str) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let describe = |e: figment::Error| -> Vec<String> {
            e.into_iter()
                .map(|e| {
                    let key = if e.path.is_empty() { String::new() } else { format!("{}: ", e.path.join(".")) };
                    format!("{source}: {key}{}", e.kind)
                })
                .collect()
        };

        if let Err(e) = figment.extract::<toml::Value>() {
            errors.extend(describe(e));
            return Err(ConfigErrors(errors));
        }
        let known: HashSet<&str> = ["server", "clients", "connections", "organizations", "record"].into();
        if let Ok(figment::value::Value::Dict(_, top)) = figment.find_value("") {
            for key in top.keys() {
                if !known.contains(key.as_str()) {
                    errors.push(format!(
                        "{source}: unknown section `{key}`; expected one of server, clients, connections, organizations, record"
                    ));
                }
            }
        }

        let server = match figment.find_value("server") {
            Ok(_) => figment.extract_inner::<ServerConfig>("server").unwrap_or_else(|e| {
                errors.extend(describe(e));
                ServerConfig::default()
            }),
            Err(_) => ServerConfig::default(),
        };

        let record = match figment.find_value("record") {
            Ok(_) => figment.extract_inner::<RecordConfig>("record").unwrap_or_else(|e| {
                errors.extend(describe(e));
                RecordConfig::default()
            }),
            Err(_) => RecordConfig::default(),
        };
        let clients = extract_list::<ClientConfig>(&figment, "clients", &describe, &mut errors);
        let organizations = extract_list::<OrganizationConfig>(&figment, "organizations", &describe, &mut errors);
        let mut connections = BTreeMap::new();
        if let Ok(figment::value::Value::Dict(_, dict)) = figment.find_value("connections") {
            for name in dict.keys() {
                match figment.extract_inner::<ConnectionConfig>(&format!("connections.{name}")) {
                    Ok(c) => {
                        connections.insert(name.clone(), c);
                    }
                    Err(e) => errors.extend(describe(e)),
                }
            }
        }

        let config = Config { server, record, clients, connections, organizations, source: source.to_string() };
        errors.extend(config.semantic_problems());
        if errors.is_empty() { Ok(config) } else { Err(ConfigErrors(errors)) }
    }

    /// Cross-references and values serde cannot check.
    fn semantic_problems(&self) -> Vec<String> {
        let src = &self.source;
        let mut problems = Vec::new();
        if self.server.body_limit_bytes == 0 {
            problems.push(format!("{src}: server.body_limit_bytes must be greater than 0"));
        }
        if self.server.request_timeout_ms == 0 {
            problems.push(format!("{src}: server.request_timeout_ms must be greater than 0"));
        }
        for (side, limits) in [("client", self.server.limits.client()), ("upstream", self.server.limits.upstream())] {
            for p in limits.problems() {
                problems.push(format!("{src}: server.limits.{side}.{p}"));
            }
        }
        if self.server.max_upstream_answer_bytes == 0 {
            problems.push(format!("{src}: server.max_upstream_answer_bytes must be greater than 0"));
        }
        if let Some(budget) = self.server.memory_budget_bytes
            && budget < self.server.body_limit_bytes
        {
            problems.push(format!(
                "{src}: server.memory_budget_bytes ({budget}) must be at least server.body_limit_bytes ({}), or no body \
                 of the largest allowed size could ever be taken",
                self.server.body_limit_bytes
            ));
        }
        if let Err(e) = self.record.redact.clone().compile() {
            problems.push(format!("{src}: {e}"));
        }
        if !matches!(self.server.log_format.as_str(), "json" | "pretty") {
            problems.push(format!("{src}: server.log_format must be `json` or `pretty`"));
        }
        for (name, c) in &self.connections {
            let at = format!("{src}: connections.{name}");
            if !KNOWN_EHRS.contains(&c.ehr.as_str()) {
                problems.push(format!("{at}.ehr: unknown EHR `{}`; supported: {}", c.ehr, KNOWN_EHRS.join(", ")));
            }
            if c.simulator {
                #[cfg(not(feature = "sandbox"))]
                problems.push(format!("{at}.simulator: {NO_SIMULATORS}"));
                continue;
            }
            for (field, value) in [("base_url", &c.base_url), ("token_url", &c.token_url), ("client_id", &c.client_id)]
            {
                match value {
                    None => problems.push(format!("{at}.{field} is required unless `simulator = true`")),
                    Some(url)
                        if field != "client_id" && !(url.starts_with("http://") || url.starts_with("https://")) =>
                    {
                        problems.push(format!("{at}.{field}: `{url}` must be an http(s) URL"))
                    }
                    _ => {}
                }
            }
            match &c.client_secret {
                None => problems.push(format!("{at}.client_secret is required unless `simulator = true`")),
                Some(secret) => {
                    if let Err(e) = secret.resolve() {
                        problems.push(format!("{at}.client_secret: {e}"));
                    }
                }
            }
            if c.max_concurrency == 0 || c.max_attempts == 0 || c.timeout_ms == 0 {
                problems.push(format!("{at}: max_concurrency, max_attempts and timeout_ms must be greater than 0"));
            }
        }
        let mut seen = HashSet::new();
        for (i, org) in self.organizations.iter().enumerate() {
            let at = format!("{src}: organizations[{i}]");
            for key in [&org.id, &org.slug] {
                if !crate::fhir::validate::is_valid_id(key) {
                    problems
                        .push(format!("{at}: `{key}` is not usable in a URL path segment (use [A-Za-z0-9-.]{{1,64}})"));
                }
                if !seen.insert(key.clone()) {
                    problems.push(format!("{at}: id or slug `{key}` is used by another organization"));
                }
            }
            if !self.connections.contains_key(&org.connection) {
                problems.push(format!("{at}.connection: unknown connection `{}`", org.connection));
            }
        }
        for (i, client) in self.clients.iter().enumerate() {
            let at = format!("{src}: clients[{i}] ({})", client.name);
            if client.token_sha256.len() != 64 || !client.token_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(format!("{at}.token_sha256 must be 64 hex characters (sha256 of the token)"));
            }
            for org in &client.organizations {
                if !self.organizations.iter().any(|o| &o.id == org || &o.slug == org) {
                    problems.push(format!("{at}.organizations: unknown organization `{org}`"));
                }
            }
        }
        problems
    }

    /// Base URL clients use to reach the gateway.
    pub fn public_base_url(&self) -> String {
        self.server
            .public_base_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.server.listen))
            .trim_end_matches('/')
            .to_string()
    }
}

fn extract_list<T: for<'de> Deserialize<'de>>(
    figment: &Figment,
    key: &str,
    describe: &dyn Fn(figment::Error) -> Vec<String>,
    errors: &mut Vec<String>,
) -> Vec<T> {
    let Ok(value) = figment.find_value(key) else { return Vec::new() };
    let Some(items) = value.as_array() else {
        errors.push(format!("`{key}` must be an array of tables ([[{key}]])"));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match T::deserialize(item) {
            Ok(v) => out.push(v),
            Err(e) => errors.extend(describe(e).into_iter().map(|m| m.replacen(": ", &format!(": {key}[{i}]: "), 1))),
        }
    }
    out
}

/// Lower-case hex SHA-256 of a token, as stored in `clients[].token_sha256`.
pub fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9999"
[connections.c]
ehr = "canvas"
simulator = true
[[organizations]]
id = "org-1"
slug = "demo"
name = "Demo"
connection = "c"
mapping = "canvas"
[[clients]]
name = "demo"
token_sha256 = "2c0f5a4c6b1d9d6d2f7b1c8c0e5e2e8f3c1b9a7d6e5f4a3b2c1d0e9f8a7b6c5d"
organizations = ["demo"]
"#;

    // GOOD has a simulator connection, which only a sandbox build accepts.
    #[cfg(feature = "sandbox")]
    #[test]
    fn a_good_config_loads() {
        let c = Config::from_toml_str(GOOD).expect("valid");
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(c.server.body_limit_bytes, DEFAULT_BODY_LIMIT);
        assert_eq!(c.public_base_url(), "http://127.0.0.1:9999");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = r#"
[server]
listen = "nonsense"
colour = "blue"
[connections.c]
ehr = "cerner"
[[organizations]]
id = "org 1"
slug = "demo"
name = "Demo"
connection = "missing"
mapping = "canvas"
[[organizations]]
id = "org-2"
name = "No slug"
connection = "c"
mapping = "canvas"
[[clients]]
name = "demo"
token_sha256 = "short"
organizations = ["nowhere"]
"#;
        let errors = Config::from_toml_str(bad).expect_err("invalid").0;
        let all = errors.join("\n");
        for needle in [
            "server",
            "unknown EHR `cerner`",
            "base_url is required",
            "client_secret is required",
            "`org 1` is not usable",
            "unknown connection `missing`",
            "organizations[1]",
            "token_sha256 must be 64 hex",
            "unknown organization `nowhere`",
        ] {
            assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
        }
        assert!(errors.len() >= 8, "{all}");
    }

    // GOOD has a simulator connection, which only a sandbox build accepts.
    #[cfg(feature = "sandbox")]
    #[test]
    fn the_redaction_policy_comes_from_config_and_is_checked() {
        let with_policy = format!("{GOOD}\n[record]\ndir = \"cassettes\"\n[record.redact]\ntext_keys = [\"remark\"]\n");
        let c = Config::from_toml_str(&with_policy).unwrap();
        assert_eq!(c.record.dir.as_deref(), Some(Path::new("cassettes")));
        assert_eq!(c.record.redact.text_keys, ["remark"]);
        assert!(!c.record.redact.patient_id_keys.is_empty(), "unnamed keys keep their defaults");
        let bad = format!("{GOOD}\n[record.redact]\npatient_id_patterns = [\"(unclosed\"]\ncolour = 1\n");
        let errors = Config::from_toml_str(&bad).unwrap_err().0.join("\n");
        assert!(errors.contains("colour") || errors.contains("patient_id_patterns"), "{errors}");
    }

    #[cfg(not(feature = "sandbox"))]
    #[test]
    fn a_production_build_refuses_simulators_and_says_why() {
        let errors = Config::from_toml_str(GOOD).expect_err("no simulators in this build").0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("connections.c.simulator"), "{}", errors[0]);
        assert!(errors[0].contains("built without them"), "{}", errors[0]);
        assert!(errors[0].contains("base_url, token_url, client_id"), "{}", errors[0]);
    }

    #[test]
    fn secrets_redact_in_debug() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let c = ConnectionConfig {
            ehr: "canvas".into(),
            simulator: false,
            base_url: None,
            token_url: None,
            client_id: Some("id".into()),
            client_secret: Some(SecretRef { env: Some("X".into()), file: None }),
            timeout_ms: 1,
            connect_timeout_ms: 1,
            max_concurrency: 1,
            max_attempts: 1,
            serialize_writes: true,
            params: BTreeMap::new(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn token_hash_is_sha256_hex() {
        assert_eq!(token_hash("demo-token").len(), 64);
        assert_ne!(token_hash("a"), token_hash("b"));
    }
}
