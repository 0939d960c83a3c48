//! The OKOME control plane: tenants, hashed API keys, model routes; never in the token path.
//!
//! - [`config`]: `control.yaml` and its keys file (schema, validation with `file:line: key`).
//! - [`store`]: the [`PolicyStore`] trait (YAML today, a database later) and [`YamlStore`],
//!   which publishes immutable, versioned [`Published`] values through arc-swap.
//! - [`reload`]: polls both files every 250 ms; a valid change becomes a new version, an invalid
//!   one is logged with file, line and key while the last good version keeps serving.
//! - [`api`]: `GET /v1/snapshot` (ETag, long-poll `?since=V&wait=30s`), `GET /v1/keys/{sha256}`,
//!   `/healthz`, `/metrics`; [`start`] embeds it (demo, tests).
//! - [`keys`]: [`hash_key`] (the edge hashes presented keys with it) and `add-key`.
//! - [`cli`]: `okome control [-c FILE] [add-key --tenant T]`.
//!
//! Keys are stored and looked up as SHA-256 hashes only; a key is never logged or served.

pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod reload;
pub mod store;

pub use api::{start, ControlHandle};
pub use cli::{run, ControlArgs, ControlCommand};
pub use config::{ControlConfig, ControlPolicy};
pub use error::{ControlError, Problem};
pub use keys::{add_key, generate_key, hash_key};
pub use metrics::ControlMetrics;
pub use store::{PolicyStore, Published, YamlStore};
