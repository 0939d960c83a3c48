//! Recognises what a line of a stream is, by looking at a few bytes rather than parsing JSON;
//! only the rare usage/final line is parsed.

use serde::Deserialize;

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/event-stream`: OpenAI-style `data: {json}` events.
    Sse,
    /// `application/x-ndjson`: Ollama's one JSON object per line.
    Ndjson,
    /// Anything else (a plain JSON answer, TF Serving): relayed, not parsed.
    Opaque,
}

impl Format {
    /// Picks the format from a response `Content-Type`.
    pub fn from_content_type(ct: &[u8]) -> Format {
        let ct = ct.to_ascii_lowercase();
        if ct.starts_with(b"text/event-stream") {
            Format::Sse
        } else if ct.starts_with(b"application/x-ndjson") || ct.starts_with(b"application/jsonl") {
            Format::Ndjson
        } else {
            Format::Opaque
        }
    }
}

/// What one line carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Nothing the tap cares about (comments, blank lines, role-only deltas).
    Other,
    /// One generated token (one content delta).
    Token,
    /// The engine's own count of generated tokens (usage chunk or Ollama's final line).
    Usage {
        /// Tokens generated, as the engine counted them.
        completion_tokens: u64,
    },
    /// The same final line carried both a token and the count.
    TokenAndUsage {
        /// Tokens generated, as the engine counted them.
        completion_tokens: u64,
    },
    /// An error object inside a 200 stream.
    Error,
    /// The normal end of the stream (`data: [DONE]`, or Ollama's `"done":true`).
    Done {
        /// Ollama's final line carries the count.
        completion_tokens: Option<u64>,
    },
}

/// Classifies one line of a stream.
pub fn classify(format: Format, line: &[u8]) -> Event {
    match format {
        Format::Sse => classify_sse(line),
        Format::Ndjson => classify_ndjson(line),
        Format::Opaque => Event::Other,
    }
}

fn classify_sse(line: &[u8]) -> Event {
    let Some(data) = line.strip_prefix(b"data:") else {
        return Event::Other;
    };
    let data = data.strip_prefix(b" ").unwrap_or(data);
    if data == b"[DONE]" {
        return Event::Done {
            completion_tokens: None,
        };
    }
    if data.starts_with(b"{\"error\"") {
        return Event::Error;
    }
    let token = has_nonempty(data, b"\"content\":\"")
        || has_nonempty(data, b"\"text\":\"")
        || has_nonempty(data, b"\"reasoning_content\":\"")
        || memchr::memmem::find(data, b"\"tool_calls\":[{").is_some();
    if memchr::memmem::find(data, b"\"usage\":{").is_some() {
        #[derive(Deserialize)]
        struct Chunk {
            usage: Option<Usage>,
        }
        #[derive(Deserialize)]
        struct Usage {
            completion_tokens: u64,
        }
        if let Ok(Chunk { usage: Some(u) }) = serde_json::from_slice::<Chunk>(data) {
            return if token {
                Event::TokenAndUsage {
                    completion_tokens: u.completion_tokens,
                }
            } else {
                Event::Usage {
                    completion_tokens: u.completion_tokens,
                }
            };
        }
    }
    if token {
        Event::Token
    } else {
        Event::Other
    }
}

fn classify_ndjson(line: &[u8]) -> Event {
    if line.starts_with(b"{\"error\"") {
        return Event::Error;
    }
    if memchr::memmem::find(line, b"\"done\":false").is_some() {
        return Event::Token;
    }
    if memchr::memmem::find(line, b"\"done\":true").is_some() {
        #[derive(Deserialize)]
        struct Final {
            eval_count: Option<u64>,
        }
        let completion_tokens = serde_json::from_slice::<Final>(line)
            .ok()
            .and_then(|f| f.eval_count);
        return Event::Done { completion_tokens };
    }
    Event::Other
}

/// Whether `key` occurs followed by a non-empty string value.
fn has_nonempty(data: &[u8], key: &[u8]) -> bool {
    memchr::memmem::find_iter(data, key)
        .any(|pos| data.get(pos + key.len()).is_some_and(|&b| b != b'"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_only_and_empty_deltas_are_not_tokens() {
        assert_eq!(
            classify_sse(
                br#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#
            ),
            Event::Other
        );
        assert_eq!(
            classify_sse(br#"data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#),
            Event::Token
        );
        assert_eq!(
            classify_sse(br#"data: {"choices":[{"index":0,"text":" world"}]}"#),
            Event::Token
        );
        assert_eq!(classify_sse(b": keep-alive"), Event::Other);
    }

    #[test]
    fn content_types_pick_the_framing() {
        assert_eq!(
            Format::from_content_type(b"text/event-stream; charset=utf-8"),
            Format::Sse
        );
        assert_eq!(
            Format::from_content_type(b"application/x-ndjson"),
            Format::Ndjson
        );
        assert_eq!(
            Format::from_content_type(b"application/json"),
            Format::Opaque
        );
    }
}
