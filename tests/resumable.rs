//! Resumable streams (`routes[].resumable`) over real sockets: clients that drop mid-answer and
//! resume (the official Python clients, `Last-Event-ID`, `?cursor=`, a re-POST), NDJSON by line
//! count, the grace window, the buffer and node budget limits, cancels, and the metrics that
//! count them. The simulated engines answer the same prompt with the same text, so a resumed
//! answer is compared with an uninterrupted one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{EdgeBuilder, Route, TestEdge};
use common::*;
use okome::control::{self, hash_key, ControlPolicy, PolicyStore, YamlStore};
use okome_sim::{SimConfig, SimHandle, SimKind};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const QWEN: &str = "Qwen/Qwen3-8B";
const LLAMA: &str = "llama3.2:latest";
const KEY: &str = "okome-resume-key-owner";
const OTHER: &str = "okome-resume-key-other";
const STREAM_ID: &str = "x-okome-stream-id";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A simulator of `kind` producing `tps` tokens a second.
async fn engine(kind: SimKind, tps: f64) -> SimHandle {
    sim(kind, |c: &mut SimConfig| c.tokens_per_second = tps).await
}

/// An edge with one route (every path) to `sim`'s pool, `resumable` as given.
fn builder(sim: &SimHandle, kind: &str, resumable: Value) -> EdgeBuilder {
    EdgeBuilder::new()
        .pool(kind, kind, &[sim.addr()])
        .route(Route::to_pool("r", kind).set("resumable", resumable))
}

/// The chat request the Python client sends too (same prompt: same answer from the sim).
fn chat_body(max: u32) -> String {
    json!({"model": QWEN, "max_tokens": max, "stream": true,
           "messages": [{"role": "user", "content": "tell me a story"}]})
    .to_string()
}

/// One SSE event: its `id:` and its `data:`.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: Option<u64>,
    data: String,
}

/// The whole SSE events of `body` (an unfinished last one is left out).
fn sse(body: &[u8]) -> Vec<Event> {
    let text = String::from_utf8_lossy(body);
    let whole = text.rfind("\n\n").map_or("", |end| &text[..end]);
    whole
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let field = |name: &str| e.lines().find_map(|l| l.strip_prefix(name));
            Event {
                id: field("id: ").map(|n| n.parse().unwrap_or_else(|_| panic!("id {e:?}"))),
                data: field("data: ").unwrap_or_default().to_owned(),
            }
        })
        .collect()
}

/// The answer's text: the chat deltas' content (the NDJSON lines' message content).
fn text_of<'a>(datas: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = String::new();
    for d in datas.into_iter().filter(|d| d.starts_with('{')) {
        let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        let piece = v["choices"][0]["delta"]["content"].as_str();
        text.push_str(piece.or(v["message"]["content"].as_str()).unwrap_or(""));
    }
    text
}

/// Asserts the events are numbered `from`, `from + 1`, … with no gap and no repeat.
fn assert_numbered(events: &[Event], from: u64, what: &str) {
    let ids: Vec<Option<u64>> = events.iter().map(|e| e.id).collect();
    let want: Vec<Option<u64>> = (from..from + events.len() as u64).map(Some).collect();
    assert_eq!(ids, want, "{what}: event ids");
}

/// How many `[DONE]` events there are.
fn dones(events: &[Event]) -> usize {
    events.iter().filter(|e| e.data == "[DONE]").count()
}

/// What the engine answers `body` straight, uninterrupted.
async fn reference(sim: &SimHandle, path: &str, body: &str) -> Vec<u8> {
    reference_typed(sim, path, body).await.1
}

/// [`reference`] and its content type.
async fn reference_typed(sim: &SimHandle, path: &str, body: &str) -> (String, Vec<u8>) {
    let resp = raw(sim.addr(), &post(path, body)).await;
    assert_eq!(status_of(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    (header_of(&resp, "content-type").unwrap(), body_of(&resp))
}

/// A client of its own.
fn client() -> reqwest::Client {
    // One connection per client: dropping a half-read response closes exactly that stream.
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A JSON POST to the edge as `key`.
fn start(edge: &TestEdge, path: &str, body: &str, key: &str) -> reqwest::RequestBuilder {
    client()
        .post(edge.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned())
}

/// Sends `req`, reads until `n` whole events (`sep`: `"\n\n"` for SSE, `"\n"` for NDJSON) came,
/// and drops the connection. Returns the stream id and the whole events read (maybe more than
/// `n` when they came in one read).
async fn read_then_drop(req: reqwest::RequestBuilder, n: usize, sep: &str) -> (String, Vec<u8>) {
    use futures::StreamExt;
    let resp = req.send().await.expect("send");
    assert_eq!(resp.status(), 200);
    let id = resp.headers().get(STREAM_ID).expect("a stream id").to_str();
    let id = id.unwrap().to_owned();
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    while String::from_utf8_lossy(&body).matches(sep).count() < n {
        let chunk = chunks
            .next()
            .await
            .expect("the stream ended early")
            .unwrap();
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&body);
    let whole = text.rfind(sep).unwrap() + sep.len();
    body.truncate(whole);
    (id, body)
}

/// Sends `req` and reads the answer whole: status, stream id header, body.
async fn call(req: reqwest::RequestBuilder) -> (u16, Option<String>, Vec<u8>) {
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get(STREAM_ID)
        .map(|v| v.to_str().unwrap().to_owned());
    (status, id, resp.bytes().await.expect("body").to_vec())
}

/// `GET /v1/okome/streams/{id}?cursor=…` as `key`.
async fn resume(edge: &TestEdge, id: &str, cursor: &str, key: &str) -> (u16, Vec<u8>) {
    let url = edge.url(&format!("/v1/okome/streams/{id}?cursor={cursor}"));
    let (status, _, body) = call(client().get(url).bearer_auth(key)).await;
    (status, body)
}

/// `DELETE /v1/okome/streams/{id}` as `key`.
async fn cancel(edge: &TestEdge, id: &str, key: &str) -> (u16, Vec<u8>) {
    let url = edge.url(&format!("/v1/okome/streams/{id}"));
    let (status, _, body) = call(client().delete(url).bearer_auth(key)).await;
    (status, body)
}

/// `okome_stream_resumes_total{result}`.
async fn resumes(edge: &TestEdge, result: &str) -> f64 {
    edge.metric("okome_stream_resumes_total", &[("result", result)])
        .await
}

/// Polls the sim until `f` holds of its stats (up to `secs`).
async fn sim_until(sim: &SimHandle, secs: u64, f: impl Fn(&okome_sim::SimStats) -> bool) -> bool {
    eventually(secs, || {
        let ok = f(&sim.stats());
        async move { ok }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The Python clients drop and resume
// ---------------------------------------------------------------------------------------------

/// httpx (GET with `Last-Event-ID`, `?cursor=`, re-POST) and the official `openai` client drop
/// a chat stream half-way and resume it: the text is the uninterrupted answer's, every event id
/// from 1 to the last comes exactly once, one `[DONE]`, and the engine ran the answer once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_resume_a_dropped_chat_stream() {
    const MAX: u32 = 40;
    const FIRST: usize = 12;
    let sim = engine(SimKind::Vllm, 40.0).await;
    let edge = builder(&sim, "vllm", json!(true)).start().await;
    let body = chat_body(MAX);
    let (ct, whole) = reference_typed(&sim, "/v1/chat/completions", &body).await;
    let again = reference(&sim, "/v1/chat/completions", &body).await;
    let want = text_of(sse(&whole).iter().map(|e| e.data.as_str()));
    assert_eq!(want, text_of(sse(&again).iter().map(|e| e.data.as_str())));
    assert_eq!(sse_tokens(&String::from_utf8_lossy(&whole)), MAX as usize);
    let base = edge.url("/v1");
    for (n, mode) in ["get", "query", "repost", "openai"].into_iter().enumerate() {
        let before = sim.stats().requests;
        let max = MAX.to_string();
        let first = FIRST.to_string();
        let out = python::run("resume_stream.py", &[&base, mode, QWEN, &max, &first, KEY]).await;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let sid = v["stream_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{mode}: {v}"));
        assert_eq!(sid.len(), 41, "{mode}: {sid}");
        assert_eq!(v["resume_status"], 200, "{mode}: {v}");
        assert_eq!(v["resume_stream_id"], sid, "{mode}");
        assert_eq!(v["resume_content_type"], ct, "{mode}");
        let pairs = |k: &str| -> Vec<Event> {
            v[k].as_array()
                .unwrap()
                .iter()
                .map(|p| Event {
                    id: p[0].as_u64(),
                    data: p[1].as_str().unwrap().to_owned(),
                })
                .collect()
        };
        let (first, resumed) = (pairs("first"), pairs("resumed"));
        let mut all = first.clone();
        all.extend(resumed);
        assert_eq!(first.len(), FIRST, "{mode}");
        assert_numbered(&all, 1, mode);
        assert_eq!(dones(&all), 1, "{mode}");
        assert_eq!(all.last().unwrap().data, "[DONE]", "{mode}");
        assert_eq!(text_of(all.iter().map(|e| e.data.as_str())), want, "{mode}");
        assert_eq!(
            sim.stats().requests - before,
            1,
            "{mode}: one engine request"
        );
        assert_eq!(resumes(&edge, "resumed").await, n as f64 + 1.0, "{mode}");
    }
    // The engine ran every answer to its end: nobody cut it when the clients dropped.
    assert_eq!(sim.stats().streams_aborted, 0);
}

// ---------------------------------------------------------------------------------------------
// NDJSON
// ---------------------------------------------------------------------------------------------

/// An Ollama `/api/chat` stream resumed by line count: the replayed lines are the bytes the
/// client had, the lines are the uninterrupted answer's, and the engine ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_stream_resumes_by_line_count() {
    let sim = engine(SimKind::Ollama, 40.0).await;
    let edge = builder(&sim, "ollama", json!(true)).start().await;
    let body = ollama_chat(LLAMA, 30);
    let (want_ct, whole) = reference_typed(&sim, "/api/chat", &body).await;
    let before = sim.stats().requests;
    let (id, first) = read_then_drop(start(&edge, "/api/chat", &body, KEY), 8, "\n").await;
    let had: Vec<&[u8]> = first.split_inclusive(|b| *b == b'\n').collect();
    // Resume 3 lines before where the client stopped: those 3 come again, byte for byte.
    let cursor = had.len() - 3;
    let url = edge.url(&format!("/v1/okome/streams/{id}"));
    let req = client()
        .get(url)
        .bearer_auth(KEY)
        .header("last-event-id", cursor.to_string());
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(ct, want_ct);
    let rest = resp.bytes().await.unwrap();
    let again: Vec<&[u8]> = rest.split_inclusive(|b| *b == b'\n').collect();
    assert_eq!(
        again[..3],
        had[cursor..],
        "replayed lines differ from what the client had"
    );
    let mut joined = had[..cursor].concat();
    joined.extend_from_slice(&rest);
    assert_eq!(normalize(&joined), normalize(&whole));
    assert_eq!(sim.stats().requests - before, 1);
}

// ---------------------------------------------------------------------------------------------
// The grace window
// ---------------------------------------------------------------------------------------------

/// Nobody comes back within `grace: 1s`: the engine goes on for that second, then is stopped;
/// a later resume reads what was buffered and the stream's end, and after `keep` it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_stops_after_the_grace_window_and_the_buffer_stays_for_keep() {
    let sim = engine(SimKind::Vllm, 20.0).await;
    let edge = builder(&sim, "vllm", json!({"grace": "1s", "keep": "2s"}))
        .start()
        .await;
    let body = chat_body(200); // 10 s of tokens: far longer than the test
                               // The same engine, faster: the same text for the same prompt.
    let fast = engine(SimKind::Vllm, 2000.0).await;
    let whole = reference(&fast, "/v1/chat/completions", &body).await;
    let want = text_of(sse(&whole).iter().map(|e| e.data.as_str()));
    let (id, first) =
        read_then_drop(start(&edge, "/v1/chat/completions", &body, KEY), 3, "\n\n").await;
    let dropped = Instant::now();
    let had = sse(&first).last().unwrap().id.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sim.stats().streams_aborted,
        0,
        "stopped within the grace window"
    );
    assert!(
        sim_until(&sim, 5, |s| s.streams_aborted == 1).await,
        "never stopped"
    );
    let after = dropped.elapsed();
    assert!(
        after >= Duration::from_millis(950),
        "stopped after {after:?}, before the window"
    );
    assert_eq!(sim.stats().streams_completed, 0);
    assert_eq!(
        edge.metric("okome_stream_grace_expired_total", &[]).await,
        1.0
    );
    assert_eq!(
        edge.metric("okome_resumable_streams_detached", &[]).await,
        0.0
    );

    let (status, rest) = resume(&edge, &id, &had.to_string(), KEY).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&rest));
    let events = sse(&rest);
    assert_numbered(&events, had + 1, "after expiry");
    assert!(
        events.len() > 3,
        "the second of buffered events: {events:?}"
    );
    assert_eq!(dones(&events), 1);
    // The stream ended in its own format: an error event, then `[DONE]`.
    assert!(
        events[events.len() - 2].data.starts_with("{\"error\""),
        "{events:?}"
    );
    let mut all = sse(&first);
    all.extend(events);
    let got = text_of(all.iter().map(|e| e.data.as_str()));
    assert!(want.starts_with(&got) && got.len() < want.len(), "{got:?}");

    // `keep` (2 s after the end) passes: the stream is gone.
    let gone = eventually(5, || async { resume(&edge, &id, "0", KEY).await.0 == 404 }).await;
    assert!(gone, "still resumable after keep");
    assert_eq!(edge.metric("okome_resumable_streams", &[]).await, 0.0);
    assert_eq!(edge.metric("okome_resumable_buffer_bytes", &[]).await, 0.0);
}

// ---------------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------------

/// A control plane with tenants `a` (owning `KEY`) and `b` (owning `OTHER`).
async fn control_plane() -> control::ControlHandle {
    let yaml = "listen: 127.0.0.1:0\nedges: 1\ntenants:\n  - id: a\n  - id: b\nroutes: []\n";
    let policy = ControlPolicy::from_str("control.yaml", yaml).expect("control config");
    let store = YamlStore::from_config(policy);
    store.insert_key(&hash_key(KEY), "a").unwrap();
    store.insert_key(&hash_key(OTHER), "b").unwrap();
    let s: Arc<dyn PolicyStore> = Arc::new(store);
    control::start(s, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Behind `auth`: another caller's key and an unknown id get 404, a cursor older than the
/// 4 KiB buffer 410, a cursor past the end 400, each in OpenAI's error shape and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_callers_unknown_ids_and_bad_cursors_are_refused() {
    let sim = engine(SimKind::Vllm, 400.0).await;
    let ctl = control_plane().await;
    let state = tempfile::tempdir().unwrap();
    let control = json!({"address": ctl.addr().to_string(), "state_dir": state.path()});
    let edge = EdgeBuilder::new()
        .pool("vllm", "vllm", &[sim.addr()])
        .route(
            Route::to_pool("r", "vllm")
                .set("resumable", json!({"buffer": "4KiB"}))
                .filters(json!([{"type": "auth"}])),
        )
        .section("control", control)
        .start()
        .await;
    let body = chat_body(100); // ~25 KiB of events: most fall off the 4 KiB buffer
    let (status, id, whole) = call(start(&edge, "/v1/chat/completions", &body, KEY)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&whole));
    let id = id.expect("a stream id");
    let events = sse(&whole);
    assert_numbered(&events, 1, "whole");
    let last = events.len() as u64;

    let (s, b) = resume(&edge, &id, "0", OTHER).await;
    assert_eq!(s, 404);
    assert_openai_error(&b, "stream_not_found");
    let unknown = format!("{}-{:032x}", &id[..8], 7u128);
    for bad in [unknown.as_str(), "not-a-stream-id"] {
        let (s, b) = resume(&edge, bad, "0", KEY).await;
        assert_eq!(s, 404, "{bad}");
        assert_openai_error(&b, "stream_not_found");
    }
    let (s, b) = resume(&edge, &id, "1", KEY).await;
    assert_eq!(s, 410);
    assert_openai_error(&b, "stream_cursor_gone");
    let (s, b) = resume(&edge, &id, &(last + 1).to_string(), KEY).await;
    assert_eq!(s, 400);
    assert_openai_error(&b, "bad_cursor");
    let (s, b) = resume(&edge, &id, "x", KEY).await;
    assert_eq!(s, 400);
    assert_openai_error(&b, "bad_cursor");
    // A re-POST naming a stream that is not there is refused, not run again.
    let stale = start(&edge, "/v1/chat/completions", &body, KEY).header(STREAM_ID, &unknown);
    let (s, _, b) = call(stale).await;
    assert_eq!(s, 404);
    assert_openai_error(&b, "stream_not_found");
    assert_eq!(sim.stats().requests, 1);
    // Without a key `auth` refuses before the stream is looked up.
    let url = edge.url(&format!("/v1/okome/streams/{id}"));
    assert_eq!(call(client().get(url)).await.0, 401);
    // The owner, from a cursor still buffered: exactly the stored tail.
    let (s, tail) = resume(&edge, &id, &(last - 3).to_string(), KEY).await;
    assert_eq!(s, 200);
    assert!(
        whole.ends_with(&tail) && sse(&tail).len() == 3,
        "{}",
        String::from_utf8_lossy(&tail)
    );

    assert_eq!(resumes(&edge, "not_found").await, 4.0);
    assert_eq!(resumes(&edge, "gone").await, 1.0);
    assert_eq!(resumes(&edge, "bad_cursor").await, 1.0);
    assert_eq!(resumes(&edge, "resumed").await, 1.0);
}

// ---------------------------------------------------------------------------------------------
// The node's budget
// ---------------------------------------------------------------------------------------------

/// `limits.resumable_buffer` holds two streams' buffers: the third concurrent stream gets no
/// id, is served whole all the same, and is counted as refused; once the first two are past
/// their `keep`, their share is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_node_budget_a_stream_is_served_without_an_id() {
    let sim = engine(SimKind::Vllm, 25.0).await; // 20 tokens: 0.8 s, while the third starts
    let edge = builder(&sim, "vllm", json!({"buffer": "64KiB", "keep": "1s"}))
        .section("limits", json!({"resumable_buffer": "128KiB"}))
        .start()
        .await;
    let body = chat_body(20);
    let whole = reference(&sim, "/v1/chat/completions", &body).await;
    let want = text_of(sse(&whole).iter().map(|e| e.data.as_str()));
    let mut held = Vec::new();
    for _ in 0..2 {
        let resp = start(&edge, "/v1/chat/completions", &body, KEY)
            .send()
            .await
            .unwrap();
        assert!(resp.headers().contains_key(STREAM_ID));
        held.push(resp);
    }
    assert_eq!(sim.stats().running, 2, "the first two are still streaming");
    let (status, id, third) = call(start(&edge, "/v1/chat/completions", &body, KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(id, None, "past the budget: no stream id");
    let events = sse(&third);
    assert!(events.iter().all(|e| e.id.is_none()), "not numbered");
    assert_eq!(dones(&events), 1);
    assert_eq!(text_of(events.iter().map(|e| e.data.as_str())), want);
    assert_eq!(edge.metric("okome_resumable_refused_total", &[]).await, 1.0);
    for resp in held {
        let events = sse(&resp.bytes().await.unwrap());
        assert_numbered(&events, 1, "held");
        assert_eq!(text_of(events.iter().map(|e| e.data.as_str())), want);
    }
    let freed = eventually(5, || async {
        let req = start(&edge, "/v1/chat/completions", &body, KEY);
        call(req).await.1.is_some()
    });
    assert!(freed.await, "the budget was never given back");
}

// ---------------------------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------------------------

/// `DELETE` stops the engine at once, detached (long before the 30 s grace) or attached (the
/// client's stream ends with an error event); another caller's `DELETE` gets 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_engine_at_once() {
    let sim = engine(SimKind::Vllm, 20.0).await;
    let edge = builder(&sim, "vllm", json!({"grace": "30s"})).start().await;
    let body = chat_body(200);
    let path = "/v1/chat/completions";

    // Detached.
    let (id, first) = read_then_drop(start(&edge, path, &body, KEY), 3, "\n\n").await;
    let detached = eventually(5, || async {
        edge.metric("okome_resumable_streams_detached", &[]).await == 1.0
    });
    assert!(detached.await, "the edge never saw the client leave");
    assert_eq!(
        sim.stats().streams_aborted,
        0,
        "the engine goes on for the grace window"
    );
    let asked = Instant::now();
    let (s, b) = cancel(&edge, &id, KEY).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        v,
        json!({"id": id, "object": "okome.stream", "status": "cancelled"})
    );
    assert!(
        sim_until(&sim, 5, |s| s.streams_aborted == 1).await,
        "engine not stopped"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    // A resume reads what was buffered up to the cancel, and the error event that ended it.
    let had = sse(&first).last().unwrap().id.unwrap();
    let (s, rest) = resume(&edge, &id, &had.to_string(), KEY).await;
    assert_eq!(s, 200);
    let events = sse(&rest);
    assert_numbered(&events, had + 1, "after the cancel");
    assert!(
        events[events.len() - 2].data.contains("cancelled"),
        "{events:?}"
    );
    assert_eq!(dones(&events), 1);
    assert_eq!(
        edge.metric("okome_resumable_streams_detached", &[]).await,
        0.0
    );

    // Attached: a stranger's DELETE changes nothing; the owner's ends the client's stream.
    use futures::StreamExt;
    let resp = start(&edge, path, &body, KEY).send().await.unwrap();
    let id = resp.headers()[STREAM_ID].to_str().unwrap().to_owned();
    let mut chunks = resp.bytes_stream();
    let mut got = Vec::new();
    while sse(&got).len() < 3 {
        got.extend_from_slice(&chunks.next().await.unwrap().unwrap());
    }
    let (s, b) = cancel(&edge, &id, OTHER).await;
    assert_eq!(s, 404);
    assert_openai_error(&b, "stream_not_found");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.stats().streams_aborted, 1, "a stranger cannot cancel");
    let (s, _) = cancel(&edge, &id, KEY).await;
    assert_eq!(s, 200);
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(c)) = chunks.next().await {
            got.extend_from_slice(&c);
        }
    });
    assert!(rest.await.is_ok(), "the client's stream did not end");
    let events = sse(&got);
    assert_numbered(&events, 1, "cancelled");
    let error = &events[events.len() - 2].data;
    assert!(error.starts_with("{\"error\""), "{events:?}");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert!(sim_until(&sim, 5, |s| s.streams_aborted == 2).await);
    assert_eq!(edge.metric("okome_stream_cancels_total", &[]).await, 2.0);
}

// ---------------------------------------------------------------------------------------------
// Finished streams
// ---------------------------------------------------------------------------------------------

/// A finished stream is replayed within `keep`, byte for byte from any cursor; the gauges show
/// it held and the counters what each resume got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_stream_replays_within_keep() {
    let sim = engine(SimKind::Vllm, 400.0).await;
    let edge = builder(&sim, "vllm", json!(true)).start().await;
    let (status, id, whole) = call(start(&edge, "/v1/chat/completions", &chat_body(10), KEY)).await;
    assert_eq!(status, 200);
    let id = id.unwrap();
    let events = sse(&whole);
    assert_numbered(&events, 1, "whole");
    let last = events.len() as u64;
    assert_eq!(resume(&edge, &id, "0", KEY).await, (200, whole.clone()));
    let (s, tail) = resume(&edge, &id, "2", KEY).await;
    assert_eq!(s, 200);
    assert_eq!(sse(&tail), events[2..]);
    assert!(whole.ends_with(&tail));
    assert_eq!(
        resume(&edge, &id, &last.to_string(), KEY).await,
        (200, vec![])
    );
    assert_eq!(
        resume(&edge, &id, &(last + 1).to_string(), KEY).await.0,
        400
    );
    assert_eq!(resume(&edge, &id, "0", OTHER).await.0, 404);
    // A cancel after the end changes nothing: it says how the stream ended.
    let (s, b) = cancel(&edge, &id, KEY).await;
    assert_eq!(
        (
            s,
            serde_json::from_slice::<Value>(&b).unwrap()["status"].clone()
        ),
        (200, json!("ended"))
    );
    assert_eq!(resume(&edge, &id, "0", KEY).await, (200, whole.clone()));
    // An answer that is not a stream gets no id and holds nothing.
    let plain = chat_body(10).replace("\"stream\":true", "\"stream\":false");
    let (s, id, _) = call(start(&edge, "/v1/chat/completions", &plain, KEY)).await;
    assert_eq!((s, id), (200, None));

    assert_eq!(resumes(&edge, "resumed").await, 4.0);
    assert_eq!(resumes(&edge, "bad_cursor").await, 1.0);
    assert_eq!(resumes(&edge, "not_found").await, 1.0);
    assert_eq!(resumes(&edge, "gone").await, 0.0);
    assert_eq!(edge.metric("okome_stream_cancels_total", &[]).await, 0.0);
    assert_eq!(edge.metric("okome_resumable_streams", &[]).await, 1.0);
    assert_eq!(
        edge.metric("okome_resumable_streams_detached", &[]).await,
        0.0
    );
    let bytes = edge.metric("okome_resumable_buffer_bytes", &[]).await;
    assert_eq!(
        bytes,
        whole.len() as f64,
        "the buffer holds exactly the stream"
    );
    assert_eq!(sim.stats().requests, 2);
}

// ---------------------------------------------------------------------------------------------
// A resumed client drops too
// ---------------------------------------------------------------------------------------------

/// A client that drops, resumes, and drops again mid-replay can resume once more: the grace
/// window starts over each time, the engine runs once, and the pieces make the whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_client_that_drops_again_resumes_again() {
    let sim = engine(SimKind::Vllm, 20.0).await; // 3 s: both drops happen mid-answer
    let edge = builder(&sim, "vllm", json!({"grace": "5s"})).start().await;
    let body = chat_body(60);
    let whole = reference(&sim, "/v1/chat/completions", &body).await;
    let before = sim.stats().requests;
    let (id, first) =
        read_then_drop(start(&edge, "/v1/chat/completions", &body, KEY), 5, "\n\n").await;
    let mut all = sse(&first);
    let url = edge.url(&format!("/v1/okome/streams/{id}"));
    let had = all.last().unwrap().id.unwrap();
    let again = client()
        .get(&url)
        .bearer_auth(KEY)
        .header("last-event-id", had.to_string());
    let (_, second) = read_then_drop(again, 5, "\n\n").await;
    all.extend(sse(&second));
    let detached = eventually(5, || async {
        edge.metric("okome_resumable_streams_detached", &[]).await == 1.0
    });
    assert!(detached.await, "the second drop was not seen");
    let had = all.last().unwrap().id.unwrap();
    let last = client()
        .get(&url)
        .bearer_auth(KEY)
        .header("last-event-id", had.to_string());
    let (status, _, rest) = call(last).await;
    assert_eq!(status, 200);
    all.extend(sse(&rest));
    assert_numbered(&all, 1, "three pieces");
    assert_eq!(dones(&all), 1);
    let want = text_of(sse(&whole).iter().map(|e| e.data.as_str()));
    assert_eq!(text_of(all.iter().map(|e| e.data.as_str())), want);
    assert_eq!(sim.stats().requests - before, 1);
    assert_eq!(sim.stats().streams_aborted, 0);
    assert_eq!(
        edge.metric("okome_resumable_streams_detached", &[]).await,
        0.0
    );
    assert_eq!(resumes(&edge, "resumed").await, 2.0);
}
