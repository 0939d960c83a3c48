//! The edge's policy cache: what the control plane says about tenants, keys and model routes,
//! held locally so that no request waits on the control plane when the cache has an answer.
//!
//! - [`client`]: calls to the control plane.
//! - [`keys`]: the key cache (TTL, negative entries, single-flight, stale-while-revalidate,
//!   stale-if-error).
//! - [`state`]: last known good snapshot and keys on disk.
//! - [`PolicyCache::spawn_watch`]: the snapshot long-poll.

pub mod client;
pub mod keys;
pub mod state;

use crate::config::{self, OnUnavailable};
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use client::ControlClient;
use keys::{KeyEntry, KeyLookup, LookupCtx};
use okome_filters::policy::{hash_key, ModelRoute, Priority, Snapshot, TenantPolicy};
use okome_filters::tenancy::{KeyVerdict, PolicySource};
use okome_filters::Glob;
use okome_longpoll::Event;
use parking_lot::Mutex;
use pingora_memory_cache::{CacheStatus, RTCache};
use state::StateDir;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

type KeyCache = RTCache<String, KeyEntry, KeyLookup, Arc<LookupCtx>>;

/// How long the key writer waits after a change before writing, so a burst is one write.
pub const KEY_WRITE_DEBOUNCE: Duration = Duration::from_millis(500);

/// Keys cached at most (TinyUFO evicts the least useful beyond this).
const KEY_CACHE_SIZE: usize = 100_000;

/// A snapshot with its routes compiled for matching.
#[derive(Debug)]
struct Current {
    snapshot: Snapshot,
    routes: Vec<(Glob, ModelRoute)>,
    tenants: HashMap<String, Arc<TenantPolicy>>,
}

impl Current {
    fn new(snapshot: Snapshot) -> Self {
        let routes = snapshot
            .routes
            .iter()
            .map(|r| (Glob::new(&r.model), r.clone()))
            .collect();
        let tenants = snapshot
            .tenants
            .iter()
            .map(|t| (t.id.clone(), Arc::new(t.clone())))
            .collect();
        Current {
            snapshot,
            routes,
            tenants,
        }
    }
}

/// The policy cache an edge's filters consult.
pub struct PolicyCache {
    current: ArcSwap<Current>,
    keys: &'static KeyCache,
    ctx: Arc<LookupCtx>,
    cfg: config::Control,
    metrics: Metrics,
}

impl std::fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyCache")
            .field("control", &self.cfg.address)
            .field("version", &self.current.load().snapshot.version)
            .finish()
    }
}

fn empty_snapshot() -> Snapshot {
    Snapshot {
        version: 0,
        published_at: 0,
        edges: 1,
        routes: Vec::new(),
        tenants: Vec::new(),
    }
}

impl PolicyCache {
    /// Fetches the snapshot (or falls back to the persisted one) and loads known keys.
    /// Never fails: with no control plane and no state, it starts empty and says so.
    pub async fn start(
        cfg: &config::Control,
        token: Option<crate::config::Secret>,
        metrics: Metrics,
    ) -> Arc<Self> {
        let client = ControlClient::new(cfg.address, cfg.timeout.0, token, metrics.clone());
        let state = StateDir::new(&cfg.state_dir);
        let snapshot = match client.snapshot().await {
            Ok(s) => {
                log::info!(
                    "policy snapshot v{} from the control plane at {}",
                    s.version,
                    cfg.address
                );
                state.save_snapshot(&s).await;
                s
            }
            Err(e) => {
                let why = e.to_string();
                let saved = state.load_snapshot().unwrap_or_else(|e| {
                    log::warn!("{e}; ignoring it");
                    metrics
                        .policy_state_errors
                        .with_label_values(&["load"])
                        .inc();
                    None
                });
                match saved {
                    Some(s) => {
                        log::warn!(
                            "{why}; serving the last known good policy snapshot v{} from {}",
                            s.version,
                            cfg.state_dir.display()
                        );
                        s
                    }
                    None => {
                        log::warn!("{why}; no saved snapshot in {} either: starting with no model routes and no known keys", cfg.state_dir.display());
                        empty_snapshot()
                    }
                }
            }
        };
        let known = state.load_keys().unwrap_or_else(|e| {
            log::warn!("{e}; starting with no known keys (they are looked up again)");
            metrics
                .policy_state_errors
                .with_label_values(&["load"])
                .inc();
            HashMap::new()
        });
        if !known.is_empty() {
            log::info!(
                "{} known key hash(es) loaded from {}",
                known.len(),
                cfg.state_dir.display()
            );
        }
        let ctx = Arc::new(LookupCtx {
            client,
            key_ttl: cfg.key_ttl.0,
            negative_ttl: cfg.negative_ttl.0,
            stale_if_error: cfg.stale_if_error.0,
            known: Mutex::new(known),
            state,
            dirty: tokio::sync::Notify::new(),
        });
        // One cache per process, alive as long as the process: the stale-while-revalidate
        // refresh runs in a spawned task and needs a 'static cache.
        let keys: &'static KeyCache = Box::leak(Box::new(RTCache::new(
            KEY_CACHE_SIZE,
            Some(cfg.timeout.0),
            Some(cfg.timeout.0),
        )));
        let cache = Arc::new(PolicyCache {
            current: ArcSwap::from_pointee(Current::new(snapshot)),
            keys,
            ctx,
            cfg: cfg.clone(),
            metrics,
        });
        cache.publish_snapshot_metrics();
        cache
    }

    /// Persists the known key hashes after they change, at most once per [`KEY_WRITE_DEBOUNCE`]:
    /// one writer, off the request path (a supervised task).
    pub async fn write_keys(self: Arc<Self>) {
        loop {
            self.ctx.dirty.notified().await;
            // Let a burst of misses land in one write.
            tokio::time::sleep(KEY_WRITE_DEBOUNCE).await;
            let keys = self.ctx.known.lock().clone();
            if !self.ctx.state.save_keys(&keys).await {
                self.metrics
                    .policy_state_errors
                    .with_label_values(&["save"])
                    .inc();
            }
        }
    }

    /// Watches the snapshot by long-poll and keeps the age gauge fresh (a supervised task).
    pub async fn watch(self: Arc<Self>) {
        let me = &self;
        let poll = async move {
            let since = me.current.load().snapshot.version;
            let client = &me.ctx.client;
            client
                .snapshots()
                .follow(Some(since), |event: Event<Snapshot>, took| async move {
                    client.observe("snapshot", took);
                    match event {
                        Event::Changed(s) => {
                            let old = me.current.load().snapshot.version;
                            log::info!("policy snapshot v{old} → v{}", s.version);
                            if !me.ctx.state.save_snapshot(&s).await {
                                me.metrics
                                    .policy_state_errors
                                    .with_label_values(&["save"])
                                    .inc();
                            }
                            me.current.store(Arc::new(Current::new(s)));
                            me.publish_snapshot_metrics();
                        }
                        Event::Recovered => {
                            log::info!("control plane at {} reachable again", me.cfg.address);
                        }
                        Event::Confirmed => {}
                        Event::Failed { error, first } => {
                            if first {
                                let v = me.current.load().snapshot.version;
                                log::warn!("{error}; serving the last known good policy (v{v})");
                            }
                        }
                    }
                })
                .await;
        };
        let age = async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                me.publish_snapshot_metrics();
            }
        };
        tokio::join!(poll, age);
    }

    fn publish_snapshot_metrics(&self) {
        let cur = self.current.load();
        self.metrics
            .policy_snapshot_version
            .set(cur.snapshot.version as i64);
        let age = if cur.snapshot.published_at == 0 {
            0.0
        } else {
            keys::now_secs().saturating_sub(cur.snapshot.published_at) as f64
        };
        self.metrics.policy_snapshot_age_seconds.set(age);
    }

    /// The current snapshot's version.
    pub fn version(&self) -> u64 {
        self.current.load().snapshot.version
    }

    fn count(&self, result: &str) {
        self.metrics
            .policy_cache_requests
            .with_label_values(&[result])
            .inc();
    }
}

#[async_trait::async_trait]
impl PolicySource for PolicyCache {
    async fn tenant_for_key(&self, key: &str) -> KeyVerdict {
        let hash = hash_key(key);
        let (res, status) = self
            .keys
            .get_stale_while_update(&hash, None, Some(&self.ctx), self.cfg.stale_if_error.0)
            .await;
        let result = match status {
            CacheStatus::Hit | CacheStatus::LockHit => "hit",
            CacheStatus::Stale(_) => "stale",
            _ => "miss",
        };
        match res {
            Ok(Some(t)) => {
                self.count(result);
                // A tenant's policy in a newer snapshot wins over the cached copy, so limit
                // changes apply within a second rather than a key TTL.
                let t = self.current.load().tenants.get(&t.id).cloned().unwrap_or(t);
                KeyVerdict::Tenant(t)
            }
            Ok(None) => {
                // An unknown key the control plane was asked about, or one answered from the
                // negative cache (a hit: no call was made).
                self.count(if result == "miss" {
                    "negative"
                } else {
                    "negative_hit"
                });
                KeyVerdict::Unknown
            }
            Err(e) => {
                self.count("error");
                log::debug!("key lookup failed: {e}");
                match self.cfg.on_unavailable {
                    OnUnavailable::Deny => KeyVerdict::Unavailable,
                    OnUnavailable::Allow => KeyVerdict::Tenant(Arc::new(TenantPolicy {
                        id: "unverified".into(),
                        priority: Priority::Sheddable,
                        models: vec!["*".into()],
                        requests_per_minute: None,
                        tokens_per_minute: None,
                        max_concurrent_streams: None,
                        max_body_bytes: None,
                        on_limits_unavailable: Default::default(),
                    })),
                }
            }
        }
    }

    fn route_for_model(&self, model: &str) -> Option<ModelRoute> {
        let cur = self.current.load();
        cur.routes
            .iter()
            .find(|(g, _)| g.matches(model))
            .map(|(_, r)| r.clone())
    }

    fn edges(&self) -> u32 {
        self.current.load().snapshot.edges.max(1)
    }
}
