//! Relay: bytes through the edge equal bytes from the engine, tokens keep their pacing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{self, EdgeBuilder, Route, TestEdge};
use common::*;
use okome_sim::SimKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_sse_stream_is_byte_identical_through_the_edge() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let edge = EdgeBuilder::new()
        .pool("vllm", "vllm", &[s.addr()])
        .route(Route::to_pool("openai", "vllm").path_prefix("/v1/"))
        .start()
        .await;
    let body = r#"{"model":"Qwen/Qwen3-8B","stream":true,"stream_options":{"include_usage":true},"max_tokens":6,"messages":[{"role":"user","content":"hi"}]}"#;
    let direct = body_of(&raw(s.addr(), &post("/v1/chat/completions", body)).await);
    let via = raw(edge.addr, &post("/v1/chat/completions", body)).await;
    assert_eq!(status_of(&via), 200, "{}", String::from_utf8_lossy(&via));
    let via = body_of(&via);
    // ids and timestamps differ per stream; everything else must match byte for byte.
    assert_eq!(normalize(&via), normalize(&direct));
    assert!(String::from_utf8_lossy(&via).ends_with("data: [DONE]\n\n"));
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "completed")])
            .await,
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers for the tests below.
// ---------------------------------------------------------------------------------------------

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Builds a GET with `Connection: close`.
fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Sends `req` directly to the simulator and through the edge; asserts both answer 200 with the
/// same `Content-Type` and the same body once per-request ids and clocks are normalized.
/// Returns the body as relayed by the edge.
async fn assert_relayed_identically(
    edge: &TestEdge,
    sim: SocketAddr,
    req: &[u8],
    content_type: &str,
) -> Vec<u8> {
    let direct = raw(sim, req).await;
    let via = raw(edge.addr, req).await;
    assert_eq!(
        status_of(&direct),
        200,
        "direct: {}",
        String::from_utf8_lossy(&direct)
    );
    assert_eq!(
        status_of(&via),
        200,
        "via edge: {}\nedge log:\n{}",
        String::from_utf8_lossy(&via),
        edge.log_text()
    );
    let ct_direct = header_of(&direct, "content-type");
    assert_eq!(
        ct_direct.as_deref(),
        Some(content_type),
        "the sim's Content-Type changed"
    );
    assert_eq!(
        header_of(&via, "content-type"),
        ct_direct,
        "Content-Type must pass through"
    );
    let (d, v) = (body_of(&direct), body_of(&via));
    assert!(!d.is_empty(), "empty body from the sim");
    assert_eq!(
        normalize(&v),
        normalize(&d),
        "relayed body differs from the engine's"
    );
    v
}

/// Edge config: the given pool entries, and one route per `(path_prefix, pool)`.
fn one_pool_config(pool_text: &str, routes: &[(&str, &str)]) -> String {
    let mut y = format!("pools:\n{pool_text}routes:\n");
    for (i, (prefix, p)) in routes.iter().enumerate() {
        y.push_str(&format!(
            "  - name: r{i}\n    match: {{ path_prefix: \"{prefix}\" }}\n    pool: {p}\n"
        ));
    }
    y
}

// ---------------------------------------------------------------------------------------------
// 1. Every wire format, byte for byte.
// ---------------------------------------------------------------------------------------------

#[test]
fn normalize_only_touches_volatile_values() {
    let a = br#"{"id":"cmpl-0123","created":1700000000,"model":"m","created_at":"2025-01-01T00:00:00.1Z","eval_duration":123,"prompt_eval_duration":9,"eval_count":5}"#;
    let b = br#"{"id":"cmpl-9999","created":1700000999,"model":"m","created_at":"2026-01-01T00:00:00.123Z","eval_duration":77777,"prompt_eval_duration":1,"eval_count":5}"#;
    assert_eq!(normalize(a), normalize(b));
    let c = br#"{"id":"cmpl-9999","created":1700000999,"model":"n","created_at":"2026","eval_duration":7,"prompt_eval_duration":1,"eval_count":6}"#;
    assert_ne!(normalize(a), normalize(c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_completions_sse_stream_is_byte_identical_through_the_edge() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let edge = embedded::edge(&one_pool_config(
        &pool("vllm", "vllm", &[s.addr()]),
        &[("/v1/", "vllm")],
    ))
    .await;
    let body =
        r#"{"model":"Qwen/Qwen3-8B","prompt":"Once upon a time","stream":true,"max_tokens":7}"#;
    let via = assert_relayed_identically(
        &edge,
        s.addr(),
        &post("/v1/completions", body),
        "text/event-stream; charset=utf-8",
    )
    .await;
    let text = String::from_utf8_lossy(&via);
    assert!(text.starts_with("data: {"), "{text}");
    assert!(text.contains("\"object\":\"text_completion\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(s.stats().requests, 2);
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "completed")])
            .await,
        1.0
    );
    assert_eq!(edge.metric("okome_tokens_total", &[]).await, 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_chat_json_is_byte_identical_through_the_edge() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let edge = embedded::edge(&one_pool_config(
        &pool("vllm", "vllm", &[s.addr()]),
        &[("/v1/", "vllm")],
    ))
    .await;
    let body =
        r#"{"model":"Qwen/Qwen3-8B","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let via = assert_relayed_identically(
        &edge,
        s.addr(),
        &post("/v1/chat/completions", body),
        "application/json",
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&via).expect("a JSON answer");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_native_ndjson_streams_are_byte_identical_through_the_edge() {
    let s = sim(SimKind::Ollama, |_| {}).await;
    let edge = embedded::edge(&one_pool_config(
        &pool("ollama", "ollama", &[s.addr()]),
        &[("/api/", "ollama")],
    ))
    .await;

    let chat = r#"{"model":"llama3.2","messages":[{"role":"user","content":"why is the sky blue?"}],"options":{"num_predict":6}}"#;
    let via = assert_relayed_identically(
        &edge,
        s.addr(),
        &post("/api/chat", chat),
        "application/x-ndjson",
    )
    .await;
    let text = String::from_utf8_lossy(&via).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "6 token lines and the final line:\n{text}");
    assert!(text.ends_with('\n'));
    let last: serde_json::Value = serde_json::from_str(lines[6]).expect("json line");
    assert_eq!(last["done"], true, "{text}");
    assert_eq!(last["eval_count"], 6, "{text}");

    let generate = r#"{"model":"llama3.2:latest","prompt":"why is the sky blue?","options":{"num_predict":4}}"#;
    let via = assert_relayed_identically(
        &edge,
        s.addr(),
        &post("/api/generate", generate),
        "application/x-ndjson",
    )
    .await;
    let text = String::from_utf8_lossy(&via).to_string();
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{text}"
    );
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.contains("\"done\":true")),
        "{text}"
    );

    assert_eq!(s.stats().requests, 4);
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "completed")])
            .await,
        2.0
    );
    assert_eq!(edge.metric("okome_tokens_total", &[]).await, 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_openai_compatible_sse_is_byte_identical_through_the_edge() {
    let s = sim(SimKind::Ollama, |_| {}).await;
    let edge = embedded::edge(&one_pool_config(
        &pool("ollama", "ollama", &[s.addr()]),
        &[("/v1/", "ollama")],
    ))
    .await;
    let body = r#"{"model":"llama3.2","stream":true,"max_tokens":6,"messages":[{"role":"user","content":"hello"}]}"#;
    let via = assert_relayed_identically(
        &edge,
        s.addr(),
        &post("/v1/chat/completions", body),
        "text/event-stream",
    )
    .await;
    let text = String::from_utf8_lossy(&via);
    assert!(
        text.contains("\"object\":\"chat.completion.chunk\""),
        "{text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "completed")])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tfserving_status_and_predict_are_byte_identical_through_the_edge() {
    let s = sim(SimKind::TfServing, |_| {}).await;
    let pool_text = format!(
        "{}    models: [half_plus_two]\n",
        pool("tfserving", "tfserving", &[s.addr()])
    );
    let edge = embedded::edge(&one_pool_config(
        &pool_text,
        &[("/v1/models/", "tfserving")],
    ))
    .await;

    let via = assert_relayed_identically(
        &edge,
        s.addr(),
        &get("/v1/models/half_plus_two"),
        "application/json",
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&via).expect("model status JSON");
    assert_eq!(v["model_version_status"][0]["state"], "AVAILABLE", "{v}");

    let predict = r#"{"instances":[1.0,2.0,5.0]}"#;
    let via = assert_relayed_identically(
        &edge,
        s.addr(),
        &post("/v1/models/half_plus_two:predict", predict),
        "application/json",
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&via).expect("predict JSON");
    assert_eq!(v["predictions"], serde_json::json!([2.5, 3.0, 4.5]), "{v}");
}

// ---------------------------------------------------------------------------------------------
// 2. Token pacing survives the relay.
// ---------------------------------------------------------------------------------------------

/// One content token as the client saw it: its text, when it arrived, and which read carried it.
#[derive(Debug)]
struct Arrival {
    text: String,
    at: Instant,
    read: usize,
}

/// Streams a chat completion from `url` and timestamps each SSE content event as it completes.
async fn timed_sse(url: &str, body: &str) -> Vec<Arrival> {
    use futures::StreamExt;
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut read = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("body chunk");
        let at = Instant::now();
        read += 1;
        buf.extend_from_slice(&chunk);
        while let Some(p) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..p + 2).collect();
            let line = String::from_utf8_lossy(&event).trim().to_string();
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(data).expect("event JSON");
            if let Some(t) = v["choices"][0]["delta"]["content"]
                .as_str()
                .filter(|t| !t.is_empty())
            {
                out.push(Arrival {
                    text: t.to_string(),
                    at,
                    read,
                });
            }
        }
    }
    out
}

/// (spread first→last, median gap, number of distinct reads that carried tokens).
fn pacing(a: &[Arrival]) -> (Duration, Duration, usize) {
    let spread = a.last().map(|l| l.at - a[0].at).unwrap_or_default();
    let mut gaps: Vec<Duration> = a.windows(2).map(|w| w[1].at - w[0].at).collect();
    gaps.sort();
    let median = gaps.get(gaps.len() / 2).copied().unwrap_or_default();
    let mut reads: Vec<usize> = a.iter().map(|x| x.read).collect();
    reads.dedup();
    (spread, median, reads.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_gaps_are_preserved_through_the_edge() {
    const TOKENS: usize = 20;
    let s = sim(SimKind::Vllm, |c| {
        c.tokens_per_second = 20.0; // one token every 50 ms
        c.default_max_tokens = TOKENS as u32;
    })
    .await;
    let edge = embedded::edge(&one_pool_config(
        &pool("vllm", "vllm", &[s.addr()]),
        &[("/v1/", "vllm")],
    ))
    .await;
    let body = format!(
        r#"{{"model":"Qwen/Qwen3-8B","stream":true,"max_tokens":{TOKENS},"messages":[{{"role":"user","content":"pace yourself"}}]}}"#
    );
    let direct = timed_sse(&format!("http://{}/v1/chat/completions", s.addr()), &body).await;
    let via = timed_sse(&edge.url("/v1/chat/completions"), &body).await;

    // Same tokens, same order.
    assert_eq!(direct.len(), TOKENS);
    let texts = |a: &[Arrival]| a.iter().map(|x| x.text.clone()).collect::<Vec<_>>();
    assert_eq!(
        texts(&via),
        texts(&direct),
        "tokens reordered or altered by the edge"
    );

    // Spread out like the engine made them: nominally 19 gaps of 50 ms = 950 ms. The bounds
    // are loose (half the nominal spread, 40% of the gap) so a loaded machine still passes,
    // while a proxy that buffers the response delivers everything in one or two reads.
    let (d_spread, d_median, d_reads) = pacing(&direct);
    let (v_spread, v_median, v_reads) = pacing(&via);
    let report = format!(
        "direct: spread {d_spread:?}, median gap {d_median:?}, {d_reads} reads; \
         via edge: spread {v_spread:?}, median gap {v_median:?}, {v_reads} reads"
    );
    eprintln!("{report}");
    assert!(
        v_spread >= Duration::from_millis(475),
        "tokens bunched: {report}"
    );
    assert!(
        v_median >= Duration::from_millis(20),
        "tokens bunched: {report}"
    );
    assert!(
        v_reads >= TOKENS / 2,
        "tokens arrived in few reads: {report}"
    );

    // The edge measured the same stream: one TTFT, a gap per token after the first.
    let labels = [("model", "Qwen/Qwen3-8B")];
    assert_eq!(edge.metric("okome_ttft_seconds_count", &labels).await, 1.0);
    assert_eq!(
        edge.metric("okome_inter_token_seconds_count", &labels)
            .await,
        (TOKENS - 1) as f64
    );
    let gap_sum = edge.metric("okome_inter_token_seconds_sum", &labels).await;
    assert!(
        gap_sum >= 0.475,
        "edge-measured gaps sum to {gap_sum} s; {report}"
    );
    assert_eq!(
        edge.metric("okome_tokens_total", &labels).await,
        TOKENS as f64
    );
}

// ---------------------------------------------------------------------------------------------
// 3. A real OpenAI client library.
// ---------------------------------------------------------------------------------------------

async fn openai_stream_text(api_base: &str) -> (String, usize) {
    use async_openai::config::OpenAIConfig;
    use async_openai::types::chat::{
        ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
    };
    use futures::StreamExt;

    let client = async_openai::Client::with_config(
        OpenAIConfig::new()
            .with_api_base(api_base)
            .with_api_key("x"),
    );
    let request = CreateChatCompletionRequestArgs::default()
        .model("Qwen/Qwen3-8B")
        .max_completion_tokens(12u32)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Tell me about the edge.")
            .build()
            .expect("message")
            .into()])
        .build()
        .expect("request");
    let mut stream = client
        .chat()
        .create_stream(request)
        .await
        .expect("create_stream");
    let mut text = String::new();
    let mut deltas = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("stream chunk");
        for choice in chunk.choices {
            if let Some(c) = choice.delta.content.filter(|c| !c.is_empty()) {
                deltas += 1;
                text.push_str(&c);
            }
        }
    }
    (text, deltas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_openai_client_streams_a_chat_completion_through_the_edge() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let edge = embedded::edge(&one_pool_config(
        &pool("vllm", "vllm", &[s.addr()]),
        &[("/v1/", "vllm")],
    ))
    .await;
    let (direct, direct_deltas) = openai_stream_text(&format!("http://{}/v1", s.addr())).await;
    let (via, via_deltas) = openai_stream_text(&edge.url("/v1")).await;
    assert_eq!(direct_deltas, 12, "{direct:?}");
    assert_eq!(via_deltas, 12, "{via:?}");
    assert!(direct.starts_with("Hello"), "{direct:?}");
    assert_eq!(via, direct);
    assert_eq!(s.stats().requests, 2);
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "completed")])
            .await,
        1.0
    );
}

/// `GET /v1/models/{id}` is OpenAI's `models.retrieve` unless it is a TF Serving path, even
/// behind the reference layout's `/v1/models/` TF Serving route: the official client gets a
/// model object (ids with `/` included) or an OpenAI-shaped 404, and TF Serving's status,
/// version, metadata and predict paths still reach TF Serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_models_retrieve_and_tf_serving_paths_share_v1_models() {
    use async_openai::config::OpenAIConfig;
    let v = sim(SimKind::Vllm, |_| {}).await;
    let tf = sim(SimKind::TfServing, |c| {
        c.models = vec!["half_plus_two".into()]
    })
    .await;
    let edge = embedded::edge(&format!(
        "pools:\n{}{}    models: [half_plus_two]\nroutes:\n\
         \x20 - name: tfserving\n    match: {{ path_prefix: \"/v1/models/\" }}\n    pool: tfserving\n\
         \x20 - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pools: [vllm]\n",
        pool("vllm", "vllm", &[v.addr()]),
        pool("tfserving", "tfserving", &[tf.addr()]),
    ))
    .await;
    let client = async_openai::Client::with_config(
        OpenAIConfig::new()
            .with_api_base(edge.url("/v1"))
            .with_api_key("x"),
    );
    let m = eventually(5, || async {
        client.models().retrieve("Qwen/Qwen3-8B").await.is_ok()
    })
    .await;
    assert!(m, "models.retrieve failed; log:\n{}", edge.log_text());
    let m = client
        .models()
        .retrieve("Qwen/Qwen3-8B")
        .await
        .expect("model");
    assert_eq!(m.id, "Qwen/Qwen3-8B");
    assert_eq!(m.owned_by, "vllm");
    let err = client.models().retrieve("no-such-model").await;
    assert!(err.is_err(), "{err:?}");
    let r = raw(
        edge.addr,
        b"GET /v1/models/no-such-model HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 404);
    assert_openai_error(&body_of(&r), "model_not_found");

    for path in [
        "/v1/models/half_plus_two",
        "/v1/models/half_plus_two/versions/1",
        "/v1/models/half_plus_two/metadata",
    ] {
        let r = raw(
            edge.addr,
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let direct = raw(
            tf.addr(),
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(
            status_of(&r),
            status_of(&direct),
            "{path}: {}",
            String::from_utf8_lossy(&r)
        );
        assert_eq!(body_of(&r), body_of(&direct), "{path}");
    }
    let r = raw(
        edge.addr,
        &post(
            "/v1/models/half_plus_two:predict",
            r#"{"instances":[1.0,2.0]}"#,
        ),
    )
    .await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
}

// ---------------------------------------------------------------------------------------------
// 4. Routing by model across pools.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_without_pool_picks_the_pool_that_serves_the_model() {
    let v = sim(SimKind::Vllm, |c| c.models = vec!["Qwen/Qwen3-8B".into()]).await;
    let o = sim(SimKind::Ollama, |c| {
        c.models = vec!["llama3.2:latest".into()]
    })
    .await;
    let edge = embedded::edge(&format!(
        "pools:\n{}{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pools: [vllm, ollama]\n",
        pool("vllm", "vllm", &[v.addr()]),
        pool("ollama", "ollama", &[o.addr()])
    ))
    .await;

    // The edge learns the models from the engines; wait until `/v1/models` lists both.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ids = loop {
        let resp = raw(edge.addr, &get("/v1/models")).await;
        let ids: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body_of(&resp))
            .ok()
            .and_then(|j| j["data"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
        if (ids.iter().any(|i| i == "Qwen/Qwen3-8B") && ids.iter().any(|i| i == "llama3.2:latest"))
            || Instant::now() > deadline
        {
            assert_eq!(status_of(&resp), 200, "{}", String::from_utf8_lossy(&resp));
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        ids.iter().any(|i| i == "Qwen/Qwen3-8B"),
        "GET /v1/models: {ids:?}"
    );
    assert!(
        ids.iter().any(|i| i == "llama3.2:latest"),
        "GET /v1/models: {ids:?}"
    );

    let chat = |model: &str| {
        post(
            "/v1/chat/completions",
            &format!(
                r#"{{"model":"{model}","max_tokens":3,"messages":[{{"role":"user","content":"hi"}}]}}"#
            ),
        )
    };
    let r = raw(edge.addr, &chat("Qwen/Qwen3-8B")).await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert_eq!((v.stats().requests, o.stats().requests), (1, 0));

    let r = raw(edge.addr, &chat("llama3.2:latest")).await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert_eq!((v.stats().requests, o.stats().requests), (1, 1));

    let r = raw(edge.addr, &chat("llama3.2")).await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert_eq!((v.stats().requests, o.stats().requests), (1, 2));

    let r = raw(edge.addr, &chat("no-such-model")).await;
    assert_eq!(status_of(&r), 404, "{}", String::from_utf8_lossy(&r));
    let e: serde_json::Value = serde_json::from_slice(&body_of(&r)).expect("JSON error body");
    let err = e["error"]
        .as_object()
        .unwrap_or_else(|| panic!("OpenAI error shape: {e}"));
    for k in ["message", "type", "param", "code"] {
        assert!(err.contains_key(k), "missing error.{k}: {e}");
    }
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-model")),
        "{e}"
    );
    assert_eq!(
        (v.stats().requests, o.stats().requests),
        (1, 2),
        "an unknown model reached an engine"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. WebSocket upgrade.
// ---------------------------------------------------------------------------------------------

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
fn ws_accept(key: &str) -> String {
    use base64::Engine;
    use sha1::Digest;
    let digest =
        sha1::Sha1::digest(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Standard base64 (WebSocket keys).
fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Reads from `s` into `buf` until it holds a full request/response head; returns its length.
async fn read_head(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(p + 4);
        }
        let mut tmp = [0u8; 4096];
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// A tiny WebSocket-ish server: answers an upgrade with 101 and then echoes raw bytes; answers
/// any other request (the edge's health probe) with 200 and an empty OpenAI model list.
async fn ws_echo_server() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(n) = read_head(&mut s, &mut buf).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    buf.drain(..n);
                    let hdr = |name: &str| {
                        head.lines().skip(1).find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case(name)
                                .then(|| v.trim().to_string())
                        })
                    };
                    if hdr("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
                        let accept = ws_accept(&hdr("sec-websocket-key").unwrap_or_default());
                        let resp = format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                        );
                        if s.write_all(resp.as_bytes()).await.is_err()
                            || s.write_all(&buf).await.is_err()
                        {
                            return;
                        }
                        let mut tmp = [0u8; 16384];
                        loop {
                            match s.read(&mut tmp).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if s.write_all(&tmp[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    let body = r#"{"object":"list","data":[]}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn websocket_accept_matches_rfc6455_example() {
    assert_eq!(
        ws_accept("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

/// Opens one WebSocket upgrade through the edge and echoes `msgs` through the tunnel, each written
/// while the reply is read (so a large message cannot deadlock on full socket buffers).
async fn ws_tunnel_roundtrip(edge: &TestEdge, key: &str, msgs: &[Vec<u8>]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    let req = format!(
        "GET /ws/echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.expect("write upgrade");
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), read_head(&mut c, &mut buf))
        .await
        .expect("no answer to the upgrade")
        .unwrap_or_else(|| panic!("connection closed; edge log:\n{}", edge.log_text()));
    let head = &buf[..n];
    assert_eq!(
        status_of(head),
        101,
        "{}\nedge log:\n{}",
        String::from_utf8_lossy(head),
        edge.log_text()
    );
    assert_eq!(
        header_of(head, "upgrade")
            .map(|u| u.to_ascii_lowercase())
            .as_deref(),
        Some("websocket")
    );
    assert_eq!(
        header_of(head, "sec-websocket-accept"),
        Some(ws_accept(key))
    );
    let mut pending = buf[n..].to_vec();
    let (mut rd, mut wr) = c.split();
    for msg in msgs {
        let write = async {
            wr.write_all(msg).await.expect("write through the tunnel");
        };
        let read = async {
            let mut got = std::mem::take(&mut pending);
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut ended = "";
            while got.len() < msg.len() {
                let mut tmp = vec![0u8; 65536];
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, rd.read(&mut tmp)).await {
                    Ok(Ok(0)) => ended = "the edge closed the connection",
                    Ok(Err(_)) => ended = "read error",
                    Err(_) => ended = "timed out",
                    Ok(Ok(k)) => got.extend_from_slice(&tmp[..k]),
                }
                if !ended.is_empty() {
                    break;
                }
            }
            (got, ended)
        };
        let ((), (got, ended)) = tokio::join!(write, read);
        assert_eq!(
            got.len(),
            msg.len(),
            "echo of a {}-byte message truncated ({ended}); edge log:\n{}",
            msg.len(),
            edge.log_text()
        );
        assert!(got == *msg, "echoed bytes differ");
    }
}

/// A route opens WebSocket upgrades only when it says `websocket: true`; elsewhere the upgrade
/// request is an ordinary GET, checked against the route's surface like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_need_a_route_that_allows_them() {
    let echo = ws_echo_server().await;
    let edge = embedded::edge(&one_pool_config(
        &pool("ws", "openai", &[echo]),
        &[("/ws", "ws")],
    ))
    .await;
    let r = raw(
        edge.addr,
        b"GET /ws/echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 404, "{}", String::from_utf8_lossy(&r));
    assert_openai_error(&body_of(&r), "endpoint_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through_and_relays_bytes_both_ways() {
    let echo = ws_echo_server().await;
    let edge = embedded::edge(&format!(
        "{}    websocket: true\n",
        one_pool_config(&pool("ws", "openai", &[echo]), &[("/ws", "ws")])
    ))
    .await;

    // One tunnel: small messages, then one large enough to take many TCP segments.
    let large: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    ws_tunnel_roundtrip(
        &edge,
        "dGhlIHNhbXBsZSBub25jZQ==",
        &[b"ping one".to_vec(), b"\x81\x05hello".to_vec(), large],
    )
    .await;

    // Several tunnels at once: every upgrade must get a working tunnel, not only the lucky ones.
    let keys: Vec<String> = (0..32u8).map(|i| base64(&[i; 16])).collect();
    let msgs = [b"first".to_vec(), b"second message".to_vec()];
    futures::future::join_all(keys.iter().map(|k| ws_tunnel_roundtrip(&edge, k, &msgs))).await;
}

/// vLLM's prefix-cache counters are scraped with the health probes and re-exported per backend
/// (queries and hits grow by what the engine counted while the edge watched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_prefix_cache_counters_are_re_exported_per_backend() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let edge = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n",
        pool("vllm", "vllm", &[s.addr()])
    ))
    .await;
    // Let one scrape record the engine's starting point.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // Long enough for whole 16-token KV blocks: only those are cached.
    let body = format!(
        r#"{{"model":"Qwen/Qwen3-8B","max_tokens":2,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "the same long prompt, twice. ".repeat(20)
    );
    for _ in 0..2 {
        let r = raw(edge.addr, &post("/v1/chat/completions", &body)).await;
        assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    }
    let labels = [("pool", "vllm")];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let q = edge
            .metric("okome_backend_prefix_cache_queries_total", &labels)
            .await;
        let h = edge
            .metric("okome_backend_prefix_cache_hits_total", &labels)
            .await;
        if q > 0.0 && h > 0.0 {
            assert!(h <= q, "hits {h} cannot exceed queries {q}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "prefix cache counters never grew: queries {q}, hits {h}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A client's W3C `traceparent` reaches the engine unchanged and its trace id is in the access
/// log; with `tracing.generate_traceparent` the edge starts a trace for requests without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_passed_through_or_generated() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let edge = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\ntracing:\n  generate_traceparent: true\n",
        pool("vllm", "vllm", &[s.addr()])
    ))
    .await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = chat("Qwen/Qwen3-8B", 2);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\ntraceparent: {tp}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw(edge.addr, req.as_bytes()).await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert_eq!(
        s.stats().last_traceparent.as_deref(),
        Some(tp),
        "passed through unchanged"
    );
    assert!(
        eventually(5, || async {
            edge.log_text()
                .contains("\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"")
        })
        .await,
        "trace id logged:\n{}",
        edge.log_text()
    );

    // No traceparent from the client: the edge starts one.
    let r = raw(edge.addr, &post("/v1/chat/completions", &body)).await;
    assert_eq!(status_of(&r), 200);
    let generated = s
        .stats()
        .last_traceparent
        .expect("the engine got a traceparent");
    assert_ne!(generated, tp);
    let id = &generated[3..35];
    assert!(
        eventually(5, || async {
            edge.log_text().contains(&format!("\"trace_id\":\"{id}\""))
        })
        .await,
        "generated trace id {id} logged:\n{}",
        edge.log_text()
    );
}

/// A TF Serving pool needs no model list (TF Serving cannot list its models): the reference
/// config used to name `model`, so a TF Serving serving `half_plus_two` was probed as unhealthy
/// and every request got 503. Now any name is relayed, the engine's own 404 for a name it lacks
/// comes through byte for byte, health does not hang on a name, and the names the engine
/// serves are learned and shown on `/status`. A configured list restricts the pool to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tfserving_pool_without_a_model_list_relays_any_model_and_learns_it() {
    let s = sim(SimKind::TfServing, |c| {
        c.models = vec!["half_plus_two".into()]
    })
    .await;
    let edge = embedded::edge(&one_pool_config(
        &pool("tfserving", "tfserving", &[s.addr()]),
        &[("/v1/models/", "tfserving")],
    ))
    .await;
    let ready = eventually(5, || async {
        reqwest::get(edge.admin_url("/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(
        ready,
        "TF Serving pool not ready; log:\n{}",
        edge.log_text()
    );

    let predict = r#"{"instances":[1.0,2.0,5.0]}"#;
    let via = assert_relayed_identically(
        &edge,
        s.addr(),
        &post("/v1/models/half_plus_two:predict", predict),
        "application/json",
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&via).expect("predict JSON");
    assert_eq!(v["predictions"], serde_json::json!([2.5, 3.0, 4.5]), "{v}");

    // A name the engine does not serve: its own 404, byte for byte, for status and predict.
    for req in [
        get("/v1/models/no_such_model"),
        post("/v1/models/no_such_model:predict", predict),
    ] {
        let direct = raw(s.addr(), &req).await;
        let via = raw(edge.addr, &req).await;
        assert_eq!(
            status_of(&direct),
            404,
            "{}",
            String::from_utf8_lossy(&direct)
        );
        assert_eq!(status_of(&via), 404, "{}", String::from_utf8_lossy(&via));
        assert_eq!(body_of(&via), body_of(&direct));
        let e: serde_json::Value = serde_json::from_slice(&body_of(&via)).expect("JSON");
        // "Could not find any versions of model …" (status), "Servable not found …" (predict).
        assert!(
            e["error"]
                .as_str()
                .is_some_and(|m| m.contains("no_such_model")),
            "not the engine's answer: {e}"
        );
    }

    // Learned from the 2xx answer, confirmed AVAILABLE by discovery: on /status.
    let learned = eventually(5, || async {
        let st: serde_json::Value = reqwest::get(edge.admin_url("/status"))
            .await
            .expect("status")
            .json()
            .await
            .expect("status JSON");
        st["pools"].as_array().into_iter().flatten().any(|p| {
            p["name"] == "tfserving" && p["models"] == serde_json::json!(["half_plus_two"])
        })
    })
    .await;
    assert!(
        learned,
        "half_plus_two not learned; log:\n{}",
        edge.log_text()
    );

    // A configured list restricts: a name outside it is refused by the edge in TF Serving's
    // shape and never reaches the engine.
    let restricted = embedded::edge(&one_pool_config(
        &format!(
            "{}    models: [half_plus_two]\n",
            pool("tfserving", "tfserving", &[s.addr()])
        ),
        &[("/v1/models/", "tfserving")],
    ))
    .await;
    let n = s.stats().requests;
    let r = raw(
        restricted.addr,
        &post("/v1/models/other_model:predict", predict),
    )
    .await;
    assert_eq!(status_of(&r), 404, "{}", String::from_utf8_lossy(&r));
    let e: serde_json::Value = serde_json::from_slice(&body_of(&r)).expect("JSON");
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("other_model")),
        "{e}"
    );
    assert_eq!(
        s.stats().requests,
        n,
        "the restricted name reached the engine"
    );
}
