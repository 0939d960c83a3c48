//! Operating the edge without losing a stream: config reloads under load (embedded, and through
//! the real binary with SIGHUP and a file edit).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{self, EdgeBuilder, Route};
use common::*;
use okome_sim::SimKind;
use serde_json::json;
use std::time::{Duration, Instant};

const MODEL: &str = "Qwen/Qwen3-8B";

/// Streams long enough to be running when the config changes.
const STREAM_TOKENS: u32 = 30;

fn config(pool: &[std::net::SocketAddr], with_new_route: bool) -> EdgeBuilder {
    let mut b = EdgeBuilder::new().pool_with("vllm", "vllm", pool, json!({"models": [MODEL]}));
    if with_new_route {
        // Matches only requests carrying the header, so the old route still takes the rest.
        b = b.route(Route::to_pool("beta", "vllm").set(
            "match",
            json!({"path_prefix": "/v1/", "headers": {"x-beta": "1"}}),
        ));
    }
    b.route(Route::to_pool("openai", "vllm").path_prefix("/v1/"))
}

fn request(beta: bool) -> Vec<u8> {
    let body = chat(MODEL, STREAM_TOKENS);
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n{body}",
        body.len(),
        if beta { "x-beta: 1\r\n" } else { "" }
    )
    .into_bytes()
}

/// ~200 live streams and a steady rate of new requests while the config changes a route, adds
/// a backend and removes another: every stream completes byte-identical to what the engine
/// sends, no request fails, the removed backend gets no new request, and the new route serves
/// as soon as the reload returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_stream() {
    let tweak = |c: &mut okome_sim::SimConfig| {
        c.tokens_per_second = 25.0;
        c.max_concurrent = 1000;
    };
    let (a, b, c) = (
        sim(SimKind::Vllm, tweak).await,
        sim(SimKind::Vllm, tweak).await,
        sim(SimKind::Vllm, tweak).await,
    );
    let edge = config(&[a.addr(), b.addr()], false).start().await;
    let direct = normalize(&body_of(&raw(a.addr(), &request(false)).await));

    // Live streams, started before the reload.
    let live: Vec<_> = (0..200)
        .map(|_| tokio::spawn(raw_owned(edge.addr, request(false))))
        .collect();
    // A steady rate of new requests across the reload.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady = {
        let (stop, addr) = (stop.clone(), edge.addr);
        tokio::spawn(async move {
            let mut all = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                all.push(tokio::spawn(raw_owned(addr, request(false))));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            all
        })
    };
    // Let the streams get going: some tokens are out on each.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_before = b.stats().requests;

    let started = Instant::now();
    let version = edge
        .reload(&config(&[a.addr(), c.addr()], true).yaml())
        .await
        .unwrap_or_else(|e| panic!("reload: {e}"));
    println!(
        "reload applied in {:?} with 200 streams live",
        started.elapsed()
    );
    assert_eq!(version, 2);

    // The new route serves at once.
    let r = raw(edge.addr, &request(true)).await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert_eq!(
        edge.metric("okome_requests_total", &[("route", "beta")])
            .await,
        1.0
    );

    // Requests that started before the swap finish on the old config, the removed backend
    // included; give those a moment to reach it, then it must get nothing more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b_settled = b.stats().requests;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for h in live {
        outcomes.push(h.await.unwrap());
    }
    for h in steady.await.unwrap() {
        outcomes.push(h.await.unwrap());
    }
    for (i, r) in outcomes.iter().enumerate() {
        assert_eq!(
            status_of(r),
            200,
            "request {i}: {}",
            String::from_utf8_lossy(r)
        );
        assert_eq!(normalize(&body_of(r)), direct, "request {i}");
    }
    assert!(b.stats().requests >= b_before);
    assert_eq!(
        b.stats().requests,
        b_settled,
        "the removed backend got new requests"
    );
    assert!(c.stats().requests > 0, "the added backend serves");
    assert_eq!(
        edge.metric("okome_config_reloads_total", &[("result", "applied")])
            .await,
        1.0
    );
    assert_eq!(edge.metric("okome_config_version", &[]).await, 2.0);
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "completed")])
            .await,
        outcomes.len() as f64 + 1.0
    );
}

/// The operator's path: the real binary, SIGHUP and an edit of its file. An invalid edit is
/// refused with file:line:key and changes nothing; a change of a process setting is refused as
/// needing a restart; a valid edit is picked up from the file alone (the watch) and by SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_edits_reload_the_binary() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let body = |extra_route: &str| {
        format!(
            "pools:\n{}routes:\n{extra_route}  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n",
            pool("vllm", "vllm", &[s.addr()])
        )
    };
    let edge = start_edge(&body("")).await;
    let path = edge.dir.path().join("edge.yaml");
    let original = std::fs::read_to_string(&path).unwrap();
    let status = || async {
        reqwest::get(edge.admin_url("/status"))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    assert_eq!(status().await["config"]["version"], 1);

    // Invalid: refused where it is wrong; the running config keeps serving.
    let broken = original.replace("pool: vllm", "pool: nowhere");
    std::fs::write(&path, &broken).unwrap();
    hup(&edge);
    assert!(
        eventually(10, || async {
            status().await["config"]["last_result"] == "rejected"
        })
        .await,
        "log:\n{}",
        edge.log_text()
    );
    let line = broken
        .lines()
        .position(|l| l.contains("pool: nowhere"))
        .unwrap()
        + 1;
    assert!(
        edge.log_text()
            .contains(&format!("edge.yaml:{line}: routes[0].pool")),
        "log:\n{}",
        edge.log_text()
    );
    let r = raw(edge.addr, &post("/v1/chat/completions", &chat(MODEL, 2))).await;
    assert_eq!(status_of(&r), 200);
    assert_eq!(status().await["config"]["version"], 1);

    // A process setting: refused as needing a restart.
    std::fs::write(
        &path,
        original.replace("grace_period: 1s", "grace_period: 2s"),
    )
    .unwrap();
    hup(&edge);
    assert!(
        eventually(10, || async {
            status().await["config"]["last_result"] == "needs_restart"
        })
        .await,
        "log:\n{}",
        edge.log_text()
    );
    assert_eq!(status().await["config"]["version"], 1);

    // Valid, by the file watch alone: a new route.
    let started = Instant::now();
    std::fs::write(
        &path,
        original.replace(
            "routes:\n",
            "routes:\n  - name: beta\n    match: { path_prefix: /v1/, headers: { x-beta: \"1\" } }\n    pool: vllm\n",
        ),
    )
    .unwrap();
    assert!(
        eventually(10, || async { status().await["config"]["version"] == 2 }).await,
        "log:\n{}",
        edge.log_text()
    );
    println!("file edit applied after {:?}", started.elapsed());
    let req = {
        let body = chat(MODEL, 2);
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nx-beta: 1\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let r = raw(edge.addr, req.as_bytes()).await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert_eq!(
        edge.metric("okome_requests_total", &[("route", "beta")])
            .await,
        1.0
    );

    // SIGHUP with nothing changed on disk re-applies the same config: a new version.
    hup(&edge);
    assert!(eventually(10, || async { status().await["config"]["version"] == 3 }).await);
    assert_eq!(
        edge.metric("okome_config_reloads_total", &[("result", "rejected")])
            .await,
        1.0
    );
    assert_eq!(
        edge.metric("okome_config_reloads_total", &[("result", "needs_restart")])
            .await,
        1.0
    );
    assert_eq!(
        edge.metric("okome_config_reloads_total", &[("result", "applied")])
            .await,
        2.0
    );
}

fn hup(edge: &EdgeProc) {
    edge.signal("HUP");
}

/// One vLLM pool that knows its model (no dependence on discovery on a busy machine) and one
/// route to it.
fn one_pool(s: &okome_sim::SimHandle) -> String {
    format!(
        "pools:\n  vllm:\n    kind: vllm\n    backends: [\"{}\"]\n    models: [\"{MODEL}\"]\n    health_check: {{ interval: 500ms, timeout: 400ms }}\nroutes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n",
        s.addr()
    )
}

/// SIGTERM: `/readyz` says 503 at once while a stream is still running; the stream completes;
/// the edge exits as soon as it has (not after its 30 s grace period), and new connections are
/// refused from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_honestly_and_exits_when_the_last_stream_ends() {
    let s = sim(SimKind::Vllm, |c| c.tokens_per_second = 25.0).await;
    let mut edge = start_edge_with_grace(&one_pool(&s), "30s").await;
    let ready = || async {
        reqwest::get(edge.admin_url("/readyz"))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(ready().await, 200);
    let stream = tokio::spawn(raw_owned(
        edge.addr,
        post("/v1/chat/completions", &chat(MODEL, 30)),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    edge.signal("TERM");
    loop {
        match ready().await {
            503 => break,
            200 => tokio::time::sleep(Duration::from_millis(2)).await,
            other => panic!("readyz {other} while a stream runs:\n{}", edge.log_text()),
        }
    }
    let not_ready = signalled.elapsed();
    let r = stream.await.unwrap();
    assert!(
        String::from_utf8_lossy(&body_of(&r)).ends_with("data: [DONE]\n\n"),
        "the running stream completes: {}",
        String::from_utf8_lossy(&r)
    );
    let stream_done = signalled.elapsed();
    assert!(
        edge.exited_within(Duration::from_secs(15)).await,
        "the drained edge waited out its grace period:\n{}",
        edge.log_text()
    );
    println!(
        "SIGTERM → readyz 503 after {not_ready:?}; last stream done after {stream_done:?}; exit after {:?}",
        signalled.elapsed()
    );
    assert!(
        edge.log_text().contains("drained after"),
        "{}",
        edge.log_text()
    );
    assert!(tokio::net::TcpStream::connect(edge.addr).await.is_err());
}

/// An idle edge exits at once on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_edge_exits_at_once() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let mut edge = start_edge_with_grace(&one_pool(&s), "30s").await;
    let signalled = Instant::now();
    edge.signal("TERM");
    assert!(edge.exited_within(Duration::from_secs(15)).await);
    println!("idle edge: exit {:?} after SIGTERM", signalled.elapsed());
}

/// A stream still running when the grace period ends gets the terminal error event in its
/// format, and is logged with outcome `shutdown`; streams that end within the grace period
/// complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_running_at_the_end_of_the_grace_period_end_cleanly() {
    let slow = sim(SimKind::Vllm, |c| c.tokens_per_second = 10.0).await;
    let mut edge = start_edge_with_grace(&one_pool(&slow), "2s").await;
    let long: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(raw_owned(
                edge.addr,
                post("/v1/chat/completions", &chat(MODEL, 1000)),
            ))
        })
        .collect();
    let short = tokio::spawn(raw_owned(
        edge.addr,
        post("/v1/chat/completions", &chat(MODEL, 5)),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    edge.signal("TERM");
    let short = short.await.unwrap();
    assert!(
        String::from_utf8_lossy(&body_of(&short)).ends_with("data: [DONE]\n\n"),
        "a short stream completes during the drain: {}",
        String::from_utf8_lossy(&short)
    );
    for h in long {
        let r = h.await.unwrap();
        let body = String::from_utf8_lossy(&body_of(&r)).to_string();
        assert!(sse_tokens(&body) > 0, "{body}");
        let cut = body.find("data: {\"error\"").unwrap_or_else(|| {
            panic!(
                "no terminal error event: {body:?}\nlog:\n{}",
                edge.log_text()
            )
        });
        assert!(body[cut..].contains("shutting down"), "{}", &body[cut..]);
    }
    assert!(edge.exited_within(Duration::from_secs(10)).await);
    let log = edge.log_text();
    assert_eq!(
        log.matches("\"outcome\":\"shutdown\"").count(),
        5,
        "log:\n{log}"
    );
    assert_eq!(
        log.matches("\"outcome\":\"completed\"").count(),
        1,
        "log:\n{log}"
    );
}

/// Zero-downtime upgrade: with long streams running and new connections arriving every 20 ms,
/// `okome edge --upgrade` takes the listeners over on the old process's SIGQUIT. No connection
/// is refused, no stream is cut, the old process exits once its streams are done, and the new
/// one serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_refuses_nothing_and_cuts_nothing() {
    let s = sim(SimKind::Vllm, |c| {
        c.tokens_per_second = 25.0;
        c.max_concurrent = 1000;
    })
    .await;
    let mut old = start_edge_with_grace(&one_pool(&s), "30s").await;
    let long: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(raw_owned(
                old.addr,
                post("/v1/chat/completions", &chat(MODEL, 40)),
            ))
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady = {
        let (stop, addr) = (stop.clone(), old.addr);
        tokio::spawn(async move {
            let mut all = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                all.push(tokio::spawn(raw_owned(
                    addr,
                    post("/v1/chat/completions", &chat(MODEL, 3)),
                )));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            all
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = old.start_upgrade().await;
    let quit = Instant::now();
    old.signal("QUIT");
    // The old process serves its streams out and exits; new connections go to the new one.
    assert!(
        old.exited_within(Duration::from_secs(25)).await,
        "old edge still running; log:\n{}",
        old.log_text()
    );
    println!("old edge exited {:?} after SIGQUIT", quit.elapsed());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answers = Vec::new();
    for h in long {
        answers.push((true, h.await.unwrap()));
    }
    for h in steady.await.unwrap() {
        answers.push((false, h.await.unwrap()));
    }
    for (i, (long, r)) in answers.iter().enumerate() {
        let body = String::from_utf8_lossy(&body_of(r)).to_string();
        assert_eq!(
            status_of(r),
            200,
            "request {i}: {}\nold log:\n{}\nnew log:\n{}",
            String::from_utf8_lossy(r),
            old.log_text(),
            new.log_text()
        );
        assert!(body.ends_with("data: [DONE]\n\n"), "request {i}: {body}");
        assert_eq!(sse_tokens(&body), if *long { 40 } else { 3 }, "request {i}");
    }
    println!(
        "{} requests across the upgrade, all complete",
        answers.len()
    );
    // The new process serves on alone.
    let r = raw(new.addr, &post("/v1/chat/completions", &chat(MODEL, 3))).await;
    assert_eq!(status_of(&r), 200, "new log:\n{}", new.log_text());
    assert!(
        new.log_text().contains("upgrade: waiting"),
        "{}",
        new.log_text()
    );
}

/// Slow clients: hundreds of connections trickling their request head one byte at a time are
/// closed at `client_head` while normal clients are served throughout; an idle kept-alive
/// connection is closed after it too; a client that reads nothing releases the engine at
/// `client_write`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fast = sim(SimKind::Vllm, |c| {
        c.tokens_per_second = 5000.0;
        c.max_concurrent = 1000;
    })
    .await;
    let edge = embedded::edge(&format!(
        "timeouts: {{ client_head: 1s, client_write: 1s }}\n{}",
        one_pool(&fast)
    ))
    .await;

    // 200 slowloris connections: a byte of header every 200 ms, never done.
    let trickle: Vec<_> = (0..200)
        .map(|_| {
            let addr = edge.addr;
            tokio::spawn(async move {
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                let started = Instant::now();
                c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    .await
                    .unwrap();
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if c.write_all(b"a").await.is_err() {
                        return started.elapsed();
                    }
                    let mut buf = [0u8; 64];
                    if let Ok(Ok(0) | Err(_)) =
                        tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf)).await
                    {
                        return started.elapsed();
                    }
                    assert!(started.elapsed() < Duration::from_secs(30), "never closed");
                }
            })
        })
        .collect();
    // Normal clients meanwhile.
    for _ in 0..20 {
        let r = raw(edge.addr, &post("/v1/chat/completions", &chat(MODEL, 3))).await;
        assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    }
    let mut closed_after = Vec::new();
    for t in trickle {
        closed_after.push(t.await.unwrap());
    }
    closed_after.sort();
    println!(
        "200 slowloris connections closed after {:?} .. {:?} (client_head 1s)",
        closed_after[0],
        closed_after[closed_after.len() - 1]
    );

    // An idle kept-alive connection is closed after client_head.
    let mut c = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let body = chat(MODEL, 2);
    c.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The whole chunked response, its last chunk included.
    while !got.ends_with(b"0\r\n\r\n") {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the response ended");
        got.extend_from_slice(&buf[..n]);
    }
    let idle_since = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf))
        .await
        .expect("idle keep-alive connection never closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "more bytes on an idle connection");
    println!("idle keep-alive closed after {:?}", idle_since.elapsed());

    // A client that reads nothing of a long, fast stream: the edge gives up at client_write
    // and the engine's stream is aborted.
    let aborted_before = fast.stats().streams_aborted;
    let mut c = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    c.write_all(&post("/v1/chat/completions", &chat(MODEL, 1_000_000)))
        .await
        .unwrap();
    assert!(
        eventually(30, || async {
            fast.stats().streams_aborted > aborted_before
        })
        .await,
        "the engine was never released: {:?}",
        fast.stats()
    );
    drop(c);
    assert!(
        eventually(5, || async {
            edge.metric("okome_streams_total", &[("outcome", "client_disconnect")])
                .await
                >= 1.0
        })
        .await
    );
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A client reading a fast stream slowly: the edge buffers a bounded amount and pushes back on
/// the engine (Pingora's bounded pipe and TCP flow control), so its memory stays flat while the
/// engine could have produced far more than the client read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_fast_stream_keeps_the_edge_small() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fast = sim(SimKind::Vllm, |c| c.tokens_per_second = 1e9).await;
    let edge = start_edge(&format!(
        "timeouts: {{ client_write: 60s }}\n{}",
        one_pool(&fast)
    ))
    .await;
    // Warm up the process (allocator pools, TLS-free buffers) with one ordinary stream.
    let r = raw(edge.addr, &post("/v1/chat/completions", &chat(MODEL, 1000))).await;
    assert_eq!(status_of(&r), 200);
    let before = rss_bytes(edge.pid());
    let mut c = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    c.write_all(&post("/v1/chat/completions", &chat(MODEL, 50_000_000)))
        .await
        .unwrap();
    let mut read = 0usize;
    let mut peak = before;
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        read += c.read(&mut buf).await.unwrap();
        peak = peak.max(rss_bytes(edge.pid()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "slow reader: read {read} bytes in 4 s; edge RSS {} MiB before, peak {} MiB",
        before >> 20,
        peak >> 20
    );
    assert!(read > 0);
    assert!(
        peak.saturating_sub(before) < 32 << 20,
        "the edge buffered the engine's output: RSS {before} → {peak}"
    );
}

/// A request head larger than `limits.max_header_bytes` gets 431 in the API's error shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let edge = embedded::edge(&format!(
        "limits: {{ max_header_bytes: 4KiB }}\n{}",
        one_pool(&s)
    ))
    .await;
    let body = chat(MODEL, 2);
    let with_header = |bytes: usize| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nX-Big: {}\r\nConnection: close\r\n\r\n{body}",
            body.len(),
            "a".repeat(bytes)
        )
    };
    let r = raw(edge.addr, with_header(1000).as_bytes()).await;
    assert_eq!(status_of(&r), 200);
    let r = raw(edge.addr, with_header(5000).as_bytes()).await;
    assert_eq!(status_of(&r), 431, "{}", String::from_utf8_lossy(&r));
    assert_openai_error(&body_of(&r), "request_header_too_large");
    assert_eq!(s.stats().requests, 1, "the engine never saw it");
}

/// A body that stops arriving gets 408 at `client_body`; past `limits.max_requests` requests
/// get 503 with Retry-After instead of queueing, and running streams are not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_time_out_and_the_edge_caps_its_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = sim(SimKind::Vllm, |c| c.tokens_per_second = 20.0).await;
    let edge = embedded::edge(&format!(
        "timeouts: {{ client_body: 1s }}\nlimits: {{ max_requests: 2 }}\n{}",
        one_pool(&s)
    ))
    .await;

    let mut c = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    c.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut got))
        .await
        .expect("the edge kept waiting for the body");
    assert!(n.is_ok());
    assert_eq!(status_of(&got), 408, "{}", String::from_utf8_lossy(&got));
    assert_openai_error(&body_of(&got), "request_timeout");
    drop(c);

    let long: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(raw_owned(
                edge.addr,
                post("/v1/chat/completions", &chat(MODEL, 20)),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = raw(edge.addr, &post("/v1/chat/completions", &chat(MODEL, 2))).await;
    assert_eq!(status_of(&r), 503, "{}", String::from_utf8_lossy(&r));
    assert_openai_error(&body_of(&r), "edge_at_capacity");
    assert_eq!(header_of(&r, "retry-after").as_deref(), Some("1"));
    for h in long {
        let r = h.await.unwrap();
        assert!(String::from_utf8_lossy(&body_of(&r)).ends_with("data: [DONE]\n\n"));
    }
    let r = raw(edge.addr, &post("/v1/chat/completions", &chat(MODEL, 2))).await;
    assert_eq!(status_of(&r), 200);
}

/// `listeners[].max_connections`: connections over the cap get a clear 503 on their first
/// request and are closed; a kept-alive connection keeps its place across requests, and a closed
/// one frees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_caps_its_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = sim(SimKind::Vllm, |_| {}).await;
    let body = one_pool(&s);
    let edge =
        embedded::edge_with_listener("  - { address: 127.0.0.1:0, max_connections: 2 }\n", &body)
            .await;
    let req = || {
        let b = chat(MODEL, 2);
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )
        .into_bytes()
    };
    // One whole response off a kept-alive connection.
    async fn exchange(c: &mut tokio::net::TcpStream, req: &[u8]) -> Vec<u8> {
        c.write_all(req).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !(got.ends_with(b"0\r\n\r\n")
            || (got.starts_with(b"HTTP/1.1 503") && got.ends_with(b"}")))
        {
            let n = c.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }
    let mut a = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    assert_eq!(status_of(&exchange(&mut a, &req()).await), 200);
    assert_eq!(status_of(&exchange(&mut b, &req()).await), 200);
    // Kept alive: the same connections go on.
    assert_eq!(status_of(&exchange(&mut a, &req()).await), 200);
    let r = raw(edge.addr, &post("/v1/chat/completions", &chat(MODEL, 2))).await;
    assert_eq!(status_of(&r), 503, "{}", String::from_utf8_lossy(&r));
    assert_openai_error(&body_of(&r), "too_many_connections");
    assert_eq!(header_of(&r, "retry-after").as_deref(), Some("1"));
    drop(a);
    assert!(
        eventually(5, || async {
            status_of(&raw(edge.addr, &post("/v1/chat/completions", &chat(MODEL, 2))).await) == 200
        })
        .await,
        "a closed connection frees its place"
    );
    assert_eq!(status_of(&exchange(&mut b, &req()).await), 200);
}
