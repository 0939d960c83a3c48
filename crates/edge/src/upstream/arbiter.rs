//! The edge's subscription to the GPU arbiter(s): their per-backend decisions, kept fresh by
//! long-poll and attached to the backends they name, so selection reads them without a lookup.
//!
//! A decision counts only while its arbiter has confirmed it within `arbiter.max_age`; an
//! unreachable or silent arbiter is ignored and the edge routes on its own health checks and
//! in-flight counts.

use super::{Backend, Upstreams};
use crate::metrics::Metrics;
use okome_filters::policy::Priority;
use okome_longpoll::{Backoff, Event, Subscriber};
use okome_wire::arbiter::{ArbiterState, BackendState, BackendStatus};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One arbiter's decision about one backend, as the edge holds it.
#[derive(Debug)]
pub struct Verdict {
    /// The decision.
    pub status: BackendStatus,
    /// Which arbiter said so (index into [`ArbiterFeeds`]).
    pub feed: usize,
}

impl Verdict {
    /// Whether a request of `priority` may go to this backend.
    pub fn admits(&self, priority: Priority) -> bool {
        match self.status.state {
            BackendState::Ok => true,
            BackendState::Pressured => priority != Priority::Sheddable,
            // Critical traffic is shed last: only a backend that is down refuses it.
            BackendState::Shedding => priority == Priority::Critical,
            BackendState::Down => false,
        }
    }
}

/// One arbiter's freshness.
#[derive(Debug)]
struct Feed {
    addr: SocketAddr,
    /// Milliseconds since `epoch` of the last answer (new state or "unchanged").
    confirmed_ms: AtomicU64,
    version: AtomicU64,
    /// The last state received, re-applied to the backends a reload brings.
    last: arc_swap::ArcSwapOption<ArbiterState>,
}

/// All arbiters this edge listens to.
#[derive(Debug)]
pub struct ArbiterFeeds {
    feeds: Vec<Feed>,
    max_age: Duration,
    epoch: Instant,
    metrics: Metrics,
    by_id: arc_swap::ArcSwap<HashMap<String, Vec<Arc<Backend>>>>,
}

impl ArbiterFeeds {
    /// Feeds for `addresses`; nothing is trusted until the first answer.
    pub fn new(addresses: &[SocketAddr], max_age: Duration, metrics: Metrics) -> Arc<Self> {
        Arc::new(ArbiterFeeds {
            feeds: addresses
                .iter()
                .map(|&addr| Feed {
                    addr,
                    confirmed_ms: AtomicU64::new(u64::MAX),
                    version: AtomicU64::new(0),
                    last: arc_swap::ArcSwapOption::empty(),
                })
                .collect(),
            max_age,
            epoch: Instant::now(),
            metrics,
            by_id: arc_swap::ArcSwap::from_pointee(HashMap::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether arbiter `i` confirmed its state within `max_age`.
    pub fn fresh(&self, i: usize) -> bool {
        self.feeds.get(i).is_some_and(|f| {
            let c = f.confirmed_ms.load(Relaxed);
            c != u64::MAX && self.now_ms().saturating_sub(c) <= self.max_age.as_millis() as u64
        })
    }

    /// `(address, fresh, version)` of every arbiter, for `/status`.
    pub fn summary(&self) -> Vec<(SocketAddr, bool, u64)> {
        (0..self.feeds.len())
            .map(|i| {
                (
                    self.feeds[i].addr,
                    self.fresh(i),
                    self.feeds[i].version.load(Relaxed),
                )
            })
            .collect()
    }

    /// The decision that applies to `b` now: `None` when no fresh arbiter speaks for it.
    pub fn verdict(&self, b: &Backend) -> Option<Arc<Verdict>> {
        b.verdict().filter(|v| self.fresh(v.feed))
    }

    /// Long-polls every arbiter forever, attaching decisions to `upstreams`' backends, and keeps
    /// `okome_arbiter_fresh` current (a supervised task).
    pub async fn run(self: Arc<Self>, mut upstreams: watch::Receiver<Arc<Upstreams>>) {
        self.attach(&upstreams.borrow_and_update());
        let reloads = async {
            // A reload brings new backends: attach them and give them the decisions known now.
            while upstreams.changed().await.is_ok() {
                let up = upstreams.borrow_and_update().clone();
                self.attach(&up);
                for i in 0..self.feeds.len() {
                    if let Some(state) = self.feeds[i].last.load_full() {
                        self.apply(i, &state);
                    }
                }
            }
            std::future::pending::<()>().await;
        };
        let watches = futures::future::join_all((0..self.feeds.len()).map(|i| self.watch(i)));
        let freshness = async {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                for i in 0..self.feeds.len() {
                    let f = &self.feeds[i];
                    self.metrics
                        .arbiter_fresh
                        .with_label_values(&[&f.addr.to_string()])
                        .set(self.fresh(i) as i64);
                }
            }
        };
        tokio::join!(watches, freshness, reloads);
    }

    /// The backends decisions are attached to, by id (`IP:PORT`), from a config's pools.
    fn attach(&self, up: &Upstreams) {
        let mut m: HashMap<String, Vec<Arc<Backend>>> = HashMap::new();
        for p in &up.pools {
            for b in &p.backends {
                m.entry(b.id.clone()).or_default().push(b.clone());
            }
        }
        self.by_id.store(Arc::new(m));
    }

    async fn watch(&self, i: usize) {
        let feed = &self.feeds[i];
        // Wait less than max_age, so a quiet arbiter is re-confirmed before its state goes stale.
        let wait = (self.max_age / 2).max(Duration::from_millis(100));
        let sub = Subscriber::new(
            format!("http://{}/v1/state", feed.addr),
            None,
            wait,
            Duration::from_secs(2),
            Backoff::new(Duration::from_millis(250), wait),
        );
        sub.follow(None, |event: Event<ArbiterState>, _| async move {
            match event {
                Event::Changed(state) => {
                    if feed.version.load(Relaxed) == 0 {
                        log::info!("arbiter {} reachable: state v{}", feed.addr, state.version);
                    }
                    let state = Arc::new(state);
                    self.apply(i, &state);
                    feed.last.store(Some(state));
                    feed.confirmed_ms.store(self.now_ms(), Relaxed);
                }
                Event::Confirmed => feed.confirmed_ms.store(self.now_ms(), Relaxed),
                Event::Recovered => log::info!("arbiter {} reachable again", feed.addr),
                Event::Failed { error, first } => {
                    if first {
                        log::warn!(
                            "arbiter {} unreachable ({error}); its decisions expire after {:?} and the edge then routes on its own health checks",
                            feed.addr,
                            self.max_age
                        );
                    }
                }
            }
        })
        .await;
    }

    fn apply(&self, i: usize, state: &ArbiterState) {
        self.feeds[i].version.store(state.version, Relaxed);
        let by_id = self.by_id.load();
        for st in &state.backends {
            let Some(backends) = by_id.get(&st.backend) else {
                continue;
            };
            for b in backends {
                let changed = b.verdict().is_none_or(|old| old.status.state != st.state);
                if changed {
                    log::info!(
                        "arbiter {}: backend {} is {} ({})",
                        self.feeds[i].addr,
                        st.backend,
                        st.state.as_str(),
                        st.reason
                    );
                }
                self.metrics
                    .backend_arbiter_state
                    .with_label_values(&[&b.pool, &b.id])
                    .set(st.state.level());
                b.set_verdict(Arc::new(Verdict {
                    status: st.clone(),
                    feed: i,
                }));
            }
        }
    }
}
