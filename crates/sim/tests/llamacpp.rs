//! The llamacpp simulator over real sockets (llama-server's wire format), and `json_style`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use okome_sim::{self as sim, Faults, JsonStyle, SimConfig, SimHandle, SimKind};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One whole HTTP/1.1 exchange (`Connection: close`): status, headers, de-chunked body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(p) = find(b, b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..p]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[p + 2..p + 2 + n]);
        b = &b[p + 2 + n + 2..];
    }
    out
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let p = find(&raw, b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..p]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[p + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Reply {
        status,
        headers,
        body,
    }
}

async fn start(kind: SimKind, f: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut c = SimConfig::new(kind);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.prefill = Duration::from_millis(2);
    c.tokens_per_second = 500.0;
    c.default_max_tokens = 6;
    f(&mut c);
    sim::start(c).await.expect("start")
}

/// The `data: ` payloads of an SSE body, in order.
fn events(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    assert!(text.ends_with("\n\n") || text.is_empty(), "{text:?}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_string()
        })
        .collect()
}

/// Top-level keys in document order (serde_json's Value would sort them).
fn keys(json: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_str(json);
    struct V<'a>(&'a mut Vec<String>);
    impl<'de> serde::de::Visitor<'de> for V<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            while let Some((k, _)) = a.next_entry::<String, serde::de::IgnoredAny>()? {
                self.0.push(k);
            }
            Ok(())
        }
    }
    serde::Deserializer::deserialize_map(&mut de, V(&mut out)).unwrap();
    out
}

const CHAT_KEYS: [&str; 6] = [
    "choices",
    "created",
    "id",
    "model",
    "system_fingerprint",
    "object",
];

#[tokio::test]
async fn chat_stream_has_llama_servers_shape() {
    let h = start(SimKind::Llamacpp, |_| {}).await;
    let r = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        r#"{"model":"whatever","messages":[{"role":"user","content":"Say hello"}],"stream":true,"max_tokens":4,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("server"), Some("llama.cpp"));
    let ev = events(&r.body);
    // role chunk, 4 content chunks, finish chunk, usage chunk, [DONE]
    assert_eq!(ev.len(), 8, "{ev:#?}");
    assert!(
        ev[0].starts_with(r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"created":"#),
        "{}",
        ev[0]
    );
    let mut text = String::new();
    let mut id = None;
    for e in &ev[..7] {
        assert_eq!(keys(e)[..6], CHAT_KEYS, "{e}");
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["model"], "okome-tiny", "the server's own name");
        assert_eq!(v["system_fingerprint"], "b11312-0c1e57098");
        let this = v["id"].as_str().unwrap().to_string();
        assert!(
            this.starts_with("chatcmpl-") && this.len() == 9 + 32,
            "{this}"
        );
        assert_eq!(id.get_or_insert(this.clone()), &this, "one id per stream");
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
    }
    for e in &ev[1..5] {
        assert!(
            e.starts_with(r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":""#)
        );
        assert!(!e.contains("timings"));
    }
    assert!(text.starts_with("Hello"), "{text}");
    // The finish chunk: empty delta; with include_usage the timings go on the usage chunk.
    let fin: Value = serde_json::from_str(&ev[5]).unwrap();
    assert_eq!(fin["choices"][0]["finish_reason"], "length");
    assert_eq!(fin["choices"][0]["delta"], serde_json::json!({}));
    assert!(fin.get("usage").is_none() && fin.get("timings").is_none());
    assert_eq!(
        keys(&ev[6]),
        [&CHAT_KEYS[..], &["usage", "timings"]].concat()
    );
    let u: Value = serde_json::from_str(&ev[6]).unwrap();
    assert_eq!(u["choices"], serde_json::json!([]));
    assert_eq!(u["usage"]["completion_tokens"], 4);
    let pt = u["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(u["usage"]["total_tokens"].as_u64().unwrap(), pt + 4);
    assert_eq!(u["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        keys(&u["timings"].to_string()).len(),
        9,
        "cache_n, prompt_n/_ms/_per_token_ms/_per_second, predicted_*"
    );
    assert_eq!(u["timings"]["predicted_n"], 4);
    assert_eq!(ev[7], "[DONE]");

    // Without include_usage the finish chunk carries the timings.
    let r = call(
        h.addr(),
        "POST",
        "/chat/completions",
        r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    )
    .await;
    let ev = events(&r.body);
    assert_eq!(ev.len(), 1 + 6 + 1 + 1, "{ev:#?}");
    assert_eq!(keys(&ev[7]), [&CHAT_KEYS[..], &["timings"]].concat());
    let fin: Value = serde_json::from_str(&ev[7]).unwrap();
    assert_eq!(
        fin["choices"][0]["finish_reason"], "stop",
        "the default length is an EOS"
    );
    assert_eq!(ev[8], "[DONE]");
}

#[tokio::test]
async fn completions_native_and_whole_answers() {
    let h = start(SimKind::Llamacpp, |_| {}).await;
    let r = call(
        h.addr(),
        "POST",
        "/v1/completions",
        r#"{"prompt":"The cat","stream":true,"max_tokens":3}"#,
    )
    .await;
    let ev = events(&r.body);
    assert_eq!(ev.len(), 3 + 1 + 1, "{ev:#?}");
    assert!(ev[0].starts_with(r#"{"choices":[{"text":"Hello","index":0,"logprobs":null,"finish_reason":null}],"created":"#), "{}", ev[0]);
    assert_eq!(
        keys(&ev[3]),
        [
            "choices",
            "created",
            "model",
            "system_fingerprint",
            "object",
            "usage",
            "id",
            "timings"
        ]
    );
    assert_eq!(ev[4], "[DONE]");

    let r = call(
        h.addr(),
        "POST",
        "/completion",
        r#"{"prompt":"The cat","stream":true,"n_predict":2}"#,
    )
    .await;
    let ev = events(&r.body);
    assert_eq!(ev.len(), 3, "no [DONE] on the native endpoint: {ev:#?}");
    assert!(
        ev[0].starts_with(r#"{"index":0,"content":"Hello","tokens":["#),
        "{}",
        ev[0]
    );
    let fin: Value = serde_json::from_str(&ev[2]).unwrap();
    assert_eq!(fin["stop"], true);
    assert_eq!(fin["stop_type"], "limit");
    assert_eq!(fin["tokens_predicted"], 2);
    assert_eq!(fin["generation_settings"]["n_predict"], 2);

    let r = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#,
    )
    .await;
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        keys(&r.text()),
        [
            "choices",
            "created",
            "model",
            "system_fingerprint",
            "object",
            "usage",
            "id",
            "timings"
        ]
    );
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn errors_have_llama_servers_shapes() {
    let h = start(SimKind::Llamacpp, |c| c.api_key = Some("k".into())).await;
    let r = call(h.addr(), "GET", "/v1/models", "").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.text(),
        r#"{"error":{"message":"Invalid API Key","type":"authentication_error","code":401}}"#
    );
    assert_eq!(
        call(h.addr(), "GET", "/health", "").await.status,
        200,
        "public"
    );
    let h = start(SimKind::Llamacpp, |_| {}).await;
    let r = call(h.addr(), "POST", "/v1/chat/completions", r#"{"model":"x"}"#).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        r#"{"error":{"code":400,"message":"'messages' is required","type":"invalid_request_error"}}"#
    );
    let r = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user"}]}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            400,
            r#"{"error":{"code":400,"message":"All non-assistant messages must contain 'content'","type":"invalid_request_error"}}"#
        )
    );
    let r = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            400,
            r#"{"error":{"code":400,"message":"Field 'temperature': [json.exception.type_error.302] type must be number, but is string","type":"invalid_request_error"}}"#
        )
    );
    let r = call(h.addr(), "GET", "/v1/nope", "").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        r#"{"error":{"message":"File Not Found","type":"not_found_error","code":404}}"#
    );
    let r = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        r#"{"messages": ["#,
    )
    .await;
    assert_eq!(r.status, 500, "llama-server's JSON parse errors are 500s");
    assert_eq!(
        r.text(),
        r#"{"error":{"code":500,"message":"[json.exception.parse_error.101] parse error at line 1, column 15: syntax error while parsing value - unexpected end of input; expected '[', '{', or a literal","type":"server_error"}}"#
    );
}

#[tokio::test]
async fn mid_stream_error_ends_without_done() {
    let h = start(SimKind::Llamacpp, |c| {
        c.faults = Faults {
            error_after_tokens: Some(2),
            ..Faults::default()
        }
    })
    .await;
    let r = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    )
    .await;
    let ev = events(&r.body);
    assert_eq!(ev.len(), 1 + 2 + 1, "{ev:#?}");
    assert_eq!(
        ev[3],
        r#"{"error":{"code":500,"message":"Compute error.","type":"server_error"}}"#
    );
}

#[tokio::test]
async fn a_final_assistant_message_is_continued() {
    let h = start(SimKind::Llamacpp, |c| c.default_max_tokens = 8).await;
    let whole = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"Say hello"}]}"#,
    )
    .await
    .json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let part: String = whole.split_inclusive(' ').take(2).collect();
    let part = part.trim_end().to_string();
    let body = serde_json::json!({
        "messages": [
            {"role": "user", "content": "Say hello"},
            {"role": "assistant", "content": part},
        ],
    });
    let rest = call(h.addr(), "POST", "/v1/chat/completions", &body.to_string())
        .await
        .json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(format!("{part}{rest}"), whole);
}

#[tokio::test]
async fn health_is_503_while_loading() {
    let h = start(SimKind::Llamacpp, |c| {
        c.load_time = Duration::from_millis(400)
    })
    .await;
    let loading = r#"{"error":{"message":"Loading model","type":"unavailable_error","code":503}}"#;
    for path in ["/health", "/v1/models", "/metrics"] {
        let r = call(h.addr(), "GET", path, "").await;
        assert_eq!((r.status, r.text().as_str()), (503, loading), "{path}");
    }
    let r = call(
        h.addr(),
        "POST",
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 503);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let r = call(h.addr(), "GET", "/health", "").await;
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"status":"ok"}"#));
}

#[tokio::test]
async fn metrics_text_is_llama_servers() {
    let off = start(SimKind::Llamacpp, |_| {}).await;
    let r = call(off.addr(), "GET", "/metrics", "").await;
    assert_eq!(r.status, 501);
    assert_eq!(
        r.text(),
        "{\"error\":{\"code\":501,\"message\":\"This server does not support metrics endpoint. Start it with `--metrics`\",\"type\":\"not_supported_error\"}}"
    );
    let h = start(SimKind::Llamacpp, |c| c.metrics = true).await;
    let r = call(
        h.addr(),
        "POST",
        "/v1/completions",
        r#"{"prompt":"The cat sat on the mat","max_tokens":5}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = call(h.addr(), "GET", "/metrics", "").await;
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    assert!(r.header("process-start-time-unix").is_some());
    let text = r.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 15 * 3, "{text}");
    assert_eq!(
        lines[..3],
        [
            "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens",
            "# TYPE llamacpp:prompt_tokens_total counter",
            "llamacpp:prompt_tokens_total 7",
        ]
    );
    let value = |name: &str| -> String {
        let p = format!("llamacpp:{name} ");
        lines
            .iter()
            .find_map(|l| l.strip_prefix(p.as_str()))
            .unwrap_or_else(|| panic!("no {name}"))
            .to_string()
    };
    assert_eq!(value("tokens_predicted_total"), "5");
    assert_eq!(value("n_decode_total"), "5");
    assert_eq!(value("n_tokens_max"), "12");
    assert_eq!(value("requests_processing"), "0");
    assert_eq!(value("requests_deferred"), "0");
    for l in &lines {
        if let Some(rest) = l.strip_prefix("# TYPE llamacpp:") {
            let kind = rest.split(' ').nth(1).unwrap();
            assert!(kind == "counter" || kind == "gauge", "{l}");
        }
    }
    assert!(text.contains("# TYPE llamacpp:requests_processing gauge\n"));
    assert!(text.contains("# TYPE llamacpp:requests_deferred gauge\n"));
}

#[tokio::test]
async fn busy_probes_wait_for_a_generation_to_end() {
    // Two slots, both generating for ~1.2 s.
    let cfg = |block: bool| {
        move |c: &mut SimConfig| {
            c.max_concurrent = 2;
            c.tokens_per_second = 20.0;
            c.default_max_tokens = 24;
            c.busy_probes_block = block;
            c.metrics = true;
        }
    };
    for block in [true, false] {
        let h = start(SimKind::Llamacpp, cfg(block)).await;
        let addr = h.addr();
        let body = r#"{"messages":[{"role":"user","content":"Tell a story"}],"stream":true}"#;
        let streams: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(async move { call(addr, "POST", "/v1/chat/completions", body).await })
            })
            .collect();
        while h.stats().running < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t = Instant::now();
        for path in ["/health", "/v1/models", "/metrics"] {
            let probe =
                tokio::time::timeout(Duration::from_millis(250), call(addr, "GET", path, ""));
            match (block, probe.await) {
                (true, Err(_)) => {}
                (false, Ok(r)) => assert_eq!(r.status, 200, "{path}"),
                (b, r) => panic!("{path}: busy_probes_block {b}, answered: {:?}", r.is_ok()),
            }
        }
        if block {
            // Answered once a generation ends.
            let r = call(addr, "GET", "/health", "").await;
            assert_eq!(r.status, 200);
            assert!(
                t.elapsed() >= Duration::from_millis(900),
                "{:?}",
                t.elapsed()
            );
        }
        for s in streams {
            assert_eq!(s.await.unwrap().status, 200);
        }
        // Idle again: probes answer at once.
        let t = Instant::now();
        assert_eq!(call(addr, "GET", "/health", "").await.status, 200);
        assert!(t.elapsed() < Duration::from_millis(250));
    }
}

#[tokio::test]
async fn a_waiting_stream_gets_its_headers_when_a_slot_starts_on_it() {
    let h = start(SimKind::Llamacpp, |c| {
        c.max_concurrent = 1;
        c.tokens_per_second = 20.0;
        c.default_max_tokens = 8;
    })
    .await;
    let addr = h.addr();
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let first = tokio::spawn(async move { call(addr, "POST", "/v1/chat/completions", body).await });
    while h.stats().running < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The second one waits for the slot: not even a status line yet.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(150), s.read(&mut buf)).await;
    assert!(early.is_err(), "the head came while queued");
    assert_eq!(h.stats().waiting, 1);
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert_eq!(first.await.unwrap().status, 200);
}

#[tokio::test]
async fn slots_list_which_are_processing() {
    let h = start(SimKind::Llamacpp, |c| {
        c.max_concurrent = 2;
        c.tokens_per_second = 20.0;
    })
    .await;
    let v = call(h.addr(), "GET", "/slots", "").await.json();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["is_processing"], false);
    let addr = h.addr();
    let t = tokio::spawn(async move {
        call(
            addr,
            "POST",
            "/completion",
            r#"{"prompt":"x","n_predict":6}"#,
        )
        .await
    });
    while h.stats().running < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let v = call(addr, "GET", "/slots", "").await.json();
    let busy = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["is_processing"] == true)
        .count();
    assert_eq!(busy, 1);
    assert_eq!(
        call(addr, "GET", "/slots?fail_on_no_slot=1", "")
            .await
            .status,
        200
    );
    t.await.unwrap();
    let off = start(SimKind::Llamacpp, |c| c.slots = false).await;
    assert_eq!(call(off.addr(), "GET", "/slots", "").await.status, 501);
}

/// Every JSON line of a body: `data: {..}` SSE lines, NDJSON lines or the whole body.
fn json_lines(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    text.lines()
        .map(|l| l.strip_prefix("data: ").unwrap_or(l))
        .filter(|l| serde_json::from_str::<Value>(l).is_ok())
        .map(str::to_string)
        .collect()
}

/// Replaces what differs between two runs (ids, clocks) so the values compare.
fn stable(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if matches!(
                        k.as_str(),
                        "id" | "created"
                            | "created_at"
                            | "timings"
                            | "total_duration"
                            | "load_duration"
                            | "prompt_eval_duration"
                            | "eval_duration"
                    ) {
                        *x = Value::Null;
                    } else {
                        walk(x);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

#[tokio::test]
async fn spaced_style_writes_the_same_values_as_python_would() {
    let cases: [(SimKind, &str, &str); 6] = [
        (
            SimKind::Vllm,
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            SimKind::Vllm,
            "/v1/completions",
            r#"{"prompt":"hi","max_tokens":3}"#,
        ),
        (SimKind::Vllm, "/v1/models", ""),
        (
            SimKind::Ollama,
            "/api/chat",
            r#"{"model":"modèle","messages":[{"role":"user","content":"hi"}]}"#,
        ),
        (
            SimKind::Ollama,
            "/v1/chat/completions",
            r#"{"model":"modèle","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        ),
        (
            SimKind::Llamacpp,
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
        ),
    ];
    for (kind, path, body) in cases {
        let model = |c: &mut SimConfig| c.models = vec!["modèle".into()];
        let compact = start(kind, model).await;
        let spaced = start(kind, |c| {
            model(c);
            c.json_style = JsonStyle::Spaced;
        })
        .await;
        let method = if body.is_empty() { "GET" } else { "POST" };
        let a = call(compact.addr(), method, path, body).await;
        let b = call(spaced.addr(), method, path, body).await;
        assert_eq!((a.status, b.status), (200, 200), "{kind} {path}");
        assert_eq!(a.header("content-type"), b.header("content-type"));
        let (la, lb) = (json_lines(&a.body), json_lines(&b.body));
        assert!(!la.is_empty());
        assert_eq!(la.len(), lb.len(), "{kind} {path}: same events");
        for (x, y) in la.iter().zip(&lb) {
            let vx: Value = serde_json::from_str(x).unwrap();
            let vy: Value = serde_json::from_str(y).unwrap();
            assert_eq!(stable(vx), stable(vy), "{kind} {path}:\n{x}\n{y}");
            assert!(y.is_ascii(), "ensure_ascii: {y}");
            if x.contains("\":") {
                assert!(y.contains("\": "), "{y}");
                assert!(!y.contains("\":\"") && !y.contains("\",\""), "{y}");
            }
            if x.contains("modèle") {
                assert!(y.contains(r"mod\u00e8le"), "{y}");
            }
            if keys(x).len() > 1 {
                let mut rev = keys(x);
                rev.reverse();
                assert_eq!(keys(y), rev, "keys in another order");
            }
        }
        // What is not JSON passes unchanged ([DONE], the SSE framing).
        let (ta, tb) = (a.text(), b.text());
        assert_eq!(
            ta.contains("data: [DONE]\n\n"),
            tb.contains("data: [DONE]\n\n")
        );
        assert_eq!(ta.matches("\n\n").count(), tb.matches("\n\n").count());
    }
}

#[tokio::test]
async fn compact_stays_the_engines_bytes() {
    // The default changes nothing: a vLLM error body is still its own compact bytes.
    let h = start(SimKind::Vllm, |_| {}).await;
    let r = call(
        h.addr(),
        "POST",
        "/v1/completions",
        r#"{"model":"nope","prompt":"x"}"#,
    )
    .await;
    assert_eq!(
        r.text(),
        r#"{"error":{"message":"The model `nope` does not exist.","type":"NotFoundError","param":"model","code":404}}"#
    );
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    let s = start(SimKind::Vllm, |c| c.json_style = JsonStyle::Spaced).await;
    let r = call(
        s.addr(),
        "POST",
        "/v1/completions",
        r#"{"model":"nope","prompt":"x"}"#,
    )
    .await;
    assert_eq!(
        r.text(),
        r#"{"error": {"code": 404, "param": "model", "type": "NotFoundError", "message": "The model `nope` does not exist."}}"#
    );
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn a_queued_request_takes_the_slot_that_was_freed() {
    let h = start(SimKind::Llamacpp, |c| {
        c.max_concurrent = 2;
        c.tokens_per_second = 20.0;
    })
    .await;
    let addr = h.addr();
    let send = |prompt: &'static str, n: u32| {
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"{prompt}"}}],"stream":true,"max_tokens":{n}}}"#
        );
        tokio::spawn(async move { call(addr, "POST", "/v1/chat/completions", &body).await })
    };
    let a = send("short one", 2);
    let b = send("a long one", 30);
    while h.stats().running < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = send("the queued one", 10);
    while h.stats().waiting < 1 && h.stats().running == 2 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.await.unwrap();
    while h.stats().waiting > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let v = call(addr, "GET", "/slots", "").await.json();
    let busy: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["is_processing"] == true)
        .map(|s| s["id_task"].as_u64().unwrap())
        .collect();
    assert_eq!(busy.len(), 2, "b and c each on their own slot: {v}");
    assert_ne!(busy[0], busy[1]);
    b.await.unwrap();
    c.await.unwrap();
    let v = call(addr, "GET", "/slots", "").await.json();
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["is_processing"] == false));
}
