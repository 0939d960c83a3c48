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
    pub listeners: Vec<CompiledListener>,
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
    /// Memory for all resumable streams' buffers (`limits.resumable_buffer`).
    pub resumable_budget: u64,
    /// Where tenants' limits are counted (lives with the process: a change needs a restart).
    pub limit_store: LimitStoreConfig,
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

/// Where tenants' limits are counted, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitStoreConfig {
    /// This edge's share of each limit, in memory.
    Local,
    /// Shared by every edge, in Redis.
    Redis(okome_limits::RedisSettings),
}

/// Checks `limits.store` and `limits.redis`.
fn compile_limit_store(cfg: &EdgeConfig, out: &mut Vec<Problem>) -> LimitStoreConfig {
    let l = &cfg.limits.value;
    let line = at(&cfg.limits);
    let Some(r) = &l.redis else {
        if l.store == super::LimitStoreKind::Redis {
            push(
                out,
                line,
                "limits.redis.address".into(),
                "`store: redis` needs the Redis address (`redis://host:port` or `host:port`)"
                    .into(),
            );
        }
        return LimitStoreConfig::Local;
    };
    let url = match okome_limits::parse_address(&r.address) {
        Ok(u) => Some(u),
        Err(e) => {
            push(out, line, "limits.redis.address".into(), e.to_string());
            None
        }
    };
    let (timeout, lease) = (r.timeout.0, r.lease.0);
    if timeout < Duration::from_millis(1) {
        push(
            out,
            line,
            "limits.redis.timeout".into(),
            "must be at least 1ms".into(),
        );
    }
    if lease < Duration::from_secs(1) {
        push(
            out,
            line,
            "limits.redis.lease".into(),
            "must be at least 1s (leases are renewed every third of it)".into(),
        );
    } else if timeout * 3 >= lease {
        push(
            out,
            line,
            "limits.redis.timeout".into(),
            format!(
                "{timeout:?} must be well under the lease ({lease:?}): a renewal has a third of it"
            ),
        );
    }
    match (l.store, url) {
        (super::LimitStoreKind::Redis, Some(url)) => {
            LimitStoreConfig::Redis(okome_limits::RedisSettings {
                url,
                timeout,
                lease,
            })
        }
        _ => LimitStoreConfig::Local,
    }
}

/// A client listener with its certificates loaded.
#[derive(Debug)]
pub struct CompiledListener {
    /// `IP:PORT` to bind.
    pub address: SocketAddr,
    /// Connections open at once (`None`: no cap).
    pub max_connections: Option<usize>,
    /// The certificates served, by SNI, and the client CAs required (`None`: plaintext).
    pub tls: Option<crate::tls::ListenerTls>,
    /// HTTP/2: by ALPN on TLS, h2c on plaintext.
    pub http2: bool,
}

impl CompiledListener {
    /// The same socket and protocol settings (what a reload cannot change); the certificates
    /// themselves may differ.
    pub fn same_socket(&self, other: &CompiledListener) -> bool {
        self.address == other.address
            && self.max_connections == other.max_connections
            && self.tls.is_some() == other.tls.is_some()
            && self.tls.as_ref().map(|t| t.client_ca.is_some())
                == other.tls.as_ref().map(|t| t.client_ca.is_some())
            && self.http2 == other.http2
    }
}

/// A pool with its addresses parsed and its key read.
#[derive(Debug)]
pub struct CompiledPool {
    /// Name from the config.
    pub name: String,
    /// Engine kind.
    pub kind: PoolKind,
    /// Backends as written, in config order, no duplicates: addresses and names to resolve.
    pub backends: Vec<BackendSpec>,
    /// How often its names are resolved again (at least [`MIN_RESOLVE_EVERY`]).
    pub resolve_every: Duration,
    /// Models named in the config.
    pub models: Vec<String>,
    /// Health check settings.
    pub health: HealthCheck,
    /// Passive ejection settings.
    pub ejection: Ejection,
    /// `Authorization: Bearer …` from the pool's `api_key`.
    pub auth: Option<http::HeaderValue>,
    /// TLS to the backends.
    pub tls: Option<std::sync::Arc<super::tls::UpstreamTls>>,
    /// The port probes go to on each backend's host (`None`: the backend's own port).
    pub probe_port: Option<u16>,
    /// Sticky key sources in order (`sticky.key`); empty: no stickiness.
    pub sticky: Vec<KeySource>,
    /// TF Serving's gRPC port on each backend's host (`grpc_port`).
    pub grpc_port: Option<u16>,
    /// Prefix-affinity settings when the pool has `pick: prefix_affinity`.
    pub affinity: Option<super::affinity::AffinitySettings>,
}

impl CompiledPool {
    /// The `HOST:PORT` backends, in config order.
    pub fn names(&self) -> impl Iterator<Item = (&str, u16)> {
        self.backends.iter().filter_map(|b| match b {
            BackendSpec::Name { host, port } => Some((host.as_str(), *port)),
            BackendSpec::Addr(_) => None,
        })
    }
}

/// How often a pool's names are resolved again unless it says (`pools.<name>.resolve_every`).
pub const DEFAULT_RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// The shortest `resolve_every`: more often would only load the resolver (and its upstream).
pub const MIN_RESOLVE_EVERY: Duration = Duration::from_secs(1);
/// The longest DNS name (RFC 1035), without the trailing dot.
const MAX_NAME_LEN: usize = 253;

/// One entry of `pools.<name>.backends`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendSpec {
    /// A literal `IP:PORT` (IPv6 as `[::1]:8000`).
    Addr(SocketAddr),
    /// `HOST:PORT`: every address the system resolver gives for `host`, on `port`; resolved at
    /// start and again every `resolve_every`.
    Name {
        /// The DNS name, lowercased (DNS names are case-insensitive).
        host: String,
        /// The port on every address of the name.
        port: u16,
    },
}

impl BackendSpec {
    /// Parses `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`; the error says what is wrong in words.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(BackendSpec::Addr(addr));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err("no port".into());
        };
        if host.starts_with('[') || host.contains(':') {
            return Err(
                "not an IPv6 address: write it in brackets with a port, like [::1]:8000".into(),
            );
        }
        let port = match port.parse::<u16>() {
            Ok(0) => return Err("port 0 cannot be connected to".into()),
            Ok(p) => p,
            Err(_) => return Err(format!("{port:?} is not a port")),
        };
        check_dns_name(host)?;
        Ok(BackendSpec::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl std::fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendSpec::Addr(a) => write!(f, "{a}"),
            BackendSpec::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A name the resolver can be asked about: dot-separated labels of letters, digits and '-'
/// (not at a label's ends), at most 63 characters each and 253 in all, an optional final dot
/// (fully qualified: no search domain is tried). A last label of digits only is refused: such
/// a "name" is a mistyped IPv4 address, which getaddrinfo would read in the old numeric forms
/// (`10.1` = 10.0.0.1) instead of failing.
fn check_dns_name(host: &str) -> Result<(), String> {
    let bare = host.strip_suffix('.').unwrap_or(host);
    if bare.is_empty() {
        return Err("no host before the port".into());
    }
    if bare.len() > MAX_NAME_LEN {
        return Err(format!(
            "the host name is {} characters long; DNS allows {MAX_NAME_LEN}",
            bare.len()
        ));
    }
    let labels: Vec<&str> = bare.split('.').collect();
    for label in &labels {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{host:?} is not an IP address or a DNS name (letters, digits and '-' between dots)"
            ));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err(format!("{host:?} is not a valid IP address"));
    }
    Ok(())
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
    /// Continue streams on another backend when the engine dies mid-stream.
    pub mid_stream_failover: bool,
    /// Resumable streams' settings, when on.
    pub resumable: Option<crate::resume::Policy>,
    /// SSE keep-alive period, when on.
    pub keepalive: Option<Duration>,
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
/// and the certificates with `read_file`, and returns the typed config, or every problem found.
pub fn compile(
    cfg: &EdgeConfig,
    read_secret: ReadSecret<'_>,
    read_file: crate::tls::ReadFile<'_>,
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
    let listeners: Vec<CompiledListener> = cfg
        .listeners
        .value
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            super::tls::compile_listener(i, l, at(&cfg.listeners), read_file, &mut out)
        })
        .collect();
    for (i, l) in listeners.iter().enumerate() {
        if listeners[..i].iter().any(|o| o.address == l.address) {
            push(
                &mut out,
                at(&cfg.listeners),
                format!("listeners[{i}].address"),
                format!("{} is listed twice", l.address),
            );
        }
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
        .map(|(name, pool)| compile_pool(name, pool, read_secret, read_file, &mut out))
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
    let limit_store = compile_limit_store(cfg, &mut out);
    if !out.is_empty() {
        return Err(out);
    }
    Ok(CompiledEdge {
        listeners,
        admin: cfg.admin.address,
        threads: cfg.server.value.threads,
        grace_period: cfg.server.value.grace_period.0,
        upgrade_sock: cfg.server.value.upgrade_sock.clone(),
        watch_config: cfg.server.value.watch_config,
        max_body: cfg.limits.value.max_body.0,
        max_header_bytes: cfg.limits.value.max_header_bytes.0,
        max_requests: cfg.limits.value.max_requests,
        resumable_budget: cfg.limits.value.resumable_buffer.0,
        limit_store,
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
    let l = &cfg.limits.value;
    if l.store == super::LimitStoreKind::Local && l.redis.is_some() {
        w.push(format!(
            "line {}: limits.redis is set but limits.store is `local`: tenants' limits are counted per edge and Redis is not used",
            at(&cfg.limits)
        ));
    }
    let ratelimited = cfg.routes.value.iter().any(|r| {
        r.value
            .filters
            .iter()
            .any(|f| matches!(f.value, FilterSpec::Ratelimit { .. }))
    });
    if l.store == super::LimitStoreKind::Redis && !ratelimited {
        w.push(format!(
            "line {}: limits.store is `redis` but no route has the `ratelimit` filter: nothing is counted there",
            at(&cfg.limits)
        ));
    }
    for (name, pool) in &cfg.pools.value {
        let Some(r) = &pool.value.resolve_every else {
            continue;
        };
        // Ignored rather than refused: a templated config may switch a pool between
        // addresses and names, and the key does no harm where there is nothing to resolve.
        let names = pool
            .value
            .backends
            .iter()
            .any(|b| matches!(BackendSpec::parse(&b.value), Ok(BackendSpec::Name { .. })));
        if !names {
            w.push(format!(
                "line {}: pools.{name}.resolve_every: the pool has no HOST:PORT backend, so there is nothing to resolve; ignored",
                at(r)
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
    read_file: crate::tls::ReadFile<'_>,
    out: &mut Vec<Problem>,
) -> CompiledPool {
    let key = format!("pools.{name}");
    let p = &pool.value;
    if p.backends.is_empty() {
        push(
            out,
            at(pool),
            format!("{key}.backends"),
            "a pool needs at least one backend `IP:PORT` or `HOST:PORT`".into(),
        );
    }
    let mut backends = Vec::with_capacity(p.backends.len());
    for (i, b) in p.backends.iter().enumerate() {
        match BackendSpec::parse(&b.value) {
            Ok(spec) if backends.contains(&spec) => push(
                out,
                at(b),
                format!("{key}.backends[{i}]"),
                format!("backend {spec} is listed twice"),
            ),
            Ok(spec) => backends.push(spec),
            Err(why) => push(
                out,
                at(b),
                format!("{key}.backends[{i}]"),
                format!(
                    "bad address {:?}: {why}; expected IP:PORT like 127.0.0.1:8000 or HOST:PORT like vllm-0.internal:8000",
                    b.value
                ),
            ),
        }
    }
    let resolve_every = match &p.resolve_every {
        Some(r) if r.value.0 < MIN_RESOLVE_EVERY => {
            push(
                out,
                at(r),
                format!("{key}.resolve_every"),
                format!(
                    "{} is too often to ask the resolver: at least 1s (leave it out for 5s)",
                    r.value
                ),
            );
            DEFAULT_RESOLVE_EVERY
        }
        Some(r) => r.value.0,
        None => DEFAULT_RESOLVE_EVERY,
    };
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
    if let Some(g) = &p.grpc_port {
        if p.kind != PoolKind::Tfserving {
            push(
                out,
                at(g),
                format!("{key}.grpc_port"),
                "grpc_port is TF Serving's gRPC port: only a tfserving pool has one".into(),
            );
        } else if g.value == 0 {
            push(
                out,
                at(g),
                format!("{key}.grpc_port"),
                "port 0 cannot be reached; name TF Serving's --port (usually 8500)".into(),
            );
        }
    }
    let sticky = compile_sticky(&key, p, out);
    let affinity = super::affinity::compile(
        &key,
        p.kind,
        p.pick.as_ref(),
        p.prefix_affinity.as_ref(),
        p.sticky.is_some(),
        out,
    );
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
    let auth = p.api_key.as_ref().and_then(|src| {
        read_secret(src)
            .map(|s| s.bearer())
            .map_err(|e| push(out, at(pool), format!("{key}.api_key"), e.to_string()))
            .ok()
    });
    let tls = p.tls.as_ref().and_then(|t| {
        super::tls::compile_backend_tls(name, t, read_file, out).map(std::sync::Arc::new)
    });
    CompiledPool {
        name: name.to_owned(),
        kind: p.kind,
        backends,
        resolve_every,
        models: p.models.clone(),
        health: hc.clone(),
        ejection: p.ejection,
        auth,
        tls,
        probe_port: hc
            .port
            .or((p.kind == PoolKind::Okome).then_some(OKOME_ADMIN_PORT)),
        sticky,
        grpc_port: p.grpc_port.as_ref().map(|g| g.value),
        affinity,
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
    let mid_stream_failover = check_failover(cfg, r, key, out);
    let resumable = compile_resumable(cfg, r, key, out);
    let keepalive = compile_keepalive(r, key, out);
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
        mid_stream_failover,
        resumable,
        keepalive,
    })
}

/// The shortest and longest SSE keep-alive periods.
const KEEPALIVE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

/// `keepalive`: a period between 100ms and 1h.
fn compile_keepalive(r: &super::Route, key: &str, out: &mut Vec<Problem>) -> Option<Duration> {
    let spec = r.keepalive.as_ref()?;
    let period = spec.value.0;
    if !KEEPALIVE_RANGE.contains(&period) {
        push(
            out,
            at(spec),
            format!("{key}.keepalive"),
            format!(
                "{} is out of range: between 100ms and 1h",
                humantime::format_duration(period)
            ),
        );
        return None;
    }
    Some(period)
}

/// `resumable`: the settings, each within what a node can hold.
fn compile_resumable(
    cfg: &EdgeConfig,
    r: &super::Route,
    key: &str,
    out: &mut Vec<Problem>,
) -> Option<crate::resume::Policy> {
    use super::Resumable;
    use crate::resume::Policy;
    let spec = r.resumable.as_ref()?;
    let mut policy = Policy::default();
    match &spec.value {
        Resumable::On(false) => return None,
        Resumable::On(true) => {}
        Resumable::Tuned(t) => {
            if let Some(g) = t.grace {
                policy.grace = g.0;
            }
            if let Some(b) = t.buffer {
                policy.buffer = usize::try_from(b.0).unwrap_or(usize::MAX);
            }
            if let Some(k) = t.keep {
                policy.keep = k.0;
            }
        }
    }
    let mut bad = |field: &str, msg: String| {
        push(out, at(spec), format!("{key}.resumable.{field}"), msg);
    };
    if policy.grace.is_zero() || policy.grace > std::time::Duration::from_secs(3600) {
        bad(
            "grace",
            format!(
                "{} is out of range: between 1s and 1h (the engine runs for nobody this long)",
                humantime::format_duration(policy.grace)
            ),
        );
    }
    if policy.buffer < 4096 {
        bad(
            "buffer",
            format!(
                "{} bytes is too small to hold an event: at least 4KiB",
                policy.buffer
            ),
        );
    }
    let budget = cfg.limits.value.resumable_buffer.0;
    if policy.buffer as u64 > budget {
        bad(
            "buffer",
            format!(
                "{} bytes is more than the node's whole limits.resumable_buffer ({budget} bytes)",
                policy.buffer
            ),
        );
    }
    if policy.keep > std::time::Duration::from_secs(3600) {
        bad(
            "keep",
            format!(
                "{} is over the 1h limit",
                humantime::format_duration(policy.keep)
            ),
        );
    }
    Some(policy)
}

/// `mid_stream_failover` continues a stream with vLLM's `continue_final_message` or a
/// completions prompt: only `vllm` and `openai` pools can do that. A route that reaches none is
/// an error; on a route that also reaches other pools, their streams end as before.
fn check_failover(cfg: &EdgeConfig, r: &super::Route, key: &str, out: &mut Vec<Problem>) -> bool {
    let Some(on) = r.mid_stream_failover.as_ref().filter(|f| f.value) else {
        return false;
    };
    let mut names: Vec<&str> = r
        .pool
        .iter()
        .chain(&r.pools)
        .chain(&r.fallback)
        .map(|p| p.value.as_str())
        .collect();
    if r.pool.is_none() && r.pools.is_empty() {
        names.extend(cfg.pools.value.keys().map(String::as_str));
    }
    let able = |name: &&str| {
        cfg.pools
            .value
            .get(*name)
            .is_some_and(|p| p.value.kind.continues_openai_chat())
    };
    if !names.iter().any(able) {
        push(
            out,
            at(on),
            format!("{key}.mid_stream_failover"),
            format!(
                "the route reaches no vllm or openai pool ({}): mid-stream failover continues a \
                 stream with the OpenAI API (a partial assistant message with \
                 continue_final_message, or a completions prompt), which only those engines take",
                names.join(", ")
            ),
        );
    }
    true
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
        compile(
            &cfg,
            &|src| match src {
                SecretSource::Env(var) => Ok(Secret::new(format!("secret-of-{var}"))),
                SecretSource::File(_) => Err(SecretError::Empty("test".into())),
            },
            &|p| std::fs::read(p),
        )
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
    fn mid_stream_failover_is_for_openai_engine_pools() {
        let c = compile_text(&format!(
            "{BASE}routes: [{{name: r, pool: zeta, mid_stream_failover: true}}]\n"
        ))
        .unwrap();
        assert!(c.routes[0].mid_stream_failover);
        // A vLLM pool with an Ollama fallback: continued on the vLLM pool only (at run time).
        let c = compile_text(&format!(
            "{BASE}routes: [{{name: r, pool: zeta, fallback: [alpha], mid_stream_failover: true}}]\n"
        ))
        .unwrap();
        assert!(c.routes[0].mid_stream_failover);
        let problems = compile_text(&format!(
            "{BASE}routes:\n  - name: r\n    pool: alpha\n    mid_stream_failover: true\n"
        ))
        .unwrap_err();
        assert!(
            problems.iter().any(|p| p.line == 8
                && p.key == "routes[0].mid_stream_failover"
                && p.message.contains("reaches no vllm or openai pool (alpha)")),
            "{problems:?}"
        );
    }

    #[test]
    fn resumable_takes_true_or_settings_within_the_node_budget() {
        use crate::resume::Policy;
        use std::time::Duration;
        let route = |r: &str| {
            compile_text(&format!(
                "{BASE}routes: [{{name: r, pool: zeta, resumable: {r}}}]\n"
            ))
        };
        assert_eq!(
            route("true").unwrap().routes[0].resumable,
            Some(Policy::default())
        );
        assert_eq!(route("false").unwrap().routes[0].resumable, None);
        let c = route("{grace: 5s, buffer: 64KiB, keep: 2m}").unwrap();
        assert_eq!(
            c.routes[0].resumable,
            Some(Policy {
                grace: Duration::from_secs(5),
                buffer: 64 << 10,
                keep: Duration::from_secs(120)
            })
        );
        assert_eq!(c.resumable_budget, crate::resume::DEFAULT_NODE_BUDGET);
        for (spec, key, says) in [
            (
                "{grace: 0s}",
                "routes[0].resumable.grace",
                "between 1s and 1h",
            ),
            (
                "{buffer: 100}",
                "routes[0].resumable.buffer",
                "at least 4KiB",
            ),
            (
                "{buffer: 1GiB}",
                "routes[0].resumable.buffer",
                "limits.resumable_buffer",
            ),
        ] {
            let problems = route(spec).unwrap_err();
            assert!(
                problems
                    .iter()
                    .any(|p| p.line == 5 && p.key == key && p.message.contains(says)),
                "{spec}: {problems:?}"
            );
        }
        let c = compile_text(&format!(
            "{BASE}limits: {{resumable_buffer: 8MiB}}\nroutes: [{{name: r, pool: zeta, resumable: true}}]\n"
        ))
        .unwrap();
        assert_eq!(c.resumable_budget, 8 << 20);
    }

    #[test]
    fn grpc_port_is_for_tfserving_pools() {
        let c = compile_text(&format!(
            "{BASE}  tf: {{kind: tfserving, backends: [127.0.0.1:8501], models: [m], grpc_port: 8500}}\nroutes: [{{name: r, pool: tf}}]\n"
        ))
        .unwrap();
        let port = |name: &str| c.pools.iter().find(|p| p.name == name).map(|p| p.grpc_port);
        assert_eq!(port("tf"), Some(Some(8500)));
        assert_eq!(port("zeta"), Some(None));
        let problems = compile_text(&format!(
            "{BASE}  beta: {{kind: vllm, backends: [127.0.0.1:9004], grpc_port: 8500}}\n  tf: {{kind: tfserving, backends: [127.0.0.1:8501], models: [m], grpc_port: 0}}\nroutes: [{{name: r, pool: zeta}}]\n"
        ))
        .unwrap_err();
        let found: Vec<(u64, &str)> = problems.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert!(found.contains(&(5, "pools.beta.grpc_port")), "{problems:?}");
        assert!(found.contains(&(6, "pools.tf.grpc_port")), "{problems:?}");
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
    fn limit_store_is_local_by_default_and_redis_when_configured() {
        let routes = "routes: [{name: r, pool: zeta}]\n";
        let c = compile_text(&format!("{BASE}{routes}")).unwrap();
        assert_eq!(c.limit_store, LimitStoreConfig::Local);
        let c = compile_text(&format!(
            "{BASE}{routes}limits:\n  store: redis\n  redis: {{address: 10.0.0.5:6379}}\n"
        ))
        .unwrap();
        assert_eq!(
            c.limit_store,
            LimitStoreConfig::Redis(okome_limits::RedisSettings {
                url: "redis://10.0.0.5:6379".into(),
                timeout: Duration::from_millis(50),
                lease: Duration::from_secs(30),
            })
        );
        let c = compile_text(&format!(
            "{BASE}{routes}limits:\n  store: redis\n  redis: {{address: \"redis://cache:6380\", timeout: 20ms, lease: 2s}}\n"
        ))
        .unwrap();
        let LimitStoreConfig::Redis(r) = &c.limit_store else {
            panic!("{:?}", c.limit_store)
        };
        assert_eq!(
            (r.url.as_str(), r.timeout, r.lease),
            (
                "redis://cache:6380",
                Duration::from_millis(20),
                Duration::from_secs(2)
            )
        );
        // A redis section under `store: local` is ignored, with a warning.
        let c = compile_text(&format!(
            "{BASE}{routes}limits:\n  redis: {{address: 10.0.0.5:6379}}\n"
        ))
        .unwrap();
        assert_eq!(c.limit_store, LimitStoreConfig::Local);
        assert!(
            c.warnings.iter().any(|w| w.contains("limits.redis")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn bad_limit_store_settings_are_refused_at_their_line_and_key() {
        let routes = "routes: [{name: r, pool: zeta}]\n";
        let keys = |yaml: &str| -> Vec<(u64, String)> {
            compile_text(&format!("{BASE}{routes}{yaml}"))
                .unwrap_err()
                .into_iter()
                .map(|p| (p.line, p.key))
                .collect()
        };
        assert_eq!(
            keys("limits:\n  store: redis\n"),
            [(7, "limits.redis.address".to_string())]
        );
        assert_eq!(
            keys("limits:\n  store: redis\n  redis: {address: \"http://x:1\"}\n"),
            [(7, "limits.redis.address".to_string())]
        );
        assert_eq!(
            keys("limits:\n  store: redis\n  redis: {address: \"x:1\", lease: 500ms}\n"),
            [(7, "limits.redis.lease".to_string())]
        );
        assert_eq!(
            keys("limits:\n  store: redis\n  redis: {address: \"x:1\", timeout: 1s, lease: 2s}\n"),
            [(7, "limits.redis.timeout".to_string())]
        );
        // An unknown store is a parse error (the parser names line and column).
        assert!(serde_saphyr::from_str::<EdgeConfig>(&format!(
            "{BASE}{routes}limits:\n  store: memcached\n"
        ))
        .is_err());
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
    #[test]
    fn backends_are_addresses_or_names() {
        let c = compile_text(
            "listeners: [{address: 127.0.0.1:8080}]\npools:\n  p:\n    kind: vllm\n    backends: [127.0.0.1:9001, \"[::1]:9002\", localhost:8000, VLLM-0.Engines.svc.cluster.local.:8000]\n    resolve_every: 2s\nroutes: [{name: r, pool: p}]\n",
        )
        .unwrap();
        let p = &c.pools[0];
        assert_eq!(
            p.backends,
            [
                BackendSpec::Addr("127.0.0.1:9001".parse().unwrap()),
                BackendSpec::Addr("[::1]:9002".parse().unwrap()),
                BackendSpec::Name {
                    host: "localhost".into(),
                    port: 8000
                },
                BackendSpec::Name {
                    host: "vllm-0.engines.svc.cluster.local.".into(),
                    port: 8000
                },
            ]
        );
        assert_eq!(p.resolve_every, Duration::from_secs(2));
        assert_eq!(
            p.names().collect::<Vec<_>>(),
            [
                ("localhost", 8000),
                ("vllm-0.engines.svc.cluster.local.", 8000)
            ]
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // Without the key: the default.
        let c = compile_text(&format!("{BASE}routes: [{{name: r, pool: zeta}}]\n")).unwrap();
        assert_eq!(c.pools[1].resolve_every, DEFAULT_RESOLVE_EVERY);
    }

    #[test]
    fn bad_backends_are_reported_at_their_line_and_key() {
        let problems = compile_text(
            &"listeners: [{address: 127.0.0.1:8080}]
pools:
  p:
    kind: vllm
    backends:
      - localhost
      - ::1:8000
      - bad_name:8000
      - -x.example:8000
      - 10.0.300.1:8000
      - host:0
      - host:http
      - Engine.local:8000
      - engine.LOCAL:8000
      - x.example:8000
    resolve_every: 0s
  q:
    kind: vllm
    backends: [\"LONG:1\"]
    resolve_every: 500ms
routes: [{name: r, pool: p}]
"
            .replace("LONG", &"abcdefghi.".repeat(26)),
        )
        .unwrap_err();
        let found: Vec<(u64, &str, &str)> = problems
            .iter()
            .map(|p| (p.line, p.key.as_str(), p.message.as_str()))
            .collect();
        let has = |line: u64, key: &str, words: &str| {
            assert!(
                found
                    .iter()
                    .any(|(l, k, m)| *l == line && *k == key && m.contains(words)),
                "want {line} {key} {words:?} in {found:#?}"
            )
        };
        has(6, "pools.p.backends[0]", "no port");
        has(7, "pools.p.backends[1]", "brackets");
        has(8, "pools.p.backends[2]", "not an IP address or a DNS name");
        has(9, "pools.p.backends[3]", "not an IP address or a DNS name");
        has(10, "pools.p.backends[4]", "not a valid IP address");
        has(11, "pools.p.backends[5]", "port 0");
        has(12, "pools.p.backends[6]", "not a port");
        // Names are case-insensitive: the same name twice is a duplicate.
        has(14, "pools.p.backends[8]", "listed twice");
        has(16, "pools.p.resolve_every", "at least 1s");
        has(19, "pools.q.backends[0]", "DNS allows 253");
        has(20, "pools.q.resolve_every", "at least 1s");
        // Every bad address is told the accepted forms.
        assert!(problems
            .iter()
            .filter(|p| p.message.starts_with("bad address"))
            .all(|p| p.message.contains("IP:PORT") && p.message.contains("HOST:PORT")));
        assert_eq!(problems.len(), 11, "{problems:#?}");
    }

    #[test]
    fn resolve_every_without_names_is_ignored_with_a_warning() {
        let c = compile_text(
            "listeners: [{address: 127.0.0.1:8080}]\npools:\n  p:\n    kind: vllm\n    backends: [127.0.0.1:9001]\n    resolve_every: 10s\nroutes: [{name: r, pool: p}]\n",
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].starts_with("line 6: pools.p.resolve_every"),
            "{:?}",
            c.warnings
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
