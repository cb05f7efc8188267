//! Accepting a Media create: structural checks (400 "Bad request") and business rules against the known patients,
//! practitioners, encounters and notes (422), before the write is handed to the race in `write_race`.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::media_read::NOTE_ID_EXTENSION_URL;
use super::responses::{bad_request, internal_error, outcome};
use super::seed::CANVAS_BOT_PRACTITIONER_ID;
use super::{Note, State};
use crate::sim::support::{SimResponse, has_media_type};

const ALLOWED_CONTENT_TYPES: [&str; 3] = ["image/heic", "image/jpeg", "image/png"];
const ALLOWED_STATUSES: [&str; 2] = ["completed", "entered-in-error"];
/// Upper bound on a create body; big enough for real photos, small enough that a runaway client cannot exhaust memory.
const MAX_CREATE_BODY: usize = 64 * 1024 * 1024;

impl State {
    pub(super) async fn create(self: &Arc<Self>, req: Request<Incoming>) -> SimResponse {
        if !has_media_type(req.headers(), &["application/json", "application/fhir+json"]) {
            return bad_request("create content type is not JSON");
        }
        let body = match Limited::new(req.into_body(), MAX_CREATE_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.is::<LengthLimitError>() => {
                return outcome(StatusCode::PAYLOAD_TOO_LARGE, "too-costly", "Request entity too large");
            }
            Err(_) => return bad_request("create body unreadable"),
        };
        let parsed = match parse_create(&body) {
            Ok(parsed) => parsed,
            Err(rejection) => return rejection.into_response(),
        };
        let draft = match self.resolve_create(parsed) {
            Ok(draft) => draft,
            Err(rejection) => return rejection.into_response(),
        };
        // The write runs in its own task: once Canvas has accepted a request, a client that gives up (timeout,
        // disconnect) does not stop the write from landing. That is what makes an unanswered create "unknown".
        let state = Arc::clone(self);
        match tokio::spawn(async move { state.commit_create(draft).await }).await {
            Ok(response) => response,
            Err(_) => internal_error(),
        }
    }

    /// Business-rule validation (422s) against known patients, practitioners, encounters and notes.
    fn resolve_create(&self, parsed: ParsedCreate) -> Result<CreateDraft, Rejection> {
        if !ALLOWED_STATUSES.contains(&parsed.status.as_str()) {
            return Err(Rejection::Business(format!(
                "Unsupported status '{}'. Supported codes for create interactions are: completed, entered-in-error",
                parsed.status
            )));
        }
        if !ALLOWED_CONTENT_TYPES.contains(&parsed.content_type.as_str()) {
            return Err(Rejection::Business(format!(
                "Unsupported content type '{}'. Supported MIME content types are image/heic, image/jpeg, image/png",
                parsed.content_type
            )));
        }
        let mut data = self.data();
        let patient = match split_reference(&parsed.subject_ref) {
            Some(("Patient", id)) if data.patients.contains(id) => id.to_owned(),
            Some(("Patient", id)) => {
                return Err(Rejection::Business(format!("Unknown Patient resource '{id}'")));
            }
            _ => {
                return Err(Rejection::Business("Media.subject must reference a Patient".to_owned()));
            }
        };
        let operator = match parsed.operator_ref.as_deref() {
            None => format!("Practitioner/{CANVAS_BOT_PRACTITIONER_ID}"),
            Some(reference) => match split_reference(reference) {
                Some(("Practitioner", id)) if data.practitioners.contains(id) => reference.to_owned(),
                Some(("Patient", id)) if data.patients.contains(id) => reference.to_owned(),
                _ => {
                    return Err(Rejection::Business(format!(
                        "Media.operator '{reference}' does not reference a known Practitioner or Patient"
                    )));
                }
            },
        };
        let encounter_note = match parsed.encounter_ref.as_deref() {
            None => None,
            Some(reference) => match split_reference(reference) {
                Some(("Encounter", id)) => match data.encounters.get(id) {
                    Some((owner, note_id)) if *owner == patient => Some((id.to_owned(), note_id.clone())),
                    Some(_) => {
                        return Err(Rejection::Business(format!(
                            "Encounter '{id}' does not belong to Patient '{patient}'"
                        )));
                    }
                    None => {
                        return Err(Rejection::Business(format!("Unknown Encounter resource '{id}'")));
                    }
                },
                _ => {
                    return Err(Rejection::Business("Media.encounter must reference an Encounter".to_owned()));
                }
            },
        };
        if let Some(note_id) = &parsed.note_id {
            match data.notes.get(note_id) {
                Some(note) if note.patient == patient => {}
                _ => return Err(Rejection::Business(format!("Unknown note '{note_id}'"))),
            }
        }
        let (note_id, encounter) = match (encounter_note, parsed.note_id) {
            (Some((encounter, encounter_note_id)), Some(note_id)) => {
                if encounter_note_id != note_id {
                    return Err(Rejection::Business(format!(
                        "The note-id extension '{note_id}' does not match the note of Encounter '{encounter}'"
                    )));
                }
                (note_id, Some(encounter))
            }
            (Some((encounter, note_id)), None) => (note_id, Some(encounter)),
            (None, Some(note_id)) => {
                let encounter = data.notes.get(&note_id).and_then(|note| note.encounter.clone());
                (note_id, encounter)
            }
            (None, None) => {
                // Canvas puts such a Media into a brand-new "Data Import" note, one per create.
                let note_id = data.next_uuid("note");
                data.notes.insert(
                    note_id.clone(),
                    Note { patient: patient.clone(), encounter: None, latest_ticket: 0, in_flight: 0 },
                );
                (note_id, None)
            }
        };
        Ok(CreateDraft {
            note_id,
            encounter,
            patient,
            status: parsed.status,
            operator,
            content_type: parsed.content_type,
            title: parsed.title,
            notes: parsed.notes,
            data: parsed.data,
        })
    }
}

struct ParsedCreate {
    status: String,
    subject_ref: String,
    content_type: String,
    title: Option<String>,
    data: Bytes,
    encounter_ref: Option<String>,
    operator_ref: Option<String>,
    note_id: Option<String>,
    notes: Option<Value>,
}

pub(super) struct CreateDraft {
    pub(super) note_id: String,
    pub(super) encounter: Option<String>,
    pub(super) patient: String,
    pub(super) status: String,
    pub(super) operator: String,
    pub(super) content_type: String,
    pub(super) title: Option<String>,
    pub(super) notes: Option<Value>,
    pub(super) data: Bytes,
}

/// Why a create was refused: structural problems are 400 "Bad request", semantic ones 422 with a message.
enum Rejection {
    /// The reason is only logged at debug; Canvas answers a generic "Bad request".
    Invalid(&'static str),
    Business(String),
}

impl Rejection {
    fn into_response(self) -> SimResponse {
        match self {
            Rejection::Invalid(reason) => bad_request(reason),
            Rejection::Business(message) => outcome(StatusCode::UNPROCESSABLE_ENTITY, "business-rule", &message),
        }
    }
}

/// A required FHIR string: present, a JSON string, and not empty (FHIR JSON forbids empty strings).
fn required_str(value: Option<&Value>, reason: &'static str) -> Result<String, Rejection> {
    match value {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(Rejection::Invalid(reason)),
    }
}

fn optional_str(value: Option<&Value>, reason: &'static str) -> Result<Option<String>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(None),
        other => required_str(other, reason).map(Some),
    }
}

/// `reference` of an optional Reference element.
fn optional_reference(value: Option<&Value>, reason: &'static str) -> Result<Option<String>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(obj)) => required_str(obj.get("reference"), reason).map(Some),
        Some(_) => Err(Rejection::Invalid(reason)),
    }
}

fn parse_create(body: &[u8]) -> Result<ParsedCreate, Rejection> {
    let value: Value = serde_json::from_slice(body).map_err(|_| Rejection::Invalid("body is not JSON"))?;
    let obj = value.as_object().ok_or(Rejection::Invalid("body is not a JSON object"))?;
    if obj.get("resourceType").and_then(Value::as_str) != Some("Media") {
        return Err(Rejection::Invalid("resourceType is not Media"));
    }
    let status = required_str(obj.get("status"), "status missing")?;
    let subject_ref = optional_reference(obj.get("subject"), "subject.reference missing")?
        .ok_or(Rejection::Invalid("subject missing"))?;
    let content = obj.get("content").and_then(Value::as_object).ok_or(Rejection::Invalid("content missing"))?;
    let content_type = required_str(content.get("contentType"), "content.contentType missing")?;
    let title = optional_str(content.get("title"), "content.title not a string")?;
    let encoded = required_str(content.get("data"), "content.data missing")?;
    // FHIR base64Binary tolerates whitespace (line-wrapped base64); anything else must be strict standard base64.
    let compact: String = encoded.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let data = BASE64.decode(compact.as_bytes()).map_err(|_| Rejection::Invalid("content.data is not base64"))?;
    if data.is_empty() {
        return Err(Rejection::Invalid("content.data is empty"));
    }
    let encounter_ref = optional_reference(obj.get("encounter"), "encounter.reference missing")?;
    let operator_ref = optional_reference(obj.get("operator"), "operator.reference missing")?;

    let notes = match obj.get("note") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.is_empty() => None,
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let text = required_str(item.as_object().and_then(|o| o.get("text")), "note[].text missing")?;
                out.push(json!({ "text": text }));
            }
            Some(Value::Array(out))
        }
        Some(_) => return Err(Rejection::Invalid("note is not an array")),
    };

    let note_id = match obj.get("extension") {
        None | Some(Value::Null) => None,
        Some(Value::Array(extensions)) => {
            let mut found = None;
            for ext in extensions {
                let ext = ext.as_object().ok_or(Rejection::Invalid("extension entry is not an object"))?;
                let url = required_str(ext.get("url"), "extension.url missing")?;
                if url == NOTE_ID_EXTENSION_URL {
                    if found.is_some() {
                        return Err(Rejection::Invalid("note-id extension repeated"));
                    }
                    found = Some(required_str(ext.get("valueId"), "note-id valueId missing")?);
                }
            }
            found
        }
        Some(_) => return Err(Rejection::Invalid("extension is not an array")),
    };

    Ok(ParsedCreate {
        status,
        subject_ref,
        content_type,
        title,
        data: Bytes::from(data),
        encounter_ref,
        operator_ref,
        note_id,
        notes,
    })
}

/// Splits `Type/id` (a relative literal reference) into its parts.
fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let (resource_type, id) = reference.split_once('/')?;
    (!resource_type.is_empty() && !id.is_empty() && !id.contains('/')).then_some((resource_type, id))
}
