//! The arbiter's published state: per backend ok / pressured / shedding / down, with a reason and
//! a suggested Retry-After. Also the wire format of `GET /v1/state`, which edges subscribe to.

use serde::{Deserialize, Serialize};

/// What an edge should do with a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Serve normally.
    Ok,
    /// Close to saturation: shed `sheddable` requests.
    Pressured,
    /// Saturated: shed `sheddable` and `standard`; only `critical` still gets in.
    Shedding,
    /// Not serving (health check failing): nothing gets in.
    Down,
}

impl BackendState {
    /// Lower-case name, as in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Ok => "ok",
            BackendState::Pressured => "pressured",
            BackendState::Shedding => "shedding",
            BackendState::Down => "down",
        }
    }

    /// Numeric value for the `okome_arbiter_backend_state` gauge (0 ok … 3 down).
    pub fn level(self) -> i64 {
        match self {
            BackendState::Ok => 0,
            BackendState::Pressured => 1,
            BackendState::Shedding => 2,
            BackendState::Down => 3,
        }
    }
}

/// The arbiter's decision about one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// The backend as edges name it: `IP:PORT` exactly as in the edges' pool `backends`.
    pub backend: String,
    /// The engine's name in the arbiter config.
    pub engine: String,
    /// Engine kind: `vllm`, `ollama`, `tfserving`.
    pub kind: String,
    /// The decision.
    pub state: BackendState,
    /// Why, in words and by rule (e.g. `queue_depth 42 >= 32`); `ok` when nothing is wrong.
    pub reason: String,
    /// The rule that decided (`queue_depth`, `kv_cache`, `gpu_headroom`, `over_budget`,
    /// `health`, or `none`): the `reason` label of edge shed metrics.
    pub rule: String,
    /// Suggested Retry-After in seconds when not ok: queue depth over its recent drain rate.
    pub retry_after_secs: u64,
    /// The engine's waiting queue, when it exposes one.
    pub queue_depth: Option<u64>,
    /// Requests the engine finished per second recently, when known.
    pub drain_per_sec: Option<f64>,
    /// KV-cache use 0..1 (vLLM), when known.
    pub kv_cache_usage: Option<f64>,
    /// GPU memory the engine's processes hold, in bytes, when NVML is there.
    pub gpu_memory_bytes: Option<u64>,
    /// Unix milliseconds since this state holds.
    pub since_ms: u64,
}

/// One GPU (or MIG device) as NVML reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuStatus {
    /// `GPU-…` or `MIG-…` UUID.
    pub uuid: String,
    /// Device name.
    pub name: String,
    /// Total memory, bytes.
    pub memory_total_bytes: u64,
    /// Used memory, bytes.
    pub memory_used_bytes: u64,
    /// Free memory, bytes.
    pub memory_free_bytes: u64,
    /// Utilization percent, when reported.
    pub utilization_percent: Option<u32>,
}

/// Whether GPU signals are available.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSource {
    /// `nvml`, `fake` or `none`.
    pub kind: String,
    /// Human-readable status (e.g. why NVML is not available).
    pub message: String,
}

/// Everything the arbiter publishes; versioned, a new version on every change of a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArbiterState {
    /// Monotonic version (restarts at 1 with the arbiter: edges treat any change as new).
    pub version: u64,
    /// Unix milliseconds when this version was computed; edges ignore state older than their
    /// `arbiter.max_age`.
    pub generated_at_ms: u64,
    /// Where GPU signals come from.
    pub gpu_source: GpuSource,
    /// GPUs seen.
    pub gpus: Vec<GpuStatus>,
    /// Per-backend decisions.
    pub backends: Vec<BackendStatus>,
}
