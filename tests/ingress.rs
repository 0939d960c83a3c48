//! The ingress role: clients → an ingress okome edge → stream-node okome edges → engines, all
//! embedded in this process over real sockets.
//!
//! Each stream node listens on its own loopback address (`127.0.N.2`, `127.0.N.3`: all of
//! 127/8 is local on Linux) with both admin listeners on the same port, so the ingress's one
//! `health_check.port` reaches each node's `/readyz`, as it does in a real cluster where every
//! node's admin sits on 9090. Each test takes its own `N`, so tests run in parallel. Clients
//! connect from `127.0.N.9`, so the client's address differs from the ingress's (`127.0.0.1`,
//! the source the kernel picks towards `127.0.N.x`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{self, TestEdge};
use common::*;
use okome_sim::{SimHandle, SimKind};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const MODEL: &str = "Qwen/Qwen3-8B";

/// Two stream nodes, each in front of its own simulated vLLM, behind one ingress.
struct Cluster {
    ingress: TestEdge,
    nodes: [TestEdge; 2],
    sims: [SimHandle; 2],
    /// Where clients connect from.
    client_ip: IpAddr,
}

/// A stream node on `ip` (client listener on a free port, admin on `admin_port`, 0 = any) in
/// front of `sim`; it believes `X-Forwarded-For` from the ingress when `trust_ingress`.
async fn stream_node(ip: &str, admin_port: u16, sim: &SimHandle, trust_ingress: bool) -> TestEdge {
    let trusted = if trust_ingress {
        "trusted_proxies: [127.0.0.1/32]\n"
    } else {
        ""
    };
    embedded::edge_at(
        &format!("  - address: {ip}:0\n"),
        &format!("{ip}:{admin_port}"),
        &format!(
            "pools:\n{}    models: [\"{MODEL}\"]\nroutes:\n  - name: openai\n    pool: vllm\n{trusted}",
            pool("vllm", "vllm", &[sim.addr()])
        ),
    )
    .await
}

/// The cluster on `127.0.{net}.x`.
async fn cluster(net: u8, trust_ingress: bool) -> Cluster {
    let tweak = |c: &mut okome_sim::SimConfig| c.models = vec![MODEL.into()];
    let sims = [
        sim(SimKind::Vllm, tweak).await,
        sim(SimKind::Vllm, tweak).await,
    ];
    let a = stream_node(&format!("127.0.{net}.2"), 0, &sims[0], trust_ingress).await;
    let b = stream_node(
        &format!("127.0.{net}.3"),
        a.admin.port(),
        &sims[1],
        trust_ingress,
    )
    .await;
    assert_eq!(a.admin.port(), b.admin.port());
    let ingress = embedded::edge(&format!(
        "pools:
  nodes:
    kind: okome
    backends: [\"{}\", \"{}\"]
    health_check: {{interval: 200ms, timeout: 150ms, port: {}}}
    sticky:
      key: [header:x-conversation-id, api_key, stream_id]
routes:
  - name: ingress
    pool: nodes
    allow: [default, \"GET|DELETE /v1/okome/streams/*\"]
",
        a.addr,
        b.addr,
        a.admin.port()
    ))
    .await;
    let c = Cluster {
        ingress,
        nodes: [a, b],
        sims,
        client_ip: format!("127.0.{net}.9").parse().unwrap(),
    };
    assert_eq!(c.healthy(0).await, 1.0, "stream node A is in the rotation");
    assert_eq!(c.healthy(1).await, 1.0, "stream node B is in the rotation");
    c
}

impl Cluster {
    /// `okome_backend_healthy` of stream node `i` as the ingress sees it.
    async fn healthy(&self, i: usize) -> f64 {
        let id = self.nodes[i].addr.to_string();
        self.ingress
            .metric(
                "okome_backend_healthy",
                &[("pool", "nodes"), ("backend", &id)],
            )
            .await
    }

    /// A request to the ingress from the client's address.
    async fn send(&self, request: &[u8]) -> Vec<u8> {
        raw_from(self.client_ip, self.ingress.addr, request).await
    }

    /// Sends a small chat with `headers` and says which stream node served it (by the engines'
    /// request counts: requests are sequential).
    async fn which(&self, headers: &str) -> usize {
        let before = [self.sims[0].stats().requests, self.sims[1].stats().requests];
        let r = self
            .send(&post_with("/v1/chat/completions", &chat(MODEL, 2), headers))
            .await;
        assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
        let after = [self.sims[0].stats().requests, self.sims[1].stats().requests];
        match (after[0] - before[0], after[1] - before[1]) {
            (1, 0) => 0,
            (0, 1) => 1,
            d => panic!("one request reached the engines {d:?} times"),
        }
    }

    /// Sends `request` (which carries `x-request-id: id`) and says which stream node it reached,
    /// by the nodes' access logs: whatever a node answers, it logs the request.
    async fn reached(&self, request: &[u8], id: &str) -> usize {
        let r = self.send(request).await;
        assert!(!r.is_empty(), "no answer to {id}");
        let has = |i: usize| {
            self.nodes[i]
                .log_text()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|v| v["request_id"] == id)
        };
        assert!(
            eventually(5, || async { has(0) || has(1) }).await,
            "{id} reached no stream node: {}",
            String::from_utf8_lossy(&r)
        );
        match (has(0), has(1)) {
            (true, false) => 0,
            (false, true) => 1,
            d => panic!("{id} reached the nodes {d:?}"),
        }
    }

    async fn sticky(&self, result: &str) -> f64 {
        self.ingress
            .metric(
                "okome_sticky_picks_total",
                &[("pool", "nodes"), ("result", result)],
            )
            .await
    }
}

/// A raw HTTP/1.1 exchange over a connection made from `from`.
async fn raw_from(from: IpAddr, addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = sock.connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    out
}

/// A POST with a JSON body, extra header lines (`Name: value\r\n`) and `Connection: close`.
fn post_with(path: &str, body: &str, headers: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The access-log record of request `id` in `edge`'s log, once written (the record is written
/// as the request ends, which may be just after the client has its last byte).
async fn record(edge: &TestEdge, id: &str) -> Value {
    let find = || {
        edge.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["request_id"] == id)
    };
    assert!(
        eventually(5, || async { find().is_some() }).await,
        "no access-log record of {id}:\n{}",
        edge.log_text()
    );
    find().unwrap()
}

/// A token stream through ingress → stream node → engine is what the engine sends; one request
/// id is in every access log and reaches the engine; the engine learns the client's address and
/// scheme, and the stream node logs the real client because the ingress is trusted; a client's
/// own `X-Forwarded-For` is believed by nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_relay_through_the_ingress_with_one_request_id_and_the_client_address() {
    let c = cluster(21, true).await;
    let direct = normalize(&body_of(
        &raw(
            c.sims[0].addr(),
            &post("/v1/chat/completions", &chat(MODEL, 24)),
        )
        .await,
    ));
    assert!(direct.contains("data: [DONE]"), "{direct}");

    // Pinned to one node by its key, so the direct stream is from the same engine.
    let mut key = 0;
    while c.which(&format!("x-conversation-id: c-{key}\r\n")).await != 0 {
        key += 1;
    }
    let r = c
        .send(&post_with(
            "/v1/chat/completions",
            &chat(MODEL, 24),
            &format!(
                "x-conversation-id: c-{key}\r\nx-request-id: ingress-req-1\r\nX-Forwarded-For: 6.6.6.6\r\n"
            ),
        ))
        .await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert_eq!(
        normalize(&body_of(&r)),
        direct,
        "the stream through two edges differs from the engine's"
    );
    assert_eq!(
        header_of(&r, "x-request-id").as_deref(),
        Some("ingress-req-1")
    );

    // The engine saw the request id and where the request came from: the client's own claim,
    // the client as the ingress saw it, the ingress as the stream node saw it.
    let s = c.sims[0].stats();
    assert_eq!(s.last_request_id.as_deref(), Some("ingress-req-1"));
    assert_eq!(
        s.last_forwarded,
        [
            format!("x-forwarded-for: 6.6.6.6, {}, 127.0.0.1", c.client_ip),
            "x-forwarded-proto: http".to_owned()
        ]
    );

    // One id, both access logs; the stream node names the real client (the rightmost address
    // the trusted ingress did not write itself), not the ingress and not the client's claim.
    let at_ingress = record(&c.ingress, "ingress-req-1").await;
    let at_node = record(&c.nodes[0], "ingress-req-1").await;
    let ingress_client = at_ingress["client"].as_str().unwrap();
    assert!(
        ingress_client.starts_with(&format!("{}:", c.client_ip)),
        "{at_ingress}"
    );
    assert_eq!(at_node["client"], c.client_ip.to_string(), "{at_node}");
    assert_eq!(at_ingress["pool"], "nodes");
    assert_eq!(at_ingress["backend"], c.nodes[0].addr.to_string());
    assert_eq!(at_node["pool"], "vllm");

    // Without a client id, the ingress's own id is the one the stream node logs.
    let r = c
        .send(&post_with(
            "/v1/chat/completions",
            &chat(MODEL, 2),
            &format!("x-conversation-id: c-{key}\r\n"),
        ))
        .await;
    assert_eq!(status_of(&r), 200);
    let id = header_of(&r, "x-request-id").expect("a request id");
    assert_eq!(id.len(), 32, "{id}");
    record(&c.ingress, &id).await;
    assert_eq!(record(&c.nodes[0], &id).await["request_id"], id.as_str());

    // Straight to the stream node from an untrusted address, its X-Forwarded-For is not
    // believed: the TCP peer is the client.
    let r = raw_from(
        c.client_ip,
        c.nodes[0].addr,
        &post_with(
            "/v1/chat/completions",
            &chat(MODEL, 2),
            "x-request-id: spoofed-1\r\nX-Forwarded-For: 6.6.6.6\r\n",
        ),
    )
    .await;
    assert_eq!(status_of(&r), 200);
    let spoofed = record(&c.nodes[0], "spoofed-1").await;
    assert!(
        spoofed["client"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", c.client_ip)),
        "{spoofed}"
    );

    // The client's key reaches the stream node (which authenticates it), never the engine.
    let r = c
        .send(&post_with(
            "/v1/chat/completions",
            &chat(MODEL, 2),
            &format!("x-conversation-id: c-{key}\r\nAuthorization: Bearer sk-client\r\n"),
        ))
        .await;
    assert_eq!(status_of(&r), 200);
    assert_eq!(c.sims[0].stats().last_credentials, Vec::<String>::new());
}

/// A stream node that does not trust the ingress logs the ingress as the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_ingress_is_not_believed() {
    let c = cluster(22, false).await;
    let r = c
        .send(&post_with(
            "/v1/chat/completions",
            &chat(MODEL, 2),
            "x-request-id: untrusted-1\r\n",
        ))
        .await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    let node = if c.sims[0].stats().requests > 0 { 0 } else { 1 };
    let rec = record(&c.nodes[node], "untrusted-1").await;
    let client = rec["client"].as_str().unwrap();
    assert!(client.starts_with("127.0.0.1:"), "{rec}");
    // It still passes on what it was told, with the ingress appended.
    assert_eq!(
        c.sims[node].stats().last_forwarded[0],
        format!("x-forwarded-for: {}, 127.0.0.1", c.client_ip)
    );
}

/// The same key always lands on the same stream node and keys spread over both; requests
/// without a key are balanced; when a node drains (its `/readyz` turns 503) it leaves the
/// rotation, its keys move to the survivor and the survivor's keys stay where they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_keys_stay_put_and_move_only_off_a_draining_node() {
    let c = cluster(23, true).await;
    const KEYS: usize = 16;
    let mut home = Vec::new();
    for k in 0..KEYS {
        home.push(c.which(&format!("x-conversation-id: conv-{k}\r\n")).await);
    }
    for round in 0..2 {
        for (k, &h) in home.iter().enumerate() {
            let now = c.which(&format!("x-conversation-id: conv-{k}\r\n")).await;
            assert_eq!(now, h, "conv-{k} moved in round {round}");
        }
    }
    let on_b = home.iter().filter(|&&h| h == 1).count();
    assert!(
        (1..KEYS).contains(&on_b),
        "{KEYS} keys all on one node: {home:?}"
    );
    assert_eq!(c.sticky("hit").await, (3 * KEYS) as f64);
    assert_eq!(c.sticky("moved").await, 0.0);

    // The caller's API key and the stream id are keys too, in the configured order.
    let by_key = c.which("Authorization: Bearer sk-one\r\n").await;
    for _ in 0..3 {
        assert_eq!(c.which("Authorization: Bearer sk-one\r\n").await, by_key);
        assert_eq!(
            c.which("x-okome-stream-id: s-1\r\n").await,
            c.which("x-okome-stream-id: s-1\r\n").await
        );
    }

    // No key: least loaded of two, both nodes serve.
    let mut served = [0; 2];
    for _ in 0..24 {
        served[c.which("").await] += 1;
    }
    assert!(served.iter().all(|&n| n > 0), "{served:?}");
    assert_eq!(c.sticky("no_key").await, 24.0);

    // Node B drains: the ingress's probe of its /readyz fails and it leaves the rotation.
    c.nodes[1].drain();
    assert!(
        eventually(5, || async { c.healthy(1).await == 0.0 }).await,
        "the draining stream node stayed in the rotation"
    );
    assert_eq!(c.healthy(0).await, 1.0);
    for (k, &h) in home.iter().enumerate() {
        let now = c.which(&format!("x-conversation-id: conv-{k}\r\n")).await;
        assert_eq!(now, 0, "conv-{k} (was on {h}) went to the draining node");
    }
    // Only B's keys moved; A's were hits as before.
    assert_eq!(c.sticky("moved").await, on_b as f64);
    for _ in 0..8 {
        assert_eq!(
            c.which("").await,
            0,
            "a keyless request went to the draining node"
        );
    }
}

/// One engine down must not take a stream node out of the ingress's rotation for every model:
/// the ingress probes `/readyz?pools=any`, which stays 200 while any pool can serve, while a
/// load balancer in front of a single edge keeps the strict `/readyz` (every pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_one_dead_pool_stays_ready_for_the_ingress() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead); // nothing listens there now
    let edge = embedded::EdgeBuilder::new()
        .pool("vllm", "vllm", &[s.addr()])
        .pool("ollama", "ollama", &[dead_addr])
        .route(embedded::Route::to_pool("openai", "vllm").path_prefix("/v1/"))
        .start()
        .await;
    let get = |q: &'static str| {
        let url = edge.admin_url(&format!("/readyz{q}"));
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, text) = get("").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("ollama"), "{text}");
    assert_eq!(get("?pools=all").await.0, 503);
    assert_eq!(get("?pools=any").await, (200, "ready\n".to_owned()));
    assert_eq!(get("?pools=some").await.0, 400);
    // Draining is not ready either way.
    edge.drain();
    assert_eq!(get("?pools=any").await.0, 503);
}

/// A stream id names the stream node that made it (the tag of the address the node was reached
/// at, which is the ingress's backend address): a re-POST with `x-okome-stream-id`, a
/// `GET /v1/okome/streams/<id>` (resume) and a `DELETE` (cancel) all reach that node, although
/// the id hashes anywhere on the ring; an id whose tag names no node is hashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_id_reaches_the_node_that_made_it() {
    use okome_edge::resume::id::node_tag;
    let c = cluster(24, true).await;
    let mut n = 0;
    let mut rid = || {
        n += 1;
        format!("stream-req-{n}")
    };
    for (node, addr) in c.nodes.iter().map(|e| e.addr).enumerate() {
        // Several ids per node: their random parts put them on both nodes of the ring.
        for tail in ["0", "7", "c", "f"] {
            let id = format!("{:08x}-{}", node_tag(addr), tail.repeat(32));
            let r = rid();
            let post = post_with(
                "/v1/chat/completions",
                &chat(MODEL, 2),
                &format!("x-okome-stream-id: {id}\r\nx-request-id: {r}\r\n"),
            );
            assert_eq!(c.reached(&post, &r).await, node, "POST {id}");
            let r = rid();
            let get = format!(
                "GET /v1/okome/streams/{id}?cursor=3 HTTP/1.1\r\nHost: localhost\r\nx-request-id: {r}\r\nConnection: close\r\n\r\n"
            );
            assert_eq!(c.reached(get.as_bytes(), &r).await, node, "GET {id}");
            let r = rid();
            let delete = format!(
                "DELETE /v1/okome/streams/{id} HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: 3\r\nx-request-id: {r}\r\nConnection: close\r\n\r\n"
            );
            assert_eq!(c.reached(delete.as_bytes(), &r).await, node, "DELETE {id}");
        }
    }
    assert_eq!(c.sticky("hit").await, 24.0);
    assert_eq!(c.sticky("moved").await, 0.0);

    // Reached through a NAT (the node's own address is not a backend's): hashed, so ids spread
    // over both nodes and each one stays put.
    let nat: SocketAddr = "192.168.5.5:8080".parse().unwrap();
    let mut on = [0; 2];
    for k in 0..12u32 {
        let id = format!("{:08x}-{k:032x}", node_tag(nat));
        let mut resume = || {
            let r = rid();
            let get = format!(
                "GET /v1/okome/streams/{id} HTTP/1.1\r\nHost: localhost\r\nx-request-id: {r}\r\nConnection: close\r\n\r\n"
            );
            (get, r)
        };
        let (get, r) = resume();
        let first = c.reached(get.as_bytes(), &r).await;
        let (get, r) = resume();
        assert_eq!(c.reached(get.as_bytes(), &r).await, first, "{id} moved");
        on[first] += 1;
    }
    assert!(on.iter().all(|&n| n > 0), "{on:?}");
}
