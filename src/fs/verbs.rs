//! The shell verbs that drive libvirt: mkdir creates a snapshot, rename onto `live/` reverts
//! or renames, rmdir deletes; each runs under its domain's lock through [`SnapshotOps`], and the
//! kernel then forgets what changed.

use super::*;

/// Whether a snapshot operation can change which entries a domain's tree has: a revert keeps
/// every name where it was (only bytes and the current snapshot change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TreeShape {
    Kept,
    Changed,
}

impl VirtSnapFs {
    /// Runs a snapshot operation on `domain` under its lock, then makes the catalog and the
    /// kernel forget everything the operation may have changed in that domain's tree. An
    /// operation of `TreeShape::Changed` may add, remove or move entries, so the entries of
    /// the domain's new model are forgotten too; that model is loaded right away, while a
    /// `TreeShape::Kept` operation (a revert) leaves loading it to the next lookup. For an
    /// operation that `scans_first`, the dependency scan's fetch starts alongside the
    /// reload of the domain, and `op` gets it.
    pub(super) fn operate<T>(
        &self,
        domain: &str,
        extra: Vec<(u64, OsString)>,
        shape: TreeShape,
        scans_first: bool,
        op: impl FnOnce(&DomainModel, Option<LayoutFetch>) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let lock = self.ops.domain_lock(domain);
        let guard = lock.lock();
        // Odd from here until the caches are cleared: live-disk reads wait (with_disk).
        let changes = self.change_counter(domain);
        changes.fetch_add(1, Ordering::AcqRel);
        let _ended = ChangeEnds(&changes);
        let fetch = scans_first.then(|| self.ops.start_scan());
        self.ops.offer_models(self.catalog.loaded_models());
        let before = self
            .catalog
            .fresh(domain)?
            .ok_or_else(|| fs_err!(NotFound, "no domain {domain}"))?;
        let result = op(&before, fetch);
        self.forget_served(domain);
        self.catalog.invalidate(domain);
        let mut entries = self.cached_entries(&before);
        if shape == TreeShape::Changed {
            if let Ok(Some(after)) = self.catalog.domain(domain) {
                entries.extend(self.cached_entries(&after));
            }
        }
        entries.extend(extra);
        entries.sort();
        entries.dedup();
        // Snapshot disks may now be other chains (after a merge), live disks other bytes.
        self.chains.lock().clear();
        // Reads that waited for the operation go on before the kernel drops their pages.
        drop(_ended);
        drop(guard);
        self.kernel_cache
            .read()
            .invalidate(entries, self.inodes.of_domain(domain));
        result
    }

    /// For a snapshot directory (`snapshots/` or a snapshot): its domain and the snapshot
    /// whose children it lists (None for `snapshots/`).
    pub(super) fn snapshot_dir(key: &NodeKey) -> Option<(String, Option<String>)> {
        match key {
            NodeKey::Snapshot(d, s) => Some((d.clone(), Some(s.clone()))),
            NodeKey::Snapshots(d) => Some((d.clone(), None)),
            _ => None,
        }
    }

    pub(super) fn decode_name(name: &OsStr) -> Result<String, FsError> {
        name.to_str()
            .and_then(names::decode)
            .ok_or_else(|| fs_err!(InvalidArgument, "{name:?} is not a valid name"))
    }

    /// mkdir in the current snapshot's directory (or in `snapshots/` when there is no current
    /// snapshot): creates a snapshot with that name.
    pub fn mkdir(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        let key = self.key(parent)?;
        let Some((domain, in_snapshot)) = Self::snapshot_dir(&key) else {
            return Err(fs_err!(
                NotPermitted,
                "mkdir in {}: snapshots are created with mkdir DOMAIN/current/NAME (or DOMAIN/snapshots/NAME when the domain has no snapshot)",
                self.describe(&key)
            ));
        };
        let snapshot = Self::decode_name(name)?;
        crate::ops::check_snapshot_name(&snapshot)?;
        let model = self.domain(&domain)?;
        if model.current != in_snapshot {
            let here = match &model.current {
                Some(c) => format!(
                    "the current snapshot is {c}: use mkdir {}/current/NAME ({}/{})",
                    domain,
                    domain,
                    self.current_target(&model)?
                ),
                None => format!(
                    "domain {domain} has no current snapshot: use mkdir {domain}/snapshots/NAME"
                ),
            };
            return Err(fs_err!(
                NotPermitted,
                "mkdir {snapshot} in {}: a new snapshot's parent is always the current snapshot; {here}",
                self.describe(&key)
            ));
        }
        self.operate(
            &domain,
            vec![(parent, name.to_os_string())],
            TreeShape::Changed,
            false,
            |m, _| self.ops.create(m, &snapshot),
        )?;
        self.attr_of(&NodeKey::Snapshot(domain, snapshot))
    }

    /// The snapshot `name` that snapshot directory `dir` (a snapshot or `snapshots/`) lists:
    /// (domain, snapshot, the domain's model). `not_a_snapshot_dir` is the error for any other
    /// directory, `not_listed(domain, snapshot)` for a name the directory does not list.
    fn listed_snapshot(
        &self,
        dir: &NodeKey,
        name: &OsStr,
        not_a_snapshot_dir: impl FnOnce() -> FsError,
        not_listed: impl FnOnce(&str, &str) -> FsError,
    ) -> Result<(String, String, Arc<DomainModel>), FsError> {
        let Some((domain, parent_name)) = Self::snapshot_dir(dir) else {
            return Err(not_a_snapshot_dir());
        };
        let snapshot = Self::decode_name(name)?;
        let model = self.domain(&domain)?;
        if !model
            .children(parent_name.as_deref())
            .any(|s| s.name == snapshot)
        {
            return Err(not_listed(&domain, &snapshot));
        }
        Ok((domain, snapshot, model))
    }

    /// rename: a snapshot onto `live` reverts to it; within its directory, renames it.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<(), FsError> {
        let from = self.key(parent)?;
        let to = self.key(new_parent)?;
        let (domain, snapshot, model) = self.listed_snapshot(
            &from,
            name,
            || {
                fs_err!(
                    NotPermitted,
                    "rename in {}: only snapshot directories can be moved (onto DOMAIN/live to revert, or renamed in place)",
                    self.describe(&from)
                )
            },
            |_, snapshot| {
                fs_err!(
                    NotPermitted,
                    "rename {snapshot}: only snapshot directories can be moved (onto DOMAIN/live to revert, or renamed in place)"
                )
            },
        )?;
        let new = new_name.to_str().unwrap_or_default();
        let extra = vec![
            (parent, name.to_os_string()),
            (new_parent, new_name.to_os_string()),
        ];
        let revert = |extra| {
            let scans_first = SnapshotOps::revert_scans_first(&model, &snapshot);
            self.operate(&domain, extra, TreeShape::Kept, scans_first, |m, fetch| {
                self.ops.revert(m, &snapshot, fetch)
            })?;
            // After the reply the kernel moves the snapshot's entry onto the target name.
            let stray = vec![(new_parent, new_name.to_os_string())];
            self.kernel_cache.read().forget_stray(stray);
            Ok(())
        };
        match &to {
            NodeKey::Live(d) if *d == domain => revert(extra),
            NodeKey::Domain(d) if *d == domain && new == LIVE_DIR => revert(extra),
            _ if to == from => {
                let new_snapshot = Self::decode_name(new_name)?;
                self.operate(&domain, extra, TreeShape::Changed, false, |m, _| {
                    self.ops.rename(m, &snapshot, &new_snapshot)?;
                    self.inodes.rename_snapshot(&domain, &snapshot, &new_snapshot);
                    Ok(())
                })
            }
            other => Err(fs_err!(
                InvalidArgument,
                "rename {snapshot} to {}/{new}: a snapshot can be moved onto {domain}/live (revert) or renamed within its own directory, nothing else",
                self.describe(other)
            )),
        }
    }

    /// Whether removing `name` from directory `parent` is one step of `rm -r` of a snapshot
    /// that succeeds and changes nothing: a snapshot's `files/` and everything in it (the
    /// guest's files go when the snapshot does). In `live/files/` removing is refused.
    fn kept_in_snapshot(parent: &NodeKey, name: &OsStr) -> bool {
        match parent {
            NodeKey::Snapshot(..) => name == FILES_DIR,
            NodeKey::Files(_, Some(_)) | NodeKey::Guest(_, Some(_), ..) => true,
            _ => false,
        }
    }

    /// rmdir of a snapshot directory deletes the snapshot; its children move up.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let key = self.key(parent)?;
        if Self::kept_in_snapshot(&key, name) {
            log::debug!(
                "rmdir {name:?} in {}: kept (removed with the snapshot)",
                self.describe(&key)
            );
            return Ok(());
        }
        let (domain, snapshot, model) = self.listed_snapshot(
            &key,
            name,
            || {
                fs_err!(
                    NotPermitted,
                    "rmdir in {}: only snapshot directories can be removed",
                    self.describe(&key)
                )
            },
            |domain, snapshot| fs_err!(NotFound, "domain {domain}: no snapshot {snapshot} here"),
        )?;
        let readers = self.stop_snapshot_readers(&domain, &snapshot);
        self.operate(
            &domain,
            vec![(parent, name.to_os_string())],
            TreeShape::Changed,
            SnapshotOps::delete_scans_first(&model, &snapshot),
            |m, fetch| self.ops.delete(m, &snapshot, fetch),
        )?;
        self.snapshot_deleted(&domain, &snapshot, readers);
        Ok(())
    }

    /// unlink: files are read-only, except that removing the fixed files of a snapshot
    /// directory succeeds and changes nothing, so that `rm -r` reaches the rmdir that deletes
    /// the snapshot (children first). The files go when the snapshot does.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        if let Ok(key) = self.key(parent) {
            if Self::kept_in_snapshot(&key, name) {
                log::debug!(
                    "unlink {name:?} in {}: kept (removed with the snapshot)",
                    self.describe(&key)
                );
                return Ok(());
            }
        }
        if let Ok(NodeKey::Snapshot(d, s)) = self.key(parent) {
            let is_fixed = self
                .children(&NodeKey::Snapshot(d.clone(), s.clone()))?
                .into_iter()
                .any(|(k, shown)| {
                    shown.as_str() == name.to_str().unwrap_or_default()
                        && matches!(k, NodeKey::SnapshotXml(..) | NodeKey::SnapshotDisk(..))
                });
            if is_fixed {
                log::debug!(
                    "unlink {name:?} in snapshot {s} of {d}: kept (removed with the snapshot)"
                );
                return Ok(());
            }
        }
        Err(self.refuse_change(parent, "removing a file"))
    }

    /// Any change to a file's contents or attributes, and any create, link or unlink.
    pub fn refuse_change(&self, ino: u64, what: &str) -> FsError {
        let who = self
            .key(ino)
            .map(|k| self.describe(&k))
            .unwrap_or_else(|_| format!("inode {ino}"));
        fs_err!(
            ReadOnly,
            "{what} on {who} refused: virtsnapfs serves disks and XML read-only; copy a file out to change it"
        )
    }

    /// The `status` file: the running operation's progress, or "idle".
    pub(super) fn status_text(&self, domain: &str) -> String {
        format!("{}\n", self.ops.status(domain))
    }

    /// Finishes or undoes the operations an earlier daemon left unfinished (see ops::journal).
    pub fn recover_unfinished_operations(&self) {
        self.ops.recover();
    }
}
