//! Reading the request body before routing, and replaying it to each upstream attempt.
//!
//! Pingora forwards a body read in `request_filter` only from its 64 KiB retry buffer, so a
//! larger body would reach the engine empty. We read the whole body ourselves (up to
//! `limits.max_body`) and arrange for the retry buffer to hold just the last ≤ 64 KiB: that
//! makes Pingora call `request_body_filter` once per attempt, where [`replay`] swaps in the
//! whole body. Every attempt, retries and fallbacks included, sends the same bytes.
//!
//! To an HTTP/2 upstream (gRPC) a body of unknown length may outgrow the retry buffer: our
//! patched Pingora then asks `request_body_filter` once with an empty final chunk, which
//! [`replay`] fills the same way.

use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;

/// Pingora's retry buffer size (`BODY_BUF_LIMIT` in pingora-core).
const RETRY_BUFFER: u64 = 64 * 1024;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Chunked bodies over 64 KiB cannot be replayed (see module docs).
    #[error("chunked request bodies over 64 KiB need a Content-Length header")]
    LengthRequired,
    /// The client went away or sent bad framing.
    #[error("reading the request body: {0}")]
    Read(Box<pingora_error::Error>),
}

/// Reads the whole request body, at most `limit` bytes. `h2_upstream`: the body goes to an
/// HTTP/2 upstream, where one of unknown length over 64 KiB is replayed too.
pub async fn read_all(
    session: &mut Session,
    limit: u64,
    h2_upstream: bool,
) -> Result<Bytes, BodyError> {
    let declared: Option<u64> = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    if let Some(len) = declared {
        if len > limit {
            return Err(BodyError::TooLarge { limit });
        }
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(8 * 1024) as usize);
    match declared {
        // Without a length we cannot know where the tail starts: buffer from the start and
        // accept only what fits the retry buffer.
        None => session.as_downstream_mut().enable_retry_buffering(),
        Some(len) if len <= RETRY_BUFFER => session.as_downstream_mut().enable_retry_buffering(),
        Some(_) => {}
    }
    loop {
        if let Some(len) = declared {
            if len - (buf.len() as u64).min(len) <= RETRY_BUFFER {
                session.as_downstream_mut().enable_retry_buffering();
            }
        }
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() as u64 + chunk.len() as u64 > limit {
                    return Err(BodyError::TooLarge { limit });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(BodyError::Read(e)),
        }
    }
    if declared.is_none() && buf.len() as u64 > RETRY_BUFFER && !h2_upstream {
        return Err(BodyError::LengthRequired);
    }
    Ok(buf.freeze())
}

/// Swaps the whole pre-read body in for what Pingora replays from its retry buffer.
pub fn replay(stored: Option<&Bytes>, body: &mut Option<Bytes>) {
    if let (Some(full), Some(_)) = (stored, body.as_ref()) {
        *body = Some(full.clone());
    }
}
