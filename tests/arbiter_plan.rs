//! `okome arbiter plan`: Mode A budgets and Mode B devices, valid and invalid.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use okome::arbiter::config::ArbiterConfig;
use okome::arbiter::plan::plan;
use okome::arbiter::{ArbiterError, EngineKind};

fn cfg(text: &str) -> ArbiterConfig {
    ArbiterConfig::from_str("arbiter.yaml", text).expect("config parses")
}

fn invalid(text: &str) -> String {
    match plan(&cfg(text), None) {
        Err(e @ ArbiterError::Invalid { .. }) => e.to_string(),
        other => panic!("expected an invalid plan, got {other:?}"),
    }
}

const MODE_A: &str = r#"
gpu: { source: none, reserve: 4GiB }
mode: shared
gpus:
  - uuid: GPU-aaaa
    memory: 80GiB
engines:
  - name: ollama
    kind: ollama
    address: 127.0.0.1:11434
    budget: 16GiB
    max_num_seqs: 2
  - name: vllm
    kind: vllm
    address: 127.0.0.1:8000
    budget: 0.5
    max_num_seqs: 64
  - name: tf
    kind: tfserving
    address: 127.0.0.1:8501
    models: [half_plus_two]
    budget: 8GiB
"#;

#[test]
fn mode_a_valid_plan_emits_settings_and_start_order() {
    let p = plan(&cfg(MODE_A), None).expect("fits: 16 + 40 + 8 + 4 = 68 of 80 GiB");
    let names: Vec<&str> = p.engines.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["vllm", "tf", "ollama"], "vLLM first, Ollama last");

    let v = &p.engines[0];
    assert_eq!(v.kind, EngineKind::Vllm);
    // 0.5 of 80 GiB = 40 GiB; utilization is a fraction of *total* memory.
    assert_eq!(v.arg("--gpu-memory-utilization"), Some("0.5000"));
    assert_eq!(v.arg("--max-num-seqs"), Some("64"));
    assert_eq!(v.env("CUDA_VISIBLE_DEVICES"), Some("GPU-aaaa"));
    assert_eq!(v.needs_free_at_start, Some(40 << 30));
    assert_eq!(v.expected_free_at_start, Some(80 << 30));

    let t = &p.engines[1];
    // 8 / 80 = 0.1
    assert_eq!(t.arg("--per_process_gpu_memory_fraction"), Some("0.1000"));
    assert_eq!(t.env("TF_FORCE_GPU_ALLOW_GROWTH"), Some("false"));
    assert_eq!(t.after.as_deref(), Some("vllm.service"));

    let o = &p.engines[2];
    // Ollama leaves OLLAMA_GPU_OVERHEAD bytes alone: 80 − 16 = 64 GiB.
    assert_eq!(
        o.env("OLLAMA_GPU_OVERHEAD"),
        Some((64u64 << 30).to_string().as_str())
    );
    assert_eq!(o.env("OLLAMA_NUM_PARALLEL"), Some("2"));
    assert_eq!(o.env("OLLAMA_MAX_LOADED_MODELS"), Some("1"));
    assert_eq!(o.env("OLLAMA_MAX_QUEUE"), Some("512"));
    assert_eq!(o.env("OLLAMA_KEEP_ALIVE"), Some("5m"));
    assert_eq!(o.expected_free_at_start, Some(32 << 30), "80 − 40 − 8");

    let text = p.render();
    assert!(text.contains("--gpu-memory-utilization 0.5000"), "{text}");

    let dir = tempfile::tempdir().expect("tempdir");
    let written = p.write(dir.path()).expect("write");
    assert_eq!(written.len(), 6);
    let env = std::fs::read_to_string(dir.path().join("vllm.env")).expect("env file");
    assert!(
        env.contains("OKOME_ENGINE_ARGS=\"--gpu-memory-utilization 0.5000 --max-num-seqs 64\""),
        "{env}"
    );
    let dropin =
        std::fs::read_to_string(dir.path().join("ollama.service.d/okome.conf")).expect("drop-in");
    assert!(dropin.contains("After=tf.service"), "{dropin}");
    assert!(
        dropin.contains("Environment=\"OLLAMA_NUM_PARALLEL=2\""),
        "{dropin}"
    );
}

#[test]
fn mode_a_utilization_floors_so_it_never_exceeds_the_budget() {
    let p = plan(
        &cfg(r#"
gpu: { source: none, reserve: 1GiB }
gpus: [{ uuid: GPU-h200, memory: 143771MiB }]
engines:
  - { name: v, kind: vllm, address: 127.0.0.1:8000, budget: 40GiB }
"#),
        None,
    )
    .expect("fits");
    // 40 GiB / 143771 MiB = 0.284897… → 0.2848 (floored).
    assert_eq!(p.engines[0].arg("--gpu-memory-utilization"), Some("0.2848"));
    assert_eq!(p.engines[0].arg("--max-num-seqs"), Some("256"));
}

#[test]
fn mode_a_over_budget_names_the_key_and_the_numbers() {
    let msg = invalid(
        r#"
gpu: { source: none, reserve: 4GiB }
gpus: [{ uuid: GPU-aaaa, memory: 80GiB }]
engines:
  - name: vllm
    kind: vllm
    address: 127.0.0.1:8000
    budget: 60GiB
  - name: ollama
    kind: ollama
    address: 127.0.0.1:11434
    budget: 20GiB
"#,
    );
    println!("{msg}");
    assert!(msg.contains("arbiter.yaml:"), "{msg}");
    assert!(msg.contains("engines[1].budget"), "{msg}");
    assert!(msg.contains("60.00 GiB"), "{msg}");
    assert!(msg.contains("20.00 GiB"), "{msg}");
    assert!(msg.contains("84.00 GiB > total 80.00 GiB"), "{msg}");
    assert!(msg.contains("over by 4.00 GiB"), "{msg}");
}

#[test]
fn mode_a_needs_budgets_and_a_total() {
    let msg = invalid(
        r#"
gpu: { source: none }
engines:
  - { name: v, kind: vllm, address: 127.0.0.1:8000 }
"#,
    );
    assert!(msg.contains("gpus"), "{msg}");
    assert!(msg.contains("engines[0].budget"), "{msg}");
}

#[test]
fn mode_b_valid_plan_pins_devices() {
    let p = plan(
        &cfg(r#"
gpu: { source: none }
mode: partitioned
gpus:
  - { uuid: GPU-1111, memory: 80GiB }
  - { uuid: MIG-2222, memory: 40GiB }
engines:
  - { name: ollama, kind: ollama, address: 127.0.0.1:11434, devices: [MIG-2222] }
  - { name: vllm, kind: vllm, address: 127.0.0.1:8000, devices: [GPU-1111], budget: 0.85 }
"#),
        None,
    )
    .expect("no overlap");
    let v = &p.engines[0];
    assert_eq!(v.name, "vllm");
    assert_eq!(v.env("CUDA_VISIBLE_DEVICES"), Some("GPU-1111"));
    assert_eq!(v.arg("--gpu-memory-utilization"), Some("0.8500"));
    let o = &p.engines[1];
    assert_eq!(o.env("CUDA_VISIBLE_DEVICES"), Some("MIG-2222"));
    assert_eq!(o.env("OLLAMA_GPU_OVERHEAD"), None, "no budget, no overhead");
}

#[test]
fn mode_b_overlap_fails_naming_both_engines() {
    let msg = invalid(
        r#"
gpu: { source: none }
mode: partitioned
engines:
  - { name: a, kind: vllm, address: 127.0.0.1:8000, devices: [GPU-1111, GPU-2222] }
  - { name: b, kind: ollama, address: 127.0.0.1:11434, devices: [GPU-2222] }
"#,
    );
    println!("{msg}");
    assert!(msg.contains("engines[1].devices[0]"), "{msg}");
    assert!(msg.contains("GPU-2222"), "{msg}");
    assert!(msg.contains("\"a\""), "{msg}");
}

#[test]
fn mode_b_unknown_device_and_bad_uuid_fail() {
    let msg = invalid(
        r#"
gpu: { source: none }
mode: partitioned
gpus: [{ uuid: GPU-1111, memory: 80GiB }]
engines:
  - { name: a, kind: vllm, address: 127.0.0.1:8000, devices: [GPU-9999] }
  - { name: b, kind: ollama, address: 127.0.0.1:11434, devices: ["0"] }
"#,
    );
    assert!(
        msg.contains("engines[0].devices[0]: GPU-9999 does not exist"),
        "{msg}"
    );
    assert!(
        msg.contains("engines[1].devices[0]: \"0\" is not a UUID"),
        "{msg}"
    );
}

#[test]
fn shipped_config_plans() {
    let c =
        ArbiterConfig::load(std::path::Path::new("conf/arbiter.yaml")).expect("conf/arbiter.yaml");
    let p = plan(&c, None).expect("conf/arbiter.yaml plans");
    assert_eq!(p.engines.len(), 3);
}

#[test]
fn okome_edges_are_not_engines() {
    let err = ArbiterConfig::from_str(
        "arbiter.yaml",
        r#"
gpu: { source: none }
gpus:
  - { uuid: GPU-1111, memory: 80GiB }
engines:
  - { name: n, kind: okome, address: 127.0.0.1:8080, budget: 10GiB }
"#,
    )
    .expect_err("an okome edge is refused");
    let msg = format!("{err:?}");
    assert!(msg.contains("engines[0].kind"), "{msg}");
    assert!(msg.contains("not a GPU engine"), "{msg}");
}
