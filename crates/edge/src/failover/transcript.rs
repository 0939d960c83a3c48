//! What the client got of a stream that may be continued: the text, the first chunk's
//! identity, the tokens, and whether the stream ended properly. Parses each SSE event's JSON
//! (only on routes that turned failover on).

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

/// What a chunk of the original stream held, as far as failover cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Nothing that stops relaying.
    Fine,
    /// An in-band error event starts at this offset of the chunk (0 when it started in an
    /// earlier chunk): the bytes from there on must not reach the client.
    Error(usize),
}

/// The stream as relayed so far.
#[derive(Debug, Default)]
pub struct Transcript {
    partial: Vec<u8>,
    /// The generated text (chat deltas' `content`, completions' `text`), concatenated.
    pub text: String,
    /// `id`, `model`, `created`, `system_fingerprint` of the first chunk, to stamp on the
    /// continuation's chunks.
    pub identity: Vec<(&'static str, Value)>,
    /// `object` of the first chunk (`chat.completion.chunk`, `text_completion`).
    pub object: Option<Value>,
    /// Tokens generated: `token_ids` lengths where the engine returns them, else one per
    /// non-empty delta.
    pub tokens: u64,
    /// A tool-call delta went by.
    pub tool_calls: bool,
    /// A reasoning delta went by (`reasoning_content`, `reasoning`): the partial answer is not
    /// all in the text, so it cannot be continued faithfully.
    pub reasoning: bool,
    /// `data: [DONE]` went by.
    pub done: bool,
}

const IDENTITY: [&str; 4] = ["id", "model", "created", "system_fingerprint"];

impl Transcript {
    /// Feeds one relayed chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Seen {
        let mut rest = chunk;
        let mut offset = 0usize;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            // Where this line began in the chunk, unless it began in an earlier one.
            let start = if self.partial.is_empty() { offset } else { 0 };
            let error = if self.partial.is_empty() {
                self.line(trim_cr(&rest[..pos]))
            } else {
                // Taken out so the line can borrow it while `self` is updated; put back to
                // keep its capacity.
                let mut buf = std::mem::take(&mut self.partial);
                buf.extend_from_slice(&rest[..pos]);
                let error = self.line(trim_cr(&buf));
                buf.clear();
                self.partial = buf;
                error
            };
            if error {
                return Seen::Error(start);
            }
            offset += pos + 1;
            rest = &rest[pos + 1..];
        }
        if self.partial.len() + rest.len() <= crate::stream::framing::MAX_LINE {
            self.partial.extend_from_slice(rest);
        }
        Seen::Fine
    }

    /// Reads one line; true when it is an error event.
    fn line(&mut self, line: &[u8]) -> bool {
        let Some(data) = line.strip_prefix(b"data:") else {
            return false;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            self.done = true;
            return false;
        }
        if self.identity.is_empty() {
            // Once per stream: the fields stamped on every continued chunk.
            if let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(data) {
                if v.contains_key("error") {
                    return true;
                }
                self.object = v.get("object").cloned();
                self.identity = IDENTITY
                    .iter()
                    .filter_map(|&k| v.get(k).map(|x| (k, x.clone())))
                    .collect();
            }
        }
        // Per token: a typed, borrowing parse (the text is copied once, into `text`).
        let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(data) else {
            return false;
        };
        if chunk.error.is_some() {
            return true;
        }
        let Some(choice) = chunk.choices.first() else {
            return false;
        };
        let delta = choice.delta.as_ref();
        if delta.is_some_and(|d| d.tool_calls.is_some()) {
            self.tool_calls = true;
        }
        if delta.is_some_and(|d| d.reasoning_content.is_some() || d.reasoning.is_some()) {
            self.reasoning = true;
        }
        let piece = delta
            .and_then(|d| d.content.as_deref())
            .or(choice.text.as_deref())
            .unwrap_or_default();
        match &choice.token_ids {
            Some(ids) => self.tokens += ids.len() as u64,
            None if !piece.is_empty() => self.tokens += 1,
            None => {}
        }
        self.text.push_str(piece);
        false
    }
}

/// What the transcript reads of a chat or completions chunk.
#[derive(Deserialize)]
struct Chunk<'a> {
    error: Option<IgnoredAny>,
    #[serde(borrow, default)]
    choices: Vec<Choice<'a>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    token_ids: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    tool_calls: Option<IgnoredAny>,
    reasoning_content: Option<IgnoredAny>,
    reasoning: Option<IgnoredAny>,
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_identity_and_errors_across_chunks() {
        let stream = b"data: {\"id\":\"c-1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
data: {\"id\":\"c-1\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"id\":\"c-1\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n";
        for size in [1, 5, 64, stream.len()] {
            let mut t = Transcript::default();
            for c in stream.chunks(size) {
                assert_eq!(t.feed(c), Seen::Fine);
            }
            assert_eq!(t.text, "Hello");
            assert_eq!(t.tokens, 2);
            assert_eq!(t.identity[0], ("id", Value::from("c-1")));
            assert!(!t.done && !t.tool_calls);
        }
        let mut t = Transcript::default();
        let chunk =
            b"data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"error\":{\"message\":\"x\"}}\n\n";
        let at = chunk.len() - b"data: {\"error\":{\"message\":\"x\"}}\n\n".len();
        assert_eq!(t.feed(chunk), Seen::Error(at));
        assert_eq!(t.text, "a");
    }

    #[test]
    fn token_ids_count_and_tool_calls_are_seen() {
        let mut t = Transcript::default();
        t.feed(b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"text\":\"ab\",\"token_ids\":[5,6]}]}\n\n");
        assert_eq!((t.tokens, t.text.as_str(), t.tool_calls), (2, "ab", false));
        t.feed(
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n",
        );
        assert!(t.tool_calls && !t.reasoning);
        t.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\n");
        assert!(t.reasoning);
        t.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\\"q\\\"\",\"tool_calls\":null}}]}\n\ndata: [DONE]\n\n");
        assert_eq!(t.text, "ab\"q\"");
        assert!(t.done);
    }
}
