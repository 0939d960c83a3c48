//! Embeddings: vLLM's `/v1/embeddings` (an engine started with `runner: pooling`), Ollama's
//! `/api/embed`, `/api/embeddings` and its OpenAI-compatible `/v1/embeddings`.
//!
//! Vectors are deterministic: a pure function of the input text (or token ids) and the
//! dimension, so a test can compare a direct answer with one relayed by the edge.
//! Formats: `tests/fixtures/embeddings.txt` (rebuilt from vLLM's `EmbeddingResponse` and
//! Ollama's `api.EmbedResponse`, `api.EmbeddingResponse`, `openai.EmbeddingList`).

use std::io;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::openai::Null;
use super::server::{self, Body, Shared};
use super::{ollama, tokens, vllm};

/// Dimension of the vLLM embedding model (e5/bge-small class models: 384).
pub(crate) const VLLM_DIM: usize = 384;
/// Dimension Ollama's llama3.2:3b reports as `llama.embedding_length`.
pub(crate) const OLLAMA_DIM: usize = 3072;

/// One input to embed: its hashing seed and its token count.
struct Input {
    seed: u64,
    tokens: u32,
}

/// Reads OpenAI's `input`: a string, a list of strings, a token list, or a list of token lists.
/// `None` when it is none of these.
fn inputs(v: &Value) -> Option<Vec<Input>> {
    let text = |s: &str| Input {
        seed: tokens::hash_bytes(s.as_bytes()),
        tokens: tokens::estimate_tokens(s.len()),
    };
    let ids = |a: &[Value]| -> Option<Input> {
        let mut h = Vec::with_capacity(a.len() * 4);
        for x in a {
            h.extend_from_slice(&u32::try_from(x.as_u64()?).ok()?.to_le_bytes());
        }
        Some(Input {
            seed: tokens::hash_bytes(&h),
            tokens: u32::try_from(a.len()).unwrap_or(u32::MAX),
        })
    };
    match v {
        Value::String(s) => Some(vec![text(s)]),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            Some(a.iter().filter_map(Value::as_str).map(text).collect())
        }
        Value::Array(a) if a.iter().all(Value::is_number) => Some(vec![ids(a)?]),
        Value::Array(a) => a.iter().map(|x| ids(x.as_array()?)).collect(),
        _ => None,
    }
}

/// A deterministic vector of `dim` components for `seed`, L2-normalized when `unit`.
pub(crate) fn vector(seed: u64, dim: usize, unit: bool) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim as u64)
        .map(|i| {
            // 24 bits of the mixed hash, mapped onto [-1, 1).
            let bits = tokens::mix(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 40;
            (bits as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    if unit {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// `encoding_format: base64`: the float32 components, little-endian, in standard base64.
fn base64_of(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One vector in OpenAI's `embedding` field: floats, or base64 when asked.
#[derive(Serialize)]
#[serde(untagged)]
enum Encoded {
    /// Python prints float32 values widened to float64 (`repr`), so vLLM's floats are f64.
    F64(Vec<f64>),
    /// Go prints float32 values as float32.
    F32(Vec<f32>),
    Base64(String),
}

/// The OpenAI request fields both engines read.
#[derive(Deserialize)]
struct OpenAiBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

impl OpenAiBody {
    fn base64(&self) -> bool {
        self.encoding_format
            .as_deref()
            .is_some_and(|f| f.eq_ignore_ascii_case("base64"))
    }

    fn dim(&self, native: usize) -> usize {
        self.dimensions
            .filter(|d| *d > 0)
            .map_or(native, |d| d.min(native))
    }
}

/// vLLM's `EmbeddingResponseData`.
#[derive(Serialize)]
struct VllmData {
    index: usize,
    object: &'static str,
    embedding: Encoded,
}

#[derive(Serialize)]
struct VllmUsage {
    prompt_tokens: u32,
    total_tokens: u32,
    completion_tokens: u32,
    prompt_tokens_details: Null,
}

/// vLLM's `EmbeddingResponse`.
#[derive(Serialize)]
struct VllmResponse<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    data: Vec<VllmData>,
    usage: VllmUsage,
}

/// vLLM `POST /v1/embeddings` on an embedding model (`runner: pooling`).
pub(crate) async fn vllm(sim: Arc<Shared>, req: Request<Incoming>) -> io::Result<Response<Body>> {
    let body = server::read_body(req.into_body()).await?;
    sim.counters.record_body(&body);
    let Ok(parsed) = serde_json::from_slice::<OpenAiBody>(&body) else {
        return Ok(vllm::error(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "[{'type': 'json_invalid', 'loc': ('body', 0), 'msg': 'JSON decode error'}]",
            None,
        ));
    };
    let model = match &parsed.model {
        None => sim.cfg.models[0].clone(),
        Some(m) if sim.has_model(m) => m.clone(),
        Some(m) => {
            return Ok(vllm::error(
                StatusCode::NOT_FOUND,
                "NotFoundError",
                &format!("The model `{m}` does not exist."),
                Some("model"),
            ))
        }
    };
    let Some(items) = parsed.input.as_ref().and_then(inputs) else {
        return Ok(vllm::error(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            "Input should be a valid string or a list of token ids",
            Some("input"),
        ));
    };
    let dim = parsed.dim(VLLM_DIM);
    let total: u32 = items.iter().map(|i| i.tokens).sum();
    let data = items
        .iter()
        .enumerate()
        .map(|(index, it)| {
            let v = vector(it.seed, dim, true);
            VllmData {
                index,
                object: "embedding",
                embedding: if parsed.base64() {
                    Encoded::Base64(base64_of(&v))
                } else {
                    Encoded::F64(v.into_iter().map(f64::from).collect())
                },
            }
        })
        .collect();
    let resp = VllmResponse {
        id: format!("embd-{}", tokens::hex_id(sim.next_seed())),
        object: "list",
        created: Shared::unix_now(),
        model: &model,
        data,
        usage: VllmUsage {
            prompt_tokens: total,
            total_tokens: total,
            completion_tokens: 0,
            prompt_tokens_details: Null,
        },
    };
    Ok(server::json(StatusCode::OK, vllm::JSON, &resp))
}

/// Ollama's embed request (`api.EmbedRequest`); `input` is a string or a list of strings.
#[derive(Deserialize)]
struct EmbedBody {
    #[serde(default)]
    model: String,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    dimensions: Option<usize>,
}

/// `api.EmbedResponse`: durations and the count are `omitempty`.
#[derive(Serialize)]
struct EmbedResponse<'a> {
    model: &'a str,
    embeddings: Vec<Vec<f32>>,
    #[serde(skip_serializing_if = "is_zero")]
    total_duration: u64,
    #[serde(skip_serializing_if = "is_zero")]
    load_duration: u64,
    #[serde(skip_serializing_if = "is_zero")]
    prompt_eval_count: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why an Ollama embed request is refused: status and message.
type Refusal = (StatusCode, String);

/// What `EmbedHandler` computes: the vectors and the prompt tokens, or its refusal.
fn ollama_embed(sim: &Shared, b: &EmbedBody) -> Result<(Vec<Vec<f32>>, u64), Refusal> {
    let texts: Vec<&str> = match &b.input {
        None => Vec::new(),
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str())
            .collect::<Option<_>>()
            .ok_or((StatusCode::BAD_REQUEST, "invalid input type".into()))?,
        Some(_) => return Err((StatusCode::BAD_REQUEST, "invalid input type".into())),
    };
    if b.model.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "model is required".into()));
    }
    if !ollama::served(sim, &b.model) {
        return Err((
            StatusCode::NOT_FOUND,
            format!("model '{}' not found", b.model),
        ));
    }
    let dim = b
        .dimensions
        .filter(|d| *d > 0)
        .map_or(OLLAMA_DIM, |d| d.min(OLLAMA_DIM));
    let vectors = texts
        .iter()
        .map(|t| vector(tokens::hash_bytes(t.as_bytes()), dim, true))
        .collect();
    let count = texts
        .iter()
        .map(|t| u64::from(tokens::estimate_tokens(t.len())))
        .sum();
    Ok((vectors, count))
}

/// Ollama `POST /api/embed`.
pub(crate) async fn ollama_native(
    sim: Arc<Shared>,
    req: Request<Incoming>,
) -> io::Result<Response<Body>> {
    let start = Instant::now();
    let body = server::read_body(req.into_body()).await?;
    sim.counters.record_body(&body);
    let b: EmbedBody = match ollama::parse_body(&body) {
        Ok(b) => b,
        Err(msg) => return Ok(ollama::error(StatusCode::BAD_REQUEST, &msg)),
    };
    match ollama_embed(&sim, &b) {
        Ok((embeddings, count)) => {
            let empty = embeddings.is_empty();
            let ns = start.elapsed().as_nanos().max(1) as u64;
            // An empty input only loads the model: `{"model":…,"embeddings":[]}`.
            let resp = EmbedResponse {
                model: &b.model,
                embeddings,
                total_duration: if empty { 0 } else { ns },
                load_duration: if empty { 0 } else { ns / 4 },
                prompt_eval_count: count,
            };
            Ok(server::json(StatusCode::OK, ollama::JSON, &resp))
        }
        Err((status, msg)) => Ok(ollama::error(status, &msg)),
    }
}

/// Ollama `POST /api/embeddings` (deprecated): one prompt, not normalized, float64.
pub(crate) async fn ollama_legacy(
    sim: Arc<Shared>,
    req: Request<Incoming>,
) -> io::Result<Response<Body>> {
    #[derive(Deserialize)]
    struct Legacy {
        #[serde(default)]
        model: String,
        #[serde(default)]
        prompt: String,
    }
    #[derive(Serialize)]
    struct Out {
        embedding: Vec<f64>,
    }
    let body = server::read_body(req.into_body()).await?;
    sim.counters.record_body(&body);
    let b: Legacy = match ollama::parse_body(&body) {
        Ok(b) => b,
        Err(msg) => return Ok(ollama::error(StatusCode::BAD_REQUEST, &msg)),
    };
    if b.model.is_empty() {
        return Ok(ollama::error(StatusCode::BAD_REQUEST, "model is required"));
    }
    if !ollama::served(&sim, &b.model) {
        return Ok(ollama::error(
            StatusCode::NOT_FOUND,
            &ollama::not_found(&b.model),
        ));
    }
    let embedding = if b.prompt.is_empty() {
        Vec::new()
    } else {
        let seed = tokens::hash_bytes(b.prompt.as_bytes());
        vector(seed, OLLAMA_DIM, false)
            .into_iter()
            .map(f64::from)
            .collect()
    };
    Ok(server::json(
        StatusCode::OK,
        ollama::JSON,
        &Out { embedding },
    ))
}

/// `openai.Embedding`.
#[derive(Serialize)]
struct CompatData {
    object: &'static str,
    embedding: Encoded,
    index: usize,
}

#[derive(Serialize)]
struct CompatUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// `openai.EmbeddingList`.
#[derive(Serialize)]
struct CompatList<'a> {
    object: &'static str,
    data: Vec<CompatData>,
    model: &'a str,
    usage: CompatUsage,
}

/// Ollama `POST /v1/embeddings` (EmbeddingsMiddleware in front of `EmbedHandler`).
pub(crate) async fn ollama_compat(
    sim: Arc<Shared>,
    req: Request<Incoming>,
) -> io::Result<Response<Body>> {
    let body = server::read_body(req.into_body()).await?;
    sim.counters.record_body(&body);
    let parsed: OpenAiBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return Ok(ollama::compat_error(
                StatusCode::BAD_REQUEST,
                &ollama::go_json_error(&body, &e),
            ))
        }
    };
    let input = match &parsed.input {
        None => {
            return Ok(ollama::compat_error(
                StatusCode::BAD_REQUEST,
                "invalid input",
            ))
        }
        Some(Value::String(s)) if s.is_empty() => {
            return Ok(ollama::compat_error(
                StatusCode::BAD_REQUEST,
                "invalid input",
            ))
        }
        Some(v) => v.clone(),
    };
    let b = EmbedBody {
        model: parsed.model.clone().unwrap_or_default(),
        input: Some(input),
        dimensions: parsed.dimensions,
    };
    let (vectors, count) = match ollama_embed(&sim, &b) {
        Ok(x) => x,
        Err((status, msg)) => return Ok(ollama::compat_error(status, &msg)),
    };
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| CompatData {
            object: "embedding",
            embedding: if parsed.base64() {
                Encoded::Base64(base64_of(&v))
            } else {
                Encoded::F32(v)
            },
            index,
        })
        .collect();
    let list = CompatList {
        object: "list",
        data,
        model: &b.model,
        usage: CompatUsage {
            prompt_tokens: count,
            total_tokens: count,
        },
    };
    Ok(server::json(StatusCode::OK, ollama::JSON, &list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_unit_length_and_input_shapes_parse() {
        let a = vector(7, 16, true);
        assert_eq!(a, vector(7, 16, true));
        assert_ne!(a, vector(8, 16, true));
        let n: f32 = a.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-4, "{n}");
        let one = inputs(&serde_json::json!("hi")).map(|v| v.len());
        assert_eq!(one, Some(1));
        let many = inputs(&serde_json::json!(["a", "b"])).map(|v| v.len());
        assert_eq!(many, Some(2));
        let ids = inputs(&serde_json::json!([1, 2, 3])).map(|v| v[0].tokens);
        assert_eq!(ids, Some(3));
        let lists = inputs(&serde_json::json!([[1, 2], [3]])).map(|v| v.len());
        assert_eq!(lists, Some(2));
        assert!(inputs(&serde_json::json!({"x": 1})).is_none());
        assert!(inputs(&serde_json::json!([[1], "a"])).is_none());
    }
}
