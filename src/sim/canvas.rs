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

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use rand::Rng as _;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::support::{
    self, HandlerResult, ResetConnection, ShutdownSignal, ShutdownTrigger, SimResponse, advertised_url,
    basic_credentials, empty_response, has_media_type, json_response,
};

/// Patient id used in Canvas's documentation examples; the default known patient.
pub const DEMO_PATIENT_ID: &str = "b8dfa97bdcdf4754bcd8197ca78ef0f0";
/// Practitioner id used in Canvas's documentation examples; the default known practitioner.
pub const DEMO_PRACTITIONER_ID: &str = "76428138e7644ce6b7eb426fdbbf2f39";
/// Encounter id used in Canvas's documentation examples; belongs to [`DEMO_PATIENT_ID`].
pub const DEMO_ENCOUNTER_ID: &str = "eae3c8a5-a129-4960-9715-fc26da30eccc";
/// Further encounters of [`DEMO_PATIENT_ID`], so tests can create on several encounters in parallel.
pub const DEMO_EXTRA_ENCOUNTER_IDS: [&str; 8] = [
    "0c6f2a1e-5b3d-4e8a-9f71-2d4c6b8a1e01",
    "1d7a3b2f-6c4e-4f9b-8a82-3e5d7c9b2f02",
    "2e8b4c3a-7d5f-4a0c-9b93-4f6e8d0c3a03",
    "3f9c5d4b-8e6a-4b1d-8ca4-5a7f9e1d4b04",
    "4a0d6e5c-9f7b-4c2e-9db5-6b8a0f2e5c05",
    "5b1e7f6d-0a8c-4d3f-8ec6-7c9b1a3f6d06",
    "6c2f8a7e-1b9d-4e4a-9fd7-8d0c2b4a7e07",
    "7d3a9b8f-2c0e-4f5b-8ae8-9e1d3c5b8f08",
];
/// The practitioner Canvas records as `operator` when a create omits it ("Canvas Bot").
pub const CANVAS_BOT_PRACTITIONER_ID: &str = "5eede137ecfe4124b8b773040e33be14";
/// Extension selecting (on create) and reporting (on read) the note holding the Media.
pub const NOTE_ID_EXTENSION_URL: &str = "http://schemas.canvasmedical.com/fhir/extensions/note-id";
/// Temporary extension carrying a presigned S3 URL on reads; gateways must strip it.
pub const DEPRECATED_URL_EXTENSION_URL: &str = "http://schemas.canvasmedical.com/fhir/extensions/deprecated-url";
/// Token endpoint path on the instance host. The trailing slash is required, as on Canvas.
pub const TOKEN_PATH: &str = "/auth/token/";

/// The bucket name shows up in presigned URLs, as it does for real Canvas media.
const S3_BUCKET: &str = "canvas-client-media";
/// Presigned URLs live one hour, like the SDK's `image_url`.
const PRESIGN_TTL: Duration = Duration::from_secs(3600);
const ALLOWED_CONTENT_TYPES: [&str; 3] = ["image/heic", "image/jpeg", "image/png"];
const ALLOWED_STATUSES: [&str; 2] = ["completed", "entered-in-error"];
const SEARCH_COUNT_DEFAULT: usize = 10;
const SEARCH_COUNT_MAX: usize = 100;
/// Upper bound on a create body; big enough for real photos, small enough that a runaway client cannot exhaust memory.
const MAX_CREATE_BODY: usize = 64 * 1024 * 1024;
const MAX_TOKEN_BODY: usize = 64 * 1024;
const TOKEN_SCOPE: &str = "system/*.read system/*.write";

/// The demo patient's extra encounters as owned strings (see [`DEMO_EXTRA_ENCOUNTER_IDS`]).
pub fn demo_extra_encounters() -> Vec<String> {
    DEMO_EXTRA_ENCOUNTER_IDS.iter().map(|id| (*id).to_owned()).collect()
}

/// The id of the note an encounter's Media land in (each encounter has exactly one note). Deterministic, so tests can
/// address a note through the note-id extension without asking the simulator.
pub fn note_id_for_encounter(encounter_id: &str) -> String {
    let digest = Sha256::digest(format!("canvas-sim-note:{encounter_id}").as_bytes());
    let mut raw = [0u8; 16];
    raw.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(raw).to_string()
}

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

pub use super::fault::{Fault, FaultAction};

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

// ---------------------------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------------------------

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

/// Server-side record of issued presigned URLs: the "signature" is a random token, checked by the S3 host.
#[derive(Default)]
struct Presigner {
    by_signature: HashMap<String, (String, Instant)>,
    prune_at: usize,
}

impl Presigner {
    fn issue(&mut self, s3_base: &str, s3_key: &str) -> String {
        let now = Instant::now();
        // Prune expired signatures only once the table has doubled, keeping issue() amortised O(1).
        if self.by_signature.len() >= self.prune_at {
            self.by_signature.retain(|_, (_, expires)| *expires > now);
            self.prune_at = (self.by_signature.len() * 2).max(1024);
        }
        let signature = hex::encode(rand::random::<[u8; 32]>());
        let expires = now.checked_add(PRESIGN_TTL).unwrap_or(now);
        self.by_signature.insert(signature.clone(), (s3_key.to_owned(), expires));
        format!(
            "{s3_base}/{S3_BUCKET}/{s3_key}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires={}\
             &X-Amz-SignedHeaders=host&X-Amz-Signature={signature}",
            PRESIGN_TTL.as_secs()
        )
    }

    fn check(&self, signature: &str, s3_key: &str) -> Result<(), &'static str> {
        match self.by_signature.get(signature) {
            Some((key, expires)) if key == s3_key => {
                if Instant::now() < *expires {
                    Ok(())
                } else {
                    Err("Request has expired")
                }
            }
            _ => Err("Access Denied"),
        }
    }
}

/// Which listener a request arrived on; decides how faults match and what error bodies look like.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Host {
    Instance,
    Fumage,
    S3,
}

/// Counts a fumage request as in flight for as long as it lives.
struct InFlightRequest<'a> {
    state: &'a State,
}

impl Drop for InFlightRequest<'_> {
    fn drop(&mut self) {
        let mut data = self.state.data();
        data.in_flight_requests = data.in_flight_requests.saturating_sub(1);
    }
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
            }),
        }
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        // A panic elsewhere must not take the whole simulator down with poisoned-lock panics.
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pops the first queued fault matching this request, if any.
    fn take_fault(&self, host: Host, method: &Method, path: &str) -> Option<FaultAction> {
        let mut data = self.data();
        super::fault::take(&mut data.faults, method, path, host == Host::Fumage)
    }

    /// Applies a fault. `Ok(None)` means "serve normally" (possibly after a delay).
    async fn apply_fault(
        &self,
        host: Host,
        method: &Method,
        path: &str,
    ) -> Result<Option<SimResponse>, ResetConnection> {
        match self.take_fault(host, method, path) {
            None => Ok(None),
            Some(FaultAction::Latency(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(None)
            }
            Some(FaultAction::Hang) => support::hang(&self.signal).await.map(Some),
            Some(FaultAction::Reset) => Err(ResetConnection),
            Some(FaultAction::Status(code)) => Ok(Some(fault_response(host, code, path))),
        }
    }

    // -----------------------------------------------------------------------------------------------------------
    // Instance host: OAuth token endpoint
    // -----------------------------------------------------------------------------------------------------------

    async fn handle_instance(&self, req: Request<Incoming>) -> HandlerResult {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        if method == Method::POST && path == TOKEN_PATH {
            self.data().stats.token_requests += 1;
        }
        let response = match self.apply_fault(Host::Instance, &method, &path).await? {
            Some(response) => response,
            None => self.token_endpoint(req, &method, &path).await,
        };
        tracing::debug!(host = "canvas-instance", %method, path, status = response.status().as_u16(), "sim");
        Ok(response)
    }

    async fn token_endpoint(&self, req: Request<Incoming>, method: &Method, path: &str) -> SimResponse {
        if path != TOKEN_PATH {
            // Canvas is a Django app: `/auth/token` without the slash is simply not a route.
            return html_response(
                StatusCode::NOT_FOUND,
                "<h1>Not Found</h1><p>The requested resource was not found on this server.</p>",
            );
        }
        if method != Method::POST {
            let mut response = empty_response(StatusCode::METHOD_NOT_ALLOWED);
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
            return response;
        }
        let basic = basic_credentials(req.headers());
        if !has_media_type(req.headers(), &["application/x-www-form-urlencoded"]) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        }
        let body = match Limited::new(req.into_body(), MAX_TOKEN_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
        };
        let mut form: HashMap<String, String> = HashMap::new();
        for (key, value) in form_urlencoded::parse(&body) {
            // oauthlib rejects repeated parameters outright.
            if form.insert(key.into_owned(), value.into_owned()).is_some() {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
            }
        }
        match form.get("grant_type").map(String::as_str) {
            None | Some("") => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
            Some("client_credentials") => {}
            Some(_) => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
        }
        // RFC 6749 §2.3.1: HTTP Basic client authentication takes precedence over body parameters.
        let (client_id, client_secret) = match basic {
            Some(creds) => creds,
            None => (
                form.get("client_id").cloned().unwrap_or_default(),
                form.get("client_secret").cloned().unwrap_or_default(),
            ),
        };
        if client_id != self.client_id || client_secret != self.client_secret {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
        }

        let token: String = rand::rng().sample_iter(&rand::distr::Alphanumeric).take(30).map(char::from).collect();
        let ttl = {
            let mut data = self.data();
            let now = Instant::now();
            let ttl = data.token_ttl;
            // A huge TTL must not overflow Instant; cap it at roughly a century.
            let expiry = now
                .checked_add(ttl)
                .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
                .unwrap_or(now);
            data.tokens.retain(|_, exp| *exp > now);
            data.tokens.insert(token.clone(), expiry);
            ttl
        };
        let body = json!({
            "access_token": token,
            "expires_in": ttl.as_secs(),
            "token_type": "Bearer",
            "scope": TOKEN_SCOPE,
        });
        let mut response = json_response(StatusCode::OK, &body);
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        response
    }

    // -----------------------------------------------------------------------------------------------------------
    // Fumage host: FHIR API
    // -----------------------------------------------------------------------------------------------------------

    async fn handle_fumage(self: &Arc<Self>, req: Request<Incoming>) -> HandlerResult {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let _in_flight = self.enter_request();
        let response = match self.apply_fault(Host::Fumage, &method, &path).await? {
            Some(response) => response,
            None => self.route_fumage(req, &method, &path).await,
        };
        tracing::debug!(host = "canvas-fumage", %method, path, status = response.status().as_u16(), "sim");
        Ok(response)
    }

    fn enter_request(&self) -> InFlightRequest<'_> {
        let mut data = self.data();
        data.stats.requests += 1;
        data.in_flight_requests += 1;
        data.stats.max_concurrent_requests = data.stats.max_concurrent_requests.max(data.in_flight_requests);
        InFlightRequest { state: self }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some((scheme, token)) = value.split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return false;
        }
        self.data().tokens.get(token).is_some_and(|expiry| Instant::now() < *expiry)
    }

    async fn route_fumage(self: &Arc<Self>, req: Request<Incoming>, method: &Method, path: &str) -> SimResponse {
        if !self.authorized(req.headers()) {
            return unauthorized();
        }
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        match segments.as_slice() {
            ["Media"] => match *method {
                Method::GET => self.search(req.uri().query().unwrap_or("")),
                Method::POST => self.create(req).await,
                _ => not_supported(),
            },
            ["Media", id] if !id.is_empty() => match *method {
                Method::GET => self.read(id),
                _ => not_supported(),
            },
            ["Media", id, "files", "content"] if !id.is_empty() => match *method {
                Method::GET => self.content_redirect(id),
                _ => not_supported(),
            },
            // vread and history are not offered by Canvas for Media.
            ["Media", id, "_history", ..] if !id.is_empty() => not_supported(),
            [resource_type, id] if !resource_type.is_empty() && !id.is_empty() => {
                not_found(&format!("Unknown {resource_type} resource '{id}'"))
            }
            _ => not_found("Unknown resource"),
        }
    }

    fn read(&self, id: &str) -> SimResponse {
        let mut guard = self.data();
        let data = &mut *guard;
        match data.media.get(id) {
            Some(rec) => json_response(StatusCode::OK, &self.render_media(rec, &mut data.presigner)),
            None => not_found_media(id),
        }
    }

    fn content_redirect(&self, id: &str) -> SimResponse {
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
    fn render_media(&self, rec: &MediaRecord, presigner: &mut Presigner) -> Value {
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

    fn search(&self, query: &str) -> SimResponse {
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

    async fn create(self: &Arc<Self>, req: Request<Incoming>) -> SimResponse {
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
                let note_id = uuid::Uuid::new_v4().to_string();
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

    /// The write inside Canvas. It stays in flight for `write_latency`; if another create on the same note starts
    /// meanwhile, this one is silently lost, yet still answers 201 (canvas.md §1.2 "Concurrency").
    async fn commit_create(&self, draft: CreateDraft) -> SimResponse {
        let media_id = uuid::Uuid::new_v4().to_string();
        let ticket = {
            let mut guard = self.data();
            let data = &mut *guard;
            let note = data.notes.entry(draft.note_id.clone()).or_insert_with(|| Note {
                patient: draft.patient.clone(),
                encounter: draft.encounter.clone(),
                latest_ticket: 0,
                in_flight: 0,
            });
            note.latest_ticket += 1;
            note.in_flight += 1;
            let ticket = note.latest_ticket;
            let same_note = note.in_flight;
            data.in_flight_creates += 1;
            let stats = &mut data.stats;
            stats.max_concurrent_creates = stats.max_concurrent_creates.max(data.in_flight_creates);
            stats.max_concurrent_creates_same_encounter = stats.max_concurrent_creates_same_encounter.max(same_note);
            ticket
        };

        if !self.write_latency.is_zero() {
            tokio::time::sleep(self.write_latency).await;
        }

        {
            let mut guard = self.data();
            let data = &mut *guard;
            data.in_flight_creates = data.in_flight_creates.saturating_sub(1);
            let won = match data.notes.get_mut(&draft.note_id) {
                Some(note) => {
                    note.in_flight = note.in_flight.saturating_sub(1);
                    note.latest_ticket == ticket
                }
                None => false,
            };
            if won {
                let extension = match draft.content_type.as_str() {
                    "image/png" => "png",
                    "image/heic" => "heic",
                    _ => "jpg",
                };
                let s3_key = format!("fumage-sim/{}.{extension}", media_id.replace('-', ""));
                data.s3_keys.insert(s3_key.clone(), media_id.clone());
                data.media_order.push(media_id.clone());
                data.media.insert(
                    media_id.clone(),
                    MediaRecord {
                        id: media_id.clone(),
                        status: draft.status,
                        patient: draft.patient,
                        encounter: draft.encounter,
                        note_id: draft.note_id,
                        operator: draft.operator,
                        content_type: draft.content_type,
                        title: draft.title,
                        notes: draft.notes,
                        data: draft.data,
                        s3_key,
                    },
                );
            } else {
                data.stats.creates_lost += 1;
            }
            data.stats.creates_received += 1;
        }

        let mut response = empty_response(StatusCode::CREATED);
        match HeaderValue::from_str(&format!("{}/Media/{media_id}", self.fhir_base)) {
            Ok(location) => {
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            Err(_) => internal_error(),
        }
    }

    // -----------------------------------------------------------------------------------------------------------
    // S3 host: presigned media URLs
    // -----------------------------------------------------------------------------------------------------------

    async fn handle_s3(&self, req: Request<Incoming>) -> HandlerResult {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let response = match self.apply_fault(Host::S3, &method, &path).await? {
            Some(response) => response,
            None => self.s3_get(&req, &method, &path),
        };
        // The object key is part of a presigned URL; keep it out of logs like the URL itself.
        tracing::debug!(host = "canvas-s3", %method, status = response.status().as_u16(), "sim");
        Ok(response)
    }

    fn s3_get(&self, req: &Request<Incoming>, method: &Method, path: &str) -> SimResponse {
        if method != Method::GET && method != Method::HEAD {
            return s3_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
            );
        }
        // A private bucket answers AccessDenied for anything it will not serve, including unknown keys.
        let Some(key) =
            path.strip_prefix('/').and_then(|p| p.strip_prefix(S3_BUCKET)).and_then(|p| p.strip_prefix('/'))
        else {
            return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied");
        };
        let signature = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .find(|(name, _)| name == "X-Amz-Signature")
            .map(|(_, value)| value.into_owned());
        let Some(signature) = signature else {
            return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied");
        };
        // Like real S3: a presigned URL plus an Authorization header is rejected. It also flags a client that
        // forwards the Canvas bearer token to S3 (the redirect must not carry it).
        if req.headers().contains_key(header::AUTHORIZATION) {
            return s3_error(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query \
                 string parameter or the Authorization header should be specified",
            );
        }
        let data = self.data();
        if let Err(message) = data.presigner.check(&signature, key) {
            return s3_error(StatusCode::FORBIDDEN, "AccessDenied", message);
        }
        let Some(rec) = data.s3_keys.get(key).and_then(|id| data.media.get(id)) else {
            return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied");
        };
        let mut response = Response::new(Full::new(rec.data.clone()));
        if let Ok(content_type) = HeaderValue::from_str(&rec.content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, content_type);
        }
        response
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Create parsing (structural checks: 400)
// ---------------------------------------------------------------------------------------------------------------

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

struct CreateDraft {
    note_id: String,
    encounter: Option<String>,
    patient: String,
    status: String,
    operator: String,
    content_type: String,
    title: Option<String>,
    notes: Option<Value>,
    data: Bytes,
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

// ---------------------------------------------------------------------------------------------------------------
// Small HTTP helpers
// ---------------------------------------------------------------------------------------------------------------

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

fn html_response(status: StatusCode, body: &'static str) -> SimResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

/// An OperationOutcome exactly as canvas.md §1.4 shows it.
fn outcome(status: StatusCode, code: &str, text: &str) -> SimResponse {
    json_response(
        status,
        &json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "details": {"text": text}}],
        }),
    )
}

fn bad_request(reason: &'static str) -> SimResponse {
    tracing::debug!(reason, "canvas sim: bad request");
    outcome(StatusCode::BAD_REQUEST, "invalid", "Bad request")
}

fn unauthorized() -> SimResponse {
    outcome(StatusCode::UNAUTHORIZED, "unknown", "Authentication failed")
}

fn not_found(text: &str) -> SimResponse {
    outcome(StatusCode::NOT_FOUND, "not-found", text)
}

fn not_found_media(id: &str) -> SimResponse {
    not_found(&format!("Unknown Media resource '{id}'"))
}

fn not_supported() -> SimResponse {
    outcome(StatusCode::METHOD_NOT_ALLOWED, "not-supported", "Operation is not supported")
}

fn internal_error() -> SimResponse {
    outcome(StatusCode::INTERNAL_SERVER_ERROR, "exception", "Internal server error")
}

fn oauth_error(status: StatusCode, error: &str) -> SimResponse {
    let mut response = json_response(status, &json!({ "error": error }));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> SimResponse {
    let request_id = hex::encode(rand::random::<[u8; 8]>()).to_uppercase();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <RequestId>{request_id}</RequestId><HostId>canvas-sim</HostId></Error>"
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    response
}

/// The response a `FaultAction::Status` produces, shaped like the host's real errors.
fn fault_response(host: Host, code: u16, path: &str) -> SimResponse {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match host {
        Host::Fumage => match status.as_u16() {
            400 => bad_request("injected fault"),
            401 => unauthorized(),
            403 => outcome(status, "forbidden", "Authorization failed"),
            404 => {
                let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                match segments.as_slice() {
                    [resource_type, id, ..] if !id.is_empty() => {
                        not_found(&format!("Unknown {resource_type} resource '{id}'"))
                    }
                    _ => not_found("Unknown resource"),
                }
            }
            405 => not_supported(),
            412 => outcome(status, "processing", "Precondition failed"),
            422 => outcome(status, "business-rule", "Unprocessable entity"),
            429 => outcome(status, "throttled", "Too many requests"),
            500..=599 => outcome(status, "exception", "Internal server error"),
            _ => outcome(status, "processing", status.canonical_reason().unwrap_or("Error")),
        },
        // The token endpoint speaks OAuth for client errors and Django's plain pages otherwise.
        Host::Instance => match status.as_u16() {
            400 => oauth_error(status, "invalid_request"),
            401 => oauth_error(status, "invalid_client"),
            _ => {
                let mut response = html_response(StatusCode::OK, "<h1>Server Error</h1>");
                *response.status_mut() = status;
                response
            }
        },
        Host::S3 => match status.as_u16() {
            403 => s3_error(status, "AccessDenied", "Access Denied"),
            404 => s3_error(status, "NoSuchKey", "The specified key does not exist."),
            503 => s3_error(status, "SlowDown", "Please reduce your request rate."),
            _ => s3_error(status, "InternalError", "We encountered an internal error. Please try again."),
        },
    };
    if matches!(status.as_u16(), 429 | 503) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use reqwest::header::{CONTENT_TYPE, LOCATION};

    const JPEG: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00sim-image-bytes\xff\xd9";

    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("reqwest client")
    }

    async fn start(config: CanvasSimConfig) -> (CanvasSimHandle, reqwest::Client) {
        let sim = CanvasSim::start(config).await.expect("sim starts");
        (sim, http())
    }

    async fn token(sim: &CanvasSimHandle, http: &reqwest::Client) -> String {
        let response = http
            .post(sim.token_url())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&client_id=demo-canvas-client&client_secret=demo-canvas-secret")
            .send()
            .await
            .expect("token request");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
        body["access_token"].as_str().expect("access_token").to_owned()
    }

    fn media(encounter: Option<&str>, content_type: &str, data: &[u8]) -> Value {
        let mut body = json!({
            "resourceType": "Media",
            "status": "completed",
            "subject": {"reference": format!("Patient/{DEMO_PATIENT_ID}")},
            "content": {"contentType": content_type, "data": BASE64.encode(data), "title": "Image title"},
            "note": [{"text": "Note #1"}, {"text": "Note #2"}],
        });
        if let Some(encounter) = encounter {
            body["encounter"] = json!({"reference": format!("Encounter/{encounter}")});
        }
        body
    }

    async fn post_raw(sim: &CanvasSimHandle, http: &reqwest::Client, token: &str, body: String) -> reqwest::Response {
        http.post(format!("{}/Media", sim.fhir_base()))
            .bearer_auth(token)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .expect("create request")
    }

    async fn post_media(sim: &CanvasSimHandle, http: &reqwest::Client, token: &str, body: &Value) -> reqwest::Response {
        post_raw(sim, http, token, body.to_string()).await
    }

    /// Creates and returns the new id (asserting the 201 shape on the way).
    async fn create_ok(sim: &CanvasSimHandle, http: &reqwest::Client, token: &str, body: &Value) -> String {
        let response = post_media(sim, http, token, body).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let location = response.headers()[LOCATION].to_str().expect("ascii").to_owned();
        location.rsplit('/').next().expect("id").to_owned()
    }

    async fn get_json(http: &reqwest::Client, url: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = http.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("get");
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn issue(outcome: &Value) -> (&str, &str) {
        let issue = &outcome["issue"][0];
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        assert_eq!(issue["severity"], "error");
        (issue["code"].as_str().unwrap_or(""), issue["details"]["text"].as_str().unwrap_or(""))
    }

    fn fast() -> CanvasSimConfig {
        CanvasSimConfig { write_latency: Duration::ZERO, ..CanvasSimConfig::default() }
    }

    #[tokio::test]
    async fn token_endpoint_is_strict_oauth() {
        let (sim, http) = start(fast()).await;
        let form = "application/x-www-form-urlencoded";
        let good = "grant_type=client_credentials&client_id=demo-canvas-client&client_secret=demo-canvas-secret";

        // No trailing slash: not a route.
        let url = sim.token_url();
        let no_slash = url.trim_end_matches('/');
        let r = http.post(no_slash).header(CONTENT_TYPE, form).body(good).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);

        let r = http.post(&url).header(CONTENT_TYPE, "application/json").body(good).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);

        let r = http
            .post(&url)
            .header(CONTENT_TYPE, form)
            .body("grant_type=password&client_id=demo-canvas-client&client_secret=demo-canvas-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(body, json!({"error": "unsupported_grant_type"}));

        let r = http
            .post(&url)
            .header(CONTENT_TYPE, form)
            .body("grant_type=client_credentials&client_id=demo-canvas-client&client_secret=nope")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(body, json!({"error": "invalid_client"}));

        let r = http.post(&url).header(CONTENT_TYPE, form).body(good).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(body["expires_in"], 36_000);
        assert_eq!(body["token_type"], "Bearer");
        assert!(body["scope"].is_string());
        assert!(body.get("refresh_token").is_none());
        assert_eq!(body["access_token"].as_str().unwrap().len(), 30);

        // Only the POSTs to /auth/token/ count (the no-slash 404 does not).
        assert_eq!(sim.stats().token_requests, 4);
    }

    #[tokio::test]
    async fn fumage_requires_valid_unexpired_bearer() {
        let (sim, http) = start(fast()).await;
        let read_url = format!("{}/Media/a47c7b0e-bbb4-42cd-bc4a-df259d148ea1", sim.fhir_base());

        let (status, body) = get_json(&http, &read_url, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            body,
            json!({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"unknown","details":{"text":"Authentication failed"}}]})
        );
        let (status, _) = get_json(&http, &read_url, Some("not-a-token")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let token = token(&sim, &http).await;
        let (status, body) = get_json(&http, &read_url, Some(&token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(issue(&body), ("not-found", "Unknown Media resource 'a47c7b0e-bbb4-42cd-bc4a-df259d148ea1'"));

        sim.expire_all_tokens();
        let (status, _) = get_json(&http, &read_url, Some(&token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // Short TTL knob: reported in expires_in and enforced.
        sim.set_token_ttl(Duration::from_millis(150));
        let short = super::tests::token(&sim, &http).await;
        let (status, _) = get_json(&http, &read_url, Some(&short)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (status, _) = get_json(&http, &read_url, Some(&short)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn create_read_and_content_round_trip() {
        let (sim, http) = start(fast()).await;
        let token = token(&sim, &http).await;

        let response = post_media(&sim, &http, &token, &media(Some(DEMO_ENCOUNTER_ID), "image/jpeg", JPEG)).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let location = response.headers()[LOCATION].to_str().unwrap().to_owned();
        assert!(response.bytes().await.unwrap().is_empty(), "create body must be empty");
        let prefix = format!("{}/Media/", sim.fhir_base());
        assert!(location.starts_with(&prefix), "{location}");
        assert!(!location.contains("_history"));
        let id = location[prefix.len()..].to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok());

        let (status, read) = get_json(&http, &location, Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(read["resourceType"], "Media");
        assert_eq!(read["id"], id.as_str());
        assert_eq!(read["status"], "completed");
        assert_eq!(read["subject"], json!({"reference": format!("Patient/{DEMO_PATIENT_ID}"), "type": "Patient"}));
        assert_eq!(read["encounter"]["reference"], format!("Encounter/{DEMO_ENCOUNTER_ID}"));
        assert_eq!(read["operator"]["reference"], format!("Practitioner/{CANVAS_BOT_PRACTITIONER_ID}"));
        assert!(read["content"].get("data").is_none(), "reads never carry data");
        assert_eq!(read["content"]["contentType"], "image/jpeg");
        assert_eq!(read["content"]["title"], "Image title");
        let content_url = format!("{location}/files/content");
        assert_eq!(read["content"]["url"], content_url.as_str());
        assert_eq!(read["note"], json!([{"text": "Note #1"}, {"text": "Note #2"}]));
        let extensions = read["extension"].as_array().unwrap();
        assert!(extensions.contains(&json!({
            "url": NOTE_ID_EXTENSION_URL,
            "valueId": note_id_for_encounter(DEMO_ENCOUNTER_ID)
        })));
        assert!(extensions.iter().any(|e| {
            e["url"] == DEPRECATED_URL_EXTENSION_URL
                && e["valueUri"].as_str().is_some_and(|u| u.contains("X-Amz-Signature="))
        }));

        // Content needs the bearer token and redirects to S3.
        let r = http.get(&content_url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = http.get(&content_url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        let s3_url = r.headers()[LOCATION].to_str().unwrap().to_owned();
        assert!(s3_url.contains("/canvas-client-media/"));
        assert!(s3_url.contains("X-Amz-Expires=3600"));
        assert!(!s3_url.starts_with(&sim.fhir_base()));

        // The presigned URL works without a bearer and returns the exact bytes.
        let r = http.get(&s3_url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], "image/jpeg");
        assert_eq!(r.bytes().await.unwrap().as_ref(), JPEG);

        // Tampered or missing signature: S3-style 403.
        let tampered = format!("{}0", s3_url);
        let r = http.get(&tampered).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let text = r.text().await.unwrap();
        assert!(text.contains("<Error><Code>AccessDenied</Code>"), "{text}");
        let unsigned = s3_url.split('?').next().unwrap();
        let r = http.get(unsigned).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        // A client following the redirect itself (reqwest drops Authorization on cross-origin redirects) gets the
        // bytes in one call.
        let following = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = following.get(&content_url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.bytes().await.unwrap().as_ref(), JPEG);
        // Forwarding the bearer token to S3 is refused, as by real S3.
        let r = http.get(&s3_url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.text().await.unwrap().contains("InvalidArgument"));

        // The deprecated-url extension also carries a working presigned URL.
        let deprecated = extensions
            .iter()
            .find(|e| e["url"] == DEPRECATED_URL_EXTENSION_URL)
            .and_then(|e| e["valueUri"].as_str())
            .unwrap();
        let r = http.get(deprecated).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), JPEG);

        assert_eq!(sim.media_bytes(&id).unwrap().as_ref(), JPEG);
        let stored = sim.media_for_patient(DEMO_PATIENT_ID);
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0]["id"], id.as_str());
        assert!(stored[0]["content"].get("data").is_none());
        let stats = sim.stats();
        assert_eq!(stats.creates_received, 1);
        assert_eq!(stats.creates_lost, 0);
    }

    #[tokio::test]
    async fn create_validation_matches_canvas() {
        let (sim, http) = start(fast()).await;
        let token = token(&sim, &http).await;

        let check = |status: StatusCode, code: &'static str| (status, code);
        let mut cases: Vec<(&str, Value, (StatusCode, &str))> = Vec::new();

        cases.push((
            "pdf",
            media(None, "application/pdf", b"%PDF-1.4"),
            check(StatusCode::UNPROCESSABLE_ENTITY, "business-rule"),
        ));
        let mut v = media(None, "image/png", JPEG);
        v.as_object_mut().unwrap().remove("status");
        cases.push(("missing status", v, check(StatusCode::BAD_REQUEST, "invalid")));
        let mut v = media(None, "image/png", JPEG);
        v["status"] = json!("preliminary");
        cases.push(("bad status", v, check(StatusCode::UNPROCESSABLE_ENTITY, "business-rule")));
        let mut v = media(None, "image/png", JPEG);
        v.as_object_mut().unwrap().remove("subject");
        cases.push(("missing subject", v, check(StatusCode::BAD_REQUEST, "invalid")));
        let mut v = media(None, "image/png", JPEG);
        v["subject"] = json!({"reference": "Patient/ffffffffffffffffffffffffffffffff"});
        cases.push(("unknown patient", v, check(StatusCode::UNPROCESSABLE_ENTITY, "business-rule")));
        let mut v = media(None, "image/png", JPEG);
        v["content"]["data"] = json!("not base64!!");
        cases.push(("bad base64", v, check(StatusCode::BAD_REQUEST, "invalid")));
        let mut v = media(None, "image/png", JPEG);
        v["content"].as_object_mut().unwrap().remove("data");
        cases.push(("missing data", v, check(StatusCode::BAD_REQUEST, "invalid")));
        let mut v = media(None, "image/png", JPEG);
        v["note"] = json!([{"author": "x"}]);
        cases.push(("note without text", v, check(StatusCode::BAD_REQUEST, "invalid")));
        cases.push((
            "unknown encounter",
            media(Some("00000000-0000-4000-8000-000000000000"), "image/png", JPEG),
            check(StatusCode::UNPROCESSABLE_ENTITY, "business-rule"),
        ));
        let mut v = media(Some(DEMO_ENCOUNTER_ID), "image/png", JPEG);
        v["extension"] = json!([{
            "url": NOTE_ID_EXTENSION_URL,
            "valueId": note_id_for_encounter(DEMO_EXTRA_ENCOUNTER_IDS[0])
        }]);
        cases.push(("encounter/note mismatch", v, check(StatusCode::UNPROCESSABLE_ENTITY, "business-rule")));
        let mut v = media(None, "image/png", JPEG);
        v["resourceType"] = json!("Patient");
        cases.push(("wrong resourceType", v, check(StatusCode::BAD_REQUEST, "invalid")));

        for (name, body, (status, code)) in cases {
            let r = post_media(&sim, &http, &token, &body).await;
            assert_eq!(r.status(), status, "{name}");
            assert_eq!(r.headers()[CONTENT_TYPE], "application/json", "{name}");
            let outcome: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            let (got_code, text) = issue(&outcome);
            assert_eq!(got_code, code, "{name}");
            if status == StatusCode::BAD_REQUEST {
                assert_eq!(text, "Bad request", "{name}");
            }
        }

        // The PDF message names the allowed types.
        let r = post_media(&sim, &http, &token, &media(None, "application/pdf", b"%PDF")).await;
        let outcome: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let (_, text) = issue(&outcome);
        assert!(text.contains("image/heic, image/jpeg, image/png"), "{text}");

        // Not JSON at all, and a non-JSON content type.
        let r = post_raw(&sim, &http, &token, "{not json".to_owned()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = http
            .post(format!("{}/Media", sim.fhir_base()))
            .bearer_auth(&token)
            .header(CONTENT_TYPE, "text/plain")
            .body(media(None, "image/png", JPEG).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);

        // The matching note-id is accepted; nothing invalid was stored.
        let mut v = media(Some(DEMO_ENCOUNTER_ID), "image/png", JPEG);
        v["extension"] = json!([{"url": NOTE_ID_EXTENSION_URL, "valueId": note_id_for_encounter(DEMO_ENCOUNTER_ID)}]);
        v["operator"] = json!({"reference": format!("Practitioner/{DEMO_PRACTITIONER_ID}")});
        create_ok(&sim, &http, &token, &v).await;
        assert_eq!(sim.media_for_patient(DEMO_PATIENT_ID).len(), 1);
        assert_eq!(sim.stats().creates_received, 1);
    }

    #[tokio::test]
    async fn unsupported_interactions_and_paths() {
        let (sim, http) = start(fast()).await;
        let token = token(&sim, &http).await;
        let id = create_ok(&sim, &http, &token, &media(None, "image/jpeg", JPEG)).await;
        let url = format!("{}/Media/{id}", sim.fhir_base());

        for method in [Method::DELETE, Method::PUT, Method::PATCH] {
            let r = http
                .request(method.clone(), &url)
                .bearer_auth(&token)
                .header(CONTENT_TYPE, "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
            let outcome: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            assert_eq!(issue(&outcome), ("not-supported", "Operation is not supported"));
        }
        let (status, _) = get_json(&http, &format!("{url}/_history/1"), Some(&token)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let (status, body) = get_json(&http, &format!("{}/Nope/x/y/z", sim.fhir_base()), Some(&token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(issue(&body).0, "not-found");
        // Still stored: delete did nothing.
        assert!(sim.media_bytes(&id).is_some());
    }

    #[tokio::test]
    async fn search_pages_with_relative_links_and_caps_count() {
        let (sim, http) = start(fast()).await;
        let token = token(&sim, &http).await;
        let mut created = Vec::new();
        for _ in 0..105 {
            created.push(create_ok(&sim, &http, &token, &media(None, "image/png", JPEG)).await);
        }

        // Follow `next` from the first page; links are relative and resolved against the fumage base.
        let mut url = format!("{}/Media?patient=Patient%2F{DEMO_PATIENT_ID}", sim.fhir_base());
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let (status, bundle) = get_json(&http, &url, Some(&token)).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(bundle["type"], "searchset");
            assert_eq!(bundle["total"], 105);
            for entry in bundle["entry"].as_array().unwrap() {
                assert!(entry["resource"]["content"].get("data").is_none());
                assert!(entry["fullUrl"].as_str().unwrap().starts_with(&sim.fhir_base()));
                seen.push(entry["resource"]["id"].as_str().unwrap().to_owned());
            }
            let links = bundle["link"].as_array().unwrap();
            let link = |rel: &str| {
                links.iter().find(|l| l["relation"] == rel).and_then(|l| l["url"].as_str()).map(str::to_owned)
            };
            if pages == 0 {
                assert_eq!(
                    link("self").unwrap(),
                    format!("/Media?patient=Patient%2F{DEMO_PATIENT_ID}&_count=10&_offset=0")
                );
                assert_eq!(
                    link("last").unwrap(),
                    format!("/Media?patient=Patient%2F{DEMO_PATIENT_ID}&_count=10&_offset=100")
                );
            }
            assert!(link("first").is_some());
            pages += 1;
            match link("next") {
                Some(next) => {
                    assert!(next.starts_with("/Media?"), "relative: {next}");
                    url = format!("{}{next}", sim.fhir_base());
                }
                None => break,
            }
        }
        assert_eq!(pages, 11);
        assert_eq!(seen, created, "all results, in creation order");

        // _count above 100 is capped.
        let url = format!("{}/Media?patient=Patient%2F{DEMO_PATIENT_ID}&_count=500", sim.fhir_base());
        let (_, bundle) = get_json(&http, &url, Some(&token)).await;
        assert_eq!(bundle["entry"].as_array().unwrap().len(), 100);
        let links = bundle["link"].as_array().unwrap();
        assert!(
            links
                .iter()
                .any(|l| { l["relation"] == "self" && l["url"].as_str().unwrap().ends_with("&_count=100&_offset=0") })
        );

        // _id search.
        let url = format!("{}/Media?_id={}", sim.fhir_base(), created[7]);
        let (_, bundle) = get_json(&http, &url, Some(&token)).await;
        assert_eq!(bundle["total"], 1);
        assert_eq!(bundle["entry"][0]["resource"]["id"], created[7].as_str());

        // Unsupported parameter and a bare patient id are 400 "Bad request".
        for query in [
            format!("patient=Patient%2F{DEMO_PATIENT_ID}&date=2024-01-01"),
            format!("patient={DEMO_PATIENT_ID}"),
            "_sort=-date".to_owned(),
            "_count=ten".to_owned(),
        ] {
            let url = format!("{}/Media?{query}", sim.fhir_base());
            let (status, body) = get_json(&http, &url, Some(&token)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(issue(&body), ("invalid", "Bad request"));
        }
    }

    #[tokio::test]
    async fn overlapping_creates_on_one_encounter_lose_data() {
        let config = CanvasSimConfig { write_latency: Duration::from_millis(300), ..CanvasSimConfig::default() };
        let (sim, http) = start(config).await;
        let token = token(&sim, &http).await;
        let first = media(Some(DEMO_ENCOUNTER_ID), "image/jpeg", b"first");
        let second = media(Some(DEMO_ENCOUNTER_ID), "image/jpeg", b"second");
        let (a, b) = tokio::join!(post_media(&sim, &http, &token, &first), post_media(&sim, &http, &token, &second));
        assert_eq!(a.status(), StatusCode::CREATED);
        assert_eq!(b.status(), StatusCode::CREATED);
        let ids: Vec<String> = [&a, &b]
            .iter()
            .map(|r| r.headers()[LOCATION].to_str().unwrap().rsplit('/').next().unwrap().to_owned())
            .collect();

        let stored = sim.media_for_patient(DEMO_PATIENT_ID);
        assert_eq!(stored.len(), 1, "only the last write survives");
        assert!(ids.iter().any(|id| stored[0]["id"] == id.as_str()));
        let lost: Vec<&String> = ids.iter().filter(|id| sim.media_bytes(id).is_none()).collect();
        assert_eq!(lost.len(), 1);
        let (status, _) = get_json(&http, &format!("{}/Media/{}", sim.fhir_base(), lost[0]), Some(&token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let stats = sim.stats();
        assert_eq!(stats.creates_received, 2);
        assert_eq!(stats.creates_lost, 1);
        assert_eq!(stats.max_concurrent_creates_same_encounter, 2);

        // Sequential creates on the same encounter are both kept.
        sim.reset_stats();
        create_ok(&sim, &http, &token, &first).await;
        create_ok(&sim, &http, &token, &second).await;
        assert_eq!(sim.media_for_patient(DEMO_PATIENT_ID).len(), 3);
        assert_eq!(sim.stats().creates_lost, 0);
        assert_eq!(sim.stats().max_concurrent_creates_same_encounter, 1);
    }

    #[tokio::test]
    async fn overlapping_creates_on_different_encounters_run_in_parallel() {
        let config = CanvasSimConfig { write_latency: Duration::from_millis(300), ..CanvasSimConfig::default() };
        let (sim, http) = start(config).await;
        let token = token(&sim, &http).await;
        let extra = demo_extra_encounters();
        let first = media(Some(DEMO_ENCOUNTER_ID), "image/jpeg", b"first");
        let second = media(Some(&extra[0]), "image/jpeg", b"second");
        let third = media(None, "image/jpeg", b"third");
        let fourth = media(None, "image/jpeg", b"fourth");
        let (a, b) = tokio::join!(post_media(&sim, &http, &token, &first), post_media(&sim, &http, &token, &second));
        assert_eq!(a.status(), StatusCode::CREATED);
        assert_eq!(b.status(), StatusCode::CREATED);
        assert_eq!(sim.media_for_patient(DEMO_PATIENT_ID).len(), 2);
        let stats = sim.stats();
        // Both writes were in flight inside the sim at once: no global lock.
        assert_eq!(stats.max_concurrent_creates, 2);
        assert_eq!(stats.max_concurrent_creates_same_encounter, 1);
        assert!(stats.max_concurrent_requests >= 2);
        assert_eq!(stats.creates_lost, 0);

        // Without encounter or note-id each create gets its own new Data Import note, so they never race.
        let (c, d) = tokio::join!(post_media(&sim, &http, &token, &third), post_media(&sim, &http, &token, &fourth));
        assert_eq!(c.status(), StatusCode::CREATED);
        assert_eq!(d.status(), StatusCode::CREATED);
        let stored = sim.media_for_patient(DEMO_PATIENT_ID);
        assert_eq!(stored.len(), 4);
        let note_of = |m: &Value| m["extension"][0]["valueId"].as_str().unwrap().to_owned();
        assert_ne!(note_of(&stored[2]), note_of(&stored[3]));
        assert!(stored[2].get("encounter").is_none());
    }

    #[tokio::test]
    async fn faults_fire_as_configured() {
        let (sim, http) = start(fast()).await;
        let token = token(&sim, &http).await;
        let body = media(None, "image/jpeg", JPEG);

        // Status fault: Canvas-shaped body plus Retry-After on 503; applies once.
        sim.inject(Fault::new(FaultAction::Status(503)).with_method(Method::POST));
        let r = post_media(&sim, &http, &token, &body).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[reqwest::header::RETRY_AFTER], "1");
        let outcome: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(issue(&outcome), ("exception", "Internal server error"));
        create_ok(&sim, &http, &token, &body).await;

        // Prefix-less faults never hit the token endpoint.
        sim.inject(Fault::new(FaultAction::Status(500)));
        let fresh = super::tests::token(&sim, &http).await;
        let (status, _) = get_json(&http, &format!("{}/Media", sim.fhir_base()), Some(&fresh)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        // ...but an explicit prefix does.
        sim.inject(Fault::new(FaultAction::Status(503)).with_path_prefix(TOKEN_PATH));
        let r = http
            .post(sim.token_url())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&client_id=demo-canvas-client&client_secret=demo-canvas-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

        // Reset: no response at all.
        sim.inject(Fault::new(FaultAction::Reset).with_path_prefix("/Media"));
        let err = http.get(format!("{}/Media", sim.fhir_base())).bearer_auth(&token).send().await;
        assert!(err.is_err(), "reset must surface as a transport error");

        // Reset is a real TCP RST, not a clean close.
        sim.inject(Fault::new(FaultAction::Reset));
        let addr = sim.fhir_base().trim_start_matches("http://").to_owned();
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut raw,
            b"GET /Media HTTP/1.1\r\nhost: sim\r\nauthorization: Bearer x\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::io::AsyncReadExt::read(&mut raw, &mut buf).await;
        assert_eq!(read.map_err(|e| e.kind()), Err(std::io::ErrorKind::ConnectionReset));

        // Hang: the client's timeout fires.
        sim.inject(Fault::new(FaultAction::Hang));
        let err = http
            .get(format!("{}/Media", sim.fhir_base()))
            .bearer_auth(&token)
            .timeout(Duration::from_millis(200))
            .send()
            .await
            .expect_err("hang");
        assert!(err.is_timeout());
        // Once the client gave up, the hung request no longer counts as in flight.
        tokio::time::sleep(Duration::from_millis(100)).await;
        sim.reset_stats();
        get_json(&http, &format!("{}/Media", sim.fhir_base()), Some(&token)).await;
        assert_eq!(sim.stats().max_concurrent_requests, 1);

        // Latency then normal service; repeat(2) covers two requests, clear_faults drops the rest.
        sim.inject(Fault::new(FaultAction::Latency(Duration::from_millis(300))).repeat(2));
        let started = std::time::Instant::now();
        let (status, _) = get_json(&http, &format!("{}/Media", sim.fhir_base()), Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(300));
        sim.clear_faults();
        let started = std::time::Instant::now();
        get_json(&http, &format!("{}/Media", sim.fhir_base()), Some(&token)).await;
        assert!(started.elapsed() < Duration::from_millis(300));
    }

    #[tokio::test]
    async fn shutdown_closes_listeners() {
        let (sim, http) = start(fast()).await;
        let token = token(&sim, &http).await;
        let url = format!("{}/Media", sim.fhir_base());
        let (status, _) = get_json(&http, &url, Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
        sim.shutdown();
        // Give the accept loop a moment to observe the stop, then a fresh client cannot connect.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let result = super::tests::http().get(&url).bearer_auth(&token).send().await;
        assert!(result.is_err());
    }
}
