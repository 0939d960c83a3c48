//! vLLM's OpenAI-compatible server (0.19.1 wire format, see `fixtures/vllm_*`).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::gen::{self, Gen, GenRequest, StreamFormat, Summary, Whole};
use super::openai::{sse, GenBody, Null, DONE};
use super::server::{self, Body, Shared};
use super::stats::Finish;
use super::tokens;
use crate::config::Runner;
use crate::continuation;

pub(crate) const JSON: &str = "application/json";
/// Starlette appends the charset to every `text/*` media type.
pub(crate) const SSE: &str = "text/event-stream; charset=utf-8";
/// The version `/version` reports.
pub(crate) const VERSION: &str = "0.19.1";
/// vLLM's message when the engine core died (what a 500 says).
pub(crate) const ENGINE_DEAD: &str =
    "EngineCore encountered an issue. See stack trace (above) for the root cause.";

/// vLLM's error body `{"error":{"message","type","param","code"}}`.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: u16,
}

/// An error response in vLLM's shape.
pub(crate) fn error(
    status: StatusCode,
    kind: &str,
    message: &str,
    param: Option<&str>,
) -> Response<Body> {
    let body = ErrorBody {
        error: ErrorInner {
            message,
            kind,
            param,
            code: status.as_u16(),
        },
    };
    server::json(status, JSON, &body)
}

/// FastAPI's `{"detail": ...}` for unknown routes and methods.
pub(crate) fn detail(status: StatusCode, msg: &str) -> Response<Body> {
    #[derive(Serialize)]
    struct Detail<'a> {
        detail: &'a str,
    }
    server::json(status, JSON, &Detail { detail: msg })
}

/// Routes a request to the vLLM API.
pub(crate) async fn route(sim: Arc<Shared>, req: Request<Incoming>) -> io::Result<Response<Body>> {
    let path = req.uri().path().to_string();
    let m = req.method().clone();
    Ok(match (path.as_str(), m) {
        // One vLLM process either generates or embeds; the other task's routes do not exist.
        ("/v1/chat/completions" | "/v1/completions" | "/v1/responses", Method::POST)
            if sim.cfg.runner == Runner::Pooling =>
        {
            detail(StatusCode::NOT_FOUND, "Not Found")
        }
        ("/v1/embeddings", Method::POST) if sim.cfg.runner == Runner::Pooling => {
            return super::embeddings::vllm(sim, req).await
        }
        ("/v1/responses", Method::POST) => return super::responses::create(sim, req).await,
        ("/v1/chat/completions", Method::POST) => return generate(sim, req, Api::Chat).await,
        ("/v1/completions", Method::POST) => return generate(sim, req, Api::Completions).await,
        ("/v1/models", Method::GET) => models(&sim),
        ("/health", Method::GET) => server::full(StatusCode::OK, None, Bytes::new()),
        ("/version", Method::GET) => server::json(
            StatusCode::OK,
            JSON,
            &serde_json::json!({ "version": VERSION }),
        ),
        ("/load", Method::GET) => {
            let (r, w) = sim.sched.load();
            server::json(
                StatusCode::OK,
                JSON,
                &serde_json::json!({ "server_load": r + w }),
            )
        }
        ("/metrics", Method::GET) => server::text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            super::vllm_metrics::render(&sim),
        ),
        (
            "/v1/chat/completions"
            | "/v1/completions"
            | "/v1/models"
            | "/health"
            | "/version"
            | "/metrics",
            _,
        ) => detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
        _ => detail(StatusCode::NOT_FOUND, "Not Found"),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
}

async fn generate(
    sim: Arc<Shared>,
    req: Request<Incoming>,
    api: Api,
) -> io::Result<Response<Body>> {
    let body = server::read_body(req.into_body()).await?;
    sim.counters.record_body(&body);
    let parsed: GenBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            // FastAPI's RequestValidationError for a body that is not JSON, as vLLM reports it.
            let msg = format!(
                "[{{'type': 'json_invalid', 'loc': ('body', {}), 'msg': 'JSON decode error', 'input': {{}}, 'ctx': {{'error': '{}'}}}}]",
                e.column().saturating_sub(1),
                if e.is_eof() { "Expecting value" } else { "Invalid JSON" }
            );
            return Ok(error(StatusCode::BAD_REQUEST, "Bad Request", &msg, None));
        }
    };
    let (prompt, missing) = match api {
        Api::Chat => (
            parsed.chat_prompt(),
            parsed.messages.is_none().then_some("messages"),
        ),
        Api::Completions => (
            parsed.completion_prompt(),
            parsed.prompt.is_none().then_some("prompt"),
        ),
    };
    if let Some(field) = missing {
        let msg = format!("[{{'type': 'missing', 'loc': ('body', '{field}'), 'msg': 'Field required', 'input': {{...}}}}]");
        return Ok(error(StatusCode::BAD_REQUEST, "Bad Request", &msg, None));
    }
    let model = match &parsed.model {
        None => sim.cfg.models[0].clone(),
        Some(m) if sim.has_model(m) => m.clone(),
        Some(m) => {
            let msg = format!("The model `{m}` does not exist.");
            return Ok(error(
                StatusCode::NOT_FOUND,
                "NotFoundError",
                &msg,
                Some("model"),
            ));
        }
    };
    if sim.faults.read().http_500 {
        return Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            ENGINE_DEAD,
            None,
        ));
    }
    // A continuation (mid-stream failover elsewhere): go on with the reply it carries.
    let resume = match api {
        Api::Chat if parsed.continue_final_message == Some(true) => {
            if parsed.add_generation_prompt == Some(true) {
                let msg =
                    "Cannot set both `continue_final_message` and `add_generation_prompt` to True.";
                return Ok(error(StatusCode::BAD_REQUEST, "BadRequestError", msg, None));
            }
            let Some((original, partial)) = parsed.continued_chat() else {
                let msg =
                    "continue_final_message is set but the final message is not the assistant's";
                return Ok(error(StatusCode::BAD_REQUEST, "BadRequestError", msg, None));
            };
            Some(continuation::chat(&original, &partial))
        }
        Api::Chat => None,
        Api::Completions => continuation::completion(&prompt),
    };
    let mut greq = GenRequest::new(&prompt, parsed.limit(), sim.cfg.default_max_tokens);
    if let Some(r) = resume {
        greq.prompt_hash = r.seed;
        greq.text_offset = r.offset;
        if parsed.limit().is_none() {
            // The reply ends where the uninterrupted one would have (its "EOS").
            greq.max_tokens = sim.cfg.default_max_tokens.saturating_sub(r.offset).max(1);
        }
    }
    if api == Api::Chat {
        // The chat template adds a few tokens around the messages ("hi" -> 9 in fixture D).
        greq.prompt_tokens = greq.prompt_tokens.saturating_add(8);
    }
    greq.cached_tokens = sim
        .prefix_cache
        .lookup_and_insert(&prompt, greq.prompt_tokens);
    let Ok(g) = Gen::admit(&sim, greq) else {
        return Ok(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableError",
            "The server is overloaded.",
            None,
        ));
    };
    let seed = sim.next_seed();
    let prefix = if api == Api::Chat {
        "chatcmpl-"
    } else {
        "cmpl-"
    };
    let id = format!("{prefix}{}", tokens::hex_id(seed));
    let created = Shared::unix_now();
    if parsed.stream.unwrap_or(false) {
        let fmt = VllmStream {
            api,
            id,
            created,
            model,
            include_usage: parsed.include_usage(),
            continuous: parsed.continuous_usage(),
            prompt_tokens: greq.prompt_tokens,
        };
        return Ok(server::streaming(SSE, gen::stream_body(g, fmt)));
    }
    match gen::run_whole(g).await {
        Whole::Done(text, s) => Ok(match api {
            Api::Chat => server::json(
                StatusCode::OK,
                JSON,
                &chat_response(&id, created, &model, &text, &s),
            ),
            Api::Completions => server::json(
                StatusCode::OK,
                JSON,
                &completion_response(&id, created, &model, &text, &s),
            ),
        }),
        Whole::Error => Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            ENGINE_DEAD,
            None,
        )),
        Whole::Drop => Err(io::Error::other("sim: drop_after_tokens")),
    }
}

/// `usage` in vLLM's field order.
#[derive(Serialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u32,
    total_tokens: u32,
    completion_tokens: u32,
}

impl Usage {
    fn new(prompt: u32, completion: u32) -> Self {
        Usage {
            prompt_tokens: prompt,
            total_tokens: prompt + completion,
            completion_tokens: completion,
        }
    }
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Null,
    finish_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_reason: Option<Null>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_ids: Option<Null>,
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChatChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_token_ids: Option<Null>,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Null,
    finish_reason: Option<&'a str>,
    stop_reason: Null,
    prompt_token_ids: Null,
    token_ids: Null,
}

/// Completions chunks print every field, `"usage":null` included (exclude_unset=False).
#[derive(Serialize)]
struct CompletionChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [CompletionChoice<'a>],
    usage: Option<Usage>,
}

/// The final usage-only chunk (exclude_none: no nulls).
#[derive(Serialize)]
struct UsageChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [(); 0],
    usage: Usage,
}

/// Frames of one vLLM stream.
struct VllmStream {
    api: Api,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    continuous: bool,
    prompt_tokens: u32,
}

impl VllmStream {
    fn object(&self) -> &'static str {
        match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completions => "text_completion",
        }
    }
}

impl StreamFormat for VllmStream {
    fn preamble(&mut self) -> Option<Bytes> {
        if self.api != Api::Chat {
            return None;
        }
        let choice = ChatChoice {
            index: 0,
            delta: Delta {
                role: Some("assistant"),
                content: Some(""),
            },
            logprobs: Null,
            finish_reason: None,
            stop_reason: None,
            token_ids: None,
        };
        Some(sse(&ChatChunk {
            id: &self.id,
            object: self.object(),
            created: self.created,
            model: &self.model,
            choices: &[choice],
            usage: self.continuous.then(|| Usage::new(self.prompt_tokens, 0)),
            prompt_token_ids: Some(Null),
        }))
    }

    fn token(&mut self, text: &str, i: u32, finish: Option<Finish>) -> Bytes {
        let usage = self
            .continuous
            .then(|| Usage::new(self.prompt_tokens, i + 1));
        let fr = finish.map(Finish::as_str);
        match self.api {
            Api::Chat => {
                let choice = ChatChoice {
                    index: 0,
                    delta: Delta {
                        role: None,
                        content: Some(text),
                    },
                    logprobs: Null,
                    finish_reason: fr,
                    stop_reason: finish.map(|_| Null),
                    token_ids: Some(Null),
                };
                sse(&ChatChunk {
                    id: &self.id,
                    object: self.object(),
                    created: self.created,
                    model: &self.model,
                    choices: &[choice],
                    usage,
                    prompt_token_ids: None,
                })
            }
            Api::Completions => {
                let choice = CompletionChoice {
                    index: 0,
                    text,
                    logprobs: Null,
                    finish_reason: fr,
                    stop_reason: Null,
                    prompt_token_ids: Null,
                    token_ids: Null,
                };
                sse(&CompletionChunk {
                    id: &self.id,
                    object: self.object(),
                    created: self.created,
                    model: &self.model,
                    choices: &[choice],
                    usage,
                })
            }
        }
    }

    fn tail(&mut self, k: usize, s: &Summary) -> Option<Bytes> {
        match (k, self.include_usage) {
            (0, true) => Some(sse(&UsageChunk {
                id: &self.id,
                object: self.object(),
                created: self.created,
                model: &self.model,
                choices: [],
                usage: Usage::new(s.prompt_tokens, s.completion_tokens),
            })),
            (0, false) | (1, true) => Some(Bytes::from_static(DONE)),
            _ => None,
        }
    }

    fn error(&mut self, k: usize) -> Option<Bytes> {
        match k {
            // json.dumps(ErrorResponse.model_dump()): note the ", " and ": " separators.
            0 => Some(Bytes::from(format!(
                "data: {{\"error\": {{\"message\": {}, \"type\": \"InternalServerError\", \"param\": null, \"code\": 500}}}}\n\n",
                serde_json::Value::from(ENGINE_DEAD)
            ))),
            1 => Some(Bytes::from_static(DONE)),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Null,
    annotations: Null,
    audio: Null,
    function_call: Null,
    tool_calls: [(); 0],
    reasoning_content: Null,
}

#[derive(Serialize)]
struct ChatWholeChoice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    logprobs: Null,
    finish_reason: &'a str,
    stop_reason: Null,
    token_ids: Null,
}

#[derive(Serialize)]
struct WholeUsage {
    prompt_tokens: u32,
    total_tokens: u32,
    completion_tokens: u32,
    prompt_tokens_details: Null,
}

/// Non-streamed chat reply (ChatCompletionResponse field order).
#[derive(Serialize)]
struct ChatWhole<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChatWholeChoice<'a>; 1],
    service_tier: Null,
    system_fingerprint: Null,
    usage: WholeUsage,
    prompt_logprobs: Null,
    prompt_token_ids: Null,
    kv_transfer_params: Null,
}

fn chat_response<'a>(
    id: &'a str,
    created: u64,
    model: &'a str,
    text: &'a str,
    s: &Summary,
) -> ChatWhole<'a> {
    ChatWhole {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [ChatWholeChoice {
            index: 0,
            message: ChatMessage {
                role: "assistant",
                content: text,
                refusal: Null,
                annotations: Null,
                audio: Null,
                function_call: Null,
                tool_calls: [],
                reasoning_content: Null,
            },
            logprobs: Null,
            finish_reason: s.finish.as_str(),
            stop_reason: Null,
            token_ids: Null,
        }],
        service_tier: Null,
        system_fingerprint: Null,
        usage: WholeUsage {
            prompt_tokens: s.prompt_tokens,
            total_tokens: s.prompt_tokens + s.completion_tokens,
            completion_tokens: s.completion_tokens,
            prompt_tokens_details: Null,
        },
        prompt_logprobs: Null,
        prompt_token_ids: Null,
        kv_transfer_params: Null,
    }
}

#[derive(Serialize)]
struct CompletionWholeChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Null,
    finish_reason: &'a str,
    stop_reason: Null,
    prompt_logprobs: Null,
}

/// Non-streamed completions reply (fixture (A) of `vllm_completions_stream_sse.txt`).
#[derive(Serialize)]
struct CompletionWhole<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionWholeChoice<'a>; 1],
    usage: Usage,
}

fn completion_response<'a>(
    id: &'a str,
    created: u64,
    model: &'a str,
    text: &'a str,
    s: &Summary,
) -> CompletionWhole<'a> {
    CompletionWhole {
        id,
        object: "text_completion",
        created,
        model,
        choices: [CompletionWholeChoice {
            index: 0,
            text,
            logprobs: Null,
            finish_reason: s.finish.as_str(),
            stop_reason: Null,
            prompt_logprobs: Null,
        }],
        usage: Usage::new(s.prompt_tokens, s.completion_tokens),
    }
}

#[derive(Serialize)]
struct Permission<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    allow_create_engine: bool,
    allow_sampling: bool,
    allow_logprobs: bool,
    allow_search_indices: bool,
    allow_view: bool,
    allow_fine_tuning: bool,
    organization: &'static str,
    group: Null,
    is_blocking: bool,
}

#[derive(Serialize)]
struct ModelCard<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    root: &'a str,
    parent: Null,
    max_model_len: u32,
    permission: [Permission<'a>; 1],
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelCard<'a>>,
}

/// `GET /v1/models`.
fn models(sim: &Shared) -> Response<Body> {
    let created = Shared::unix_now();
    let perm_ids: Vec<String> = (0..sim.cfg.models.len())
        .map(|_| format!("modelperm-{}", tokens::hex_id(sim.next_seed())))
        .collect();
    let data = sim
        .cfg
        .models
        .iter()
        .zip(&perm_ids)
        .map(|(m, pid)| ModelCard {
            id: m,
            object: "model",
            created,
            owned_by: "vllm",
            root: m,
            parent: Null,
            max_model_len: 32768,
            permission: [Permission {
                id: pid,
                object: "model_permission",
                created,
                allow_create_engine: false,
                allow_sampling: true,
                allow_logprobs: true,
                allow_search_indices: false,
                allow_view: true,
                allow_fine_tuning: false,
                organization: "*",
                group: Null,
                is_blocking: false,
            }],
        })
        .collect();
    server::json(
        StatusCode::OK,
        JSON,
        &ModelList {
            object: "list",
            data,
        },
    )
}
