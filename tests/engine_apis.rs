//! Every engine API a client calls besides chat, driven through the edge by the official Python
//! clients (`ollama`, `openai`): Ollama's show, embed, embeddings, ps, version and pull; the
//! OpenAI embeddings, completions, models.retrieve and Responses APIs on vLLM, and Ollama's
//! OpenAI-compatible ones. Each run through the edge is compared with the same run straight
//! at the engine, and requests are routed by the body's model.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::embedded::{EdgeBuilder, Route, TestEdge};
use common::*;
use okome_sim::{Faults, Runner, SimHandle, SimKind};
use serde_json::Value;

const LLAMA: &str = "llama3.2:latest";
const QWEN_OLLAMA: &str = "qwen3:8b";
const QWEN: &str = "Qwen/Qwen3-8B";
const E5: &str = "intfloat/e5-small-v2";

/// Runs `tests/clients/<script> args…` and parses the JSON it prints.
async fn client(script: &str, args: &[&str]) -> Value {
    let out = python::run(script, args).await;
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} {args:?} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Asserts two client outputs are equal, naming the differing top-level keys (not dumping
/// thousands of vector components).
fn assert_same(via: &Value, direct: &Value, what: &str) {
    if via == direct {
        return;
    }
    let keys: Vec<&String> = via
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| direct.get(k.as_str()) != Some(v))
        .map(|(k, _)| k)
        .collect();
    panic!("{what}: through the edge differs from the engine in {keys:?}");
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes()
}

fn url(addr: std::net::SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Waits until the edge routes `body` on `path` to an engine (it learned the pools' models).
async fn until_routed(edge: &TestEdge, path: &str, body: &str) {
    let ok = eventually(10, || async {
        status_of(&raw(edge.addr, &post(path, body)).await) == 200
    })
    .await;
    assert!(ok, "{path} {body} never routed; log:\n{}", edge.log_text());
}

/// POSTs `body` straight to the engine and through the edge; both must answer 200 with the
/// same body once ids and clocks are blanked. Returns the body relayed by the edge.
async fn same_body(edge: &TestEdge, sim: &SimHandle, path: &str, body: &str) -> Vec<u8> {
    let direct = raw(sim.addr(), &post(path, body)).await;
    let via = raw(edge.addr, &post(path, body)).await;
    assert_eq!(
        status_of(&direct),
        200,
        "{}",
        String::from_utf8_lossy(&direct)
    );
    assert_eq!(status_of(&via), 200, "{}", String::from_utf8_lossy(&via));
    assert_eq!(
        header_of(&via, "content-type"),
        header_of(&direct, "content-type")
    );
    let via = body_of(&via);
    assert_eq!(
        normalize(&via),
        normalize(&body_of(&direct)),
        "{path} {body}"
    );
    via
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_client_show_embed_embeddings_ps_version_routed_by_model() {
    let a = sim(SimKind::Ollama, |c| c.models = vec![LLAMA.into()]).await;
    let b = sim(SimKind::Ollama, |c| c.models = vec![QWEN_OLLAMA.into()]).await;
    let edge = EdgeBuilder::new()
        .pool("a", "ollama", &[a.addr()])
        .pool("b", "ollama", &[b.addr()])
        .route(Route::new("ollama").path_prefix("/api/"))
        .start()
        .await;
    until_routed(
        &edge,
        "/api/show",
        &format!(r#"{{"model":"{QWEN_OLLAMA}"}}"#),
    )
    .await;
    until_routed(&edge, "/api/show", &format!(r#"{{"model":"{LLAMA}"}}"#)).await;
    let (a0, b0) = (a.stats().requests, b.stats().requests);

    for (model, engine, other) in [(LLAMA, &a, &b), (QWEN_OLLAMA, &b, &a)] {
        let before = (engine.stats().requests, other.stats().requests);
        let direct = client(
            "ollama_apis.py",
            &[&url(engine.addr(), ""), "models", model],
        )
        .await;
        let mut via = client("ollama_apis.py", &[&edge.url(""), "models", model]).await;
        // `ps` names no model: the route's first pool answers it (checked below).
        via["ps"] = direct["ps"].clone();
        assert_same(&via, &direct, model);
        // show + two embeds + embeddings, each run: every POST of the edge's run reached the
        // pool serving the body's model, none the other.
        assert_eq!(engine.stats().requests - before.0, 8, "{model}");
        assert_eq!(other.stats().requests, before.1, "{model}");
        assert_eq!(via["embed"]["model"], model);
        assert_eq!(via["embed"]["one"].as_array().map(Vec::len), Some(1));
        assert_eq!(via["embed"]["many"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            via["embeddings"].as_array().map(Vec::len),
            Some(3072),
            "llama's embedding_length"
        );
        assert_eq!(via["show"]["family"], "llama");
        assert!(via["version"].as_str().is_some_and(|v| !v.is_empty()));
    }
    // `ps` carries no model: the route's first pool answers.
    let via = client("ollama_apis.py", &[&edge.url(""), "models", LLAMA]).await;
    assert_eq!(via["ps"], serde_json::json!([LLAMA]));

    // Non-streamed answers are relayed byte for byte (clocks and durations aside); Ollama's
    // older `name` routes like `model`.
    let show = same_body(
        &edge,
        &b,
        "/api/show",
        &format!(r#"{{"name":"{QWEN_OLLAMA}"}}"#),
    )
    .await;
    assert_eq!(
        show,
        body_of(
            &raw(
                b.addr(),
                &post("/api/show", &format!(r#"{{"name":"{QWEN_OLLAMA}"}}"#))
            )
            .await
        )
    );
    same_body(
        &edge,
        &a,
        "/api/embeddings",
        &format!(r#"{{"model":"{LLAMA}","prompt":"hi"}}"#),
    )
    .await;
    same_body(
        &edge,
        &b,
        "/api/embed",
        &format!(r#"{{"model":"{QWEN_OLLAMA}","input":["x","y"]}}"#),
    )
    .await;
    assert!(a.stats().requests > a0 && b.stats().requests > b0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_pull_is_refused_by_default_and_streams_its_progress_where_a_route_opens_it() {
    let o = sim(SimKind::Ollama, |_| {}).await;
    let closed = EdgeBuilder::new()
        .pool("ollama", "ollama", &[o.addr()])
        .route(Route::to_pool("ollama", "ollama").path_prefix("/api/"))
        .start()
        .await;
    let open = EdgeBuilder::new()
        .pool("ollama", "ollama", &[o.addr()])
        .route(
            Route::to_pool("ollama", "ollama")
                .path_prefix("/api/")
                .set("allow", serde_json::json!(["default", "POST /api/pull"])),
        )
        .start()
        .await;
    let new_model = "qwen3:0.6b";

    let refused = client(
        "ollama_apis.py",
        &[&closed.url(""), "pull_refused", new_model],
    )
    .await;
    assert_eq!(refused["status"], 404, "{refused}");
    assert_eq!(
        o.stats().requests,
        0,
        "a refused pull never reaches the engine"
    );

    let direct = client("ollama_apis.py", &[&url(o.addr(), ""), "pull", new_model]).await;
    let via = client("ollama_apis.py", &[&open.url(""), "pull", new_model]).await;
    assert_same(&via, &direct, "");
    assert_eq!(o.stats().requests, 4);
    let statuses: Vec<&str> = via["stream"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l["status"].as_str())
        .collect();
    assert_eq!(statuses.first(), Some(&"pulling manifest"));
    assert_eq!(
        &statuses[statuses.len() - 3..],
        ["verifying sha256 digest", "writing manifest", "success"]
    );
    // Three layers, three progress lines each, the last one complete.
    let layers: Vec<&Value> = via["stream"]
        .as_array()
        .expect("lines")
        .iter()
        .filter(|l| l.get("digest").is_some())
        .collect();
    assert_eq!(layers.len(), 9, "{via}");
    assert!(layers
        .chunks(3)
        .all(|c| c[2]["completed"] == c[2]["total"] && c[0]["completed"] != c[0]["total"]));
    assert_eq!(via["whole"], serde_json::json!({"status": "success"}));
    // The streamed pull went through the tap as NDJSON: a stream that completed, no tokens.
    assert_eq!(
        open.metric("okome_streams_total", &[("outcome", "completed")])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_embeddings_completions_responses_on_vllm_routed_by_model() {
    let gen = sim(SimKind::Vllm, |c| c.models = vec![QWEN.into()]).await;
    let emb = sim(SimKind::Vllm, |c| {
        c.models = vec![E5.into()];
        c.runner = Runner::Pooling;
    })
    .await;
    let edge = EdgeBuilder::new()
        .pool("gen", "vllm", &[gen.addr()])
        .pool("emb", "vllm", &[emb.addr()])
        .route(Route::new("openai").path_prefix("/v1/"))
        .start()
        .await;
    until_routed(
        &edge,
        "/v1/embeddings",
        &format!(r#"{{"model":"{E5}","input":"x"}}"#),
    )
    .await;
    until_routed(
        &edge,
        "/v1/completions",
        &format!(r#"{{"model":"{QWEN}","prompt":"x","max_tokens":1}}"#),
    )
    .await;
    let (g0, e0) = (gen.stats().requests, emb.stats().requests);

    // Embeddings: to the embedding model's pool only.
    let direct = client(
        "openai_apis.py",
        &[&url(emb.addr(), "/v1"), "embeddings", E5],
    )
    .await;
    let via = client("openai_apis.py", &[&edge.url("/v1"), "embeddings", E5]).await;
    assert_same(&via, &direct, "");
    assert_eq!(via["one"].as_array().map(Vec::len), Some(384));
    assert_eq!(via["many"].as_array().map(Vec::len), Some(2));
    assert_eq!(via["token_ids"].as_array().map(Vec::len), Some(2));
    assert_eq!(via["token_ids_usage"], 5);
    assert_eq!(via["floats_match_base64"], true);
    assert_eq!(emb.stats().requests - e0, 8);
    assert_eq!(gen.stats().requests, g0);

    // Completions and the Responses API: to the generative model's pool only.
    let direct = client(
        "openai_apis.py",
        &[&url(gen.addr(), "/v1"), "completions", QWEN],
    )
    .await;
    let via = client("openai_apis.py", &[&edge.url("/v1"), "completions", QWEN]).await;
    assert_same(&via, &direct, "");
    assert_eq!(via["whole"]["text"], via["stream"]["text"]);
    assert_eq!(via["stream"]["chunks"], 6);
    // vLLM has no `GET /v1/models/{id}`; the edge answers OpenAI's models.retrieve itself.
    let direct = raw(gen.addr(), &get(&format!("/v1/models/{QWEN}"))).await;
    assert_eq!(status_of(&direct), 404);
    let via = client("openai_apis.py", &[&edge.url("/v1"), "retrieve", QWEN]).await;
    assert_eq!(via["retrieve"]["id"], QWEN);
    assert_eq!(via["retrieve"]["object"], "model");

    let direct = client(
        "openai_apis.py",
        &[&url(gen.addr(), "/v1"), "responses", QWEN],
    )
    .await;
    let via = client("openai_apis.py", &[&edge.url("/v1"), "responses", QWEN]).await;
    assert_same(&via, &direct, "");
    assert_eq!(
        via["whole"]["status"], "incomplete",
        "max_output_tokens reached"
    );
    assert_eq!(via["whole"]["output_tokens"], 7);
    let s = &via["stream"];
    let types: Vec<&str> = s["types"]
        .as_array()
        .expect("types")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let deltas = s["deltas"].as_u64().expect("deltas") as usize;
    assert_eq!(deltas, 8, "the sim's default max tokens");
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(types, expected);
    let seq: Vec<u64> = (0..types.len() as u64).collect();
    assert_eq!(s["sequence_numbers"], serde_json::json!(seq));
    assert_eq!(s["text"], s["final_text"]);
    assert_eq!(s["output_tokens"], 8);
    assert_eq!(gen.stats().requests - g0, 8);
    assert_eq!(emb.stats().requests - e0, 8);

    // The tap counted what it relayed: the completions stream's 6 tokens and the responses
    // stream's 8 deltas, both streams completed.
    let tokens = edge
        .metric("okome_tokens_total", &[("pool", "gen"), ("model", QWEN)])
        .await;
    assert_eq!(tokens, 14.0);
    let completed = edge
        .metric(
            "okome_streams_total",
            &[("pool", "gen"), ("outcome", "completed")],
        )
        .await;
    assert_eq!(completed, 2.0);

    // Whole JSON answers are relayed byte for byte (ids and clocks aside).
    same_body(
        &edge,
        &emb,
        "/v1/embeddings",
        &format!(r#"{{"model":"{E5}","input":[[1,2,3]],"encoding_format":"float"}}"#),
    )
    .await;
    same_body(
        &edge,
        &gen,
        "/v1/responses",
        &format!(r#"{{"model":"{QWEN}","input":"hi","max_output_tokens":3}}"#),
    )
    .await;
    // One vLLM process either generates or embeds.
    let r = raw(gen.addr(), &post("/v1/embeddings", r#"{"input":"x"}"#)).await;
    assert_eq!(status_of(&r), 404);
    let r = raw(emb.addr(), &post("/v1/responses", r#"{"input":"x"}"#)).await;
    assert_eq!(status_of(&r), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_on_ollamas_compat_embeddings_completions_and_retrieve() {
    let o = sim(SimKind::Ollama, |_| {}).await;
    let edge = EdgeBuilder::new()
        .pool("ollama", "ollama", &[o.addr()])
        .route(Route::new("openai").path_prefix("/v1/"))
        .start()
        .await;
    until_routed(
        &edge,
        "/v1/embeddings",
        &format!(r#"{{"model":"{LLAMA}","input":"x"}}"#),
    )
    .await;
    let direct = client(
        "openai_apis.py",
        &[&url(o.addr(), "/v1"), "embeddings_text", LLAMA],
    )
    .await;
    let via = client(
        "openai_apis.py",
        &[&edge.url("/v1"), "embeddings_text", LLAMA],
    )
    .await;
    assert_same(&via, &direct, "");
    assert_eq!(via["one"].as_array().map(Vec::len), Some(3072));
    assert_eq!(via["floats_match_base64"], true);
    let direct = client(
        "openai_apis.py",
        &[&url(o.addr(), "/v1"), "completions", LLAMA],
    )
    .await;
    let via = client("openai_apis.py", &[&edge.url("/v1"), "completions", LLAMA]).await;
    assert_same(&via, &direct, "");
    assert_eq!(via["stream"]["completion_tokens"], 6);
    let direct = client(
        "openai_apis.py",
        &[&url(o.addr(), "/v1"), "retrieve", LLAMA],
    )
    .await;
    let via = client("openai_apis.py", &[&edge.url("/v1"), "retrieve", LLAMA]).await;
    assert_same(&via, &direct, "retrieve");
    same_body(
        &edge,
        &o,
        "/v1/completions",
        &format!(r#"{{"model":"{LLAMA}","prompt":"hi","max_tokens":3}}"#),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responses_stream_cut_by_the_engine_ends_with_an_error_event() {
    let gen = sim(SimKind::Vllm, |c| {
        c.faults = Faults {
            drop_after_tokens: Some(3),
            ..Faults::default()
        }
    })
    .await;
    let edge = EdgeBuilder::new()
        .pool("gen", "vllm", &[gen.addr()])
        .route(Route::to_pool("openai", "gen").path_prefix("/v1/"))
        .start()
        .await;
    let r = raw(
        edge.addr,
        &post(
            "/v1/responses",
            &format!(r#"{{"model":"{QWEN}","input":"hi","stream":true}}"#),
        ),
    )
    .await;
    assert_eq!(status_of(&r), 200);
    let body = String::from_utf8_lossy(&body_of(&r)).to_string();
    assert_eq!(
        body.matches("event: response.output_text.delta\n").count(),
        3
    );
    assert!(!body.contains("response.completed"), "{body}");
    // The edge ends the stream with the Responses API's own error event, numbered on.
    let last = body.trim_end().rsplit("\n\n").next().unwrap_or_default();
    assert!(last.starts_with("event: error\ndata: {"), "{body}");
    let ev: Value = serde_json::from_str(last.split_once("data: ").expect("data").1).expect("json");
    assert_eq!(ev["type"], "error");
    assert_eq!(
        ev["sequence_number"], 7,
        "4 opening events and 3 deltas came before"
    );
    assert_eq!(
        edge.metric("okome_streams_total", &[("outcome", "upstream_error")])
            .await,
        1.0
    );
}
