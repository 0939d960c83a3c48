//! Request filters for the okome edge.
//!
//! A filter looks at a request before a backend is chosen. It may let it through, change the
//! headers sent upstream, attach attributes for later filters, or reject it; the edge renders a
//! rejection in the error shape of the API the client speaks.
//!
//! Filters run in two phases ([`Phase`]): header filters (`auth`, `require_header`,
//! `set_headers`) before the request body is read, so an unauthenticated body is never
//! buffered; body filters (`policy`, `allow_models`, `ratelimit`) after the body's `"model"` is
//! known. Within a phase, in the order the route lists them.
//!
//! To write a filter: implement [`Filter`], add a variant to [`FilterSpec`] and a line to
//! [`compile`] (and to [`CompiledFilter::build`]).

mod auth;
mod glob;
mod headers;
mod local_limits;
mod models;
pub use okome_wire::control as policy;
mod ratelimit;
mod require_header;
pub mod tenancy;
mod tenant_policy;

pub use auth::{presented_key, Auth};
pub use glob::Glob;
pub use headers::SetHeaders;
pub use local_limits::LocalLimits;
pub use models::AllowModels;
pub use ratelimit::RateLimit;
pub use require_header::RequireHeader;
pub use tenant_policy::TenantPolicyFilter;

use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use std::collections::BTreeMap;

/// What a filter sees of a request.
#[derive(Debug)]
pub struct FilterRequest<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// Path, without the query.
    pub path: &'a str,
    /// Request headers as the client sent them.
    pub headers: &'a HeaderMap,
    /// The body's `"model"` (or TF Serving's model from the path), when there is one.
    pub model: Option<&'a str>,
    /// Request body size in bytes.
    pub body_len: usize,
    /// Name of the route that matched.
    pub route: &'a str,
    /// The body's `max_tokens` (or `max_completion_tokens`, Ollama's `options.num_predict`).
    pub max_tokens: Option<u64>,
}

/// Effects a filter asks for; the edge applies them before choosing a backend.
#[derive(Debug, Default)]
pub struct FilterEffects {
    /// Headers to set on the upstream request.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers to remove from the upstream request.
    pub remove_headers: Vec<HeaderName>,
    /// Key/value attributes for later filters, logs and metrics (e.g. a tenant id).
    pub attributes: BTreeMap<&'static str, String>,
    /// The tenant, once `auth` resolved the key.
    pub tenant: Option<std::sync::Arc<policy::TenantPolicy>>,
    /// The control plane's model route, overriding the edge route's pool.
    pub route: Option<policy::ModelRoute>,
    /// The rate limiter's hold; the edge settles it with the real token count at the end.
    pub admission: Option<Box<dyn tenancy::Admission>>,
}

/// A refusal, rendered by the edge in the client's API error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status (401, 403, 429 …).
    pub status: StatusCode,
    /// Human-readable reason, shown to the client.
    pub message: String,
    /// Machine-readable code (OpenAI `code`), e.g. `model_not_allowed`.
    pub code: &'static str,
    /// Seconds for `Retry-After`, when retrying later can succeed.
    pub retry_after: Option<u64>,
}

/// A filter's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the request go on to the next filter.
    Continue,
    /// Answer the client with this error; nothing is sent upstream.
    Reject(Rejection),
}

/// When a filter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// On the request head, before the body is read (`model` and `max_tokens` are not known).
    Headers,
    /// After the body is read and its `"model"` is known.
    Body,
}

/// A request filter.
#[async_trait]
pub trait Filter: Send + Sync + std::fmt::Debug {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// When it runs; body filters by default.
    fn phase(&self) -> Phase {
        Phase::Body
    }
    /// Whether it limits which models may be used. On a route with such a filter a request that
    /// names no model is refused (or given the route's `default_model`), never guessed at.
    fn restricts_models(&self) -> bool {
        false
    }
    /// Whether `model` may be used, given what earlier filters found (e.g. the tenant); used to
    /// list only the models a caller may use.
    fn allows_model(&self, _model: &str, _effects: &FilterEffects) -> bool {
        true
    }
    /// A body filter's early word, on the head, after the header filters ran (e.g. a tenant
    /// already at its stream limit): refusing here saves reading the body.
    async fn precheck(&self, _effects: &FilterEffects) -> Verdict {
        Verdict::Continue
    }
    /// Decides on a request; may record effects.
    async fn on_request(&self, req: &FilterRequest<'_>, effects: &mut FilterEffects) -> Verdict;
}

/// A filter as written in the edge config, e.g. `{type: set_headers, set: {x-team: a}}`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterSpec {
    /// Set or remove headers on the request sent to the engine.
    SetHeaders {
        /// Header name → value.
        #[serde(default)]
        set: BTreeMap<String, String>,
        /// Header names to drop.
        #[serde(default)]
        remove: Vec<String>,
    },
    /// Only let through requests whose model matches one of these globs; others get 403.
    AllowModels {
        /// Globs, `*` matches any run of characters.
        models: Vec<String>,
    },
    /// Resolve `Authorization: Bearer KEY` / `x-api-key` to a tenant via the control plane; 401 otherwise.
    Auth,
    /// Enforce the tenant's model allowlist and body limit; route by the control plane's model routes.
    Policy,
    /// Per-tenant requests/min, tokens/min and concurrent streams at this edge; 429 + Retry-After.
    Ratelimit {
        /// Tokens reserved at admission when the request sets no `max_tokens`.
        #[serde(default = "default_reserve")]
        default_reserve_tokens: u64,
    },
    /// Refuse requests that lack a header (401), or whose value is not among `values` (403).
    RequireHeader {
        /// Header name.
        name: String,
        /// Accepted values; empty means any value.
        #[serde(default)]
        values: Vec<String>,
    },
}

/// Why a filter spec cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// A header name or value is not valid HTTP.
    #[error("invalid header {0:?}")]
    InvalidHeader(String),
    /// A list that must not be empty is.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// A tenant-aware filter on an edge without a control plane.
    #[error("the `{0}` filter needs a `control:` section (the policy service) in the edge config")]
    NeedsControl(&'static str),
}

fn default_reserve() -> u64 {
    256
}

impl FilterSpec {
    /// Whether this filter consults the control plane.
    pub fn needs_control(&self) -> Option<&'static str> {
        match self {
            FilterSpec::Auth => Some("auth"),
            FilterSpec::Policy => Some("policy"),
            FilterSpec::Ratelimit { .. } => Some("ratelimit"),
            _ => None,
        }
    }
}

/// What filters are built with: the edge's policy cache and rate counters.
#[derive(Debug, Clone)]
pub struct FilterEnv {
    /// The policy cache. On an edge without a `control:` section it is [`NoControl`], which
    /// vouches for no key: compile refuses tenant-aware filters there, and were one built anyway
    /// it would refuse every request rather than let it through.
    pub policy: std::sync::Arc<dyn tenancy::PolicySource>,
    /// Rate and concurrency counters.
    pub limits: std::sync::Arc<dyn tenancy::LimitStore>,
}

impl Default for FilterEnv {
    fn default() -> Self {
        FilterEnv {
            policy: std::sync::Arc::new(NoControl),
            limits: std::sync::Arc::new(LocalLimits::new()),
        }
    }
}

/// The policy source of an edge without a control plane: knows no key and no route.
#[derive(Debug, Clone, Copy)]
pub struct NoControl;

#[async_trait]
impl tenancy::PolicySource for NoControl {
    async fn tenant_for_key(&self, _key: &str) -> tenancy::KeyVerdict {
        tenancy::KeyVerdict::Unavailable
    }
    fn route_for_model(&self, _model: &str) -> Option<policy::ModelRoute> {
        None
    }
    fn edges(&self) -> u32 {
        1
    }
}

/// A filter whose spec has been checked and whose values are parsed (header names, globs):
/// building it into a runnable [`Filter`] cannot fail.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    spec: FilterSpec,
    kind: Compiled,
}

#[derive(Debug, Clone)]
enum Compiled {
    Auth,
    Policy,
    Ratelimit(u64),
    SetHeaders(SetHeaders),
    AllowModels(AllowModels),
    RequireHeader(RequireHeader),
}

/// Checks a filter spec and parses its values.
pub fn compile(spec: &FilterSpec) -> Result<CompiledFilter, FilterError> {
    let kind = match spec {
        FilterSpec::Auth => Compiled::Auth,
        FilterSpec::Policy => Compiled::Policy,
        FilterSpec::Ratelimit {
            default_reserve_tokens,
        } => Compiled::Ratelimit(*default_reserve_tokens),
        FilterSpec::SetHeaders { set, remove } => {
            Compiled::SetHeaders(SetHeaders::new(set, remove)?)
        }
        FilterSpec::AllowModels { models } => Compiled::AllowModels(AllowModels::new(models)?),
        FilterSpec::RequireHeader { name, values } => {
            Compiled::RequireHeader(RequireHeader::new(name, values)?)
        }
    };
    Ok(CompiledFilter {
        spec: spec.clone(),
        kind,
    })
}

impl CompiledFilter {
    /// The spec it was compiled from.
    pub fn spec(&self) -> &FilterSpec {
        &self.spec
    }

    /// Builds the runnable filter over the edge's policy cache and counters.
    pub fn build(&self, env: &FilterEnv) -> Box<dyn Filter> {
        match &self.kind {
            Compiled::Auth => Box::new(Auth::new(env.policy.clone())),
            Compiled::Policy => Box::new(TenantPolicyFilter::new(env.policy.clone())),
            Compiled::Ratelimit(reserve) => Box::new(RateLimit::new(
                env.policy.clone(),
                env.limits.clone(),
                *reserve,
            )),
            Compiled::SetHeaders(f) => Box::new(f.clone()),
            Compiled::AllowModels(f) => Box::new(f.clone()),
            Compiled::RequireHeader(f) => Box::new(f.clone()),
        }
    }
}
