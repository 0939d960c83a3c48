//! `logging`: the end of every request. Counts it (requests, duration, bytes), settles the
//! stream's metrics, and writes one access-log record ([`AccessLine`]) with what the client
//! experienced.
//!
//! The record never carries a key or a header value other than the request id and the W3C trace
//! id. The per-stream gap p99 is not logged: it would need every gap of the stream kept (the tap
//! is O(1) memory); `gap_max_ms` is the stream's worst gap and `okome_inter_token_seconds` has
//! the p99 per route.

use super::ctx::{Outcome, RequestCtx};
use super::series::Labels;
use super::Edge;
use pingora_error::{Error, ErrorSource, ErrorType};
use serde::Serialize;

/// What Pingora's session knew about the request when it ended.
pub struct Seen<'a> {
    /// Request method.
    pub method: &'a str,
    /// Request path (no query).
    pub path: &'a str,
    /// Status written to the client, if a response head was written.
    pub status_written: Option<u16>,
    /// The client's address (formatted only when a record is written).
    pub client: Option<&'a dyn std::fmt::Display>,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes written to the client.
    pub bytes_out: u64,
}

impl std::fmt::Debug for Seen<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seen")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("status_written", &self.status_written)
            .field("client", &self.client.map(ToString::to_string))
            .finish_non_exhaustive()
    }
}

/// One access-log record (one JSON object per line). Fields are documented in the README
/// ("Access log"); absent values are `null`.
#[derive(Serialize)]
pub struct AccessLine<'a> {
    /// RFC 3339 UTC time the request ended, milliseconds.
    ts: Shown<humantime::Rfc3339Timestamp>,
    /// `x-request-id`: the client's, or the edge's own; also sent to the engine.
    request_id: &'a str,
    /// Client address (`IP:PORT`).
    client: Option<Shown<&'a dyn std::fmt::Display>>,
    method: &'a str,
    path: &'a str,
    status: u16,
    /// completed, client_disconnect, upstream_error, timeout; `refused` when the edge answered.
    outcome: &'static str,
    route: &'a str,
    pool: Option<&'a str>,
    backend: Option<&'a str>,
    model: Option<&'a str>,
    tenant: Option<&'a str>,
    /// Attempts beyond the first.
    retries: u32,
    duration_ms: f64,
    ttft_ms: Option<f64>,
    tokens: Option<u64>,
    bytes_in: u64,
    bytes_out: u64,
    gap_mean_ms: Option<f64>,
    gap_max_ms: Option<f64>,
    jitter_ms: Option<f64>,
    /// W3C trace id (32 hex digits) of the `traceparent` sent to the engine, when there is one.
    trace_id: Option<&'a str>,
    error: Option<std::borrow::Cow<'a, str>>,
}

/// A value serialized as its `Display` text, written straight into the record (no `String`).
pub struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// How a stream ended, from the final error (if any) and what the tap saw.
pub fn outcome(e: Option<&Error>, ctx: &RequestCtx) -> Outcome {
    // A continued stream reached its end (or its client left) despite the engine's failure.
    match ctx.stream.spliced {
        Some(crate::failover::relay::Spliced::Finished) => return Outcome::Completed,
        Some(crate::failover::relay::Spliced::ClientGone) => return Outcome::ClientDisconnect,
        None => {}
    }
    // The client left a resumable stream (the engine went on for a resume, and did not fail),
    // or it was cancelled or abandoned.
    if e.is_some_and(crate::resume::stream::is_release)
        || (e.is_none() && crate::resume::stream::detached(ctx))
    {
        return Outcome::ClientDisconnect;
    }
    match e {
        Some(e) if super::drain::is_shutdown(e) => Outcome::Shutdown,
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
        None if ctx
            .stream
            .tap
            .as_ref()
            .is_some_and(|t| t.stats.error || t.cut_short()) =>
        {
            Outcome::UpstreamError
        }
        None => Outcome::Completed,
    }
}

/// Records the finished request.
pub fn finish(edge: &Edge, seen: &Seen<'_>, e: Option<&Error>, ctx: &mut RequestCtx) {
    let status = seen.status_written.unwrap_or(ctx.reply.status);
    let route = ctx
        .req
        .route
        .map_or("none", |r| edge.routes.routes[r].name.as_str());
    let (pool, backend) = match ctx.attempt.current {
        Some((pi, bi)) => {
            let p = &edge.upstreams.pools[pi];
            (Some(p.name.as_str()), Some(p.backends[bi].id.as_str()))
        }
        None => (None, None),
    };
    let pool_l = pool.unwrap_or("");
    let labels = Labels {
        route: (ctx.req.route, route),
        pool: (ctx.attempt.current.map(|(pi, _)| pi), pool_l),
    };
    let m = &edge.metrics;
    edge.series.requests(m, &labels, status).inc();
    let elapsed = ctx.req.start.elapsed();
    edge.series
        .duration(m, &labels, status)
        .observe(elapsed.as_secs_f64());
    edge.series
        .response_bytes(m, &labels)
        .inc_by(seen.bytes_out);

    let o = outcome(e, ctx);
    if let Some(tap) = ctx.stream.tap.as_ref() {
        let labels = edge.stream_labels(ctx);
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

    // Build the record only when the access log is on: serializing it is wasted work otherwise.
    if edge.access_log.enabled() {
        let stats = ctx.stream.tap.as_ref().map(|t| &t.stats);
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let refused = ctx.attempt.current.is_none() && ctx.reply.edge_error.is_some();
        edge.access_log.write(&AccessLine {
            ts: Shown(humantime::format_rfc3339_millis(
                std::time::SystemTime::now(),
            )),
            request_id: &ctx.req.request_id,
            client: seen.client.map(Shown),
            method: seen.method,
            path: seen.path,
            status,
            outcome: if refused { "refused" } else { o.as_str() },
            route,
            pool,
            backend,
            model: ctx.req.model.as_deref(),
            tenant: ctx.effects.tenant.as_deref().map(|t| t.id.as_str()),
            retries: ctx.attempt.made.saturating_sub(1),
            duration_ms: ms(elapsed),
            ttft_ms: stats.and_then(|s| s.ttft()).map(ms),
            tokens: stats.map(|s| s.tokens()),
            bytes_in: seen.bytes_in,
            bytes_out: seen.bytes_out,
            gap_mean_ms: stats.and_then(|s| s.mean_gap()).map(ms),
            gap_max_ms: stats.map(|s| ms(s.max_gap())),
            jitter_ms: stats.and_then(|s| s.jitter()).map(ms),
            trace_id: ctx
                .effects
                .attributes
                .get(TRACE_ID_ATTRIBUTE)
                .map(String::as_str),
            error: ctx
                .reply
                .edge_error
                .as_deref()
                .map(std::borrow::Cow::Borrowed)
                .or_else(|| e.map(|e| e.to_string().into())),
        });
    }
    // Settle the tenant's token reservation with what was really generated: the tap's count for
    // a stream (cut streams included), nothing for a request that never reached an engine, the
    // reservation otherwise (a plain JSON answer is not parsed).
    if let Some(adm) = ctx.effects.admission.take() {
        let tokens = match (&ctx.stream.tap, ctx.attempt.current) {
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
    ctx.attempt.inflight = None;
}

/// The filter attribute the access log reads the trace id from. Whoever handles the request's
/// headers sets it from [`trace_id_of`] (client's `traceparent`) or [`new_traceparent`].
pub const TRACE_ID_ATTRIBUTE: &str = "trace_id";

/// The trace id of a W3C `traceparent` value (`00-<32 hex trace id>-<16 hex parent id>-<2 hex
/// flags>`), when it is valid: lowercase hex, version not `ff`, ids not all zero. Later versions
/// may append fields after the flags (`-...`), as the spec allows.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let v = traceparent.trim();
    let b = v.as_bytes();
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (version, trace, parent, flags) = (&b[0..2], &b[3..35], &b[36..52], &b[53..55]);
    let ok = hex(version)
        && version != b"ff"
        && hex(trace)
        && hex(parent)
        && hex(flags)
        && trace.iter().any(|c| *c != b'0')
        && parent.iter().any(|c| *c != b'0')
        && (b.len() == 55 || (version != b"00" && b[55] == b'-'));
    ok.then(|| &v[3..35])
}

/// A fresh sampled `traceparent` (version 00, random trace and parent ids), for an edge that
/// starts traces itself.
pub fn new_traceparent() -> String {
    let trace: u128 = rand::random::<u128>().max(1);
    let parent: u64 = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{parent:016x}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id_of(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        // Future versions may carry more fields; version 00 may not.
        assert!(trace_id_of(&format!("01{}-extra", &tp[2..])).is_some());
        assert_eq!(trace_id_of(&format!("{tp}-extra")), None);
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad}");
        }
        let fresh = new_traceparent();
        assert!(trace_id_of(&fresh).is_some(), "{fresh}");
    }
}
