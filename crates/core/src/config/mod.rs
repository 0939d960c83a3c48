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
use std::io::Read;
use std::path::Path;

/// Largest config file read (edge, control plane, arbiter, simulator, keys file).
pub const MAX_CONFIG_FILE: u64 = 16 * 1024 * 1024;

/// Largest certificate, key or CA bundle read.
pub const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Reads a file of at most `max` bytes. Only regular files: a FIFO would block the reader
/// forever and a device (`/dev/zero`) would never end, so both are refused before they are
/// opened, and a file that grows past `max` while read is refused too.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or directory is not read)",
        ));
    }
    if meta.len() > max {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("{} bytes, more than the {max} read at most", meta.len()),
        ));
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("more than the {max} bytes read at most"),
        ));
    }
    Ok(buf)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_text(path: &Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path, max)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap_are_read() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("a.yaml");
        std::fs::write(&f, "x: 1\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_text(&f, 100).ok().as_deref(), Some("x: 1\n"));
        let err = read_text(&f, 2)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("more than"), "{err}");
        // A device never ends; a directory is no file.
        let err = read_bounded(Path::new("/dev/zero"), 1 << 20)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("not a regular file")));
        assert!(read_bounded(dir.path(), 100).is_err());
    }
}
