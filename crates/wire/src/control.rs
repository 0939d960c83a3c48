//! The policy model: what the control plane (OKOME) knows about tenants and model routes, and
//! what the edge's filters decide on. These are also the control plane's wire types
//! (`GET /v1/snapshot`, `GET /v1/keys/{sha256}`), serialized as JSON. They tolerate unknown
//! fields, so an older edge keeps working when the control plane adds one; the control plane's
//! own config file is strict (its own spec types).

use serde::{Deserialize, Serialize};

/// How a tenant's requests are treated under pressure: `sheddable` first, `critical` last.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Shed last.
    Critical,
    /// The default.
    #[default]
    Standard,
    /// Shed first (batch jobs, free tiers).
    Sheddable,
}

impl Priority {
    /// Lower-case name, as in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Standard => "standard",
            Priority::Sheddable => "sheddable",
        }
    }
}

/// One tenant's policy, as the edge needs it for a request. Limits are cluster-wide; an edge
/// divides them by [`Snapshot::edges`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantPolicy {
    /// Tenant id.
    pub id: String,
    /// Shedding class.
    #[serde(default)]
    pub priority: Priority,
    /// Model globs the tenant may use (`*` wildcard); empty means none.
    #[serde(default = "all_models")]
    pub models: Vec<String>,
    /// Requests per minute, cluster-wide; none = unlimited.
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Generated tokens per minute, cluster-wide; none = unlimited.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Streams open at once, cluster-wide; none = unlimited.
    #[serde(default)]
    pub max_concurrent_streams: Option<u64>,
    /// Largest request body in bytes; none = the edge's own limit.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// What an edge with a shared limit store does while the store cannot answer.
    #[serde(default)]
    pub on_limits_unavailable: OnLimitsUnavailable,
}

/// A tenant's requests while the shared limit store (Redis) is slow or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnLimitsUnavailable {
    /// Admit under the edge's local share of the limits (`limit / edges`): the default.
    #[default]
    Open,
    /// Refuse with 503 `limits_unavailable` and `Retry-After`.
    Closed,
}

impl OnLimitsUnavailable {
    /// Lower-case name, as in config.
    pub fn as_str(self) -> &'static str {
        match self {
            OnLimitsUnavailable::Open => "open",
            OnLimitsUnavailable::Closed => "closed",
        }
    }
}

fn all_models() -> Vec<String> {
    vec!["*".to_owned()]
}

/// A model route: requests for models matching `model` go to `pool`, then `fallback` in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRoute {
    /// Model glob.
    pub model: String,
    /// Target pool (a pool name of the edge config).
    pub pool: String,
    /// Pools tried in order when the target has no backend left.
    #[serde(default)]
    pub fallback: Vec<String>,
}

/// Everything an edge needs from the control plane besides keys. Versioned: a new version is
/// published on every accepted change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Monotonic version.
    pub version: u64,
    /// Unix seconds when this version was published.
    pub published_at: u64,
    /// Number of edges sharing each tenant's cluster-wide limits (each edge enforces 1/edges).
    pub edges: u32,
    /// Model routes, first match wins.
    pub routes: Vec<ModelRoute>,
    /// Tenant policies (without keys), so edges can refresh cached policies on a change.
    pub tenants: Vec<TenantPolicy>,
}

/// A key lookup's answer: the tenant the key belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Snapshot version that answered.
    pub version: u64,
    /// The tenant's policy.
    pub tenant: TenantPolicy,
}

/// How keys are stored and looked up: lowercase hex SHA-256 of the key's bytes. The control
/// plane stores only this; the edge hashes a presented key before asking for it.
pub fn hash_key(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An older edge must not break when a newer control plane adds fields.
    #[test]
    fn wire_types_tolerate_fields_they_do_not_know() {
        let snap: Snapshot = serde_json::from_str(
            r#"{"version":3,"published_at":1,"edges":2,"added_later":true,
                "routes":[{"model":"m*","pool":"p","fallback":[],"weight":5}],
                "tenants":[{"id":"t","priority":"critical","models":["*"],"region":"eu"}]}"#,
        )
        .expect("tolerant snapshot");
        assert_eq!(snap.routes[0].pool, "p");
        assert_eq!(snap.tenants[0].priority, Priority::Critical);
        let key: KeyInfo =
            serde_json::from_str(r#"{"version":3,"tenant":{"id":"t"},"issued":"x"}"#)
                .expect("tolerant key info");
        assert_eq!(key.tenant.id, "t");
        assert_eq!(key.tenant.on_limits_unavailable, OnLimitsUnavailable::Open);
        let closed: TenantPolicy =
            serde_json::from_str(r#"{"id":"t","on_limits_unavailable":"closed"}"#).expect("closed");
        assert_eq!(closed.on_limits_unavailable, OnLimitsUnavailable::Closed);
    }

    #[test]
    fn keys_hash_to_lowercase_hex_sha256() {
        assert_eq!(
            super::hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
