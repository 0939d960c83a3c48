//! Secrets in configs (the control plane's API token, a pool's upstream API key): named by file
//! or environment variable, never written inline, never logged.

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a secret comes from, as written in a config: `{ file: PATH }` or `{ env: VAR }`.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretSource {
    /// A file holding the secret (surrounding whitespace trimmed); relative to the config file.
    File(PathBuf),
    /// An environment variable holding it.
    Env(String),
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {0}: {1}")]
    File(PathBuf, std::io::Error),
    /// The variable is unset or not UTF-8.
    #[error("environment variable {0} is not set")]
    Env(String),
    /// The secret is empty.
    #[error("the secret from {0} is empty")]
    Empty(String),
    /// It could not be sent as `Authorization: Bearer …`.
    #[error("the secret from {0} has characters an HTTP header cannot carry")]
    NotHeaderSafe(String),
}

impl SecretSource {
    /// Reads the secret; a relative file is taken relative to `base` (the config's folder).
    pub fn load(&self, base: Option<&Path>) -> Result<Secret, SecretError> {
        let (value, from) = match self {
            SecretSource::File(p) => {
                let path = match base {
                    Some(b) if p.is_relative() => b.join(p),
                    _ => p.clone(),
                };
                let v = read_small(&path).map_err(|e| SecretError::File(path.clone(), e))?;
                (v, path.display().to_string())
            }
            SecretSource::Env(var) => (
                std::env::var(var).map_err(|_| SecretError::Env(var.clone()))?,
                format!("${var}"),
            ),
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(SecretError::Empty(from));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecretError::NotHeaderSafe(from));
        }
        Ok(Secret(value.to_owned()))
    }
}

/// Largest secret file read: a token or a key is bytes, not megabytes (and `/dev/zero` must
/// not exhaust memory).
const MAX_SECRET_FILE: u64 = 64 * 1024;

fn read_small(path: &Path) -> std::io::Result<String> {
    super::read_text(path, MAX_SECRET_FILE)
}

/// A loaded secret. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value (tests, generated tokens).
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// `Authorization: Bearer <secret>`, marked sensitive (kept out of HPACK tables and logs).
    /// Secrets read from configs are checked to fit a header; one that does not (only possible
    /// through [`Secret::new`]) fails closed to a credential nothing accepts.
    pub fn bearer(&self) -> http::HeaderValue {
        let mut v = http::HeaderValue::from_str(&format!("Bearer {}", self.0))
            .unwrap_or_else(|_| http::HeaderValue::from_static("Bearer invalid-secret"));
        v.set_sensitive(true);
        v
    }

    /// Whether `presented` is this secret. Compares SHA-256 digests, so the time taken does
    /// not depend on how many leading bytes match.
    pub fn matches(&self, presented: &str) -> bool {
        use sha2::Digest;
        sha2::Sha256::digest(presented.as_bytes()) == sha2::Sha256::digest(self.0.as_bytes())
    }

    /// Whether an `Authorization: Bearer …` header value carries this secret.
    pub fn matches_bearer(&self, header: Option<&http::HeaderValue>) -> bool {
        header
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .is_some_and(|t| self.matches(t.trim()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_and_never_print() {
        let s = Secret::new("t0ken");
        assert!(s.matches("t0ken"));
        assert!(!s.matches("t0ke"));
        assert!(s.matches_bearer(Some(&http::HeaderValue::from_static("Bearer t0ken"))));
        assert!(!s.matches_bearer(Some(&http::HeaderValue::from_static("t0ken"))));
        assert!(!s.matches_bearer(None));
        assert!(!format!("{s:?}").contains("t0ken"));
    }

    #[test]
    fn files_are_relative_to_the_config_and_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("tok"), "  abc\n").expect("write");
        let s = SecretSource::File("tok".into()).load(Some(dir.path()));
        assert!(s.is_ok_and(|s| s.matches("abc")));
        std::fs::write(dir.path().join("spaced"), "a b\n").expect("write");
        assert!(SecretSource::File("spaced".into())
            .load(Some(dir.path()))
            .is_err());
        assert_eq!(
            Secret::new("abc").bearer(),
            http::HeaderValue::from_static("Bearer abc")
        );
        std::fs::write(dir.path().join("empty"), "\n").expect("write");
        assert!(SecretSource::File("empty".into())
            .load(Some(dir.path()))
            .is_err());
        assert!(SecretSource::Env("OKOME_SURELY_UNSET_VAR".into())
            .load(None)
            .is_err());
    }
}
