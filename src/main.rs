//! `okome`: the edge proxy for self-hosted LLM inference, its simulator, demo and config checker.

mod demo;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// okome: a Pingora edge proxy that streams tokens from vLLM, Ollama and TF Serving to your users.
///
/// Start here:  okome demo            (simulated engines + edge on 127.0.0.1:8080, nothing to install)
/// Production:  okome edge -c conf/edge.yaml
/// Validate:    okome check -c conf/edge.yaml
/// Policy:      okome control -c conf/control.yaml   (tenants, API keys, model routes)
/// GPU:         okome arbiter -c conf/arbiter.yaml   (memory plan, load shedding)
///
/// Logs go to stderr (`--log-format json` for one JSON object per line); RUST_LOG tunes them
/// (e.g. RUST_LOG=debug). The edge's access log is configured in its file (`access_log:`).
#[derive(Parser, Debug)]
#[command(name = "okome", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Process log format on stderr: `text` for people, `json` (one object per line with ts,
    /// level, target, msg) for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How process logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `[ts LEVEL target] message`.
    Text,
    /// `{"ts":…,"level":…,"target":…,"msg":…}`.
    Json,
}

/// Starts the process logger on stderr.
fn init_logging(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        b.format(|buf, record| {
            use std::io::Write;
            let line = serde_json::json!({
                "ts": buf.timestamp_millis().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    b.init();
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the stream-plane proxy: clients on the configured listeners, admin (/metrics,
    /// /healthz, /readyz, /status) on the admin address.
    Edge {
        /// Edge config (YAML). See conf/edge.yaml for the annotated reference.
        #[arg(
            short = 'c',
            long = "config",
            value_name = "FILE",
            default_value = "conf/edge.yaml"
        )]
        config: PathBuf,
        /// Take over the listening sockets of the edge running now (zero-downtime upgrade):
        /// start this, then send the old process SIGQUIT; it hands over its listeners and
        /// drains. Both must use the same `server.upgrade_sock`.
        #[arg(long)]
        upgrade: bool,
    },
    /// Run the OKOME control plane: tenants, hashed API keys and model routes for the edges
    /// (never in the token path). `okome control add-key --tenant T` mints a key.
    Control(okome::control::ControlArgs),
    /// Run the GPU arbiter on the core node: watches the GPU (NVML) and the engines, decides per
    /// backend ok / pressured / shedding / down, and publishes it to the edges.
    /// `okome arbiter plan` validates the GPU memory plan and emits each engine's settings.
    Arbiter(okome::arbiter::ArbiterArgs),
    /// Run simulated model servers that speak vLLM's, Ollama's or TF Serving's real wire formats.
    Sim(Box<okome_sim::SimArgs>),
    /// Start simulated vLLM, Ollama and TF Serving engines plus the edge in one process and print
    /// commands to try. Clients on 127.0.0.1:8080, admin on 127.0.0.1:9090.
    Demo {
        /// Edge config for the demo [default: the built-in conf/demo.yaml]. A simulator is started
        /// on every backend address of every pool.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate a config file without starting anything (like `nginx -t`): exit 0 when usable,
    /// else exit 1 with file, line and key of every problem.
    Check {
        /// Config file(s) to check: an edge config, a control plane config (`tenants:`), an
        /// arbiter config (`engines:` with `rules:`, `gpu:` or `mode:`) or a simulator config
        /// (`engines:`).
        #[arg(short = 'c', long = "config", value_name = "FILE", required = true)]
        config: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.cmd {
        Cmd::Edge { config, upgrade } => run_edge(&config, upgrade),
        Cmd::Control(args) => match okome::control::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Cmd::Arbiter(args) => match okome::arbiter::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Cmd::Sim(args) => match okome_sim::cli::run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Cmd::Demo { config } => match demo::run(config.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Cmd::Check { config } => check(&config),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("okome: {e}");
    ExitCode::FAILURE
}

fn run_edge(path: &std::path::Path, upgrade: bool) -> ExitCode {
    let cfg = match okome::config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    for w in &cfg.warnings {
        log::warn!("{}: {w}", path.display());
    }
    let control = match okome::runtime::control() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    match okome::edge::server::run(cfg, Some(path), &control, upgrade) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Checks one file of any kind: the library checks what it configures; simulator files are the
/// simulator crate's.
fn check_file(f: &std::path::Path) -> Result<okome::check::Report, Box<dyn std::error::Error>> {
    let text = okome_core::config::read_text(f, okome_core::config::MAX_CONFIG_FILE)
        .map_err(|e| format!("{}: cannot read: {e}", f.display()))?;
    if okome::check::kind_of(&text) == okome::config::FileKind::Sim {
        let file = okome_sim::cli::load_file(f)?;
        return Ok(format!("simulator config, {} engine(s)", file.engines.len()).into());
    }
    Ok(okome::check::file(f)?)
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for f in files {
        match check_file(f) {
            Ok(report) => {
                for w in &report.warnings {
                    eprintln!("{}: warning: {w}", f.display());
                }
                println!("{}: ok ({})", f.display(), report.summary);
            }
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
