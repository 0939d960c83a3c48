//! `logging`: the end of every request. Counts it, settles the stream's metrics, writes one
//! access-log line (JSON) with what the client experienced.

use super::ctx::{Outcome, RequestCtx};
use super::Edge;
use pingora_error::{Error, ErrorSource, ErrorType};
use serde::Serialize;

#[derive(Serialize)]
struct AccessLine<'a> {
    method: &'a str,
    path: &'a str,
    status: u16,
    route: &'a str,
    pool: Option<&'a str>,
    backend: Option<&'a str>,
    model: Option<&'a str>,
    tenant: Option<&'a str>,
    attempts: u32,
    duration_ms: f64,
    ttft_ms: Option<f64>,
    tokens: Option<u64>,
    gap_mean_ms: Option<f64>,
    gap_max_ms: Option<f64>,
    jitter_ms: Option<f64>,
    outcome: Option<&'static str>,
    error: Option<String>,
}

/// How a stream ended, from the final error (if any) and what the tap saw.
pub fn outcome(e: Option<&Error>, ctx: &RequestCtx) -> Outcome {
    match e {
        Some(e) if *e.esource() == ErrorSource::Downstream => Outcome::ClientDisconnect,
        Some(e)
            if matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
            ) =>
        {
            Outcome::Timeout
        }
        Some(_) => Outcome::UpstreamError,
        None if ctx.tap.as_ref().is_some_and(|t| t.stats.error) => Outcome::UpstreamError,
        None => Outcome::Completed,
    }
}

/// Records the finished request.
pub fn finish(
    edge: &Edge,
    method: &str,
    path: &str,
    status_written: Option<u16>,
    e: Option<&Error>,
    ctx: &mut RequestCtx,
) {
    let status = status_written.unwrap_or(ctx.status);
    let route = ctx
        .route
        .map_or("none", |r| edge.routes.routes[r].name.as_str());
    edge.metrics
        .requests
        .with_label_values(&[route, status_label(status)])
        .inc();

    let (pool, backend) = match ctx.current {
        Some((pi, bi)) => {
            let p = &edge.upstreams.pools[pi];
            (Some(p.name.as_str()), Some(p.backends[bi].id.as_str()))
        }
        None => (None, None),
    };

    let mut line_outcome = None;
    if let Some(tap) = ctx.tap.as_ref() {
        let o = outcome(e, ctx);
        line_outcome = Some(o.as_str());
        let labels = edge.stream_labels(ctx);
        let pool_l = pool.unwrap_or("");
        edge.metrics
            .streams
            .with_label_values(&[route, pool_l, o.as_str()])
            .inc();
        edge.metrics
            .tokens
            .with_label_values(&[route, pool_l, labels.model])
            .inc_by(tap.stats.tokens());
        if let Some(j) = tap.stats.jitter() {
            edge.metrics
                .jitter
                .with_label_values(&labels.as_refs())
                .observe(j.as_secs_f64());
        }
    }

    let stats = ctx.tap.as_ref().map(|t| &t.stats);
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let line = AccessLine {
        method,
        path,
        status,
        route,
        pool,
        backend,
        model: ctx.model.as_deref(),
        tenant: ctx.effects.tenant.as_deref().map(|t| t.id.as_str()),
        attempts: ctx.attempts,
        duration_ms: ms(ctx.start.elapsed()),
        ttft_ms: stats.and_then(|s| s.ttft()).map(ms),
        tokens: stats.map(|s| s.tokens()),
        gap_mean_ms: stats.and_then(|s| s.mean_gap()).map(ms),
        gap_max_ms: stats.map(|s| ms(s.max_gap())),
        jitter_ms: stats.and_then(|s| s.jitter()).map(ms),
        outcome: line_outcome,
        error: ctx.edge_error.clone().or_else(|| e.map(|e| e.to_string())),
    };
    if let Ok(json) = serde_json::to_string(&line) {
        log::info!(target: "okome::access", "{json}");
    }
    // Settle the tenant's token reservation with what was really generated: the tap's count for
    // a stream (cut streams included), nothing for a request that never reached an engine, the
    // reservation otherwise (a plain JSON answer is not parsed).
    if let Some(adm) = ctx.effects.admission.take() {
        let tokens = match (&ctx.tap, ctx.current) {
            (Some(tap), _) => tap.stats.tokens(),
            (None, None) => 0,
            (None, Some(_)) if status >= 400 => 0,
            (None, Some(_)) => adm.reserved(),
        };
        if let Some(t) = ctx.effects.tenant.as_ref() {
            edge.metrics
                .tenant_tokens
                .with_label_values(&[&t.id])
                .inc_by(tokens);
        }
        adm.settle(tokens);
    }
    // Release the backend slot now rather than when Pingora drops the context.
    ctx.inflight = None;
}

fn status_label(s: u16) -> &'static str {
    match s {
        0 => "0",
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        411 => "411",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}
