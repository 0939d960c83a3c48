//! Compiles a parsed edge config into the typed values the edge runs on ([`CompiledEdge`]),
//! checking everything on the way: each problem names the line and key it is about. Nothing is
//! dropped or guessed: once this succeeds, building pools and routes cannot fail.

use super::secret::{SecretError, SecretSource};
use super::{
    AccessLogSection, ArbiterSection, Control, EdgeConfig, Ejection, HealthCheck, PoolKind, Retry,
    Secret, Timeouts, Tracing,
};
use crate::edge::routes::{RouteMatch, Target};
use crate::edge::surface::{AllowEntry, EndpointRule, Surface};
use crate::upstream::hash::KeySource;
use okome_filters::{CompiledFilter, FilterSpec, Glob};
use serde_saphyr::Spanned;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

/// The most attempts a request may make (`retry.max_attempts`).
pub const MAX_ATTEMPTS: u32 = 16;

/// An edge config with every value checked and parsed: what the edge is built from, and what a
/// reload will swap.
#[derive(Debug)]
pub struct CompiledEdge {
    /// Client listeners.
    pub listeners: Vec<SocketAddr>,
    /// Connection caps of the listeners that have one.
    pub max_connections: Vec<(SocketAddr, usize)>,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Proxy worker threads (`None`: one per core).
    pub threads: Option<usize>,
    /// How long running streams may go on after SIGTERM.
    pub grace_period: Duration,
    /// Where a new process takes the listeners over (`okome edge --upgrade`).
    pub upgrade_sock: std::path::PathBuf,
    /// Reload when the file changes.
    pub watch_config: bool,
    /// Largest request body routed on its model.
    pub max_body: u64,
    /// Largest request head.
    pub max_header_bytes: u64,
    /// Requests run at once (`None`: no limit).
    pub max_requests: Option<u64>,
    /// Upstream timeouts (each at least 1 ms).
    pub timeouts: Timeouts,
    /// Retry settings (at least one attempt, a budget ratio in 0..=1).
    pub retry: Retry,
    /// Pools, in name order; routes refer to them by index.
    pub pools: Vec<CompiledPool>,
    /// Routes, in config order.
    pub routes: Vec<CompiledRoute>,
    /// The control plane, with its token read.
    pub control: Option<CompiledControl>,
    /// The arbiters.
    pub arbiter: Option<ArbiterSection>,
    /// Tracing.
    pub tracing: Tracing,
    /// The access log.
    pub access_log: AccessLogSection,
    /// Peers whose `X-Forwarded-For` is believed (`trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Things that work but an operator should know about (printed by `okome check`, logged at
    /// start), each with its line.
    pub warnings: Vec<String>,
}

/// A pool with its addresses parsed and its key read.
#[derive(Debug)]
pub struct CompiledPool {
    /// Name from the config.
    pub name: String,
    /// Engine kind.
    pub kind: PoolKind,
    /// Backend addresses, in config order, no duplicates.
    pub backends: Vec<SocketAddr>,
    /// Models named in the config.
    pub models: Vec<String>,
    /// Health check settings.
    pub health: HealthCheck,
    /// Passive ejection settings.
    pub ejection: Ejection,
    /// `Authorization: Bearer …` from the pool's `api_key`.
    pub auth: Option<http::HeaderValue>,
    /// The port probes go to on each backend's host (`None`: the backend's own port).
    pub probe_port: Option<u16>,
    /// Sticky key sources in order (`sticky.key`); empty: no stickiness.
    pub sticky: Vec<KeySource>,
}

/// The admin port an `okome` pool's backends are probed on by default (`admin.address`'s
/// default port).
pub const OKOME_ADMIN_PORT: u16 = 9090;

/// A route with pools resolved to indices, rules parsed and filters compiled.
#[derive(Debug)]
pub struct CompiledRoute {
    /// Name for metrics and logs.
    pub name: String,
    /// Conditions on the request.
    pub matching: RouteMatch,
    /// Target pool or candidates.
    pub target: Target,
    /// Fallback pools, in order.
    pub fallback: Vec<usize>,
    /// Filters in route order; tenant-aware ones only behind `auth` on an edge with a control
    /// plane.
    pub filters: Vec<CompiledFilter>,
    /// Methods and paths exposed.
    pub surface: Surface,
    /// Model for requests that name none on a model-restricted route.
    pub default_model: Option<String>,
}

/// The control plane section with its token read.
#[derive(Debug, PartialEq)]
pub struct CompiledControl {
    /// The section as written.
    pub config: Control,
    /// The token presented to the control plane.
    pub token: Option<Secret>,
}

/// One thing wrong with a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the file.
    pub line: u64,
    /// Dotted path of the key, e.g. `routes[1].fallback[0]`.
    pub key: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

fn push(out: &mut Vec<Problem>, line: u64, key: String, message: String) {
    out.push(Problem { line, key, message });
}

fn at<T>(s: &Spanned<T>) -> u64 {
    s.referenced.line()
}

/// Reads a secret the config names (normally [`SecretSource::load`] relative to the config's
/// folder; the fuzzer's reads nothing).
pub type ReadSecret<'a> = &'a dyn Fn(&SecretSource) -> Result<Secret, SecretError>;

/// Compiles a parsed config: checks every value, reads the secrets it names with `read_secret`
/// and returns the typed config, or every problem found.
pub fn compile(
    cfg: &EdgeConfig,
    read_secret: ReadSecret<'_>,
) -> Result<CompiledEdge, Vec<Problem>> {
    let mut out = Vec::new();

    if let Some(k) = cfg
        .kind
        .as_ref()
        .filter(|k| k.value != super::FileKind::Edge)
    {
        push(
            &mut out,
            at(k),
            "kind".into(),
            format!("this is an edge config, not `{}`", k.value.as_str()),
        );
    }
    if cfg.listeners.value.is_empty() {
        push(
            &mut out,
            at(&cfg.listeners),
            "listeners".into(),
            "at least one listener is needed, e.g. `- address: 0.0.0.0:8080`".into(),
        );
    }
    if cfg.retry.value.max_attempts == 0 {
        push(
            &mut out,
            at(&cfg.retry),
            "retry.max_attempts".into(),
            "must be at least 1 (1 means no retry)".into(),
        );
    }
    if cfg.retry.value.max_attempts > MAX_ATTEMPTS {
        push(
            &mut out,
            at(&cfg.retry),
            "retry.max_attempts".into(),
            format!(
                "{} attempts would multiply a brown-out; at most {MAX_ATTEMPTS}",
                cfg.retry.value.max_attempts
            ),
        );
    }
    let ratio = cfg.retry.value.budget_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        push(
            &mut out,
            at(&cfg.retry),
            "retry.budget_ratio".into(),
            format!("{ratio} is not a fraction of requests between 0 and 1"),
        );
    }
    if cfg
        .listeners
        .value
        .iter()
        .any(|l| l.max_connections == Some(0))
    {
        push(
            &mut out,
            at(&cfg.listeners),
            "listeners.max_connections".into(),
            "0 would refuse every connection; leave it out for no limit".into(),
        );
    }
    if cfg.limits.value.max_requests == Some(0) {
        push(
            &mut out,
            at(&cfg.limits),
            "limits.max_requests".into(),
            "0 would refuse every request; leave it out for no limit".into(),
        );
    }
    if cfg.limits.value.max_header_bytes.0 < 1024 {
        push(
            &mut out,
            at(&cfg.limits),
            "limits.max_header_bytes".into(),
            "must be at least 1KiB (a browser's request head alone is larger)".into(),
        );
    }
    if cfg.limits.value.max_body.0 == 0 {
        push(
            &mut out,
            at(&cfg.limits),
            "limits.max_body".into(),
            "must be larger than 0".into(),
        );
    }
    if cfg.server.value.threads == Some(0) {
        push(
            &mut out,
            at(&cfg.server),
            "server.threads".into(),
            "must be at least 1".into(),
        );
    }
    let t = &cfg.timeouts.value;
    for (key, d) in [
        ("connect", t.connect),
        ("first_token", t.first_token),
        ("idle", t.idle),
        ("client_head", t.client_head),
        ("client_write", t.client_write),
        ("client_body", t.client_body),
    ] {
        if d.0 < std::time::Duration::from_millis(1) {
            push(
                &mut out,
                at(&cfg.timeouts),
                format!("timeouts.{key}"),
                format!("{d} would end every request at once: give it a length, e.g. 30s"),
            );
        }
    }
    if cfg.pools.value.is_empty() {
        push(
            &mut out,
            at(&cfg.pools),
            "pools".into(),
            "at least one pool is needed".into(),
        );
    }

    let pools: Vec<CompiledPool> = cfg
        .pools
        .value
        .iter()
        .map(|(name, pool)| compile_pool(name, pool, read_secret, &mut out))
        .collect();
    let has_control = cfg.control.is_some();
    let mut route_names = HashSet::new();
    let mut routes = Vec::with_capacity(cfg.routes.value.len());
    for (i, route) in cfg.routes.value.iter().enumerate() {
        let key = format!("routes[{i}]");
        let name = &route.value.name;
        if !route_names.insert(name.value.as_str()) {
            push(
                &mut out,
                at(name),
                format!("{key}.name"),
                format!("route name {:?} is used twice", name.value),
            );
        }
        if let Some(r) = compile_route(cfg, route, &key, has_control, &mut out) {
            routes.push(r);
        }
    }
    if cfg.routes.value.is_empty() {
        push(
            &mut out,
            at(&cfg.routes),
            "routes".into(),
            "at least one route is needed".into(),
        );
    }
    let control = cfg
        .control
        .as_ref()
        .map(|c| compile_control(c, read_secret, &mut out));
    if let Some(a) = &cfg.arbiter {
        if a.value.addresses.is_empty() {
            push(
                &mut out,
                at(a),
                "arbiter.addresses".into(),
                "name at least one arbiter `IP:PORT`".into(),
            );
        }
        if a.value.max_age.0 < Duration::from_millis(200) {
            push(
                &mut out,
                at(a),
                "arbiter.max_age".into(),
                format!(
                    "{} is too short to confirm state by long-poll (min 200ms)",
                    a.value.max_age
                ),
            );
        }
    }
    let trusted_proxies = compile_trusted_proxies(cfg, &mut out);
    if !out.is_empty() {
        return Err(out);
    }
    Ok(CompiledEdge {
        listeners: cfg.listeners.value.iter().map(|l| l.address).collect(),
        max_connections: cfg
            .listeners
            .value
            .iter()
            .filter_map(|l| Some((l.address, l.max_connections?)))
            .collect(),
        admin: cfg.admin.address,
        threads: cfg.server.value.threads,
        grace_period: cfg.server.value.grace_period.0,
        upgrade_sock: cfg.server.value.upgrade_sock.clone(),
        watch_config: cfg.server.value.watch_config,
        max_body: cfg.limits.value.max_body.0,
        max_header_bytes: cfg.limits.value.max_header_bytes.0,
        max_requests: cfg.limits.value.max_requests,
        timeouts: cfg.timeouts.value,
        retry: cfg.retry.value,
        pools,
        routes,
        control,
        arbiter: cfg.arbiter.as_ref().map(|a| a.value.clone()),
        tracing: cfg.tracing,
        access_log: cfg.access_log.clone(),
        trusted_proxies,
        warnings: warnings(cfg),
    })
}

/// Things that work but an operator should know about.
fn warnings(cfg: &EdgeConfig) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(c) = &cfg.control {
        if c.value.token.is_none() {
            w.push(format!(
                "line {}: control.token is not set: the control plane's API (tenants, limits, key lookups) \
                 must then be open to anyone who can reach it; set `api_token` there and `token` here",
                at(c)
            ));
        }
    }
    w
}

/// Parses `trusted_proxies`: CIDRs (`10.77.0.0/24`) or single addresses (`10.77.0.5`).
fn compile_trusted_proxies(cfg: &EdgeConfig, out: &mut Vec<Problem>) -> Vec<ipnet::IpNet> {
    let mut nets = Vec::with_capacity(cfg.trusted_proxies.len());
    for (i, t) in cfg.trusted_proxies.iter().enumerate() {
        let v = t.value.trim();
        let parsed = v
            .parse::<ipnet::IpNet>()
            .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            // `10.77.0.9/24` is most likely a typo for the network: say so instead of guessing.
            Ok(net) if net.trunc() != net => push(
                out,
                at(t),
                format!("trusted_proxies[{i}]"),
                format!("{v} has host bits set: did you mean {}?", net.trunc()),
            ),
            Ok(net) => nets.push(net),
            Err(_) => push(
                out,
                at(t),
                format!("trusted_proxies[{i}]"),
                format!("{v:?} is not a CIDR like 10.77.0.0/24 or an IP address"),
            ),
        }
    }
    nets
}

fn compile_control(
    c: &Spanned<Control>,
    read_secret: ReadSecret<'_>,
    out: &mut Vec<Problem>,
) -> CompiledControl {
    if c.value.negative_ttl > c.value.key_ttl {
        push(
            out,
            at(c),
            "control.negative_ttl".into(),
            format!(
                "{} is longer than key_ttl {}",
                c.value.negative_ttl, c.value.key_ttl
            ),
        );
    }
    let token = c.value.token.as_ref().and_then(|src| {
        read_secret(src)
            .map_err(|e| push(out, at(c), "control.token".into(), e.to_string()))
            .ok()
    });
    CompiledControl {
        config: c.value.clone(),
        token,
    }
}

fn compile_pool(
    name: &str,
    pool: &Spanned<super::Pool>,
    read_secret: ReadSecret<'_>,
    out: &mut Vec<Problem>,
) -> CompiledPool {
    let key = format!("pools.{name}");
    let p = &pool.value;
    if p.backends.is_empty() {
        push(
            out,
            at(pool),
            format!("{key}.backends"),
            "a pool needs at least one backend `IP:PORT`".into(),
        );
    }
    let mut backends = Vec::with_capacity(p.backends.len());
    for (i, b) in p.backends.iter().enumerate() {
        match b.value.parse::<SocketAddr>() {
            Ok(addr) if backends.contains(&addr) => push(
                out,
                at(b),
                format!("{key}.backends[{i}]"),
                format!("backend {addr} is listed twice"),
            ),
            Ok(addr) => backends.push(addr),
            Err(_) => push(
                out,
                at(b),
                format!("{key}.backends[{i}]"),
                format!(
                    "bad address {:?}: expected IP:PORT like 127.0.0.1:8000",
                    b.value
                ),
            ),
        }
    }
    let hc = &p.health_check;
    if hc.timeout > hc.interval {
        push(
            out,
            at(pool),
            format!("{key}.health_check.timeout"),
            format!(
                "timeout {} is longer than the interval {}",
                hc.timeout, hc.interval
            ),
        );
    }
    if hc.unhealthy_after == 0 || hc.healthy_after == 0 {
        push(
            out,
            at(pool),
            format!("{key}.health_check"),
            "unhealthy_after and healthy_after must be at least 1".into(),
        );
    }
    if let Some(path) = &hc.path {
        if !path.starts_with('/') {
            push(
                out,
                at(pool),
                format!("{key}.health_check.path"),
                format!("path {path:?} must start with '/'"),
            );
        }
    }
    if hc.port == Some(0) {
        push(
            out,
            at(pool),
            format!("{key}.health_check.port"),
            "port 0 cannot be probed; leave it out to probe the backend's own port".into(),
        );
    }
    let sticky = compile_sticky(&key, p, out);
    if p.kind == PoolKind::Okome && p.api_key.is_some() {
        push(
            out,
            at(pool),
            format!("{key}.api_key"),
            "an okome pool passes each client's own key on to the stream node (which \
             authenticates it); a pool key would replace it: remove `api_key`"
                .into(),
        );
    }
    if p.kind == PoolKind::Tfserving && p.models.is_empty() && hc.path.is_none() {
        push(
            out,
            at(pool),
            format!("{key}.models"),
            "a tfserving pool must list its models (TF Serving has no model listing API)".into(),
        );
    }
    let auth = p.api_key.as_ref().and_then(|src| {
        read_secret(src)
            .map(|s| s.bearer())
            .map_err(|e| push(out, at(pool), format!("{key}.api_key"), e.to_string()))
            .ok()
    });
    CompiledPool {
        name: name.to_owned(),
        kind: p.kind,
        backends,
        models: p.models.clone(),
        health: hc.clone(),
        ejection: p.ejection,
        auth,
        probe_port: hc
            .port
            .or((p.kind == PoolKind::Okome).then_some(OKOME_ADMIN_PORT)),
        sticky,
    }
}

/// Parses a pool's `sticky.key`: at least one source, each one known.
fn compile_sticky(key: &str, p: &super::Pool, out: &mut Vec<Problem>) -> Vec<KeySource> {
    let Some(st) = &p.sticky else {
        return Vec::new();
    };
    if st.value.key.is_empty() {
        push(
            out,
            at(st),
            format!("{key}.sticky.key"),
            "name at least one key source, e.g. [header:x-conversation-id, api_key]; \
             leave `sticky` out for least-loaded picks"
                .into(),
        );
    }
    let mut sources = Vec::with_capacity(st.value.key.len());
    for (i, s) in st.value.key.iter().enumerate() {
        match KeySource::parse(&s.value) {
            Ok(src) if sources.contains(&src) => push(
                out,
                at(s),
                format!("{key}.sticky.key[{i}]"),
                format!("{:?} is listed twice", s.value),
            ),
            Ok(src) => sources.push(src),
            Err(e) => push(out, at(s), format!("{key}.sticky.key[{i}]"), e.to_string()),
        }
    }
    sources
}

/// Compiles one route; `None` when it has problems (all pushed to `out`).
fn compile_route(
    cfg: &EdgeConfig,
    route: &Spanned<super::Route>,
    key: &str,
    has_control: bool,
    out: &mut Vec<Problem>,
) -> Option<CompiledRoute> {
    let before = out.len();
    let r = &route.value;
    // Pools are kept in name order, so a pool's index is its position among the names.
    let index = |p: &Spanned<String>, k: String, out: &mut Vec<Problem>| {
        let found = cfg.pools.value.keys().position(|n| *n == p.value);
        if found.is_none() {
            let known: Vec<&str> = cfg.pools.value.keys().map(String::as_str).collect();
            push(
                out,
                at(p),
                k,
                format!("unknown pool {:?} (pools: {})", p.value, known.join(", ")),
            );
        }
        found
    };
    let target = match &r.pool {
        Some(p) => {
            if !r.pools.is_empty() {
                push(
                    out,
                    at(p),
                    format!("{key}.pools"),
                    "set either `pool` or `pools`, not both".into(),
                );
            }
            index(p, format!("{key}.pool"), out).map(Target::Pool)
        }
        None => r
            .pools
            .iter()
            .enumerate()
            .map(|(j, p)| index(p, format!("{key}.pools[{j}]"), out))
            .collect::<Option<Vec<_>>>()
            .map(Target::ByModel),
    };
    if r.pool.is_none() {
        check_model_candidates(cfg, r, key, route, out);
    }
    let mut fallback = Vec::with_capacity(r.fallback.len());
    for (j, p) in r.fallback.iter().enumerate() {
        if r.pool.as_ref().is_some_and(|t| t.value == p.value) {
            push(
                out,
                at(p),
                format!("{key}.fallback[{j}]"),
                format!("pool {:?} is both the target and a fallback", p.value),
            );
        }
        fallback.extend(index(p, format!("{key}.fallback[{j}]"), out));
    }
    if let Some(prefix) = &r.matches.path_prefix {
        if !prefix.starts_with('/') {
            push(
                out,
                at(route),
                format!("{key}.match.path_prefix"),
                format!("{prefix:?} must start with '/'"),
            );
        }
    }
    let mut headers = Vec::with_capacity(r.matches.headers.len());
    for (name, value) in &r.matches.headers {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => headers.push((h, value.clone())),
            Err(_) => push(
                out,
                at(route),
                format!("{key}.match.headers.{name}"),
                "not a valid header name".into(),
            ),
        }
    }
    let filters = compile_filters(r, key, has_control, out);
    let surface = compile_surface(r, key, has_control, out);
    if out.len() > before {
        return None;
    }
    Some(CompiledRoute {
        name: r.name.value.clone(),
        matching: RouteMatch {
            path_prefix: r.matches.path_prefix.clone(),
            host: r.matches.host.clone(),
            headers,
            model: r.matches.model.as_deref().map(Glob::new),
        },
        target: target?,
        fallback,
        filters,
        surface,
        default_model: r.default_model.as_ref().map(|m| m.value.clone()),
    })
}

/// A route that picks its pool by model can never pick an `okome` pool that lists no models
/// (stream nodes are not asked for theirs): say so rather than answer 404 at run time.
fn check_model_candidates(
    cfg: &EdgeConfig,
    r: &super::Route,
    key: &str,
    route: &Spanned<super::Route>,
    out: &mut Vec<Problem>,
) {
    let blind = |name: &str| {
        cfg.pools
            .value
            .get(name)
            .is_some_and(|p| p.value.kind == PoolKind::Okome && p.value.models.is_empty())
    };
    let why = |name: &str| {
        format!(
            "pool {name:?} is kind okome and lists no models (stream nodes are not asked for \
             theirs), so picking a pool by model never finds it: route to it with `pool: {name}`, \
             or list its `models`"
        )
    };
    if r.pools.is_empty() {
        if let Some(name) = cfg.pools.value.keys().find(|n| blind(n)) {
            push(out, at(route), format!("{key}.pool"), why(name));
        }
    }
    for (j, p) in r.pools.iter().enumerate() {
        if blind(&p.value) {
            push(out, at(p), format!("{key}.pools[{j}]"), why(&p.value));
        }
    }
}

/// Compiles a route's filters and checks the chain: tenant-aware filters need a control plane,
/// and `policy`/`ratelimit` need the tenant that an `auth` before them finds.
fn compile_filters(
    r: &super::Route,
    key: &str,
    has_control: bool,
    out: &mut Vec<Problem>,
) -> Vec<CompiledFilter> {
    let mut filters = Vec::with_capacity(r.filters.len());
    let mut auth_seen = false;
    for (j, f) in r.filters.iter().enumerate() {
        let fkey = format!("{key}.filters[{j}]");
        match &f.value {
            FilterSpec::Auth => auth_seen = true,
            FilterSpec::Policy | FilterSpec::Ratelimit { .. } if !auth_seen => push(
                out,
                at(f),
                fkey.clone(),
                format!(
                    "`{}` needs the tenant that `auth` finds: put `{{type: auth}}` before it",
                    f.value.needs_control().unwrap_or("this filter")
                ),
            ),
            _ => {}
        }
        if let Some(name) = f.value.needs_control().filter(|_| !has_control) {
            push(
                out,
                at(f),
                fkey.clone(),
                okome_filters::FilterError::NeedsControl(name).to_string(),
            );
        }
        match okome_filters::compile(&f.value) {
            Ok(c) => filters.push(c),
            Err(e) => push(out, at(f), fkey, e.to_string()),
        }
    }
    filters
}

/// Parses a route's `allow`/`deny` rules, and checks that model management is opened only
/// behind `auth` when the edge has a control plane.
fn compile_surface(
    r: &super::Route,
    key: &str,
    has_control: bool,
    out: &mut Vec<Problem>,
) -> Surface {
    let mut opens_management = None;
    let allow = r.allow.as_ref().map(|rules| {
        let mut entries = Vec::with_capacity(rules.len());
        for (j, rule) in rules.iter().enumerate() {
            match AllowEntry::parse(&rule.value) {
                Ok(entry) => {
                    if matches!(&entry, AllowEntry::Rule(e) if e.opens_model_management()) {
                        opens_management.get_or_insert((at(rule), j));
                    }
                    entries.push(entry);
                }
                Err(e) => push(out, at(rule), format!("{key}.allow[{j}]"), e.to_string()),
            }
        }
        entries
    });
    let mut deny = Vec::with_capacity(r.deny.len());
    for (j, rule) in r.deny.iter().enumerate() {
        match EndpointRule::parse(&rule.value) {
            Ok(d) => deny.push(d),
            Err(e) => push(out, at(rule), format!("{key}.deny[{j}]"), e.to_string()),
        }
    }
    let has_auth = r
        .filters
        .iter()
        .any(|f| matches!(f.value, FilterSpec::Auth));
    if let Some((line, j)) = opens_management {
        if has_control && !has_auth {
            push(
                out,
                line,
                format!("{key}.allow[{j}]"),
                "this opens the engines' model management (pull, delete, …): \
                 the route needs `{type: auth}` when the edge has a control plane"
                    .into(),
            );
        }
    }
    Surface::new(allow, deny, r.websocket)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn compile_text(text: &str) -> Result<CompiledEdge, Vec<Problem>> {
        let cfg: EdgeConfig = serde_saphyr::from_str(text).unwrap();
        compile(&cfg, &|src| match src {
            SecretSource::Env(var) => Ok(Secret::new(format!("secret-of-{var}"))),
            SecretSource::File(_) => Err(SecretError::Empty("test".into())),
        })
    }

    const BASE: &str = "listeners: [{address: 127.0.0.1:8080}]
pools:
  zeta: {kind: vllm, backends: [127.0.0.1:9001, 127.0.0.1:9002], api_key: {env: ZETA_KEY}}
  alpha: {kind: ollama, backends: [127.0.0.1:9003]}
";

    #[test]
    fn compiles_to_typed_values_with_pools_by_index() {
        let c = compile_text(&format!(
            "{BASE}routes:\n  - {{name: r, pool: zeta, fallback: [alpha], filters: [{{type: set_headers, set: {{x-team: a}}}}]}}\n"
        ))
        .unwrap();
        assert_eq!(
            c.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["alpha", "zeta"]
        );
        assert_eq!(c.pools[1].backends.len(), 2);
        assert_eq!(
            c.pools[1].auth.as_ref().unwrap(),
            "Bearer secret-of-ZETA_KEY"
        );
        assert!(matches!(c.routes[0].target, Target::Pool(1)));
        assert_eq!(c.routes[0].fallback, [0]);
        assert_eq!(c.routes[0].filters.len(), 1);
    }

    #[test]
    fn every_problem_is_reported_at_its_line_and_key() {
        let problems = compile_text(&format!(
            "{BASE}routes:\n  - name: r\n    pool: nowhere\n    filters:\n      - {{type: set_headers, set: {{\"bad header\": a}}}}\n      - {{type: policy}}\n"
        ))
        .unwrap_err();
        let found: Vec<(u64, &str)> = problems.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert!(found.contains(&(7, "routes[0].pool")), "{problems:?}");
        assert!(found.contains(&(9, "routes[0].filters[0]")), "{problems:?}");
        // `policy` before any `auth`, and on an edge without a control plane: both said.
        assert_eq!(
            found
                .iter()
                .filter(|p| **p == (10, "routes[0].filters[1]"))
                .count(),
            2,
            "{problems:?}"
        );
    }

    #[test]
    fn a_secret_that_cannot_be_read_refuses_the_config() {
        let problems = compile_text(
            "listeners: [{address: 127.0.0.1:8080}]\npools:\n  p: {kind: vllm, backends: [127.0.0.1:9001], api_key: {file: k}}\nroutes: [{name: r, pool: p}]\n",
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(
            (problems[0].line, problems[0].key.as_str()),
            (3, "pools.p.api_key")
        );
    }

    const STREAM_NODES: &str = "listeners: [{address: 127.0.0.1:8080}]
pools:
  nodes:
    kind: okome
    backends: [10.77.0.3:8080, 10.77.0.4:8080]
    sticky:
      key:
        - header:x-conversation-id
        - cookie:x
        - api_key
";

    #[test]
    fn sticky_key_sources_are_checked_at_their_line() {
        let problems = compile_text(&format!(
            "{STREAM_NODES}routes: [{{name: r, pool: nodes}}]\n"
        ))
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            (problems[0].line, problems[0].key.as_str()),
            (9, "pools.nodes.sticky.key[1]")
        );
        assert!(problems[0].message.contains("cookie:x"), "{problems:?}");

        let empty = "listeners: [{address: 127.0.0.1:8080}]
pools:
  nodes:
    kind: okome
    backends: [10.77.0.3:8080]
    sticky: {key: []}
routes: [{name: r, pool: nodes}]
";
        let problems = compile_text(empty).unwrap_err();
        assert_eq!(
            problems
                .iter()
                .map(|p| (p.line, p.key.as_str()))
                .collect::<Vec<_>>(),
            [(6, "pools.nodes.sticky.key")]
        );
    }

    #[test]
    fn an_okome_pool_is_probed_on_the_admin_port_and_sticky() {
        let ok = STREAM_NODES.replace("        - cookie:x\n", "");
        let c = compile_text(&format!("{ok}routes: [{{name: r, pool: nodes}}]\n")).unwrap();
        assert_eq!(c.pools[0].kind, PoolKind::Okome);
        assert_eq!(c.pools[0].probe_port, Some(OKOME_ADMIN_PORT));
        assert_eq!(
            c.pools[0].sticky,
            [
                KeySource::Header(http::HeaderName::from_static("x-conversation-id")),
                KeySource::ApiKey
            ]
        );
        // Any kind may name the port; the others default to the backend's own.
        let c = compile_text(&format!(
            "{BASE}  beta: {{kind: vllm, backends: [127.0.0.1:9004], health_check: {{port: 9100}}}}\nroutes: [{{name: r, pool: zeta}}]\n"
        ))
        .unwrap();
        assert_eq!(c.pools[1].probe_port, Some(9100));
        assert_eq!(c.pools[2].probe_port, None);
        assert!(c.pools[2].sticky.is_empty());
    }

    #[test]
    fn an_okome_pool_without_models_is_not_picked_by_model() {
        let ok = STREAM_NODES.replace("        - cookie:x\n", "");
        let problems =
            compile_text(&format!("{ok}routes:\n  - name: r\n    pools: [nodes]\n")).unwrap_err();
        assert_eq!(
            (problems[0].line, problems[0].key.as_str()),
            (12, "routes[0].pools[0]")
        );
        assert!(problems[0].message.contains("pool: nodes"), "{problems:?}");
        let problems = compile_text(&format!("{ok}routes:\n  - name: r\n")).unwrap_err();
        assert_eq!(problems[0].key, "routes[0].pool", "{problems:?}");
        // With its models listed, it can be.
        let listed = ok.replace("    sticky:", "    models: [m]\n    sticky:");
        compile_text(&format!("{listed}routes:\n  - name: r\n")).unwrap();
        // A pool key would replace the client's, which the stream node authenticates.
        let keyed = ok.replace("    sticky:", "    api_key: {env: K}\n    sticky:");
        let problems =
            compile_text(&format!("{keyed}routes: [{{name: r, pool: nodes}}]\n")).unwrap_err();
        assert_eq!(problems[0].key, "pools.nodes.api_key");
    }

    #[test]
    fn trusted_proxies_are_cidrs() {
        let text = |list: &str| {
            format!("{BASE}routes: [{{name: r, pool: zeta}}]\ntrusted_proxies:\n{list}")
        };
        let c = compile_text(&text("  - 10.77.0.0/24\n  - 127.0.0.1\n  - ::1/128\n")).unwrap();
        assert_eq!(
            c.trusted_proxies,
            ["10.77.0.0/24", "127.0.0.1/32", "::1/128"].map(|n| n.parse::<ipnet::IpNet>().unwrap())
        );
        let problems = compile_text(&text(
            "  - 10.77.0.0/24\n  - 10.77.0.0/33\n  - 10.77.0.9/24\n  - nope\n",
        ))
        .unwrap_err();
        let found: Vec<(u64, &str)> = problems.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            found,
            [
                (8, "trusted_proxies[1]"),
                (9, "trusted_proxies[2]"),
                (10, "trusted_proxies[3]")
            ],
            "{problems:?}"
        );
        assert!(problems[1].message.contains("10.77.0.0/24"), "{problems:?}");
    }
}
