//! `okome control`: serve the control API, or `okome control add-key --tenant T`.

use super::error::ControlError;
use super::store::{PolicyStore, YamlStore};
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `okome control`.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The control plane's config file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        value_name = "FILE",
        default_value = "conf/control.yaml"
    )]
    pub config: PathBuf,
    /// Without a subcommand, serve the control API.
    #[command(subcommand)]
    pub command: Option<ControlCommand>,
}

/// Subcommands of `okome control`.
#[derive(Debug, clap::Subcommand)]
pub enum ControlCommand {
    /// Create an API key for a tenant: prints the key once, stores only its SHA-256 hash.
    AddKey {
        /// The tenant the key belongs to (a tenant id of the config).
        #[arg(long, value_name = "T")]
        tenant: String,
    },
}

/// Runs `okome control`: serves until Ctrl-C / SIGTERM, or adds a key and prints it once.
pub fn run(args: ControlArgs) -> Result<(), ControlError> {
    match args.command {
        Some(ControlCommand::AddKey { tenant }) => {
            let key = super::keys::add_key(&args.config, &tenant)?;
            // stdout only, never the log: this is the one time the key exists outside the client.
            println!("{key}");
            eprintln!(
                "This key for tenant {tenant:?} is shown only once; only its SHA-256 hash was stored. \
                 A running control plane picks it up within a second."
            );
            Ok(())
        }
        None => serve(&args.config),
    }
}

fn serve(config: &std::path::Path) -> Result<(), ControlError> {
    let rt = okome_core::runtime::control().map_err(|source| ControlError::Io {
        context: "cannot start the runtime".into(),
        source,
    })?;
    rt.block_on(async {
        let store = YamlStore::load(config)?;
        let listen = store.listen();
        log::info!(
            "{}: serving version {} ({} tenants, {} routes, {} keys)",
            config.display(),
            store.version(),
            store.current().tenants.len(),
            store.current().snapshot.routes.len(),
            store.current().keys.len()
        );
        let handle = super::api::start(Arc::new(store), listen)
            .await
            .map_err(|source| ControlError::Io {
                context: format!("cannot listen on {listen}"),
                source,
            })?;
        okome_core::runtime::shutdown_signal().await;
        log::info!("control plane stopping");
        handle.shutdown().await;
        Ok(())
    })
}
