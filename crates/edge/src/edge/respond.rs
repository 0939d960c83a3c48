//! Answers the edge writes itself: errors in the client's API shape, and small JSON replies.

use super::ctx::RequestCtx;
use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// An error the edge answers with, rendered in the client's API shape.
#[derive(Debug, Clone)]
pub struct EdgeError {
    /// HTTP status.
    pub status: u16,
    /// Message for the client.
    pub message: String,
    /// Machine-readable code (OpenAI `code`).
    pub code: &'static str,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
    /// Close the connection after answering (framing in doubt, or a body left unread).
    pub close: bool,
}

impl EdgeError {
    /// An error without Retry-After.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        EdgeError {
            status,
            message: message.into(),
            code,
            retry_after: None,
            close: false,
        }
    }

    /// The same error, answered with `Connection: close`.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

impl From<okome_filters::Rejection> for EdgeError {
    fn from(r: okome_filters::Rejection) -> Self {
        EdgeError {
            status: r.status.as_u16(),
            message: r.message,
            code: r.code,
            retry_after: r.retry_after,
            close: false,
        }
    }
}

/// Writes `err` to the client; returns the status for logging (0 if the client is gone).
pub async fn error(session: &mut Session, ctx: &mut RequestCtx, err: &EdgeError) -> u16 {
    let body = ctx.req.api.error_body(err.status, &err.message, err.code);
    ctx.reply.status = err.status;
    ctx.reply.edge_error = Some(err.message.clone());
    let mut extra: Vec<(&'static str, String)> = Vec::new();
    if let Some(s) = err.retry_after {
        extra.push(("retry-after", s.to_string()));
    }
    if err.close {
        extra.push(("connection", "close".to_owned()));
    }
    if !ctx.req.request_id.is_empty() {
        extra.push(("x-request-id", ctx.req.request_id.clone()));
    }
    match json(session, err.status, body, &extra).await {
        Ok(()) => err.status,
        Err(_) => 0,
    }
}

/// Writes a complete JSON response.
pub async fn json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    extra: &[(&'static str, String)],
) -> pingora_error::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    for (k, v) in extra {
        resp.insert_header(*k, v.as_str())?;
    }
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
