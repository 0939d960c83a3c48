//! `okome sim`: run one simulated engine from flags, or several from a YAML file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::config::{SimConfig, SimFile, SimKind};
use super::faults::Faults;

/// Errors of `okome sim`.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The config file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file named by `-c`.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid (the message carries line and column).
    #[error("{file}: {msg}")]
    Config {
        /// The file named by `-c`.
        file: PathBuf,
        /// What is wrong, and where.
        msg: String,
    },
    /// A flag value is not valid.
    #[error("invalid flags: {0}")]
    Flags(String),
    /// The tokio runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// A simulator could not bind its address.
    #[error("{kind} simulator cannot listen on {addr}: {source}")]
    Bind {
        /// Engine kind.
        kind: SimKind,
        /// Address asked for.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
}

/// Flags of `okome sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// YAML file with `engines: [ {kind: vllm, listen: ..., ...}, ... ]` to run several engines at once; the other flags are ignored when it is given.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Engine whose wire format to speak (llamacpp: llama.cpp's llama-server).
    #[arg(long, value_enum, default_value_t = SimKind::Vllm)]
    pub kind: SimKind,
    /// Address to listen on [default: the engine's own port: vllm 127.0.0.1:8000, ollama 127.0.0.1:11434, tfserving 127.0.0.1:8501, llamacpp 127.0.0.1:8080; port 0 picks a free one].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// TF Serving's gRPC API: address to listen on [default for tfserving: 127.0.0.1:8500, TF Serving's gRPC port].
    #[arg(long, value_name = "ADDR")]
    pub grpc_listen: Option<SocketAddr>,
    /// Model name to serve; repeat for several [default: vllm Qwen/Qwen3-8B, ollama llama3.2:latest, tfserving half_plus_two, llamacpp okome-tiny (llama-server's --alias; all names are its aliases)].
    #[arg(long = "model", value_name = "NAME")]
    pub models: Vec<String>,
    /// Base prefill time before the first token, e.g. 30ms [default: 30ms].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub prefill: Option<Duration>,
    /// Extra prefill per 1000 prompt tokens (prompt tokens ~ prompt bytes / 4) [default: 1ms].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub prefill_per_1k_tokens: Option<Duration>,
    /// vLLM's prefix cache in blocks of 16 tokens; a cached prompt prefix skips its prefill (0: off) [default: 16384].
    #[arg(long, value_name = "BLOCKS")]
    pub prefix_cache_blocks: Option<usize>,
    /// Decode speed of one sequence in tokens per second [default: 50].
    #[arg(long, value_name = "TPS")]
    pub tokens_per_second: Option<f64>,
    /// Jitter as a fraction (0..1) of the inter-token interval; deterministic per prompt [default: 0].
    #[arg(long, value_name = "FRACTION")]
    pub jitter: Option<f64>,
    /// Tokens generated when the request sets no max_tokens / num_predict [default: 64].
    #[arg(long = "max-tokens", value_name = "N")]
    pub max_tokens: Option<u32>,
    /// Sequences generating at once (llama-server's slots); further requests wait in a FIFO queue [default: 256, llamacpp 2].
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<usize>,
    /// Queue length beyond which requests get 503 busy [default: ollama 512, others unbounded].
    #[arg(long, value_name = "N")]
    pub max_queue: Option<usize>,
    /// Start with the port closed (ECONNREFUSED) until cleared via PUT /_sim/faults [default: off].
    #[arg(long)]
    pub refuse_connections: bool,
    /// Answer every generation request with 500 in the engine's error shape [default: off].
    #[arg(long)]
    pub http_500: bool,
    /// Stream N tokens, then an in-stream error event in the engine's format [default: off].
    #[arg(long, value_name = "N")]
    pub error_after_tokens: Option<u32>,
    /// Stream N tokens, then close the TCP connection without ending the body [default: off].
    #[arg(long, value_name = "N")]
    pub drop_after_tokens: Option<u32>,
    /// Stream N tokens, then hold the connection open sending nothing [default: off].
    #[arg(long, value_name = "N")]
    pub stall_after_tokens: Option<u32>,
    /// Stream N tokens, then end the body cleanly without the end marker (`[DONE]`, `"done":true`) [default: off].
    #[arg(long, value_name = "N")]
    pub end_after_tokens: Option<u32>,
    /// vLLM only: `generate` (chat, completions, responses) or `pooling` (an embedding model: `/v1/embeddings`) [default: generate].
    #[arg(long, value_enum, value_name = "RUNNER")]
    pub runner: Option<crate::config::Runner>,
    /// How JSON bodies and stream lines are written: `compact` (the engine's own bytes) or `spaced` (Python's json.dumps: ", " and ": " separators, keys in reverse order, non-ASCII as \uXXXX, like llama-cpp-python's server) [default: compact].
    #[arg(long, value_enum, value_name = "STYLE")]
    pub json_style: Option<crate::config::JsonStyle>,
    /// llamacpp only: for this long after start every endpoint answers 503 "Loading model", /health included (llama-server loading its model), e.g. 2s [default: 0s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub load_time: Option<Duration>,
    /// llamacpp only: serve GET /metrics in llama-server's Prometheus format (its --metrics); without it /metrics answers 501 [default: off].
    #[arg(long)]
    pub metrics: bool,
    /// llamacpp only: GET /slots answers 501, as llama-server started with --no-slots [default: /slots on].
    #[arg(long)]
    pub no_slots: bool,
    /// llamacpp only: the context of one slot in tokens (llama-server's --ctx-size over --parallel): longer prompts get 400 exceed_context_size_error, generation stops when prompt + output fill it [default: 1024].
    #[arg(long, value_name = "TOKENS")]
    pub n_ctx: Option<u32>,
    /// llamacpp only: while every slot is generating, /health, /v1/models, /metrics, /slots and /props answer only when a generation ends (a llama-server whose HTTP threads streams hold: "busy looks dead") [default: off].
    #[arg(long)]
    pub busy_probes_block: bool,
}

impl SimArgs {
    /// The engine configs these flags (or the `-c` file) describe.
    pub fn configs(&self) -> Result<Vec<SimConfig>, SimError> {
        if let Some(file) = &self.config {
            return load_file(file).map(|f| f.engines);
        }
        let mut c = SimConfig::new(self.kind);
        if let Some(l) = self.listen {
            c.listen = l;
        }
        c.grpc_listen = self.grpc_listen.or_else(|| {
            (self.kind == SimKind::TfServing).then_some(SocketAddr::from(([127, 0, 0, 1], 8500)))
        });
        if !self.models.is_empty() {
            c.models = self.models.clone();
        }
        c.prefill = self.prefill.unwrap_or(c.prefill);
        c.prefill_per_1k_tokens = self
            .prefill_per_1k_tokens
            .unwrap_or(c.prefill_per_1k_tokens);
        c.prefix_cache_blocks = self.prefix_cache_blocks.unwrap_or(c.prefix_cache_blocks);
        c.tokens_per_second = self.tokens_per_second.unwrap_or(c.tokens_per_second);
        c.jitter = self.jitter.unwrap_or(c.jitter);
        c.default_max_tokens = self.max_tokens.unwrap_or(c.default_max_tokens);
        c.max_concurrent = self.max_concurrent.unwrap_or(c.max_concurrent);
        c.max_queue = self.max_queue.or(c.max_queue);
        c.runner = self.runner.unwrap_or(c.runner);
        c.json_style = self.json_style.unwrap_or(c.json_style);
        c.load_time = self.load_time.unwrap_or(c.load_time);
        c.metrics = self.metrics || c.metrics;
        c.slots = c.slots && !self.no_slots;
        c.n_ctx = self.n_ctx.unwrap_or(c.n_ctx);
        c.busy_probes_block = self.busy_probes_block || c.busy_probes_block;
        c.faults = Faults {
            refuse_connections: self.refuse_connections,
            http_500: self.http_500,
            error_after_tokens: self.error_after_tokens,
            drop_after_tokens: self.drop_after_tokens,
            stall_after_tokens: self.stall_after_tokens,
            end_after_tokens: self.end_after_tokens,
        };
        c.validate().map_err(SimError::Flags)?;
        Ok(vec![c])
    }
}

/// Reads and checks a `-c` file; errors name the file, the line and what is wrong.
pub fn load_file(file: &std::path::Path) -> Result<SimFile, SimError> {
    let text = okome_core::config::read_text(file, okome_core::config::MAX_CONFIG_FILE).map_err(
        |source| SimError::Read {
            file: file.into(),
            source,
        },
    )?;
    okome_core::config::from_yaml::<SimFile>(file, &text).map_err(|msg| SimError::Config {
        file: file.into(),
        msg,
    })
}

/// Runs the simulators until Ctrl-C.
pub fn run(args: SimArgs) -> Result<(), SimError> {
    let configs = args.configs()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(SimError::Runtime)?;
    rt.block_on(async move {
        let mut handles = Vec::new();
        for c in configs {
            let (kind, addr) = (c.kind, c.listen);
            let h =
                super::start(c)
                    .await
                    .map_err(|source| SimError::Bind { kind, addr, source })?;
            log::info!("okome sim: {} listening on http://{}", h.kind(), h.addr());
            println!("okome sim: {} listening on http://{}", h.kind(), h.addr());
            if let Some(g) = h.grpc_addr() {
                log::info!("okome sim: {} gRPC listening on {g} (h2c)", h.kind());
                println!("okome sim: {} gRPC listening on {g} (h2c)", h.kind());
            }
            handles.push(h);
        }
        okome_core::runtime::shutdown_signal().await;
        for h in &handles {
            h.shutdown();
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: SimArgs,
    }

    #[test]
    fn flags_build_a_config() {
        let t = T::parse_from([
            "x",
            "--kind",
            "ollama",
            "--prefill",
            "5ms",
            "--model",
            "a",
            "--model",
            "b",
            "--drop-after-tokens",
            "3",
        ]);
        let c = t.a.configs().expect("valid");
        assert_eq!(c[0].kind, SimKind::Ollama);
        assert_eq!(c[0].prefill, Duration::from_millis(5));
        assert_eq!(c[0].models, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(c[0].faults.drop_after_tokens, Some(3));
        assert_eq!(c[0].listen.port(), 11434);
        assert_eq!(c[0].grpc_listen, None);
        // TF Serving: REST on 8501, gRPC on 8500, like the engine.
        let c = T::parse_from(["x", "--kind", "tfserving"])
            .a
            .configs()
            .expect("valid");
        assert_eq!(c[0].listen.port(), 8501);
        assert_eq!(c[0].grpc_listen, "127.0.0.1:8500".parse().ok());
        let c = T::parse_from(["x", "--kind", "tfserving", "--grpc-listen", "127.0.0.1:0"])
            .a
            .configs()
            .expect("valid");
        assert_eq!(c[0].grpc_listen, "127.0.0.1:0".parse().ok());
    }

    #[test]
    fn llamacpp_flags() {
        let c = T::parse_from([
            "x",
            "--kind",
            "llamacpp",
            "--metrics",
            "--no-slots",
            "--busy-probes-block",
            "--load-time",
            "2s",
            "--json-style",
            "spaced",
        ])
        .a
        .configs()
        .expect("valid");
        assert_eq!(c[0].kind, SimKind::Llamacpp);
        assert_eq!(c[0].listen.port(), 8080);
        assert_eq!(c[0].max_concurrent, 2);
        assert!(c[0].metrics && !c[0].slots && c[0].busy_probes_block);
        assert_eq!(c[0].load_time, Duration::from_secs(2));
        assert_eq!(c[0].json_style, crate::config::JsonStyle::Spaced);
        let e = T::parse_from(["x", "--kind", "vllm", "--metrics"])
            .a
            .configs()
            .expect_err("llamacpp only");
        assert!(e.to_string().contains("metrics"), "{e}");
        let c = T::parse_from(["x", "--kind", "ollama", "--json-style", "spaced"])
            .a
            .configs()
            .expect("any kind");
        assert_eq!(c[0].json_style, crate::config::JsonStyle::Spaced);
    }

    #[test]
    fn yaml_error_names_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sim.yaml");
        std::fs::write(
            &p,
            "engines:\n  - kind: vllm\n    jitter: 0.1\n    tokens_per_sec: 3\n",
        )
        .expect("write");
        let e = load_file(&p).expect_err("bad field").to_string();
        assert!(
            e.contains("sim.yaml") && e.contains("tokens_per_sec"),
            "{e}"
        );
        assert!(e.contains('4'), "no line number: {e}");
    }
}
