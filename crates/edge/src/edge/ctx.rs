//! Per-request state carried through the proxy phases.

use crate::api::Api;
use crate::stream::StreamTap;
use crate::upstream::InflightGuard;
use bytes::Bytes;
use okome_filters::FilterEffects;
use std::time::Instant;

/// How a stream ended, as counted in `okome_streams_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The engine finished and every byte reached the client.
    Completed,
    /// The client went away first.
    ClientDisconnect,
    /// The engine failed: connection lost, error event, bad answer.
    UpstreamError,
    /// No first token or a too-long gap.
    Timeout,
    /// The edge shut down before the stream ended (it got a terminal error event).
    Shutdown,
}

impl Outcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::ClientDisconnect => "client_disconnect",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout => "timeout",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// Everything one request accumulates on its way through the edge, in parts: what the request
/// is, what the filters decided, the attempts, the stream, and the reply.
#[derive(Debug)]
pub struct RequestCtx {
    /// The edge (config generation) this request started on; it finishes on it, whatever
    /// reloads happen meanwhile.
    pub edge: std::sync::Arc<super::Edge>,
    /// Holds the drain open while the request runs.
    pub active: super::drain::Active,
    /// The connection's place under its listener's cap (`None`: first request not checked
    /// yet, or no cap); carried to the connection's next request.
    pub connection: Option<std::sync::Arc<super::connections::Slot>>,
    /// Whether the connection's slot was settled (taken or found not needed).
    pub connection_checked: bool,
    /// What the request is.
    pub req: RequestInfo,
    /// What the route's filters found and asked for (tenant, headers, admission).
    pub effects: FilterEffects,
    /// The pools and backends tried.
    pub attempt: AttemptState,
    /// The token stream, once a streaming response starts.
    pub stream: StreamState,
    /// What the client got.
    pub reply: Reply,
    /// Mid-stream failover state, on a route that turned it on, once a stream started.
    pub failover: Option<Box<crate::failover::State>>,
    /// The resumable stream this request makes, on a route that turned them on.
    pub resume: Option<Box<crate::resume::stream::Attached>>,
}

/// What the request is: read from its head and body in `request_filter`.
#[derive(Debug)]
pub struct RequestInfo {
    /// When the request was accepted.
    pub start: Instant,
    /// The request id: the client's `x-request-id` when it is a sane token, else a fresh one;
    /// sent to the engine and back to the client, and logged.
    pub request_id: String,
    /// The API the client speaks (decides error shapes).
    pub api: Api,
    /// Index of the matched route.
    pub route: Option<usize>,
    /// The request's model (body `"model"`, or TF Serving's path).
    pub model: Option<String>,
    /// Whether the body asked for a stream.
    pub wants_stream: bool,
    /// A real WebSocket upgrade let through (a tunnel, not a token stream).
    pub upgrade: bool,
    /// The body's token limit (`max_tokens`, `max_completion_tokens`, `options.num_predict`).
    pub max_tokens: Option<u64>,
    /// The pre-read request body, replayed to every attempt (dropped once the response starts).
    pub body: Option<Bytes>,
    /// The TCP peer (a client, or a proxy in front of this edge).
    pub peer: Option<std::net::SocketAddr>,
    /// The client behind a trusted proxy (`trusted_proxies`), from `X-Forwarded-For`; `None`:
    /// the peer is the client.
    pub client: Option<std::net::IpAddr>,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-Proto` is passed on).
    pub proxied: bool,
    /// The scheme the client used on this listener: `http`, or `https` on a TLS listener,
    /// sent as `X-Forwarded-Proto`.
    pub scheme: &'static str,
}

impl RequestInfo {
    /// A request accepted now, nothing known about it yet.
    pub fn new() -> Self {
        RequestInfo {
            start: Instant::now(),
            request_id: String::new(),
            api: Api::OpenAi,
            route: None,
            model: None,
            wants_stream: false,
            upgrade: false,
            max_tokens: None,
            body: None,
            peer: None,
            client: None,
            proxied: false,
            scheme: "http",
        }
    }
}

impl Default for RequestInfo {
    fn default() -> Self {
        Self::new()
    }
}

/// The attempts: which pools to try, which backends were tried, the current one.
#[derive(Debug, Default)]
pub struct AttemptState {
    /// Pools to try, in order (target, then fallbacks).
    pub plan: Vec<usize>,
    /// Position in `plan`.
    pub plan_pos: usize,
    /// Backends already tried, as (pool, backend).
    pub tried: Vec<(usize, usize)>,
    /// Attempts made so far.
    pub made: u32,
    /// Why the last attempt failed (the retry metric's reason).
    pub last_failure: Option<super::retry::Failure>,
    /// The backend currently used, as (pool, backend).
    pub current: Option<(usize, usize)>,
    /// The in-flight slot on the current backend.
    pub inflight: Option<InflightGuard>,
    /// The prompt's block hashes for prefix-affinity picks, with the pool they were cut for
    /// (kept for the retries in that pool).
    pub prefix: Option<(usize, Vec<u64>)>,
}

/// The token stream as the tap sees it.
#[derive(Debug, Default)]
pub struct StreamState {
    /// The stream tap, once a streaming response starts.
    pub tap: Option<StreamTap>,
    /// Gap histogram for this stream (labels resolved once per stream).
    pub gap_hist: Option<prometheus::Histogram>,
    /// TTFT already observed.
    pub ttft_recorded: bool,
    /// How a mid-stream failover's continuation ended the stream, when one did.
    pub spliced: Option<crate::failover::relay::Spliced>,
}

/// What the client got.
#[derive(Debug, Default)]
pub struct Reply {
    /// Status sent to the client.
    pub status: u16,
    /// Set when the edge answered with its own error.
    pub edge_error: Option<String>,
    /// An Ollama model listing held back to be filtered (see `edge::listing`).
    pub listing: Option<Vec<u8>>,
}

impl RequestCtx {
    /// A fresh context for a request accepted now on `edge`.
    pub fn new(edge: std::sync::Arc<super::Edge>) -> Self {
        RequestCtx {
            active: edge.drain.enter(),
            connection: None,
            connection_checked: false,
            edge,
            req: RequestInfo::new(),
            effects: FilterEffects::default(),
            attempt: AttemptState::default(),
            stream: StreamState::default(),
            reply: Reply::default(),
            failover: None,
            resume: None,
        }
    }
}
