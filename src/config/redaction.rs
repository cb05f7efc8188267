//! The redaction policy for recorded cassettes (`[record.redact]`): which keys, parameters and patterns
//! hold patient identifiers, free text, dates, media and credentials. Configuration lives here; the
//! redactor that applies it lives with the cassettes.

use regex::Regex;
use serde::Deserialize;

use super::SecretRef;

/// The redaction policy (`[record.redact]` in the config). Defaults suit FHIR and the shipped EHRs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionPolicy {
    /// Regexes whose first group is a patient id, applied to every string (`Patient/<id>`).
    #[serde(default = "default_id_patterns")]
    pub patient_id_patterns: Vec<String>,
    /// Query parameters and JSON keys whose values are patient ids (bare or `Patient/<id>`).
    #[serde(default = "default_id_keys")]
    pub patient_id_keys: Vec<String>,
    /// JSON keys / form fields holding free text, names or titles: same-length `x` placeholders.
    #[serde(default = "default_text_keys")]
    pub text_keys: Vec<String>,
    /// Objects whose `value` is sensitive (`identifier`, `telecom`).
    #[serde(default = "default_value_containers")]
    pub value_container_keys: Vec<String>,
    /// JSON keys / form fields holding birth dates: same-shape placeholder dates.
    #[serde(default = "default_date_keys")]
    pub date_keys: Vec<String>,
    /// JSON keys / form fields holding base64 media: same-length `A…` (zero bytes) placeholders.
    #[serde(default = "default_data_keys")]
    pub data_keys: Vec<String>,
    /// JSON keys / form fields holding credentials: replaced by `[redacted]`.
    #[serde(default = "default_secret_keys")]
    pub secret_keys: Vec<String>,
    /// URL query parameters that sign or authorize a URL (presigned storage links): values replaced.
    #[serde(default = "default_signing_params")]
    pub signing_params: Vec<String>,
    /// HMAC key for pseudonyms. Without it a fixed sandbox key is used: set one for real recordings
    /// so pseudonyms cannot be recomputed from guessed ids.
    #[serde(default)]
    pub pseudonym_key: Option<SecretRef>,
}

fn default_id_patterns() -> Vec<String> {
    // Links carry references percent-encoded (`patient=Patient%2F<id>`).
    // Who the record is about or by: patients, their encounters, the practitioners involved.
    vec![
        r"(?:Patient|Encounter|Practitioner|RelatedPerson)/([A-Za-z0-9\-.]{1,64})".into(),
        r"(?:Patient|Encounter|Practitioner|RelatedPerson)%2[Ff]([A-Za-z0-9\-.]{1,64})".into(),
    ]
}
fn default_id_keys() -> Vec<String> {
    ["patient", "subject", "patientid", "patient_id"].map(String::from).to_vec()
}
fn default_text_keys() -> Vec<String> {
    [
        "text",
        "title",
        "display",
        "name",
        "given",
        "family",
        "prefix",
        "suffix",
        "div",
        "comment",
        "narrative",
        "firstname",
        "lastname",
        "middlename",
        "line",
        "city",
        "postalCode",
        "zip",
        "address1",
        "address2",
        "mobilephone",
        "homephone",
        "email",
        "ssn",
    ]
    .map(String::from)
    .to_vec()
}
fn default_value_containers() -> Vec<String> {
    ["identifier", "telecom"].map(String::from).to_vec()
}
fn default_date_keys() -> Vec<String> {
    ["birthDate", "birthdate", "dob", "deceasedDateTime"].map(String::from).to_vec()
}
fn default_data_keys() -> Vec<String> {
    ["data", "attachmentcontents", "image"].map(String::from).to_vec()
}
fn default_signing_params() -> Vec<String> {
    ["X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "Signature", "AWSAccessKeyId", "sig", "token"]
        .map(String::from)
        .to_vec()
}
fn default_secret_keys() -> Vec<String> {
    ["access_token", "refresh_token", "id_token", "client_secret", "password", "authorization"]
        .map(String::from)
        .to_vec()
}

impl Default for RedactionPolicy {
    fn default() -> Self {
        RedactionPolicy {
            patient_id_patterns: default_id_patterns(),
            patient_id_keys: default_id_keys(),
            text_keys: default_text_keys(),
            value_container_keys: default_value_containers(),
            date_keys: default_date_keys(),
            data_keys: default_data_keys(),
            secret_keys: default_secret_keys(),
            signing_params: default_signing_params(),
            pseudonym_key: None,
        }
    }
}

pub const SANDBOX_PSEUDONYM_KEY: &str = "ehr-gateway sandbox pseudonyms";

/// A policy merged with the defaults and compiled, with its pseudonym key: only the redactor reads it
/// (fields are crate-private), and it is deliberately not `Debug`.
pub struct CompiledRedaction {
    pub(crate) policy: RedactionPolicy,
    pub(crate) patient_id_patterns: Vec<Regex>,
    pub(crate) signing: Option<Regex>,
    pub(crate) key: Vec<u8>,
}

impl RedactionPolicy {
    /// Lists in the config add to the built-in defaults: a policy can widen redaction, never narrow it.
    pub fn compile(self) -> Result<CompiledRedaction, String> {
        let configured = self;
        let defaults = RedactionPolicy::default();
        let merge = |mut list: Vec<String>, extra: Vec<String>| {
            for e in extra {
                if !list.iter().any(|l| l.eq_ignore_ascii_case(&e)) {
                    list.push(e);
                }
            }
            list
        };
        let policy = RedactionPolicy {
            patient_id_patterns: merge(defaults.patient_id_patterns, configured.patient_id_patterns),
            patient_id_keys: merge(defaults.patient_id_keys, configured.patient_id_keys),
            text_keys: merge(defaults.text_keys, configured.text_keys),
            value_container_keys: merge(defaults.value_container_keys, configured.value_container_keys),
            date_keys: merge(defaults.date_keys, configured.date_keys),
            data_keys: merge(defaults.data_keys, configured.data_keys),
            secret_keys: merge(defaults.secret_keys, configured.secret_keys),
            signing_params: merge(defaults.signing_params, configured.signing_params),
            pseudonym_key: configured.pseudonym_key,
        };
        let patient_id_patterns = policy
            .patient_id_patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| format!("record.redact.patient_id_patterns: `{p}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let key = match &policy.pseudonym_key {
            Some(secret) => {
                secret.resolve().map_err(|e| format!("record.redact.pseudonym_key: {e}"))?.expose().as_bytes().to_vec()
            }
            None => SANDBOX_PSEUDONYM_KEY.as_bytes().to_vec(),
        };
        let names: Vec<String> = policy.signing_params.iter().map(|p| regex::escape(p)).collect();
        let signing = (!names.is_empty())
            .then(|| Regex::new(&format!(r"([?&](?:{})=)[^&#\s]*", names.join("|"))))
            .transpose()
            .map_err(|e| format!("record.redact.signing_params: {e}"))?;
        Ok(CompiledRedaction { policy, patient_id_patterns, signing, key })
    }
}
