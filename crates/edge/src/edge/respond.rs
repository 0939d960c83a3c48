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
    if ctx.req.api == crate::api::Api::TfServingGrpc {
        ctx.reply.status = err.status;
        ctx.reply.edge_error = Some(err.message.clone());
        return match grpc_error(session, ctx, err).await {
            Ok(()) => err.status,
            Err(_) => 0,
        };
    }
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

/// Writes `err` as gRPC does: HTTP 200, trailers-only (one HEADERS frame that ends the stream)
/// with `grpc-status` for the HTTP status and the message in `grpc-message`; a gRPC client
/// cannot read an HTTP error status.
async fn grpc_error(
    session: &mut Session,
    ctx: &RequestCtx,
    err: &EdgeError,
) -> pingora_error::Result<()> {
    use okome_engine::tfs_grpc::{encode_message, Code};
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    let code = match err.code {
        // A model the edge knows no pool for is TF Serving's own NOT_FOUND, not a missing method.
        "model_not_found" => Code::NotFound,
        _ => Code::from_http(err.status),
    };
    resp.insert_header("grpc-status", code.as_str())?;
    resp.insert_header("grpc-message", encode_message(&err.message))?;
    if let Some(s) = err.retry_after {
        // gRPC's retry pushback is in milliseconds.
        resp.insert_header("grpc-retry-pushback-ms", (s * 1000).to_string())?;
    }
    if !ctx.req.request_id.is_empty() {
        resp.insert_header("x-request-id", ctx.req.request_id.as_str())?;
    }
    session.set_keepalive(None);
    match session.as_downstream_mut() {
        // Pingora's session-level write ignores `end_of_stream` on HTTP/2 and ends the stream
        // with an empty DATA frame, which gRPC clients read as a status-less answer: end it
        // with the HEADERS frame itself.
        pingora_core::protocols::http::ServerSession::H2(h2) => {
            h2.write_response_header(Box::new(resp), true)
        }
        _ => session.write_response_header(Box::new(resp), true).await,
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
