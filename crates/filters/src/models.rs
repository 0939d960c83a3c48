//! `allow_models`: a per-route model allowlist.

use crate::{Filter, FilterEffects, FilterError, FilterRequest, Glob, Rejection, Verdict};
use async_trait::async_trait;
use http::StatusCode;

/// Lets through only requests whose model matches one of the globs.
#[derive(Debug, Clone)]
pub struct AllowModels {
    globs: Vec<Glob>,
}

impl AllowModels {
    /// Compiles the globs; the list must not be empty.
    pub fn new(models: &[String]) -> Result<Self, FilterError> {
        if models.is_empty() {
            return Err(FilterError::Empty("models"));
        }
        Ok(AllowModels {
            globs: models.iter().map(|m| Glob::new(m)).collect(),
        })
    }
}

#[async_trait]
impl Filter for AllowModels {
    fn name(&self) -> &'static str {
        "allow_models"
    }

    fn restricts_models(&self) -> bool {
        true
    }

    fn allows_model(&self, model: &str, _effects: &FilterEffects) -> bool {
        self.globs.iter().any(|g| g.matches(model))
    }

    async fn on_request(&self, req: &FilterRequest<'_>, _effects: &mut FilterEffects) -> Verdict {
        match req.model {
            Some(m) if self.globs.iter().any(|g| g.matches(m)) => Verdict::Continue,
            // Listing requests name no model; the edge refuses any other request without one on
            // a route that has this filter (`restricts_models`), before filters run.
            None => Verdict::Continue,
            Some(m) => Verdict::Reject(Rejection {
                status: StatusCode::FORBIDDEN,
                message: format!("model `{m}` is not allowed on route `{}`", req.route),
                code: "model_not_allowed",
                retry_after: None,
            }),
        }
    }
}
