//! `auth`: `Authorization: Bearer KEY` or `x-api-key: KEY` → tenant, through the policy cache.

use crate::tenancy::{KeyVerdict, PolicySource};
use crate::{Filter, FilterEffects, FilterRequest, Rejection, Verdict};
use async_trait::async_trait;
use http::StatusCode;
use std::sync::Arc;

/// Resolves the request's API key to a tenant; refuses with 401 otherwise.
#[derive(Debug)]
pub struct Auth {
    policy: Arc<dyn PolicySource>,
}

impl Auth {
    /// An auth filter over `policy`.
    pub fn new(policy: Arc<dyn PolicySource>) -> Self {
        Auth { policy }
    }
}

/// The API key a request presents, if any.
pub fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some(k) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(k.trim()).filter(|k| !k.is_empty());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

fn unauthorized(message: &str, code: &'static str) -> Verdict {
    Verdict::Reject(Rejection {
        status: StatusCode::UNAUTHORIZED,
        message: message.to_owned(),
        code,
        retry_after: None,
    })
}

#[async_trait]
impl Filter for Auth {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn phase(&self) -> crate::Phase {
        crate::Phase::Headers
    }

    async fn on_request(&self, req: &FilterRequest<'_>, effects: &mut FilterEffects) -> Verdict {
        let Some(key) = presented_key(req.headers) else {
            return unauthorized(
                "missing API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
                "missing_api_key",
            );
        };
        match self.policy.tenant_for_key(key).await {
            KeyVerdict::Tenant(t) => {
                effects.attributes.insert("tenant", t.id.clone());
                effects.attributes.insert("priority", t.priority.as_str().to_owned());
                effects.tenant = Some(t);
                Verdict::Continue
            }
            KeyVerdict::Unknown => unauthorized("invalid API key", "invalid_api_key"),
            KeyVerdict::Unavailable => unauthorized(
                "the API key cannot be verified right now (policy service unreachable); retry later",
                "key_unverifiable",
            ),
        }
    }
}
