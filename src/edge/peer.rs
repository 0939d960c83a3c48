//! `upstream_peer`: the next backend for this attempt, walking the pool plan.

use super::respond::EdgeError;
use super::{ctx::RequestCtx, Edge};
use crate::upstream::select;
use pingora_core::upstreams::peer::HttpPeer;

/// Chooses the backend for the next attempt, or says why there is none.
pub fn next(edge: &Edge, ctx: &mut RequestCtx) -> Result<HttpPeer, EdgeError> {
    ctx.inflight = None;
    while let Some(&pi) = ctx.plan.get(ctx.plan_pos) {
        let pool = &edge.upstreams.pools[pi];
        let tried = &ctx.tried;
        if let Some(bi) = select::pick(&pool.backends, |b| tried.contains(&(pi, b))) {
            let backend = &pool.backends[bi];
            ctx.tried.push((pi, bi));
            ctx.current = Some((pi, bi));
            ctx.inflight = Some(backend.acquire());
            ctx.attempts += 1;
            if ctx.attempts > 1 {
                let route = ctx
                    .route
                    .map_or("", |r| edge.routes.routes[r].name.as_str());
                edge.metrics
                    .retries
                    .with_label_values(&[route, ctx.retry_reason.unwrap_or("other")])
                    .inc();
            }
            let mut peer = HttpPeer::new(backend.addr, false, String::new());
            let t = &edge.timeouts;
            peer.options.connection_timeout = Some(t.connect.0);
            peer.options.total_connection_timeout = Some(t.connect.0);
            // Pingora has one read timeout per attempt; it bounds the wait for the first token
            // and every gap after it, so it is the larger of the two.
            peer.options.read_timeout = Some(t.first_token.0.max(t.idle.0));
            peer.options.write_timeout = Some(t.idle.0);
            peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
            return Ok(peer);
        }
        ctx.plan_pos += 1;
    }
    // Nothing left anywhere in the plan.
    let first = ctx.plan.first().map(|&p| &edge.upstreams.pools[p]);
    let names: Vec<&str> = ctx
        .plan
        .iter()
        .map(|&p| edge.upstreams.pools[p].name.as_str())
        .collect();
    let retry_after = first.map(|p| p.retry_after_secs());
    let message = if ctx.attempts == 0 {
        format!(
            "no healthy backend in pool(s) {}; retry later",
            names.join(", ")
        )
    } else {
        format!(
            "all {} attempt(s) failed in pool(s) {}; retry later",
            ctx.attempts,
            names.join(", ")
        )
    };
    Err(EdgeError {
        status: 503,
        message,
        code: "no_backend",
        retry_after,
    })
}
