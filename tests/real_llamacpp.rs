//! The real-engine tier: okome in front of a real llama.cpp `llama-server` (built from the
//! pinned `llama-cpp-python` sdist by `tests/engines/llamacpp.sh`, on a tiny random-weight
//! model made locally). On when `OKOME_REAL_ENGINE=1` (`.ci/run`); see `common::llamacpp`.
//!
//! What the simulator cannot prove: the bytes relayed are the engine's, the tap counts what the
//! client counts, the engine's own signals (`/health`, `/metrics`) are read, a client that leaves
//! stops the engine, mid-stream failover continues on another real server, resumable streams
//! resume, and busy servers are not ejected.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{EdgeBuilder, Route, TestEdge};
use common::llamacpp::{tier, LlamaServer, Model};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A greedy (temperature 0) streamed chat request for `max_tokens`.
fn greedy_chat(max_tokens: u32, usage: bool) -> String {
    let mut v = json!({
        "model": "okome-tiny",
        "stream": true,
        "temperature": 0,
        // llama.cpp's prompt cache would make a second run report cached prompt tokens.
        "cache_prompt": false,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Tell me about the river."}],
    });
    if usage {
        v["stream_options"] = json!({"include_usage": true});
    }
    v.to_string()
}

/// The `data:` payloads of an SSE body, parsed, ids, clocks and timings removed (they differ per
/// request); `[DONE]` as the string.
fn payloads(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| match serde_json::from_str::<Value>(d) {
            Ok(mut v) => {
                if let Some(o) = v.as_object_mut() {
                    for k in ["id", "created", "timings"] {
                        o.remove(k);
                    }
                }
                v
            }
            Err(_) => Value::String(d.to_owned()),
        })
        .collect()
}

/// The body with the values that differ per request masked: ids and clocks
/// ([`normalize`]), and llama.cpp's `timings` object (its members are all measurements).
fn masked(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(at) = rest.find(r#""timings":{"#) {
        let open = at + r#""timings":"#.len();
        out.push_str(&rest[..open]);
        out.push_str("{}");
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
        rest = &rest[close..];
    }
    out.push_str(rest);
    normalize(out.as_bytes())
}

/// The concatenated content (chat) or text (completions) of an SSE body.
fn text_of(body: &str) -> String {
    payloads(body)
        .iter()
        .filter_map(|v| {
            let c = &v["choices"][0];
            c["delta"]["content"].as_str().or(c["text"].as_str())
        })
        .collect()
}

/// An edge with one `llamacpp` pool of `servers` and one route, `route` merged in.
async fn edge_for(servers: &[&LlamaServer], route: Value) -> TestEdge {
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    let mut r = Route::to_pool("openai", "llama").path_prefix("/v1/");
    for (k, v) in route.as_object().cloned().unwrap_or_default() {
        r = r.set(&k, v);
    }
    let edge = EdgeBuilder::new()
        .pool("llama", "llamacpp", &addrs)
        .route(r)
        .start()
        .await;
    let up = eventually(10, || async {
        edge.metric("okome_backend_healthy", &[]).await == servers.len() as f64
    })
    .await;
    assert!(
        up,
        "llama-server never healthy at the edge:\n{}",
        edge.log_text()
    );
    edge
}

/// Sends `req` and reads the raw response until the server closes; returns it with the time
/// from before connecting (so before the edge can start its own clock) to the first body byte
/// that carried a content token.
async fn timed(addr: std::net::SocketAddr, req: &[u8]) -> (Vec<u8>, Option<Duration>) {
    let sent = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let (mut out, mut first, mut buf) = (Vec::new(), None, vec![0u8; 16384]);
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf))
            .await
            .expect("read timeout")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if first.is_none() && sse_tokens(&String::from_utf8_lossy(&body_of(&out))) > 0 {
            first = Some(sent.elapsed());
        }
    }
    (out, first)
}

/// Streamed chat and completions through the edge are the engine's bytes (ids and clocks
/// aside), and the tap's count equals the client's and the engine's: tokens, TTFT, gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_relayed_whole_and_counted_like_the_client() {
    if !tier("streams_are_relayed_whole_and_counted_like_the_client") {
        return;
    }
    let server = LlamaServer::start(Model::Tiny, 2, &[]).await;
    let edge = edge_for(&[&server], json!({})).await;

    let req = post("/v1/chat/completions", &greedy_chat(24, true));
    let direct = String::from_utf8(body_of(&raw(server.addr, &req).await)).unwrap();
    let (via, client_ttft) = timed(edge.addr, &req).await;
    assert_eq!(status_of(&via), 200, "{}", String::from_utf8_lossy(&via));
    assert_eq!(
        header_of(&via, "content-type").as_deref(),
        Some("text/event-stream")
    );
    let via = String::from_utf8(body_of(&via)).unwrap();
    assert_eq!(payloads(&via), payloads(&direct), "relayed stream differs");
    // Byte for byte, once ids, clocks and llama.cpp's `timings` are masked.
    assert_eq!(masked(&via), masked(&direct));
    assert!(via.ends_with("data: [DONE]\n\n"));
    let client_tokens = sse_tokens(&via);
    let usage = payloads(&via)
        .iter()
        .find_map(|v| v["usage"]["completion_tokens"].as_u64())
        .expect("usage chunk");
    assert_eq!(client_tokens, 24);
    assert_eq!(usage, 24);
    let tap = edge.metric("okome_tokens_total", &[]).await;
    assert_eq!(tap, client_tokens as f64, "tap vs client");
    let ttft = edge.metric("okome_ttft_seconds_sum", &[]).await;
    let client_ttft = client_ttft.expect("no token at the client").as_secs_f64();
    eprintln!(
        "real llama-server: tokens tap {tap} client {client_tokens} engine {usage}; \
         TTFT recorded {:.2} ms, measured at the client {:.2} ms",
        ttft * 1e3,
        client_ttft * 1e3
    );
    // The edge writes the first token before the client reads it.
    assert!(
        ttft > 0.0 && ttft <= client_ttft,
        "TTFT {ttft} vs client {client_ttft}"
    );
    assert_eq!(
        edge.metric("okome_inter_token_seconds_count", &[]).await,
        23.0
    );
    let log = edge.log_text();
    assert!(log.contains(r#""tokens":24"#), "access log: {log}");

    // Completions: usage comes on the finish chunk whether asked or not.
    let body = json!({"model": "okome-tiny", "prompt": "The river", "stream": true,
        "temperature": 0, "max_tokens": 16, "cache_prompt": false})
    .to_string();
    let req = post("/v1/completions", &body);
    let direct = String::from_utf8(body_of(&raw(server.addr, &req).await)).unwrap();
    let via = String::from_utf8(body_of(&raw(edge.addr, &req).await)).unwrap();
    assert_eq!(masked(&via), masked(&direct));
    assert_eq!(text_of(&via), text_of(&direct));
    assert_eq!(edge.metric("okome_tokens_total", &[]).await, 24.0 + 16.0);
}

/// `/health` decides health, `/metrics`' deferred requests are the queue depth the edge picks
/// by, and a server whose slots are all busy for many probe rounds stays in rotation: the next
/// request waits for a slot instead of a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_signals_are_read_and_busy_servers_stay_in() {
    if !tier("engine_signals_are_read_and_busy_servers_stay_in") {
        return;
    }
    let server = LlamaServer::start(Model::Slow, 1, &[]).await;
    let edge = edge_for(&[&server], json!({})).await;
    let long = post("/v1/chat/completions", &greedy_chat(120, false));
    let streams: Vec<_> = (0..3)
        .map(|_| tokio::spawn(raw_owned(edge.addr, long.clone())))
        .collect();
    let queued = eventually(20, || async {
        edge.metric("okome_backend_queue_depth", &[]).await >= 1.0
    })
    .await;
    assert!(
        queued,
        "llamacpp:requests_deferred never read as the queue (engine says {})",
        server.metric("llamacpp:requests_deferred").await
    );
    assert_eq!(server.metric("llamacpp:requests_processing").await, 1.0);
    // Ten probe rounds with the only slot busy: still healthy.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(edge.metric("okome_backend_healthy", &[]).await, 1.0);
    let next = raw(
        edge.addr,
        &post("/v1/chat/completions", &greedy_chat(2, false)),
    )
    .await;
    assert_eq!(status_of(&next), 200, "{}", String::from_utf8_lossy(&next));
    for s in streams {
        let r = s.await.unwrap();
        assert_eq!(sse_tokens(&String::from_utf8_lossy(&body_of(&r))), 120);
    }
    // Dead is still dead: a killed server leaves the rotation.
    drop(server);
    let down = eventually(10, || async {
        edge.metric("okome_backend_healthy", &[]).await == 0.0
    })
    .await;
    assert!(down);
}

/// A client that leaves mid-stream closes the upstream, and the real engine stops decoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_stops_the_engine() {
    if !tier("a_client_that_leaves_stops_the_engine") {
        return;
    }
    let server = LlamaServer::start(Model::Slow, 1, &[]).await;
    let edge = edge_for(&[&server], json!({})).await;
    let before = server.metric("llamacpp:n_decode_total").await;
    let mut c = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    c.write_all(&post("/v1/chat/completions", &greedy_chat(900, false)))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while sse_tokens(&String::from_utf8_lossy(&got)) < 5 {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    drop(c);
    let stopped = eventually(20, || async {
        server.metric("llamacpp:requests_processing").await == 0.0
    })
    .await;
    assert!(
        stopped,
        "the engine kept generating:\n{}",
        server.log_text()
    );
    let decoded = server.metric("llamacpp:n_decode_total").await - before;
    eprintln!("engine decoded {decoded} times for a 900-token request the client left after 5");
    assert!(decoded < 450.0, "decoded {decoded} of 900: not aborted");
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "client_disconnect")])
            .await,
        1.0
    );
}

/// Mid-stream failover between two real servers: the one streaming is SIGKILLed, the answer
/// goes on from the other in the same client stream, with one `[DONE]` and no error event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_continues_on_another_real_server() {
    if !tier("failover_continues_on_another_real_server") {
        return;
    }
    let mut a = LlamaServer::start(Model::Slow, 1, &[]).await;
    let mut b = LlamaServer::start(Model::Slow, 1, &[]).await;
    let edge = edge_for(&[&a, &b], json!({"mid_stream_failover": true})).await;
    let mut c = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    c.write_all(&post("/v1/chat/completions", &greedy_chat(60, false)))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while sse_tokens(&String::from_utf8_lossy(&body_of(&got))) < 8 {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let before = text_of(&String::from_utf8_lossy(&body_of(&got)));
    // Kill whichever is generating.
    let a_busy = a.metric("llamacpp:requests_processing").await >= 1.0;
    let (dying, other) = if a_busy { (&mut a, &b) } else { (&mut b, &a) };
    dying.kill();
    let _ = tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut got)).await;
    let body = String::from_utf8(body_of(&got)).unwrap();
    assert_eq!(status_of(&got), 200);
    assert_eq!(body.matches("data: [DONE]").count(), 1, "{body}");
    assert!(!body.contains(r#""error""#), "{body}");
    let text = text_of(&body);
    assert!(
        text.starts_with(&before) && text.len() > before.len(),
        "{text:?} vs {before:?}"
    );
    assert!(other.metric("llamacpp:tokens_predicted_total").await > 0.0);
    assert_eq!(
        edge.metric("okome_failover_total", &[("outcome", "continued")])
            .await,
        1.0,
        "{}",
        edge.log_text()
    );
    eprintln!(
        "failover on real llama-server: {:?} before the kill, {} tokens in all",
        before,
        sse_tokens(&body)
    );
}

/// A resumable stream dropped mid-way resumes from its cursor; at temperature 0 the resumed
/// text equals an uninterrupted run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_resumes_with_the_same_text() {
    if !tier("a_dropped_stream_resumes_with_the_same_text") {
        return;
    }
    let server = LlamaServer::start(Model::Slow, 2, &[]).await;
    let edge = edge_for(&[&server], json!({"resumable": true})).await;
    let req = post("/v1/chat/completions", &greedy_chat(40, false));
    let whole = text_of(&String::from_utf8(body_of(&raw(server.addr, &req).await)).unwrap());

    let mut c = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    c.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while sse_tokens(&String::from_utf8_lossy(&body_of(&got))) < 5 {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    drop(c);
    let id = header_of(&got, "x-okome-stream-id").expect("stream id");
    let first = String::from_utf8_lossy(&body_of(&got)).to_string();
    // The last complete event's id is the cursor.
    let complete = &first[..first.rfind("\n\n").unwrap() + 2];
    let cursor = complete
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .to_owned();
    let resumed = raw(
        edge.addr,
        format!(
            "GET /v1/okome/streams/{id}?cursor={cursor} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(
        status_of(&resumed),
        200,
        "{}",
        String::from_utf8_lossy(&resumed)
    );
    let rest = String::from_utf8(body_of(&resumed)).unwrap();
    let text = text_of(complete) + &text_of(&rest);
    assert_eq!(text, whole);
    assert_eq!(rest.matches("data: [DONE]").count(), 1);
}

/// Picking when both servers are busy: two single-slot servers, four long streams at once. The
/// edge picks by its in-flight count plus the engine's deferred requests, so the extra two wait
/// one on each server (never both on one, never refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_both_servers_are_busy_the_waiting_requests_spread() {
    if !tier("when_both_servers_are_busy_the_waiting_requests_spread") {
        return;
    }
    let a = LlamaServer::start(Model::Slow, 1, &[]).await;
    let b = LlamaServer::start(Model::Slow, 1, &[]).await;
    let edge = edge_for(&[&a, &b], json!({})).await;
    let long = post("/v1/chat/completions", &greedy_chat(150, false));
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(tokio::spawn(raw_owned(edge.addr, long.clone())));
        // One at a time, so each pick sees the previous one in flight.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spread = eventually(20, || async {
        a.metric("llamacpp:requests_deferred").await == 1.0
            && b.metric("llamacpp:requests_deferred").await == 1.0
    })
    .await;
    let (qa, qb) = (
        a.metric("llamacpp:requests_deferred").await,
        b.metric("llamacpp:requests_deferred").await,
    );
    eprintln!("both busy: deferred on the two servers {qa} and {qb}");
    assert!(spread, "waiting requests not spread: {qa} and {qb}");
    for s in streams {
        let r = s.await.unwrap();
        assert_eq!(status_of(&r), 200);
        assert_eq!(sse_tokens(&String::from_utf8_lossy(&body_of(&r))), 150);
    }
    assert_eq!(edge.metric("okome_backend_healthy", &[]).await, 2.0);
}

/// The reproduction, against the real server it came from: llama-cpp-python's server writes
/// `"content": " x"` (Python's `json.dumps`), and the byte-matching tap counted 0 tokens, no TTFT,
/// no gaps. It also answers `/v1/models` only between generations (started, as it must be behind
/// a proxy that probes, with `--interrupt_requests false`: by default any request, a probe
/// included, cuts the running stream), so the probes timed out and the next request got
/// `503 no_backend` while the server was streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_server_spaced_json_is_counted_and_busy_is_not_down() {
    if !tier("python_server_spaced_json_is_counted_and_busy_is_not_down") {
        return;
    }
    let server = LlamaServer::start_python(Model::Slow, &["--interrupt_requests", "false"]).await;
    let edge = EdgeBuilder::new()
        .pool("py", "openai", &[server.addr])
        .route(Route::to_pool("openai", "py").path_prefix("/v1/"))
        .start()
        .await;
    let up = eventually(10, || async {
        edge.metric("okome_backend_healthy", &[]).await == 1.0
    })
    .await;
    assert!(up, "{}", edge.log_text());
    let long = post("/v1/chat/completions", &greedy_chat(60, false));
    let first = tokio::spawn(timed_owned(edge.addr, long.clone()));
    // While it streams, the probes (every 200 ms, 150 ms timeout) wait on the server's lock.
    let busy = eventually(20, || async {
        edge.metric("okome_backend_busy", &[]).await == 1.0
    })
    .await;
    assert!(busy, "never busy:\n{}", edge.log_text());
    assert_eq!(edge.metric("okome_backend_healthy", &[]).await, 1.0);
    // The next request waits for the server instead of a 503.
    let second = raw(
        edge.addr,
        &post("/v1/chat/completions", &greedy_chat(3, false)),
    )
    .await;
    assert_eq!(
        status_of(&second),
        200,
        "{}",
        String::from_utf8_lossy(&second)
    );
    let (resp, client_ttft) = first.await.unwrap();
    let body = String::from_utf8(body_of(&resp)).unwrap();
    assert!(
        body.contains(r#""content": ""#),
        "not Python's spacing: {body}"
    );
    let client_tokens = sse_tokens(&body);
    assert_eq!(client_tokens, 60, "{body}");
    let tap = edge.metric("okome_tokens_total", &[]).await;
    let client_ttft = client_ttft.expect("no token").as_secs_f64() * 1e3;
    // The first stream's own line in the access log: its tokens and TTFT as the tap saw them.
    let line: Value = edge
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["tokens"] == json!(60))
        .expect("the first stream's access log line");
    let ttft = line["ttft_ms"].as_f64().expect("ttft_ms");
    eprintln!(
        "llama-cpp-python server: tokens tap {tap} client {} (two streams); first stream TTFT \
         recorded {ttft:.1} ms, measured at the client {client_ttft:.1} ms",
        client_tokens + 3,
    );
    assert!(ttft > 0.0 && ttft <= client_ttft, "{ttft} vs {client_ttft}");
    assert_eq!(tap, (client_tokens + 3) as f64);
    assert_eq!(edge.metric("okome_ttft_seconds_count", &[]).await, 2.0);
    assert_eq!(
        edge.metric("okome_inter_token_seconds_count", &[]).await,
        (59 + 2) as f64
    );
}

async fn timed_owned(addr: std::net::SocketAddr, req: Vec<u8>) -> (Vec<u8>, Option<Duration>) {
    timed(addr, &req).await
}
