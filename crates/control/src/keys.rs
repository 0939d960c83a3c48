//! API keys: generation, hashing, and adding a key's hash to the keys file.
//!
//! Only SHA-256 hashes are stored; the key itself is printed once by `add-key` and never
//! logged. The edge hashes a presented key with [`hash_key`] and looks the hash up.

use super::config::{parse_keys, ControlPolicy};
use super::error::ControlError;
use rand::RngCore;
use std::io::Write;
use std::path::Path;

/// Prefix of every generated key, so a leaked one is recognisable in secret scanners.
pub const KEY_PREFIX: &str = "okome-";

/// Lowercase hex SHA-256 of the key's bytes: the form stored and looked up. Shared with the
/// edge, which hashes presented keys the same way.
pub use okome_wire::control::hash_key;

/// A new random key: `okome-` followed by 32 random bytes in hex (256 bits from the OS-seeded CSPRNG).
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// Generates a key for `tenant`, appends `- { sha256: "…", tenant: "…" }` to the keys file of
/// the control config at `config_path` (creating the file), and returns the key. The config must
/// be valid and define the tenant. A running control plane picks the new hash up by hot reload.
pub fn add_key(config_path: &Path, tenant: &str) -> Result<String, ControlError> {
    let policy = ControlPolicy::load(config_path)?;
    let known = policy.tenant_ids();
    if !known.iter().any(|t| t == tenant) {
        return Err(ControlError::UnknownTenant {
            tenant: tenant.to_owned(),
            known,
        });
    }
    let Some(keys_path) = policy.keys_path.as_deref() else {
        return Err(ControlError::NoKeysFile {
            file: config_path.to_path_buf(),
        });
    };
    let key = generate_key();
    append_entry(keys_path, &hash_key(&key), tenant)?;
    Ok(key)
}

/// Appends one entry, as a single write so a watcher never sees half a line.
fn append_entry(keys_path: &Path, sha256: &str, tenant: &str) -> Result<(), ControlError> {
    let write_err = |source| ControlError::Write {
        file: keys_path.to_path_buf(),
        source,
    };
    let existing =
        match okome_core::config::read_text(keys_path, okome_core::config::MAX_CONFIG_FILE) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ControlError::Read {
                    file: keys_path.to_path_buf(),
                    source,
                })
            }
        };
    let mut line = String::new();
    match &existing {
        None => line.push_str(
            "# API keys: SHA-256 hashes only, each bound to a tenant. Add one with\n\
             # `okome control add-key --tenant T`; revoke one by deleting its line.\n",
        ),
        Some(t) if !t.is_empty() && !t.ends_with('\n') => line.push('\n'),
        Some(_) => {}
    }
    // A JSON string is a valid YAML double-quoted scalar, so any tenant id is quoted safely.
    let tenant_q =
        serde_json::to_string(tenant).map_err(|e| write_err(std::io::Error::other(e)))?;
    line.push_str(&format!(
        "- {{ sha256: \"{sha256}\", tenant: {tenant_q} }}\n"
    ));
    // Check the result still parses before touching the file.
    let mut after = existing.clone().unwrap_or_default();
    after.push_str(&line);
    parse_keys(keys_path, &after)?;
    use std::os::unix::fs::OpenOptionsExt;
    // Key hashes: a new keys file is readable by the control plane's user only.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(keys_path)
        .map_err(write_err)?;
    f.write_all(line.as_bytes()).map_err(write_err)?;
    f.sync_all().map_err(write_err)
}
