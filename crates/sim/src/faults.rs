//! Injected failures, switchable at run time.

use serde::{Deserialize, Serialize};

/// Failures the simulator injects into new requests (and, for `refuse_connections`, the listener).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Stop listening (ECONNREFUSED) while set; re-bind the same port when cleared.
    pub refuse_connections: bool,
    /// Answer every generation request with 500 in the engine's error shape.
    pub http_500: bool,
    /// Stream N tokens, then an in-stream error event, then end the stream.
    pub error_after_tokens: Option<u32>,
    /// Stream N tokens, then close the TCP connection without a terminating chunk.
    pub drop_after_tokens: Option<u32>,
    /// Stream N tokens, then keep the connection open sending nothing.
    pub stall_after_tokens: Option<u32>,
    /// Stream N tokens, then end the body cleanly without the stream's end marker (no
    /// `data: [DONE]`, no final `"done":true` line): an engine that lost the sequence.
    pub end_after_tokens: Option<u32>,
}

/// What a stream does after its first N tokens, picked once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamFault {
    /// Runs to its natural end.
    None,
    /// Sends an in-stream error after N tokens.
    ErrorAfter(u32),
    /// Drops the connection after N tokens.
    DropAfter(u32),
    /// Goes silent after N tokens.
    StallAfter(u32),
    /// Ends the body after N tokens, without the end marker.
    EndAfter(u32),
}

impl Faults {
    /// The mid-stream fault a new request gets (the earliest one wins when several are set).
    pub(crate) fn stream_fault(&self) -> StreamFault {
        let mut best = StreamFault::None;
        let mut at = u32::MAX;
        let cands = [
            self.error_after_tokens.map(StreamFault::ErrorAfter),
            self.drop_after_tokens.map(StreamFault::DropAfter),
            self.stall_after_tokens.map(StreamFault::StallAfter),
            self.end_after_tokens.map(StreamFault::EndAfter),
        ];
        for c in cands.into_iter().flatten() {
            let n = match c {
                StreamFault::ErrorAfter(n)
                | StreamFault::DropAfter(n)
                | StreamFault::StallAfter(n)
                | StreamFault::EndAfter(n) => n,
                StreamFault::None => continue,
            };
            if n < at {
                at = n;
                best = c;
            }
        }
        best
    }
}

impl StreamFault {
    /// Tokens emitted before the fault strikes (`None` = no fault).
    pub(crate) fn after(self) -> Option<u32> {
        match self {
            StreamFault::None => None,
            StreamFault::ErrorAfter(n)
            | StreamFault::DropAfter(n)
            | StreamFault::StallAfter(n)
            | StreamFault::EndAfter(n) => Some(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_fault_wins() {
        let f = Faults {
            error_after_tokens: Some(5),
            drop_after_tokens: Some(2),
            ..Faults::default()
        };
        assert_eq!(f.stream_fault(), StreamFault::DropAfter(2));
        assert_eq!(Faults::default().stream_fault(), StreamFault::None);
    }
}
