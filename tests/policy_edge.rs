//! The edge with a control plane, over real sockets: the real `okome edge` binary, an in-process
//! `okome control` API and simulated engines. Zero control-plane calls per request once the key
//! cache is warm, single-flight lookups, revocation and route changes without an edge restart,
//! an invalid control edit, tenant error shapes (401/403/429), token settlement of a cut stream,
//! and an edge restarted while the control plane is down.
//!
//! Deadlines are generous and polled; measured times are printed, never asserted tightly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::embedded::{self, TestEdge};
use common::*;
use okome::control::{self, hash_key, ControlHandle, PolicyStore, YamlStore};
use okome_sim::SimKind;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "okome-test-key-acme";
const QWEN: &str = "Qwen/Qwen3-8B";
const LLAMA: &str = "llama3.2:latest";
const FILTERS: &str = "[{ type: auth }, { type: policy }, { type: ratelimit }]";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Serves `store` on a free loopback port, in this process.
async fn serve(store: &YamlStore) -> ControlHandle {
    let s: Arc<dyn PolicyStore> = Arc::new(store.clone());
    control::start(s, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("start control API")
}

/// A `control.yaml` body with one tenant line block and the given routes (YAML list items).
fn control_yaml(tenants: &str, routes: &str, keys_file: bool) -> String {
    let keys = if keys_file {
        "keys_file: keys.yaml\n"
    } else {
        ""
    };
    format!("listen: 127.0.0.1:0\nedges: 1\n{keys}tenants:\n{tenants}routes:\n{routes}")
}

/// Keys-file text binding each key's hash to its tenant.
fn keys_text(entries: &[(&str, &str)]) -> String {
    let mut s = String::from("# hashes only\n");
    for (key, tenant) in entries {
        s.push_str(&format!(
            "- {{ sha256: \"{}\", tenant: {tenant} }}\n",
            hash_key(key)
        ));
    }
    s
}

/// Replaces a file's content the way an editor does: write a temp file, rename over.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An in-memory control plane with `tenants`/`routes` and `KEY` bound to tenant `key_tenant`.
async fn memory_control(
    tenants: &str,
    routes: &str,
    key_tenant: &str,
) -> (YamlStore, ControlHandle) {
    let store = YamlStore::from_str(&control_yaml(tenants, routes, false)).expect("control config");
    store
        .insert_key(&hash_key(KEY), key_tenant)
        .expect("insert key");
    let ctl = serve(&store).await;
    (store, ctl)
}

/// An `/v1/` route over `pools` (a YAML flow list, or empty for every pool) with the tenant filters.
fn openai_route(pools: &str) -> String {
    let pools = if pools.is_empty() {
        String::new()
    } else {
        format!("    pools: {pools}\n")
    };
    format!("  - name: openai\n    match: {{ path_prefix: /v1/ }}\n{pools}    filters: {FILTERS}\n")
}

/// An `/api/` route to pool `ollama` with the tenant filters.
fn ollama_route() -> String {
    format!("  - name: ollama\n    match: {{ path_prefix: /api/ }}\n    pool: ollama\n    filters: {FILTERS}\n")
}

/// The edge config body (after listeners/admin/server, which `start_edge` writes).
fn edge_yaml(
    pools: &str,
    routes: &str,
    ctl: SocketAddr,
    state: &Path,
    control_extra: &str,
) -> String {
    format!(
        "pools:\n{pools}routes:\n{routes}control:\n  address: {ctl}\n  state_dir: {}\n{control_extra}",
        state.display()
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

/// One authenticated chat completion through the edge; the raw response.
async fn chat_once(edge: &TestEdge, key: Option<&str>, model: &str, max_tokens: u32) -> Vec<u8> {
    raw(
        edge.addr,
        &request("/v1/chat/completions", &chat(model, max_tokens), key),
    )
    .await
}

/// Asserts a complete 200 SSE stream with `tokens` content tokens.
fn assert_streamed(resp: &[u8], tokens: usize, edge: &TestEdge) {
    let body = String::from_utf8_lossy(&body_of(resp)).to_string();
    assert_eq!(
        status_of(resp),
        200,
        "response:\n{}\nlog:\n{}",
        String::from_utf8_lossy(resp),
        edge.log_text()
    );
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(sse_tokens(&body), tokens, "{body}");
}

/// Asserts `Retry-After` is an integer number of seconds ≥ 1.
fn assert_retry_after(resp: &[u8]) {
    let ra = header_of(resp, "retry-after")
        .unwrap_or_else(|| panic!("no Retry-After:\n{}", String::from_utf8_lossy(resp)));
    let secs: u64 = ra
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {ra:?} is not an integer"));
    assert!(secs >= 1, "Retry-After {secs}");
}

/// A TCP relay to `target` that holds every chunk the client sends for `delay` before passing it
/// on: a control plane on a slow link, so that concurrent key lookups certainly overlap.
async fn slow_link(target: SocketAddr, delay: Duration) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

const ACME: &str = "  - id: acme\n    models: [\"*\"]\n";
const QWEN_ROUTE: &str = "  - { model: \"Qwen/*\", pool: vllm }\n";

// ---------------------------------------------------------------------------------------------
// 1. Control plane killed mid-run
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_cache_makes_no_control_calls_and_survives_the_control_plane_dying() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let (_store, ctl) = memory_control(ACME, QWEN_ROUTE, "acme").await;
    let state = tempfile::tempdir().unwrap();
    let edge = embedded::edge(&edge_yaml(
        &pool("vllm", "vllm", &[s.addr()]),
        &openai_route("[vllm]"),
        ctl.addr(),
        state.path(),
        "  key_ttl: 60s\n",
    ))
    .await;

    // Warm: the first request asks the control plane about the key, once.
    assert_streamed(&chat_once(&edge, Some(KEY), QWEN, 8).await, 8, &edge);
    let warm = ctl.key_lookups();
    assert_eq!(warm, 1, "log:\n{}", edge.log_text());

    // Warm: N more requests, not one more key lookup.
    const N: usize = 20;
    for _ in 0..N {
        assert_streamed(&chat_once(&edge, Some(KEY), QWEN, 8).await, 8, &edge);
    }
    assert_eq!(
        ctl.key_lookups(),
        warm,
        "requests on a warm key called the control plane; log:\n{}",
        edge.log_text()
    );
    assert_eq!(
        edge.metric(
            "okome_control_request_seconds_count",
            &[("endpoint", "keys")]
        )
        .await,
        1.0
    );
    assert!(
        edge.metric("okome_policy_cache_requests_total", &[("result", "hit")])
            .await
            >= N as f64
    );

    // A stream in flight when the control plane dies goes on to the end.
    s.set_tokens_per_second(40.0);
    let addr = edge.addr;
    let long = tokio::spawn(async move {
        raw(
            addr,
            &request("/v1/chat/completions", &chat(QWEN, 30), Some(KEY)),
        )
        .await
    });
    assert!(
        eventually(10, || async { s.stats().running == 1 }).await,
        "stream did not start: {:?}",
        s.stats()
    );
    ctl.shutdown().await;
    assert_streamed(&long.await.unwrap(), 30, &edge);

    // And new streams with the same key keep working with the control plane gone.
    s.set_tokens_per_second(200.0);
    for _ in 0..5 {
        assert_streamed(&chat_once(&edge, Some(KEY), QWEN, 8).await, 8, &edge);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Single-flight
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_a_new_key_make_one_lookup() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let (_store, ctl) = memory_control(ACME, QWEN_ROUTE, "acme").await;
    // Each lookup takes at least 300 ms on this link, so all 100 requests arrive during it.
    let link = slow_link(ctl.addr(), Duration::from_millis(300)).await;
    let state = tempfile::tempdir().unwrap();
    let edge = embedded::edge(&edge_yaml(
        &pool("vllm", "vllm", &[s.addr()]),
        &openai_route("[vllm]"),
        link,
        state.path(),
        "  key_ttl: 60s\n",
    ))
    .await;
    assert_eq!(ctl.key_lookups(), 0);

    // Open 100 connections and send all but the last byte of each request, then release them
    // together, so the lookups really overlap.
    const N: usize = 100;
    let req = request("/v1/chat/completions", &chat(QWEN, 4), Some(KEY));
    let (head, last) = req.split_at(req.len() - 1);
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        let mut c = tokio::net::TcpStream::connect(edge.addr)
            .await
            .expect("connect");
        c.write_all(head).await.expect("write");
        conns.push(c);
    }
    let released = Instant::now();
    for c in &mut conns {
        c.write_all(last).await.expect("write last byte");
    }
    eprintln!("{N} requests released within {:?}", released.elapsed());
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut out = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut out)).await;
                out
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let resp = t.await.unwrap();
        if status_of(&resp) == 200 && body_of(&resp).ends_with(b"data: [DONE]\n\n") {
            ok += 1;
        } else {
            panic!(
                "a request failed:\n{}\nlog:\n{}",
                String::from_utf8_lossy(&resp),
                edge.log_text()
            );
        }
    }
    assert_eq!(ok, N);
    eprintln!(
        "{N} requests answered {:?} after release",
        released.elapsed()
    );
    assert_eq!(
        ctl.key_lookups(),
        1,
        "{N} concurrent requests for one new key; log:\n{}",
        edge.log_text()
    );
    assert_eq!(
        edge.metric(
            "okome_control_request_seconds_count",
            &[("endpoint", "keys")]
        )
        .await,
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Revocation and route changes, no edge restart
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_key_is_refused_within_its_ttl() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("control.yaml");
    let keys = dir.path().join("keys.yaml");
    std::fs::write(&cfg, control_yaml(ACME, QWEN_ROUTE, true)).unwrap();
    std::fs::write(&keys, keys_text(&[(KEY, "acme")])).unwrap();
    let store = YamlStore::load(&cfg).expect("load control config");
    let ctl = serve(&store).await;
    let state = tempfile::tempdir().unwrap();
    let edge = embedded::edge(&edge_yaml(
        &pool("vllm", "vllm", &[s.addr()]),
        &openai_route("[vllm]"),
        ctl.addr(),
        state.path(),
        "  key_ttl: 1s\n  negative_ttl: 1s\n",
    ))
    .await;
    assert_streamed(&chat_once(&edge, Some(KEY), QWEN, 4).await, 4, &edge);

    // Revoke: delete the key's line from the keys file.
    let v0 = store.version();
    replace(&keys, "# hashes only; the key was revoked\n");
    let revoked_at = Instant::now();
    assert!(
        eventually(5, || async { store.version() > v0 }).await,
        "control plane did not reload the keys file: {:?}",
        store.last_error()
    );

    // key_ttl (1 s) + reload (250 ms) + a stale answer while revalidating: 10 s is plenty.
    let deadline = revoked_at + Duration::from_secs(10);
    let mut last = chat_once(&edge, Some(KEY), QWEN, 4).await;
    while status_of(&last) != 401 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = chat_once(&edge, Some(KEY), QWEN, 4).await;
    }
    let refused = status_of(&last) == 401;
    let took = revoked_at.elapsed();
    assert!(
        refused,
        "revoked key still accepted after {took:?}:\n{}\nlog:\n{}",
        String::from_utf8_lossy(&last),
        edge.log_text()
    );
    eprintln!("revoked key refused {took:?} after the keys file changed");
    assert_openai_error(&body_of(&last), "invalid_api_key");
    // And it stays refused.
    let again = chat_once(&edge, Some(KEY), QWEN, 4).await;
    assert_eq!(status_of(&again), 401);
    ctl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_route_change_moves_traffic_without_an_edge_restart() {
    let a = sim(SimKind::Vllm, |_| {}).await;
    let b = sim(SimKind::Vllm, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("control.yaml");
    let keys = dir.path().join("keys.yaml");
    std::fs::write(
        &cfg,
        control_yaml(ACME, "  - { model: \"Qwen/*\", pool: a }\n", true),
    )
    .unwrap();
    std::fs::write(&keys, keys_text(&[(KEY, "acme")])).unwrap();
    let store = YamlStore::load(&cfg).expect("load control config");
    let ctl = serve(&store).await;
    let state = tempfile::tempdir().unwrap();
    let pools = format!(
        "{}{}",
        pool("a", "vllm", &[a.addr()]),
        pool("b", "vllm", &[b.addr()])
    );
    let edge = embedded::edge(&edge_yaml(
        &pools,
        &openai_route("[a, b]"),
        ctl.addr(),
        state.path(),
        "  key_ttl: 60s\n",
    ))
    .await;

    for _ in 0..5 {
        assert_streamed(&chat_once(&edge, Some(KEY), QWEN, 4).await, 4, &edge);
    }
    assert_eq!(a.stats().requests, 5, "{:?}", a.stats());
    assert_eq!(b.stats().requests, 0, "{:?}", b.stats());

    // Edit the control plane's route: Qwen now goes to pool b.
    replace(
        &cfg,
        &control_yaml(ACME, "  - { model: \"Qwen/*\", pool: b }  # moved\n", true),
    );
    let edited = Instant::now();
    let mut took = None;
    let deadline = edited + Duration::from_secs(5);
    while Instant::now() < deadline {
        let before = b.stats().requests;
        assert_streamed(&chat_once(&edge, Some(KEY), QWEN, 4).await, 4, &edge);
        if b.stats().requests > before {
            took = Some(edited.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = took.unwrap_or_else(|| {
        panic!(
            "requests still go to pool a 5 s after the route edit (control version {}, error {:?}); log:\n{}",
            store.version(),
            store.last_error(),
            edge.log_text()
        )
    });
    eprintln!("route change took effect {took:?} after the control.yaml edit");

    // From now on, every request goes to b.
    let a_before = a.stats().requests;
    for _ in 0..5 {
        assert_streamed(&chat_once(&edge, Some(KEY), QWEN, 4).await, 4, &edge);
    }
    assert_eq!(a.stats().requests, a_before, "{:?}", a.stats());
    assert_eq!(
        edge.metric("okome_policy_snapshot_version", &[]).await,
        store.version() as f64
    );
    ctl.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Invalid control.yaml edit
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_control_edit_keeps_the_last_good_version_serving() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("control.yaml");
    let keys = dir.path().join("keys.yaml");
    std::fs::write(&cfg, control_yaml(ACME, QWEN_ROUTE, true)).unwrap();
    std::fs::write(&keys, keys_text(&[(KEY, "acme")])).unwrap();
    let store = YamlStore::load(&cfg).expect("load control config");
    let ctl = serve(&store).await;
    let state = tempfile::tempdir().unwrap();
    let edge = embedded::edge(&edge_yaml(
        &pool("vllm", "vllm", &[s.addr()]),
        &openai_route("[vllm]"),
        ctl.addr(),
        state.path(),
        "  key_ttl: 60s\n",
    ))
    .await;
    assert_streamed(&chat_once(&edge, Some(KEY), QWEN, 4).await, 4, &edge);
    let v0 = edge.metric("okome_policy_snapshot_version", &[]).await;
    assert_eq!(v0, store.version() as f64);

    // An edit that does not validate (edges: 0) and one that does not even parse.
    for bad in [
        control_yaml(ACME, QWEN_ROUTE, true).replace("edges: 1", "edges: 0"),
        format!("{}\ntenants: [[[\n", control_yaml(ACME, QWEN_ROUTE, true)),
    ] {
        replace(&cfg, &bad);
        assert!(
            eventually(5, || async { store.last_error().is_some() }).await,
            "the control plane did not reject {bad:?}"
        );
        // Give the edge time to (wrongly) learn something, then check it did not.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        for _ in 0..3 {
            assert_streamed(&chat_once(&edge, Some(KEY), QWEN, 4).await, 4, &edge);
        }
        assert_eq!(store.version() as f64, v0);
        assert_eq!(
            edge.metric("okome_policy_snapshot_version", &[]).await,
            v0,
            "log:\n{}",
            edge.log_text()
        );
        // Restore the good file (same content as version v0: no new version).
        replace(&cfg, &control_yaml(ACME, QWEN_ROUTE, true));
        assert!(
            eventually(5, || async { store.last_error().is_none() }).await,
            "{:?}",
            store.last_error()
        );
    }

    // The metric is live: a valid change does move it.
    replace(
        &cfg,
        &control_yaml(&format!("{ACME}  - id: other\n"), QWEN_ROUTE, true),
    );
    assert!(
        eventually(5, || async {
            edge.metric("okome_policy_snapshot_version", &[]).await > v0
        })
        .await,
        "valid edit not picked up (control version {}); log:\n{}",
        store.version(),
        edge.log_text()
    );
    assert_streamed(&chat_once(&edge, Some(KEY), QWEN, 4).await, 4, &edge);
    ctl.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Error shapes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_errors_use_the_api_shape_of_the_client() {
    const KEY_LLAMAS: &str = "okome-test-key-llamas";
    const KEY_SLOW: &str = "okome-test-key-slow";
    let v = sim(SimKind::Vllm, |_| {}).await;
    let o = sim(SimKind::Ollama, |_| {}).await;
    let tenants = format!(
        "{ACME}  - id: llamas\n    models: [\"llama*\"]\n  - id: slow\n    models: [\"*\"]\n    requests_per_minute: 1\n"
    );
    let routes = "  - { model: \"llama*\", pool: ollama }\n  - { model: \"Qwen/*\", pool: vllm }\n";
    let (store, ctl) = memory_control(&tenants, routes, "acme").await;
    store.insert_key(&hash_key(KEY_LLAMAS), "llamas").unwrap();
    store.insert_key(&hash_key(KEY_SLOW), "slow").unwrap();
    let state = tempfile::tempdir().unwrap();
    let pools = format!(
        "{}{}",
        pool("vllm", "vllm", &[v.addr()]),
        pool("ollama", "ollama", &[o.addr()])
    );
    let edge = embedded::edge(&edge_yaml(
        &pools,
        &format!("{}{}", ollama_route(), openai_route("[vllm]")),
        ctl.addr(),
        state.path(),
        "  key_ttl: 60s\n",
    ))
    .await;
    let openai = |key: Option<&'static str>| {
        let addr = edge.addr;
        async move { raw(addr, &request("/v1/chat/completions", &chat(QWEN, 4), key)).await }
    };
    let ollama = |key: Option<&'static str>, model: &'static str| {
        let addr = edge.addr;
        async move { raw(addr, &request("/api/chat", &ollama_chat(model, 4), key)).await }
    };

    // 401: no key, a bad key.
    let r = openai(None).await;
    assert_eq!(status_of(&r), 401, "{}", String::from_utf8_lossy(&r));
    assert_openai_error(&body_of(&r), "missing_api_key");
    let r = openai(Some("okome-not-a-key")).await;
    assert_eq!(status_of(&r), 401, "{}", String::from_utf8_lossy(&r));
    assert_openai_error(&body_of(&r), "invalid_api_key");
    let r = ollama(None, LLAMA).await;
    assert_eq!(status_of(&r), 401, "{}", String::from_utf8_lossy(&r));
    assert_ollama_error(&body_of(&r));
    let r = ollama(Some("okome-not-a-key"), LLAMA).await;
    assert_eq!(status_of(&r), 401, "{}", String::from_utf8_lossy(&r));
    assert_ollama_error(&body_of(&r));

    // 403: tenant `llamas` asks for Qwen; its llama requests pass.
    let r = openai(Some(KEY_LLAMAS)).await;
    assert_eq!(status_of(&r), 403, "{}", String::from_utf8_lossy(&r));
    assert_openai_error(&body_of(&r), "model_not_allowed");
    let r = ollama(Some(KEY_LLAMAS), QWEN).await;
    assert_eq!(status_of(&r), 403, "{}", String::from_utf8_lossy(&r));
    assert_ollama_error(&body_of(&r));
    let r = ollama(Some(KEY_LLAMAS), LLAMA).await;
    assert_eq!(
        status_of(&r),
        200,
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&r),
        edge.log_text()
    );

    // 429: tenant `slow` has 1 request per minute.
    assert_streamed(&openai(Some(KEY_SLOW)).await, 4, &edge);
    let r = openai(Some(KEY_SLOW)).await;
    assert_eq!(status_of(&r), 429, "{}", String::from_utf8_lossy(&r));
    assert_openai_error(&body_of(&r), "rate_limit_exceeded");
    assert_retry_after(&r);
    let r = ollama(Some(KEY_SLOW), LLAMA).await;
    assert_eq!(status_of(&r), 429, "{}", String::from_utf8_lossy(&r));
    assert_ollama_error(&body_of(&r));
    assert_retry_after(&r);

    // Nothing refused reached an engine: one Qwen stream, one llama stream.
    assert_eq!(v.stats().requests, 1, "{:?}", v.stats());
    assert_eq!(o.stats().requests, 1, "{:?}", o.stats());
    ctl.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Token accounting of a cut stream
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_stream_charges_the_tokens_relayed_not_the_reservation() {
    cut_stream_charges(okome_sim::JsonStyle::Compact).await;
}

/// The same with an engine that writes JSON as Python does (`"content": " x"`): the tap that
/// settles the tenant reads what the JSON means, so the charge is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_stream_charges_the_tokens_relayed_with_spaced_json() {
    cut_stream_charges(okome_sim::JsonStyle::Spaced).await;
}

async fn cut_stream_charges(style: okome_sim::JsonStyle) {
    let s = sim(SimKind::Vllm, |c| {
        c.tokens_per_second = 20.0;
        c.json_style = style;
    })
    .await;
    // 60 tokens a minute: a second 50-token reservation fits only if the first was settled.
    let tenants = "  - id: metered\n    models: [\"*\"]\n    tokens_per_minute: 60\n";
    let (_store, ctl) = memory_control(tenants, QWEN_ROUTE, "metered").await;
    let state = tempfile::tempdir().unwrap();
    let edge = embedded::edge(&edge_yaml(
        &pool("vllm", "vllm", &[s.addr()]),
        &openai_route("[vllm]"),
        ctl.addr(),
        state.path(),
        "  key_ttl: 60s\n",
    ))
    .await;

    let mut c = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    c.write_all(&request("/v1/chat/completions", &chat(QWEN, 50), Some(KEY)))
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while sse_tokens(&String::from_utf8_lossy(&got)) < 3 {
        assert!(
            Instant::now() < deadline,
            "no tokens: {}\nlog:\n{}",
            String::from_utf8_lossy(&got),
            edge.log_text()
        );
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("read timeout")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(status_of(&got), 200);
    let received = sse_tokens(&String::from_utf8_lossy(&got)) as f64;
    drop(c);

    // Wait until the edge logged the end of the stream and settled the tenant.
    let tenant = [("tenant", "metered")];
    let settled = eventually(10, || async {
        edge.metric("okome_streams_total", &[]).await >= 1.0
            && edge.metric("okome_tenant_tokens_total", &tenant).await > 0.0
    })
    .await;
    assert!(
        settled,
        "stream end not recorded; log:\n{}",
        edge.log_text()
    );
    let charged = edge.metric("okome_tenant_tokens_total", &tenant).await;
    let relayed = edge.metric("okome_tokens_total", &[]).await;
    eprintln!("client read {received} tokens; edge relayed {relayed}, charged {charged}");
    assert_eq!(
        charged,
        relayed,
        "tenant charged {charged}, edge relayed {relayed}; log:\n{}",
        edge.log_text()
    );
    // The edge may have written a token or two more before it saw the client go away.
    assert!(
        charged >= received && charged <= received + 3.0,
        "charged {charged}, client read {received}"
    );
    assert!(charged < 50.0);
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "client_disconnect")])
            .await,
        1.0
    );

    // The reservation of 50 was replaced by the real count: another 50 fits in 60/min.
    let mut c = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    c.write_all(&request("/v1/chat/completions", &chat(QWEN, 50), Some(KEY)))
        .await
        .expect("write");
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("read timeout")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        status_of(&head),
        200,
        "second stream refused, so the cut stream was charged its reservation:\n{}",
        String::from_utf8_lossy(&head)
    );
    drop(c);
    ctl.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Edge restarted while the control plane is down
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_edge_serves_from_persisted_state_with_the_control_plane_down() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let (store, ctl) = memory_control(ACME, QWEN_ROUTE, "acme").await;
    let state = tempfile::tempdir().unwrap();
    let yaml = edge_yaml(
        &pool("vllm", "vllm", &[s.addr()]),
        &openai_route("[vllm]"),
        ctl.addr(),
        state.path(),
        "  key_ttl: 60s\n",
    );
    let edge = embedded::edge(&yaml).await;
    assert_streamed(&chat_once(&edge, Some(KEY), QWEN, 4).await, 4, &edge);
    let version = edge.metric("okome_policy_snapshot_version", &[]).await;
    assert_eq!(version, store.version() as f64);
    assert!(version >= 1.0);
    assert!(
        eventually(5, || async {
            std::fs::read_dir(state.path()).is_ok_and(|d| d.count() >= 2)
        })
        .await,
        "nothing persisted in {}",
        state.path().display()
    );
    drop(edge);
    ctl.shutdown().await;

    let edge = embedded::edge(&yaml).await;
    assert_streamed(&chat_once(&edge, Some(KEY), QWEN, 4).await, 4, &edge);
    assert_eq!(
        edge.metric("okome_policy_snapshot_version", &[]).await,
        version,
        "log:\n{}",
        edge.log_text()
    );
    // An unknown key is still refused (fail closed by default).
    let r = chat_once(&edge, Some("okome-never-seen"), QWEN, 4).await;
    assert_eq!(status_of(&r), 401, "{}", String::from_utf8_lossy(&r));
    assert_openai_error(&body_of(&r), "key_unverifiable");
}

// ---------------------------------------------------------------------------------------------
// A catch-all model route does not send requests to a pool that cannot speak their API
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_all_model_route_keeps_ollama_native_requests_on_an_ollama_pool() {
    let v = sim(SimKind::Vllm, |_| {}).await;
    let o = sim(SimKind::Ollama, |_| {}).await;
    // Every model → vllm: an Ollama-native /api/chat cannot be answered there.
    let (_store, ctl) = memory_control(ACME, "  - { model: \"*\", pool: vllm }\n", "acme").await;
    let state = tempfile::tempdir().unwrap();
    let pools = format!(
        "{}{}",
        pool("vllm", "vllm", &[v.addr()]),
        pool("ollama", "ollama", &[o.addr()])
    );
    let edge = embedded::edge(&edge_yaml(
        &pools,
        &format!("{}{}", ollama_route(), openai_route("")),
        ctl.addr(),
        state.path(),
        "",
    ))
    .await;
    let r = raw(
        edge.addr,
        &request("/api/chat", &ollama_chat(LLAMA, 3), Some(KEY)),
    )
    .await;
    assert_eq!(
        status_of(&r),
        200,
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&r),
        edge.log_text()
    );
    assert_eq!(o.stats().requests, 1, "served by the Ollama pool");
    assert_eq!(v.stats().requests, 0, "never sent to the vLLM pool");
    // The OpenAI API still follows the model route.
    let r = raw(
        edge.addr,
        &request("/v1/chat/completions", &chat(QWEN, 3), Some(KEY)),
    )
    .await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert_eq!(v.stats().requests, 1);
}

/// The edge's key-state file: a file that cannot be parsed is reported (log and
/// `okome_policy_state_errors_total{op="load"}`), not silently taken as empty; a burst of new keys
/// is written by the one background writer, every key in the file, without the requests writing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_state_is_written_off_the_request_path_and_bad_state_is_reported() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let (store, ctl) = memory_control(ACME, QWEN_ROUTE, "acme").await;
    let keys: Vec<String> = (0..20).map(|i| format!("okome-burst-key-{i}")).collect();
    for k in &keys {
        store.insert_key(&hash_key(k), "acme").unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("keys.json"), "{not json").unwrap();
    // The real binary: what is asserted is the line in the process's log.
    let edge = start_edge(&edge_yaml(
        &pool("vllm", "vllm", &[s.addr()]),
        &openai_route("[vllm]"),
        ctl.addr(),
        state.path(),
        "",
    ))
    .await;
    assert_eq!(
        edge.metric("okome_policy_state_errors_total", &[("op", "load")])
            .await,
        1.0
    );
    assert!(
        edge.log_text().contains("keys.json: not valid state"),
        "{}",
        edge.log_text()
    );

    let answers = futures::future::join_all(keys.iter().map(|k| async {
        raw(
            edge.addr,
            &request("/v1/chat/completions", &chat(QWEN, 2), Some(k)),
        )
        .await
    }))
    .await;
    for r in &answers {
        assert_eq!(status_of(r), 200, "{}", String::from_utf8_lossy(r));
    }
    let all_written = eventually(5, || async {
        let text = std::fs::read_to_string(state.path().join("keys.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        keys.iter().all(|k| v.get(hash_key(k)).is_some())
    })
    .await;
    assert!(all_written, "not every key hash was persisted");
    let leftovers: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    assert_eq!(
        edge.metric("okome_policy_state_errors_total", &[("op", "save")])
            .await,
        0.0
    );
}

/// An unknown key is asked of the control plane once (`negative`) and then answered from the
/// negative cache (`negative_hit`): a flood of bad keys is not a cache-miss storm in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_answered_from_the_cache_count_as_negative_hits() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let (_store, ctl) = memory_control(ACME, QWEN_ROUTE, "acme").await;
    let state = tempfile::tempdir().unwrap();
    let edge = embedded::edge(&edge_yaml(
        &pool("vllm", "vllm", &[s.addr()]),
        &openai_route("[vllm]"),
        ctl.addr(),
        state.path(),
        "  negative_ttl: 30s\n",
    ))
    .await;
    for _ in 0..5 {
        let r = chat_once(&edge, Some("okome-wrong-key"), QWEN, 2).await;
        assert_eq!(status_of(&r), 401);
    }
    for (result, n) in [("negative", 1.0), ("negative_hit", 4.0)] {
        let got = edge
            .metric("okome_policy_cache_requests_total", &[("result", result)])
            .await;
        assert_eq!(got, n, "{result}");
    }
    assert_eq!(ctl.key_lookups(), 1);
}
