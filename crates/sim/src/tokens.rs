//! Deterministic token text and the absolute-deadline token schedule.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use tokio::time::Instant;

/// Token texts; the first token of a reply drops its leading space.
const WORDS: &[&str] = &[
    " Hello",
    " world",
    ",",
    " the",
    " model",
    " is",
    " running",
    " on",
    " a",
    " simulated",
    " GPU",
    ".",
    " It",
    " streams",
    " tokens",
    " one",
    " at",
    " time",
    " and",
    " never",
    " waits",
    " for",
    " anything",
    " but",
    " its",
    " own",
    " clock",
    "!",
    " How",
    " can",
    " I",
    " help",
    " you",
    " today",
    "?",
    " Sure",
    " here",
    " answer",
    ":",
    " data",
    " flows",
    " through",
    " edge",
];

/// SplitMix64: a tiny, well-mixed hash used for every deterministic choice.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of some bytes (prompt text, request body) with std's `DefaultHasher`.
pub(crate) fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// Text of token `i` of a reply seeded by `seed`.
pub(crate) fn token_text(seed: u64, i: u32) -> &'static str {
    if i == 0 {
        return "Hello";
    }
    WORDS[(mix(seed ^ u64::from(i)) % WORDS.len() as u64) as usize]
}

/// Token id of token `i` (for Ollama's `context`).
pub(crate) fn token_id(seed: u64, i: u32) -> u32 {
    (mix(seed ^ u64::from(i)) % 128_000) as u32
}

/// Prompt tokens estimated as bytes / 4 (at least 1), like a BPE tokenizer on English text.
pub(crate) fn estimate_tokens(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX).max(1)
}

/// `n` lower-case hex digits derived from `seed` (ids like `chatcmpl-<16hex>`).
pub(crate) fn hex_id(seed: u64) -> String {
    format!("{:016x}", mix(seed))
}

/// When each token of one sequence is due; deadlines are absolute so gaps neither drift nor bunch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// Prefill start (the slot was granted).
    pub start: Instant,
    /// Prefill length: time to the first token.
    pub prefill: Duration,
    /// Nominal inter-token interval.
    pub interval: Duration,
    /// Jitter as a fraction of `interval`.
    pub jitter: f64,
    /// Seed of the jitter sequence.
    pub seed: u64,
}

impl Schedule {
    /// Prefill for a prompt of `prompt_tokens` tokens.
    pub(crate) fn prefill_for(base: Duration, per_1k: Duration, prompt_tokens: u32) -> Duration {
        base + per_1k.mul_f64(f64::from(prompt_tokens) / 1000.0)
    }

    /// Deadline of token `i`: start + prefill + i*interval + jitter_i, where jitter_i lies in
    /// [-jitter/2, +jitter/2) intervals (never negative for token 0), so deadlines stay ordered.
    pub(crate) fn deadline(&self, i: u32) -> Instant {
        let base = self.start + self.prefill + self.interval * i;
        if self.jitter <= 0.0 {
            return base;
        }
        let u = (mix(self.seed.rotate_left(17) ^ u64::from(i)) >> 11) as f64 / (1u64 << 53) as f64;
        let off = self.jitter * (u - if i == 0 { 0.0 } else { 0.5 });
        if off >= 0.0 {
            base + self.interval.mul_f64(off)
        } else {
            base - self.interval.mul_f64(-off)
        }
    }
}

/// Inter-token interval for a decode speed in tokens per second.
pub(crate) fn interval_for(tps: f64) -> Duration {
    Duration::from_secs_f64(1.0 / tps.max(1e-3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_deterministic() {
        let a: Vec<_> = (0..10).map(|i| token_text(42, i)).collect();
        let b: Vec<_> = (0..10).map(|i| token_text(42, i)).collect();
        assert_eq!(a, b);
        assert_eq!(a[0], "Hello");
    }

    #[test]
    fn deadlines_are_absolute_and_ordered() {
        let s = Schedule {
            start: Instant::now(),
            prefill: Duration::from_millis(30),
            interval: Duration::from_millis(20),
            jitter: 0.9,
            seed: 7,
        };
        let mut prev = s.start;
        for i in 0..1000 {
            let d = s.deadline(i);
            assert!(d > prev, "token {i} not after the previous one");
            prev = d;
        }
        let far = s.deadline(1000) - s.start;
        let nominal = Duration::from_millis(30 + 20 * 1000);
        assert!(
            far.abs_diff(nominal) <= Duration::from_millis(10),
            "drift {far:?}"
        );
        assert_eq!(
            Schedule { jitter: 0.0, ..s }.deadline(3) - s.start,
            Duration::from_millis(90)
        );
    }

    #[test]
    fn token_estimate() {
        assert_eq!(estimate_tokens(0), 1);
        assert_eq!(estimate_tokens(9), 3);
        assert_eq!(hex_id(1).len(), 16);
    }
}
