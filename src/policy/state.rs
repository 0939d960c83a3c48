//! Last known good policy on disk: the snapshot and the key hashes this edge has resolved, so an
//! edge restarted while the control plane is down still serves.

use okome_filters::policy::{Snapshot, TenantPolicy};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

    /// The persisted snapshot, if any.
    pub fn load_snapshot(&self) -> Option<Snapshot> {
        let text = std::fs::read(self.snapshot_path()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The persisted key hashes.
    pub fn load_keys(&self) -> HashMap<String, KnownKey> {
        std::fs::read(self.keys_path())
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default()
    }

    /// Writes the snapshot atomically (temp file + rename).
    pub async fn save_snapshot(&self, s: &Snapshot) {
        self.save(self.snapshot_path(), serde_json::to_vec_pretty(s))
            .await;
    }

    /// Writes the key hashes atomically.
    pub async fn save_keys(&self, keys: &HashMap<String, KnownKey>) {
        self.save(self.keys_path(), serde_json::to_vec(keys)).await;
    }

    async fn save(&self, path: PathBuf, data: serde_json::Result<Vec<u8>>) {
        let Ok(data) = data else { return };
        let tmp = path.with_extension("tmp");
        let res = async {
            tokio::fs::create_dir_all(&self.dir).await?;
            tokio::fs::write(&tmp, data).await?;
            tokio::fs::rename(&tmp, &path).await
        }
        .await;
        if let Err(e) = res {
            log::warn!(
                "cannot persist {}: {e} (last known good policy will not survive a restart)",
                path.display()
            );
        }
    }
}
