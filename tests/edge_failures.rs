//! Failures at the edge, over real sockets: big bodies and body limits, failover before the
//! first byte, whole pools down, engines that answer 503, fallback pools, engines that die,
//! error or stall mid-stream, and clients that go away.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{self, TestEdge};
use common::*;
use okome_sim::{Faults, SimHandle, SimKind};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A pool entry with extra settings (each line of `extra` is indented under the pool).
fn pool_with(name: &str, kind: &str, backends: &[SocketAddr], extra: &[&str]) -> String {
    let b: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    let mut s = format!(
        "  {name}:\n    kind: {kind}\n    backends: [{}]\n",
        b.join(", ")
    );
    for line in extra {
        s.push_str(&format!("    {line}\n"));
    }
    s
}

/// Health checks so rare that the edge keeps believing a backend that died after start-up is up.
const SLOW_HEALTH: &str = "health_check: { interval: 60s, timeout: 1s }";

/// The same hash the simulator records for a request body (`stats().last_body_hash`).
fn body_hash(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// Like `raw`, but the request is written concurrently and write errors are tolerated (the
/// edge may answer and close before it has read a large body). Returns what was read.
async fn exchange(addr: SocketAddr, request: Vec<u8>) -> Vec<u8> {
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&request).await;
        // Keep the write half open until the response is read (dropping it would half-close).
        w
    });
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    drop(writer.await);
    out
}

/// The JSON of each `data:` event in an SSE body (`[DONE]` comes back as a string).
fn sse_events(body: &str) -> Vec<serde_json::Value> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str(d).unwrap_or_else(|_| serde_json::Value::String(d.to_string()))
        })
        .collect()
}

/// Waits until the edge's `okome_streams_total{outcome}` reaches `n` (the access-log phase
/// runs just after the client saw the end of the stream).
async fn wait_outcome(edge: &TestEdge, outcome: &str, n: f64) -> f64 {
    eventually(10, || async {
        edge.metric("okome_streams_total", &[("outcome", outcome)])
            .await
            >= n
    })
    .await;
    edge.metric("okome_streams_total", &[("outcome", outcome)])
        .await
}

/// Waits until `addr` refuses connections. `SimHandle::shutdown` and `refuse_connections` only
/// signal the sim's accept loop; a connection that races them can still be accepted (and then
/// cut after a 200 header), which would turn "backend down" into "died mid-stream".
async fn wait_refused(addr: SocketAddr) {
    let refused = eventually(10, || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused, "{addr} still accepts connections");
}

/// Stops a sim (the engine died) and waits until its port refuses connections.
async fn kill(s: &SimHandle) {
    s.shutdown();
    wait_refused(s.addr()).await;
}

/// Makes a sim refuse connections and waits until it does.
async fn refuse(s: &SimHandle) {
    s.set_faults(Faults {
        refuse_connections: true,
        ..Faults::default()
    });
    wait_refused(s.addr()).await;
}

/// A sim that is gone: it listened once (a real port), then stopped.
async fn dead_sim(kind: SimKind) -> SimHandle {
    let s = sim(kind, |_| {}).await;
    kill(&s).await;
    s
}

// ---------------------------------------------------------------------------------------------
// 1. Body routing and limits
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_prompt_routes_on_a_trailing_model_and_arrives_intact() {
    let tweak = |m: &'static str| {
        move |c: &mut okome_sim::SimConfig| {
            c.models = vec![m.to_string()];
            c.prefill_per_1k_tokens = Duration::ZERO;
        }
    };
    let a = sim(SimKind::Vllm, tweak("model-a")).await;
    let b = sim(SimKind::Vllm, tweak("model-b")).await;
    let edge = embedded::edge(&format!(
        "pools:\n{}{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pools: [a, b]\n",
        pool("a", "vllm", &[a.addr()]),
        pool("b", "vllm", &[b.addr()])
    ))
    .await;

    // openai-python serializes the keyword arguments in order: messages first, model after.
    let content = "All work and no play makes a long prompt. ".repeat((4 << 20) / 42 + 1);
    for (model, target, other) in [("model-b", &b, &a), ("model-a", &a, &b)] {
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"{content}"}}],"stream":true,"max_tokens":4,"model":"{model}"}}"#
        );
        assert!(body.len() > 4 << 20);
        let before_other = other.stats().requests;
        let resp = exchange(edge.addr, post("/v1/chat/completions", &body)).await;
        assert_eq!(
            status_of(&resp),
            200,
            "{model}: {}\nlog:\n{}",
            String::from_utf8_lossy(&resp[..resp.len().min(2000)]),
            edge.log_text()
        );
        let out = String::from_utf8_lossy(&body_of(&resp)).to_string();
        assert_eq!(sse_tokens(&out), 4, "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
        let st = target.stats();
        assert_eq!(
            st.last_body_len,
            body.len() as u64,
            "{model}: the engine got a different body length"
        );
        assert_eq!(
            st.last_body_hash,
            body_hash(body.as_bytes()),
            "{model}: the engine got different bytes"
        );
        assert_eq!(
            other.stats().requests,
            before_other,
            "{model} reached the wrong pool"
        );
    }
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "completed")])
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_gets_413_in_the_api_shape() {
    let v = sim(SimKind::Vllm, |_| {}).await;
    let o = sim(SimKind::Ollama, |_| {}).await;
    let edge = embedded::edge(&format!(
        "limits: {{ max_body: 1MiB }}\npools:\n{}{}routes:\n  - name: ollama\n    match: {{ path_prefix: /api/ }}\n    pool: ollama\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n",
        pool("vllm", "vllm", &[v.addr()]),
        pool("ollama", "ollama", &[o.addr()])
    ))
    .await;
    let content = "x".repeat(2 << 20);

    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{content}"}}],"stream":true,"model":"Qwen/Qwen3-8B"}}"#
    );
    let resp = exchange(edge.addr, post("/v1/chat/completions", &body)).await;
    assert_eq!(
        status_of(&resp),
        413,
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&resp),
        edge.log_text()
    );
    assert_openai_error(&body_of(&resp), "request_too_large");

    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{content}"}}],"model":"llama3.2:latest"}}"#
    );
    let resp = exchange(edge.addr, post("/api/chat", &body)).await;
    assert_eq!(
        status_of(&resp),
        413,
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&resp),
        edge.log_text()
    );
    assert_ollama_error(&body_of(&resp));

    assert_eq!(v.stats().requests, 0);
    assert_eq!(o.stats().requests, 0);
}

// ---------------------------------------------------------------------------------------------
// 2. Failover before the first byte
// ---------------------------------------------------------------------------------------------

/// Sends streaming POSTs one by one until the edge has retried at least once (the dead backend
/// is picked at random, so this takes a few requests); every one of them must stream in full.
async fn every_request_streams(edge: &TestEdge, good: &SimHandle) {
    let mut sent = 0;
    while sent < 40 {
        let resp = raw(
            edge.addr,
            &post("/v1/chat/completions", &chat("Qwen/Qwen3-8B", 5)),
        )
        .await;
        sent += 1;
        assert_eq!(
            status_of(&resp),
            200,
            "request {sent}: {}\nlog:\n{}",
            String::from_utf8_lossy(&resp),
            edge.log_text()
        );
        let out = String::from_utf8_lossy(&body_of(&resp)).to_string();
        assert_eq!(sse_tokens(&out), 5, "request {sent}: {out}");
        assert!(out.ends_with("data: [DONE]\n\n"), "request {sent}: {out}");
        if sent >= 4 && edge.metric("okome_upstream_retries_total", &[]).await >= 1.0 {
            break;
        }
    }
    let retries = edge
        .metric("okome_upstream_retries_total", &[("reason", "connect")])
        .await;
    assert!(
        retries >= 1.0,
        "no retry after {sent} requests; log:\n{}",
        edge.log_text()
    );
    assert_eq!(good.stats().streams_completed, sent);
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "completed")])
            .await,
        sent as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_a_backend_dies_after_the_edge_started() {
    let dead = sim(SimKind::Vllm, |_| {}).await;
    let good = sim(SimKind::Vllm, |_| {}).await;
    let edge = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n",
        pool_with("vllm", "vllm", &[dead.addr(), good.addr()], &[SLOW_HEALTH])
    ))
    .await;
    // Health checks still think it is up: only live traffic can find out.
    kill(&dead).await;
    every_request_streams(&edge, &good).await;
    assert_eq!(dead.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_a_backend_refuses_connections() {
    let refusing = sim(SimKind::Vllm, |_| {}).await;
    let good = sim(SimKind::Vllm, |_| {}).await;
    let edge = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n",
        // A short ejection, so the refusing backend is picked again and again.
        pool_with(
            "vllm",
            "vllm",
            &[refusing.addr(), good.addr()],
            &[SLOW_HEALTH, "ejection: { duration: 10ms }"]
        )
    ))
    .await;
    refuse(&refusing).await;
    every_request_streams(&edge, &good).await;
    assert_eq!(refusing.stats().requests, 0);
}

// ---------------------------------------------------------------------------------------------
// 3. Whole pool down
// ---------------------------------------------------------------------------------------------

/// Asserts a `Retry-After` of whole seconds ≥ 1 and returns it.
fn assert_retry_after(resp: &[u8], edge: &TestEdge) -> u64 {
    let ra = header_of(resp, "retry-after").unwrap_or_else(|| {
        panic!(
            "no Retry-After: {}\nlog:\n{}",
            String::from_utf8_lossy(resp),
            edge.log_text()
        )
    });
    let secs: u64 = ra
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {ra:?} is not integer seconds"));
    assert!(secs >= 1, "Retry-After {secs}");
    secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_pool_down_gets_503_with_retry_after_in_the_api_shape() {
    let v1 = dead_sim(SimKind::Vllm).await;
    let v2 = dead_sim(SimKind::Vllm).await;
    let o = dead_sim(SimKind::Ollama).await;
    let edge = embedded::edge(&format!(
        "pools:\n{}{}routes:\n  - name: ollama\n    match: {{ path_prefix: /api/ }}\n    pool: ollama\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n",
        pool("vllm", "vllm", &[v1.addr(), v2.addr()]),
        pool("ollama", "ollama", &[o.addr()])
    ))
    .await;

    let resp = raw(
        edge.addr,
        &post("/v1/chat/completions", &chat("Qwen/Qwen3-8B", 4)),
    )
    .await;
    assert_eq!(
        status_of(&resp),
        503,
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&resp),
        edge.log_text()
    );
    let _ = assert_retry_after(&resp, &edge);
    assert_openai_error(&body_of(&resp), "no_backend");

    let resp = raw(
        edge.addr,
        &post("/api/chat", &ollama_chat("llama3.2:latest", 4)),
    )
    .await;
    assert_eq!(
        status_of(&resp),
        503,
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&resp),
        edge.log_text()
    );
    let _ = assert_retry_after(&resp, &edge);
    assert_ollama_error(&body_of(&resp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_that_dies_after_start_gets_503_with_retry_after_once_known_down() {
    let v1 = sim(SimKind::Vllm, |_| {}).await;
    let v2 = sim(SimKind::Vllm, |_| {}).await;
    let edge = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n",
        pool_with(
            "vllm",
            "vllm",
            &[v1.addr(), v2.addr()],
            &[SLOW_HEALTH, "ejection: { duration: 30s }"]
        )
    ))
    .await;
    kill(&v1).await;
    kill(&v2).await;
    // The first request finds out on live traffic: both connects are refused. The pool is down
    // as far as it can tell, so it gets 503 with Retry-After in the OpenAI shape.
    let first = raw(
        edge.addr,
        &post("/v1/chat/completions", &chat("Qwen/Qwen3-8B", 4)),
    )
    .await;
    assert_eq!(
        status_of(&first),
        503,
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&first),
        edge.log_text()
    );
    let _ = assert_retry_after(&first, &edge);
    assert_openai_error(&body_of(&first), "no_backend");
    assert_eq!(
        edge.metric("okome_upstream_retries_total", &[("reason", "connect")])
            .await,
        1.0
    );
    // From then on both backends are ejected and the pool answers 503 at once.
    let resp = raw(
        edge.addr,
        &post("/v1/chat/completions", &chat("Qwen/Qwen3-8B", 4)),
    )
    .await;
    assert_eq!(
        status_of(&resp),
        503,
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&resp),
        edge.log_text()
    );
    // Computed from live state: the ejections end within their 30 s.
    let secs = assert_retry_after(&resp, &edge);
    assert!(secs <= 30, "Retry-After {secs} beyond the 30 s ejection");
    assert_openai_error(&body_of(&resp), "no_backend");
}

// ---------------------------------------------------------------------------------------------
// 4. Engine 503 and fallback pools
// ---------------------------------------------------------------------------------------------

/// An Ollama whose only slot is held by a long generation sent to it directly, with no queue:
/// it answers every other request 503 "server busy". Abort the handle to release it.
async fn busy_ollama() -> (okome_sim::SimHandle, tokio::task::JoinHandle<()>) {
    let busy = sim(SimKind::Ollama, |c| {
        c.max_concurrent = 1;
        c.max_queue = Some(0);
    })
    .await;
    let hold = {
        let addr = busy.addr();
        tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            c.write_all(&post(
                "/api/chat",
                &ollama_chat("llama3.2:latest", 1_000_000),
            ))
            .await
            .expect("write");
            let mut buf = [0u8; 4096];
            while c.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        })
    };
    assert!(
        eventually(5, || async { busy.stats().running == 1 }).await,
        "holding request did not start"
    );
    // Proof the engine is busy now.
    let direct = raw(
        busy.addr(),
        &post("/api/chat", &ollama_chat("llama3.2:latest", 4)),
    )
    .await;
    assert_eq!(
        status_of(&direct),
        503,
        "{}",
        String::from_utf8_lossy(&direct)
    );
    (busy, hold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_503_from_one_backend_is_served_by_the_other() {
    let (busy, hold) = busy_ollama().await;
    let good = sim(SimKind::Ollama, |_| {}).await;

    let edge = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: ollama\n    match: {{ path_prefix: /api/ }}\n    pool: ollama\n",
        // Never eject on 503s here, so the busy engine keeps being picked.
        pool_with("ollama", "ollama", &[busy.addr(), good.addr()], &["ejection: { failures: 1000 }"])
    ))
    .await;
    let busy_before = busy.stats().requests;
    let mut sent = 0u64;
    while sent < 40 {
        let resp = raw(
            edge.addr,
            &post("/api/chat", &ollama_chat("llama3.2:latest", 4)),
        )
        .await;
        sent += 1;
        assert_eq!(
            status_of(&resp),
            200,
            "request {sent}: {}\nlog:\n{}",
            String::from_utf8_lossy(&resp),
            edge.log_text()
        );
        let out = String::from_utf8_lossy(&body_of(&resp)).to_string();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "request {sent}: {out}");
        assert!(lines[4].contains("\"done\":true"), "request {sent}: {out}");
        if sent >= 4 && busy.stats().requests > busy_before {
            break;
        }
    }
    let hit_busy = busy.stats().requests - busy_before;
    assert!(
        hit_busy >= 1,
        "the busy backend was never tried in {sent} requests"
    );
    assert_eq!(
        edge.metric("okome_upstream_retries_total", &[("reason", "status_503")])
            .await,
        hit_busy as f64,
        "log:\n{}",
        edge.log_text()
    );
    assert_eq!(good.stats().streams_completed, sent);
    hold.abort();
}

/// The retry budget: with `budget_ratio: 0` and two retries in reserve, the pool retries its
/// engine's 503s twice and then lets them through (counted), instead of multiplying a brown-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries_per_pool() {
    let (busy, hold) = busy_ollama().await;
    let good = sim(SimKind::Ollama, |_| {}).await;
    let edge = embedded::edge(&format!(
        "retry: {{ max_attempts: 3, budget_ratio: 0, budget_reserve: 2 }}\npools:\n{}routes:\n  - name: ollama\n    match: {{ path_prefix: /api/ }}\n    pool: ollama\n",
        pool_with("ollama", "ollama", &[busy.addr(), good.addr()], &["ejection: { failures: 1000 }"])
    ))
    .await;
    let busy_before = busy.stats().requests;
    let mut refused = 0u64;
    for _ in 0..40 {
        let resp = raw(
            edge.addr,
            &post("/api/chat", &ollama_chat("llama3.2:latest", 2)),
        )
        .await;
        match status_of(&resp) {
            200 => {}
            503 => refused += 1,
            s => panic!("status {s}: {}", String::from_utf8_lossy(&resp)),
        }
    }
    let hit_busy = busy.stats().requests - busy_before;
    assert!(
        hit_busy >= 3,
        "the busy backend was tried only {hit_busy} times"
    );
    assert_eq!(
        edge.metric("okome_upstream_retries_total", &[("reason", "status_503")])
            .await,
        2.0,
        "log:\n{}",
        edge.log_text()
    );
    assert_eq!(
        refused,
        hit_busy - 2,
        "every 503 past the budget reaches the client"
    );
    assert_eq!(
        edge.metric("okome_retry_budget_exhausted_total", &[("pool", "ollama")])
            .await,
        refused as f64
    );
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_pool_serves_when_the_target_pool_is_down() {
    let down = dead_sim(SimKind::Vllm).await; // down before start: health checks know
    let refusing = sim(SimKind::Vllm, |_| {}).await; // refuses after start: only traffic knows
    let backup = sim(SimKind::Vllm, |_| {}).await;
    let edge = embedded::edge(&format!(
        "pools:\n{}{}{}routes:\n  - name: known-down\n    match: {{ path_prefix: /v1/, headers: {{ x-case: down }} }}\n    pool: down\n    fallback: [backup]\n  - name: refusing\n    match: {{ path_prefix: /v1/ }}\n    pool: refusing\n    fallback: [backup]\n",
        pool("down", "vllm", &[down.addr()]),
        pool_with("refusing", "vllm", &[refusing.addr()], &[SLOW_HEALTH]),
        pool("backup", "vllm", &[backup.addr()])
    ))
    .await;
    refuse(&refusing).await;

    let body = chat("Qwen/Qwen3-8B", 5);
    let with_header = String::from_utf8(post("/v1/chat/completions", &body))
        .expect("utf8")
        .replacen(
            "Host: localhost\r\n",
            "Host: localhost\r\nx-case: down\r\n",
            1,
        );
    for (i, req) in [
        with_header.into_bytes(),
        post("/v1/chat/completions", &body),
        post("/v1/chat/completions", &body),
    ]
    .iter()
    .enumerate()
    {
        let resp = raw(edge.addr, req).await;
        assert_eq!(
            status_of(&resp),
            200,
            "request {i}: {}\nlog:\n{}",
            String::from_utf8_lossy(&resp),
            edge.log_text()
        );
        let out = String::from_utf8_lossy(&body_of(&resp)).to_string();
        assert_eq!(sse_tokens(&out), 5, "request {i}: {out}");
        assert!(out.ends_with("data: [DONE]\n\n"), "request {i}: {out}");
        assert_eq!(
            backup.stats().streams_completed,
            i as u64 + 1,
            "request {i} was not served by the fallback"
        );
    }
    // The refused connect was retried on the fallback once; after that the pool was ejected.
    assert!(
        edge.metric("okome_upstream_retries_total", &[("route", "refusing")])
            .await
            >= 1.0,
        "log:\n{}",
        edge.log_text()
    );
    assert_eq!(refusing.stats().requests, 0);
}

// ---------------------------------------------------------------------------------------------
// 5. Mid-stream failures
// ---------------------------------------------------------------------------------------------

/// Edge with one pool `p` of `kind` on `s`, routes for `/api/` and `/v1/`.
async fn edge_for(s: &SimHandle, kind: &str, extra_top: &str) -> TestEdge {
    let api_route = if kind == "ollama" {
        "  - name: ollama\n    match: { path_prefix: /api/ }\n    pool: p\n"
    } else {
        ""
    };
    embedded::edge(&format!(
        "{extra_top}pools:\n{}routes:\n{api_route}  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: p\n",
        pool("p", kind, &[s.addr()])
    ))
    .await
}

/// Asserts `rest` is exactly the edge's terminal SSE error: `data: {"error":…}` then `[DONE]`.
fn assert_terminal_sse_error(rest: &str) {
    let events = sse_events(rest);
    assert_eq!(events.len(), 2, "{rest:?}");
    assert!(
        events[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{rest:?}"
    );
    assert_eq!(events[1], "[DONE]", "{rest:?}");
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_dies_mid_stream_ends_with_a_terminal_sse_error() {
    let s = sim(SimKind::Vllm, |c| c.faults.drop_after_tokens = Some(3)).await;
    let edge = edge_for(&s, "vllm", "").await;
    let body = chat("Qwen/Qwen3-8B", 8);
    let direct = normalize(&body_of(
        &raw(s.addr(), &post("/v1/chat/completions", &body)).await,
    ));
    assert_eq!(sse_tokens(&direct), 3, "{direct}");

    let resp = raw(edge.addr, &post("/v1/chat/completions", &body)).await;
    assert_eq!(status_of(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    let via = normalize(&body_of(&resp));
    // The tokens that made it, byte for byte, then the edge's terminal error.
    let rest = via
        .strip_prefix(direct.as_str())
        .unwrap_or_else(|| panic!("via edge:\n{via}\ndirect:\n{direct}"));
    assert_terminal_sse_error(rest);
    assert_eq!(
        wait_outcome(&edge, "upstream_error", 1.0).await,
        1.0,
        "log:\n{}",
        edge.log_text()
    );
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "completed")])
            .await,
        0.0
    );
    // Nothing is retried once a byte reached the client.
    assert_eq!(edge.metric("okome_upstream_retries_total", &[]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_dies_mid_stream_ends_with_a_terminal_ndjson_error() {
    let s = sim(SimKind::Ollama, |c| c.faults.drop_after_tokens = Some(3)).await;
    let edge = edge_for(&s, "ollama", "").await;
    let resp = raw(
        edge.addr,
        &post("/api/chat", &ollama_chat("llama3.2:latest", 8)),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    let out = String::from_utf8_lossy(&body_of(&resp)).to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for l in &lines[..3] {
        assert!(l.contains("\"done\":false"), "{out}");
    }
    let last: serde_json::Value =
        serde_json::from_str(lines[3]).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        last["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{out}"
    );
    assert!(out.ends_with('\n'), "{out:?}");
    assert_eq!(
        wait_outcome(&edge, "upstream_error", 1.0).await,
        1.0,
        "log:\n{}",
        edge.log_text()
    );
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "completed")])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_error_event_is_relayed_as_is_and_counted_as_upstream_error() {
    let s = sim(SimKind::Vllm, |c| c.faults.error_after_tokens = Some(3)).await;
    let edge = edge_for(&s, "vllm", "").await;
    let body = chat("Qwen/Qwen3-8B", 8);
    let direct = normalize(&body_of(
        &raw(s.addr(), &post("/v1/chat/completions", &body)).await,
    ));
    assert_eq!(sse_tokens(&direct), 3, "{direct}");
    assert!(direct.contains("data: {\"error\": "), "{direct}");
    let resp = raw(edge.addr, &post("/v1/chat/completions", &body)).await;
    assert_eq!(status_of(&resp), 200);
    assert_eq!(normalize(&body_of(&resp)), direct);
    assert_eq!(
        wait_outcome(&edge, "upstream_error", 1.0).await,
        1.0,
        "log:\n{}",
        edge.log_text()
    );
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "completed")])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_engine_error_line_is_relayed_as_is_and_counted_as_upstream_error() {
    let s = sim(SimKind::Ollama, |c| c.faults.error_after_tokens = Some(3)).await;
    let edge = edge_for(&s, "ollama", "").await;
    let resp = raw(
        edge.addr,
        &post("/api/chat", &ollama_chat("llama3.2:latest", 8)),
    )
    .await;
    assert_eq!(status_of(&resp), 200);
    let out = String::from_utf8_lossy(&body_of(&resp)).to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let last: serde_json::Value =
        serde_json::from_str(lines[3]).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(last["error"].is_string(), "{out}");
    assert_eq!(
        wait_outcome(&edge, "upstream_error", 1.0).await,
        1.0,
        "log:\n{}",
        edge.log_text()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Stall
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_ends_with_a_terminal_error_and_outcome_timeout() {
    let s = sim(SimKind::Vllm, |c| c.faults.stall_after_tokens = Some(2)).await;
    let edge = edge_for(&s, "vllm", "timeouts: { first_token: 1s, idle: 1s }\n").await;
    let resp = raw(
        edge.addr,
        &post("/v1/chat/completions", &chat("Qwen/Qwen3-8B", 8)),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    let via = String::from_utf8_lossy(&body_of(&resp)).to_string();
    assert_eq!(sse_tokens(&via), 2, "{via}");
    let cut = via
        .find("data: {\"error\"")
        .unwrap_or_else(|| panic!("no terminal error: {via:?}\nlog:\n{}", edge.log_text()));
    assert_terminal_sse_error(&via[cut..]);
    assert_eq!(
        wait_outcome(&edge, "timeout", 1.0).await,
        1.0,
        "log:\n{}",
        edge.log_text()
    );
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "upstream_error")])
            .await,
        0.0
    );
    // The edge hung up on the engine, which frees the sequence.
    assert!(
        eventually(10, || async { s.stats().streams_aborted == 1 }).await,
        "sim: {:?}",
        s.stats()
    );
}

/// `first_token` bounds only the wait for the first token, `idle` each gap after it: a stall
/// mid-stream is cut at `idle` even when `first_token` is far longer (it used to be cut at the
/// larger of the two), and a slow first token longer than `idle` is still waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_token_and_idle_are_separate_timers() {
    let stalls = sim(SimKind::Vllm, |c| c.faults.stall_after_tokens = Some(2)).await;
    let edge = edge_for(
        &stalls,
        "vllm",
        "timeouts: { first_token: 60s, idle: 300ms }\n",
    )
    .await;
    let started = Instant::now();
    let resp = raw(
        edge.addr,
        &post("/v1/chat/completions", &chat("Qwen/Qwen3-8B", 8)),
    )
    .await;
    let took = started.elapsed();
    let via = String::from_utf8_lossy(&body_of(&resp)).to_string();
    assert_eq!(sse_tokens(&via), 2, "{via}");
    assert!(
        via.contains("data: {\"error\""),
        "no terminal error: {via:?}"
    );
    // Cut by `idle`: far sooner than the 60 s `first_token` (the margin is for busy machines).
    assert!(took < Duration::from_secs(30), "cut after {took:?}");
    assert_eq!(wait_outcome(&edge, "timeout", 1.0).await, 1.0);

    let slow_prefill = sim(SimKind::Vllm, |c| c.prefill = Duration::from_millis(1500)).await;
    let edge = edge_for(
        &slow_prefill,
        "vllm",
        "timeouts: { first_token: 60s, idle: 300ms }\n",
    )
    .await;
    let resp = raw(
        edge.addr,
        &post("/v1/chat/completions", &chat("Qwen/Qwen3-8B", 4)),
    )
    .await;
    let via = String::from_utf8_lossy(&body_of(&resp)).to_string();
    assert_eq!(status_of(&resp), 200, "{via}");
    assert_eq!(sse_tokens(&via), 4, "{via}");
    assert!(via.ends_with("data: [DONE]\n\n"), "{via}");
}

// ---------------------------------------------------------------------------------------------
// 7. Client disconnect
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_aborts_the_engine_stream() {
    let s = sim(SimKind::Vllm, |c| c.tokens_per_second = 20.0).await;
    let edge = edge_for(&s, "vllm", "").await;
    let mut c = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    c.write_all(&post(
        "/v1/chat/completions",
        &chat("Qwen/Qwen3-8B", 10_000),
    ))
    .await
    .expect("write");
    // Read until two tokens arrived, then go away.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while sse_tokens(&String::from_utf8_lossy(&got)) < 2 {
        assert!(
            Instant::now() < deadline,
            "no tokens: {}",
            String::from_utf8_lossy(&got)
        );
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("read timeout")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(status_of(&got), 200);
    drop(c);
    assert!(
        eventually(10, || async { s.stats().streams_aborted == 1 }).await,
        "engine still generating: {:?}\nlog:\n{}",
        s.stats(),
        edge.log_text()
    );
    assert_eq!(s.stats().running, 0);
    assert_eq!(
        wait_outcome(&edge, "client_disconnect", 1.0).await,
        1.0,
        "log:\n{}",
        edge.log_text()
    );
    assert_eq!(edge.metric("okome_streams_total", &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_during_prefill_aborts_the_engine_request() {
    let s = sim(SimKind::Vllm, |c| c.prefill = Duration::from_secs(2)).await;
    let edge = edge_for(&s, "vllm", "").await;
    let mut c = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    c.write_all(&post("/v1/chat/completions", &chat("Qwen/Qwen3-8B", 8)))
        .await
        .expect("write");
    assert!(
        eventually(10, || async { s.stats().running == 1 }).await,
        "request did not reach the engine: {:?}\nlog:\n{}",
        s.stats(),
        edge.log_text()
    );
    drop(c);
    assert!(
        eventually(10, || async { s.stats().streams_aborted == 1 }).await,
        "engine did not see the abort: {:?}\nlog:\n{}",
        s.stats(),
        edge.log_text()
    );
    assert_eq!(s.stats().streams_completed, 0);
}
