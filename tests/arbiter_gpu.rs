//! GPU check (real NVML): a torch process mapped to an engine by `pid_file` allocates past the
//! engine's budget → `shedding` (over_budget), released → `ok`. Ignored by default; run with
//! `benchmarks/gpu/arbiter_nvml_check.sh` on a machine with a GPU (it sets OKOME_GPU_CHECK=1).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod common;

use okome::arbiter::{ArbiterConfig, BackendState};
use okome_sim::SimKind;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_f64(k: &str, d: f64) -> f64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an NVIDIA GPU, its driver and torch: benchmarks/gpu/arbiter_nvml_check.sh"]
async fn nvml_engine_over_budget_sheds_and_recovers() {
    if std::env::var("OKOME_GPU_CHECK").is_err() {
        eprintln!("OKOME_GPU_CHECK not set: skipping");
        return;
    }
    let budget = env_f64("OKOME_GPU_BUDGET_GIB", 2.0);
    let alloc = env_f64("OKOME_GPU_ALLOC_GIB", 4.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("engine.pid");
    let hold = dir.path().join("hold");
    std::fs::write(&hold, b"").expect("hold file");

    // The engine's health/queue come from a sim; its GPU memory is the torch process's.
    let sim = common::sim(SimKind::Vllm, |_| {}).await;
    let lib = std::env::var("NVML_LIB")
        .map(|l| format!(", nvml_library: \"{l}\""))
        .unwrap_or_default();
    let text = format!(
        "interval: 200ms\ngpu: {{ source: nvml, reserve: 1GiB{lib} }}\n\
         rules: {{ hysteresis: {{ min_hold: 1s }} }}\n\
         engines:\n  - {{ name: torch, kind: vllm, address: \"{}\", budget: {budget}GiB, process: {{ pid_file: \"{}\" }} }}\n",
        sim.addr(),
        pid_file.display()
    );
    let cfg = ArbiterConfig::from_str("gpu-check.yaml", &text).expect("config");
    let h = okome::arbiter::start(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("arbiter");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = h.state();
    println!("gpu source: {:?}\ngpus: {:#?}", s.gpu_source, s.gpus);
    assert_eq!(
        s.gpu_source.kind, "nvml",
        "NVML must load on the GPU machine"
    );

    let mut child = Command::new("python3")
        .arg("benchmarks/gpu/alloc.py")
        .args(["--gib", &alloc.to_string()])
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("--hold-file")
        .arg(&hold)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 benchmarks/gpu/alloc.py");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::task::block_in_place(|| lines.next());
    println!("alloc.py: {line:?}");
    let allocated = Instant::now();

    let wait = |want: BackendState| {
        let mut rx = h.subscribe();
        async move {
            let t0 = Instant::now();
            loop {
                {
                    let s = rx.borrow_and_update();
                    if let Some(b) = s.backends.first() {
                        if b.state == want {
                            return (b.clone(), t0.elapsed());
                        }
                    }
                }
                tokio::time::timeout(Duration::from_secs(30), rx.changed())
                    .await
                    .expect("state within 30 s")
                    .expect("arbiter running");
            }
        }
    };
    let (b, took) = wait(BackendState::Shedding).await;
    println!(
        "shedding {took:?} after allocation ({:?} since alloc.py printed): {} (engine memory {:?})",
        allocated.elapsed(),
        b.reason,
        b.gpu_memory_bytes
    );
    assert_eq!(b.rule, "over_budget");

    std::fs::remove_file(&hold).expect("release");
    let line = tokio::task::block_in_place(|| lines.next());
    println!("alloc.py: {line:?}");
    let (b, took) = wait(BackendState::Ok).await;
    println!(
        "ok {took:?} after release (engine memory {:?})",
        b.gpu_memory_bytes
    );
    let _ = child.kill();
    let _ = child.wait();
    h.shutdown().await;
    sim.shutdown();
}
