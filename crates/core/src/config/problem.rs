//! A config problem with its file, line and key.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a config file, located: `file:line: key: message`. Used by the control
/// plane and the arbiter configs (the edge's own checks carry the file on their error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedProblem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line in that file.
    pub line: u64,
    /// Dotted path of the key, e.g. `keys[2].tenant` or `engines[1].budget`.
    pub key: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for LocatedProblem {
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
