//! What athena.md lists per endpoint: the query parameters of each read and list (the form fields of document writes
//! are per class, in `document_classes`). Anything else is ignored, as athena ignores it, and recorded in the stats,
//! so a test shows when a gateway sends something athena does not read and relies on it.

use super::State;

pub(super) const PATIENT_GET: &[&str] = &["omitphotoinformation"];
pub(super) const INSURANCE_LIST: &[&str] = &["showcancelled", "limit", "offset"];
pub(super) const IMAGE_GET: &[&str] = &["jpegoutput"];
pub(super) const IMAGE_UPLOAD: &[&str] = &["image", "departmentid"];
/// The prescription card's upload takes no department.
pub(super) const PRESCRIPTION_CARD_UPLOAD: &[&str] = &["image"];
pub(super) const CLASS_LIST: &[&str] = &[
    "departmentid",
    "documentsubclass",
    "encounterid",
    "status",
    "showdeleted",
    "showmetadata",
    "getentityinfo",
    "limit",
    "offset",
];
pub(super) const GENERIC_LIST: &[&str] = &[
    "departmentid",
    "documentclass",
    "documentsubclass",
    "encounterid",
    "startdate",
    "enddate",
    "status",
    "showdeleted",
    "showdeclinedorders",
    "showmetadata",
    "limit",
    "offset",
];
pub(super) const PAGE_GET: &[&str] = &["filesize"];
pub(super) const NOTHING: &[&str] = &[];

impl State {
    /// Records the `names` sent to `endpoint` (e.g. `GET /patients/{patientid}/photo`) that `listed` lacks; names
    /// compare case-insensitively, as athena's own `next` links upper-case them.
    pub(super) fn note_unlisted<'a>(&self, endpoint: &str, names: impl IntoIterator<Item = &'a str>, listed: &[&str]) {
        let mut unlisted: Vec<String> = names
            .into_iter()
            .filter(|name| !listed.iter().any(|l| l.eq_ignore_ascii_case(name)))
            .map(|name| format!("{endpoint}: {}", name.to_ascii_lowercase()))
            .collect();
        if unlisted.is_empty() {
            return;
        }
        unlisted.sort();
        unlisted.dedup();
        self.data().stats.ignored_parameters.extend(unlisted);
    }
}
