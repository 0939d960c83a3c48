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
}

impl Outcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::ClientDisconnect => "client_disconnect",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Everything one request accumulates on its way through the edge.
#[derive(Debug)]
pub struct RequestCtx {
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
    /// The body's token limit (`max_tokens`, `max_completion_tokens`, `options.num_predict`).
    pub max_tokens: Option<u64>,
    /// The pre-read request body, replayed to every attempt.
    pub body: Option<Bytes>,
    /// Pools to try, in order (target, then fallbacks).
    pub plan: Vec<usize>,
    /// Position in `plan`.
    pub plan_pos: usize,
    /// Backends already tried, as (pool, backend).
    pub tried: Vec<(usize, usize)>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why the last attempt failed (the retry metric's reason).
    pub last_failure: Option<super::retry::Failure>,
    /// The backend currently used, as (pool, backend).
    pub current: Option<(usize, usize)>,
    /// The in-flight slot on the current backend.
    pub inflight: Option<InflightGuard>,
    /// What the route's filters asked for.
    pub effects: FilterEffects,
    /// The stream tap, once a streaming response starts.
    pub tap: Option<StreamTap>,
    /// Gap histogram for this stream (labels resolved once per stream).
    pub gap_hist: Option<prometheus::Histogram>,
    /// TTFT already observed.
    pub ttft_recorded: bool,
    /// Status sent to the client.
    pub status: u16,
    /// Set when the edge answered with its own error.
    pub edge_error: Option<String>,
}

impl RequestCtx {
    /// A fresh context for a request accepted now.
    pub fn new() -> Self {
        RequestCtx {
            start: Instant::now(),
            request_id: String::new(),
            api: Api::OpenAi,
            route: None,
            model: None,
            wants_stream: false,
            max_tokens: None,
            body: None,
            plan: Vec::new(),
            plan_pos: 0,
            tried: Vec::new(),
            attempts: 0,
            last_failure: None,
            current: None,
            inflight: None,
            effects: FilterEffects::default(),
            tap: None,
            gap_hist: None,
            ttft_recorded: false,
            status: 0,
            edge_error: None,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
