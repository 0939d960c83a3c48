//! `policy`: what the tenant may do (model allowed, body size) and where its model is served
//! (the snapshot's model routes). Runs after `auth`.

use crate::tenancy::PolicySource;
use crate::{Filter, FilterEffects, FilterRequest, Glob, Rejection, Verdict};
use async_trait::async_trait;
use http::StatusCode;
use std::sync::Arc;

/// Checks the tenant's model allowlist and body limit, and picks the pool from the snapshot.
#[derive(Debug)]
pub struct TenantPolicyFilter {
    policy: Arc<dyn PolicySource>,
}

impl TenantPolicyFilter {
    /// A policy filter over `policy`.
    pub fn new(policy: Arc<dyn PolicySource>) -> Self {
        TenantPolicyFilter { policy }
    }
}

#[async_trait]
impl Filter for TenantPolicyFilter {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn restricts_models(&self) -> bool {
        true
    }

    fn allows_model(&self, model: &str, effects: &FilterEffects) -> bool {
        effects
            .tenant
            .as_ref()
            .is_some_and(|t| t.models.iter().any(|g| Glob::new(g).matches(model)))
    }

    async fn on_request(&self, req: &FilterRequest<'_>, effects: &mut FilterEffects) -> Verdict {
        let Some(tenant) = effects.tenant.clone() else {
            return Verdict::Reject(Rejection {
                status: StatusCode::UNAUTHORIZED,
                message: "no tenant for this request: put the `auth` filter before `policy`".into(),
                code: "no_tenant",
                retry_after: None,
            });
        };
        if let Some(limit) = tenant.max_body_bytes {
            if req.body_len as u64 > limit {
                return Verdict::Reject(Rejection {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: format!(
                        "request body of {} bytes is over your limit of {limit} bytes",
                        req.body_len
                    ),
                    code: "request_too_large",
                    retry_after: None,
                });
            }
        }
        if let Some(model) = req.model {
            if !tenant.models.iter().any(|g| Glob::new(g).matches(model)) {
                return Verdict::Reject(Rejection {
                    status: StatusCode::FORBIDDEN,
                    message: format!("model `{model}` is not allowed for your key"),
                    code: "model_not_allowed",
                    retry_after: None,
                });
            }
            effects.route = self.policy.route_for_model(model);
        }
        Verdict::Continue
    }
}
