//! The control plane's errors: every message an operator sees names the file, line and key.

use std::path::PathBuf;

pub use okome_core::config::LocatedProblem as Problem;

/// Why the control plane could not load, reload, serve or add a key.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file could not be written (the keys file, by `add-key`).
    #[error("{}: cannot write: {source}", .file.display())]
    Write {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not parse or does not fit the schema (the message has line and column).
    #[error("{}: {message}", .file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The YAML parses but makes no sense; one entry per problem.
    #[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Every problem found.
        problems: Vec<Problem>,
    },
    /// A key was to be bound to a tenant the config does not define.
    #[error("unknown tenant {tenant:?} (tenants: {})", .known.join(", "))]
    UnknownTenant {
        /// The tenant asked for.
        tenant: String,
        /// The tenants the config defines.
        known: Vec<String>,
    },
    /// `add-key` needs a keys file to write the hash to.
    #[error("{}: no `keys_file:` set; add e.g. `keys_file: control.keys.yaml` so add-key has somewhere to write the hash", .file.display())]
    NoKeysFile {
        /// The control config.
        file: PathBuf,
    },
    /// A hash that is not 64 hex digits.
    #[error("not a SHA-256 hash (64 hex digits): {0:?}")]
    BadHash(String),
    /// Binding the listener or building the runtime failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file-backed store must be created inside a tokio runtime (its watcher runs there).
    #[error(
        "YamlStore::load must be called inside a tokio runtime (the file watcher is spawned on it)"
    )]
    NoRuntime,
}
