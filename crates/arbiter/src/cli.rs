//! `okome arbiter [-c FILE]` (serve) and `okome arbiter plan [--out DIR]`.

use super::config::{ArbiterConfig, GpuSourceKind};
use super::error::ArbiterError;
use super::gpu::NvmlProbe;
use std::path::PathBuf;

/// Arguments of `okome arbiter`.
#[derive(Debug, clap::Args)]
pub struct ArbiterArgs {
    /// The arbiter's config file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        value_name = "FILE",
        default_value = "conf/arbiter.yaml"
    )]
    pub config: PathBuf,
    /// Without a subcommand, run the arbiter.
    #[command(subcommand)]
    pub command: Option<ArbiterCommand>,
}

/// Subcommands of `okome arbiter`.
#[derive(Debug, clap::Subcommand)]
pub enum ArbiterCommand {
    /// Validate the memory discipline (Mode A budgets / Mode B devices) and print each engine's settings.
    Plan {
        /// Also write `<engine>.env` and `<engine>.service.d/okome.conf` into this folder.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// Runs `okome arbiter`: serves until Ctrl-C / SIGTERM, or prints (and writes) the plan.
pub fn run(args: ArbiterArgs) -> Result<(), ArbiterError> {
    let cfg = ArbiterConfig::load(&args.config)?;
    match args.command {
        Some(ArbiterCommand::Plan { out }) => plan(&cfg, out),
        None => serve(cfg),
    }
}

fn plan(cfg: &ArbiterConfig, out: Option<PathBuf>) -> Result<(), ArbiterError> {
    // The plan checks devices against NVML when it is there, whatever the running source is.
    let nvml = if cfg.gpu.source == GpuSourceKind::Nvml {
        let p = NvmlProbe::open(cfg.gpu.nvml_library.as_deref());
        if p.loaded() {
            match p.read_blocking() {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("NVML read failed ({e}); planning from the config alone");
                    None
                }
            }
        } else {
            None
        }
    } else {
        None
    };
    let plan = super::plan::plan(cfg, nvml.as_deref())?;
    println!("{}", plan.render().trim_end());
    if let Some(dir) = out {
        for p in plan.write(&dir)? {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}

fn serve(cfg: ArbiterConfig) -> Result<(), ArbiterError> {
    let rt = okome_core::runtime::control().map_err(|source| ArbiterError::Io {
        context: "cannot start the runtime".into(),
        source,
    })?;
    let listen = cfg.listen;
    rt.block_on(async move {
        log::info!(
            "{}: {} engine(s), gpu source {}, interval {}",
            cfg.path.display(),
            cfg.engines.len(),
            cfg.gpu.source.as_str(),
            cfg.interval
        );
        let handle = super::api::start(cfg, listen)
            .await
            .map_err(|source| ArbiterError::Io {
                context: format!("cannot listen on {listen}"),
                source,
            })?;
        okome_core::runtime::shutdown_signal().await;
        log::info!("arbiter stopping");
        handle.shutdown().await;
        Ok(())
    })
}
