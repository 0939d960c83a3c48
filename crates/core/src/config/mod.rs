//! Config building blocks every component shares: durations and sizes as written in YAML,
//! secrets named by file or variable, problems located at file, line and key, file kinds.

mod problem;
pub mod secret;
mod units;

pub use problem::LocatedProblem;
pub use secret::{Secret, SecretSource};
pub use units::{ByteSize, Dur};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;

/// Parses YAML `text` from `file`; on failure the parser's message (with line and column)
/// names the real file instead of its `<input>` label.
pub fn from_yaml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, String> {
    serde_saphyr::from_str(text).map_err(|e| {
        e.to_string()
            .replace("<input>", &file.display().to_string())
    })
}

/// Which component a config file is for; a file may say so with a top-level `kind:` key.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// `okome edge`.
    Edge,
    /// `okome control`.
    Control,
    /// `okome arbiter`.
    Arbiter,
    /// `okome sim`.
    Sim,
}

impl FileKind {
    /// The name written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Edge => "edge",
            FileKind::Control => "control",
            FileKind::Arbiter => "arbiter",
            FileKind::Sim => "sim",
        }
    }
}
