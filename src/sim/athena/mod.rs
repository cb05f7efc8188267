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
//!   404 when the slot is empty;
//! * each endpoint reads exactly the query parameters and form fields athena.md lists for it (document creates and
//!   updates per class: `observationdate` only where the class takes it, `replaceinternalnote` only for clinical
//!   documents, `showmetadata` only on lists); anything else is ignored, as athena ignores it, and recorded in
//!   [`AthenaSimStats::ignored_parameters`] so a test catches a gateway that relies on it.
//!
//! Faults ([`Fault`]) can be queued to make requests fail, stall, hang or have their connection reset, either before
//! the request is handled ([`AthenaSimHandle::inject`]) or after it took effect
//! ([`AthenaSimHandle::inject_after_processing`]).

mod auth;
mod dates;
mod document_classes;
mod document_writes;
mod documents;
mod faults;
mod form_body;
mod images;
mod listed;
mod patients;
mod query;
mod responses;
mod routes;
mod seed;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::time::Instant;

use self::auth::TokenInfo;
use self::document_classes::DocClass;
use self::images::Slot;
use self::seed::{FIRST_CREATED_DOCUMENT_ID, FIRST_PAGE_ID, seed};
use super::support::{self, ShutdownSignal, ShutdownTrigger, advertised_url};

pub use self::auth::{MDP_SCOPE, TOKEN_PATH};
pub use self::seed::{
    DEMO_ADMIN_DOCUMENT_IDS, DEMO_CANCELLED_INSURANCE_ID, DEMO_CLINICAL_DOCUMENT_IDS, DEMO_DELETED_ADMIN_DOCUMENT_ID,
    DEMO_DEPARTMENT_ID, DEMO_ENCOUNTER_DOCUMENT_ID, DEMO_IMAGING_RESULT_IDS, DEMO_LAB_RESULT_ID,
    DEMO_MEDICAL_RECORD_ID, DEMO_PATIENT_ID, DEMO_PRACTICE_ID, DEMO_PRIMARY_INSURANCE_ID, DEMO_SECONDARY_INSURANCE_ID,
    DEMO_TERTIARY_INSURANCE_ID, OTHER_DEPARTMENT_ID, UNASSIGNED_PATIENT_ID,
};
pub use super::fault::{Fault, FaultAction};

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
    /// Query parameters and form fields athena.md does not list for the endpoint they were sent to, as
    /// `"{METHOD} {endpoint}: {name}"`. athena ignores them, so a gateway that relies on one relies on nothing.
    pub ignored_parameters: Vec<String>,
}

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

    /// Queue a fault that strikes after the request took effect: the write is done, then the answer is replaced
    /// by the fault's status, held back by its latency, never sent (`Hang`) or lost in a reset.
    pub fn inject_after_processing(&self, fault: Fault) {
        if fault.times > 0 {
            self.inner.state.data().after_faults.push(fault);
        }
    }

    /// Drop all queued faults (both kinds).
    pub fn clear_faults(&self) {
        let mut data = self.inner.state.data();
        data.faults.clear();
        data.after_faults.clear();
    }

    /// A document's internal note as stored, after athena's appends and replaces (tests count writes with it).
    pub fn internal_note(&self, document_id: u64) -> Option<String> {
        self.inner.state.data().documents.get(&document_id).and_then(|doc| doc.internalnote.clone())
    }

    /// Stop the listener; open connections are closed after in-flight exchanges finish (hung ones are reset).
    pub fn shutdown(&self) {
        self.inner.trigger.trigger();
    }
}

struct State {
    client_id: String,
    client_secret: String,
    practice_id: String,
    host_base: String,
    signal: ShutdownSignal,
    // One short-lived std mutex for all bookkeeping, never held across an await.
    data: Mutex<Data>,
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
    /// Faults applied once the request has been handled (see [`AthenaSimHandle::inject_after_processing`]).
    after_faults: Vec<Fault>,
    stats: AthenaSimStats,
    in_flight_requests: u64,
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
    accessionid: Option<String>,
    internalaccessionid: Option<String>,
    tietoorderid: Option<String>,
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
            after_faults: Vec::new(),
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
}
