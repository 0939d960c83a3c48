//! vLLM's OpenAI Responses API, `POST /v1/responses`: one `ResponsesResponse` object, or with
//! `"stream": true` named SSE events (`event: TYPE\ndata: JSON\n\n`, no `[DONE]`):
//! `response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, one `response.output_text.delta` per token,
//! `response.output_text.done`, `response.content_part.done`, `response.output_item.done`,
//! `response.completed`.
//!
//! Rebuilt from vLLM's `entrypoints/openai/responses/` (api_router's
//! `_convert_stream_to_sse_events`, `model_dump_json`; protocol's `ResponsesResponse` and
//! `ResponseUsage`; the simple streaming events) and the `openai` package's event types, whose
//! fields pydantic prints in declaration order. See `tests/fixtures/vllm_responses.txt`.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::gen::{self, Gen, GenRequest, StreamFormat, Summary, Whole};
use super::openai::Null;
use super::server::{self, Body, Shared};
use super::stats::Finish;
use super::{tokens, vllm};

/// The request fields the simulator reads.
#[derive(Deserialize)]
struct ResponsesBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
}

/// The prompt text: `instructions`, then the input string or each input item's text.
fn prompt_of(b: &ResponsesBody) -> Vec<u8> {
    fn push(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::String(s) => out.extend_from_slice(s.as_bytes()),
            Value::Array(a) => a.iter().for_each(|x| push(x, out)),
            Value::Object(o) => {
                for k in ["content", "text"] {
                    if let Some(x) = o.get(k) {
                        push(x, out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(i) = &b.instructions {
        out.extend_from_slice(i.as_bytes());
    }
    if let Some(v) = &b.input {
        push(v, &mut out);
    }
    out
}

/// `ResponseOutputText`.
#[derive(Serialize, Clone)]
struct OutputText<'a> {
    annotations: [(); 0],
    text: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    logprobs: Option<[(); 0]>,
}

/// `ResponseOutputMessage`.
#[derive(Serialize)]
struct OutputMessage<'a> {
    id: &'a str,
    content: Vec<OutputText<'a>>,
    role: &'static str,
    status: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct InputDetails {
    cached_tokens: u32,
}

#[derive(Serialize)]
struct OutputDetails {
    reasoning_tokens: u32,
}

/// `ResponseUsage`.
#[derive(Serialize)]
struct Usage {
    input_tokens: u32,
    input_tokens_details: InputDetails,
    output_tokens: u32,
    output_tokens_details: OutputDetails,
    total_tokens: u32,
}

#[derive(Serialize)]
struct Incomplete {
    reason: &'static str,
}

/// vLLM's `ResponsesResponse` in declaration order.
#[derive(Serialize)]
struct ResponseObject<'a> {
    id: &'a str,
    created_at: u64,
    incomplete_details: Option<Incomplete>,
    instructions: Option<&'a str>,
    metadata: Null,
    model: &'a str,
    object: &'static str,
    output: Vec<OutputMessage<'a>>,
    parallel_tool_calls: bool,
    temperature: f64,
    tool_choice: &'static str,
    tools: [(); 0],
    top_p: f64,
    background: bool,
    max_output_tokens: u32,
    max_tool_calls: Null,
    previous_response_id: Null,
    prompt: Null,
    reasoning: Null,
    service_tier: &'static str,
    status: &'static str,
    text: Null,
    top_logprobs: Null,
    truncation: &'static str,
    usage: Option<Usage>,
    user: Null,
    input_messages: Null,
    output_messages: Null,
}

/// What one response is about, for every event that carries the whole object.
struct Meta {
    id: String,
    msg_id: String,
    created_at: u64,
    model: String,
    instructions: Option<String>,
    max_output_tokens: u32,
    temperature: f64,
    top_p: f64,
}

impl Meta {
    /// The response object; `done` carries the text and the numbers once generation ended.
    fn object<'a>(&'a self, done: Option<(&'a str, &Summary)>) -> ResponseObject<'a> {
        let (status, output, usage, incomplete) = match done {
            None => ("in_progress", Vec::new(), None, None),
            Some((text, s)) => {
                let length = s.finish == Finish::Length;
                (
                    if length { "incomplete" } else { "completed" },
                    vec![self.message(text, "completed")],
                    Some(Usage {
                        input_tokens: s.prompt_tokens,
                        input_tokens_details: InputDetails { cached_tokens: 0 },
                        output_tokens: s.completion_tokens,
                        output_tokens_details: OutputDetails {
                            reasoning_tokens: 0,
                        },
                        total_tokens: s.prompt_tokens + s.completion_tokens,
                    }),
                    length.then_some(Incomplete {
                        reason: "max_output_tokens",
                    }),
                )
            }
        };
        ResponseObject {
            id: &self.id,
            created_at: self.created_at,
            incomplete_details: incomplete,
            instructions: self.instructions.as_deref(),
            metadata: Null,
            model: &self.model,
            object: "response",
            output,
            parallel_tool_calls: true,
            temperature: self.temperature,
            tool_choice: "auto",
            tools: [],
            top_p: self.top_p,
            background: false,
            max_output_tokens: self.max_output_tokens,
            max_tool_calls: Null,
            previous_response_id: Null,
            prompt: Null,
            reasoning: Null,
            service_tier: "auto",
            status,
            text: Null,
            top_logprobs: Null,
            truncation: "disabled",
            usage,
            user: Null,
            input_messages: Null,
            output_messages: Null,
        }
    }

    fn message<'a>(&'a self, text: &'a str, status: &'static str) -> OutputMessage<'a> {
        let content = if status == "completed" {
            vec![OutputText {
                annotations: [],
                text,
                kind: "output_text",
                logprobs: None,
            }]
        } else {
            Vec::new()
        };
        OutputMessage {
            id: &self.msg_id,
            content,
            role: "assistant",
            status,
            kind: "message",
        }
    }
}

/// `event: TYPE\ndata: JSON\n\n` for an event whose `sequence_number` and `type` come last,
/// as pydantic prints the `openai` event models.
fn event<T: Serialize>(kind: &str, seq: &mut u64, fields: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Plain structs of strings and numbers always serialize (to an object: `{...}`).
    let _ = serde_json::to_writer(&mut out, fields);
    out.pop();
    out.extend_from_slice(
        format!(",\"sequence_number\":{seq},\"type\":\"{kind}\"}}\n\n").as_bytes(),
    );
    *seq += 1;
    out
}

/// The fields that locate a content part.
#[derive(Serialize)]
struct PartRef<'a> {
    content_index: u32,
    item_id: &'a str,
    output_index: u32,
}

/// Events before the first delta: created, in_progress, output_item.added, content_part.added.
const OPENING_EVENTS: u64 = 4;

/// Frames of one streamed response.
struct ResponsesStream {
    meta: Meta,
    seq: u64,
    text: String,
}

impl ResponsesStream {
    fn part<'a>(&'a self) -> PartRef<'a> {
        PartRef {
            content_index: 0,
            item_id: &self.meta.msg_id,
            output_index: 0,
        }
    }
}

impl StreamFormat for ResponsesStream {
    fn preamble(&mut self) -> Option<Bytes> {
        #[derive(Serialize)]
        struct WithResponse<'a> {
            response: ResponseObject<'a>,
        }
        #[derive(Serialize)]
        struct ItemAdded<'a> {
            item: OutputMessage<'a>,
            output_index: u32,
        }
        #[derive(Serialize)]
        struct PartAdded<'a> {
            content_index: u32,
            item_id: &'a str,
            output_index: u32,
            part: OutputText<'a>,
        }
        // gen.rs asks for the preamble after framing the first token, so the opening events
        // number themselves from 0 and tokens start after them.
        let mut seq = 0;
        let m = &self.meta;
        let mut out = event(
            "response.created",
            &mut seq,
            &WithResponse {
                response: m.object(None),
            },
        );
        out.extend(event(
            "response.in_progress",
            &mut seq,
            &WithResponse {
                response: m.object(None),
            },
        ));
        out.extend(event(
            "response.output_item.added",
            &mut seq,
            &ItemAdded {
                item: m.message("", "in_progress"),
                output_index: 0,
            },
        ));
        out.extend(event(
            "response.content_part.added",
            &mut seq,
            &PartAdded {
                content_index: 0,
                item_id: &m.msg_id,
                output_index: 0,
                part: OutputText {
                    annotations: [],
                    text: "",
                    kind: "output_text",
                    logprobs: Some([]),
                },
            },
        ));
        debug_assert_eq!(seq, OPENING_EVENTS);
        Some(out.into())
    }

    fn token(&mut self, text: &str, _i: u32, _finish: Option<Finish>) -> Bytes {
        #[derive(Serialize)]
        struct Delta<'a> {
            content_index: u32,
            delta: &'a str,
            item_id: &'a str,
            logprobs: [(); 0],
            output_index: u32,
        }
        self.text.push_str(text);
        let mut seq = self.seq;
        let out = event(
            "response.output_text.delta",
            &mut seq,
            &Delta {
                content_index: 0,
                delta: text,
                item_id: &self.meta.msg_id,
                logprobs: [],
                output_index: 0,
            },
        );
        self.seq = seq;
        out.into()
    }

    fn tail(&mut self, k: usize, s: &Summary) -> Option<Bytes> {
        #[derive(Serialize)]
        struct TextDone<'a> {
            content_index: u32,
            item_id: &'a str,
            logprobs: [(); 0],
            output_index: u32,
            text: &'a str,
        }
        #[derive(Serialize)]
        struct PartDone<'a> {
            #[serde(flatten)]
            at: PartRef<'a>,
            part: OutputText<'a>,
        }
        #[derive(Serialize)]
        struct ItemDone<'a> {
            item: OutputMessage<'a>,
            output_index: u32,
        }
        #[derive(Serialize)]
        struct Completed<'a> {
            response: ResponseObject<'a>,
        }
        let mut seq = self.seq;
        let text = self.text.as_str();
        let out = match k {
            0 => event(
                "response.output_text.done",
                &mut seq,
                &TextDone {
                    content_index: 0,
                    item_id: &self.meta.msg_id,
                    logprobs: [],
                    output_index: 0,
                    text,
                },
            ),
            1 => event(
                "response.content_part.done",
                &mut seq,
                &PartDone {
                    at: self.part(),
                    part: OutputText {
                        annotations: [],
                        text,
                        kind: "output_text",
                        logprobs: None,
                    },
                },
            ),
            2 => event(
                "response.output_item.done",
                &mut seq,
                &ItemDone {
                    item: self.meta.message(text, "completed"),
                    output_index: 0,
                },
            ),
            3 => event(
                "response.completed",
                &mut seq,
                &Completed {
                    response: self.meta.object(Some((text, s))),
                },
            ),
            _ => return None,
        };
        self.seq = seq;
        Some(out.into())
    }

    fn error(&mut self, k: usize) -> Option<Bytes> {
        /// `ResponseErrorEvent`.
        #[derive(Serialize)]
        struct ErrorEvent {
            code: &'static str,
            message: &'static str,
            param: Null,
        }
        (k == 0).then(|| {
            let mut seq = self.seq;
            event(
                "error",
                &mut seq,
                &ErrorEvent {
                    code: "InternalServerError",
                    message: vllm::ENGINE_DEAD,
                    param: Null,
                },
            )
            .into()
        })
    }
}

/// `POST /v1/responses` (generative models only).
pub(crate) async fn create(sim: Arc<Shared>, req: Request<Incoming>) -> io::Result<Response<Body>> {
    let body = server::read_body(req.into_body()).await?;
    sim.counters.record_body(&body);
    let Ok(parsed) = serde_json::from_slice::<ResponsesBody>(&body) else {
        return Ok(vllm::error(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "[{'type': 'json_invalid', 'loc': ('body', 0), 'msg': 'JSON decode error'}]",
            None,
        ));
    };
    if parsed.input.is_none() {
        let msg = "[{'type': 'missing', 'loc': ('body', 'input'), 'msg': 'Field required', 'input': {...}}]";
        return Ok(vllm::error(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            msg,
            None,
        ));
    }
    let model = match &parsed.model {
        None => sim.cfg.models[0].clone(),
        Some(m) if sim.has_model(m) => m.clone(),
        Some(m) => {
            let msg = format!("The model `{m}` does not exist.");
            return Ok(vllm::error(
                StatusCode::NOT_FOUND,
                "NotFoundError",
                &msg,
                Some("model"),
            ));
        }
    };
    if sim.faults.read().http_500 {
        return Ok(vllm::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            vllm::ENGINE_DEAD,
            None,
        ));
    }
    let prompt = prompt_of(&parsed);
    let mut greq = GenRequest::new(
        &prompt,
        parsed.max_output_tokens,
        sim.cfg.default_max_tokens,
    );
    // The chat template wraps the input as it does for chat completions.
    greq.prompt_tokens = greq.prompt_tokens.saturating_add(8);
    let Ok(g) = Gen::admit(&sim, greq) else {
        return Ok(vllm::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableError",
            "The server is overloaded.",
            None,
        ));
    };
    let seed = sim.next_seed();
    let meta = Meta {
        id: format!("resp_{}{}", tokens::hex_id(seed), tokens::hex_id(!seed)),
        msg_id: format!(
            "msg_{}{}",
            tokens::hex_id(seed ^ 1),
            tokens::hex_id(!seed ^ 1)
        ),
        created_at: Shared::unix_now(),
        model,
        instructions: parsed.instructions.clone(),
        max_output_tokens: greq.max_tokens,
        temperature: parsed.temperature.unwrap_or(1.0),
        top_p: parsed.top_p.unwrap_or(1.0),
    };
    if parsed.stream.unwrap_or(false) {
        let fmt = ResponsesStream {
            meta,
            seq: OPENING_EVENTS,
            text: String::new(),
        };
        return Ok(server::streaming(vllm::SSE, gen::stream_body(g, fmt)));
    }
    match gen::run_whole(g).await {
        Whole::Done(text, s) => Ok(server::json(
            StatusCode::OK,
            vllm::JSON,
            &meta.object(Some((&text, &s))),
        )),
        Whole::Error => Ok(vllm::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            vllm::ENGINE_DEAD,
            None,
        )),
        Whole::Drop => Err(io::Error::other("sim: drop_after_tokens")),
    }
}
