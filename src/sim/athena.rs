//! Faithful in-process simulator of the athenahealth (athenaOne) proprietary REST API for card, photo, licence and
//! document images, with its OAuth token endpoint on the same host.
//!
//! The simulator follows `shared/upstreams/athena.md` closely, including the parts that make athena awkward to front,
//! because a lenient simulator would hide exactly the gateway bugs it exists to catch:
//!
//! * one host: `POST /oauth2/v1/token` (client credentials via HTTP **Basic** only, form body, `scope` required,
//!   `expires_in` as the string `"3600"`, at most `token_limit_per_minute` new tokens per rolling minute, else 429)
//!   and the practice-scoped API under `/v1/{practiceid}`;
//! * a missing bearer is 401 "Developer Inactive"; unknown or expired tokens are 401; an unknown practice is 404
//!   "Invalid practice."; paths outside `/v1` and `/oauth2` answer the API gateway's plain-text 404;
//! * write bodies are only understood as `application/x-www-form-urlencoded` (or `multipart/form-data`); anything else
//!   (e.g. JSON) is read as "no fields", so required fields come back as 400 with `missingfields`;
//! * `departmentid` is required on document lists and creates, and must be a department the patient is registered in;
//! * single-record GETs (`/patients/{pid}`, documents) return a JSON **array**; ids, `departmentid`, `priority` and
//!   `success` use athena's mixed JSON types (strings in some places, numbers or booleans in others);
//! * class-specific writes that athena rejects answer **200 with `success:false`** (a string `"false"` for admin and
//!   medical-record documents) and an `errormessage`;
//! * documents are listed per class (`/documents/{cls}`) or across classes by athena's generic, older
//!   `GET /patients/{pid}/documents` (filters `documentclass`, and `startdate`/`enddate` as `MM/DD/YYYY`, inclusive,
//!   on the created date); both order by document id and give each item its integer class id and string `documentid`;
//! * documents are soft deleted (`status=DELETED`, `deleteddatetime`), listed again only with `showdeleted=true`;
//!   updates are metadata-only (a new file is refused);
//! * lists page with `limit`/`offset`, `totalcount` and a **relative** `next`/`previous` whose parameter names are
//!   upper-cased, as in athena's fixtures (parameter names are matched case-insensitively, so following it works);
//! * image endpoints return `{"image":"<base64>"}`, or raw bytes with `jpegoutput=true` / `Accept: image/jpeg`, and
//!   404 when the slot is empty.
//!
//! Faults ([`Fault`]) can be queued to make requests fail, stall, hang or have their connection reset.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use rand::Rng as _;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::support::{
    self, HandlerResult, ResetConnection, ShutdownSignal, ShutdownTrigger, SimResponse, advertised_url,
    basic_credentials, empty_response, has_media_type, json_response,
};

/// An early answer from a validation step, boxed to keep `Result`s small.
type Refusal = Box<SimResponse>;

fn refuse(response: SimResponse) -> Refusal {
    Box::new(response)
}

/// athena's shared preview sandbox practice; the default practice of the simulator.
pub const DEMO_PRACTICE_ID: &str = "195900";
/// The demo patient (BRIEF §5).
pub const DEMO_PATIENT_ID: &str = "1234";
/// A second patient, registered without a department or insurance (new registrations look like this), so
/// defaults the gateway looks up (primary department, primary insurance) cannot be found.
pub const UNASSIGNED_PATIENT_ID: &str = "1240";
/// The demo patient's primary department.
pub const DEMO_DEPARTMENT_ID: &str = "1";
/// A department of the practice the demo patient is **not** registered in (documents there answer 400).
pub const OTHER_DEPARTMENT_ID: &str = "2";
/// The demo patient's primary insurance (`sequencenumber` 1). Seeded with a card image.
pub const DEMO_PRIMARY_INSURANCE_ID: &str = "5678";
/// The demo patient's secondary insurance (`sequencenumber` 2). No card image at start.
pub const DEMO_SECONDARY_INSURANCE_ID: &str = "5679";
/// The demo patient's tertiary insurance (`sequencenumber` 3), active. No card image at start.
pub const DEMO_TERTIARY_INSURANCE_ID: &str = "5680";
/// A cancelled insurance of the demo patient, listed only with `showcancelled=true`.
pub const DEMO_CANCELLED_INSURANCE_ID: &str = "5670";
/// Seeded, not deleted admin documents of the demo patient in department 1, in list order.
pub const DEMO_ADMIN_DOCUMENT_IDS: [u64; 7] = [44987, 44988, 44989, 44990, 44991, 44992, 44993];
/// A seeded admin document that is already soft deleted.
pub const DEMO_DELETED_ADMIN_DOCUMENT_ID: u64 = 44994;
/// Seeded clinical documents of the demo patient.
pub const DEMO_CLINICAL_DOCUMENT_IDS: [u64; 2] = [45001, 45002];
/// Seeded imaging results of the demo patient.
pub const DEMO_IMAGING_RESULT_IDS: [u64; 2] = [45011, 45012];
/// Seeded medical record document of the demo patient.
pub const DEMO_MEDICAL_RECORD_ID: u64 = 45021;
/// Seeded encounter document (ENCOUNTERDOCUMENT_IMAGEDOC) of the demo patient.
pub const DEMO_ENCOUNTER_DOCUMENT_ID: u64 = 45031;
/// Seeded lab result of the demo patient.
pub const DEMO_LAB_RESULT_ID: u64 = 45041;
/// Token endpoint path on the API host.
pub const TOKEN_PATH: &str = "/oauth2/v1/token";
/// The scope that grants the proprietary (MDP) API.
pub const MDP_SCOPE: &str = "athena/service/Athenanet.MDP.*";

/// First id handed out to documents created through the API (deterministic: creates count up from here).
const FIRST_CREATED_DOCUMENT_ID: u64 = 200_001;
const FIRST_PAGE_ID: u64 = 900_001;
const MAX_BODY: usize = 64 * 1024 * 1024;
const MAX_TOKEN_BODY: usize = 64 * 1024;
const DOCUMENT_LIMIT_DEFAULT: usize = 1000;
const DOCUMENT_LIMIT_MAX: usize = 10_000;
const LIST_LIMIT_DEFAULT: usize = 1500;
const LIST_LIMIT_MAX: usize = 5000;
/// athena's sandbox runs on US Eastern time; responses carry this fixed offset.
const UTC_OFFSET_SECS: i64 = -5 * 3600;
const UTC_OFFSET_TEXT: &str = "-05:00";
const RATE_WINDOW: Duration = Duration::from_secs(60);
const SEED_EPOCH: i64 = 1_700_000_000;

/// 1x1 PNG used for seeded document pages and images.
const PNG_1X1_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
/// A tiny JPEG-shaped blob (SOI/APP0/EOI markers) used for seeded card and photo images.
const SEED_JPEG: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00athena-sim-seed\xff\xd9";
/// A tiny PDF used as the original upload of seeded UPLOAD documents.
const SEED_PDF: &[u8] = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n";

/// Simulator configuration. Start from [`Default`] and override what a test needs.
#[derive(Debug, Clone)]
pub struct AthenaSimConfig {
    /// OAuth client id the token endpoint accepts (HTTP Basic).
    pub client_id: String,
    /// OAuth client secret the token endpoint accepts (HTTP Basic).
    pub client_secret: String,
    /// Lifetime of issued tokens; athena uses 3600 s. Shorten it to exercise refresh.
    pub token_ttl: Duration,
    /// New tokens allowed per rolling minute (5 in preview, 50 in production); more answer 429.
    pub token_limit_per_minute: u32,
    /// The practice the API serves under `/v1/{practiceid}`; other practices answer 404 "Invalid practice.".
    pub practice_id: String,
}

impl Default for AthenaSimConfig {
    fn default() -> Self {
        Self {
            client_id: "demo-athena-client".to_owned(),
            client_secret: "demo-athena-secret".to_owned(),
            token_ttl: Duration::from_secs(3600),
            token_limit_per_minute: 5,
            practice_id: DEMO_PRACTICE_ID.to_owned(),
        }
    }
}

/// Counters describing what the simulator saw. Snapshot via [`AthenaSimHandle::stats`].
#[derive(Debug, Clone, Default)]
pub struct AthenaSimStats {
    /// POSTs to the token endpoint (successful or not).
    pub token_requests: u64,
    /// Token requests refused with 429 because of the per-minute limit.
    pub tokens_refused_rate_limited: u64,
    /// All non-token requests.
    pub requests: u64,
    /// Max simultaneous non-token requests.
    pub max_concurrent_requests: u64,
    /// Documents filed by a successful class-specific document POST (each one is a new document).
    pub creates: u64,
}

pub use super::fault::{Fault, FaultAction};

/// Entry point of the simulator.
pub struct AthenaSim;

impl AthenaSim {
    /// Binds one loopback listener on an ephemeral port (127.0.0.1:0) serving the token endpoint and the API.
    pub async fn start(config: AthenaSimConfig) -> io::Result<AthenaSimHandle> {
        Self::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Same as [`AthenaSim::start`] on a fixed address (for the standalone CLI); port 0 = ephemeral.
    ///
    /// The server runs until [`AthenaSimHandle::shutdown`] is called or the last handle clone is dropped.
    pub async fn start_on(config: AthenaSimConfig, api_addr: SocketAddr) -> io::Result<AthenaSimHandle> {
        let listener = TcpListener::bind(api_addr).await?;
        let host_base = advertised_url(listener.local_addr()?);
        let (trigger, signal) = support::shutdown_channel();
        let state = Arc::new(State::new(config, host_base.clone(), signal.clone()));
        let st = Arc::clone(&state);
        support::spawn_server(listener, signal, move |req| {
            let st = Arc::clone(&st);
            async move { st.handle(req).await }
        });
        Ok(AthenaSimHandle { inner: Arc::new(HandleInner { state, trigger, host_base }) })
    }
}

/// Control handle of a running simulator. Cheap to clone; the server stops when the last clone is dropped.
#[derive(Clone)]
pub struct AthenaSimHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    state: Arc<State>,
    // Also stops the server when the last handle is dropped (the watch channel closes).
    trigger: ShutdownTrigger,
    host_base: String,
}

impl AthenaSimHandle {
    /// The practice-scoped API base, e.g. `http://127.0.0.1:PORT/v1/195900` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("{}/v1/{}", self.inner.host_base, self.inner.state.practice_id)
    }

    /// The token endpoint on the same host, e.g. `http://127.0.0.1:PORT/oauth2/v1/token`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.inner.host_base)
    }

    /// The host base, e.g. `http://127.0.0.1:PORT`; athena's relative `next` links resolve against it.
    pub fn host_url(&self) -> String {
        self.inner.host_base.clone()
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> AthenaSimStats {
        self.inner.state.data().stats.clone()
    }

    /// Zero the counters (stored data and the token rate-limit window are kept).
    pub fn reset_stats(&self) {
        self.inner.state.data().stats = AthenaSimStats::default();
    }

    /// Every token issued so far is expired from now on (its next use answers 401).
    pub fn expire_all_tokens(&self) {
        let now = Instant::now();
        for token in self.inner.state.data().tokens.values_mut() {
            token.expiry = now;
        }
    }

    /// Lifetime of tokens issued from now on (also reported as `expires_in`).
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.inner.state.data().token_ttl = ttl;
    }

    /// Queue a fault (faults are matched in the order queued).
    pub fn inject(&self, fault: Fault) {
        if fault.times > 0 {
            self.inner.state.data().faults.push(fault);
        }
    }

    /// Drop all queued faults.
    pub fn clear_faults(&self) {
        self.inner.state.data().faults.clear();
    }

    /// Stop the listener; open connections are closed after in-flight exchanges finish (hung ones are reset).
    pub fn shutdown(&self) {
        self.inner.trigger.trigger();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Document classes
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DocClass {
    Admin,
    ClinicalDocument,
    EncounterDocument,
    ImagingResult,
    LabResult,
    MedicalRecord,
}

const ADMIN_SUBCLASSES: [&str; 11] = [
    "ADMIN_BILLING",
    "ADMIN_CONSENT",
    "ADMIN_HIPAA",
    "ADMIN_INSURANCEAPPROVAL",
    "ADMIN_INSURANCECARD",
    "ADMIN_INSURANCEDENIAL",
    "ADMIN_LEGAL",
    "ADMIN_MEDICALRECORDREQ",
    "ADMIN_REFERRAL",
    "ADMIN_SIGNEDFORMSLETTERS",
    "ADMIN_VACCINATIONRECORD",
];
const CLINICAL_SUBCLASSES: [&str; 6] = [
    "CLINICALDOCUMENT",
    "CLINICALDOCUMENT_ADMISSIONDISCHARGE",
    "CLINICALDOCUMENT_CONSULTNOTE",
    "CLINICALDOCUMENT_MENTALHEALTH",
    "CLINICALDOCUMENT_OPERATIVENOTE",
    "CLINICALDOCUMENT_URGENTCARE",
];
const ENCOUNTER_SUBCLASSES: [&str; 4] = [
    "ENCOUNTERDOCUMENT_IMAGEDOC",
    "ENCOUNTERDOCUMENT_PATIENTHISTORY",
    "ENCOUNTERDOCUMENT_PROCEDUREDOC",
    "ENCOUNTERDOCUMENT_PROGRESSNOTE",
];
const MEDICAL_RECORD_SUBCLASSES: [&str; 6] = [
    "MEDICALRECORD_CHARTTOABSTRACT",
    "MEDICALRECORD_COUMADIN",
    "MEDICALRECORD_GROWTHCHART",
    "MEDICALRECORD_HISTORICAL",
    "MEDICALRECORD_PATIENTDIARY",
    "MEDICALRECORD_VACCINATION",
];

impl DocClass {
    fn from_segment(segment: &str) -> Option<Self> {
        Some(match segment {
            "admin" => Self::Admin,
            "clinicaldocument" => Self::ClinicalDocument,
            "encounterdocument" => Self::EncounterDocument,
            "imagingresult" => Self::ImagingResult,
            "labresult" => Self::LabResult,
            "medicalrecord" => Self::MedicalRecord,
            _ => return None,
        })
    }

    fn id_field(self) -> &'static str {
        match self {
            Self::Admin => "adminid",
            Self::ClinicalDocument => "clinicaldocumentid",
            Self::EncounterDocument => "encounterdocumentid",
            Self::ImagingResult => "imagingresultid",
            Self::LabResult => "labresultid",
            Self::MedicalRecord => "medicalrecordid",
        }
    }

    fn list_key(self) -> &'static str {
        match self {
            Self::Admin => "admins",
            Self::ClinicalDocument => "clinicaldocuments",
            Self::EncounterDocument => "encounterdocuments",
            Self::ImagingResult => "imagingresults",
            Self::LabResult => "labresults",
            Self::MedicalRecord => "medicalrecords",
        }
    }

    fn documentclass(self) -> &'static str {
        match self {
            Self::Admin => "ADMIN",
            Self::ClinicalDocument => "CLINICALDOCUMENT",
            Self::EncounterDocument => "ENCOUNTERDOCUMENT",
            Self::ImagingResult => "IMAGINGRESULT",
            Self::LabResult => "LABRESULT",
            Self::MedicalRecord => "MEDICALRECORD",
        }
    }

    /// Classes whose write responses carry `success` (and the new id) as strings; the others use JSON booleans and
    /// numbers (athena.md §6 "Inconsistent JSON types").
    fn stringly(self) -> bool {
        matches!(self, Self::Admin | Self::MedicalRecord)
    }

    /// Classes with the clinical update fields (`clinicalproviderid`, `observationdate`/`time`, `replaceinternalnote`).
    fn clinical(self) -> bool {
        !matches!(self, Self::Admin | Self::MedicalRecord)
    }

    fn subclass_ok(self, subclass: &str) -> bool {
        match self {
            Self::Admin => ADMIN_SUBCLASSES.contains(&subclass),
            Self::ClinicalDocument => CLINICAL_SUBCLASSES.contains(&subclass),
            Self::EncounterDocument => ENCOUNTER_SUBCLASSES.contains(&subclass),
            Self::ImagingResult => subclass == "IMAGINGRESULT",
            Self::LabResult => subclass == "LABRESULT",
            Self::MedicalRecord => MEDICAL_RECORD_SUBCLASSES.contains(&subclass),
        }
    }

    /// The class named by athena's `documentclass` value (`ADMIN`, `CLINICALDOCUMENT`, …), case-insensitively.
    fn from_documentclass(name: &str) -> Option<Self> {
        [
            Self::Admin,
            Self::ClinicalDocument,
            Self::EncounterDocument,
            Self::ImagingResult,
            Self::LabResult,
            Self::MedicalRecord,
        ]
        .into_iter()
        .find(|class| class.documentclass().eq_ignore_ascii_case(name))
    }
}

/// Which document list a GET asks for (athena.md §2d).
#[derive(Debug, Clone, Copy)]
enum DocumentList {
    /// `GET /patients/{pid}/documents/{cls}`: one class, listed under `<cls>s`.
    Class(DocClass),
    /// The generic (older) `GET /patients/{pid}/documents`: every class, listed under `documents`, with the extra
    /// `documentclass` and `startdate`/`enddate` filters.
    Generic,
}

impl DocumentList {
    fn key(self) -> &'static str {
        match self {
            Self::Class(class) => class.list_key(),
            Self::Generic => "documents",
        }
    }
}

/// A calendar date as (year, month, day); tuples order chronologically.
type CivilDate = (i64, u32, u32);

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

// ---------------------------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------------------------

struct State {
    client_id: String,
    client_secret: String,
    practice_id: String,
    host_base: String,
    signal: ShutdownSignal,
    // One short-lived std mutex for all bookkeeping, never held across an await.
    data: Mutex<Data>,
}

struct TokenInfo {
    expiry: Instant,
    /// Whether the token carries the proprietary API scope.
    mdp: bool,
}

struct Data {
    token_ttl: Duration,
    token_limit: u32,
    tokens: HashMap<String, TokenInfo>,
    /// Issue instants of the tokens minted in the last minute (rolling window).
    issued: VecDeque<Instant>,
    documents: BTreeMap<u64, Document>,
    pages: HashMap<u64, Page>,
    next_document_id: u64,
    next_page_id: u64,
    /// (patient id, slot) -> image bytes.
    images: HashMap<(String, Slot), Bytes>,
    faults: Vec<Fault>,
    stats: AthenaSimStats,
    in_flight_requests: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    InsuranceCard(String),
    PrescriptionCard,
    Photo,
    DriversLicense,
}

impl Slot {
    /// athena.md: the insurance card and licence POSTs answer a JSON boolean; the photo and prescription-card bodies
    /// were not seen, so the simulator answers those with the string form to keep gateways lenient.
    fn stringly(&self) -> bool {
        matches!(self, Self::PrescriptionCard | Self::Photo)
    }

    fn takes_department(&self) -> bool {
        !matches!(self, Self::PrescriptionCard)
    }
}

struct Document {
    id: u64,
    class: DocClass,
    patient: String,
    department: String,
    subclass: String,
    documenttypeid: Option<u64>,
    description: String,
    status: String,
    priority: u8,
    providerid: Option<u64>,
    clinicalproviderid: Option<u64>,
    internalnote: Option<String>,
    documentdate: Option<String>,
    observationdate: Option<String>,
    observationtime: Option<String>,
    encounterid: Option<String>,
    source: &'static str,
    route: &'static str,
    created: i64,
    modified: i64,
    deleted: Option<i64>,
    pages: Vec<u64>,
    original: Option<Original>,
}

struct Original {
    bytes: Bytes,
    content_type: &'static str,
    filename: String,
}

struct Page {
    document: u64,
    ordering: u32,
    content_type: &'static str,
    bytes: Bytes,
}

/// Counts an API request as in flight for as long as it lives.
struct InFlightRequest<'a> {
    state: &'a State,
}

impl Drop for InFlightRequest<'_> {
    fn drop(&mut self) {
        let mut data = self.state.data();
        data.in_flight_requests = data.in_flight_requests.saturating_sub(1);
    }
}

/// Query parameters in arrival order; names are matched case-insensitively (athena's own `next` links upper-case
/// them), and a repeated name takes its last value.
struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(raw: &str) -> Self {
        Self { pairs: form_urlencoded::parse(raw.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect() }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
    }
}

/// A parsed write body. Keys are lower-cased. Multipart file parts land in `files` as raw bytes.
#[derive(Default)]
struct FormBody {
    text: HashMap<String, String>,
    files: HashMap<String, Bytes>,
}

impl FormBody {
    /// A non-empty text field.
    fn text(&self, name: &str) -> Option<&str> {
        self.text.get(name).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    fn has(&self, name: &str) -> bool {
        self.text.contains_key(name) || self.files.contains_key(name)
    }

    /// A binary field: raw bytes from a multipart file part, else the base64 text of the field.
    fn binary(&self, name: &str) -> Result<Option<Bytes>, Refusal> {
        if let Some(bytes) = self.files.get(name) {
            return Ok(Some(bytes.clone()).filter(|b| !b.is_empty()));
        }
        let Some(text) = self.text(name) else {
            return Ok(None);
        };
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        match BASE64.decode(compact.as_bytes()) {
            Ok(bytes) if !bytes.is_empty() => Ok(Some(Bytes::from(bytes))),
            _ => Err(Box::new(invalid_data(&format!("The {name} field is not valid base64.")))),
        }
    }
}

impl State {
    fn new(config: AthenaSimConfig, host_base: String, signal: ShutdownSignal) -> Self {
        let mut data = Data {
            token_ttl: config.token_ttl,
            token_limit: config.token_limit_per_minute,
            tokens: HashMap::new(),
            issued: VecDeque::new(),
            documents: BTreeMap::new(),
            pages: HashMap::new(),
            next_document_id: FIRST_CREATED_DOCUMENT_ID,
            next_page_id: FIRST_PAGE_ID,
            images: HashMap::new(),
            faults: Vec::new(),
            stats: AthenaSimStats::default(),
            in_flight_requests: 0,
        };
        seed(&mut data);
        Self {
            client_id: config.client_id,
            client_secret: config.client_secret,
            practice_id: config.practice_id,
            host_base,
            signal,
            data: Mutex::new(data),
        }
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        // A panic elsewhere must not take the whole simulator down with poisoned-lock panics.
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pops the first queued fault matching this request, if any.
    fn take_fault(&self, method: &Method, path: &str) -> Option<FaultAction> {
        let mut data = self.data();
        super::fault::take(&mut data.faults, method, path, path.starts_with("/v1/"))
    }

    async fn apply_fault(&self, method: &Method, path: &str) -> Result<Option<SimResponse>, ResetConnection> {
        match self.take_fault(method, path) {
            None => Ok(None),
            Some(FaultAction::Latency(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(None)
            }
            Some(FaultAction::Hang) => support::hang(&self.signal).await.map(Some),
            Some(FaultAction::Reset) => Err(ResetConnection),
            Some(FaultAction::Status(code)) => Ok(Some(fault_response(code, path.starts_with("/oauth2/")))),
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> HandlerResult {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        if path.starts_with("/oauth2/") {
            if method == Method::POST && path == TOKEN_PATH {
                self.data().stats.token_requests += 1;
            }
            let response = match self.apply_fault(&method, &path).await? {
                Some(response) => response,
                None => self.token_endpoint(req, &method, &path).await,
            };
            tracing::debug!(host = "athena", %method, path, status = response.status().as_u16(), "sim");
            return Ok(response);
        }
        let _in_flight = self.enter_request();
        let response = match self.apply_fault(&method, &path).await? {
            Some(response) => response,
            None => self.route_api(req, &method, &path).await,
        };
        tracing::debug!(host = "athena", %method, path, status = response.status().as_u16(), "sim");
        Ok(response)
    }

    fn enter_request(&self) -> InFlightRequest<'_> {
        let mut data = self.data();
        data.stats.requests += 1;
        data.in_flight_requests += 1;
        data.stats.max_concurrent_requests = data.stats.max_concurrent_requests.max(data.in_flight_requests);
        InFlightRequest { state: self }
    }

    // -----------------------------------------------------------------------------------------------------------
    // OAuth token endpoint
    // -----------------------------------------------------------------------------------------------------------

    async fn token_endpoint(&self, req: Request<Incoming>, method: &Method, path: &str) -> SimResponse {
        if path != TOKEN_PATH {
            return gateway_not_registered();
        }
        if method != Method::POST {
            let mut response = empty_response(StatusCode::METHOD_NOT_ALLOWED);
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        // Client authentication is HTTP Basic (the JWT-assertion alternative is not simulated).
        let Some((client_id, client_secret)) = basic_credentials(req.headers()) else {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed.");
        };
        if !has_media_type(req.headers(), &["application/x-www-form-urlencoded"]) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "The body must be form-urlencoded.");
        }
        let body = match Limited::new(req.into_body(), MAX_TOKEN_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Unreadable body."),
        };
        let form = Query::parse(&String::from_utf8_lossy(&body));
        match form.get("grant_type") {
            None | Some("") => {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is required.");
            }
            Some("client_credentials") => {}
            Some(_) => {
                return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "Unsupported grant type.");
            }
        }
        if client_id != self.client_id || client_secret != self.client_secret {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed.");
        }
        let scope = form.get("scope").unwrap_or("").trim().to_owned();
        let scopes: Vec<&str> = scope.split_whitespace().collect();
        if scopes.is_empty() || !scopes.iter().all(|s| scope_ok(s)) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "The requested scope is invalid.");
        }
        let mdp = scopes.contains(&MDP_SCOPE);

        let token: String = rand::rng().sample_iter(&rand::distr::Alphanumeric).take(28).map(char::from).collect();
        let ttl = {
            let mut data = self.data();
            let now = Instant::now();
            while data.issued.front().is_some_and(|at| now.saturating_duration_since(*at) >= RATE_WINDOW) {
                data.issued.pop_front();
            }
            if data.issued.len() >= data.token_limit as usize {
                data.stats.tokens_refused_rate_limited += 1;
                // New tokens stay refused until the oldest issue in the window leaves it.
                let wait = data
                    .issued
                    .front()
                    .map(|at| RATE_WINDOW.saturating_sub(now.saturating_duration_since(*at)))
                    .unwrap_or(RATE_WINDOW);
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                drop(data);
                let mut response = athena_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests.",
                    Some("The limit of new access tokens per minute has been reached."),
                );
                if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return response;
            }
            data.issued.push_back(now);
            let ttl = data.token_ttl;
            // A huge TTL must not overflow Instant; cap it at roughly a century.
            let expiry = now
                .checked_add(ttl)
                .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
                .unwrap_or(now);
            data.tokens.retain(|_, info| info.expiry > now);
            data.tokens.insert(token.clone(), TokenInfo { expiry, mdp });
            ttl
        };
        // expires_in is a JSON string, as in athena's published token examples (athena.md §1).
        let body = json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": ttl.as_secs().to_string(),
            "scope": scope,
        });
        let mut response = json_response(StatusCode::OK, &body);
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    // -----------------------------------------------------------------------------------------------------------
    // API
    // -----------------------------------------------------------------------------------------------------------

    /// Checks the bearer; `Err` is the 401 to answer.
    fn check_bearer(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(Box::new(athena_error(StatusCode::UNAUTHORIZED, "Developer Inactive", None)));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
            .map(|(_, token)| token.trim());
        let Some(token) = token else {
            return Err(Box::new(athena_error(StatusCode::UNAUTHORIZED, "Developer Inactive", None)));
        };
        let data = self.data();
        match data.tokens.get(token) {
            Some(info) if Instant::now() < info.expiry => {
                if info.mdp {
                    Ok(())
                } else {
                    Err(Box::new(athena_error(StatusCode::UNAUTHORIZED, "Incorrect permissions.", Some("Bad auth."))))
                }
            }
            _ => Err(Box::new(athena_error(
                StatusCode::UNAUTHORIZED,
                "Invalid or expired access token.",
                Some("The access token is invalid or has expired."),
            ))),
        }
    }

    async fn route_api(&self, req: Request<Incoming>, method: &Method, path: &str) -> SimResponse {
        let Some(rest) = path.strip_prefix("/v1/") else {
            return gateway_not_registered();
        };
        if let Err(response) = self.check_bearer(req.headers()) {
            return *response;
        }
        let segments: Vec<&str> = rest.split('/').collect();
        let Some((practice, segments)) = segments.split_first() else {
            return invalid_practice();
        };
        if *practice != self.practice_id {
            return invalid_practice();
        }
        let (parts, body) = req.into_parts();
        let query = Query::parse(parts.uri.query().unwrap_or(""));
        let m = method.clone();
        match segments {
            ["ping"] => match m {
                Method::GET => json_response(StatusCode::OK, &json!({"Pong": "true"})),
                _ => method_not_allowed("GET"),
            },
            ["patients", pid] => match m {
                Method::GET => self.get_patient(pid, &query),
                _ => method_not_allowed("GET"),
            },
            ["patients", pid, "insurances"] => match m {
                Method::GET => self.list_insurances(pid, &query, path),
                _ => method_not_allowed("GET"),
            },
            ["patients", pid, "insurances", "prescription", "card"] => match m {
                Method::GET => self.get_image(pid, &Slot::PrescriptionCard, &query, &parts),
                // athena lists only POST ("add or update") for the prescription card.
                Method::POST => self.put_image(pid, Slot::PrescriptionCard, &parts, body).await,
                Method::DELETE => self.delete_image(pid, &Slot::PrescriptionCard),
                _ => method_not_allowed("GET, POST, DELETE"),
            },
            ["patients", pid, "insurances", insuranceid, "image"] => {
                if let Err(response) = self.check_insurance(pid, insuranceid) {
                    return *response;
                }
                let slot = Slot::InsuranceCard((*insuranceid).to_owned());
                self.image_methods(pid, slot, &m, &query, &parts, body).await
            }
            ["patients", pid, "photo"] => self.image_methods(pid, Slot::Photo, &m, &query, &parts, body).await,
            ["patients", pid, "photo", "thumbnail"] => match m {
                // The simulator cannot scale; the thumbnail is the stored photo.
                Method::GET => self.get_image(pid, &Slot::Photo, &query, &parts),
                _ => method_not_allowed("GET"),
            },
            ["patients", pid, "driverslicense"] => {
                self.image_methods(pid, Slot::DriversLicense, &m, &query, &parts, body).await
            }
            // athena's generic (older) list across classes; its generic create is not simulated.
            ["patients", pid, "documents"] => match m {
                Method::GET => self.list_documents(pid, DocumentList::Generic, &query, path),
                _ => method_not_allowed("GET"),
            },
            ["patients", pid, "documents", cls] => {
                let Some(class) = DocClass::from_segment(cls) else {
                    return invalid_path();
                };
                match m {
                    Method::GET => self.list_documents(pid, DocumentList::Class(class), &query, path),
                    Method::POST => self.create_document(pid, class, &parts, body).await,
                    _ => method_not_allowed("GET, POST"),
                }
            }
            ["patients", pid, "documents", cls, id] => {
                let (Some(class), Ok(id)) = (DocClass::from_segment(cls), id.parse::<u64>()) else {
                    return invalid_path();
                };
                match m {
                    Method::GET => self.get_document(pid, class, id, &query),
                    Method::PUT => self.update_document(pid, class, id, &parts, body).await,
                    Method::DELETE => self.delete_document(pid, class, id),
                    _ => method_not_allowed("GET, PUT, DELETE"),
                }
            }
            ["patients", pid, "documents", cls, id, "pages", page] => {
                let (Some(class), Ok(id), Ok(page)) =
                    (DocClass::from_segment(cls), id.parse::<u64>(), page.parse::<u64>())
                else {
                    return invalid_path();
                };
                match m {
                    Method::GET => self.get_page(pid, class, id, page),
                    _ => method_not_allowed("GET"),
                }
            }
            ["patients", pid, "documents", cls, id, "originaldocument"] => {
                let (Some(class), Ok(id)) = (DocClass::from_segment(cls), id.parse::<u64>()) else {
                    return invalid_path();
                };
                match m {
                    Method::GET => self.get_original(pid, class, id),
                    _ => method_not_allowed("GET"),
                }
            }
            _ => invalid_path(),
        }
    }

    fn check_patient(&self, pid: &str) -> Result<(), Refusal> {
        if pid == DEMO_PATIENT_ID || pid == UNASSIGNED_PATIENT_ID {
            Ok(())
        } else if pid.parse::<u64>().is_err() {
            Err(Box::new(invalid_data(&format!(
                "Expecting format integer for patientid, but value is '{}'.",
                clip(pid)
            ))))
        } else {
            Err(Box::new(athena_error(
                StatusCode::NOT_FOUND,
                "Patient not found.",
                Some("The patient ID does not exist."),
            )))
        }
    }

    /// `departmentid` must be an integer, a department of the practice, and one the patient is registered in.
    fn check_department(&self, department: &str) -> Result<(), Refusal> {
        let department = department.trim();
        if department.parse::<u64>().is_err() {
            return Err(Box::new(invalid_data(&format!(
                "Expecting format integer for departmentid, but value is '{}'.",
                clip(department)
            ))));
        }
        if department == DEMO_DEPARTMENT_ID {
            Ok(())
        } else if department == OTHER_DEPARTMENT_ID {
            let message = "The specified patient does not exist in that department.";
            Err(Box::new(athena_error(StatusCode::BAD_REQUEST, message, Some(message))))
        } else {
            Err(Box::new(athena_error(
                StatusCode::BAD_REQUEST,
                "Invalid departmentid.",
                Some("The department does not exist."),
            )))
        }
    }

    fn check_insurance(&self, pid: &str, insuranceid: &str) -> Result<(), Refusal> {
        self.check_patient(pid)?;
        if pid == DEMO_PATIENT_ID && insurances().iter().any(|ins| ins.id == insuranceid) {
            Ok(())
        } else {
            Err(Box::new(athena_error(
                StatusCode::NOT_FOUND,
                "Invalid insuranceid.",
                Some("The insurance does not exist."),
            )))
        }
    }

    fn get_patient(&self, pid: &str, query: &Query) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        let mut patient = json!({
            "patientid": pid,
            "firstname": "Jane",
            "lastname": "Sandbox",
            "sex": "F",
            "dob": "01/15/1980",
            "status": "active",
            "departmentid": DEMO_DEPARTMENT_ID,
            "primarydepartmentid": DEMO_DEPARTMENT_ID,
            "registrationdate": "03/02/2015",
            "primaryproviderid": "71",
            "countrycode3166": "US",
            "homephone": "6175551234",
        });
        if pid == UNASSIGNED_PATIENT_ID {
            for field in ["departmentid", "primarydepartmentid", "primaryproviderid"] {
                patient.as_object_mut().map(|p| p.remove(field));
            }
            patient["firstname"] = json!("John");
        }
        if !query.flag("omitphotoinformation") {
            let has_photo = self.data().images.contains_key(&(pid.to_owned(), Slot::Photo));
            patient["patientphoto"] = json!(if has_photo { "true" } else { "false" });
            if has_photo {
                patient["patientphotourl"] = json!(format!("/v1/{}/patients/{pid}/photo", self.practice_id));
            }
        }
        // Single-record GETs answer a JSON array (athena.md §5, Metriport takes [0]).
        json_response(StatusCode::OK, &json!([patient]))
    }

    fn list_insurances(&self, pid: &str, query: &Query, path: &str) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        let (limit, offset) = match paging(query, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX) {
            Ok(paging) => paging,
            Err(response) => return *response,
        };
        let show_cancelled = query.flag("showcancelled");
        let own = pid == DEMO_PATIENT_ID;
        let items: Vec<Value> = insurances()
            .iter()
            .filter(|ins| own && (show_cancelled || !ins.cancelled))
            .map(Insurance::render)
            .collect();
        let total = items.len();
        let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
        let mut body = json!({"insurances": page, "totalcount": total});
        add_paging_links(&mut body, path, query, limit, offset, total);
        json_response(StatusCode::OK, &body)
    }

    // -----------------------------------------------------------------------------------------------------------
    // Image slots (insurance card, prescription card, photo, driver's licence)
    // -----------------------------------------------------------------------------------------------------------

    async fn image_methods(
        &self,
        pid: &str,
        slot: Slot,
        method: &Method,
        query: &Query,
        parts: &Parts,
        body: Incoming,
    ) -> SimResponse {
        match *method {
            Method::GET => self.get_image(pid, &slot, query, parts),
            // POST and PUT do the same thing for images (athena.md §2).
            Method::POST | Method::PUT => self.put_image(pid, slot, parts, body).await,
            Method::DELETE => self.delete_image(pid, &slot),
            _ => method_not_allowed("GET, POST, PUT, DELETE"),
        }
    }

    fn get_image(&self, pid: &str, slot: &Slot, query: &Query, parts: &Parts) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        let Some(bytes) = self.data().images.get(&(pid.to_owned(), slot.clone())).cloned() else {
            return athena_error(StatusCode::NOT_FOUND, "No image found.", Some("There is no image for this patient."));
        };
        let wants_raw = query.flag("jpegoutput")
            || parts
                .headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|accept| accept.to_ascii_lowercase().contains("image/jpeg"));
        if wants_raw {
            let content_type = sniff_image(&bytes).unwrap_or("image/jpeg");
            let mut response = Response::new(Full::new(bytes));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            return response;
        }
        json_response(StatusCode::OK, &json!({"image": BASE64.encode(&bytes)}))
    }

    async fn put_image(&self, pid: &str, slot: Slot, parts: &Parts, body: Incoming) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        let form = match read_form(parts, body).await {
            Ok(form) => form,
            Err(response) => return *response,
        };
        let image = match form.binary("image") {
            Ok(Some(image)) => image,
            Ok(None) => return missing_fields(&["image"]),
            Err(response) => return *response,
        };
        if slot.takes_department()
            && let Some(department) = form.text("departmentid")
            && let Err(response) = self.check_department(department)
        {
            return *response;
        }
        if sniff_image(&image).is_none() {
            return invalid_data("The image could not be read; send a base64-encoded image.");
        }
        let stringly = slot.stringly();
        self.data().images.insert((pid.to_owned(), slot), image);
        json_response(StatusCode::OK, &success(stringly, true))
    }

    fn delete_image(&self, pid: &str, slot: &Slot) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        match self.data().images.remove(&(pid.to_owned(), slot.clone())) {
            Some(_) => json_response(StatusCode::OK, &success(slot.stringly(), true)),
            None => athena_error(StatusCode::NOT_FOUND, "No image found.", Some("There is no image for this patient.")),
        }
    }

    // -----------------------------------------------------------------------------------------------------------
    // Documents
    // -----------------------------------------------------------------------------------------------------------

    /// Both document lists: the class-specific `GET /patients/{pid}/documents/{cls}` and the generic
    /// `GET /patients/{pid}/documents`. Same checks (`departmentid` required), filters, paging and order (document id
    /// ascending); they differ only in the list key and the generic list's extra filters.
    fn list_documents(&self, pid: &str, list: DocumentList, query: &Query, path: &str) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
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
        let cls = match doc.class {
            DocClass::Admin => "admin",
            DocClass::ClinicalDocument => "clinicaldocument",
            DocClass::EncounterDocument => "encounterdocument",
            DocClass::ImagingResult => "imagingresult",
            DocClass::LabResult => "labresult",
            DocClass::MedicalRecord => "medicalrecord",
        };
        let base =
            format!("{}/v1/{}/patients/{}/documents/{cls}/{}", self.host_base, self.practice_id, doc.patient, doc.id);
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

    fn get_document(&self, pid: &str, class: DocClass, id: u64, query: &Query) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        let data = self.data();
        match data.documents.get(&id).filter(|doc| doc.class == class && doc.patient == pid) {
            // Single-record GETs answer a JSON array.
            Some(doc) => json_response(
                StatusCode::OK,
                &json!([self.render_document(doc, &data.pages, query.flag("showmetadata"))]),
            ),
            None => document_not_found(),
        }
    }

    async fn create_document(&self, pid: &str, class: DocClass, parts: &Parts, body: Incoming) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        let form = match read_form(parts, body).await {
            Ok(form) => form,
            Err(response) => return *response,
        };
        let mut missing = Vec::new();
        if form.text("departmentid").is_none() {
            missing.push("departmentid");
        }
        if form.text("documentsubclass").is_none() {
            missing.push("documentsubclass");
        }
        if !missing.is_empty() {
            return missing_fields(&missing);
        }
        let department = form.text("departmentid").unwrap_or_default().trim().to_owned();
        if let Err(response) = self.check_department(&department) {
            return *response;
        }
        let subclass = form.text("documentsubclass").unwrap_or_default().trim().to_ascii_uppercase();
        if !class.subclass_ok(&subclass) {
            return invalid_data(&format!("Invalid documentsubclass '{}' for this document class.", clip(&subclass)));
        }
        if let Some(kind) = form.text("attachmenttype")
            && !kind.trim().eq_ignore_ascii_case("PDF")
        {
            return athena_error(StatusCode::BAD_REQUEST, "Invalid attachment type id.", None);
        }
        let attachment = match form.binary("attachmentcontents") {
            Ok(attachment) => attachment,
            Err(response) => return *response,
        };
        let fields = match MetadataFields::parse(&form, class) {
            Ok(fields) => fields,
            Err(response) => return *response,
        };
        let filename = form.text("originalfilename").map(str::to_owned);
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
        let autoclose = form.text("autoclose").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let encounterid = form.text("encounterid").map(|e| e.trim().to_owned());
        let description = form.text("documentdata").map(|d| clip(d).to_owned()).unwrap_or_else(|| subclass.clone());
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
                encounterid,
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

    async fn update_document(&self, pid: &str, class: DocClass, id: u64, parts: &Parts, body: Incoming) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        let form = match read_form(parts, body).await {
            Ok(form) => form,
            Err(response) => return *response,
        };
        if form.has("attachmentcontents") || form.has("attachmenttype") {
            return invalid_data("The file of a document cannot be replaced; only its metadata can be updated.");
        }
        let fields = match MetadataFields::parse(&form, class) {
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

    fn delete_document(&self, pid: &str, class: DocClass, id: u64) -> SimResponse {
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

    fn get_page(&self, pid: &str, class: DocClass, id: u64, page_id: u64) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        let data = self.data();
        if !data.documents.get(&id).is_some_and(|doc| doc.class == class && doc.patient == pid) {
            return document_not_found();
        }
        match data.pages.get(&page_id).filter(|page| page.document == id) {
            Some(page) => bytes_response(page.bytes.clone(), page.content_type),
            None => athena_error(StatusCode::NOT_FOUND, "Page not found.", Some("The page does not exist.")),
        }
    }

    fn get_original(&self, pid: &str, class: DocClass, id: u64) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
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

/// Metadata fields accepted on create and update (athena.md §2d). Clinical-only fields are ignored for admin and
/// medical-record documents.
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
    fn parse(form: &FormBody, class: DocClass) -> Result<Self, Refusal> {
        let integer = |name: &str| -> Result<Option<u64>, Refusal> {
            match form.text(name) {
                None => Ok(None),
                Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                    refuse(invalid_data(&format!("Expecting format integer for {name}, but value is '{}'.", clip(v))))
                }),
            }
        };
        let date = |name: &str| -> Result<Option<String>, Refusal> {
            match form.text(name) {
                None => Ok(None),
                Some(v) if valid_date(v.trim()) => Ok(Some(v.trim().to_owned())),
                Some(v) => Err(Box::new(invalid_data(&format!("Expecting format date, but value is '{}'.", clip(v))))),
            }
        };
        let priority = match form.text("priority").map(str::trim) {
            None => None,
            Some("1") => Some(1),
            Some("2") => Some(2),
            Some(v) => {
                return Err(Box::new(invalid_data(&format!("priority must be 1 or 2, but value is '{}'.", clip(v)))));
            }
        };
        let mut fields = Self {
            documentdate: date("documentdate")?,
            documenttypeid: integer("documenttypeid")?,
            internalnote: form.text("internalnote").map(str::to_owned),
            priority,
            providerid: integer("providerid")?,
            ..Self::default()
        };
        if class.clinical() {
            fields.clinicalproviderid = integer("clinicalproviderid")?;
            fields.observationdate = date("observationdate")?;
            fields.observationtime = match form.text("observationtime").map(str::trim) {
                None => None,
                Some(v) if valid_time(v) => Some(v.to_owned()),
                Some(v) => {
                    return Err(Box::new(invalid_data(&format!(
                        "Expecting format hh24:mi, but value is '{}'.",
                        clip(v)
                    ))));
                }
            };
            fields.replaceinternalnote =
                form.text("replaceinternalnote").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        }
        Ok(fields)
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

    /// `update`: an internal note is appended to the existing one unless `replaceinternalnote=true`.
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

// ---------------------------------------------------------------------------------------------------------------
// Demo data
// ---------------------------------------------------------------------------------------------------------------

struct Insurance {
    id: &'static str,
    sequence: &'static str,
    package: u64,
    plan: &'static str,
    kind: &'static str,
    member: &'static str,
    eligibility: &'static str,
    expiration: &'static str,
    cancelled: bool,
}

impl Insurance {
    fn render(&self) -> Value {
        let mut value = json!({
            "insuranceid": self.id,
            "sequencenumber": self.sequence,
            "insurancepackageid": self.package,
            "insuranceplanname": self.plan,
            "insurancetype": self.kind,
            "insuranceidnumber": self.member,
            "eligibilitystatus": self.eligibility,
            "expirationdate": self.expiration,
            "insurancepolicyholder": "JANE SANDBOX",
            "insurancepolicyholderfirstname": "JANE",
            "insurancepolicyholderlastname": "SANDBOX",
            "relationshiptoinsured": "Self",
        });
        if self.cancelled {
            value["cancelled"] = json!("01/01/2023");
        }
        value
    }
}

fn insurances() -> [Insurance; 4] {
    [
        Insurance {
            id: DEMO_PRIMARY_INSURANCE_ID,
            sequence: "1",
            package: 46_001,
            plan: "BLUE CROSS BLUE SHIELD PPO",
            kind: "Group Policy",
            member: "XYZ123456789",
            eligibility: "Eligible",
            expiration: "12/31/2027",
            cancelled: false,
        },
        Insurance {
            id: DEMO_SECONDARY_INSURANCE_ID,
            sequence: "2",
            package: 46_002,
            plan: "AETNA DENTAL",
            kind: "Group Policy",
            member: "W987654321",
            eligibility: "Eligible",
            expiration: "06/30/2027",
            cancelled: false,
        },
        Insurance {
            id: DEMO_TERTIARY_INSURANCE_ID,
            sequence: "3",
            package: 46_004,
            plan: "VSP VISION CARE",
            kind: "Group Policy",
            member: "VSP445566778",
            eligibility: "Eligible",
            expiration: "09/30/2027",
            cancelled: false,
        },
        Insurance {
            id: DEMO_CANCELLED_INSURANCE_ID,
            sequence: "1",
            package: 46_003,
            plan: "UNITED HEALTHCARE CHOICE",
            kind: "Group Policy",
            member: "UHC000111222",
            eligibility: "Ineligible",
            expiration: "12/31/2022",
            cancelled: true,
        },
    ]
}

fn seed(data: &mut Data) {
    let png = Bytes::from(BASE64.decode(PNG_1X1_B64).unwrap_or_default());
    let pdf = Bytes::from_static(SEED_PDF);
    data.images.insert(
        (DEMO_PATIENT_ID.to_owned(), Slot::InsuranceCard(DEMO_PRIMARY_INSURANCE_ID.to_owned())),
        Bytes::from_static(SEED_JPEG),
    );
    data.images.insert((DEMO_PATIENT_ID.to_owned(), Slot::Photo), Bytes::from_static(SEED_JPEG));

    let admin_subclasses = [
        "ADMIN_INSURANCECARD",
        "ADMIN_CONSENT",
        "ADMIN_HIPAA",
        "ADMIN_REFERRAL",
        "ADMIN_INSURANCECARD",
        "ADMIN_LEGAL",
        "ADMIN_BILLING",
    ];
    let mut seeds: Vec<(u64, DocClass, &str, Option<&str>)> = DEMO_ADMIN_DOCUMENT_IDS
        .iter()
        .zip(admin_subclasses)
        .map(|(id, subclass)| (*id, DocClass::Admin, subclass, None))
        .collect();
    seeds.push((DEMO_DELETED_ADMIN_DOCUMENT_ID, DocClass::Admin, "ADMIN_CONSENT", None));
    seeds.push((DEMO_CLINICAL_DOCUMENT_IDS[0], DocClass::ClinicalDocument, "CLINICALDOCUMENT_CONSULTNOTE", None));
    seeds.push((DEMO_CLINICAL_DOCUMENT_IDS[1], DocClass::ClinicalDocument, "CLINICALDOCUMENT", None));
    seeds.push((DEMO_IMAGING_RESULT_IDS[0], DocClass::ImagingResult, "IMAGINGRESULT", None));
    seeds.push((DEMO_IMAGING_RESULT_IDS[1], DocClass::ImagingResult, "IMAGINGRESULT", None));
    seeds.push((DEMO_MEDICAL_RECORD_ID, DocClass::MedicalRecord, "MEDICALRECORD_HISTORICAL", None));
    seeds.push((DEMO_ENCOUNTER_DOCUMENT_ID, DocClass::EncounterDocument, "ENCOUNTERDOCUMENT_IMAGEDOC", Some("35")));
    seeds.push((DEMO_LAB_RESULT_ID, DocClass::LabResult, "LABRESULT", None));

    for (index, (id, class, subclass, encounter)) in seeds.into_iter().enumerate() {
        let offset = index as i64;
        let created = SEED_EPOCH + offset * 86_400;
        let page_id = data.next_page_id;
        data.next_page_id += 1;
        data.pages.insert(page_id, Page { document: id, ordering: 1, content_type: "image/png", bytes: png.clone() });
        // Every other seed is an upload that keeps its original PDF; the rest came in over an interface.
        let upload = index % 2 == 0;
        let deleted = (id == DEMO_DELETED_ADMIN_DOCUMENT_ID).then_some(created + 3600);
        data.documents.insert(
            id,
            Document {
                id,
                class,
                patient: DEMO_PATIENT_ID.to_owned(),
                department: DEMO_DEPARTMENT_ID.to_owned(),
                subclass: subclass.to_owned(),
                documenttypeid: Some(186_000 + offset as u64),
                description: subclass.replace('_', " ").to_lowercase(),
                status: if deleted.is_some() { "DELETED".to_owned() } else { "CLOSED".to_owned() },
                priority: 2,
                providerid: Some(71),
                clinicalproviderid: class.clinical().then_some(71),
                internalnote: Some(format!("Seeded document {id}")),
                documentdate: Some(fmt_date(created)),
                observationdate: class.clinical().then(|| fmt_date(created)),
                observationtime: class.clinical().then(|| "09:30".to_owned()),
                encounterid: encounter.map(str::to_owned),
                source: if upload { "UPLOAD" } else { "INTERFACE" },
                route: if upload { "WEBSERVICE" } else { "INTERFACE" },
                created,
                modified: deleted.unwrap_or(created),
                deleted,
                pages: vec![page_id],
                original: upload.then(|| Original {
                    bytes: pdf.clone(),
                    content_type: "application/pdf",
                    filename: format!("seed{id}"),
                }),
            },
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Body parsing
// ---------------------------------------------------------------------------------------------------------------

/// Reads a write body. Form-urlencoded and multipart bodies are parsed; any other content type (JSON, none) is read
/// as "no fields", which is what athena makes of it, so required fields then come back as `missingfields`.
async fn read_form(parts: &Parts, body: Incoming) -> Result<FormBody, Refusal> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<LengthLimitError>() => {
            return Err(Box::new(plain_response(StatusCode::PAYLOAD_TOO_LARGE, "Request entity too large.")));
        }
        Err(_) => return Err(Box::new(invalid_data("The request body could not be read."))),
    };
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let mut form = FormBody::default();
    match media_type.as_str() {
        "application/x-www-form-urlencoded" => {
            for (key, value) in form_urlencoded::parse(&bytes) {
                form.text.insert(key.to_ascii_lowercase(), value.into_owned());
            }
        }
        "multipart/form-data" => {
            let Some(boundary) = content_type.split(';').skip(1).find_map(|param| {
                let (name, value) = param.split_once('=')?;
                name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim().trim_matches('"').to_owned())
            }) else {
                return Err(Box::new(invalid_data("The multipart body has no boundary.")));
            };
            if !parse_multipart(&bytes, &boundary, &mut form) {
                return Err(Box::new(invalid_data("The multipart body could not be parsed.")));
            }
        }
        _ => {}
    }
    Ok(form)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > haystack.len() {
        return None;
    }
    haystack[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Minimal multipart/form-data parser: named parts with a filename (or a non-text content type) are files (raw
/// bytes); others are text fields. Returns false on a malformed body.
fn parse_multipart(body: &[u8], boundary: &str, form: &mut FormBody) -> bool {
    if boundary.is_empty() {
        return false;
    }
    let delimiter = format!("--{boundary}").into_bytes();
    let Some(mut start) = find(body, &delimiter, 0) else {
        return false;
    };
    loop {
        let after = start + delimiter.len();
        if body.get(after..after + 2) == Some(b"--") {
            return true;
        }
        let Some(next) = find(body, &delimiter, after) else {
            return false;
        };
        let part = &body[after..next];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let Some(split) = find(part, b"\r\n\r\n", 0) else {
            return false;
        };
        let headers = String::from_utf8_lossy(&part[..split]);
        let content = &part[split + 4..];
        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for line in headers.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            if key.trim().eq_ignore_ascii_case("content-disposition") {
                for param in value.split(';').skip(1) {
                    if let Some((k, v)) = param.split_once('=') {
                        let v = v.trim().trim_matches('"').to_owned();
                        match k.trim().to_ascii_lowercase().as_str() {
                            "name" => name = Some(v.to_ascii_lowercase()),
                            "filename" => filename = Some(v),
                            _ => {}
                        }
                    }
                }
            } else if key.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(value.trim().to_ascii_lowercase());
            }
        }
        let Some(name) = name else {
            return false;
        };
        let is_file = filename.is_some() || content_type.as_ref().is_some_and(|ct| !ct.starts_with("text/"));
        if is_file {
            form.files.insert(name, Bytes::copy_from_slice(content));
        } else {
            form.text.insert(name, String::from_utf8_lossy(content).into_owned());
        }
        start = next;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------------------------

fn scope_ok(scope: &str) -> bool {
    if scope == MDP_SCOPE {
        return true;
    }
    // FHIR system scopes such as `system/Patient.read` or `system/Media.read`.
    let Some(rest) = scope.strip_prefix("system/") else {
        return false;
    };
    let Some((resource, access)) = rest.split_once('.') else {
        return false;
    };
    !resource.is_empty()
        && (resource == "*" || resource.chars().all(|c| c.is_ascii_alphabetic()))
        && matches!(access, "read" | "write" | "*")
}

fn paging(query: &Query, default: usize, max: usize) -> Result<(usize, usize), Refusal> {
    let limit = match query.get("limit").map(str::trim) {
        None | Some("") => default,
        Some(v) => match v.parse::<usize>() {
            Ok(0) => default,
            Ok(n) => n.min(max),
            Err(_) => {
                return Err(Box::new(invalid_data(&format!(
                    "Expecting format integer for limit, but value is '{}'.",
                    clip(v)
                ))));
            }
        },
    };
    let offset = match query.get("offset").map(str::trim) {
        None | Some("") => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                return Err(Box::new(invalid_data(&format!(
                    "Expecting format integer for offset, but value is '{}'.",
                    clip(v)
                ))));
            }
        },
    };
    Ok((limit, offset))
}

/// Adds athena's relative `next` / `previous` links: the original query with upper-cased parameter names (as in
/// athena's fixtures), then a lower-case `offset`.
fn add_paging_links(body: &mut Value, path: &str, query: &Query, limit: usize, offset: usize, total: usize) {
    let link = |offset: usize| {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (key, value) in &query.pairs {
            if !key.eq_ignore_ascii_case("offset") {
                serializer.append_pair(&key.to_ascii_uppercase(), value);
            }
        }
        serializer.append_pair("offset", &offset.to_string());
        format!("{path}?{}", serializer.finish())
    };
    if offset.saturating_add(limit) < total {
        body["next"] = json!(link(offset + limit));
    }
    if offset > 0 {
        body["previous"] = json!(link(offset.saturating_sub(limit)));
    }
}

fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
        Some("image/png")
    } else if bytes.starts_with(b"GIF8") {
        Some("image/gif")
    } else if bytes.starts_with(b"BM") {
        Some("image/bmp")
    } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        Some("image/tiff")
    } else {
        None
    }
}

/// At most 64 characters of caller input, for echoing in error messages.
fn clip(value: &str) -> &str {
    match value.char_indices().nth(64) {
        Some((index, _)) => &value[..index],
        None => value,
    }
}

fn valid_date(value: &str) -> bool {
    let b = value.as_bytes();
    if b.len() != 10 || b[2] != b'/' || b[5] != b'/' {
        return false;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let s = value.get(range)?;
        if s.bytes().all(|c| c.is_ascii_digit()) { s.parse().ok() } else { None }
    };
    matches!((digits(0..2), digits(3..5), digits(6..10)), (Some(m), Some(d), Some(_)) if (1..=12).contains(&m) && (1..=31).contains(&d))
}

fn valid_time(value: &str) -> bool {
    let Some((h, m)) = value.split_once(':') else {
        return false;
    };
    h.len() == 2
        && m.len() == 2
        && h.bytes().chain(m.bytes()).all(|c| c.is_ascii_digit())
        && h.parse::<u32>().is_ok_and(|h| h < 24)
        && m.parse::<u32>().is_ok_and(|m| m < 60)
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The calendar date of an instant in athena's (fixed Eastern) local time.
fn local_date(secs: i64) -> CivilDate {
    civil_from_days(secs.saturating_add(UTC_OFFSET_SECS).div_euclid(86_400))
}

/// `MM/DD/YYYY` in athena's (fixed Eastern) local time.
fn fmt_date(secs: i64) -> String {
    let (y, m, d) = local_date(secs);
    format!("{m:02}/{d:02}/{y:04}")
}

/// A request date in athena's `MM/DD/YYYY` format; `None` when it is malformed.
fn parse_date(value: &str) -> Option<CivilDate> {
    if !valid_date(value) {
        return None;
    }
    Some((value.get(6..10)?.parse().ok()?, value.get(0..2)?.parse().ok()?, value.get(3..5)?.parse().ok()?))
}

/// ISO-8601 with offset, e.g. `2020-11-17T12:33:37-05:00`.
fn fmt_datetime(secs: i64) -> String {
    let local = secs.saturating_add(UTC_OFFSET_SECS);
    let (y, m, d) = civil_from_days(local.div_euclid(86_400));
    let rem = local.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{UTC_OFFSET_TEXT}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `{"success": true}` or `{"success": "true"}`.
fn success(stringly: bool, ok: bool) -> Value {
    if stringly { json!({"success": ok.to_string()}) } else { json!({"success": ok}) }
}

/// A rejected class-specific write: 200 with `success` false and an `errormessage`.
fn failure(stringly: bool, message: &str) -> Value {
    let mut body = success(stringly, false);
    body["errormessage"] = json!(message);
    body
}

fn plain_response(status: StatusCode, text: &'static str) -> SimResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn bytes_response(bytes: Bytes, content_type: &'static str) -> SimResponse {
    let mut response = Response::new(Full::new(bytes));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// athenaNet's error body: `error`, usually `detailedmessage` (athena.md §3.1).
fn athena_error(status: StatusCode, error: &str, detailed: Option<&str>) -> SimResponse {
    let mut body = json!({ "error": error });
    if let Some(detailed) = detailed {
        body["detailedmessage"] = json!(detailed);
    }
    json_response(status, &body)
}

fn missing_fields(fields: &[&str]) -> SimResponse {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({
            "error": "Additional fields are required.",
            "detailedmessage": format!("The following fields are required: {}.", fields.join(", ")),
            "missingfields": fields,
        }),
    )
}

fn invalid_data(detail: &str) -> SimResponse {
    athena_error(StatusCode::BAD_REQUEST, "The data provided is invalid.", Some(detail))
}

fn invalid_practice() -> SimResponse {
    athena_error(StatusCode::NOT_FOUND, "Invalid practice.", Some("The practice ID does not exist."))
}

fn invalid_path() -> SimResponse {
    athena_error(StatusCode::NOT_FOUND, "Invalid path.", Some("The requested resource does not exist."))
}

fn document_not_found() -> SimResponse {
    athena_error(StatusCode::NOT_FOUND, "Document not found.", Some("The document does not exist."))
}

fn method_not_allowed(allow: &'static str) -> SimResponse {
    let mut response = athena_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.", None);
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// What athena's API gateway answers for paths it does not route (plain text, no JSON).
fn gateway_not_registered() -> SimResponse {
    plain_response(StatusCode::NOT_FOUND, "Service not registered with API gateway.")
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> SimResponse {
    let mut response = json_response(status, &json!({ "error": error, "error_description": description }));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The response a `FaultAction::Status` produces, shaped like athena's real errors.
fn fault_response(code: u16, token_endpoint: bool) -> SimResponse {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if token_endpoint {
        match status.as_u16() {
            400 => oauth_error(status, "invalid_request", "The request is invalid."),
            401 => oauth_error(status, "invalid_client", "Client authentication failed."),
            429 => athena_error(
                status,
                "Too many requests.",
                Some("The limit of new access tokens per minute has been reached."),
            ),
            _ => empty_response(status),
        }
    } else {
        match status.as_u16() {
            400 => invalid_data("Injected fault."),
            401 => athena_error(
                status,
                "Invalid or expired access token.",
                Some("The access token is invalid or has expired."),
            ),
            403 => {
                // The throttling meaning of 403: Mashery-style HTML page and error-code header.
                let mut response = Response::new(Full::new(Bytes::from_static(b"<h1>Developer Over Qps</h1>")));
                *response.status_mut() = status;
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
                headers.insert("x-mashery-error-code", HeaderValue::from_static("ERR_403_DEVELOPER_OVER_QPS"));
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            404 => invalid_practice(),
            409 => athena_error(status, "Conflict.", Some("The request conflicts with the current state.")),
            429 => athena_error(status, "Too many requests.", None),
            500 => athena_error(status, "An internal error occurred.", None),
            // Gateway-level errors carry no JSON body (athena.md §3.1).
            502..=504 => empty_response(status),
            _ => athena_error(status, status.canonical_reason().unwrap_or("Error"), None),
        }
    };
    if matches!(status.as_u16(), 429 | 503) && !response.headers().contains_key(header::RETRY_AFTER) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};

    const FORM: &str = "application/x-www-form-urlencoded";
    const PDF: &[u8] = b"%PDF-1.7\n% test document\n%%EOF\n";
    const JPEG: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00card-front-bytes\xff\xd9";

    fn http() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().expect("reqwest client")
    }

    async fn start() -> (AthenaSimHandle, reqwest::Client) {
        (AthenaSim::start(AthenaSimConfig::default()).await.expect("sim starts"), http())
    }

    fn form(pairs: &[(&str, &str)]) -> String {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            serializer.append_pair(k, v);
        }
        serializer.finish()
    }

    async fn token_request(sim: &AthenaSimHandle, http: &reqwest::Client) -> reqwest::Response {
        http.post(sim.token_url())
            .basic_auth("demo-athena-client", Some("demo-athena-secret"))
            .header(CONTENT_TYPE, FORM)
            .body(form(&[("grant_type", "client_credentials"), ("scope", MDP_SCOPE)]))
            .send()
            .await
            .expect("token request")
    }

    async fn token(sim: &AthenaSimHandle, http: &reqwest::Client) -> String {
        let response = token_request(sim, http).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        body["access_token"].as_str().expect("access_token").to_owned()
    }

    async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn get(http: &reqwest::Client, url: &str, token: &str) -> (StatusCode, Value) {
        json_of(http.get(url).bearer_auth(token).send().await.expect("get")).await
    }

    async fn send_form(
        http: &reqwest::Client,
        method: Method,
        url: &str,
        token: &str,
        pairs: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let response = http
            .request(method, url)
            .bearer_auth(token)
            .header(CONTENT_TYPE, FORM)
            .body(form(pairs))
            .send()
            .await
            .expect("write");
        json_of(response).await
    }

    fn docs_url(sim: &AthenaSimHandle, class: &str) -> String {
        format!("{}/patients/{DEMO_PATIENT_ID}/documents/{class}", sim.base_url())
    }

    #[tokio::test]
    async fn token_flow_uses_basic_auth_and_limits_new_tokens_per_minute() {
        let (sim, http) = start().await;
        assert!(sim.base_url().ends_with("/v1/195900"));
        assert!(sim.token_url().ends_with("/oauth2/v1/token"));
        let good = form(&[("grant_type", "client_credentials"), ("scope", MDP_SCOPE)]);

        // Credentials in the body instead of HTTP Basic are not client authentication.
        let body = format!("{good}&client_id=demo-athena-client&client_secret=demo-athena-secret");
        let r = http.post(sim.token_url()).header(CONTENT_TYPE, FORM).body(body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = http
            .post(sim.token_url())
            .basic_auth("demo-athena-client", Some("wrong"))
            .header(CONTENT_TYPE, FORM)
            .body(good.clone())
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(r).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "invalid_client");
        // JSON body, wrong grant, missing scope.
        let r = http
            .post(sim.token_url())
            .basic_auth("demo-athena-client", Some("demo-athena-secret"))
            .header(CONTENT_TYPE, "application/json")
            .body(r#"{"grant_type":"client_credentials"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        for bad in
            [form(&[("grant_type", "password"), ("scope", MDP_SCOPE)]), form(&[("grant_type", "client_credentials")])]
        {
            let r = http
                .post(sim.token_url())
                .basic_auth("demo-athena-client", Some("demo-athena-secret"))
                .header(CONTENT_TYPE, FORM)
                .body(bad)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        }

        // Five new tokens in a minute are fine; the sixth is refused with 429 and athena's error body.
        for _ in 0..5 {
            let (status, body) = json_of(token_request(&sim, &http).await).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body["token_type"], "Bearer");
            assert_eq!(body["expires_in"], "3600");
            assert_eq!(body["scope"], MDP_SCOPE);
        }
        let r = token_request(&sim, &http).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = r.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry_after));
        let (_, body) = json_of(r).await;
        assert_eq!(body["error"], "Too many requests.");
        assert!(body["detailedmessage"].is_string());
        let stats = sim.stats();
        assert_eq!(stats.token_requests, 11);
        assert_eq!(stats.tokens_refused_rate_limited, 1);
        assert_eq!(stats.requests, 0);
    }

    #[tokio::test]
    async fn api_requires_a_valid_unexpired_bearer() {
        let (sim, http) = start().await;
        let ping = format!("{}/ping", sim.base_url());

        let (status, body) = json_of(http.get(&ping).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "Developer Inactive");
        let (status, body) = get(&http, &ping, "not-a-token").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error"].is_string() && body["detailedmessage"].is_string());

        let token = token(&sim, &http).await;
        let (status, body) = get(&http, &ping, &token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"Pong": "true"}));

        // Unknown practice and paths outside the API.
        let other = format!("{}/v1/999999/ping", sim.host_url());
        let (status, body) = get(&http, &other, &token).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "Invalid practice.");
        let r = http.get(format!("{}/v2/ping", sim.host_url())).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.text().await.unwrap(), "Service not registered with API gateway.");

        sim.expire_all_tokens();
        let (status, _) = get(&http, &ping, &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        sim.set_token_ttl(Duration::from_millis(150));
        let short = super::tests::token(&sim, &http).await;
        assert_eq!(get(&http, &ping, &short).await.0, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(get(&http, &ping, &short).await.0, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn patient_lookup_gives_department_and_primary_insurance() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let (status, body) = get(&http, &format!("{}/patients/1234", sim.base_url()), &token).await;
        assert_eq!(status, StatusCode::OK);
        let patient = &body[0];
        assert_eq!(patient["patientid"], "1234");
        assert_eq!(patient["primarydepartmentid"], "1");
        assert_eq!(patient["patientphoto"], "true");
        let (_, body) =
            get(&http, &format!("{}/patients/1234?omitphotoinformation=true", sim.base_url()), &token).await;
        assert!(body[0].get("patientphoto").is_none());
        let (status, _) = get(&http, &format!("{}/patients/4321", sim.base_url()), &token).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (status, body) = get(&http, &format!("{}/patients/1234/insurances", sim.base_url()), &token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["totalcount"], 3);
        let primary = &body["insurances"][0];
        assert_eq!(primary["insuranceid"], DEMO_PRIMARY_INSURANCE_ID);
        assert_eq!(primary["sequencenumber"], "1");
        assert_eq!(body["insurances"][1]["insuranceid"], DEMO_SECONDARY_INSURANCE_ID);
        assert_eq!(body["insurances"][2]["insuranceid"], DEMO_TERTIARY_INSURANCE_ID);
        let (_, body) =
            get(&http, &format!("{}/patients/1234/insurances?showcancelled=true", sim.base_url()), &token).await;
        assert_eq!(body["totalcount"], 4);
    }

    #[tokio::test]
    async fn writes_are_form_encoded_only_and_need_departmentid() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let url = docs_url(&sim, "admin");

        // A JSON body is not read as fields: the required ones are reported missing.
        let r = http
            .post(&url)
            .bearer_auth(&token)
            .header(CONTENT_TYPE, "application/json")
            .body(r#"{"departmentid":"1","documentsubclass":"ADMIN_CONSENT"}"#)
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(r).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "Additional fields are required.");
        assert_eq!(body["missingfields"], json!(["departmentid", "documentsubclass"]));
        assert!(body["detailedmessage"].is_string());

        // departmentid is required on creates and lists.
        let (status, body) =
            send_form(&http, Method::POST, &url, &token, &[("documentsubclass", "ADMIN_CONSENT")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["missingfields"], json!(["departmentid"]));
        let (status, body) = get(&http, &url, &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["missingfields"], json!(["departmentid"]));

        // A department the patient is not registered in, and a malformed one.
        let (status, body) = get(&http, &format!("{url}?departmentid=2"), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "The specified patient does not exist in that department.");
        let (status, body) = get(&http, &format!("{url}?departmentid=abc"), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "The data provided is invalid.");

        // The same create as a form works.
        let pairs = [("departmentid", "1"), ("documentsubclass", "ADMIN_CONSENT")];
        let (status, body) = send_form(&http, Method::POST, &url, &token, &pairs).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], "true");
        assert_eq!(body["adminid"], FIRST_CREATED_DOCUMENT_ID.to_string());
        // Bad date and attachment type are 400s.
        let (status, body) = send_form(
            &http,
            Method::POST,
            &url,
            &token,
            &[("departmentid", "1"), ("documentsubclass", "ADMIN_CONSENT"), ("documentdate", "2024-01-31")],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "The data provided is invalid.");
        let (status, body) = send_form(
            &http,
            Method::POST,
            &url,
            &token,
            &[("departmentid", "1"), ("documentsubclass", "ADMIN_CONSENT"), ("attachmenttype", "PNG")],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "Invalid attachment type id.");
    }

    #[tokio::test]
    async fn rejected_writes_answer_200_with_success_false() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let not_pdf = BASE64.encode(JPEG);

        // Admin: success is the string "false".
        let (status, body) = send_form(
            &http,
            Method::POST,
            &docs_url(&sim, "admin"),
            &token,
            &[("departmentid", "1"), ("documentsubclass", "ADMIN_INSURANCECARD"), ("attachmentcontents", &not_pdf)],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], "false");
        assert!(body["errormessage"].as_str().unwrap().contains("PDF"));

        // Clinical document: success is a boolean.
        let (status, body) = send_form(
            &http,
            Method::POST,
            &docs_url(&sim, "clinicaldocument"),
            &token,
            &[("departmentid", "1"), ("documentsubclass", "CLINICALDOCUMENT"), ("attachmentcontents", &not_pdf)],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], false);
        assert_eq!(sim.stats().creates, 0);

        // Deleting an already deleted document.
        let url = format!("{}/{DEMO_DELETED_ADMIN_DOCUMENT_ID}", docs_url(&sim, "admin"));
        let (status, body) = json_of(http.delete(&url).bearer_auth(&token).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], "false");
        assert!(body["errormessage"].is_string());
    }

    #[tokio::test]
    async fn document_create_read_update_soft_delete() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let url = docs_url(&sim, "clinicaldocument");
        let pdf = BASE64.encode(PDF);

        let (status, body) = send_form(
            &http,
            Method::POST,
            &url,
            &token,
            &[
                ("departmentid", "1"),
                ("documentsubclass", "CLINICALDOCUMENT_CONSULTNOTE"),
                ("attachmentcontents", &pdf),
                ("attachmenttype", "PDF"),
                ("internalnote", "first"),
                ("observationdate", "01/31/2024"),
                ("observationtime", "13:45"),
                ("originalfilename", "consult"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], true);
        let id = body["clinicaldocumentid"].as_u64().expect("numeric id");
        assert_eq!(sim.stats().creates, 1);
        let doc_url = format!("{url}/{id}");

        let (status, body) = get(&http, &format!("{doc_url}?showmetadata=true"), &token).await;
        assert_eq!(status, StatusCode::OK);
        let doc = &body[0];
        assert_eq!(doc["clinicaldocumentid"], id);
        assert_eq!(doc["documentid"], id.to_string());
        assert_eq!(doc["departmentid"], "1");
        assert_eq!(doc["status"], "REVIEW");
        assert_eq!(doc["priority"], 2);
        assert_eq!(doc["internalnote"], "first");
        assert_eq!(doc["filetype"], "PDF");
        assert_eq!(doc["filesize"], PDF.len());
        assert!(doc["createddate"].as_str().unwrap().len() == 10);
        assert!(doc["createddatetime"].as_str().unwrap().ends_with("-05:00"));
        let page = &doc["pages"][0];
        assert_eq!(page["pageordering"], 1);
        assert_eq!(page["contenttype"], "application/pdf");
        let href = page["href"].as_str().unwrap();
        assert!(href.starts_with(&sim.base_url()));
        let r = http.get(href).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.bytes().await.unwrap().as_ref(), PDF);
        let r = http.get(format!("{doc_url}/originaldocument")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), PDF);

        // Metadata update: the note is appended; the file cannot be replaced.
        let (status, body) =
            send_form(&http, Method::PUT, &doc_url, &token, &[("internalnote", "second"), ("priority", "1")]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], true);
        let (_, body) = get(&http, &doc_url, &token).await;
        assert_eq!(body[0]["internalnote"], "first second");
        assert_eq!(body[0]["priority"], 1);
        let (status, _) = send_form(&http, Method::PUT, &doc_url, &token, &[("attachmentcontents", &pdf)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = send_form(&http, Method::PUT, &doc_url, &token, &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // Soft delete: still readable by id, hidden from lists unless showdeleted=true.
        let (status, body) = json_of(http.delete(&doc_url).bearer_auth(&token).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], true);
        let (status, body) = get(&http, &doc_url, &token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body[0]["status"], "DELETED");
        assert!(body[0]["deleteddatetime"].is_string());
        let ids = |body: &Value| -> Vec<u64> {
            body["clinicaldocuments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["clinicaldocumentid"].as_u64().unwrap())
                .collect()
        };
        let (_, body) = get(&http, &format!("{url}?departmentid=1"), &token).await;
        assert_eq!(ids(&body), DEMO_CLINICAL_DOCUMENT_IDS.to_vec());
        let (_, body) = get(&http, &format!("{url}?departmentid=1&showdeleted=true"), &token).await;
        assert!(ids(&body).contains(&id));
        // Updating a deleted document is a rejected write.
        let (status, body) = send_form(&http, Method::PUT, &doc_url, &token, &[("priority", "2")]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], false);

        // Unknown ids, and ids of another class.
        let (status, _) = get(&http, &format!("{url}/999"), &token).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = get(&http, &format!("{}/{}", docs_url(&sim, "admin"), id), &token).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn insurance_card_image_upload_and_read() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let url = format!("{}/patients/1234/insurances/{DEMO_SECONDARY_INSURANCE_ID}/image", sim.base_url());

        let (status, _) = get(&http, &url, &token).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body) = send_form(&http, Method::POST, &url, &token, &[("departmentid", "1")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["missingfields"], json!(["image"]));
        let (status, _) = send_form(&http, Method::POST, &url, &token, &[("image", "%%%not-base64")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let encoded = BASE64.encode(JPEG);
        let (status, body) =
            send_form(&http, Method::POST, &url, &token, &[("image", &encoded), ("departmentid", "1")]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"success": true}));
        let (status, body) = get(&http, &url, &token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"image": encoded}));
        let r = http.get(format!("{url}?jpegoutput=true")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.headers()[CONTENT_TYPE], "image/jpeg");
        assert_eq!(r.bytes().await.unwrap().as_ref(), JPEG);
        let r = http.get(&url).bearer_auth(&token).header(ACCEPT, "image/jpeg").send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), JPEG);

        // The primary insurance has a seeded card; unknown insurances are 404.
        let primary = format!("{}/patients/1234/insurances/{DEMO_PRIMARY_INSURANCE_ID}/image", sim.base_url());
        assert_eq!(get(&http, &primary, &token).await.0, StatusCode::OK);
        let unknown = format!("{}/patients/1234/insurances/1111/image", sim.base_url());
        assert_eq!(get(&http, &unknown, &token).await.0, StatusCode::NOT_FOUND);

        let (status, body) = json_of(http.delete(&url).bearer_auth(&token).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], true);
        assert_eq!(get(&http, &url, &token).await.0, StatusCode::NOT_FOUND);

        // Photo and prescription card answer success as a string; the card has no PUT.
        let rx = format!("{}/patients/1234/insurances/prescription/card", sim.base_url());
        let (status, body) = send_form(&http, Method::POST, &rx, &token, &[("image", &encoded)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], "true");
        let (status, _) = send_form(&http, Method::PUT, &rx, &token, &[("image", &encoded)]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let dl = format!("{}/patients/1234/driverslicense", sim.base_url());
        let (status, body) = send_form(&http, Method::PUT, &dl, &token, &[("image", &encoded)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], true);
    }

    #[tokio::test]
    async fn multipart_image_upload_carries_raw_bytes() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let url = format!("{}/patients/1234/photo", sim.base_url());
        let mut body = Vec::new();
        body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"departmentid\"\r\n\r\n1\r\n");
        body.extend_from_slice(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n",
        );
        body.extend_from_slice(JPEG);
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        let r = http
            .post(&url)
            .bearer_auth(&token)
            .header(CONTENT_TYPE, "multipart/form-data; boundary=XyZ")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(r).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], "true");
        let (_, body) = get(&http, &url, &token).await;
        assert_eq!(body["image"], BASE64.encode(JPEG));
    }

    #[tokio::test]
    async fn document_lists_page_through_relative_next_links() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let mut url = format!("{}?departmentid=1&limit=3", docs_url(&sim, "admin"));
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let (status, body) = get(&http, &url, &token).await;
            assert_eq!(status, StatusCode::OK);
            pages += 1;
            assert_eq!(body["totalcount"], 7);
            let items = body["admins"].as_array().unwrap();
            assert!(items.len() <= 3);
            for item in items {
                assert_eq!(item["priority"], "2");
                assert!(item["adminid"].is_u64());
                assert!(item["documentid"].is_string());
                seen.push(item["adminid"].as_u64().unwrap());
            }
            if pages > 1 {
                assert!(body["previous"].is_string());
            }
            match body["next"].as_str() {
                Some(next) => {
                    assert!(next.starts_with("/v1/195900/patients/1234/documents/admin?"), "{next}");
                    assert!(next.contains("DEPARTMENTID=1") && next.contains("LIMIT=3"), "{next}");
                    url = format!("{}{next}", sim.host_url());
                }
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, DEMO_ADMIN_DOCUMENT_IDS.to_vec());

        let (_, body) =
            get(&http, &format!("{}?departmentid=1&showdeleted=true", docs_url(&sim, "admin")), &token).await;
        assert_eq!(body["totalcount"], 8);
        assert!(body.get("next").is_none());
        let (_, body) = get(
            &http,
            &format!("{}?departmentid=1&documentsubclass=ADMIN_INSURANCECARD", docs_url(&sim, "admin")),
            &token,
        )
        .await;
        assert_eq!(body["totalcount"], 2);
        let (status, _) = get(&http, &format!("{}?departmentid=1&limit=x", docs_url(&sim, "admin")), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    fn generic_docs_url(sim: &AthenaSimHandle) -> String {
        format!("{}/patients/{DEMO_PATIENT_ID}/documents", sim.base_url())
    }

    /// `documentid`s of a generic list body, checking each item carries the string id and the integer class id.
    fn generic_ids(body: &Value) -> Vec<u64> {
        body["documents"]
            .as_array()
            .expect("documents array")
            .iter()
            .map(|doc| {
                let id: u64 = doc["documentid"].as_str().expect("documentid is a string").parse().unwrap();
                let class = DocClass::from_documentclass(doc["documentclass"].as_str().unwrap()).unwrap();
                assert_eq!(doc[class.id_field()].as_u64(), Some(id), "{doc}");
                id
            })
            .collect()
    }

    /// `MM/DD/YYYY` as a chronologically ordered tuple.
    fn ymd(date: &str) -> (u32, u32, u32) {
        let parts: Vec<u32> = date.split('/').map(|p| p.parse().unwrap()).collect();
        (parts[2], parts[0], parts[1])
    }

    #[tokio::test]
    async fn generic_document_list_filters_by_documentclass() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let url = generic_docs_url(&sim);

        let (status, body) =
            get(&http, &format!("{url}?departmentid=1&documentclass=ADMIN,CLINICALDOCUMENT"), &token).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.get("admins").is_none());
        let items = body["documents"].as_array().unwrap();
        assert!(items.iter().all(|d| matches!(d["documentclass"].as_str(), Some("ADMIN" | "CLINICALDOCUMENT"))));
        let mut expected = DEMO_ADMIN_DOCUMENT_IDS.to_vec();
        expected.extend(DEMO_CLINICAL_DOCUMENT_IDS);
        // Same order as the class-specific lists: document id ascending.
        assert_eq!(generic_ids(&body), expected);
        assert_eq!(body["totalcount"], expected.len());
        assert!(items.iter().filter(|d| d["documentclass"] == "ADMIN").all(|d| d["priority"] == "2"));
        assert!(items.iter().filter(|d| d["documentclass"] == "CLINICALDOCUMENT").all(|d| d["priority"] == 2));

        // Class names are case-insensitive; without documentclass every class is listed.
        let (_, body) = get(&http, &format!("{url}?departmentid=1&documentclass=imagingresult"), &token).await;
        assert_eq!(generic_ids(&body), DEMO_IMAGING_RESULT_IDS.to_vec());
        let (_, body) = get(&http, &format!("{url}?departmentid=1&showmetadata=true"), &token).await;
        let all = generic_ids(&body);
        assert_eq!(all.len(), 14);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        for id in [DEMO_MEDICAL_RECORD_ID, DEMO_ENCOUNTER_DOCUMENT_ID, DEMO_LAB_RESULT_ID] {
            assert!(all.contains(&id), "{id}");
        }
        assert_eq!(body["documents"][0]["filetype"], "PDF");
        // The shared filters work here too.
        let (_, body) = get(&http, &format!("{url}?departmentid=1&encounterid=35"), &token).await;
        assert_eq!(generic_ids(&body), vec![DEMO_ENCOUNTER_DOCUMENT_ID]);
        let (_, body) =
            get(&http, &format!("{url}?departmentid=1&documentsubclass=admin_insurancecard,LABRESULT"), &token).await;
        assert_eq!(generic_ids(&body), vec![44987, 44991, DEMO_LAB_RESULT_ID]);

        let (status, body) = get(&http, &format!("{url}?departmentid=1&documentclass=ADMIN,BOGUS"), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "The data provided is invalid.");
        assert!(body["detailedmessage"].as_str().unwrap().starts_with("Invalid documentclass 'BOGUS'"), "{body}");

        // The generic create is not simulated.
        let (status, _) = send_form(&http, Method::POST, &url, &token, &[("departmentid", "1")]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn generic_document_list_filters_created_date_inclusively() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let url = generic_docs_url(&sim);
        let (_, body) = get(&http, &format!("{url}?departmentid=1"), &token).await;
        let created: Vec<(u64, String)> = body["documents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (d["documentid"].as_str().unwrap().parse().unwrap(), d["createddate"].as_str().unwrap().to_owned())
            })
            .collect();
        let mut dates: Vec<&str> = created.iter().map(|(_, date)| date.as_str()).collect();
        dates.sort_by_key(|date| ymd(date));
        dates.dedup();
        assert!(dates.len() >= 5, "{dates:?}");
        let within = |from: Option<&str>, to: Option<&str>| -> Vec<u64> {
            created
                .iter()
                .filter(|(_, date)| from.is_none_or(|f| ymd(date) >= ymd(f)) && to.is_none_or(|t| ymd(date) <= ymd(t)))
                .map(|(id, _)| *id)
                .collect()
        };

        let (start, end) = (dates[1], dates[3]);
        let (status, body) = get(&http, &format!("{url}?departmentid=1&startdate={start}&enddate={end}"), &token).await;
        assert_eq!(status, StatusCode::OK);
        let expected = within(Some(start), Some(end));
        assert_eq!(expected.len(), 3, "both bounds are inclusive");
        assert_eq!(generic_ids(&body), expected);
        assert_eq!(body["totalcount"], expected.len());
        for doc in body["documents"].as_array().unwrap() {
            let date = ymd(doc["createddate"].as_str().unwrap());
            assert!(date >= ymd(start) && date <= ymd(end));
        }

        // One bound at a time, and a single day.
        let (_, body) = get(&http, &format!("{url}?departmentid=1&startdate={end}"), &token).await;
        assert_eq!(generic_ids(&body), within(Some(end), None));
        let (_, body) = get(&http, &format!("{url}?departmentid=1&enddate={start}"), &token).await;
        assert_eq!(generic_ids(&body), within(None, Some(start)));
        let (_, body) = get(&http, &format!("{url}?departmentid=1&startdate={start}&enddate={start}"), &token).await;
        assert_eq!(generic_ids(&body), within(Some(start), Some(start)));
        assert_eq!(body["totalcount"], 1);

        // Dates must be MM/DD/YYYY.
        for bad in ["startdate=2023-11-14", "enddate=14/11/2023", "startdate=11/14/23"] {
            let (status, body) = get(&http, &format!("{url}?departmentid=1&{bad}"), &token).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(body["error"], "The data provided is invalid.");
            let value = bad.split_once('=').unwrap().1;
            assert_eq!(body["detailedmessage"], format!("Expecting format date, but value is '{value}'."));
        }
    }

    #[tokio::test]
    async fn generic_document_list_needs_a_valid_departmentid() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let url = generic_docs_url(&sim);

        let (status, body) = get(&http, &url, &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "Additional fields are required.");
        assert_eq!(body["missingfields"], json!(["departmentid"]));
        let (status, body) = get(&http, &format!("{url}?documentclass=ADMIN&departmentid="), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["missingfields"], json!(["departmentid"]));
        let (status, body) = get(&http, &format!("{url}?departmentid=2"), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "The specified patient does not exist in that department.");
        let (status, body) = get(&http, &format!("{url}?departmentid=77"), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "Invalid departmentid.");
        let (status, body) = get(&http, &format!("{url}?departmentid=abc"), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "The data provided is invalid.");
        let (status, _) =
            get(&http, &format!("{}/patients/4321/documents?departmentid=1", sim.base_url()), &token).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn generic_document_list_pages_through_relative_next_links() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let (_, body) = get(&http, &format!("{}?departmentid=1", generic_docs_url(&sim)), &token).await;
        let all = generic_ids(&body);
        assert!(body.get("next").is_none());

        let mut url = format!("{}?departmentid=1&limit=2", generic_docs_url(&sim));
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let (status, body) = get(&http, &url, &token).await;
            assert_eq!(status, StatusCode::OK);
            pages += 1;
            assert_eq!(body["totalcount"], all.len());
            let ids = generic_ids(&body);
            assert!(!ids.is_empty() && ids.len() <= 2);
            seen.extend(ids);
            assert_eq!(body.get("previous").is_some(), pages > 1);
            match body["next"].as_str() {
                Some(next) => {
                    assert!(next.starts_with("/v1/195900/patients/1234/documents?"), "{next}");
                    assert!(next.contains("DEPARTMENTID=1") && next.contains("LIMIT=2"), "{next}");
                    url = format!("{}{next}", sim.host_url());
                }
                None => break,
            }
            assert!(pages < 100, "next links never end");
        }
        assert_eq!(pages, all.len().div_ceil(2));
        assert_eq!(seen, all);

        // limit is capped at 10000; offset past the end is an empty page.
        let (status, body) =
            get(&http, &format!("{}?departmentid=1&limit=20000", generic_docs_url(&sim)), &token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(generic_ids(&body), all);
        let (_, body) = get(&http, &format!("{}?departmentid=1&offset=100", generic_docs_url(&sim)), &token).await;
        assert!(generic_ids(&body).is_empty());
        assert_eq!(body["totalcount"], all.len());
    }

    #[tokio::test]
    async fn generic_document_list_shows_deleted_only_on_request() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let url = generic_docs_url(&sim);

        let (_, body) = get(&http, &format!("{url}?departmentid=1&documentclass=ADMIN"), &token).await;
        assert_eq!(generic_ids(&body), DEMO_ADMIN_DOCUMENT_IDS.to_vec());
        let (_, body) = get(&http, &format!("{url}?departmentid=1&documentclass=ADMIN&showdeleted=true"), &token).await;
        let ids = generic_ids(&body);
        assert!(ids.contains(&DEMO_DELETED_ADMIN_DOCUMENT_ID));
        assert_eq!(ids.len(), DEMO_ADMIN_DOCUMENT_IDS.len() + 1);
        let deleted = body["documents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["documentid"].as_str().and_then(|id| id.parse().ok()) == Some(DEMO_DELETED_ADMIN_DOCUMENT_ID))
            .unwrap();
        assert_eq!(deleted["status"], "DELETED");
        assert!(deleted["deleteddatetime"].is_string());
        let (_, body) = get(&http, &format!("{url}?departmentid=1&status=deleted&showdeleted=true"), &token).await;
        assert_eq!(generic_ids(&body), vec![DEMO_DELETED_ADMIN_DOCUMENT_ID]);
        let (_, body) = get(&http, &format!("{url}?departmentid=1&status=DELETED"), &token).await;
        assert!(generic_ids(&body).is_empty());

        // A document deleted through the API leaves the generic list too.
        let doc_url = format!("{}/{}", docs_url(&sim, "clinicaldocument"), DEMO_CLINICAL_DOCUMENT_IDS[0]);
        let (status, _) = json_of(http.delete(&doc_url).bearer_auth(&token).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let (_, body) = get(&http, &format!("{url}?departmentid=1&documentclass=CLINICALDOCUMENT"), &token).await;
        assert_eq!(generic_ids(&body), vec![DEMO_CLINICAL_DOCUMENT_IDS[1]]);
        let (_, body) =
            get(&http, &format!("{url}?departmentid=1&documentclass=CLINICALDOCUMENT&showdeleted=true"), &token).await;
        assert_eq!(generic_ids(&body), DEMO_CLINICAL_DOCUMENT_IDS.to_vec());
    }

    #[tokio::test]
    async fn tertiary_insurance_is_active_without_a_card_image() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let (status, body) = get(&http, &format!("{}/patients/1234/insurances", sim.base_url()), &token).await;
        assert_eq!(status, StatusCode::OK);
        let insurances = body["insurances"].as_array().unwrap();
        let tertiary = insurances.iter().find(|i| i["insuranceid"] == DEMO_TERTIARY_INSURANCE_ID).expect("listed");
        assert_eq!(tertiary["sequencenumber"], "3");
        assert!(tertiary.get("cancelled").is_none());
        assert!(insurances.iter().all(|i| i["insuranceid"] != DEMO_CANCELLED_INSURANCE_ID));

        let url = format!("{}/patients/1234/insurances/{DEMO_TERTIARY_INSURANCE_ID}/image", sim.base_url());
        assert_eq!(get(&http, &url, &token).await.0, StatusCode::NOT_FOUND);
        let encoded = BASE64.encode(JPEG);
        let (status, body) = send_form(&http, Method::POST, &url, &token, &[("image", &encoded)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"success": true}));
        assert_eq!(get(&http, &url, &token).await, (StatusCode::OK, json!({"image": encoded})));
    }

    #[tokio::test]
    async fn token_rate_limit_429_carries_retry_after() {
        let config = AthenaSimConfig { token_limit_per_minute: 1, ..AthenaSimConfig::default() };
        let sim = AthenaSim::start(config).await.expect("sim starts");
        let http = http();
        assert_eq!(token_request(&sim, &http).await.status(), StatusCode::OK);
        for _ in 0..2 {
            let r = token_request(&sim, &http).await;
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
            let retry_after: u64 = r.headers()[RETRY_AFTER].to_str().unwrap().parse().expect("whole seconds");
            // The only slot frees a minute after the first token, which was minted moments ago.
            assert!((50..=60).contains(&retry_after), "{retry_after}");
        }
        assert_eq!(sim.stats().tokens_refused_rate_limited, 2);
    }

    #[tokio::test]
    async fn faults_fire_as_configured() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let ping = format!("{}/ping", sim.base_url());

        sim.inject(Fault::new(FaultAction::Status(503)).repeat(2));
        let r = http.get(&ping).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert!(r.bytes().await.unwrap().is_empty());
        assert_eq!(get(&http, &ping, &token).await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(&http, &ping, &token).await.0, StatusCode::OK);

        // Throttling 403 looks like Mashery's.
        sim.inject(Fault::new(FaultAction::Status(403)).with_method(Method::GET));
        let r = http.get(&ping).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()["x-mashery-error-code"], "ERR_403_DEVELOPER_OVER_QPS");

        // Prefix-less faults never hit the token endpoint; prefixed ones do.
        sim.inject(Fault::new(FaultAction::Status(500)));
        assert_eq!(token_request(&sim, &http).await.status(), StatusCode::OK);
        sim.clear_faults();
        sim.inject(Fault::new(FaultAction::Status(500)).with_path_prefix("/oauth2/"));
        assert_eq!(token_request(&sim, &http).await.status(), StatusCode::INTERNAL_SERVER_ERROR);

        sim.inject(Fault::new(FaultAction::Reset));
        assert!(http.get(&ping).bearer_auth(&token).send().await.is_err());

        sim.inject(Fault::new(FaultAction::Latency(Duration::from_millis(200))));
        let started = std::time::Instant::now();
        assert_eq!(get(&http, &ping, &token).await.0, StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(200));

        sim.inject(Fault::new(FaultAction::Hang));
        let hung = http.get(&ping).bearer_auth(&token).timeout(Duration::from_millis(200)).send().await;
        assert!(hung.unwrap_err().is_timeout());

        let stats = sim.stats();
        assert!(stats.requests >= 7);
        assert!(stats.max_concurrent_requests >= 1);
        sim.reset_stats();
        assert_eq!(sim.stats().requests, 0);
    }

    #[tokio::test]
    async fn hostile_input_does_not_panic() {
        let (sim, http) = start().await;
        let token = token(&sim, &http).await;
        let base = sim.base_url();
        for path in [
            "/patients/1234/documents/admin/99999999999999999999999",
            "/patients/1234/documents/nope",
            "/patients/%FF/documents/admin?departmentid=%FF",
            "/patients/1234/documents/admin?departmentid=1&offset=18446744073709551615&limit=10000",
            "/patients/1234/documents/admin/44987/pages/1",
            "/patients/1234/insurances?limit=-1",
            "/patients/1234/documents?departmentid=1&startdate=%FF&documentclass=%00,,",
            "/patients/1234/documents?departmentid=1&startdate=99/99/9999&enddate=00/00/0000",
            "/patients//",
            "/",
        ] {
            let r = http.get(format!("{base}{path}")).bearer_auth(&token).send().await.unwrap();
            assert!(r.status().is_client_error() || r.status().is_success(), "{path}: {}", r.status());
        }
        let r = http
            .post(docs_url(&sim, "admin"))
            .bearer_auth(&token)
            .header(CONTENT_TYPE, "multipart/form-data; boundary=x")
            .body("--x\r\nbroken")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        sim.shutdown();
    }
}
