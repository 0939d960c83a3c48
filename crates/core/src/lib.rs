//! What every okome component shares and none owns: config building blocks, the control
//! runtime and shutdown signal, the HTTP client, the supervisor of background tasks, metrics plumbing.

pub mod config;
pub mod http;
pub mod metrics;
pub mod runtime;
pub mod supervisor;
