//! One backend's live state. Everything is an atomic: the request path reads it without locks.

use crate::config::Ejection;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// One model server.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `IP:PORT`, used as the metric label.
    pub id: String,
    /// The configured `HOST` it was resolved from (`None`: listed as `IP:PORT`).
    pub name: Option<String>,
    /// `http://IP:PORT`, its own address (probes go to the pool's `probe_bases`, which a
    /// `health_check.port` may point elsewhere).
    pub base_url: String,
    /// Name of its pool.
    pub pool: String,
    healthy: AtomicBool,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    inflight: AtomicU64,
    queue_depth: AtomicU64,
    live_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// When response bytes last came from it, in ms since `epoch` (0: never).
    last_progress_ms: AtomicU64,
    /// Its last health probe failed while it was delivering responses: busy, not dead.
    busy: AtomicBool,
    epoch: Instant,
    metrics: crate::metrics::Metrics,
    verdict: arc_swap::ArcSwapOption<super::arbiter::Verdict>,
    /// Last scraped vLLM prefix-cache counters (queries, hits), to re-export as deltas.
    prefix_seen: parking_lot::Mutex<Option<(u64, u64)>>,
}

impl Backend {
    /// A backend that is unhealthy until its first successful probe.
    pub fn new(pool: &str, addr: SocketAddr, metrics: crate::metrics::Metrics) -> Self {
        Backend {
            addr,
            id: addr.to_string(),
            name: None,
            base_url: format!("http://{addr}"),
            pool: pool.to_owned(),
            healthy: AtomicBool::new(false),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            inflight: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            live_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            epoch: Instant::now(),
            metrics,
            verdict: arc_swap::ArcSwapOption::empty(),
            prefix_seen: parking_lot::Mutex::new(None),
        }
    }

    /// The same backend, known as resolved from `name`.
    pub fn with_name(mut self, name: Option<String>) -> Self {
        self.name = name;
        self
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The arbiter's last decision about it (fresh or not: see `ArbiterFeeds::verdict`).
    pub fn verdict(&self) -> Option<Arc<super::arbiter::Verdict>> {
        self.verdict.load_full()
    }

    /// Stores the arbiter's decision.
    pub fn set_verdict(&self, v: Arc<super::arbiter::Verdict>) {
        self.verdict.store(Some(v));
    }

    /// Passes health checks.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Milliseconds until an ejection ends (0 when not ejected).
    pub fn ejected_for_ms(&self) -> u64 {
        self.ejected_until_ms
            .load(Relaxed)
            .saturating_sub(self.now_ms())
    }

    /// May get new requests: healthy and not ejected.
    pub fn eligible(&self) -> bool {
        self.healthy() && self.ejected_for_ms() == 0
    }

    /// Requests this edge has in flight to it.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Relaxed)
    }

    /// The engine's own waiting queue, as last scraped.
    pub fn queue_depth(&self) -> u64 {
        self.queue_depth.load(Relaxed)
    }

    /// Load used for selection: ours plus the engine's queue.
    pub fn load(&self) -> u64 {
        self.inflight() + self.queue_depth()
    }

    /// Stores a scraped queue depth.
    pub fn set_queue_depth(&self, depth: u64) {
        self.queue_depth.store(depth, Relaxed);
        self.metrics
            .backend_queue_depth
            .with_label_values(&[&self.pool, &self.id])
            .set(depth as i64);
    }

    /// Re-exports the engine's prefix-cache counters (queries, hits) as our own counters,
    /// adding what grew since the last scrape (a restarted engine starts again from zero).
    pub fn set_prefix_cache(&self, queries: Option<u64>, hits: Option<u64>) {
        let (Some(q), Some(h)) = (queries, hits) else {
            return;
        };
        let mut seen = self.prefix_seen.lock();
        let (dq, dh) = match *seen {
            Some((pq, ph)) if q >= pq && h >= ph => (q - pq, h - ph),
            // First scrape: the engine's history before this edge started is not ours to count.
            None => (0, 0),
            Some(_) => (q, h),
        };
        *seen = Some((q, h));
        drop(seen);
        let labels = [self.pool.as_str(), self.id.as_str()];
        self.metrics
            .backend_prefix_queries
            .with_label_values(&labels)
            .inc_by(dq);
        self.metrics
            .backend_prefix_hits
            .with_label_values(&labels)
            .inc_by(dh);
    }

    /// Response bytes came from it just now (a chunk of a body it is sending).
    pub fn note_progress(&self) {
        self.last_progress_ms.store(self.now_ms().max(1), Relaxed);
    }

    /// Whether it sent response bytes within the last `window`.
    pub fn progressed_within(&self, window: std::time::Duration) -> bool {
        let last = self.last_progress_ms.load(Relaxed);
        last != 0 && self.now_ms().saturating_sub(last) <= window.as_millis() as u64
    }

    /// Its last probe failed while it kept delivering responses (see [`Self::probe_busy`]).
    pub fn busy(&self) -> bool {
        self.busy.load(Relaxed)
    }

    /// A probe failed, but the backend delivered response bytes within the probe window: an
    /// engine that answers its health or listing endpoint only between generations (llama.cpp's
    /// Python server) is busy, not dead. Neither the failure streak nor the health state moves.
    pub fn probe_busy(&self, why: &str) {
        if !self.busy.swap(true, Relaxed) {
            log::info!(
                "backend {} in pool {} is busy: its health probe failed ({why}) while it delivers                  responses; kept in rotation",
                self.id,
                self.pool
            );
        }
        self.metrics
            .backend_busy
            .with_label_values(&[&self.pool, &self.id])
            .set(1);
    }

    /// Applies one active probe result with rise/fall thresholds; returns the new state if it changed.
    pub fn probe_result(
        &self,
        ok: bool,
        healthy_after: u32,
        unhealthy_after: u32,
        why: &str,
    ) -> Option<bool> {
        if self.busy.swap(false, Relaxed) {
            self.metrics
                .backend_busy
                .with_label_values(&[&self.pool, &self.id])
                .set(0);
        }
        let was = self.healthy();
        let now = if ok {
            self.fail_streak.store(0, Relaxed);
            let s = self.ok_streak.fetch_add(1, Relaxed) + 1;
            was || s >= healthy_after
        } else {
            self.ok_streak.store(0, Relaxed);
            let s = self.fail_streak.fetch_add(1, Relaxed) + 1;
            was && s < unhealthy_after
        };
        if now != was {
            self.healthy.store(now, Relaxed);
            if now {
                // A backend that proves healthy again gets a clean slate.
                self.live_failures.store(0, Relaxed);
                self.ejected_until_ms.store(0, Relaxed);
                log::info!("backend {} in pool {} is healthy", self.id, self.pool);
            } else {
                log::warn!(
                    "backend {} in pool {} is unhealthy: {why}",
                    self.id,
                    self.pool
                );
            }
        }
        self.publish_health();
        (now != was).then_some(now)
    }

    /// A live request failed on it (connect error, reset, 5xx); may eject it.
    /// `immediate` failures (connection refused) eject at once.
    pub fn record_failure(&self, ejection: &Ejection, why: &str, immediate: bool) {
        let mut n = self.live_failures.fetch_add(1, Relaxed) + 1;
        if immediate {
            n = n.max(ejection.failures);
        }
        if n >= ejection.failures && self.ejected_for_ms() == 0 {
            let until = self.now_ms() + ejection.duration.0.as_millis() as u64;
            self.ejected_until_ms.store(until, Relaxed);
            self.live_failures.store(0, Relaxed);
            self.metrics
                .backend_ejections
                .with_label_values(&[&self.pool, &self.id])
                .inc();
            log::warn!(
                "backend {} in pool {} ejected for {} after {n} failure(s): {why}",
                self.id,
                self.pool,
                ejection.duration
            );
            self.publish_health();
        }
    }

    /// A live request got an answer from it.
    pub fn record_success(&self) {
        if self.live_failures.load(Relaxed) != 0 {
            self.live_failures.store(0, Relaxed);
        }
    }

    /// Refreshes the healthy gauge (ejection expiry is noticed here on the next probe).
    pub fn publish_health(&self) {
        self.metrics
            .backend_healthy
            .with_label_values(&[&self.pool, &self.id])
            .set(self.eligible() as i64);
    }

    /// Counts a request in flight until the guard drops.
    pub fn acquire(self: &Arc<Self>) -> InflightGuard {
        let n = self.inflight.fetch_add(1, Relaxed) + 1;
        let gauge = self
            .metrics
            .backend_inflight
            .with_label_values(&[&self.pool, &self.id]);
        gauge.set(n as i64);
        InflightGuard {
            backend: Arc::clone(self),
            gauge,
        }
    }
}

/// Holds one in-flight slot on a backend; released on drop, on every exit path.
#[derive(Debug)]
pub struct InflightGuard {
    backend: Arc<Backend>,
    gauge: prometheus::IntGauge,
}

impl InflightGuard {
    /// The backend this slot is on.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let n = self
            .backend
            .inflight
            .fetch_sub(1, Relaxed)
            .saturating_sub(1);
        self.gauge.set(n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use std::time::Duration;

    fn b() -> Arc<Backend> {
        Arc::new(Backend::new(
            "p",
            "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
            crate::metrics::Metrics::new(),
        ))
    }

    #[test]
    fn rise_and_fall_thresholds() {
        let b = b();
        assert!(!b.healthy());
        assert_eq!(b.probe_result(true, 2, 2, ""), None);
        assert_eq!(b.probe_result(true, 2, 2, ""), Some(true));
        assert_eq!(b.probe_result(false, 2, 2, "x"), None);
        assert_eq!(b.probe_result(true, 2, 2, ""), None);
        assert_eq!(b.probe_result(false, 2, 2, "x"), None);
        assert_eq!(b.probe_result(false, 2, 2, "x"), Some(false));
    }

    #[test]
    fn live_failures_eject_for_a_while() {
        let b = b();
        b.probe_result(true, 1, 1, "");
        let ej = Ejection {
            failures: 2,
            duration: Dur(Duration::from_secs(60)),
        };
        b.record_failure(&ej, "refused", false);
        assert!(b.eligible());
        b.record_failure(&ej, "refused", false);
        assert!(!b.eligible());
        assert!(b.ejected_for_ms() > 0);
    }

    #[test]
    fn busy_is_not_dead() {
        let b = b();
        b.probe_result(true, 1, 1, "");
        assert!(!b.progressed_within(Duration::from_secs(5)));
        b.note_progress();
        assert!(b.progressed_within(Duration::from_secs(5)));
        b.probe_busy("timed out");
        assert!(b.healthy() && b.busy());
        // The next answered probe clears it; a real failure counts as before.
        b.probe_result(true, 1, 1, "");
        assert!(!b.busy());
        assert_eq!(b.probe_result(false, 1, 1, "refused"), Some(false));
    }

    #[test]
    fn inflight_is_released_on_drop() {
        let b = b();
        let g1 = b.acquire();
        let g2 = b.acquire();
        assert_eq!(b.inflight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(b.inflight(), 0);
    }
}
