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
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use okome_longpoll::MAX_WAIT;
use okome_longpoll::{bad_wait, error, serve_killable, Answer, LongPollQuery};

struct ApiState {
    store: Arc<dyn PolicyStore>,
    metrics: ControlMetrics,
    key_lookups: Arc<AtomicU64>,
    /// Flips to true on shutdown: long-polls end and connections are cut.
    stop: watch::Receiver<bool>,
    /// Required on `/v1/*` when set.
    token: Option<okome_core::config::Secret>,
}

/// Whether the caller presented the API token (always true when none is configured).
fn authorized(s: &ApiState, headers: &HeaderMap, endpoint: &str) -> Result<(), Box<Response>> {
    match &s.token {
        Some(t) if !t.matches_bearer(headers.get(header::AUTHORIZATION)) => {
            count(s, endpoint, StatusCode::UNAUTHORIZED);
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "this control plane requires its API token: `Authorization: Bearer TOKEN` (api_token)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(Box::new(r))
        }
        _ => Ok(()),
    }
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
    let token = store.api_token();
    if token.is_none() {
        log::warn!("control API has no api_token: anyone who can reach {listen} can read tenants and limits");
    }
    let state = Arc::new(ApiState {
        store,
        metrics,
        key_lookups: key_lookups.clone(),
        stop: stop_rx.clone(),
        token,
    });
    let app = Router::new()
        .route("/v1/snapshot", get(snapshot))
        .route("/v1/keys/{sha256}", get(key))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page))
        .with_state(state);
    let task = serve_killable(listener, app, stop_rx, "control API");
    log::info!("control API listening on {addr}");
    Ok(ControlHandle {
        addr,
        key_lookups,
        stop: stop_tx,
        task,
    })
}

fn count(s: &ApiState, endpoint: &str, status: StatusCode) {
    s.metrics
        .requests
        .with_label_values(&[endpoint, status.as_str()])
        .inc();
}

async fn snapshot(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<LongPollQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorized(&s, &headers, "snapshot") {
        return *r;
    }
    let wait = match q.wait() {
        Some(w) => w,
        None => {
            count(&s, "snapshot", StatusCode::BAD_REQUEST);
            return bad_wait();
        }
    };
    let changes = s.store.watch();
    let answer = okome_longpoll::answer(
        changes,
        |_| s.store.current(),
        |p| p.version(),
        q.known(&headers),
        wait,
        s.stop.clone(),
    )
    .await;
    match answer {
        Answer::Newer(p) => {
            count(&s, "snapshot", StatusCode::OK);
            okome_longpoll::current(p.version(), &p.snapshot)
        }
        Answer::Unchanged(v) => {
            count(&s, "snapshot", StatusCode::NOT_MODIFIED);
            okome_longpoll::not_modified(v)
        }
        Answer::ShuttingDown => {
            count(&s, "snapshot", StatusCode::SERVICE_UNAVAILABLE);
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "control plane shutting down",
            )
        }
    }
}

async fn key(
    State(s): State<Arc<ApiState>>,
    Path(hash): Path<String>,
    headers: HeaderMap,
) -> Response {
    s.key_lookups.fetch_add(1, Ordering::Relaxed);
    if let Err(r) = authorized(&s, &headers, "keys") {
        return *r;
    }
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
