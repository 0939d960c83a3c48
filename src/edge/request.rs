//! `request_filter`: decide the API, read the body, pick the route and its pool plan, run the
//! route's filters. Everything that can be refused is refused here, before any upstream work.

use super::body::{self, BodyError};
use super::respond::EdgeError;
use super::{ctx::RequestCtx, routes::RouteQuery, Edge};
use crate::api::Api;
use okome_filters::{FilterRequest, Verdict};
use pingora_proxy::Session;
use serde::Deserialize;
use std::borrow::Cow;

/// What the request decided: go upstream, or the edge answers itself.
#[derive(Debug)]
pub enum Decision {
    /// Proxy it.
    Proxy,
    /// Answer with this error.
    Refuse(EdgeError),
    /// Answer `GET /v1/models` from what the pools serve.
    ListModels,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    options: Option<PeekOptions>,
}

/// Ollama's generation options.
#[derive(Deserialize)]
struct PeekOptions {
    num_predict: Option<i64>,
}

/// Records the client's W3C `traceparent` (it reaches the engine unchanged), or starts a trace
/// when `tracing.generate_traceparent` is on and the client sent none.
fn trace(edge: &Edge, req: &pingora_http::RequestHeader, ctx: &mut RequestCtx) {
    use super::logging::{new_traceparent, trace_id_of, TRACE_ID_ATTRIBUTE};
    let sent = req.headers.get("traceparent").and_then(|v| v.to_str().ok());
    if let Some(id) = sent.and_then(trace_id_of) {
        ctx.effects
            .attributes
            .insert(TRACE_ID_ATTRIBUTE, id.to_owned());
    } else if edge.generate_traceparent {
        let tp = new_traceparent();
        if let (Some(id), Ok(v)) = (trace_id_of(&tp), http::HeaderValue::from_str(&tp)) {
            ctx.effects
                .attributes
                .insert(TRACE_ID_ATTRIBUTE, id.to_owned());
            ctx.effects
                .set_headers
                .push((http::HeaderName::from_static("traceparent"), v));
        }
    }
}

/// Runs the request phase.
pub async fn decide(edge: &Edge, session: &mut Session, ctx: &mut RequestCtx) -> Decision {
    let req = session.req_header();
    let path = req.uri.path().to_owned();
    ctx.api = Api::from_path(&path);
    let method = req.method.clone();
    trace(edge, req, ctx);

    if method == http::Method::GET && path == "/v1/models" {
        return Decision::ListModels;
    }

    let is_upgrade = session.is_upgrade_req();
    if method == http::Method::POST && !is_upgrade {
        match body::read_all(session, edge.max_body).await {
            Ok(b) => ctx.body = Some(b),
            Err(BodyError::TooLarge { limit }) => {
                return Decision::Refuse(EdgeError::new(
                    413,
                    "request_too_large",
                    format!("request body is larger than this edge's limit of {limit} bytes (limits.max_body)"),
                ))
            }
            Err(BodyError::LengthRequired) => {
                return Decision::Refuse(EdgeError::new(
                    411,
                    "length_required",
                    "chunked request bodies over 64 KiB need a Content-Length header",
                ))
            }
            Err(e @ BodyError::Read(_)) => return Decision::Refuse(EdgeError::new(400, "bad_request", e.to_string())),
        }
    }

    match ctx.api {
        Api::TfServing => ctx.model = Api::tf_model(&path).map(str::to_owned),
        Api::OpenAi | Api::Ollama => {
            if let Some(b) = ctx.body.as_ref().filter(|b| !b.is_empty()) {
                match serde_json::from_slice::<Peek<'_>>(b) {
                    Ok(p) => {
                        ctx.max_tokens = p
                            .max_completion_tokens
                            .or(p.max_tokens)
                            // Ollama's -1/-2 mean "until done"/"fill the context": no number to reserve.
                            .or(p
                                .options
                                .and_then(|o| o.num_predict)
                                .and_then(|n| u64::try_from(n).ok()));
                        ctx.model = p.model.map(Cow::into_owned);
                        // Ollama streams unless told not to; OpenAI only when asked.
                        ctx.wants_stream = p.stream.unwrap_or(ctx.api == Api::Ollama);
                    }
                    Err(e) => {
                        return Decision::Refuse(EdgeError::new(
                            400,
                            "invalid_json",
                            format!("the request body is not valid JSON: {e}"),
                        ))
                    }
                }
            }
        }
    }

    let req = session.req_header();
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name));
    let q = RouteQuery {
        path: &path,
        host,
        headers: &req.headers,
        model: ctx.model.as_deref(),
    };
    let Some(ri) = edge.routes.find(&q) else {
        return Decision::Refuse(EdgeError::new(
            404,
            "no_route",
            format!("no route for {method} {path}"),
        ));
    };
    ctx.route = Some(ri);
    let route = &edge.routes.routes[ri];

    for f in &route.filters {
        let fr = FilterRequest {
            method: &method,
            path: &path,
            headers: &session.req_header().headers,
            model: ctx.model.as_deref(),
            body_len: ctx.body.as_ref().map_or(0, |b| b.len()),
            route: &route.name,
            max_tokens: ctx.max_tokens,
        };
        if let Verdict::Reject(r) = f.on_request(&fr, &mut ctx.effects).await {
            log::debug!("filter {} refused {method} {path}: {}", f.name(), r.message);
            return Decision::Refuse(EdgeError {
                status: r.status.as_u16(),
                message: r.message,
                code: r.code,
                retry_after: r.retry_after,
            });
        }
    }

    // The control plane's model route, when the `policy` filter found one, decides the pools.
    if let Some(mr) = ctx.effects.route.take() {
        let mut plan = Vec::with_capacity(1 + mr.fallback.len());
        for name in std::iter::once(&mr.pool).chain(mr.fallback.iter()) {
            match edge.upstreams.index(name) {
                // A model route names pools by model; a pool that does not speak the client's API
                // (an Ollama-native request and a vLLM pool, say) cannot serve it.
                Some(i) if !plan.contains(&i) && edge.upstreams.pools[i].speaks(ctx.api) => {
                    plan.push(i)
                }
                Some(_) => {}
                None => log::warn!(
                    "model route for {:?} names pool {name:?}, which this edge does not have",
                    mr.model
                ),
            }
        }
        if !plan.is_empty() {
            ctx.plan = plan;
            return Decision::Proxy;
        }
    }

    match route.plan(&edge.upstreams, ctx.api, ctx.model.as_deref()) {
        Some(plan) => {
            ctx.plan = plan;
            Decision::Proxy
        }
        None => {
            let m = ctx.model.as_deref().unwrap_or_default();
            Decision::Refuse(EdgeError::new(
                404,
                "model_not_found",
                format!(
                    "The model `{m}` does not exist. Models served here: {}",
                    edge.known_models().join(", ")
                ),
            ))
        }
    }
}
