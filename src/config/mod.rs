//! Gateway configuration: one TOML file (`--config`, default `config/default.toml`) plus `EHRGW_`
//! environment overrides, validated all at once.
//!
//! Loading never stops at the first problem: every section is read on its own (`read`), a failed table
//! key by key, then cross-checked (`checks`), so an operator sees the whole list of mistakes in one run,
//! each naming the file or environment variable it came from and its key (`errors`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::value::Value;
use figment::{Figment, Provider};
use serde::{Deserialize, Deserializer};

use crate::json::Limits;

mod checks;
mod errors;
mod read;
mod redaction;
mod secret;

pub use errors::{ConfigErrors, Key, KeyPath};
pub use redaction::{CompiledRedaction, RedactionPolicy, SANDBOX_PSEUDONYM_KEY};
pub use secret::{Secret, SecretRef};

use errors::{Origin, allowed_words, describe};
use read::Reader;

pub const DEFAULT_CONFIG: &str = "config/default.toml";
/// Environment variables with this prefix override keys, nesting with `__` (`EHRGW_SERVER__LISTEN`).
pub const ENV_PREFIX: &str = "EHRGW_";
/// The top-level sections of a configuration file.
pub const SECTIONS: &[&str] = &["server", "clients", "connections", "organizations", "record"];
/// Lets a 25 MiB image through as base64 in FHIR JSON (about 35 MB).
pub const DEFAULT_BODY_LIMIT: u64 = 40 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen", deserialize_with = "socket_address")]
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

/// serde's own `SocketAddr` error says only "invalid socket address syntax"; this one shows an example
/// and what was found.
fn socket_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    struct Address;
    impl serde::de::Visitor<'_> for Address {
        type Value = SocketAddr;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an address like 127.0.0.1:8080")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<SocketAddr, E> {
            text.parse().map_err(|_| E::invalid_value(serde::de::Unexpected::Str(text), &self))
        }
    }
    deserializer.deserialize_str(Address)
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

pub const KNOWN_EHRS: &[&str] = &["canvas", "athena"];

/// Why a production build refuses `simulator = true`.
pub const NO_SIMULATORS: &str = "`simulator = true` needs the in-process EHR simulators, and this binary was built \
     without them (the `sandbox` feature is off); give the connection base_url, token_url, client_id and \
     client_secret of the real EHR, or run a default build (`cargo build --release`) for sandbox mode";

/// A configuration as read, with every problem found in it. With problems, `config` is a best-effort
/// reading (failed keys hold placeholders) that is good only for further checks that ask `failed` first.
pub struct Loaded {
    pub config: Config,
    reader: Reader,
}

impl Loaded {
    pub fn problems(&self) -> Vec<String> {
        self.reader.problems(SECTIONS)
    }

    /// Whether the key at `path`, a table holding it or a key inside it failed to read or was found
    /// wrong; a check on it would then only repeat a problem already reported.
    pub fn failed(&self, path: &KeyPath) -> bool {
        self.reader.failed_or_flagged(path)
    }

    /// Adds a problem found outside this module (the mapping folder) against the key that led to it,
    /// naming the file or environment variable that key came from. `text` starts with the key path.
    pub fn report(&mut self, path: &KeyPath, text: impl std::fmt::Display) {
        self.reader.report(path, text);
    }

    pub fn into_result(self) -> Result<Config, ConfigErrors> {
        let problems = self.problems();
        if problems.is_empty() { Ok(self.config) } else { Err(ConfigErrors(problems)) }
    }
}

impl Config {
    /// Loads `path` and applies `EHRGW_` environment overrides (`EHRGW_SERVER__LISTEN=…`).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Self::read(path)?.into_result()
    }

    /// Reads `path` with the environment overrides, keeping every problem; `Err` only when there is no
    /// configuration to read at all (the file is missing, unreadable or not TOML).
    pub fn read(path: &Path) -> Result<Loaded, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let shown = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            ConfigErrors(vec![format!("cannot read the configuration file {}: {e}", shown.display())])
        })?;
        let env = Env::prefixed(ENV_PREFIX).split("__");
        let env_provider = env.metadata().name.to_string();
        let figment = Figment::new().merge(Toml::string(&text)).merge(env);
        Self::read_figment(figment, Some(env_provider), Origin::File(path.to_path_buf()))
    }

    /// Text given in code (tests, replay); no environment overrides.
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigErrors> {
        let figment = Figment::new().merge(Toml::string(toml));
        Self::read_figment(figment, None, Origin::Text("<inline>".into()))?.into_result()
    }

    fn read_figment(figment: Figment, env_provider: Option<String>, origin: Origin) -> Result<Loaded, ConfigErrors> {
        // Only a file that is not TOML fails here; nothing else can be read then.
        let root = figment.find_value("").map_err(|error| {
            let lines =
                error.into_iter().map(|e| format!("{origin}: {}", describe(&e.kind, &KeyPath::root()).trim_end()));
            ConfigErrors(lines.collect())
        })?;
        let source = origin.to_string();
        let mut r = Reader::new(figment, root, env_provider, ENV_PREFIX, origin);
        let top = KeyPath::root();
        if let Some(Value::Dict(_, sections)) = r.value(&top).cloned() {
            for name in sections.keys().filter(|k| !SECTIONS.contains(&k.as_str())) {
                r.report(&top.key(name), format!("unknown section `{name}`{}", allowed_words(name, SECTIONS)));
            }
        }
        let server = r.section(&top.key("server"));
        let clients = r.list(&top.key("clients"), "a list of tables ([[clients]])");
        let connections = r.named(&top.key("connections"), "a table of connections ([connections.NAME])");
        let organizations = r.list(&top.key("organizations"), "a list of tables ([[organizations]])");
        let record = r.section(&top.key("record"));
        let config =
            Config { server, record, clients, connections: connections.into_iter().collect(), organizations, source };
        checks::check(&config, &mut r);
        Ok(Loaded { config, reader: r })
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
slug = "demo"
name = "Same slug"
connection = "c"
mapping = "canvas"
[[clients]]
name = "demo"
token_sha256 = "short"
organizations = ["nowhere"]
"#;
        let errors = Config::from_toml_str(bad).expect_err("invalid").0;
        assert_eq!(
            errors,
            [
                "<inline>: unknown key `server.colour`; allowed: listen, body_limit_bytes, request_timeout_ms, \
                 public_base_url, mappings_dir, log_format, limits, memory_budget_bytes, memory_budget_wait_ms, \
                 max_upstream_answer_bytes",
                "<inline>: server.listen: expected an address like 127.0.0.1:8080, found text \"nonsense\"",
                "<inline>: clients[0].token_sha256: must be 64 hex characters (the SHA-256 of the token)",
                "<inline>: clients[0].organizations: unknown organization `nowhere`",
                "<inline>: connections.c.ehr: unknown EHR `cerner`; supported: canvas, athena",
                "<inline>: connections.c.base_url: required unless `simulator = true`",
                "<inline>: connections.c.token_url: required unless `simulator = true`",
                "<inline>: connections.c.client_id: required unless `simulator = true`",
                "<inline>: connections.c.client_secret: required unless `simulator = true`",
                "<inline>: organizations[0].id: `org 1` is not usable in a URL path segment (use [A-Za-z0-9-.]{1,64})",
                "<inline>: organizations[0].connection: unknown connection `missing`; defined connections: c",
                "<inline>: organizations[1].slug: `demo` is already the id or slug of another organization",
            ]
        );
    }

    #[test]
    fn a_table_that_fails_is_read_key_by_key_and_its_failures_are_not_repeated() {
        let bad = r#"
[connections.c]
ehr = 5
client_secret = "hunter2"
timeout_ms = -1
[[organizations]]
id = "org-1"
name = "No slug"
connection = "c"
mapping = "canvas"
[[clients]]
name = "demo"
token_sha256 = "2c0f5a4c6b1d9d6d2f7b1c8c0e5e2e8f3c1b9a7d6e5f4a3b2c1d0e9f8a7b6c5d"
organizations = ["somewhere"]
"#;
        let errors = Config::from_toml_str(bad).expect_err("invalid").0;
        let all = errors.join("\n");
        assert!(!all.contains("hunter2"), "a secret written in the file is not repeated:\n{all}");
        assert_eq!(
            errors,
            [
                "<inline>: connections.c.client_secret: expected a table with `env` or `file`, found text (a secret is \
                 never written in the config file: give { env = \"VARIABLE\" } or { file = \"path\" })",
                "<inline>: connections.c.ehr: expected text, found 5",
                "<inline>: connections.c.timeout_ms: expected a whole number of 0 or more, found -1",
                "<inline>: connections.c.base_url: required unless `simulator = true`",
                "<inline>: connections.c.token_url: required unless `simulator = true`",
                "<inline>: connections.c.client_id: required unless `simulator = true`",
                // No "unknown connection `c`" (it is there, with problems of its own), no "unknown
                // organization `somewhere`" (it may be the one whose slug is missing).
                "<inline>: organizations[0]: missing required key `slug`",
            ]
        );
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
