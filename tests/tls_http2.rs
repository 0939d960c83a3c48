//! TLS and HTTP/2 at the edge: certificates by SNI, reloaded under live streams; HTTP/2 by ALPN
//! and h2c carrying SSE exactly as HTTP/1.1 does; cancellation by stream reset; TLS (and mTLS)
//! from the edge to its backends. Real clients: reqwest (hyper, rustls) and curl.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{self, EdgeBuilder, Route, TestEdge};
use common::pki::{self, Pki};
use common::*;
use okome_sim::SimKind;
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const HOST: &str = "api.okome.test";

fn chat_body(tokens: u32) -> String {
    format!(
        r#"{{"model":"Qwen/Qwen3-8B","stream":true,"max_tokens":{tokens},"messages":[{{"role":"user","content":"hello over TLS"}}]}}"#
    )
}

/// A listener entry serving the given (cert, key) pairs, optionally requiring client certs.
fn tls_listener(certs: &[(&Path, &Path)], client_ca: Option<&Path>, extra: &str) -> String {
    let mut l = "  - address: 127.0.0.1:0\n    tls:\n      certificates:\n".to_string();
    for (c, k) in certs {
        l.push_str(&format!(
            "        - {{ cert: {}, key: {} }}\n",
            c.display(),
            k.display()
        ));
    }
    if let Some(ca) = client_ca {
        l.push_str(&format!("      client_ca: {}\n", ca.display()));
    }
    l.push_str(extra);
    l
}

fn vllm_body(sim: SocketAddr) -> String {
    EdgeBuilder::new()
        .pool("vllm", "vllm", &[sim])
        .route(Route::to_pool("openai", "vllm").path_prefix("/v1/"))
        .yaml()
}

/// An edge serving HTTPS (HTTP/2 by ALPN) as `api.okome.test`, with a certificate from a fresh
/// CA, in front of a vLLM `sim`; the folder holding the PKI lives as long as the first value.
async fn tls_edge(sim: SocketAddr) -> (tempfile::TempDir, Pki, TestEdge) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new(dir.path(), "test");
    let (cert, key) = ca.server("api", &[HOST]);
    let edge =
        embedded::edge_with_listener(&tls_listener(&[(&cert, &key)], None, ""), &vllm_body(sim))
            .await;
    (dir, ca, edge)
}

/// Runs curl with `args`, streaming (`-N`), and asserts it spoke HTTP/2; the body it printed.
fn curl_http2(args: &[std::ffi::OsString]) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-N", "-o", "-", "-w", "\n%{http_version}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.ends_with("\n2"),
        "curl: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// One streamed response: its HTTP version, body, and how many reads carried bytes, with the
/// time from the first to the last.
struct Streamed {
    version: reqwest::Version,
    body: Vec<u8>,
    reads: usize,
    spread: Duration,
}

async fn stream(client: &reqwest::Client, url: &str, body: &str) -> Streamed {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e:?}"));
    assert_eq!(resp.status(), 200);
    let version = resp.version();
    let (body, reads, spread) = read_stream(resp).await;
    Streamed {
        version,
        body,
        reads,
        spread,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_relays_sse_byte_identical_and_paced() {
    const TOKENS: u32 = 16;
    let s = sim(SimKind::Vllm, |c| c.tokens_per_second = 20.0).await;
    let (_dir, ca, edge) = tls_edge(s.addr()).await;

    let body = chat_body(TOKENS);
    let direct = body_of(&raw(s.addr(), &post("/v1/chat/completions", &body)).await);
    let client = pki::https_client(&ca, HOST, edge.addr);
    let url = format!("https://{HOST}:{}/v1/chat/completions", edge.addr.port());
    let via = stream(&client, &url, &body).await;
    assert_eq!(via.version, reqwest::Version::HTTP_2, "ALPN should pick h2");
    assert_eq!(normalize(&via.body), normalize(&direct));
    assert_eq!(
        sse_tokens(&String::from_utf8_lossy(&via.body)),
        TOKENS as usize
    );
    // 16 tokens at 20/s: ~750 ms apart end to end. A proxy that buffers delivers in a read or two.
    assert!(
        via.reads >= TOKENS as usize / 2 && via.spread >= Duration::from_millis(375),
        "tokens bunched over h2: {} reads over {:?}",
        via.reads,
        via.spread
    );

    // HTTP/1.1 over TLS still works on the same listener (a client that offers only it).
    let h1 = reqwest::Client::builder()
        .tls_backend_preconfigured(pki::client_config(&[&ca], &[b"http/1.1"]))
        .resolve(HOST, edge.addr)
        .build()
        .unwrap();
    let via1 = stream(&h1, &url, &body).await;
    assert_eq!(via1.version, reqwest::Version::HTTP_11);
    assert_eq!(normalize(&via1.body), normalize(&direct));
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "completed")])
            .await,
        2.0
    );
    // The certificate's expiry is published for alerting (rcgen's default: far in the future).
    let expiry = edge
        .metric(
            "okome_tls_certificate_expiry_timestamp_seconds",
            &[("names", HOST)],
        )
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "expiry {expiry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_for_the_name_asked() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new(dir.path(), "test");
    let (api_cert, api_key) = ca.server("api", &[HOST]);
    let (int_cert, int_key) = ca.server("internal", &["*.internal.okome.test"]);
    let edge = embedded::edge_with_listener(
        &tls_listener(&[(&api_cert, &api_key), (&int_cert, &int_key)], None, ""),
        &vllm_body(s.addr()),
    )
    .await;
    let get = |host: &'static str| {
        let client = pki::https_client(&ca, host, edge.addr);
        let url = format!("https://{host}:{}/v1/models", edge.addr.port());
        async move { client.get(url).send().await }
    };
    // Each name gets the certificate that covers it (the client checks the name).
    assert_eq!(get(HOST).await.expect("api name").status(), 200);
    assert_eq!(
        get("node7.internal.okome.test")
            .await
            .expect("wildcard name")
            .status(),
        200
    );
    // A name neither covers gets the first (default) certificate, which a client rejects.
    let err = get("other.example").await.expect_err("wrong certificate");
    assert!(
        format!("{err:?}").contains("NotValidForName"),
        "expected a name mismatch, got {err:?}"
    );
    // Plaintext HTTP to the TLS port gets no answer.
    let plain = raw(edge.addr, &post("/v1/models", "{}")).await;
    assert!(!plain.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_dropping_live_streams() {
    const TOKENS: u32 = 20;
    let s = sim(SimKind::Vllm, |c| c.tokens_per_second = 10.0).await;
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Pki::new(dir.path(), "old");
    let new_ca = Pki::new(dir.path(), "new");
    let (cert, key) = old_ca.server("api", &[HOST]);
    let body_yaml = vllm_body(s.addr());
    let edge =
        embedded::edge_with_listener(&tls_listener(&[(&cert, &key)], None, ""), &body_yaml).await;
    let url = format!("https://{HOST}:{}/v1/chat/completions", edge.addr.port());

    // A 2-second stream under the old certificate.
    let old_client = pki::https_client(&old_ca, HOST, edge.addr);
    let live = {
        let (c, u) = (old_client.clone(), url.clone());
        tokio::spawn(async move { stream(&c, &u, &chat_body(TOKENS)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A broken renewal (key of another certificate) is refused; the old one keeps serving.
    let (other_cert, other_key) = new_ca.server("other", &[HOST]);
    std::fs::copy(&other_key, &key).unwrap();
    let refused = edge.reload(&body_yaml).await.expect_err("mismatched key");
    let msg = refused.to_string();
    assert!(
        msg.contains("listeners[0].tls.certificates[0].cert")
            && msg.contains("is not the private key"),
        "{msg}"
    );
    let check = old_client.get(edge_url(&edge, "/v1/models")).send().await;
    assert_eq!(check.expect("old certificate still served").status(), 200);

    // The real renewal: files replaced in place, then a reload (what SIGHUP does).
    std::fs::copy(&other_cert, &cert).unwrap();
    std::fs::copy(&other_key, &key).unwrap();
    edge.reload(&body_yaml)
        .await
        .expect("reload with the new certificate");

    let new_client = pki::https_client(&new_ca, HOST, edge.addr);
    let fresh = new_client.get(edge_url(&edge, "/v1/models")).send().await;
    assert_eq!(fresh.expect("new certificate served").status(), 200);
    let stale = pki::https_client(&old_ca, HOST, edge.addr)
        .get(edge_url(&edge, "/v1/models"))
        .send()
        .await;
    assert!(
        stale.is_err(),
        "the old certificate is still served to new handshakes"
    );

    // The stream that started before the reload finished whole.
    let done = live.await.unwrap();
    assert_eq!(
        sse_tokens(&String::from_utf8_lossy(&done.body)),
        TOKENS as usize
    );
    assert!(String::from_utf8_lossy(&done.body).ends_with("data: [DONE]\n\n"));
}

fn edge_url(edge: &TestEdge, path: &str) -> String {
    format!("https://{HOST}:{}{path}", edge.addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_on_a_plaintext_listener() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let edge = embedded::edge_with_listener(
        "  - address: 127.0.0.1:0\n    http2: true\n",
        &vllm_body(s.addr()),
    )
    .await;
    let body = chat_body(8);
    let direct = body_of(&raw(s.addr(), &post("/v1/chat/completions", &body)).await);
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let via = stream(&h2c, &edge.url("/v1/chat/completions"), &body).await;
    assert_eq!(via.version, reqwest::Version::HTTP_2);
    assert_eq!(normalize(&via.body), normalize(&direct));
    // HTTP/1.1 clients are still served on the same listener.
    let h1 = raw(edge.addr, &post("/v1/chat/completions", &body)).await;
    assert_eq!(status_of(&h1), 200);
    assert_eq!(normalize(&body_of(&h1)), normalize(&direct));

    // curl, the way an operator would try it.
    let text = curl_http2(&[
        "--http2-prior-knowledge".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-d".into(),
        body.clone().into(),
        edge.url("/v1/chat/completions").into(),
    ]);
    assert_eq!(sse_tokens(&text), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_https_negotiates_http2_and_streams() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let (_dir, ca, edge) = tls_edge(s.addr()).await;
    let port = edge.addr.port();
    let text = curl_http2(&[
        "--http2".into(),
        "--cacert".into(),
        ca.ca.clone().into(),
        "--resolve".into(),
        format!("{HOST}:{port}:127.0.0.1").into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-d".into(),
        chat_body(6).into(),
        format!("https://{HOST}:{port}/v1/chat/completions").into(),
    ]);
    assert_eq!(sse_tokens(&text), 6);
    assert!(text.contains("data: [DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_reset_cancels_the_engine_request() {
    let s = sim(SimKind::Vllm, |c| c.tokens_per_second = 10.0).await;
    let (_dir, ca, edge) = tls_edge(s.addr()).await;
    let client = pki::https_client(&ca, HOST, edge.addr);
    let resp = client
        .post(edge_url(&edge, "/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat_body(200))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let mut resp = resp;
    let first = resp.chunk().await.unwrap();
    assert!(first.is_some());
    // Dropping the body resets this stream (RST_STREAM) while the connection stays up.
    drop(resp);
    assert!(
        eventually(5, || async { s.stats().streams_aborted == 1 }).await,
        "the engine never saw the client leave: {:?}",
        s.stats()
    );
    // The same connection carries the next request.
    let again = client
        .get(edge_url(&edge, "/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.version(), reqwest::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mtls_to_backends() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new(dir.path(), "cluster");
    let (node_cert, node_key) = ca.server("node", &["node.okome.test", "127.0.0.1"]);
    let (client_cert, client_key) = ca.client("ingress", "ingress");
    // The "stream node": TLS that demands a client certificate from the cluster CA.
    let node = embedded::edge_with_listener(
        &tls_listener(
            &[(&node_cert, &node_key)],
            Some(&ca.ca),
            "    http2: false\n",
        ),
        &vllm_body(s.addr()),
    )
    .await;
    let front = |tls: serde_json::Value| {
        EdgeBuilder::new()
            // The node is an edge: probe a path its route serves.
            .pool_with(
                "node",
                "vllm",
                &[node.addr],
                json!({ "tls": tls, "health_check": {"interval": "200ms", "timeout": "150ms", "path": "/v1/models"} }),
            )
            .route(Route::to_pool("openai", "node").path_prefix("/v1/"))
            .start()
    };
    // With the client certificate, checked against the IP (no server_name) ...
    let ok = front(json!({
        "ca": ca.ca, "cert": client_cert, "key": client_key
    }))
    .await;
    let body = chat_body(6);
    let direct = body_of(&raw(s.addr(), &post("/v1/chat/completions", &body)).await);
    let via = raw(ok.addr, &post("/v1/chat/completions", &body)).await;
    assert_eq!(status_of(&via), 200, "{}", String::from_utf8_lossy(&via));
    assert_eq!(normalize(&body_of(&via)), normalize(&direct));
    // ... and by name.
    let named = front(json!({
        "ca": ca.ca, "cert": client_cert, "key": client_key, "server_name": "node.okome.test"
    }))
    .await;
    let via = raw(named.addr, &post("/v1/chat/completions", &body)).await;
    assert_eq!(status_of(&via), 200, "{}", String::from_utf8_lossy(&via));

    // Without a client certificate the node refuses the handshake: probes fail, no backend.
    let anonymous = front(json!({ "ca": ca.ca })).await;
    let via = raw(anonymous.addr, &post("/v1/chat/completions", &body)).await;
    assert_eq!(status_of(&via), 503, "{}", String::from_utf8_lossy(&via));
    // A name the node's certificate does not carry fails verification the same way.
    let wrong = front(json!({
        "ca": ca.ca, "cert": client_cert, "key": client_key, "server_name": "evil.okome.test"
    }))
    .await;
    let via = raw(wrong.addr, &post("/v1/chat/completions", &body)).await;
    assert_eq!(status_of(&via), 503, "{}", String::from_utf8_lossy(&via));
    assert_eq!(
        s.stats().requests,
        3,
        "only verified connections reached the engine"
    );
}

#[test]
fn bad_tls_settings_are_refused_with_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new(dir.path(), "test");
    let (cert, key) = ca.server("api", &[HOST]);
    let (_, other_key) = ca.server("other", &[HOST]);
    let path = dir.path().join("edge.yaml");
    let parse = |listener: String| {
        let text = format!(
            "listeners:\n{listener}pools:\n  p: {{kind: vllm, backends: [127.0.0.1:9]}}\nroutes:\n  - {{name: r, pool: p}}\n"
        );
        okome::config::parse(&path, &text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let mismatched = parse(tls_listener(&[(&cert, &other_key)], None, ""));
    assert!(
        mismatched.contains("edge.yaml:5: listeners[0].tls.certificates[0].cert")
            && mismatched.contains("is not the private key of"),
        "{mismatched}"
    );
    let missing = parse(tls_listener(
        &[(&cert, &dir.path().join("nope.key"))],
        None,
        "",
    ));
    assert!(
        missing.contains("listeners[0].tls.certificates[0].key") && missing.contains("nope.key"),
        "{missing}"
    );
    let not_a_cert = parse(tls_listener(&[(&key, &key)], None, ""));
    assert!(not_a_cert.contains("no PEM certificate"), "{not_a_cert}");
    let bad_ca = parse(tls_listener(&[(&cert, &key)], Some(&key), ""));
    assert!(bad_ca.contains("listeners[0].tls.client_ca"), "{bad_ca}");
    let capped_h2 = parse(tls_listener(
        &[(&cert, &key)],
        None,
        "    max_connections: 10\n",
    ));
    assert!(
        capped_h2.contains("listeners[0].max_connections") && capped_h2.contains("HTTP/2"),
        "{capped_h2}"
    );
    // Relative paths are read from the config's folder.
    std::fs::copy(&cert, dir.path().join("rel.pem")).unwrap();
    std::fs::copy(&key, dir.path().join("rel.key")).unwrap();
    let relative = parse(
        "  - address: 127.0.0.1:0\n    tls:\n      certificates:\n        - { cert: rel.pem, key: rel.key }\n"
            .into(),
    );
    assert_eq!(relative, "", "relative certificate paths");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_ndjson_streams_over_h2c_as_over_http1() {
    let s = sim(SimKind::Ollama, |_| {}).await;
    let body = EdgeBuilder::new()
        .pool("ollama", "ollama", &[s.addr()])
        .route(Route::to_pool("native", "ollama").path_prefix("/api/"))
        .yaml();
    let edge =
        embedded::edge_with_listener("  - address: 127.0.0.1:0\n    http2: true\n", &body).await;
    let req = ollama_chat("llama3.2:latest", 6);
    let direct = body_of(&raw(s.addr(), &post("/api/chat", &req)).await);
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let via = stream(&h2c, &edge.url("/api/chat"), &req).await;
    assert_eq!(via.version, reqwest::Version::HTTP_2);
    assert_eq!(normalize(&via.body), normalize(&direct));
    assert!(via.reads >= 3, "NDJSON lines bunched: {} reads", via.reads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_client_head() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = sim(SimKind::Vllm, |_| {}).await;
    let body = format!("timeouts: {{client_head: 300ms}}\n{}", vllm_body(s.addr()));
    let edge =
        embedded::edge_with_listener("  - address: 127.0.0.1:0\n    http2: true\n", &body).await;
    let mut conn = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame, then nothing.
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // the server's SETTINGS, its ack, a GOAWAY
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle h2 connection was kept open");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

/// Security round three, 4: an HTTP/2 body without `content-length` was not read, so
/// `curl --http2 -T - …/v1/chat/completions < ok.json` got 400 `model_required` where the same
/// body over HTTP/1.1 chunked got 200. The end of the stream ends the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_without_content_length_is_read() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    // A route restricted to one model: the body must be read to route and check it.
    let yaml = EdgeBuilder::new()
        .pool("vllm", "vllm", &[s.addr()])
        .route(
            Route::to_pool("openai", "vllm")
                .path_prefix("/v1/")
                .filters(
                    serde_json::json!([{"type": "allow_models", "models": ["Qwen/Qwen3-8B"]}]),
                ),
        )
        .yaml();
    let edge =
        embedded::edge_with_listener("  - address: 127.0.0.1:0\n    http2: true\n", &yaml).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.json");
    std::fs::write(&file, chat_body(5)).unwrap();
    // `-T -` uploads standard input: curl sends no content-length over HTTP/2.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-T",
            "-",
        ])
        .args([
            "-H",
            "content-type: application/json",
            "-w",
            "\n%{http_code}",
        ])
        .arg(edge.url("/v1/chat/completions"))
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.ends_with("\n200"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sse_tokens(&text), 5, "{text}");
    // A GET without a body is still one.
    let models = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .get(edge.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
}
