//! The mapping file format as operators write it (TOML), before compilation. Unknown keys are errors.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// Which connector family this mapping drives: `canvas`, `athena`, `elation`, `epic`.
    pub ehr: String,
    /// The EHR's name as shown to API users (405 messages, CapabilityStatement).
    pub display_name: String,
    /// Category used when a request names none.
    pub default_category: String,
    pub auth: AuthSpec,
    /// Interactions this EHR cannot do, with the reason given in the 405 OperationOutcome.
    #[serde(default)]
    pub unsupported: BTreeMap<String, String>,
    pub categories: BTreeMap<String, CategorySpec>,
    /// Named code tables (source code → target code), used with the `code(table)` transform.
    #[serde(default)]
    pub code_tables: BTreeMap<String, BTreeMap<String, String>>,
    /// Upstream error translation, first match wins.
    #[serde(default)]
    pub errors: Vec<ErrorRuleSpec>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// `client_credentials` (OAuth2).
    pub flow: String,
    /// `form` (credentials in the form body) or `basic` (HTTP Basic).
    pub client_auth: String,
    #[serde(default)]
    pub scope: Option<String>,
    /// Refresh this many seconds before the token expires.
    #[serde(default = "default_refresh_before")]
    pub refresh_before_expiry_secs: u64,
}

fn default_refresh_before() -> u64 {
    300
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CategorySpec {
    pub description: String,
    /// Gateway id template, e.g. `cv.{media_id}`.
    pub id: String,
    /// How an upstream object becomes a FHIR Media.
    pub resource: ResourceSpec,
    #[serde(default)]
    pub create: Option<InteractionSpec>,
    #[serde(default)]
    pub read: Option<InteractionSpec>,
    #[serde(default)]
    pub search: Option<SearchSpec>,
    /// How to fetch the bytes behind `content.url`.
    #[serde(default)]
    pub content: Option<InteractionSpec>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// Variables taken from the upstream object (expressions); the id template's variables must be here.
    pub bind: BTreeMap<String, String>,
    /// The FHIR Media template. Built-in variables: `gateway_id`, `content_url`.
    pub template: Value,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InteractionSpec {
    /// Expressions over the inbound resource; writes with equal keys run one at a time per connection.
    #[serde(default)]
    pub serialize_writes_by: Vec<String>,
    /// Checks on the inbound resource before any upstream call.
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    pub steps: Vec<StepSpec>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Expression over the inbound resource.
    pub path: String,
    /// FHIRPath-style location reported to the client.
    pub expression: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub one_of: Option<Vec<String>>,
    #[serde(default)]
    pub pattern: Option<String>,
    /// HTTP status when the value is present but not allowed (default 400).
    #[serde(default)]
    pub status: Option<u16>,
    /// OperationOutcome code when the value is not allowed (default `invalid`).
    #[serde(default)]
    pub code: Option<String>,
    pub message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub method: String,
    /// Path relative to the connection's base URL; `{expression}` parts are interpolated.
    pub path: String,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Body template; see `encoding`.
    #[serde(default)]
    pub body: Option<Value>,
    /// `json` (default) or `form`.
    #[serde(default)]
    pub encoding: Option<String>,
    /// Statuses that mean success; anything else goes through the error table.
    pub expect: Vec<u16>,
    /// Variables taken from the response: expressions over its body and headers.
    #[serde(default)]
    pub bind: BTreeMap<String, String>,
    /// What the step's response is: `resource` (map with `resource`), `bundle` (search page) or `bytes`.
    #[serde(default)]
    pub result: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchSpec {
    /// Supported FHIR search parameters → the expression giving the upstream value (the parameter's value
    /// is the variable of the same name).
    pub params: BTreeMap<String, String>,
    /// At least one of these parameters must be present.
    #[serde(default)]
    pub require_one_of: Vec<String>,
    pub count: CountSpec,
    pub steps: Vec<StepSpec>,
    /// JSONPath to the upstream objects in a page.
    pub entries: String,
    #[serde(default)]
    pub total: Option<String>,
    /// JSONPath to the upstream `next` link (relative to the base URL).
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CountSpec {
    pub default: u32,
    pub max: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorRuleSpec {
    /// `404`, or a class such as `5xx`.
    pub status: String,
    pub gateway_status: u16,
    pub code: String,
    #[serde(default)]
    pub retryable: bool,
    /// Message template; may use variables such as `gateway_id`.
    pub message: String,
}
