//! Whether a request may be continued on another backend after its engine died mid-stream:
//! decided once from the request body when the response starts.

use bytes::Bytes;
use serde_json::Value;

/// Which OpenAI endpoint the request is, which decides how it is continued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`: continued as a partial assistant message.
    Chat,
    /// `/v1/completions`: continued with the prompt plus the text generated so far.
    Completions,
}

/// Why a request cannot be continued (a terminal error event ends its stream instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotEligible {
    /// Not a streaming chat or completions request with a JSON object body.
    #[error("not a streaming chat or completions request")]
    Shape,
    /// Tool calls cannot be spliced: their arguments are not text to continue.
    #[error("the request offers tools")]
    Tools,
    /// Structured output constrains the whole answer; a continuation would restart the grammar.
    #[error("the request asks for structured output")]
    Structured,
    /// Several choices would each need their own continuation.
    #[error("the request asks for n > 1")]
    SeveralChoices,
    /// Logprobs of the spliced part would be those of another context.
    #[error("the request asks for logprobs")]
    Logprobs,
    /// The completion prompt is not one string (token ids, batches).
    #[error("the prompt is not a single string")]
    Prompt,
    /// Per-chunk usage or an echoed prompt would count or show the continuation's own prompt.
    #[error("the request asks for per-chunk usage or an echoed prompt")]
    Echo,
    /// The stream carried a tool call.
    #[error("the answer carries tool calls")]
    ToolCallSeen,
    /// The stream carried reasoning, which a partial assistant message cannot hold.
    #[error("the answer carries reasoning")]
    ReasoningSeen,
}

/// An eligible request, kept to build the continuation.
#[derive(Debug)]
pub struct Eligible {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The request body as the client sent it: the bytes already held (not a parsed copy,
    /// which would be several times larger for a long prompt); parsed again only on failover.
    pub body: Bytes,
    /// Whether the client asked for a usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
}

/// Decides from the request path and body.
pub fn check(path: &str, raw: Bytes) -> Result<Eligible, NotEligible> {
    let endpoint = if path.ends_with("/chat/completions") {
        Endpoint::Chat
    } else if path.ends_with("/completions") {
        Endpoint::Completions
    } else {
        return Err(NotEligible::Shape);
    };
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&raw) else {
        return Err(NotEligible::Shape);
    };
    if body.get("stream") != Some(&Value::Bool(true)) {
        return Err(NotEligible::Shape);
    }
    let set = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
    if set("tools") || set("tool_choice") || set("functions") || set("function_call") {
        return Err(NotEligible::Tools);
    }
    let text_format = body
        .get("response_format")
        .is_none_or(|f| f.is_null() || f.get("type").and_then(Value::as_str) == Some("text"));
    let guided = body
        .keys()
        .any(|k| k.starts_with("guided_") || k == "structured_outputs");
    if !text_format || guided {
        return Err(NotEligible::Structured);
    }
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1)
        || body
            .get("best_of")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 1)
    {
        return Err(NotEligible::SeveralChoices);
    }
    let logprobs = match body.get("logprobs") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(_) => true,
    };
    if logprobs || set("top_logprobs") {
        return Err(NotEligible::Logprobs);
    }
    let continuous = body
        .get("stream_options")
        .and_then(|o| o.get("continuous_usage_stats"))
        .and_then(Value::as_bool)
        == Some(true);
    if continuous || body.get("echo").and_then(Value::as_bool) == Some(true) {
        return Err(NotEligible::Echo);
    }
    match endpoint {
        Endpoint::Chat if !body.get("messages").is_some_and(Value::is_array) => {
            return Err(NotEligible::Shape)
        }
        Endpoint::Completions if !body.get("prompt").is_some_and(Value::is_string) => {
            return Err(NotEligible::Prompt)
        }
        _ => {}
    }
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Eligible {
        endpoint,
        body: raw,
        include_usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = "/v1/chat/completions";

    fn check(path: &str, body: &[u8]) -> Result<Eligible, NotEligible> {
        super::check(path, Bytes::copy_from_slice(body))
    }

    #[test]
    fn plain_streams_are_eligible_and_the_rest_is_not() {
        let ok = check(
            CHAT,
            br#"{"stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        )
        .map(|e| (e.endpoint, e.include_usage));
        assert_eq!(ok, Ok((Endpoint::Chat, true)));
        let no = |b: &str| check(CHAT, b.as_bytes()).err();
        assert_eq!(no(r#"{"messages":[]}"#), Some(NotEligible::Shape));
        assert_eq!(
            no(r#"{"stream":true,"messages":[],"tools":[{"type":"function"}]}"#),
            Some(NotEligible::Tools)
        );
        assert_eq!(
            no(r#"{"stream":true,"messages":[],"response_format":{"type":"json_object"}}"#),
            Some(NotEligible::Structured)
        );
        assert_eq!(
            no(r#"{"stream":true,"messages":[],"guided_json":{}}"#),
            Some(NotEligible::Structured)
        );
        assert_eq!(
            no(r#"{"stream":true,"messages":[],"n":2}"#),
            Some(NotEligible::SeveralChoices)
        );
        assert_eq!(
            no(r#"{"stream":true,"messages":[],"logprobs":true}"#),
            Some(NotEligible::Logprobs)
        );
        assert_eq!(
            check("/v1/completions", br#"{"stream":true,"prompt":[1,2]}"#).err(),
            Some(NotEligible::Prompt)
        );
        assert!(check("/v1/completions", br#"{"stream":true,"prompt":"a"}"#).is_ok());
        assert_eq!(
            check(
                "/v1/completions",
                br#"{"stream":true,"prompt":"a","echo":true}"#
            )
            .err(),
            Some(NotEligible::Echo)
        );
        assert_eq!(
            no(r#"{"stream":true,"messages":[],"stream_options":{"continuous_usage_stats":true}}"#),
            Some(NotEligible::Echo)
        );
        assert!(check(
            CHAT,
            br#"{"stream":true,"messages":[],"response_format":{"type":"text"},"logprobs":false}"#
        )
        .is_ok());
    }
}
