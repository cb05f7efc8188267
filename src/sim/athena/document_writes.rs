//! Writing documents: class-specific creates, metadata-only updates and soft deletes, with athena's rejected writes
//! answering 200 and `success: false`.

use http::StatusCode;
use http::request::Parts;
use hyper::body::Incoming;
use serde_json::json;

use super::dates::{now_secs, valid_date, valid_time};
use super::document_classes::DocClass;
use super::form_body::FormBody;
use super::responses::{
    Refusal, athena_error, clip, document_not_found, failure, invalid_data, missing_fields, refuse, success,
};
use super::{Document, Original, Page, State};
use crate::sim::support::{SimResponse, json_response};

impl State {
    pub(super) async fn create_document(
        &self,
        pid: &str,
        class: DocClass,
        parts: &Parts,
        body: Incoming,
    ) -> SimResponse {
        let form = match self.patient_form(pid, parts, body).await {
            Ok(form) => form,
            Err(response) => return *response,
        };
        let listed = class.create_fields();
        self.note_unlisted(
            &format!("POST /patients/{{patientid}}/documents/{}", class.segment()),
            form.names(),
            &listed,
        );
        // Only the fields athena lists for the class are read; the rest are ignored, as athena ignores them.
        let field = |name: &str| if listed.contains(&name) { form.text(name) } else { None };
        let mut missing = Vec::new();
        if field("departmentid").is_none() {
            missing.push("departmentid");
        }
        if field("documentsubclass").is_none() {
            missing.push("documentsubclass");
        }
        if !missing.is_empty() {
            return missing_fields(&missing);
        }
        let department = field("departmentid").unwrap_or_default().trim().to_owned();
        if let Err(response) = self.check_department(&department) {
            return *response;
        }
        let subclass = field("documentsubclass").unwrap_or_default().trim().to_ascii_uppercase();
        if !class.subclass_ok(&subclass) {
            return invalid_data(&format!("Invalid documentsubclass '{}' for this document class.", clip(&subclass)));
        }
        if let Some(kind) = field("attachmenttype")
            && !kind.trim().eq_ignore_ascii_case("PDF")
        {
            return athena_error(StatusCode::BAD_REQUEST, "Invalid attachment type id.", None);
        }
        let attachment = match form.binary("attachmentcontents") {
            Ok(attachment) => attachment,
            Err(response) => return *response,
        };
        let fields = match MetadataFields::parse(&form, &listed) {
            Ok(fields) => fields,
            Err(response) => return *response,
        };
        let filename = field("originalfilename").map(str::to_owned);
        if filename.as_ref().is_some_and(|name| name.chars().count() > 200) {
            return invalid_data("originalfilename must be at most 200 characters.");
        }
        if let Some(bytes) = &attachment
            && !bytes.starts_with(b"%PDF-")
        {
            // athena accepts only PDF attachments "at this time"; class-specific creates report it as a 200.
            return json_response(
                StatusCode::OK,
                &failure(class.stringly(), "Only PDF attachments are accepted at this time."),
            );
        }
        let autoclose = field("autoclose").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let description = field("documentdata").map(|d| clip(d).to_owned()).unwrap_or_else(|| subclass.clone());
        let text = |name: &str| field(name).map(|v| v.trim().to_owned());
        let (accessionid, internalaccessionid, tietoorderid) =
            (text("accessionid"), text("internalaccessionidentifier"), text("tietoorderid"));
        let now = now_secs();

        let id = {
            let mut guard = self.data();
            let data = &mut *guard;
            let id = data.next_document_id;
            data.next_document_id += 1;
            let mut pages = Vec::new();
            let original = attachment.map(|bytes| {
                let page_id = data.next_page_id;
                data.next_page_id += 1;
                data.pages.insert(
                    page_id,
                    Page { document: id, ordering: 1, content_type: "application/pdf", bytes: bytes.clone() },
                );
                pages.push(page_id);
                Original {
                    bytes,
                    content_type: "application/pdf",
                    filename: filename.unwrap_or_else(|| format!("document{id}")),
                }
            });
            let mut doc = Document {
                id,
                class,
                patient: pid.to_owned(),
                department,
                subclass,
                documenttypeid: None,
                description,
                status: if autoclose { "CLOSED".to_owned() } else { "REVIEW".to_owned() },
                priority: 2,
                providerid: None,
                clinicalproviderid: None,
                internalnote: None,
                documentdate: None,
                observationdate: None,
                observationtime: None,
                accessionid,
                internalaccessionid,
                tietoorderid,
                encounterid: None,
                source: "UPLOAD",
                route: "WEBSERVICE",
                created: now,
                modified: now,
                deleted: None,
                pages,
                original,
            };
            fields.apply(&mut doc, false);
            data.documents.insert(id, doc);
            data.stats.creates += 1;
            id
        };
        let mut body = success(class.stringly(), true);
        body[class.id_field()] = if class.stringly() { json!(id.to_string()) } else { json!(id) };
        json_response(StatusCode::OK, &body)
    }

    pub(super) async fn update_document(
        &self,
        pid: &str,
        class: DocClass,
        id: u64,
        parts: &Parts,
        body: Incoming,
    ) -> SimResponse {
        let form = match self.patient_form(pid, parts, body).await {
            Ok(form) => form,
            Err(response) => return *response,
        };
        if form.has("attachmentcontents") || form.has("attachmenttype") {
            return invalid_data("The file of a document cannot be replaced; only its metadata can be updated.");
        }
        let listed = class.update_fields();
        let endpoint = format!("PUT /patients/{{patientid}}/documents/{}/{{{}}}", class.segment(), class.id_field());
        self.note_unlisted(&endpoint, form.names(), &listed);
        let fields = match MetadataFields::parse(&form, &listed) {
            Ok(fields) => fields,
            Err(response) => return *response,
        };
        if fields.is_empty() {
            return athena_error(
                StatusCode::BAD_REQUEST,
                "Additional fields are required.",
                Some("At least one field to update is required."),
            );
        }
        let mut data = self.data();
        let Some(doc) = data.documents.get_mut(&id).filter(|doc| doc.class == class && doc.patient == pid) else {
            return document_not_found();
        };
        if doc.deleted.is_some() {
            return json_response(
                StatusCode::OK,
                &failure(class.stringly(), "The document has been deleted and cannot be updated."),
            );
        }
        fields.apply(doc, true);
        doc.modified = now_secs();
        let mut body = success(class.stringly(), true);
        body[class.id_field()] = if class.stringly() { json!(id.to_string()) } else { json!(id) };
        json_response(StatusCode::OK, &body)
    }

    pub(super) fn delete_document(&self, pid: &str, class: DocClass, id: u64) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        let mut data = self.data();
        let Some(doc) = data.documents.get_mut(&id).filter(|doc| doc.class == class && doc.patient == pid) else {
            return document_not_found();
        };
        if doc.deleted.is_some() {
            return json_response(StatusCode::OK, &failure(class.stringly(), "The document is already deleted."));
        }
        let now = now_secs();
        doc.status = "DELETED".to_owned();
        doc.deleted = Some(now);
        doc.modified = now;
        json_response(StatusCode::OK, &success(class.stringly(), true))
    }
}

/// Metadata fields accepted on create and update (athena.md §2d); only those `listed` for the class and the write are
/// read.
#[derive(Default)]
struct MetadataFields {
    documentdate: Option<String>,
    documenttypeid: Option<u64>,
    internalnote: Option<String>,
    replaceinternalnote: bool,
    priority: Option<u8>,
    providerid: Option<u64>,
    clinicalproviderid: Option<u64>,
    observationdate: Option<String>,
    observationtime: Option<String>,
}

impl MetadataFields {
    fn parse(form: &FormBody, listed: &[&str]) -> Result<Self, Refusal> {
        let field = |name: &str| if listed.contains(&name) { form.text(name) } else { None };
        let integer = |name: &str| -> Result<Option<u64>, Refusal> {
            match field(name) {
                None => Ok(None),
                Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                    refuse(invalid_data(&format!("Expecting format integer for {name}, but value is '{}'.", clip(v))))
                }),
            }
        };
        let date = |name: &str| -> Result<Option<String>, Refusal> {
            match field(name) {
                None => Ok(None),
                Some(v) if valid_date(v.trim()) => Ok(Some(v.trim().to_owned())),
                Some(v) => Err(Box::new(invalid_data(&format!("Expecting format date, but value is '{}'.", clip(v))))),
            }
        };
        let priority = match field("priority").map(str::trim) {
            None => None,
            Some("1") => Some(1),
            Some("2") => Some(2),
            Some(v) => {
                return Err(Box::new(invalid_data(&format!("priority must be 1 or 2, but value is '{}'.", clip(v)))));
            }
        };
        let observationtime = match field("observationtime").map(str::trim) {
            None => None,
            Some(v) if valid_time(v) => Some(v.to_owned()),
            Some(v) => {
                return Err(Box::new(invalid_data(&format!("Expecting format hh24:mi, but value is '{}'.", clip(v)))));
            }
        };
        Ok(Self {
            documentdate: date("documentdate")?,
            documenttypeid: integer("documenttypeid")?,
            internalnote: field("internalnote").map(str::to_owned),
            replaceinternalnote: field("replaceinternalnote").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            priority,
            providerid: integer("providerid")?,
            clinicalproviderid: integer("clinicalproviderid")?,
            observationdate: date("observationdate")?,
            observationtime,
        })
    }

    fn is_empty(&self) -> bool {
        self.documentdate.is_none()
            && self.documenttypeid.is_none()
            && self.internalnote.is_none()
            && self.priority.is_none()
            && self.providerid.is_none()
            && self.clinicalproviderid.is_none()
            && self.observationdate.is_none()
            && self.observationtime.is_none()
    }

    /// `update`: an internal note is appended to the existing one (after a space) unless `replaceinternalnote=true`,
    /// which only the classes that list it read.
    fn apply(self, doc: &mut Document, update: bool) {
        if let Some(date) = self.documentdate {
            doc.documentdate = Some(date);
        }
        if let Some(typeid) = self.documenttypeid {
            doc.documenttypeid = Some(typeid);
        }
        if let Some(note) = self.internalnote {
            doc.internalnote = match (&doc.internalnote, update && !self.replaceinternalnote) {
                (Some(existing), true) if !existing.is_empty() => Some(format!("{existing} {note}")),
                _ => Some(note),
            };
        }
        if let Some(priority) = self.priority {
            doc.priority = priority;
        }
        if let Some(provider) = self.providerid {
            doc.providerid = Some(provider);
        }
        if let Some(provider) = self.clinicalproviderid {
            doc.clinicalproviderid = Some(provider);
        }
        if let Some(date) = self.observationdate {
            doc.observationdate = Some(date);
        }
        if let Some(time) = self.observationtime {
            doc.observationtime = Some(time);
        }
    }
}
