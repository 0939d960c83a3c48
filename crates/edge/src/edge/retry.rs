//! The retry decision, in one place: every proxy hook that sees a failure describes it as a
//! [`Failure`] and asks [`decide`], a pure function of the attempt state. A per-pool
//! [`RetryBudget`] keeps retries to a fraction of requests, so a brown-out is not multiplied by
//! the retry count.
//!
//! Retrying is safe, POST included, while no response byte has reached the client: the engine
//! produced nothing the client saw, so another engine can start over.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The backend could not be reached (refused, timed out, no route).
    Connect,
    /// The connection broke or timed out before the response started (reset, EOF, read timeout).
    Upstream,
    /// The engine answered with this status (502 and 503 are retried).
    Status(u16),
    /// The client went away or sent garbage: nothing to retry for.
    Downstream,
}

impl Failure {
    /// Label of `okome_upstream_retries_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Upstream => "upstream_error",
            Failure::Status(502) => "status_502",
            Failure::Status(503) => "status_503",
            Failure::Status(_) => "status_other",
            Failure::Downstream => "downstream",
        }
    }
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// Attempts made so far, the failed one included.
    pub made: u32,
    /// The attempt cap (`retry.max_attempts`): the only one, Pingora's own is set above it.
    pub max_attempts: u32,
    /// Whether a response byte already reached the client.
    pub response_started: bool,
    /// Whether some backend of the plan (this pool or a fallback) could take another attempt.
    pub alternative: bool,
    /// Whether the pool's retry budget has a retry left.
    pub budget: bool,
}

/// Why a failed request is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The client already has bytes: the stream ends with its terminal error event instead.
    ResponseStarted,
    /// The client left, or the failure is not one another engine could fix.
    NotRetryable,
    /// `retry.max_attempts` reached.
    AttemptsExhausted,
    /// No backend left to try.
    NoAlternative,
    /// The pool's retry budget is spent (too many retries lately).
    BudgetExhausted,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try the next backend.
    Retry,
    /// Fail the request.
    Stop(Stop),
}

/// Decides whether a failed attempt is retried. Pure: the caller supplies the state.
pub fn decide(failure: Failure, a: Attempt) -> Decision {
    let retryable = match failure {
        Failure::Connect | Failure::Upstream => true,
        Failure::Status(s) => matches!(s, 502 | 503),
        Failure::Downstream => false,
    };
    let stop = if a.response_started {
        Stop::ResponseStarted
    } else if !retryable {
        Stop::NotRetryable
    } else if a.made >= a.max_attempts {
        Stop::AttemptsExhausted
    } else if !a.alternative {
        Stop::NoAlternative
    } else if !a.budget {
        Stop::BudgetExhausted
    } else {
        return Decision::Retry;
    };
    Decision::Stop(stop)
}

/// Retries allowed per pool: each request earns `ratio` of a retry, up to `reserve` retries
/// banked; each retry spends one. So over time retries stay under `ratio` × requests, while a
/// quiet pool still has `reserve` retries for a sudden failure. Lock-free.
#[derive(Debug)]
pub struct RetryBudget {
    /// Banked retries in thousandths.
    milli: AtomicU64,
    earn_milli: u64,
    cap_milli: u64,
}

impl RetryBudget {
    /// A full budget: `ratio` (0..=1) of a retry earned per request, `reserve` retries banked at most.
    pub fn new(ratio: f64, reserve: u32) -> Self {
        let cap_milli = u64::from(reserve) * 1000;
        RetryBudget {
            milli: AtomicU64::new(cap_milli),
            earn_milli: (ratio.clamp(0.0, 1.0) * 1000.0).round() as u64,
            cap_milli,
        }
    }

    /// A request (first attempt) reached the pool.
    pub fn earn(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some((m + self.earn_milli).min(self.cap_milli))
            });
    }

    /// Whether a retry is available (without spending it).
    pub fn available(&self) -> bool {
        self.milli.load(Ordering::Relaxed) >= 1000
    }

    /// Spends one retry; false when none is left.
    pub fn spend(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                m.checked_sub(1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Attempt = Attempt {
        made: 1,
        max_attempts: 3,
        response_started: false,
        alternative: true,
        budget: true,
    };

    #[test]
    fn retries_before_the_first_byte_when_everything_allows_it() {
        for f in [
            Failure::Connect,
            Failure::Upstream,
            Failure::Status(502),
            Failure::Status(503),
        ] {
            assert_eq!(decide(f, OK), Decision::Retry, "{f:?}");
        }
    }

    #[test]
    fn every_reason_to_stop() {
        let stop = |f, a| match decide(f, a) {
            Decision::Stop(s) => Some(s),
            Decision::Retry => None,
        };
        let started = Attempt {
            response_started: true,
            ..OK
        };
        assert_eq!(
            stop(Failure::Upstream, started),
            Some(Stop::ResponseStarted)
        );
        assert_eq!(stop(Failure::Downstream, OK), Some(Stop::NotRetryable));
        assert_eq!(stop(Failure::Status(500), OK), Some(Stop::NotRetryable));
        assert_eq!(stop(Failure::Status(429), OK), Some(Stop::NotRetryable));
        let last = Attempt { made: 3, ..OK };
        assert_eq!(stop(Failure::Connect, last), Some(Stop::AttemptsExhausted));
        let alone = Attempt {
            alternative: false,
            ..OK
        };
        assert_eq!(stop(Failure::Connect, alone), Some(Stop::NoAlternative));
        let broke = Attempt {
            budget: false,
            ..OK
        };
        assert_eq!(
            stop(Failure::Status(503), broke),
            Some(Stop::BudgetExhausted)
        );
        // One attempt means no retry at all.
        let single = Attempt {
            max_attempts: 1,
            ..OK
        };
        assert_eq!(
            stop(Failure::Connect, single),
            Some(Stop::AttemptsExhausted)
        );
    }

    #[test]
    fn reasons_label_the_metric() {
        assert_eq!(Failure::Connect.reason(), "connect");
        assert_eq!(Failure::Upstream.reason(), "upstream_error");
        assert_eq!(Failure::Status(502).reason(), "status_502");
        assert_eq!(Failure::Status(503).reason(), "status_503");
    }

    #[test]
    fn the_budget_keeps_retries_to_a_fraction_of_requests() {
        let b = RetryBudget::new(0.2, 2);
        // The reserve first…
        assert!(b.spend() && b.spend());
        assert!(!b.available() && !b.spend());
        // …then one retry per five requests.
        for _ in 0..4 {
            b.earn();
        }
        assert!(!b.spend());
        b.earn();
        assert!(b.spend());
        // Never more than the reserve banked.
        for _ in 0..1000 {
            b.earn();
        }
        assert!(b.spend() && b.spend() && !b.spend());
    }
}
