//! `upstream_peer`: the next backend for this attempt, walking the pool plan.

use super::respond::EdgeError;
use super::{ctx::RequestCtx, Edge};
use crate::upstream::arbiter::Verdict;
use crate::upstream::hash::StickyPick;
use crate::upstream::select;
use pingora_core::upstreams::peer::HttpPeer;
use std::sync::Arc;

/// Chooses the backend for the next attempt, or says why there is none: in a prefix-affinity
/// pool, the backend that served the longest start of the prompt (load bounded); in a sticky
/// pool, the request key's backend (`headers` or, for a stream id, `path` carry the key); else
/// the less loaded of two.
pub fn next(
    edge: &Edge,
    ctx: &mut RequestCtx,
    headers: &http::HeaderMap,
    path: &str,
) -> Result<HttpPeer, EdgeError> {
    ctx.attempt.inflight = None;
    // The arbiter refusal with the soonest Retry-After, for the 503 if nothing takes the request.
    let mut shed: Option<Arc<Verdict>> = None;
    while let Some(&pi) = ctx.attempt.plan.get(ctx.attempt.plan_pos) {
        let pool = &edge.upstreams.pools[pi];
        if let Some(aff) = &pool.affinity {
            if ctx.attempt.prefix.as_ref().is_none_or(|(p, _)| *p != pi) {
                let mut blocks = ctx
                    .attempt
                    .prefix
                    .take()
                    .map(|(_, v)| v)
                    .unwrap_or_default();
                super::prompt::prefix_blocks(
                    ctx.req.api,
                    ctx.req.body.as_deref().unwrap_or_default(),
                    ctx.req.model.as_deref(),
                    aff.settings.block,
                    aff.settings.bytes,
                    &mut blocks,
                );
                ctx.attempt.prefix = Some((pi, blocks));
            }
        }
        let skip = |b| edge.skip(ctx, pi, b);
        let picked = match (&pool.affinity, &ctx.attempt.prefix) {
            (Some(aff), Some((_, blocks))) => {
                aff.pick(&pool.backends, blocks, skip).map(|p| p.index)
            }
            _ => match &pool.sticky {
                Some(sticky) => match sticky.key(headers, path) {
                    Some(key) => {
                        let p = sticky.pick(&pool.backends, key, skip);
                        if p.is_some() {
                            sticky.count(p);
                        }
                        p.map(StickyPick::index)
                    }
                    None => {
                        let p = select::pick(&pool.backends, skip);
                        if p.is_some() {
                            sticky.count(None);
                        }
                        p
                    }
                },
                None => select::pick(&pool.backends, skip),
            },
        };
        if let Some(bi) = picked {
            let backend = &pool.backends[bi];
            ctx.attempt.tried.push((pi, bi));
            ctx.attempt.current = Some((pi, bi));
            ctx.attempt.inflight = Some(backend.acquire());
            ctx.attempt.made += 1;
            if ctx.attempt.made == 1 {
                pool.retry_budget.earn();
            } else {
                let route = ctx
                    .req
                    .route
                    .map_or("", |r| edge.routes.routes[r].name.as_str());
                edge.metrics
                    .retries
                    .with_label_values(&[
                        route,
                        ctx.attempt
                            .last_failure
                            .map_or("other", super::retry::Failure::reason),
                    ])
                    .inc();
            }
            // A gRPC call goes to TF Serving's gRPC port on the backend's host, over HTTP/2
            // (h2c with prior knowledge, or ALPN h2 with TLS); a pool without one does not
            // speak gRPC, so it is never in such a plan.
            let grpc = ctx.req.api == crate::api::Api::TfServingGrpc;
            let addr = match pool.grpc_port.filter(|_| grpc) {
                Some(port) => std::net::SocketAddr::new(backend.addr.ip(), port),
                None => backend.addr,
            };
            let mut peer = match &pool.tls {
                None => HttpPeer::new(addr, false, String::new()),
                Some(tls) => {
                    // Pingora checks the certificate against the SNI name (and skips the check
                    // when there is none): a backend from a name is checked against that name,
                    // an IP backend against its IP.
                    let name = match (&tls.server_name, &backend.name) {
                        (Some(n), _) | (None, Some(n)) => n.clone(),
                        (None, None) => backend.addr.ip().to_string(),
                    };
                    let mut peer = HttpPeer::new(addr, true, name);
                    peer.options.ca = tls.ca.clone();
                    peer.client_cert_key = tls.client_cert.clone();
                    peer.options.verify_cert = tls.verify;
                    peer.options.verify_hostname = tls.verify;
                    peer
                }
            };
            if grpc {
                peer.options.alpn = pingora_core::protocols::ALPN::H2;
            }
            let t = &edge.timeouts;
            peer.options.connection_timeout = Some(t.connect.0);
            peer.options.total_connection_timeout = Some(t.connect.0);
            // The wait for the response head and the first body bytes (the first token); each
            // gap after that is bounded by `idle` (`Edge::upstream_body_read_timeout`). A
            // WebSocket tunnel has no tokens: one bound for every read, the larger.
            peer.options.read_timeout = Some(if ctx.req.upgrade {
                t.first_token.0.max(t.idle.0)
            } else {
                t.first_token.0
            });
            peer.options.write_timeout = Some(t.idle.0);
            peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
            return Ok(peer);
        }
        for b in 0..pool.backends.len() {
            if !pool.backends[b].eligible() || ctx.attempt.tried.contains(&(pi, b)) {
                continue;
            }
            if let Some(v) = edge.arbiter_refusal(ctx, pi, b) {
                if shed
                    .as_ref()
                    .is_none_or(|s| v.status.retry_after_secs < s.status.retry_after_secs)
                {
                    shed = Some(v);
                }
            }
        }
        if shed.is_some() {
            log::debug!(
                "pool {} is shedding for this request; trying the next pool of the plan",
                pool.name
            );
        }
        ctx.attempt.plan_pos += 1;
    }
    if let Some(v) = shed {
        let priority = Edge::priority(ctx);
        edge.metrics
            .shed
            .with_label_values(&[v.status.rule.as_str(), priority.as_str()])
            .inc();
        let retry_after = v.status.retry_after_secs.clamp(1, 3600);
        return Err(EdgeError {
            status: 503,
            message: format!(
                "the model servers are saturated ({} is {}: {}); retry in {retry_after} s",
                v.status.backend,
                v.status.state.as_str(),
                v.status.reason
            ),
            code: "overloaded",
            retry_after: Some(retry_after),
            close: false,
        });
    }
    // Nothing left anywhere in the plan.
    let first = ctx.attempt.plan.first().map(|&p| &edge.upstreams.pools[p]);
    let names: Vec<&str> = ctx
        .attempt
        .plan
        .iter()
        .map(|&p| edge.upstreams.pools[p].name.as_str())
        .collect();
    let retry_after = first.map(|p| p.retry_after_secs());
    let message = if ctx.attempt.made == 0 {
        format!(
            "no healthy backend in pool(s) {}; retry later",
            names.join(", ")
        )
    } else {
        format!(
            "all {} attempt(s) failed in pool(s) {}; retry later",
            ctx.attempt.made,
            names.join(", ")
        )
    };
    Err(EdgeError {
        status: 503,
        message,
        code: "no_backend",
        retry_after,
        close: false,
    })
}
