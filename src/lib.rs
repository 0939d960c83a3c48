//! okome: an edge proxy for self-hosted LLM inference, built on Pingora.
//!
//! The stream plane (`edge`) relays token streams from model servers chunk by chunk; the control
//! plane (`control`) and the GPU arbiter (`arbiter`) beside it. The simulator is its own crate
//! (`okome-sim`), used by the `okome` binary's `sim` and `demo` commands, the tests and the
//! benchmarks, never by this library.

pub mod admin;
pub mod api;
pub mod arbiter;
pub mod check;
pub mod config;
pub mod control;
pub mod edge;
pub mod fuzzing;
pub mod longpoll;
pub mod metrics;
pub mod policy;
pub mod runtime;
pub mod stream;
pub mod supervisor;
pub mod upstream;
