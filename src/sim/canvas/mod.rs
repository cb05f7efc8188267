//! Faithful in-process simulator of Canvas Medical's FHIR API ("fumage") for `Media`, with its OAuth token endpoint
//! and the S3 bucket its content URLs redirect to.
//!
//! The simulator follows `shared/upstreams/canvas.md` (and the vendor's Media page) closely, including the parts that
//! make Canvas awkward to front, because a lenient simulator would hide exactly the gateway bugs it exists to catch:
//!
//! * three hosts: the instance host (`POST /auth/token/`, trailing slash required), the fumage FHIR host, and a fake
//!   S3 host serving presigned content URLs;
//! * create answers **201 with an empty body** and only a `Location` header;
//! * reads omit `content.data`, point `content.url` at `/Media/<id>/files/content` (bearer required, 307 to S3), and
//!   carry the temporary `deprecated-url` extension with a presigned URL;
//! * search accepts only `_id`, `patient`, `_count` (capped at 100) and `_offset`, with **relative** paging links;
//! * update, patch and delete are 405; every error is an OperationOutcome with `details.text` as in canvas.md §1.4;
//! * **the concurrency race**: creates on the same encounter/note that overlap inside Canvas silently lose all but the
//!   last write, while still answering 201.
//!
//! Faults ([`Fault`]) can be queued to make requests fail, stall, hang or have their connection reset.

mod auth;
mod faults;
mod media_create;
mod media_read;
mod responses;
mod routes;
mod s3;
mod seed;
#[cfg(test)]
mod tests;
mod write_race;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;

use self::s3::Presigner;
use super::support::{self, ShutdownSignal, ShutdownTrigger, advertised_url};

pub use self::auth::TOKEN_PATH;
pub use self::media_read::{DEPRECATED_URL_EXTENSION_URL, NOTE_ID_EXTENSION_URL};
pub use self::seed::{
    CANVAS_BOT_PRACTITIONER_ID, DEMO_ENCOUNTER_ID, DEMO_EXTRA_ENCOUNTER_IDS, DEMO_PATIENT_ID, DEMO_PRACTITIONER_ID,
    demo_extra_encounters, note_id_for_encounter,
};
pub use super::fault::{Fault, FaultAction};

/// Simulator configuration. Start from [`Default`] and override what a test needs.
#[derive(Debug, Clone)]
pub struct CanvasSimConfig {
    /// OAuth client id the token endpoint accepts.
    pub client_id: String,
    /// OAuth client secret the token endpoint accepts.
    pub client_secret: String,
    /// Lifetime of issued tokens; Canvas uses 36000 s (10 h). Shorten it to exercise refresh.
    pub token_ttl: Duration,
    /// How long a create stays "in flight" inside Canvas before it commits; overlapping creates on one note race.
    pub write_latency: Duration,
    /// Known patient ids.
    pub patients: Vec<String>,
    /// Known practitioner ids (Canvas Bot is always known in addition).
    pub practitioners: Vec<String>,
    /// Known encounters as (encounter uuid, patient id).
    pub encounters: Vec<(String, String)>,
}

impl Default for CanvasSimConfig {
    fn default() -> Self {
        let mut encounters = vec![(DEMO_ENCOUNTER_ID.to_owned(), DEMO_PATIENT_ID.to_owned())];
        encounters.extend(DEMO_EXTRA_ENCOUNTER_IDS.iter().map(|id| ((*id).to_owned(), DEMO_PATIENT_ID.to_owned())));
        Self {
            client_id: "demo-canvas-client".to_owned(),
            client_secret: "demo-canvas-secret".to_owned(),
            token_ttl: Duration::from_secs(36_000),
            write_latency: Duration::from_millis(30),
            patients: vec![DEMO_PATIENT_ID.to_owned()],
            practitioners: vec![DEMO_PRACTITIONER_ID.to_owned()],
            encounters,
        }
    }
}

/// Counters describing what the simulator saw. Snapshot via [`CanvasSimHandle::stats`].
#[derive(Debug, Clone, Default)]
pub struct CanvasSimStats {
    /// POSTs to the token endpoint (successful or not).
    pub token_requests: u64,
    /// All fumage requests.
    pub requests: u64,
    /// `POST /Media` answered 201.
    pub creates_received: u64,
    /// Answered 201 but never stored because an overlapping create on the same note won the race.
    pub creates_lost: u64,
    /// Max simultaneous in-flight creates overall (any encounter).
    pub max_concurrent_creates: u64,
    /// Max simultaneous in-flight creates on one encounter/note.
    pub max_concurrent_creates_same_encounter: u64,
    /// Max simultaneous fumage requests of any kind.
    pub max_concurrent_requests: u64,
}

/// Entry point of the simulator.
pub struct CanvasSim;

impl CanvasSim {
    /// Binds three loopback listeners on ephemeral ports (127.0.0.1:0): the instance host (token endpoint), the
    /// fumage FHIR host, and a fake "S3" host serving presigned media URLs.
    pub async fn start(config: CanvasSimConfig) -> io::Result<CanvasSimHandle> {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self::start_on(config, loopback, loopback, loopback).await
    }

    /// Same as [`CanvasSim::start`] with fixed addresses (for the standalone CLI); port 0 = ephemeral.
    ///
    /// The servers run until [`CanvasSimHandle::shutdown`] is called or the last handle clone is dropped.
    pub async fn start_on(
        config: CanvasSimConfig,
        instance_addr: SocketAddr,
        fumage_addr: SocketAddr,
        s3_addr: SocketAddr,
    ) -> io::Result<CanvasSimHandle> {
        let instance = TcpListener::bind(instance_addr).await?;
        let fumage = TcpListener::bind(fumage_addr).await?;
        let s3 = TcpListener::bind(s3_addr).await?;
        let instance_base = advertised_url(instance.local_addr()?);
        let fhir_base = advertised_url(fumage.local_addr()?);
        let s3_base = advertised_url(s3.local_addr()?);

        let (trigger, signal) = support::shutdown_channel();
        let state = Arc::new(State::new(config, fhir_base, s3_base, signal.clone()));

        let st = Arc::clone(&state);
        support::spawn_server(instance, signal.clone(), move |req| {
            let st = Arc::clone(&st);
            async move { st.handle_instance(req).await }
        });
        let st = Arc::clone(&state);
        support::spawn_server(fumage, signal.clone(), move |req| {
            let st = Arc::clone(&st);
            async move { st.handle_fumage(req).await }
        });
        let st = Arc::clone(&state);
        support::spawn_server(s3, signal, move |req| {
            let st = Arc::clone(&st);
            async move { st.handle_s3(req).await }
        });

        Ok(CanvasSimHandle { inner: Arc::new(HandleInner { state, trigger, instance_base }) })
    }
}

/// Control handle of a running simulator. Cheap to clone; the servers stop when the last clone is dropped.
#[derive(Clone)]
pub struct CanvasSimHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    state: Arc<State>,
    // Also stops the servers when the last handle is dropped (the watch channel closes).
    trigger: ShutdownTrigger,
    instance_base: String,
}

impl CanvasSimHandle {
    /// The fumage base, e.g. `http://127.0.0.1:PORT` (no trailing slash).
    pub fn fhir_base(&self) -> String {
        self.inner.state.fhir_base.clone()
    }

    /// The token endpoint, e.g. `http://127.0.0.1:PORT2/auth/token/`.
    pub fn token_url(&self) -> String {
        format!("{}{}", self.inner.instance_base, TOKEN_PATH)
    }

    /// The instance ("EHR") host base, e.g. `http://127.0.0.1:PORT2`.
    pub fn instance_base(&self) -> String {
        self.inner.instance_base.clone()
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> CanvasSimStats {
        self.inner.state.data().stats.clone()
    }

    /// Zero the counters (stored data is kept).
    pub fn reset_stats(&self) {
        self.inner.state.data().stats = CanvasSimStats::default();
    }

    /// Every token issued so far is expired from now on (its next use answers 401).
    pub fn expire_all_tokens(&self) {
        let now = Instant::now();
        for expiry in self.inner.state.data().tokens.values_mut() {
            *expiry = now;
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

    /// Stored Media of a patient, in creation order, exactly as a read would return them.
    pub fn media_for_patient(&self, patient_id: &str) -> Vec<Value> {
        let state = &self.inner.state;
        let mut guard = state.data();
        let data = &mut *guard;
        let mut out = Vec::new();
        for id in &data.media_order {
            if let Some(rec) = data.media.get(id)
                && rec.patient == patient_id
            {
                out.push(state.render_media(rec, &mut data.presigner));
            }
        }
        out
    }

    /// The stored bytes of a Media, if it was stored.
    pub fn media_bytes(&self, media_id: &str) -> Option<Bytes> {
        self.inner.state.data().media.get(media_id).map(|rec| rec.data.clone())
    }

    /// Stop all three listeners; open connections are closed after in-flight exchanges finish (hung ones are reset).
    pub fn shutdown(&self) {
        self.inner.trigger.trigger();
    }
}

struct State {
    client_id: String,
    client_secret: String,
    write_latency: Duration,
    fhir_base: String,
    s3_base: String,
    signal: ShutdownSignal,
    // One short-lived std mutex for all bookkeeping. It is never held across an await, so creates on different
    // encounters still proceed in parallel; only the per-note tickets decide who wins a race.
    data: Mutex<Data>,
}

struct Data {
    token_ttl: Duration,
    tokens: HashMap<String, Instant>,
    patients: HashSet<String>,
    practitioners: HashSet<String>,
    /// encounter id -> (patient id, note id)
    encounters: HashMap<String, (String, String)>,
    notes: HashMap<String, Note>,
    media: HashMap<String, MediaRecord>,
    /// Commit order, which is the order search results come in.
    media_order: Vec<String>,
    /// S3 key -> media id
    s3_keys: HashMap<String, String>,
    presigner: Presigner,
    faults: Vec<Fault>,
    stats: CanvasSimStats,
    in_flight_requests: u64,
    in_flight_creates: u64,
    /// Ids handed out so far: ids come from a sequence, not chance, so one run of the same requests
    /// gives the same ids (recordings can be made again without changing).
    issued_ids: u64,
}

impl Data {
    /// The next id Canvas would assign (a UUID, derived from the sequence number).
    fn next_uuid(&mut self, kind: &str) -> String {
        self.issued_ids += 1;
        let digest =
            <sha2::Sha256 as sha2::Digest>::digest(format!("canvas-sim:{kind}:{}", self.issued_ids).as_bytes());
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&digest[..16]);
        // Version 4, variant 1, like the UUIDs Canvas issues.
        raw[6] = (raw[6] & 0x0f) | 0x40;
        raw[8] = (raw[8] & 0x3f) | 0x80;
        uuid::Uuid::from_bytes(raw).to_string()
    }
}

struct Note {
    patient: String,
    encounter: Option<String>,
    /// Ticket of the most recent create that started on this note; a create commits only if it still holds it.
    latest_ticket: u64,
    in_flight: u64,
}

struct MediaRecord {
    id: String,
    status: String,
    patient: String,
    encounter: Option<String>,
    note_id: String,
    operator: String,
    content_type: String,
    title: Option<String>,
    notes: Option<Value>,
    data: Bytes,
    s3_key: String,
}

impl State {
    fn new(config: CanvasSimConfig, fhir_base: String, s3_base: String, signal: ShutdownSignal) -> Self {
        let mut encounters = HashMap::new();
        let mut notes = HashMap::new();
        for (encounter, patient) in &config.encounters {
            let note_id = note_id_for_encounter(encounter);
            notes.insert(
                note_id.clone(),
                Note { patient: patient.clone(), encounter: Some(encounter.clone()), latest_ticket: 0, in_flight: 0 },
            );
            encounters.insert(encounter.clone(), (patient.clone(), note_id));
        }
        let mut practitioners: HashSet<String> = config.practitioners.iter().cloned().collect();
        practitioners.insert(CANVAS_BOT_PRACTITIONER_ID.to_owned());
        Self {
            client_id: config.client_id,
            client_secret: config.client_secret,
            write_latency: config.write_latency,
            fhir_base,
            s3_base,
            signal,
            data: Mutex::new(Data {
                token_ttl: config.token_ttl,
                tokens: HashMap::new(),
                patients: config.patients.into_iter().collect(),
                practitioners,
                encounters,
                notes,
                media: HashMap::new(),
                media_order: Vec::new(),
                s3_keys: HashMap::new(),
                presigner: Presigner::default(),
                faults: Vec::new(),
                stats: CanvasSimStats::default(),
                in_flight_requests: 0,
                in_flight_creates: 0,
                issued_ids: 0,
            }),
        }
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        // A panic elsewhere must not take the whole simulator down with poisoned-lock panics.
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
