//! `require_header`: a coarse gate, e.g. an internal token in front of a shared cluster.

use crate::{Filter, FilterEffects, FilterError, FilterRequest, Rejection, Verdict};
use async_trait::async_trait;
use http::{HeaderName, StatusCode};

/// Refuses requests without the header (401) or with a value not listed (403).
#[derive(Debug, Clone)]
pub struct RequireHeader {
    name: HeaderName,
    values: Vec<String>,
}

impl RequireHeader {
    /// Validates the header name.
    pub fn new(name: &str, values: &[String]) -> Result<Self, FilterError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| FilterError::InvalidHeader(name.to_owned()))?;
        Ok(RequireHeader {
            name,
            values: values.to_vec(),
        })
    }
}

#[async_trait]
impl Filter for RequireHeader {
    fn name(&self) -> &'static str {
        "require_header"
    }

    fn phase(&self) -> crate::Phase {
        crate::Phase::Headers
    }

    async fn on_request(&self, req: &FilterRequest<'_>, _effects: &mut FilterEffects) -> Verdict {
        let Some(v) = req.headers.get(&self.name) else {
            return Verdict::Reject(Rejection {
                status: StatusCode::UNAUTHORIZED,
                message: format!("missing header `{}`", self.name),
                code: "missing_header",
                retry_after: None,
            });
        };
        if self.values.is_empty() || self.values.iter().any(|a| a.as_bytes() == v.as_bytes()) {
            Verdict::Continue
        } else {
            Verdict::Reject(Rejection {
                status: StatusCode::FORBIDDEN,
                message: format!(
                    "header `{}` has a value this route does not accept",
                    self.name
                ),
                code: "header_not_accepted",
                retry_after: None,
            })
        }
    }
}
