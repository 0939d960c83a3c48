//! `policy-hit`: what a policy cache hit costs on the request path.
//!
//! Starts an in-process control plane with one tenant and key, warms the edge's policy cache,
//! then times (1) a key lookup that hits the cache and (2) the whole auth → policy → ratelimit
//! filter chain, and reports how many calls reached the control plane meanwhile.
//!
//!   cargo run --release -p okome-benchmarks --bin policy-hit

use okome::config::{Control, Dur, OnUnavailable};
use okome::control::{hash_key, start, YamlStore};
use okome::metrics::Metrics;
use okome::policy::PolicyCache;
use okome_filters::tenancy::{KeyVerdict, PolicySource};
use okome_filters::{FilterEffects, FilterEnv, FilterRequest, FilterSpec};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLICY: &str = r#"
listen: 127.0.0.1:0
edges: 1
tenants:
  - { id: bench, priority: standard, models: ["*"], requests_per_minute: 1000000000, tokens_per_minute: 1000000000000 }
routes:
  - { model: "Qwen/*", pool: vllm }
"#;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let store = YamlStore::from_str(POLICY).unwrap_or_else(|e| panic!("policy: {e}"));
    let key = "okome-bench-key";
    store
        .insert_key(&hash_key(key), "bench")
        .unwrap_or_else(|e| panic!("key: {e}"));
    let control = start(
        Arc::new(store),
        "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
    )
    .await
    .unwrap_or_else(|e| panic!("control: {e}"));
    let dir = std::env::temp_dir().join(format!("okome-policy-hit-{}", std::process::id()));
    let cfg = Control {
        address: control.addr(),
        state_dir: dir.clone(),
        key_ttl: Dur(Duration::from_secs(3600)),
        negative_ttl: Dur(Duration::from_secs(5)),
        stale_if_error: Dur(Duration::from_secs(3600)),
        on_unavailable: OnUnavailable::Deny,
        timeout: Dur(Duration::from_secs(2)),
        token: None,
    };
    let cache = PolicyCache::start(&cfg, None, Metrics::new()).await;
    assert!(
        matches!(cache.tenant_for_key(key).await, KeyVerdict::Tenant(_)),
        "warm-up"
    );
    let before = control.key_lookups();

    let n = 1_000_000u32;
    let t = Instant::now();
    for _ in 0..n {
        if !matches!(cache.tenant_for_key(key).await, KeyVerdict::Tenant(_)) {
            panic!("cache miss during the run");
        }
    }
    let per_hit = t.elapsed() / n;

    let env = FilterEnv {
        policy: cache.clone(),
        ..FilterEnv::default()
    };
    let chain: Vec<_> = [
        FilterSpec::Auth,
        FilterSpec::Policy,
        FilterSpec::Ratelimit {
            default_reserve_tokens: 256,
        },
    ]
    .iter()
    .map(|s| {
        okome_filters::compile(s)
            .unwrap_or_else(|e| panic!("filter: {e}"))
            .build(&env)
    })
    .collect();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {key}")).unwrap_or_else(|_| unreachable!()),
    );
    let req = FilterRequest {
        method: &http::Method::POST,
        path: "/v1/chat/completions",
        headers: &headers,
        model: Some("Qwen/Qwen3-8B"),
        body_len: 200,
        route: "openai",
        max_tokens: Some(100),
    };
    let m = 200_000u32;
    let t = Instant::now();
    for _ in 0..m {
        let mut fx = FilterEffects::default();
        for f in &chain {
            if f.on_request(&req, &mut fx).await != okome_filters::Verdict::Continue {
                panic!("refused during the run");
            }
        }
        if let Some(a) = fx.admission.take() {
            a.settle(100);
        }
    }
    let per_chain = t.elapsed() / m;
    let calls = control.key_lookups() - before;
    println!(
        "{{\"cache_hit_ns\": {}, \"auth_policy_ratelimit_chain_ns\": {}, \"requests\": {}, \"control_plane_key_lookups_during_run\": {calls}}}",
        per_hit.as_nanos(),
        per_chain.as_nanos(),
        n + m
    );
    let _ = std::fs::remove_dir_all(dir);
}
