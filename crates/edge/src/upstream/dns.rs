//! Backends by name (`HOST:PORT` in `pools.<name>.backends`): resolved through the system
//! resolver (getaddrinfo, so `/etc/hosts`, `resolv.conf` search domains, Kubernetes headless
//! services and DNS round robin all work), at start, before a reload swaps, and again every
//! `resolve_every` by a supervised task ([`run`]).
//!
//! The request path never resolves: a pool's backends are a fixed list per edge generation
//! (requests hold backend indices for their whole life), so a name whose answer changed is
//! applied as a new generation, like a config reload ([`Reloader::apply_resolution`]); backends
//! whose address stays keep their live state. A failed or empty lookup keeps the last good
//! answer: a resolver hiccup never empties a pool.

use crate::config::compile::CompiledEdge;
use crate::edge::reload::Reloader;
use crate::metrics::Metrics;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Upstreams;

/// Longest wait for one lookup; a resolver that does not answer by then counts as an error
/// (the last good answer stays). getaddrinfo cannot be cancelled: its blocking thread finishes
/// on its own, bounded by `resolv.conf`'s own timeout.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the resolver task looks for pools due (their `resolve_every` is at least 1s).
const TICK: Duration = Duration::from_millis(250);

/// A name as a pool lists it: host and port.
type NameKey = (String, u16);

/// What is known about one name of one pool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NameState {
    /// The last good answer, sorted, no duplicates (empty until the name first resolves).
    pub addrs: Vec<SocketAddr>,
    /// When it last resolved.
    pub resolved_at: Option<SystemTime>,
    /// The last lookup error, kept after recovery so an operator sees what happened.
    pub last_error: Option<String>,
    /// When that error happened.
    pub error_at: Option<SystemTime>,
    /// Whether the latest lookup failed (state changes are logged, not every failure).
    pub failing: bool,
}

/// What one lookup did to a name's addresses (the `result` label of
/// `okome_dns_resolutions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The answer differs from the last good one: a new generation is due.
    Changed,
    /// Same addresses (in any order).
    Unchanged,
    /// No answer; the last good one stays.
    Error,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Changed => "changed",
            Outcome::Unchanged => "unchanged",
            Outcome::Error => "error",
        }
    }
}

impl NameState {
    /// Applies one lookup's result. An answer replaces the addresses; an error, or an answer
    /// without any address, keeps the last good ones.
    pub fn apply(&mut self, result: Result<Vec<SocketAddr>, String>, now: SystemTime) -> Outcome {
        let result = result.and_then(|mut addrs| {
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                Err("the resolver answered with no address".to_owned())
            } else {
                Ok(addrs)
            }
        });
        match result {
            Ok(addrs) => {
                self.failing = false;
                self.resolved_at = Some(now);
                if addrs == self.addrs {
                    Outcome::Unchanged
                } else {
                    self.addrs = addrs;
                    Outcome::Changed
                }
            }
            Err(e) => {
                self.failing = true;
                self.last_error = Some(e);
                self.error_at = Some(now);
                Outcome::Error
            }
        }
    }
}

/// The addresses each pool's names resolve to, as a generation is built from them.
#[derive(Debug, Clone, Default)]
pub struct Resolved(HashMap<String, BTreeMap<NameKey, Vec<SocketAddr>>>);

impl Resolved {
    /// The addresses `host:port` of `pool` resolves to (none when it never resolved).
    pub fn addrs(&self, pool: &str, host: &str, port: u16) -> &[SocketAddr] {
        self.0
            .get(pool)
            .and_then(|names| names.get(&(host.to_owned(), port)))
            .map_or(&[], Vec::as_slice)
    }
}

/// One name on `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct NameStatus {
    /// `HOST:PORT` as configured.
    pub name: String,
    /// The addresses serving from it (the last good answer).
    pub addresses: Vec<String>,
    /// When it last resolved (Unix seconds).
    pub resolved_at: Option<u64>,
    /// The last lookup error, if any (also after recovery).
    pub last_error: Option<String>,
    /// When that error happened (Unix seconds).
    pub last_error_at: Option<u64>,
    /// Whether the latest lookup failed.
    pub failing: bool,
}

/// The resolution table: every name of every pool, and what it last resolved to.
#[derive(Debug)]
pub struct Dns {
    /// Pool name → its names. Locked only for reads and writes, never across a lookup.
    names: Mutex<HashMap<String, BTreeMap<NameKey, NameState>>>,
    metrics: Metrics,
}

impl Dns {
    /// An empty table.
    pub fn new(metrics: Metrics) -> Arc<Self> {
        Arc::new(Dns {
            names: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Resolves the names of `cfg`'s pools: all of them (at start), or with `only_new` those
    /// the table does not know yet (a reload: known names keep their last answer until the
    /// resolver task comes round). Names and pools `cfg` no longer has are forgotten.
    pub async fn resolve_config(&self, cfg: &CompiledEdge, only_new: bool) {
        let mut todo = Vec::new();
        {
            let mut table = self.names.lock();
            table.retain(|pool, _| cfg.pools.iter().any(|p| p.name == *pool));
            for p in &cfg.pools {
                let mine = table.entry(p.name.clone()).or_default();
                mine.retain(|(h, port), _| p.names().any(|n| n == (h.as_str(), *port)));
                for (host, port) in p.names() {
                    for r in ["changed", "unchanged", "error"] {
                        self.metrics
                            .dns_resolutions
                            .with_label_values(&[&p.name, r]);
                    }
                    let key = (host.to_owned(), port);
                    if !(only_new && mine.contains_key(&key)) {
                        mine.entry(key).or_default();
                        todo.push((p.name.clone(), host.to_owned(), port));
                    }
                }
            }
            table.retain(|_, names| !names.is_empty());
        }
        let lookups = todo.into_iter().map(|(pool, host, port)| async move {
            let result = lookup(&host, port, LOOKUP_TIMEOUT).await;
            self.record(&pool, &host, port, result);
        });
        futures::future::join_all(lookups).await;
    }

    /// Resolves every name of one pool again; whether any answer changed.
    pub async fn resolve_pool(&self, pool: &str, names: &[NameKey]) -> bool {
        let lookups = names.iter().map(|(host, port)| async move {
            let result = lookup(host, *port, LOOKUP_TIMEOUT).await;
            self.record(pool, host, *port, result)
        });
        futures::future::join_all(lookups)
            .await
            .contains(&Outcome::Changed)
    }

    /// Stores one lookup's result, counts it, and logs when the name's state changed. A name
    /// the table does not have (a reload removed it while it was being looked up) is left out.
    pub fn record(
        &self,
        pool: &str,
        host: &str,
        port: u16,
        result: Result<Vec<SocketAddr>, String>,
    ) -> Outcome {
        let mut table = self.names.lock();
        let Some(state) = table
            .get_mut(pool)
            .and_then(|names| names.get_mut(&(host.to_owned(), port)))
        else {
            return Outcome::Unchanged;
        };
        let (was_failing, was_resolved, before) = (
            state.failing,
            state.resolved_at.is_some(),
            state.addrs.clone(),
        );
        let outcome = state.apply(result, SystemTime::now());
        let state = state.clone();
        drop(table);
        self.metrics
            .dns_resolutions
            .with_label_values(&[pool, outcome.as_str()])
            .inc();
        let list = |a: &[SocketAddr]| {
            a.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let err = state.last_error.as_deref().unwrap_or_default();
        match outcome {
            Outcome::Error if was_failing => {}
            Outcome::Error if state.addrs.is_empty() => log::warn!(
                "pool {pool}: cannot resolve {host}:{port} ({err}): no backend from it until it \
                 resolves; trying again every resolve_every"
            ),
            Outcome::Error => log::warn!(
                "pool {pool}: cannot resolve {host}:{port} ({err}): keeping its last good \
                 address(es) {}",
                list(&state.addrs)
            ),
            Outcome::Changed if was_resolved => log::info!(
                "pool {pool}: {host}:{port} now resolves to {} (was {})",
                list(&state.addrs),
                list(&before)
            ),
            Outcome::Changed => log::info!(
                "pool {pool}: {host}:{port} resolves to {}",
                list(&state.addrs)
            ),
            Outcome::Unchanged if was_failing => log::info!(
                "pool {pool}: {host}:{port} resolves again, to the same address(es) {}",
                list(&state.addrs)
            ),
            Outcome::Unchanged => {}
        }
        outcome
    }

    /// The last good answers, to build a generation from.
    pub fn resolved(&self) -> Resolved {
        Resolved(
            self.names
                .lock()
                .iter()
                .map(|(pool, names)| {
                    let addrs = names
                        .iter()
                        .map(|(k, s)| (k.clone(), s.addrs.clone()))
                        .collect();
                    (pool.clone(), addrs)
                })
                .collect(),
        )
    }

    /// What `/status` shows for `pool`'s names.
    pub fn status(&self, pool: &str) -> Vec<NameStatus> {
        let secs = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        self.names
            .lock()
            .get(pool)
            .map(|names| {
                names
                    .iter()
                    .map(|((host, port), s)| NameStatus {
                        name: format!("{host}:{port}"),
                        addresses: s.addrs.iter().map(ToString::to_string).collect(),
                        resolved_at: secs(s.resolved_at),
                        last_error: s.last_error.clone(),
                        last_error_at: secs(s.error_at),
                        failing: s.failing,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One lookup through the system resolver, bounded by `timeout`.
pub async fn lookup(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs_f64())),
    }
}

/// Resolves every pool's names again at its `resolve_every`, and applies a changed answer as a
/// new generation (a supervised task). Pools are taken from the generation serving, so a reload's
/// new pools and names are picked up on their own.
pub async fn run(dns: Arc<Dns>, reloader: Arc<Reloader>, current: watch::Receiver<Arc<Upstreams>>) {
    // Pool name → when its names are due. A pool seen for the first time was just resolved
    // (at start or by the reload that brought it), so it is due one interval from now.
    let mut due: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let up = current.borrow().clone();
        let now = Instant::now();
        due.retain(|name, _| up.pools.iter().any(|p| p.name == *name));
        let ready: Vec<_> = up
            .pools
            .iter()
            .filter(|p| !p.names.is_empty())
            .filter(|p| {
                let next = due
                    .entry(p.name.clone())
                    .or_insert_with(|| now + p.resolve_every);
                if *next <= now {
                    *next = now + p.resolve_every;
                    true
                } else {
                    false
                }
            })
            .collect();
        if ready.is_empty() {
            continue;
        }
        let changed =
            futures::future::join_all(ready.iter().map(|p| dns.resolve_pool(&p.name, &p.names)))
                .await;
        if changed.contains(&true) {
            reloader.apply_resolution().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_error_keeps_the_last_good_answer() {
        let mut s = NameState::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(
            s.apply(Ok(vec![a("10.0.0.2:80"), a("10.0.0.1:80")]), t0),
            Outcome::Changed
        );
        assert_eq!(s.addrs, [a("10.0.0.1:80"), a("10.0.0.2:80")]);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(s.apply(Err("timed out".into()), t1), Outcome::Error);
        assert_eq!(s.addrs, [a("10.0.0.1:80"), a("10.0.0.2:80")]);
        assert!(s.failing);
        assert_eq!(s.resolved_at, Some(t0));
        assert_eq!(
            (s.last_error.as_deref(), s.error_at),
            (Some("timed out"), Some(t1))
        );
        // An answer with no address is no answer.
        assert_eq!(s.apply(Ok(vec![]), t1), Outcome::Error);
        assert_eq!(s.addrs.len(), 2);
        // Recovery to the same set is no change; the error stays on record.
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(
            s.apply(Ok(vec![a("10.0.0.1:80"), a("10.0.0.2:80")]), t2),
            Outcome::Unchanged
        );
        assert!(!s.failing);
        assert_eq!(s.resolved_at, Some(t2));
        assert_eq!(
            s.last_error.as_deref(),
            Some("the resolver answered with no address")
        );
    }

    #[test]
    fn order_and_repeats_are_no_change_but_a_new_set_is() {
        let mut s = NameState::default();
        let t = SystemTime::UNIX_EPOCH;
        s.apply(Ok(vec![a("10.0.0.1:80"), a("10.0.0.2:80")]), t);
        // DNS round robin rotates the order; getaddrinfo repeats an address per socket type.
        assert_eq!(
            s.apply(
                Ok(vec![a("10.0.0.2:80"), a("10.0.0.1:80"), a("10.0.0.2:80")]),
                t
            ),
            Outcome::Unchanged
        );
        assert_eq!(
            s.apply(Ok(vec![a("10.0.0.2:80"), a("10.0.0.3:80")]), t),
            Outcome::Changed
        );
        assert_eq!(s.addrs, [a("10.0.0.2:80"), a("10.0.0.3:80")]);
    }

    #[test]
    fn the_table_counts_keeps_and_forgets() {
        let dns = Dns::new(Metrics::new());
        // Not a name of any pool (yet): nothing recorded.
        dns.record("p", "engine", 80, Ok(vec![a("10.0.0.9:80")]));
        assert!(dns.resolved().addrs("p", "engine", 80).is_empty());
        dns.names
            .lock()
            .entry("p".into())
            .or_default()
            .insert(("engine".into(), 80), NameState::default());
        assert_eq!(
            dns.record("p", "engine", 80, Ok(vec![a("10.0.0.1:80")])),
            Outcome::Changed
        );
        assert_eq!(
            dns.record("p", "engine", 80, Err("NXDOMAIN".into())),
            Outcome::Error
        );
        assert_eq!(dns.resolved().addrs("p", "engine", 80), [a("10.0.0.1:80")]);
        assert!(dns.resolved().addrs("q", "engine", 80).is_empty());
        let st = dns.status("p");
        assert_eq!(st.len(), 1);
        assert_eq!(
            (
                st[0].name.as_str(),
                st[0].addresses.as_slice(),
                st[0].failing
            ),
            ("engine:80", ["10.0.0.1:80".to_owned()].as_slice(), true)
        );
        let text = String::from_utf8(dns.metrics.render()).unwrap();
        for r in ["changed", "error"] {
            assert!(
                text.contains(&format!(
                    "okome_dns_resolutions_total{{pool=\"p\",result=\"{r}\"}} 1"
                )),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn the_system_resolver_knows_localhost() {
        let addrs = lookup("localhost", 8000, LOOKUP_TIMEOUT).await.unwrap();
        assert!(addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8000));
        assert!(!addrs.is_empty());
        // RFC 6761: `.invalid` never resolves.
        assert!(lookup("okome.invalid", 80, LOOKUP_TIMEOUT).await.is_err());
    }
}
