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
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use okome_longpoll::MAX_WAIT;
use okome_longpoll::{bad_wait, error, serve_killable, Answer, LongPollQuery};

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
    let api_task = serve_killable(listener, app, stop_rx, "arbiter API");
    log::info!("arbiter API listening on {addr}");
    Ok(ArbiterHandle {
        addr,
        state: rx,
        stop: stop_tx,
        tasks: vec![loop_task, api_task],
    })
}

async fn state_page(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<LongPollQuery>,
    headers: HeaderMap,
) -> Response {
    let wait = match q.wait() {
        Some(w) => w,
        None => return bad_wait(),
    };
    let answer = okome_longpoll::answer(
        s.state.clone(),
        |rx| rx.borrow_and_update().clone(),
        |st| st.version,
        q.known(&headers),
        wait,
        s.stop.clone(),
    )
    .await;
    match answer {
        Answer::Newer(st) => okome_longpoll::current(st.version, &*st),
        Answer::Unchanged(v) => okome_longpoll::not_modified(v),
        Answer::ShuttingDown => error(StatusCode::SERVICE_UNAVAILABLE, "arbiter shutting down"),
    }
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
