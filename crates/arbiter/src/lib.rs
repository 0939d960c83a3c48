//! The GPU arbiter on the core node: watches the GPU (NVML) and the engines, decides per backend
//! ok / pressured / shedding / down with hysteresis, and publishes that to the edges.
//!
//! - [`config`]: `arbiter.yaml` ([`ArbiterConfig`]).
//! - [`plan`]: `okome arbiter plan`: Mode A budgets / Mode B devices, engine settings.
//! - [`gpu`]: GPU sources ([`NvmlProbe`], [`FakeProbe`], [`NoProbe`]).
//! - [`signals`]: engine probes (vLLM, Ollama, TF Serving).
//! - [`rules`]: the pure decision logic with hysteresis.
//! - [`api`]: `GET /v1/state` (versioned, long-poll), `/healthz`, `/metrics`; [`start`].
//! - [`run`]: the probe loop.
//! - [`cli`]: `okome arbiter` and `okome arbiter plan`.

pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod gpu;
pub use okome_wire::arbiter as model;
pub mod plan;
pub mod rules;
pub mod run;
pub mod signals;

pub use api::{start, ArbiterHandle};
pub use cli::{run, ArbiterArgs, ArbiterCommand};
pub use config::{ArbiterConfig, Budget, EngineKind, EngineSpec, GpuSourceKind, Mode, Rules};
pub use error::{ArbiterError, Problem};
pub use gpu::{FakeProbe, GpuProbe, GpuReading, NoProbe, NvmlProbe};
pub use model::{ArbiterState, BackendState, BackendStatus, GpuSource, GpuStatus};
pub use plan::{EngineSettings, Plan};
