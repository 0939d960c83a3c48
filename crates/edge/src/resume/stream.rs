//! The stream's own request on a `resumable` route: it opens the record when the engine's
//! streaming answer starts, numbers and keeps every event as it passes, keeps reading the
//! engine when the client leaves, and ends the record with the request.

use super::events::{Framer, Framing};
use super::record::{Life, Record};
use super::{id::StreamId, Streams};
use crate::edge::ctx::RequestCtx;
use bytes::Bytes;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use std::sync::Arc;

/// The header a resumable stream's id is sent in (and a re-POST resumes by).
pub const STREAM_ID: http::HeaderName = crate::upstream::hash::STREAM_ID;

/// A resumable stream's state in its own request.
#[derive(Debug)]
pub struct Attached {
    /// The record every client reads.
    pub record: Arc<Record>,
    framer: Framer,
    /// The client left; the engine is read for nobody (until a resume attaches).
    pub detached: bool,
    /// The abort future was handed to Pingora.
    armed: bool,
    /// The stream's last bytes went into the record.
    sealed: bool,
}

/// `response_filter`: a streaming 200 on a resumable route gets a record and its id header;
/// past the node's budget the stream is served as before, without one.
#[allow(clippy::too_many_arguments)] // each is one thing the decision needs
pub fn start(
    streams: &Arc<Streams>,
    (policy, route): (super::Policy, &str),
    framing: Framing,
    resp: &mut ResponseHeader,
    local: Option<std::net::SocketAddr>,
    owner: super::record::Owner,
    ctx: &mut RequestCtx,
) {
    if ctx.resume.is_some() {
        return;
    }
    let Some(ct) = resp.headers.get(http::header::CONTENT_TYPE).cloned() else {
        return;
    };
    let make = || {
        let id = StreamId::new(local);
        Record::new(id, owner, framing, ct, policy, route.to_owned())
    };
    let opened = streams.open(make);
    let Some(record) = opened else {
        log::info!(
            "request {}: served as not resumable: the node's resumable budget is spent",
            ctx.req.request_id
        );
        return;
    };
    if let Ok(v) = http::HeaderValue::from_str(record.id.as_str()) {
        // A fresh header name and a checked value: inserting cannot fail.
        let _ = resp.insert_header(STREAM_ID, v);
    }
    ctx.resume = Some(Box::new(Attached {
        record,
        framer: Framer::new(framing),
        detached: false,
        armed: false,
        sealed: false,
    }));
}

/// Numbers and keeps the bytes about to go to the client (`response_body_filter`, and what the
/// edge writes itself: a failover's continuation, the terminal error event). SSE gains `id:`
/// lines; an unfinished event waits for its end.
pub fn pass(streams: &Streams, body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) {
    let Some(a) = ctx.resume.as_mut() else {
        return;
    };
    let chunk = body.take().unwrap_or_default();
    let cut = a.framer.feed(&chunk, end);
    if !cut.ends.is_empty() {
        let delta = a.record.push(cut.first, cut.events());
        streams.metrics.buffer_bytes.add(delta);
    }
    if !cut.bytes.is_empty() {
        *body = Some(cut.bytes);
    }
    if end {
        streams.end(&a.record, Life::Ended);
        streams.seal(&a.record);
        a.sealed = true;
    } else if a.framer.held() > a.record.policy.buffer {
        // An event longer than the whole buffer (or an engine that never ends its events):
        // holding it back would stall the client and grow without bound. The bytes go out as
        // they are and the stream stops being resumable; a resume reads up to here.
        log::warn!(
            "request {}: stream {}: an event outgrew the resumable buffer ({} bytes); the rest \
             is relayed as it comes and cannot be resumed",
            ctx.req.request_id,
            a.record.id,
            a.record.policy.buffer
        );
        let held = a.framer.take_held();
        if a.detached {
            // Nobody can resume it any more: stop the engine now rather than at its end.
            streams.end(&a.record, Life::Cancelled);
        }
        *body = Some(match body.take() {
            Some(b) => {
                let mut all = bytes::BytesMut::with_capacity(b.len() + held.len());
                all.extend_from_slice(&b);
                all.extend_from_slice(&held);
                all.freeze()
            }
            None => held,
        });
        finish(streams, ctx);
    }
}

/// `ProxyHttp::downstream_detached`: the client went away mid-stream. On a live resumable
/// stream the engine goes on (for the grace window, or a resume); otherwise Pingora fails the
/// request as usual.
pub fn detach(streams: &Streams, ctx: &mut RequestCtx) -> bool {
    let Some(a) = ctx.resume.as_mut() else {
        return false;
    };
    if a.record.life() != Life::Live {
        return false;
    }
    if !a.detached {
        a.detached = true;
        streams.leave(&a.record);
        log::info!(
            "request {}: the client left; stream {} goes on for {:?} unless resumed",
            ctx.req.request_id,
            a.record.id,
            a.record.policy.grace
        );
    }
    true
}

/// `ProxyHttp::response_abort`: resolves when the stream is cancelled or its grace window
/// passes with nobody attached; Pingora then drops the engine's connection.
pub fn abort(
    streams: &Arc<Streams>,
    ctx: &mut RequestCtx,
) -> Option<futures::future::BoxFuture<'static, Box<Error>>> {
    let a = ctx.resume.as_mut().filter(|a| !a.armed)?;
    a.armed = true;
    let record = a.record.clone();
    let streams = streams.clone();
    let request_id = ctx.req.request_id.clone();
    Some(Box::pin(async move {
        let life = record.released().await;
        let why = match life {
            Life::Expired => {
                streams.expired(&record);
                log::info!(
                    "request {request_id}: nobody resumed stream {} within {:?}: the engine is stopped",
                    record.id,
                    record.policy.grace
                );
                RELEASE_EXPIRED
            }
            Life::Cancelled => RELEASE_CANCELLED,
            // The stream ended by itself: the response is over anyway; nothing to abort.
            Life::Ended | Life::Live => return std::future::pending().await,
        };
        Error::create(
            ErrorType::Custom(why),
            ErrorSource::Internal,
            Some(format!("stream {} {why}", record.id).into()),
            None,
        )
    }))
}

/// The error a cancelled stream ends with.
pub const RELEASE_CANCELLED: &str = "stream_cancelled";
/// The error a stream nobody came back to ends with.
pub const RELEASE_EXPIRED: &str = "stream_expired";

/// Whether `e` is the edge ending a resumable stream (cancel or grace expiry), not a failure.
pub fn is_release(e: &Error) -> bool {
    matches!(e.etype(), ErrorType::Custom(w) if *w == RELEASE_CANCELLED || *w == RELEASE_EXPIRED)
}

/// What the terminal error event of a stream the edge ended says.
pub fn release_message(e: &Error) -> &'static str {
    match e.etype() {
        ErrorType::Custom(w) if *w == RELEASE_EXPIRED => end_message(Life::Expired),
        _ => end_message(Life::Cancelled),
    }
}

/// What the terminal error event says of a stream that ended as `life` without its own end.
fn end_message(life: Life) -> &'static str {
    match life {
        Life::Cancelled => "the stream was cancelled by its caller",
        Life::Expired => {
            "nobody resumed the stream within its grace window: the model server was stopped"
        }
        Life::Live | Life::Ended => "the stream ended early and cannot be resumed past here",
    }
}

/// The request is over (`logging`): its record ends here unless it already did. A stream
/// whose end never reached the record (the client left during a failover's continuation, an
/// event outgrew the buffer) gets the terminal error event, so a resume does not read a
/// silent cut as a whole answer.
pub fn finish(streams: &Streams, ctx: &mut RequestCtx) {
    let Some(mut a) = ctx.resume.take() else {
        return;
    };
    if !a.sealed {
        let msg = end_message(a.record.life());
        // What was held back never reached the client either.
        a.framer.take_held();
        if let Some(bytes) = ctx.stream.tap.as_ref().and_then(|t| t.terminal_error(msg)) {
            let cut = a.framer.feed(&bytes, true);
            let delta = a.record.push(cut.first, cut.events());
            streams.metrics.buffer_bytes.add(delta);
        }
    }
    if !a.detached {
        streams.leave(&a.record);
    }
    streams.end(&a.record, Life::Ended);
    if !a.sealed {
        streams.seal(&a.record);
    }
}

/// Whether the request's client left while the engine went on.
pub fn detached(ctx: &RequestCtx) -> bool {
    ctx.resume.as_ref().is_some_and(|a| a.detached)
}
