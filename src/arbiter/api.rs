//! The arbiter's HTTP API: `GET /v1/state` (versioned, long-poll), `/healthz`, `/metrics`.
//!
//! Long-poll: `GET /v1/state?since=V&wait=30s` answers at once when the current version is not
//! `V`; otherwise it waits for a new version for up to `wait` (capped at 60 s) and answers
//! `304 Not Modified` if none came. `If-None-Match: "V"` works like `since=V`. The version
//! changes when a decision an edge acts on changes (state, rule, Retry-After); numbers such
//! as queue depth and `generated_at_ms` are refreshed every round under the same version, so a
//! `304` means "what you hold is still current".

use super::config::ArbiterConfig;
use super::model::ArbiterState;
use super::run::{self, ArbiterMetrics};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Longest a long-poll may wait, whatever `wait` asks for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

struct ApiState {
    state: watch::Receiver<Arc<ArbiterState>>,
    metrics: ArbiterMetrics,
    stop: watch::Receiver<bool>,
}

/// A running arbiter (loop and API). Dropping it leaves both running; call
/// [`shutdown`](Self::shutdown) to stop them.
#[derive(Debug)]
pub struct ArbiterHandle {
    addr: SocketAddr,
    state: watch::Receiver<Arc<ArbiterState>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ArbiterHandle {
    /// The address the API is bound to (the real port after binding port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state currently published.
    pub fn state(&self) -> ArbiterState {
        (**self.state.borrow()).clone()
    }

    /// A receiver that sees every published state (each round), for in-process subscribers.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ArbiterState>> {
        self.state.clone()
    }

    /// Stops the loop and the API, cutting open connections (long-polls included); returns when
    /// both ended.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for mut task in self.tasks {
            // Everything ends on the stop signal; the bound is a backstop.
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

/// Starts the arbiter for `cfg` on the current runtime, its API on `listen` (`cfg.listen` is
/// ignored here, so tests and the demo can bind port 0); returns once listening.
pub async fn start(cfg: ArbiterConfig, listen: SocketAddr) -> io::Result<ArbiterHandle> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let metrics = ArbiterMetrics::new();
    // Opening NVML dlopens a library and may touch the driver: keep it off the runtime threads.
    let probe_cfg = cfg.clone();
    let probe = tokio::task::spawn_blocking(move || run::probe_for(&probe_cfg))
        .await
        .map_err(io::Error::other)?;
    let arb = run::Arbiter::new(cfg, probe, metrics.clone());
    let (tx, rx) = watch::channel(Arc::new(arb.initial()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let loop_task = tokio::spawn(run::run_loop(arb, tx, stop_rx.clone()));

    let api = Arc::new(ApiState {
        state: rx.clone(),
        metrics,
        stop: stop_rx.clone(),
    });
    let app = Router::new()
        .route("/v1/state", get(state_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page))
        .with_state(api);
    let listener = KillableListener {
        inner: listener,
        stop: stop_rx.clone(),
    };
    let mut graceful = stop_rx;
    let api_task = tokio::spawn(async move {
        let shutdown = async move {
            stopped(&mut graceful).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            log::error!("arbiter API on {addr} stopped: {e}");
        }
    });
    log::info!("arbiter API listening on {addr}");
    Ok(ArbiterHandle {
        addr,
        state: rx,
        stop: stop_tx,
        tasks: vec![loop_task, api_task],
    })
}

/// Resolves when `shutdown()` was called. A handle dropped without it leaves the arbiter
/// running for the life of the runtime, so a dropped sender must not read as "stop".
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[derive(Debug, Deserialize)]
struct StateQuery {
    since: Option<u64>,
    wait: Option<String>,
}

fn etag(version: u64) -> HeaderValue {
    // A decimal number in quotes is always a valid header value.
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

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

async fn state_page(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<StateQuery>,
    headers: HeaderMap,
) -> Response {
    let wait = match q.wait.as_deref().map(parse_wait) {
        None => Duration::ZERO,
        Some(Some(d)) => d.min(MAX_WAIT),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad wait: write it like \"30s\" or \"500ms\"",
            )
        }
    };
    let known = q.since.or_else(|| if_none_match(&headers));
    let mut rx = s.state.clone();
    let mut current = rx.borrow_and_update().clone();
    if let Some(known) = known {
        if current.version == known && !wait.is_zero() {
            let mut stop = s.stop.clone();
            let deadline = tokio::time::sleep(wait);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            break; // The loop is gone; answer with what we have.
                        }
                        current = rx.borrow_and_update().clone();
                        if current.version != known {
                            break;
                        }
                    }
                    _ = &mut deadline => break,
                    _ = stopped(&mut stop) => {
                        return error(StatusCode::SERVICE_UNAVAILABLE, "arbiter shutting down");
                    }
                }
            }
        }
        if current.version == known {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag(known))]).into_response();
        }
    }
    (
        [
            (header::ETAG, etag(current.version)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Json(&*current),
    )
        .into_response()
}

async fn healthz() -> Response {
    "ok\n".into_response()
}

async fn metrics_page(State(s): State<Arc<ApiState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// A TCP listener whose connections are cut when `stop` turns true: graceful shutdown alone
/// would wait for open long-polls and keep-alive connections.
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

/// A connection that reads EOF and fails writes once the arbiter stops.
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
    io::Error::new(io::ErrorKind::ConnectionAborted, "arbiter API stopped")
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
