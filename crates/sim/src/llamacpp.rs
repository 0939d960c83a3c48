//! llama.cpp's `llama-server`: build b11312 (llama.cpp@0c1e57098, the copy vendored by
//! llama-cpp-python 0.3.36, as `tests/engines/llamacpp.sh` pins it).
//!
//! What it reproduces from that source (`tools/server/server-{http,context,task,common}.cpp`):
//! - JSON is nlohmann's `ordered_json` dumped compact: keys in the order the server inserts
//!   them (not sorted), non-ASCII raw; the structs below declare their fields in that order.
//! - Errors: `{"error":{"code","message","type"}}` from `format_error_response`; the HTTP
//!   layer's own ones (loading, bad API key, unknown route) are `{"error":{"message","type","code"}}`.
//! - Until the model is loaded every endpoint answers 503 `Loading model` (`load_time`).
//! - A streamed completion's headers go out when a slot starts on it (not while it waits for
//!   a slot); chat streams open with a `{"role":"assistant","content":null}` delta, end with a
//!   `finish_reason` chunk (then a usage chunk with `stream_options.include_usage`), the last
//!   one carrying `timings`, then `data: [DONE]`; an error mid-stream is one
//!   `data: {"error":{...}}` event and the end of the stream (no `[DONE]`).
//! - The final assistant message of a chat is continued (llama-server's assistant prefill),
//!   which is what okome's mid-stream failover sends.
//! - `/metrics` (with `metrics: true`) in llama-server's Prometheus text, values printed as a
//!   C++ stream prints a double (`%g`, 6 significant digits).
//! - Slots (`max_concurrent`, [`crate::llamacpp_slots`]): a prompt reuses the cache of the slot
//!   it lands on; a slot's context (`n_ctx`) rejects longer prompts and ends generation when full.
//! - cpp-httplib's heads: `Server: llama.cpp`, the Origin echoed, no `Date`, `Keep-Alive:
//!   timeout=5, max=100`, `Connection: close` after an error.
//!
//! `tests/engines/llamacpp_wire.txt` is the real server's transcript; `tests/llamacpp_wire.rs`
//! holds the sim to it. What differs: the text (the sim's words, not the model's), token counts
//! (bytes / 4), timings (the sim's clock), no stop strings, sampling or tool calls, and the
//! endpoints not listed in [`route`] (`/tokenize`, `/v1/responses`, `/v1/messages`, ... are 404).

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, ORIGIN, SERVER};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::gen::{self, Gen, GenRequest, StreamFormat, Summary, Whole};
use super::llamacpp_slots::Task;
use super::openai::{sse, GenBody, Message, Null, StreamOptions, DONE};
use super::server::{self, Body, Shared};
use super::stats::Finish;
use super::style::Node;
use super::{continuation, tokens};

/// Every JSON answer's content type (`server_http_res`'s default).
pub(crate) const JSON: &str = "application/json; charset=utf-8";
/// Streamed completions.
pub(crate) const SSE: &str = "text/event-stream";
/// `/metrics`.
pub(crate) const METRICS: &str = "text/plain; version=0.0.4";
/// `llama_build_info()`: `b<build number>-<commit>`, the chunks' `system_fingerprint`.
pub(crate) const BUILD_INFO: &str = "b11312-0c1e57098";
/// The error a failed `llama_decode` gives every busy slot (injected faults use it).
pub(crate) const COMPUTE_ERROR: &str = "Compute error.";
/// Tokens the ChatML template adds around the messages (`<|im_start|>user\n`...).
const CHAT_TEMPLATE_TOKENS: u32 = 8;
/// The test model's chat template (tests/engines/make_tiny_gguf.py).
const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// llama-server's `error_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorType {
    InvalidRequest,
    Server,
    NotSupported,
    Unavailable,
}

impl ErrorType {
    fn code_and_name(self) -> (StatusCode, &'static str) {
        match self {
            ErrorType::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            ErrorType::Server => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
            ErrorType::NotSupported => (StatusCode::NOT_IMPLEMENTED, "not_supported_error"),
            ErrorType::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable_error"),
        }
    }
}

/// `format_error_response`'s object: code, message, type.
#[derive(Serialize)]
struct ErrorInner<'a> {
    code: u16,
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

/// The HTTP layer's own errors (server-http.cpp builds them inline): message, type, code.
#[derive(Serialize)]
struct HttpErrorInner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: u16,
}

#[derive(Serialize)]
struct HttpErrorBody<'a> {
    error: HttpErrorInner<'a>,
}

/// An error answer from a handler (`res->error(format_error_response(...))`).
pub(crate) fn error(t: ErrorType, message: &str) -> Response<Body> {
    let (status, kind) = t.code_and_name();
    let body = ErrorBody {
        error: ErrorInner {
            code: status.as_u16(),
            message,
            kind,
        },
    };
    server::json(status, JSON, &body)
}

/// An error answer from the HTTP layer (middlewares, unknown routes).
fn http_error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = HttpErrorBody {
        error: HttpErrorInner {
            message,
            kind,
            code: status.as_u16(),
        },
    };
    server::json(status, JSON, &body)
}

/// The in-stream error event (`format_oai_sse({"error": ...})`).
fn error_event(t: ErrorType, message: &str) -> Bytes {
    let (status, kind) = t.code_and_name();
    sse(&ErrorBody {
        error: ErrorInner {
            code: status.as_u16(),
            message,
            kind,
        },
    })
}

/// Whether the server is still "loading the model".
fn loading(sim: &Shared) -> bool {
    !sim.cfg.load_time.is_zero()
        && SystemTime::now()
            .duration_since(sim.started_at)
            .unwrap_or(Duration::ZERO)
            < sim.cfg.load_time
}

/// `--api-key`: `Authorization: Bearer KEY` (or `X-Api-Key: KEY`), the "Bearer " optional.
fn key_ok(req: &Request<Incoming>, key: &str) -> bool {
    let h = req.headers();
    let given = h
        .get(AUTHORIZATION)
        .filter(|v| !v.is_empty())
        .or_else(|| h.get("x-api-key"))
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let given = given.strip_prefix(b"Bearer ").unwrap_or(given);
    given == key.as_bytes()
}

/// Routes a request to the llama-server API and adds the headers every answer carries.
pub(crate) async fn route(sim: Arc<Shared>, req: Request<Incoming>) -> io::Result<Response<Body>> {
    // `--cors-origins *` with credentials (the defaults): the Origin is echoed back, empty or not.
    let origin = req
        .headers()
        .get(ORIGIN)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""));
    let close = req
        .headers()
        .get(hyper::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let mut resp = dispatch(sim, req).await?;
    let error = resp.status().as_u16() >= 400;
    let h = resp.headers_mut();
    h.insert(SERVER, HeaderValue::from_static("llama.cpp"));
    h.insert("access-control-allow-origin", origin);
    // cpp-httplib closes the connection after an error; otherwise it announces its keep-alive.
    if error {
        h.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    } else if !close {
        h.insert("keep-alive", HeaderValue::from_static("timeout=5, max=100"));
    }
    Ok(resp)
}

async fn dispatch(sim: Arc<Shared>, req: Request<Incoming>) -> io::Result<Response<Body>> {
    let path = req.uri().path().to_string();
    let m = req.method().clone();
    if m == Method::OPTIONS {
        let mut r = server::text(StatusCode::OK, "text/html", "");
        let h = r.headers_mut();
        h.insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("*"),
        );
        return Ok(r);
    }
    if loading(&sim) {
        return Ok(http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            "Loading model",
        ));
    }
    if let Some(key) = &sim.cfg.api_key {
        if !matches!(path.as_str(), "/health" | "/v1/health" | "/") && !key_ok(&req, key) {
            return Ok(http_error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "Invalid API Key",
            ));
        }
    }
    let get = m == Method::GET || m == Method::HEAD;
    let probe = get
        && matches!(
            path.as_str(),
            "/health" | "/v1/health" | "/models" | "/v1/models" | "/metrics" | "/slots" | "/props"
        );
    if probe && sim.cfg.busy_probes_block {
        // Every HTTP thread is held by a generation: the probe is read when one ends.
        sim.sched.wait_unless_all_busy().await;
    }
    Ok(match (path.as_str(), get, m == Method::POST) {
        ("/health" | "/v1/health", true, _) => {
            server::json(StatusCode::OK, JSON, &serde_json::json!({ "status": "ok" }))
        }
        ("/models" | "/v1/models", true, _) => models(&sim),
        ("/metrics", true, _) => metrics(&sim),
        ("/slots", true, _) => slots(&sim, req.uri().query().unwrap_or("")),
        ("/props", true, _) => props(&sim),
        ("/completion" | "/completions", _, true) => return generate(sim, req, Api::Native).await,
        ("/v1/completions", _, true) => return generate(sim, req, Api::Completions).await,
        ("/chat/completions" | "/v1/chat/completions", _, true) => {
            return generate(sim, req, Api::Chat).await
        }
        // A generative model started without --embeddings / --reranking.
        ("/embedding" | "/embeddings" | "/v1/embeddings", _, true) => error(
            ErrorType::NotSupported,
            "This server does not support embeddings. Start it with `--embeddings`",
        ),
        ("/rerank" | "/reranking" | "/v1/rerank" | "/v1/reranking", _, true) => error(
            ErrorType::NotSupported,
            "This server does not support reranking. Start it with `--reranking`",
        ),
        // cpp-httplib's 404, filled in by the server's error handler.
        _ => http_error(StatusCode::NOT_FOUND, "not_found_error", "File Not Found"),
    })
}

/// A number as a C++ `std::ostream` prints a double by default (`%g`, 6 significant digits).
pub(crate) fn cpp_double(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    // Round to 6 significant digits first: the exponent is the rounded value's.
    let sci = format!("{v:.5e}");
    let Some((mant, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if (-4..6).contains(&exp) {
        let decimals = (5 - exp).max(0) as usize;
        trim(&format!("{v:.decimals$}"))
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mant), exp.unsigned_abs())
    }
}

/// `GET /metrics` (`server_task_result_metrics::to_metrics`).
fn metrics(sim: &Shared) -> Response<Body> {
    if !sim.cfg.metrics {
        return error(
            ErrorType::NotSupported,
            "This server does not support metrics endpoint. Start it with `--metrics`",
        );
    }
    let (running, waiting) = sim.sched.load();
    let waiting = waiting as u64 + sim.pressure.read().extra_waiting;
    let m = {
        let mut g = sim.counters.llama.lock();
        let m = g.clone();
        // The gauges average over the window between two scrapes.
        g.reset_buckets();
        m
    };
    let counters: [(&str, &str, f64); 10] = [
        (
            "prompt_tokens_total",
            "Number of prompt tokens processed, excluding cached tokens",
            m.prompt.count as f64,
        ),
        (
            "prompt_tokens_cached_total",
            "Number of prompt tokens reused from the cache",
            m.n_prompt_cached as f64,
        ),
        (
            "prompt_seconds_total",
            "Total time spent processing prompts",
            m.prompt.time_us as f64 / 1e6,
        ),
        (
            "tokens_predicted_total",
            "Number of generation tokens processed",
            m.predict.count as f64,
        ),
        (
            "tokens_predicted_seconds_total",
            "Total time spent generating tokens",
            m.predict.time_us as f64 / 1e6,
        ),
        (
            "n_decode_total",
            "Total number of llama_decode() calls, excluding speculative decoding and multimodal decoding",
            m.n_decode as f64,
        ),
        (
            "n_tokens_max",
            "Largest observed sequence length (prompt + generation)",
            m.n_tokens_max as f64,
        ),
        (
            "spec_decode_num_draft_tokens_total",
            "Speculative: Total draft tokens generated",
            0.0,
        ),
        (
            "spec_decode_num_accepted_tokens_total",
            "Speculative: Total draft tokens accepted by the target model",
            0.0,
        ),
        (
            "spec_decode_num_drafts_total",
            "Speculative: Total speculative decoding verification steps",
            0.0,
        ),
    ];
    let gauges: [(&str, &str, f64); 5] = [
        (
            "prompt_tokens_seconds",
            "Average prompt throughput in tokens/s",
            m.prompt_bucket.per_second(),
        ),
        (
            "predicted_tokens_seconds",
            "Average generation throughput in tokens/s",
            m.predict_bucket.per_second(),
        ),
        (
            "requests_processing",
            "Number of requests processing",
            running as f64,
        ),
        (
            "requests_deferred",
            "Number of requests deferred",
            waiting as f64,
        ),
        (
            "n_busy_slots_per_decode",
            "Average number of busy slots per llama_decode() call",
            m.n_busy_slots as f64 / (m.n_decode as f64).max(1.0),
        ),
    ];
    let mut out = String::with_capacity(3072);
    for (kind, items) in [("counter", &counters[..]), ("gauge", &gauges[..])] {
        for (name, help, v) in items {
            out.push_str(&format!(
                "# HELP llamacpp:{name} {help}\n# TYPE llamacpp:{name} {kind}\nllamacpp:{name} {}\n",
                cpp_double(*v)
            ));
        }
    }
    let mut r = server::text(StatusCode::OK, METRICS, out);
    // `metrics.t_start` is ggml_time_us() at start: microseconds of the process's own clock.
    if let Ok(v) = HeaderValue::from_str(&process_start_us(sim).to_string()) {
        r.headers_mut().insert("process-start-time-unix", v);
    }
    r
}

/// Microseconds from this process's first simulator to this one's start (ggml's clock).
fn process_start_us(sim: &Shared) -> u64 {
    static EPOCH: std::sync::OnceLock<SystemTime> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| sim.started_at);
    sim.started_at
        .duration_since(epoch)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
        + 1
}

/// What a request's `task_params` differ in.
#[derive(Debug, Clone, Copy)]
struct ParamsOf {
    n_predict: i64,
    stream: bool,
    /// The request's temperature (else llama.cpp's default 0.8).
    temperature: Option<f64>,
    /// `chat_format`: "peg-native" for a chat request, "Content-only" otherwise.
    chat: bool,
    /// `reasoning_format`: a task's is "deepseek", `/props` shows "none".
    task: bool,
}

/// llama.cpp's sampling defaults (`common_params_sampling`) as `task_params::to_json` prints
/// them; `full` adds the fields only the final `/completion` answer carries.
fn task_params(full: bool, p: ParamsOf) -> Node {
    let ParamsOf {
        n_predict, stream, ..
    } = p;
    use Node::{Arr, Bool, Float, Int, Obj, Str, UInt};
    // Single-precision defaults widened to double, as nlohmann prints them.
    let f = |x: f32| Float(f64::from(x));
    let s = |x: &str| Str(x.to_string());
    let mut o: Vec<(&str, Node)> = vec![
        ("seed", UInt(4_294_967_295)),
        (
            "temperature",
            // A request's value goes through a C float too.
            p.temperature.map_or(f(0.8), |t| f(t as f32)),
        ),
        ("dynatemp_range", f(0.0)),
        ("dynatemp_exponent", f(1.0)),
        ("top_k", Int(40)),
        ("top_p", f(0.95)),
        ("min_p", f(0.05)),
        ("top_n_sigma", f(-1.0)),
        ("xtc_probability", f(0.0)),
        ("xtc_threshold", f(0.1)),
        ("typical_p", f(1.0)),
        ("repeat_last_n", Int(64)),
        ("repeat_penalty", f(1.0)),
        ("presence_penalty", f(0.0)),
        ("frequency_penalty", f(0.0)),
        ("dry_multiplier", f(0.0)),
        ("dry_base", f(1.75)),
        ("dry_allowed_length", Int(2)),
        ("dry_penalty_last_n", Int(64)),
    ];
    if full {
        o.push((
            "dry_sequence_breakers",
            Arr(vec![s("\n"), s(":"), s("\""), s("*")]),
        ));
    }
    o.extend([
        ("mirostat", Int(0)),
        ("mirostat_tau", f(5.0)),
        ("mirostat_eta", f(0.1)),
        ("adaptive_target", f(-1.0)),
        ("adaptive_decay", f(0.9)),
    ]);
    if full {
        o.push(("stop", Arr(vec![])));
    }
    o.extend([
        ("max_tokens", Int(n_predict)),
        ("n_predict", Int(n_predict)),
        ("n_keep", Int(0)),
        ("n_discard", Int(0)),
        ("ignore_eos", Bool(false)),
        ("stream", Bool(stream)),
    ]);
    if full {
        o.push(("logit_bias", Arr(vec![])));
    }
    o.extend([("n_probs", Int(0)), ("min_keep", Int(0))]);
    if full {
        o.extend([
            ("grammar", s("")),
            ("grammar_lazy", Bool(false)),
            ("grammar_triggers", Arr(vec![])),
            ("preserved_tokens", Arr(vec![])),
        ]);
    }
    o.extend([
        (
            "chat_format",
            s(if p.chat { "peg-native" } else { "Content-only" }),
        ),
        (
            "reasoning_format",
            s(if p.task { "deepseek" } else { "none" }),
        ),
        ("reasoning_in_content", Bool(false)),
        (
            "generation_prompt",
            // The assistant preamble the chat template put at the prompt's end.
            s(if p.chat && p.task {
                "<|im_start|>assistant\n"
            } else {
                ""
            }),
        ),
        (
            "samplers",
            Arr([
                "penalties",
                "dry",
                "top_n_sigma",
                "top_k",
                "typ_p",
                "top_p",
                "min_p",
                "xtc",
                "temperature",
            ]
            .into_iter()
            .map(s)
            .collect()),
        ),
        ("speculative.types", s("none")),
        ("timings_per_token", Bool(false)),
        ("post_sampling_probs", Bool(false)),
        ("backend_sampling", Bool(false)),
        ("lora", Arr(vec![])),
    ]);
    Obj(o.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// The model's name: the first configured name (llama-server's first `--alias`, or its `-m`
/// path); all the names are its aliases.
fn model_name(sim: &Shared) -> &str {
    &sim.cfg.models[0]
}

/// The `-m` path `/props` reports.
fn model_path(sim: &Shared) -> String {
    let name = model_name(sim);
    if name.ends_with(".gguf") {
        name.to_string()
    } else {
        format!("/models/{name}.gguf")
    }
}

#[derive(Serialize)]
struct ModelMeta {
    vocab_type: u32,
    n_vocab: u32,
    n_ctx: u32,
    n_ctx_train: u32,
    n_embd: u32,
    n_params: u64,
    size: u64,
    ftype: &'static str,
}

/// The tiny test model's numbers (tests/engines/make_tiny_gguf.py, as llama-server reports them).
fn meta(sim: &Shared) -> ModelMeta {
    ModelMeta {
        vocab_type: 1,
        n_vocab: 864,
        n_ctx: sim.cfg.n_ctx,
        n_ctx_train: 2048,
        n_embd: 64,
        n_params: 192_832,
        size: 771_328,
        ftype: "all F32",
    }
}

#[derive(Serialize)]
struct ModelInfo<'a> {
    id: &'a str,
    aliases: Vec<&'a str>,
    tags: [(); 0],
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    meta: ModelMeta,
}

#[derive(Serialize)]
struct OllamaDetails {
    parent_model: &'static str,
    format: &'static str,
    family: &'static str,
    families: [&'static str; 1],
    parameter_size: &'static str,
    quantization_level: &'static str,
}

#[derive(Serialize)]
struct OllamaModel<'a> {
    name: &'a str,
    model: &'a str,
    modified_at: &'static str,
    size: &'static str,
    digest: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    description: &'static str,
    tags: [&'static str; 1],
    capabilities: [&'static str; 1],
    parameters: &'static str,
    details: OllamaDetails,
}

/// `GET /v1/models`: one body with both an Ollama-style `models` and an OpenAI `data` list.
#[derive(Serialize)]
struct Models<'a> {
    models: [OllamaModel<'a>; 1],
    object: &'static str,
    data: [ModelInfo<'a>; 1],
}

fn models(sim: &Shared) -> Response<Body> {
    let name = model_name(sim);
    let aliases: Vec<&str> = sim.cfg.models.iter().map(String::as_str).collect();
    let body = Models {
        models: [OllamaModel {
            name,
            model: name,
            modified_at: "",
            size: "",
            digest: "",
            kind: "model",
            description: "",
            tags: [""],
            capabilities: ["completion"],
            parameters: "",
            details: OllamaDetails {
                parent_model: "",
                format: "gguf",
                family: "",
                families: [""],
                parameter_size: "",
                quantization_level: "",
            },
        }],
        object: "list",
        data: [ModelInfo {
            id: name,
            aliases,
            tags: [],
            object: "model",
            created: Shared::unix_now(),
            owned_by: "llamacpp",
            meta: meta(sim),
        }],
    };
    server::json(StatusCode::OK, JSON, &body)
}

/// `GET /slots` (`?fail_on_no_slot=1`: 503 when none is idle).
fn slots(sim: &Shared, query: &str) -> Response<Body> {
    if !sim.cfg.slots {
        return error(
            ErrorType::NotSupported,
            "This server does not support slots endpoint. Start it with `--slots`",
        );
    }
    // The request is a task too (llama-server numbers them all).
    sim.llama_slots.next_task_id();
    let view = sim.llama_slots.snapshot(sim.sched.max());
    let fail_on_no_slot = query.split('&').any(|kv| {
        kv.strip_prefix("fail_on_no_slot=")
            .is_some_and(|v| !v.is_empty())
    });
    if fail_on_no_slot && view.iter().all(|s| s.busy) {
        return error(ErrorType::Unavailable, "no slot available");
    }
    #[derive(Serialize)]
    struct NextToken {
        has_next_token: bool,
        has_new_line: bool,
        n_remain: i64,
        n_decoded: u32,
    }
    #[derive(Serialize)]
    struct Slot {
        id: usize,
        n_ctx: u32,
        speculative: bool,
        is_processing: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        id_task: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        n_prompt_tokens: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        n_prompt_tokens_processed: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        n_prompt_tokens_cache: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        params: Option<Node>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next_token: Option<[NextToken; 1]>,
    }
    let list: Vec<Slot> = view
        .into_iter()
        .map(|v| {
            let t = v.task.as_ref();
            // A released slot keeps its cache and task, its per-request stats are reset.
            let live = |x: u32| if v.busy { x } else { 0 };
            Slot {
                id: v.id,
                n_ctx: sim.cfg.n_ctx,
                speculative: false,
                is_processing: v.busy,
                id_task: t.map(|t| t.id),
                n_prompt_tokens: t.map(|_| v.n_tokens),
                n_prompt_tokens_processed: t.map(|t| live(t.n_prompt - t.n_cached)),
                n_prompt_tokens_cache: t.map(|t| live(t.n_cached)),
                params: t.map(|t| {
                    task_params(
                        false,
                        ParamsOf {
                            n_predict: t.n_predict,
                            stream: t.stream,
                            temperature: t.temperature,
                            chat: t.chat,
                            task: true,
                        },
                    )
                }),
                next_token: t.map(|t| {
                    [NextToken {
                        has_next_token: v.busy,
                        has_new_line: false,
                        n_remain: if v.busy && t.n_predict >= 0 {
                            t.n_predict - i64::from(t.n_decoded)
                        } else {
                            -1
                        },
                        n_decoded: live(t.n_decoded),
                    }]
                }),
            }
        })
        .collect();
    server::json(StatusCode::OK, JSON, &list)
}

/// `GET /props`.
fn props(sim: &Shared) -> Response<Body> {
    #[derive(Serialize)]
    struct Settings {
        params: Node,
        n_ctx: u32,
    }
    #[derive(Serialize)]
    struct Modalities {
        vision: bool,
        video: bool,
        audio: bool,
    }
    #[derive(Serialize)]
    struct Caps {
        supports_object_arguments: bool,
        supports_parallel_tool_calls: bool,
        supports_preserve_reasoning: bool,
        supports_reasoning_effort: bool,
        supports_string_content: bool,
        supports_system_role: bool,
        supports_tool_calls: bool,
        supports_tools: bool,
        supports_typed_content: bool,
    }
    #[derive(Serialize)]
    struct Empty {}
    #[derive(Serialize)]
    struct Props<'a> {
        default_generation_settings: Settings,
        total_slots: usize,
        model_alias: &'a str,
        model_ftype: &'static str,
        model_path: String,
        modalities: Modalities,
        media_marker: String,
        endpoint_slots: bool,
        endpoint_props: bool,
        endpoint_metrics: bool,
        ui: bool,
        ui_settings: Empty,
        chat_template: &'static str,
        chat_template_caps: Caps,
        bos_token: &'static str,
        eos_token: &'static str,
        build_info: &'static str,
        is_sleeping: bool,
        cors_proxy_enabled: bool,
    }
    let body = Props {
        default_generation_settings: Settings {
            params: task_params(
                false,
                ParamsOf {
                    n_predict: -1,
                    stream: false,
                    temperature: None,
                    chat: false,
                    task: false,
                },
            ),
            n_ctx: sim.cfg.n_ctx,
        },
        total_slots: sim.sched.max(),
        model_alias: model_name(sim),
        model_ftype: meta(sim).ftype,
        model_path: model_path(sim),
        modalities: Modalities {
            vision: false,
            video: false,
            audio: false,
        },
        media_marker: format!("<__media_{}__>", random_id(sim.started_at_seed())),
        endpoint_slots: sim.cfg.slots,
        endpoint_props: false,
        endpoint_metrics: sim.cfg.metrics,
        ui: false,
        ui_settings: Empty {},
        chat_template: CHAT_TEMPLATE,
        chat_template_caps: Caps {
            supports_object_arguments: false,
            supports_parallel_tool_calls: false,
            supports_preserve_reasoning: false,
            supports_reasoning_effort: false,
            supports_string_content: true,
            supports_system_role: true,
            supports_tool_calls: false,
            supports_tools: false,
            supports_typed_content: false,
        },
        bos_token: "<s>",
        eos_token: "</s>",
        build_info: BUILD_INFO,
        is_sleeping: false,
        cors_proxy_enabled: false,
    };
    server::json(StatusCode::OK, JSON, &body)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Api {
    /// `/completion`: llama.cpp's own format.
    Native,
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    Chat,
}

/// The request fields the simulator reads (limits may be negative: -1 is "no limit").
#[derive(Deserialize)]
struct LlamaBody {
    #[serde(default)]
    messages: Option<Value>,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n_predict: Option<i64>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    continue_final_message: Option<Value>,
    #[serde(default)]
    add_generation_prompt: Option<bool>,
    #[serde(default)]
    temperature: Option<Value>,
}

/// nlohmann's parse error text, as the server returns it for a body that is not JSON.
fn parse_error_text(body: &[u8], e: &serde_json::Error) -> String {
    let col = e.column().max(1);
    let line = e.line().max(1);
    let last = body
        .split(|b| *b == b'\n')
        .nth(line - 1)
        .map(|l| String::from_utf8_lossy(&l[..col.min(l.len())]).into_owned())
        .unwrap_or_default();
    if e.is_eof() {
        // nlohmann counts the position after the last character read.
        let col = col + 1;
        format!(
            "[json.exception.parse_error.101] parse error at line {line}, column {col}: syntax error while parsing value - unexpected end of input; expected '[', '{{', or a literal"
        )
    } else {
        format!(
            "[json.exception.parse_error.101] parse error at line {line}, column {col}: syntax error while parsing value - invalid literal; last read: '{last}'"
        )
    }
}

async fn generate(
    sim: Arc<Shared>,
    req: Request<Incoming>,
    api: Api,
) -> io::Result<Response<Body>> {
    let body = server::read_body(req.into_body()).await?;
    sim.counters.record_body(&body);
    // json::parse throws a plain runtime error: a 500, not a 400.
    let raw: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return Ok(error(ErrorType::Server, &parse_error_text(&body, &e))),
    };
    let parsed: LlamaBody = match serde_json::from_value(raw) {
        Ok(b) => b,
        Err(e) => return Ok(error(ErrorType::InvalidRequest, &e.to_string())),
    };
    let temperature = match &parsed.temperature {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(other) => {
            let kind = match other {
                Value::Bool(_) => "boolean",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                _ => "object",
            };
            let msg = format!(
                "Field 'temperature': [json.exception.type_error.302] type must be number, but is {kind}"
            );
            return Ok(error(ErrorType::InvalidRequest, &msg));
        }
    };
    let stream = parsed.stream.unwrap_or(false);
    let include_usage = parsed
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    // n_predict, else max_completion_tokens, else max_tokens; -1 (or none): until "EOS".
    let limit = parsed
        .n_predict
        .or(parsed.max_completion_tokens)
        .or(parsed.max_tokens)
        .filter(|n| *n >= 0)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let (prompt, resume, prompt_tokens) = match api {
        Api::Chat => {
            let messages = match &parsed.messages {
                None => {
                    return Ok(error(ErrorType::InvalidRequest, "'messages' is required"));
                }
                Some(Value::Array(a)) => a,
                Some(_) => {
                    return Ok(error(
                        ErrorType::InvalidRequest,
                        "Expected 'messages' to be an array",
                    ));
                }
            };
            for m in messages {
                let role = m.get("role").and_then(Value::as_str).unwrap_or("");
                let content = m.get("content");
                let msg = if role != "assistant" && content.is_none() {
                    Some("All non-assistant messages must contain 'content'")
                } else if role == "assistant" && content.is_none() && m.get("tool_calls").is_none()
                {
                    Some("Assistant message must contain either 'content' or 'tool_calls'!")
                } else if content
                    .is_some_and(|c| !matches!(c, Value::String(_) | Value::Null | Value::Array(_)))
                {
                    Some("Expected 'content' to be a string or an array")
                } else {
                    None
                };
                if let Some(msg) = msg {
                    return Ok(error(ErrorType::InvalidRequest, msg));
                }
            }
            let msgs: Vec<Message> = messages
                .iter()
                .map(|m| {
                    serde_json::from_value(m.clone()).unwrap_or(Message {
                        role: None,
                        content: None,
                    })
                })
                .collect();
            let roles: Vec<&str> = msgs
                .iter()
                .map(|m| m.role.as_deref().unwrap_or(""))
                .collect();
            let explicit = parsed
                .continue_final_message
                .as_ref()
                .is_some_and(|v| !matches!(v, Value::Bool(false) | Value::Null));
            let last_assistant = roles.last() == Some(&"assistant");
            // Assistant prefill: a final assistant message is continued, not answered.
            let continues = explicit || last_assistant;
            if explicit && parsed.add_generation_prompt.unwrap_or(true) {
                return Ok(error(
                    ErrorType::InvalidRequest,
                    "Cannot set both add_generation_prompt and continue_final_message to true.",
                ));
            }
            if !explicit
                && last_assistant
                && roles.len() >= 2
                && roles[roles.len() - 2] == "assistant"
            {
                return Ok(error(
                    ErrorType::InvalidRequest,
                    "Cannot have 2 or more assistant messages at the end of the list.",
                ));
            }
            let gb = GenBody {
                model: None,
                messages: Some(msgs),
                prompt: None,
                stream: None,
                stream_options: None,
                max_tokens: None,
                max_completion_tokens: None,
                continue_final_message: None,
                add_generation_prompt: None,
            };
            let prompt = gb.chat_prompt();
            let n = tokens::estimate_tokens(prompt.len()).saturating_add(CHAT_TEMPLATE_TOKENS);
            let resume = if continues {
                gb.continued_chat()
                    .map(|(orig, part)| continuation::chat(&orig, &part))
            } else {
                None
            };
            (prompt, resume, n)
        }
        Api::Native | Api::Completions => {
            let Some(p) = &parsed.prompt else {
                return Ok(error(
                    ErrorType::InvalidRequest,
                    "[json.exception.out_of_range.403] key 'prompt' not found",
                ));
            };
            let gb = GenBody {
                model: None,
                messages: None,
                prompt: Some(p.clone()),
                stream: None,
                stream_options: None,
                max_tokens: None,
                max_completion_tokens: None,
                continue_final_message: None,
                add_generation_prompt: None,
            };
            let prompt = gb.completion_prompt();
            // The tokenizer adds BOS.
            let n = tokens::estimate_tokens(prompt.len()).saturating_add(1);
            let resume = continuation::completion(&prompt);
            (prompt, resume, n)
        }
    };
    if sim.faults.read().http_500 {
        return Ok(error(ErrorType::Server, COMPUTE_ERROR));
    }
    let mut greq = GenRequest::new(&prompt, limit, sim.cfg.default_max_tokens);
    greq.prompt_tokens = prompt_tokens;
    if let Some(r) = resume {
        greq.prompt_hash = r.seed;
        greq.text_offset = r.offset;
        if limit.is_none() {
            // The reply ends where the uninterrupted one would have (its "EOS").
            greq.max_tokens = sim.cfg.default_max_tokens.saturating_sub(r.offset).max(1);
        }
    }
    let Ok(mut g) = Gen::admit(&sim, greq) else {
        // llama-server defers without bound; a bounded queue says what /slots would.
        return Ok(error(ErrorType::Unavailable, "no slot available"));
    };
    // Deferred until a slot is free: no answer at all meanwhile (a hang-up drops `g`: an abort).
    g.wait_slot().await;
    let n_predict = limit.map_or(-1, i64::from);
    let (slot, cached) = sim.llama_slots.acquire(
        sim.sched.max(),
        &prompt,
        Task {
            id: 0,
            n_prompt: prompt_tokens,
            n_cached: 0,
            n_decoded: 0,
            n_predict,
            stream,
            chat: api == Api::Chat,
            temperature,
        },
    );
    // The slot is free again the moment the generation gives its place back.
    let freed = sim.clone();
    g.on_release = Some(gen::ReleaseHook(Box::new(move || {
        freed.llama_slots.release(slot)
    })));
    let slot = SlotRef {
        sim: sim.clone(),
        id: slot,
    };
    let n_ctx = sim.cfg.n_ctx;
    if prompt_tokens >= n_ctx {
        g.finish(Finish::Error);
        let (status, _) = ErrorType::InvalidRequest.code_and_name();
        #[derive(Serialize)]
        struct Inner<'a> {
            code: u16,
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            n_prompt_tokens: u32,
            n_ctx: u32,
        }
        #[derive(Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        let msg = format!(
            "request ({prompt_tokens} tokens) exceeds the available context size ({n_ctx} tokens), try increasing it"
        );
        let body = Outer {
            error: Inner {
                code: status.as_u16(),
                message: &msg,
                kind: "exceed_context_size_error",
                n_prompt_tokens: prompt_tokens,
                n_ctx,
            },
        };
        return Ok(server::json(status, JSON, &body));
    }
    // The slot's cache spares part of the prompt; the slot fills up at n_ctx tokens.
    g.req.cached_tokens = cached;
    let room = n_ctx - prompt_tokens;
    let truncated = g.req.max_tokens > room;
    if truncated {
        g.req.max_tokens = room;
        g.req.finish = Finish::Length;
    }
    let id = format!("chatcmpl-{}", random_id(sim.next_seed()));
    let fmt = LlamaStream {
        api,
        id,
        created: Shared::unix_now(),
        model: model_name(&sim).to_string(),
        include_usage,
        prompt_tokens,
        cached,
        seed: g.req.prompt_hash,
        offset: g.req.text_offset,
        params: ParamsOf {
            n_predict,
            stream,
            temperature,
            chat: api == Api::Chat,
            task: true,
        },
        prompt_text: String::from_utf8_lossy(&prompt).into_owned(),
        truncated,
        slot,
    };
    if stream {
        // The headers go out once a slot starts on the request (its "begin" result).
        g.begin().await;
        let mut r = server::streaming(SSE, gen::stream_body(g, fmt));
        r.headers_mut()
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
        return Ok(r);
    }
    match gen::run_whole(g).await {
        Whole::Done(text, s) => {
            fmt.slot.generated(&text, s.completion_tokens);
            Ok(fmt.whole(&text, &s))
        }
        Whole::Error => Ok(error(ErrorType::Server, COMPUTE_ERROR)),
        Whole::Drop => Err(io::Error::other("sim: drop_after_tokens")),
    }
}

/// The llama-server slot a request holds.
struct SlotRef {
    sim: Arc<Shared>,
    id: usize,
}

impl SlotRef {
    /// The slot generated `text`, `n` tokens.
    fn generated(&self, text: &str, n: u32) {
        self.sim.llama_slots.generated(self.id, text, n);
    }
}

/// `random_string()`: 32 characters of `[0-9A-Za-z]` (deterministic per seed here).
fn random_id(seed: u64) -> String {
    const CHARS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..32u64)
        .map(|i| CHARS[(tokens::mix(seed ^ i.wrapping_mul(0x9E37)) % 62) as usize] as char)
        .collect()
}

/// `server_slot_stats::to_json`.
#[derive(Serialize, Clone, Copy)]
struct Timings {
    cache_n: u32,
    prompt_n: u32,
    prompt_ms: f64,
    prompt_per_token_ms: f64,
    prompt_per_second: f64,
    predicted_n: u32,
    predicted_ms: f64,
    predicted_per_token_ms: f64,
    predicted_per_second: f64,
}

/// Milliseconds with microsecond resolution (ggml_time_us).
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

impl Timings {
    fn new(prompt_tokens: u32, cached: u32, s: &Summary) -> Self {
        let prompt_n = prompt_tokens.saturating_sub(cached);
        let prompt_ms = ms(s.prompt_eval);
        // Generation time runs from the prompt's end; at least 1 us.
        let predicted_ms = ms(s.eval).max(0.001);
        let steps = s.completion_tokens.saturating_sub(1);
        Timings {
            cache_n: cached,
            prompt_n,
            prompt_ms,
            prompt_per_token_ms: if prompt_n > 0 {
                prompt_ms / f64::from(prompt_n)
            } else {
                0.0
            },
            prompt_per_second: if prompt_ms > 0.0 {
                1e3 / prompt_ms * f64::from(prompt_n)
            } else {
                0.0
            },
            predicted_n: s.completion_tokens,
            predicted_ms,
            predicted_per_token_ms: if steps > 0 {
                predicted_ms / f64::from(steps)
            } else {
                0.0
            },
            predicted_per_second: 1e3 / predicted_ms * f64::from(steps),
        }
    }
}

#[derive(Serialize)]
struct PromptTokensDetails {
    cached_tokens: u32,
}

/// `usage_json_oaicompat`.
#[derive(Serialize)]
struct Usage {
    completion_tokens: u32,
    prompt_tokens: u32,
    total_tokens: u32,
    prompt_tokens_details: PromptTokensDetails,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    /// `Some(None)`: `"content":null` (the opening delta); `None`: absent (the final delta).
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Option<&'a str>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    finish_reason: Option<&'a str>,
    index: u32,
    delta: Delta<'a>,
}

/// One `chat.completion.chunk`.
#[derive(Serialize)]
struct ChatChunk<'a> {
    choices: &'a [ChunkChoice<'a>],
    created: u64,
    id: &'a str,
    model: &'a str,
    system_fingerprint: &'static str,
    object: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timings: Option<Timings>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Null,
    finish_reason: Option<&'a str>,
}

/// One `text_completion` object (chunk or whole).
#[derive(Serialize)]
struct TextCompletion<'a> {
    choices: [TextChoice<'a>; 1],
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    object: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    timings: Option<Timings>,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    finish_reason: &'a str,
    index: u32,
    message: ChatMessage<'a>,
}

/// A whole `chat.completion`.
#[derive(Serialize)]
struct ChatWhole<'a> {
    choices: [ChatChoice<'a>; 1],
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    object: &'static str,
    usage: Usage,
    id: &'a str,
    timings: Timings,
}

/// `/completion`'s partial result.
#[derive(Serialize)]
struct NativePartial<'a> {
    index: u32,
    content: &'a str,
    tokens: [u32; 1],
    stop: bool,
    id_slot: i32,
    tokens_predicted: u32,
    tokens_evaluated: u32,
}

/// `/completion`'s final result.
#[derive(Serialize)]
struct NativeFinal<'a> {
    index: u32,
    content: &'a str,
    tokens: [u32; 0],
    id_slot: i32,
    stop: bool,
    model: &'a str,
    tokens_predicted: u32,
    tokens_evaluated: u32,
    generation_settings: Node,
    prompt: &'a str,
    has_new_line: bool,
    truncated: bool,
    stop_type: &'static str,
    stopping_word: &'static str,
    tokens_cached: u32,
    timings: Timings,
}

/// Frames of one llama-server completion, streamed or whole.
struct LlamaStream {
    api: Api,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    prompt_tokens: u32,
    cached: u32,
    seed: u64,
    offset: u32,
    params: ParamsOf,
    prompt_text: String,
    /// The slot's context ends the generation before the request's limit.
    truncated: bool,
    slot: SlotRef,
}

impl LlamaStream {
    fn usage(&self, s: &Summary) -> Usage {
        Usage {
            completion_tokens: s.completion_tokens,
            prompt_tokens: self.prompt_tokens,
            total_tokens: s.completion_tokens + self.prompt_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: self.cached,
            },
        }
    }

    fn chat_chunk(
        &self,
        delta: Delta<'_>,
        finish: Option<&str>,
        usage: Option<Usage>,
        timings: Option<Timings>,
    ) -> Bytes {
        let choices = [ChunkChoice {
            finish_reason: finish,
            index: 0,
            delta,
        }];
        sse(&ChatChunk {
            choices: if usage.is_some() { &[] } else { &choices },
            created: self.created,
            id: &self.id,
            model: &self.model,
            system_fingerprint: BUILD_INFO,
            object: "chat.completion.chunk",
            usage,
            timings,
        })
    }

    fn text_completion<'b>(
        &'b self,
        text: &'b str,
        finish: Option<&'b str>,
        usage: Option<Usage>,
        timings: Option<Timings>,
    ) -> TextCompletion<'b> {
        TextCompletion {
            choices: [TextChoice {
                text,
                index: 0,
                logprobs: Null,
                finish_reason: finish,
            }],
            created: self.created,
            model: &self.model,
            system_fingerprint: BUILD_INFO,
            object: "text_completion",
            usage,
            id: &self.id,
            timings,
        }
    }

    fn native_final(&self, content: &str, s: &Summary) -> Vec<u8> {
        let prompt = format!("<s> {}", self.prompt_text);
        let body = NativeFinal {
            index: 0,
            content,
            tokens: [],
            id_slot: i32::try_from(self.slot.id).unwrap_or(i32::MAX),
            stop: true,
            model: &self.model,
            tokens_predicted: s.completion_tokens,
            tokens_evaluated: self.prompt_tokens,
            generation_settings: task_params(true, self.params),
            prompt: &prompt,
            has_new_line: content.contains('\n'),
            truncated: self.truncated,
            stop_type: stop_type(s.finish),
            stopping_word: "",
            tokens_cached: self.prompt_tokens + s.completion_tokens.saturating_sub(1),
            timings: Timings::new(self.prompt_tokens, self.cached, s),
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// A non-streamed answer.
    fn whole(&self, text: &str, s: &Summary) -> Response<Body> {
        let timings = Timings::new(self.prompt_tokens, self.cached, s);
        match self.api {
            Api::Chat => server::json(
                StatusCode::OK,
                JSON,
                &ChatWhole {
                    choices: [ChatChoice {
                        finish_reason: s.finish.as_str(),
                        index: 0,
                        message: ChatMessage {
                            role: "assistant",
                            content: text,
                        },
                    }],
                    created: self.created,
                    model: &self.model,
                    system_fingerprint: BUILD_INFO,
                    object: "chat.completion",
                    usage: self.usage(s),
                    id: &self.id,
                    timings,
                },
            ),
            Api::Completions => server::json(
                StatusCode::OK,
                JSON,
                &self.text_completion(
                    text,
                    Some(s.finish.as_str()),
                    Some(self.usage(s)),
                    Some(timings),
                ),
            ),
            Api::Native => server::full(StatusCode::OK, Some(JSON), self.native_final(text, s)),
        }
    }
}

/// `stop_type_to_str`: the simulator's "EOS" is the default length; a client limit is "limit".
fn stop_type(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "eos",
        Finish::Length => "limit",
        Finish::Abort | Finish::Error => "none",
    }
}

impl StreamFormat for LlamaStream {
    fn preamble(&mut self) -> Option<Bytes> {
        (self.api == Api::Chat).then(|| {
            self.chat_chunk(
                Delta {
                    role: Some("assistant"),
                    content: Some(None),
                },
                None,
                None,
                None,
            )
        })
    }

    fn token(&mut self, text: &str, i: u32, _finish: Option<Finish>) -> Bytes {
        self.slot.generated(text, 1);
        match self.api {
            Api::Chat => self.chat_chunk(
                Delta {
                    role: None,
                    content: Some(Some(text)),
                },
                None,
                None,
                None,
            ),
            Api::Completions => sse(&self.text_completion(text, None, None, None)),
            Api::Native => sse(&NativePartial {
                index: 0,
                content: text,
                tokens: [tokens::token_id(self.seed, self.offset + i)],
                stop: false,
                id_slot: -1,
                tokens_predicted: i + 1,
                tokens_evaluated: self.prompt_tokens,
            }),
        }
    }

    fn tail(&mut self, k: usize, s: &Summary) -> Option<Bytes> {
        let finish = s.finish.as_str();
        let timings = Timings::new(self.prompt_tokens, self.cached, s);
        match (self.api, k, self.include_usage) {
            (Api::Chat, 0, usage) => Some(self.chat_chunk(
                Delta {
                    role: None,
                    content: None,
                },
                Some(finish),
                None,
                (!usage).then_some(timings),
            )),
            (Api::Chat, 1, true) => Some(self.chat_chunk(
                Delta {
                    role: None,
                    content: None,
                },
                None,
                Some(self.usage(s)),
                Some(timings),
            )),
            (Api::Chat, 1, false) | (Api::Chat, 2, true) => Some(Bytes::from_static(DONE)),
            (Api::Completions, 0, _) => Some(sse(&self.text_completion(
                "",
                Some(finish),
                Some(self.usage(s)),
                Some(timings),
            ))),
            (Api::Completions, 1, _) => Some(Bytes::from_static(DONE)),
            (Api::Native, 0, _) => {
                let mut b = b"data: ".to_vec();
                b.extend_from_slice(&self.native_final("", s));
                b.extend_from_slice(b"\n\n");
                Some(b.into())
            }
            _ => None,
        }
    }

    fn error(&mut self, k: usize) -> Option<Bytes> {
        // One error event, then the stream ends (no `[DONE]`).
        (k == 0).then(|| error_event(ErrorType::Server, COMPUTE_ERROR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpp_stream_doubles() {
        for (v, want) in [
            (0.0, "0"),
            (25.0, "25"),
            (41.827, "41.827"),
            (33.61474, "33.6147"),
            (6.793478, "6.79348"),
            (1.0, "1"),
            (0.5, "0.5"),
            (1234567.0, "1.23457e+06"),
            (999999.0, "999999"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (100000.0, "100000"),
            (0.000_999_999_9, "0.001"),
        ] {
            assert_eq!(cpp_double(v), want, "{v}");
        }
    }

    #[test]
    fn random_ids_look_like_llamas() {
        let id = random_id(7);
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(id, random_id(8));
    }

    #[test]
    fn params_keep_llamas_order() {
        let of = |n_predict, chat| ParamsOf {
            n_predict,
            stream: true,
            temperature: None,
            chat,
            task: true,
        };
        let p = serde_json::to_string(&task_params(false, of(-1, true))).unwrap_or_default();
        assert!(
            p.starts_with(r#"{"seed":4294967295,"temperature":0.800000011920929,"#),
            "{p}"
        );
        assert!(!p.contains("dry_sequence_breakers"));
        assert!(p.contains(r#""chat_format":"peg-native","reasoning_format":"deepseek""#));
        let full = serde_json::to_string(&task_params(true, of(5, false))).unwrap_or_default();
        assert!(
            full.contains(r#""dry_sequence_breakers":["\n",":","\"","*"]"#),
            "{full}"
        );
        assert!(full.contains(r#""max_tokens":5,"n_predict":5"#), "{full}");
    }
}
