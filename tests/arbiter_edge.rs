//! The edge obeying the GPU arbiter, over real sockets: the real `okome edge` binary, an
//! in-process arbiter watching in-process simulators (fake GPUs), and an in-process control plane
//! for tenant priorities. A queue rising on an engine makes the edge shed with 503 + the
//! arbiter's Retry-After, fail over to a fallback pool, shed `sheddable` tenants first, and stop
//! obeying an arbiter that went silent for longer than `arbiter.max_age`.
//!
//! Deadlines are generous and polled; measured times are printed, never asserted tightly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use okome::arbiter::{ArbiterConfig, ArbiterHandle, BackendState, BackendStatus};
use okome::control::{self, hash_key, ControlHandle, PolicyStore, YamlStore};
use okome_sim::{Pressure, SimHandle, SimKind};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const QWEN: &str = "Qwen/Qwen3-8B";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An arbiter over vLLM sims `(name, addr)`: fake GPUs, 100 ms rounds, queue 8 → pressured,
/// 32 → shedding, a short `min_hold` so recovery is quick.
async fn arbiter(engines: &[(&str, SocketAddr)]) -> ArbiterHandle {
    let mut text = String::from(
        "interval: 100ms\ntimeout: 1s\ngpu: { source: fake, reserve: 2GiB }\nrules:\n  queue_depth: { pressured: 8, shedding: 32 }\n  hysteresis: { leave_ratio: 0.8, min_hold: 500ms }\nengines:\n",
    );
    for (name, addr) in engines {
        text.push_str(&format!(
            "  - {{ name: {name}, kind: vllm, address: \"{addr}\" }}\n"
        ));
    }
    let cfg = ArbiterConfig::from_str("arbiter-edge-test.yaml", &text).expect("arbiter config");
    okome::arbiter::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("start arbiter")
}

/// The edge's `arbiter:` section.
fn arbiter_section(h: &ArbiterHandle, max_age: &str) -> String {
    format!(
        "arbiter:\n  addresses: [\"{}\"]\n  max_age: {max_age}\n",
        h.addr()
    )
}

/// The arbiter's published decision about the backend it knows as `addr`.
fn decision(h: &ArbiterHandle, addr: SocketAddr) -> Option<BackendStatus> {
    h.state()
        .backends
        .into_iter()
        .find(|b| b.backend == addr.to_string())
}

/// Records every `retry_after_secs` the arbiter publishes for `addr` in a refusing state from
/// now on (the number is live: queue over drain rate, so it may move between two reads).
fn record_retry_afters(h: &ArbiterHandle, addr: SocketAddr) -> Arc<Mutex<BTreeSet<u64>>> {
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let mut rx = h.subscribe();
    let out = seen.clone();
    let id = addr.to_string();
    tokio::spawn(async move {
        loop {
            for b in rx.borrow_and_update().backends.iter() {
                if b.backend == id && b.state != BackendState::Ok {
                    out.lock().unwrap().insert(b.retry_after_secs);
                }
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    });
    seen
}

/// Asserts the edge's `Retry-After` is a value the arbiter published for that backend.
fn assert_arbiters_retry_after(ra: u64, seen: &Mutex<BTreeSet<u64>>, h: &ArbiterHandle) {
    let seen = seen.lock().unwrap();
    assert!(
        seen.contains(&ra),
        "edge's Retry-After {ra} is not one the arbiter published ({seen:?}); state: {:#?}",
        h.state()
    );
}

/// Waits until the arbiter publishes `state` for `addr`; returns the decision and the wait.
async fn arbiter_says(
    h: &ArbiterHandle,
    addr: SocketAddr,
    state: BackendState,
) -> (BackendStatus, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(b) = decision(h, addr) {
            if b.state == state {
                return (b, t0.elapsed());
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "arbiter did not reach {state:?} for {addr}; state: {:#?}",
            h.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the edge holds the arbiter's decision `level` (0 ok, 1 pressured, 2 shedding)
/// for backend `addr`, and the arbiter is fresh.
async fn edge_sees(edge: &EdgeProc, addr: SocketAddr, level: f64) {
    let id = addr.to_string();
    let ok = eventually(15, || async {
        edge.metric("okome_arbiter_fresh", &[]).await == 1.0
            && edge
                .metric("okome_backend_arbiter_state", &[("backend", id.as_str())])
                .await
                == level
    })
    .await;
    let text = reqwest::get(edge.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        ok,
        "edge never held arbiter state {level} for {id}; metrics:\n{}\nlog:\n{}",
        text.lines()
            .filter(|l| l.contains("arbiter"))
            .collect::<Vec<_>>()
            .join("\n"),
        edge.log_text()
    );
}

/// A `/v1/` route to `pool` (with `extra` lines, e.g. a fallback or filters).
fn route(pool: &str, extra: &str) -> String {
    format!(
        "routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: {pool}\n{extra}"
    )
}

/// A POST with a JSON body, `Connection: close`, and the key as a bearer token when given.
fn request(path: &str, body: &str, key: Option<&str>) -> Vec<u8> {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One streaming chat completion through the edge; the raw response.
async fn chat_once(edge: &EdgeProc, key: Option<&str>) -> Vec<u8> {
    raw(
        edge.addr,
        &request("/v1/chat/completions", &chat(QWEN, 4), key),
    )
    .await
}

/// Asserts a complete 200 SSE stream with 4 tokens.
fn assert_streamed(resp: &[u8], edge: &EdgeProc) {
    let body = String::from_utf8_lossy(&body_of(resp)).to_string();
    assert_eq!(
        status_of(resp),
        200,
        "response:\n{}\nlog:\n{}",
        String::from_utf8_lossy(resp),
        edge.log_text()
    );
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(sse_tokens(&body), 4, "{body}");
}

/// Asserts a 503 `overloaded` in the OpenAI shape; returns its `Retry-After` (integer ≥ 1).
fn assert_overloaded(resp: &[u8], edge: &EdgeProc) -> u64 {
    assert_eq!(
        status_of(resp),
        503,
        "response:\n{}\nlog:\n{}",
        String::from_utf8_lossy(resp),
        edge.log_text()
    );
    assert_openai_error(&body_of(resp), "overloaded");
    let ra = header_of(resp, "retry-after")
        .unwrap_or_else(|| panic!("no Retry-After:\n{}", String::from_utf8_lossy(resp)));
    let secs: u64 = ra
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {ra:?} is not an integer"));
    assert!(secs >= 1, "Retry-After {secs}");
    secs
}

/// Sends requests every 50 ms until one answers `status`; returns it and the time taken.
async fn until_status(
    edge: &EdgeProc,
    key: Option<&str>,
    status: u16,
    within: Duration,
) -> (Vec<u8>, Duration) {
    let t0 = Instant::now();
    loop {
        let r = chat_once(edge, key).await;
        if status_of(&r) == status {
            return (r, t0.elapsed());
        }
        assert!(
            t0.elapsed() < within,
            "no {status} within {within:?}; last response:\n{}\nlog:\n{}",
            String::from_utf8_lossy(&r),
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn queue(n: u64) -> Pressure {
    Pressure {
        extra_waiting: n,
        ..Default::default()
    }
}

async fn vllm() -> SimHandle {
    sim(SimKind::Vllm, |_| {}).await
}

// ---------------------------------------------------------------------------------------------
// 1. Queue depth → shedding → 503 with the arbiter's Retry-After; recovery
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rising_queue_makes_the_edge_shed_with_the_arbiters_retry_after_then_recover() {
    let s = vllm().await;
    let h = arbiter(&[("vllm", s.addr())]).await;
    let edge = start_edge(&format!(
        "pools:\n{}{}{}",
        pool("vllm", "vllm", &[s.addr()]),
        route("vllm", ""),
        arbiter_section(&h, "3s")
    ))
    .await;
    arbiter_says(&h, s.addr(), BackendState::Ok).await;
    edge_sees(&edge, s.addr(), 0.0).await;
    assert_streamed(&chat_once(&edge, None).await, &edge);

    let seen = record_retry_afters(&h, s.addr());
    let set = Instant::now();
    s.set_pressure(queue(40));
    let (first, took) = until_status(&edge, None, 503, Duration::from_secs(20)).await;
    let (_, arbiter_took) = arbiter_says(&h, s.addr(), BackendState::Shedding).await;
    println!(
        "queue 40 set on the sim -> edge's first 503 after {took:?} (set_pressure to the 503 \
         answer; arbiter interval 100ms, edge long-poll; arbiter already shedding when checked: {:?})",
        arbiter_took
    );
    let ra = assert_overloaded(&first, &edge);
    let d = decision(&h, s.addr()).unwrap();
    assert_eq!(d.rule, "queue_depth", "{d:?}");
    println!(
        "503 Retry-After {ra}; arbiter's retry_after_secs {} now, published {:?} (queue {:?}, drain {:?}/s)",
        d.retry_after_secs,
        seen.lock().unwrap(),
        d.queue_depth,
        d.drain_per_sec
    );
    assert_arbiters_retry_after(ra, &seen, &h);
    let msg = String::from_utf8_lossy(&body_of(&first)).to_string();
    assert!(msg.contains("shedding"), "{msg}");

    // A few more, each counted; none reaches the engine.
    let served = s.stats().requests;
    let mut shed = 1.0;
    for _ in 0..5 {
        let r = chat_once(&edge, None).await;
        assert_arbiters_retry_after(assert_overloaded(&r, &edge), &seen, &h);
        shed += 1.0;
    }
    assert_eq!(s.stats().requests, served, "{:?}", s.stats());
    assert_eq!(
        edge.metric(
            "okome_shed_total",
            &[("reason", "queue_depth"), ("priority", "standard")]
        )
        .await,
        shed,
        "log:\n{}",
        edge.log_text()
    );

    // Pressure removed: after min_hold (500 ms) the arbiter says ok and requests are served.
    let removed = Instant::now();
    s.set_pressure(Pressure::default());
    let (ok, took) = until_status(&edge, None, 200, Duration::from_secs(20)).await;
    println!(
        "pressure removed -> edge serves again after {took:?} (min_hold 500ms; pressure was on for {:?})",
        removed - set
    );
    assert_streamed(&ok, &edge);
    assert_eq!(
        decision(&h, s.addr()).unwrap().state,
        BackendState::Ok,
        "{:#?}",
        h.state()
    );
    for _ in 0..3 {
        assert_streamed(&chat_once(&edge, None).await, &edge);
    }
    h.shutdown().await;
    s.shutdown();
}

// ---------------------------------------------------------------------------------------------
// 2. Fallback pool takes the traffic while the target pool sheds
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shedding_pool_falls_back_to_the_next_pool_without_a_503() {
    let a = vllm().await;
    let b = vllm().await;
    let h = arbiter(&[("a", a.addr()), ("b", b.addr())]).await;
    let edge = start_edge(&format!(
        "pools:\n{}{}{}{}",
        pool("a", "vllm", &[a.addr()]),
        pool("b", "vllm", &[b.addr()]),
        route("a", "    fallback: [b]\n"),
        arbiter_section(&h, "3s")
    ))
    .await;
    arbiter_says(&h, a.addr(), BackendState::Ok).await;
    arbiter_says(&h, b.addr(), BackendState::Ok).await;
    edge_sees(&edge, a.addr(), 0.0).await;

    // Unpressured: pool a serves.
    for _ in 0..3 {
        assert_streamed(&chat_once(&edge, None).await, &edge);
    }
    assert_eq!(a.stats().requests, 3, "{:?}", a.stats());
    assert_eq!(b.stats().requests, 0, "{:?}", b.stats());

    let set = Instant::now();
    a.set_pressure(queue(40));
    arbiter_says(&h, a.addr(), BackendState::Shedding).await;
    edge_sees(&edge, a.addr(), 2.0).await;
    println!(
        "queue 40 on pool a -> edge holds shedding after {:?}",
        set.elapsed()
    );

    // While a sheds: every request is served, by b.
    let (a0, b0) = (a.stats().requests, b.stats().requests);
    const N: u64 = 10;
    for _ in 0..N {
        assert_streamed(&chat_once(&edge, None).await, &edge);
    }
    assert_eq!(a.stats().requests, a0, "a: {:?}", a.stats());
    assert_eq!(b.stats().requests, b0 + N, "b: {:?}", b.stats());
    assert_eq!(edge.metric("okome_shed_total", &[]).await, 0.0);
    assert_eq!(
        decision(&h, b.addr()).unwrap().state,
        BackendState::Ok,
        "{:#?}",
        h.state()
    );
    h.shutdown().await;
    a.shutdown();
    b.shutdown();
}

// ---------------------------------------------------------------------------------------------
// 3. Pressured: sheddable tenants are shed, standard ones served
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressured_backend_sheds_sheddable_tenants_and_serves_standard_ones() {
    const KEY_STD: &str = "okome-test-key-standard";
    const KEY_BATCH: &str = "okome-test-key-batch";
    let s = vllm().await;
    let h = arbiter(&[("vllm", s.addr())]).await;
    let control_yaml = "listen: 127.0.0.1:0\nedges: 1\ntenants:\n  - id: acme\n    models: [\"*\"]\n  - id: batch\n    priority: sheddable\n    models: [\"*\"]\nroutes:\n  - { model: \"Qwen/*\", pool: vllm }\n";
    let store = YamlStore::from_str(control_yaml).expect("control config");
    store.insert_key(&hash_key(KEY_STD), "acme").unwrap();
    store.insert_key(&hash_key(KEY_BATCH), "batch").unwrap();
    let st: Arc<dyn PolicyStore> = Arc::new(store.clone());
    let ctl: ControlHandle = control::start(st, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("start control API");
    let state = tempfile::tempdir().unwrap();
    let edge = start_edge(&format!(
        "pools:\n{}{}control:\n  address: {}\n  state_dir: {}\n  key_ttl: 60s\n{}",
        pool("vllm", "vllm", &[s.addr()]),
        route("vllm", "    filters: [{ type: auth }, { type: policy }]\n"),
        ctl.addr(),
        state.path().display(),
        arbiter_section(&h, "3s")
    ))
    .await;
    arbiter_says(&h, s.addr(), BackendState::Ok).await;
    edge_sees(&edge, s.addr(), 0.0).await;
    // Both tenants are served while the engine is at ease.
    assert_streamed(&chat_once(&edge, Some(KEY_STD)).await, &edge);
    assert_streamed(&chat_once(&edge, Some(KEY_BATCH)).await, &edge);

    // Queue 12: pressured (8 ≤ 12 < 32).
    let seen = record_retry_afters(&h, s.addr());
    let set = Instant::now();
    s.set_pressure(queue(12));
    let (d, _) = arbiter_says(&h, s.addr(), BackendState::Pressured).await;
    assert_eq!(d.rule, "queue_depth", "{d:?}");
    let (r, took) = until_status(&edge, Some(KEY_BATCH), 503, Duration::from_secs(20)).await;
    println!(
        "queue 12 set -> first 503 for the sheddable tenant after {:?} ({took:?} of polling)",
        set.elapsed()
    );
    let ra = assert_overloaded(&r, &edge);
    let d = decision(&h, s.addr()).unwrap();
    assert_eq!(d.state, BackendState::Pressured, "{d:?}");
    assert_arbiters_retry_after(ra, &seen, &h);
    assert!(
        edge.metric(
            "okome_shed_total",
            &[("reason", "queue_depth"), ("priority", "sheddable")]
        )
        .await
            >= 1.0
    );

    // The standard tenant is served by the same pressured engine; the sheddable one is not.
    let before = s.stats().requests;
    for _ in 0..3 {
        assert_streamed(&chat_once(&edge, Some(KEY_STD)).await, &edge);
        assert_overloaded(&chat_once(&edge, Some(KEY_BATCH)).await, &edge);
    }
    assert_eq!(s.stats().requests, before + 3, "{:?}", s.stats());
    assert_eq!(
        edge.metric("okome_shed_total", &[("priority", "standard")])
            .await,
        0.0
    );
    assert_eq!(
        decision(&h, s.addr()).unwrap().state,
        BackendState::Pressured,
        "{:#?}",
        h.state()
    );
    h.shutdown().await;
    ctl.shutdown().await;
    s.shutdown();
}

// ---------------------------------------------------------------------------------------------
// 4. A silent arbiter's decisions expire after max_age
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_arbiters_stale_shedding_is_ignored_after_max_age() {
    let s = vllm().await;
    let h = arbiter(&[("vllm", s.addr())]).await;
    let edge = start_edge(&format!(
        "pools:\n{}{}{}",
        pool("vllm", "vllm", &[s.addr()]),
        route("vllm", ""),
        arbiter_section(&h, "1s")
    ))
    .await;
    arbiter_says(&h, s.addr(), BackendState::Ok).await;
    edge_sees(&edge, s.addr(), 0.0).await;
    assert_streamed(&chat_once(&edge, None).await, &edge);

    // Shedding, obeyed.
    s.set_pressure(queue(40));
    arbiter_says(&h, s.addr(), BackendState::Shedding).await;
    let (r, _) = until_status(&edge, None, 503, Duration::from_secs(20)).await;
    assert_overloaded(&r, &edge);
    edge_sees(&edge, s.addr(), 2.0).await;

    // The arbiter dies with the backend marked shedding; the engine's queue stays.
    let killed = Instant::now();
    h.shutdown().await;
    println!("arbiter shutdown took {:?}", killed.elapsed());
    let (r, took) = until_status(&edge, None, 200, Duration::from_secs(20)).await;
    println!("arbiter killed -> edge serves again after {took:?} (max_age 1s)");
    assert_streamed(&r, &edge);
    let served = s.stats().requests;
    for _ in 0..5 {
        assert_streamed(&chat_once(&edge, None).await, &edge);
    }
    assert_eq!(s.stats().requests, served + 5, "{:?}", s.stats());
    assert!(
        eventually(10, || async {
            edge.metric("okome_arbiter_fresh", &[]).await == 0.0
        })
        .await,
        "okome_arbiter_fresh did not drop to 0; log:\n{}",
        edge.log_text()
    );
    let log = edge.log_text();
    assert!(log.contains("unreachable"), "log:\n{log}");
    s.shutdown();
}
