//! Engines as they really are, against the simulator: JSON written the way Python servers
//! write it (the tap reads meaning, not bytes), llama.cpp's `llama-server` as an engine kind,
//! and a busy engine that answers its probes late is busy, not dead.
//!
//! The same behaviours against a real `llama-server` are in `tests/real_llamacpp.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{EdgeBuilder, Route, TestEdge};
use common::*;
use okome_sim::{JsonStyle, SimKind};
use serde_json::{json, Value};
use std::time::Duration;

/// Content-bearing NDJSON lines (`"done": false`) in an Ollama body.
fn ndjson_tokens(body: &str) -> usize {
    body.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["done"] == json!(false))
        .count()
}

/// Completions chunks with non-empty `text`.
fn text_tokens(body: &str) -> usize {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .filter(|v| {
            v["choices"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count()
}

async fn tokens_on(edge: &TestEdge, route: &str) -> f64 {
    edge.metric("okome_tokens_total", &[("route", route)]).await
}

/// The reproduction: an engine that writes `"content": " ai"` (a space after the colon, as
/// Python's `json.dumps` does) was relayed with tokens=0, no TTFT and no gaps. Every API's
/// stream is counted by what it means now: tokens equal to the client's count, a TTFT, gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spaced_reordered_json_is_counted_on_every_api() {
    let spaced = |c: &mut okome_sim::SimConfig| c.json_style = JsonStyle::Spaced;
    let v = sim(SimKind::Vllm, spaced).await;
    let o = sim(SimKind::Ollama, spaced).await;
    let l = sim(SimKind::Llamacpp, spaced).await;
    let edge = EdgeBuilder::new()
        .pool("vllm", "vllm", &[v.addr()])
        .pool("ollama", "ollama", &[o.addr()])
        .pool("llama", "llamacpp", &[l.addr()])
        .route(Route::to_pool("llama", "llama").set("match", json!({"model": "okome-tiny"})))
        .route(Route::to_pool("ollama", "ollama").path_prefix("/api/"))
        .route(Route::to_pool("openai", "vllm").path_prefix("/v1/"))
        .start()
        .await;

    // vLLM chat: the body really is spaced, and byte for byte what the engine wrote.
    let body = chat("Qwen/Qwen3-8B", 7);
    let via = raw(edge.addr, &post("/v1/chat/completions", &body)).await;
    assert_eq!(status_of(&via), 200, "{}", String::from_utf8_lossy(&via));
    let via = String::from_utf8(body_of(&via)).unwrap();
    assert!(via.contains(r#""content": ""#), "not spaced: {via}");
    assert_eq!(sse_tokens(&via), 7);
    assert_eq!(tokens_on(&edge, "openai").await, 7.0, "{via}");

    // vLLM completions.
    let body = r#"{"model":"Qwen/Qwen3-8B","prompt":"hi","stream":true,"max_tokens":5}"#;
    let via = String::from_utf8(body_of(
        &raw(edge.addr, &post("/v1/completions", body)).await,
    ))
    .unwrap();
    assert_eq!(text_tokens(&via), 5, "{via}");
    assert_eq!(tokens_on(&edge, "openai").await, 12.0);

    // Ollama native NDJSON, chat and generate.
    let via = String::from_utf8(body_of(
        &raw(edge.addr, &post("/api/chat", &ollama_chat("llama3.2", 4))).await,
    ))
    .unwrap();
    assert!(via.contains(r#""done": false"#), "not spaced: {via}");
    assert_eq!(ndjson_tokens(&via), 4, "{via}");
    let gen = r#"{"model":"llama3.2","prompt":"hi","options":{"num_predict":3}}"#;
    let via =
        String::from_utf8(body_of(&raw(edge.addr, &post("/api/generate", gen)).await)).unwrap();
    assert_eq!(ndjson_tokens(&via), 3, "{via}");
    assert_eq!(tokens_on(&edge, "ollama").await, 7.0);

    // llama.cpp's OpenAI API.
    let via = raw(
        edge.addr,
        &post("/v1/chat/completions", &chat("okome-tiny", 6)),
    )
    .await;
    assert_eq!(status_of(&via), 200, "{}", String::from_utf8_lossy(&via));
    let via = String::from_utf8(body_of(&via)).unwrap();
    assert_eq!(sse_tokens(&via), 6, "{via}");
    assert_eq!(tokens_on(&edge, "llama").await, 6.0, "{via}");

    // Every stream above has a TTFT and its gaps.
    let ttft = edge.metric("okome_ttft_seconds_count", &[]).await;
    assert_eq!(ttft, 5.0, "TTFT recorded for {ttft} of 5 streams");
    let gaps = edge.metric("okome_inter_token_seconds_count", &[]).await;
    assert_eq!(gaps, (6 + 4 + 3 + 2 + 5) as f64);
}

/// The reproduction: an engine that answers its probes only between generations
/// (`busy_probes_block`, as llama.cpp's Python server) was marked down while it streamed, and
/// the next request got `503 no_backend`. A backend that delivered bytes within the probe window
/// is busy, not dead: it stays in rotation and the request waits for a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_engines_stay_in_rotation() {
    let busy = |c: &mut okome_sim::SimConfig| {
        c.max_concurrent = 1;
        c.busy_probes_block = true;
        c.tokens_per_second = 20.0;
    };
    let a = sim(SimKind::Llamacpp, busy).await;
    let b = sim(SimKind::Llamacpp, busy).await;
    let edge = EdgeBuilder::new()
        .pool("llama", "llamacpp", &[a.addr(), b.addr()])
        .route(Route::to_pool("openai", "llama").path_prefix("/v1/"))
        .start()
        .await;
    // One long stream on each engine: both slots busy for 3 s.
    let long = post("/v1/chat/completions", &chat("okome-tiny", 60));
    let s1 = tokio::spawn(raw_owned(edge.addr, long.clone()));
    let s2 = tokio::spawn(raw_owned(edge.addr, long.clone()));
    let both = eventually(5, || async {
        a.stats().streams_started >= 1 && b.stats().streams_started >= 1
    })
    .await;
    assert!(both, "the two streams did not spread over both engines");
    // Several probe rounds (200 ms, 150 ms timeout) time out while the engines stream.
    let seen_busy = eventually(5, || async {
        edge.metric("okome_backend_busy", &[]).await >= 2.0
    })
    .await;
    assert!(seen_busy, "never reported busy; log:\n{}", edge.log_text());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        edge.metric("okome_backend_healthy", &[]).await,
        2.0,
        "a busy engine was taken out; log:\n{}",
        edge.log_text()
    );
    let status: Value = reqwest::get(edge.admin_url("/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let states: Vec<&str> = status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["busy", "busy"], "{status}");
    // A third request waits for a slot instead of being refused.
    let third = raw(
        edge.addr,
        &post("/v1/chat/completions", &chat("okome-tiny", 2)),
    )
    .await;
    assert_eq!(
        status_of(&third),
        200,
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&third),
        edge.log_text()
    );
    for s in [s1, s2] {
        let r = s.await.unwrap();
        assert_eq!(sse_tokens(&String::from_utf8_lossy(&body_of(&r))), 60);
    }
    // Idle again: the probes answer and the busy state clears.
    let clear = eventually(5, || async {
        edge.metric("okome_backend_busy", &[]).await == 0.0
    })
    .await;
    assert!(clear);
}

/// A dead engine is still taken out: refused connections are no progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_is_still_taken_out() {
    let a = sim(SimKind::Llamacpp, |_| {}).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let edge = EdgeBuilder::new()
        .pool("llama", "llamacpp", &[a.addr(), dead])
        .route(Route::to_pool("openai", "llama").path_prefix("/v1/"))
        .start()
        .await;
    let ok = eventually(5, || async {
        edge.metric("okome_backend_healthy", &[]).await == 1.0
    })
    .await;
    assert!(ok);
    for _ in 0..4 {
        let r = raw(
            edge.addr,
            &post("/v1/chat/completions", &chat("okome-tiny", 2)),
        )
        .await;
        assert_eq!(status_of(&r), 200);
    }
    assert_eq!(edge.metric("okome_backend_busy", &[]).await, 0.0);
}

/// `kind: llamacpp`: `/health` is 503 while the model loads (the backend is not used until it
/// answers 200), the model is learned from `/v1/models`, and with `--metrics` the deferred
/// requests are the queue depth used for picking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_loading_discovery_and_queue() {
    let l = sim(SimKind::Llamacpp, |c| {
        c.load_time = Duration::from_millis(1500);
        c.metrics = true;
        c.max_concurrent = 1;
        c.tokens_per_second = 20.0;
    })
    .await;
    let edge = EdgeBuilder::new()
        .pool("llama", "llamacpp", &[l.addr()])
        .route(Route::new("any").path_prefix("/v1/"))
        .start()
        .await;
    // Loading: down, nothing learned, and a request is answered by the edge (the model is not
    // known yet), never sent to the loading engine.
    assert_eq!(edge.metric("okome_backend_healthy", &[]).await, 0.0);
    let r = raw(
        edge.addr,
        &post("/v1/chat/completions", &chat("okome-tiny", 2)),
    )
    .await;
    assert!(
        matches!(status_of(&r), 404 | 503),
        "{}",
        String::from_utf8_lossy(&r)
    );
    assert_eq!(l.stats().requests, 0);
    let up = eventually(6, || async {
        edge.metric("okome_backend_healthy", &[]).await == 1.0
    })
    .await;
    assert!(up, "never healthy after loading; log:\n{}", edge.log_text());
    // The route names no pool: the model must have been learned from the engine's listing.
    let learned = eventually(6, || async {
        let r = raw(
            edge.addr,
            &post("/v1/chat/completions", &chat("okome-tiny", 1)),
        )
        .await;
        status_of(&r) == 200
    })
    .await;
    assert!(
        learned,
        "okome-tiny never learned; log:\n{}",
        edge.log_text()
    );
    // One slot, three long streams: two are deferred, and the edge reads that as the queue.
    let long = post("/v1/chat/completions", &chat("okome-tiny", 40));
    let streams: Vec<_> = (0..3)
        .map(|_| tokio::spawn(raw_owned(edge.addr, long.clone())))
        .collect();
    let queued = eventually(6, || async {
        edge.metric("okome_backend_queue_depth", &[]).await >= 1.0
    })
    .await;
    assert!(queued, "llamacpp:requests_deferred not read as the queue");
    for s in streams {
        assert_eq!(status_of(&s.await.unwrap()), 200);
    }
}
