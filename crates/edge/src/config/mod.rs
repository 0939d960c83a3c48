//! The edge's YAML configuration: listeners, pools of model servers, routes and their filters.
//!
//! Parsing reports the file, line and key of each problem; [`load`] then [`compile`]s the
//! config into typed values, checking everything (unknown pools, duplicate names, impossible
//! limits, filter chains) on the way.

pub mod affinity;
pub mod compile;
pub mod tls;

pub use compile::CompiledEdge;
pub use okome_core::config::{
    secret, ByteSize, Dur, FileKind, LocatedProblem, Secret, SecretSource,
};

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole edge configuration (`okome edge -c FILE`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// `kind: edge` (optional): says which component this file configures.
    #[serde(default)]
    pub kind: Option<Spanned<FileKind>>,
    /// Where clients connect.
    pub listeners: Spanned<Vec<Listener>>,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`, `/status`.
    #[serde(default)]
    pub admin: Admin,
    /// Worker threads, grace period.
    #[serde(default = "unplaced")]
    pub server: Spanned<ServerSection>,
    /// Request limits.
    #[serde(default = "unplaced")]
    pub limits: Spanned<Limits>,
    /// Upstream timeouts.
    #[serde(default = "unplaced")]
    pub timeouts: Spanned<Timeouts>,
    /// Retry and failover before the first byte.
    #[serde(default = "unplaced")]
    pub retry: Spanned<Retry>,
    /// Pools of model servers, by name.
    pub pools: Spanned<BTreeMap<String, Spanned<Pool>>>,
    /// Routes, tried in order; the first match wins.
    pub routes: Spanned<Vec<Spanned<Route>>>,
    /// The control plane (OKOME) this edge takes tenants, keys and model routes from; without
    /// it there is no authentication and routes are the config's own.
    #[serde(default)]
    pub control: Option<Spanned<Control>>,
    /// The GPU arbiter(s) whose per-backend decisions (ok / pressured / shedding / down) this edge
    /// obeys; without it the edge routes on its own health checks and in-flight counts.
    #[serde(default)]
    pub arbiter: Option<Spanned<ArbiterSection>>,
    /// Distributed tracing.
    #[serde(default)]
    pub tracing: Tracing,
    /// The access log: one JSON object per request and line.
    #[serde(default)]
    pub access_log: AccessLogSection,
    /// Peers (CIDRs) whose `X-Forwarded-For` is believed: an ingress in front of this stream
    /// node. From them, the client is the rightmost forwarded address that is not trusted.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
}

/// A section left out of the file: its defaults, which are valid, at no place in the file.
fn unplaced<T: Default>() -> Spanned<T> {
    Spanned::new(
        T::default(),
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

/// Where the access log goes.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// Write it at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Append to this file instead of stderr.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

impl Default for AccessLogSection {
    fn default() -> Self {
        AccessLogSection {
            enabled: true,
            path: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// W3C trace context handling. A client's `traceparent` always reaches the engine unchanged and
/// its trace id is logged.
#[derive(Debug, Deserialize, Clone, Copy, Default)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// Start a trace (send a new `traceparent` to the engine) when the client sent none.
    #[serde(default)]
    pub generate_traceparent: bool,
}

/// Where the edge learns the arbiters' decisions.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArbiterSection {
    /// Arbiter APIs `IP:PORT` (one per GPU node).
    pub addresses: Vec<SocketAddr>,
    /// Decisions not confirmed for this long are ignored: the edge falls back to its own signals.
    #[serde(default = "default_arbiter_max_age")]
    pub max_age: Dur,
}

fn default_arbiter_max_age() -> Dur {
    Dur(Duration::from_secs(3))
}

/// What to do with a key nobody can vouch for because the control plane is unreachable.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Refuse it (401): fail closed.
    #[default]
    Deny,
    /// Let it through as tenant `unverified`, priority `sheddable`, no limits.
    Allow,
}

/// The edge's view of the control plane and its policy cache.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Control plane API `IP:PORT`.
    pub address: SocketAddr,
    /// Where the last known good snapshot and key hashes are kept across restarts.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How long a resolved key is trusted before it is revalidated.
    #[serde(default = "default_key_ttl")]
    pub key_ttl: Dur,
    /// How long an unknown key stays unknown before it is asked about again.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: Dur,
    /// How long past its TTL a key is still honoured while the control plane is unreachable.
    #[serde(default = "default_stale_if_error")]
    pub stale_if_error: Dur,
    /// A key never seen while the control plane is down: `deny` (401) or `allow`.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// Per-call timeout to the control plane.
    #[serde(default = "default_control_timeout")]
    pub timeout: Dur,
    /// The shared token the control plane requires (`api_token` in its config):
    /// `{ file: PATH }` or `{ env: VAR }`.
    #[serde(default)]
    pub token: Option<SecretSource>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/okome")
}
fn default_key_ttl() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_negative_ttl() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_stale_if_error() -> Dur {
    Dur(Duration::from_secs(3600))
}
fn default_control_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}

/// A client-facing listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `IP:PORT` to bind.
    pub address: SocketAddr,
    /// Client connections open at once on this listener; more get 503 and are closed.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Serve TLS on this listener with these certificates.
    #[serde(default)]
    pub tls: Option<Spanned<ListenerTls>>,
    /// Speak HTTP/2 to clients: by ALPN on a TLS listener (default on), as h2c (prior
    /// knowledge) on a plaintext one (default off). HTTP/1.1 is always served too.
    #[serde(default)]
    pub http2: Option<bool>,
}

/// TLS on a client listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chains and their keys; each is served for the names in its certificate
    /// (SNI), the first also to clients that name none or an unknown one.
    pub certificates: Vec<Spanned<CertificateFiles>>,
    /// Require clients to present a certificate signed by one of these CAs (PEM), e.g. stream
    /// nodes that only the ingress may reach (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// The chain: leaf first, then intermediates (relative paths: from the config's folder).
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// TLS to a pool's backends.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct BackendTls {
    /// CA certificates (PEM) the backends' certificates must chain to; without it, the
    /// system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// A client certificate chain (PEM) presented to the backends (mTLS); needs `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); needs `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The name sent as SNI and checked against the backend's certificate (default: the
    /// backend's host name; an `IP:PORT` backend is checked against its IP).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Check the backend's certificate at all (turn off only for testing).
    #[serde(default = "default_true")]
    pub verify: bool,
}

/// The admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `IP:PORT` to bind; keep it on loopback or a management network.
    #[serde(default = "default_admin")]
    pub address: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: default_admin(),
        }
    }
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// Process-level settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Proxy worker threads (default: the number of CPU cores).
    pub threads: Option<usize>,
    /// On SIGTERM, how long running streams may continue before they are cut.
    #[serde(default = "default_grace")]
    pub grace_period: Dur,
    /// The Unix socket a new process (`okome edge --upgrade`) takes the listeners over.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: PathBuf,
    /// Reload when the config file changes (SIGHUP reloads either way).
    #[serde(default = "default_true")]
    pub watch_config: bool,
}

fn default_true() -> bool {
    true
}

fn default_upgrade_sock() -> PathBuf {
    PathBuf::from("/tmp/okome-edge-upgrade.sock")
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            threads: None,
            grace_period: default_grace(),
            upgrade_sock: default_upgrade_sock(),
            watch_config: true,
        }
    }
}

fn default_grace() -> Dur {
    Dur(Duration::from_secs(30))
}

/// Limits on what a client may send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body routed on its `"model"`; larger gets 413.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Largest request head (request line and headers); larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Requests this edge runs at once; more get 503 with Retry-After (default: no limit).
    #[serde(default)]
    pub max_requests: Option<u64>,
    /// Where tenants' limits (`ratelimit`) are counted: `local` (this edge's share, the
    /// default) or `redis` (shared by every edge; see `redis`).
    #[serde(default)]
    pub store: LimitStoreKind,
    /// The shared store, for `store: redis`.
    #[serde(default)]
    pub redis: Option<RedisSection>,
    /// Memory this node gives all resumable streams' buffers (each stream reserves its route's
    /// `resumable.buffer`); past it new streams are served as not resumable.
    #[serde(default = "default_resumable_buffer")]
    pub resumable_buffer: ByteSize,
}

fn default_resumable_buffer() -> ByteSize {
    ByteSize(crate::resume::DEFAULT_NODE_BUDGET)
}

/// Where tenants' limits are counted.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LimitStoreKind {
    /// Each edge enforces `ceil(limit / edges)` on its own.
    #[default]
    Local,
    /// Every edge counts in one Redis.
    Redis,
}

/// `limits.redis`: the shared limit store.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://host:port` or `host:port`.
    pub address: String,
    /// Longest wait for Redis on a request; past it the tenant's `on_limits_unavailable` applies.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Dur,
    /// How long a stream's concurrency lease lives without renewal (renewed every third of it).
    #[serde(default = "default_lease")]
    pub lease: Dur,
}

fn default_redis_timeout() -> Dur {
    Dur(okome_limits::DEFAULT_TIMEOUT)
}

fn default_lease() -> Dur {
    Dur(okome_limits::DEFAULT_LEASE)
}

fn default_max_header_bytes() -> ByteSize {
    ByteSize(64 << 10)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: default_max_body(),
            max_header_bytes: default_max_header_bytes(),
            max_requests: None,
            store: LimitStoreKind::Local,
            redis: None,
            resumable_buffer: default_resumable_buffer(),
        }
    }
}

fn default_max_body() -> ByteSize {
    ByteSize(16 << 20)
}

/// Upstream timeouts.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP connect to a backend; on expiry the next backend is tried.
    #[serde(default = "default_connect")]
    pub connect: Dur,
    /// Longest wait for the first token (queueing + prefill).
    #[serde(default = "default_first_token")]
    pub first_token: Dur,
    /// Longest silence between two tokens once streaming.
    #[serde(default = "default_idle")]
    pub idle: Dur,
    /// Longest a client may take to send a whole request head, from connecting or from its
    /// previous response on a kept-alive connection (which is closed after it, idle).
    #[serde(default = "default_client_head")]
    pub client_head: Dur,
    /// Longest one write to a client may block (a client that stops reading): the stream is
    /// then ended and the engine released.
    #[serde(default = "default_client_write")]
    pub client_write: Dur,
    /// Longest a client may take to send a whole request body once its head is in.
    #[serde(default = "default_client_body")]
    pub client_body: Dur,
}

fn default_client_body() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_client_head() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_client_write() -> Dur {
    Dur(Duration::from_secs(30))
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: default_connect(),
            first_token: default_first_token(),
            idle: default_idle(),
            client_head: default_client_head(),
            client_write: default_client_write(),
            client_body: default_client_body(),
        }
    }
}

fn default_connect() -> Dur {
    Dur(Duration::from_secs(3))
}
fn default_first_token() -> Dur {
    Dur(Duration::from_secs(120))
}
fn default_idle() -> Dur {
    Dur(Duration::from_secs(60))
}

/// Retry before the first response byte.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Total attempts per request across the pool and its fallbacks (1 = no retry).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Retries a pool allows per request, over time (0.2: at most one retry per five requests).
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f64,
    /// Retries a quiet pool keeps banked for a sudden failure.
    #[serde(default = "default_budget_reserve")]
    pub budget_reserve: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: default_attempts(),
            budget_ratio: default_budget_ratio(),
            budget_reserve: default_budget_reserve(),
        }
    }
}

fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_reserve() -> u32 {
    10
}

fn default_attempts() -> u32 {
    3
}

/// The wire protocol family a pool speaks: the engine client's kind.
pub use okome_engine::EngineKind as PoolKind;

/// A pool of interchangeable backends of one kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Engine kind: `vllm`, `ollama`, `tfserving`, `openai`, or `okome` (stream nodes).
    pub kind: PoolKind,
    /// Backends, `IP:PORT` or `HOST:PORT` (a name resolved by the system resolver).
    pub backends: Vec<Spanned<String>>,
    /// How often the pool's `HOST:PORT` backends are resolved again (default 5s, at least 1s).
    #[serde(default)]
    pub resolve_every: Option<Spanned<Dur>>,
    /// Models this pool serves; empty = learn them from the engines. TF Serving cannot list
    /// its models: empty relays any model name (the engine answers a name it lacks itself) and
    /// learns the names it answers with an `AVAILABLE` version; a list restricts the pool to it.
    #[serde(default)]
    pub models: Vec<String>,
    /// Active health checking.
    #[serde(default)]
    pub health_check: HealthCheck,
    /// Passive ejection after failures seen on live traffic.
    #[serde(default)]
    pub ejection: Ejection,
    /// The pool's own API key, sent upstream as `Authorization: Bearer …` (clients' keys never
    /// are): `{ file: PATH }` or `{ env: VAR }`.
    #[serde(default)]
    pub api_key: Option<SecretSource>,
    /// Speak TLS to the backends (requests and probes).
    #[serde(default)]
    pub tls: Option<Spanned<BackendTls>>,
    /// Consistent-hash stickiness: requests with the same key go to the same backend.
    #[serde(default)]
    pub sticky: Option<Spanned<Sticky>>,
    /// Kind `tfserving`: TF Serving's gRPC port (its `--port`, usually 8500) on each backend's
    /// host. gRPC calls (`tensorflow.serving.PredictionService`, `ModelService`) reaching the
    /// pool go there over HTTP/2 (h2c, or h2 with the pool's `tls`), and backends are probed
    /// there with `GetModelStatus` too; without it the pool takes no gRPC.
    #[serde(default)]
    pub grpc_port: Option<Spanned<u16>>,
    /// How a backend is picked: `least_loaded` (default) or `prefix_affinity`.
    #[serde(default)]
    pub pick: Option<Spanned<affinity::Pick>>,
    /// Tuning of `pick: prefix_affinity`.
    #[serde(default)]
    pub prefix_affinity: Option<Spanned<affinity::PrefixAffinity>>,
}

/// Sticky routing by consistent hashing (`pools.<name>.sticky`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    /// Key sources in order, the first present in the request wins: `header:<name>`,
    /// `api_key` (the caller's key, hashed) or `stream_id` (`x-okome-stream-id`).
    pub key: Vec<Spanned<String>>,
}

/// Active health check settings.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Time between checks (also the queue-depth scrape interval).
    #[serde(default = "default_hc_interval")]
    pub interval: Dur,
    /// Per-check timeout.
    #[serde(default = "default_hc_timeout")]
    pub timeout: Dur,
    /// Override the probe path (default per kind: vLLM `/health`, Ollama `/`, TF Serving
    /// `/v1/models/<model>`, okome `/readyz`).
    pub path: Option<String>,
    /// Probe this port on the backend's host instead of the backend's own port (default: the
    /// admin port 9090 for kind `okome`, the backend's port for the others).
    #[serde(default)]
    pub port: Option<u16>,
    /// Consecutive failures that mark a backend unhealthy.
    #[serde(default = "default_fall")]
    pub unhealthy_after: u32,
    /// Consecutive successes that mark it healthy again.
    #[serde(default = "default_rise")]
    pub healthy_after: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            interval: default_hc_interval(),
            timeout: default_hc_timeout(),
            path: None,
            port: None,
            unhealthy_after: default_fall(),
            healthy_after: default_rise(),
        }
    }
}

fn default_hc_interval() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_hc_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_fall() -> u32 {
    2
}
fn default_rise() -> u32 {
    1
}

/// Passive ejection on live-traffic failures (connect errors, 5xx).
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct Ejection {
    /// Consecutive failures (5xx, resets) that eject a backend; a refused connect ejects at once.
    #[serde(default = "default_eject_failures")]
    pub failures: u32,
    /// How long it stays out before it gets traffic again.
    #[serde(default = "default_eject_for")]
    pub duration: Dur,
}

impl Default for Ejection {
    fn default() -> Self {
        Ejection {
            failures: default_eject_failures(),
            duration: default_eject_for(),
        }
    }
}

fn default_eject_failures() -> u32 {
    3
}
fn default_eject_for() -> Dur {
    Dur(Duration::from_secs(5))
}

/// A route: which requests, which pool, which filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name used in metrics and logs.
    pub name: Spanned<String>,
    /// Conditions; all present ones must hold.
    #[serde(default, rename = "match")]
    pub matches: Match,
    /// Target pool. Without it the pool is chosen by the request's model among `pools`.
    pub pool: Option<Spanned<String>>,
    /// Candidate pools when `pool` is absent (default: every pool that speaks the request's API).
    #[serde(default)]
    pub pools: Vec<Spanned<String>>,
    /// Pools tried in order when the target pool has no backend left.
    #[serde(default)]
    pub fallback: Vec<Spanned<String>>,
    /// Request filters: header filters (`auth`, `require_header`, `set_headers`) run before the
    /// body is read, the others after; each group in the order listed.
    #[serde(default)]
    pub filters: Vec<Spanned<okome_filters::FilterSpec>>,
    /// Endpoints exposed, as `"METHOD[|METHOD] /path-glob"` or `default` (the inference and
    /// listing endpoints of the request's API). Absent: `[default]`.
    #[serde(default)]
    pub allow: Option<Vec<Spanned<String>>>,
    /// Endpoints refused even when `allow` covers them.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// Let real WebSocket upgrades (GET with `Connection: upgrade`) through this route.
    #[serde(default)]
    pub websocket: bool,
    /// The model used when a request on a model-restricted route names none (it must pass the
    /// route's filters like any other); without it such requests get 400.
    #[serde(default)]
    pub default_model: Option<Spanned<String>>,
    /// Continue a stream on another backend of the pool when its engine dies mid-stream
    /// (vLLM and OpenAI-compatible pools only).
    #[serde(default)]
    pub mid_stream_failover: Option<Spanned<bool>>,
    /// Resumable streams: `true` (defaults) or `{grace, buffer, keep}`. A streaming answer gets
    /// an id (`x-okome-stream-id`) and numbered events; a client that drops can resume it.
    #[serde(default)]
    pub resumable: Option<Spanned<Resumable>>,
    /// SSE keep-alive: after the engine has been silent this long mid-stream (queueing, long
    /// reasoning), write `: keep-alive` between events, so intermediaries with idle timeouts
    /// keep the stream. Never inside an event, never counted as a token, never on NDJSON.
    #[serde(default)]
    pub keepalive: Option<Spanned<Dur>>,
}

/// `routes[].resumable`: `true`/`false`, or the settings.
#[derive(Debug)]
pub enum Resumable {
    /// `true`: on with the defaults; `false`: off.
    On(bool),
    /// On with these settings.
    Tuned(ResumableTuning),
}

impl<'de> Deserialize<'de> for Resumable {
    // By hand rather than `untagged`, so a misspelt setting is named in the error.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Resumable;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or {grace, buffer, keep}")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Resumable, E> {
                Ok(Resumable::On(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Resumable, A::Error> {
                ResumableTuning::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Resumable::Tuned)
            }
        }
        d.deserialize_any(V)
    }
}

/// `routes[].resumable` settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumableTuning {
    /// How long the engine goes on after the last client left (default 30s).
    #[serde(default)]
    pub grace: Option<Dur>,
    /// The most bytes of events one stream keeps (default 1MiB); older cursors get 410.
    #[serde(default)]
    pub buffer: Option<ByteSize>,
    /// How long a finished stream can still be resumed (default 60s).
    #[serde(default)]
    pub keep: Option<Dur>,
}

/// Route conditions.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Request path starts with this.
    pub path_prefix: Option<String>,
    /// `Host` header equals this (port ignored).
    pub host: Option<String>,
    /// Each header equals its value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body's `"model"` matches this glob (`*` wildcard).
    pub model: Option<String>,
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not parse or does not fit the schema.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The YAML parses but makes no sense; one entry per problem.
    #[error("{}", .problems.iter().map(|p| format!("{}:{}: {}: {}", .file.display(), p.line, p.key, p.message)).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Every problem found.
        problems: Vec<compile::Problem>,
    },
}

/// Reads, parses and compiles an edge config file.
pub fn load(path: &Path) -> Result<CompiledEdge, ConfigError> {
    let text = okome_core::config::read_text(path, okome_core::config::MAX_CONFIG_FILE).map_err(
        |source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        },
    )?;
    parse(path, &text)
}

/// Parses and compiles config text; `path` names it in messages, and relative secret files
/// (`control.token`, pools' `api_key`) are read from its folder.
pub fn parse(path: &Path, text: &str) -> Result<CompiledEdge, ConfigError> {
    let cfg: EdgeConfig =
        okome_core::config::from_yaml(path, text).map_err(|message| ConfigError::Parse {
            file: path.to_path_buf(),
            message,
        })?;
    let folder = path.parent();
    use okome_core::config::MAX_PEM_FILE;
    // Certificates, keys and CA bundles: regular files of at most 1 MiB.
    let read_file = |p: &Path| match folder {
        Some(f) if p.is_relative() => okome_core::config::read_bounded(&f.join(p), MAX_PEM_FILE),
        _ => okome_core::config::read_bounded(p, MAX_PEM_FILE),
    };
    compile::compile(&cfg, &|s| s.load(folder), &read_file).map_err(|problems| {
        ConfigError::Invalid {
            file: path.to_path_buf(),
            problems,
        }
    })
}
