//! Pressure knobs: make a simulated engine look loaded (a longer waiting queue, a fuller KV
//! cache) and report GPU memory as a fake NVML would, so the arbiter can be driven in tests and
//! in the demo.

use serde::{Deserialize, Serialize};

/// Extra load a simulator reports on top of what its real queue shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pressure {
    /// Requests added to `vllm:num_requests_waiting` (a queue that is not really there).
    pub extra_waiting: u64,
    /// Overrides `vllm:kv_cache_usage_perc` (0..1).
    pub kv_cache_usage: Option<f64>,
    /// GPU memory this engine's process holds, in bytes (reported on `GET /_sim/gpu`).
    pub gpu_memory_used_bytes: u64,
    /// Total memory of the simulated GPU, in bytes (default 80 GiB).
    pub gpu_memory_total_bytes: Option<u64>,
}

/// Default size of the simulated GPU.
pub const DEFAULT_GPU_BYTES: u64 = 80 << 30;

/// `GET /_sim/gpu`: the simulated GPU, shaped like one NVML device with one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimGpu {
    /// A stable fake UUID (`GPU-sim-<port>`).
    pub uuid: String,
    /// Device name.
    pub name: String,
    /// Total memory, bytes.
    pub memory_total_bytes: u64,
    /// Used memory, bytes.
    pub memory_used_bytes: u64,
    /// Free memory, bytes.
    pub memory_free_bytes: u64,
    /// Utilization percent (running sequences over capacity).
    pub utilization_percent: u32,
    /// Processes holding memory: this engine.
    pub processes: Vec<SimGpuProcess>,
}

/// A process on the simulated GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimGpuProcess {
    /// Process id (the simulator's own).
    pub pid: u32,
    /// Memory it holds, bytes.
    pub used_bytes: u64,
}
