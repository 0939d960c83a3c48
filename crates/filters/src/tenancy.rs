//! What tenant-aware filters (`auth`, `policy`, `ratelimit`) need from the edge: key lookups,
//! model routes and rate counters. The edge implements these over its policy cache; tests and
//! other stores can implement them too.

use crate::policy::{ModelRoute, TenantPolicy};
use async_trait::async_trait;
use std::fmt::Debug;
use std::sync::Arc;

/// The answer to "whose key is this?".
#[derive(Debug, Clone)]
pub enum KeyVerdict {
    /// A known key of this tenant.
    Tenant(Arc<TenantPolicy>),
    /// The control plane says no such key.
    Unknown,
    /// The control plane could not be asked and nothing is cached.
    Unavailable,
}

/// Where tenant-aware filters get policy from (the edge's policy cache).
#[async_trait]
pub trait PolicySource: Send + Sync + Debug {
    /// Resolves a presented API key.
    async fn tenant_for_key(&self, key: &str) -> KeyVerdict;
    /// The model route for `model` from the current snapshot.
    fn route_for_model(&self, model: &str) -> Option<ModelRoute>;
    /// How many edges share each cluster-wide limit.
    fn edges(&self) -> u32;
}

/// Per-edge limits of one tenant (cluster-wide limits already divided across edges).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Requests per minute.
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Streams at once.
    pub concurrent: Option<u64>,
}

impl Limits {
    /// This edge's share of a tenant's cluster-wide limits (never below 1).
    pub fn share_of(p: &TenantPolicy, edges: u32) -> Limits {
        let edges = u64::from(edges.max(1));
        let split = |v: Option<u64>| v.map(|v| v.div_ceil(edges).max(1));
        Limits {
            requests_per_minute: split(p.requests_per_minute),
            tokens_per_minute: split(p.tokens_per_minute),
            concurrent: split(p.max_concurrent_streams),
        }
    }
}

/// A refusal by the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    /// Which limit: `requests_per_minute`, `tokens_per_minute` or `concurrent_streams`.
    pub limit: &'static str,
    /// Seconds until a retry can succeed.
    pub retry_after: u64,
}

/// An admitted request's hold on its tenant's counters. Dropping it releases the concurrency
/// slot; [`Admission::settle`] replaces the token reservation with the real count.
pub trait Admission: Send + Sync + Debug {
    /// Charges `tokens` instead of the reservation and releases the slot.
    fn settle(self: Box<Self>, tokens: u64);
    /// Tokens reserved at admission.
    fn reserved(&self) -> u64;
}

/// Why a [`LimitStore`] did not admit a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A limit is reached (429).
    Limited(Denied),
    /// The shared store cannot answer and the tenant fails closed (503 `limits_unavailable`).
    Unavailable {
        /// Seconds until the store is asked again.
        retry_after: u64,
    },
}

/// Rate and concurrency counters per tenant; local to an edge by default, replaceable by a
/// shared store.
#[async_trait]
pub trait LimitStore: Send + Sync + Debug {
    /// Admits one request of `tenant` reserving `reserve_tokens`, or says why not. `edges` is how
    /// many edges share the tenant's cluster-wide limits (a local store enforces its share).
    async fn admit(
        &self,
        tenant: &TenantPolicy,
        edges: u32,
        reserve_tokens: u64,
    ) -> Result<Box<dyn Admission>, Refusal>;

    /// Whether the tenant already holds all its concurrent streams: checked on the request head,
    /// so a tenant at its limit is refused before its body is read. [`admit`](Self::admit)
    /// still decides atomically.
    fn streams_full(&self, _tenant: &TenantPolicy, _edges: u32) -> Option<Denied> {
        None
    }
}
