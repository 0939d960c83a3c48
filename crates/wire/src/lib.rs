//! Wire types between okome's components, all JSON over HTTP and all deserialised tolerantly:
//! an edge built before the control plane or the arbiter added a field keeps working.
//!
//! - [`control`]: the control plane's snapshot (tenants, model routes) and key lookups.
//! - [`arbiter`]: the arbiter's per-backend state (`GET /v1/state`).

pub mod arbiter;
pub mod control;

/// A value that carries its version (the ETag it is served with by long-poll).
pub trait Versioned {
    /// The version.
    fn version(&self) -> u64;
}

impl Versioned for control::Snapshot {
    fn version(&self) -> u64 {
        self.version
    }
}

impl Versioned for arbiter::ArbiterState {
    fn version(&self) -> u64 {
        self.version
    }
}
