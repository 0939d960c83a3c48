//! Simulated model servers (vLLM, Ollama, TF Serving, llama.cpp's llama-server) that speak the
//! engines' real wire formats.
//!
//! Each simulator listens on its own port, paces tokens on absolute deadlines, queues requests
//! beyond `max_concurrent`, counts client aborts in every phase, and injects faults on demand.
//! `/_sim/stats`, `/_sim/faults` and `/_sim/config` on the same port control it from outside.

pub mod cli;
mod config;
mod continuation;
mod embeddings;
mod faults;
mod gen;
mod grpc;
mod llamacpp;
mod llamacpp_slots;
mod ollama;
mod ollama_compat;
mod ollama_manage;
mod openai;
mod prefix_cache;
pub mod pressure;
mod responses;
mod server;
mod stats;
mod style;
mod tfserving;
mod tokens;
mod vllm;
mod vllm_metrics;

use std::net::SocketAddr;
use std::sync::Arc;

pub use cli::{SimArgs, SimError};
pub use config::{JsonStyle, Runner, SimConfig, SimFile, SimKind};
pub use faults::Faults;
pub use pressure::{Pressure, SimGpu};
pub use stats::SimStats;

/// Starts a simulator on the current tokio runtime; returns once it is listening.
pub async fn start(cfg: SimConfig) -> std::io::Result<SimHandle> {
    let shared = server::start(cfg).await?;
    Ok(SimHandle { shared })
}

/// A running simulator; clones share it.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<server::Shared>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("kind", &self.kind())
            .field("addr", &self.addr())
            .finish()
    }
}

impl SimHandle {
    /// The bound address (the real port when `listen` used port 0).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The bound gRPC address (TF Serving's gRPC API), when `grpc_listen` asked for one.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.shared.grpc_addr
    }

    /// The engine kind.
    pub fn kind(&self) -> SimKind {
        self.shared.cfg.kind
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Replaces the faults: new requests see them; `refuse_connections` acts at once.
    pub fn set_faults(&self, f: Faults) {
        self.shared.set_faults(f);
    }

    /// Changes the decode speed for new requests.
    pub fn set_tokens_per_second(&self, tps: f64) {
        self.shared.set_tps(tps);
    }

    /// Changes how many sequences generate at once (queued requests start if slots opened).
    pub fn set_max_concurrent(&self, n: usize) {
        self.shared.sched.set_max(n);
    }

    /// Makes the engine report extra load (queue, KV cache, GPU memory); see [`Pressure`].
    pub fn set_pressure(&self, p: Pressure) {
        *self.shared.pressure.write() = p;
    }

    /// Stops listening and closes every connection mid-response (the engine died).
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }
}
