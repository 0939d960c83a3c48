//! `okome demo`: simulated engines and the edge in one process, with commands to try.

use okome::config::{self, PoolKind};
use okome_sim::{SimConfig, SimKind};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The built-in demo config (`conf/demo.yaml`).
pub const DEMO_YAML: &str = include_str!("../conf/demo.yaml");
/// The demo's GPU arbiter (`conf/demo-arbiter.yaml`).
pub const DEMO_ARBITER_YAML: &str = include_str!("../conf/demo-arbiter.yaml");
/// The demo's control plane policy (`conf/demo-control.yaml`).
pub const DEMO_CONTROL_YAML: &str = include_str!("../conf/demo-control.yaml");

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Bad config.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// No runtime.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// A simulator's port is taken.
    #[error("cannot start the simulated {kind} engine on {addr}: {source} (is something else using the port?)")]
    Sim {
        /// Engine kind.
        kind: SimKind,
        /// Address.
        addr: std::net::SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The edge failed.
    #[error(transparent)]
    Edge(#[from] okome::edge::server::StartError),
    /// The control plane failed.
    #[error("demo control plane: {0}")]
    Control(#[from] okome::control::ControlError),
    /// The arbiter failed.
    #[error("demo arbiter: {0}")]
    Arbiter(#[from] okome::arbiter::ArbiterError),
    /// The arbiter's port is taken.
    #[error("cannot start the demo arbiter on {addr}: {source}")]
    ArbiterBind {
        /// Address.
        addr: std::net::SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The control plane's port is taken.
    #[error("cannot start the demo control plane on {addr}: {source}")]
    ControlBind {
        /// Address.
        addr: std::net::SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
}

/// Runs the demo until Ctrl-C.
pub fn run(path: Option<&Path>) -> Result<(), DemoError> {
    let mut cfg = match path {
        Some(p) => config::load(p)?,
        None => config::parse(&PathBuf::from("conf/demo.yaml (built in)"), DEMO_YAML)?,
    };
    // The demo's control plane and edge share a token minted now, so its API is never open.
    let control_token = okome::config::Secret::new(okome::control::generate_key());
    if let Some(c) = &mut cfg.control {
        c.token.get_or_insert_with(|| control_token.clone());
    }
    let control = okome::runtime::control().map_err(DemoError::Runtime)?;
    let mut handles = Vec::new();
    for pool in &cfg.pools {
        let kind = match pool.kind {
            PoolKind::Vllm | PoolKind::Openai => SimKind::Vllm,
            PoolKind::Llamacpp => SimKind::Llamacpp,
            PoolKind::Ollama => SimKind::Ollama,
            PoolKind::Tfserving => SimKind::TfServing,
            // Stream nodes are okome edges, not engines: a simulator cannot stand in for one.
            PoolKind::Okome => {
                log::warn!(
                    "demo: pool {} is kind okome: start its stream nodes yourself",
                    pool.name
                );
                continue;
            }
        };
        // A simulator per literal address; a `HOST:PORT` backend is whatever the name gives.
        let addrs = pool.backends.iter().filter_map(|b| match b {
            okome::config::compile::BackendSpec::Addr(a) => Some(*a),
            okome::config::compile::BackendSpec::Name { .. } => None,
        });
        for addr in addrs {
            let mut sc = SimConfig::new(kind);
            sc.listen = addr;
            // TF Serving's gRPC API where the pool sends gRPC calls.
            sc.grpc_listen = pool
                .grpc_port
                .map(|p| std::net::SocketAddr::new(addr.ip(), p));
            if !pool.models.is_empty() {
                sc.models = pool.models.clone();
            }
            // Slow enough that tokens visibly stream in a terminal.
            sc.tokens_per_second = 15.0;
            sc.prefill = Duration::from_millis(200);
            sc.jitter = 0.2;
            sc.default_max_tokens = 48;
            let h = control
                .block_on(okome_sim::start(sc))
                .map_err(|source| DemoError::Sim { kind, addr, source })?;
            handles.push(h);
        }
    }
    let mut arbiter = None;
    if cfg.arbiter.is_some() {
        let acfg = okome::arbiter::ArbiterConfig::from_str(
            "conf/demo-arbiter.yaml (built in)",
            DEMO_ARBITER_YAML,
        )?;
        let addr = acfg.listen;
        let h = control
            .block_on(okome::arbiter::start(acfg, addr))
            .map_err(|source| DemoError::ArbiterBind { addr, source })?;
        arbiter = Some(h.addr());
    }
    let mut key = None;
    if let Some(c) = &cfg.control {
        let mut policy = okome::control::ControlPolicy::from_str(
            "conf/demo-control.yaml (built in)",
            DEMO_CONTROL_YAML,
        )?;
        policy.api_token = c.token.clone();
        let store = okome::control::YamlStore::from_config(policy);
        let k = okome::control::generate_key();
        store.insert_key(&okome::control::hash_key(&k), "demo")?;
        let addr = c.config.address;
        control
            .block_on(okome::control::start(std::sync::Arc::new(store), addr))
            .map_err(|source| DemoError::ControlBind { addr, source })?;
        key = Some(k);
    }
    let listen = cfg
        .listeners
        .first()
        .map(|l| l.address.to_string())
        .unwrap_or_default();
    let admin = cfg.admin;
    println!(
        "{}",
        banner(&listen, &admin.to_string(), &handles, key.as_deref())
    );
    if let Some(a) = arbiter {
        println!("{}", arbiter_banner(&listen, a, &handles, key.as_deref()));
    }
    okome::edge::server::run(cfg, path, &control, false)?;
    for h in &handles {
        h.shutdown();
    }
    Ok(())
}

fn banner(listen: &str, admin: &str, sims: &[okome_sim::SimHandle], key: Option<&str>) -> String {
    let engines: Vec<String> = sims
        .iter()
        .map(|h| format!("{} on {}", h.kind(), h.addr()))
        .collect();
    let (key_line, auth) = match key {
        Some(k) => (
            format!("control plane on 127.0.0.1:7070; the demo tenant's API key: {k}\n"),
            format!(" -H 'authorization: Bearer {k}'"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        r#"
okome demo — simulated engines: {engines}
edge on http://{listen}, admin on http://{admin}
{key_line}
Try (tokens stream as they are generated):

  # OpenAI chat, streamed from the vLLM pool
  curl -N http://{listen}/v1/chat/completions -H 'content-type: application/json'{auth} \
    -d '{{"model":"Qwen/Qwen3-8B","stream":true,"messages":[{{"role":"user","content":"Hello!"}}]}}'

  # the same API, routed by model to the Ollama pool
  curl -N http://{listen}/v1/chat/completions -H 'content-type: application/json'{auth} \
    -d '{{"model":"llama3.2","stream":true,"messages":[{{"role":"user","content":"Hello!"}}]}}'

  # Ollama's native API (NDJSON)
  curl -N http://{listen}/api/chat -d '{{"model":"llama3.2","messages":[{{"role":"user","content":"Hello!"}}]}}'

  # TF Serving REST
  curl http://{listen}/v1/models/half_plus_two:predict -d '{{"instances":[1.0,2.0,5.0]}}'

  # TF Serving gRPC (h2c on the same port), with grpcio and stubs made from proto/
  # (bash tests/clients/setup.sh makes the virtualenv)
  ~/.cache/okome/pyenv/bin/python tests/clients/tfs_grpc.py --proto proto --target {listen} \
    --calls '[{{"method":"predict","model":"half_plus_two","x":[1.0,2.0,5.0]}}]'

  # the models your key may use, metrics, status
  curl http://{listen}/v1/models{auth}
  curl -s http://{admin}/metrics | grep ^okome_policy
  curl -s http://{admin}/metrics | grep ^okome_ttft
  curl http://{admin}/status

Ctrl-C stops everything.
"#,
        engines = engines.join(", ")
    )
}

fn arbiter_banner(
    listen: &str,
    arbiter: std::net::SocketAddr,
    sims: &[okome_sim::SimHandle],
    key: Option<&str>,
) -> String {
    let vllm: Vec<String> = sims
        .iter()
        .filter(|h| h.kind() == SimKind::Vllm)
        .map(|h| h.addr().to_string())
        .collect();
    let auth = key
        .map(|k| format!(" -H 'authorization: Bearer {k}'"))
        .unwrap_or_default();
    let push: String = vllm
        .iter()
        .map(|a| format!("  curl -X PUT http://{a}/_sim/pressure -d '{{\"extra_waiting\":40}}'\n"))
        .collect();
    let release: String = vllm
        .iter()
        .map(|a| format!("  curl -X PUT http://{a}/_sim/pressure -d '{{}}'\n"))
        .collect();
    format!(
        r#"GPU arbiter on http://{arbiter} (GET /v1/state). Push the vLLM engines into shedding (a queue of
40 waiting requests) and watch the edge answer 503 with a Retry-After computed from the queue:
{push}  curl -s http://{arbiter}/v1/state
  curl -i http://{listen}/v1/chat/completions -H 'content-type: application/json'{auth} \
    -d '{{"model":"Qwen/Qwen3-8B","messages":[{{"role":"user","content":"Hello!"}}]}}'
Release them:
{release}"#
    )
}
