//! Ollama's OpenAI-compatible `/v1/completions` and `/v1/models/{model}` (the chat endpoint is
//! in `ollama.rs`, embeddings in `embeddings.rs`).
//!
//! Formats rebuilt from Ollama's `openai/openai.go` (CompletionRequest, Completion,
//! CompletionChunk, ToCompletion, ToCompleteChunk, ToModel) and `middleware/openai.go`
//! (CompleteWriter, RetrieveMiddleware); see `tests/fixtures/ollama_openai_compat_more.txt`.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::gen::{self, Gen, GenRequest, StreamFormat, Summary, Whole};
use super::ollama::{self, JSON, SSE};
use super::openai::{sse, GenBody, DONE};
use super::server::{self, Body, Shared};
use super::stats::Finish;
use super::tokens;

/// `openai.CompleteChunkChoice` (logprobs omitted when empty).
#[derive(Serialize)]
struct Choice<'a> {
    text: &'a str,
    index: u32,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

impl Usage {
    fn of(s: &Summary) -> Self {
        Usage {
            prompt_tokens: s.prompt_tokens,
            completion_tokens: s.completion_tokens,
            total_tokens: s.prompt_tokens + s.completion_tokens,
        }
    }
}

/// `openai.CompletionChunk` field order.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    choices: Vec<Choice<'a>>,
    model: &'a str,
    system_fingerprint: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

/// `openai.Completion` field order.
#[derive(Serialize)]
struct Whole1<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: [Choice<'a>; 1],
    usage: Usage,
}

/// Frames of the compat completions stream: one chunk per generate line, the final line's
/// chunk (empty text, the finish reason), the usage chunk when asked, `[DONE]`.
struct CompletionStream {
    id: String,
    model: String,
    include_usage: bool,
}

impl CompletionStream {
    fn chunk(&self, choices: Vec<Choice<'_>>, usage: Option<Usage>) -> Bytes {
        sse(&Chunk {
            id: &self.id,
            object: "text_completion",
            created: Shared::unix_now(),
            choices,
            model: &self.model,
            system_fingerprint: "fp_ollama",
            usage,
        })
    }
}

impl StreamFormat for CompletionStream {
    fn token(&mut self, text: &str, _i: u32, _finish: Option<Finish>) -> Bytes {
        self.chunk(
            vec![Choice {
                text,
                index: 0,
                finish_reason: None,
            }],
            None,
        )
    }

    fn tail(&mut self, k: usize, s: &Summary) -> Option<Bytes> {
        match (k, self.include_usage) {
            (0, _) => Some(self.chunk(
                vec![Choice {
                    text: "",
                    index: 0,
                    finish_reason: Some(s.finish.as_str()),
                }],
                None,
            )),
            (1, true) => Some(self.chunk(Vec::new(), Some(Usage::of(s)))),
            (1, false) | (2, true) => Some(Bytes::from_static(DONE)),
            _ => None,
        }
    }

    fn error(&mut self, k: usize) -> Option<Bytes> {
        (k == 0).then(|| {
            Bytes::from(format!(
                "data: {{\"error\":{{\"message\":\"{}\",\"type\":\"api_error\",\"param\":null,\"code\":null}}}}\n\n",
                ollama::RUN_ERROR
            ))
        })
    }
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    sim: Arc<Shared>,
    req: Request<Incoming>,
) -> io::Result<Response<Body>> {
    let body = server::read_body(req.into_body()).await?;
    sim.counters.record_body(&body);
    let parsed: GenBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return Ok(ollama::compat_error(
                StatusCode::BAD_REQUEST,
                &ollama::go_json_error(&body, &e),
            ))
        }
    };
    let model = parsed.model.clone().unwrap_or_default();
    if model.is_empty() {
        return Ok(ollama::compat_error(
            StatusCode::BAD_REQUEST,
            "model is required",
        ));
    }
    if !ollama::served(&sim, &model) {
        return Ok(ollama::compat_error(
            StatusCode::NOT_FOUND,
            &ollama::not_found(&model),
        ));
    }
    if sim.faults.read().http_500 {
        return Ok(ollama::compat_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ollama::RUNNER_DIED,
        ));
    }
    let greq = GenRequest::new(
        &parsed.completion_prompt(),
        parsed.limit(),
        sim.cfg.default_max_tokens,
    );
    let Ok(g) = Gen::admit(&sim, greq) else {
        return Ok(ollama::compat_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ollama::BUSY,
        ));
    };
    // middleware/openai.go: fmt.Sprintf("cmpl-%d", rand.Intn(999)).
    let id = format!("cmpl-{}", tokens::mix(sim.next_seed()) % 999);
    if parsed.stream.unwrap_or(false) {
        let fmt = CompletionStream {
            id,
            model,
            include_usage: parsed.include_usage(),
        };
        return Ok(server::streaming(SSE, gen::stream_body(g, fmt)));
    }
    match gen::run_whole(g).await {
        Whole::Done(text, s) => Ok(server::json(
            StatusCode::OK,
            JSON,
            &Whole1 {
                id: &id,
                object: "text_completion",
                created: Shared::unix_now(),
                model: &model,
                system_fingerprint: "fp_ollama",
                choices: [Choice {
                    text: &text,
                    index: 0,
                    finish_reason: Some(s.finish.as_str()),
                }],
                usage: Usage::of(&s),
            },
        )),
        Whole::Error => Ok(ollama::compat_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ollama::RUN_ERROR,
        )),
        Whole::Drop => Err(io::Error::other("sim: drop_after_tokens")),
    }
}

/// `GET /v1/models/{model}`: `openai.Model` from the model's show data.
pub(crate) fn retrieve(sim: &Shared, name: &str) -> Response<Body> {
    #[derive(Serialize)]
    struct Model<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        owned_by: &'a str,
    }
    if name.is_empty() || !ollama::served(sim, name) {
        let msg = format!("model \"{name}\" not found");
        return ollama::compat_error(StatusCode::NOT_FOUND, &msg);
    }
    let created = sim
        .started_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let owned_by = name.split_once('/').map_or("library", |(ns, _)| ns);
    server::json(
        StatusCode::OK,
        JSON,
        &Model {
            id: name,
            object: "model",
            created,
            owned_by,
        },
    )
}
