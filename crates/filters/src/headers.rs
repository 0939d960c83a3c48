//! `set_headers`: change what the engine sees (e.g. add a team header, drop a client's cookie).

use crate::{Filter, FilterEffects, FilterError, FilterRequest, Verdict};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use std::collections::BTreeMap;

/// Sets and removes upstream request headers.
#[derive(Debug, Clone)]
pub struct SetHeaders {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl SetHeaders {
    /// Validates the names and values.
    pub fn new(set: &BTreeMap<String, String>, remove: &[String]) -> Result<Self, FilterError> {
        let set = set
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| FilterError::InvalidHeader(k.clone()))?;
                let value = HeaderValue::from_str(v)
                    .map_err(|_| FilterError::InvalidHeader(format!("{k}: {v}")))?;
                Ok((name, value))
            })
            .collect::<Result<_, _>>()?;
        let remove = remove
            .iter()
            .map(|k| {
                HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| FilterError::InvalidHeader(k.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(SetHeaders { set, remove })
    }
}

#[async_trait]
impl Filter for SetHeaders {
    fn name(&self) -> &'static str {
        "set_headers"
    }

    fn phase(&self) -> crate::Phase {
        crate::Phase::Headers
    }

    async fn on_request(&self, _req: &FilterRequest<'_>, effects: &mut FilterEffects) -> Verdict {
        effects.set_headers.extend(self.set.iter().cloned());
        effects.remove_headers.extend(self.remove.iter().cloned());
        Verdict::Continue
    }
}
