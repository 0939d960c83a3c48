//! Backend pools: who is healthy, how loaded, which models each serves, and which one gets the
//! next request.
//!
//! - [`backend`]: one engine's live state (health, ejection, in-flight, queue depth), all atomics.
//! - [`pool`]: a set of interchangeable backends of one kind, and the models they serve.
//! - [`select`]: power-of-two-choices on in-flight plus the engine's queue.
//! - [`hash`]: sticky routing by consistent hashing on a request key.
//! - [`affinity`]: prefix-affinity picks, so engines reuse their prompt prefix caches.
//! - [`health`]: active probes per engine kind, queue scraping and model discovery.
//! - [`grpc_health`]: the gRPC side of pools with `grpc_port`, probed with `GetModelStatus`.
//! - [`arbiter`]: the GPU arbiter's decisions, long-polled and attached to backends.
//! - [`dns`]: `HOST:PORT` backends resolved at start and again periodically.

pub mod affinity;
pub mod arbiter;
pub mod backend;
pub mod dns;
pub mod grpc_health;
pub mod hash;
pub mod health;
pub mod pool;
pub mod select;

pub use backend::{Backend, InflightGuard};
pub use pool::{Pool, Upstreams};

/// `n` healthy backends on loopback ports from `first_port`, for selection tests.
#[cfg(test)]
pub(crate) fn healthy_backends(n: usize, first_port: u16) -> Vec<std::sync::Arc<Backend>> {
    let m = crate::metrics::Metrics::new();
    (0..n)
        .map(|i| {
            let b = std::sync::Arc::new(Backend::new(
                "p",
                std::net::SocketAddr::from(([127, 0, 0, 1], first_port + i as u16)),
                m.clone(),
            ));
            b.probe_result(true, 1, 1, "");
            b
        })
        .collect()
}
