//! The stream tap: a side observer of the response bytes relayed to the client.
//!
//! It never changes the bytes. It frames SSE events and NDJSON lines across TCP chunk
//! boundaries ([`framing`]), classifies each one ([`classify`]: token, usage, error, done) and
//! keeps per-stream timing ([`stats`]: TTFT, every inter-token gap, jitter).

pub mod classify;
pub mod framing;
pub mod payload;
pub mod stats;

pub use classify::{Event, Format, LineState};
pub use stats::StreamStats;

use framing::LineFramer;
use std::time::{Duration, Instant};

/// Observes one response stream, chunk by chunk.
#[derive(Debug)]
pub struct StreamTap {
    format: Format,
    framer: LineFramer,
    lines: LineState,
    /// The last complete line was blank (or none came yet) and no line is half-read: the
    /// stream stands between two events.
    between: bool,
    /// Timing and counts of what went by.
    pub stats: StreamStats,
}

impl StreamTap {
    /// A tap for a response in `format`, for a request accepted at `start`.
    pub fn new(format: Format, start: Instant) -> Self {
        StreamTap {
            format,
            framer: LineFramer::default(),
            lines: LineState::default(),
            between: true,
            stats: StreamStats::new(start),
        }
    }

    /// The response framing this tap parses.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Feeds one chunk as it is relayed at `now`; `on_gap` gets every inter-token gap.
    /// Work is O(chunk): only a partial line is carried over.
    pub fn feed(&mut self, chunk: &[u8], now: Instant, on_gap: &mut impl FnMut(Duration)) {
        if self.format == Format::Opaque {
            return;
        }
        let format = self.format;
        let stats = &mut self.stats;
        let lines = &mut self.lines;
        let between = &mut self.between;
        self.framer.feed(chunk, |line| {
            *between = line.is_empty();
            let ev = classify::classify(format, lines, line);
            stats.record(ev, now, on_gap);
        });
    }

    /// Whether the bytes so far end between two events (after a blank line, nothing of the
    /// next line read): where a comment can be written without entering an event.
    pub fn between_events(&self) -> bool {
        self.between && self.framer.is_empty()
    }

    /// Whether this is an OpenAI Responses API stream (named `response.*` events).
    pub fn is_responses(&self) -> bool {
        self.lines.responses_events > 0
    }

    /// A stream that ended without its end marker where the API promises one: a Responses
    /// stream without `response.completed` was cut, even when the connection closed cleanly.
    pub fn cut_short(&self) -> bool {
        self.is_responses() && !self.stats.done
    }

    /// The event that ends this stream after an upstream failure, in its own framing: an
    /// `error` event on a Responses stream, else the API's terminal error.
    pub fn terminal_error(&self, message: &str) -> Option<bytes::Bytes> {
        if self.is_responses() {
            return Some(crate::api::Api::responses_stream_error(
                message,
                self.lines.responses_events,
            ));
        }
        crate::api::Api::stream_error(self.format, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"prompt_token_ids\":null}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null,\"token_ids\":null}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"},\"logprobs\":null,\"finish_reason\":null,\"token_ids\":null}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" How\"},\"logprobs\":null,\"finish_reason\":\"length\",\"stop_reason\":null,\"token_ids\":null}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"total_tokens\":12,\"completion_tokens\":3}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn sse_tokens_usage_and_done_survive_any_chunking() {
        // Split the stream at every possible pair of boundaries' worth of sizes.
        for size in [1usize, 2, 3, 7, 13, 64, 1000, VLLM.len()] {
            let start = Instant::now();
            let mut tap = StreamTap::new(Format::Sse, start);
            let mut gaps = 0;
            for (i, c) in VLLM.chunks(size).enumerate() {
                tap.feed(c, start + Duration::from_millis(i as u64), &mut |_| {
                    gaps += 1
                });
            }
            assert_eq!(tap.stats.token_events, 3, "chunk size {size}");
            assert_eq!(tap.stats.usage_completion_tokens, Some(3));
            assert!(tap.stats.done);
            assert!(!tap.stats.error);
            assert_eq!(gaps, 2);
        }
    }

    #[test]
    fn ndjson_lines_and_final_counts() {
        let body = b"{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T19:22:45.499127Z\",\"response\":\"The\",\"done\":false}\n\
{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T19:22:45.499127Z\",\"response\":\" sky\",\"done\":false}\n\
{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T19:22:45.499127Z\",\"response\":\"\",\"done\":true,\"done_reason\":\"stop\",\"total_duration\":1,\"load_duration\":1,\"prompt_eval_count\":26,\"prompt_eval_duration\":1,\"eval_count\":2,\"eval_duration\":1}\n";
        let start = Instant::now();
        let mut tap = StreamTap::new(Format::Ndjson, start);
        for c in body.chunks(5) {
            tap.feed(c, start, &mut |_| {});
        }
        assert_eq!(tap.stats.token_events, 2);
        assert_eq!(tap.stats.usage_completion_tokens, Some(2));
        assert!(tap.stats.done);
    }

    #[test]
    fn in_stream_errors_are_seen() {
        let start = Instant::now();
        let mut tap = StreamTap::new(Format::Sse, start);
        tap.feed(b"data: {\"error\": {\"message\": \"boom\", \"type\": \"BadRequestError\", \"param\": null, \"code\": 400}}\n\ndata: [DONE]\n\n", start, &mut |_| {});
        assert!(tap.stats.error);
        let mut tap = StreamTap::new(Format::Ndjson, start);
        tap.feed(
            b"{\"error\":\"an error was encountered while running the model\"}\n",
            start,
            &mut |_| {},
        );
        assert!(tap.stats.error);
    }

    #[test]
    fn gaps_are_measured_between_token_arrivals() {
        let start = Instant::now();
        let mut tap = StreamTap::new(Format::Ndjson, start);
        let mut gaps = Vec::new();
        for i in 0..4u64 {
            let line =
                b"{\"model\":\"m\",\"created_at\":\"x\",\"response\":\"a\",\"done\":false}\n";
            tap.feed(
                line,
                start + Duration::from_millis(100 + 50 * i),
                &mut |g| gaps.push(g),
            );
        }
        assert_eq!(tap.stats.ttft(), Some(Duration::from_millis(100)));
        assert_eq!(gaps, vec![Duration::from_millis(50); 3]);
        assert_eq!(tap.stats.jitter(), Some(Duration::ZERO));
    }
}
