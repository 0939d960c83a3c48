//! Versioned state over HTTP with long-poll, as the control plane (`/v1/snapshot`) and the
//! arbiter (`/v1/state`) serve it and the edges follow it:
//!
//! - [`server`]: answer `GET ?since=V&wait=30s` when the state moves past `V` or the wait ends
//!   (304), with ETag = version; a listener that cuts open polls on shutdown.
//! - [`subscriber`]: follow such a resource forever, with backoff while it is unreachable.

pub mod server;
pub mod subscriber;

pub use server::*;
pub use subscriber::{Backoff, Event, PollError, Subscriber, Update, Versioned};
