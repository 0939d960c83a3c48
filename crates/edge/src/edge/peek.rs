//! What the edge reads from a request body before routing: the model, whether a stream was
//! asked for, and the token limit to reserve. Pure, so it can be fuzzed and unit-tested.
//!
//! Fail closed: a body that is not a JSON object, names the model twice, or names two different
//! models (Ollama's `model` and its deprecated `name`) is refused rather than guessed at, since
//! the engine might read it differently from the edge's policy checks.

use crate::api::Api;
use serde::Deserialize;
use std::borrow::Cow;

/// What a request body says, as far as routing and policy care.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Peeked {
    /// The model named by the body (`"model"`, or Ollama's `"name"`); `None` when absent, null
    /// or empty.
    pub model: Option<String>,
    /// Whether the client asked for a stream (Ollama streams unless told not to).
    pub wants_stream: bool,
    /// `max_completion_tokens`, `max_tokens` or Ollama's non-negative `options.num_predict`.
    pub max_tokens: Option<u64>,
}

/// Why a body cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeekError {
    /// Not JSON, not an object, or a field of the wrong type (duplicate keys included).
    #[error("the request body is not valid JSON for this API: {0}")]
    Invalid(String),
    /// `model` and `name` disagree (Ollama accepts both).
    #[error("the request body names two models: `{0}` and `{1}`")]
    Ambiguous(String, String),
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    /// Ollama's deprecated spelling of `model` (`show`, `pull`, `delete`, …).
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    options: Option<Options>,
}

/// Ollama's generation options. Read from a JSON object only: serde's derive would also take
/// an array (`"options": [7]`), which no engine reads as options.
struct Options {
    num_predict: Option<i64>,
}

impl<'de> Deserialize<'de> for Options {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapOnly;
        impl<'de> serde::de::Visitor<'de> for MapOnly {
            type Value = Options;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Options, A::Error> {
                let mut num_predict = None;
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    if k == "num_predict" {
                        if num_predict.is_some() {
                            return Err(serde::de::Error::duplicate_field("num_predict"));
                        }
                        num_predict = Some(m.next_value::<Option<i64>>()?);
                    } else {
                        m.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(Options {
                    num_predict: num_predict.flatten(),
                })
            }
        }
        d.deserialize_map(MapOnly)
    }
}

/// Deepest nesting of arrays and objects accepted, as serde_json's own limit for typed values.
/// Engines parse the whole body (Python's `json` fails near 1,000 levels), and serde skips
/// unknown fields without a depth limit, so the edge checks it itself.
pub const MAX_DEPTH: usize = 128;

/// Whether `body` nests arrays/objects deeper than `limit` (strings are skipped). O(n).
fn too_deep(body: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Reads `body` as a request of `api`. An empty body peeks as nothing. TF Serving bodies are not
/// read (the model is in the path).
pub fn peek(api: Api, body: &[u8]) -> Result<Peeked, PeekError> {
    if api == Api::TfServing || body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Peeked {
            wants_stream: api == Api::Ollama,
            ..Peeked::default()
        });
    }
    // The body must be an object: serde's derive would also read an array positionally.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(PeekError::Invalid("the body is not a JSON object".into()));
    }
    if too_deep(body, MAX_DEPTH) {
        return Err(PeekError::Invalid(format!(
            "arrays or objects nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let f: Fields<'_> =
        serde_json::from_slice(body).map_err(|e| PeekError::Invalid(e.to_string()))?;
    let nonempty = |m: Option<Cow<'_, str>>| m.filter(|m| !m.is_empty()).map(Cow::into_owned);
    let model = nonempty(f.model);
    // Only Ollama reads `name`; on other APIs it is some other field (e.g. a function's name).
    let name = if api == Api::Ollama {
        nonempty(f.name)
    } else {
        None
    };
    let model = match (model, name) {
        (Some(m), Some(n)) if m != n => return Err(PeekError::Ambiguous(m, n)),
        (m, n) => m.or(n),
    };
    Ok(Peeked {
        model,
        // Ollama streams unless told not to; OpenAI only when asked.
        wants_stream: f.stream.unwrap_or(api == Api::Ollama),
        max_tokens: f
            .max_completion_tokens
            .or(f.max_tokens)
            // Ollama's -1/-2 mean "until done"/"fill the context": no number to reserve.
            .or(f
                .options
                .and_then(|o| o.num_predict)
                .and_then(|n| u64::try_from(n).ok())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_stream_and_limits() {
        let p = peek(
            Api::OpenAi,
            br#"{"messages":[],"model":"m","stream":true,"max_tokens":7}"#,
        );
        assert_eq!(
            p,
            Ok(Peeked {
                model: Some("m".into()),
                wants_stream: true,
                max_tokens: Some(7)
            })
        );
        let p = peek(
            Api::Ollama,
            br#"{"model":"m","options":{"num_predict":-1}}"#,
        );
        assert_eq!(
            p,
            Ok(Peeked {
                model: Some("m".into()),
                wants_stream: true,
                max_tokens: None
            })
        );
    }

    #[test]
    fn missing_null_and_empty_models_are_none() {
        for b in [
            &br#"{}"#[..],
            br#"{"model":null}"#,
            br#"{"model":""}"#,
            b"  ",
        ] {
            assert_eq!(peek(Api::OpenAi, b).map(|p| p.model), Ok(None), "{b:?}");
        }
    }

    #[test]
    fn refuses_what_an_engine_could_read_differently() {
        // Duplicate keys: Python's json keeps the last, so the edge must not check the first.
        assert!(peek(Api::OpenAi, br#"{"model":"a","model":"b"}"#).is_err());
        assert!(peek(Api::OpenAi, br#"["model"]"#).is_err());
        // Fuzz findings: arrays read positionally as the request or its options.
        assert!(peek(Api::OpenAi, br#"["llama3.2",null,true,null,null,[7]]"#).is_err());
        assert!(peek(Api::Ollama, br#"{"model":"m","options":[7]}"#).is_err());
        assert!(peek(
            Api::Ollama,
            br#"{"model":"m","options":{"num_predict":1,"num_predict":2}}"#
        )
        .is_err());
        assert!(peek(Api::OpenAi, br#"{"model":7}"#).is_err());
        assert!(peek(Api::OpenAi, br#"{"model":"a"} trailing"#).is_err());
        assert_eq!(
            peek(Api::Ollama, br#"{"model":"a","name":"b"}"#),
            Err(PeekError::Ambiguous("a".into(), "b".into()))
        );
        assert_eq!(
            peek(Api::Ollama, br#"{"name":"b"}"#).map(|p| p.model),
            Ok(Some("b".into()))
        );
        // On the OpenAI API `name` means something else.
        assert_eq!(
            peek(Api::OpenAi, br#"{"name":"b"}"#).map(|p| p.model),
            Ok(None)
        );
    }

    #[test]
    fn deeply_nested_json_is_refused_not_a_stack_overflow() {
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(peek(Api::OpenAi, deep.as_bytes()).is_err());
        let ok = format!("{{\"x\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(peek(Api::OpenAi, ok.as_bytes()).is_ok());
        // Brackets inside strings (escaped quotes included) do not count.
        let s = format!("{{\"x\":\"\\\"{}\"}}", "[".repeat(1000));
        assert!(peek(Api::OpenAi, s.as_bytes()).is_ok(), "{s}");
    }
}
