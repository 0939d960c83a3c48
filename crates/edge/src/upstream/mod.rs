//! Backend pools: who is healthy, how loaded, which models each serves, and which one gets the
//! next request.
//!
//! - [`backend`]: one engine's live state (health, ejection, in-flight, queue depth), all atomics.
//! - [`pool`]: a set of interchangeable backends of one kind, and the models they serve.
//! - [`select`]: power-of-two-choices on in-flight plus the engine's queue.
//! - [`hash`]: sticky routing by consistent hashing on a request key.
//! - [`affinity`]: prefix-affinity picks, so engines reuse their prompt prefix caches.
//! - [`health`]: active probes per engine kind, queue scraping and model discovery.
//! - [`grpc_health`]: the gRPC side of pools with `grpc_port`, probed with `GetModelStatus`.
//! - [`arbiter`]: the GPU arbiter's decisions, long-polled and attached to backends.
//! - [`dns`]: `HOST:PORT` backends resolved at start and again periodically.

pub mod affinity;
pub mod arbiter;
pub mod backend;
pub mod dns;
pub mod grpc_health;
pub mod hash;
pub mod health;
pub mod pool;
pub mod select;

pub use backend::{Backend, InflightGuard};
pub use pool::{Pool, Upstreams};
