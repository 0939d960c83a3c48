//! Recognises what a line of a stream is, by looking at a few bytes rather than parsing JSON;
//! only the rare usage/final line is parsed.

use memchr::memmem::Finder;
use serde::Deserialize;
use std::sync::LazyLock;

// Searchers are built once: building one per line was 2 % of the edge's CPU under load.
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\":{"));
static TOOL_CALLS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"tool_calls\":[{"));
static DONE_FALSE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"done\":false"));
static DONE_TRUE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"done\":true"));
static CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\":\""));
static TEXT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"text\":\""));
static REASONING: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"reasoning_content\":\""));

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
    let token = has_nonempty(data, &CONTENT)
        || has_nonempty(data, &TEXT)
        || has_nonempty(data, &REASONING)
        || TOOL_CALLS.find(data).is_some();
    if USAGE.find(data).is_some() {
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
    if DONE_FALSE.find(line).is_some() {
        return Event::Token;
    }
    if DONE_TRUE.find(line).is_some() {
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

/// Whether the finder's key occurs followed by a non-empty string value.
fn has_nonempty(data: &[u8], key: &Finder<'static>) -> bool {
    let n = key.needle().len();
    key.find_iter(data)
        .any(|pos| data.get(pos + n).is_some_and(|&b| b != b'"'))
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
