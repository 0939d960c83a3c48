//! Resumable streams (opt-in per route, `resumable`): the stream node keeps a streaming answer's
//! events in a bounded buffer, keeps the engine going for a grace window after the client drops,
//! and replays what the client missed when it comes back with its stream id and cursor.
//!
//! - [`id`]: stream ids, which carry the holding node's tag for an ingress;
//! - [`events`]: numbering the events (`id:` lines for SSE, line counts for NDJSON);
//! - [`record`]: one stream's buffer, readers and end;
//! - [`stream`]: the stream's own request (start, each chunk, the client leaving, the end);
//! - [`serve`]: resume and cancel requests.
//!
//! Pingora drops the upstream connection when the client goes away; a patch in
//! `third_party/pingora-proxy` (`ProxyHttp::downstream_detached`, `response_abort`) lets the
//! edge keep reading it, through the same response filters, until the stream ends, the grace
//! window passes with nobody attached, or the caller cancels.

pub mod events;
pub mod id;
pub mod record;
pub mod serve;
pub mod stream;

use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use record::{Owner, Record};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A route's `resumable` settings, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long the engine goes on for nobody after the last client left.
    pub grace: Duration,
    /// The most bytes of events one stream keeps (older ones are dropped: their cursors get 410).
    pub buffer: usize,
    /// How long a finished stream can still be read.
    pub keep: Duration,
}

impl Policy {
    /// Grace window when the config names none.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
    /// Per-stream buffer when the config names none.
    pub const DEFAULT_BUFFER: usize = 1 << 20;
    /// How long a finished stream stays readable when the config says nothing.
    pub const DEFAULT_KEEP: Duration = Duration::from_secs(60);
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            grace: Self::DEFAULT_GRACE,
            buffer: Self::DEFAULT_BUFFER,
            keep: Self::DEFAULT_KEEP,
        }
    }
}

/// The node's budget for all resumable streams' buffers when the config names none.
pub const DEFAULT_NODE_BUDGET: u64 = 256 << 20;

/// The resumable streams' metrics.
#[derive(Debug, Clone)]
pub struct ResumeMetrics {
    /// Streams held (live, or finished and still readable).
    pub held: IntGauge,
    /// Live streams with no client attached.
    pub detached: IntGauge,
    /// Bytes of events buffered.
    pub buffer_bytes: IntGauge,
    /// Resume requests by result.
    pub resumes: IntCounterVec,
    /// Streams whose engine was stopped because nobody came back within the grace window.
    pub grace_expired: IntCounter,
    /// Streams cancelled by their caller.
    pub cancels: IntCounter,
    /// Streams served as not resumable because the node's budget was spent.
    pub refused: IntCounter,
}

impl ResumeMetrics {
    /// The metrics, registered in `r`.
    pub fn new(r: &Registry) -> prometheus::Result<Self> {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(
            r: &Registry,
            c: C,
        ) -> prometheus::Result<C> {
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let resumes = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "okome_stream_resumes_total",
                    "Requests to resume a stream, by result: resumed, not_found (unknown, expired or another caller's), gone (cursor older than the buffer), bad_cursor.",
                ),
                &["result"],
            )?,
        )?;
        for result in ["resumed", "not_found", "gone", "bad_cursor"] {
            resumes.with_label_values(&[result]);
        }
        Ok(ResumeMetrics {
            held: reg(r, IntGauge::new("okome_resumable_streams", "Resumable streams held on this node: live, or finished and still readable.")?)?,
            detached: reg(r, IntGauge::new("okome_resumable_streams_detached", "Live resumable streams with no client attached (the engine goes on within the grace window).")?)?,
            buffer_bytes: reg(r, IntGauge::new("okome_resumable_buffer_bytes", "Bytes of events buffered for resumable streams.")?)?,
            resumes,
            grace_expired: reg(r, IntCounter::new("okome_stream_grace_expired_total", "Resumable streams stopped because nobody came back within the grace window.")?)?,
            cancels: reg(r, IntCounter::new("okome_stream_cancels_total", "Resumable streams cancelled by their caller.")?)?,
            refused: reg(r, IntCounter::new("okome_resumable_refused_total", "Streams served as not resumable because the node's budget (limits.resumable_buffer) was spent.")?)?,
        })
    }
}

#[derive(Debug, Default)]
struct Held {
    streams: HashMap<String, Arc<Record>>,
    /// Finished streams, by when they stop being readable.
    expiry: BinaryHeap<Reverse<(Instant, String)>>,
}

/// Every resumable stream on this node, across config reloads.
#[derive(Debug)]
pub struct Streams {
    held: Mutex<Held>,
    /// Bytes promised to held streams (each its route's `buffer`).
    reserved: AtomicU64,
    /// `limits.resumable_buffer`.
    budget: AtomicU64,
    /// Keys the owner hash (random per process: owners are compared, never shown).
    owners: std::hash::RandomState,
    /// Metrics.
    pub metrics: ResumeMetrics,
}

impl Streams {
    /// An empty registry with a node budget of `budget` bytes.
    pub fn new(budget: u64, metrics: ResumeMetrics) -> Self {
        Streams {
            held: Mutex::new(Held::default()),
            reserved: AtomicU64::new(0),
            budget: AtomicU64::new(budget),
            owners: std::hash::RandomState::new(),
            metrics,
        }
    }

    /// A reload's new budget (streams already held keep their place).
    pub fn set_budget(&self, budget: u64) {
        self.budget.store(budget, Relaxed);
    }

    /// Who is asking: the caller's key, else its tenant, else nobody in particular.
    pub fn owner(&self, headers: &http::HeaderMap, tenant: Option<&str>) -> Owner {
        match (okome_filters::presented_key(headers), tenant) {
            (Some(key), _) => self.owners.hash_one(("key", key)),
            (None, Some(t)) => self.owners.hash_one(("tenant", t)),
            (None, None) => self.owners.hash_one("anonymous"),
        }
    }

    /// Holds a new stream when the node's budget allows one more of `policy.buffer` bytes.
    pub fn open(&self, make: impl FnOnce() -> Record) -> Option<Arc<Record>> {
        self.sweep();
        let record = make();
        let want = record.policy.buffer as u64;
        let budget = self.budget.load(Relaxed);
        let fits = self
            .reserved
            .fetch_update(Relaxed, Relaxed, |r| {
                (r + want <= budget).then_some(r + want)
            })
            .is_ok();
        if !fits {
            self.metrics.refused.inc();
            return None;
        }
        let record = Arc::new(record);
        self.held
            .lock()
            .streams
            .insert(record.id.as_str().to_owned(), record.clone());
        self.metrics.held.inc();
        Some(record)
    }

    /// The stream `id` when `owner` made it.
    pub fn get(&self, id: &str, owner: Owner) -> Option<Arc<Record>> {
        self.sweep();
        let held = self.held.lock();
        held.streams.get(id).filter(|r| r.owner == owner).cloned()
    }

    /// The stream ended: it stays readable for its `keep`.
    fn ended(&self, record: &Record) {
        let at = Instant::now() + record.policy.keep;
        self.held
            .lock()
            .expiry
            .push(Reverse((at, record.id.as_str().to_owned())));
    }

    /// A client attached to `r` (a resume).
    pub fn attach(&self, r: &Record) {
        if r.attach() {
            self.metrics.detached.dec();
        }
    }

    /// A client of `r` left.
    pub fn leave(&self, r: &Record) {
        if r.leave() {
            self.metrics.detached.inc();
        }
    }

    /// Ends `r` as `life` unless it already ended; returns whether this call ended it.
    pub fn end(&self, r: &Record, life: record::Life) -> bool {
        let Some(alone) = r.end(life) else {
            return false;
        };
        if alone {
            self.metrics.detached.dec();
        }
        if life == record::Life::Cancelled {
            self.metrics.cancels.inc();
        }
        true
    }

    /// `r`'s grace window passed with nobody attached (it ended itself as expired).
    pub fn expired(&self, _r: &Record) {
        self.metrics.detached.dec();
        self.metrics.grace_expired.inc();
    }

    /// `r`'s own request wrote its last bytes: from now on it holds only what it keeps (its
    /// reservation shrinks to that), and it stays readable for its `keep`.
    pub fn seal(&self, r: &Record) {
        let kept = r.seal() as u64;
        let was = r.reserved.swap(kept, Relaxed);
        if was >= kept {
            self.reserved.fetch_sub(was - kept, Relaxed);
        } else {
            self.reserved.fetch_add(kept - was, Relaxed);
        }
        self.ended(r);
    }

    /// Drops finished streams past their `keep` (also run every second by [`Streams::sweeper`],
    /// so an idle node frees them too).
    pub async fn sweeper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    /// Drops finished streams past their `keep`.
    fn sweep(&self) {
        let now = Instant::now();
        let mut held = self.held.lock();
        while held
            .expiry
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
        {
            let Some(Reverse((_, id))) = held.expiry.pop() else {
                break;
            };
            if let Some(r) = held.streams.remove(&id) {
                self.reserved.fetch_sub(r.reserved.load(Relaxed), Relaxed);
                self.metrics.buffer_bytes.sub(r.bytes() as i64);
                self.metrics.held.dec();
            }
        }
    }
}
