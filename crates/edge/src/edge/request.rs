//! `request_filter`: everything that can be refused is refused here, before any upstream work,
//! in an order that never buffers what it does not have to:
//!
//! 1. the head: `Host` present, a clean path, a real upgrade or none;
//! 2. the route its path, host and headers select, and what that route exposes ([`surface`]);
//! 3. header filters (`auth`, …): an unauthenticated body is never read;
//! 4. the body, up to the tenant's limit once the tenant is known, and its `"model"` ([`peek`]);
//! 5. the final route (a route may match on the model), the model requirement, body filters;
//! 6. the pools to try.
//!
//! [`surface`]: super::surface
//! [`peek`]: super::peek

use super::body::{self, BodyError};
use super::peek::{peek, PeekError};
use super::respond::EdgeError;
use super::surface::{models_retrieve_path, path_is_clean, Refusal};
use super::{ctx::RequestCtx, routes::RouteQuery, Edge};
use crate::api::Api;
use okome_filters::{FilterEffects, FilterRequest, Phase, Verdict};
use pingora_proxy::Session;

/// The request id header, to the engine and back to the client (vLLM takes it as its own request
/// id with `--enable-request-id-headers`).
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The client's `x-request-id` when it is a sane token (1–128 of `A-Za-z0-9._:-`), else a fresh
/// random one.
fn request_id(req: &pingora_http::RequestHeader) -> String {
    let sane = |v: &&str| {
        (1..=128).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    };
    match req
        .headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(sane)
    {
        Some(v) => v.to_owned(),
        None => {
            // 32 hex digits, without the formatting machinery.
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let n = rand::random::<u128>();
            (0..32)
                .rev()
                .map(|i| char::from(HEX[((n >> (i * 4)) & 0xf) as usize]))
                .collect()
        }
    }
}

/// What the request decided: go upstream, or the edge answers itself.
#[derive(Debug)]
pub enum Decision {
    /// Proxy it.
    Proxy,
    /// A resumable stream's resume or cancel, answered from this node's buffer.
    Stream(crate::resume::serve::Ask),
    /// Answer with this error.
    Refuse(EdgeError),
    /// Answer a models request (`GET /v1/models`, `/v1/models/{id}`) with this JSON body.
    ListModels(bytes::Bytes),
}

/// Records the client's W3C `traceparent` (it reaches the engine unchanged), or starts a trace
/// when `tracing.generate_traceparent` is on and the client sent none.
fn trace(edge: &Edge, req: &pingora_http::RequestHeader, effects: &mut FilterEffects) {
    use super::logging::{new_traceparent, trace_id_of, TRACE_ID_ATTRIBUTE};
    let sent = req.headers.get("traceparent").and_then(|v| v.to_str().ok());
    if let Some(id) = sent.and_then(trace_id_of) {
        effects.attributes.insert(TRACE_ID_ATTRIBUTE, id.to_owned());
    } else if edge.generate_traceparent {
        let tp = new_traceparent();
        if let (Some(id), Ok(v)) = (trace_id_of(&tp), http::HeaderValue::from_str(&tp)) {
            effects.attributes.insert(TRACE_ID_ATTRIBUTE, id.to_owned());
            effects
                .set_headers
                .push((http::HeaderName::from_static("traceparent"), v));
        }
    }
}

/// Whether a header's comma-separated tokens include `token` (case-insensitive).
fn has_token(req: &pingora_http::RequestHeader, name: http::HeaderName, token: &str) -> bool {
    req.headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the request head announces a body.
fn declares_body(req: &pingora_http::RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|n| n.trim() != "0"))
}

/// Makes a request that is not a real upgrade an ordinary one: drops `Upgrade` and the
/// `upgrade` token of `Connection`, so neither Pingora nor the engine treats it as one.
fn strip_upgrade(session: &mut Session) {
    let req = session.req_header_mut();
    req.remove_header(&http::header::UPGRADE);
    let kept: Vec<String> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("upgrade"))
        .map(str::to_owned)
        .collect();
    req.remove_header(&http::header::CONNECTION);
    if !kept.is_empty() {
        // Built from tokens of a valid header value, so it is one too.
        let _ = req.insert_header(http::header::CONNECTION, kept.join(", "));
    }
}

fn bad_request(code: &'static str, message: impl Into<String>) -> EdgeError {
    EdgeError::new(400, code, message).closing()
}

/// Whether `route` exposes `method path`: 404 for a path it does not expose, 405 for an exposed
/// path with another method.
fn check_surface(
    route: &super::routes::Route,
    api: Api,
    method: &http::Method,
    path: &str,
) -> Result<(), EdgeError> {
    route.surface.check(api, method, path).map_err(|r| match r {
        Refusal::Path => EdgeError::new(
            404,
            "endpoint_not_allowed",
            format!("{method} {path} is not exposed on route `{}`", route.name),
        ),
        Refusal::Method => EdgeError::new(
            405,
            "method_not_allowed",
            format!(
                "{method} is not allowed for {path} on route `{}`",
                route.name
            ),
        ),
    })
}

/// Runs the filters of `phase` of route `ri`; the first refusal ends the request.
async fn run_filters(
    edge: &Edge,
    session: &Session,
    ctx: &mut RequestCtx,
    ri: usize,
    phase: Phase,
) -> Result<(), EdgeError> {
    let route = &edge.routes.routes[ri];
    let req = session.req_header();
    let path = req.uri.path();
    for f in route.filters_of(phase) {
        let fr = FilterRequest {
            method: &req.method,
            path,
            headers: &req.headers,
            model: ctx.req.model.as_deref(),
            body_len: ctx.req.body.as_ref().map_or(0, |b| b.len()),
            route: &route.name,
            max_tokens: ctx.req.max_tokens,
        };
        if let Verdict::Reject(r) = f.on_request(&fr, &mut ctx.effects).await {
            log::debug!(
                "filter {} refused {} {path}: {}",
                f.name(),
                req.method,
                r.message
            );
            return Err(r.into());
        }
    }
    Ok(())
}

/// The body with `"model": model` set; `None` when it is not a JSON object.
fn with_model(body: &[u8], model: &str) -> Option<bytes::Bytes> {
    let mut obj: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    obj.insert("model".into(), serde_json::Value::String(model.to_owned()));
    serde_json::to_vec(&obj).ok().map(bytes::Bytes::from)
}

/// Runs the request phase.
pub async fn decide(edge: &Edge, session: &mut Session, ctx: &mut RequestCtx) -> Decision {
    match decide_inner(edge, session, ctx).await {
        Ok(d) => d,
        Err(e) => Decision::Refuse(e),
    }
}

/// Whether `GET /v1/models/{m}` is TF Serving's model status rather than OpenAI's
/// `models.retrieve`: a TF Serving pool serves `m`, or no OpenAI pool knows `m` while a TF
/// Serving pool takes any name (TF Serving cannot list its models: it answers for itself).
fn is_tf_model(up: &crate::upstream::Upstreams, m: &str) -> bool {
    use crate::config::PoolKind;
    let pools = &up.pools;
    pools
        .iter()
        .any(|p| p.kind == PoolKind::Tfserving && p.serves(m))
        || (pools.iter().any(|p| p.open_tf())
            && !pools
                .iter()
                .any(|p| p.kind != PoolKind::Tfserving && p.speaks(Api::OpenAi) && p.serves(m)))
}

async fn decide_inner(
    edge: &Edge,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Decision, EdgeError> {
    let req = session.req_header();
    let method = req.method.clone();
    let retrieve = models_retrieve_path(&method, req.uri.path());
    let path = retrieve
        .clone()
        .unwrap_or_else(|| req.uri.path().to_owned());
    ctx.req.api = if Api::is_grpc(&req.headers) {
        Api::TfServingGrpc
    } else {
        Api::classify(&path, |m| is_tf_model(&edge.upstreams, m))
    };
    ctx.req.request_id = request_id(req);
    trace(edge, req, &mut ctx.effects);
    ctx.req.peer = session
        .as_downstream()
        .client_addr()
        .and_then(|a| a.as_inet())
        .copied();
    if session
        .as_downstream()
        .digest()
        .is_some_and(|d| d.ssl_digest.is_some())
    {
        ctx.req.scheme = "https";
    }
    if let Some(peer) = ctx.req.peer {
        (ctx.req.client, ctx.req.proxied) =
            super::forwarded::resolve(req, peer, &edge.trusted_proxies);
    }

    // 1. The head. A new connection over its listener's cap, or a request past the edge's
    // concurrency limit: nothing more is done for it.
    if !ctx.connection_checked {
        ctx.connection_checked = true;
        let local = session
            .as_downstream()
            .server_addr()
            .and_then(|a| a.as_inet())
            .copied();
        match edge.connections.admit(local) {
            Ok(slot) => ctx.connection = slot,
            Err(full) => {
                return Err(EdgeError {
                    status: 503,
                    message: format!(
                        "this listener is at its limit of {} connections; retry in a second",
                        full.max
                    ),
                    code: "too_many_connections",
                    retry_after: Some(1),
                    close: true,
                })
            }
        }
    }
    if let Some(max) = edge.max_requests {
        if edge.drain.active() > max {
            return Err(EdgeError {
                status: 503,
                message: format!(
                    "this edge is at its limit of {max} concurrent requests; retry in a second"
                ),
                code: "edge_at_capacity",
                retry_after: Some(1),
                close: true,
            });
        }
    }
    let head_bytes = path.len()
        + req.uri.query().map_or(0, str::len)
        + req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head_bytes as u64 > edge.max_header_bytes {
        return Err(EdgeError::new(
            431,
            "request_header_too_large",
            format!(
                "the request head is {head_bytes} bytes; this edge takes at most {}",
                edge.max_header_bytes
            ),
        )
        .closing());
    }
    if req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST) {
        return Err(bad_request(
            "missing_host",
            "HTTP/1.1 requests need a Host header",
        ));
    }
    // A decoded `%2F` is only read as OpenAI's models.retrieve, which the edge answers itself;
    // TF Serving would read the encoded name differently from the edge.
    if !path_is_clean(&path) || (retrieve.is_some() && ctx.req.api != Api::OpenAi) {
        return Err(bad_request(
            "bad_path",
            "the request path has dot segments, empty segments or encoded separators",
        ));
    }
    let wants_upgrade = session.is_upgrade_req();
    let real_upgrade = wants_upgrade
        && method == http::Method::GET
        && has_token(req, http::header::CONNECTION, "upgrade");

    // 2. The route the head selects, and what it exposes.
    let host: Option<String> = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_owned());
    let host = host.as_deref();
    let q = RouteQuery {
        path: &path,
        host,
        headers: &req.headers,
        model: None,
    };
    let Some(head_route) = edge.routes.find_head(&q, ctx.req.api) else {
        return Err(EdgeError::new(
            404,
            "no_route",
            format!("no route for {method} {path}"),
        ));
    };
    let route = &edge.routes.routes[head_route];
    let upgrade = real_upgrade && route.surface.websocket;
    if upgrade {
        if declares_body(req) {
            return Err(bad_request(
                "upgrade_with_body",
                "an upgrade request carries no body",
            ));
        }
    } else {
        if wants_upgrade {
            // Not a real upgrade, or not on a WebSocket route: an ordinary request, checked whole.
            strip_upgrade(session);
        }
        // A resumable route exposes its streams' resources besides what `allow` says.
        let stream_resource =
            route.resumable.is_some() && crate::resume::serve::is_stream_path(&path);
        if !stream_resource {
            check_surface(route, ctx.req.api, &method, &path)?;
        }
    }
    ctx.req.route = Some(head_route);
    ctx.req.upgrade = upgrade;

    // 3. Header filters: who is asking, before anything is buffered for them; then the body
    // filters' early word (a tenant already at its stream limit).
    run_filters(edge, session, ctx, head_route, Phase::Headers).await?;
    // A resume or cancel is answered here, once the caller is known: it starts no request of
    // its own (no body, no admission).
    if edge.routes.routes[head_route].resumable.is_some() {
        let req = session.req_header();
        if let Some(ask) =
            crate::resume::serve::parse(&method, &path, req.uri.query(), &req.headers)
        {
            return ask.map(Decision::Stream);
        }
    }
    for f in edge.routes.routes[head_route].filters_of(Phase::Body) {
        if let Verdict::Reject(r) = f.precheck(&ctx.effects).await {
            return Err(r.into());
        }
    }

    // 4. The body, up to the edge's limit or the tenant's, whichever is smaller.
    // HTTP/2 needs no Content-Length: a request has a body unless its HEADERS ended the stream
    // (`curl --http2 -T -`, a gRPC call).
    let h2_body =
        session.as_downstream().is_http2() && !session.as_downstream_mut().is_body_empty();
    let req = session.req_header();
    if !upgrade && (declares_body(req) || h2_body || ctx.req.api == Api::TfServingGrpc) {
        let tenant_limit = ctx.effects.tenant.as_ref().and_then(|t| t.max_body_bytes);
        let limit = tenant_limit.map_or(edge.max_body, |t| t.min(edge.max_body));
        let deadline = edge.timeouts.client_body.0;
        let read = tokio::time::timeout(
            deadline,
            body::read_all(session, limit, ctx.req.api == Api::TfServingGrpc),
        )
        .await;
        let Ok(read) = read else {
            return Err(EdgeError::new(
                408,
                "request_timeout",
                format!("the request body did not arrive within {deadline:?}"),
            )
            .closing());
        };
        match read {
            Ok(b) => ctx.req.body = Some(b),
            Err(BodyError::TooLarge { limit }) => {
                let whose = if tenant_limit.is_some_and(|t| t <= edge.max_body) {
                    "your key's limit"
                } else {
                    "this edge's limit (limits.max_body)"
                };
                return Err(EdgeError::new(
                    413,
                    "request_too_large",
                    format!("request body is larger than {whose} of {limit} bytes"),
                )
                .closing());
            }
            Err(BodyError::LengthRequired) => {
                return Err(EdgeError::new(
                    411,
                    "length_required",
                    "chunked request bodies over 64 KiB need a Content-Length header",
                )
                .closing())
            }
            Err(e @ BodyError::Read(_)) => return Err(bad_request("bad_request", e.to_string())),
        }
    }
    match ctx.req.api {
        Api::TfServing => ctx.req.model = Api::tf_model(&path).map(str::to_owned),
        Api::TfServingGrpc => {
            let body = ctx.req.body.as_deref().unwrap_or_default();
            ctx.req.model = okome_engine::tfs_grpc::request_model(&path, body)
                .map_err(|e| EdgeError::new(400, "invalid_grpc_message", e.to_string()))?;
        }
        Api::OpenAi | Api::Ollama => {
            let p = peek(ctx.req.api, ctx.req.body.as_deref().unwrap_or_default()).map_err(
                |e| match e {
                    PeekError::Invalid(_) => EdgeError::new(400, "invalid_json", e.to_string()),
                    PeekError::Ambiguous(..) => {
                        EdgeError::new(400, "ambiguous_model", e.to_string())
                    }
                    PeekError::CaseVariant(..) => {
                        EdgeError::new(400, "ambiguous_key", e.to_string())
                    }
                },
            )?;
            ctx.req.model = p.model;
            ctx.req.wants_stream = p.wants_stream;
            ctx.req.max_tokens = p.max_tokens;
        }
    }

    // 5. The final route: a route may match on the model, which only the body tells.
    let req = session.req_header();
    let q = RouteQuery {
        path: &path,
        host,
        headers: &req.headers,
        model: ctx.req.model.as_deref(),
    };
    let Some(ri) = edge.routes.find(&q, ctx.req.api) else {
        return Err(EdgeError::new(
            404,
            "no_route",
            format!("no route for {method} {path}"),
        ));
    };
    if ri != head_route {
        let route = &edge.routes.routes[ri];
        if !upgrade {
            check_surface(route, ctx.req.api, &method, &path)?;
        }
        if route.header_specs != edge.routes.routes[head_route].header_specs {
            // This route authenticates differently: start over with its own header filters.
            ctx.effects = FilterEffects::default();
            trace(edge, session.req_header(), &mut ctx.effects);
            run_filters(edge, session, ctx, ri, Phase::Headers).await?;
        }
        ctx.req.route = Some(ri);
    }
    let route = &edge.routes.routes[ri];
    let listing = matches!(method, http::Method::GET | http::Method::HEAD);
    if ctx.req.model.is_none() && !listing && route.restricts_models() {
        let injected = route.default_model.as_ref().and_then(|m| {
            let b = with_model(ctx.req.body.as_deref().filter(|b| !b.is_empty())?, m)?;
            Some((m.clone(), b))
        });
        let Some((model, body)) = injected else {
            return Err(EdgeError::new(
                400,
                "model_required",
                format!(
                    "route `{}` only serves some models: name one in the request's \"model\"",
                    route.name
                ),
            ));
        };
        ctx.req.model = Some(model);
        ctx.req.body = Some(body);
    }
    run_filters(edge, session, ctx, ri, Phase::Body).await?;

    if super::listing::wanted(edge, ctx, &method, &path) {
        ctx.reply.listing = Some(Vec::new());
    }
    if ctx.req.api == Api::OpenAi && listing {
        let pools = route.reachable_pools(&edge.upstreams, ctx.req.api);
        // Behind a stream-node pool the models are the stream nodes' to list: ask them.
        let stream_nodes = pools
            .iter()
            .any(|&i| edge.upstreams.pools[i].kind == crate::config::PoolKind::Okome);
        if !stream_nodes && path == "/v1/models" {
            let effects = &ctx.effects;
            return Ok(Decision::ListModels(
                edge.models_list_body(&pools, |m| route.allows_model(m, effects)),
            ));
        }
        if let Some(id) = Api::openai_model_id(&path).filter(|_| !stream_nodes) {
            // OpenAI's models.retrieve: the model object when the caller may use it here.
            return match edge.model_object(&pools, id) {
                Some(body) if route.allows_model(id, &ctx.effects) => {
                    Ok(Decision::ListModels(body))
                }
                _ => Err(EdgeError::new(
                    404,
                    "model_not_found",
                    format!("The model `{id}` does not exist or you do not have access to it."),
                )),
            };
        }
    }

    // 6. The pools to try. The control plane's model route, when `policy` found one, decides.
    if let Some(mr) = ctx.effects.route.take() {
        let mut plan = Vec::with_capacity(1 + mr.fallback.len());
        for name in std::iter::once(&mr.pool).chain(mr.fallback.iter()) {
            match edge.upstreams.index(name) {
                // A model route names pools by model; a pool that does not speak the client's API
                // (an Ollama-native request and a vLLM pool, say) cannot serve it.
                Some(i) if !plan.contains(&i) && edge.upstreams.pools[i].speaks(ctx.req.api) => {
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
            ctx.attempt.plan = plan;
            return Ok(Decision::Proxy);
        }
    }

    match route.plan(&edge.upstreams, ctx.req.api, ctx.req.model.as_deref()) {
        Some(plan) => {
            ctx.attempt.plan = plan;
            Ok(Decision::Proxy)
        }
        None => {
            let m = ctx.req.model.as_deref().unwrap_or_default();
            Err(EdgeError::new(
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
