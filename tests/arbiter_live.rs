//! The running arbiter over real sockets against in-process simulators.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use okome::arbiter::{ArbiterConfig, ArbiterHandle, ArbiterState, BackendState};
use okome_sim::{Pressure, SimKind};
use std::time::{Duration, Instant};

fn config(gpu: &str, engines: &str) -> ArbiterConfig {
    let text = format!(
        "interval: 100ms\ntimeout: 1s\ngpu: {gpu}\nrules:\n  hysteresis: {{ leave_ratio: 0.8, min_hold: 1s }}\nengines:\n{engines}"
    );
    ArbiterConfig::from_str("test-arbiter.yaml", &text).expect("config")
}

async fn start(cfg: ArbiterConfig) -> ArbiterHandle {
    okome::arbiter::start(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start arbiter")
}

async fn get_state(c: &reqwest::Client, h: &ArbiterHandle) -> ArbiterState {
    c.get(format!("http://{}/v1/state", h.addr()))
        .send()
        .await
        .expect("GET /v1/state")
        .json()
        .await
        .expect("state json")
}

/// Polls `/v1/state` until `pred` holds for engine `name`; returns the state and the time taken.
async fn wait_for(
    c: &reqwest::Client,
    h: &ArbiterHandle,
    name: &str,
    within: Duration,
    pred: impl Fn(&okome::arbiter::BackendStatus) -> bool,
) -> (ArbiterState, Duration) {
    let t0 = Instant::now();
    loop {
        let s = get_state(c, h).await;
        if let Some(b) = s.backends.iter().find(|b| b.engine == name) {
            if pred(b) {
                return (s, t0.elapsed());
            }
        }
        if t0.elapsed() > within {
            panic!("condition not met within {within:?}; last state: {s:#?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn queue_depth_rising_on_a_sim_makes_it_shed_then_recover() {
    let sim = common::sim(SimKind::Vllm, |_| {}).await;
    let cfg = config(
        "{ source: none }",
        &format!(
            "  - {{ name: vllm, kind: vllm, address: \"{}\", advertise: \"10.0.0.30:8000\" }}\n",
            sim.addr()
        ),
    );
    let h = start(cfg).await;
    let c = reqwest::Client::new();
    let (s, _) = wait_for(&c, &h, "vllm", Duration::from_secs(10), |b| {
        b.queue_depth.is_some()
    })
    .await;
    let b = &s.backends[0];
    assert_eq!(b.state, BackendState::Ok);
    assert_eq!(b.backend, "10.0.0.30:8000");
    assert_eq!(b.kind, "vllm");

    sim.set_pressure(Pressure {
        extra_waiting: 40,
        ..Default::default()
    });
    let (s, took) = wait_for(&c, &h, "vllm", Duration::from_secs(10), |b| {
        b.state == BackendState::Shedding
    })
    .await;
    println!("queue 40 set on the sim -> /v1/state shows shedding after {took:?} (interval 100ms)");
    let b = &s.backends[0];
    assert_eq!(b.rule, "queue_depth");
    assert!(b.reason.contains("queue_depth 40 >= 32"), "{}", b.reason);
    assert!(b.retry_after_secs >= 1 && b.retry_after_secs <= 60, "{b:?}");
    assert_eq!(b.queue_depth, Some(40));

    let metrics = c
        .get(format!("http://{}/metrics", h.addr()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .contains("okome_arbiter_backend_state{backend=\"10.0.0.30:8000\",engine=\"vllm\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("okome_arbiter_decisions_total{engine=\"vllm\",rule=\"queue_depth\",state=\"shedding\"} 1"),
        "{metrics}"
    );

    let removed = Instant::now();
    sim.set_pressure(Pressure::default());
    let (s, took) = wait_for(&c, &h, "vllm", Duration::from_secs(10), |b| {
        b.state == BackendState::Ok
    })
    .await;
    // min_hold is 1 s from entering shedding; it cannot be back before the pressure went away.
    println!("pressure removed -> ok after {took:?}");
    assert!(removed.elapsed() >= took);
    assert_eq!(s.backends[0].rule, "none");
    assert_eq!(s.backends[0].retry_after_secs, 0);
    h.shutdown().await;
    sim.shutdown();
}

#[tokio::test]
async fn fake_gpu_over_budget_sheds() {
    let sim = common::sim(SimKind::Vllm, |_| {}).await;
    let cfg = config(
        "{ source: fake, reserve: 2GiB }",
        &format!(
            "  - {{ name: vllm, kind: vllm, address: \"{}\", budget: 20GiB }}\n",
            sim.addr()
        ),
    );
    let h = start(cfg).await;
    let c = reqwest::Client::new();
    sim.set_pressure(Pressure {
        gpu_memory_used_bytes: 10 << 30,
        ..Default::default()
    });
    let (s, _) = wait_for(&c, &h, "vllm", Duration::from_secs(10), |b| {
        b.gpu_memory_bytes == Some(10 << 30)
    })
    .await;
    assert_eq!(s.backends[0].state, BackendState::Ok);
    assert_eq!(s.gpu_source.kind, "fake");
    assert_eq!(s.gpus.len(), 1);
    assert_eq!(s.gpus[0].memory_total_bytes, 80 << 30);

    sim.set_pressure(Pressure {
        gpu_memory_used_bytes: 22 << 30,
        ..Default::default()
    });
    let (s, _) = wait_for(&c, &h, "vllm", Duration::from_secs(10), |b| {
        b.state == BackendState::Shedding
    })
    .await;
    assert_eq!(s.backends[0].rule, "over_budget", "{:?}", s.backends[0]);
    assert!(s.backends[0].retry_after_secs >= 1);

    // GPU nearly full (under the reserve) while the engine is within budget: gpu_headroom.
    let sim2 = common::sim(SimKind::Vllm, |_| {}).await;
    let cfg = config(
        "{ source: fake, reserve: 2GiB }",
        &format!(
            "  - {{ name: v2, kind: vllm, address: \"{}\", budget: 79GiB }}\n",
            sim2.addr()
        ),
    );
    let h2 = start(cfg).await;
    sim2.set_pressure(Pressure {
        gpu_memory_used_bytes: 79 << 30,
        ..Default::default()
    });
    let (s, _) = wait_for(&c, &h2, "v2", Duration::from_secs(10), |b| {
        b.state == BackendState::Shedding
    })
    .await;
    assert_eq!(s.backends[0].rule, "gpu_headroom", "{:?}", s.backends[0]);
    h.shutdown().await;
    h2.shutdown().await;
    sim.shutdown();
    sim2.shutdown();
}

#[tokio::test]
async fn without_nvml_the_arbiter_runs_on_engine_signals() {
    let sim = common::sim(SimKind::Ollama, |_| {}).await;
    let cfg = config(
        "{ source: nvml, nvml_library: /nonexistent/libnvidia-ml.so.1 }",
        &format!(
            "  - {{ name: ollama, kind: ollama, address: \"{}\" }}\n",
            sim.addr()
        ),
    );
    let h = start(cfg).await;
    let c = reqwest::Client::new();
    let (s, _) = wait_for(&c, &h, "ollama", Duration::from_secs(10), |_| true).await;
    assert_eq!(s.gpu_source.kind, "none", "{:?}", s.gpu_source);
    assert!(
        s.gpu_source.message.contains("NVML not available"),
        "{:?}",
        s.gpu_source
    );
    assert_eq!(s.backends[0].state, BackendState::Ok);
    let health = c
        .get(format!("http://{}/healthz", h.addr()))
        .send()
        .await
        .expect("healthz");
    assert!(health.status().is_success());

    // The engine dies: down, by health.
    sim.shutdown();
    let (s, _) = wait_for(&c, &h, "ollama", Duration::from_secs(10), |b| {
        b.state == BackendState::Down
    })
    .await;
    assert_eq!(s.backends[0].rule, "health");
    h.shutdown().await;
}

#[tokio::test]
async fn long_poll_wakes_promptly_on_a_state_change() {
    let sim = common::sim(SimKind::Vllm, |_| {}).await;
    let cfg = config(
        "{ source: none }",
        &format!(
            "  - {{ name: vllm, kind: vllm, address: \"{}\" }}\n",
            sim.addr()
        ),
    );
    let h = start(cfg).await;
    let c = reqwest::Client::new();
    let (s, _) = wait_for(&c, &h, "vllm", Duration::from_secs(10), |b| {
        b.queue_depth.is_some()
    })
    .await;
    let v = s.version;

    // Nothing changes: a short long-poll answers 304 with the same ETag.
    let r = c
        .get(format!("http://{}/v1/state?since={v}&wait=300ms", h.addr()))
        .send()
        .await
        .expect("poll");
    assert_eq!(r.status(), reqwest::StatusCode::NOT_MODIFIED);

    let url = format!("http://{}/v1/state?since={v}&wait=30s", h.addr());
    let poll = tokio::spawn({
        let c = c.clone();
        async move {
            let r = c.get(url).send().await.expect("long-poll");
            let got = Instant::now();
            let etag = r
                .headers()
                .get("etag")
                .map(|v| v.to_str().unwrap_or("").to_string());
            let s: ArbiterState = r.json().await.expect("json");
            (s, got, etag)
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let set = Instant::now();
    sim.set_pressure(Pressure {
        extra_waiting: 50,
        ..Default::default()
    });
    let mut watch = h.subscribe();
    let changed_at = loop {
        watch.changed().await.expect("arbiter running");
        if watch.borrow().version != v {
            break Instant::now();
        }
    };
    let (s, got, etag) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("long-poll answered")
        .expect("task");
    assert_ne!(s.version, v);
    assert_eq!(s.backends[0].state, BackendState::Shedding);
    assert_eq!(etag, Some(format!("\"{}\"", s.version)));
    println!(
        "long-poll: pressure set -> new version published {:?}; published -> long-poll answered {:?}",
        changed_at - set,
        got.saturating_duration_since(changed_at)
    );
    // Generous bound: the wake itself is a channel notification, well under the 100 ms target.
    assert!(got.saturating_duration_since(changed_at) < Duration::from_secs(2));
    h.shutdown().await;
    sim.shutdown();
}

#[tokio::test]
async fn dropped_handle_keeps_serving_and_shutdown_cuts_long_polls() {
    let sim = common::sim(SimKind::Vllm, |_| {}).await;
    let cfg = config(
        "{ source: none }",
        &format!(
            "  - {{ name: vllm, kind: vllm, address: \"{}\" }}\n",
            sim.addr()
        ),
    );
    let h = start(cfg.clone()).await;
    let addr = h.addr();
    drop(h);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = reqwest::Client::new();
    let r = c
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("still serving");
    assert!(r.status().is_success());

    let h = start(cfg).await;
    let url = format!("http://{}/v1/state?since=999999&wait=30s", h.addr());
    let s = c
        .get(format!("http://{}/v1/state", h.addr()))
        .send()
        .await
        .expect("get");
    let v: ArbiterState = s.json().await.expect("json");
    let poll = tokio::spawn({
        let c = c.clone();
        let url = url.replace("999999", &v.version.to_string());
        async move { c.get(url).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    h.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("long-poll ended on shutdown");
    assert!(t.elapsed() < Duration::from_secs(5));
    sim.shutdown();
}
