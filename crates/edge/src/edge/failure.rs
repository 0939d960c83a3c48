//! Failure phases: each failure is described to the retry core ([`super::retry`]), which decides;
//! this file says what the client gets when a request fails. After the first byte, an upstream
//! failure ends the stream with a terminal error in the stream's own format.

use super::respond::{self, EdgeError};
use super::retry::Failure;
use super::{ctx::RequestCtx, Edge};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::{FailToProxy, Session};

/// `fail_to_connect`: the backend could not be reached; eject it and try another.
pub fn on_connect_error(
    edge: &Edge,
    session: &Session,
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
) -> Box<Error> {
    if let Some((pi, bi)) = ctx.attempt.current {
        let pool = &edge.upstreams.pools[pi];
        // A refused or timed-out connect is definitive: stop sending traffic there at once.
        pool.backends[bi].record_failure(
            &pool.ejection,
            &format!("connect: {}", e.etype().as_str()),
            true,
        );
    }
    let retry =
        edge.retry_after_failure(ctx, Failure::Connect, session.response_written().is_some());
    e.set_retry(retry);
    e
}

/// `error_while_proxy`: the connection broke before or during the response.
pub fn on_proxy_error(
    edge: &Edge,
    peer: &HttpPeer,
    session: &Session,
    ctx: &mut RequestCtx,
    e: Box<Error>,
) -> Box<Error> {
    let mut e = e.more_context(format!(
        "backend {}",
        pingora_core::upstreams::peer::Peer::address(peer)
    ));
    // The client went away, or the edge ended a resumable stream (cancel, grace window over):
    // not the backend's fault.
    if *e.esource() == ErrorSource::Downstream || crate::resume::stream::is_release(&e) {
        e.set_retry(false);
        return e;
    }
    // Our own retry signal (a 502/503 answer) was decided in `upstream_response_filter`.
    if matches!(e.etype(), ErrorType::HTTPStatus(_)) {
        return e;
    }
    if let Some((pi, bi)) = ctx.attempt.current {
        let pool = &edge.upstreams.pools[pi];
        pool.backends[bi].record_failure(&pool.ejection, e.etype().as_str(), false);
    }
    let retry =
        edge.retry_after_failure(ctx, Failure::Upstream, session.response_written().is_some());
    e.set_retry(retry);
    e
}

/// `fail_to_proxy`: answer the client in its API's shape, or end a started stream cleanly.
pub async fn on_fail(
    edge: &Edge,
    session: &mut Session,
    e: &Error,
    ctx: &mut RequestCtx,
) -> FailToProxy {
    if session.response_written().is_some() {
        // Mid-stream: the status line is gone; end the stream in its own framing.
        let shutdown = super::drain::is_shutdown(e);
        let released = crate::resume::stream::is_release(e);
        if *e.esource() != ErrorSource::Downstream
            && !shutdown
            && !released
            && !crate::resume::stream::detached(ctx)
            && crate::failover::on_fail(edge, session, e, ctx).await == crate::failover::Ended::Done
        {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        if *e.esource() != ErrorSource::Downstream {
            let msg = if shutdown {
                "the edge is shutting down; retry the request".to_owned()
            } else if released {
                crate::resume::stream::release_message(e).to_owned()
            } else if is_timeout(e) {
                "the model server stopped sending tokens (idle timeout)".to_owned()
            } else {
                format!("the model server failed mid-stream: {}", e.etype().as_str())
            };
            if let Some(tap) = ctx.stream.tap.as_ref() {
                let mut bytes = tap.terminal_error(&msg);
                // A resumable stream keeps its end too, so a resume reads how it ended.
                crate::resume::stream::pass(&edge.streams, &mut bytes, true, ctx);
                if bytes.is_some() && !crate::resume::stream::detached(ctx) {
                    let _ = session.write_response_body(bytes, true).await;
                }
            }
        }
        return FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        };
    }
    if *e.esource() == ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
        )
    {
        return FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        };
    }
    let err = classify(edge, e, ctx);
    let code = respond::error(session, ctx, &err).await;
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout
    )
}

fn classify(edge: &Edge, e: &Error, ctx: &RequestCtx) -> EdgeError {
    if let Some(own) = e.cause.as_ref().and_then(|c| c.downcast_ref::<EdgeError>()) {
        return own.clone();
    }
    let tries = ctx.attempt.made;
    match e.etype() {
        ErrorType::HTTPStatus(s) => EdgeError::new(
            *s,
            "upstream_error",
            format!("the model server answered {s} after {tries} attempt(s)"),
        ),
        ErrorType::ReadTimedout => EdgeError::new(
            504,
            "timeout",
            "the model server did not produce a first token in time",
        ),
        // Every backend the plan allowed was unreachable: the pool is down as far as this
        // request can tell. 503 + Retry-After lets clients back off instead of hammering.
        t @ (ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError) => EdgeError {
            status: 503,
            message: format!(
                "no model server could be reached ({tries} attempt(s), last: {}); retry later",
                t.as_str()
            ),
            code: "no_backend",
            retry_after: ctx
                .attempt
                .plan
                .first()
                .map(|&p| edge.upstreams.pools[p].retry_after_secs()),
            close: false,
        },
        t if *e.esource() == ErrorSource::Upstream => EdgeError::new(
            502,
            "upstream_unreachable",
            format!(
                "no model server could be reached ({tries} attempt(s)): {}",
                t.as_str()
            ),
        ),
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::InvalidH2 => {
            EdgeError::new(400, "bad_request", "malformed HTTP request")
        }
        t => EdgeError::new(
            500,
            "internal_error",
            format!("internal error: {}", t.as_str()),
        ),
    }
}

impl std::fmt::Display for EdgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for EdgeError {}
