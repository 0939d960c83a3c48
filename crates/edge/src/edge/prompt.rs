//! The start of a request's prompt as chained block hashes, for prefix-affinity picks.
//!
//! The prompt is rendered the way it reaches the engine's tokenizer, in order: each chat
//! message as its role and its text, or a completion's prompt (Ollama's `system` first). The
//! rendering is fed, without being collected, into fixed-size blocks; block `i`'s hash covers
//! the model and blocks `0..=i`, like the engines' own KV-cache block hashes, so two prompts
//! share block `i` only if they are equal up to its end. Only whole blocks count (a prefix
//! cache reuses whole blocks), up to a byte limit: the work is O(limit) after the JSON parse.
//! A message with something other than text (an image) ends the rendering there: nothing after
//! it is hashed, so two prompts are never taken as alike past an image they may not share.

use crate::api::Api;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::borrow::Cow;
use std::hash::{DefaultHasher, Hasher};

/// Separates a message's role from its text.
const ROLE_END: &[u8] = &[0x1e];
/// Ends a message.
const MESSAGE_END: &[u8] = &[0x1f];

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow, default)]
    prompt: Option<Prompt<'a>>,
    /// Ollama `/api/generate`'s system prompt (rendered before `prompt`).
    #[serde(borrow, default)]
    system: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    /// Ollama's images of a message.
    #[serde(default)]
    images: Option<IgnoredAny>,
}

/// A message's content: text, content parts, or something else. Read by hand rather than as an
/// untagged enum, which would copy every message into a buffer first.
enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("message content")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Content<'a>, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Content<'a>, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Content<'a>, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element::<Part<'a>>()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Content<'a>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Content::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Content<'a>, E> {
                Ok(Content::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Content<'a>, E> {
                Ok(Content::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Content<'a>, E> {
                Ok(Content::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Content<'a>, E> {
                Ok(Content::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// An OpenAI content part: `{"type":"text","text":…}` or a non-text part (no `text`).
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Texts(#[serde(borrow)] Vec<Cow<'a, str>>),
    Tokens(Vec<u32>),
    Other(IgnoredAny),
}

/// Chained hashes of whole `block`-byte blocks of a stream of bytes, up to `limit` bytes.
struct Blocks<'o> {
    block: usize,
    limit: usize,
    fed: usize,
    in_block: usize,
    hasher: DefaultHasher,
    out: &'o mut Vec<u64>,
}

impl<'o> Blocks<'o> {
    fn new(seed: u64, block: usize, limit: usize, out: &'o mut Vec<u64>) -> Self {
        let mut hasher = DefaultHasher::new();
        hasher.write_u64(seed);
        Blocks {
            block,
            limit,
            fed: 0,
            in_block: 0,
            hasher,
            out,
        }
    }

    /// Feeds bytes; `false` once the limit is reached (the rest is not needed).
    fn feed(&mut self, mut b: &[u8]) -> bool {
        while !b.is_empty() && self.fed < self.limit {
            let take = (self.block - self.in_block)
                .min(self.limit - self.fed)
                .min(b.len());
            // SipHash's `write` is a byte stream: how the bytes are split does not matter.
            self.hasher.write(&b[..take]);
            self.in_block += take;
            self.fed += take;
            b = &b[take..];
            if self.in_block == self.block {
                let h = self.hasher.finish();
                self.out.push(h);
                self.hasher = DefaultHasher::new();
                self.hasher.write_u64(h);
                self.in_block = 0;
            }
        }
        self.fed < self.limit
    }
}

/// Writes into `out` the chained hashes of the whole `block`-byte blocks among the first
/// `limit` bytes of the prompt of `body` (a request of `api` for `model`). Leaves `out` empty
/// when the body has no prompt to read (not JSON, TF Serving, shorter than a block).
pub fn prefix_blocks(
    api: Api,
    body: &[u8],
    model: Option<&str>,
    block: usize,
    limit: usize,
    out: &mut Vec<u64>,
) {
    out.clear();
    if api == Api::TfServing || block == 0 {
        return;
    }
    let Ok(b) = serde_json::from_slice::<Body<'_>>(body) else {
        return;
    };
    // Different models never share a cache: the model seeds the chain.
    let mut seed = DefaultHasher::new();
    seed.write(model.unwrap_or("").as_bytes());
    let mut blocks = Blocks::new(seed.finish(), block, limit, out);
    if let Some(messages) = &b.messages {
        render_messages(messages, &mut blocks);
        return;
    }
    if let Some(system) = &b.system {
        let fed = blocks.feed(b"system")
            && blocks.feed(ROLE_END)
            && blocks.feed(system.as_bytes())
            && blocks.feed(MESSAGE_END);
        if !fed {
            return;
        }
    }
    match &b.prompt {
        Some(Prompt::Text(t)) => {
            blocks.feed(t.as_bytes());
        }
        // A batch of one prompt is that prompt; a real batch has no single prefix.
        Some(Prompt::Texts(t)) if t.len() == 1 => {
            blocks.feed(t[0].as_bytes());
        }
        Some(Prompt::Tokens(ids)) => {
            for id in ids {
                if !blocks.feed(&id.to_le_bytes()) {
                    break;
                }
            }
        }
        _ => {}
    }
}

/// Feeds each message as role, separator, text, end; stops at a non-text part or the limit.
fn render_messages(messages: &[Message<'_>], blocks: &mut Blocks<'_>) {
    for m in messages {
        let role = m.role.as_deref().unwrap_or("");
        if !(blocks.feed(role.as_bytes()) && blocks.feed(ROLE_END)) {
            return;
        }
        match &m.content {
            None => {}
            Some(Content::Text(t)) if !blocks.feed(t.as_bytes()) => return,
            Some(Content::Text(_)) => {}
            Some(Content::Parts(parts)) => {
                for p in parts {
                    let Some(t) = &p.text else {
                        return;
                    };
                    if !blocks.feed(t.as_bytes()) {
                        return;
                    }
                }
            }
            Some(Content::Other) => return,
        }
        if m.images.is_some() || !blocks.feed(MESSAGE_END) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(api: Api, body: &str, block: usize, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        prefix_blocks(api, body.as_bytes(), Some("m"), block, limit, &mut out);
        out
    }

    fn chat(msgs: &[(&str, &str)]) -> String {
        let m: Vec<_> = msgs
            .iter()
            .map(|(r, c)| serde_json::json!({"role": r, "content": c}))
            .collect();
        serde_json::json!({"model": "m", "stream": true, "messages": m}).to_string()
    }

    #[test]
    fn a_growing_conversation_keeps_its_blocks() {
        let sys = "You are a helpful assistant. ".repeat(4);
        let t1 = chat(&[
            ("system", &sys),
            ("user", "first question, quite long indeed"),
        ]);
        let t2 = chat(&[
            ("system", &sys),
            ("user", "first question, quite long indeed"),
            ("assistant", "an answer"),
            ("user", "a follow-up"),
        ]);
        let (a, b) = (
            blocks(Api::OpenAi, &t1, 32, 4096),
            blocks(Api::OpenAi, &t2, 32, 4096),
        );
        assert!(!a.is_empty() && b.len() > a.len());
        assert_eq!(
            a[..],
            b[..a.len()],
            "the earlier turn is a prefix of the next"
        );
        // Another conversation with the same system prompt shares only the system blocks.
        let other = chat(&[("system", &sys), ("user", "something else entirely here")]);
        let c = blocks(Api::OpenAi, &other, 32, 4096);
        let shared = a.iter().zip(&c).take_while(|(x, y)| x == y).count();
        // "system", separator, the prompt, end, "user", separator: then they differ.
        assert_eq!(shared, (6 + 1 + sys.len() + 1 + 4 + 1) / 32, "{shared}");
        // The JSON around the messages (field order, whitespace, escapes) does not matter.
        let spaced = format!(
            "{{ \"messages\" : [ {{\"content\":\"{}\", \"role\":\"system\"}}, \
             {{\"role\":\"user\",\"content\":\"first question, quite long ind\\u0065ed\"}} ], \"model\":\"x\" }}",
            sys
        );
        assert_eq!(blocks(Api::OpenAi, &spaced, 32, 4096), a);
    }

    #[test]
    fn limit_model_and_shapes() {
        let long = chat(&[("user", &"x".repeat(10_000))]);
        assert_eq!(blocks(Api::OpenAi, &long, 256, 4096).len(), 16, "bounded");
        let mut other_model = Vec::new();
        prefix_blocks(
            Api::OpenAi,
            long.as_bytes(),
            Some("n"),
            256,
            4096,
            &mut other_model,
        );
        assert_ne!(other_model, blocks(Api::OpenAi, &long, 256, 4096));
        // Completions: a string, a batch of one, token ids.
        let p = "y".repeat(100);
        let s = blocks(Api::OpenAi, &format!(r#"{{"prompt":"{p}"}}"#), 32, 4096);
        assert_eq!(s.len(), 3);
        assert_eq!(
            blocks(Api::OpenAi, &format!(r#"{{"prompt":["{p}"]}}"#), 32, 4096),
            s
        );
        assert!(blocks(
            Api::OpenAi,
            &format!(r#"{{"prompt":["{p}","{p}"]}}"#),
            32,
            4096
        )
        .is_empty());
        assert_eq!(
            blocks(Api::OpenAi, r#"{"prompt":[1,2,3,4,5,6,7,8,9]}"#, 32, 4096).len(),
            1
        );
        // Short, unreadable, TF Serving: nothing.
        assert!(blocks(Api::OpenAi, &chat(&[("user", "hi")]), 32, 4096).is_empty());
        assert!(blocks(Api::OpenAi, "not json", 32, 4096).is_empty());
        assert!(blocks(Api::TfServing, &format!(r#"{{"prompt":"{p}"}}"#), 32, 4096).is_empty());
        // Ollama generate: the system prompt comes first.
        let g = blocks(
            Api::Ollama,
            &format!(r#"{{"model":"m","system":"{p}","prompt":"{p}"}}"#),
            32,
            4096,
        );
        assert_eq!(g.len(), (6 + 1 + 100 + 1 + 100) / 32);
    }

    #[test]
    fn an_image_ends_the_prefix() {
        let text = "z".repeat(64);
        let with_image = |url: &str| {
            serde_json::json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": text},
            ]}]})
            .to_string()
        };
        // Content that is neither text nor parts ends the prefix the same way.
        let odd = serde_json::json!({"messages": [
            {"role": "user", "content": text},
            {"role": "user", "content": 7},
            {"role": "user", "content": text},
        ]})
        .to_string();
        assert_eq!(
            blocks(Api::OpenAi, &odd, 16, 4096).len(),
            (4 + 1 + 64 + 1 + 4 + 1) / 16
        );
        let a = blocks(Api::OpenAi, &with_image("a.png"), 16, 4096);
        assert_eq!(a.len(), (4 + 1 + 64) / 16);
        assert_eq!(a, blocks(Api::OpenAi, &with_image("b.png"), 16, 4096));
    }
}
