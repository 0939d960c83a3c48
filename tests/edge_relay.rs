//! Relay: bytes through the edge equal bytes from the engine, tokens keep their pacing.

mod common;

use common::*;
use okome::sim::SimKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_sse_stream_is_byte_identical_through_the_edge() {
    let s = sim(SimKind::Vllm, |_| {}).await;
    let edge = start_edge(&format!(
        "pools:\n{}routes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n",
        pool("vllm", "vllm", &[s.addr()])
    ))
    .await;
    let body = r#"{"model":"Qwen/Qwen3-8B","stream":true,"stream_options":{"include_usage":true},"max_tokens":6,"messages":[{"role":"user","content":"hi"}]}"#;
    let direct = body_of(&raw(s.addr(), &post("/v1/chat/completions", body)).await);
    let via = raw(edge.addr, &post("/v1/chat/completions", body)).await;
    assert_eq!(status_of(&via), 200, "{}", String::from_utf8_lossy(&via));
    let via = body_of(&via);
    // ids and timestamps differ per stream; everything else must match byte for byte.
    let norm = |b: &[u8]| {
        let s = String::from_utf8_lossy(b).to_string();
        let mut out = String::new();
        for line in s.split_inclusive('\n') {
            let mut l = line.to_string();
            if let Some(i) = l.find("\"id\":\"chatcmpl-") {
                l.replace_range(i + 15..i + 31, "X".repeat(16).as_str());
            }
            if let Some(i) = l.find("\"created\":") {
                l.replace_range(i + 10..i + 20, "0000000000");
            }
            out.push_str(&l);
        }
        out
    };
    assert_eq!(norm(&via), norm(&direct));
    assert!(String::from_utf8_lossy(&via).ends_with("data: [DONE]\n\n"));
    assert_eq!(edge.metric("okome_streams_total", &[("outcome", "completed")]).await, 1.0);
}
