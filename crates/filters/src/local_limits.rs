//! The per-edge [`LimitStore`]: sliding-window counters (previous and current minute, weighted)
//! and an in-flight count per tenant. Locks are per tenant and held for a few arithmetic
//! operations, never across an await.

use crate::policy::TenantPolicy;
use crate::tenancy::{Admission, Denied, LimitStore, Limits, Refusal};
use async_trait::async_trait;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WINDOW: f64 = 60.0;
const SHARDS: usize = 16;

/// One minute window and the one before it.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    index: u64,
    curr: u64,
    prev: u64,
}

impl Window {
    fn roll(&mut self, index: u64) {
        if index == self.index {
            return;
        }
        self.prev = if index == self.index + 1 {
            self.curr
        } else {
            0
        };
        self.curr = 0;
        self.index = index;
    }

    /// Weighted count at `frac` (0..1) into the current window.
    fn estimate(&self, frac: f64) -> f64 {
        self.prev as f64 * (1.0 - frac) + self.curr as f64
    }

    /// Seconds from `tau` (seconds into the window) until `need` more fits under `limit`.
    fn wait_for(&self, need: u64, limit: u64, tau: f64) -> f64 {
        let room = limit.saturating_sub(need) as f64;
        if self.curr as f64 <= room {
            if self.prev == 0 {
                return 0.0;
            }
            let t = WINDOW * (1.0 - (room - self.curr as f64) / self.prev as f64);
            (t - tau).max(0.0)
        } else {
            // Only the next window can make room: there, this window's count decays.
            let t_next = if self.curr == 0 {
                0.0
            } else {
                WINDOW * (1.0 - room / self.curr as f64)
            };
            (WINDOW - tau) + t_next.max(0.0)
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    inflight: AtomicU64,
    requests: Mutex<Window>,
    tokens: Mutex<Window>,
}

/// Per-edge counters for every tenant seen.
#[derive(Debug)]
pub struct LocalLimits {
    shards: Vec<Mutex<HashMap<String, Arc<Counters>>>>,
    hasher: RandomState,
    epoch: Instant,
}

impl Default for LocalLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalLimits {
    /// Empty counters.
    pub fn new() -> Self {
        LocalLimits {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    fn counters(&self, tenant: &str) -> Arc<Counters> {
        let shard = &self.shards[(self.hasher.hash_one(tenant) as usize) % SHARDS];
        // A poisoned shard only means another thread panicked mid-update of plain counters.
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(tenant) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(Counters::default());
                map.insert(tenant.to_owned(), c.clone());
                c
            }
        }
    }

    /// Admission at an explicit time since the store's epoch (for tests).
    pub fn admit_at(
        &self,
        tenant: &str,
        limits: Limits,
        reserve: u64,
        now: Duration,
    ) -> Result<Box<dyn Admission>, Denied> {
        let c = self.counters(tenant);
        let secs = now.as_secs_f64();
        let index = (secs / WINDOW) as u64;
        let tau = secs - index as f64 * WINDOW;
        let frac = tau / WINDOW;

        let held = c.inflight.fetch_add(1, Relaxed) + 1;
        if limits.concurrent.is_some_and(|max| held > max) {
            c.inflight.fetch_sub(1, Relaxed);
            return Err(Denied {
                limit: "concurrent_streams",
                retry_after: 1,
            });
        }
        let deny = |limit, wait: f64| {
            c.inflight.fetch_sub(1, Relaxed);
            Err(Denied {
                limit,
                retry_after: (wait.ceil() as u64).max(1),
            })
        };
        let mut req = c.requests.lock().unwrap_or_else(|p| p.into_inner());
        let mut tok = c.tokens.lock().unwrap_or_else(|p| p.into_inner());
        req.roll(index);
        tok.roll(index);
        if let Some(rpm) = limits.requests_per_minute {
            if req.estimate(frac) + 1.0 > rpm as f64 {
                let w = req.wait_for(1, rpm, tau);
                return deny("requests_per_minute", w);
            }
        }
        // A reservation larger than the whole budget could never pass: charge at most the budget.
        let reserve = limits
            .tokens_per_minute
            .map_or(reserve, |tpm| reserve.min(tpm));
        if let Some(tpm) = limits.tokens_per_minute {
            if tok.estimate(frac) + reserve as f64 > tpm as f64 {
                let w = tok.wait_for(reserve, tpm, tau);
                return deny("tokens_per_minute", w);
            }
        }
        req.curr += 1;
        tok.curr += reserve;
        Ok(Box::new(LocalAdmission {
            counters: c.clone(),
            reserved: reserve,
            index,
        }))
    }
}

impl LocalLimits {
    /// Admits one request under explicit (already per-edge) limits, now.
    pub fn admit_limits(
        &self,
        tenant: &str,
        limits: Limits,
        reserve_tokens: u64,
    ) -> Result<Box<dyn Admission>, Denied> {
        self.admit_at(tenant, limits, reserve_tokens, self.epoch.elapsed())
    }

    /// Whether `tenant` holds all of `limits.concurrent` streams at this edge.
    pub fn full(&self, tenant: &str, limits: Limits) -> Option<Denied> {
        let max = limits.concurrent?;
        (self.counters(tenant).inflight.load(Relaxed) >= max).then_some(Denied {
            limit: "concurrent_streams",
            retry_after: 1,
        })
    }
}

#[async_trait]
impl LimitStore for LocalLimits {
    async fn admit(
        &self,
        tenant: &TenantPolicy,
        edges: u32,
        reserve_tokens: u64,
    ) -> Result<Box<dyn Admission>, Refusal> {
        self.admit_limits(&tenant.id, Limits::share_of(tenant, edges), reserve_tokens)
            .map_err(Refusal::Limited)
    }

    fn streams_full(&self, tenant: &TenantPolicy, edges: u32) -> Option<Denied> {
        self.full(&tenant.id, Limits::share_of(tenant, edges))
    }
}

#[derive(Debug)]
struct LocalAdmission {
    counters: Arc<Counters>,
    reserved: u64,
    index: u64,
}

impl Admission for LocalAdmission {
    fn settle(self: Box<Self>, tokens: u64) {
        let mut w = self
            .counters
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Correct the window the reservation was charged to, if it is still counted.
        let slot = if w.index == self.index {
            Some(&mut w.curr)
        } else if w.index == self.index + 1 {
            Some(&mut w.prev)
        } else {
            None
        };
        if let Some(v) = slot {
            *v = v.saturating_sub(self.reserved).saturating_add(tokens);
        }
    }

    fn reserved(&self) -> u64 {
        self.reserved
    }
}

impl Drop for LocalAdmission {
    fn drop(&mut self) {
        self.counters.inflight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn requests_per_minute_with_a_computed_retry_after() {
        let l = LocalLimits::new();
        let lim = Limits {
            requests_per_minute: Some(2),
            ..Limits::default()
        };
        let a = l.admit_at("t", lim, 0, at(1.0)).expect("1st");
        let b = l.admit_at("t", lim, 0, at(2.0)).expect("2nd");
        drop((a, b));
        let d = l.admit_at("t", lim, 0, at(3.0)).expect_err("3rd is over");
        assert_eq!(d.limit, "requests_per_minute");
        // Next window starts at 60 s; then 2 previous requests weigh 2*(1-t/60) and one more
        // fits once that is <= 1, i.e. 30 s into it: 57 + 30 s from now.
        assert_eq!(d.retry_after, 87);
        assert!(l.admit_at("t", lim, 0, at(3.0 + 87.0)).is_ok());
    }

    #[test]
    fn tokens_are_reserved_then_settled_to_the_real_count() {
        let l = LocalLimits::new();
        let lim = Limits {
            tokens_per_minute: Some(100),
            ..Limits::default()
        };
        let a = l.admit_at("t", lim, 80, at(1.0)).expect("reserve 80");
        assert!(
            l.admit_at("t", lim, 30, at(2.0)).is_err(),
            "80 + 30 > 100 while reserved"
        );
        a.settle(10);
        assert!(
            l.admit_at("t", lim, 30, at(3.0)).is_ok(),
            "10 + 30 <= 100 once settled"
        );
    }

    #[test]
    fn concurrency_slots_are_released_on_drop() {
        let l = LocalLimits::new();
        let lim = Limits {
            concurrent: Some(1),
            ..Limits::default()
        };
        let a = l.admit_at("t", lim, 0, at(1.0)).expect("first");
        assert_eq!(
            l.admit_at("t", lim, 0, at(1.0)).expect_err("second").limit,
            "concurrent_streams"
        );
        drop(a);
        assert!(l.admit_at("t", lim, 0, at(1.0)).is_ok());
        // Other tenants are independent.
        assert!(l.admit_at("u", lim, 0, at(1.0)).is_ok());
    }

    #[test]
    fn limits_split_across_edges_round_up() {
        let p = crate::policy::TenantPolicy {
            id: "t".into(),
            priority: Default::default(),
            models: vec!["*".into()],
            requests_per_minute: Some(10),
            tokens_per_minute: Some(1000),
            max_concurrent_streams: Some(1),
            max_body_bytes: None,
            on_limits_unavailable: Default::default(),
        };
        let s = Limits::share_of(&p, 3);
        assert_eq!(s.requests_per_minute, Some(4));
        assert_eq!(s.tokens_per_minute, Some(334));
        assert_eq!(s.concurrent, Some(1));
    }
}
