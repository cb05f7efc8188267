//! The composition root: builds the gateway from a validated config — simulators for sandbox
//! connections, upstream clients, the mapping set, the tower stack — and serves it over HTTP/1.1 with
//! hyper. It may use every module; only the commands use it.

#[cfg(not(feature = "sandbox"))]
mod no_sandbox;
#[cfg(feature = "sandbox")]
pub mod sandbox;
#[cfg(not(feature = "sandbox"))]
use no_sandbox as sandbox;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

use crate::body;
use crate::cassette::recorder::Recorder;
use crate::cassette::redact::Redactor;
use crate::cassette::replay_transport::{INJECTED_BASE_URL, INJECTED_TOKEN_URL};
use crate::cassette::tap::RecordingTransport;
use crate::config::{Config, Secret};
use crate::mapping::{MappingRegistry, MappingSet};
use crate::middleware::auth::AuthLayer;
use crate::middleware::authorize::AuthorizeLayer;
use crate::middleware::body_limit::BodyLimitLayer;
use crate::middleware::edge::EdgeLayer;
use crate::middleware::memory_budget::MemoryBudgetLayer;
use crate::middleware::organization::OrganizationLayer;
use crate::middleware::request_id::RequestIdLayer;
use crate::middleware::timeout::TimeoutLayer;
use crate::middleware::trace::TraceLayer;
use crate::request::{GatewayRequest, GatewayResponse};
use crate::state::reload::{self, Reloader};
use crate::state::{AppState, CreatedLog, Directory};
use crate::upstream::token::{TokenCache, TokenSource};
use crate::upstream::transport::{ReqwestTransport, Transport};
use crate::upstream::{ClientSettings, UpstreamClient};

pub type GatewayService = BoxCloneService<GatewayRequest, GatewayResponse, Infallible>;

pub use sandbox::Sandbox;

/// Where a sandbox simulator listens and the credentials it accepts.
pub struct SimulatorEndpoint {
    pub base_url: String,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
}

/// A running gateway.
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    /// The simulators of sandbox connections.
    pub sandbox: Sandbox,
    shutdown: watch::Sender<bool>,
    /// Keeps the mapping folder watcher alive.
    _watcher: Box<dyn Send>,
}

impl Running {
    #[cfg(feature = "sandbox")]
    pub fn canvas_sim(&self, connection: &str) -> Option<&crate::sim::canvas::CanvasSimHandle> {
        self.sandbox.canvas(connection)
    }

    #[cfg(feature = "sandbox")]
    pub fn athena_sim(&self, connection: &str) -> Option<&crate::sim::athena::AthenaSimHandle> {
        self.sandbox.athena(connection)
    }

    /// Stops accepting connections and stops the simulators.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        self.sandbox.shutdown();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The tower stack around the front door (see `middleware`).
pub fn build_service(state: Arc<AppState>) -> GatewayService {
    let config = &state.config;
    let router_state = state.clone();
    let router = tower::service_fn(move |req: GatewayRequest| {
        let state = router_state.clone();
        async move {
            match state.recorder.clone() {
                Some(recorder) => crate::frontdoor::record::handle_recorded(recorder, state, req).await,
                None => crate::frontdoor::handle(state, req).await,
            }
        }
    });
    let stack = ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(EdgeLayer)
        .layer(TraceLayer)
        .layer(BodyLimitLayer::new(usize::try_from(config.server.body_limit_bytes).unwrap_or(usize::MAX)))
        .layer(TimeoutLayer::new(Duration::from_millis(config.server.request_timeout_ms)))
        .layer(AuthLayer::new(&config.clients))
        .layer(OrganizationLayer::new(state.directory.clone()))
        .layer(AuthorizeLayer)
        .layer(MemoryBudgetLayer::new(
            config.server.memory_budget(),
            Duration::from_millis(config.server.memory_budget_wait_ms),
        ))
        .service(router);
    BoxCloneService::new(stack)
}

/// Builds the state: starts simulators, creates one upstream client per connection, loads mappings.
pub async fn build_state(config: Config) -> Result<(Arc<AppState>, Sandbox), String> {
    build_state_with(config, None).await
}

/// Like `build_state`, but with `injected` every connection uses that transport instead of the network
/// or a simulator (replay).
pub async fn build_state_with(
    config: Config,
    injected: Option<Arc<dyn Transport>>,
) -> Result<(Arc<AppState>, Sandbox), String> {
    let set = load_mappings(&config.server.mappings_dir)?;
    build_state_from(config, set, injected).await
}

/// The mapping folder, compiled; every problem listed.
pub fn load_mappings(dir: &std::path::Path) -> Result<MappingSet, String> {
    MappingSet::load_dir(dir).map_err(|diagnostics| {
        let lines: Vec<String> = diagnostics.iter().map(|d| format!("  - {d}")).collect();
        format!("mapping set has {} problem(s):\n{}", diagnostics.len(), lines.join("\n"))
    })
}

/// Like `build_state_with`, with the mapping set already loaded (replay loads a folder once for all its
/// cassettes).
pub async fn build_state_from(
    config: Config,
    set: MappingSet,
    injected: Option<Arc<dyn Transport>>,
) -> Result<(Arc<AppState>, Sandbox), String> {
    let problems = reload::fit_problems(&config, &set);
    if !problems.is_empty() {
        return Err(format!("configuration does not fit the mappings:\n  - {}", problems.join("\n  - ")));
    }

    let mut sandbox = Sandbox::default();
    let mut clients = HashMap::new();
    for (name, conn) in &config.connections {
        let mapping = set
            .mappings
            .values()
            .find(|m| m.ehr == conn.ehr)
            .ok_or_else(|| format!("no mapping for EHR `{}`", conn.ehr))?;
        let (base_url, token_url, client_id, client_secret) = if injected.is_some() {
            (INJECTED_BASE_URL.to_string(), INJECTED_TOKEN_URL.to_string(), "replay".to_string(), Secret::new("replay"))
        } else if conn.simulator {
            let started = sandbox.start(name, &conn.ehr).await?;
            (started.base_url, started.token_url, started.client_id, started.client_secret)
        } else {
            let secret = conn.client_secret.as_ref().ok_or("client_secret missing")?.resolve()?;
            (
                conn.base_url.clone().unwrap_or_default(),
                conn.token_url.clone().unwrap_or_default(),
                conn.client_id.clone().unwrap_or_default(),
                secret,
            )
        };
        let transport: Arc<dyn Transport> = match &injected {
            Some(t) => t.clone(),
            None => Arc::new(ReqwestTransport::new(
                Duration::from_millis(conn.connect_timeout_ms),
                config.server.max_upstream_answer_bytes,
            )?),
        };
        // Recording taps API calls only: the token cache keeps the bare transport.
        let api_transport: Arc<dyn Transport> = match (&config.record.dir, &injected) {
            (Some(_), None) => Arc::new(RecordingTransport::new(transport.clone(), &base_url)),
            _ => transport.clone(),
        };
        let timeout = Duration::from_millis(conn.timeout_ms);
        let tokens = TokenCache::new(
            TokenSource {
                ehr: mapping.display_name.clone(),
                token_url,
                client_id,
                client_secret,
                client_auth: mapping.auth.client_auth,
                scope: mapping.auth.scope.clone(),
                refresh_before: Duration::from_secs(mapping.auth.refresh_before_expiry_secs),
                timeout,
            },
            transport.clone(),
        );
        let settings = ClientSettings {
            name: name.clone(),
            ehr: mapping.display_name.clone(),
            base_url: base_url.trim_end_matches('/').to_string(),
            timeout,
            max_concurrency: conn.max_concurrency,
            max_attempts: conn.max_attempts,
            serialize_writes: conn.serialize_writes,
            cache_lookups: config.record.dir.is_none(),
            params: {
                let mut params = conn.params.clone();
                if conn.simulator {
                    params.extend(sandbox::simulator_params(&conn.ehr));
                }
                params
            },
        };
        clients.insert(name.clone(), Arc::new(UpstreamClient::new(settings, api_transport, tokens)));
    }
    let registry = Arc::new(MappingRegistry::new(set));
    let recorder = match &config.record.dir {
        Some(dir) if injected.is_none() => {
            let real =
                config.connections.iter().filter(|(_, c)| !c.simulator).map(|(n, _)| n.as_str()).collect::<Vec<_>>();
            if !real.is_empty() && config.record.redact.pseudonym_key.is_none() {
                return Err(format!(
                    "recording from real connections ({}) needs record.redact.pseudonym_key: with the built-in sandbox key, pseudonyms of guessed ids could be recomputed",
                    real.join(", ")
                ));
            }
            let redactor = Redactor::new(config.record.redact.clone())?;
            tracing::info!(dir = %dir.display(), "recording replay cassettes");
            Some(Arc::new(Recorder::new(dir.clone(), redactor, config.public_base_url())))
        }
        _ => None,
    };
    let state = AppState {
        recorder,
        directory: Arc::new(Directory::from_config(&config)),
        reloader: Arc::new(Reloader::new(registry.clone(), config.clone())),
        registry,
        clients,
        public_base: config.public_base_url(),
        created: CreatedLog::default(),
        config,
    };
    Ok((Arc::new(state), sandbox))
}

type CallFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<GatewayResponse, Infallible>> + Send>>;

/// Boxing here, outside the accept loop's async block, gives the compiler a concrete future type to
/// prove `Send` for (it cannot for the boxed-error body type inside a generic async block).
fn call(service: GatewayService, req: Request<Incoming>) -> CallFuture {
    Box::pin(service.oneshot(req.map(body::boxed)))
}

/// Binds, builds and starts serving in the background.
pub async fn start(mut config: Config) -> Result<Running, String> {
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // With port 0 the real port is known only now; links must use it.
    config.server.listen = addr;
    let (state, sandbox) = build_state(config).await?;
    let watcher = reload::spawn(state.reloader.clone(), Duration::from_millis(200))?;
    let service = build_service(state.clone());
    let (shutdown, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let service = service.clone();
            tokio::spawn(async move {
                let hyper_service =
                    hyper::service::service_fn(move |req: Request<Incoming>| call(service.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper_service)
                    .await;
            });
        }
    });
    tracing::info!(%addr, "ehr-gateway listening");
    Ok(Running { addr, state, sandbox, shutdown, _watcher: Box::new(watcher) })
}
