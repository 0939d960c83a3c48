//! SSE keep-alive (`routes[].keepalive`): while the engine is silent mid-stream (queueing,
//! prefill, long reasoning), the edge writes `: keep-alive` comments between events, so
//! intermediaries with idle timeouts keep the stream; never inside an event, never a token,
//! never on NDJSON.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{EdgeBuilder, Route};
use common::*;
use okome_sim::SimKind;
use serde_json::json;
use std::time::Duration;

const COMMENT: &str = ": keep-alive\n\n";

/// A vLLM whose prefill takes 1.2 s: a route with `keepalive: 200ms` writes comments before
/// the first token; without the comments the bytes are the engine's, and the tap counts the
/// engine's tokens, not the comments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_before_the_first_token_gets_comments_between_events() {
    let s = sim(SimKind::Vllm, |c| c.prefill = Duration::from_millis(1200)).await;
    let edge = EdgeBuilder::new()
        .pool("vllm", "vllm", &[s.addr()])
        .route(
            Route::to_pool("openai", "vllm")
                .path_prefix("/v1/")
                .set("keepalive", json!("200ms")),
        )
        .start()
        .await;
    let body = chat("Qwen/Qwen3-8B", 6);
    let direct = body_of(&raw(s.addr(), &post("/v1/chat/completions", &body)).await);
    let via = raw(edge.addr, &post("/v1/chat/completions", &body)).await;
    assert_eq!(status_of(&via), 200, "{}", String::from_utf8_lossy(&via));
    let via = String::from_utf8(body_of(&via)).unwrap();
    let before_first = via.find("data:").unwrap();
    let comments = via[..before_first].matches(COMMENT).count();
    assert!(
        comments >= 3,
        "expected comments during 1.2 s of prefill at 200 ms, got {comments}: {via:?}"
    );
    // Each comment stands where an event could start: at the start or after a blank line.
    for (at, _) in via.match_indices(COMMENT) {
        assert!(
            at == 0 || via[..at].ends_with("\n\n"),
            "comment inside an event: {via:?}"
        );
    }
    let without = via.replace(COMMENT, "");
    assert_eq!(normalize(without.as_bytes()), normalize(&direct));
    assert_eq!(
        edge.metric("okome_tokens_total", &[]).await,
        6.0,
        "the comments are no tokens"
    );
    assert!(
        edge.metric("okome_stream_keepalives_total", &[("route", "openai")])
            .await
            >= comments as f64
    );
}

/// A route without `keepalive`, and an NDJSON stream on a route with it, get none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_comments_without_the_setting_or_on_ndjson() {
    let v = sim(SimKind::Vllm, |c| c.prefill = Duration::from_millis(700)).await;
    let o = sim(SimKind::Ollama, |c| c.prefill = Duration::from_millis(700)).await;
    let edge = EdgeBuilder::new()
        .pool("vllm", "vllm", &[v.addr()])
        .pool("ollama", "ollama", &[o.addr()])
        .route(Route::to_pool("openai", "vllm").path_prefix("/v1/"))
        .route(
            Route::to_pool("ollama", "ollama")
                .path_prefix("/api/")
                .set("keepalive", json!("100ms")),
        )
        .start()
        .await;
    let via = raw(
        edge.addr,
        &post("/v1/chat/completions", &chat("Qwen/Qwen3-8B", 3)),
    )
    .await;
    assert_eq!(status_of(&via), 200);
    assert!(!String::from_utf8_lossy(&body_of(&via)).contains(": keep-alive"));
    let via = raw(edge.addr, &post("/api/chat", &ollama_chat("llama3.2", 3))).await;
    assert_eq!(status_of(&via), 200, "{}", String::from_utf8_lossy(&via));
    let b = String::from_utf8(body_of(&via)).unwrap();
    assert!(!b.contains("keep-alive"), "{b:?}");
    for line in b.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

/// An engine that stalls in the middle of an event (half a `data:` line, then 1 s of
/// silence): no comment is written until the event is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_comment_inside_an_event() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let engine = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Read the request head and its body (the edge sends Content-Length).
                loop {
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(h) = text.find("\r\n\r\n") {
                        let len = text[..h]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if got.len() >= h + 4 + len {
                            break;
                        }
                    }
                }
                let path = String::from_utf8_lossy(&got).to_string();
                if !path.starts_with("POST") {
                    let body = r#"{"object":"list","data":[{"id":"m","object":"model"}]}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = c.write_all(resp.as_bytes()).await;
                    return;
                }
                let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                let first = r#"data: {"choices":[{"index":0,"delta":{"content":"a"}}]}"#;
                let _ = c.write_all(head.as_bytes()).await;
                let _ = c
                    .write_all(
                        chunk(&format!("{first}\n\ndata: {{\"choices\":[{{\"index\"")).as_bytes(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(1000)).await;
                let _ = c
                    .write_all(
                        chunk(":0,\"delta\":{\"content\":\"b\"}}]}\n\ndata: [DONE]\n\n").as_bytes(),
                    )
                    .await;
                let _ = c.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    let edge = EdgeBuilder::new()
        .pool("e", "openai", &[engine])
        .route(
            Route::to_pool("openai", "e")
                .path_prefix("/v1/")
                .set("keepalive", json!("100ms")),
        )
        .start()
        .await;
    let via = raw(edge.addr, &post("/v1/chat/completions", &chat("m", 2))).await;
    assert_eq!(status_of(&via), 200, "{}", String::from_utf8_lossy(&via));
    let b = String::from_utf8(body_of(&via)).unwrap();
    assert!(
        !b.contains("keep-alive"),
        "a comment went inside the event: {b:?}"
    );
    assert_eq!(sse_tokens(&b), 2, "{b:?}");
    assert_eq!(edge.metric("okome_tokens_total", &[]).await, 2.0);
}
