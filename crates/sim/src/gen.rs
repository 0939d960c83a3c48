//! One generation: queue slot, prefill, paced tokens, faults and abort accounting.
//!
//! A streamed generation *is* its response body: when hyper drops the body (client gone, in
//! any phase), the generation's future and its guard drop with it, which frees the slot at
//! once and counts the abort.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::time::Instant;

use super::faults::StreamFault;
use super::server::{Body, Shared};
use super::stats::{Finish, QueueFull, Ticket};
use super::tokens::{self, Schedule};

/// What the request asks the engine to generate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GenRequest {
    /// Estimated prompt tokens.
    pub prompt_tokens: u32,
    /// Hash of the prompt text (seeds the token text).
    pub prompt_hash: u64,
    /// Index of the first token generated in the reply seeded by `prompt_hash`: 0, or where a
    /// continued partial answer ended ([`crate::continuation`]).
    pub text_offset: u32,
    /// Leading prompt tokens found in the engine's prefix cache (their prefill is skipped).
    pub cached_tokens: u32,
    /// Tokens to generate (at least 1).
    pub max_tokens: u32,
    /// `Length` when the request set a limit, `Stop` when the default applies (an "EOS").
    pub finish: Finish,
}

impl GenRequest {
    /// Builds a request from the prompt text and an optional client limit.
    pub(crate) fn new(prompt: &[u8], limit: Option<u32>, default_max: u32) -> Self {
        GenRequest {
            prompt_tokens: tokens::estimate_tokens(prompt.len()),
            prompt_hash: tokens::hash_bytes(prompt),
            text_offset: 0,
            cached_tokens: 0,
            max_tokens: limit.unwrap_or(default_max).max(1),
            finish: if limit.is_some() {
                Finish::Length
            } else {
                Finish::Stop
            },
        }
    }
}

/// Numbers the final frames report (usage, Ollama's durations).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish: Finish,
    /// Accepted → end.
    pub total: Duration,
    /// Accepted → slot granted (Ollama reports it as load time).
    pub load: Duration,
    /// Prefill.
    pub prompt_eval: Duration,
    /// First token → end.
    pub eval: Duration,
}

/// Runs once when a generation gives its slot back (its end, or a drop), before the slot goes
/// to the next request (llama-server's slot bookkeeping).
pub(crate) struct ReleaseHook(pub Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for ReleaseHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReleaseHook")
    }
}

/// A generation in flight; dropping it before `finish` counts an abort.
#[derive(Debug)]
pub(crate) struct Gen {
    sim: Arc<Shared>,
    ticket: Ticket,
    pub req: GenRequest,
    pub fault: StreamFault,
    accepted: Instant,
    sched: Option<Schedule>,
    done: bool,
    /// Tokens generated so far.
    generated: u32,
    /// Whether llama-server's metrics are kept (kind llamacpp).
    llama: bool,
    /// Runs when the slot is given back.
    pub on_release: Option<ReleaseHook>,
}

impl Gen {
    /// Admits a generation (slot or queue); `Err` when the queue is full.
    pub(crate) fn admit(sim: &Arc<Shared>, req: GenRequest) -> Result<Gen, QueueFull> {
        let ticket = sim.sched.enqueue(sim.cfg.max_queue)?;
        sim.counters.started.fetch_add(1, Relaxed);
        Ok(Gen {
            fault: sim.faults.read().stream_fault(),
            sim: sim.clone(),
            ticket,
            req,
            accepted: Instant::now(),
            sched: None,
            done: false,
            generated: 0,
            llama: sim.cfg.kind == crate::config::SimKind::Llamacpp,
            on_release: None,
        })
    }

    /// Waits for a slot without starting prefill (the request's cached tokens may still change).
    pub(crate) async fn wait_slot(&mut self) {
        self.ticket.ready().await;
    }

    /// Waits for a slot and starts prefill; later calls return at once.
    pub(crate) async fn begin(&mut self) {
        if self.sched.is_some() {
            return;
        }
        self.ticket.ready().await;
        let cfg = &self.sim.cfg;
        self.sched = Some(Schedule {
            start: Instant::now(),
            prefill: Schedule::prefill_for(
                cfg.prefill,
                cfg.prefill_per_1k_tokens,
                self.req
                    .prompt_tokens
                    .saturating_sub(self.req.cached_tokens),
            ),
            interval: tokens::interval_for(self.sim.tps()),
            jitter: cfg.jitter,
            seed: self.req.prompt_hash,
        });
        self.sim
            .counters
            .record_prompt(self.req.prompt_tokens, self.req.cached_tokens);
    }

    pub(crate) fn deadline(&self, i: u32) -> Instant {
        self.sched
            .map(|s| s.deadline(i))
            .unwrap_or_else(Instant::now)
    }

    /// Sleeps until token `i` is due and returns its text.
    pub(crate) async fn token(&mut self, i: u32) -> &'static str {
        tokio::time::sleep_until(self.deadline(i)).await;
        if i == 0 {
            self.sim
                .counters
                .record_ttft(self.accepted.elapsed().as_secs_f64());
            self.llama_prompt_done();
        }
        self.sim.counters.generation_tokens.fetch_add(1, Relaxed);
        self.generated = i + 1;
        if self.llama {
            let busy = self.sim.sched.load().0 as u64;
            self.sim.counters.llama.lock().add_decode(busy);
        }
        tokens::token_text(self.req.prompt_hash, self.req.text_offset + i)
    }

    /// Sleeps until token `n-1` is due (non-streaming: the whole reply at once) and returns the text.
    pub(crate) async fn tokens_until(&mut self, n: u32) -> String {
        let mut s = String::new();
        if n == 0 {
            return s;
        }
        tokio::time::sleep_until(self.deadline(n - 1)).await;
        self.sim
            .counters
            .record_ttft((self.deadline(0) - self.accepted).as_secs_f64());
        self.sim
            .counters
            .generation_tokens
            .fetch_add(u64::from(n), Relaxed);
        self.llama_prompt_done();
        self.generated = n;
        if self.llama {
            let busy = self.sim.sched.load().0 as u64;
            let mut m = self.sim.counters.llama.lock();
            for _ in 0..n {
                m.add_decode(busy);
            }
        }
        for i in 0..n {
            s.push_str(tokens::token_text(
                self.req.prompt_hash,
                self.req.text_offset + i,
            ));
        }
        s
    }

    /// Marks the natural end, records it and frees the slot.
    pub(crate) fn finish(&mut self, f: Finish) {
        if !self.done {
            self.done = true;
            self.llama_released();
            self.sim.counters.record_finish(f);
            if let Some(h) = self.on_release.take() {
                (h.0)();
            }
            self.ticket.release();
        }
    }

    /// llama-server's metrics: the prompt was processed (its cached part skipped).
    fn llama_prompt_done(&self) {
        if let (true, Some(s)) = (self.llama, self.sched) {
            let cached = self.req.cached_tokens.min(self.req.prompt_tokens);
            let processed = self.req.prompt_tokens - cached;
            self.sim.counters.llama.lock().add_prompt(
                u64::from(processed),
                u64::from(cached),
                s.prefill.as_micros() as u64,
            );
        }
    }

    /// llama-server's metrics: the slot is released; its generation counts.
    fn llama_released(&self) {
        if let (true, Some(s)) = (self.llama, self.sched) {
            if self.generated == 0 {
                return;
            }
            let t_us = Instant::now()
                .saturating_duration_since(s.start + s.prefill)
                .as_micros()
                .max(1) as u64;
            let seq = u64::from(self.req.prompt_tokens) + u64::from(self.generated);
            self.sim
                .counters
                .llama
                .lock()
                .add_prediction(u64::from(self.generated), t_us, seq);
        }
    }

    /// Numbers for the final frames, `n` tokens generated.
    pub(crate) fn summary(&self, n: u32, finish: Finish) -> Summary {
        let now = Instant::now();
        let (start, prefill) = self
            .sched
            .map(|s| (s.start, s.prefill))
            .unwrap_or((now, Duration::ZERO));
        let first = start + prefill;
        Summary {
            prompt_tokens: self.req.prompt_tokens,
            completion_tokens: n,
            finish,
            total: now - self.accepted,
            load: start - self.accepted,
            prompt_eval: prefill,
            eval: now.saturating_duration_since(first),
        }
    }

    /// Seed of this request's text.
    pub(crate) fn seed(&self) -> u64 {
        self.req.prompt_hash
    }
}

impl Drop for Gen {
    fn drop(&mut self) {
        if !self.done {
            // Dropped before its end: the client went away (or the simulator shut down).
            self.done = true;
            self.llama_released();
            self.sim.counters.record_finish(Finish::Abort);
            if let Some(h) = self.on_release.take() {
                (h.0)();
            }
        }
    }
}

/// How one engine frames a token stream.
pub(crate) trait StreamFormat: Send + 'static {
    /// A frame sent right before the first token (vLLM's role chunk).
    fn preamble(&mut self) -> Option<Bytes> {
        None
    }
    /// Frame of token `i`; `finish` is set on the last token.
    fn token(&mut self, text: &str, i: u32, finish: Option<Finish>) -> Bytes;
    /// Trailing frame `k` after the last token (`None` = stream over).
    fn tail(&mut self, k: usize, s: &Summary) -> Option<Bytes>;
    /// In-stream error frame `k` (`None` = stream over).
    fn error(&mut self, k: usize) -> Option<Bytes>;
}

enum Phase {
    Start,
    Token(u32),
    Tail(usize, Summary),
    Error(usize),
    Done,
}

struct State<F> {
    gen: Gen,
    fmt: F,
    phase: Phase,
    pending: Option<Bytes>,
}

/// The streamed response body of `gen`, one frame per event.
pub(crate) fn stream_body<F: StreamFormat>(gen: Gen, fmt: F) -> Body {
    let st = State {
        gen,
        fmt,
        phase: Phase::Start,
        pending: None,
    };
    let s = futures::stream::unfold(st, |mut st| async move {
        let item = next_frame(&mut st).await?;
        Some((item, st))
    });
    StreamBody::new(s.map(|r| r.map(Frame::data))).boxed_unsync()
}

async fn next_frame<F: StreamFormat>(st: &mut State<F>) -> Option<io::Result<Bytes>> {
    if let Some(b) = st.pending.take() {
        return Some(Ok(b));
    }
    loop {
        match std::mem::replace(&mut st.phase, Phase::Done) {
            Phase::Start => {
                st.gen.begin().await;
                st.phase = Phase::Token(0);
            }
            Phase::Token(i) => {
                if st.gen.fault.after() == Some(i) {
                    match st.gen.fault {
                        StreamFault::ErrorAfter(_) => {
                            st.gen.finish(Finish::Error);
                            st.phase = Phase::Error(0);
                            continue;
                        }
                        StreamFault::DropAfter(_) => {
                            // Wait (Pending) until the token would be due, so hyper flushes the
                            // frames already written; then fail the body mid-stream.
                            tokio::time::sleep_until(st.gen.deadline(i)).await;
                            tokio::task::yield_now().await;
                            st.gen.finish(Finish::Error);
                            // A body error makes hyper close the socket without the last chunk.
                            return Some(Err(io::Error::other("sim: drop_after_tokens")));
                        }
                        StreamFault::StallAfter(_) => {
                            // Silent forever; a client hang-up drops us and counts an abort.
                            futures::future::pending::<()>().await;
                        }
                        StreamFault::EndAfter(_) => {
                            // As for a drop: the frames already written go out first.
                            tokio::time::sleep_until(st.gen.deadline(i)).await;
                            tokio::task::yield_now().await;
                            st.gen.finish(Finish::Error);
                            // The body's end: hyper sends the last chunk, a clean end.
                            return None;
                        }
                        StreamFault::None => {}
                    }
                }
                let text = st.gen.token(i).await;
                let n = st.gen.req.max_tokens;
                let last = i + 1 >= n;
                let finish = last.then_some(st.gen.req.finish);
                let frame = st.fmt.token(text, i, finish);
                if last {
                    let s = st.gen.summary(n, st.gen.req.finish);
                    st.gen.finish(st.gen.req.finish);
                    st.phase = Phase::Tail(0, s);
                } else {
                    st.phase = Phase::Token(i + 1);
                }
                if i == 0 {
                    if let Some(p) = st.fmt.preamble() {
                        st.pending = Some(frame);
                        return Some(Ok(p));
                    }
                }
                return Some(Ok(frame));
            }
            Phase::Tail(k, s) => {
                let f = st.fmt.tail(k, &s)?;
                st.phase = Phase::Tail(k + 1, s);
                return Some(Ok(f));
            }
            Phase::Error(k) => {
                let f = st.fmt.error(k)?;
                st.phase = Phase::Error(k + 1);
                return Some(Ok(f));
            }
            Phase::Done => return None,
        }
    }
}

/// Outcome of a non-streamed generation.
pub(crate) enum Whole {
    /// The full reply text and its numbers.
    Done(String, Summary),
    /// Injected error after some tokens: answer with the engine's 500.
    Error,
    /// Injected connection drop: the handler returns an error so hyper closes the socket.
    Drop,
}

/// Runs a generation to its end without streaming (the handler future holds it, so a client
/// hang-up drops it and counts an abort).
pub(crate) async fn run_whole(mut gen: Gen) -> Whole {
    gen.begin().await;
    let n = gen.req.max_tokens;
    if let Some(k) = gen.fault.after().filter(|k| *k < n) {
        let _ = gen.tokens_until(k).await;
        match gen.fault {
            StreamFault::StallAfter(_) => futures::future::pending::<()>().await,
            StreamFault::DropAfter(_) => {
                gen.finish(Finish::Error);
                return Whole::Drop;
            }
            _ => {
                gen.finish(Finish::Error);
                return Whole::Error;
            }
        }
    }
    let text = gen.tokens_until(n).await;
    let f = gen.req.finish;
    let s = gen.summary(n, f);
    gen.finish(f);
    Whole::Done(text, s)
}
