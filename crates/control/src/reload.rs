//! Hot reload: polls the modification time and length of `control.yaml` and its keys file
//! every 250 ms (no inotify crate needed, and it works on every filesystem, including the
//! bind mounts and network shares that config management writes through).

use super::store::{Inner, YamlStore};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

/// How often the files are checked; edges learn of a change within this plus one long-poll wake.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What is compared between polls: per file, its mtime and length (none when missing).
type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn stat(path: &Path) -> Option<(SystemTime, u64)> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.modified().ok()?, md.len()))
}

fn fingerprint(store: &YamlStore) -> Fingerprint {
    store
        .path()
        .map(Path::to_path_buf)
        .into_iter()
        .chain(store.keys_path())
        .map(|p| {
            let s = stat(&p);
            (p, s)
        })
        .collect()
}

/// Spawns the watcher on `handle`; it holds only a weak reference, so it ends with the store.
pub(crate) fn spawn_watcher(store: &YamlStore, handle: &tokio::runtime::Handle) {
    let weak: Weak<Inner> = Arc::downgrade(&store.inner);
    // Taken before the task starts, so a write racing the initial load is still noticed.
    let mut last = fingerprint(store);
    handle.spawn(async move {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { break };
            let store = YamlStore { inner };
            // The fingerprint is taken before reading, so a write still in progress while we
            // read changes it again and is re-read on the next tick.
            let now = fingerprint(&store);
            if now != last {
                last = now;
                // Errors are logged and recorded by reload_now; the last good version stays.
                let _ = store.reload_now();
                // The keys file may have moved with the config: watch the new one from now on.
                last = fingerprint_merge(last, fingerprint(&store));
            }
        }
    });
}

/// Keeps the stats taken before the reload for files already known, and adds newly named ones,
/// so a write landing during the reload is not lost.
fn fingerprint_merge(before: Fingerprint, after: Fingerprint) -> Fingerprint {
    after
        .into_iter()
        .map(|(p, s)| match before.iter().find(|(q, _)| *q == p) {
            Some((_, old)) => (p, *old),
            None => (p, s),
        })
        .collect()
}
