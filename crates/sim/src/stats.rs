//! Counters, the concurrency scheduler (running slots + FIFO queue) and the snapshot type.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::oneshot;

/// A snapshot of a simulator's counters.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SimStats {
    /// Generation (and predict) requests received, errors included.
    pub requests: u64,
    /// Generations admitted (queued or running), streaming or not.
    pub streams_started: u64,
    /// Generations that reached their natural end (an injected in-stream error counts here too).
    pub streams_completed: u64,
    /// Generations whose client went away first (queued, prefill or streaming phase).
    pub streams_aborted: u64,
    /// Sequences holding a slot now.
    pub running: u64,
    /// Requests waiting for a slot now.
    pub waiting: u64,
    /// Body length of the last generation request.
    pub last_body_len: u64,
    /// `DefaultHasher` hash of the last generation request's body.
    pub last_body_hash: u64,
    /// The `traceparent` header of the last API request, if it had one.
    #[serde(default)]
    pub last_traceparent: Option<String>,
    /// The credential headers (`authorization`, `x-api-key`, `proxy-authorization`) of the last
    /// API request, as `name: value` lines; empty when it carried none.
    #[serde(default)]
    pub last_credentials: Vec<String>,
    /// The `x-request-id` header of the last API request, if it had one.
    #[serde(default)]
    pub last_request_id: Option<String>,
    /// The forwarding headers of the last API request (`x-forwarded-for`,
    /// `x-forwarded-proto`), as `name: value` lines; empty when it carried none.
    #[serde(default)]
    pub last_forwarded: Vec<String>,
}

/// Why a generation finished, as in vLLM's `finished_reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// End of sequence.
    Stop,
    /// Hit max_tokens.
    Length,
    /// Client went away.
    Abort,
    /// Injected failure.
    Error,
}

impl Finish {
    /// The label / JSON value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Abort => "abort",
            Finish::Error => "error",
        }
    }
}

/// vLLM's TTFT histogram buckets (0.19.1 loggers.py).
pub(crate) const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// A histogram with fixed buckets (non-cumulative counts; rendered cumulatively).
#[derive(Debug, Default, Clone)]
pub(crate) struct Histogram {
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.len() != buckets.len() {
            self.counts = vec![0; buckets.len()];
        }
        if let Some(i) = buckets.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += v;
    }
}

/// Tokens, decode steps and time of one kind of work (llama-server's `server_metrics::bucket`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Bucket {
    /// Tokens.
    pub count: u64,
    /// Decode steps (the first generated token comes free with the prompt's last batch).
    pub steps: u64,
    /// Microseconds.
    pub time_us: u64,
}

impl Bucket {
    fn add(&mut self, n: u64, steps: u64, t_us: u64) {
        self.count += n;
        self.steps += steps;
        self.time_us += t_us;
    }

    /// Steps per second (0 before any time was spent).
    pub(crate) fn per_second(&self) -> f64 {
        if self.time_us > 0 {
            self.steps as f64 / self.time_us as f64 * 1e6
        } else {
            0.0
        }
    }
}

/// What llama-server's `/metrics` reports (kept for kind llamacpp only).
#[derive(Debug, Default, Clone)]
pub(crate) struct LlamaMetrics {
    /// Prompt tokens processed (cached ones excluded), since start.
    pub prompt: Bucket,
    /// Generated tokens, since start.
    pub predict: Bucket,
    /// Since the last scrape (the throughput gauges).
    pub prompt_bucket: Bucket,
    /// Since the last scrape.
    pub predict_bucket: Bucket,
    /// Prompt tokens reused from the cache.
    pub n_prompt_cached: u64,
    /// Longest sequence seen (prompt + generated).
    pub n_tokens_max: u64,
    /// Decode steps (one per generated token here: the simulator does not batch).
    pub n_decode: u64,
    /// Busy slots summed over decode steps.
    pub n_busy_slots: u64,
}

impl LlamaMetrics {
    /// A prompt was processed: `n` tokens in `t_us`, `cached` more reused.
    pub(crate) fn add_prompt(&mut self, n: u64, cached: u64, t_us: u64) {
        self.prompt.add(n, n, t_us);
        self.prompt_bucket.add(n, n, t_us);
        self.n_prompt_cached += cached;
    }

    /// A slot was released after generating `n` tokens in `t_us` (from the first one).
    pub(crate) fn add_prediction(&mut self, n: u64, t_us: u64, seq_len: u64) {
        let steps = n.saturating_sub(1);
        self.predict.add(n, steps, t_us);
        self.predict_bucket.add(n, steps, t_us);
        self.n_tokens_max = self.n_tokens_max.max(seq_len);
    }

    /// One decode step with `busy` slots generating.
    pub(crate) fn add_decode(&mut self, busy: u64) {
        self.n_decode += 1;
        self.n_busy_slots += busy;
    }

    /// Starts a new scrape window (the gauges average over it).
    pub(crate) fn reset_buckets(&mut self) {
        self.prompt_bucket = Bucket::default();
        self.predict_bucket = Bucket::default();
    }
}

/// All counters of one simulator.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub started: AtomicU64,
    pub completed: AtomicU64,
    pub aborted: AtomicU64,
    pub last_body_len: AtomicU64,
    pub last_body_hash: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub prefix_queries: AtomicU64,
    pub prefix_hits: AtomicU64,
    /// stop, length, abort, error (vLLM's finished_reason; "repetition" stays 0).
    pub finished: [AtomicU64; 4],
    pub ttft: Mutex<Histogram>,
    /// llama-server's metrics (kind llamacpp only).
    pub llama: Mutex<LlamaMetrics>,
}

impl Counters {
    /// Records a generation request's body.
    pub(crate) fn record_body(&self, body: &[u8]) {
        self.requests.fetch_add(1, Relaxed);
        self.last_body_len.store(body.len() as u64, Relaxed);
        self.last_body_hash
            .store(super::tokens::hash_bytes(body), Relaxed);
    }

    /// Records a prompt entering prefill, `cached` of its tokens found in the prefix cache
    /// (vLLM counts queries and hits in tokens).
    pub(crate) fn record_prompt(&self, tokens: u32, cached: u32) {
        let t = u64::from(tokens);
        self.prompt_tokens.fetch_add(t, Relaxed);
        self.prefix_queries.fetch_add(t, Relaxed);
        self.prefix_hits.fetch_add(u64::from(cached), Relaxed);
    }

    /// Records time to first token.
    pub(crate) fn record_ttft(&self, secs: f64) {
        self.ttft.lock().observe(TTFT_BUCKETS, secs);
    }

    /// Records the end of a generation.
    pub(crate) fn record_finish(&self, f: Finish) {
        let i = match f {
            Finish::Stop => 0,
            Finish::Length => 1,
            Finish::Abort => 2,
            Finish::Error => 3,
        };
        self.finished[i].fetch_add(1, Relaxed);
        match f {
            Finish::Abort => self.aborted.fetch_add(1, Relaxed),
            _ => self.completed.fetch_add(1, Relaxed),
        };
    }
}

/// Running slots plus a FIFO queue of waiters; `max` can change at run time.
#[derive(Debug)]
pub(crate) struct Scheduler {
    inner: Mutex<SchedInner>,
    /// Woken each time a slot is given back (a generation ended).
    freed: tokio::sync::Notify,
}

#[derive(Debug)]
struct SchedInner {
    running: usize,
    max: usize,
    next_id: u64,
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// Why a request was not queued.
#[derive(Debug)]
pub(crate) struct QueueFull;

impl Scheduler {
    /// A scheduler with `max` slots.
    pub(crate) fn new(max: usize) -> Self {
        Scheduler {
            inner: Mutex::new(SchedInner {
                running: 0,
                max: max.max(1),
                next_id: 0,
                queue: VecDeque::new(),
            }),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// Whether every slot is taken now.
    pub(crate) fn all_busy(&self) -> bool {
        let g = self.inner.lock();
        g.running >= g.max
    }

    /// Returns at once unless every slot is taken; then waits until a generation ends (a slot
    /// is given back, even if a queued request takes it at once).
    pub(crate) async fn wait_unless_all_busy(&self) {
        let freed = self.freed.notified();
        if !self.all_busy() {
            return;
        }
        freed.await;
    }

    /// (running, waiting) now.
    pub(crate) fn load(&self) -> (usize, usize) {
        let g = self.inner.lock();
        (g.running, g.queue.len())
    }

    /// Current slot count.
    pub(crate) fn max(&self) -> usize {
        self.inner.lock().max
    }

    /// Changes the slot count; waiters start at once if slots opened.
    pub(crate) fn set_max(&self, max: usize) {
        let mut g = self.inner.lock();
        g.max = max.max(1);
        Self::grant(&mut g);
    }

    /// Takes a slot now or joins the queue; fails only if the queue already holds `max_queue`.
    pub(crate) fn enqueue(self: &Arc<Self>, max_queue: Option<usize>) -> Result<Ticket, QueueFull> {
        let mut g = self.inner.lock();
        if g.running < g.max && g.queue.is_empty() {
            g.running += 1;
            return Ok(Ticket {
                sched: self.clone(),
                state: TicketState::Granted,
            });
        }
        if max_queue.is_some_and(|m| g.queue.len() >= m) {
            return Err(QueueFull);
        }
        let id = g.next_id;
        g.next_id += 1;
        let (tx, rx) = oneshot::channel();
        g.queue.push_back((id, tx));
        Ok(Ticket {
            sched: self.clone(),
            state: TicketState::Queued(id, rx),
        })
    }

    /// Hands free slots to the head of the queue (called with the lock held).
    fn grant(g: &mut SchedInner) {
        while g.running < g.max {
            let Some((_, tx)) = g.queue.pop_front() else {
                break;
            };
            // The slot belongs to the ticket from now on, even if its receiver is gone:
            // the ticket's Drop (which takes this lock) sees it is no longer queued and frees it.
            g.running += 1;
            let _ = tx.send(());
        }
    }

    fn release(&self) {
        {
            let mut g = self.inner.lock();
            g.running = g.running.saturating_sub(1);
            Self::grant(&mut g);
        }
        self.freed.notify_waiters();
    }
}

#[derive(Debug)]
enum TicketState {
    Queued(u64, oneshot::Receiver<()>),
    Granted,
    Released,
}

/// A place in the scheduler: queued or holding a slot. Dropping it leaves the queue or frees the slot.
#[derive(Debug)]
pub(crate) struct Ticket {
    sched: Arc<Scheduler>,
    state: TicketState,
}

impl Ticket {
    /// Waits for a slot (cancel-safe: dropping the future keeps the ticket consistent).
    pub(crate) async fn ready(&mut self) {
        if let TicketState::Queued(_, rx) = &mut self.state {
            // The sender is only dropped after sending (under the lock), so both outcomes mean "granted".
            let _ = rx.await;
            self.state = TicketState::Granted;
        }
    }

    /// Frees the slot early (the stream reached its end before the body was dropped).
    pub(crate) fn release(&mut self) {
        self.drop_inner();
        self.state = TicketState::Released;
    }

    fn drop_inner(&mut self) {
        match &self.state {
            TicketState::Granted => self.sched.release(),
            TicketState::Queued(id, _) => {
                let id = *id;
                let mut g = self.sched.inner.lock();
                if let Some(pos) = g.queue.iter().position(|(i, _)| *i == id) {
                    g.queue.remove(pos);
                } else {
                    // Granted between the send and our wake-up: the slot is ours to free.
                    g.running = g.running.saturating_sub(1);
                    Scheduler::grant(&mut g);
                    drop(g);
                    self.sched.freed.notify_waiters();
                }
            }
            TicketState::Released => {}
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.drop_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fifo_and_abort_frees_slot() {
        let s = Arc::new(Scheduler::new(1));
        let a = s.enqueue(None).expect("slot");
        let mut b = s.enqueue(None).expect("queued");
        let c = s.enqueue(None).expect("queued");
        assert_eq!(s.load(), (1, 2));
        assert!(s.enqueue(Some(2)).is_err());
        drop(c); // queued abort
        assert_eq!(s.load(), (1, 1));
        drop(a);
        assert_eq!(s.load(), (1, 0));
        b.ready().await;
        drop(b);
        assert_eq!(s.load(), (0, 0));
    }

    #[tokio::test]
    async fn granted_but_unawaited_ticket_frees_on_drop() {
        let s = Arc::new(Scheduler::new(1));
        let a = s.enqueue(None).expect("slot");
        let b = s.enqueue(None).expect("queued");
        drop(a);
        assert_eq!(s.load(), (1, 0));
        drop(b);
        assert_eq!(s.load(), (0, 0));
    }
}
