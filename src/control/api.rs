//! The control API edges talk to: `GET /v1/snapshot` (versioned, long-poll), `GET
//! /v1/keys/{sha256}`, `/healthz`, `/metrics`.
//!
//! Long-poll: `GET /v1/snapshot?since=V&wait=30s` answers at once when the current version is
//! not `V`; otherwise it waits for a publication for up to `wait` (capped at 60 s) and answers
//! `304 Not Modified` if none came. `If-None-Match: "V"` works like `since=V`.

use super::metrics::ControlMetrics;
use super::store::PolicyStore;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Longest a long-poll may wait, whatever `wait` asks for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

struct ApiState {
    store: Arc<dyn PolicyStore>,
    metrics: ControlMetrics,
    key_lookups: Arc<AtomicU64>,
    /// Flips to true on shutdown: long-polls end and connections are cut.
    stop: watch::Receiver<bool>,
}

/// A running control API. Dropping it leaves the server running; call [`shutdown`](Self::shutdown)
/// to stop it.
#[derive(Debug)]
pub struct ControlHandle {
    addr: SocketAddr,
    key_lookups: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ControlHandle {
    /// The address the API is bound to (useful after binding port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many `GET /v1/keys/…` requests this server has answered (any status).
    pub fn key_lookups(&self) -> u64 {
        self.key_lookups.load(Ordering::Relaxed)
    }

    /// Stops listening and closes every open connection, long-polls included, as if the
    /// control plane died; returns when the listener is closed.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        // Connections are cut by the stop signal, so this ends promptly; the bound is a backstop.
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Binds `listen` and serves the control API for `store` on the current runtime; returns at once.
pub async fn start(store: Arc<dyn PolicyStore>, listen: SocketAddr) -> io::Result<ControlHandle> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let key_lookups = Arc::new(AtomicU64::new(0));
    let metrics = store.metrics().unwrap_or_default();
    let state = Arc::new(ApiState {
        store,
        metrics,
        key_lookups: key_lookups.clone(),
        stop: stop_rx.clone(),
    });
    let app = Router::new()
        .route("/v1/snapshot", get(snapshot))
        .route("/v1/keys/{sha256}", get(key))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page))
        .with_state(state);
    let listener = KillableListener {
        inner: listener,
        stop: stop_rx.clone(),
    };
    let mut graceful = stop_rx;
    let task = tokio::spawn(async move {
        let shutdown = async move {
            stopped(&mut graceful).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            log::error!("control API on {addr} stopped: {e}");
        }
    });
    log::info!("control API listening on {addr}");
    Ok(ControlHandle {
        addr,
        key_lookups,
        stop: stop_tx,
        task,
    })
}

/// Resolves when `shutdown()` was called. A handle dropped without it leaves the server running
/// for the life of the runtime, so a dropped sender must not read as "stop".
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn count(s: &ApiState, endpoint: &str, status: StatusCode) {
    s.metrics
        .requests
        .with_label_values(&[endpoint, status.as_str()])
        .inc();
}

#[derive(Debug, Deserialize)]
struct SnapshotQuery {
    since: Option<u64>,
    wait: Option<String>,
}

fn etag(version: u64) -> HeaderValue {
    // A decimal number in quotes is always a valid header value.
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The version named by `If-None-Match: "V"` (or `W/"V"`), if it names exactly one.
fn if_none_match(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// `30s`, `500ms`, or a bare number of seconds.
fn parse_wait(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    humantime::parse_duration(s).ok()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn snapshot(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<SnapshotQuery>,
    headers: HeaderMap,
) -> Response {
    let wait = match q.wait.as_deref().map(parse_wait) {
        None => Duration::ZERO,
        Some(Some(d)) => d.min(MAX_WAIT),
        Some(None) => {
            count(&s, "snapshot", StatusCode::BAD_REQUEST);
            return error(
                StatusCode::BAD_REQUEST,
                "bad wait: write it like \"30s\" or \"500ms\"",
            );
        }
    };
    let known = q.since.or_else(|| if_none_match(&headers));
    // Subscribe before reading the version, so a publication in between is not missed.
    let mut changes = s.store.watch();
    let mut current = s.store.current();
    if let Some(known) = known {
        if current.version() == known && !wait.is_zero() {
            let mut stop = s.stop.clone();
            let deadline = tokio::time::sleep(wait);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break; // The store is gone; answer with what we have.
                        }
                        current = s.store.current();
                        if current.version() != known {
                            break;
                        }
                    }
                    _ = &mut deadline => break,
                    _ = stopped(&mut stop) => {
                        count(&s, "snapshot", StatusCode::SERVICE_UNAVAILABLE);
                        return error(StatusCode::SERVICE_UNAVAILABLE, "control plane shutting down");
                    }
                }
            }
        }
        if current.version() == known {
            count(&s, "snapshot", StatusCode::NOT_MODIFIED);
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag(known))]).into_response();
        }
    }
    count(&s, "snapshot", StatusCode::OK);
    (
        [
            (header::ETAG, etag(current.version())),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Json(current.snapshot.clone()),
    )
        .into_response()
}

async fn key(State(s): State<Arc<ApiState>>, Path(hash): Path<String>) -> Response {
    s.key_lookups.fetch_add(1, Ordering::Relaxed);
    let hash = hash.to_ascii_lowercase();
    if !super::config::is_sha256_hex(&hash) {
        count(&s, "keys", StatusCode::BAD_REQUEST);
        return error(
            StatusCode::BAD_REQUEST,
            "not a SHA-256 hash: expected 64 hex digits",
        );
    }
    match s.store.current().lookup(&hash) {
        Some(info) => {
            count(&s, "keys", StatusCode::OK);
            (
                [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
                Json(info),
            )
                .into_response()
        }
        None => {
            count(&s, "keys", StatusCode::NOT_FOUND);
            error(StatusCode::NOT_FOUND, "unknown key")
        }
    }
}

async fn healthz(State(s): State<Arc<ApiState>>) -> Response {
    count(&s, "healthz", StatusCode::OK);
    "ok\n".into_response()
}

async fn metrics_page(State(s): State<Arc<ApiState>>) -> Response {
    count(&s, "metrics", StatusCode::OK);
    // A store without its own registry does not set the gauge; set it from what is served.
    s.metrics
        .snapshot_version
        .set(s.store.current().version() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// A TCP listener whose connections are cut when `stop` turns true: graceful shutdown alone
/// would wait for open long-polls and keep-alive connections, and a dying control plane does not.
struct KillableListener {
    inner: TcpListener,
    stop: watch::Receiver<bool>,
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let _ = stream.set_nodelay(true);
        let mut stop = self.stop.clone();
        let io = KillableStream {
            inner: stream,
            killed: Box::pin(async move {
                stopped(&mut stop).await;
            }),
            dead: false,
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that reads EOF and fails writes once the server stops.
struct KillableStream {
    inner: TcpStream,
    killed: Pin<Box<dyn Future<Output = ()> + Send>>,
    dead: bool,
}

impl KillableStream {
    /// Polls the stop signal; registering the waker makes an idle connection wake on stop.
    fn is_dead(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        self.dead
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "control API stopped")
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_dead(cx) {
            return Poll::Ready(Ok(())); // EOF: the server hangs up.
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_dead(cx) {
            return Poll::Ready(Err(gone()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_dead(cx) {
            return Poll::Ready(Err(gone()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
