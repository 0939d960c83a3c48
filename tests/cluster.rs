//! The seed's cluster, each node on its own address (network namespaces on a bridge, brought up
//! by `conf/cluster/cluster.sh` with the configs of `conf/cluster/`): clients → ingress (TLS,
//! HTTP/2) → stream nodes (mTLS from the ingress) → the core (simulated vLLM, Ollama and TF
//! Serving, the arbiter) with the control plane beside them. Real clients (the OpenAI SDK and
//! reqwest over HTTPS with HTTP/2, curl) check what crosses two proxy hops: the bytes, the
//! pacing, stickiness, a stream node drained and one killed mid-run, the arbiter shedding, and
//! the control plane cut off. Needs root (namespaces), `ip`, `openssl` and `curl`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::{eventually, normalize, read_stream, sse_tokens};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Addresses of this test's cluster (not the script's default, so a cluster someone brought up
/// by hand is left alone).
const NET: &str = "10.78.0";
const PREFIX: &str = "okt";
const HOST: &str = "api.okome.test";

/// A running cluster; brought down when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    script: PathBuf,
    client: reqwest::Client,
    key: String,
}

impl Cluster {
    fn script(&self, args: &[&str]) {
        let out = run_script(&self.script, self.dir.path(), args);
        assert!(out.status.success(), "cluster.sh {args:?}: {}", text(&out));
    }

    fn url(&self, path: &str) -> String {
        format!("https://{HOST}:8443{path}")
    }

    fn log(&self, process: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("logs/{process}.log")))
            .unwrap_or_default()
    }

    /// Which stream node the ingress sent request `id` to (`"3"` or `"4"`), from its access log.
    fn served_by(&self, id: &str) -> Option<String> {
        let log = self.log("ingress");
        let line = log
            .lines()
            .find(|l| l.contains(&format!("\"request_id\":\"{id}\"")))?;
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let backend = v["backend"].as_str()?;
        Some(
            backend
                .trim_start_matches(&format!("{NET}."))
                .trim_end_matches(":8080")
                .to_owned(),
        )
    }

    /// POSTs a chat completion with this conversation id and request id; the response.
    async fn chat(&self, conversation: &str, id: &str, tokens: u32) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .header("x-conversation-id", conversation)
            .header("x-request-id", id)
            .body(chat_body(tokens))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {id}: {e:?}"))
    }

    /// Runs one short chat to completion; (status, which node served it).
    async fn chat_once(&self, conversation: &str, id: &str) -> (u16, Option<String>) {
        let resp = self.chat(conversation, id, 3).await;
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        let mut node = None;
        for _ in 0..50 {
            node = self.served_by(id);
            if node.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (status, node)
    }

    /// Waits until the ingress counts `n` healthy stream nodes.
    async fn healthy_nodes(&self, n: u64) {
        let ok = eventually(20, || async {
            let url = format!("http://{NET}.1:9090/status");
            let Ok(resp) = reqwest::get(url).await else {
                return false;
            };
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            v["pools"][0]["healthy_backends"].as_u64() == Some(n)
        })
        .await;
        assert!(ok, "the ingress never saw {n} healthy stream nodes");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = run_script(&self.script, self.dir.path(), &["down"]);
        if !out.status.success() {
            eprintln!("cluster.sh down: {}", text(&out));
        }
    }
}

fn run_script(script: &Path, dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(script)
        .args(args)
        .env("OKOME_BIN", env!("CARGO_BIN_EXE_okome"))
        .env("OKOME_CLUSTER_DIR", dir)
        .env("OKOME_CLUSTER_PREFIX", PREFIX)
        .env("OKOME_CLUSTER_NET", NET)
        .output()
        .expect("run cluster.sh")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn chat_body(tokens: u32) -> String {
    format!(
        r#"{{"model":"Qwen/Qwen3-8B","stream":true,"max_tokens":{tokens},"messages":[{{"role":"user","content":"across the cluster"}}]}}"#
    )
}

/// An HTTPS client trusting the cluster's CA, reaching the ingress by name (HTTP/2 by ALPN).
fn https_client(ca_pem: &Path) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .resolve(HOST, format!("{NET}.1:8443").parse().unwrap())
        .build()
        .unwrap()
}

/// The same chat straight from the simulated vLLM (no proxy), for comparison.
async fn direct_chat(tokens: u32) -> bytes::Bytes {
    reqwest::Client::new()
        .post(format!("http://{NET}.30:8000/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat_body(tokens))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

/// An SSE body without its `id: N` lines, and the ids in order.
fn strip_ids(body: &[u8]) -> (Vec<u8>, Vec<u64>) {
    let text = String::from_utf8_lossy(body);
    let (mut plain, mut ids) = (String::new(), Vec::new());
    for line in text.split_inclusive('\n') {
        match line.strip_prefix("id: ") {
            Some(n) => ids.push(n.trim().parse().unwrap()),
            None => plain.push_str(line),
        }
    }
    (plain.into_bytes(), ids)
}

async fn openai_sdk_text(client: reqwest::Client, key: &str) -> (String, usize) {
    use async_openai::config::OpenAIConfig;
    use async_openai::types::chat::{
        ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
    };
    use futures::StreamExt;
    let sdk = async_openai::Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("https://{HOST}:8443/v1"))
            .with_api_key(key),
    )
    .with_http_client(client);
    let request = CreateChatCompletionRequestArgs::default()
        .model("Qwen/Qwen3-8B")
        .max_completion_tokens(12u32)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Tell me about the cluster.")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap();
    let mut stream = sdk
        .chat()
        .create_stream(request)
        .await
        .expect("create_stream");
    let (mut text, mut deltas) = (String::new(), 0);
    while let Some(chunk) = stream.next().await {
        for choice in chunk.expect("chunk").choices {
            if let Some(c) = choice.delta.content.filter(|c| !c.is_empty()) {
                deltas += 1;
                text.push_str(&c);
            }
        }
    }
    (text, deltas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_cluster_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/cluster/cluster.sh");
    let out = run_script(&script, dir.path(), &["up"]);
    let c = Cluster {
        client: https_client(&dir.path().join("certs/ca.pem")),
        key: std::fs::read_to_string(dir.path().join("api-key"))
            .unwrap_or_default()
            .trim()
            .to_owned(),
        dir,
        script,
    };
    assert!(out.status.success(), "cluster.sh up: {}", text(&out));
    c.healthy_nodes(2).await;

    // 1. Bytes: through ingress and stream node over HTTPS/HTTP/2, as the engine sent them.
    let direct = direct_chat(30).await;
    let resp = c.chat("bytes", "bytes-1", 30).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert!(
        resp.headers().contains_key("x-okome-stream-id"),
        "the stream nodes' openai route is resumable"
    );
    let (via, reads, spread) = read_stream(resp).await;
    // The engine's bytes, each event numbered (`id: N`) for resumption.
    let (plain, ids) = strip_ids(&via);
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    assert_eq!(normalize(&plain), normalize(&direct));
    assert_eq!(sse_tokens(&String::from_utf8_lossy(&via)), 30);
    // 2. Pacing: 30 tokens at 50/s are ~580 ms apart end to end; two buffering hops would
    // deliver them in a read or two.
    assert!(
        reads >= 15 && spread >= Duration::from_millis(290),
        "tokens bunched across two hops: {reads} reads over {spread:?}"
    );
    // The OpenAI SDK over HTTPS and HTTP/2 (hyper, rustls).
    let (sdk_text, deltas) = openai_sdk_text(c.client.clone(), &c.key).await;
    assert_eq!(deltas, 12, "{sdk_text:?}");
    // curl, as an operator would try it.
    let curl = Command::new("curl")
        .args(["-sS", "--http2", "-N", "-w", "\n%{http_version}"])
        .arg("--cacert")
        .arg(c.dir.path().join("certs/ca.pem"))
        .args(["--resolve", &format!("{HOST}:8443:{NET}.1")])
        .args(["-H", &format!("authorization: Bearer {}", c.key)])
        .args(["-H", "content-type: application/json", "-d", &chat_body(5)])
        .arg(c.url("/v1/chat/completions"))
        .output()
        .unwrap();
    let curl_text = String::from_utf8_lossy(&curl.stdout).to_string();
    assert!(curl_text.ends_with("\n2"), "curl: {}", text(&curl));
    assert_eq!(sse_tokens(&curl_text), 5);
    // One request id in both hops' logs; the stream node logs the client's own address (it
    // trusts the ingress's X-Forwarded-For).
    let node = c.served_by("bytes-1").expect("ingress logged bytes-1");
    let node_log = c.log(&format!("node-0{node}"));
    let line = node_log
        .lines()
        .find(|l| l.contains("\"request_id\":\"bytes-1\""))
        .expect("the stream node logged the same request id");
    assert!(
        line.contains(&format!("\"client\":\"{NET}.254\"")),
        "{line}"
    );
    assert!(line.contains("\"tenant\":\"demo\""), "{line}");

    // 3. Stickiness: a conversation stays on its node; conversations spread over both.
    let mut home = std::collections::BTreeMap::new();
    for conv in 0..10 {
        for round in 0..3 {
            let id = format!("sticky-{conv}-{round}");
            let (status, node) = c.chat_once(&format!("conv-{conv}"), &id).await;
            assert_eq!(status, 200);
            let node = node.expect("served");
            let first = home.entry(conv).or_insert_with(|| node.clone());
            assert_eq!(*first, node, "conversation {conv} moved between nodes");
        }
    }
    let on = |n: &str| home.iter().find(|(_, v)| v.as_str() == n).map(|(k, _)| *k);
    let (k3, k4) = (
        on("3").expect("some conversation on node 3"),
        on("4").expect("some conversation on node 4"),
    );
    let (k3, k4) = (format!("conv-{k3}"), format!("conv-{k4}"));

    // 3b. A stream whose client drops resumes through the ingress, on the node that holds it:
    // the resume carries only the stream id, whose node tag the ingress routes by.
    let sim_requests = || async {
        let s: serde_json::Value = reqwest::get(format!("http://{NET}.30:8000/_sim/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        s["requests"].as_u64().unwrap()
    };
    let direct = direct_chat(100).await;
    let before = sim_requests().await;
    let resp = c.chat(&k3, "resume-start", 100).await;
    assert_eq!(resp.status(), 200);
    let sid = resp.headers()["x-okome-stream-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut first = Vec::new();
    {
        use futures::StreamExt;
        let mut body = resp.bytes_stream();
        while strip_ids(&first).1.len() < 10 {
            first.extend_from_slice(&body.next().await.unwrap().unwrap());
        }
        // Dropping the body resets the HTTP/2 stream: the ingress drops its request to the
        // stream node, which keeps the engine going for the grace window.
    }
    let cut = first.windows(2).rposition(|w| w == b"\n\n").unwrap() + 2;
    first.truncate(cut);
    let last = *strip_ids(&first).1.last().unwrap();
    let rest = c
        .client
        .get(c.url(&format!("/v1/okome/streams/{sid}")))
        .bearer_auth(&c.key)
        .header("last-event-id", last.to_string())
        .header("x-request-id", "resume-again")
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 200, "{:?}", rest.text().await);
    let (rest, _, _) = read_stream(rest).await;
    first.extend_from_slice(&rest);
    let (plain, ids) = strip_ids(&first);
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "each event once, none missing"
    );
    assert_eq!(
        normalize(&plain),
        normalize(&direct),
        "resumed text differs"
    );
    assert_eq!(
        sim_requests().await - before,
        1,
        "the engine saw one request"
    );
    assert_eq!(c.served_by("resume-again"), c.served_by("resume-start"));
    // Without the key the resume is refused before the stream is looked up.
    let other = c
        .client
        .get(c.url(&format!("/v1/okome/streams/{sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401);

    // 4. Drain node 3 (SIGTERM) with a stream on it: the stream finishes, new requests of its
    // conversations move to node 4 once its /readyz says so.
    let long = c.chat(&k3, "drain-live", 100).await;
    assert_eq!(long.status(), 200);
    let live = tokio::spawn(read_stream(long));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    c.script(&["kill", "node-03", "TERM"]);
    let mut moved_after = None;
    for i in 0..100 {
        let (status, node) = c.chat_once(&k3, &format!("drain-new-{i}")).await;
        assert_eq!(status, 200, "a new request failed while node 3 drained");
        if node.as_deref() == Some("4") {
            moved_after = Some(t.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved_after = moved_after.expect("requests never left the draining node");
    eprintln!("cluster: new requests left the draining stream node after {moved_after:?}");
    let (body, _, _) = live.await.unwrap();
    // Without the resumable streams' `id:` lines, the engine's bytes.
    let body = String::from_utf8_lossy(&strip_ids(&body).0).to_string();
    assert_eq!(sse_tokens(&body), 100, "the draining node cut its stream");
    assert!(body.ends_with("data: [DONE]\n\n"));
    c.script(&["start", "node-03"]);
    c.healthy_nodes(2).await;
    // Home again once the ingress has it back (probed ready, no longer ejected).
    let tries = std::sync::atomic::AtomicUsize::new(0);
    let home_again = eventually(10, || async {
        let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (status, node) = c.chat_once(&k3, &format!("drain-back-{n}")).await;
        status == 200 && node.as_deref() == Some("3")
    })
    .await;
    assert!(
        home_again,
        "the conversation never went home after the restart; ingress log:\n{}",
        c.log("ingress")
            .lines()
            .filter(|l| l.contains("drain-back") || l.contains("10.78.0.3"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // 5. Kill node 4 (SIGKILL) mid-run: the stream on node 3 is untouched, node 4's
    // conversations move at once (connection refused → the next node on the ring).
    let survivor = c.chat(&k3, "kill-survivor", 100).await;
    assert_eq!(survivor.status(), 200);
    let survivor = tokio::spawn(read_stream(survivor));
    let victim = c.chat(&k4, "kill-victim", 100).await;
    assert_eq!(victim.status(), 200);
    let victim = tokio::spawn(read_stream(victim));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    c.script(&["kill", "node-04", "KILL"]);
    let (status, node) = c.chat_once(&k4, "kill-new").await;
    let left_after = t.elapsed();
    assert_eq!(status, 200, "the first request after the kill failed");
    assert_eq!(node.as_deref(), Some("3"));
    eprintln!("cluster: the first request after killing a stream node was served (by the other) {left_after:?} after the kill");
    let (body, _, _) = survivor.await.unwrap();
    let body = String::from_utf8_lossy(&strip_ids(&body).0).to_string();
    assert_eq!(
        sse_tokens(&body),
        100,
        "the survivor's stream was disturbed"
    );
    assert!(body.ends_with("data: [DONE]\n\n"));
    let (body, _, _) = victim.await.unwrap();
    assert!(
        sse_tokens(&String::from_utf8_lossy(&body)) < 100,
        "the killed node's stream cannot have finished"
    );
    // Only the dead node's share moved: node 3's conversations stayed.
    for (conv, n) in &home {
        if n == "3" {
            let (_, now) = c
                .chat_once(&format!("conv-{conv}"), &format!("kill-stay-{conv}"))
                .await;
            assert_eq!(now.as_deref(), Some("3"));
        }
    }
    c.script(&["start", "node-04"]);
    c.healthy_nodes(2).await;

    // 6. The arbiter marks vLLM shedding: 503 with its Retry-After reaches the client through
    // both hops, and the ingress keeps both stream nodes (they answered; they are fine).
    let pressure = |waiting: u64| {
        reqwest::Client::new()
            .put(format!("http://{NET}.30:8000/_sim/pressure"))
            .json(&serde_json::json!({ "extra_waiting": waiting }))
            .send()
    };
    assert!(pressure(40).await.unwrap().status().is_success());
    let mut shed = None;
    for i in 0..100 {
        let resp = c.chat(&k3, &format!("shed-{i}"), 3).await;
        if resp.status() == 503 {
            shed = Some(resp);
            break;
        }
        let _ = resp.bytes().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shed = shed.expect("the arbiter's shedding never reached the client");
    let retry_after = shed
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "no Retry-After: {shed:?}"
    );
    let err: serde_json::Value = shed.json().await.unwrap();
    assert_eq!(err["error"]["code"], "overloaded", "{err}");
    c.healthy_nodes(2).await;
    assert!(pressure(0).await.unwrap().status().is_success());
    let recovered = eventually(15, || async {
        c.chat(&k4, "shed-over", 3).await.status() == 200
    })
    .await;
    assert!(recovered, "never served again after the pressure went");

    // 7. The control plane cut off: keys the stream nodes know keep working.
    c.script(&["kill", "control", "KILL"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (conv, id) in [(&k3, "cut-3"), (&k4, "cut-4")] {
        let (status, _) = c.chat_once(conv, id).await;
        assert_eq!(
            status, 200,
            "a known key stopped working without the control plane"
        );
    }
    let stranger = c
        .client
        .post(c.url("/v1/chat/completions"))
        .bearer_auth("okome-never-seen")
        .header("content-type", "application/json")
        .body(chat_body(3))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stranger.status(),
        401,
        "an unknown key must not pass (fail closed)"
    );
}
