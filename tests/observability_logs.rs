//! What an operator reads without Prometheus: every series exists at 0 from start-up, and the
//! access log is one JSON object per request and line with the fields the README documents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::embedded;
use common::*;
use okome_sim::SimKind;

/// A fresh edge (no traffic yet) already exports the counters dashboards and `rate()` alerts
/// read, at 0, and the process metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_known_series_exists_at_zero_from_start_up() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let edge = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n",
        pool("vllm", "vllm", &[s.addr()])
    ))
    .await;
    let text = reqwest::get(edge.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let backend = s.addr().to_string();
    for (name, labels) in [
        (
            "okome_shed_total",
            vec![("reason", "queue_depth"), ("priority", "sheddable")],
        ),
        (
            "okome_shed_total",
            vec![("reason", "over_budget"), ("priority", "critical")],
        ),
        (
            "okome_upstream_retries_total",
            vec![("route", "openai"), ("reason", "connect")],
        ),
        (
            "okome_backend_ejections_total",
            vec![("pool", "vllm"), ("backend", backend.as_str())],
        ),
        (
            "okome_streams_total",
            vec![
                ("route", "openai"),
                ("pool", "vllm"),
                ("outcome", "timeout"),
            ],
        ),
        (
            "okome_requests_total",
            vec![("route", "openai"), ("status", "503")],
        ),
        (
            "okome_request_duration_seconds_count",
            vec![
                ("route", "openai"),
                ("pool", "vllm"),
                ("status_class", "5xx"),
            ],
        ),
        (
            "okome_response_bytes_total",
            vec![("route", "openai"), ("pool", "vllm")],
        ),
        (
            "okome_policy_cache_requests_total",
            vec![("result", "error")],
        ),
    ] {
        let found = text.lines().any(|l| {
            l.starts_with(&format!("{name}{{"))
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
                && l.ends_with(" 0")
        });
        assert!(found, "no {name}{labels:?} at 0 in:\n{text}");
    }
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_threads",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "no {name}");
    }
}

/// The access log: one JSON object per line (no prefix), with a request id that the client can
/// set or gets, that reaches the engine, and the documented fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_one_json_object_per_request_and_line() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let edge = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\naccess_log:\n  path: {}\n",
        pool("vllm", "vllm", &[s.addr()]),
        log.display()
    ))
    .await;
    let body = chat("Qwen/Qwen3-8B", 3);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: client-chosen-id.42\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw(edge.addr, req.as_bytes()).await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert_eq!(
        header_of(&r, "x-request-id").as_deref(),
        Some("client-chosen-id.42")
    );
    assert_eq!(
        s.stats().last_request_id.as_deref(),
        Some("client-chosen-id.42")
    );
    // A refusal gets an id of the edge's own, logged too.
    let r = raw(edge.addr, &post("/v1/nope", "{}")).await;
    assert_eq!(status_of(&r), 404);
    let made = header_of(&r, "x-request-id").expect("an id for every answer");
    assert_eq!(made.len(), 32, "{made}");

    let lines = eventually(5, || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            >= 2
    })
    .await;
    assert!(
        lines,
        "two lines expected:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let ok = &recs[0];
    for field in [
        "ts",
        "request_id",
        "client",
        "method",
        "path",
        "status",
        "outcome",
        "route",
        "pool",
        "backend",
        "model",
        "tenant",
        "retries",
        "duration_ms",
        "ttft_ms",
        "tokens",
        "bytes_in",
        "bytes_out",
        "gap_mean_ms",
        "gap_max_ms",
        "jitter_ms",
        "trace_id",
        "error",
    ] {
        assert!(ok.get(field).is_some(), "no {field} in {ok}");
    }
    assert_eq!(ok["request_id"], "client-chosen-id.42");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["outcome"], "completed");
    assert_eq!(ok["tokens"], 3);
    assert_eq!(ok["bytes_in"], body.len());
    assert!(ok["bytes_out"].as_u64().unwrap() > 100, "{ok}");
    assert!(
        ok["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{ok}"
    );
    assert!(ok["ts"].as_str().unwrap().ends_with('Z'), "{ok}");
    let refused = &recs[1];
    assert_eq!(refused["request_id"], made.as_str());
    assert_eq!(refused["outcome"], "refused");
    assert_eq!(refused["status"], 404);
}
