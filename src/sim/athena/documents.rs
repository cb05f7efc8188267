//! Reading documents: the class-specific and generic lists with their shared filters, single documents, pages and
//! original files.

use std::collections::HashMap;

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::dates::{CivilDate, fmt_date, fmt_datetime, local_date, parse_date};
use super::document_classes::{DocClass, DocumentList};
use super::query::{Query, add_paging_links, paging};
use super::responses::{
    Refusal, athena_error, bytes_response, clip, document_not_found, invalid_data, missing_fields, refuse,
};
use super::{Document, Page, State, listed};
use crate::sim::support::{SimResponse, json_response};

const DOCUMENT_LIMIT_DEFAULT: usize = 1000;
const DOCUMENT_LIMIT_MAX: usize = 10_000;

/// The filters of a document list query, shared by the class-specific and the generic list.
struct DocumentFilter {
    /// `None` = every class.
    classes: Option<Vec<DocClass>>,
    subclasses: Option<Vec<String>>,
    statuses: Option<Vec<String>>,
    encounter: Option<String>,
    show_deleted: bool,
    /// Inclusive bounds on the document's created date (athena's local time); generic list only.
    created_from: Option<CivilDate>,
    created_to: Option<CivilDate>,
}

impl DocumentFilter {
    fn parse(query: &Query, list: DocumentList) -> Result<Self, Refusal> {
        let upper_list = |name: &str| -> Option<Vec<String>> {
            query
                .get(name)
                .map(|v| v.split(',').map(|s| s.trim().to_ascii_uppercase()).filter(|s| !s.is_empty()).collect())
        };
        let mut filter = Self {
            classes: None,
            subclasses: upper_list("documentsubclass"),
            statuses: upper_list("status"),
            encounter: query.get("encounterid").map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned),
            show_deleted: query.flag("showdeleted"),
            created_from: None,
            created_to: None,
        };
        match list {
            DocumentList::Class(class) => filter.classes = Some(vec![class]),
            DocumentList::Generic => {
                if let Some(names) = upper_list("documentclass").filter(|names| !names.is_empty()) {
                    let classes = names
                        .iter()
                        .map(|name| {
                            DocClass::from_documentclass(name).ok_or_else(|| {
                                refuse(invalid_data(&format!("Invalid documentclass '{}'.", clip(name))))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    filter.classes = Some(classes);
                }
                let date = |name: &str| -> Result<Option<CivilDate>, Refusal> {
                    match query.get(name).map(str::trim).filter(|v| !v.is_empty()) {
                        None => Ok(None),
                        Some(v) => parse_date(v).map(Some).ok_or_else(|| {
                            refuse(invalid_data(&format!("Expecting format date, but value is '{}'.", clip(v))))
                        }),
                    }
                };
                filter.created_from = date("startdate")?;
                filter.created_to = date("enddate")?;
            }
        }
        Ok(filter)
    }

    fn matches(&self, doc: &Document) -> bool {
        let created = local_date(doc.created);
        self.classes.as_ref().is_none_or(|classes| classes.contains(&doc.class))
            && (self.show_deleted || doc.deleted.is_none())
            && self.subclasses.as_ref().is_none_or(|list| list.contains(&doc.subclass))
            && self.statuses.as_ref().is_none_or(|list| list.contains(&doc.status))
            && self.encounter.as_deref().is_none_or(|e| doc.encounterid.as_deref() == Some(e))
            && self.created_from.is_none_or(|from| created >= from)
            && self.created_to.is_none_or(|to| created <= to)
    }
}

impl State {
    /// Both document lists: the class-specific `GET /patients/{pid}/documents/{cls}` and the generic
    /// `GET /patients/{pid}/documents`. Same checks (`departmentid` required), filters, paging and order (document id
    /// ascending); they differ only in the list key and the generic list's extra filters.
    pub(super) fn list_documents(&self, pid: &str, list: DocumentList, query: &Query, path: &str) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        let (endpoint, listed) = match list {
            DocumentList::Class(class) => {
                (format!("GET /patients/{{patientid}}/documents/{}", class.segment()), listed::CLASS_LIST)
            }
            DocumentList::Generic => ("GET /patients/{patientid}/documents".to_owned(), listed::GENERIC_LIST),
        };
        self.note_unlisted(&endpoint, query.names(), listed);
        let Some(department) = query.get("departmentid").filter(|d| !d.trim().is_empty()) else {
            return missing_fields(&["departmentid"]);
        };
        if let Err(response) = self.check_department(department) {
            return *response;
        }
        let (limit, offset) = match paging(query, DOCUMENT_LIMIT_DEFAULT, DOCUMENT_LIMIT_MAX) {
            Ok(paging) => paging,
            Err(response) => return *response,
        };
        let filter = match DocumentFilter::parse(query, list) {
            Ok(filter) => filter,
            Err(response) => return *response,
        };
        let show_metadata = query.flag("showmetadata");

        let data = self.data();
        let matches: Vec<&Document> =
            data.documents.values().filter(|doc| doc.patient == pid && filter.matches(doc)).collect();
        let total = matches.len();
        let page: Vec<Value> = matches
            .iter()
            .skip(offset)
            .take(limit)
            .map(|doc| self.render_document(doc, &data.pages, show_metadata))
            .collect();
        drop(data);
        let mut body = Map::new();
        body.insert(list.key().to_owned(), Value::Array(page));
        body.insert("totalcount".to_owned(), json!(total));
        let mut body = Value::Object(body);
        add_paging_links(&mut body, path, query, limit, offset, total);
        json_response(StatusCode::OK, &body)
    }

    fn render_document(&self, doc: &Document, pages: &HashMap<u64, Page>, show_metadata: bool) -> Value {
        let base = format!(
            "{}/v1/{}/patients/{}/documents/{}/{}",
            self.host_base,
            self.practice_id,
            doc.patient,
            doc.class.segment(),
            doc.id
        );
        let mut out = Map::new();
        // The class id is an integer while documentid is a string (athena.md §6).
        out.insert(doc.class.id_field().to_owned(), json!(doc.id));
        out.insert("documentid".into(), json!(doc.id.to_string()));
        out.insert("documentclass".into(), json!(doc.class.documentclass()));
        out.insert("documentsubclass".into(), json!(doc.subclass));
        if let Some(typeid) = doc.documenttypeid {
            out.insert("documenttypeid".into(), json!(typeid));
        }
        out.insert("documentdescription".into(), json!(doc.description));
        out.insert("departmentid".into(), json!(doc.department));
        out.insert("patientid".into(), json!(doc.patient.parse::<u64>().ok()));
        out.insert("status".into(), json!(doc.status));
        // priority: "2" (string) for admin documents, 2 (integer) elsewhere.
        if doc.class == DocClass::Admin {
            out.insert("priority".into(), json!(doc.priority.to_string()));
        } else {
            out.insert("priority".into(), json!(doc.priority));
        }
        if let Some(provider) = doc.providerid {
            out.insert("providerid".into(), json!(provider));
            out.insert("providerusername".into(), json!(format!("provider{provider}")));
        }
        if let Some(provider) = doc.clinicalproviderid {
            out.insert("clinicalproviderid".into(), json!(provider));
        }
        if let Some(encounter) = &doc.encounterid {
            out.insert("encounterid".into(), json!(encounter));
        }
        out.insert("documentsource".into(), json!(doc.source));
        out.insert("documentroute".into(), json!(doc.route));
        out.insert("createduser".into(), json!("API-SIM"));
        out.insert("createddate".into(), json!(fmt_date(doc.created)));
        out.insert("createddatetime".into(), json!(fmt_datetime(doc.created)));
        out.insert("lastmodifieduser".into(), json!("API-SIM"));
        out.insert("lastmodifieddate".into(), json!(fmt_date(doc.modified)));
        out.insert("lastmodifieddatetime".into(), json!(fmt_datetime(doc.modified)));
        if let Some(deleted) = doc.deleted {
            out.insert("deleteddatetime".into(), json!(fmt_datetime(deleted)));
        }
        if let Some(date) = &doc.documentdate {
            out.insert("documentdate".into(), json!(date));
        }
        if let Some(date) = &doc.observationdate {
            let time = doc.observationtime.as_deref().unwrap_or("00:00");
            out.insert("observationdatetime".into(), json!(format!("{date} {time}:00")));
        }
        if let Some(note) = &doc.internalnote {
            out.insert("internalnote".into(), json!(note));
        }
        // Imaging results: the create's `accessionid` / `internalaccessionidentifier` read back under these names.
        for (field, value) in [
            ("externalaccessionid", &doc.accessionid),
            ("internalaccessionid", &doc.internalaccessionid),
            ("tietoorderid", &doc.tietoorderid),
        ] {
            if let Some(value) = value {
                out.insert(field.into(), json!(value));
            }
        }
        if !doc.pages.is_empty() {
            let data_pages: Vec<Value> = doc
                .pages
                .iter()
                .filter_map(|id| pages.get(id).map(|page| (id, page)))
                .map(|(id, page)| {
                    json!({
                        "pageid": id.to_string(),
                        "pageordering": page.ordering,
                        "contenttype": page.content_type,
                        "href": format!("{base}/pages/{id}"),
                    })
                })
                .collect();
            out.insert("pages".into(), Value::Array(data_pages));
        }
        if show_metadata && let Some(original) = &doc.original {
            let filetype = if original.content_type == "application/pdf" { "PDF" } else { "PNG" };
            out.insert("filetype".into(), json!(filetype));
            out.insert("filesize".into(), json!(original.bytes.len()));
            out.insert("originalfilename".into(), json!(original.filename));
        }
        Value::Object(out)
    }

    pub(super) fn get_document(&self, pid: &str, class: DocClass, id: u64, query: &Query) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        // `showmetadata` is a list parameter (athena.md §2d): a single read never carries the file's metadata.
        let endpoint = format!("GET /patients/{{patientid}}/documents/{}/{{{}}}", class.segment(), class.id_field());
        self.note_unlisted(&endpoint, query.names(), class.read_params());
        let data = self.data();
        match data.documents.get(&id).filter(|doc| doc.class == class && doc.patient == pid) {
            // Single-record GETs answer a JSON array.
            Some(doc) => json_response(StatusCode::OK, &json!([self.render_document(doc, &data.pages, false)])),
            None => document_not_found(),
        }
    }

    pub(super) fn get_page(&self, pid: &str, class: DocClass, id: u64, page_id: u64, query: &Query) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        let endpoint = format!(
            "GET /patients/{{patientid}}/documents/{}/{{{}}}/pages/{{pageid}}",
            class.segment(),
            class.id_field()
        );
        self.note_unlisted(&endpoint, query.names(), listed::PAGE_GET);
        let data = self.data();
        if !data.documents.get(&id).is_some_and(|doc| doc.class == class && doc.patient == pid) {
            return document_not_found();
        }
        match data.pages.get(&page_id).filter(|page| page.document == id) {
            Some(page) => bytes_response(page.bytes.clone(), page.content_type),
            None => athena_error(StatusCode::NOT_FOUND, "Page not found.", Some("The page does not exist.")),
        }
    }

    pub(super) fn get_original(&self, pid: &str, class: DocClass, id: u64, query: &Query) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        let endpoint = format!(
            "GET /patients/{{patientid}}/documents/{}/{{{}}}/originaldocument",
            class.segment(),
            class.id_field()
        );
        self.note_unlisted(&endpoint, query.names(), listed::NOTHING);
        let data = self.data();
        let Some(doc) = data.documents.get(&id).filter(|doc| doc.class == class && doc.patient == pid) else {
            return document_not_found();
        };
        // Only documents whose source is FAX or UPLOAD keep their original file.
        match (&doc.original, doc.source) {
            (Some(original), "UPLOAD" | "FAX") => bytes_response(original.bytes.clone(), original.content_type),
            _ => athena_error(
                StatusCode::NOT_FOUND,
                "Original document not available.",
                Some("Only uploaded or faxed documents have an original document."),
            ),
        }
    }
}
