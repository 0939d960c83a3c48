//! The request path cannot be talked out of its policy: each test is a reproduction from the
//! security review (Upgrade-on-POST, a missing model, bodies read before `auth`, keys forwarded
//! to engines, open model management, an open `/v1/models` and control plane API), over real
//! sockets against the real `okome edge` binary, an in-process control plane and simulators.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::embedded::{self, TestEdge};
use common::*;
use okome::control::{self, hash_key, ControlHandle, ControlPolicy, PolicyStore, YamlStore};
use okome_sim::{SimHandle, SimKind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "okome-test-key-small";
/// Tenant `one`: any model, one stream at a time.
const KEY_ONE: &str = "okome-test-key-one";
const QWEN: &str = "Qwen/Qwen3-8B";
const LLAMA: &str = "llama3.2:latest";
const TOKEN: &str = "control-plane-token-for-tests";

/// A control plane with tenant `small` (Qwen models only, 1 MiB bodies) owning `KEY`; with
/// `token`, its API requires it.
async fn control_plane(token: Option<&str>) -> ControlHandle {
    let yaml = "listen: 127.0.0.1:0\nedges: 1\ntenants:\n  - id: small\n    models: [\"Qwen/*\"]\n    max_body: 1MiB\n\
                \x20 - id: one\n    max_concurrent_streams: 1\nroutes: []\n";
    let mut policy = ControlPolicy::from_str("control.yaml", yaml).expect("control config");
    policy.api_token = token.map(okome::config::Secret::new);
    let store = YamlStore::from_config(policy);
    store.insert_key(&hash_key(KEY), "small").expect("key");
    store.insert_key(&hash_key(KEY_ONE), "one").expect("key");
    let s: Arc<dyn PolicyStore> = Arc::new(store);
    control::start(s, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("control API")
}

/// vLLM (Qwen) and Ollama (llama) simulators.
async fn engines() -> (SimHandle, SimHandle) {
    (
        sim(SimKind::Vllm, |_| {}).await,
        sim(SimKind::Ollama, |_| {}).await,
    )
}

/// An edge with an `/v1/` route over both pools guarded by `filters`, and the control plane at
/// `ctl` (reached with `token_line`, e.g. `  token: {file: …}\n`). `route_extra` is appended to
/// the route (e.g. `    default_model: …\n`).
async fn edge(
    v: &SimHandle,
    o: &SimHandle,
    ctl: SocketAddr,
    filters: &str,
    route_extra: &str,
    control_extra: &str,
) -> TestEdge {
    let state = tempfile::tempdir().unwrap().keep();
    embedded::edge(&format!(
        "pools:\n{}{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pools: [vllm, ollama]\n    filters: {filters}\n{route_extra}\
         control:\n  address: {ctl}\n  state_dir: {}\n{control_extra}",
        pool("vllm", "vllm", &[v.addr()]),
        pool("ollama", "ollama", &[o.addr()]),
        state.display()
    ))
    .await
}

/// A POST with the given extra header lines (each ending in `\r\n`).
fn post_with(path: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn bearer() -> String {
    format!("Authorization: Bearer {KEY}\r\n")
}

/// Requests the engines counted (generation and predict requests).
fn engine_requests(sims: &[&SimHandle]) -> u64 {
    sims.iter().map(|s| s.stats().requests).sum()
}

/// Sends a request head announcing `declared` body bytes plus only `sent` of them, keeps the
/// connection open, and returns what the edge answered within `wait` (empty when nothing).
async fn partial_body(
    addr: SocketAddr,
    extra: &str,
    declared: usize,
    sent: usize,
    wait: Duration,
) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n{extra}\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b' '; sent]).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(wait, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.windows(4).any(|w| w == b"\r\n\r\n") && !body_of(&out).is_empty() {
                        break;
                    }
                }
            }
        }
    })
    .await;
    out
}

/// Reproduction: `Upgrade: x` on a POST skipped the body, so the tenant's model allowlist, body
/// limit and model routing were skipped and the engine got an ordinary POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_header_on_a_post_skips_no_check() {
    let (v, o) = engines().await;
    let ctl = control_plane(None).await;
    let edge = edge(&v, &o, ctl.addr(), "[{type: auth}, {type: policy}]", "", "").await;
    let upgrade = format!("{}Upgrade: x\r\n", bearer());

    let r = raw(
        edge.addr,
        &post_with("/v1/chat/completions", &chat(LLAMA, 2), &upgrade),
    )
    .await;
    assert_eq!(status_of(&r), 403, "{}", String::from_utf8_lossy(&r));
    assert_openai_error(&body_of(&r), "model_not_allowed");

    // Over the tenant's 1 MiB limit: refused, not forwarded.
    let big = format!(
        r#"{{"model":"{QWEN}","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2 << 20)
    );
    let r = raw(
        edge.addr,
        &post_with("/v1/chat/completions", &big, &upgrade),
    )
    .await;
    assert_eq!(status_of(&r), 413, "{}", String::from_utf8_lossy(&r));
    assert_eq!(engine_requests(&[&v, &o]), 0, "nothing reached an engine");

    // An allowed model is served as the ordinary request it is.
    let r = raw(
        edge.addr,
        &post_with("/v1/chat/completions", &chat(QWEN, 2), &upgrade),
    )
    .await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert_eq!(v.stats().requests, 1);
    assert_eq!(v.stats().last_body_len, chat(QWEN, 2).len() as u64);
}

/// Reproduction: a request without `"model"` (or with `null`) skipped the allowlist and went to
/// the route's first pool, whose engine serves its default model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_model_is_refused_on_a_model_restricted_route() {
    let (v, o) = engines().await;
    let ctl = control_plane(None).await;
    let edge = edge(&v, &o, ctl.addr(), "[{type: auth}, {type: policy}]", "", "").await;
    for body in [
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":null,"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"","messages":[{"role":"user","content":"hi"}]}"#,
        "",
    ] {
        let r = raw(
            edge.addr,
            &post_with("/v1/chat/completions", body, &bearer()),
        )
        .await;
        assert_eq!(
            status_of(&r),
            400,
            "{body}: {}",
            String::from_utf8_lossy(&r)
        );
        assert_openai_error(&body_of(&r), "model_required");
    }
    // Two different models for one request: refused, whichever the engine would have read.
    let dup = format!(r#"{{"model":"{QWEN}","model":"{LLAMA}","messages":[]}}"#);
    let r = raw(
        edge.addr,
        &post_with("/v1/chat/completions", &dup, &bearer()),
    )
    .await;
    assert_eq!(status_of(&r), 400, "{}", String::from_utf8_lossy(&r));
    assert_eq!(engine_requests(&[&v, &o]), 0);
}

/// A route may name the model for requests that name none; it passes the same checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_default_model_is_injected_and_checked() {
    let (v, o) = engines().await;
    let ctl = control_plane(None).await;
    let edge = edge(
        &v,
        &o,
        ctl.addr(),
        "[{type: auth}, {type: policy}]",
        &format!("    default_model: \"{QWEN}\"\n"),
        "",
    )
    .await;
    let body = r#"{"max_tokens":2,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = raw(
        edge.addr,
        &post_with("/v1/chat/completions", body, &bearer()),
    )
    .await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert!(String::from_utf8_lossy(&body_of(&r)).contains(QWEN));
    assert_eq!(v.stats().requests, 1);
}

/// Reproduction: the body was read before `auth` ran — unauthenticated clients could make the
/// edge buffer up to 16 MiB each. Now the 401 comes while the body is still unsent, and a known
/// tenant's own (smaller) limit refuses an announced body before it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_not_read_before_auth_and_the_tenant_limit() {
    let (v, o) = engines().await;
    let ctl = control_plane(None).await;
    let edge = edge(
        &v,
        &o,
        ctl.addr(),
        "[{type: auth}, {type: policy}, {type: ratelimit}]",
        "",
        "",
    )
    .await;
    let answers = futures::future::join_all(
        (0..30).map(|_| partial_body(edge.addr, "", 15 << 20, 1024, Duration::from_secs(5))),
    )
    .await;
    for r in &answers {
        assert_eq!(status_of(r), 401, "{}", String::from_utf8_lossy(r));
        assert_openai_error(&body_of(r), "missing_api_key");
    }
    let r = partial_body(edge.addr, &bearer(), 8 << 20, 1024, Duration::from_secs(5)).await;
    assert_eq!(status_of(&r), 413, "{}", String::from_utf8_lossy(&r));
    assert!(String::from_utf8_lossy(&body_of(&r)).contains("your key's limit"));
    assert_eq!(engine_requests(&[&v, &o]), 0);
}

/// A tenant already holding all its streams is refused on the request head: its next body is
/// not read (the 429 comes while the body is still unsent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_stream_limit_is_refused_before_its_body_is_read() {
    let v = sim(SimKind::Vllm, |c| c.tokens_per_second = 5.0).await;
    let o = sim(SimKind::Ollama, |_| {}).await;
    let ctl = control_plane(None).await;
    let edge = edge(
        &v,
        &o,
        ctl.addr(),
        "[{type: auth}, {type: policy}, {type: ratelimit}]",
        "",
        "",
    )
    .await;
    let one = format!("Authorization: Bearer {KEY_ONE}\r\n");
    // A stream of 20 tokens at 5/s holds the tenant's only slot for ~4 s.
    let mut held = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    held.write_all(&post_with("/v1/chat/completions", &chat(QWEN, 20), &one))
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let n = held.read(&mut first).await.unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    let r = partial_body(edge.addr, &one, 4 << 20, 1024, Duration::from_secs(3)).await;
    assert_eq!(status_of(&r), 429, "{}", String::from_utf8_lossy(&r));
    assert_openai_error(&body_of(&r), "rate_limit_exceeded");
    assert!(header_of(&r, "retry-after").is_some());
    drop(held);
}

/// Reproduction: the tenant's API key was forwarded to the engines verbatim. Now clients'
/// `Authorization`/`x-api-key` stay at the edge, and a pool with an `api_key` sends its own
/// (probes included: this vLLM answers `/v1/models` only with it, like `vllm serve --api-key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_stay_at_the_edge_and_pools_send_their_own() {
    let v = sim(SimKind::Vllm, |c| c.api_key = Some("engine-secret".into())).await;
    let o = sim(SimKind::Ollama, |_| {}).await;
    let ctl = control_plane(None).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("vllm.key");
    std::fs::write(&key_file, "engine-secret\n").unwrap();
    let state = tempfile::tempdir().unwrap();
    let edge = embedded::edge(&format!(
        "pools:\n{}    api_key: {{ file: {} }}\n{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pools: [vllm, ollama]\n    filters: [{{type: auth}}, {{type: policy}}]\n\
         control:\n  address: {}\n  state_dir: {}\n",
        pool("vllm", "vllm", &[v.addr()]),
        key_file.display(),
        pool("ollama", "ollama", &[o.addr()]),
        ctl.addr(),
        state.path().display()
    ))
    .await;
    let creds = format!(
        "{}x-api-key: {KEY}\r\nProxy-Authorization: Basic eDp5\r\n",
        bearer()
    );
    let ok = eventually(5, || async {
        status_of(
            &raw(
                edge.addr,
                &post_with("/v1/chat/completions", &chat(QWEN, 2), &creds),
            )
            .await,
        ) == 200
    })
    .await;
    assert!(
        ok,
        "the vLLM pool's models were never learned with its key; log:\n{}",
        edge.log_text()
    );
    assert_eq!(
        v.stats().last_credentials,
        vec!["authorization: Bearer engine-secret".to_owned()]
    );

    // A pool without a key gets no credentials at all.
    let edge2 = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: ollama\n    match: {{ path_prefix: /api/ }}\n    pool: ollama\n",
        pool("ollama", "ollama", &[o.addr()]),
    ))
    .await;
    let r = raw(
        edge2.addr,
        &post_with("/api/chat", &ollama_chat(LLAMA, 2), &creds),
    )
    .await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert_eq!(o.stats().last_credentials, Vec::<String>::new());
}

/// Reproduction: the open `/api/` route forwarded Ollama's model management (`DELETE
/// /api/delete`, `/api/pull`, `/api/create`, `/api/copy`, `/api/push`) to the engine. Now a route
/// exposes inference and listing by default; management only where `allow` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_management_is_closed_unless_a_route_opens_it() {
    let o = sim(SimKind::Ollama, |_| {}).await;
    let edge = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: ollama\n    match: {{ path_prefix: /api/ }}\n    pool: ollama\n\
         \x20 - name: manage\n    match: {{ path_prefix: /admin-api/ }}\n    pool: ollama\n    allow: [\"POST /admin-api/pull\"]\n",
        pool("ollama", "ollama", &[o.addr()]),
    ))
    .await;
    for (method, path, body) in [
        ("DELETE", "/api/delete", r#"{"model":"llama3.2:latest"}"#),
        ("POST", "/api/pull", r#"{"model":"llama3.2:latest"}"#),
        ("POST", "/api/push", r#"{"model":"llama3.2:latest"}"#),
        (
            "POST",
            "/api/create",
            r#"{"model":"x","from":"llama3.2:latest"}"#,
        ),
        (
            "POST",
            "/api/copy",
            r#"{"source":"llama3.2:latest","destination":"x"}"#,
        ),
        ("POST", "/api/blobs/sha256:00", ""),
    ] {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let r = raw(edge.addr, req.as_bytes()).await;
        assert_eq!(
            status_of(&r),
            404,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r)
        );
        assert_ollama_error(&body_of(&r));
    }
    // Wrong method on an exposed path: 405.
    let r = raw(
        edge.addr,
        b"GET /api/chat HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 405, "{}", String::from_utf8_lossy(&r));
    // Inference and listing work.
    let r = raw(
        edge.addr,
        &post_with("/api/chat", &ollama_chat(LLAMA, 2), ""),
    )
    .await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    let r = raw(
        edge.addr,
        b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    // A route that opens one management endpoint exposes that one only.
    let r = raw(
        edge.addr,
        &post_with("/admin-api/chat", &ollama_chat(LLAMA, 2), ""),
    )
    .await;
    assert_eq!(status_of(&r), 404, "{}", String::from_utf8_lossy(&r));
}

/// Reproduction: `GET /v1/models` was answered before routes and filters — no key needed, every
/// pool's models shown. Now it needs the route's `auth` and lists the tenant's models only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_list_needs_a_key_and_shows_the_tenants_models() {
    let (v, o) = engines().await;
    let ctl = control_plane(None).await;
    let edge = edge(&v, &o, ctl.addr(), "[{type: auth}, {type: policy}]", "", "").await;
    let get = |auth: String| {
        format!("GET /v1/models HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
            .into_bytes()
    };
    let r = raw(edge.addr, &get(String::new())).await;
    assert_eq!(status_of(&r), 401, "{}", String::from_utf8_lossy(&r));
    let listed = eventually(5, || async {
        let r = raw(edge.addr, &get(bearer())).await;
        let v: serde_json::Value = serde_json::from_slice(&body_of(&r)).unwrap_or_default();
        let ids: Vec<&str> = v["data"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["id"].as_str()).collect())
            .unwrap_or_default();
        ids == [QWEN]
    })
    .await;
    assert!(listed, "the tenant should see exactly [{QWEN}]");
}

/// Reproduction: the control plane's `/v1/snapshot` and `/v1/keys/{sha}` were readable by anyone
/// who could reach it. With `api_token` they need it; an edge with the token works, one without
/// cannot verify keys (401, fail closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_api_requires_its_token() {
    let ctl = control_plane(Some(TOKEN)).await;
    let base = format!("http://{}", ctl.addr());
    let c = reqwest::Client::new();
    for path in ["/v1/snapshot", &format!("/v1/keys/{}", hash_key(KEY))] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = c
            .get(format!("{base}{path}"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = c
            .get(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let (v, o) = engines().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("control.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let with = edge(
        &v,
        &o,
        ctl.addr(),
        "[{type: auth}, {type: policy}]",
        "",
        &format!("  token: {{ file: {} }}\n", token_file.display()),
    )
    .await;
    let r = raw(
        with.addr,
        &post_with("/v1/chat/completions", &chat(QWEN, 2), &bearer()),
    )
    .await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));

    let without = edge(&v, &o, ctl.addr(), "[{type: auth}, {type: policy}]", "", "").await;
    let r = raw(
        without.addr,
        &post_with("/v1/chat/completions", &chat(QWEN, 2), &bearer()),
    )
    .await;
    assert_eq!(status_of(&r), 401, "{}", String::from_utf8_lossy(&r));
    assert_openai_error(&body_of(&r), "key_unverifiable");
}

/// Security round three, 1: on an Ollama route restricted to one model,
/// `{"model":"llama3.2:latest","Model":"secret:latest",…}` passed the allowlist on `model` and was
/// forwarded byte for byte; Ollama decodes keys case-insensitively, the last match winning, so a
/// real Ollama runs `secret:latest`. Refused with 400 in Ollama's error shape, and on `/v1/*`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_variant_key_cannot_smuggle_another_model() {
    let o = sim(SimKind::Ollama, |c| {
        c.models = vec!["llama3.2:latest".into(), "secret:latest".into()];
    })
    .await;
    let edge = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: ollama\n    pool: ollama\n    filters: [{{type: allow_models, models: [\"llama3.2:latest\"]}}]\n",
        pool("ollama", "ollama", &[o.addr()]),
    ))
    .await;
    let smuggled =
        r#"{"model":"llama3.2:latest","Model":"secret:latest","stream":false,"messages":[]}"#;
    for path in ["/api/chat", "/v1/chat/completions"] {
        let r = raw(edge.addr, &post_with(path, smuggled, "")).await;
        assert_eq!(
            status_of(&r),
            400,
            "{path}: {}",
            String::from_utf8_lossy(&r)
        );
        let body = String::from_utf8_lossy(&body_of(&r)).to_string();
        assert!(
            body.contains("Model") && body.contains("case-insensitively"),
            "{body}"
        );
    }
    assert!(
        body_of(&raw(edge.addr, &post_with("/api/chat", smuggled, "")).await)
            .starts_with(b"{\"error\":\"")
    );
    assert_eq!(engine_requests(&[&o]), 0);
    // The plain request still goes through.
    let ok = r#"{"model":"llama3.2:latest","stream":false,"messages":[]}"#;
    let r = raw(edge.addr, &post_with("/api/chat", ok, "")).await;
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
}

/// Security round three, 6: `/api/tags` (and `/api/ps`) listed models the tenant may not use on
/// a model-restricted route, where `/v1/models` was filtered. Only the allowed models are
/// relayed; the entries keep every field the engine wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_listings_show_only_the_allowed_models() {
    let o = sim(SimKind::Ollama, |c| {
        c.models = vec!["llama3.2:latest".into(), "secret:latest".into()];
    })
    .await;
    let edge = embedded::edge(&format!(
        "pools:\n{}routes:\n  - name: open\n    match: {{ headers: {{ x-open: \"1\" }} }}\n    pool: ollama\n  - name: ollama\n    pool: ollama\n    filters: [{{type: allow_models, models: [\"llama3.2\"]}}]\n",
        pool("ollama", "ollama", &[o.addr()]),
    ))
    .await;
    let names = |resp: &[u8]| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&body_of(resp))
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(resp)));
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert!(m["digest"].is_string() && m["size"].is_number(), "{m}");
                m["name"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    for path in ["/api/tags", "/api/ps"] {
        let get = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let r = raw(edge.addr, get.as_bytes()).await;
        assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
        assert_eq!(names(&r), ["llama3.2:latest"], "{path}");
        // A route without a model restriction lists what the engine has.
        let open =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nx-open: 1\r\nConnection: close\r\n\r\n");
        let r = raw(edge.addr, open.as_bytes()).await;
        assert_eq!(names(&r), ["llama3.2:latest", "secret:latest"], "{path}");
        let head = format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        // A HEAD is relayed as the engine answers it (nothing to filter).
        let direct = raw(o.addr(), head.as_bytes()).await;
        let r = raw(edge.addr, head.as_bytes()).await;
        assert_eq!(
            status_of(&r),
            status_of(&direct),
            "{}",
            String::from_utf8_lossy(&r)
        );
    }
}
