//! Reading Media as Canvas returns them: single reads, the content URL's redirect to S3, and search with its
//! relative paging links.

use std::collections::HashSet;

use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use super::responses::{bad_request, internal_error, not_found_media};
use super::s3::Presigner;
use super::{MediaRecord, State};
use crate::sim::support::{SimResponse, empty_response, json_response};

/// Extension selecting (on create) and reporting (on read) the note holding the Media.
pub const NOTE_ID_EXTENSION_URL: &str = "http://schemas.canvasmedical.com/fhir/extensions/note-id";
/// Temporary extension carrying a presigned S3 URL on reads; gateways must strip it.
pub const DEPRECATED_URL_EXTENSION_URL: &str = "http://schemas.canvasmedical.com/fhir/extensions/deprecated-url";
const SEARCH_COUNT_DEFAULT: usize = 10;
const SEARCH_COUNT_MAX: usize = 100;

impl State {
    pub(super) fn read(&self, id: &str) -> SimResponse {
        let mut guard = self.data();
        let data = &mut *guard;
        match data.media.get(id) {
            Some(rec) => json_response(StatusCode::OK, &self.render_media(rec, &mut data.presigner)),
            None => not_found_media(id),
        }
    }

    pub(super) fn content_redirect(&self, id: &str) -> SimResponse {
        let mut guard = self.data();
        let data = &mut *guard;
        let Some(rec) = data.media.get(id) else {
            return not_found_media(id);
        };
        let url = data.presigner.issue(&self.s3_base, &rec.s3_key);
        let mut response = empty_response(StatusCode::TEMPORARY_REDIRECT);
        match HeaderValue::from_str(&url) {
            Ok(value) => {
                response.headers_mut().insert(header::LOCATION, value);
                response
            }
            Err(_) => internal_error(),
        }
    }

    /// The Media as Canvas returns it on read: no `content.data`, a fumage content URL, the note-id extension and
    /// the temporary deprecated-url extension.
    pub(super) fn render_media(&self, rec: &MediaRecord, presigner: &mut Presigner) -> Value {
        let presigned = presigner.issue(&self.s3_base, &rec.s3_key);
        let mut content = Map::new();
        content.insert("contentType".into(), json!(rec.content_type));
        content.insert("url".into(), json!(format!("{}/Media/{}/files/content", self.fhir_base, rec.id)));
        if let Some(title) = &rec.title {
            content.insert("title".into(), json!(title));
        }
        let mut media = Map::new();
        media.insert("resourceType".into(), json!("Media"));
        media.insert("id".into(), json!(rec.id));
        media.insert(
            "extension".into(),
            json!([
                {"url": NOTE_ID_EXTENSION_URL, "valueId": rec.note_id},
                {"url": DEPRECATED_URL_EXTENSION_URL, "valueUri": presigned},
            ]),
        );
        media.insert("status".into(), json!(rec.status));
        media.insert("subject".into(), json!({"reference": format!("Patient/{}", rec.patient), "type": "Patient"}));
        if let Some(encounter) = &rec.encounter {
            media.insert("encounter".into(), json!({"reference": format!("Encounter/{encounter}")}));
        }
        media.insert("operator".into(), json!({"reference": rec.operator}));
        media.insert("content".into(), Value::Object(content));
        if let Some(notes) = &rec.notes {
            media.insert("note".into(), notes.clone());
        }
        Value::Object(media)
    }

    pub(super) fn search(&self, query: &str) -> SimResponse {
        let mut seen = HashSet::new();
        let mut ids: Option<Vec<String>> = None;
        let mut patient: Option<String> = None;
        let mut count = SEARCH_COUNT_DEFAULT;
        let mut offset = 0usize;
        // Non-paging parameters, echoed in the paging links in the order received.
        let mut echo: Vec<(String, String)> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if !seen.insert(key.clone().into_owned()) {
                return bad_request("repeated search parameter");
            }
            match key.as_ref() {
                "_id" => {
                    let list: Vec<String> =
                        value.split(',').map(str::trim).filter(|id| !id.is_empty()).map(str::to_owned).collect();
                    if list.is_empty() {
                        return bad_request("empty _id");
                    }
                    ids = Some(list);
                    echo.push(("_id".into(), value.into_owned()));
                }
                "patient" => {
                    // Canvas wants the reference form `Patient/<id>`, not a bare id.
                    match value.strip_prefix("Patient/") {
                        Some(id) if !id.is_empty() && !id.contains('/') => patient = Some(id.to_owned()),
                        _ => return bad_request("patient is not Patient/<id>"),
                    }
                    echo.push(("patient".into(), value.into_owned()));
                }
                "_count" => match value.parse::<usize>() {
                    Ok(n) => count = n.min(SEARCH_COUNT_MAX),
                    Err(_) => return bad_request("bad _count"),
                },
                "_offset" => match value.parse::<usize>() {
                    Ok(n) => offset = n,
                    Err(_) => return bad_request("bad _offset"),
                },
                _ => return bad_request("unsupported search parameter"),
            }
        }

        let mut guard = self.data();
        let data = &mut *guard;
        let matches: Vec<&MediaRecord> = data
            .media_order
            .iter()
            .filter_map(|id| data.media.get(id))
            .filter(|rec| patient.as_ref().is_none_or(|p| &rec.patient == p))
            .filter(|rec| ids.as_ref().is_none_or(|ids| ids.contains(&rec.id)))
            .collect();
        let total = matches.len();
        let entries: Vec<Value> = matches
            .iter()
            .skip(offset)
            .take(count)
            .map(|rec| {
                json!({
                    "fullUrl": format!("{}/Media/{}", self.fhir_base, rec.id),
                    "resource": self.render_media(rec, &mut data.presigner),
                })
            })
            .collect();

        let last_offset = if count == 0 || total == 0 { 0 } else { (total - 1) / count * count };
        let mut links = vec![
            json!({"relation": "self", "url": page_link(&echo, count, offset)}),
            json!({"relation": "first", "url": page_link(&echo, count, 0)}),
        ];
        if count > 0 && offset.saturating_add(count) < total {
            links.push(json!({"relation": "next", "url": page_link(&echo, count, offset + count)}));
        }
        links.push(json!({"relation": "last", "url": page_link(&echo, count, last_offset)}));

        let bundle = json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": links,
            "entry": entries,
        });
        json_response(StatusCode::OK, &bundle)
    }
}

/// Relative paging link as Canvas writes it: non-paging parameters first, then `_count` and `_offset`.
fn page_link(echo: &[(String, String)], count: usize, offset: usize) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in echo {
        serializer.append_pair(key, value);
    }
    serializer.append_pair("_count", &count.to_string());
    serializer.append_pair("_offset", &offset.to_string());
    format!("/Media?{}", serializer.finish())
}
