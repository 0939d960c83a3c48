//! The route table: which requests go where, compiled from the config for the hot path.

use crate::api::Api;
use crate::config::EdgeConfig;
use crate::upstream::Upstreams;
use http::HeaderName;
use okome_filters::{Filter, Glob};

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
    /// Whether all of this route's conditions hold.
    pub fn matches(&self, q: &RouteQuery<'_>) -> bool {
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
    /// Compiles the routes; the config was validated, so names resolve.
    pub fn new(cfg: &EdgeConfig, up: &Upstreams, env: &okome_filters::FilterEnv) -> Self {
        let idx = |name: &str| up.index(name);
        let routes = cfg
            .routes
            .value
            .iter()
            .map(|r| {
                let r = &r.value;
                let target = match &r.pool {
                    Some(p) => idx(&p.value).map_or(Target::ByModel(Vec::new()), Target::Pool),
                    None => Target::ByModel(r.pools.iter().filter_map(|p| idx(&p.value)).collect()),
                };
                Route {
                    name: r.name.value.clone(),
                    path_prefix: r.matches.path_prefix.clone(),
                    host: r.matches.host.clone(),
                    headers: r
                        .matches
                        .headers
                        .iter()
                        .filter_map(|(k, v)| {
                            Some((HeaderName::from_bytes(k.as_bytes()).ok()?, v.clone()))
                        })
                        .collect(),
                    model: r.matches.model.as_deref().map(Glob::new),
                    target,
                    fallback: r.fallback.iter().filter_map(|p| idx(&p.value)).collect(),
                    filters: r
                        .filters
                        .iter()
                        .filter_map(|f| match okome_filters::build(&f.value, env) {
                            Ok(f) => Some(f),
                            // Validation refuses configs where this can happen; say so if it does.
                            Err(e) => {
                                log::error!("route {}: filter dropped: {e}", r.name.value);
                                None
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        RouteTable { routes }
    }

    /// The first route that matches.
    pub fn find(&self, q: &RouteQuery<'_>) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(q))
    }
}
