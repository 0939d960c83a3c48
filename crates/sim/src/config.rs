//! `SimConfig`: the knobs of one simulated engine, from YAML or CLI flags.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::faults::Faults;

/// Which engine's wire format a simulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SimKind {
    /// vLLM's OpenAI-compatible server (SSE, `/metrics`).
    Vllm,
    /// Ollama (NDJSON on `/api/*`, OpenAI-compatible SSE on `/v1/*`).
    Ollama,
    /// TensorFlow Serving's REST API (`/v1/models/{name}:predict`).
    #[serde(rename = "tfserving")]
    #[value(name = "tfserving")]
    TfServing,
    /// llama.cpp's `llama-server` (OpenAI-compatible SSE, native `/completion`, `/slots`,
    /// `/metrics` with `metrics: true`).
    Llamacpp,
}

impl SimKind {
    /// The engine's usual listening address.
    pub fn default_listen(self) -> SocketAddr {
        let port = match self {
            SimKind::Vllm => 8000,
            SimKind::Ollama => 11434,
            SimKind::TfServing => 8501,
            SimKind::Llamacpp => 8080,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The model a fresh engine of this kind serves.
    pub fn default_model(self) -> &'static str {
        match self {
            SimKind::Vllm => "Qwen/Qwen3-8B",
            SimKind::Ollama => "llama3.2:latest",
            SimKind::TfServing => "half_plus_two",
            // llama-server names its model by its `--alias` (else by the `-m` path), as
            // okome's real-engine tests start it (tests/engines/llamacpp.sh).
            SimKind::Llamacpp => "okome-tiny",
        }
    }

    /// Lower-case name, as in YAML and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SimKind::Vllm => "vllm",
            SimKind::Ollama => "ollama",
            SimKind::TfServing => "tfserving",
            SimKind::Llamacpp => "llamacpp",
        }
    }
}

impl std::fmt::Display for SimKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a vLLM engine runs its model for (vLLM's `--runner`): one process either generates or
/// embeds, and only the matching OpenAI endpoints exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Runner {
    /// A generative model: chat, completions and responses; `/v1/embeddings` is 404.
    #[default]
    Generate,
    /// An embedding model: `/v1/embeddings` only; the generative endpoints are 404.
    Pooling,
}
/// How the simulator writes JSON bodies and JSON stream lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JsonStyle {
    /// The engine's own output, byte for byte (compact: no spaces after `,` and `:`).
    #[default]
    Compact,
    /// As Python's `json.dumps` writes by default (llama-cpp-python's server, Python gateways):
    /// `", "` and `": "` separators, every object's keys in reverse order, non-ASCII as `\uXXXX`.
    Spaced,
}

/// Default prefix cache size, in blocks of 16 tokens.
pub const DEFAULT_PREFIX_CACHE_BLOCKS: usize = 16_384;

/// Everything one simulated engine needs: address, models, timing, queueing and faults.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawSimConfig")]
pub struct SimConfig {
    /// Wire format to speak.
    pub kind: SimKind,
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// TF Serving only: where its gRPC API listens (TF Serving's port 8500); `None`: no gRPC.
    pub grpc_listen: Option<SocketAddr>,
    /// Model names served; the first one names the metrics.
    pub models: Vec<String>,
    /// Base prefill time before the first token.
    pub prefill: Duration,
    /// Extra prefill time per 1000 prompt tokens (prompt tokens ~ prompt bytes / 4).
    pub prefill_per_1k_tokens: Duration,
    /// Decode speed of one sequence.
    pub tokens_per_second: f64,
    /// Fraction (0..1) of the inter-token interval added as deterministic jitter.
    pub jitter: f64,
    /// Tokens generated when the request names no limit.
    pub default_max_tokens: u32,
    /// Sequences generating at once; more requests wait in a FIFO queue.
    pub max_concurrent: usize,
    /// Longest queue before 503 (Ollama's busy error); `None` = unbounded.
    pub max_queue: Option<usize>,
    /// Failures to inject.
    pub faults: Faults,
    /// Like vLLM's `--api-key`: `/v1/*` requests without `Authorization: Bearer KEY` get 401.
    pub api_key: Option<String>,
    /// vLLM only: generative or embedding model (Ollama embeds with any model).
    pub runner: Runner,
    /// vLLM's prefix cache size in blocks of 16 tokens (0: prefix caching off); a cached
    /// prefix skips its share of `prefill_per_1k_tokens`.
    pub prefix_cache_blocks: usize,
    /// How JSON bodies and JSON stream lines are written (any kind).
    pub json_style: JsonStyle,
    /// llamacpp only: how long after start the server is "loading the model" (every endpoint
    /// answers 503 `Loading model`, as llama-server does until its model is loaded).
    pub load_time: Duration,
    /// llamacpp only: serve `GET /metrics` (llama-server's `--metrics`); off, it answers 501.
    pub metrics: bool,
    /// llamacpp only: serve `GET /slots` (on by default, as llama-server; `--no-slots` turns it off).
    pub slots: bool,
    /// llamacpp only: the context of one slot in tokens (llama-server's `--ctx-size` over
    /// `--parallel`): a longer prompt gets 400 `exceed_context_size_error`, and generation stops
    /// (`length`) when prompt + output fill it.
    pub n_ctx: u32,
    /// llamacpp only: while every slot is busy, `/health`, `/v1/models`, `/metrics` and the
    /// other GET endpoints answer only when a generation ends (a llama-server whose HTTP
    /// threads are all held by streams: "busy looks dead").
    pub busy_probes_block: bool,
}

impl SimConfig {
    /// Defaults for `kind`: its usual port and model, 30 ms prefill, 50 tokens/s.
    pub fn new(kind: SimKind) -> Self {
        SimConfig {
            kind,
            listen: kind.default_listen(),
            grpc_listen: None,
            models: vec![kind.default_model().to_string()],
            prefill: Duration::from_millis(30),
            prefill_per_1k_tokens: Duration::from_millis(1),
            tokens_per_second: 50.0,
            jitter: 0.0,
            default_max_tokens: 64,
            // llama-server's slots, as okome's real-engine tests run it (`-np 2`).
            max_concurrent: match kind {
                SimKind::Llamacpp => 2,
                _ => 256,
            },
            // Ollama's OLLAMA_MAX_QUEUE default is 512; vLLM queues without bound.
            max_queue: match kind {
                SimKind::Ollama => Some(512),
                _ => None,
            },
            faults: Faults::default(),
            api_key: None,
            runner: Runner::Generate,
            // 256k tokens: the KV cache of an 8B model on one large GPU.
            prefix_cache_blocks: DEFAULT_PREFIX_CACHE_BLOCKS,
            json_style: JsonStyle::Compact,
            load_time: Duration::ZERO,
            metrics: false,
            slots: true,
            // `-c 2048 -np 2`, as okome's real-engine tests start llama-server.
            n_ctx: 1024,
            busy_probes_block: false,
        }
    }

    /// Checks the values that would make the simulator misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.tokens_per_second.is_finite() && self.tokens_per_second > 0.0) {
            return Err(format!(
                "tokens_per_second must be a positive number, got {}",
                self.tokens_per_second
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(format!("jitter must be in [0, 1), got {}", self.jitter));
        }
        if self.max_concurrent == 0 {
            return Err("max_concurrent must be at least 1".into());
        }
        if self.grpc_listen.is_some() && self.kind != SimKind::TfServing {
            return Err("grpc_listen is for kind tfserving (TF Serving's gRPC API)".into());
        }
        if self.models.is_empty() {
            return Err("models must name at least one model".into());
        }
        if self.n_ctx < 2 {
            return Err("n_ctx must be at least 2 tokens".into());
        }
        if self.kind != SimKind::Llamacpp {
            let d = SimConfig::new(self.kind);
            for (set, name) in [
                (self.load_time != d.load_time, "load_time"),
                (self.metrics != d.metrics, "metrics"),
                (self.slots != d.slots, "slots"),
                (self.n_ctx != d.n_ctx, "n_ctx"),
                (
                    self.busy_probes_block != d.busy_probes_block,
                    "busy_probes_block",
                ),
            ] {
                if set {
                    return Err(format!(
                        "{name} is for kind llamacpp (llama-server's behaviour)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The YAML shape: every field but `kind` optional, so defaults can depend on the kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSimConfig {
    kind: SimKind,
    listen: Option<SocketAddr>,
    grpc_listen: Option<SocketAddr>,
    models: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt_duration")]
    prefill: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    prefill_per_1k_tokens: Option<Duration>,
    tokens_per_second: Option<f64>,
    jitter: Option<f64>,
    default_max_tokens: Option<u32>,
    max_concurrent: Option<usize>,
    max_queue: Option<usize>,
    faults: Option<Faults>,
    api_key: Option<String>,
    runner: Option<Runner>,
    prefix_cache_blocks: Option<usize>,
    json_style: Option<JsonStyle>,
    #[serde(default, deserialize_with = "opt_duration")]
    load_time: Option<Duration>,
    metrics: Option<bool>,
    slots: Option<bool>,
    n_ctx: Option<u32>,
    busy_probes_block: Option<bool>,
}

impl TryFrom<RawSimConfig> for SimConfig {
    type Error = String;

    fn try_from(r: RawSimConfig) -> Result<Self, String> {
        let d = SimConfig::new(r.kind);
        let cfg = SimConfig {
            kind: r.kind,
            listen: r.listen.unwrap_or(d.listen),
            grpc_listen: r.grpc_listen,
            models: r.models.unwrap_or(d.models),
            prefill: r.prefill.unwrap_or(d.prefill),
            prefill_per_1k_tokens: r.prefill_per_1k_tokens.unwrap_or(d.prefill_per_1k_tokens),
            tokens_per_second: r.tokens_per_second.unwrap_or(d.tokens_per_second),
            jitter: r.jitter.unwrap_or(d.jitter),
            default_max_tokens: r.default_max_tokens.unwrap_or(d.default_max_tokens),
            max_concurrent: r.max_concurrent.unwrap_or(d.max_concurrent),
            max_queue: r.max_queue.or(d.max_queue),
            faults: r.faults.unwrap_or_default(),
            api_key: r.api_key,
            runner: r.runner.unwrap_or_default(),
            prefix_cache_blocks: r.prefix_cache_blocks.unwrap_or(d.prefix_cache_blocks),
            json_style: r.json_style.unwrap_or(d.json_style),
            load_time: r.load_time.unwrap_or(d.load_time),
            metrics: r.metrics.unwrap_or(d.metrics),
            slots: r.slots.unwrap_or(d.slots),
            n_ctx: r.n_ctx.unwrap_or(d.n_ctx),
            busy_probes_block: r.busy_probes_block.unwrap_or(d.busy_probes_block),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Reads a humantime string ("30ms", "1s 500ms") into a duration.
fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// The only `kind:` a simulator file may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKindSim {
    /// `kind: sim`.
    Sim,
}

/// The `-c FILE` shape: several engines at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimFile {
    /// `kind: sim` (optional): says which component this file configures.
    #[serde(default)]
    pub kind: Option<FileKindSim>,
    /// Engines to start.
    pub engines: Vec<SimConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_defaults_follow_kind() {
        let f: SimFile = serde_saphyr::from_str(
            "engines:\n  - kind: ollama\n  - kind: vllm\n    prefill: 5ms\n    listen: 127.0.0.1:0\n",
        )
        .expect("valid yaml");
        assert_eq!(f.engines[0].listen.port(), 11434);
        assert_eq!(f.engines[0].max_queue, Some(512));
        assert_eq!(f.engines[1].prefill, Duration::from_millis(5));
        assert_eq!(f.engines[1].models, vec!["Qwen/Qwen3-8B".to_string()]);
    }

    #[test]
    fn grpc_listen_is_tf_servings() {
        let f: SimFile = serde_saphyr::from_str(
            "engines:\n  - kind: tfserving\n    grpc_listen: 127.0.0.1:8500\n  - kind: tfserving\n",
        )
        .expect("valid yaml");
        assert_eq!(f.engines[0].grpc_listen, "127.0.0.1:8500".parse().ok());
        assert_eq!(f.engines[1].grpc_listen, None);
        let e = serde_saphyr::from_str::<SimFile>(
            "engines:\n  - kind: vllm\n    grpc_listen: 127.0.0.1:8500\n",
        )
        .expect_err("vllm has no gRPC API");
        assert!(e.to_string().contains("grpc_listen"), "{e}");
    }

    #[test]
    fn llamacpp_knobs_in_yaml() {
        let f: SimFile = serde_saphyr::from_str(
            "engines:\n  - kind: llamacpp\n    metrics: true\n    load_time: 1s\n    busy_probes_block: true\n    json_style: spaced\n  - kind: vllm\n    json_style: spaced\n",
        )
        .expect("valid yaml");
        let l = &f.engines[0];
        assert_eq!(l.listen.port(), 8080);
        assert_eq!(l.models, vec!["okome-tiny".to_string()]);
        assert_eq!((l.max_concurrent, l.n_ctx), (2, 1024));
        assert!(l.metrics && l.slots && l.busy_probes_block);
        assert_eq!(l.load_time, Duration::from_secs(1));
        assert_eq!(l.json_style, JsonStyle::Spaced);
        assert_eq!(f.engines[1].json_style, JsonStyle::Spaced);
        let e =
            serde_saphyr::from_str::<SimFile>("engines:\n  - kind: ollama\n    load_time: 1s\n")
                .expect_err("llamacpp only");
        assert!(e.to_string().contains("load_time"), "{e}");
    }

    #[test]
    fn yaml_unknown_field_is_an_error_with_location() {
        let e = serde_saphyr::from_str::<SimFile>("engines:\n  - kind: vllm\n    prefil: 5ms\n")
            .expect_err("unknown field");
        let msg = e.to_string();
        assert!(msg.contains("prefil"), "{msg}");
        assert!(msg.contains('3') || msg.contains("line"), "{msg}");
    }
}
