//! The route table: which requests go where, compiled from the config for the hot path.

use super::surface::Surface;
use crate::api::Api;
use crate::config::compile::CompiledRoute;
use crate::upstream::Upstreams;
use http::HeaderName;
use okome_filters::{Filter, FilterEnv, FilterSpec, Glob, Phase};

/// Where a route sends requests.
#[derive(Debug, Clone)]
pub enum Target {
    /// Always this pool.
    Pool(usize),
    /// The first of these pools that serves the request's model (empty: all pools that speak the API).
    ByModel(Vec<usize>),
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// Name for metrics and logs.
    pub name: String,
    matching: RouteMatch,
    /// Target pool or pools.
    pub target: Target,
    /// Pools tried, in order, when the target has no backend left.
    pub fallback: Vec<usize>,
    /// Filters, in order.
    pub filters: Vec<Box<dyn Filter>>,
    /// The specs of the header-phase filters, to tell whether two routes authenticate alike.
    pub header_specs: Vec<FilterSpec>,
    /// Methods and paths this route exposes.
    pub surface: Surface,
    /// Model for requests that name none on a model-restricted route.
    pub default_model: Option<String>,
    /// Continue streams on another backend when the engine dies mid-stream.
    pub mid_stream_failover: bool,
    /// Resumable streams' settings, when on.
    pub resumable: Option<crate::resume::Policy>,
    /// SSE keep-alive period, when on.
    pub keepalive: Option<std::time::Duration>,
    /// The APIs some pool of this route speaks (worked out once, not per request).
    apis: Vec<Api>,
}

/// A route's conditions; all present ones must hold.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// The path starts with this.
    pub path_prefix: Option<String>,
    /// The `Host` header equals this (port ignored, case-insensitive).
    pub host: Option<String>,
    /// Each header equals its value.
    pub headers: Vec<(HeaderName, String)>,
    /// The body's model matches this glob.
    pub model: Option<Glob>,
}

/// What a request looks like to route matching.
#[derive(Debug)]
pub struct RouteQuery<'a> {
    /// Request path.
    pub path: &'a str,
    /// Host header without the port.
    pub host: Option<&'a str>,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
    /// The body's model, if read.
    pub model: Option<&'a str>,
}

impl Route {
    /// Filters of one phase, in route order.
    pub fn filters_of(&self, phase: Phase) -> impl Iterator<Item = &dyn Filter> {
        self.filters
            .iter()
            .map(|f| f.as_ref())
            .filter(move |f| f.phase() == phase)
    }

    /// Whether a filter of this route limits which models may be used.
    pub fn restricts_models(&self) -> bool {
        self.filters.iter().any(|f| f.restricts_models())
    }

    /// Whether this route's filters let `model` through, given what the filters found so far.
    pub fn allows_model(&self, model: &str, effects: &okome_filters::FilterEffects) -> bool {
        self.filters.iter().all(|f| f.allows_model(model, effects))
    }

    /// Whether this route may send to pool `i` (its target or candidates — all pools when it picks
    /// by model among every pool — or a fallback).
    pub fn may_use_pool(&self, i: usize) -> bool {
        let target = match &self.target {
            Target::Pool(p) => *p == i,
            Target::ByModel(c) => c.is_empty() || c.contains(&i),
        };
        target || self.fallback.contains(&i)
    }

    /// Pools this route can send to: the target (or its candidates), then fallbacks.
    pub fn reachable_pools(&self, up: &Upstreams, api: Api) -> Vec<usize> {
        let mut out: Vec<usize> = match &self.target {
            Target::Pool(p) => vec![*p],
            Target::ByModel(c) if c.is_empty() => (0..up.pools.len())
                .filter(|&i| up.pools[i].speaks(api))
                .collect(),
            Target::ByModel(c) => c.clone(),
        };
        for f in &self.fallback {
            if !out.contains(f) {
                out.push(*f);
            }
        }
        out
    }

    /// Whether a pool this route sends to speaks `api` (a route to a TF Serving pool does not
    /// take an OpenAI request that happens to share its path prefix).
    pub fn speaks(&self, api: Api) -> bool {
        self.apis.contains(&api)
    }

    /// Whether the conditions other than the model hold: what can be known before the body.
    pub fn matches_head(&self, q: &RouteQuery<'_>) -> bool {
        let m = &self.matching;
        m.path_prefix
            .as_deref()
            .is_none_or(|p| q.path.starts_with(p))
            && m.host
                .as_deref()
                .is_none_or(|h| q.host.is_some_and(|qh| qh.eq_ignore_ascii_case(h)))
            && m.headers.iter().all(|(k, v)| {
                q.headers
                    .get(k)
                    .is_some_and(|hv| hv.as_bytes() == v.as_bytes())
            })
    }

    /// Whether all of this route's conditions hold.
    pub fn matches(&self, q: &RouteQuery<'_>) -> bool {
        self.matches_head(q)
            && self
                .matching
                .model
                .as_ref()
                .is_none_or(|g| q.model.is_some_and(|m| g.matches(m)))
    }

    /// Resolves the ordered list of pools to try for a request: target first, then fallbacks.
    /// `None` when the route picks by model and no pool serves it.
    pub fn plan(&self, up: &Upstreams, api: Api, model: Option<&str>) -> Option<Vec<usize>> {
        let mut plan = Vec::with_capacity(1 + self.fallback.len());
        match &self.target {
            // A TF Serving pool's model list restricts what its route relays.
            Target::Pool(p)
                if matches!(api, Api::TfServing | Api::TfServingGrpc)
                    && model.is_some_and(|m| !up.pools[*p].takes(m)) =>
            {
                return None
            }
            Target::Pool(p) => plan.push(*p),
            Target::ByModel(cands) => {
                let speaking: Vec<usize> = if cands.is_empty() {
                    (0..up.pools.len())
                        .filter(|&i| up.pools[i].speaks(api))
                        .collect()
                } else {
                    cands.clone()
                };
                match model {
                    Some(m) => {
                        plan.extend(speaking.iter().copied().filter(|&i| up.pools[i].takes(m)))
                    }
                    // No model (GET, WebSocket): the first candidate answers.
                    None => plan.extend(speaking.first().copied()),
                }
                if plan.is_empty() {
                    return None;
                }
            }
        }
        for f in &self.fallback {
            if !plan.contains(f) {
                plan.push(*f);
            }
        }
        Some(plan)
    }
}

/// All routes, in config order.
#[derive(Debug)]
pub struct RouteTable {
    /// Routes; the first match wins.
    pub routes: Vec<Route>,
}

impl RouteTable {
    /// Builds the routes of a compiled config over the edge's pools and policy: cannot fail,
    /// everything was checked by compile.
    pub fn new(compiled: &[CompiledRoute], up: &Upstreams, env: &FilterEnv) -> Self {
        let routes = compiled
            .iter()
            .map(|r| {
                let filters: Vec<Box<dyn Filter>> =
                    r.filters.iter().map(|f| f.build(env)).collect();
                let header_specs = r
                    .filters
                    .iter()
                    .zip(&filters)
                    .filter(|(_, built)| built.phase() == Phase::Headers)
                    .map(|(c, _)| c.spec().clone())
                    .collect();
                let mut route = Route {
                    name: r.name.clone(),
                    matching: r.matching.clone(),
                    target: r.target.clone(),
                    fallback: r.fallback.clone(),
                    filters,
                    header_specs,
                    surface: r.surface.clone(),
                    default_model: r.default_model.clone(),
                    mid_stream_failover: r.mid_stream_failover,
                    resumable: r.resumable,
                    keepalive: r.keepalive,
                    apis: Vec::new(),
                };
                route.apis = [Api::OpenAi, Api::Ollama, Api::TfServing, Api::TfServingGrpc]
                    .into_iter()
                    .filter(|&api| {
                        (0..up.pools.len())
                            .any(|i| route.may_use_pool(i) && up.pools[i].speaks(api))
                    })
                    .collect();
                route
            })
            .collect();
        RouteTable { routes }
    }

    /// The first route whose conditions other than the model hold (the route a request is
    /// authenticated on before its body is read).
    pub fn find_head(&self, q: &RouteQuery<'_>, api: Api) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.matches_head(q) && r.speaks(api))
    }

    /// The first route that matches and can send the request's API somewhere.
    pub fn find(&self, q: &RouteQuery<'_>, api: Api) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.matches(q) && r.speaks(api))
    }
}
