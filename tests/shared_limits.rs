//! Tenant limits shared by every edge through one Redis (`limits.store: redis`): a real
//! `redis-server` on loopback, the real control plane in-process, embedded edges (and the real
//! `okome` binary where an edge must be SIGKILLed) and simulated engines.
//!
//! - skewed traffic over three edges admits exactly a tenant's requests/min between them;
//! - tokens/min counts reservations, and a stream the client cuts refunds what it did not use;
//! - concurrent streams hold across edges as leases, renewed while the stream runs and freed
//!   within the lease time when their edge is killed;
//! - Redis killed mid-run: fail-open tenants are served under the edge's local share, fail-closed
//!   ones get 503 `limits_unavailable` with Retry-After, nothing else fails; Redis back: shared
//!   counting resumes.
//!
//! Needs `redis-server` on the PATH (`apt-get install redis-server`; `.ci/run` installs it).
//! Deadlines are generous and polled; measured times are printed, never asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::embedded::{self, TestEdge};
use common::*;
use okome::control::{self, hash_key, ControlHandle, PolicyStore, YamlStore};
use okome_sim::SimKind;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const QWEN: &str = "Qwen/Qwen3-8B";
const FILTERS: &str = "[{ type: auth }, { type: policy }, { type: ratelimit }]";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A `redis-server` on a loopback port, without persistence; killed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    async fn start() -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: free_port(),
        };
        r.spawn().await;
        r
    }

    /// Starts the server on its port and waits until it answers PING.
    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (apt-get install redis-server)");
        self.child = Some(child);
        let ok = eventually(10, || async { self.ping().await }).await;
        assert!(ok, "redis-server on port {} did not answer", self.port);
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn conn(&self) -> Option<redis::aio::MultiplexedConnection> {
        let c = redis::Client::open(format!("redis://{}", self.address())).ok()?;
        tokio::time::timeout(Duration::from_secs(1), c.get_multiplexed_async_connection())
            .await
            .ok()?
            .ok()
    }

    async fn ping(&self) -> bool {
        let Some(mut c) = self.conn().await else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok()
    }

    /// Sum of a tenant's window (`rpm` or `tpm`) as stored.
    async fn window(&self, tenant: &str, what: &str) -> i64 {
        let mut c = self.conn().await.expect("redis connection");
        let vals: Vec<i64> = redis::cmd("HVALS")
            .arg(format!("okome:limits:{{{tenant}}}:{what}"))
            .query_async(&mut c)
            .await
            .expect("HVALS");
        vals.iter().sum()
    }

    /// Leases of a tenant not yet expired (by Redis's clock).
    async fn live_leases(&self, tenant: &str) -> usize {
        let mut c = self.conn().await.expect("redis connection");
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
        let now_ms = secs * 1000 + micros / 1000;
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(format!("okome:limits:{{{tenant}}}:streams"))
            .arg(now_ms + 1)
            .arg("+inf")
            .query_async(&mut c)
            .await
            .unwrap();
        ids.len()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A control plane in this process with `edges` edges, these tenants, and one key per tenant
/// (`key-<tenant>`).
async fn control_plane(edges: u32, tenants: &[(&str, &str)]) -> (YamlStore, ControlHandle) {
    let mut yaml = format!("listen: 127.0.0.1:0\nedges: {edges}\ntenants:\n");
    for (id, extra) in tenants {
        yaml.push_str(&format!("  - id: {id}\n    models: [\"*\"]\n{extra}"));
    }
    yaml.push_str("routes:\n  - { model: \"Qwen/*\", pool: vllm }\n");
    let store = YamlStore::from_str(&yaml).expect("control config");
    for (id, _) in tenants {
        store
            .insert_key(&hash_key(&key(id)), id)
            .expect("insert key");
    }
    let s: Arc<dyn PolicyStore> = Arc::new(store.clone());
    let ctl = control::start(s, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("start control API");
    (store, ctl)
}

fn key(tenant: &str) -> String {
    format!("key-{tenant}")
}

/// The edge config body: one vLLM pool, the tenant filters, the control plane and the shared
/// store.
fn edge_body(
    engine: SocketAddr,
    ctl: SocketAddr,
    state: &std::path::Path,
    redis: &str,
    timeout: &str,
    lease: &str,
) -> String {
    format!(
        "pools:\n{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pools: [vllm]\n    filters: {FILTERS}\n\
         control:\n  address: {ctl}\n  state_dir: {}\n  key_ttl: 60s\n\
         limits:\n  store: redis\n  redis:\n    address: {redis}\n    timeout: {timeout}\n    lease: {lease}\n",
        pool("vllm", "vllm", &[engine]),
        state.display()
    )
}

/// A streaming chat completion with the tenant's key and `Connection: close`.
fn chat_request(tenant: &str, max_tokens: u32) -> Vec<u8> {
    let body = chat(QWEN, max_tokens);
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n{body}",
        body.len(),
        key(tenant)
    )
    .into_bytes()
}

/// Sends `per_edge[i]` requests to edge `i`, all at once, interleaved; the responses.
async fn burst(
    edges: &[SocketAddr],
    per_edge: &[usize],
    tenant: &str,
    max_tokens: u32,
) -> Vec<Vec<u8>> {
    let mut tasks = Vec::new();
    let most = per_edge.iter().copied().max().unwrap_or(0);
    for round in 0..most {
        for (i, &n) in per_edge.iter().enumerate() {
            if round < n {
                tasks.push(tokio::spawn(raw_owned(
                    edges[i],
                    chat_request(tenant, max_tokens),
                )));
            }
        }
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

fn count(resps: &[Vec<u8>], status: u16) -> usize {
    resps.iter().filter(|r| status_of(r) == status).count()
}

/// Statuses other than those allowed, with their responses, for a failure message.
fn unexpected(resps: &[Vec<u8>], allowed: &[u16]) -> Vec<String> {
    resps
        .iter()
        .filter(|r| !allowed.contains(&status_of(r)))
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect()
}

/// Reads a streaming response until its head and `tokens` content tokens arrived.
async fn read_tokens(c: &mut tokio::net::TcpStream, tokens: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(15);
    while !got.windows(4).any(|w| w == b"\r\n\r\n")
        || (status_of(&got) == 200 && sse_tokens(&String::from_utf8_lossy(&got)) < tokens)
    {
        assert!(
            Instant::now() < deadline,
            "too slow: {}",
            String::from_utf8_lossy(&got)
        );
        let n = tokio::time::timeout(Duration::from_secs(15), c.read(&mut buf))
            .await
            .expect("read timeout")
            .expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    if status_of(&got) != 200 {
        // A refusal: the whole of it (the edge closes after it).
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await;
    }
    got
}

/// Opens a stream of `tenant` on `edge`; the connection and what arrived once the head and
/// `tokens` tokens are in (or the refusal).
async fn open_stream(
    edge: SocketAddr,
    tenant: &str,
    max_tokens: u32,
    tokens: usize,
) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut c = tokio::net::TcpStream::connect(edge).await.expect("connect");
    c.write_all(&chat_request(tenant, max_tokens))
        .await
        .expect("write");
    let got = read_tokens(&mut c, tokens).await;
    (c, got)
}

async fn three_edges(body: &str) -> Vec<TestEdge> {
    vec![
        embedded::edge(body).await,
        embedded::edge(body).await,
        embedded::edge(body).await,
    ]
}

// ---------------------------------------------------------------------------------------------
// 1. Requests per minute across three edges, skewed traffic
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skewed_traffic_over_three_edges_admits_exactly_the_requests_per_minute() {
    let redis = RedisServer::start().await;
    let engine = sim(SimKind::Vllm, |_| {}).await;
    let (_store, ctl) = control_plane(3, &[("skewed", "    requests_per_minute: 60\n")]).await;
    let state = tempfile::tempdir().unwrap();
    // A generous timeout: on a loaded test machine a slow answer would fall back to the local
    // share and blur the count this test is about (the failure mode has its own test).
    let body = edge_body(
        engine.addr(),
        ctl.addr(),
        state.path(),
        &redis.address(),
        "2s",
        "30s",
    );
    let edges = three_edges(&body).await;
    let addrs: Vec<SocketAddr> = edges.iter().map(|e| e.addr).collect();

    // 100 requests within seconds, 70 of them to one edge. Alone, each edge would admit its
    // share, ceil(60 / 3) = 20: 20 + 15 + 15 = 50. Shared, the tenant gets its 60 exactly.
    let started = Instant::now();
    let resps = burst(&addrs, &[70, 15, 15], "skewed", 2).await;
    eprintln!("100 requests over three edges in {:?}", started.elapsed());
    assert_eq!(
        unexpected(&resps, &[200, 429]),
        Vec::<String>::new(),
        "only 200 and 429 expected"
    );
    assert_eq!(count(&resps, 200), 60, "admitted across the three edges");
    assert_eq!(count(&resps, 429), 40);
    let refused = resps.iter().find(|r| status_of(r) == 429).unwrap();
    assert_openai_error(&body_of(refused), "rate_limit_exceeded");
    let ra: u64 = header_of(refused, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&ra), "Retry-After {ra}");
    assert_eq!(redis.window("skewed", "rpm").await, 60);
    // Nothing refused reached the engine.
    assert_eq!(engine.stats().requests, 60, "{:?}", engine.stats());
    // The edges counted their refusals.
    let mut refused_total = 0.0;
    for e in &edges {
        refused_total += e
            .metric(
                "okome_limits_refused_total",
                &[("limit", "requests_per_minute")],
            )
            .await;
    }
    assert_eq!(refused_total, 40.0);
    ctl.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Tokens per minute: reservations, and refunds from streams cut early
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_per_minute_counts_reservations_and_refunds_cut_streams() {
    let redis = RedisServer::start().await;
    let fast = sim(SimKind::Vllm, |c| c.tokens_per_second = 2000.0).await;
    let (_store, ctl) = control_plane(
        3,
        &[
            ("bulk", "    tokens_per_minute: 1000\n"),
            ("metered", "    tokens_per_minute: 300\n"),
        ],
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let body = edge_body(
        fast.addr(),
        ctl.addr(),
        state.path(),
        &redis.address(),
        "2s",
        "30s",
    );
    let edges = three_edges(&body).await;
    let addrs: Vec<SocketAddr> = edges.iter().map(|e| e.addr).collect();

    // 15 requests reserving 100 tokens each, skewed: 1000/min fits exactly 10, whatever the
    // order (a finished stream settles to its real count, which is its reservation here).
    let resps = burst(&addrs, &[9, 3, 3], "bulk", 100).await;
    assert_eq!(unexpected(&resps, &[200, 429]), Vec::<String>::new());
    assert_eq!(count(&resps, 200), 10, "admitted 100-token reservations");
    let settled = eventually(10, || async { redis.window("bulk", "tpm").await == 1000 }).await;
    assert!(
        settled,
        "bulk's window holds {} tokens, expected 1000",
        redis.window("bulk", "tpm").await
    );

    // A 200-token stream on edge 0, cut by the client after a few tokens (on a slow engine so
    // it is certainly cut early).
    let slow = sim(SimKind::Vllm, |c| c.tokens_per_second = 20.0).await;
    let slow_edge = embedded::edge(&edge_body(
        slow.addr(),
        ctl.addr(),
        state.path(),
        &redis.address(),
        "2s",
        "30s",
    ))
    .await;
    let (c, got) = open_stream(slow_edge.addr, "metered", 200, 3).await;
    assert_eq!(status_of(&got), 200, "{}", String::from_utf8_lossy(&got));
    assert_eq!(redis.window("metered", "tpm").await, 200, "reserved");
    drop(c);
    // The edge settles off the token path; Redis then holds what was relayed, not 200.
    let refunded = eventually(10, || async { redis.window("metered", "tpm").await < 200 }).await;
    let held = redis.window("metered", "tpm").await;
    assert!(
        refunded,
        "the cut stream was not refunded: {held} tokens held"
    );
    let relayed = slow_edge.metric("okome_tokens_total", &[]).await;
    assert_eq!(held as f64, relayed, "charged {held}, relayed {relayed}");
    // 250 more fit in 300/min on another edge only because the unused reservation came back.
    let resps = burst(&addrs, &[0, 1, 0], "metered", 250).await;
    assert_eq!(
        status_of(&resps[0]),
        200,
        "refused although the cut stream's reservation was refunded:\n{}",
        String::from_utf8_lossy(&resps[0])
    );
    // And now the window is full: another reservation is refused on any edge.
    let resps = burst(&addrs, &[0, 0, 1], "metered", 100).await;
    assert_eq!(status_of(&resps[0]), 429);
    ctl.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Concurrent streams as leases; a killed edge's leases expire
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_streams_hold_across_edges_and_a_killed_edges_leases_expire() {
    let redis = RedisServer::start().await;
    // 5 tokens a second: a 100-token stream runs far longer than this test.
    let engine = sim(SimKind::Vllm, |c| c.tokens_per_second = 5.0).await;
    let (_store, ctl) = control_plane(3, &[("streams", "    max_concurrent_streams: 2\n")]).await;
    let state_a = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let lease = Duration::from_secs(2);
    let body_for = |state: &std::path::Path| {
        edge_body(
            engine.addr(),
            ctl.addr(),
            state,
            &redis.address(),
            "300ms",
            "2s",
        )
    };
    // Edge A is a real process, to be SIGKILLed; B and C are embedded.
    let mut a = start_edge(&body_for(state_a.path())).await;
    let b = embedded::edge(&body_for(state.path())).await;
    let c = embedded::edge(&body_for(state.path())).await;

    let (_sa, got) = open_stream(a.addr, "streams", 100, 1).await;
    assert_eq!(
        status_of(&got),
        200,
        "A: {}\n{}",
        String::from_utf8_lossy(&got),
        a.log_text()
    );
    let (sb, got) = open_stream(b.addr, "streams", 100, 1).await;
    assert_eq!(status_of(&got), 200, "B: {}", String::from_utf8_lossy(&got));
    assert_eq!(redis.live_leases("streams").await, 2);

    // A third stream on a third edge is over the limit of 2.
    let (_, got) = open_stream(c.addr, "streams", 5, 1).await;
    assert_eq!(status_of(&got), 429, "C: {}", String::from_utf8_lossy(&got));
    assert_openai_error(&body_of(&got), "rate_limit_exceeded");

    // Leases outlive their 2 s while their streams run: the edges renew them.
    tokio::time::sleep(lease * 2).await;
    assert_eq!(
        redis.live_leases("streams").await,
        2,
        "a running stream's lease expired: renewal failed"
    );
    let (_, got) = open_stream(c.addr, "streams", 5, 1).await;
    assert_eq!(status_of(&got), 429, "C: {}", String::from_utf8_lossy(&got));

    // SIGKILL edge A: nobody releases or renews its lease; it expires within the lease time.
    a.signal("KILL");
    assert!(a.exited_within(Duration::from_secs(5)).await);
    let killed = Instant::now();
    let mut admitted = None;
    while admitted.is_none() && killed.elapsed() < Duration::from_secs(15) {
        let (s, got) = open_stream(c.addr, "streams", 100, 1).await;
        match status_of(&got) {
            200 => admitted = Some(s),
            429 => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => panic!("C: {}", String::from_utf8_lossy(&got)),
        }
    }
    let freed = admitted.is_some();
    assert!(freed, "the killed edge's lease never expired");
    eprintln!(
        "a stream on C admitted {:?} after edge A was killed (lease {lease:?})",
        killed.elapsed()
    );
    assert_eq!(redis.live_leases("streams").await, 2, "B's and C's");

    // A stream that ends releases its lease at once (no waiting for expiry).
    drop(sb);
    let released = eventually(10, || async { redis.live_leases("streams").await == 1 }).await;
    assert!(released, "B's lease was not released when its stream ended");
    drop(admitted);
    ctl.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Redis killed mid-run: open and closed tenants; Redis back
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_fails_open_or_closed_per_tenant_and_shared_counting_resumes() {
    let mut redis = RedisServer::start().await;
    let engine = sim(SimKind::Vllm, |_| {}).await;
    let (_store, ctl) = control_plane(
        3,
        &[
            // Local share while Redis is down: ceil(30 / 3) = 10 at each edge.
            ("lenient", "    requests_per_minute: 30\n"),
            (
                "strict",
                "    requests_per_minute: 1000\n    on_limits_unavailable: closed\n",
            ),
        ],
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let body = edge_body(
        engine.addr(),
        ctl.addr(),
        state.path(),
        &redis.address(),
        "200ms",
        "30s",
    );
    let edges = three_edges(&body).await;
    let addrs: Vec<SocketAddr> = edges.iter().map(|e| e.addr).collect();

    // Shared counting while Redis is up.
    let resps = burst(&addrs, &[1, 1, 1], "lenient", 2).await;
    assert_eq!(count(&resps, 200), 3);
    let resps = burst(&addrs, &[1, 1, 1], "strict", 2).await;
    assert_eq!(count(&resps, 200), 3);
    assert_eq!(redis.window("lenient", "rpm").await, 3);
    assert_eq!(redis.window("strict", "rpm").await, 3);

    redis.kill();
    // Fail open: edge 0 admits its local share (10 this minute, its earlier shared admission
    // not counted locally), then refuses with 429, never a 5xx.
    let resps = burst(&addrs, &[15, 0, 0], "lenient", 2).await;
    assert_eq!(unexpected(&resps, &[200, 429]), Vec::<String>::new());
    assert_eq!(count(&resps, 200), 10, "local share of 30/min over 3 edges");
    let allowed = edges[0]
        .metric("okome_limits_allowed_on_error_total", &[])
        .await;
    assert_eq!(allowed, 10.0);
    // Fail closed: 503 in the API's error shape, with Retry-After.
    let resps = burst(&addrs, &[2, 2, 1], "strict", 2).await;
    assert_eq!(unexpected(&resps, &[503]), Vec::<String>::new());
    for r in &resps {
        assert_openai_error(&body_of(r), "limits_unavailable");
        let ra: u64 = header_of(r, "retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!(ra >= 1);
    }
    let mut errors = 0.0;
    let mut unavailable = 0.0;
    for e in &edges {
        errors += e
            .metric("okome_limits_store_errors_total", &[("op", "admit")])
            .await;
        unavailable += e
            .metric(
                "okome_limits_refused_total",
                &[("limit", "limits_unavailable")],
            )
            .await;
    }
    assert!(errors >= 1.0, "store errors not counted");
    assert_eq!(unavailable, 5.0);

    // Redis back (empty, as after a restart without persistence): within seconds the strict
    // tenant is admitted again, and counted in Redis.
    redis.spawn().await;
    let back = Instant::now();
    let resumed = eventually(20, || async {
        let r = raw(addrs[1], &chat_request("strict", 2)).await;
        match status_of(&r) {
            200 => true,
            503 => false,
            s => panic!("unexpected {s}: {}", String::from_utf8_lossy(&r)),
        }
    })
    .await;
    assert!(
        resumed,
        "shared counting did not resume after Redis came back"
    );
    eprintln!(
        "shared counting resumed {:?} after Redis came back",
        back.elapsed()
    );
    assert!(redis.window("strict", "rpm").await >= 1);
    // Every edge counts in Redis again (each probes once its backoff has passed): a request
    // admitted there adds one to the shared window.
    for (i, &a) in addrs.iter().enumerate() {
        let ok = eventually(10, || async {
            let before = redis.window("lenient", "rpm").await;
            status_of(&raw(a, &chat_request("lenient", 2)).await) == 200
                && redis.window("lenient", "rpm").await == before + 1
        })
        .await;
        assert!(ok, "edge {i} did not go back to shared counting");
    }
    assert!(redis.window("lenient", "rpm").await >= 3);
    ctl.shutdown().await;
}
