//! Observability: the shipped Prometheus rules and config pass `promtool`; a real Prometheus
//! scraping a real edge with traffic from the simulator evaluates the TTFT p95 recording rule; and
//! every query of the Grafana dashboard names a metric that the edge, the control plane or the
//! arbiter exports.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool` on PATH); `.ci/run` installs it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{self, TestEdge};
use common::prom::{start_prometheus, tool};
use common::*;
use okome::control::{self, hash_key, PolicyStore, YamlStore};
use okome_sim::SimKind;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "okome-test-key-observability";

/// Metrics the dashboard and the rules may use that this test's edges do not export: they are
/// excluded from the "names an exported metric" check. The certificate expiry exists only on
/// an edge with a TLS listener (`tests/tls_http2.rs` checks it there); the failover series
/// only on an edge with a `mid_stream_failover` route (`tests/midstream_failover.rs` reads them).
const PENDING: &[&str] = &[
    "okome_tls_certificate_expiry_timestamp_seconds",
    "okome_failover_total",
    "okome_failover_gap_seconds_bucket",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_shipped_rules_and_config() {
    let promtool = tool("promtool");
    let rules = repo("conf/prometheus/okome.rules.yml");
    let out = run_ok(
        Command::new(&promtool)
            .arg("check")
            .arg("rules")
            .arg(&rules),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(
        Command::new(&promtool)
            .arg("check")
            .arg("config")
            .arg(repo("conf/prometheus/prometheus.yml")),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The names of every series in Prometheus text.
fn names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Streams `n` chat completions through the edge, with `key` as a bearer token when given.
async fn traffic(edge: &TestEdge, n: usize, key: Option<&str>) {
    for _ in 0..n {
        let body = r#"{"model":"Qwen/Qwen3-8B","stream":true,"max_tokens":6,"messages":[{"role":"user","content":"hi"}]}"#;
        let auth = key
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
            body.len()
        );
        let resp = raw(edge.addr, req.as_bytes()).await;
        assert_eq!(
            status_of(&resp),
            200,
            "{}\nlog:\n{}",
            String::from_utf8_lossy(&resp),
            edge.log_text()
        );
    }
}

/// Every `okome_*` / `okome:*` (and `process_*`) name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("okome_") || t.starts_with("okome:") || t.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// (where, expression) for every query in the dashboard: panel targets and query variables.
fn dashboard_queries(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            let here = m
                .get("title")
                .or_else(|| m.get("name"))
                .and_then(|t| t.as_str())
                .map_or(at.to_owned(), |t| format!("{at} / {t}"));
            if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                out.push((here.clone(), e.to_owned()));
            }
            if m.get("type").and_then(|t| t.as_str()) == Some("query") {
                if let Some(d) = m.get("definition").and_then(|d| d.as_str()) {
                    out.push((here.clone(), d.to_owned()));
                }
            }
            for (k, child) in m {
                if k != "expr" && k != "definition" {
                    dashboard_queries(child, &here, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|c| dashboard_queries(c, at, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_an_exported_metric() {
    let text = std::fs::read_to_string(repo("conf/grafana/okome.json")).expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is valid JSON");

    // Importable: datasource is a variable, and every panel uses it.
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
        "no datasource variable"
    );
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64()),
            "duplicate panel id {}",
            p["id"]
        );
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {} does not use the datasource variable",
                p["title"]
            );
        }
    }
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "SLO: time to first token",
        "SLO: jitter",
        "SLO: stream disconnects",
        "SLO: queues",
        "SLO: caches",
        "SLO: shedding, retries, backends",
        "Pool: $pool",
        "Arbiter",
    ] {
        assert!(
            rows.iter().any(|r| r.starts_with(want)),
            "no row {want:?} in {rows:?}"
        );
    }

    // What a busy edge exports: a control plane (policy cache, tenants), two engines, one of
    // which starts refusing connections (retries, ejections), streams long enough for jitter.
    let store = YamlStore::from_str(
        "listen: 127.0.0.1:0\nedges: 1\ntenants:\n  - id: acme\n    models: [\"*\"]\nroutes:\n  - { model: \"Qwen/*\", pool: vllm }\n",
    )
    .expect("control config");
    store
        .insert_key(&hash_key(KEY), "acme")
        .expect("insert key");
    let ctl = control::start(
        Arc::new(store.clone()) as Arc<dyn PolicyStore>,
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("control plane");
    let a = sim(SimKind::Vllm, |_| {}).await;
    let b = sim(SimKind::Vllm, |_| {}).await;
    let state = tempfile::tempdir().expect("state dir");
    // An arbiter over engine `a`, with the simulator's fake GPU where NVML would be.
    let arbiter_cfg = okome::arbiter::ArbiterConfig::from_str(
        "arbiter.yaml",
        &format!(
            "listen: 127.0.0.1:0\ninterval: 100ms\ngpu: {{ source: fake, reserve: 2GiB }}\nmode: shared\n\
             gpus: [{{ uuid: GPU-sim-{port}, memory: 80GiB }}]\n\
             engines: [{{ name: a, kind: vllm, address: \"{addr}\", budget: 30GiB }}]\n\
             rules: {{ hysteresis: {{ min_hold: 500ms }} }}\n",
            port = a.addr().port(),
            addr = a.addr()
        ),
    )
    .expect("arbiter config");
    let arbiter = okome::arbiter::start(arbiter_cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("arbiter");
    // A long health interval, so the refusing engine is found by live traffic (retry + ejection).
    let edge = embedded::edge(&format!(
        "pools:\n  vllm:\n    kind: vllm\n    backends: [\"{}\", \"{}\"]\n    health_check: {{ interval: 60s, timeout: 500ms }}\n    pick: prefix_affinity\n\
         routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n    filters: [{{ type: auth }}, {{ type: policy }}, {{ type: ratelimit }}]\n\
         control:\n  address: {}\n  state_dir: {}\narbiter:\n  addresses: [\"{}\"]\n  max_age: 2s\n",
        a.addr(),
        b.addr(),
        ctl.addr(),
        state.path().display(),
        arbiter.addr()
    ))
    .await;
    traffic(&edge, 3, Some(KEY)).await;
    // Health checks still think it is up: only live traffic finds out.
    b.shutdown();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(b.addr()).await.is_ok() {
        assert!(Instant::now() < deadline, "sim did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sent = 0;
    while edge.metric("okome_upstream_retries_total", &[]).await < 1.0 {
        assert!(sent < 40, "no retry after {sent} requests");
        traffic(&edge, 1, Some(KEY)).await;
        sent += 1;
    }
    // The arbiter puts `a` (the only engine left) into shedding: the edge sheds a request.
    a.set_pressure(okome_sim::Pressure {
        extra_waiting: 40,
        ..Default::default()
    });
    let mut tries = 0;
    while edge.metric("okome_shed_total", &[]).await < 1.0 {
        assert!(tries < 100, "the edge never shed:\n{}", edge.log_text());
        // Not `traffic()`: this request is meant to be refused.
        let body = chat("Qwen/Qwen3-8B", 2);
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        raw(edge.addr, req.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        tries += 1;
    }
    let arbiter_text = reqwest::get(format!("http://{}/metrics", arbiter.addr()))
        .await
        .expect("arbiter metrics")
        .text()
        .await
        .expect("text");
    let edge_text = reqwest::get(edge.admin_url("/metrics"))
        .await
        .expect("edge metrics")
        .text()
        .await
        .expect("text");
    let ctl_text = reqwest::get(format!("http://{}/metrics", ctl.addr()))
        .await
        .expect("control metrics")
        .text()
        .await
        .expect("text");
    let mut exported = names(&edge_text);
    exported.extend(names(&ctl_text));
    exported.extend(names(&arbiter_text));

    let mut queries = Vec::new();
    dashboard_queries(&dash, "", &mut queries);
    assert!(queries.len() > 30, "only {} queries found", queries.len());
    let mut missing = Vec::new();
    for (at, expr) in &queries {
        let used = metric_names(expr);
        assert!(
            !used.is_empty(),
            "{at}: query names no okome metric: {expr}"
        );
        for m in used {
            if !exported.contains(&m) && !PENDING.contains(&m.as_str()) {
                missing.push(format!("{at}: {m}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "dashboard queries name metrics nobody exports:\n{}\nexported: {exported:?}",
        missing.join("\n")
    );

    // The rules file too: every raw metric it reads is exported (or pending), every okome:
    // name it reads is recorded in it.
    let rules = std::fs::read_to_string(repo("conf/prometheus/okome.rules.yml")).expect("rules");
    let recorded: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_owned())
        .collect();
    for line in rules
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with("- record:"))
    {
        for m in metric_names(line) {
            let known = if m.starts_with("okome:") {
                recorded.contains(&m)
            } else {
                exported.contains(&m) || PENDING.contains(&m.as_str())
            };
            assert!(
                known,
                "rules read {m}, which nothing exports or records: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_records_ttft_p95_from_a_live_edge() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let edge = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n",
        pool("vllm", "vllm", &[s.addr()])
    ))
    .await;
    let prom = start_prometheus(edge.admin);

    // Traffic goes on while Prometheus scrapes every second: rate() needs two scrapes that differ.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let addr = edge.addr;
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = r#"{"model":"Qwen/Qwen3-8B","stream":true,"max_tokens":6,"messages":[{"role":"user","content":"hi"}]}"#;
                let _ = raw(addr, &post("/v1/chat/completions", body)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let client = reqwest::Client::new();
    let query = "okome:ttft_seconds:p95_5m";
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        assert!(
            Instant::now() < deadline,
            "no sample of {query} within 60 s; prometheus log:\n{}",
            std::fs::read_to_string(&prom.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(r) = client
            .get(format!("{}/api/v1/query", prom.url))
            .query(&[("query", query)])
            .send()
            .await
        else {
            continue; // not listening yet
        };
        let Ok(v) = r.json::<serde_json::Value>().await else {
            continue;
        };
        assert_eq!(v["status"], "success", "{v}");
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        let sample = result.iter().find_map(|r| {
            let labels = &r["metric"];
            let x: f64 = r["value"][1].as_str()?.parse().ok()?;
            (labels["route"] == "openai" && labels["pool"] == "vllm" && x.is_finite()).then_some(x)
        });
        if let Some(x) = sample {
            break x;
        }
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.await;
    // The sim answers in ~5 ms prefill; through the edge TTFT is well under a second.
    assert!(value > 0.0 && value < 1.0, "TTFT p95 {value}");

    // The threshold rules evaluate too: the configured default is a number.
    let v: serde_json::Value = client
        .get(format!("{}/api/v1/query", prom.url))
        .query(&[("query", "okome:slo_threshold:ttft_p95_seconds")])
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert_eq!(v["data"]["result"][0]["value"][1], "2", "{v}");
}

// ---------------------------------------------------------------------------------------------
// The numbers are right: recorded quantiles against the exact ones.
// ---------------------------------------------------------------------------------------------

/// Relative tolerance between a recorded quantile and the exact one. The buckets are ~10 % wide
/// where the SLOs live (24 per decade), and interpolation inside a bucket lands within it.
const TOLERANCE: f64 = 0.10;

/// The `q` quantile of `v` as Prometheus' `quantile()` computes it (linear between ranks).
fn exact(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = q * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// `histogram_quantile(q, sum by (le) (NAME_bucket))` over the edge's `/metrics` text.
fn recorded(text: &str, name: &str, q: f64) -> f64 {
    let mut by_le: std::collections::BTreeMap<u64, (f64, f64)> = Default::default();
    let prefix = format!("{name}_bucket{{");
    for l in text.lines().filter(|l| l.starts_with(&prefix)) {
        let le = l.split("le=\"").nth(1).and_then(|r| r.split('"').next());
        let n: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        let le: f64 = match le {
            Some("+Inf") => f64::INFINITY,
            Some(x) => x.parse().unwrap_or(f64::NAN),
            None => continue,
        };
        by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += n;
    }
    let mut buckets: Vec<(f64, f64)> = by_le.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let rank = q * total;
    let (mut prev_le, mut prev_n) = (0.0, 0.0);
    for (le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return prev_le;
            }
            return prev_le + (le - prev_le) * (rank - prev_n) / (n - prev_n);
        }
        (prev_le, prev_n) = (le, n);
    }
    prev_le
}

fn assert_close(what: &str, recorded: f64, exact: f64) {
    let err = (recorded - exact).abs() / exact;
    println!(
        "{what}: recorded {:.2} ms, exact {:.2} ms ({:+.1} %)",
        recorded * 1e3,
        exact * 1e3,
        (recorded / exact - 1.0) * 100.0
    );
    assert!(
        err <= TOLERANCE,
        "{what}: recorded {recorded:.4} s vs exact {exact:.4} s ({:.1} % off, tolerance {:.0} %)",
        err * 100.0,
        TOLERANCE * 100.0
    );
}

/// One stream as the client saw it: TTFT and every gap between token events.
async fn timed_stream(addr: std::net::SocketAddr, max_tokens: u32) -> (f64, Vec<f64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = chat("Qwen/Qwen3-8B", max_tokens);
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let start = Instant::now();
    s.write_all(&post("/v1/chat/completions", &body))
        .await
        .expect("write");
    let (mut buf, mut seen, mut times) = (vec![0u8; 64 * 1024], String::new(), Vec::new());
    loop {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        let now = Instant::now();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        // Every content delta that completed in this read arrived now.
        while let Some(end) = seen.find("\n\n") {
            let event: String = seen.drain(..end + 2).collect();
            if event.contains(r#""delta":{"content":""#) {
                times.push(now);
            }
        }
    }
    assert_eq!(times.len(), max_tokens as usize, "tokens received");
    let ttft = (times[0] - start).as_secs_f64();
    let gaps = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    (ttft, gaps)
}

fn std_dev(v: &[f64]) -> f64 {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

/// Streams with known timing (150 ms prefill, 20 tokens/s with ±50 % jitter) through the edge:
/// the TTFT p50/p95, gap p95/p99 and jitter p50 that the edge's histograms, its status page and a
/// real Prometheus's recording rules report are within [`TOLERANCE`] of the exact values the
/// client measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_latency_quantiles_match_the_exact_ones() {
    let s = sim(SimKind::Vllm, |c| {
        c.prefill = Duration::from_millis(150);
        c.tokens_per_second = 20.0;
        c.jitter = 0.5;
    })
    .await;
    let edge = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n",
        pool("vllm", "vllm", &[s.addr()])
    ))
    .await;
    let prom = start_prometheus(edge.admin);
    // rate() needs a sample from before the traffic: wait for Prometheus's first scrape.
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::prom::query(&prom.url, "up")
        .await
        .and_then(|r| r.first().map(|s| s.1))
        != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the edge"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 40 streams of 12 tokens, 10 at a time.
    let (mut ttfts, mut gaps, mut jitters) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..4 {
        let wave = futures::future::join_all((0..10).map(|_| timed_stream(edge.addr, 12))).await;
        for (t, g) in wave {
            ttfts.push(t);
            jitters.push(std_dev(&g));
            gaps.extend(g);
        }
    }
    let want = [
        (
            "TTFT p50",
            "okome_ttft_seconds",
            0.50,
            exact(&mut ttfts, 0.50),
        ),
        (
            "TTFT p95",
            "okome_ttft_seconds",
            0.95,
            exact(&mut ttfts, 0.95),
        ),
        (
            "gap p95",
            "okome_inter_token_seconds",
            0.95,
            exact(&mut gaps, 0.95),
        ),
        (
            "gap p99",
            "okome_inter_token_seconds",
            0.99,
            exact(&mut gaps, 0.99),
        ),
        (
            "jitter p50",
            "okome_stream_jitter_seconds",
            0.50,
            exact(&mut jitters, 0.50),
        ),
    ];

    // The edge's own histograms.
    let text = reqwest::get(edge.admin_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for (what, name, q, x) in want {
        assert_close(&format!("/metrics {what}"), recorded(&text, name, q), x);
    }

    // The status page's figures (the same interpolation, over its window).
    let st: serde_json::Value = reqwest::get(edge.admin_url("/status"))
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    let live = &st["pools"][0]["live"];
    for (field, (what, _, _, x)) in ["ttft_p50", "ttft_p95", "gap_p95", "gap_p99", "jitter_p50"]
        .iter()
        .zip(want)
    {
        let v = live[field]
            .as_f64()
            .unwrap_or_else(|| panic!("no {field} in {st}"));
        assert_close(&format!("/status {what}"), v, x);
    }

    // A real Prometheus: the shipped recording rules (and the jitter median directly).
    let rules = [
        "okome:ttft_seconds:p50_5m",
        "okome:ttft_seconds:p95_5m",
        "okome:inter_token_seconds:p95_5m",
        "okome:inter_token_seconds:p99_5m",
        "histogram_quantile(0.5, sum by (le) (rate(okome_stream_jitter_seconds_bucket[5m])))",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    for (q, (what, _, _, x)) in rules.iter().zip(want) {
        let v = loop {
            assert!(
                Instant::now() < deadline,
                "no sample of {q}; prometheus log:\n{}",
                std::fs::read_to_string(&prom.log).unwrap_or_default()
            );
            // Wait for a scrape after the last stream, so the rules see every observation.
            let total = common::prom::query(&prom.url, "sum(okome_stream_jitter_seconds_count)")
                .await
                .and_then(|r| r.first().map(|s| s.1));
            if total == Some(40.0) {
                if let Some(v) = common::prom::query(&prom.url, q)
                    .await
                    .and_then(|r| r.first().map(|s| s.1))
                    .filter(|v| v.is_finite())
                {
                    break v;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_close(&format!("prometheus {what}"), v, x);
    }
}
