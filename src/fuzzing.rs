//! Entry points for the fuzz targets in `fuzz/` and for replaying their corpora in `cargo test`:
//! each takes arbitrary bytes and must never panic.
//!
//! A panic is a finding: either a parser panicked on hostile input, or one of the oracles
//! (`assert!`s) below saw two views of the same input disagree.

use crate::api::Api;
use crate::stream::classify::{classify, Event, LineState};
use crate::stream::framing::LineFramer;
use crate::stream::{Format, StreamTap};
use std::path::Path;
use std::time::{Duration, Instant};

/// Tiny deterministic PRNG (xorshift64*), so a seed byte string always splits the same way.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Everything a tap exposes about what it classified, independent of arrival times.
#[derive(Debug, PartialEq, Eq)]
struct TapView {
    token_events: u64,
    usage_completion_tokens: Option<u64>,
    error: bool,
    done: bool,
    tokens: u64,
    started: bool,
    gaps: u64,
}

fn view(tap: &StreamTap, gaps: u64) -> TapView {
    let s = &tap.stats;
    TapView {
        token_events: s.token_events,
        usage_completion_tokens: s.usage_completion_tokens,
        error: s.error,
        done: s.done,
        tokens: s.tokens(),
        started: s.started(),
        gaps,
    }
}

/// Feeds `chunks` to a fresh tap, each chunk at `times[i]` after the start.
fn run_tap<'a>(
    format: Format,
    chunks: impl IntoIterator<Item = (&'a [u8], Duration)>,
) -> (StreamTap, u64) {
    let start = Instant::now();
    let mut tap = StreamTap::new(format, start);
    let mut gaps = 0u64;
    for (chunk, at) in chunks {
        tap.feed(chunk, start + at, &mut |_| gaps += 1);
    }
    (tap, gaps)
}

/// Cuts `payload` into chunks at seed-derived positions (empty chunks included), each tagged
/// with a non-decreasing arrival time.
fn split(payload: &[u8], seed: u64) -> Vec<(&[u8], Duration)> {
    let mut rng = Rng::new(seed);
    // The seed also picks the scale of the chunks: tiny ones stress the carry-over.
    let max = [1usize, 2, 3, 8, 64, 1024][rng.below(6)];
    let mut out = Vec::new();
    let mut at = Duration::ZERO;
    let mut rest = payload;
    while !rest.is_empty() {
        let n = if rng.below(16) == 0 {
            0
        } else {
            1 + rng.below(max)
        };
        let (head, tail) = rest.split_at(n.min(rest.len()));
        out.push((head, at));
        at += Duration::from_micros(rng.next() % 5_000_000);
        rest = tail;
    }
    out
}

/// The reference model of the tap: every `\n`-terminated line of at most
/// [`crate::stream::framing::MAX_LINE`] bytes (less a trailing `\r`), classified; longer lines
/// are skipped, and the unterminated tail is not a line.
fn reference_events(format: Format, payload: &[u8]) -> Vec<Event> {
    if format == Format::Opaque {
        return Vec::new();
    }
    let mut lines: Vec<&[u8]> = payload.split(|&b| b == b'\n').collect();
    lines.pop();
    let mut state = LineState::default();
    lines
        .into_iter()
        .filter(|l| l.len() <= crate::stream::framing::MAX_LINE)
        .map(|l| classify(format, &mut state, l.strip_suffix(b"\r").unwrap_or(l)))
        .collect()
}

/// What a tap fed the reference events would report.
fn reference_view(events: &[Event]) -> TapView {
    let start = Instant::now();
    let mut stats = crate::stream::StreamStats::new(start);
    let mut gaps = 0u64;
    for ev in events {
        stats.record(*ev, start, &mut |_| gaps += 1);
    }
    TapView {
        token_events: stats.token_events,
        usage_completion_tokens: stats.usage_completion_tokens,
        error: stats.error,
        done: stats.done,
        tokens: stats.tokens(),
        started: stats.started(),
        gaps,
    }
}

/// Stream tap: SSE/NDJSON framing and classification must not depend on how the bytes were
/// chunked (whole, seed-split, byte by byte) and must match a line-by-line reference model.
///
/// Layout: `[format selector][8-byte chunking seed][payload…]`.
pub fn stream_tap(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let format = match sel % 8 {
        7 => Format::Opaque,
        x if x % 2 == 0 => Format::Sse,
        _ => Format::Ndjson,
    };
    let mut seed = [0u8; 8];
    let n = rest.len().min(8);
    seed[..n].copy_from_slice(&rest[..n]);
    let seed = u64::from_le_bytes(seed);
    let payload = &rest[n..];

    let (whole, whole_gaps) = run_tap(format, [(payload, Duration::ZERO)]);
    let (parts, parts_gaps) = run_tap(format, split(payload, seed));
    let (bytes, bytes_gaps) = run_tap(
        format,
        payload
            .chunks(1)
            .enumerate()
            .map(|(i, c)| (c, Duration::from_millis(i as u64))),
    );
    let whole_v = view(&whole, whole_gaps);
    assert_eq!(
        whole_v,
        view(&parts, parts_gaps),
        "whole vs seed-split ({format:?})"
    );
    assert_eq!(
        whole_v,
        view(&bytes, bytes_gaps),
        "whole vs byte by byte ({format:?})"
    );
    assert_eq!(
        whole_v,
        reference_view(&reference_events(format, payload)),
        "tap vs reference ({format:?})"
    );
    assert_eq!(whole_v.gaps, whole_v.token_events.saturating_sub(1));

    // The framer alone: the same lines whatever the chunking.
    if format != Format::Opaque {
        let mut whole_lines = Vec::new();
        LineFramer::default().feed(payload, |l| whole_lines.push(l.to_vec()));
        let mut split_lines = Vec::new();
        let mut framer = LineFramer::default();
        for (c, _) in split(payload, seed.rotate_left(17)) {
            framer.feed(c, |l| split_lines.push(l.to_vec()));
        }
        assert_eq!(whole_lines, split_lines, "framer: whole vs split");
    }

    // Timing with real (fuzzed) gaps: no panic, and sane relations.
    for tap in [&parts, &bytes] {
        let s = &tap.stats;
        let _ = s.ttft();
        let max = s.max_gap();
        let slack = Duration::from_micros(1);
        if let Some(mean) = s.mean_gap() {
            assert!(mean <= max + slack, "mean gap {mean:?} > max gap {max:?}");
        }
        if let Some(j) = s.jitter() {
            assert!(j <= max + slack, "jitter {j:?} > max gap {max:?}");
        }
    }
}

/// Request-body peek: never panics; a model it reports is non-empty and is the one a JSON
/// parser that keeps the last duplicate (as the engines' Python does) reads.
///
/// Layout: `[API selector][body…]`.
pub fn body_peek(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let api = match sel % 3 {
        0 => Api::OpenAi,
        1 => Api::Ollama,
        _ => Api::TfServing,
    };
    let res = crate::edge::peek::peek(api, body);
    let blank = body.iter().all(u8::is_ascii_whitespace);
    if api == Api::TfServing || blank {
        assert_eq!(
            res.as_ref().map(|p| p.model.as_deref()),
            Ok(None),
            "{api:?}: body must not be read"
        );
        return;
    }
    let Ok(p) = res else {
        return;
    };
    if let Some(m) = &p.model {
        assert!(!m.is_empty(), "peek returned an empty model");
    }
    // What a full JSON parse of the same bytes says. `peek` skips unknown fields without
    // parsing them (their UTF-8, depth and number range are not checked), so a full parse may
    // fail where `peek` succeeds; when both succeed they must agree.
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    assert!(v.is_object(), "peek accepted a non-object: {v}");
    let nonempty = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|s| !s.is_empty());
    let expect_model = nonempty("model").or(if api == Api::Ollama {
        nonempty("name")
    } else {
        None
    });
    assert_eq!(
        p.model.as_deref(),
        expect_model,
        "model differs from a full parse"
    );
    let stream = v
        .get("stream")
        .and_then(|s| s.as_bool())
        .unwrap_or(api == Api::Ollama);
    assert_eq!(
        p.wants_stream, stream,
        "stream flag differs from a full parse"
    );
    let u = |k: &str| v.get(k).and_then(|x| x.as_u64());
    let max = u("max_completion_tokens").or(u("max_tokens")).or(v
        .get("options")
        .and_then(|o| o.get("num_predict"))
        .and_then(|n| n.as_i64())
        .and_then(|n| u64::try_from(n).ok()));
    assert_eq!(p.max_tokens, max, "token limit differs from a full parse");

    // Differential with Go's `encoding/json` (Ollama): it matches keys case-insensitively
    // (after upper-casing every character) and the last match wins, so an accepted body must
    // give it exactly the keys the edge read, spelled as the edge read them.
    let folds_to = |k: &str, want: &str| {
        k.chars()
            .flat_map(char::to_uppercase)
            .eq(want.chars().map(|c| c.to_ascii_uppercase()))
    };
    let go_keys_are_exact = |obj: &serde_json::Map<String, serde_json::Value>, keys: &[&str]| {
        for want in keys {
            let read: Vec<&String> = obj.keys().filter(|k| folds_to(k, want)).collect();
            assert!(
                read.iter().all(|k| k.as_str() == *want),
                "a case-insensitive decoder reads `{want}` from {read:?}"
            );
        }
    };
    if let Some(obj) = v.as_object() {
        go_keys_are_exact(
            obj,
            &[
                "model",
                "name",
                "stream",
                "max_tokens",
                "max_completion_tokens",
                "options",
            ],
        );
        if let Some(opts) = obj.get("options").and_then(|o| o.as_object()) {
            go_keys_are_exact(opts, &["num_predict"]);
        }
    }
}

/// Config compile: the edge, control-plane, keys-file and arbiter YAML parsers and validators
/// never panic on any text, and what validates compiles (pools, routes, the published snapshot,
/// the arbiter's plan) without panicking.
///
/// No I/O: the edge and control configs are parsed and validated here without reading the
/// secrets they name (`{ file: … }` could be `/dev/zero` or a FIFO), which `config::parse` and
/// `ControlPolicy::from_str` do after validating.
pub fn edge_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(cfg) = serde_saphyr::from_str::<crate::config::EdgeConfig>(text) {
        // Secrets are not read: any source stands for the same token.
        let read_secret = |_: &crate::config::SecretSource| Ok(crate::config::Secret::new("fuzz"));
        // Nor files: a listener's certificates read as missing.
        let read_file = |_: &std::path::Path| Err(std::io::ErrorKind::NotFound.into());
        if let Ok(compiled) = crate::config::compile::compile(&cfg, &read_secret, &read_file) {
            let metrics = crate::metrics::Metrics::default();
            let up = crate::upstream::Upstreams::new(
                &compiled,
                &metrics,
                &crate::upstream::dns::Resolved::default(),
            );
            let env = okome_filters::FilterEnv::default();
            let _ = crate::edge::routes::RouteTable::new(&compiled.routes, &up, &env);
        }
    }

    if let Ok(config) = serde_saphyr::from_str::<crate::control::ControlConfig>(text) {
        let policy = crate::control::ControlPolicy {
            config,
            path: "fuzz-control.yaml".into(),
            keys_path: None,
            file_keys: Vec::new(),
            api_token: None,
        };
        if policy.validate().is_empty() {
            let published = policy.publish(1);
            // What the control plane would serve must come back the same from the wire.
            if let Ok(json) = serde_json::to_vec(&published.snapshot) {
                let back = serde_json::from_slice::<okome_filters::policy::Snapshot>(&json);
                assert_eq!(
                    back.as_ref().ok(),
                    Some(&published.snapshot),
                    "snapshot round trip"
                );
            }
        }
    }
    let _ = crate::control::config::parse_keys(Path::new("fuzz-keys.yaml"), text);

    if let Ok(cfg) = crate::arbiter::ArbiterConfig::from_str("fuzz-arbiter.yaml", text) {
        if let Ok(plan) = crate::arbiter::plan::plan(&cfg, None) {
            let _ = plan.render();
        }
        let gpu = crate::arbiter::GpuReading {
            status: crate::arbiter::GpuStatus {
                uuid: "GPU-aaaa".into(),
                name: "NVIDIA H200".into(),
                memory_total_bytes: 143_771_336_704,
                memory_used_bytes: 1 << 30,
                memory_free_bytes: 143_771_336_704 - (1 << 30),
                utilization_percent: Some(3),
            },
            parent: None,
            processes: Vec::new(),
        };
        if let Ok(plan) = crate::arbiter::plan::plan(&cfg, Some(&[gpu])) {
            let _ = plan.render();
        }
    }
}

/// Whether two JSON trees are the same (objects compared by key). Exact, floats included:
/// okome builds serde_json with `float_roundtrip`, so an `f64` field (`drain_per_sec`,
/// `kv_cache_usage`) survives a trip over the wire bit for bit (the fuzzer found one that did
/// not without it: `fuzz/corpus/wire_types/f64_one_ulp_round_trip.json`).
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Deserializes `data` as `T`; when it does, the value must survive a JSON round trip (and
/// serialize to the same JSON again: no field lost or changed on the way).
fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let name = std::any::type_name::<T>();
    let Ok(v) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let (Ok(json), Ok(tree)) = (serde_json::to_vec(&v), serde_json::to_value(&v)) else {
        panic!("{name}: deserialized but does not serialize");
    };
    let back = serde_json::from_slice::<T>(&json);
    let Ok(back) = back else {
        panic!(
            "{name}: its own JSON does not deserialize: {}",
            String::from_utf8_lossy(&json)
        );
    };
    if back == v {
        return;
    }
    let back_tree = serde_json::to_value(&back).unwrap_or_default();
    assert!(
        same_json(&tree, &back_tree),
        "{name}: JSON round trip changed the value\n  via: {}\n  before: {v:?}\n  after:  {back:?}",
        String::from_utf8_lossy(&json)
    );
}

/// Control-plane and arbiter wire types (`/v1/snapshot`, `/v1/keys/…`, `/v1/state`) round-trip
/// through JSON; the arbiter's Prometheus scrapers and the long-poll `wait`/`If-None-Match`
/// parsers never panic.
pub fn wire_types(data: &[u8]) {
    round_trip::<okome_filters::policy::Snapshot>(data);
    round_trip::<okome_filters::policy::KeyInfo>(data);
    round_trip::<okome_filters::policy::TenantPolicy>(data);
    round_trip::<crate::arbiter::ArbiterState>(data);

    let text = String::from_utf8_lossy(data);
    let _ = okome_engine::prom::vllm(&text);
    let _ = okome_engine::prom::llamacpp(&text);
    let _ = okome_engine::prom::tfserving_requests(&text);
    if data.len() <= 64 {
        let _ = crate::longpoll::parse_wait(&text);
        if let Ok(v) = http::HeaderValue::from_bytes(data) {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::IF_NONE_MATCH, v);
            let _ = crate::longpoll::if_none_match(&h);
        }
    }
}

/// How a [`tap_reformat`] stream writes its JSON: the same values, bytes as different servers
/// write them.
#[derive(Debug, Clone, Copy)]
struct Style {
    /// `", "` and `": "` (Python's `json.dumps`).
    spaced: bool,
    /// Object keys in reverse order.
    reversed: bool,
    /// Non-ASCII characters, and every `e` in keys and strings, as `\uXXXX`.
    escaped: bool,
    /// One member per line (a pretty-printer; SSE carries it as several `data:` lines).
    pretty: bool,
}

fn write_json(out: &mut Vec<u8>, v: &serde_json::Value, st: Style) {
    use serde_json::Value;
    let (comma, colon): (&[u8], &[u8]) = if st.spaced {
        (b", ", b": ")
    } else {
        (b",", b":")
    };
    let sep = |out: &mut Vec<u8>| {
        out.extend_from_slice(comma);
        if st.pretty {
            out.push(b'\n');
        }
    };
    match v {
        Value::Object(m) => {
            out.push(b'{');
            let mut members: Vec<_> = m.iter().collect();
            if st.reversed {
                members.reverse();
            }
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    sep(out);
                }
                write_str(out, k, st);
                out.extend_from_slice(colon);
                write_json(out, v, st);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    sep(out);
                }
                write_json(out, v, st);
            }
            out.push(b']');
        }
        Value::String(s) => write_str(out, s, st),
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

fn write_str(out: &mut Vec<u8>, s: &str, st: Style) {
    if !st.escaped {
        out.extend_from_slice(serde_json::Value::from(s).to_string().as_bytes());
        return;
    }
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 || c == 'e' || !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.extend_from_slice(format!("\\u{u:04x}").as_bytes());
                }
            }
            c => out.push(c as u8),
        }
    }
    out.push(b'"');
}

/// Tap differential: a stream of chat/completions chunks (SSE) or Ollama lines (NDJSON) built
/// from the input is written compact, then spaced, reordered, escaped and pretty-printed, split
/// at seed-derived points; the tap must count the same tokens, usage, errors and end as a
/// `serde_json` reading of the same values says, whatever the bytes look like.
///
/// Layout: `[format byte][8-byte seed][ops…]`, each op byte choosing the next payload; text
/// comes from the op bytes themselves.
pub fn tap_reformat(data: &[u8]) {
    use serde_json::{json, Value};
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let ndjson = sel % 2 == 1;
    let mut seed = [0u8; 8];
    let n = rest.len().min(8);
    seed[..n].copy_from_slice(&rest[..n]);
    let seed = u64::from_le_bytes(seed);
    let ops = &rest[n..];
    let mut rng = Rng::new(seed);
    // Text from the input: any UTF-8 (quotes, backslashes, newlines, non-ASCII included).
    let text = |rng: &mut Rng| -> String {
        let len = rng.below(6);
        let start = rng.below(ops.len().max(1));
        let end = (start + len).min(ops.len());
        String::from_utf8_lossy(&ops[start..end]).into_owned()
    };

    let mut payloads: Vec<Value> = Vec::new();
    let (mut tokens, mut usage, mut error, mut done) = (0u64, None::<u64>, false, false);
    for &op in ops.iter().take(64) {
        let t = text(&mut rng);
        let nonempty = !t.is_empty();
        if ndjson {
            let v = match op % 4 {
                0 | 1 => {
                    tokens += 1;
                    json!({"model": "m", "message": {"role": "assistant", "content": t}, "done": false})
                }
                2 => {
                    let count = u64::from(op);
                    done = true;
                    usage = Some(count);
                    json!({"model": "m", "done": true, "done_reason": "stop", "eval_count": count})
                }
                _ => {
                    error = true;
                    json!({"error": t})
                }
            };
            payloads.push(v);
            continue;
        }
        let delta = match op % 9 {
            0 => json!({"content": t}),
            1 => json!({"role": "assistant", "content": t}),
            2 => json!({"content": [{"type": "text", "text": t}]}),
            3 => json!({"reasoning_content": t}),
            4 => json!({"reasoning": t, "content": null}),
            5 => {
                json!({"tool_calls": (0..usize::from(nonempty)).map(|i| json!({"index": i, "function": {"arguments": t}})).collect::<Vec<_>>()})
            }
            6 => {
                // completions: `text`
                tokens += u64::from(nonempty);
                payloads.push(json!({"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": t, "finish_reason": null}]}));
                continue;
            }
            7 => {
                let count = u64::from(op);
                usage = Some(count);
                payloads.push(json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": count, "total_tokens": count + 3}}));
                continue;
            }
            _ => {
                error = true;
                payloads.push(json!({"error": {"message": t, "type": "BadRequestError", "param": null, "code": 400}}));
                continue;
            }
        };
        tokens += u64::from(nonempty);
        payloads.push(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]}));
    }
    if !ndjson && rng.below(2) == 0 {
        done = true;
    }
    let expected = (tokens, usage, error, done);

    for bits in 0u8..16 {
        let st = Style {
            spaced: bits & 1 != 0,
            reversed: bits & 2 != 0,
            escaped: bits & 4 != 0,
            pretty: bits & 8 != 0 && !ndjson,
        };
        let mut body = Vec::new();
        for p in &payloads {
            let mut j = Vec::new();
            write_json(&mut j, p, st);
            if ndjson {
                body.extend_from_slice(&j);
                body.push(b'\n');
            } else {
                for line in j.split(|&b| b == b'\n') {
                    body.extend_from_slice(b"data: ");
                    body.extend_from_slice(line);
                    body.push(b'\n');
                }
                body.push(b'\n');
            }
        }
        if !ndjson && done {
            body.extend_from_slice(b"data: [DONE]\n\n");
        }
        let format = if ndjson { Format::Ndjson } else { Format::Sse };
        let (tap, _) = run_tap(format, split(&body, seed ^ u64::from(bits)));
        let s = &tap.stats;
        assert_eq!(
            (s.token_events, s.usage_completion_tokens, s.error, s.done),
            expected,
            "{st:?}: {}",
            String::from_utf8_lossy(&body)
        );
    }
}
