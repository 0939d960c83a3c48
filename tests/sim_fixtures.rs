//! The simulator over real sockets, compared with the engines' wire formats in `/work/shared/fixtures`
//! (falling back to copies of the relevant fixture events when that directory is absent).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use okome_sim::{self as sim, Faults, SimConfig, SimHandle, SimKind, SimStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------- a tiny HTTP/1.1 client that shows framing exactly ----------

/// A response being read: status, headers, and a chunked or fixed-length body.
struct Raw {
    sock: TcpStream,
    buf: Vec<u8>,
    status: u16,
    headers: Vec<(String, String)>,
    chunked: bool,
    remaining: Option<usize>,
}

impl Raw {
    async fn send(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Raw {
        let mut r = Raw::send_only(addr, method, path, body).await;
        r.read_head().await;
        r
    }

    /// Sends the request without waiting for the response head.
    async fn send_only(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Raw {
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        sock.write_all(head.as_bytes()).await.expect("write head");
        sock.write_all(body).await.expect("write body");
        Raw {
            sock,
            buf: Vec::new(),
            status: 0,
            headers: Vec::new(),
            chunked: false,
            remaining: None,
        }
    }

    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        match self.sock.read(&mut tmp).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    async fn read_head(&mut self) {
        loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..p]).to_string();
                self.buf.drain(..p + 4);
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap_or_default();
                self.status = status_line
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                for l in lines {
                    if let Some((k, v)) = l.split_once(':') {
                        self.headers
                            .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
                self.chunked = self
                    .header("transfer-encoding")
                    .is_some_and(|v| v.contains("chunked"));
                self.remaining = self.header("content-length").and_then(|v| v.parse().ok());
                return;
            }
            assert!(
                self.fill().await,
                "connection closed before the response head"
            );
        }
    }

    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// Next body chunk: Ok(Some) data, Ok(None) clean end, Err(()) connection closed mid-body.
    async fn chunk(&mut self) -> Result<Option<Vec<u8>>, ()> {
        if !self.chunked {
            let want = self.remaining.unwrap_or(usize::MAX);
            if want == 0 {
                return Ok(None);
            }
            while self.buf.len() < want {
                if !self.fill().await {
                    if self.remaining.is_none() {
                        break;
                    }
                    return Err(());
                }
            }
            self.remaining = Some(0);
            return Ok(Some(std::mem::take(&mut self.buf)));
        }
        loop {
            if let Some(p) = find(&self.buf, b"\r\n") {
                let size_txt = String::from_utf8_lossy(&self.buf[..p]).to_string();
                let size = usize::from_str_radix(size_txt.trim(), 16).map_err(|_| ())?;
                if self.buf.len() >= p + 2 + size + 2 {
                    let data = self.buf[p + 2..p + 2 + size].to_vec();
                    self.buf.drain(..p + 2 + size + 2);
                    return Ok(if size == 0 { None } else { Some(data) });
                }
            }
            if !self.fill().await {
                return Err(());
            }
        }
    }

    /// The whole body; `complete` is false if the connection closed before the end.
    async fn body(&mut self) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        loop {
            match self.chunk().await {
                Ok(Some(c)) => out.extend_from_slice(&c),
                Ok(None) => return (out, true),
                Err(()) => return (out, false),
            }
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut r = Raw::send(addr, method, path, body.as_bytes()).await;
    let (b, complete) = r.body().await;
    assert!(complete, "body of {path} incomplete");
    (
        r.status,
        r.header("content-type").unwrap_or_default().to_string(),
        String::from_utf8_lossy(&b).to_string(),
    )
}

// ---------- fixtures and shapes ----------

/// A JSON document's structure: braces, brackets and keys in order, values left out.
fn shape(json: &str) -> String {
    let b = json.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let s = &json[start..i];
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j < b.len() && b[j] == b':' {
                    out.push_str(s);
                    out.push(' ');
                }
            }
            c @ (b'{' | b'}' | b'[' | b']') => {
                out.push(c as char);
                out.push(' ');
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// `data:` events of one lettered section `(X)` of a fixture file.
fn fixture_section(file: &str, section: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/work/shared/fixtures/{file}")).unwrap_or_default();
    let mut on = false;
    let mut out = Vec::new();
    for l in text.lines() {
        if l.starts_with('#') {
            let t = l.trim_start_matches(['#', ' ', '-']);
            if t.starts_with('(') {
                on = t.starts_with(section);
            }
            continue;
        }
        if on && !l.trim().is_empty() {
            out.push(l.to_string());
        }
    }
    out
}

/// The fixture's events, or the embedded copy when the shared directory is missing.
fn fixture_or(file: &str, section: &str, fallback: &[&str]) -> Vec<String> {
    let v = fixture_section(file, section);
    if v.is_empty() {
        fallback.iter().map(|s| s.to_string()).collect()
    } else {
        v
    }
}

fn sse_events(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body must end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.to_string())
        .collect()
}

fn assert_same_shapes(got: &[String], want: &[String]) {
    assert_eq!(
        got.len(),
        want.len(),
        "event count\n got: {got:#?}\nwant: {want:#?}"
    );
    for (g, w) in got.iter().zip(want) {
        assert!(!g.contains('\n'), "one line per event: {g:?}");
        assert_eq!(shape(g), shape(w), "\n got: {g}\nwant: {w}");
        if w.starts_with("data: ") {
            assert!(g.starts_with("data: "), "{g}");
        }
        if w == "data: [DONE]" {
            assert_eq!(g, w);
        }
    }
}

// ---------- harness ----------

fn cfg(kind: SimKind) -> SimConfig {
    let mut c = SimConfig::new(kind);
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.prefill = Duration::from_millis(1);
    c.prefill_per_1k_tokens = Duration::ZERO;
    c.tokens_per_second = 1000.0;
    c.default_max_tokens = 5;
    c
}

async fn wait_stats(h: &SimHandle, what: &str, f: impl Fn(&SimStats) -> bool) -> SimStats {
    for _ in 0..500 {
        let s = h.stats();
        if f(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}: {:?}", h.stats());
}

fn json_key_order(v: &str) -> String {
    shape(v)
}

// ---------- vLLM ----------

const VLLM_D: &[&str] = &[
    r#"data: {"id":"chatcmpl-a1b2c3d4e5f60718","object":"chat.completion.chunk","created":1795700000,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null}"#,
    r#"data: {"id":"chatcmpl-a1b2c3d4e5f60718","object":"chat.completion.chunk","created":1795700000,"model":"m","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null,"token_ids":null}]}"#,
    r#"data: {"id":"chatcmpl-a1b2c3d4e5f60718","object":"chat.completion.chunk","created":1795700000,"model":"m","choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":null,"token_ids":null}]}"#,
    r#"data: {"id":"chatcmpl-a1b2c3d4e5f60718","object":"chat.completion.chunk","created":1795700000,"model":"m","choices":[{"index":0,"delta":{"content":" How"},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}]}"#,
    r#"data: {"id":"chatcmpl-a1b2c3d4e5f60718","object":"chat.completion.chunk","created":1795700000,"model":"m","choices":[],"usage":{"prompt_tokens":9,"total_tokens":12,"completion_tokens":3}}"#,
    "data: [DONE]",
];

#[tokio::test]
async fn vllm_chat_stream_matches_fixture() {
    let mut c = cfg(SimKind::Vllm);
    c.models = vec!["m".into()];
    let h = sim::start(c).await.expect("start");
    let req = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":3}"#;
    let (status, ct, body) = request(h.addr(), "POST", "/v1/chat/completions", req).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let got = sse_events(&body);
    let want = fixture_or("vllm_chat_stream_sse.txt", "(D)", VLLM_D);
    assert_same_shapes(&got, &want);
    // Fixed id and created per stream; id format chatcmpl-<16 hex>; usage as in fixture D.
    let v: Vec<serde_json::Value> = got[..5]
        .iter()
        .map(|e| serde_json::from_str(&e[6..]).expect("json"))
        .collect();
    let id = v[0]["id"].as_str().expect("id");
    assert!(
        id.len() == 25 && id[9..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(v
        .iter()
        .all(|e| e["id"] == v[0]["id"] && e["created"] == v[0]["created"]));
    assert_eq!(v[3]["choices"][0]["finish_reason"], "length");
    assert_eq!(v[4]["usage"]["prompt_tokens"], 9);
    assert_eq!(v[4]["usage"]["completion_tokens"], 3);
    assert_eq!(v[4]["usage"]["total_tokens"], 12);
    let s = h.stats();
    assert_eq!(
        (s.streams_started, s.streams_completed, s.streams_aborted),
        (1, 1, 0)
    );

    // Without include_usage: no usage chunk, default max tokens end with "stop".
    let req = r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let (_, _, body) = request(h.addr(), "POST", "/v1/chat/completions", req).await;
    let got = sse_events(&body);
    assert_eq!(got.len(), 1 + 5 + 1);
    assert!(got[5].contains(r#""finish_reason":"stop""#));
    assert!(!body.contains("usage"));
}

const VLLM_CMPL_B: &[&str] = &[
    r#"data: {"id":"cmpl-0f1e2d3c4b5a6978","object":"text_completion","created":1795700000,"model":"m","choices":[{"index":0,"text":" city","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":null}"#,
    r#"data: {"id":"cmpl-0f1e2d3c4b5a6978","object":"text_completion","created":1795700000,"model":"m","choices":[{"index":0,"text":" known","logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":null}"#,
    r#"data: {"id":"cmpl-0f1e2d3c4b5a6978","object":"text_completion","created":1795700000,"model":"m","choices":[],"usage":{"prompt_tokens":5,"total_tokens":7,"completion_tokens":2}}"#,
    "data: [DONE]",
];

#[tokio::test]
async fn vllm_completions_stream_and_whole_match_fixture() {
    let mut c = cfg(SimKind::Vllm);
    c.models = vec!["m".into()];
    let h = sim::start(c).await.expect("start");
    let req = r#"{"model":"m","prompt":"San Francisco is a","max_tokens":2,"stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, _, body) = request(h.addr(), "POST", "/v1/completions", req).await;
    assert_eq!(status, 200);
    let got = sse_events(&body);
    assert_same_shapes(
        &got,
        &fixture_or("vllm_completions_stream_sse.txt", "(B)", VLLM_CMPL_B),
    );
    assert!(
        got[2].contains(r#""usage":{"prompt_tokens":5,"total_tokens":7,"completion_tokens":2}"#),
        "{}",
        got[2]
    );

    let whole_fixture = r#"{"id":"cmpl-40be2aa235c94f38a3b6161c6b93b59c","object":"text_completion","created":1743011184,"model":"granite","choices":[{"index":0,"text":" city known for its diverse population","logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_logprobs":null}],"usage":{"prompt_tokens":4,"total_tokens":11,"completion_tokens":7}}"#;
    let req = r#"{"model":"m","prompt":"San Francisco is a","max_tokens":7}"#;
    let (status, ct, body) = request(h.addr(), "POST", "/v1/completions", req).await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    assert_eq!(json_key_order(&body), json_key_order(whole_fixture));
}

#[tokio::test]
async fn vllm_errors_models_health_version_metrics() {
    let h = sim::start(cfg(SimKind::Vllm)).await.expect("start");
    let a = h.addr();
    let (s, _, b) = request(
        a,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"nope","messages":[]}"#,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        b,
        r#"{"error":{"message":"The model `nope` does not exist.","type":"NotFoundError","param":"model","code":404}}"#
    );
    let (s, _, b) = request(a, "POST", "/v1/chat/completions", "{not json").await;
    assert_eq!(s, 400);
    let v: serde_json::Value = serde_json::from_str(&b).expect("json error body");
    assert_eq!(v["error"]["code"], 400);
    assert_eq!(
        shape(&b),
        shape(r#"{"error":{"message":"x","type":"x","param":null,"code":400}}"#)
    );
    let (s, _, b) = request(a, "GET", "/v1/models", "").await;
    assert_eq!(s, 200);
    let fixture = r#"{"object":"list","data":[{"id":"gpt-oss-120b","object":"model","created":1775029496,"owned_by":"vllm","root":"/app/models/gpt-oss-120b","parent":null,"max_model_len":65536,"permission":[{"id":"modelperm-bfeb81a25ff427f8","object":"model_permission","created":1775029496,"allow_create_engine":false,"allow_sampling":true,"allow_logprobs":true,"allow_search_indices":false,"allow_view":true,"allow_fine_tuning":false,"organization":"*","group":null,"is_blocking":false}]}]}"#;
    assert_eq!(shape(&b), shape(fixture));
    assert!(b.contains(r#""id":"Qwen/Qwen3-8B""#));
    let (s, _, b) = request(a, "GET", "/health", "").await;
    assert_eq!((s, b.as_str()), (200, ""));
    let (_, _, b) = request(a, "GET", "/version", "").await;
    assert_eq!(b, r#"{"version":"0.19.1"}"#);
    let (s, ct, m) = request(a, "GET", "/metrics", "").await;
    assert_eq!(s, 200);
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    for name in [
        "vllm:num_requests_running{engine=\"0\",model_name=\"Qwen/Qwen3-8B\"} 0.0",
        "vllm:num_requests_waiting{engine=\"0\",model_name=\"Qwen/Qwen3-8B\"} 0.0",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"Qwen/Qwen3-8B\"} 0.0",
        "vllm:request_success_total{engine=\"0\",finished_reason=\"abort\",model_name=\"Qwen/Qwen3-8B\"} 0.0",
        "# TYPE vllm:prefix_cache_queries_total counter",
        "# TYPE vllm:prefix_cache_hits_total counter",
        "# TYPE vllm:prompt_tokens_total counter",
        "# TYPE vllm:generation_tokens_total counter",
    ] {
        assert!(m.contains(name), "missing {name}\n{m}");
    }
    // Every HELP/TYPE name of ours exists in the 0.19.1 fixture, with the same HELP text.
    let fx = std::fs::read_to_string("/work/shared/fixtures/vllm_metrics_0.19.1_synthetic.txt")
        .unwrap_or_default();
    if !fx.is_empty() {
        for l in m.lines().filter(|l| l.starts_with("# ")) {
            assert!(fx.contains(l), "not in fixture: {l}");
        }
    }
    let (s, _, b) = request(a, "GET", "/nope", "").await;
    assert_eq!((s, b.as_str()), (404, r#"{"detail":"Not Found"}"#));
}

// ---------- Ollama ----------

#[tokio::test]
async fn ollama_native_ndjson_matches_fixture() {
    let h = sim::start(cfg(SimKind::Ollama)).await.expect("start");
    let a = h.addr();
    let (s, ct, body) = request(
        a,
        "POST",
        "/api/chat",
        r#"{"model":"llama3.2","messages":[{"role":"user","content":"why is the sky blue?"}]}"#,
    )
    .await;
    assert_eq!((s, ct.as_str()), (200, "application/x-ndjson"));
    assert!(body.ends_with('\n'));
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 5 + 1);
    let tok = r#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":"The"},"done":false}"#;
    let fin = r#"{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}"#;
    for l in &lines[..5] {
        assert_eq!(shape(l), shape(tok), "{l}");
        assert!(l.starts_with(r#"{"model":"llama3.2","created_at":""#));
    }
    assert_eq!(shape(lines[5]), shape(fin));
    let v: serde_json::Value = serde_json::from_str(lines[5]).expect("json");
    assert_eq!(v["eval_count"], 5);
    assert!(v["total_duration"].as_u64().expect("ns") >= v["eval_duration"].as_u64().expect("ns"));

    let (_, _, body) = request(
        a,
        "POST",
        "/api/generate",
        r#"{"model":"llama3.2:latest","prompt":"hi","options":{"num_predict":2}}"#,
    )
    .await;
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 3);
    let gtok = r#"{"model":"gemma4","created_at":"2025-10-26T17:15:24.097767Z","response":"That","done":false}"#;
    let gfin = r#"{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","response":"","done":true,"done_reason":"stop","context":[1,2,3],"total_duration":10706818083,"load_duration":6338219291,"prompt_eval_count":26,"prompt_eval_duration":130079000,"eval_count":259,"eval_duration":4232710000}"#;
    assert_eq!(shape(lines[0]), shape(gtok));
    assert_eq!(shape(lines[2]), shape(gfin));
    assert!(lines[2].contains(r#""done_reason":"length""#));

    // stream:false -> one object, application/json; charset=utf-8
    let (s, ct, body) = request(
        a,
        "POST",
        "/api/chat",
        r#"{"model":"llama3.2","messages":[],"stream":false}"#,
    )
    .await;
    assert_eq!((s, ct.as_str()), (200, "application/json; charset=utf-8"));
    assert_eq!(shape(&body), shape(fin));
}

const OLLAMA_COMPAT_A: &[&str] = &[
    r#"data: {"id":"chatcmpl-417","object":"chat.completion.chunk","created":1795700000,"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"The"},"finish_reason":null}]}"#,
    r#"data: {"id":"chatcmpl-417","object":"chat.completion.chunk","created":1795700000,"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"content":" sky"},"finish_reason":null}]}"#,
    r#"data: {"id":"chatcmpl-417","object":"chat.completion.chunk","created":1795700000,"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    r#"data: {"id":"chatcmpl-417","object":"chat.completion.chunk","created":1795700000,"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[],"usage":{"prompt_tokens":26,"completion_tokens":2,"total_tokens":28}}"#,
    "data: [DONE]",
];

#[tokio::test]
async fn ollama_openai_compat_stream_matches_fixture() {
    let mut c = cfg(SimKind::Ollama);
    c.default_max_tokens = 2;
    let h = sim::start(c).await.expect("start");
    let req = r#"{"model":"llama3.2","messages":[{"role":"user","content":"why is the sky blue?"}],"stream":true,"stream_options":{"include_usage":true}}"#;
    let (s, ct, body) = request(h.addr(), "POST", "/v1/chat/completions", req).await;
    assert_eq!(s, 200);
    assert!(ct.starts_with("text/event-stream"));
    let got = sse_events(&body);
    assert_same_shapes(
        &got,
        &fixture_or("ollama_openai_compat_sse.txt", "(A)", OLLAMA_COMPAT_A),
    );
    let (s, _, b) = request(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        r#"{"model":"foo","messages":[]}"#,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        b,
        r#"{"error":{"message":"model \"foo\" not found, try pulling it first","type":"not_found_error","param":null,"code":null}}"#
    );
}

#[tokio::test]
async fn ollama_management_and_errors() {
    let h = sim::start(cfg(SimKind::Ollama)).await.expect("start");
    let a = h.addr();
    let (s, ct, b) = request(a, "GET", "/", "").await;
    assert_eq!(
        (s, ct.as_str(), b.as_str()),
        (200, "text/plain; charset=utf-8", "Ollama is running")
    );
    let mut r = Raw::send(a, "HEAD", "/", b"").await;
    assert_eq!(r.status, 200);
    r.remaining = Some(0);
    let (_, _, b) = request(a, "GET", "/api/version", "").await;
    assert!(b.starts_with(r#"{"version":""#));
    let (_, _, tags) = request(a, "GET", "/api/tags", "").await;
    let tag_fx = r#"{"models":[{"name":"deepseek-r1:latest","model":"deepseek-r1:latest","modified_at":"2025-05-10T08:06:48.639712648-07:00","size":4683075271,"digest":"0a8c","details":{"parent_model":"","format":"gguf","family":"qwen2","families":["qwen2"],"parameter_size":"7.6B","quantization_level":"Q4_K_M"}}]}"#;
    assert_eq!(shape(&tags), shape(tag_fx));
    assert!(tags.contains(r#""name":"llama3.2:latest""#));
    let (_, _, ps) = request(a, "GET", "/api/ps", "").await;
    let ps_fx = r#"{"models":[{"name":"m","model":"m","size":1,"digest":"d","details":{"parent_model":"","format":"gguf","family":"llama","families":["llama"],"parameter_size":"7.2B","quantization_level":"Q4_0"},"expires_at":"t","size_vram":1,"context_length":4096}]}"#;
    assert_eq!(shape(&ps), shape(ps_fx));
    let (s, ct, b) = request(a, "POST", "/api/chat", r#"{"model":"foo","messages":[]}"#).await;
    assert_eq!((s, ct.as_str()), (404, "application/json; charset=utf-8"));
    assert_eq!(
        b,
        r#"{"error":"model \"foo\" not found, try pulling it first"}"#
    );
    let (s, _, b) = request(a, "POST", "/api/chat", r#"{"messages":[]}"#).await;
    assert_eq!((s, b.as_str()), (400, r#"{"error":"model is required"}"#));
    let (s, _, b) = request(a, "POST", "/api/generate", "").await;
    assert_eq!(
        (s, b.as_str()),
        (400, r#"{"error":"missing request body"}"#)
    );
}

#[tokio::test]
async fn ollama_queue_full_is_503_busy() {
    let mut c = cfg(SimKind::Ollama);
    c.max_concurrent = 1;
    c.max_queue = Some(1);
    c.tokens_per_second = 5.0;
    c.default_max_tokens = 10_000;
    let h = sim::start(c).await.expect("start");
    let req = r#"{"model":"llama3.2","prompt":"x"}"#;
    let mut first = Raw::send(h.addr(), "POST", "/api/generate", req.as_bytes()).await;
    assert_eq!(first.status, 200);
    let _tok = first.chunk().await.expect("first token");
    let second = Raw::send(h.addr(), "POST", "/api/generate", req.as_bytes()).await;
    wait_stats(&h, "one waiting", |s| s.waiting == 1).await;
    let (s, ct, b) = request(h.addr(), "POST", "/api/generate", req).await;
    assert_eq!((s, ct.as_str()), (503, "application/json; charset=utf-8"));
    assert_eq!(
        b,
        r#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#
    );
    drop(second);
    drop(first);
    let s = wait_stats(&h, "both aborted", |s| s.streams_aborted == 2).await;
    assert_eq!((s.running, s.waiting), (0, 0));
}

// ---------- TF Serving ----------

#[tokio::test]
async fn tfserving_status_predict_and_errors() {
    let h = sim::start(cfg(SimKind::TfServing)).await.expect("start");
    let a = h.addr();
    let (s, ct, b) = request(a, "GET", "/v1/models/half_plus_two", "").await;
    assert_eq!((s, ct.as_str()), (200, "application/json"));
    assert_eq!(
        b,
        "{\n \"model_version_status\": [\n  {\n   \"version\": \"1\",\n   \"state\": \"AVAILABLE\",\n   \"status\": {\n    \"error_code\": \"OK\",\n    \"error_message\": \"\"\n   }\n  }\n ]\n}\n"
    );
    let (s, _, _) = request(a, "GET", "/v1/models/half_plus_two/versions/1", "").await;
    assert_eq!(s, 200);
    let (s, _, _) = request(a, "GET", "/v1/models/half_plus_two/versions/7", "").await;
    assert_eq!(s, 404);
    let (s, _, b) = request(
        a,
        "POST",
        "/v1/models/half_plus_two:predict",
        r#"{"instances": [1.0,2.0,5.0]}"#,
    )
    .await;
    assert_eq!(
        (s, b.as_str()),
        (200, "{\n    \"predictions\": [2.5, 3.0, 4.5]\n}")
    );
    let (s, _, b) = request(
        a,
        "POST",
        "/v1/models/half_plus_two/versions/1:predict",
        r#"{"inputs": [[1.0, 2.0], [3.0, 4.0]]}"#,
    )
    .await;
    assert_eq!(
        (s, b.as_str()),
        (200, "{\n    \"outputs\": [[2.5, 3.0], [3.5, 4.0]]\n}")
    );
    let (s, ct, b) = request(
        a,
        "POST",
        "/v1/models/half:predict",
        r#"{"instances": [1.0,5.0]}"#,
    )
    .await;
    assert_eq!((s, ct.as_str()), (404, "application/json"));
    assert_eq!(
        b,
        "{\n    \"error\": \"Servable not found for request: Latest(half)\"\n}"
    );
    let (s, _, b) = request(a, "POST", "/v1/models/half_plus_two:predict", "{oops").await;
    assert_eq!(
        (s, b.as_str()),
        (
            400,
            "{\n    \"error\": \"JSON Parse error: Invalid value\"\n}"
        )
    );
    h.set_faults(Faults {
        http_500: true,
        ..Faults::default()
    });
    let (s, _, b) = request(
        a,
        "POST",
        "/v1/models/half_plus_two:predict",
        r#"{"instances": [1.0]}"#,
    )
    .await;
    assert_eq!(s, 500);
    assert!(b.starts_with("{\n    \"error\": "));
    let (s, _, m) = request(a, "GET", "/monitoring/prometheus/metrics", "").await;
    assert_eq!(s, 200);
    assert!(m.contains("# TYPE :tensorflow:serving:request_count counter"));
}

// ---------- faults ----------

#[tokio::test]
async fn fault_http_500_in_engine_shape() {
    let h = sim::start(cfg(SimKind::Vllm)).await.expect("start");
    h.set_faults(Faults {
        http_500: true,
        ..Faults::default()
    });
    let (s, ct, b) = request(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"x"}],"stream":true}"#,
    )
    .await;
    assert_eq!((s, ct.as_str()), (500, "application/json"));
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["error"]["type"], "InternalServerError");
    assert_eq!(v["error"]["code"], 500);
    let o = sim::start(cfg(SimKind::Ollama)).await.expect("start");
    o.set_faults(Faults {
        http_500: true,
        ..Faults::default()
    });
    let (s, _, b) = request(
        o.addr(),
        "POST",
        "/api/chat",
        r#"{"model":"llama3.2","messages":[]}"#,
    )
    .await;
    assert_eq!(s, 500);
    assert!(b.starts_with(r#"{"error":""#) && b.ends_with("\"}"), "{b}");
}

#[tokio::test]
async fn fault_error_after_tokens_in_stream_format() {
    let mut c = cfg(SimKind::Vllm);
    c.faults.error_after_tokens = Some(2);
    let h = sim::start(c).await.expect("start");
    let (s, _, body) = request(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"x"}],"stream":true}"#,
    )
    .await;
    assert_eq!(s, 200);
    let ev = sse_events(&body);
    assert_eq!(ev.len(), 1 + 2 + 2, "{ev:#?}");
    assert!(
        ev[3].starts_with(r#"data: {"error": {"message": "#),
        "{}",
        ev[3]
    );
    assert!(
        ev[3].ends_with(r#""type": "InternalServerError", "param": null, "code": 500}}"#),
        "{}",
        ev[3]
    );
    assert_eq!(ev[4], "data: [DONE]");

    let mut c = cfg(SimKind::Ollama);
    c.faults.error_after_tokens = Some(2);
    let o = sim::start(c).await.expect("start");
    let (s, _, body) = request(
        o.addr(),
        "POST",
        "/api/generate",
        r#"{"model":"llama3.2","prompt":"x"}"#,
    )
    .await;
    assert_eq!(s, 200);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[2],
        r#"{"error":"an error was encountered while running the model"}"#
    );
}

#[tokio::test]
async fn fault_drop_after_tokens_cuts_the_body() {
    for kind in [SimKind::Vllm, SimKind::Ollama] {
        let mut c = cfg(kind);
        c.faults.drop_after_tokens = Some(2);
        let h = sim::start(c).await.expect("start");
        let (path, req) = match kind {
            SimKind::Vllm => (
                "/v1/chat/completions",
                r#"{"messages":[{"role":"user","content":"x"}],"stream":true}"#,
            ),
            _ => ("/api/chat", r#"{"model":"llama3.2","messages":[]}"#),
        };
        let mut r = Raw::send(h.addr(), "POST", path, req.as_bytes()).await;
        assert_eq!(r.status, 200);
        let (body, complete) = r.body().await;
        assert!(
            !complete,
            "{kind}: the body must end without its terminating chunk"
        );
        let body = String::from_utf8_lossy(&body);
        assert!(
            !body.contains("[DONE]") && !body.contains("\"done\":true"),
            "{body}"
        );
        let units = if kind == SimKind::Vllm {
            sse_events(&body).len() - 1
        } else {
            body.lines().count()
        };
        assert_eq!(units, 2, "{kind}: {body}");
    }
}

#[tokio::test]
async fn fault_stall_then_client_abort_is_counted() {
    let mut c = cfg(SimKind::Vllm);
    c.faults.stall_after_tokens = Some(1);
    let h = sim::start(c).await.expect("start");
    let mut r = Raw::send(
        h.addr(),
        "POST",
        "/v1/completions",
        br#"{"prompt":"x","stream":true}"#,
    )
    .await;
    let first = r.chunk().await.expect("chunk").expect("data");
    assert!(String::from_utf8_lossy(&first).starts_with("data: {"));
    // Nothing more arrives while stalled (at 1000 tokens/s the rest would take 4 ms).
    let more = tokio::time::timeout(Duration::from_millis(300), r.chunk()).await;
    assert!(more.is_err(), "stalled stream sent more: {more:?}");
    assert_eq!(h.stats().running, 1);
    drop(r);
    let s = wait_stats(&h, "stall abort", |s| s.streams_aborted == 1).await;
    assert_eq!(s.running, 0);
}

#[tokio::test]
async fn fault_refuse_connections_and_rebind() {
    let h = sim::start(cfg(SimKind::Vllm)).await.expect("start");
    let a = h.addr();
    assert_eq!(request(a, "GET", "/health", "").await.0, 200);
    h.set_faults(Faults {
        refuse_connections: true,
        ..Faults::default()
    });
    let mut refused = false;
    for _ in 0..200 {
        match TcpStream::connect(a).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert!(refused, "port still accepting");
    h.set_faults(Faults::default());
    for _ in 0..200 {
        if TcpStream::connect(a).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(request(a, "GET", "/health", "").await.0, 200);
}

#[tokio::test]
async fn shutdown_cuts_streams_and_closes_port() {
    let mut c = cfg(SimKind::Vllm);
    c.tokens_per_second = 5.0;
    c.default_max_tokens = 10_000;
    let h = sim::start(c).await.expect("start");
    let mut r = Raw::send(
        h.addr(),
        "POST",
        "/v1/completions",
        br#"{"prompt":"x","stream":true}"#,
    )
    .await;
    let _ = r.chunk().await.expect("first");
    h.shutdown();
    let (_, complete) = r.body().await;
    assert!(!complete);
    wait_stats(&h, "closed", |_| true).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(h.addr()).await.is_err());
}

// ---------- queueing and client aborts ----------

#[tokio::test]
async fn queue_visible_in_waiting_gauge_and_aborts_in_every_phase() {
    let mut c = cfg(SimKind::Vllm);
    c.max_concurrent = 1;
    c.tokens_per_second = 5.0;
    c.default_max_tokens = 10_000;
    let h = sim::start(c).await.expect("start");
    let a = h.addr();
    let req = br#"{"messages":[{"role":"user","content":"x"}],"stream":true}"#;
    let mut running = Raw::send(a, "POST", "/v1/chat/completions", req).await;
    let _ = running.chunk().await.expect("role chunk");
    let queued = Raw::send(a, "POST", "/v1/chat/completions", req).await;
    let third = Raw::send(a, "POST", "/v1/chat/completions", req).await;
    wait_stats(&h, "two waiting", |s| s.waiting == 2 && s.running == 1).await;
    let (_, _, m) = request(a, "GET", "/metrics", "").await;
    assert!(
        m.contains("vllm:num_requests_waiting{engine=\"0\",model_name=\"Qwen/Qwen3-8B\"} 2.0"),
        "{m}"
    );
    assert!(
        m.contains("vllm:num_requests_running{engine=\"0\",model_name=\"Qwen/Qwen3-8B\"} 1.0"),
        "{m}"
    );
    // Control endpoint over HTTP agrees.
    let (_, _, js) = request(a, "GET", "/_sim/stats", "").await;
    let st: SimStats = serde_json::from_str(&js).expect("stats json");
    assert_eq!(st.waiting, 2);

    // Queued-phase abort: the request leaves the queue.
    drop(queued);
    let s = wait_stats(&h, "queued abort", |s| s.streams_aborted == 1).await;
    assert_eq!((s.running, s.waiting), (1, 1));
    // Streaming-phase abort frees the slot and the next request starts at once.
    drop(running);
    let s = wait_stats(&h, "stream abort", |s| {
        s.streams_aborted == 2 && s.running == 1 && s.waiting == 0
    })
    .await;
    assert_eq!(s.streams_started, 3);
    drop(third);
    wait_stats(&h, "all aborted", |s| {
        s.streams_aborted == 3 && s.running == 0
    })
    .await;
    let (_, _, m) = request(a, "GET", "/metrics", "").await;
    assert!(
        m.contains("finished_reason=\"abort\",model_name=\"Qwen/Qwen3-8B\"} 3.0"),
        "{m}"
    );
}

#[tokio::test]
async fn prefill_phase_abort_is_counted() {
    let mut c = cfg(SimKind::Ollama);
    c.prefill = Duration::from_secs(30);
    let h = sim::start(c).await.expect("start");
    let r = Raw::send(
        h.addr(),
        "POST",
        "/api/chat",
        br#"{"model":"llama3.2","messages":[]}"#,
    )
    .await;
    wait_stats(&h, "running", |s| s.running == 1).await;
    drop(r);
    let s = wait_stats(&h, "prefill abort", |s| s.streams_aborted == 1).await;
    assert_eq!(s.running, 0);
}

#[tokio::test]
async fn non_streaming_abort_is_counted() {
    let mut c = cfg(SimKind::Vllm);
    c.prefill = Duration::from_secs(30);
    let h = sim::start(c).await.expect("start");
    let r = Raw::send_only(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        br#"{"messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    wait_stats(&h, "running", |s| s.running == 1).await;
    drop(r);
    wait_stats(&h, "abort", |s| s.streams_aborted == 1 && s.running == 0).await;
}

// ---------- bodies, control endpoint ----------

#[tokio::test]
async fn four_mib_body_is_accepted_and_recorded() {
    let h = sim::start(cfg(SimKind::Vllm)).await.expect("start");
    let prompt = "a".repeat(4 << 20);
    let body = format!(r#"{{"messages":[{{"role":"user","content":"{prompt}"}}],"max_tokens":1}}"#);
    let (s, _, b) = request(h.addr(), "POST", "/v1/chat/completions", &body).await;
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["usage"]["completion_tokens"], 1);
    assert!(v["usage"]["prompt_tokens"].as_u64().expect("n") > 1_000_000);
    let mut hs = DefaultHasher::new();
    body.as_bytes().hash(&mut hs);
    let st = h.stats();
    assert_eq!(st.last_body_len, body.len() as u64);
    assert_eq!(st.last_body_hash, hs.finish());
}

#[tokio::test]
async fn control_endpoint_sets_faults_and_config() {
    let h = sim::start(cfg(SimKind::Ollama)).await.expect("start");
    let a = h.addr();
    let (s, _, _) = request(a, "PUT", "/_sim/faults", r#"{"http_500":true}"#).await;
    assert_eq!(s, 200);
    let (s, _, _) = request(
        a,
        "POST",
        "/api/chat",
        r#"{"model":"llama3.2","messages":[]}"#,
    )
    .await;
    assert_eq!(s, 500);
    let (s, _, b) = request(
        a,
        "PUT",
        "/_sim/config",
        r#"{"tokens_per_second":123.0,"max_concurrent":3}"#,
    )
    .await;
    assert_eq!(
        (s, b.as_str()),
        (200, r#"{"tokens_per_second":123.0,"max_concurrent":3}"#)
    );
    let (s, _, _) = request(a, "PUT", "/_sim/faults", r#"{"bogus":1}"#).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn tokens_are_separate_frames_and_deterministic() {
    let mut c = cfg(SimKind::Vllm);
    c.tokens_per_second = 200.0;
    c.jitter = 0.5;
    let h = sim::start(c).await.expect("start");
    let req = br#"{"prompt":"same prompt","stream":true,"max_tokens":4}"#;
    let mut texts = Vec::new();
    for _ in 0..2 {
        let mut r = Raw::send(h.addr(), "POST", "/v1/completions", req).await;
        let mut frames = Vec::new();
        while let Ok(Some(c)) = r.chunk().await {
            frames.push(String::from_utf8_lossy(&c).to_string());
        }
        // One SSE event per body frame: 4 tokens + [DONE].
        assert_eq!(frames.len(), 5, "{frames:#?}");
        assert!(frames.iter().all(|f| f.starts_with("data: ")
            && f.ends_with("\n\n")
            && f.matches("data: ").count() == 1));
        let t: Vec<String> = frames[..4]
            .iter()
            .map(|f| {
                serde_json::from_str::<serde_json::Value>(&f[6..]).expect("json")["choices"][0]
                    ["text"]
                    .to_string()
            })
            .collect();
        texts.push(t);
    }
    assert_eq!(texts[0], texts[1]);
}

/// The text of a chat or completion answer, whole (`message.content` / `text`) or streamed
/// (the deltas' `content` / `text`, concatenated).
fn answer_text(body: &str) -> String {
    let pick = |v: &serde_json::Value| {
        let c = &v["choices"][0];
        c["message"]["content"]
            .as_str()
            .or_else(|| c["delta"]["content"].as_str())
            .or_else(|| c["text"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    if body.starts_with("data:") {
        sse_events(body)
            .iter()
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| pick(&serde_json::from_str(d).expect("chunk JSON")))
            .collect()
    } else {
        pick(&serde_json::from_str(body).expect("answer JSON"))
    }
}

/// Mid-stream failover re-issues a request with the text so far: vLLM's chat with the partial
/// answer as the final assistant message and `continue_final_message: true`, or a completion
/// whose prompt carries it. The simulator goes on exactly where the partial answer ends and stops
/// where the uninterrupted reply would have, so partial + continuation = uninterrupted.
#[tokio::test]
async fn vllm_continues_a_partial_answer_where_it_ends() {
    let mut c = cfg(SimKind::Vllm);
    c.default_max_tokens = 8;
    let h = sim::start(c).await.expect("sim");
    let user = r#"{"role":"user","content":"Tell me something"}"#;
    let (_, _, whole) = request(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        &format!(r#"{{"model":"Qwen/Qwen3-8B","messages":[{user}]}}"#),
    )
    .await;
    let whole = answer_text(&whole);
    let words: Vec<&str> = whole.split_inclusive(' ').collect();
    assert!(words.len() > 4, "{whole:?}");
    // Cut after a few tokens (at a word boundary: the sim's tokens are words).
    let cut = whole
        .char_indices()
        .filter(|(_, ch)| *ch == ' ')
        .nth(2)
        .map_or(whole.len(), |(i, _)| i);
    let partial = &whole[..cut];
    for stream in [false, true] {
        let body = serde_json::json!({
            "model": "Qwen/Qwen3-8B",
            "stream": stream,
            "messages": [
                serde_json::from_str::<serde_json::Value>(user).expect("json"),
                {"role": "assistant", "content": partial},
            ],
            "continue_final_message": true,
            "add_generation_prompt": false,
        });
        let (status, _, rest) =
            request(h.addr(), "POST", "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(status, 200, "{rest}");
        assert_eq!(
            format!("{partial}{}", answer_text(&rest)),
            whole,
            "stream: {stream}"
        );
    }
    // Both flags true is vLLM's 400.
    let bad = serde_json::json!({
        "model": "Qwen/Qwen3-8B",
        "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "Hello"}],
        "continue_final_message": true, "add_generation_prompt": true,
    });
    let (status, _, msg) =
        request(h.addr(), "POST", "/v1/chat/completions", &bad.to_string()).await;
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains("continue_final_message"), "{msg}");

    // Completions: the prompt followed by the partial text.
    let prompt = "Once upon a time";
    let (_, _, whole) = request(
        h.addr(),
        "POST",
        "/v1/completions",
        &format!(r#"{{"model":"Qwen/Qwen3-8B","prompt":"{prompt}"}}"#),
    )
    .await;
    let whole = answer_text(&whole);
    let cut = whole.rfind(' ').expect("several tokens");
    let partial = &whole[..cut];
    let body =
        serde_json::json!({"model": "Qwen/Qwen3-8B", "prompt": format!("{prompt}{partial}")});
    let (status, _, rest) = request(h.addr(), "POST", "/v1/completions", &body.to_string()).await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(format!("{partial}{}", answer_text(&rest)), whole);
}
