//! The client-facing APIs and their error shapes.
//!
//! Every error the edge itself produces is written in the shape of the API the client speaks,
//! so SDKs show a real message instead of a JSON decode failure.

use bytes::Bytes;
use serde_json::json;

/// Which API a request speaks, decided by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI-compatible `/v1/*` (vLLM, Ollama's `/v1`, other OpenAI servers).
    OpenAi,
    /// Ollama native `/api/*`.
    Ollama,
    /// TF Serving REST `/v1/models/{name}[...]`.
    TfServing,
}

impl Api {
    /// Classifies a request path.
    pub fn from_path(path: &str) -> Api {
        if path.starts_with("/api/") || path == "/api" {
            Api::Ollama
        } else if path.starts_with("/v1/models/") {
            Api::TfServing
        } else {
            Api::OpenAi
        }
    }

    /// TF Serving's model name from `/v1/models/{name}[/versions/N][:verb]`.
    pub fn tf_model(path: &str) -> Option<&str> {
        let rest = path.strip_prefix("/v1/models/")?;
        let end = rest.find(['/', ':']).unwrap_or(rest.len());
        let name = &rest[..end];
        (!name.is_empty()).then_some(name)
    }

    /// Renders an error body in this API's shape.
    pub fn error_body(self, status: u16, message: &str, code: &str) -> Bytes {
        let v = match self {
            Api::OpenAi => json!({
                "error": {
                    "message": message,
                    "type": openai_type(status),
                    "param": null,
                    "code": code,
                }
            }),
            Api::Ollama | Api::TfServing => json!({ "error": message }),
        };
        Bytes::from(v.to_string())
    }

    /// The terminal event that ends a stream cut by an upstream failure, in the stream's framing.
    pub fn stream_error(format: crate::stream::Format, message: &str) -> Option<Bytes> {
        use crate::stream::Format;
        let err = json!({ "error": { "message": message, "type": "upstream_error", "param": null, "code": 502 } });
        match format {
            Format::Sse => Some(Bytes::from(format!("data: {err}\n\ndata: [DONE]\n\n"))),
            Format::Ndjson => Some(Bytes::from(format!("{}\n", json!({ "error": message })))),
            Format::Opaque => None,
        }
    }
}

fn openai_type(status: u16) -> &'static str {
    match status {
        400 | 404 | 405 | 411 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        503 => "service_unavailable",
        504 => "timeout",
        _ => "server_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_pick_the_api() {
        assert_eq!(Api::from_path("/v1/chat/completions"), Api::OpenAi);
        assert_eq!(Api::from_path("/v1/models"), Api::OpenAi);
        assert_eq!(Api::from_path("/api/chat"), Api::Ollama);
        assert_eq!(
            Api::from_path("/v1/models/half_plus_two:predict"),
            Api::TfServing
        );
        assert_eq!(
            Api::tf_model("/v1/models/half_plus_two:predict"),
            Some("half_plus_two")
        );
        assert_eq!(Api::tf_model("/v1/models/m/versions/2:predict"), Some("m"));
    }

    #[test]
    fn error_shapes_follow_the_api() {
        let v: serde_json::Value =
            serde_json::from_slice(&Api::OpenAi.error_body(413, "too big", "request_too_large"))
                .unwrap_or_default();
        assert_eq!(v["error"]["message"], "too big");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["param"].is_null());
        let v: serde_json::Value =
            serde_json::from_slice(&Api::Ollama.error_body(503, "busy", "x")).unwrap_or_default();
        assert_eq!(v, json!({"error": "busy"}));
    }
}
