//! Ollama's API: NDJSON `/api/chat` and `/api/generate`, management endpoints and the
//! OpenAI-compatible `/v1/chat/completions` (see `fixtures/ollama_*`).

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::gen::{self, Gen, GenRequest, StreamFormat, Summary, Whole};
use super::openai::{sse, GenBody, Null, DONE};
use super::server::{self, Body, Shared};
use super::stats::Finish;
use super::tokens;

/// gin's `c.JSON` content type.
pub(crate) const JSON: &str = "application/json; charset=utf-8";
pub(crate) const NDJSON: &str = "application/x-ndjson";
pub(crate) const SSE: &str = "text/event-stream";
/// The version `/api/version` reports (the release whose OpenAI stream format the sim speaks).
pub(crate) const VERSION: &str = "0.32.6";
/// Mid-stream error text (docs/api/errors.mdx).
pub(crate) const RUN_ERROR: &str = "an error was encountered while running the model";
/// What a failed runner reports.
pub(crate) const RUNNER_DIED: &str = "llama runner process has terminated: exit status 2";
/// ErrMaxQueue (two spaces, as in server/sched.go).
pub(crate) const BUSY: &str = "server busy, please try again.  maximum pending requests exceeded";

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// `{"error":"..."}` with a status.
pub(crate) fn error(status: StatusCode, msg: &str) -> Response<Body> {
    server::json(status, JSON, &ErrorBody { error: msg })
}

/// The OpenAI-compat error shape (openai.NewError).
pub(crate) fn compat_error(status: StatusCode, msg: &str) -> Response<Body> {
    #[derive(Serialize)]
    struct Inner<'a> {
        message: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        param: Null,
        code: Null,
    }
    #[derive(Serialize)]
    struct Outer<'a> {
        error: Inner<'a>,
    }
    let kind = match status {
        StatusCode::BAD_REQUEST => "invalid_request_error",
        StatusCode::NOT_FOUND => "not_found_error",
        _ => "api_error",
    };
    server::json(
        status,
        "application/json; charset=utf-8",
        &Outer {
            error: Inner {
                message: msg,
                kind,
                param: Null,
                code: Null,
            },
        },
    )
}

/// Routes a request to the Ollama API (gin answers unknown routes and methods with a text 404).
pub(crate) async fn route(sim: Arc<Shared>, req: Request<Incoming>) -> io::Result<Response<Body>> {
    let path = req.uri().path().to_string();
    let m = req.method().clone();
    let get_or_head = m == Method::GET || m == Method::HEAD;
    Ok(match (path.as_str(), m) {
        ("/", _) if get_or_head => server::text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "Ollama is running",
        ),
        ("/api/version", _) if get_or_head => server::json(
            StatusCode::OK,
            JSON,
            &serde_json::json!({ "version": VERSION }),
        ),
        ("/api/tags", Method::GET) => tags(&sim),
        ("/api/ps", Method::GET) => ps(&sim),
        ("/v1/models", Method::GET) => compat_models(&sim),
        ("/api/chat", Method::POST) => return generate(sim, req, Api::Chat).await,
        ("/api/generate", Method::POST) => return generate(sim, req, Api::Generate).await,
        ("/v1/chat/completions", Method::POST) => return compat_chat(sim, req).await,
        ("/api/show", Method::POST) => return super::ollama_manage::show(sim, req).await,
        ("/api/pull", Method::POST) => return super::ollama_manage::pull(sim, req).await,
        ("/api/embed", Method::POST) => return super::embeddings::ollama_native(sim, req).await,
        ("/api/embeddings", Method::POST) => {
            return super::embeddings::ollama_legacy(sim, req).await
        }
        ("/v1/embeddings", Method::POST) => {
            return super::embeddings::ollama_compat(sim, req).await
        }
        ("/v1/completions", Method::POST) => {
            return super::ollama_compat::completions(sim, req).await
        }
        (p, Method::GET) if p.starts_with("/v1/models/") => {
            super::ollama_compat::retrieve(&sim, &p["/v1/models/".len()..])
        }
        _ => server::text(StatusCode::NOT_FOUND, "text/plain", "404 page not found"),
    })
}

/// Ollama names without a tag mean `:latest`.
pub(crate) fn normalize(name: &str) -> String {
    if name.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

pub(crate) fn served(sim: &Shared, name: &str) -> bool {
    let n = normalize(name);
    sim.cfg.models.iter().any(|m| normalize(m) == n)
}

pub(crate) fn not_found(name: &str) -> String {
    format!("model \"{name}\" not found, try pulling it first")
}

/// Go's `time.RFC3339Nano` of a UTC time: trailing zeros of the fraction trimmed.
pub(crate) fn rfc3339_nano(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_nanos(t).to_string();
    match s.strip_suffix('Z').and_then(|x| x.split_once('.')) {
        Some((head, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                format!("{head}Z")
            } else {
                format!("{head}.{frac}Z")
            }
        }
        None => s,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Generate,
}

#[derive(Deserialize, Default)]
struct Options {
    #[serde(default)]
    num_predict: Option<i64>,
}

#[derive(Deserialize)]
struct NativeMessage {
    #[serde(default)]
    content: String,
}

/// The fields of `/api/chat` and `/api/generate` the simulator reads.
#[derive(Deserialize)]
struct NativeBody {
    #[serde(default)]
    model: String,
    #[serde(default)]
    messages: Vec<NativeMessage>,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    options: Option<Options>,
}

async fn generate(
    sim: Arc<Shared>,
    req: Request<Incoming>,
    api: Api,
) -> io::Result<Response<Body>> {
    let body = server::read_body(req.into_body()).await?;
    sim.counters.record_body(&body);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(error(StatusCode::BAD_REQUEST, "missing request body"));
    }
    let parsed: NativeBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, &go_json_error(&body, &e))),
    };
    if parsed.model.is_empty() {
        return Ok(error(StatusCode::BAD_REQUEST, "model is required"));
    }
    if !served(&sim, &parsed.model) {
        return Ok(error(StatusCode::NOT_FOUND, &not_found(&parsed.model)));
    }
    if sim.faults.read().http_500 {
        return Ok(error(StatusCode::INTERNAL_SERVER_ERROR, RUNNER_DIED));
    }
    let prompt: Vec<u8> = match api {
        Api::Chat => parsed
            .messages
            .iter()
            .flat_map(|m| m.content.bytes())
            .collect(),
        Api::Generate => parsed.prompt.clone().into_bytes(),
    };
    let limit = parsed
        .options
        .as_ref()
        .and_then(|o| o.num_predict)
        .and_then(|n| u32::try_from(n).ok());
    let greq = GenRequest::new(&prompt, limit, sim.cfg.default_max_tokens);
    let Ok(g) = Gen::admit(&sim, greq) else {
        return Ok(error(StatusCode::SERVICE_UNAVAILABLE, BUSY));
    };
    let fmt = NativeStream {
        api,
        model: parsed.model,
        seed: g.seed(),
        generated: 0,
    };
    if parsed.stream.unwrap_or(true) {
        return Ok(server::streaming(NDJSON, gen::stream_body(g, fmt)));
    }
    match gen::run_whole(g).await {
        Whole::Done(text, s) => {
            let line = fmt.final_line(&text, &s);
            // The non-streamed reply is the final object without its newline.
            Ok(server::full(
                StatusCode::OK,
                Some(JSON),
                line.slice(..line.len() - 1),
            ))
        }
        Whole::Error => Ok(error(StatusCode::INTERNAL_SERVER_ERROR, RUN_ERROR)),
        Whole::Drop => Err(io::Error::other("sim: drop_after_tokens")),
    }
}

/// Reads a gin-bound JSON body: `missing request body` when empty, Go's message when invalid.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("missing request body".into());
    }
    serde_json::from_slice(body).map_err(|e| go_json_error(body, &e))
}

/// A Go `encoding/json` style message for a body that does not parse.
pub(crate) fn go_json_error(body: &[u8], e: &serde_json::Error) -> String {
    if e.is_eof() {
        return "unexpected EOF".into();
    }
    let c = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .copied()
        .unwrap_or(b'?');
    if c != b'{' {
        return format!(
            "invalid character '{}' looking for beginning of value",
            char::from(c)
        );
    }
    format!("invalid request body: {e}")
}

#[derive(Serialize)]
struct Msg<'a> {
    role: &'static str,
    content: &'a str,
}

/// api.Metrics (omitempty: only on the final object).
#[derive(Serialize)]
struct Metrics {
    total_duration: u64,
    load_duration: u64,
    prompt_eval_count: u32,
    prompt_eval_duration: u64,
    eval_count: u32,
    eval_duration: u64,
}

impl Metrics {
    fn from(s: &Summary) -> Self {
        let ns = |d: Duration| d.as_nanos() as u64;
        Metrics {
            total_duration: ns(s.total),
            load_duration: ns(s.load),
            prompt_eval_count: s.prompt_tokens,
            prompt_eval_duration: ns(s.prompt_eval),
            eval_count: s.completion_tokens,
            eval_duration: ns(s.eval),
        }
    }
}

/// api.ChatResponse field order.
#[derive(Serialize)]
struct ChatLine<'a> {
    model: &'a str,
    created_at: String,
    message: Msg<'a>,
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    done_reason: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    metrics: Option<Metrics>,
}

/// api.GenerateResponse field order.
#[derive(Serialize)]
struct GenerateLine<'a> {
    model: &'a str,
    created_at: String,
    response: &'a str,
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    done_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<Vec<u32>>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    metrics: Option<Metrics>,
}

/// One compact JSON object plus `\n`.
fn ndjson<T: Serialize>(v: &T) -> Bytes {
    let mut b = Vec::with_capacity(160);
    // Plain structs of strings and numbers always serialize.
    let _ = serde_json::to_writer(&mut b, v);
    b.push(b'\n');
    b.into()
}

/// Frames of one native NDJSON stream.
struct NativeStream {
    api: Api,
    model: String,
    seed: u64,
    generated: u32,
}

impl NativeStream {
    /// The final `done:true` line; `text` is the whole reply when not streaming.
    fn final_line(&self, text: &str, s: &Summary) -> Bytes {
        let now = rfc3339_nano(SystemTime::now());
        let reason = Some(s.finish.as_str());
        match self.api {
            Api::Chat => ndjson(&ChatLine {
                model: &self.model,
                created_at: now,
                message: Msg {
                    role: "assistant",
                    content: text,
                },
                done: true,
                done_reason: reason,
                metrics: Some(Metrics::from(s)),
            }),
            Api::Generate => ndjson(&GenerateLine {
                model: &self.model,
                created_at: now,
                response: text,
                done: true,
                done_reason: reason,
                // The real context holds every prompt and reply token; the sim keeps the reply's ids only.
                context: Some(
                    (0..s.completion_tokens)
                        .map(|i| tokens::token_id(self.seed, i))
                        .collect(),
                ),
                metrics: Some(Metrics::from(s)),
            }),
        }
    }
}

impl StreamFormat for NativeStream {
    fn token(&mut self, text: &str, _i: u32, _finish: Option<Finish>) -> Bytes {
        self.generated += 1;
        let now = rfc3339_nano(SystemTime::now());
        match self.api {
            Api::Chat => ndjson(&ChatLine {
                model: &self.model,
                created_at: now,
                message: Msg {
                    role: "assistant",
                    content: text,
                },
                done: false,
                done_reason: None,
                metrics: None,
            }),
            Api::Generate => ndjson(&GenerateLine {
                model: &self.model,
                created_at: now,
                response: text,
                done: false,
                done_reason: None,
                context: None,
                metrics: None,
            }),
        }
    }

    fn tail(&mut self, k: usize, s: &Summary) -> Option<Bytes> {
        (k == 0).then(|| self.final_line("", s))
    }

    fn error(&mut self, k: usize) -> Option<Bytes> {
        (k == 0).then(|| ndjson(&ErrorBody { error: RUN_ERROR }))
    }
}

#[derive(Serialize)]
pub(crate) struct Details {
    parent_model: &'static str,
    format: &'static str,
    family: &'static str,
    families: [&'static str; 1],
    parameter_size: &'static str,
    quantization_level: &'static str,
}

pub(crate) const DETAILS: Details = Details {
    parent_model: "",
    format: "gguf",
    family: "llama",
    families: ["llama"],
    parameter_size: "3.2B",
    quantization_level: "Q4_K_M",
};

/// Model file size the sim reports (llama3.2:3b's).
pub(crate) const SIZE: u64 = 2_019_393_189;

pub(crate) fn digest(name: &str) -> String {
    let h = tokens::hash_bytes(name.as_bytes());
    (0..4u64).map(|i| tokens::hex_id(h ^ i)).collect()
}

/// `GET /api/tags`.
fn tags(sim: &Shared) -> Response<Body> {
    #[derive(Serialize)]
    struct Tag<'a> {
        name: String,
        model: String,
        modified_at: &'a str,
        size: u64,
        digest: String,
        details: Details,
    }
    #[derive(Serialize)]
    struct Tags<'a> {
        models: Vec<Tag<'a>>,
    }
    let modified = rfc3339_nano(sim.started_at);
    let models = sim
        .cfg
        .models
        .iter()
        .map(|m| Tag {
            name: normalize(m),
            model: normalize(m),
            modified_at: &modified,
            size: SIZE,
            digest: digest(m),
            details: DETAILS,
        })
        .collect();
    server::json(StatusCode::OK, JSON, &Tags { models })
}

/// `GET /api/ps`: every model loaded, fully in VRAM, expiring 5 minutes from now.
fn ps(sim: &Shared) -> Response<Body> {
    #[derive(Serialize)]
    struct Loaded<'a> {
        name: String,
        model: String,
        size: u64,
        digest: String,
        details: Details,
        expires_at: &'a str,
        size_vram: u64,
        context_length: u32,
    }
    #[derive(Serialize)]
    struct Ps<'a> {
        models: Vec<Loaded<'a>>,
    }
    let expires = rfc3339_nano(SystemTime::now() + Duration::from_secs(300));
    let models = sim
        .cfg
        .models
        .iter()
        .map(|m| Loaded {
            name: normalize(m),
            model: normalize(m),
            size: SIZE,
            digest: digest(m),
            details: DETAILS,
            expires_at: &expires,
            size_vram: SIZE,
            context_length: 4096,
        })
        .collect();
    server::json(StatusCode::OK, JSON, &Ps { models })
}

/// `GET /v1/models` (owned_by = namespace, "library" for official models).
fn compat_models(sim: &Shared) -> Response<Body> {
    #[derive(Serialize)]
    struct M {
        id: String,
        object: &'static str,
        created: u64,
        owned_by: String,
    }
    #[derive(Serialize)]
    struct L {
        object: &'static str,
        data: Vec<M>,
    }
    let created = sim
        .started_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let data = sim
        .cfg
        .models
        .iter()
        .map(|m| M {
            id: normalize(m),
            object: "model",
            created,
            owned_by: m
                .split_once('/')
                .map(|(ns, _)| ns.to_string())
                .unwrap_or_else(|| "library".into()),
        })
        .collect();
    server::json(
        StatusCode::OK,
        JSON,
        &L {
            object: "list",
            data,
        },
    )
}

/// Ollama's OpenAI-compatible chat endpoint.
async fn compat_chat(sim: Arc<Shared>, req: Request<Incoming>) -> io::Result<Response<Body>> {
    let body = server::read_body(req.into_body()).await?;
    sim.counters.record_body(&body);
    let parsed: GenBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return Ok(compat_error(
                StatusCode::BAD_REQUEST,
                &go_json_error(&body, &e),
            ))
        }
    };
    let model = parsed.model.clone().unwrap_or_default();
    if model.is_empty() {
        return Ok(compat_error(StatusCode::BAD_REQUEST, "model is required"));
    }
    if !served(&sim, &model) {
        return Ok(compat_error(StatusCode::NOT_FOUND, &not_found(&model)));
    }
    if sim.faults.read().http_500 {
        return Ok(compat_error(StatusCode::INTERNAL_SERVER_ERROR, RUNNER_DIED));
    }
    let greq = GenRequest::new(
        &parsed.chat_prompt(),
        parsed.limit(),
        sim.cfg.default_max_tokens,
    );
    let Ok(g) = Gen::admit(&sim, greq) else {
        return Ok(compat_error(StatusCode::SERVICE_UNAVAILABLE, BUSY));
    };
    let fmt = CompatStream {
        id: format!("chatcmpl-{}", tokens::mix(sim.next_seed()) % 999),
        created: Shared::unix_now(),
        model,
        include_usage: parsed.include_usage(),
    };
    if parsed.stream.unwrap_or(false) {
        return Ok(server::streaming(SSE, gen::stream_body(g, fmt)));
    }
    match gen::run_whole(g).await {
        Whole::Done(text, s) => Ok(server::json(
            StatusCode::OK,
            "application/json; charset=utf-8",
            &fmt.whole(&text, &s),
        )),
        Whole::Error => Ok(compat_error(StatusCode::INTERNAL_SERVER_ERROR, RUN_ERROR)),
        Whole::Drop => Err(io::Error::other("sim: drop_after_tokens")),
    }
}

#[derive(Serialize)]
struct CompatDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct CompatChoice<'a> {
    index: u32,
    delta: CompatDelta<'a>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct CompatUsage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

#[derive(Serialize)]
struct CompatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<CompatChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<CompatUsage>,
}

/// Frames of Ollama's OpenAI-compatible stream (>= v0.32.6 format).
struct CompatStream {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl CompatStream {
    fn chunk<'a>(&'a self, choices: Vec<CompatChoice<'a>>, usage: Option<CompatUsage>) -> Bytes {
        sse(&CompatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: "fp_ollama",
            choices,
            usage,
        })
    }

    fn whole(&self, text: &str, s: &Summary) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": s.finish.as_str()}],
            "usage": {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
                      "total_tokens": s.prompt_tokens + s.completion_tokens},
        })
    }
}

impl StreamFormat for CompatStream {
    fn token(&mut self, text: &str, i: u32, _finish: Option<Finish>) -> Bytes {
        let delta = CompatDelta {
            role: (i == 0).then_some("assistant"),
            content: Some(text),
        };
        self.chunk(
            vec![CompatChoice {
                index: 0,
                delta,
                finish_reason: None,
            }],
            None,
        )
    }

    fn tail(&mut self, k: usize, s: &Summary) -> Option<Bytes> {
        match (k, self.include_usage) {
            (0, _) => {
                let delta = CompatDelta {
                    role: None,
                    content: None,
                };
                Some(self.chunk(
                    vec![CompatChoice {
                        index: 0,
                        delta,
                        finish_reason: Some(s.finish.as_str()),
                    }],
                    None,
                ))
            }
            (1, true) => Some(self.chunk(
                Vec::new(),
                Some(CompatUsage {
                    prompt_tokens: s.prompt_tokens,
                    completion_tokens: s.completion_tokens,
                    total_tokens: s.prompt_tokens + s.completion_tokens,
                }),
            )),
            (1, false) | (2, true) => Some(Bytes::from_static(DONE)),
            _ => None,
        }
    }

    fn error(&mut self, k: usize) -> Option<Bytes> {
        (k == 0).then(|| {
            Bytes::from(format!(
                "data: {{\"error\":{{\"message\":\"{RUN_ERROR}\",\"type\":\"api_error\",\"param\":null,\"code\":null}}}}\n\n"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_times() {
        assert_eq!(normalize("llama3.2"), "llama3.2:latest");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(rfc3339_nano(t), "1970-01-01T00:00:01.5Z");
        assert_eq!(rfc3339_nano(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
