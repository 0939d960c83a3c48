//! Wire types between okome's components, all JSON over HTTP and all deserialised tolerantly:
//! an edge built before the control plane or the arbiter added a field keeps working.
//!
//! - [`control`]: the control plane's snapshot (tenants, model routes) and key lookups.
//! - [`arbiter`]: the arbiter's per-backend state (`GET /v1/state`).

pub mod arbiter;
pub mod control;
