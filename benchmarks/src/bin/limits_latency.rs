//! `limits-latency`: what the shared limit store adds to an admission.
//!
//! Times `LimitStore::admit` (and settles each admission, as the edge does at the end of a
//! stream, off the measured path) for the local store and for the Redis store at `--redis`, one
//! caller at a time and with `--concurrency` callers, and prints p50/p99/max per case.
//!
//!   redis-server --port 16399 --save '' --appendonly no &
//!   cargo run --release -p okome-benchmarks --bin limits-latency -- --redis 127.0.0.1:16399

use clap::Parser;
use hdrhistogram::Histogram;
use okome_filters::policy::TenantPolicy;
use okome_filters::tenancy::LimitStore;
use okome_filters::LocalLimits;
use okome_limits::{RedisLimits, RedisSettings, StoreMetrics};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Redis address (`host:port` or `redis://host:port`).
    #[arg(long, default_value = "127.0.0.1:6379")]
    redis: String,
    /// Admissions per case.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Callers at once in the concurrent cases.
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
}

fn tenant(id: &str) -> TenantPolicy {
    TenantPolicy {
        id: id.into(),
        priority: Default::default(),
        models: vec!["*".into()],
        // Limits that are never reached: every admission runs the whole check and charge.
        requests_per_minute: Some(1_000_000_000),
        tokens_per_minute: Some(1_000_000_000_000),
        max_concurrent_streams: Some(1_000_000),
        max_body_bytes: None,
        on_limits_unavailable: Default::default(),
    }
}

/// Admits `n` requests from each of `callers` tasks; the histogram of admit latencies (µs).
async fn run(store: Arc<dyn LimitStore>, t: &TenantPolicy, n: u64, callers: u64) -> Histogram<u64> {
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (store, t) = (store.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap_or_else(|e| panic!("histogram: {e}"));
            for _ in 0..n / callers {
                let started = Instant::now();
                let a = store.admit(&t, 3, 100).await;
                let us = started.elapsed().as_micros() as u64;
                h.record(us.max(1))
                    .unwrap_or_else(|e| panic!("record: {e}"));
                match a {
                    Ok(a) => a.settle(40),
                    Err(e) => panic!("refused: {e:?}"),
                }
            }
            h
        }));
    }
    let mut all = Histogram::<u64>::new(3).unwrap_or_else(|e| panic!("histogram: {e}"));
    for t in tasks {
        let h = t.await.unwrap_or_else(|e| panic!("task: {e}"));
        all.add(h).unwrap_or_else(|e| panic!("add: {e}"));
    }
    all
}

fn line(name: &str, callers: u64, h: &Histogram<u64>) {
    println!(
        "{name:<6} callers={callers:<3} n={:<6} p50={:>6} us  p99={:>6} us  max={:>7} us",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let url = okome_limits::parse_address(&args.redis).unwrap_or_else(|e| panic!("{e}"));
    let metrics = StoreMetrics::new().unwrap_or_else(|e| panic!("metrics: {e}"));
    let redis = RedisLimits::new(
        RedisSettings {
            url,
            // Long enough that no admission falls back: this measures Redis, not the fallback.
            timeout: Duration::from_secs(1),
            lease: Duration::from_secs(30),
        },
        metrics.clone(),
    )
    .unwrap_or_else(|e| panic!("redis: {e}"));
    let local: Arc<dyn LimitStore> = Arc::new(LocalLimits::new());
    let shared: Arc<dyn LimitStore> = Arc::new(redis.clone());
    let t = tenant(&format!("bench-{}", std::process::id()));
    // Warm up: connect, load the script.
    let _ = run(shared.clone(), &t, 200, 1).await;
    for callers in [1, args.concurrency] {
        line(
            "local",
            callers,
            &run(local.clone(), &t, args.requests, callers).await,
        );
        line(
            "redis",
            callers,
            &run(shared.clone(), &t, args.requests, callers).await,
        );
    }
    let errors: u64 = ["admit", "settle"]
        .iter()
        .map(|op| metrics.errors.with_label_values(&[op]).get())
        .sum();
    println!("redis errors or timeouts during the run: {errors}");
}
