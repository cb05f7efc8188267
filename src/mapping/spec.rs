//! The mapping file format as operators write it (TOML), before compilation. Unknown keys are errors.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
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
    /// Values every connection using this mapping must supply in its `params` (e.g. athena's `practice`);
    /// they are variables everywhere, and an id part of the same name must equal the connection's value.
    #[serde(default)]
    pub connection_params: Vec<String>,
    /// Header that carries the gateway's request id on every upstream call (e.g. `X-Request-Id`).
    #[serde(default)]
    pub request_id_header: Option<String>,
    /// Media extension URL whose `valueCode`/`valueString` names the category of a create, besides the
    /// `category` query parameter.
    #[serde(default)]
    pub category_extension: Option<String>,
    /// The largest file (decoded `content.data`) the EHR takes; bigger ones are refused with 413 before
    /// any upstream call.
    #[serde(default)]
    pub max_upload_bytes: Option<u64>,
    /// Where this EHR's exchanges hold identifiers, free text, dates and media, for recorded cassettes.
    #[serde(default)]
    pub redact: RedactSpec,
}

/// What a recorded cassette must not keep, beyond the gateway's defaults (`[record.redact]`): the mapping
/// knows its EHR's fields. Field names apply to JSON keys, form fields and query parameters, upstream
/// and front door alike.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedactSpec {
    /// Variables of the categories' `id` templates that identify a patient or a record: their values are
    /// pseudonymized wherever they appear (gateway ids, paths, queries, bodies; numbers too).
    #[serde(default)]
    pub id_parts: Vec<String>,
    /// Fields holding identifiers of patients or records (e.g. athena's `patientid`).
    #[serde(default)]
    pub identifier_fields: Vec<String>,
    /// Fields holding free text, names or user names: replaced by placeholders of the same shape.
    #[serde(default)]
    pub text_fields: Vec<String>,
    /// Media extension URLs whose value is free text (e.g. an internal note).
    #[serde(default)]
    pub text_extensions: Vec<String>,
    /// Fields holding dates about the patient: replaced by a placeholder date in the same format.
    #[serde(default)]
    pub date_fields: Vec<String>,
    /// Fields holding media as base64: replaced by placeholders that keep the file's signature.
    #[serde(default)]
    pub media_fields: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CategorySpec {
    pub description: String,
    /// Gateway id template, e.g. `cv.{media_id}`.
    pub id: String,
    /// Another category whose `resource` and interactions this one uses where it defines none of its own
    /// (one level; typically with different `vars`).
    #[serde(default)]
    pub base: Option<String>,
    /// Constants available as variables in the category's templates and steps (e.g. a document class).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// How an upstream object becomes a FHIR Media (may come from `base`).
    #[serde(default)]
    pub resource: Option<ResourceSpec>,
    #[serde(default)]
    pub create: Option<InteractionSpec>,
    #[serde(default)]
    pub read: Option<InteractionSpec>,
    /// Replaces the object (`PUT`, and `PATCH` after the patch is applied to the current resource).
    #[serde(default)]
    pub update: Option<InteractionSpec>,
    #[serde(default)]
    pub delete: Option<InteractionSpec>,
    #[serde(default)]
    pub search: Option<SearchSpec>,
    /// How to fetch the bytes behind `content.url`.
    #[serde(default)]
    pub content: Option<InteractionSpec>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// Variables taken from the upstream object (expressions, which may also read the interaction's
    /// variables); the id template's variables must be here.
    pub bind: BTreeMap<String, String>,
    /// The FHIR Media template. Built-in variables: `gateway_id`, `content_url`.
    pub template: Value,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InteractionSpec {
    /// Expressions over the inbound resource; writes with equal keys run one at a time per connection.
    #[serde(default)]
    pub serialize_writes_by: Vec<String>,
    /// Checks on the inbound resource (for `content`: on its URL parameters) before any upstream call.
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// Variables taken from the inbound resource before the first step (create, update).
    #[serde(default)]
    pub bind: BTreeMap<String, String>,
    /// Update only: elements the EHR cannot change; a value that differs from the current resource is
    /// answered 422 with the message.
    #[serde(default)]
    pub unchangeable: Vec<UnchangeableSpec>,
    /// Update only: the elements an update may change, as `Media.<element>` or `Media.extension('<url>')`
    /// (elements are compared whole, extensions one by one); a change to any other element is answered 422
    /// naming it. Empty: any element may change.
    #[serde(default)]
    pub changeable: Vec<String>,
    /// Update only: elements the EHR maintains itself, named as in `changeable` (a last-modified time, a
    /// name that follows an id): the client's copy, stale or not, is replaced by the current value, so it is
    /// neither a change nor sent.
    #[serde(default)]
    pub ignore_changes: Vec<String>,
    /// Update only: text elements the EHR can only append to. The new value must be the current one followed
    /// by more text (else 422 with the message); that added text is the variable `bind`.
    #[serde(default)]
    pub append_only: Vec<AppendOnlySpec>,
    /// Content only: query parameters of the `$content` URL, passed on as variables.
    #[serde(default)]
    pub params: Vec<String>,
    pub steps: Vec<StepSpec>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnchangeableSpec {
    /// Expression over the resource (compared between the current and the new one).
    pub path: String,
    /// FHIRPath-style location reported to the client.
    pub expression: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendOnlySpec {
    /// Expression over the resource giving the text (compared between the current and the new one).
    pub path: String,
    /// The variable that holds the added text (without the whitespace that separates it), for the steps.
    pub bind: String,
    /// FHIRPath-style location reported to the client.
    pub expression: String,
    /// Why the value cannot be replaced, and how to add to it.
    pub message: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Deserialize, JsonSchema)]
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
    /// What the step's response is: `resource` (map with `resource`), `bundle` (search page), `bytes` or
    /// `none` (a delete).
    #[serde(default)]
    pub result: Option<String>,
    /// Run the step only when this expression has a value (that is not `false`).
    #[serde(default)]
    pub when: Option<String>,
    /// Skip the step when this expression has a value (that is not `false`).
    #[serde(default)]
    pub unless: Option<String>,
    /// Expression over the answer that must be true (`true`/`"true"`) for an expected status to count
    /// as success; otherwise the answer goes through the error table.
    #[serde(default)]
    pub success: Option<String>,
    /// Expression picking the upstream object out of the answer for `result = "resource"` (e.g. `$[0]`).
    #[serde(default)]
    pub select: Option<String>,
    /// Statuses that mean "nothing there": a search step yields an empty page.
    #[serde(default)]
    pub empty_on: Vec<u16>,
    /// Whether the request may be sent again after a failure (default: GET, PUT and DELETE may).
    #[serde(default)]
    pub idempotent: Option<bool>,
    /// Remember this step's `bind` values per connection under `key` for `ttl_secs`.
    #[serde(default)]
    pub cache: Option<CacheSpec>,
    /// The client error to answer when a `bind` finds nothing (default: a 502 mapping error).
    #[serde(default)]
    pub unresolved: Option<UnresolvedSpec>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Text template naming what is cached, e.g. `department.{patient}`.
    pub key: String,
    pub ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnresolvedSpec {
    /// A 4xx status.
    pub status: u16,
    pub code: String,
    /// FHIRPath-style location reported to the client.
    #[serde(default)]
    pub expression: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
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
    /// `link` (default: follow the upstream's `next`) or `offset` (the gateway pages itself with the
    /// variable `_offset`, so upstream links are never exposed).
    #[serde(default)]
    pub paging: Option<String>,
    /// A request per entry of a page; entries answered with a `drop_on` status are left out.
    #[serde(default)]
    pub each: Option<EachSpec>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EachSpec {
    /// The step, with the entry's `resource.bind` variables available.
    pub step: StepSpec,
    pub drop_on: Vec<u16>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CountSpec {
    pub default: u32,
    pub max: u32,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorRuleSpec {
    /// `404`, or a class such as `5xx`.
    pub status: String,
    /// Expression over the error answer (body or `header.Name`); the rule applies only when it has a value.
    #[serde(default)]
    pub when: Option<String>,
    /// Regular expression the `when` value must match.
    #[serde(default)]
    pub matches: Option<String>,
    /// Expression giving the OperationOutcome `expression`(s), e.g. the upstream's list of missing fields.
    #[serde(default)]
    pub expressions: Option<String>,
    /// The interactions (create, read, update, delete, search) the rule applies to; empty: all of them.
    #[serde(default)]
    pub interactions: Vec<String>,
    pub gateway_status: u16,
    pub code: String,
    #[serde(default)]
    pub retryable: bool,
    /// Message template; may use variables such as `gateway_id`.
    pub message: String,
}
