//! Intent records: what a multi-step operation is about to do, written (and fsynced) before
//! its first step and removed after its last, so that an operation cut short (the daemon
//! killed, the host rebooted) is finished or undone at the next mount.
//!
//! One JSON file per operation in the journal directory (default /var/lib/virtsnapfs/journal).
//! Recovery looks at the real state, not at how far the record says it got: every step is
//! idempotent, so finishing an operation again is always safe.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where intent records live unless `-o state_dir=` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/virtsnapfs";

pub struct Journal {
    dir: PathBuf,
}

/// A recorded intent, locked (flock) for as long as its operation runs, so that another
/// daemon's recovery never takes over an operation still in progress. Dropping it without
/// [`IntentFile::done`] leaves the record for recovery.
pub struct IntentFile {
    path: PathBuf,
    _lock: std::fs::File,
}

/// Writes `value` to `path` durably; returns the file, locked. The lock is taken before the
/// rename that makes the record visible.
fn write_locked(path: &Path, value: &Value) -> std::io::Result<std::fs::File> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.lock()?;
    f.write_all(serde_json::to_string_pretty(value)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(f)
}

impl Journal {
    pub fn new(state_dir: &Path) -> Journal {
        Journal {
            dir: state_dir.join("journal"),
        }
    }

    /// Records `intent` before the operation starts.
    pub fn record(&self, intent: &Value) -> std::io::Result<IntentFile> {
        std::fs::create_dir_all(&self.dir)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = self
            .dir
            .join(format!("{stamp}-{}.json", std::process::id()));
        let lock = write_locked(&path, intent)?;
        Ok(IntentFile { path, _lock: lock })
    }

    /// Every record left by operations that did not finish and that no running daemon holds,
    /// oldest first, each with its file kept locked while the caller recovers it.
    pub fn pending(&self) -> Vec<(PathBuf, std::fs::File, Result<Value, String>)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .filter_map(|p| {
                let file = std::fs::File::open(&p).ok()?;
                // Held by a live daemon: its operation is still running.
                file.try_lock().ok()?;
                let value = std::fs::read_to_string(&p)
                    .map_err(|e| e.to_string())
                    .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()));
                Some((p, file, value))
            })
            .collect()
    }
}

impl IntentFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The operation finished: forget it.
    pub fn done(self) {
        forget(&self.path);
    }
}

/// Removes a record (after recovery handled it), then its step marks.
pub fn forget(path: &Path) {
    let _ = std::fs::remove_file(path);
    remove_marks(path);
}

/// Marks `step` of the operation recorded at `record` as done, durably. For a step that must
/// not be repeated once done, recovery asks [`is_marked`] instead of judging from the images:
/// a block commit whose base the guest has written to since the pivot, committed again,
/// would put the overlay's old data over the guest's newer writes.
pub fn mark(record: &Path, step: &str) -> std::io::Result<()> {
    std::fs::File::create(mark_path(record, step))?.sync_all()?;
    if let Some(dir) = record.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Whether [`mark`] recorded `step` of the operation recorded at `record`.
pub fn is_marked(record: &Path, step: &str) -> bool {
    mark_path(record, step).exists()
}

/// `1234-56.json`'s mark of step `step` is `1234-56.mark-STEP` (other bytes than ASCII
/// letters, digits and `-` written as `_`). Recovery reads only `.json` files, so a mark
/// left behind by a crash between removing a record and its marks is ignored.
fn mark_path(record: &Path, step: &str) -> PathBuf {
    let step: String = step
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    record.with_extension(format!("mark-{step}"))
}

fn remove_marks(record: &Path) {
    let (Some(dir), Some(stem)) = (record.parent(), record.file_stem()) else {
        return;
    };
    let prefix = format!("{}.mark-", stem.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Test hook: `VIRTSNAPFS_CRASH_AT=STEP` makes the daemon abort at that step, as `kill -9`
/// would, so tests can check recovery after every step of every operation. Every crash point
/// is also a pause point (see [`pause_point`]).
pub fn crash_point(step: &str) {
    pause_point(step);
    if std::env::var("VIRTSNAPFS_CRASH_AT").is_ok_and(|s| s == step) {
        log::error!("VIRTSNAPFS_CRASH_AT={step}: aborting here");
        std::process::abort();
    }
}

/// Test hook: `VIRTSNAPFS_PAUSE_AT=STEP` with `VIRTSNAPFS_PAUSE_DIR=DIR` makes the operation
/// that reaches STEP create `DIR/paused` and wait (at most 120 s) until `DIR/resume` exists,
/// so that a test can do something at that exact moment (kill libvirtd, say) and then let the
/// operation go on. Only the first operation to reach STEP pauses.
pub fn pause_point(step: &str) {
    if !std::env::var("VIRTSNAPFS_PAUSE_AT").is_ok_and(|s| s == step) {
        return;
    }
    let Some(dir) = std::env::var_os("VIRTSNAPFS_PAUSE_DIR").map(PathBuf::from) else {
        return;
    };
    let paused = dir.join("paused");
    if paused.exists() {
        return;
    }
    log::warn!(
        "VIRTSNAPFS_PAUSE_AT={step}: paused until {} exists",
        dir.join("resume").display()
    );
    if let Err(e) = std::fs::write(&paused, step) {
        log::error!(
            "VIRTSNAPFS_PAUSE_AT={step}: cannot create {}: {e}",
            paused.display()
        );
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !dir.join("resume").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    log::warn!("VIRTSNAPFS_PAUSE_AT={step}: resumed");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pending()` once it lists `n` records, or after two seconds whatever it lists. A lock
    /// is released only when every copy of its file descriptor is closed, and a process that
    /// another test spawns holds copies of this one's between its fork and its exec.
    fn pending_when(j: &Journal, n: usize) -> Vec<(PathBuf, std::fs::File, Result<Value, String>)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let pending = j.pending();
            if pending.len() == n || std::time::Instant::now() > deadline {
                return pending;
            }
            drop(pending);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn records_survive_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        assert!(j.pending().is_empty());
        let a = j.record(&serde_json::json!({"op": "x"})).unwrap();
        let b = j.record(&serde_json::json!({"op": "y"})).unwrap();
        // Both operations are still running (their records are locked).
        assert!(j.pending().is_empty());
        drop(a);
        drop(b);
        let pending = pending_when(&j, 2);
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].2.as_ref().unwrap()["op"], "x");
        drop(pending);
        let c = j.record(&serde_json::json!({"op": "z"})).unwrap();
        c.done();
        assert_eq!(pending_when(&j, 2).len(), 2);
        std::fs::write(dir.path().join("journal/bad.json"), "{").unwrap();
        assert!(j.pending().iter().any(|(_, _, v)| v.is_err()));
    }
}
