//! okome: an edge proxy for self-hosted LLM inference, built on Pingora.
//!
//! The stream plane (`edge`) relays token streams from model servers chunk by chunk; the
//! simulator (`sim`) speaks the engines' real wire formats for the demo, tests and benchmarks.

pub mod sim;
