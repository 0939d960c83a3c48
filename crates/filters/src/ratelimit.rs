//! `ratelimit`: per-tenant requests/min, tokens/min and concurrent streams, counted by the
//! edge's [`LimitStore`] (this edge's share of each limit, or a shared store across edges).
//!
//! Tokens are charged while the stream runs: `max_tokens` (or a default) is reserved at
//! admission and settled with the real count when the stream ends, disconnects included.

use crate::tenancy::{LimitStore, PolicySource, Refusal};
use crate::{Filter, FilterEffects, FilterRequest, Rejection, Verdict};
use async_trait::async_trait;
use http::StatusCode;
use std::sync::Arc;

/// Admits or refuses (429 + Retry-After) by the tenant's limits.
#[derive(Debug)]
pub struct RateLimit {
    policy: Arc<dyn PolicySource>,
    store: Arc<dyn LimitStore>,
    default_reserve: u64,
}

impl RateLimit {
    /// A rate limiter; `default_reserve` tokens are reserved when a request sets no `max_tokens`.
    pub fn new(
        policy: Arc<dyn PolicySource>,
        store: Arc<dyn LimitStore>,
        default_reserve: u64,
    ) -> Self {
        RateLimit {
            policy,
            store,
            default_reserve,
        }
    }
}

#[async_trait]
impl Filter for RateLimit {
    fn name(&self) -> &'static str {
        "ratelimit"
    }

    async fn precheck(&self, effects: &FilterEffects) -> Verdict {
        let Some(tenant) = effects.tenant.as_ref() else {
            return Verdict::Continue;
        };
        match self.store.streams_full(tenant, self.policy.edges()) {
            Some(d) => refuse(&tenant.id, d),
            None => Verdict::Continue,
        }
    }

    async fn on_request(&self, req: &FilterRequest<'_>, effects: &mut FilterEffects) -> Verdict {
        let Some(tenant) = effects.tenant.clone() else {
            return Verdict::Reject(Rejection {
                status: StatusCode::UNAUTHORIZED,
                message: "no tenant for this request: put the `auth` filter before `ratelimit`"
                    .into(),
                code: "no_tenant",
                retry_after: None,
            });
        };
        let reserve = req.max_tokens.unwrap_or(self.default_reserve);
        match self.store.admit(&tenant, self.policy.edges(), reserve).await {
            Ok(a) => {
                effects.admission = Some(a);
                Verdict::Continue
            }
            Err(Refusal::Limited(d)) => refuse(&tenant.id, d),
            Err(Refusal::Unavailable { retry_after }) => Verdict::Reject(Rejection {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "the rate limit store cannot be reached and tenant `{}` fails closed; retry in {retry_after} s",
                    tenant.id
                ),
                code: "limits_unavailable",
                retry_after: Some(retry_after),
            }),
        }
    }
}

/// 429 with `Retry-After` for a denied admission.
fn refuse(tenant: &str, d: crate::tenancy::Denied) -> Verdict {
    Verdict::Reject(Rejection {
        status: StatusCode::TOO_MANY_REQUESTS,
        message: format!(
            "rate limit reached for tenant `{tenant}` ({}); retry in {} s",
            d.limit, d.retry_after
        ),
        code: "rate_limit_exceeded",
        retry_after: Some(d.retry_after),
    })
}
