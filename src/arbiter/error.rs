//! The arbiter's errors: every config message names the file, line and key, with numbers.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with `arbiter.yaml` or its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line in that file (1 when the key was defaulted).
    pub line: u64,
    /// Dotted path of the key, e.g. `engines[1].budget`.
    pub key: String,
    /// What is wrong, with the numbers that do not fit.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.key,
            self.message
        )
    }
}

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
