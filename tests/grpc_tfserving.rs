//! TF Serving over gRPC through the edge: a real gRPC client (Python grpcio, stubs generated
//! from `proto/` at test time) against the simulator's gRPC port directly and through an edge
//! listener with `http2: true` (h2c) or TLS (ALPN h2). Responses must be the same bytes with the
//! same status and trailers; deadlines and the engine's statuses pass through; the edge's own
//! refusals reach the client as gRPC statuses.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::{embedded, pki::Pki, python, sim};
use okome_engine::tfs_grpc as g;
use okome_sim::{SimHandle, SimKind};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

const MODEL: &str = "half_plus_two";
const HOST: &str = "api.okome.test";

/// A TF Serving simulator with its gRPC port open.
async fn tf_sim(prefill: Duration) -> SimHandle {
    sim(SimKind::TfServing, |c| {
        c.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
        c.prefill = prefill;
    })
    .await
}

/// A TF Serving pool on `s` (REST port as backend, its gRPC port as `grpc_port`) listing
/// `models`, and one route to it with `route_extra` lines.
fn body(s: &SimHandle, models: &[&str], route_extra: &str) -> String {
    let grpc = s.grpc_addr().unwrap().port();
    format!(
        "pools:\n  tf:\n    kind: tfserving\n    backends: [\"{}\"]\n    models: {models:?}\n    grpc_port: {grpc}\n    health_check: {{ interval: 200ms, timeout: 150ms }}\nroutes:\n  - name: tf\n    pool: tf\n{route_extra}",
        s.addr()
    )
}

const H2C: &str = "  - address: 127.0.0.1:0\n    http2: true\n";

/// Runs `calls` with the Python client against `target`; one result per call.
async fn grpc_calls(
    target: &str,
    tls: Option<(&std::path::Path, &str)>,
    calls: Value,
) -> Vec<Value> {
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let calls = calls.to_string();
    let mut args = vec!["--proto", proto, "--target", target, "--calls", &calls];
    let ca;
    if let Some((path, authority)) = tls {
        ca = path.display().to_string();
        args.extend(["--ca", &ca, "--authority", authority]);
    }
    let out = python::run("tfs_grpc.py", &args).await;
    let v: Value = serde_json::from_slice(&out.stdout).expect("json from tfs_grpc.py");
    v.as_array().expect("a list").clone()
}

/// Trailing metadata without what differs per answer (`date`) or what the edge adds
/// (`x-request-id`; a trailers-only answer's head is its trailers).
fn trailing(r: &Value) -> Vec<Value> {
    r["trailing"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|kv| kv[0] != "date" && kv[0] != "x-request-id")
        .cloned()
        .collect()
}

/// What must be the same direct and through the edge: status, message, response bytes, the
/// trailers the application sees, and the parsed answer.
fn essentials(r: &Value) -> Value {
    json!({
        "code": r["code"], "details": r["details"], "raw": r["raw"], "trailing": trailing(r),
        "stub_code": r["stub_code"], "y": r["y"], "states": r["states"], "version": r["version"],
    })
}

/// One unary call by hand over h2c (reqwest): the HTTP status and head, to see the gRPC status
/// of a trailers-only answer exactly as it is on the wire.
async fn raw_call(
    addr: SocketAddr,
    path: &str,
    msg: bytes::Bytes,
    timeout: Option<&str>,
) -> reqwest::Response {
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut req = c
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(msg);
    if let Some(t) = timeout {
        req = req.header("grpc-timeout", t);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    resp
}

fn head(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn predict_msg(model: &str) -> bytes::Bytes {
    let x = g::TensorProto {
        dtype: g::DataType::DtFloat as i32,
        float_val: vec![1.0, 2.0],
        ..Default::default()
    };
    g::frame(&g::PredictRequest {
        model_spec: Some(g::ModelSpec {
            name: model.into(),
            ..Default::default()
        }),
        inputs: [("x".to_owned(), x)].into_iter().collect(),
        output_filter: vec![],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_and_model_status_are_byte_identical_through_the_edge() {
    let s = tf_sim(Duration::from_millis(5)).await;
    let edge = embedded::edge_with_listener(H2C, &body(&s, &[MODEL], "")).await;
    let calls = json!([
        {"method": "predict", "model": MODEL, "x": [1.0, 2.0, 5.0]},
        {"method": "status", "model": MODEL},
    ]);
    let direct = grpc_calls(&s.grpc_addr().unwrap().to_string(), None, calls.clone()).await;
    let via = grpc_calls(&edge.addr.to_string(), None, calls).await;
    assert_eq!(direct[0]["code"], "OK", "{direct:?}");
    assert_eq!(direct[0]["y"], json!([2.5, 3.0, 4.5]));
    assert_eq!(direct[0]["version"], 1);
    assert_eq!(
        direct[1]["states"],
        json!([[1, 30, 0]]),
        "version 1 AVAILABLE, status OK"
    );
    for (d, v) in direct.iter().zip(&via) {
        assert_eq!(essentials(d), essentials(v), "direct vs edge");
        assert_eq!(v["stub_code"], "OK");
    }
    // The edge's request id rides along as initial metadata.
    assert!(
        via[1]["initial"]
            .as_array()
            .unwrap()
            .iter()
            .any(|kv| kv[0] == "x-request-id"),
        "{via:?}"
    );
    // The message went through unchanged: the engine saw the framed bytes the client sent.
    let msg = predict_msg(MODEL);
    let r = raw_call(edge.addr, g::PREDICT, msg.clone(), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(head(&r, "content-type"), "application/grpc");
    let bytes = r.bytes().await.unwrap();
    let resp: g::PredictResponse = g::decode(&bytes).unwrap();
    assert_eq!(resp.outputs["y"].float_val, [2.5, 3.0]);
    assert_eq!(s.stats().last_body_len, msg.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_exceeded_and_unknown_model_pass_through_from_the_engine() {
    // Predictions take 400 ms; a 100 ms deadline runs out at the engine.
    let s = tf_sim(Duration::from_millis(400)).await;
    // The pool lists a model the engine does not have: the edge routes it, the engine says no.
    let edge = embedded::edge_with_listener(H2C, &body(&s, &[MODEL, "retired"], "")).await;
    let calls = json!([
        {"method": "predict", "model": MODEL, "timeout": 0.1},
        {"method": "predict", "model": "retired"},
        {"method": "status", "model": "retired"},
    ]);
    let direct = grpc_calls(&s.grpc_addr().unwrap().to_string(), None, calls.clone()).await;
    let via = grpc_calls(&edge.addr.to_string(), None, calls).await;
    assert_eq!(direct[0]["code"], "DEADLINE_EXCEEDED", "{direct:?}");
    assert_eq!(direct[1]["code"], "NOT_FOUND");
    assert_eq!(
        direct[1]["details"],
        "Servable not found for request: Latest(retired)"
    );
    assert_eq!(direct[2]["code"], "NOT_FOUND");
    assert_eq!(
        direct[2]["details"],
        "Could not find any versions of model retired"
    );
    for (d, v) in direct.iter().zip(&via) {
        assert_eq!(d["code"], v["code"], "{d} vs {v}");
        assert_eq!(d["details"], v["details"], "{d} vs {v}");
        assert_eq!(trailing(d), trailing(v), "{d} vs {v}");
    }
    // On the wire: the engine's own statuses (a client-side deadline would show nothing here),
    // with grpc-timeout carried to the engine by the edge.
    for addr in [s.grpc_addr().unwrap(), edge.addr] {
        let r = raw_call(addr, g::PREDICT, predict_msg(MODEL), Some("100m")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(head(&r, "grpc-status"), "4", "from {addr}");
        assert_eq!(head(&r, "grpc-message"), "Deadline Exceeded");
        let r = raw_call(addr, g::PREDICT, predict_msg("retired"), None).await;
        assert_eq!(head(&r, "grpc-status"), "5", "from {addr}");
        assert_eq!(
            g::decode_message(&head(&r, "grpc-message")),
            "Servable not found for request: Latest(retired)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edges_own_refusals_are_grpc_statuses() {
    let s = tf_sim(Duration::from_millis(5)).await;
    let route = "    filters:\n      - { type: allow_models, models: [\"half_plus_two\"] }\n";
    let edge = embedded::edge_with_listener(H2C, &body(&s, &[MODEL, "other"], route)).await;
    let before = s.stats().requests;
    let via = grpc_calls(
        &edge.addr.to_string(),
        None,
        json!([
            {"method": "predict", "model": "other"},
            {"method": "reload"},
            {"method": "predict", "model": MODEL},
        ]),
    )
    .await;
    assert_eq!(via[0]["code"], "PERMISSION_DENIED", "{via:?}");
    assert!(
        via[0]["details"].as_str().unwrap().contains("other"),
        "{via:?}"
    );
    assert_eq!(via[0]["stub_code"], "PERMISSION_DENIED");
    // Model management is closed unless a route allows it.
    assert_eq!(via[1]["code"], "UNIMPLEMENTED", "{via:?}");
    assert!(via[1]["details"]
        .as_str()
        .unwrap()
        .contains("HandleReloadConfigRequest"));
    assert_eq!(via[2]["code"], "OK");
    // Only the allowed call reached the engine (twice: stub and raw).
    assert_eq!(s.stats().requests - before, 2);
    // On the wire: HTTP 200, application/grpc, the status in a trailers-only head.
    let r = raw_call(edge.addr, g::PREDICT, predict_msg("other"), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(head(&r, "content-type"), "application/grpc");
    assert_eq!(head(&r, "grpc-status"), "7");
    assert!(r.bytes().await.unwrap().is_empty());
    // A message that is not a PredictRequest: INVALID_ARGUMENT, not an HTTP 400.
    let r = raw_call(
        edge.addr,
        g::PREDICT,
        bytes::Bytes::from_static(b"\0\0\0\0\x09abc"),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(head(&r, "grpc-status"), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_alpn_h2() {
    let s = tf_sim(Duration::from_millis(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new(dir.path(), "test");
    let (cert, key) = ca.server("api", &[HOST]);
    let listener = format!(
        "  - address: 127.0.0.1:0\n    http2: true\n    tls:\n      certificates:\n        - {{ cert: {}, key: {} }}\n",
        cert.display(),
        key.display()
    );
    let edge = embedded::edge_with_listener(&listener, &body(&s, &[MODEL], "")).await;
    let calls = json!([
        {"method": "predict", "model": MODEL},
        {"method": "status", "model": MODEL},
    ]);
    let direct = grpc_calls(&s.grpc_addr().unwrap().to_string(), None, calls.clone()).await;
    let via = grpc_calls(&edge.addr.to_string(), Some((&ca.ca, HOST)), calls).await;
    assert_eq!(via[0]["code"], "OK", "{via:?}");
    for (d, v) in direct.iter().zip(&via) {
        assert_eq!(essentials(d), essentials(v), "direct vs edge over TLS");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_are_healthy_only_while_their_grpc_port_answers() {
    let s = tf_sim(Duration::from_millis(5)).await;
    // The pool's gRPC port is one where nothing listens: REST answers, gRPC does not.
    let dead = common::free_port();
    let good = s.grpc_addr().unwrap().port();
    let yaml = body(&s, &[MODEL], "")
        .replace(&format!("grpc_port: {good}"), &format!("grpc_port: {dead}"));
    let edge = embedded::edge_with_listener(H2C, &yaml).await;
    let healthy = || edge.metric("okome_backend_healthy", &[("pool", "tf")]);
    assert_eq!(healthy().await, 0.0, "a backend whose gRPC port is closed");
    let via = grpc_calls(
        &edge.addr.to_string(),
        None,
        json!([{"method": "predict", "model": MODEL}]),
    )
    .await;
    assert_eq!(via[0]["code"], "UNAVAILABLE", "{via:?}");
    assert!(
        via[0]["details"]
            .as_str()
            .unwrap()
            .contains("no healthy backend"),
        "{via:?}"
    );
    // The engine's gRPC port: healthy at the next probes (200 ms apart).
    edge.reload(&body(&s, &[MODEL], "")).await.unwrap();
    let mut up = false;
    for _ in 0..100 {
        if healthy().await == 1.0 {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the backend never became healthy");
    let via = grpc_calls(
        &edge.addr.to_string(),
        None,
        json!([{"method": "predict", "model": MODEL}]),
    )
    .await;
    assert_eq!(via[0]["code"], "OK", "{via:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predict_request_over_64_kib_is_relayed_whole() {
    // gRPC clients send no Content-Length: the edge cannot buffer just the tail of the body.
    let s = tf_sim(Duration::from_millis(5)).await;
    let edge = embedded::edge_with_listener(H2C, &body(&s, &[MODEL], "")).await;
    let calls = json!([{"method": "predict", "model": MODEL, "n": 50_000}]);
    let direct = grpc_calls(&s.grpc_addr().unwrap().to_string(), None, calls.clone()).await;
    let via = grpc_calls(&edge.addr.to_string(), None, calls).await;
    assert_eq!(via[0]["code"], "OK", "{}", via[0]["details"]);
    assert_eq!(essentials(&direct[0]), essentials(&via[0]));
    assert_eq!(via[0]["y"].as_array().unwrap().len(), 50_000);
    // 50,000 floats: a 200 kB message, the whole of it at the engine.
    assert!(s.stats().last_body_len > 200_000);
}
