//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/status`.

use crate::metrics::Metrics;
use crate::upstream::Upstreams;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug)]
struct AdminState {
    metrics: Metrics,
    upstreams: Arc<Upstreams>,
    started: Instant,
}

/// Binds the admin listener and serves it on the current runtime.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    upstreams: Arc<Upstreams>,
) -> std::io::Result<SocketAddr> {
    let state = Arc::new(AdminState {
        metrics,
        upstreams,
        started: Instant::now(),
    });
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            log::error!("admin listener stopped: {e}");
        }
    });
    Ok(local)
}

async fn metrics_page(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    for p in &s.upstreams.pools {
        for b in &p.backends {
            b.publish_health();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let missing: Vec<&str> = s
        .upstreams
        .pools
        .iter()
        .filter(|p| !p.any_eligible())
        .map(|p| p.name.as_str())
        .collect();
    if missing.is_empty() {
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
    pools: Vec<PoolStatus>,
}

#[derive(Serialize)]
struct PoolStatus {
    name: String,
    kind: &'static str,
    healthy_backends: usize,
    models: Vec<String>,
    backends: Vec<BackendStatus>,
}

#[derive(Serialize)]
struct BackendStatus {
    address: String,
    healthy: bool,
    ejected_for_seconds: f64,
    inflight: u64,
    queue_depth: u64,
}

async fn status(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let pools: Vec<PoolStatus> = s
        .upstreams
        .pools
        .iter()
        .map(|p| PoolStatus {
            name: p.name.clone(),
            kind: p.kind.as_str(),
            healthy_backends: p.backends.iter().filter(|b| b.eligible()).count(),
            models: p.models().into_iter().collect(),
            backends: p
                .backends
                .iter()
                .map(|b| BackendStatus {
                    address: b.id.clone(),
                    healthy: b.healthy(),
                    ejected_for_seconds: b.ejected_for_ms() as f64 / 1e3,
                    inflight: b.inflight(),
                    queue_depth: b.queue_depth(),
                })
                .collect(),
        })
        .collect();
    Json(Status {
        uptime_seconds: s.started.elapsed().as_secs_f64(),
        ready: pools.iter().all(|p| p.healthy_backends > 0),
        pools,
    })
}
