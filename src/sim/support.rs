//! Shared serving plumbing for the simulators: an HTTP/1 accept loop on a (loopback) listener, graceful stop, and
//! abrupt connection resets for fault injection.
//!
//! Every simulator is a plain async handler `Fn(Request<Incoming>) -> Future<Output = HandlerResult>`. Returning
//! `Err(ResetConnection)` makes the connection close with a TCP RST and no response at all, which is what a crashed
//! upstream or a dropped load-balancer connection looks like to the gateway.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Response type every simulator handler produces.
pub(crate) type SimResponse = Response<Full<Bytes>>;

/// What a handler returns: a response, or a request to drop the connection without answering.
pub(crate) type HandlerResult = Result<SimResponse, ResetConnection>;

/// How long open connections get to finish in-flight exchanges after a stop before they are dropped.
const GRACE: Duration = Duration::from_secs(2);

/// Returned by a handler to abort the connection with a TCP reset instead of sending a response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResetConnection;

impl fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection reset by simulator (fault injection)")
    }
}

impl std::error::Error for ResetConnection {}

/// Owner side of a simulator's stop signal. Triggering it, or dropping it, stops every server spawned with the
/// matching [`ShutdownSignal`]; tying the stop to the drop means a simulator never outlives its last handle.
pub(crate) struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    pub(crate) fn trigger(&self) {
        // send_replace succeeds even when no receiver is currently waiting.
        self.tx.send_replace(true);
    }
}

/// Cloneable listener side of the stop signal.
#[derive(Clone)]
pub(crate) struct ShutdownSignal {
    rx: watch::Receiver<bool>,
}

impl ShutdownSignal {
    /// Resolves once a stop was triggered or the trigger was dropped.
    pub(crate) async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An Err means the trigger is gone, which counts as a stop as well.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

pub(crate) fn shutdown_channel() -> (ShutdownTrigger, ShutdownSignal) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, ShutdownSignal { rx })
}

/// Never answers: parks the request until the simulator stops, then resets the connection so the stop is not held
/// up by it. Used for "hang" faults, where the client's own timeout must fire.
pub(crate) async fn hang(signal: &ShutdownSignal) -> HandlerResult {
    signal.wait().await;
    Err(ResetConnection)
}

/// Spawns the accept loop for `listener`; it runs until `signal` fires.
pub(crate) fn spawn_server<H, F>(listener: TcpListener, signal: ShutdownSignal, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HandlerResult> + Send + 'static,
{
    tokio::spawn(accept_loop(listener, signal, handler));
}

async fn accept_loop<H, F>(listener: TcpListener, signal: ShutdownSignal, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HandlerResult> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            biased;
            () = signal.wait() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                tokio::spawn(serve_connection(stream, signal.clone(), handler.clone()));
            }
            Err(err) => {
                // Typically EMFILE; back off briefly instead of spinning on the error.
                tracing::debug!(error = %err, "simulator accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Dropping the listener here closes the port, so new connections are refused after a stop.
}

async fn serve_connection<H, F>(stream: TcpStream, signal: ShutdownSignal, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HandlerResult> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(ResettableStream { inner: stream, reset: Arc::clone(&reset) });
    let service = service_fn(move |req| {
        let fut = handler(req);
        let reset = Arc::clone(&reset);
        async move {
            let result = fut.await;
            if result.is_err() {
                // hyper closes the connection when the service fails; the flag turns that close into an RST.
                reset.store(true, Ordering::SeqCst);
            }
            result
        }
    });
    // No timer is configured on purpose: hyper's header-read timeout would close idle keep-alive connections on its
    // own schedule and make gateway tests flaky; idle connections end when the simulator stops.
    let conn = http1::Builder::new().serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "simulator connection ended with an error");
            }
        }
        () = signal.wait() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(GRACE, conn.as_mut()).await;
        }
    }
}

/// A TCP stream that, when flagged, is closed with `SO_LINGER = 0` so the peer sees a reset rather than a clean FIN.
struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// Small request/response helpers the simulators share.

/// URL of a bound address. A wildcard bind (CLI `0.0.0.0`) is advertised as loopback, because the links a simulator hands out
/// (`Location`, page `href`s, presigned URLs) must be dialable.
pub(crate) fn advertised_url(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        }
    } else {
        addr.ip()
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// True if the Content-Type's media type (parameters ignored, case-insensitive) is one of `allowed`.
pub(crate) fn has_media_type(headers: &HeaderMap, allowed: &[&str]) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|media_type| allowed.iter().any(|a| media_type.eq_ignore_ascii_case(a)))
}
/// Client credentials from an `Authorization: Basic` header, if present and well-formed.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}
pub(crate) fn empty_response(status: StatusCode) -> SimResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
pub(crate) fn json_response(status: StatusCode, body: &Value) -> SimResponse {
    // Serialising a serde_json::Value cannot fail (all keys are strings).
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
