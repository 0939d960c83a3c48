//! Resume and cancel requests, answered by the node that holds the stream:
//!
//! - `GET /v1/okome/streams/{id}` with `Last-Event-ID: N` or `?cursor=N` (what the client has:
//!   SSE event ids, or NDJSON lines; none or 0: from the start);
//! - the original request again (`POST`) with `x-okome-stream-id: {id}` and `Last-Event-ID`, as
//!   `fetch-event-source` re-sends it;
//! - `DELETE /v1/okome/streams/{id}`: stop the stream and the engine now.
//!
//! A resume replays the events after the cursor, then follows the live tail to the end. Only
//! the caller that made the stream (same key, or tenant) sees it; anyone else gets 404, as for a
//! stream that never existed. A cursor older than the buffer gets 410.

use super::record::{Life, Read, Record};
use super::stream::STREAM_ID;
use super::Streams;
use crate::edge::ctx::RequestCtx;
use crate::edge::respond::EdgeError;
use bytes::{Bytes, BytesMut};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::sync::Arc;

/// Where stream resources live.
pub const PREFIX: &str = "/v1/okome/streams/";

/// What a resume or cancel request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// Replay after `cursor`, then the live tail.
    Resume {
        /// The stream id as sent.
        id: String,
        /// The last event the client has (0: none).
        cursor: u64,
    },
    /// Stop the stream.
    Cancel {
        /// The stream id as sent.
        id: String,
    },
}

/// Whether `path` names a stream resource.
pub fn is_stream_path(path: &str) -> bool {
    path.starts_with(PREFIX)
}

/// Reads a resume or cancel from the request head; `None`: an ordinary request.
pub fn parse(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    headers: &http::HeaderMap,
) -> Option<Result<Ask, EdgeError>> {
    let last_event = || -> Result<u64, EdgeError> {
        match headers.get("last-event-id") {
            None => Ok(0),
            Some(v) => cursor(v.to_str().unwrap_or("x")),
        }
    };
    if let Some(id) = path.strip_prefix(PREFIX) {
        let id = id.to_owned();
        return Some(match *method {
            http::Method::GET => {
                let q = query
                    .into_iter()
                    .flat_map(|q| q.split('&'))
                    .find_map(|kv| kv.strip_prefix("cursor="));
                match q {
                    Some(c) => cursor(c),
                    None => last_event(),
                }
                .map(|cursor| Ask::Resume { id, cursor })
            }
            http::Method::DELETE => Ok(Ask::Cancel { id }),
            _ => Err(EdgeError::new(
                405,
                "method_not_allowed",
                "a stream is resumed with GET and cancelled with DELETE",
            )),
        });
    }
    let id = headers.get(STREAM_ID)?;
    if *method != http::Method::POST {
        return None;
    }
    let id = id.to_str().unwrap_or_default().to_owned();
    Some(last_event().map(|cursor| Ask::Resume { id, cursor }))
}

fn cursor(s: &str) -> Result<u64, EdgeError> {
    s.trim().parse().map_err(|_| {
        EdgeError::new(
            400,
            "bad_cursor",
            format!("the cursor {s:?} is not an event number (Last-Event-ID or ?cursor=N)"),
        )
    })
}

fn not_found(streams: &Streams, id: &str) -> EdgeError {
    streams
        .metrics
        .resumes
        .with_label_values(&["not_found"])
        .inc();
    EdgeError::new(
        404,
        "stream_not_found",
        format!("no stream {id:?} here: it never existed, is not yours, or expired"),
    )
}

/// Answers `ask`; `Err`: the refusal for the caller, in its API's shape.
pub async fn answer(
    streams: &Streams,
    (limits, route): (BodyLimits, &str),
    session: &mut Session,
    ctx: &mut RequestCtx,
    ask: Ask,
) -> Result<(), EdgeError> {
    let tenant = ctx.effects.tenant.as_ref().map(|t| t.id.as_str());
    let owner = streams.owner(&session.req_header().headers, tenant);
    let (Ask::Resume { id, .. } | Ask::Cancel { id }) = &ask;
    // Through the route it was made on (whose filters just ran), by the caller who made it.
    let record = super::id::StreamId::parse(id)
        .and_then(|sid| streams.get(sid.as_str(), owner))
        .filter(|r| r.route == route)
        .ok_or_else(|| not_found(streams, id))?;
    match ask {
        Ask::Cancel { .. } => {
            let status = if streams.end(&record, Life::Cancelled) {
                log::info!(
                    "request {}: stream {} cancelled by its caller",
                    ctx.req.request_id,
                    record.id
                );
                "cancelled"
            } else {
                life_name(record.life())
            };
            let body = serde_json::json!({"id": record.id.as_str(), "object": "okome.stream", "status": status});
            ctx.reply.status = 200;
            let rid = [("x-request-id", ctx.req.request_id.clone())];
            let _ =
                crate::edge::respond::json(session, 200, Bytes::from(body.to_string()), &rid).await;
            Ok(())
        }
        Ask::Resume { cursor, .. } => resume(streams, limits, session, ctx, &record, cursor).await,
    }
}

fn life_name(life: Life) -> &'static str {
    match life {
        Life::Live => "live",
        Life::Ended => "ended",
        Life::Cancelled => "cancelled",
        Life::Expired => "expired",
    }
}

async fn resume(
    streams: &Streams,
    limits: BodyLimits,
    session: &mut Session,
    ctx: &mut RequestCtx,
    record: &Arc<Record>,
    mut cursor: u64,
) -> Result<(), EdgeError> {
    let count = |result: &str| streams.metrics.resumes.with_label_values(&[result]).inc();
    match record.read(cursor) {
        Read::Gone { oldest } => {
            count("gone");
            return Err(EdgeError::new(
                410,
                "stream_cursor_gone",
                format!(
                    "events after {cursor} are no longer buffered (the oldest kept is {oldest}); \
                     start the request again"
                ),
            ));
        }
        Read::Ahead { last } => {
            count("bad_cursor");
            return Err(EdgeError::new(
                400,
                "bad_cursor",
                format!("the cursor {cursor} is past the stream's last event ({last})"),
            ));
        }
        Read::Events(..) | Read::Over(_) => count("resumed"),
    }
    // A re-POST carries the original body again: read and drop it (nothing of it is used), up
    // to the edge's body limit and deadline, so the connection stays in step; past either it
    // is closed after the answer instead.
    if !drain_body(session, limits).await {
        session.set_keepalive(None);
    }
    let mut resp = ResponseHeader::build(200, Some(6)).map_err(internal)?;
    if session.req_header().version == http::Version::HTTP_11 {
        // A cut resume must not read as a whole one: framed, not ended by the close.
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")
            .map_err(internal)?;
    }
    let headers = [
        (http::header::CONTENT_TYPE, record.content_type.clone()),
        (
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        ),
    ];
    for (k, v) in headers {
        resp.insert_header(k, v).map_err(internal)?;
    }
    resp.insert_header(STREAM_ID, record.id.as_str())
        .map_err(internal)?;
    resp.insert_header("x-request-id", ctx.req.request_id.as_str())
        .map_err(internal)?;
    ctx.reply.status = 200;
    log::info!(
        "request {}: resuming stream {} after event {cursor}",
        ctx.req.request_id,
        record.id
    );
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_err()
    {
        return Ok(());
    }
    streams.attach(record);
    follow(session, record, &mut cursor).await;
    streams.leave(record);
    Ok(())
}

/// Reads and drops the request body; `false` when it was over `max_body` bytes, did not arrive
/// in time, or broke.
async fn drain_body(session: &mut Session, limits: BodyLimits) -> bool {
    let read = async {
        let mut seen = 0u64;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    seen += chunk.len() as u64;
                    if seen > limits.max_body {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(limits.deadline, read)
        .await
        .unwrap_or(false)
}

/// How much of a re-POST's body is read, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `limits.max_body`.
    pub max_body: u64,
    /// `timeouts.client_body`.
    pub deadline: std::time::Duration,
}

/// Writes the events after `cursor` as they come, to the end of the stream or of the client.
async fn follow(session: &mut Session, record: &Record, cursor: &mut u64) {
    let mut data = record.data();
    let mut watch_client = true;
    loop {
        data.borrow_and_update();
        match record.read(*cursor) {
            Read::Events(events, last) if !events.is_empty() => {
                let mut out = BytesMut::with_capacity(events.iter().map(Bytes::len).sum());
                for e in &events {
                    out.extend_from_slice(e);
                }
                if session
                    .write_response_body(Some(out.freeze()), false)
                    .await
                    .is_err()
                {
                    return;
                }
                *cursor = last;
            }
            Read::Events(..) => {
                // Nothing new: wait for the engine, or notice the client leaving.
                tokio::select! {
                    r = data.changed() => if r.is_err() { return },
                    r = session.downstream_session.read_body_or_idle(true), if watch_client => match r {
                        Err(_) => return,
                        Ok(_) => watch_client = false,
                    },
                }
            }
            Read::Over(_) => {
                let _ = session.write_response_body(None, true).await;
                let _ = session.finish_body().await;
                return;
            }
            // A reader slower than the engine lost events off the buffer's end (a new resume
            // from its cursor gets 410): end with the stream's terminal error event.
            Read::Gone { .. } | Read::Ahead { .. } => {
                let format = match record.framing {
                    super::events::Framing::Sse => crate::stream::Format::Sse,
                    super::events::Framing::Ndjson => crate::stream::Format::Ndjson,
                };
                let msg = "this resume fell behind the stream's buffer; resume again from the \
                           last event you have (older events may be gone: 410)";
                let err = crate::api::Api::stream_error(format, msg);
                let _ = session.write_response_body(err, true).await;
                return;
            }
        }
    }
}

fn internal(e: Box<pingora_error::Error>) -> EdgeError {
    EdgeError::new(500, "internal_error", e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(method: &str, target: &str, headers: &[(&str, &str)]) -> Option<Result<Ask, u16>> {
        let uri: http::Uri = target.parse().unwrap();
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        parse(&method.parse().unwrap(), uri.path(), uri.query(), &h)
            .map(|r| r.map_err(|e| e.status))
    }

    #[test]
    fn resumes_and_cancels_are_read_from_the_head() {
        let id = "0000abcd-0123456789abcdef0123456789abcdef";
        let resume = |cursor| {
            Some(Ok(Ask::Resume {
                id: id.into(),
                cursor,
            }))
        };
        assert_eq!(ask("GET", &format!("{PREFIX}{id}"), &[]), resume(0));
        assert_eq!(
            ask(
                "GET",
                &format!("{PREFIX}{id}?cursor=7"),
                &[("last-event-id", "3")]
            ),
            resume(7)
        );
        assert_eq!(
            ask("GET", &format!("{PREFIX}{id}"), &[("last-event-id", "3")]),
            resume(3)
        );
        assert_eq!(
            ask(
                "POST",
                "/v1/chat/completions",
                &[("x-okome-stream-id", id), ("last-event-id", "12")]
            ),
            resume(12)
        );
        assert_eq!(
            ask("DELETE", &format!("{PREFIX}{id}"), &[]),
            Some(Ok(Ask::Cancel { id: id.into() }))
        );
        assert_eq!(
            ask("GET", &format!("{PREFIX}{id}?cursor=x"), &[]),
            Some(Err(400))
        );
        assert_eq!(ask("PUT", &format!("{PREFIX}{id}"), &[]), Some(Err(405)));
        assert_eq!(ask("POST", "/v1/chat/completions", &[]), None);
        assert_eq!(ask("GET", "/v1/models", &[("x-okome-stream-id", id)]), None);
    }
}
