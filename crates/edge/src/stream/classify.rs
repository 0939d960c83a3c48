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

/// What the last SSE `event:` line named, for the `data:` line that follows it. OpenAI's
/// Responses API names every event (`event: response.output_text.delta`); chat and completions
/// streams name none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Named {
    /// No `event:` line since the last blank line.
    #[default]
    None,
    /// `response.output_text.delta` (and the reasoning and tool-call argument deltas): a token.
    Delta,
    /// `response.completed` / `response.incomplete`: the stream's end, with the usage.
    End,
    /// `response.failed` / `error`: the engine failed.
    Failed,
    /// Any other named event: bookkeeping (`response.created`, `….done`, …).
    Other,
}

/// State carried between the lines of one stream.
#[derive(Debug, Default)]
pub struct LineState {
    named: Named,
    /// Named `response.*` events seen: a Responses API stream, which must end with
    /// `response.completed`; also the next event's `sequence_number`.
    pub responses_events: u64,
}

/// Classifies one line of a stream.
pub fn classify(format: Format, state: &mut LineState, line: &[u8]) -> Event {
    match format {
        Format::Sse => classify_named(state, line),
        Format::Ndjson => classify_ndjson(line),
        Format::Opaque => Event::Other,
    }
}

/// SSE with named events: the `event:` line decides what its `data:` line is; a data line
/// without one is read as a chat/completions chunk.
fn classify_named(state: &mut LineState, line: &[u8]) -> Event {
    if let Some(name) = line.strip_prefix(b"event:") {
        let name = name.strip_prefix(b" ").unwrap_or(name);
        if name.starts_with(b"response.") || name == b"error" {
            state.responses_events += 1;
        }
        state.named = match name {
            b"response.output_text.delta"
            | b"response.reasoning_text.delta"
            | b"response.function_call_arguments.delta" => Named::Delta,
            b"response.completed" | b"response.incomplete" => Named::End,
            b"response.failed" | b"error" => Named::Failed,
            _ => Named::Other,
        };
        return Event::Other;
    }
    if line.is_empty() {
        state.named = Named::None;
        return Event::Other;
    }
    if !line.starts_with(b"data:") {
        return Event::Other;
    }
    match state.named {
        Named::None => classify_sse(line),
        Named::Delta => Event::Token,
        Named::End => {
            #[derive(Deserialize)]
            struct Ev {
                response: Resp,
            }
            #[derive(Deserialize)]
            struct Resp {
                usage: Option<Usage>,
            }
            #[derive(Deserialize)]
            struct Usage {
                output_tokens: u64,
            }
            let data = &line[b"data:".len()..];
            let completion_tokens = serde_json::from_slice::<Ev>(data)
                .ok()
                .and_then(|e| e.response.usage)
                .map(|u| u.output_tokens);
            Event::Done { completion_tokens }
        }
        Named::Failed => Event::Error,
        Named::Other => Event::Other,
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
    fn responses_events_are_named_and_only_deltas_are_tokens() {
        let mut st = LineState::default();
        let mut run = |lines: &[&[u8]]| -> Vec<Event> {
            lines
                .iter()
                .map(|l| classify(Format::Sse, &mut st, l))
                .collect()
        };
        let evs = run(&[
            b"event: response.content_part.added",
            br#"data: {"content_index":0,"item_id":"msg_1","output_index":0,"part":{"annotations":[],"text":"","type":"output_text","logprobs":[]},"sequence_number":3,"type":"response.content_part.added"}"#,
            b"",
            b"event: response.output_text.delta",
            br#"data: {"content_index":0,"delta":"Hi","item_id":"msg_1","logprobs":[],"output_index":0,"sequence_number":4,"type":"response.output_text.delta"}"#,
            b"",
            b"event: response.output_text.done",
            br#"data: {"content_index":0,"item_id":"msg_1","logprobs":[],"output_index":0,"text":"Hi","sequence_number":5,"type":"response.output_text.done"}"#,
            b"",
            b"event: response.completed",
            br#"data: {"response":{"id":"resp_1","output":[{"content":[{"text":"Hi"}]}],"usage":{"input_tokens":9,"input_tokens_details":{"cached_tokens":0},"output_tokens":1,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":10}},"sequence_number":6,"type":"response.completed"}"#,
            b"",
        ]);
        let tokens = evs.iter().filter(|e| **e == Event::Token).count();
        assert_eq!(tokens, 1, "{evs:?}");
        assert_eq!(
            evs[10],
            Event::Done {
                completion_tokens: Some(1)
            }
        );
        assert_eq!(st.responses_events, 4);
        // After the blank line, an unnamed chat chunk is read as before.
        let e = classify(
            Format::Sse,
            &mut st,
            br#"data: {"choices":[{"index":0,"delta":{"content":"x"}}]}"#,
        );
        assert_eq!(e, Event::Token);
        let mut st = LineState::default();
        assert_eq!(
            classify(Format::Sse, &mut st, b"event: error"),
            Event::Other
        );
        assert_eq!(
            classify(Format::Sse, &mut st, br#"data: {"code":"x","message":"boom","param":null,"sequence_number":1,"type":"error"}"#),
            Event::Error
        );
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
