//! The arbiter's errors: every config message names the file, line and key, with numbers.

use std::path::PathBuf;

pub use okome_core::config::LocatedProblem as Problem;

/// Why the arbiter could not load, plan or serve.
#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    /// The config could not be read.
    #[error("{}: cannot read: {source}", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A plan output file could not be written.
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
        /// The parser's message.
        message: String,
    },
    /// The config parses but does not make sense, or its plan does not fit; one entry per problem.
    #[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Every problem found.
        problems: Vec<Problem>,
    },
    /// Binding the listener or building the runtime failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
}
