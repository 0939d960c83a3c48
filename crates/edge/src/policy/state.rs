//! Last known good policy on disk: the snapshot and the key hashes this edge has resolved, so an
//! edge restarted while the control plane is down still serves.

use okome_filters::policy::{Snapshot, TenantPolicy};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// A key hash this edge resolved, and when (unix seconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnownKey {
    /// The tenant it belongs to.
    pub tenant: Arc<TenantPolicy>,
    /// When the control plane last vouched for it.
    pub seen_at: u64,
}

/// Files in the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The state directory (created on first write).
    pub fn new(dir: &Path) -> Self {
        StateDir {
            dir: dir.to_path_buf(),
        }
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot.json")
    }

    fn keys_path(&self) -> PathBuf {
        self.dir.join("keys.json")
    }

    /// Reads and parses a state file: `Ok(None)` when there is none yet, an error (to be logged
    /// and counted, never silently taken as "empty") when it cannot be read or parsed.
    fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, String> {
        match std::fs::read(path) {
            Ok(text) => serde_json::from_slice(&text)
                .map(Some)
                .map_err(|e| format!("{}: not valid state: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
        }
    }

    /// The persisted snapshot, if any.
    pub fn load_snapshot(&self) -> Result<Option<Snapshot>, String> {
        Self::load(&self.snapshot_path())
    }

    /// The persisted key hashes (none when the file does not exist yet).
    pub fn load_keys(&self) -> Result<HashMap<String, KnownKey>, String> {
        Self::load(&self.keys_path()).map(Option::unwrap_or_default)
    }

    /// Writes the snapshot atomically (temp file + rename).
    pub async fn save_snapshot(&self, s: &Snapshot) -> bool {
        self.save(self.snapshot_path(), serde_json::to_vec_pretty(s))
            .await
    }

    /// Writes the key hashes atomically. Called by the one key writer, never on a request.
    pub async fn save_keys(&self, keys: &HashMap<String, KnownKey>) -> bool {
        self.save(self.keys_path(), serde_json::to_vec(keys)).await
    }

    /// Writes `path` atomically through a temp file unique to this process, so two edges (or an
    /// old and a new process during an upgrade) sharing a state directory never write the same
    /// temp file. Returns whether it worked (failures are logged).
    async fn save(&self, path: PathBuf, data: serde_json::Result<Vec<u8>>) -> bool {
        let Ok(data) = data else { return false };
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let res = async {
            tokio::fs::create_dir_all(&self.dir).await?;
            // Tenants, limits and key hashes: readable by the edge's user only.
            let mut f = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .await?;
            f.write_all(&data).await?;
            f.sync_all().await?;
            drop(f);
            tokio::fs::rename(&tmp, &path).await
        }
        .await;
        if let Err(e) = res {
            log::warn!(
                "cannot persist {}: {e} (last known good policy will not survive a restart)",
                path.display()
            );
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The reproduction (security round three, 8): the edge's state files were 0644.
    #[tokio::test]
    async fn state_files_are_the_edge_s_alone() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let state = StateDir::new(dir.path());
        assert!(state.save_keys(&HashMap::new()).await);
        let mode = std::fs::metadata(state.keys_path())
            .unwrap_or_else(|e| panic!("{e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
