//! Tenant limits that hold across every edge: a [`LimitStore`] on Redis.
//!
//! Requests/min and tokens/min are sliding windows of 60 one-second buckets (a hash per tenant
//! and limit, on Redis's clock); concurrent streams are leases in a sorted set, scored by their
//! expiry. One Lua script checks and charges all three atomically (one EVALSHA round trip per
//! admission), so edges sharing a Redis never admit past a limit between them.
//!
//! Tokens are reserved at admission (`max_tokens` or the route's default) and settled with the
//! real count when the stream ends, off the token path (a spawned task refunds the unused part
//! to the bucket it was charged to). Each edge renews its live leases in one batched round trip
//! every lease/3; a crashed edge's leases expire within the lease time.
//!
//! When Redis is slow (past `timeout`) or down, each tenant's `on_limits_unavailable` decides:
//! `open` admits under this edge's local share of the limits (`limit / edges`), `closed` refuses
//! with 503. After a failure Redis is left alone for a backoff (250 ms doubling to 2 s) and then
//! probed by one request at a time, so a dead Redis is not hammered and shared counting resumes
//! within seconds of it coming back.

use async_trait::async_trait;
use okome_filters::policy::{OnLimitsUnavailable, TenantPolicy};
use okome_filters::tenancy::{Admission, Denied, LimitStore, Limits, Refusal};
use okome_filters::LocalLimits;
use parking_lot::Mutex;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default wait for Redis on the token path.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// Default lease of a concurrent stream.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why the Redis store cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// The address is not `redis://host:port` or `host:port`.
    #[error("not a Redis address (`redis://host:port` or `host:port`): {0}")]
    Address(String),
    /// Built outside a Tokio runtime.
    #[error("the Redis store must be built inside a Tokio runtime")]
    NoRuntime,
    /// The Redis client could not be created.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A Redis address as a URL: `host:port` gets `redis://` put in front; checked by the client.
pub fn parse_address(addr: &str) -> Result<String, LimitsError> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("redis://{addr}")
    };
    if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
        return Err(LimitsError::Address(addr.to_owned()));
    }
    redis::Client::open(url.as_str()).map_err(|_| LimitsError::Address(addr.to_owned()))?;
    Ok(url)
}

/// Settings of the Redis store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://host:port` (see [`parse_address`]).
    pub url: String,
    /// Longest wait for Redis on the token path; past it the tenant's failure mode applies.
    pub timeout: Duration,
    /// How long a stream's lease lives without renewal.
    pub lease: Duration,
}

/// The store's metrics; the edge registers them with its own.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Requests admitted under the local share because Redis could not answer.
    pub allowed_on_error: IntCounter,
    /// Refusals, by limit (`requests_per_minute`, …, `limits_unavailable`).
    pub refused: IntCounterVec,
    /// Failed or timed-out calls to Redis, by operation (`admit`, `settle`, `renew`).
    pub errors: IntCounterVec,
    /// Round trips to Redis, by operation.
    pub latency: HistogramVec,
}

impl StoreMetrics {
    /// The collectors, not registered anywhere yet.
    pub fn new() -> prometheus::Result<StoreMetrics> {
        Ok(StoreMetrics {
            allowed_on_error: IntCounter::new(
                "okome_limits_allowed_on_error_total",
                "Requests admitted under this edge's local share of the limits because the shared limit store could not answer (tenants with on_limits_unavailable: open).",
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "okome_limits_refused_total",
                    "Requests refused by the limit store, by limit: requests_per_minute, tokens_per_minute, concurrent_streams (429), limits_unavailable (503, tenants failing closed).",
                ),
                &["limit"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "okome_limits_store_errors_total",
                    "Calls to the shared limit store (Redis) that failed or timed out, by operation: admit, settle, renew.",
                ),
                &["op"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "okome_limits_store_seconds",
                    "Round trips to the shared limit store (Redis), by operation: admit, settle, renew.",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16)?),
                &["op"],
            )?,
        })
    }

    /// Creates the series whose labels are known up front at 0.
    pub fn init_series(&self) {
        for l in [
            "requests_per_minute",
            "tokens_per_minute",
            "concurrent_streams",
            "limits_unavailable",
        ] {
            self.refused.with_label_values(&[l]);
        }
        for op in ["admit", "settle", "renew"] {
            self.errors.with_label_values(&[op]);
            self.latency.with_label_values(&[op]);
        }
    }
}

/// Whether Redis is worth asking, and how long to leave it alone after a failure.
#[derive(Debug)]
struct Health {
    down_until: Option<Instant>,
    backoff: Duration,
    /// When the one caller probing a failed Redis started; a probe whose caller went away
    /// (its request dropped mid-call) counts as over after `timeout` + 1 s.
    probing_since: Option<Instant>,
}

struct Inner {
    conn: ConnectionManager,
    admit: Script,
    settle: Script,
    renew: Script,
    settings: RedisSettings,
    fallback: LocalLimits,
    health: Mutex<Health>,
    /// This edge's live leases: lease number → (leases key, lease id).
    leases: Mutex<HashMap<u64, (String, String)>>,
    next_lease: AtomicU64,
    instance: String,
    metrics: StoreMetrics,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits")
            .field("settings", &self.settings)
            .field("instance", &self.instance)
            .finish()
    }
}

/// The shared [`LimitStore`] on Redis, with this edge's local share as its fallback.
#[derive(Debug, Clone)]
pub struct RedisLimits {
    inner: Arc<Inner>,
}

/// What an operation on Redis came to.
enum Outcome<T> {
    Done(T),
    /// Redis was not asked (backing off) or failed.
    Unavailable,
}

impl RedisLimits {
    /// A store on `settings.url`. Connects lazily (the edge starts while Redis is down); must be
    /// called inside the Tokio runtime that will run its settlements and connection.
    pub fn new(settings: RedisSettings, metrics: StoreMetrics) -> Result<RedisLimits, LimitsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| LimitsError::NoRuntime)?;
        let client = redis::Client::open(settings.url.as_str())?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(settings.timeout.max(Duration::from_millis(200))))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(MAX_BACKOFF);
        let conn = ConnectionManager::new_lazy_with_config(client, cfg)?;
        Ok(RedisLimits {
            inner: Arc::new(Inner {
                conn,
                admit: Script::new(include_str!("admit.lua")),
                settle: Script::new(include_str!("settle.lua")),
                renew: Script::new(include_str!("renew.lua")),
                settings,
                fallback: LocalLimits::new(),
                health: Mutex::new(Health {
                    down_until: None,
                    backoff: MIN_BACKOFF,
                    probing_since: None,
                }),
                leases: Mutex::new(HashMap::new()),
                next_lease: AtomicU64::new(0),
                instance: format!("{:016x}", rand::random::<u64>()),
                metrics,
                runtime,
            }),
        })
    }

    /// The settings it runs on.
    pub fn settings(&self) -> &RedisSettings {
        &self.inner.settings
    }

    /// Renews this edge's live leases every lease/3, in one round trip each time; runs until
    /// the runtime stops.
    pub async fn renew_leases(self) {
        let every = self.inner.settings.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            self.inner.renew_once(every).await;
        }
    }

    /// Whether Redis answered the last call (false while backing off after a failure).
    pub fn healthy(&self) -> bool {
        self.inner.health.lock().down_until.is_none()
    }
}

impl Inner {
    fn key(tenant: &str, what: &str) -> String {
        // The tenant in braces: one hash slot per tenant, should this ever run on Redis Cluster.
        format!("okome:limits:{{{tenant}}}:{what}")
    }

    /// Whether to ask Redis now: always while healthy; after a failure, once the backoff has
    /// passed, one caller at a time.
    fn may_ask(&self) -> bool {
        let mut h = self.health.lock();
        let now = Instant::now();
        match h.down_until {
            None => true,
            Some(t) if now >= t => {
                let stale = self.settings.timeout + Duration::from_secs(1);
                let free = h
                    .probing_since
                    .is_none_or(|since| now.duration_since(since) > stale);
                if free {
                    h.probing_since = Some(now);
                }
                free
            }
            Some(_) => false,
        }
    }

    fn succeeded(&self) {
        let mut h = self.health.lock();
        if h.down_until.take().is_some() {
            log::info!("limits: Redis at {} answers again", self.settings.url);
        }
        h.backoff = MIN_BACKOFF;
        h.probing_since = None;
    }

    fn failed(&self, op: &'static str, why: &str) {
        self.metrics.errors.with_label_values(&[op]).inc();
        let mut h = self.health.lock();
        if h.down_until.is_none() {
            log::warn!(
                "limits: Redis at {} failed ({op}: {why}); tenants fall back to their on_limits_unavailable",
                self.settings.url
            );
        } else {
            h.backoff = (h.backoff * 2).min(MAX_BACKOFF);
        }
        h.down_until = Some(Instant::now() + h.backoff);
        h.probing_since = None;
    }

    /// Seconds a fail-closed tenant is told to wait.
    fn retry_after(&self) -> u64 {
        self.health.lock().backoff.as_secs().max(1)
    }

    /// Runs one call to Redis with `limit`, recording latency and failures.
    async fn call<T, F>(&self, op: &'static str, limit: Duration, f: F) -> Outcome<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = Instant::now();
        let r = tokio::time::timeout(limit, f).await;
        self.metrics
            .latency
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match r {
            Ok(Ok(v)) => {
                self.succeeded();
                Outcome::Done(v)
            }
            Ok(Err(e)) => {
                self.failed(op, &e.to_string());
                Outcome::Unavailable
            }
            Err(_) => {
                self.failed(op, &format!("no answer within {limit:?}"));
                Outcome::Unavailable
            }
        }
    }

    async fn renew_once(&self, limit: Duration) {
        let live: Vec<(String, String)> = self.leases.lock().values().cloned().collect();
        if live.is_empty() || !self.may_ask() {
            return;
        }
        let mut inv = self.renew.prepare_invoke();
        inv.arg(self.settings.lease.as_millis() as u64);
        for (key, id) in &live {
            inv.key(key).arg(id);
        }
        let mut conn = self.conn.clone();
        let _: Outcome<i64> = self.call("renew", limit, inv.invoke_async(&mut conn)).await;
    }

    /// Settles (or, with `tokens` none, just releases) an admission, on the store's runtime.
    fn spawn_settle(self: &Arc<Self>, tenant: &str, bucket: i64, delta: i64, lease: Option<u64>) {
        let lease_id = lease
            .and_then(|n| self.leases.lock().remove(&n))
            .map(|(_, id)| id)
            .unwrap_or_default();
        if delta == 0 && lease_id.is_empty() {
            return;
        }
        let me = self.clone();
        let tokens_key = Self::key(tenant, "tpm");
        let leases_key = Self::key(tenant, "streams");
        self.runtime.spawn(async move {
            // Settling is not on the token path, but a dead Redis must not pile up tasks.
            if !me.may_ask() {
                return;
            }
            let mut inv = me.settle.prepare_invoke();
            inv.key(&tokens_key)
                .key(&leases_key)
                .arg(bucket)
                .arg(delta)
                .arg(&lease_id);
            let mut conn = me.conn.clone();
            let limit = me.settings.timeout.max(Duration::from_millis(500));
            let _: Outcome<i64> = me.call("settle", limit, inv.invoke_async(&mut conn)).await;
        });
    }

    fn refused(&self, limit: &'static str) {
        self.metrics.refused.with_label_values(&[limit]).inc();
    }

    /// The tenant's failure mode while Redis cannot answer.
    fn unavailable(
        &self,
        tenant: &TenantPolicy,
        edges: u32,
        reserve: u64,
    ) -> Result<Box<dyn Admission>, Refusal> {
        match tenant.on_limits_unavailable {
            OnLimitsUnavailable::Closed => {
                self.refused("limits_unavailable");
                Err(Refusal::Unavailable {
                    retry_after: self.retry_after(),
                })
            }
            OnLimitsUnavailable::Open => {
                match self.fallback.admit_limits(
                    &tenant.id,
                    Limits::share_of(tenant, edges),
                    reserve,
                ) {
                    Ok(a) => {
                        self.metrics.allowed_on_error.inc();
                        Ok(a)
                    }
                    Err(d) => {
                        self.refused(d.limit);
                        Err(Refusal::Limited(d))
                    }
                }
            }
        }
    }
}

/// A limit as the script takes it: -1 for none.
fn arg(v: Option<u64>) -> i64 {
    v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

#[async_trait]
impl LimitStore for RedisLimits {
    async fn admit(
        &self,
        tenant: &TenantPolicy,
        edges: u32,
        reserve_tokens: u64,
    ) -> Result<Box<dyn Admission>, Refusal> {
        let me = &self.inner;
        if tenant.requests_per_minute.is_none()
            && tenant.tokens_per_minute.is_none()
            && tenant.max_concurrent_streams.is_none()
        {
            // Nothing to count: no round trip.
            return Ok(Box::new(Unlimited));
        }
        if !me.may_ask() {
            return me.unavailable(tenant, edges, reserve_tokens);
        }
        let lease_no = me.next_lease.fetch_add(1, Ordering::Relaxed);
        let lease_id = format!("{}:{lease_no}", me.instance);
        let mut inv = me.admit.prepare_invoke();
        inv.key(Inner::key(&tenant.id, "rpm"))
            .key(Inner::key(&tenant.id, "tpm"))
            .key(Inner::key(&tenant.id, "streams"))
            .arg(arg(tenant.requests_per_minute))
            .arg(arg(tenant.tokens_per_minute))
            .arg(arg(tenant.max_concurrent_streams))
            .arg(arg(Some(reserve_tokens)))
            .arg(&lease_id)
            .arg(me.settings.lease.as_millis() as u64);
        let mut conn = me.conn.clone();
        let answer: (i64, String, i64, i64) = match me
            .call("admit", me.settings.timeout, inv.invoke_async(&mut conn))
            .await
        {
            Outcome::Done(a) => a,
            // If the script ran but its answer came too late, its charge stays and its lease
            // expires on its own: erring on the side of the limit.
            Outcome::Unavailable => return me.unavailable(tenant, edges, reserve_tokens),
        };
        let (ok, limit, n, bucket) = answer;
        if ok != 1 {
            let limit = match limit.as_str() {
                "requests_per_minute" => "requests_per_minute",
                "tokens_per_minute" => "tokens_per_minute",
                _ => "concurrent_streams",
            };
            me.refused(limit);
            return Err(Refusal::Limited(Denied {
                limit,
                retry_after: u64::try_from(n).unwrap_or(1).max(1),
            }));
        }
        let lease = tenant.max_concurrent_streams.map(|_| {
            me.leases.lock().insert(
                lease_no,
                (Inner::key(&tenant.id, "streams"), lease_id.clone()),
            );
            lease_no
        });
        Ok(Box::new(SharedAdmission {
            store: self.inner.clone(),
            tenant: tenant.id.clone(),
            bucket,
            reserved: u64::try_from(n).unwrap_or(0),
            counts_tokens: tenant.tokens_per_minute.is_some(),
            lease,
        }))
    }

    fn streams_full(&self, tenant: &TenantPolicy, edges: u32) -> Option<Denied> {
        // While Redis answers, admission decides in one round trip; a head-time check would
        // cost a second one. While it is down, the local share is what counts.
        if self.healthy() {
            None
        } else {
            self.inner
                .fallback
                .full(&tenant.id, Limits::share_of(tenant, edges))
        }
    }
}

/// A tenant with no limits: nothing to settle.
#[derive(Debug)]
struct Unlimited;

impl Admission for Unlimited {
    fn settle(self: Box<Self>, _tokens: u64) {}
    fn reserved(&self) -> u64 {
        0
    }
}

/// An admission counted in Redis: its token reservation and its stream lease.
#[derive(Debug)]
struct SharedAdmission {
    store: Arc<Inner>,
    tenant: String,
    bucket: i64,
    reserved: u64,
    counts_tokens: bool,
    lease: Option<u64>,
}

impl Admission for SharedAdmission {
    fn settle(mut self: Box<Self>, tokens: u64) {
        let delta = if self.counts_tokens {
            i64::try_from(tokens)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(self.reserved).unwrap_or(i64::MAX))
        } else {
            0
        };
        let lease = self.lease.take();
        self.store
            .spawn_settle(&self.tenant, self.bucket, delta, lease);
    }

    fn reserved(&self) -> u64 {
        self.reserved
    }
}

impl Drop for SharedAdmission {
    fn drop(&mut self) {
        // Dropped unsettled: the reservation stays charged; the lease is released.
        if let Some(lease) = self.lease.take() {
            self.store
                .spawn_settle(&self.tenant, self.bucket, 0, Some(lease));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_or_without_scheme() {
        assert_eq!(
            parse_address("127.0.0.1:6379").expect("host:port"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            parse_address("redis://cache.internal:6380/0").expect("url"),
            "redis://cache.internal:6380/0"
        );
        assert!(parse_address("http://x:1").is_err());
        assert!(parse_address("redis://").is_err() || parse_address("").is_err());
    }

    #[test]
    fn limits_become_script_arguments() {
        assert_eq!(arg(None), -1);
        assert_eq!(arg(Some(60)), 60);
        assert_eq!(arg(Some(u64::MAX)), i64::MAX);
    }
}
