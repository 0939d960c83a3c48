//! okome: an edge proxy for self-hosted LLM inference, built on Pingora.
//!
//! The stream plane (`edge`) relays token streams from model servers chunk by chunk; the
//! simulator (`sim`) speaks the engines' real wire formats for the demo, tests and benchmarks.

pub mod admin;
pub mod api;
pub mod arbiter;
pub mod check;
pub mod config;
pub mod control;
pub mod demo;
pub mod edge;
pub mod fuzzing;
pub mod longpoll;
pub mod metrics;
pub mod policy;
pub mod runtime;
pub mod sim;
pub mod stream;
pub mod supervisor;
pub mod upstream;
