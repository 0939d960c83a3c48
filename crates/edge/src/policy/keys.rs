//! The key cache: a read-through `pingora-memory-cache` (TinyUFO) with TTL, negative entries,
//! single-flight lookups, stale-while-revalidate and stale-if-error.

use super::client::ControlClient;
use super::state::{KnownKey, StateDir};
use async_trait::async_trait;
use okome_filters::policy::TenantPolicy;
use parking_lot::Mutex;
use pingora_memory_cache::Lookup;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A cached answer: the tenant, or `None` for a key the control plane does not know.
pub type KeyEntry = Option<Arc<TenantPolicy>>;

/// What a lookup needs, passed to the cache as its `extra`.
#[derive(Debug)]
pub struct LookupCtx {
    /// The control plane.
    pub client: ControlClient,
    /// TTL of a resolved key.
    pub key_ttl: Duration,
    /// TTL of an unknown key.
    pub negative_ttl: Duration,
    /// How long past its last confirmation a known key may be honoured when the control plane is down.
    pub stale_if_error: Duration,
    /// Keys this edge resolved (also persisted): the last-known-good answers.
    pub known: Mutex<HashMap<String, KnownKey>>,
    /// Where `known` is persisted.
    pub state: StateDir,
    /// Signals the key writer that `known` changed (the lookup never writes the file itself).
    pub dirty: tokio::sync::Notify,
}

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The lookup the cache runs on a miss (one per key at a time: the cache coalesces).
#[derive(Debug)]
pub struct KeyLookup;

#[async_trait]
impl Lookup<String, KeyEntry, Arc<LookupCtx>> for KeyLookup {
    async fn lookup(
        hash: &String,
        extra: Option<&Arc<LookupCtx>>,
    ) -> Result<(KeyEntry, Option<Duration>), Box<dyn std::error::Error + Send + Sync>> {
        let Some(ctx) = extra else {
            return Err("key lookup without context".into());
        };
        match ctx.client.key(hash).await {
            Ok(Some(info)) => {
                let tenant = Arc::new(info.tenant);
                ctx.known.lock().insert(
                    hash.clone(),
                    KnownKey {
                        tenant: tenant.clone(),
                        seen_at: now_secs(),
                    },
                );
                ctx.dirty.notify_one();
                Ok((Some(tenant), Some(ctx.key_ttl)))
            }
            Ok(None) => {
                if ctx.known.lock().remove(hash).is_some() {
                    ctx.dirty.notify_one();
                }
                Ok((None, Some(ctx.negative_ttl)))
            }
            Err(e) => {
                // Stale-if-error across restarts: a key the control plane vouched for recently
                // enough keeps working while it is unreachable.
                let known = ctx.known.lock().get(hash).cloned();
                match known {
                    Some(k)
                        if now_secs().saturating_sub(k.seen_at) <= ctx.stale_if_error.as_secs() =>
                    {
                        Ok((Some(k.tenant), Some(ctx.negative_ttl)))
                    }
                    _ => Err(Box::new(e)),
                }
            }
        }
    }
}
