//! okome: an edge proxy for self-hosted LLM inference, built on Pingora.
//!
//! The stream plane (`edge`) relays token streams from model servers chunk by chunk; the
//! simulator (`sim`) speaks the engines' real wire formats for the demo, tests and benchmarks.

pub mod sim;
pub mod api;
pub mod config;
pub mod metrics;
pub mod stream;
pub mod upstream;
pub mod admin;
pub mod edge;
pub mod check;
pub mod demo;
pub mod runtime;
