//! Per-stream timing: TTFT, inter-token gaps and their spread, kept in O(1) memory.

use super::Event;
use std::time::{Duration, Instant};

/// What one stream looked like to the client.
#[derive(Debug)]
pub struct StreamStats {
    start: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// Token events seen (one content delta or NDJSON line each).
    pub token_events: u64,
    /// The engine's own count, when it sent one.
    pub usage_completion_tokens: Option<u64>,
    /// An error object appeared in the stream.
    pub error: bool,
    /// The stream reached its normal end marker.
    pub done: bool,
    // Welford's running mean/variance of gaps, in seconds.
    gaps: u64,
    mean: f64,
    m2: f64,
    max_gap: Duration,
}

impl StreamStats {
    /// Stats for a request accepted at `start`.
    pub fn new(start: Instant) -> Self {
        StreamStats {
            start,
            first_token: None,
            last_token: None,
            token_events: 0,
            usage_completion_tokens: None,
            error: false,
            done: false,
            gaps: 0,
            mean: 0.0,
            m2: 0.0,
            max_gap: Duration::ZERO,
        }
    }

    /// Records one classified line relayed at `now`.
    pub fn record(&mut self, ev: Event, now: Instant, on_gap: &mut impl FnMut(Duration)) {
        match ev {
            Event::Other => {}
            Event::Token => self.token(now, on_gap),
            Event::Usage { completion_tokens } => {
                self.usage_completion_tokens = Some(completion_tokens)
            }
            Event::TokenAndUsage { completion_tokens } => {
                self.token(now, on_gap);
                self.usage_completion_tokens = Some(completion_tokens);
            }
            Event::Error => self.error = true,
            Event::Done { completion_tokens } => {
                self.done = true;
                if completion_tokens.is_some() {
                    self.usage_completion_tokens = completion_tokens;
                }
            }
        }
    }

    fn token(&mut self, now: Instant, on_gap: &mut impl FnMut(Duration)) {
        self.token_events += 1;
        match self.last_token {
            None => self.first_token = Some(now),
            Some(prev) => {
                let gap = now.saturating_duration_since(prev);
                on_gap(gap);
                self.max_gap = self.max_gap.max(gap);
                self.gaps += 1;
                let x = gap.as_secs_f64();
                let d = x - self.mean;
                self.mean += d / self.gaps as f64;
                self.m2 += d * (x - self.mean);
            }
        }
        self.last_token = Some(now);
    }

    /// Request accepted → first token relayed.
    pub fn ttft(&self) -> Option<Duration> {
        self.first_token
            .map(|t| t.saturating_duration_since(self.start))
    }

    /// Standard deviation of the gaps (needs two gaps).
    pub fn jitter(&self) -> Option<Duration> {
        (self.gaps >= 2)
            .then(|| Duration::from_secs_f64((self.m2 / self.gaps as f64).max(0.0).sqrt()))
    }

    /// Mean gap between tokens.
    pub fn mean_gap(&self) -> Option<Duration> {
        (self.gaps >= 1).then(|| Duration::from_secs_f64(self.mean))
    }

    /// Longest gap between tokens.
    pub fn max_gap(&self) -> Duration {
        self.max_gap
    }

    /// Tokens generated: the engine's count when given, else the token events seen.
    pub fn tokens(&self) -> u64 {
        self.usage_completion_tokens.unwrap_or(self.token_events)
    }

    /// Whether any token reached the client.
    pub fn started(&self) -> bool {
        self.first_token.is_some()
    }
}
