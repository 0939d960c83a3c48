//! The route table: which requests go where, compiled from the config for the hot path.

use super::surface::{AllowEntry, EndpointRule, Surface};
use crate::api::Api;
use crate::config::EdgeConfig;
use crate::upstream::Upstreams;
use http::HeaderName;
use okome_filters::{Filter, FilterSpec, Glob, Phase};

/// Where a route sends requests.
#[derive(Debug)]
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
    path_prefix: Option<String>,
    host: Option<String>,
    headers: Vec<(HeaderName, String)>,
    model: Option<Glob>,
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
    /// The APIs some pool of this route speaks (worked out once, not per request).
    apis: Vec<Api>,
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
        self.path_prefix
            .as_deref()
            .is_none_or(|p| q.path.starts_with(p))
            && self
                .host
                .as_deref()
                .is_none_or(|h| q.host.is_some_and(|qh| qh.eq_ignore_ascii_case(h)))
            && self.headers.iter().all(|(k, v)| {
                q.headers
                    .get(k)
                    .is_some_and(|hv| hv.as_bytes() == v.as_bytes())
            })
    }

    /// Whether all of this route's conditions hold.
    pub fn matches(&self, q: &RouteQuery<'_>) -> bool {
        self.matches_head(q)
            && self
                .model
                .as_ref()
                .is_none_or(|g| q.model.is_some_and(|m| g.matches(m)))
    }

    /// Resolves the ordered list of pools to try for a request: target first, then fallbacks.
    /// `None` when the route picks by model and no pool serves it.
    pub fn plan(&self, up: &Upstreams, api: Api, model: Option<&str>) -> Option<Vec<usize>> {
        let mut plan = Vec::with_capacity(1 + self.fallback.len());
        match &self.target {
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
                        plan.extend(speaking.iter().copied().filter(|&i| up.pools[i].serves(m)))
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
    /// Compiles the routes of a validated config. Fails (never drops a filter or a pool) when
    /// something cannot be built exactly as written.
    pub fn new(
        cfg: &EdgeConfig,
        up: &Upstreams,
        env: &okome_filters::FilterEnv,
    ) -> Result<Self, String> {
        let idx = |name: &str, what: &str, route: &str| {
            up.index(name)
                .ok_or_else(|| format!("route {route}: {what} names unknown pool {name:?}"))
        };
        let mut routes = Vec::with_capacity(cfg.routes.value.len());
        for r in &cfg.routes.value {
            let r = &r.value;
            let rn = r.name.value.as_str();
            let target = match &r.pool {
                Some(p) => Target::Pool(idx(&p.value, "pool", rn)?),
                None => Target::ByModel(
                    r.pools
                        .iter()
                        .map(|p| idx(&p.value, "pools", rn))
                        .collect::<Result<_, _>>()?,
                ),
            };
            let mut filters = Vec::with_capacity(r.filters.len());
            let mut header_specs = Vec::new();
            for f in &r.filters {
                let built = okome_filters::build(&f.value, env)
                    .map_err(|e| format!("route {rn}: filter {:?}: {e}", f.value))?;
                if built.phase() == Phase::Headers {
                    header_specs.push(f.value.clone());
                }
                filters.push(built);
            }
            let allow = r
                .allow
                .as_ref()
                .map(|rules| {
                    rules
                        .iter()
                        .map(|a| AllowEntry::parse(&a.value))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()
                .map_err(|e| format!("route {rn}: allow: {e}"))?;
            let deny = r
                .deny
                .iter()
                .map(|d| EndpointRule::parse(&d.value))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("route {rn}: deny: {e}"))?;
            let headers = r
                .matches
                .headers
                .iter()
                .map(|(k, v)| {
                    HeaderName::from_bytes(k.as_bytes())
                        .map(|h| (h, v.clone()))
                        .map_err(|_| format!("route {rn}: bad header name {k:?}"))
                })
                .collect::<Result<_, _>>()?;
            let mut route = Route {
                name: r.name.value.clone(),
                path_prefix: r.matches.path_prefix.clone(),
                host: r.matches.host.clone(),
                headers,
                model: r.matches.model.as_deref().map(Glob::new),
                target,
                fallback: r
                    .fallback
                    .iter()
                    .map(|p| idx(&p.value, "fallback", rn))
                    .collect::<Result<_, _>>()?,
                filters,
                header_specs,
                surface: Surface::new(allow, deny, r.websocket),
                default_model: r.default_model.as_ref().map(|m| m.value.clone()),
                apis: Vec::new(),
            };
            route.apis = [Api::OpenAi, Api::Ollama, Api::TfServing]
                .into_iter()
                .filter(|&api| {
                    (0..up.pools.len()).any(|i| route.may_use_pool(i) && up.pools[i].speaks(api))
                })
                .collect();
            routes.push(route);
        }
        Ok(RouteTable { routes })
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
