//! Resumable streams at their edges, each a reproduction of a bug found in review: a cancel
//! or a grace expiry is not a backend failure, a reader following a cancelled stream gets its
//! terminal event, a huge cursor is a bad cursor, and a client that leaves during a failover's
//! continuation leaves a record that says it was cut.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{EdgeBuilder, Route, TestEdge};
use common::*;
use futures::StreamExt;
use okome_sim::{SimConfig, SimHandle, SimKind};
use serde_json::{json, Value};
use std::time::Duration;

const QWEN: &str = "Qwen/Qwen3-8B";
const KEY: &str = "okome-resume-key-owner";
const STREAM_ID: &str = "x-okome-stream-id";

async fn engine(tps: f64) -> SimHandle {
    sim(SimKind::Vllm, |c: &mut SimConfig| c.tokens_per_second = tps).await
}

fn builder(sim: &SimHandle, resumable: Value) -> EdgeBuilder {
    EdgeBuilder::new()
        .pool("vllm", "vllm", &[sim.addr()])
        .route(Route::to_pool("r", "vllm").set("resumable", resumable))
}

fn chat_body(max: u32) -> String {
    json!({"model": QWEN, "max_tokens": max, "stream": true,
           "messages": [{"role": "user", "content": "tell me a story"}]})
    .to_string()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn start(edge: &TestEdge, body: &str) -> reqwest::RequestBuilder {
    client()
        .post(edge.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.to_owned())
}

/// Sends, reads `n` events, returns (id, response stream kept open, bytes).
async fn open_stream(
    edge: &TestEdge,
    body: &str,
    n: usize,
) -> (
    String,
    impl futures::Stream<Item = reqwest::Result<bytes::Bytes>>,
    Vec<u8>,
) {
    let resp = start(edge, body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()[STREAM_ID].to_str().unwrap().to_owned();
    let mut s = Box::pin(resp.bytes_stream());
    let mut got = Vec::new();
    while String::from_utf8_lossy(&got).matches("\n\n").count() < n {
        got.extend_from_slice(&s.next().await.unwrap().unwrap());
    }
    (id, s, got)
}

async fn cancel(edge: &TestEdge, id: &str) -> u16 {
    let url = edge.url(&format!("/v1/okome/streams/{id}"));
    let r = client().delete(url).bearer_auth(KEY).send().await.unwrap();
    r.status().as_u16()
}

fn last_id(b: &[u8]) -> u64 {
    let t = String::from_utf8_lossy(b);
    t.lines()
        .rev()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// Three cancels in a row must not eject a healthy backend (default `ejection.failures: 3`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_do_not_eject_a_healthy_backend() {
    let sim = engine(20.0).await;
    let edge = builder(&sim, json!(true)).start().await;
    let body = chat_body(400);
    let mut keep = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, s, _) = open_stream(&edge, &body, 2).await;
        ids.push(id);
        keep.push(s);
    }
    for id in &ids {
        assert_eq!(cancel(&edge, id).await, 200);
    }
    for s in keep.iter_mut() {
        let mut s = std::pin::Pin::new(s);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = s.next().await {}
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ejections = edge.metric("okome_backend_ejections_total", &[]).await;
    let healthy = edge.metric("okome_backend_healthy", &[]).await;
    let (status, _) = {
        let r = start(&edge, &chat_body(5)).send().await.unwrap();
        (r.status().as_u16(), r.bytes().await)
    };
    eprintln!("cancels: ejections={ejections} healthy={healthy} next_request_status={status}");
    assert_eq!(
        ejections, 0.0,
        "cancels ejected the backend; next request got {status}"
    );
}

/// Nor three grace expiries (a mass client drop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_expiries_do_not_eject_a_healthy_backend() {
    let sim = engine(20.0).await;
    let edge = builder(&sim, json!({"grace": "1s"})).start().await;
    let body = chat_body(400);
    for _ in 0..3 {
        let (_id, s, _) = open_stream(&edge, &body, 2).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ejections = edge.metric("okome_backend_ejections_total", &[]).await;
    let expired = edge.metric("okome_stream_grace_expired_total", &[]).await;
    eprintln!("expiries: expired={expired} ejections={ejections}");
    assert_eq!(ejections, 0.0, "expiries ejected the backend");
}

/// A resume following the live tail when the stream is cancelled ends with the terminal
/// "cancelled" event, not cleanly (it is pushed after the record is marked ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_at_cancel_time_gets_the_terminal_event() {
    let sim = engine(20.0).await;
    let edge = builder(&sim, json!({"grace": "30s"})).start().await;
    let body = chat_body(400);
    let mut missed = 0;
    let rounds = 8;
    for _ in 0..rounds {
        let (id, s, first) = open_stream(&edge, &body, 2).await;
        drop(s);
        let had = last_id(&first);
        let url = edge.url(&format!("/v1/okome/streams/{id}?cursor={had}"));
        let resp = client().get(url).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut r = Box::pin(resp.bytes_stream());
        let mut got = r.next().await.unwrap().unwrap().to_vec();
        assert_eq!(cancel(&edge, &id).await, 200);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(c)) = r.next().await {
                got.extend_from_slice(&c);
            }
        })
        .await;
        if !String::from_utf8_lossy(&got).contains("cancelled") {
            missed += 1;
        }
    }
    eprintln!("follower: missed the terminal event {missed}/{rounds}");
    assert_eq!(missed, 0);
}

/// `?cursor=u64::MAX` once overflowed `cursor + 1` (a panic in debug builds, 410 in release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_cursor_is_a_bad_cursor() {
    let sim = engine(400.0).await;
    let edge = builder(&sim, json!(true)).start().await;
    let resp = start(&edge, &chat_body(5)).send().await.unwrap();
    let id = resp.headers()[STREAM_ID].to_str().unwrap().to_owned();
    let _ = resp.bytes().await;
    let url = edge.url(&format!("/v1/okome/streams/{id}?cursor={}", u64::MAX));
    let r = client().get(url).bearer_auth(KEY).send().await;
    let got = match r {
        Ok(r) => format!("status {}", r.status()),
        Err(e) => format!("error {e}"),
    };
    eprintln!("cursor: {got}");
    assert_eq!(got, "status 400 Bad Request");
}

/// A client that leaves during a mid-stream failover's continuation stops it (the continuation
/// is not detached); the record must then end with the terminal error event, not read as a
/// whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_during_a_continuation_leaves_a_record_that_says_it_was_cut() {
    use okome_sim::Faults;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dying = sim(SimKind::Vllm, |c| {
        c.faults = Faults {
            drop_after_tokens: Some(3),
            ..Faults::default()
        }
    })
    .await;
    let good = sim(SimKind::Vllm, |c| c.tokens_per_second = 20.0).await;
    let edge = EdgeBuilder::new()
        .pool("vllm", "vllm", &[dying.addr(), good.addr()])
        .route(
            Route::to_pool("chat", "vllm")
                .path_prefix("/v1/")
                .set("mid_stream_failover", json!(true))
                .set("resumable", json!({"grace": "30s"})),
        )
        .start()
        .await;
    let body = json!({"model": QWEN, "max_tokens": 60, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let req = post("/v1/chat/completions", &body);
    for _ in 0..20 {
        let before = dying.stats().requests;
        let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        let (mut out, mut buf) = (Vec::new(), [0u8; 16384]);
        // Read until 6 content events (3 from the dying engine, then the continuation's).
        while String::from_utf8_lossy(&out)
            .matches("\"content\":\"")
            .count()
            < 7
        {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        drop(s);
        let id = header_of(&out, "x-okome-stream-id").expect("id");
        if dying.stats().requests == before {
            let u = edge.url(&format!("/v1/okome/streams/{id}"));
            client().delete(u).send().await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let detached = edge.metric("okome_resumable_streams_detached", &[]).await;
        let url = edge.url(&format!("/v1/okome/streams/{id}?cursor=0"));
        let r = client().get(url).send().await.unwrap();
        let status = r.status().as_u16();
        let text = String::from_utf8_lossy(&r.bytes().await.unwrap()).to_string();
        let tail: String = text
            .chars()
            .rev()
            .take(160)
            .collect::<String>()
            .chars()
            .rev()
            .collect();
        eprintln!(
            "failover-gone: detached={detached} resume={status} done={} error={} tail={tail:?}",
            text.contains("[DONE]"),
            text.contains("\"error\"")
        );
        assert!(
            text.contains("[DONE]") || text.contains("\"error\""),
            "silently truncated"
        );
        return;
    }
    panic!("never reached the dying backend");
}
