//! okome: an edge proxy for self-hosted LLM inference, built on Pingora.
//!
//! This crate is the `okome` command (edge, control plane, arbiter, simulator, demo, check) and
//! re-exports the component crates under one name for the tests and benchmarks:
//! `okome-edge` (the stream plane), `okome-control` (the control plane), `okome-arbiter` (the GPU
//! arbiter), on `okome-core`, `okome-wire`, `okome-engine` and `okome-longpoll`. The simulator is
//! `okome-sim`, never part of a component.

pub use okome_arbiter as arbiter;
pub use okome_control as control;
pub use okome_core::{runtime, supervisor};
pub use okome_edge::{admin, api, config, edge, metrics, policy, stream, upstream};
pub use okome_longpoll as longpoll;

pub mod check;
pub mod fuzzing;
