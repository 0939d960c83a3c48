//! Request shapes and helpers shared by the OpenAI-compatible routes (vLLM and Ollama's `/v1`).

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// Serializes as JSON `null` (fields the engines always print as null).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Null;

impl Serialize for Null {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_none()
    }
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
    #[serde(default)]
    pub continuous_usage_stats: Option<bool>,
}

/// One chat message; its role and text matter here.
#[derive(Debug, Deserialize)]
pub(crate) struct Message {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub content: Option<Value>,
}

/// The fields of a chat or completions request the simulator reads.
#[derive(Debug, Deserialize)]
pub(crate) struct GenBody {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    #[serde(default)]
    pub prompt: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// vLLM: continue the final (assistant) message instead of starting a new one.
    #[serde(default)]
    pub continue_final_message: Option<bool>,
    /// vLLM: add the template's assistant preamble (default true; must be false to continue).
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
}

impl GenBody {
    /// The client's token limit (`max_completion_tokens` wins over `max_tokens`).
    pub(crate) fn limit(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Whether to send a usage chunk.
    pub(crate) fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// Whether every chunk carries usage (vLLM's `continuous_usage_stats`).
    pub(crate) fn continuous_usage(&self) -> bool {
        self.include_usage()
            && self
                .stream_options
                .as_ref()
                .and_then(|o| o.continuous_usage_stats)
                .unwrap_or(false)
    }

    /// Concatenated prompt text of the messages.
    pub(crate) fn chat_prompt(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for m in self.messages.iter().flatten() {
            if let Some(c) = &m.content {
                push_text(c, &mut out);
            }
        }
        out
    }

    /// With `continue_final_message`: the text of the other messages and of the final
    /// (assistant) one being continued; `None` when the last message is not the assistant's.
    pub(crate) fn continued_chat(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let (last, before) = self.messages.as_ref()?.split_last()?;
        if last.role.as_deref() != Some("assistant") {
            return None;
        }
        let mut original = Vec::new();
        for m in before {
            if let Some(c) = &m.content {
                push_text(c, &mut original);
            }
        }
        let mut partial = Vec::new();
        if let Some(c) = &last.content {
            push_text(c, &mut partial);
        }
        Some((original, partial))
    }

    /// Prompt text of a completions request.
    pub(crate) fn completion_prompt(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(p) = &self.prompt {
            push_text(p, &mut out);
        }
        out
    }
}

/// Appends the text in a content value (string, array of strings, or parts with `text`).
fn push_text(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::String(s) => out.extend_from_slice(s.as_bytes()),
        Value::Array(a) => a.iter().for_each(|x| push_text(x, out)),
        Value::Object(o) => {
            if let Some(t) = o.get("text") {
                push_text(t, out);
            }
        }
        // Token-id prompts: about one token per id.
        Value::Number(_) => out.extend_from_slice(b"tokn"),
        _ => {}
    }
}

/// `data: <json>\n\n`.
pub(crate) fn sse<T: Serialize>(v: &T) -> bytes::Bytes {
    let mut b = Vec::with_capacity(256);
    b.extend_from_slice(b"data: ");
    // Plain structs of strings and numbers always serialize.
    let _ = serde_json::to_writer(&mut b, v);
    b.extend_from_slice(b"\n\n");
    b.into()
}

/// The SSE terminator.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";
