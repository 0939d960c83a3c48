//! Mid-stream failover with continuation (`mid_stream_failover: true`): an engine that dies
//! after the first tokens is replaced by another backend of the pool, which continues the
//! answer; the client sees one uninterrupted stream.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{EdgeBuilder, Route, TestEdge};
use common::*;
use okome_sim::{Faults, SimHandle, SimKind};
use serde_json::{json, Value};
use std::net::SocketAddr;

const MODEL: &str = "Qwen/Qwen3-8B";
/// Tokens the dying engine sends before it dies.
const BEFORE: u32 = 3;
/// The answer's length: long enough that the death is mid-way.
const MAX: u32 = 12;

/// A pool of a dying backend and a healthy one; the route has failover on or off.
async fn edge(dying: &SimHandle, good: &SimHandle, failover: bool) -> TestEdge {
    let mut route = Route::to_pool("chat", "vllm").path_prefix("/v1/");
    if failover {
        route = route.set("mid_stream_failover", json!(true));
    }
    EdgeBuilder::new()
        .pool("vllm", "vllm", &[dying.addr(), good.addr()])
        .route(route)
        .start()
        .await
}

fn chat_body(max: u32, extra: &str) -> String {
    format!(
        r#"{{"model":"{MODEL}","stream":true,"stream_options":{{"include_usage":true}},"max_tokens":{max},"messages":[{{"role":"user","content":"hi"}}]{extra}}}"#
    )
}

fn completion_body(max: u32) -> String {
    format!(
        r#"{{"model":"{MODEL}","stream":true,"stream_options":{{"include_usage":true}},"max_tokens":{max},"prompt":"Once upon a time"}}"#
    )
}

/// The `data:` payloads of an SSE body, in order.
fn events(body: &str) -> Vec<&str> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect()
}

/// The text of an SSE body (chat deltas' content, completions' text), the parsed chunks, the
/// usage chunks and the number of `[DONE]`s.
struct Parsed {
    text: String,
    chunks: Vec<Value>,
    usages: Vec<Value>,
    dones: usize,
    errors: usize,
}

fn parse(body: &str) -> Parsed {
    let mut p = Parsed {
        text: String::new(),
        chunks: Vec::new(),
        usages: Vec::new(),
        dones: 0,
        errors: 0,
    };
    for e in events(body) {
        if e == "[DONE]" {
            p.dones += 1;
            continue;
        }
        let v: Value = serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}"));
        if v.get("error").is_some() {
            p.errors += 1;
            continue;
        }
        if let Some(c) = v["choices"].get(0) {
            let piece = c["delta"]["content"].as_str().or(c["text"].as_str());
            p.text.push_str(piece.unwrap_or(""));
        }
        if !v["usage"].is_null() {
            p.usages.push(v["usage"].clone());
        }
        p.chunks.push(v);
    }
    p
}

/// Sends `body` to `path` through the edge until one request reached `dying` (the pool picks
/// one of two backends at random); returns that answer's body.
async fn through_dying(edge: &TestEdge, dying: &SimHandle, path: &str, body: &str) -> String {
    through_dying_counted(edge, dying, path, body).await.0
}

/// [`through_dying`], also returning the number of requests sent.
async fn through_dying_counted(
    edge: &TestEdge,
    dying: &SimHandle,
    path: &str,
    body: &str,
) -> (String, usize) {
    for sent in 1..=40 {
        let before = dying.stats().requests;
        let resp = raw(edge.addr, &post(path, body)).await;
        assert_eq!(status_of(&resp), 200, "{}", String::from_utf8_lossy(&resp));
        let out = String::from_utf8_lossy(&body_of(&resp)).to_string();
        if dying.stats().requests > before {
            return (out, sent);
        }
    }
    panic!("40 requests and none reached the dying backend");
}

/// What the healthy engine answers directly, uninterrupted, and what the dying one sends before
/// it dies.
async fn references(
    dying: &SimHandle,
    good: &SimHandle,
    path: &str,
    body: &str,
) -> (String, String) {
    let whole =
        String::from_utf8_lossy(&body_of(&raw(good.addr(), &post(path, body)).await)).to_string();
    let cut =
        String::from_utf8_lossy(&body_of(&raw(dying.addr(), &post(path, body)).await)).to_string();
    (whole, cut)
}

async fn dying_and_good(faults: Faults) -> (SimHandle, SimHandle) {
    let dying = sim(SimKind::Vllm, |c| c.faults = faults).await;
    let good = sim(SimKind::Vllm, |_| {}).await;
    (dying, good)
}

fn drop_after() -> Faults {
    Faults {
        drop_after_tokens: Some(BEFORE),
        ..Faults::default()
    }
}

/// Asserts the spliced stream: the dying engine's bytes first (same tokens, byte for byte),
/// then the rest of the uninterrupted answer, one id/model/created throughout, one usage chunk
/// counting every token, no error, exactly one `[DONE]` at the very end.
fn assert_spliced(via: &str, whole: &str, cut: &str) {
    let (v, w, c) = (parse(via), parse(whole), parse(cut));
    assert!(c.dones == 0 && c.errors == 0 && !c.text.is_empty(), "{cut}");
    // Ids and clocks differ per request: compared normalized.
    assert!(
        normalize(via.as_bytes()).starts_with(&normalize(cut.as_bytes())),
        "the client's stream must start with the dying engine's bytes:\nvia:\n{via}\ncut:\n{cut}"
    );
    assert_eq!(v.text, w.text, "via:\n{via}\nwhole:\n{whole}");
    assert!(v.text.starts_with(&c.text) && v.text.len() > c.text.len());
    assert_eq!(v.errors, 0, "{via}");
    assert_eq!(v.dones, 1, "{via}");
    assert!(via.ends_with("data: [DONE]\n\n"), "{via:?}");
    let first = &v.chunks[0];
    for ch in &v.chunks {
        for k in ["id", "model", "created"] {
            assert_eq!(ch[k], first[k], "{k} differs:\n{via}");
        }
    }
    assert_eq!(v.usages.len(), 1, "{via}");
    let (u, uw) = (&v.usages[0], &w.usages[0]);
    assert_eq!(u["completion_tokens"], uw["completion_tokens"], "{via}");
    let (p, n) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!(u["total_tokens"].as_u64(), Some(p + n), "{via}");
    // The usage chunk is the last one before [DONE].
    assert!(!v.chunks.last().unwrap()["usage"].is_null(), "{via}");
}

async fn assert_counted(edge: &TestEdge, reason: &str, outcome: &str) {
    assert_eq!(
        edge.metric(
            "okome_failover_total",
            &[("reason", reason), ("outcome", outcome)]
        )
        .await,
        1.0,
        "log:\n{}",
        edge.log_text()
    );
    assert_eq!(edge.metric("okome_failover_total", &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_killed_mid_stream_continues_on_the_other_backend() {
    let (dying, good) = dying_and_good(drop_after()).await;
    let edge = edge(&dying, &good, true).await;
    let body = chat_body(MAX, "");
    let (whole, cut) = references(&dying, &good, "/v1/chat/completions", &body).await;
    assert_eq!(sse_tokens(&cut), BEFORE as usize, "{cut}");
    let (via, sent) = through_dying_counted(&edge, &dying, "/v1/chat/completions", &body).await;
    assert_spliced(&via, &whole, &cut);
    assert_counted(&edge, "reset", "continued").await;
    assert_eq!(
        edge.metric("okome_failover_gap_seconds_count", &[]).await,
        1.0
    );
    // The client got a whole answer: the stream counts as completed, not as failed.
    assert!(
        eventually(10, || async {
            edge.metric("okome_streams_total", &[("outcome", "completed")])
                .await
                == sent as f64
        })
        .await,
        "log:\n{}",
        edge.log_text()
    );
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "upstream_error")])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_killed_mid_stream_continues_on_the_other_backend() {
    let (dying, good) = dying_and_good(drop_after()).await;
    let edge = edge(&dying, &good, true).await;
    let body = completion_body(MAX);
    let (whole, cut) = references(&dying, &good, "/v1/completions", &body).await;
    let via = through_dying(&edge, &dying, "/v1/completions", &body).await;
    assert_spliced(&via, &whole, &cut);
    assert_counted(&edge, "reset", "continued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_error_event_is_not_relayed_and_the_answer_continues() {
    let (dying, good) = dying_and_good(Faults {
        error_after_tokens: Some(BEFORE),
        ..Faults::default()
    })
    .await;
    let edge = edge(&dying, &good, true).await;
    let body = chat_body(MAX, "");
    let (whole, cut) = references(&dying, &good, "/v1/chat/completions", &body).await;
    // The engine's own stream: tokens, its error event, its [DONE].
    let error_at = cut
        .find("data: {\"error\"")
        .unwrap_or_else(|| panic!("{cut}"));
    let via = through_dying(&edge, &dying, "/v1/chat/completions", &body).await;
    assert_spliced(&via, &whole, &cut[..error_at]);
    assert_counted(&edge, "in_band_error", "continued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_request_gets_the_terminal_error_event() {
    let (dying, good) = dying_and_good(drop_after()).await;
    let edge = edge(&dying, &good, true).await;
    let tools = r#","tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{}}}}]"#;
    let body = chat_body(MAX, tools);
    let via = through_dying(&edge, &dying, "/v1/chat/completions", &body).await;
    let v = parse(&via);
    assert_eq!(v.errors, 1, "{via}");
    assert_eq!(v.dones, 1, "{via}");
    assert!(via.ends_with("data: [DONE]\n\n"), "{via:?}");
    assert_counted(&edge, "reset", "not_eligible").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_off_keeps_the_terminal_error_event() {
    let (dying, good) = dying_and_good(drop_after()).await;
    let edge = edge(&dying, &good, false).await;
    let body = chat_body(MAX, "");
    let via = through_dying(&edge, &dying, "/v1/chat/completions", &body).await;
    let v = parse(&via);
    assert_eq!(sse_tokens(&via), BEFORE as usize, "{via}");
    assert_eq!((v.errors, v.dones), (1, 1), "{via}");
    assert_eq!(edge.metric("okome_failover_total", &[]).await, 0.0);
}

/// The official OpenAI Python client reads the spliced stream as one clean answer (it raises
/// on an error event) with one id and one usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_sees_one_uninterrupted_answer() {
    for mode in ["chat", "completions"] {
        let (dying, good) = dying_and_good(drop_after()).await;
        let edge = edge(&dying, &good, true).await;
        let max = MAX.to_string();
        let run = |addr: SocketAddr| {
            let max = max.clone();
            async move {
                let out = python::run(
                    "failover_stream.py",
                    &[&format!("http://{addr}/v1"), mode, MODEL, &max],
                )
                .await;
                serde_json::from_slice::<Value>(&out.stdout).unwrap()
            }
        };
        let whole = run(good.addr()).await;
        let mut via = Value::Null;
        for _ in 0..40 {
            let before = dying.stats().requests;
            via = run(edge.addr).await;
            if dying.stats().requests > before {
                break;
            }
        }
        assert_counted(&edge, "reset", "continued").await;
        assert_eq!(via["text"], whole["text"], "{mode}: {via}");
        for k in ["ids", "models", "created"] {
            let list = via[k].as_array().unwrap();
            assert!(list.iter().all(|x| *x == list[0]), "{mode} {k}: {via}");
        }
        assert_eq!(via["usages"].as_array().map(Vec::len), Some(1), "{via}");
        assert_eq!(
            via["usages"][0]["completion_tokens"], whole["usages"][0]["completion_tokens"],
            "{mode}: {via}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_end_without_done_continues() {
    let (dying, good) = dying_and_good(Faults {
        end_after_tokens: Some(BEFORE),
        ..Faults::default()
    })
    .await;
    let edge = edge(&dying, &good, true).await;
    let body = chat_body(MAX, "");
    let (whole, cut) = references(&dying, &good, "/v1/chat/completions", &body).await;
    let via = through_dying(&edge, &dying, "/v1/chat/completions", &body).await;
    assert_spliced(&via, &whole, &cut);
    assert_counted(&edge, "eof", "continued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_engine_is_replaced_after_the_idle_timeout() {
    let (dying, good) = dying_and_good(Faults {
        stall_after_tokens: Some(BEFORE),
        ..Faults::default()
    })
    .await;
    let edge = EdgeBuilder::new()
        .pool("vllm", "vllm", &[dying.addr(), good.addr()])
        .route(
            Route::to_pool("chat", "vllm")
                .path_prefix("/v1/")
                .set("mid_stream_failover", json!(true)),
        )
        .section("timeouts", json!({"idle": "300ms"}))
        .start()
        .await;
    let body = chat_body(MAX, "");
    let whole = String::from_utf8_lossy(&body_of(
        &raw(good.addr(), &post("/v1/chat/completions", &body)).await,
    ))
    .to_string();
    let via = through_dying(&edge, &dying, "/v1/chat/completions", &body).await;
    let (v, w) = (parse(&via), parse(&whole));
    assert_eq!(v.text, w.text, "{via}");
    assert_eq!((v.errors, v.dones, v.usages.len()), (0, 1, 1), "{via}");
    assert_counted(&edge, "idle", "continued").await;
    // The stalled engine was hung up on, which frees its sequence.
    assert!(
        eventually(10, || async { dying.stats().streams_aborted == 1 }).await,
        "{:?}",
        dying.stats()
    );
}

/// Reads a streamed answer as it comes; `stop_after` tokens end the read (the client hangs up).
/// Returns the arrival time of each token event and the bytes.
async fn read_tokens(
    addr: SocketAddr,
    req: &[u8],
    stop_after: usize,
) -> (Vec<std::time::Instant>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let (mut out, mut times, mut buf) = (Vec::new(), Vec::new(), [0u8; 16384]);
    let count = |b: &[u8]| {
        let text = String::from_utf8_lossy(b);
        text.matches("\"content\":\"").count() - text.matches("\"content\":\"\"").count()
            + text.matches("\"text\":\"").count()
            - text.matches("\"text\":\"\"").count()
    };
    while times.len() < stop_after {
        let n = match tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut buf))
            .await
        {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        let now = std::time::Instant::now();
        let before = count(&out);
        out.extend_from_slice(&buf[..n]);
        for _ in before..count(&out) {
            times.push(now);
        }
    }
    (times, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_during_the_continuation_aborts_it() {
    let dying = sim(SimKind::Vllm, |c| c.faults = drop_after()).await;
    // A slow continuation: the client leaves while it is being generated.
    let good = sim(SimKind::Vllm, |c| c.tokens_per_second = 20.0).await;
    let edge = edge(&dying, &good, true).await;
    let req = post("/v1/chat/completions", &chat_body(60, ""));
    for _ in 0..40 {
        let (requests, aborted) = (dying.stats().requests, good.stats().streams_aborted);
        let (times, out) = read_tokens(edge.addr, &req, BEFORE as usize + 2).await;
        assert_eq!(
            times.len(),
            BEFORE as usize + 2,
            "{}",
            String::from_utf8_lossy(&out)
        );
        // Hung up (dropped) here; whichever backend streamed last must see the abort.
        assert!(
            eventually(10, || async { good.stats().streams_aborted == aborted + 1 }).await,
            "{:?}",
            good.stats()
        );
        if dying.stats().requests > requests {
            assert_counted(&edge, "reset", "failed").await;
            assert!(
                eventually(10, || async {
                    edge.metric("okome_streams_total", &[("outcome", "client_disconnect")])
                        .await
                        >= 1.0
                })
                .await
            );
            return;
        }
    }
    panic!("40 requests and none reached the dying backend");
}

/// A client that leaves while the continuation has not produced a token yet aborts it then,
/// not at its first token: here the continuing engine never sends one (it stalls before its
/// first token), so only the client's hang-up can end it before the edge's first-token timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_before_the_continuations_first_token_aborts_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dying = sim(SimKind::Vllm, |c| c.faults = drop_after()).await;
    let silent = sim(SimKind::Vllm, |c| {
        c.faults = Faults {
            stall_after_tokens: Some(0),
            ..Faults::default()
        }
    })
    .await;
    let edge = edge(&dying, &silent, true).await;
    let req = post("/v1/chat/completions", &chat_body(MAX, ""));
    for _ in 0..40 {
        let (d0, s0) = (dying.stats().requests, silent.stats().requests);
        let aborted = silent.stats().streams_aborted;
        let mut conn = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
        conn.write_all(&req).await.unwrap();
        let arrived = || async { dying.stats().requests > d0 || silent.stats().requests > s0 };
        assert!(eventually(10, arrived).await);
        if dying.stats().requests == d0 {
            // Landed on the silent backend directly: hang up, let it see the abort, retry.
            drop(conn);
            assert!(eventually(10, || async { silent.stats().streams_aborted > aborted }).await);
            continue;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while sse_tokens(&String::from_utf8_lossy(&got)) < BEFORE as usize {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        // The continuation reached the silent backend; the client leaves before any token.
        assert!(eventually(10, || async { silent.stats().requests > s0 }).await);
        drop(conn);
        assert!(
            eventually(20, || async { silent.stats().streams_aborted > aborted }).await,
            "the continuation was not aborted: {:?}",
            silent.stats()
        );
        assert!(
            eventually(10, || async {
                edge.metric("okome_streams_total", &[("outcome", "client_disconnect")])
                    .await
                    >= 1.0
            })
            .await
        );
        return;
    }
    panic!("40 requests and none reached the dying backend");
}

/// The failover gap: engine death → the next token at the client. Printed (run with
/// `--nocapture`), not asserted: the test checks the failovers happened. Measured with the
/// continuing engine's prefill at 5 ms (the harness default) and at 0 (the edge's own share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_gap_is_measured() {
    for prefill_ms in [5, 0] {
        measure_gap(prefill_ms).await;
    }
}

async fn measure_gap(prefill_ms: u64) {
    let runs = 10;
    let mut client_gaps = Vec::new();
    let mut normal_gaps = Vec::new();
    let (mut sum, mut count) = (0.0, 0.0);
    for _ in 0..runs {
        let dying = sim(SimKind::Vllm, |c| c.faults = drop_after()).await;
        let good = sim(SimKind::Vllm, |c| {
            c.prefill = std::time::Duration::from_millis(prefill_ms)
        })
        .await;
        let edge = edge(&dying, &good, true).await;
        let req = post("/v1/chat/completions", &chat_body(MAX, ""));
        loop {
            let before = dying.stats().requests;
            let (times, _) = read_tokens(edge.addr, &req, MAX as usize).await;
            assert_eq!(times.len(), MAX as usize);
            if dying.stats().requests > before {
                let b = BEFORE as usize;
                client_gaps.push(times[b].duration_since(times[b - 1]));
                normal_gaps.push(times[b - 1].duration_since(times[b - 2]));
                break;
            }
        }
        sum += edge.metric("okome_failover_gap_seconds_sum", &[]).await;
        count += edge.metric("okome_failover_gap_seconds_count", &[]).await;
    }
    assert_eq!(count, runs as f64);
    let ms = |d: &std::time::Duration| d.as_secs_f64() * 1000.0;
    let mut c: Vec<f64> = client_gaps.iter().map(ms).collect();
    c.sort_by(f64::total_cmp);
    let n: f64 = normal_gaps.iter().map(ms).sum::<f64>() / runs as f64;
    eprintln!(
        "failover gap over {runs} runs (engine 200 tok/s, continuation prefill {prefill_ms} ms): \
         okome_failover_gap_seconds mean {:.2} ms; client gap between the last token before \
         the death and the first after: median {:.2} ms, max {:.2} ms (normal inter-token gap \
         {n:.2} ms)",
        sum / count * 1000.0,
        c[c.len() / 2],
        c[c.len() - 1],
    );
}

/// The continuation is an upstream request like any other: the client's credentials stay at the
/// edge, the pool's own key goes along, and so do the request id and the forwarding headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_continuation_follows_the_upstream_header_policy() {
    let key = |c: &mut okome_sim::SimConfig| c.api_key = Some("engine-secret".into());
    let dying = sim(SimKind::Vllm, |c| {
        key(c);
        c.faults = drop_after();
    })
    .await;
    let good = sim(SimKind::Vllm, key).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("vllm.key");
    std::fs::write(&key_file, "engine-secret\n").unwrap();
    let edge = EdgeBuilder::new()
        .pool_with(
            "vllm",
            "vllm",
            &[dying.addr(), good.addr()],
            json!({"api_key": {"file": key_file}}),
        )
        .route(
            Route::to_pool("chat", "vllm")
                .path_prefix("/v1/")
                .set("mid_stream_failover", json!(true)),
        )
        .start()
        .await;
    let body = chat_body(MAX, "");
    for n in 0..40 {
        let id = format!("failover-{n}");
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Authorization: Bearer client-secret\r\nx-api-key: client-key\r\nx-request-id: {id}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let before = dying.stats().requests;
        let resp = raw(edge.addr, req.as_bytes()).await;
        assert_eq!(status_of(&resp), 200, "{}", String::from_utf8_lossy(&resp));
        if dying.stats().requests == before {
            continue;
        }
        let via = String::from_utf8_lossy(&body_of(&resp)).to_string();
        assert_eq!((parse(&via).errors, parse(&via).dones), (0, 1), "{via}");
        assert_counted(&edge, "reset", "continued").await;
        let st = good.stats();
        assert_eq!(st.last_request_id.as_deref(), Some(id.as_str()));
        assert_eq!(
            st.last_credentials,
            vec!["authorization: Bearer engine-secret".to_owned()]
        );
        assert!(
            st.last_forwarded
                .contains(&"x-forwarded-for: 127.0.0.1".to_owned()),
            "{:?}",
            st.last_forwarded
        );
        return;
    }
    panic!("40 requests and none reached the dying backend");
}

/// At most one failover per stream: a continuation that dies too ends the stream with the
/// terminal error event, after every token that reached the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_that_dies_too_ends_with_the_terminal_error() {
    let (a, b) = dying_and_good(drop_after()).await;
    b.set_faults(drop_after());
    let edge = edge(&a, &b, true).await;
    let resp = raw(
        edge.addr,
        &post("/v1/chat/completions", &chat_body(MAX, "")),
    )
    .await;
    assert_eq!(status_of(&resp), 200);
    let via = String::from_utf8_lossy(&body_of(&resp)).to_string();
    let v = parse(&via);
    assert_eq!(sse_tokens(&via), 2 * BEFORE as usize, "{via}");
    assert_eq!((v.errors, v.dones, v.usages.len()), (1, 1, 0), "{via}");
    assert!(via.ends_with("data: [DONE]\n\n"), "{via:?}");
    assert_counted(&edge, "reset", "failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_another_backend_ends_with_the_terminal_error() {
    let dying = sim(SimKind::Vllm, |c| c.faults = drop_after()).await;
    let edge = EdgeBuilder::new()
        .pool("vllm", "vllm", &[dying.addr()])
        .route(
            Route::to_pool("chat", "vllm")
                .path_prefix("/v1/")
                .set("mid_stream_failover", json!(true)),
        )
        .start()
        .await;
    let resp = raw(
        edge.addr,
        &post("/v1/chat/completions", &chat_body(MAX, "")),
    )
    .await;
    let via = String::from_utf8_lossy(&body_of(&resp)).to_string();
    let v = parse(&via);
    assert_eq!(sse_tokens(&via), BEFORE as usize, "{via}");
    assert_eq!((v.errors, v.dones), (1, 1), "{via}");
    assert_counted(&edge, "reset", "failed").await;
}

/// On a route that also reaches an Ollama pool, that pool's streams are not continued (Ollama
/// takes no continuation): they end with the terminal error event as before, uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_other_pools_of_the_route_end_as_before() {
    let v = sim(SimKind::Vllm, |_| {}).await;
    let o1 = sim(SimKind::Ollama, |c| c.faults = drop_after()).await;
    let o2 = sim(SimKind::Ollama, |_| {}).await;
    let edge = EdgeBuilder::new()
        .pool("vllm", "vllm", &[v.addr()])
        .pool("ollama", "ollama", &[o1.addr(), o2.addr()])
        .route(
            Route::new("openai")
                .path_prefix("/v1/")
                .set("pools", json!(["vllm", "ollama"]))
                .set("mid_stream_failover", json!(true)),
        )
        .start()
        .await;
    let body = r#"{"model":"llama3.2","stream":true,"max_tokens":12,"messages":[{"role":"user","content":"hello"}]}"#;
    let ok = eventually(10, || async {
        status_of(&raw(edge.addr, &post("/v1/chat/completions", body)).await) == 200
    })
    .await;
    assert!(ok, "the Ollama pool's models were never learned");
    let via = through_dying(&edge, &o1, "/v1/chat/completions", body).await;
    let p = parse(&via);
    assert_eq!((p.errors, p.dones), (1, 1), "{via}");
    // Ollama's first chunk carries the role and the first token.
    let tokens = p
        .chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert_eq!(tokens, BEFORE as usize, "{via}");
    assert_eq!(edge.metric("okome_failover_total", &[]).await, 0.0);
}
