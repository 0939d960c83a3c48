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
    /// TF Serving gRPC (`content-type: application/grpc…`): `/tensorflow.serving.*/{method}`,
    /// unary, relayed to a pool's `grpc_port`.
    TfServingGrpc,
}

impl Api {
    /// Classifies a request path. `/v1/models/{x}` is both OpenAI's `models.retrieve` and TF
    /// Serving's model status: it is TF Serving's when it has a TF Serving suffix (`:predict`,
    /// `/versions/N`, `/labels/L`, `/metadata`) or when `is_tf_model(x)` says a TF Serving pool
    /// serves `x`; otherwise OpenAI's (whose model ids may contain `/`).
    pub fn classify(path: &str, is_tf_model: impl Fn(&str) -> bool) -> Api {
        if path.starts_with("/api/") || path == "/api" {
            return Api::Ollama;
        }
        let Some(rest) = path.strip_prefix("/v1/models/") else {
            return Api::OpenAi;
        };
        let tf_suffix = [":predict", ":classify", ":regress", "/metadata"]
            .iter()
            .any(|s| rest.ends_with(s))
            || rest.contains("/versions/")
            || rest.contains("/labels/");
        if tf_suffix || is_tf_model(rest) {
            Api::TfServing
        } else {
            Api::OpenAi
        }
    }

    /// Whether a request head is a gRPC call (`content-type: application/grpc[+proto|;…]`):
    /// such a request speaks [`Api::TfServingGrpc`] whatever its path, so that even a refusal
    /// reaches the client as a gRPC status.
    pub fn is_grpc(headers: &http::HeaderMap) -> bool {
        headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.get(..16))
            .is_some_and(|v| v.eq_ignore_ascii_case("application/grpc"))
    }

    /// OpenAI's `models.retrieve` id from `/v1/models/{id}` (ids may contain `/`).
    pub fn openai_model_id(path: &str) -> Option<&str> {
        path.strip_prefix("/v1/models/").filter(|id| !id.is_empty())
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
            // A gRPC error has no body (`respond` writes it as trailers); this one is for logs.
            Api::Ollama | Api::TfServing | Api::TfServingGrpc => json!({ "error": message }),
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

impl Api {
    /// The `error` event that ends a Responses API stream cut by an upstream failure
    /// (`ResponseErrorEvent`; `sequence` continues the stream's numbering).
    pub fn responses_stream_error(message: &str, sequence: u64) -> Bytes {
        let ev = json!({ "code": "upstream_error", "message": message, "param": null, "sequence_number": sequence, "type": "error" });
        Bytes::from(format!("event: error\ndata: {ev}\n\n"))
    }
}

fn openai_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        // Every other client error (400, 404, 408, 410, 411, 413, 422, 431, …) is the request's.
        400..=499 => "invalid_request_error",
        503 => "service_unavailable",
        504 => "timeout",
        _ => "server_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reproduction (security round three, 8): a 431 was typed `server_error`.
    #[test]
    fn client_errors_are_typed_as_the_request_s() {
        for status in [400, 404, 408, 410, 413, 431] {
            assert_eq!(openai_type(status), "invalid_request_error", "{status}");
        }
        assert_eq!(openai_type(429), "rate_limit_error");
        assert_eq!(openai_type(502), "server_error");
    }

    #[test]
    fn paths_pick_the_api() {
        let tf = |m: &str| m == "half_plus_two";
        assert_eq!(Api::classify("/v1/chat/completions", tf), Api::OpenAi);
        assert_eq!(Api::classify("/v1/models", tf), Api::OpenAi);
        assert_eq!(Api::classify("/api/chat", tf), Api::Ollama);
        assert_eq!(
            Api::classify("/v1/models/half_plus_two:predict", tf),
            Api::TfServing
        );
        assert_eq!(
            Api::classify("/v1/models/half_plus_two", tf),
            Api::TfServing
        );
        assert_eq!(
            Api::classify("/v1/models/other/versions/2", tf),
            Api::TfServing
        );
        assert_eq!(
            Api::classify("/v1/models/other/metadata", tf),
            Api::TfServing
        );
        // OpenAI's models.retrieve, ids with a slash included.
        assert_eq!(Api::classify("/v1/models/Qwen/Qwen3-8B", tf), Api::OpenAi);
        assert_eq!(Api::classify("/v1/models/llama3.2:latest", tf), Api::OpenAi);
        assert_eq!(
            Api::openai_model_id("/v1/models/Qwen/Qwen3-8B"),
            Some("Qwen/Qwen3-8B")
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
