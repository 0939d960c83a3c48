//! Recognises what a line of a stream is by what its JSON means, not by its bytes: engines
//! differ in spacing (`"content": " x"` from Python servers), key order and escapes, and a tap
//! that misses one engine's format silently blinds the SLOs, the token limits and the ledger.
//!
//! Each payload is read once by [`payload`]'s scanner, which keeps only the fields the tap
//! needs: one pass over the bytes, no allocation.

use super::payload::{self, Unread};
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
    /// The `data:` lines of an event whose JSON spans several of them (a pretty-printing
    /// server), joined with `\n` as SSE says, until the blank line that ends the event. Empty
    /// for the usual one-line event, which is read where it stands.
    pending: Vec<u8>,
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
        if state.pending.is_empty() {
            return Event::Other;
        }
        let ev = match chunk_event(&state.pending) {
            Ok(ev) => ev,
            Err(_) => Event::Other,
        };
        state.pending.clear();
        return ev;
    }
    let Some(data) = line.strip_prefix(b"data:") else {
        return Event::Other;
    };
    let data = data.strip_prefix(b" ").unwrap_or(data);
    match state.named {
        Named::None => classify_data(state, data),
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
                output_tokens: Option<u64>,
            }
            let completion_tokens = serde_json::from_slice::<Ev>(data)
                .ok()
                .and_then(|e| e.response.usage)
                .and_then(|u| u.output_tokens);
            Event::Done { completion_tokens }
        }
        Named::Failed => Event::Error,
        Named::Other => Event::Other,
    }
}

/// One `data:` payload of an unnamed event (chat or completions chunk, error, `[DONE]`).
fn classify_data(state: &mut LineState, data: &[u8]) -> Event {
    if !state.pending.is_empty() {
        // A later line of a multi-line event: joined, read at the blank line.
        if state.pending.len() + 1 + data.len() <= super::framing::MAX_LINE {
            state.pending.push(b'\n');
            state.pending.extend_from_slice(data);
        } else {
            state.pending.clear();
        }
        return Event::Other;
    }
    if data.trim_ascii() == b"[DONE]" {
        return Event::Done {
            completion_tokens: None,
        };
    }
    match chunk_event(data) {
        Ok(ev) => ev,
        // The JSON goes on in the event's next `data:` line.
        Err(Unread::Incomplete) => {
            state.pending.extend_from_slice(data);
            Event::Other
        }
        Err(Unread::Invalid) => Event::Other,
    }
}

/// Reads an OpenAI-style chunk: a token when any choice carries generated text, reasoning or
/// a tool call; the engine's count when it carries `usage`; an error object.
fn chunk_event(data: &[u8]) -> Result<Event, Unread> {
    let p = payload::read(data)?;
    if p.error {
        return Ok(Event::Error);
    }
    Ok(match (p.token, p.completion_tokens) {
        (true, Some(completion_tokens)) => Event::TokenAndUsage { completion_tokens },
        (false, Some(completion_tokens)) => Event::Usage { completion_tokens },
        (true, None) => Event::Token,
        (false, None) => Event::Other,
    })
}

/// One NDJSON line (Ollama): each `"done": false` line is one token; the `"done": true` line
/// ends the stream with the engine's count.
fn classify_ndjson(line: &[u8]) -> Event {
    let Ok(p) = payload::read(line) else {
        return Event::Other;
    };
    if p.error {
        return Event::Error;
    }
    match p.done {
        Some(false) => Event::Token,
        Some(true) => Event::Done {
            completion_tokens: p.eval_count,
        },
        None => Event::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_sse(line: &[u8]) -> Event {
        classify(Format::Sse, &mut LineState::default(), line)
    }

    /// Feeds whole lines of one SSE stream; returns the non-`Other` events.
    fn sse_events(lines: &[&[u8]]) -> Vec<Event> {
        let mut st = LineState::default();
        lines
            .iter()
            .map(|l| classify(Format::Sse, &mut st, l))
            .filter(|e| *e != Event::Other)
            .collect()
    }

    /// The reproduction: llama-cpp-python's server writes JSON as Python's `json.dumps` does,
    /// with a space after each colon, and the byte-matching tap counted none of its tokens.
    #[test]
    fn spaced_json_from_python_servers_counts() {
        assert_eq!(
            classify_sse(
                br#"data: {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": " ai"}, "logprobs": null, "finish_reason": null}]}"#
            ),
            Event::Token
        );
        assert_eq!(
            classify_sse(br#"data: {"choices": [{"text": " world", "index": 0}]}"#),
            Event::Token
        );
        assert_eq!(
            classify_sse(
                br#"data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}"#
            ),
            Event::Usage {
                completion_tokens: 7
            }
        );
        assert_eq!(
            classify_sse(br#"data:   {  "error" : { "message" : "boom" , "code" : 500 } }"#),
            Event::Error
        );
    }

    #[test]
    fn key_order_escapes_and_whitespace_do_not_matter() {
        for line in [
            // keys reordered, the delta last
            &br#"data: {"model":"m","choices":[{"finish_reason":null,"index":0,"delta":{"content":"x","role":"assistant"}}],"id":"c"}"#[..],
            // the content as an escape only
            br#"data: {"choices":[{"delta":{"content":"\u00e9"}}]}"#,
            br#"data: {"choices":[{"delta":{"content":"\n"}}]}"#,
            // an escaped key
            br#"data: {"choices":[{"delta":{"cont\u0065nt":"x"}}]}"#,
            // newlines and tabs between tokens
            b"data: {\t\"choices\" :\r\n [ { \"delta\" : { \"content\" : \"x\" } } ] }",
            // a byte pattern of a token inside a string is not a token, but the real one is
            br#"data: {"note":"\"content\":\"","choices":[{"delta":{"content":"y"}}]}"#,
        ] {
            assert_eq!(classify_sse(line), Event::Token, "{}", String::from_utf8_lossy(line));
        }
        // A byte pattern inside a string value is no token.
        assert_eq!(
            classify_sse(
                br#"data: {"note":"\"content\":\"x","choices":[{"delta":{"content":""}}]}"#
            ),
            Event::Other
        );
        assert_eq!(
            classify_sse(br#"data: {"choices":[{"delta":{"content":null,"role":"assistant"}}]}"#),
            Event::Other
        );
    }

    #[test]
    fn parts_reasoning_and_tool_calls_are_tokens() {
        for line in [
            &br#"data: {"choices":[{"delta":{"content":[{"type":"text","text":"Hi"}]}}]}"#[..],
            br#"data: {"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#,
            br#"data: {"choices":[{"delta":{"reasoning":"hmm"}}]}"#,
            br#"data: {"choices":[{"delta":{"refusal":"no"}}]}"#,
            br#"data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\""}}]}}]}"#,
            br#"data: {"choices": [{"delta": {"tool_calls": [ {"index": 0} ]}}]}"#,
        ] {
            assert_eq!(classify_sse(line), Event::Token, "{}", String::from_utf8_lossy(line));
        }
        for line in [
            &br#"data: {"choices":[{"delta":{"content":[{"type":"text","text":""}]}}]}"#[..],
            br#"data: {"choices":[{"delta":{"tool_calls":[]}}]}"#,
            br#"data: {"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
            br#"data: not json"#,
            b"id: 7",
            b"retry: 100",
        ] {
            assert_eq!(
                classify_sse(line),
                Event::Other,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn usage_with_a_token_and_llamacpp_final_chunks() {
        // llama.cpp's server: compact JSON, keys sorted, the usage on the finish chunk or its own.
        assert_eq!(
            classify_sse(
                br#"data: {"choices":[{"delta":{"content":"!"},"finish_reason":"length","index":0}],"created":1,"id":"chatcmpl-x","model":"m","object":"chat.completion.chunk","usage":{"completion_tokens":4,"prompt_tokens":9,"total_tokens":13}}"#
            ),
            Event::TokenAndUsage {
                completion_tokens: 4
            }
        );
        assert_eq!(
            classify_sse(
                br#"data: {"choices":[],"usage":{"prompt_tokens":9},"timings":{"predicted_n":4}}"#
            ),
            Event::Other
        );
    }

    #[test]
    fn errors_by_meaning() {
        for line in [
            &br#"data: {"error": {"message": "...", "type": "BadRequestError", "param": null, "code": 400}}"#[..],
            br#"data: {"object":"error","message":"x","type":"BadRequestError","code":400}"#,
            br#"data: {"id":"x","error":{"code":500,"message":"y","type":"server_error"}}"#,
        ] {
            assert_eq!(classify_sse(line), Event::Error, "{}", String::from_utf8_lossy(line));
        }
        assert_eq!(
            classify_sse(br#"data: {"error":null,"choices":[{"delta":{"content":"x"}}]}"#),
            Event::Token
        );
        let mut st = LineState::default();
        assert_eq!(
            classify(
                Format::Ndjson,
                &mut st,
                br#"{ "error" : "model not found" }"#
            ),
            Event::Error
        );
    }

    /// A server that pretty-prints writes one event's JSON over several `data:` lines; SSE joins
    /// them, and so does the tap, at the blank line that ends the event.
    #[test]
    fn multi_line_data_is_joined() {
        let evs = sse_events(&[
            b"data: {",
            br#"data:   "choices": [{"delta": {"content": "Hi"}}]"#,
            b"data: }",
            b"",
            b"data: {",
            br#"data:   "choices": [], "usage": {"completion_tokens": 1}"#,
            b"data: }",
            b"",
            b"data: [DONE]",
            b"",
        ]);
        assert_eq!(
            evs,
            vec![
                Event::Token,
                Event::Usage {
                    completion_tokens: 1
                },
                Event::Done {
                    completion_tokens: None
                }
            ]
        );
    }

    #[test]
    fn ndjson_by_meaning() {
        let mut st = LineState::default();
        let mut c = |l: &[u8]| classify(Format::Ndjson, &mut st, l);
        assert_eq!(
            c(br#"{"model": "llama3.2", "message": {"role": "assistant", "content": "The"}, "done": false}"#),
            Event::Token
        );
        assert_eq!(
            c(br#"{"eval_count": 2, "done_reason": "stop", "done": true, "model": "m"}"#),
            Event::Done {
                completion_tokens: Some(2)
            }
        );
        assert_eq!(c(br#"{"status": "pulling manifest"}"#), Event::Other);
        assert_eq!(c(b""), Event::Other);
    }

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
