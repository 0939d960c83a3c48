//! The okome edge: a Pingora proxy that routes LLM requests to engine pools and relays token
//! streams chunk by chunk.
//!
//! - [`config`]: the edge's YAML and its compile into typed values ([`config::CompiledEdge`]).
//! - [`edge`]: the proxy, one file per phase, and [`edge::server`], which assembles it.
//! - [`upstream`]: pools, backends, health probes, backend selection, the arbiters' feeds.
//! - [`stream`]: the stream tap (SSE / NDJSON framing, token counts, timings).
//! - [`policy`]: the policy cache in front of the control plane.
//! - [`admin`]: the admin listener (`/metrics`, `/status`, `/ui`).
//! - [`api`]: the client-facing APIs and their error shapes; [`metrics`]: the edge's metrics.

pub mod admin;
pub mod api;
pub mod config;
pub mod edge;
pub mod failover;
pub mod metrics;
pub mod policy;
pub mod resume;
pub mod stream;
pub mod tls;
pub mod upstream;
