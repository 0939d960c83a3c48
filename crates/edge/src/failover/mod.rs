//! Mid-stream failover with continuation (opt-in per route, `mid_stream_failover: true`): when
//! the engine dies after the first byte, the request is re-issued to another backend of the pool
//! with the text generated so far, and the continuation is spliced into the same client stream.
//!
//! - [`eligible`]: which requests may be continued (no tools, structured output, `n > 1`,
//!   logprobs), decided from the body when the response starts;
//! - [`transcript`]: what the client got so far (text, identity, tokens, end marker);
//! - [`relay`]: the continuation request and the splice.

pub mod eligible;
pub mod relay;
pub mod transcript;

use crate::edge::{ctx::RequestCtx, Edge};
use bytes::Bytes;
use eligible::{Eligible, NotEligible};
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;
use std::time::Instant;
use transcript::{Seen, Transcript};

/// Why the engine's stream was judged dead (the metric's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The connection broke.
    Reset,
    /// The stream ended cleanly but without `data: [DONE]`.
    Eof,
    /// No bytes within the idle timeout.
    Idle,
    /// The engine sent an error event.
    InBandError,
}

impl Reason {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Reset => "reset",
            Reason::Eof => "eof",
            Reason::Idle => "idle",
            Reason::InBandError => "in_band_error",
        }
    }
}

/// Failover state of one stream on a route that turned it on.
#[derive(Debug)]
pub struct State {
    /// The request's body when it may be continued, else why not.
    pub decision: Result<Eligible, NotEligible>,
    /// What the client got so far.
    pub transcript: Transcript,
    /// Bytes of the failing chunk that precede the failure, not yet written to the client.
    pub pending: Option<Bytes>,
    /// When and why the stream was found dead in the body filter (a reset or timeout is found
    /// by Pingora: the time is then that of `fail_to_proxy`).
    pub died: Option<(Instant, Reason)>,
    /// The target (path and query) the request was sent to: the continuation goes there too.
    pub target: String,
}

impl State {
    /// State for a stream of the request to `path` (`target`: with the query) with `body`.
    pub fn new(path: &str, target: &str, body: Bytes) -> Self {
        State {
            decision: eligible::check(path, body),
            transcript: Transcript::default(),
            pending: None,
            died: None,
            target: target.to_owned(),
        }
    }

    /// `response_body_filter`: follows the stream; an in-band error or an end without
    /// `[DONE]` becomes an error (so Pingora calls `fail_to_proxy`), and the bytes from the
    /// failure on are held back.
    pub fn on_body(&mut self, body: &mut Option<Bytes>, end: bool) -> pingora_error::Result<()> {
        if self.decision.is_err() {
            return Ok(());
        }
        if let Some(chunk) = body.as_ref() {
            if let Seen::Error(at) = self.transcript.feed(chunk) {
                self.pending = Some(chunk.slice(..at));
                *body = None;
                return Err(self.dead(Reason::InBandError));
            }
        }
        if end && !self.transcript.done {
            self.pending = body.take();
            return Err(self.dead(Reason::Eof));
        }
        Ok(())
    }

    fn dead(&mut self, reason: Reason) -> Box<Error> {
        self.died = Some((Instant::now(), reason));
        Error::create(
            ErrorType::Custom("midstream_failover"),
            ErrorSource::Upstream,
            Some(format!("the engine's stream ended early ({})", reason.as_str()).into()),
            None,
        )
    }
}

/// Whether `fail_to_proxy` still has to end the stream with the terminal error event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The continuation finished the stream (`[DONE]` written) or the client is gone.
    Done,
    /// Not continued: the terminal error event is due.
    NeedsTerminalError,
}

/// `fail_to_proxy` after the first byte: continue the stream on another backend when the
/// request allows it (at most once per stream).
pub async fn on_fail(edge: &Edge, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> Ended {
    let Some(mut state) = ctx.failover.take() else {
        return Ended::NeedsTerminalError;
    };
    let (died_at, reason) = state.died.unwrap_or_else(|| {
        let r = if matches!(e.etype(), ErrorType::ReadTimedout) {
            Reason::Idle
        } else {
            Reason::Reset
        };
        (Instant::now(), r)
    });
    let route = ctx
        .req
        .route
        .map_or("none", |r| edge.routes.routes[r].name.as_str())
        .to_owned();
    let count = |outcome: &str| {
        edge.metrics
            .failover
            .with_label_values(&[route.as_str(), reason.as_str(), outcome])
            .inc();
    };
    // The bytes of the failing chunk before the failure are the client's, whatever comes next.
    let mut pending = state.pending.take().filter(|b| !b.is_empty());
    if pending.is_some() {
        crate::edge::response::tap_body(edge, &pending, ctx);
        crate::resume::stream::pass(&edge.streams, &mut pending, false, ctx);
        if session.write_response_body(pending, false).await.is_err() {
            count("failed");
            return Ended::Done;
        }
    }
    let t = &state.transcript;
    let seen = if t.tool_calls {
        Some(NotEligible::ToolCallSeen)
    } else if t.reasoning {
        Some(NotEligible::ReasoningSeen)
    } else {
        None
    };
    let decision = match (&state.decision, seen) {
        (Ok(e), None) => Ok(e),
        (Ok(_), Some(why)) => Err(why),
        (Err(why), _) => Err(*why),
    };
    let eligible = match decision {
        Ok(e) => e,
        Err(why) => {
            log::info!(
                "request {}: no mid-stream failover: {why}",
                ctx.req.request_id
            );
            count("not_eligible");
            return Ended::NeedsTerminalError;
        }
    };
    let job = relay::Continuation {
        eligible,
        transcript: &state.transcript,
        target: &state.target,
        died_at,
        route: &route,
    };
    let result = relay::continue_stream(edge, session, ctx, &job).await;
    ctx.stream.spliced = result.as_ref().ok().copied();
    match result {
        Ok(relay::Spliced::Finished) => {
            count("continued");
            Ended::Done
        }
        Ok(relay::Spliced::ClientGone) => {
            count("failed");
            Ended::Done
        }
        Err(err) => {
            log::warn!(
                "request {}: mid-stream failover ({}) failed: {err}",
                ctx.req.request_id,
                reason.as_str()
            );
            count("failed");
            Ended::NeedsTerminalError
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &[u8] = br#"{"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    const TOKEN: &[u8] =
        b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";

    #[test]
    fn an_end_without_done_or_an_error_event_fails_and_holds_the_bytes_back() {
        let mut s = State::new(
            "/v1/chat/completions",
            "/v1/chat/completions",
            Bytes::from_static(CHAT),
        );
        let mut body = Some(Bytes::from_static(TOKEN));
        assert!(s.on_body(&mut body, false).is_ok());
        assert_eq!(body.as_deref(), Some(TOKEN));
        let mut body = Some(Bytes::from_static(TOKEN));
        assert!(s.on_body(&mut body, true).is_err());
        assert_eq!((body, s.pending.as_deref()), (None, Some(TOKEN)));
        assert_eq!(s.died.map(|d| d.1), Some(Reason::Eof));

        let mut s = State::new(
            "/v1/chat/completions",
            "/v1/chat/completions",
            Bytes::from_static(CHAT),
        );
        let mut chunk = TOKEN.to_vec();
        chunk.extend_from_slice(b"data: {\"error\":{\"message\":\"boom\"}}\n\ndata: [DONE]\n\n");
        let mut body = Some(Bytes::from(chunk));
        assert!(s.on_body(&mut body, false).is_err());
        assert_eq!((body, s.pending.as_deref()), (None, Some(TOKEN)));
        assert_eq!(s.died.map(|d| d.1), Some(Reason::InBandError));
        assert_eq!(s.transcript.text, "Hi");
    }

    #[test]
    fn a_request_that_is_not_eligible_is_relayed_as_it_comes() {
        let tools = br#"{"stream":true,"messages":[],"tools":[{"type":"function"}]}"#;
        let mut s = State::new(
            "/v1/chat/completions",
            "/v1/chat/completions",
            Bytes::from_static(tools),
        );
        let mut body = Some(Bytes::from_static(TOKEN));
        assert!(s.on_body(&mut body, true).is_ok());
        assert_eq!(body.as_deref(), Some(TOKEN));
    }
}
