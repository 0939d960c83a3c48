//! Hot reload: SIGHUP, or a change to the config file (polled, debounced), re-reads and compiles
//! the config. A valid one becomes a new edge swapped in whole: requests already running finish
//! on the edge they started on; pools and backends that keep their name and address keep their
//! live state (health, in-flight, ejections, learned models); removed backends drain with their
//! requests. An invalid one is refused with file:line:key in the log and the old config keeps
//! serving. Settings that live with the process (listeners, admin listener, worker threads, grace
//! period, control plane, arbiters, access log) cannot change this way: such a reload is refused
//! as needing a restart (or `okome edge --upgrade`), never half-applied.
//!
//! A pool's `HOST:PORT` backend that resolves to other addresses is applied the same way, as a
//! new generation of the config serving ([`Reloader::apply_resolution`]).

use super::{Edge, Shared};
use crate::config::compile::CompiledEdge;
use crate::upstream::dns::Dns;
use crate::upstream::{health, Upstreams};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How often the config file is looked at.
const FILE_POLL: Duration = Duration::from_secs(1);
/// A change is applied once the file has been quiet this long (editors write in steps).
const DEBOUNCE: Duration = Duration::from_millis(300);

/// What the last reload did (on `/status` and the status page).
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReloadStatus {
    /// The config generation serving now (1 at start).
    pub version: u64,
    /// `applied`, `rejected`, `needs_restart`, or empty before any reload.
    pub last_result: &'static str,
    /// What happened, in words.
    pub last_message: String,
    /// When (Unix seconds).
    pub last_at: u64,
}

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not read, parse or compile; the message has file:line:key.
    #[error("{0}")]
    Invalid(#[from] crate::config::ConfigError),
    /// A setting that lives with the process changed.
    #[error("{} changed: that needs a restart (or `okome edge --upgrade`); nothing was applied", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
    /// The edge was not started from a file.
    #[error("no config file to reload")]
    NoFile,
}

impl ReloadError {
    fn result(&self) -> &'static str {
        match self {
            ReloadError::NeedsRestart(_) => "needs_restart",
            _ => "rejected",
        }
    }
}

/// Builds new edges from new configs and swaps them in.
#[derive(Debug)]
pub struct Reloader {
    path: Option<PathBuf>,
    applied: Mutex<CompiledEdge>,
    /// One reload at a time (SIGHUP and the file watch may fire together).
    busy: tokio::sync::Mutex<()>,
    current: Arc<ArcSwap<Edge>>,
    upstreams: watch::Sender<Arc<Upstreams>>,
    shared: Shared,
    status: Arc<ArcSwap<ReloadStatus>>,
    dns: Arc<Dns>,
}

/// What a reloader is built from: the edge serving now and what it shares with the next ones.
#[derive(Debug)]
pub struct Parts {
    /// The config file, when there is one.
    pub path: Option<PathBuf>,
    /// The config serving now.
    pub applied: CompiledEdge,
    /// The edge serving now.
    pub current: Arc<ArcSwap<Edge>>,
    /// Where the pools of each new config are published (probes, arbiter feeds, admin).
    pub upstreams: watch::Sender<Arc<Upstreams>>,
    /// What every generation shares (metrics, policy, access log, arbiters, drain, caps).
    pub shared: Shared,
    /// What `/status` shows.
    pub status: Arc<ArcSwap<ReloadStatus>>,
    /// What the pools' names resolve to.
    pub dns: Arc<Dns>,
}

impl Reloader {
    /// A reloader for the edge in `parts`.
    pub fn new(parts: Parts) -> Arc<Self> {
        Arc::new(Reloader {
            path: parts.path,
            applied: Mutex::new(parts.applied),
            busy: tokio::sync::Mutex::new(()),
            current: parts.current,
            upstreams: parts.upstreams,
            shared: parts.shared,
            status: parts.status,
            dns: parts.dns,
        })
    }

    /// Re-reads the config file and applies it; logs and counts the outcome.
    pub async fn reload_file(&self) -> Result<u64, ReloadError> {
        let result = match &self.path {
            Some(p) => match crate::config::load(p) {
                Ok(cfg) => self.apply(cfg).await,
                Err(e) => Err(ReloadError::Invalid(e)),
            },
            None => Err(ReloadError::NoFile),
        };
        if let Err(e) = &result {
            log::error!("config reload refused, the running config keeps serving: {e}");
            self.record(e.result(), e.to_string());
        }
        result
    }

    /// Applies a compiled config: the new edge serves every request that starts from now on.
    /// Returns the new config version.
    pub async fn apply(&self, cfg: CompiledEdge) -> Result<u64, ReloadError> {
        let _one = self.busy.lock().await;
        let changed = process_settings_changed(&self.applied.lock(), &cfg);
        if !changed.is_empty() {
            return Err(ReloadError::NeedsRestart(changed));
        }
        // Names new to this config are resolved before the swap (known ones keep their last
        // answer until the resolver task comes round), so their backends serve at once.
        self.dns.resolve_config(&cfg, true).await;
        let old = self.current.load_full();
        let upstreams = Arc::new(Upstreams::rebuild(
            &cfg,
            &self.shared.metrics,
            Some(&old.upstreams),
            &self.dns.resolved(),
        ));
        // New backends start unhealthy: probe them (and learn their models) before traffic.
        health::bootstrap(&upstreams).await;
        let version = old.version + 1;
        // Certificates change in place: new handshakes get them, open connections keep theirs.
        for (served, l) in self.shared.certs.iter().zip(&cfg.listeners) {
            if let (Some(served), Some(tls)) = (served, &l.tls) {
                served.replace(tls);
            }
        }
        self.shared.metrics.set_certificates(&cfg.listeners);
        self.install(&cfg, upstreams.clone(), version);
        let edge = self.current.load();
        let summary = format!(
            "{} pool(s), {} backend(s), {} route(s)",
            upstreams.pools.len(),
            upstreams
                .pools
                .iter()
                .map(|p| p.backends.len())
                .sum::<usize>(),
            edge.routes.routes.len()
        );
        *self.applied.lock() = cfg;
        log::info!("config v{version} applied: {summary}");
        self.record("applied", format!("v{version}: {summary}"));
        Ok(version)
    }

    /// Rebuilds the config serving with what its names resolve to now, and swaps it in when a
    /// pool's backends changed (a new generation with the same config version: requests
    /// running finish on theirs, backends that stay keep their state, new ones are probed
    /// first). Whether it swapped.
    pub async fn apply_resolution(&self) -> bool {
        let _one = self.busy.lock().await;
        let old = self.current.load_full();
        let upstreams = Arc::new(Upstreams::rebuild(
            &self.applied.lock(),
            &self.shared.metrics,
            Some(&old.upstreams),
            &self.dns.resolved(),
        ));
        if upstreams.same_backends(&old.upstreams) {
            return false;
        }
        health::bootstrap(&upstreams).await;
        // `busy` is held: the applied config is still the one the pools were built from.
        self.install(&self.applied.lock(), upstreams.clone(), old.version);
        for (p, was) in upstreams.pools.iter().zip(&old.upstreams.pools) {
            let ids = |pool: &crate::upstream::Pool| {
                pool.backends
                    .iter()
                    .map(|b| b.id.clone())
                    .collect::<std::collections::BTreeSet<_>>()
            };
            let (now, before) = (ids(p), ids(was));
            if now != before {
                let list = |s: Vec<&String>| {
                    s.into_iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                log::info!(
                    "pool {}: backends from names changed: added [{}], removed [{}]; {} backend(s), {} healthy",
                    p.name,
                    list(now.difference(&before).collect()),
                    list(before.difference(&now).collect()),
                    p.backends.len(),
                    p.backends.iter().filter(|b| b.eligible()).count()
                );
            }
        }
        true
    }

    /// Swaps in an edge of `cfg` over `upstreams` and publishes its pools (probes, arbiter
    /// feeds, admin, resolver).
    fn install(&self, cfg: &CompiledEdge, upstreams: Arc<Upstreams>, version: u64) {
        let edge = Edge::new(cfg, upstreams.clone(), &self.shared, version);
        super::server::init_series(&edge);
        self.current.store(Arc::new(edge));
        self.upstreams.send_replace(upstreams);
    }

    fn record(&self, result: &'static str, message: String) {
        self.shared
            .metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
        let version = self.current.load().version;
        self.shared.metrics.config_version.set(version as i64);
        self.status.store(Arc::new(ReloadStatus {
            version,
            last_result: result,
            last_message: message,
            last_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }));
    }

    /// Reloads on SIGHUP and when the config file changes (a supervised task).
    pub async fn watch(self: Arc<Self>) {
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("cannot listen for SIGHUP ({e}); reload by editing the config file");
                None
            }
        };
        let watch_file = self.applied.lock().watch_config;
        let mut seen = self.modified();
        let mut tick = tokio::time::interval(FILE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup_recv = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = hup_recv => {
                    log::info!("SIGHUP: reloading the config");
                    let _ = self.reload_file().await;
                    seen = self.modified();
                }
                _ = tick.tick(), if watch_file => {
                    let now = self.modified();
                    if now != seen {
                        // Let the editor finish writing.
                        tokio::time::sleep(DEBOUNCE).await;
                        seen = self.modified();
                        log::info!("the config file changed: reloading");
                        let _ = self.reload_file().await;
                    }
                }
            }
        }
    }

    /// The config file's modification time and length (what a change is seen by).
    fn modified(&self) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(self.path.as_ref()?).ok()?;
        Some((m.modified().ok()?, m.len()))
    }
}

/// The settings that live with the process and differ between `old` and `new`.
fn process_settings_changed(old: &CompiledEdge, new: &CompiledEdge) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.listeners.len() != new.listeners.len()
        || old
            .listeners
            .iter()
            .zip(&new.listeners)
            .any(|(a, b)| !a.same_socket(b))
    {
        out.push("listeners");
    }
    if old.admin != new.admin {
        out.push("admin.address");
    }
    if old.threads != new.threads {
        out.push("server.threads");
    }
    if old.grace_period != new.grace_period {
        out.push("server.grace_period");
    }
    if old.upgrade_sock != new.upgrade_sock {
        out.push("server.upgrade_sock");
    }
    if old.watch_config != new.watch_config {
        out.push("server.watch_config");
    }
    if old.control != new.control {
        out.push("control");
    }
    if old.limit_store != new.limit_store {
        // The Redis connection and the leases live with the process.
        out.push("limits.store");
    }
    if old.arbiter != new.arbiter {
        out.push("arbiter");
    }
    if old.access_log != new.access_log {
        out.push("access_log");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn compiled(extra: &str, pool_extra: &str) -> CompiledEdge {
        let text = format!(
            "listeners: [{{address: 127.0.0.1:8080}}]\npools:\n  n: {{kind: okome, backends: [10.77.0.3:8080, 10.77.0.4:8080]{pool_extra}}}\nroutes: [{{name: r, pool: n}}]\n{extra}"
        );
        crate::config::parse(std::path::Path::new("edge.yaml"), &text).unwrap()
    }

    /// Stickiness and trusted proxies are per config generation: a reload applies them.
    #[test]
    fn sticky_and_trusted_proxies_reload_without_a_restart() {
        let old = compiled("", "");
        let new = compiled(
            "trusted_proxies: [10.77.0.0/24]\n",
            ", sticky: {key: [header:x-conversation-id]}, health_check: {port: 9191}",
        );
        assert!(process_settings_changed(&old, &new).is_empty());
        assert_ne!(old.trusted_proxies, new.trusted_proxies);
        assert_ne!(old.pools[0].sticky, new.pools[0].sticky);
        // Whereas a process setting still needs one.
        let moved = compiled("admin: {address: 127.0.0.1:9191}\n", "");
        assert_eq!(process_settings_changed(&old, &moved), ["admin.address"]);
    }

    /// The shared limit store lives with the process (its connection, its leases).
    #[test]
    fn a_change_of_limit_store_needs_a_restart() {
        let local = compiled("", "");
        let redis = |lease: &str| {
            compiled(
                &format!("limits: {{store: redis, redis: {{address: 127.0.0.1:6379{lease}}}}}\n"),
                "",
            )
        };
        assert_eq!(
            process_settings_changed(&local, &redis("")),
            ["limits.store"]
        );
        assert_eq!(
            process_settings_changed(&redis(""), &redis(", lease: 10s")),
            ["limits.store"]
        );
        assert!(process_settings_changed(&redis(""), &redis("")).is_empty());
    }
}
