//! Response phases: retry on an engine's 502/503 before anything is sent, then tap the stream.

use super::{ctx::RequestCtx, Edge};
use crate::stream::{Format, StreamTap};
use bytes::Bytes;
use pingora_error::{Error, ErrorType};
use pingora_http::ResponseHeader;
use std::time::Instant;

/// `upstream_response_filter`: note the backend's health; turn a 502/503 into a retry while
/// nothing has reached the client and another backend can take the request.
pub fn on_upstream_header(
    edge: &Edge,
    resp: &ResponseHeader,
    ctx: &mut RequestCtx,
) -> pingora_error::Result<()> {
    let status = resp.status.as_u16();
    let Some((pi, bi)) = ctx.attempt.current else {
        return Ok(());
    };
    let pool = &edge.upstreams.pools[pi];
    let backend = &pool.backends[bi];
    // A stream node's 503 with Retry-After is its deliberate answer (the core is shedding, no
    // engine is left, it is at capacity): the node is fine, its siblings share the core and
    // would say the same, and the client must get the Retry-After. Passed on as it is.
    let deliberate = pool.kind == crate::config::PoolKind::Okome
        && status == 503
        && resp.headers.contains_key(http::header::RETRY_AFTER);
    if status >= 500 && !deliberate {
        backend.record_failure(&pool.ejection, &format!("answered {status}"), false);
    } else {
        backend.record_success();
    }
    // REST only: a gRPC call's 200 says nothing (its status comes in the trailers).
    if (200..300).contains(&status) && ctx.req.api == crate::api::Api::TfServing {
        if let Some(m) = ctx.req.model.as_deref() {
            pool.learn_tf_model(m);
        }
    }
    if matches!(status, 502 | 503)
        && !deliberate
        && edge.retry_after_failure(ctx, super::retry::Failure::Status(status), false)
    {
        let mut e = Error::explain(
            ErrorType::HTTPStatus(status),
            format!("backend {} answered {status}", backend.id),
        );
        e.set_retry(true);
        return Err(e);
    }
    Ok(())
}

/// `response_filter`: start the stream tap when the answer is a token stream.
pub fn on_response_header(
    edge: &Edge,
    resp: &mut ResponseHeader,
    path: &str,
    target: &str,
    ctx: &mut RequestCtx,
) {
    ctx.reply.status = resp.status.as_u16();
    if let Ok(v) = http::HeaderValue::from_str(&ctx.req.request_id) {
        // A fresh header name and a checked value: inserting cannot fail.
        let _ = resp.insert_header(super::request::REQUEST_ID, v);
    }
    // The response is about to reach the client: no more retries, so the pre-read request body
    // (megabytes for a long prompt) need not live as long as the stream. Failover keeps what it
    // needs (the parsed body) in its own state.
    let body = ctx.req.body.take();
    let ct = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .map_or(&b""[..], |v| v.as_bytes());
    let format = Format::from_content_type(ct);
    if format == Format::Opaque {
        return;
    }
    // Only vLLM and OpenAI engines take a continuation; other pools of the route end as before.
    let failover = ctx
        .req
        .route
        .is_some_and(|r| edge.routes.routes[r].mid_stream_failover)
        && ctx
            .attempt
            .current
            .is_some_and(|(pi, _)| edge.upstreams.pools[pi].kind.continues_openai_chat());
    if failover && format == Format::Sse && ctx.reply.status == 200 {
        let body = body.unwrap_or_default();
        ctx.failover = Some(Box::new(crate::failover::State::new(path, target, body)));
    }
    let labels = edge.stream_labels(ctx);
    ctx.stream.gap_hist = Some(
        edge.metrics
            .inter_token
            .with_label_values(&labels.as_refs()),
    );
    ctx.stream.tap = Some(StreamTap::new(format, ctx.req.start));
}

/// `response_body_filter`: feed the tap; the bytes pass through untouched, except on a failover
/// route, where an engine's error event or an end without `[DONE]` is held back and turned into
/// an error (so that `fail_to_proxy` continues the stream).
pub fn on_body(
    edge: &Edge,
    body: &mut Option<Bytes>,
    end: bool,
    ctx: &mut RequestCtx,
) -> pingora_error::Result<()> {
    if body.as_ref().is_some_and(|b| !b.is_empty()) {
        if let Some(g) = &ctx.attempt.inflight {
            g.backend().note_progress();
        }
    }
    super::listing::on_body(edge, body, end, ctx)?;
    if let Some(f) = ctx.failover.as_mut() {
        f.on_body(body, end)?;
    }
    tap_body(edge, body, ctx);
    crate::resume::stream::pass(&edge.streams, body, end, ctx);
    Ok(())
}

/// `response_filter`, after [`on_response_header`]: a streaming 200 (SSE or NDJSON) on a
/// `resumable` route becomes a resumable stream.
pub fn start_resumable(
    edge: &Edge,
    session: &pingora_proxy::Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
) {
    let Some(route) = ctx.req.route.map(|r| &edge.routes.routes[r]) else {
        return;
    };
    let Some(policy) = route.resumable else {
        return;
    };
    let framing = match ctx.stream.tap.as_ref().map(|t| t.format()) {
        Some(Format::Sse) => crate::resume::events::Framing::Sse,
        Some(Format::Ndjson) => crate::resume::events::Framing::Ndjson,
        _ => return,
    };
    if ctx.reply.status != 200 || ctx.req.upgrade {
        return;
    }
    let down = session.as_downstream();
    let local = down.server_addr().and_then(|a| a.as_inet()).copied();
    let tenant = ctx.effects.tenant.as_ref().map(|t| t.id.as_str());
    let owner = edge.streams.owner(&session.req_header().headers, tenant);
    let before = ctx.resume.is_some();
    crate::resume::stream::start(
        &edge.streams,
        (policy, &route.name),
        framing,
        resp,
        local,
        owner,
        ctx,
    );
    if !before && ctx.resume.is_some() {
        // `id:` lines make the body longer than the engine said.
        relay_chunked(session, resp);
    }
}

/// A response whose body the edge changes goes out without the engine's Content-Length:
/// chunked on HTTP/1.1 (HTTP/1.0 reads to the close, HTTP/2 frames it itself).
pub fn relay_chunked(session: &pingora_proxy::Session, resp: &mut ResponseHeader) {
    resp.remove_header(&http::header::CONTENT_LENGTH);
    if session.req_header().version == http::Version::HTTP_11
        && !resp.headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        // A static name and value: inserting cannot fail.
        let _ = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
}

/// The SSE comment written when the engine has been silent for the route's `keepalive`: only
/// on a streamed 200 in SSE, and only between events (a comment inside an event would be part
/// of it). It bypasses the tap, failover and resumable framing: it is no token and no event.
pub fn keepalive(ctx: &mut RequestCtx) -> Option<Bytes> {
    let tap = ctx.stream.tap.as_ref()?;
    if ctx.reply.status != 200 || tap.format() != Format::Sse || !tap.between_events() {
        return None;
    }
    let route = &ctx.edge.routes.routes.get(ctx.req.route?)?.name;
    ctx.edge
        .metrics
        .stream_keepalives
        .with_label_values(&[route])
        .inc();
    Some(Bytes::from_static(b": keep-alive\n\n"))
}

/// Feeds bytes written to the client to the tap (tokens, gaps, TTFT).
pub fn tap_body(edge: &Edge, body: &Option<Bytes>, ctx: &mut RequestCtx) {
    let (Some(tap), Some(chunk)) = (ctx.stream.tap.as_mut(), body.as_ref()) else {
        return;
    };
    let hist = ctx.stream.gap_hist.as_ref();
    tap.feed(chunk, Instant::now(), &mut |gap| {
        if let Some(h) = hist {
            h.observe(gap.as_secs_f64());
        }
    });
    if !ctx.stream.ttft_recorded {
        if let Some(ttft) = tap.stats.ttft() {
            ctx.stream.ttft_recorded = true;
            let labels = edge.stream_labels(ctx);
            edge.metrics
                .ttft
                .with_label_values(&labels.as_refs())
                .observe(ttft.as_secs_f64());
        }
    }
}
