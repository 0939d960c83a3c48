//! The Pingora `ProxyHttp` implementation: each phase delegates to its own module, on the edge
//! (config generation) the request started on.

use super::ctx::RequestCtx;
use super::request::Decision;
use super::{body, failure, logging, peer, request, respond, response, upstream_request, Edge};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::Duration;

/// What Pingora runs: the current edge, swapped whole by a reload (one clone per listener).
#[derive(Debug, Clone)]
pub struct Proxy {
    current: Arc<ArcSwap<Edge>>,
}

impl Proxy {
    /// A proxy serving whatever edge `current` holds when each request arrives.
    pub fn new(current: Arc<ArcSwap<Edge>>) -> Self {
        Proxy { current }
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.current.load_full())
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(slot) = prev.downcast::<Arc<super::connections::Slot>>() {
            ctx.connection = Some(*slot);
        }
        ctx.connection_checked = true;
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        // The slot goes on with the connection; it is released when the connection closes.
        ctx.connection
            .clone()
            .map(|s| Box::new(s) as Box<dyn std::any::Any + Send + Sync>)
    }

    fn request_head_timeout(&self) -> Option<Duration> {
        Some(self.current.load().timeouts.client_head.0)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let edge = Arc::clone(&ctx.edge);
        // A client that stops reading ends its stream (and frees the engine) after this.
        session.set_write_timeout(Some(edge.timeouts.client_write.0));
        match request::decide(&edge, session, ctx).await {
            Decision::Proxy => Ok(false),
            Decision::Refuse(err) => {
                respond::error(session, ctx, &err).await;
                Ok(true)
            }
            Decision::Stream(ask) => {
                let limits = crate::resume::serve::BodyLimits {
                    max_body: edge.max_body,
                    deadline: edge.timeouts.client_body.0,
                };
                let route = ctx
                    .req
                    .route
                    .map_or("", |r| edge.routes.routes[r].name.as_str());
                let answered =
                    crate::resume::serve::answer(&edge.streams, (limits, route), session, ctx, ask)
                        .await;
                if let Err(err) = answered {
                    respond::error(session, ctx, &err).await;
                }
                Ok(true)
            }
            Decision::ListModels(body) => {
                ctx.reply.status = 200;
                let id = [("x-request-id", ctx.req.request_id.clone())];
                respond::json(session, 200, body, &id).await?;
                Ok(true)
            }
        }
    }

    fn upstream_body_read_timeout(&self, ctx: &RequestCtx) -> Option<Duration> {
        (!ctx.req.upgrade).then_some(ctx.edge.timeouts.idle.0)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let edge = Arc::clone(&ctx.edge);
        let req = session.req_header();
        peer::next(&edge, ctx, &req.headers, req.uri.path())
            .map(Box::new)
            .map_err(|err| {
                let status = err.status;
                Error::because(
                    ErrorType::HTTPStatus(status),
                    "no backend for the request",
                    err,
                )
            })
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        body::replay(ctx.req.body.as_ref(), body);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let edge = Arc::clone(&ctx.edge);
        upstream_request::prepare(&edge, req, ctx)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let edge = Arc::clone(&ctx.edge);
        response::on_upstream_header(&edge, resp, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let edge = Arc::clone(&ctx.edge);
        let uri = &session.req_header().uri;
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        response::on_response_header(&edge, resp, uri.path(), target, ctx);
        response::start_resumable(&edge, session, resp, ctx);
        super::listing::on_response_header(session, resp, ctx);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        // Per chunk: one atomic increment to hold the edge while the context is borrowed.
        let edge = Arc::clone(&ctx.edge);
        if edge.drain.cut() {
            // The grace period is ending: the stream ends in its own format (fail_to_proxy).
            return Err(super::drain::shutdown_error());
        }
        response::on_body(&edge, body, end_of_stream, ctx)?;
        Ok(None)
    }

    fn downstream_detached(&self, ctx: &mut RequestCtx, _error: &Error) -> bool {
        let edge = Arc::clone(&ctx.edge);
        crate::resume::stream::detach(&edge.streams, ctx)
    }

    fn response_abort(
        &self,
        ctx: &mut RequestCtx,
    ) -> Option<futures::future::BoxFuture<'static, Box<Error>>> {
        // Per turn of the body loop: nothing to do for a stream that is not resumable.
        ctx.resume.as_ref()?;
        let edge = Arc::clone(&ctx.edge);
        crate::resume::stream::abort(&edge.streams, ctx)
    }

    fn response_keepalive(&self, ctx: &RequestCtx) -> Option<Duration> {
        ctx.edge.routes.routes.get(ctx.req.route?)?.keepalive
    }

    fn response_keepalive_bytes(&self, ctx: &mut RequestCtx) -> Option<bytes::Bytes> {
        super::response::keepalive(ctx)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        let edge = Arc::clone(&ctx.edge);
        failure::on_connect_error(&edge, session, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let edge = Arc::clone(&ctx.edge);
        failure::on_proxy_error(&edge, peer, session, ctx, e)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let edge = Arc::clone(&ctx.edge);
        failure::on_fail(&edge, session, e, ctx).await
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // The access log line carries the error, with context; avoid a second, less useful line.
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let written = session.response_written().map(|r| r.status.as_u16());
        let down = session.as_downstream();
        let req = session.req_header();
        // Behind a trusted proxy, the client it forwarded for; else the TCP peer.
        let forwarded = ctx.req.client;
        let client: Option<&dyn std::fmt::Display> = match &forwarded {
            Some(ip) => Some(ip),
            None => down.client_addr().map(|a| a as &dyn std::fmt::Display),
        };
        let seen = logging::Seen {
            method: req.method.as_str(),
            path: req.uri.path(),
            status_written: written,
            client,
            bytes_in: down.body_bytes_read() as u64,
            bytes_out: down.body_bytes_sent() as u64,
        };
        let edge = Arc::clone(&ctx.edge);
        logging::finish(&edge, &seen, e, ctx);
        crate::resume::stream::finish(&edge.streams, ctx);
    }
}
