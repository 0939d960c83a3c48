//! The policy store: what the control API serves, behind a trait so a database can replace the
//! YAML files later. A store publishes immutable, versioned [`Published`] values; readers take
//! an `Arc` of the current one and never block a writer (arc-swap).

use super::config::{is_sha256_hex, ControlPolicy};
use super::error::ControlError;
use super::metrics::ControlMetrics;
use okome_wire::control::{KeyInfo, Snapshot, TenantPolicy};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// One published version of the policy: the snapshot edges poll plus the key index.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// Routes, tenants, edge count, version: everything edges need besides keys.
    pub snapshot: Snapshot,
    /// Lowercase hex SHA-256 of a key → tenant id.
    pub keys: HashMap<String, String>,
    /// Tenant id → policy.
    pub tenants: HashMap<String, TenantPolicy>,
}

impl Published {
    /// The version of this publication.
    pub fn version(&self) -> u64 {
        self.snapshot.version
    }

    /// The answer to `GET /v1/keys/{sha256}`: the key's tenant policy, if the key is known.
    pub fn lookup(&self, sha256: &str) -> Option<KeyInfo> {
        let tenant = self.keys.get(sha256)?;
        let policy = self.tenants.get(tenant)?;
        Some(KeyInfo {
            version: self.snapshot.version,
            tenant: policy.clone(),
        })
    }

    /// True when both publish the same policy, whatever their version and time.
    pub fn same_content(&self, other: &Published) -> bool {
        let a = &self.snapshot;
        let b = &other.snapshot;
        a.edges == b.edges
            && a.routes == b.routes
            && a.tenants == b.tenants
            && self.keys == other.keys
    }
}

/// A source of published policy versions (YAML files today, a database later).
pub trait PolicyStore: Send + Sync {
    /// The version being served now.
    fn current(&self) -> Arc<Published>;

    /// A receiver whose value is the current version; it changes on every publication.
    fn watch(&self) -> watch::Receiver<u64>;

    /// The store's metrics registry, when it keeps one (the API then serves it on `/metrics`).
    fn metrics(&self) -> Option<ControlMetrics> {
        None
    }

    /// The token callers must present to read snapshots and keys; `None` leaves the API open.
    fn api_token(&self) -> Option<okome_core::config::Secret> {
        None
    }
}

/// The YAML-backed store: `control.yaml` plus its keys file, watched and hot-reloaded, or an
/// in-memory config for the demo. Cheap to clone; clones share the same state.
#[derive(Clone, Debug)]
pub struct YamlStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    current: arc_swap::ArcSwap<Published>,
    tx: watch::Sender<u64>,
    /// Serializes publishers (reloads and `insert_key`) so versions stay monotonic.
    publish: Mutex<PublishState>,
    last_error: Mutex<Option<String>>,
    /// The watched `control.yaml`; none for an in-memory store.
    pub(crate) path: Option<PathBuf>,
    listen: SocketAddr,
    pub(crate) metrics: ControlMetrics,
    /// Read once at start; rotating it takes a restart (edges and operators change with it).
    api_token: Option<okome_core::config::Secret>,
}

#[derive(Debug)]
struct PublishState {
    /// Keys added with `insert_key`: kept across reloads (they exist in no file).
    extra_keys: HashMap<String, String>,
    /// The last accepted policy, re-published when an in-memory key is added.
    policy: ControlPolicy,
}

impl YamlStore {
    /// Loads `control.yaml` (and its keys file) and watches both for changes. Must be called
    /// inside a tokio runtime: the watcher task is spawned on it and ends when the store is dropped.
    pub fn load(path: impl AsRef<Path>) -> Result<YamlStore, ControlError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| ControlError::NoRuntime)?;
        let path = path.as_ref();
        let policy = ControlPolicy::load(path)?;
        let store = Self::new(policy, Some(path.to_path_buf()));
        super::reload::spawn_watcher(&store, &handle);
        Ok(store)
    }

    /// An in-memory store serving an already validated policy; nothing is watched.
    pub fn from_config(policy: ControlPolicy) -> YamlStore {
        Self::new(policy, None)
    }

    /// An in-memory store from YAML text in the `control.yaml` shape (inline `keys:` only).
    // Inherent as well as `FromStr`, so callers need no trait import.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str) -> Result<YamlStore, ControlError> {
        Ok(Self::from_config(ControlPolicy::from_str(
            "<control config>",
            text,
        )?))
    }

    fn new(policy: ControlPolicy, path: Option<PathBuf>) -> YamlStore {
        let first = policy.publish(1);
        let metrics = ControlMetrics::new();
        metrics.snapshot_version.set(1);
        let (tx, _) = watch::channel(1);
        YamlStore {
            inner: Arc::new(Inner {
                current: arc_swap::ArcSwap::from_pointee(first),
                tx,
                listen: policy.config.listen,
                api_token: policy.api_token.clone(),
                publish: Mutex::new(PublishState {
                    extra_keys: HashMap::new(),
                    policy,
                }),
                last_error: Mutex::new(None),
                path,
                metrics,
            }),
        }
    }

    /// The version being served.
    pub fn version(&self) -> u64 {
        self.inner.current.load().snapshot.version
    }

    /// The `listen:` address of the config first loaded (a changed address needs a restart).
    pub fn listen(&self) -> SocketAddr {
        self.inner.listen
    }

    /// The watched `control.yaml`, if this store is file-backed.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The keys file of the last accepted config, if it names one.
    pub fn keys_path(&self) -> Option<PathBuf> {
        self.inner.publish.lock().policy.keys_path.clone()
    }

    /// Why the last reload was rejected (`file:line: key: problem`), or none if it was accepted.
    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().clone()
    }

    /// The store's metrics (reloads, served version; the API adds its request counts).
    pub fn metrics(&self) -> ControlMetrics {
        self.inner.metrics.clone()
    }

    /// Binds a key hash to a tenant in memory (the demo's keys) and publishes a new version.
    /// The binding survives reloads of the files. Returns the version now served.
    pub fn insert_key(&self, sha256: &str, tenant: &str) -> Result<u64, ControlError> {
        if !is_sha256_hex(sha256) {
            return Err(ControlError::BadHash(sha256.to_owned()));
        }
        let mut st = self.inner.publish.lock();
        let known = st.policy.tenant_ids();
        if !known.iter().any(|t| t == tenant) {
            return Err(ControlError::UnknownTenant {
                tenant: tenant.to_owned(),
                known,
            });
        }
        st.extra_keys.insert(sha256.to_owned(), tenant.to_owned());
        Ok(self.inner.install(&st))
    }

    /// Re-reads the files now (the watcher calls this on a change). A valid policy is published
    /// with a new version (unless nothing changed); an invalid one is logged with file, line and
    /// key, recorded in [`last_error`](Self::last_error), and the last good version keeps serving.
    pub fn reload_now(&self) -> Result<u64, ControlError> {
        let Some(path) = self.inner.path.as_deref() else {
            return Ok(self.version());
        };
        match ControlPolicy::load(path) {
            Ok(policy) => {
                if policy.config.listen != self.inner.listen {
                    log::warn!(
                        "{}: listen changed to {}; still listening on {} until restart",
                        path.display(),
                        policy.config.listen,
                        self.inner.listen
                    );
                }
                let mut st = self.inner.publish.lock();
                st.policy = policy;
                let v = self.inner.install(&st);
                drop(st);
                *self.inner.last_error.lock() = None;
                self.inner.metrics.reloads.with_label_values(&["ok"]).inc();
                log::info!("{}: reloaded; serving version {v}", path.display());
                Ok(v)
            }
            Err(e) => {
                let msg = e.to_string();
                log::error!(
                    "{}: change rejected, still serving version {}:\n{msg}",
                    path.display(),
                    self.version()
                );
                *self.inner.last_error.lock() = Some(msg);
                self.inner
                    .metrics
                    .reloads
                    .with_label_values(&["rejected"])
                    .inc();
                Err(e)
            }
        }
    }
}

impl Inner {
    /// Publishes `st` as the next version, unless it equals what is served. Caller holds the lock.
    fn install(&self, st: &PublishState) -> u64 {
        let cur = self.current.load_full();
        let mut next = st.policy.publish(cur.snapshot.version + 1);
        for (hash, tenant) in &st.extra_keys {
            // A key whose tenant was removed from the file no longer grants anything.
            if next.tenants.contains_key(tenant) {
                next.keys
                    .entry(hash.clone())
                    .or_insert_with(|| tenant.clone());
            }
        }
        if next.same_content(&cur) {
            // A touch or a no-op edit: edges have nothing to learn, keep the version.
            return cur.snapshot.version;
        }
        let v = next.snapshot.version;
        self.current.store(Arc::new(next));
        self.metrics.snapshot_version.set(v as i64);
        // send_replace: succeeds even when no edge is waiting right now.
        self.tx.send_replace(v);
        v
    }
}

impl std::str::FromStr for YamlStore {
    type Err = ControlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        YamlStore::from_str(text)
    }
}

impl PolicyStore for YamlStore {
    fn current(&self) -> Arc<Published> {
        self.inner.current.load_full()
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.inner.tx.subscribe()
    }

    fn metrics(&self) -> Option<ControlMetrics> {
        Some(self.inner.metrics.clone())
    }

    fn api_token(&self) -> Option<okome_core::config::Secret> {
        self.inner.api_token.clone()
    }
}
