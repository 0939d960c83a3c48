//! The llamacpp simulator against the real llama-server's bytes: every JSON body and event it
//! writes has the same keys, in the same order, with the same value types, as the captures of
//! `tests/engines/llamacpp_wire.txt` (llama-server b11312 on the tiny test model; copied below).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use okome_sim::{self as sim, SimConfig, SimHandle, SimKind};
use serde::de::{Deserializer as _, MapAccess, SeqAccess, Visitor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A chat stream's first event (`stream_options.include_usage`).
const CHAT_ROLE: &str = r##"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"created":1796589335,"id":"chatcmpl-8zFZ0UPssttJGfQJoxTDsVv8AYVAKiPo","model":"okome-tiny","system_fingerprint":"b11312-0c1e57098","object":"chat.completion.chunk"}"##;
/// Its second event.
const CHAT_CONTENT: &str = r##"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":" after"}}],"created":1796589335,"id":"chatcmpl-8zFZ0UPssttJGfQJoxTDsVv8AYVAKiPo","model":"okome-tiny","system_fingerprint":"b11312-0c1e57098","object":"chat.completion.chunk"}"##;
/// Its finish event.
const CHAT_FINISH: &str = r##"{"choices":[{"finish_reason":"length","index":0,"delta":{}}],"created":1796589335,"id":"chatcmpl-8zFZ0UPssttJGfQJoxTDsVv8AYVAKiPo","model":"okome-tiny","system_fingerprint":"b11312-0c1e57098","object":"chat.completion.chunk"}"##;
/// Its usage event (the last before `[DONE]`).
const CHAT_USAGE: &str = r##"{"choices":[],"created":1796589335,"id":"chatcmpl-8zFZ0UPssttJGfQJoxTDsVv8AYVAKiPo","model":"okome-tiny","system_fingerprint":"b11312-0c1e57098","object":"chat.completion.chunk","usage":{"completion_tokens":20,"prompt_tokens":44,"total_tokens":64,"prompt_tokens_details":{"cached_tokens":0}},"timings":{"cache_n":0,"prompt_n":44,"prompt_ms":2.249,"prompt_per_token_ms":0.05111363636363637,"prompt_per_second":19564.25077812361,"predicted_n":20,"predicted_ms":5.307,"predicted_per_token_ms":0.27931578947368424,"predicted_per_second":3580.1771245524774}}"##;
/// The finish event of a chat stream without `stream_options`.
const CHAT_FINISH_TIMINGS: &str = r##"{"choices":[{"finish_reason":"length","index":0,"delta":{}}],"created":1796589336,"id":"chatcmpl-Fz9gGb4EZISDckWuWswUUU7obN5FLPuZ","model":"okome-tiny","system_fingerprint":"b11312-0c1e57098","object":"chat.completion.chunk","timings":{"cache_n":0,"prompt_n":24,"prompt_ms":1.162,"prompt_per_token_ms":0.04841666666666666,"prompt_per_second":20654.044750430294,"predicted_n":5,"predicted_ms":1.115,"predicted_per_token_ms":0.27875,"predicted_per_second":3587.4439461883408}}"##;
/// A non-streamed chat answer.
const CHAT_WHOLE: &str = r##"{"choices":[{"finish_reason":"length","index":0,"message":{"role":"assistant","content":" but sound river from our much down has we form year other its turn little sound learn think from her"}}],"created":1796589336,"model":"okome-tiny","system_fingerprint":"b11312-0c1e57098","object":"chat.completion","usage":{"completion_tokens":20,"prompt_tokens":24,"total_tokens":44,"prompt_tokens_details":{"cached_tokens":23}},"id":"chatcmpl-fs665HzURsj6u1Zq9dZLzBwqBcdkDO2I","timings":{"cache_n":23,"prompt_n":1,"prompt_ms":0.402,"prompt_per_token_ms":0.402,"prompt_per_second":2487.5621890547263,"predicted_n":20,"predicted_ms":2.488,"predicted_per_token_ms":0.13094736842105262,"predicted_per_second":7636.655948553054}}"##;
/// A `/v1/completions` stream's first event.
const CMPL_CHUNK: &str = r##"{"choices":[{"text":" some","index":0,"logprobs":null,"finish_reason":null}],"created":1796589336,"model":"okome-tiny","system_fingerprint":"b11312-0c1e57098","object":"text_completion","id":"chatcmpl-QlL5I26zD9PCO6gR9xg2dlIhrB7PiNXn"}"##;
/// Its final event.
const CMPL_FINAL: &str = r##"{"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],"created":1796589336,"model":"okome-tiny","system_fingerprint":"b11312-0c1e57098","object":"text_completion","usage":{"completion_tokens":3,"prompt_tokens":6,"total_tokens":9,"prompt_tokens_details":{"cached_tokens":5}},"id":"chatcmpl-7zG7Cr96cIS5OMuMvIxdVHLkMhsPCZQr","timings":{"cache_n":5,"prompt_n":1,"prompt_ms":0.412,"prompt_per_token_ms":0.412,"prompt_per_second":2427.1844660194174,"predicted_n":3,"predicted_ms":0.549,"predicted_per_token_ms":0.2745,"predicted_per_second":3642.987249544626}}"##;
/// A non-streamed `/v1/completions` answer.
const CMPL_WHOLE: &str = r##"{"choices":[{"text":" some cat some men mother after like this air most","index":0,"logprobs":null,"finish_reason":"length"}],"created":1796589336,"model":"okome-tiny","system_fingerprint":"b11312-0c1e57098","object":"text_completion","usage":{"completion_tokens":10,"prompt_tokens":6,"total_tokens":16,"prompt_tokens_details":{"cached_tokens":5}},"id":"chatcmpl-oGN4SdBaPpnpbPbpXusg511ZYXgkFXvv","timings":{"cache_n":5,"prompt_n":1,"prompt_ms":0.346,"prompt_per_token_ms":0.346,"prompt_per_second":2890.1734104046245,"predicted_n":10,"predicted_ms":0.939,"predicted_per_token_ms":0.10433333333333333,"predicted_per_second":9584.664536741213}}"##;
/// A `/completion` stream's first event.
const NATIVE_PARTIAL: &str = r##"{"index":0,"content":" some","tokens":[476],"stop":false,"id_slot":-1,"tokens_predicted":1,"tokens_evaluated":6}"##;
/// Its final event.
const NATIVE_FINAL: &str = r##"{"index":0,"content":"","tokens":[],"id_slot":0,"stop":true,"model":"okome-tiny","tokens_predicted":4,"tokens_evaluated":6,"generation_settings":{"seed":42,"temperature":0.0,"dynatemp_range":0.0,"dynatemp_exponent":1.0,"top_k":40,"top_p":0.949999988079071,"min_p":0.05000000074505806,"top_n_sigma":-1.0,"xtc_probability":0.0,"xtc_threshold":0.10000000149011612,"typical_p":1.0,"repeat_last_n":64,"repeat_penalty":1.0,"presence_penalty":0.0,"frequency_penalty":0.0,"dry_multiplier":0.0,"dry_base":1.75,"dry_allowed_length":2,"dry_penalty_last_n":64,"dry_sequence_breakers":["\n",":","\"","*"],"mirostat":0,"mirostat_tau":5.0,"mirostat_eta":0.10000000149011612,"adaptive_target":-1.0,"adaptive_decay":0.8999999761581421,"stop":[],"max_tokens":4,"n_predict":4,"n_keep":0,"n_discard":0,"ignore_eos":false,"stream":true,"logit_bias":[],"n_probs":0,"min_keep":0,"grammar":"","grammar_lazy":false,"grammar_triggers":[],"preserved_tokens":[],"chat_format":"Content-only","reasoning_format":"deepseek","reasoning_in_content":false,"generation_prompt":"","samplers":["penalties","dry","top_n_sigma","top_k","typ_p","top_p","min_p","xtc","temperature"],"speculative.types":"none","timings_per_token":false,"post_sampling_probs":false,"backend_sampling":false,"lora":[]},"prompt":"<s> The cat","has_new_line":false,"truncated":false,"stop_type":"limit","stopping_word":"","tokens_cached":9,"timings":{"cache_n":5,"prompt_n":1,"prompt_ms":0.417,"prompt_per_token_ms":0.417,"prompt_per_second":2398.0815347721823,"predicted_n":4,"predicted_ms":0.791,"predicted_per_token_ms":0.26366666666666666,"predicted_per_second":3792.6675094816687}}"##;
/// `GET /v1/models`.
const MODELS: &str = r##"{"models":[{"name":"okome-tiny","model":"okome-tiny","modified_at":"","size":"","digest":"","type":"model","description":"","tags":[""],"capabilities":["completion"],"parameters":"","details":{"parent_model":"","format":"gguf","family":"","families":[""],"parameter_size":"","quantization_level":""}}],"object":"list","data":[{"id":"okome-tiny","aliases":["okome-tiny"],"tags":[],"object":"model","created":1796589335,"owned_by":"llamacpp","meta":{"vocab_type":1,"n_vocab":864,"n_ctx":1024,"n_ctx_train":2048,"n_embd":64,"n_params":192832,"size":771328,"ftype":"all F32"}}]}"##;
/// `GET /props`.
const PROPS: &str = r##"{"default_generation_settings":{"params":{"seed":42,"temperature":0.800000011920929,"dynatemp_range":0.0,"dynatemp_exponent":1.0,"top_k":40,"top_p":0.949999988079071,"min_p":0.05000000074505806,"top_n_sigma":-1.0,"xtc_probability":0.0,"xtc_threshold":0.10000000149011612,"typical_p":1.0,"repeat_last_n":64,"repeat_penalty":1.0,"presence_penalty":0.0,"frequency_penalty":0.0,"dry_multiplier":0.0,"dry_base":1.75,"dry_allowed_length":2,"dry_penalty_last_n":64,"mirostat":0,"mirostat_tau":5.0,"mirostat_eta":0.10000000149011612,"adaptive_target":-1.0,"adaptive_decay":0.8999999761581421,"max_tokens":-1,"n_predict":-1,"n_keep":0,"n_discard":0,"ignore_eos":false,"stream":false,"n_probs":0,"min_keep":0,"chat_format":"Content-only","reasoning_format":"none","reasoning_in_content":false,"generation_prompt":"","samplers":["penalties","dry","top_n_sigma","top_k","typ_p","top_p","min_p","xtc","temperature"],"speculative.types":"none","timings_per_token":false,"post_sampling_probs":false,"backend_sampling":false,"lora":[]},"n_ctx":1024},"total_slots":2,"model_alias":"okome-tiny","model_ftype":"all F32","model_path":"/root/.cache/okome/models/okome-tiny-332d3248d19f.gguf","modalities":{"vision":false,"video":false,"audio":false},"media_marker":"<__media_TZyy9vdJZWo5tNmd5JxStSlYv2dG3ruz__>","endpoint_slots":true,"endpoint_props":false,"endpoint_metrics":true,"ui":false,"ui_settings":{},"chat_template":"{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}","chat_template_caps":{"supports_object_arguments":false,"supports_parallel_tool_calls":false,"supports_preserve_reasoning":false,"supports_reasoning_effort":false,"supports_string_content":true,"supports_system_role":true,"supports_tool_calls":false,"supports_tools":false,"supports_typed_content":false},"bos_token":"<s>","eos_token":"</s>","build_info":"b11312-0c1e57098","is_sleeping":false,"cors_proxy_enabled":false}"##;
/// `GET /slots`, idle.
const SLOTS_IDLE: &str = r##"[{"id":0,"n_ctx":1024,"speculative":false,"is_processing":false},{"id":1,"n_ctx":1024,"speculative":false,"is_processing":false}]"##;
/// One slot of `GET /slots` while it generates.
const SLOTS_BUSY: &str = r##"{"id":0,"n_ctx":1024,"speculative":false,"is_processing":true,"id_task":2192,"n_prompt_tokens":460,"n_prompt_tokens_processed":26,"n_prompt_tokens_cache":1,"params":{"seed":42,"temperature":0.0,"dynatemp_range":0.0,"dynatemp_exponent":1.0,"top_k":40,"top_p":0.949999988079071,"min_p":0.05000000074505806,"top_n_sigma":-1.0,"xtc_probability":0.0,"xtc_threshold":0.10000000149011612,"typical_p":1.0,"repeat_last_n":64,"repeat_penalty":1.0,"presence_penalty":0.0,"frequency_penalty":0.0,"dry_multiplier":0.0,"dry_base":1.75,"dry_allowed_length":2,"dry_penalty_last_n":64,"mirostat":0,"mirostat_tau":5.0,"mirostat_eta":0.10000000149011612,"adaptive_target":-1.0,"adaptive_decay":0.8999999761581421,"max_tokens":2000,"n_predict":2000,"n_keep":0,"n_discard":0,"ignore_eos":false,"stream":true,"n_probs":0,"min_keep":0,"chat_format":"peg-native","reasoning_format":"deepseek","reasoning_in_content":false,"generation_prompt":"<|im_start|>assistant\n","samplers":["penalties","dry","top_n_sigma","top_k","typ_p","top_p","min_p","xtc","temperature"],"speculative.types":"none","timings_per_token":false,"post_sampling_probs":false,"backend_sampling":false,"lora":[]},"next_token":[{"has_next_token":true,"has_new_line":false,"n_remain":1566,"n_decoded":434}]}"##;

/// A JSON document's skeleton: keys in document order, values as their JSON type (i: integer,
/// f: float, s: string, b: bool, null), arrays element by element.
fn skeleton(json: &str) -> String {
    struct V<'a>(&'a mut String);
    impl<'de> Visitor<'de> for V<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            self.0.push_str("null");
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            self.0.push('b');
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            self.0.push('i');
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            self.0.push('i');
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            self.0.push('f');
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            self.0.push('s');
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            self.0.push('[');
            while a.next_element_seed(Seed(self.0))?.is_some() {
                self.0.push(',');
            }
            self.0.push(']');
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            self.0.push('{');
            while let Some(k) = a.next_key::<String>()? {
                let _ = write!(self.0, "{k}:");
                a.next_value_seed(Seed(self.0))?;
                self.0.push(',');
            }
            self.0.push('}');
            Ok(())
        }
    }
    struct Seed<'a>(&'a mut String);
    impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(V(self.0))
        }
    }
    let mut out = String::new();
    let mut de = serde_json::Deserializer::from_str(json);
    de.deserialize_any(V(&mut out)).unwrap();
    out
}

/// Sends one request (`Connection: close`); returns the head and the de-chunked body.
async fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, mut rest) = raw.split_once("\r\n\r\n").unwrap();
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (head.to_string(), rest.to_string());
    }
    let mut body = String::new();
    while let Some((n, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(n.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        body.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    (head.to_string(), body)
}

fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

async fn llama(f: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut c = SimConfig::new(SimKind::Llamacpp);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.prefill = Duration::from_millis(1);
    c.tokens_per_second = 1000.0;
    c.metrics = true;
    f(&mut c);
    sim::start(c).await.unwrap()
}

fn same_shape(what: &str, sim: &str, real: &str) {
    assert_eq!(
        skeleton(sim),
        skeleton(real),
        "{what}:\nsim:  {sim}\nreal: {real}"
    );
}

#[tokio::test]
async fn streams_have_the_real_shapes() {
    let h = llama(|_| {}).await;
    let a = h.addr();
    let (head, body) = call(
        a,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"okome-tiny","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello"}],"stream":true,"temperature":0,"max_tokens":3,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    for h in [
        "HTTP/1.1 200 OK",
        "server: llama.cpp",
        "access-control-allow-origin: \r\n",
        "x-accel-buffering: no",
        "content-type: text/event-stream",
        "transfer-encoding: chunked",
    ] {
        assert!(
            head.to_ascii_lowercase().contains(&h.to_ascii_lowercase()),
            "{h}: {head}"
        );
    }
    assert!(!head.to_ascii_lowercase().contains("date:"), "{head}");
    let ev = events(&body);
    assert_eq!(ev.len(), 1 + 3 + 2 + 1);
    same_shape("role chunk", &ev[0], CHAT_ROLE);
    same_shape("content chunk", &ev[1], CHAT_CONTENT);
    same_shape("finish chunk", &ev[4], CHAT_FINISH);
    same_shape("usage chunk", &ev[5], CHAT_USAGE);
    assert_eq!(ev[6], "[DONE]");
    assert!(body.ends_with("data: [DONE]\n\n"));

    let (_, body) = call(
        a,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"okome-tiny","messages":[{"role":"user","content":"Say hello"}],"stream":true,"temperature":0,"max_tokens":5}"#,
    )
    .await;
    let ev = events(&body);
    same_shape(
        "finish chunk with timings",
        &ev[ev.len() - 2],
        CHAT_FINISH_TIMINGS,
    );

    let (_, body) = call(
        a,
        "POST",
        "/v1/completions",
        r#"{"model":"okome-tiny","prompt":"The cat","stream":true,"temperature":0,"max_tokens":3}"#,
    )
    .await;
    let ev = events(&body);
    same_shape("completion chunk", &ev[0], CMPL_CHUNK);
    same_shape("completion final", &ev[3], CMPL_FINAL);
    assert_eq!(ev[4], "[DONE]");

    let (_, body) = call(
        a,
        "POST",
        "/completion",
        r#"{"prompt":"The cat","stream":true,"temperature":0,"n_predict":4}"#,
    )
    .await;
    let ev = events(&body);
    assert_eq!(ev.len(), 5, "4 partials and the final result, no [DONE]");
    same_shape("native partial", &ev[0], NATIVE_PARTIAL);
    same_shape("native final", &ev[4], NATIVE_FINAL);
    let fin: serde_json::Value = serde_json::from_str(&ev[4]).unwrap();
    assert_eq!(fin["prompt"], "<s> The cat");
    assert_eq!(fin["generation_settings"]["temperature"], 0.0);
}

#[tokio::test]
async fn whole_answers_and_probes_have_the_real_shapes() {
    let h = llama(|_| {}).await;
    let a = h.addr();
    let (_, body) = call(
        a,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"okome-tiny","messages":[{"role":"user","content":"Say hello"}],"temperature":0,"max_tokens":20}"#,
    )
    .await;
    same_shape("chat answer", &body, CHAT_WHOLE);
    let (_, body) = call(
        a,
        "POST",
        "/v1/completions",
        r#"{"model":"okome-tiny","prompt":"The cat","temperature":0,"max_tokens":10}"#,
    )
    .await;
    same_shape("completion answer", &body, CMPL_WHOLE);
    // The second identical prompt reuses the slot's cache, all but one token.
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 10);
    let (_, body) = call(
        a,
        "POST",
        "/v1/completions",
        r#"{"model":"okome-tiny","prompt":"The cat","temperature":0,"max_tokens":10}"#,
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v["timings"]["cache_n"].as_u64(), Some(pt - 1), "{body}");
    assert_eq!(v["timings"]["prompt_n"], 1);
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(),
        Some(pt - 1)
    );

    let (_, body) = call(a, "GET", "/v1/models", "").await;
    same_shape("/v1/models", &body, MODELS);
    assert!(
        body.starts_with(r#"{"models":[{"name":"okome-tiny","model":"okome-tiny","#),
        "{body}"
    );
    assert!(body.contains(
        r#""id":"okome-tiny","aliases":["okome-tiny"],"tags":[],"object":"model","created":"#
    ));
    assert!(body.ends_with(r#""owned_by":"llamacpp","meta":{"vocab_type":1,"n_vocab":864,"n_ctx":1024,"n_ctx_train":2048,"n_embd":64,"n_params":192832,"size":771328,"ftype":"all F32"}}]}"#), "{body}");
    let (_, body) = call(a, "GET", "/props", "").await;
    same_shape("/props", &body, PROPS);
    // Everything but the seed (llama-server's default here, 42 in the capture), the model path
    // and the per-process media marker is the same.
    let norm = |s: &str| -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
        v["default_generation_settings"]["params"]["seed"] = 0.into();
        v["model_path"] = "".into();
        v["media_marker"] = "".into();
        v
    };
    assert_eq!(norm(&body), norm(PROPS));
}

/// The response head of a keep-alive GET (the connection stays open).
async fn head_keep_alive(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !String::from_utf8_lossy(&buf).contains("\r\n\r\n") {
        let n = s.read(&mut tmp).await.unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&tmp[..n]);
    }
    String::from_utf8_lossy(&buf).to_ascii_lowercase()
}

#[tokio::test]
async fn heads_are_cpp_httplibs() {
    let h = llama(|_| {}).await;
    let head = head_keep_alive(h.addr(), "/health").await;
    for want in [
        "http/1.1 200 ok\r\n",
        "server: llama.cpp\r\n",
        "access-control-allow-origin: \r\n",
        "content-type: application/json; charset=utf-8\r\n",
        "content-length: 15\r\n",
        "keep-alive: timeout=5, max=100\r\n",
    ] {
        assert!(head.contains(want), "{want:?} in {head}");
    }
    assert!(!head.contains("date:"), "{head}");
    let head = head_keep_alive(h.addr(), "/v1/nope").await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(!head.contains("keep-alive"), "{head}");
}

#[tokio::test]
async fn slots_have_the_real_shapes() {
    let h = llama(|c| c.tokens_per_second = 50.0).await;
    let a = h.addr();
    let (_, body) = call(a, "GET", "/slots", "").await;
    assert_eq!(body, SLOTS_IDLE);
    let long = tokio::spawn(async move {
        call(
            a,
            "POST",
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"Tell a long story"}],"stream":true,"temperature":0,"max_tokens":20}"#,
        )
        .await
    });
    while h.stats().running < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, body) = call(a, "GET", "/slots", "").await;
    // Slot 1 took the request (the least recently used, the last of equals), slot 0 is unused.
    let idle = r#"{"id":0,"n_ctx":1024,"speculative":false,"is_processing":false}"#;
    assert_eq!(
        skeleton(&body),
        format!("[{},{},]", skeleton(idle), skeleton(SLOTS_BUSY)),
        "{body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let busy = &v[1];
    let n = busy["next_token"][0]["n_decoded"].as_i64().unwrap();
    assert!(n > 0);
    assert_eq!(busy["next_token"][0]["n_remain"].as_i64(), Some(20 - n));
    assert_eq!(busy["params"]["chat_format"], "peg-native");
    long.await.unwrap();
}

#[tokio::test]
async fn the_slot_context_limits_prompts_and_answers() {
    let h = llama(|_| {}).await;
    let a = h.addr();
    let long = "the cat ".repeat(1200);
    let (head, body) = call(
        a,
        "POST",
        "/v1/completions",
        &format!(r#"{{"prompt":"{long}","max_tokens":5}}"#),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(
        body,
        r#"{"error":{"code":400,"message":"request (2401 tokens) exceeds the available context size (1024 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":2401,"n_ctx":1024}}"#
    );
    // Generation stops when the slot is full: prompt + output = n_ctx.
    let (_, body) = call(
        a,
        "POST",
        "/v1/completions",
        r#"{"prompt":"The cat","max_tokens":5000}"#,
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["total_tokens"], 1024);
}
