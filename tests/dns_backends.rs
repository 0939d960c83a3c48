//! Backends by name (`HOST:PORT`): resolved by the system resolver, re-resolved while serving.
//!
//! The first test runs the embedded edge with `localhost:PORT`. The others make a real name
//! change its answer: the `okome edge` binary runs in a mount namespace of its own where a
//! file of the test's is bind-mounted over `/etc/hosts` (what `ip netns exec` does with
//! `/etc/netns/NS/hosts`, without a network namespace, so the simulators on loopback stay
//! reachable); the test rewrites that file in place and getaddrinfo reads it on the next lookup.
//! That needs root (CAP_SYS_ADMIN) and `unshare`; without them those tests fail saying so.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{EdgeBuilder, Route};
use common::*;
use okome_sim::{SimHandle, SimKind};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "Qwen/Qwen3-8B";
const NAME: &str = "engine.okome.test";

fn stream_body(tokens: u32) -> String {
    format!(
        r#"{{"model":"{MODEL}","stream":true,"stream_options":{{"include_usage":true}},"max_tokens":{tokens},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

async fn status(admin: SocketAddr) -> Value {
    reqwest::get(format!("http://{admin}/status"))
        .await
        .expect("status")
        .json()
        .await
        .expect("status json")
}

/// The pool's `names` and `backends` on `/status`.
async fn pool_status(admin: SocketAddr, pool: &str) -> (Vec<Value>, Vec<Value>) {
    let s = status(admin).await;
    let p = s["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["name"] == pool)
        .cloned()
        .expect("the pool");
    (
        p["names"].as_array().cloned().unwrap_or_default(),
        p["backends"].as_array().cloned().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_backend_serves_a_stream_byte_identically_and_status_shows_its_address() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let port = s.addr().port();
    let edge = EdgeBuilder::new()
        .pool_with(
            "vllm",
            "vllm",
            &[],
            json!({"backends": [format!("localhost:{port}")], "resolve_every": "1s"}),
        )
        .route(Route::to_pool("openai", "vllm").path_prefix("/v1/"))
        .start()
        .await;
    let body = stream_body(6);
    let direct = body_of(&raw(s.addr(), &post("/v1/chat/completions", &body)).await);
    let via = raw(edge.addr, &post("/v1/chat/completions", &body)).await;
    assert_eq!(status_of(&via), 200, "{}", String::from_utf8_lossy(&via));
    let via = body_of(&via);
    assert_eq!(normalize(&via), normalize(&direct));
    assert!(String::from_utf8_lossy(&via).ends_with("data: [DONE]\n\n"));

    let (names, backends) = pool_status(edge.admin, "vllm").await;
    assert_eq!(names.len(), 1, "{names:?}");
    let n = &names[0];
    assert_eq!(n["name"], format!("localhost:{port}"));
    let want = format!("127.0.0.1:{port}");
    assert!(
        n["addresses"].as_array().unwrap().contains(&json!(want)),
        "{n}"
    );
    assert!(n["resolved_at"].as_u64().unwrap() > 0, "{n}");
    assert_eq!(n["failing"], false);
    let b = backends
        .iter()
        .find(|b| b["address"] == want)
        .unwrap_or_else(|| panic!("no backend {want}: {backends:?}"));
    assert_eq!(b["name"], "localhost");
    assert_eq!(b["healthy"], true);
    assert!(
        edge.metric(
            "okome_dns_resolutions_total",
            &[("pool", "vllm"), ("result", "changed")]
        )
        .await
            >= 1.0
    );
    // The resolver keeps asking (every second) and finds the same answer.
    assert!(
        eventually(5, || async {
            edge.metric(
                "okome_dns_resolutions_total",
                &[("pool", "vllm"), ("result", "unchanged")],
            )
            .await
                >= 1.0
        })
        .await,
        "the name was not resolved again"
    );
    assert_eq!(s.stats().requests, 2);
}

/// A reload that brings a name resolves it before it swaps: the first request after the reload
/// returns is served from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_resolves_its_new_names_before_the_swap() {
    let (s1, s2) = (
        sim(SimKind::Vllm, |_| {}).await,
        sim(SimKind::Vllm, |_| {}).await,
    );
    let route = || Route::to_pool("openai", "vllm").path_prefix("/v1/");
    let edge = EdgeBuilder::new()
        .pool("vllm", "vllm", &[s1.addr()])
        .route(route())
        .start()
        .await;
    let (names, _) = pool_status(edge.admin, "vllm").await;
    assert!(names.is_empty(), "{names:?}");
    let body = EdgeBuilder::new()
        .pool_with(
            "vllm",
            "vllm",
            &[],
            json!({"backends": [format!("localhost:{}", s2.addr().port())]}),
        )
        .route(route())
        .yaml();
    assert_eq!(edge.reload(&body).await.unwrap(), 2);
    let r = raw(edge.addr, &post("/v1/chat/completions", &stream_body(2))).await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert_eq!((s1.stats().requests, s2.stats().requests), (0, 1));
    let (names, backends) = pool_status(edge.admin, "vllm").await;
    assert_eq!(names[0]["name"], format!("localhost:{}", s2.addr().port()));
    assert!(
        backends.iter().all(|b| b["name"] == "localhost"),
        "{backends:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A real name whose answer changes: `okome edge` with its own /etc/hosts.
// ---------------------------------------------------------------------------------------------

/// An `okome edge` process that sees `hosts` as its `/etc/hosts`; killed on drop.
struct NsEdge {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    hosts: std::path::PathBuf,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for NsEdge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NsEdge {
    /// Starts the edge with `yaml_body` and `hosts` as its hosts file (retried on fresh ports
    /// when another test took one of them).
    async fn start(yaml_body: &str, hosts: &str) -> NsEdge {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(yaml_body, hosts).await {
                Ok(e) => return e,
                Err(log) => last = log,
            }
        }
        panic!("edge did not start; log:\n{last}");
    }

    async fn try_start(yaml_body: &str, hosts: &str) -> Result<NsEdge, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = dir.path().join("edge.yaml");
        std::fs::write(
            &cfg,
            format!(
                "listeners:\n  - address: {addr}\nadmin:\n  address: {admin}\nserver:\n  threads: 2\n  grace_period: 1s\n  upgrade_sock: {}\naccess_log:\n  enabled: false\n{yaml_body}",
                dir.path().join("upgrade.sock").display()
            ),
        )
        .unwrap();
        let hosts_path = dir.path().join("hosts");
        std::fs::write(&hosts_path, hosts).unwrap();
        let log = dir.path().join("edge.log");
        // unshare(1) and sh exec in turn: the child's pid is the edge's.
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/hosts && shift && exec "$@""#)
            .arg("sh")
            .arg(&hosts_path)
            .arg(env!("CARGO_BIN_EXE_okome"))
            .args(["edge", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn unshare (util-linux)");
        let mut e = NsEdge {
            child,
            addr,
            admin,
            hosts: hosts_path,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(_)) = e.child.try_wait() {
                let log = e.log_text();
                assert!(
                    log.contains("Address already in use"),
                    "the edge exited (a mount namespace needs root with CAP_SYS_ADMIN); log:\n{log}"
                );
                return Err(log);
            }
            assert!(
                Instant::now() < deadline,
                "edge did not start; log:\n{}",
                e.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(e)
    }

    /// Rewrites the hosts file the edge sees, in place (a bind mount follows the inode, so a
    /// rename would not be seen).
    fn set_hosts(&self, text: &str) {
        std::fs::write(&self.hosts, text).unwrap();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        scrape_metric(self.admin, name, labels).await
    }
}

fn hosts_file(ips: &[&str]) -> String {
    let mut s = "127.0.0.1 localhost\n".to_owned();
    for ip in ips {
        s.push_str(&format!("{ip} {NAME}\n"));
    }
    s
}

/// Two simulated vLLMs on the same port of two loopback addresses (a name gives addresses, the
/// port is the config's).
async fn two_sims_on_one_port() -> (SimHandle, SimHandle) {
    let tweak = |c: &mut okome_sim::SimConfig| {
        c.tokens_per_second = 20.0;
        c.max_concurrent = 100;
    };
    for _ in 0..20 {
        let a = sim(SimKind::Vllm, |c| {
            c.listen = "127.0.0.2:0".parse().unwrap();
            tweak(c);
        })
        .await;
        let port = a.addr().port();
        let mut c = okome_sim::SimConfig::new(SimKind::Vllm);
        c.listen = SocketAddr::from(([127, 0, 0, 3], port));
        c.prefill = Duration::from_millis(5);
        c.default_max_tokens = 8;
        tweak(&mut c);
        if let Ok(b) = okome_sim::start(c).await {
            return (a, b);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

fn config(port: u16) -> String {
    format!(
        "pools:\n  vllm:\n    kind: vllm\n    backends: [\"{NAME}:{port}\"]\n    resolve_every: 1s\n    health_check: {{ interval: 200ms, timeout: 150ms }}\nroutes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n"
    )
}

/// A name's answer goes from A to A+B: B takes requests within a few resolve intervals, the
/// stream running on A is not cut (byte-identical to A's own), A stays healthy through the new
/// generation. Then the name stops resolving: the pool keeps serving on A and B, the error is
/// on `/status` and logged once, not every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_answer_adds_a_backend_and_a_failed_lookup_keeps_the_last_good_set() {
    let (a, b) = two_sims_on_one_port().await;
    let port = a.addr().port();
    let (a_id, b_id) = (a.addr().to_string(), b.addr().to_string());
    let edge = NsEdge::start(&config(port), &hosts_file(&["127.0.0.2"])).await;

    let (names, backends) = pool_status(edge.admin, "vllm").await;
    assert_eq!(names[0]["addresses"], json!([a_id]), "{names:?}");
    assert_eq!(backends.len(), 1, "{backends:?}");
    assert_eq!(backends[0]["name"], NAME);
    assert_eq!(backends[0]["healthy"], true, "{backends:?}");

    // A stream running on A across the change (~7 s at 20 tokens/s).
    let long = post("/v1/chat/completions", &stream_body(140));
    let direct = tokio::spawn(raw_owned(a.addr(), long.clone()));
    let running = tokio::spawn(raw_owned(edge.addr, long));
    assert!(
        eventually(5, || async { a.stats().requests >= 2 }).await,
        "the stream did not reach A"
    );

    let changed = Instant::now();
    edge.set_hosts(&hosts_file(&["127.0.0.2", "127.0.0.3"]));
    // New requests reach B within a few resolve intervals (1s each).
    let short = post("/v1/chat/completions", &stream_body(2));
    let reached_b = eventually(6, || {
        let short = short.clone();
        let (edge_addr, b) = (edge.addr, &b);
        async move {
            for _ in 0..4 {
                let r = raw(edge_addr, &short).await;
                assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
            }
            b.stats().requests > 0
        }
    })
    .await;
    assert!(
        reached_b,
        "B got no request after the name added it; log:\n{}",
        edge.log_text()
    );
    println!(
        "B served {:?} after the hosts file changed",
        changed.elapsed()
    );
    // A is the same backend in the new generation: its in-flight count still has the stream
    // (a backend rebuilt from scratch would say 0).
    assert!(
        !running.is_finished(),
        "the stream ended before it could be checked"
    );
    let (_, backends) = pool_status(edge.admin, "vllm").await;
    let a_now = backends.iter().find(|b| b["address"] == a_id).unwrap();
    assert_eq!(a_now["inflight"], 1, "{backends:?}");

    // The stream on A was not cut, and A kept its health through the new generation.
    let via = running.await.unwrap();
    assert_eq!(status_of(&via), 200);
    let (via, direct) = (body_of(&via), body_of(&direct.await.unwrap()));
    assert_eq!(normalize(&via), normalize(&direct));
    assert!(String::from_utf8_lossy(&via).ends_with("data: [DONE]\n\n"));
    let (names, backends) = pool_status(edge.admin, "vllm").await;
    assert_eq!(names[0]["addresses"], json!([a_id, b_id]), "{names:?}");
    assert_eq!(backends.len(), 2, "{backends:?}");
    assert!(backends
        .iter()
        .all(|b| b["healthy"] == true && b["name"] == NAME));
    assert!(
        edge.metric(
            "okome_backend_healthy",
            &[("pool", "vllm"), ("backend", &a_id)]
        )
        .await
            == 1.0
    );
    assert!(
        !edge
            .log_text()
            .contains(&format!("backend {a_id} in pool vllm is unhealthy")),
        "A went unhealthy over the new generation:\n{}",
        edge.log_text()
    );
    // The config version is the config's: a new answer is not a reload.
    assert_eq!(status(edge.admin).await["config"]["version"], 1);

    // The name stops resolving: the last good set keeps serving.
    edge.set_hosts(&hosts_file(&[]));
    assert!(
        eventually(5, || async {
            pool_status(edge.admin, "vllm").await.0[0]["failing"] == true
        })
        .await,
        "the failed lookup never showed on /status"
    );
    // Several failed rounds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (names, backends) = pool_status(edge.admin, "vllm").await;
    assert_eq!(names[0]["addresses"], json!([a_id, b_id]), "{names:?}");
    assert!(names[0]["last_error"].as_str().is_some(), "{names:?}");
    assert_eq!(backends.len(), 2, "{backends:?}");
    let (a0, b0) = (a.stats().requests, b.stats().requests);
    for _ in 0..10 {
        let r = raw(edge.addr, &post("/v1/chat/completions", &stream_body(2))).await;
        assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    }
    assert_eq!(a.stats().requests + b.stats().requests - a0 - b0, 10);
    assert!(
        edge.metric(
            "okome_dns_resolutions_total",
            &[("pool", "vllm"), ("result", "error")]
        )
        .await
            >= 3.0
    );
    let log = edge.log_text();
    assert_eq!(
        log.matches(&format!("cannot resolve {NAME}:{port}"))
            .count(),
        1,
        "a failing name is logged once per state change:\n{log}"
    );

    // It resolves again, to B only: A leaves the pool.
    edge.set_hosts(&hosts_file(&["127.0.0.3"]));
    assert!(
        eventually(6, || async {
            let (_, backends) = pool_status(edge.admin, "vllm").await;
            backends.len() == 1 && backends[0]["address"] == b_id
        })
        .await,
        "A is still in the pool; log:\n{}",
        edge.log_text()
    );
    let a0 = a.stats().requests;
    for _ in 0..5 {
        let r = raw(edge.addr, &post("/v1/chat/completions", &stream_body(2))).await;
        assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    }
    assert_eq!(
        a.stats().requests,
        a0,
        "A got requests after it left the name"
    );
}

/// A name that does not resolve at start: the edge starts anyway (the pool has no backend and
/// says so), and the pool fills once the name resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_at_start_is_retried() {
    let (a, _b) = two_sims_on_one_port().await;
    let port = a.addr().port();
    let edge = NsEdge::start(&config(port), &hosts_file(&[])).await;
    let r = raw(edge.addr, &post("/v1/chat/completions", &stream_body(2))).await;
    assert_eq!(status_of(&r), 503, "{}", String::from_utf8_lossy(&r));
    let ready = reqwest::get(format!("http://{}/readyz", edge.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let (names, backends) = pool_status(edge.admin, "vllm").await;
    assert!(backends.is_empty(), "{backends:?}");
    assert_eq!(names[0]["failing"], true, "{names:?}");
    assert!(edge
        .log_text()
        .contains(&format!("cannot resolve {NAME}:{port}")));

    edge.set_hosts(&hosts_file(&["127.0.0.2"]));
    assert!(
        eventually(6, || async {
            let r = raw(edge.addr, &post("/v1/chat/completions", &stream_body(2))).await;
            status_of(&r) == 200
        })
        .await,
        "the pool never filled; log:\n{}",
        edge.log_text()
    );
    assert!(a.stats().requests >= 1);
}
