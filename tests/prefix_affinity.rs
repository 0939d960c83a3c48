//! Prefix-affinity picks: with four simulated vLLM replicas (each with vLLM's prefix cache) and
//! a multi-turn workload from the official OpenAI SDK (conversations resending their growing
//! history, one shared system prompt), `pick: prefix_affinity` raises the engines' own
//! prefix-cache hit rate well above least-loaded picks, without piling requests onto a replica.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use common::*;
use okome_sim::{SimHandle, SimKind};

const REPLICAS: usize = 4;
const CONVERSATIONS: u64 = 24;
const TURNS: u64 = 5;

/// What one run measured, from the engines themselves.
struct Run {
    /// `vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total`, summed over replicas.
    hit_rate: f64,
    /// Generation requests each replica received.
    per_replica: Vec<u64>,
    /// The edge's `okome_prefix_affinity_picks_total` by result (hit, miss, overloaded, none).
    picks: [f64; 4],
}

async fn engine_metric(s: &SimHandle, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", s.addr()))
        .await
        .expect("engine metrics")
        .text()
        .await
        .expect("text");
    sum_metric(&text, name, &[])
}

/// Runs the workload through an edge whose vLLM pool has `pick`, on four fresh replicas.
async fn run(pick: &str) -> Run {
    let mut sims = Vec::new();
    for _ in 0..REPLICAS {
        sims.push(
            sim(SimKind::Vllm, |c| {
                c.prefill_per_1k_tokens = std::time::Duration::from_millis(20);
                c.tokens_per_second = 500.0;
            })
            .await,
        );
    }
    let addrs: Vec<_> = sims.iter().map(|s| s.addr()).collect();
    let edge = embedded::edge(&format!(
        "pools:\n{}    pick: {pick}\nroutes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n    pool: vllm\n",
        pool("vllm", "vllm", &addrs)
    ))
    .await;
    let healthy = eventually(20, || async {
        edge.metric("okome_backend_healthy", &[("pool", "vllm")])
            .await
            .eq(&(REPLICAS as f64))
    })
    .await;
    assert!(healthy, "the replicas never became healthy");
    let out = python::run(
        "multiturn.py",
        &[
            "--base-url",
            &edge.url("/v1"),
            "--conversations",
            &CONVERSATIONS.to_string(),
            "--turns",
            &TURNS.to_string(),
            "--concurrency",
            "8",
        ],
    )
    .await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("driver's JSON");
    assert_eq!(report["requests"], CONVERSATIONS * TURNS, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let (mut queries, mut hits) = (0.0, 0.0);
    for s in &sims {
        queries += engine_metric(s, "vllm:prefix_cache_queries_total").await;
        hits += engine_metric(s, "vllm:prefix_cache_hits_total").await;
    }
    assert!(queries > 0.0, "the engines counted no prefix-cache queries");
    let mut picks = [0.0; 4];
    for (i, r) in ["hit", "miss", "overloaded", "none"].iter().enumerate() {
        picks[i] = edge
            .metric(
                "okome_prefix_affinity_picks_total",
                &[("pool", "vllm"), ("result", r)],
            )
            .await;
    }
    let run = Run {
        hit_rate: hits / queries,
        per_replica: sims.iter().map(|s| s.stats().requests).collect(),
        picks,
    };
    eprintln!(
        "{pick}: engine prefix-cache hit rate {:.3}, requests per replica {:?}, affinity picks \
         hit/miss/overloaded/none {:?}, client TTFT ms {}",
        run.hit_rate, run.per_replica, run.picks, report["ttft_ms"]
    );
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_raises_the_engines_prefix_cache_hit_rate() {
    let least = run("least_loaded").await;
    let affinity = run("prefix_affinity").await;
    let total = CONVERSATIONS * TURNS;
    for r in [&least, &affinity] {
        assert_eq!(r.per_replica.iter().sum::<u64>(), total);
    }
    // Least-loaded picks never consult the table.
    assert_eq!(least.picks, [0.0; 4]);
    // Every affinity pick is counted; later turns find their conversation's backend.
    assert_eq!(affinity.picks.iter().sum::<f64>(), total as f64);
    assert!(
        affinity.picks[0] >= (CONVERSATIONS * (TURNS - 1)) as f64 * 0.8,
        "too few affinity hits: {:?}",
        affinity.picks
    );
    // The engines' own counters: affinity reuses most of each resent history. With least-loaded
    // picks a turn lands on the replica holding its history about one time in four (the shared
    // system prompt hits everywhere in both runs).
    assert!(
        affinity.hit_rate > least.hit_rate + 0.2,
        "affinity {:.3} vs least-loaded {:.3}",
        affinity.hit_rate,
        least.hit_rate
    );
    // No replica is overloaded: at most twice its fair share of requests.
    let fair = total / REPLICAS as u64;
    assert!(
        affinity.per_replica.iter().all(|&n| n <= 2 * fair),
        "{:?}",
        affinity.per_replica
    );
}
