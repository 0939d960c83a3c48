//! The simulator's newer endpoints over real sockets, compared with the engines' formats in
//! `tests/fixtures/` (rebuilt from vLLM's and Ollama's sources, Ollama's documented examples):
//! the same content type, and every JSON document of the same shape — the same keys in the
//! same order, the same kinds of values — with runs of same-shaped lines (token deltas,
//! download progress) counted once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::*;
use okome_sim::{Runner, SimKind};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// `## NAME content-type` sections of a fixture file: name → (content type, lines).
fn sections(file: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            let (name, ct) = h.split_once(' ').expect("## NAME content-type");
            out.insert(name.to_owned(), (ct.to_owned(), Vec::new()));
            cur = Some(name.to_owned());
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else if let Some(c) = &cur {
            out.get_mut(c).expect("section").1.push(line.to_owned());
        }
    }
    out
}

/// The shape of one JSON document: keys in order, `s`/`n`/`b`/`null` for values, arrays as
/// their first element's shape.
fn shape(json: &str) -> String {
    fn value(b: &[u8], i: &mut usize, out: &mut String) {
        ws(b, i);
        match b[*i] {
            b'{' => {
                *i += 1;
                out.push('{');
                ws(b, i);
                if b[*i] == b'}' {
                    *i += 1;
                    out.push('}');
                    return;
                }
                loop {
                    ws(b, i);
                    let start = *i;
                    string(b, i);
                    out.push_str(std::str::from_utf8(&b[start..*i]).expect("utf-8"));
                    ws(b, i);
                    *i += 1; // ':'
                    out.push(':');
                    value(b, i, out);
                    ws(b, i);
                    let c = b[*i];
                    *i += 1;
                    if c == b'}' {
                        out.push('}');
                        return;
                    }
                    out.push(',');
                }
            }
            b'[' => {
                *i += 1;
                out.push('[');
                let mut first = true;
                loop {
                    ws(b, i);
                    if b[*i] == b']' {
                        *i += 1;
                        break;
                    }
                    let mut elem = String::new();
                    value(b, i, &mut elem);
                    if first {
                        out.push_str(&elem);
                        first = false;
                    }
                    ws(b, i);
                    if b[*i] == b',' {
                        *i += 1;
                    }
                }
                out.push(']');
            }
            b'"' => {
                string(b, i);
                out.push('s');
            }
            b't' | b'f' => {
                *i += if b[*i] == b't' { 4 } else { 5 };
                out.push('b');
            }
            b'n' => {
                *i += 4;
                out.push_str("null");
            }
            _ => {
                while *i < b.len()
                    && matches!(b[*i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    *i += 1;
                }
                out.push('n');
            }
        }
    }
    fn string(b: &[u8], i: &mut usize) {
        *i += 1;
        while b[*i] != b'"' {
            *i += if b[*i] == b'\\' { 2 } else { 1 };
        }
        *i += 1;
    }
    fn ws(b: &[u8], i: &mut usize) {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    }
    let mut out = String::new();
    let mut i = 0;
    value(json.as_bytes(), &mut i, &mut out);
    out
}

/// Shapes of a body's lines (JSON lines, SSE `data:` payloads, `event:` lines as they are),
/// runs of equal shapes counted once.
fn shapes<S: AsRef<str>>(lines: &[S]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in lines.iter().map(AsRef::as_ref).filter(|l| !l.is_empty()) {
        let s = match l.strip_prefix("data: ") {
            Some("[DONE]") => "data: [DONE]".to_owned(),
            Some(j) => format!("data: {}", shape(j)),
            None if l.starts_with("event: ") => l.to_owned(),
            None => shape(l),
        };
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
    // Runs of (event, data) pairs: collapse repeated pairs too (one per token).
    let mut pairs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < out.len() {
        if i + 3 < out.len() && out[i] == out[i + 2] && out[i + 1] == out[i + 3] {
            out.drain(i + 2..i + 4);
            continue;
        }
        pairs.push(out[i].clone());
        i += 1;
    }
    pairs
}

/// Sends the request; asserts 200-or-`status`, the fixture's content type and its shapes.
async fn check(
    fx: &BTreeMap<String, (String, Vec<String>)>,
    name: &str,
    addr: SocketAddr,
    req: &[u8],
    status: u16,
) {
    let (ct, lines) = &fx[name];
    let r = raw(addr, req).await;
    assert_eq!(
        status_of(&r),
        status,
        "{name}: {}",
        String::from_utf8_lossy(&r)
    );
    assert_eq!(
        header_of(&r, "content-type").as_deref(),
        Some(ct.as_str()),
        "{name}"
    );
    let body = String::from_utf8(body_of(&r)).expect("utf-8");
    let got: Vec<&str> = body.lines().collect();
    assert_eq!(shapes(&got), shapes(lines), "{name}:\n{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_show_pull_embed_and_compat_match_the_fixtures() {
    let fx = sections("ollama_show_pull_embed.txt");
    let o = sim(SimKind::Ollama, |_| {}).await;
    let a = o.addr();
    let m = "llama3.2:latest";
    check(
        &fx,
        "show",
        a,
        &post("/api/show", &format!(r#"{{"model":"{m}"}}"#)),
        200,
    )
    .await;
    check(
        &fx,
        "pull",
        a,
        &post("/api/pull", r#"{"model":"qwen3:0.6b"}"#),
        200,
    )
    .await;
    check(
        &fx,
        "pull_whole",
        a,
        &post("/api/pull", r#"{"name":"qwen3:0.6b","stream":false}"#),
        200,
    )
    .await;
    let embed = format!(r#"{{"model":"{m}","input":"Why is the sky blue?"}}"#);
    check(&fx, "embed", a, &post("/api/embed", &embed), 200).await;
    let emb = format!(r#"{{"model":"{m}","prompt":"Why is the sky blue?"}}"#);
    check(&fx, "embeddings", a, &post("/api/embeddings", &emb), 200).await;
    let compat = format!(r#"{{"model":"{m}","input":"hi","encoding_format":"float"}}"#);
    check(
        &fx,
        "compat_embeddings",
        a,
        &post("/v1/embeddings", &compat),
        200,
    )
    .await;
    let cmpl = format!(r#"{{"model":"{m}","prompt":"hi","max_tokens":1}}"#);
    check(
        &fx,
        "compat_completion",
        a,
        &post("/v1/completions", &cmpl),
        200,
    )
    .await;
    let cmpl = format!(
        r#"{{"model":"{m}","prompt":"hi","max_tokens":1,"stream":true,"stream_options":{{"include_usage":true}}}}"#
    );
    check(
        &fx,
        "compat_completion_stream",
        a,
        &post("/v1/completions", &cmpl),
        200,
    )
    .await;
    let get = format!("GET /v1/models/{m} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    check(&fx, "compat_model", a, get.as_bytes(), 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_responses_and_embeddings_match_the_fixtures() {
    let fx = sections("vllm_responses_embeddings.txt");
    let gen = sim(SimKind::Vllm, |_| {}).await;
    let emb = sim(SimKind::Vllm, |c| {
        c.models = vec!["intfloat/e5-small-v2".into()];
        c.runner = Runner::Pooling;
    })
    .await;
    let stream = r#"{"model":"Qwen/Qwen3-8B","input":"hi","max_output_tokens":2,"stream":true}"#;
    check(
        &fx,
        "responses_stream",
        gen.addr(),
        &post("/v1/responses", stream),
        200,
    )
    .await;
    let whole = r#"{"model":"Qwen/Qwen3-8B","input":[{"role":"user","content":"hi"}]}"#;
    check(
        &fx,
        "responses",
        gen.addr(),
        &post("/v1/responses", whole),
        200,
    )
    .await;
    let e = r#"{"model":"intfloat/e5-small-v2","input":["a","b"],"encoding_format":"float"}"#;
    check(
        &fx,
        "embeddings",
        emb.addr(),
        &post("/v1/embeddings", e),
        200,
    )
    .await;
    check(
        &fx,
        "not_found",
        gen.addr(),
        &post("/v1/embeddings", e),
        404,
    )
    .await;
    check(
        &fx,
        "not_found",
        emb.addr(),
        &post("/v1/responses", whole),
        404,
    )
    .await;
}

#[test]
fn shapes_keep_key_order_and_collapse_repeats() {
    assert_eq!(
        shape(r#"{"b":1,"a":["x","y"],"c":null}"#),
        r#"{"b":n,"a":[s],"c":null}"#
    );
    assert_ne!(shape(r#"{"a":1,"b":2}"#), shape(r#"{"b":2,"a":1}"#));
    let lines = [
        "event: d",
        "data: {\"x\":1}",
        "",
        "event: d",
        "data: {\"x\":2}",
        "event: e",
    ];
    assert_eq!(shapes(&lines), ["event: d", "data: {\"x\":n}", "event: e"]);
}
