//! What the edge reads from a request body before routing: the model, whether a stream was
//! asked for, and the token limit to reserve. Pure, so it can be fuzzed and unit-tested.
//!
//! Fail closed: a body that is not a JSON object, names the model twice, or names two different
//! models (Ollama's `model` and its deprecated `name`) is refused rather than guessed at, since
//! the engine might read it differently from the edge's policy checks. So is a body with a key
//! that a case-insensitive decoder takes for one the edge reads (`"Model"`, `"ſtream"`): Go's
//! `encoding/json` (Ollama) matches keys case-insensitively and the last match wins, so
//! `{"model":"allowed","Model":"secret"}` would pass the policy on `model` and run `secret`.
//!
//! Per engine: Python servers (vLLM, SGLang, llama-cpp-python) match keys exactly and keep the
//! last duplicate (refused: duplicates); Go servers (Ollama) match case-insensitively after
//! Unicode upper-casing (refused: case variants); llama.cpp's C++ server matches exactly.

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
    /// A key that a case-insensitive decoder reads as one the edge checks.
    #[error(
        "the request body has a key `{0}` that an engine matching keys case-insensitively \
         (Ollama) reads as `{1}`: write `{1}` exactly, once"
    )]
    CaseVariant(String, &'static str),
}

/// The keys the edge reads at the top level of a body, and in Ollama's `options`.
const READ_KEYS: [&str; 6] = [
    "model",
    "name",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "options",
];
const OPTION_KEYS: [&str; 1] = ["num_predict"];

/// The key of `keys` that `key` is a case variant of, as Go's `encoding/json` folds names
/// (every character upper-cased: `Model`, `MODEL`, and `ſ` for `s`); `None` for an exact key
/// or an unrelated one.
fn case_variant_of(key: &str, keys: &[&'static str]) -> Option<&'static str> {
    if key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        // The common case, already in canonical spelling (or unrelated): nothing to fold.
        return None;
    }
    keys.iter()
        .find(|k| {
            **k != key
                && key
                    .chars()
                    .flat_map(char::to_uppercase)
                    .eq(k.chars().map(|c| c.to_ascii_uppercase()))
        })
        .copied()
}

/// A key found to be a case variant: `(as written, the key it stands for)`.
type Variant = Option<(String, &'static str)>;

/// Walks an object's keys for case variants of `keys`, descending into the value of a key that
/// folds to `options` (Ollama's options) for [`OPTION_KEYS`]; any other value is skipped.
struct KeyScan {
    found: Variant,
    top: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for KeyScan {
    type Value = Variant;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Variant, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyScan {
    type Value = Variant;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut m: A) -> Result<Variant, A::Error> {
        let keys: &[&'static str] = if self.top { &READ_KEYS } else { &OPTION_KEYS };
        while let Some(k) = m.next_key::<Cow<'de, str>>()? {
            if self.found.is_none() {
                self.found = case_variant_of(&k, keys).map(|c| (k.clone().into_owned(), c));
            }
            let options = self.top && k.chars().flat_map(char::to_uppercase).eq("OPTIONS".chars());
            if options {
                let inner = m.next_value_seed(KeyScan {
                    found: None,
                    top: false,
                })?;
                self.found = self.found.or(inner);
            } else {
                m.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(self.found)
    }
    // Options that are not an object: nothing to fold (the typed read refuses them).
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Variant, A::Error> {
        while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Variant, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Variant, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Variant, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Variant, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Variant, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Variant, E> {
        Ok(None)
    }
}

/// Refuses a body with a case variant of a key the edge reads (see the module doc).
fn check_case_variants(body: &[u8]) -> Result<(), PeekError> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(body);
    let scan = KeyScan {
        found: None,
        top: true,
    };
    match scan.deserialize(&mut de) {
        Ok(Some((key, canonical))) => Err(PeekError::CaseVariant(key, canonical)),
        Ok(None) => Ok(()),
        Err(e) => Err(PeekError::Invalid(e.to_string())),
    }
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
    check_case_variants(body)?;
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

    /// The reproduction (security round three, 1): on an Ollama route,
    /// `{"model":"llama3.2:latest","Model":"secret:latest",…}` passed the allowlist on `model`,
    /// and Ollama's Go decoder (case-insensitive, last match wins) runs `secret:latest`.
    #[test]
    fn case_variants_of_read_keys_are_refused() {
        let bypass =
            br#"{"model":"llama3.2:latest","Model":"secret:latest","stream":false,"messages":[]}"#;
        for api in [Api::Ollama, Api::OpenAi] {
            assert_eq!(
                peek(api, bypass),
                Err(PeekError::CaseVariant("Model".into(), "model"))
            );
        }
        for (body, key, canonical) in [
            (&br#"{"MODEL":"x"}"#[..], "MODEL", "model"),
            (br#"{"model":"a","NAME":"b"}"#, "NAME", "name"),
            (
                br#"{"model":"a","\u017Ftream":true}"#,
                "\u{17f}tream",
                "stream",
            ),
            (
                br#"{"model":"a","Max_Tokens":1}"#,
                "Max_Tokens",
                "max_tokens",
            ),
            (
                br#"{"model":"a","options":{"Num_Predict":1}}"#,
                "Num_Predict",
                "num_predict",
            ),
            (
                br#"{"model":"a","Options":{"num_predict":1}}"#,
                "Options",
                "options",
            ),
            (
                br#"{"model":"a","OPTIONS":{"NUM_PREDICT":9}}"#,
                "OPTIONS",
                "options",
            ),
        ] {
            assert_eq!(
                peek(Api::Ollama, body),
                Err(PeekError::CaseVariant(key.into(), canonical)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Unrelated keys, exact keys, and keys that only look alike are fine.
        for body in [
            &br#"{"model":"a","Messages":[],"format":"json","modelx":1}"#[..],
            br#"{"model":"a","options":{"temperature":0,"Temperature":1}}"#,
            br#"{"mod\u0065l":"a"}"#,
        ] {
            assert!(
                peek(Api::Ollama, body).is_ok(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
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
