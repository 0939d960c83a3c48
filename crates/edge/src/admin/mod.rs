//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/status`, and the live status page
//! at `/` and `/ui` (one self-contained HTML page that polls `/status`).

mod live;
mod ui;

pub use live::{Live, LiveFigures};

use crate::edge::drain::Drain;
use crate::edge::reload::ReloadStatus;
use crate::metrics::Metrics;
use crate::upstream::arbiter::ArbiterFeeds;
use crate::upstream::dns::{Dns, NameStatus};
use crate::upstream::Upstreams;
use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

#[derive(Debug)]
struct AdminState {
    metrics: Metrics,
    upstreams: watch::Receiver<Arc<Upstreams>>,
    reload: Arc<ArcSwap<ReloadStatus>>,
    drain: Arc<Drain>,
    started: Instant,
    live: LiveFigures,
    arbiters: Option<Arc<ArbiterFeeds>>,
    dns: Arc<Dns>,
}

/// Binds the admin listener and serves it on the current runtime.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    upstreams: watch::Receiver<Arc<Upstreams>>,
    arbiters: Option<Arc<ArbiterFeeds>>,
    reload: Arc<ArcSwap<ReloadStatus>>,
    drain: Arc<Drain>,
    dns: Arc<Dns>,
) -> std::io::Result<SocketAddr> {
    let state = Arc::new(AdminState {
        metrics,
        upstreams,
        reload,
        drain,
        started: Instant::now(),
        live: LiveFigures::default(),
        arbiters,
        dns,
    });
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/", get(ui::page))
        .route("/ui", get(ui::page))
        .with_state(state);
    // SO_REUSEPORT: during an upgrade the new process binds the admin address while the old
    // one still serves it.
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            log::error!("admin listener stopped: {e}");
        }
    });
    Ok(local)
}

async fn metrics_page(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let upstreams = s.upstreams.borrow().clone();
    for p in &upstreams.pools {
        for b in &p.backends {
            b.publish_health();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// `/readyz` query: `pools=all` (the default: every pool has a healthy backend, what a load
/// balancer in front of one edge wants) or `pools=any` (at least one has: what an ingress probing
/// its stream nodes wants, so one engine down does not take a node out for every model).
#[derive(serde::Deserialize, Default)]
struct ReadyQuery {
    #[serde(default)]
    pools: Option<String>,
}

async fn readyz(
    State(s): State<Arc<AdminState>>,
    axum::extract::Query(q): axum::extract::Query<ReadyQuery>,
) -> impl IntoResponse {
    let any = match q.pools.as_deref() {
        None | Some("all") => false,
        Some("any") => true,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("pools={other:?}: expected `all` or `any`\n"),
            )
        }
    };
    if s.drain.draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: draining (shutting down), {} request(s) in flight\n",
                s.drain.active()
            ),
        );
    }
    let upstreams = s.upstreams.borrow().clone();
    let missing: Vec<&str> = upstreams
        .pools
        .iter()
        .filter(|p| !p.any_eligible())
        .map(|p| p.name.as_str())
        .collect();
    if missing.is_empty() || (any && missing.len() < upstreams.pools.len()) {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: no healthy backend in pool(s) {}\n",
                missing.join(", ")
            ),
        )
    }
}

#[derive(Serialize)]
struct Status {
    uptime_seconds: f64,
    ready: bool,
    /// Every request this edge answered (`okome_requests_total`, all routes and statuses).
    requests_total: u64,
    /// Tokens relayed (`okome_tokens_total`).
    tokens_total: u64,
    /// Edge-wide live figures (all pools and backends).
    live: Live,
    /// The config generation serving and what the last reload did.
    config: ReloadStatus,
    /// The GPU arbiters this edge obeys, and whether their state is fresh enough to obey.
    arbiters: Vec<ArbiterLink>,
    pools: Vec<PoolStatus>,
}

#[derive(Serialize)]
struct ArbiterLink {
    address: String,
    /// False when unreachable or silent longer than `arbiter.max_age`: the edge then routes on
    /// its own health checks and in-flight counts.
    fresh: bool,
    version: u64,
}

/// The arbiter's decision about a backend, as this edge holds it.
#[derive(Serialize)]
struct ArbiterView {
    state: &'static str,
    reason: String,
    rule: String,
    retry_after_secs: u64,
    /// Whether the edge obeys it now (its arbiter is fresh).
    obeyed: bool,
}

#[derive(Serialize)]
struct PoolStatus {
    name: String,
    kind: &'static str,
    healthy_backends: usize,
    models: Vec<String>,
    /// In flight and queued over the pool's backends.
    inflight: u64,
    queue_depth: u64,
    live: Live,
    backends: Vec<BackendStatus>,
    /// Its `HOST:PORT` backends: what each resolved to, when, and the last lookup error.
    names: Vec<NameStatus>,
}

#[derive(Serialize)]
struct BackendStatus {
    address: String,
    /// The `HOST` it was resolved from; null for a backend listed as `IP:PORT`.
    name: Option<String>,
    healthy: bool,
    /// `ok`, `busy` (its probe fails but it delivers responses), `ejected` (passive ejection
    /// after live failures) or `down` (failing its health check).
    state: &'static str,
    ejected_for_seconds: f64,
    inflight: u64,
    queue_depth: u64,
    live: Live,
    arbiter: Option<ArbiterView>,
}

async fn status(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut live = s.live.compute(&s.metrics);
    let mut take = |pool: &str, backend: &str| {
        live.remove(&(pool.to_owned(), backend.to_owned()))
            .unwrap_or_default()
    };
    let upstreams = s.upstreams.borrow().clone();
    let pools: Vec<PoolStatus> = upstreams
        .pools
        .iter()
        .map(|p| {
            let backends: Vec<BackendStatus> = p
                .backends
                .iter()
                .map(|b| {
                    let ejected_ms = b.ejected_for_ms();
                    BackendStatus {
                        address: b.id.clone(),
                        name: b.name.clone(),
                        healthy: b.healthy(),
                        state: if !b.healthy() {
                            "down"
                        } else if ejected_ms > 0 {
                            "ejected"
                        } else if b.busy() {
                            "busy"
                        } else {
                            "ok"
                        },
                        ejected_for_seconds: ejected_ms as f64 / 1e3,
                        inflight: b.inflight(),
                        queue_depth: b.queue_depth(),
                        live: take(&p.name, &b.id),
                        arbiter: b.verdict().map(|v| ArbiterView {
                            state: v.status.state.as_str(),
                            reason: v.status.reason.clone(),
                            rule: v.status.rule.clone(),
                            retry_after_secs: v.status.retry_after_secs,
                            obeyed: s.arbiters.as_ref().is_some_and(|a| a.fresh(v.feed)),
                        }),
                    }
                })
                .collect();
            PoolStatus {
                name: p.name.clone(),
                kind: p.kind.as_str(),
                healthy_backends: p.backends.iter().filter(|b| b.eligible()).count(),
                models: p.models().into_iter().collect(),
                inflight: backends.iter().map(|b| b.inflight).sum(),
                queue_depth: backends.iter().map(|b| b.queue_depth).sum(),
                live: take(&p.name, ""),
                backends,
                names: s.dns.status(&p.name),
            }
        })
        .collect();
    let edge_live = take("", "");
    Json(Status {
        uptime_seconds: s.started.elapsed().as_secs_f64(),
        ready: !s.drain.draining() && pools.iter().all(|p| p.healthy_backends > 0),
        requests_total: counter_sum(&s.metrics.requests),
        tokens_total: counter_sum(&s.metrics.tokens),
        live: edge_live,
        config: (**s.reload.load()).clone(),
        arbiters: s
            .arbiters
            .as_ref()
            .map(|a| {
                a.summary()
                    .into_iter()
                    .map(|(address, fresh, version)| ArbiterLink {
                        address: address.to_string(),
                        fresh,
                        version,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        pools,
    })
}

/// Sum of every series of an integer counter vector.
fn counter_sum(v: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    v.collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}
