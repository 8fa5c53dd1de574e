//! The tree: which nodes each directory holds, each node's attributes, lookups and listings.

use super::*;

use std::os::unix::ffi::OsStrExt;

impl VirtSnapFs {
    pub(super) fn snapshot_exists(
        &self,
        model: &DomainModel,
        snapshot: &str,
    ) -> Result<(), FsError> {
        match model.snapshot(snapshot) {
            Some(_) => Ok(()),
            None => Err(fs_err!(
                NotFound,
                "domain {}: no snapshot {snapshot}",
                model.name
            )),
        }
    }

    pub(super) fn live_disk<'a>(
        &self,
        model: &'a DomainModel,
        target: &str,
    ) -> Result<&'a DiskModel, FsError> {
        model
            .disks
            .iter()
            .find(|d| d.target == target)
            .ok_or_else(|| fs_err!(NotFound, "domain {}: no disk {target}", model.name))
    }

    pub(super) fn snapshot_disk<'a>(
        &self,
        model: &'a DomainModel,
        snapshot: &str,
        target: &str,
    ) -> Result<&'a DiskModel, FsError> {
        model
            .snapshot(snapshot)
            .and_then(|s| s.disks.iter().find(|d| d.target == target))
            .ok_or_else(|| {
                fs_err!(
                    NotFound,
                    "domain {}: snapshot {snapshot} has no disk {target}",
                    model.name
                )
            })
    }

    pub(super) fn dir_attr(&self, ino: u64, mtime: SystemTime) -> Attr {
        Attr {
            uid: self.options.uid,
            gid: self.options.gid,
            ..Attr::plain(ino, NodeKind::Directory, 0o755, mtime)
        }
    }

    pub(super) fn bytes_attr(&self, ino: u64, len: usize, mtime: SystemTime) -> Attr {
        Attr {
            size: len as u64,
            allocated: len as u64,
            uid: self.options.uid,
            gid: self.options.gid,
            ..Attr::plain(ino, NodeKind::File, 0o444, mtime)
        }
    }

    /// A disk's (size, allocated bytes).
    pub(super) fn chain_sizes(chain: &Chain) -> (u64, u64) {
        (
            chain.size(),
            chain.allocated_bytes().unwrap_or_else(|_| chain.size()),
        )
    }

    /// (size, allocated bytes) of disk `target` of snapshot `snapshot`, remembered. When it
    /// is not known yet, the sizes of other snapshot disks of the domain not known yet are
    /// found with it (see DISK_ATTRS_BATCH); only this disk's failure is logged, as the
    /// others are reported when they are looked at.
    pub(super) fn snapshot_disk_sizes(
        &self,
        model: &DomainModel,
        snapshot: &str,
        target: &str,
    ) -> Result<(u64, u64), FsError> {
        let disk = self.snapshot_disk(model, snapshot, target)?;
        let key = |s: &str, t: &str| ChainKey::Snapshot(model.name.clone(), s.into(), t.into());
        let wanted = (key(snapshot, target), disk.chain.clone());
        if let Some(&sizes) = self.disk_attrs.lock().get(&wanted) {
            return Ok(sizes);
        }
        let mut batch = vec![wanted];
        {
            let known = self.disk_attrs.lock();
            let others = model.snapshots.iter().flat_map(|s| {
                s.disks
                    .iter()
                    .map(move |d| (s.name.as_str(), d))
                    .filter(|(s, d)| (*s, d.target.as_str()) != (snapshot, target))
            });
            for (s, d) in others {
                if batch.len() >= DISK_ATTRS_BATCH {
                    break;
                }
                let other = (key(s, &d.target), d.chain.clone());
                if !known.contains(&other) {
                    batch.push(other);
                }
            }
        }
        let label = format!("domain {} snapshot {snapshot} disk {target}", model.name);
        let found = crate::parallel::on_threads(&batch, DISK_ATTRS_THREADS, 1, |(k, spec)| {
            if *k == batch[0].0 {
                self.chain(k.clone(), spec, None, &label)
                    .map(|c| Self::chain_sizes(&c))
            } else {
                open_chain(spec, self.cache.clone())
                    .map(|c| Self::chain_sizes(&c))
                    .map_err(|e| fs_err!(Io, "{e}"))
            }
        });
        let mut known = self.disk_attrs.lock();
        for (remembered, sizes) in batch.iter().zip(&found) {
            if let Ok(sizes) = sizes {
                known.put(remembered.clone(), *sizes);
            }
        }
        match &found[0] {
            Ok(sizes) => Ok(*sizes),
            Err(e) => Err(fs_err!(Io, "{}", e.message)),
        }
    }

    /// A disk's attributes.
    pub(super) fn disk_attr(
        &self,
        ino: u64,
        (size, allocated): (u64, u64),
        mtime: SystemTime,
    ) -> Attr {
        Attr {
            size,
            allocated,
            uid: self.options.uid,
            gid: self.options.gid,
            ..Attr::plain(ino, NodeKind::File, self.options.disk_mode, mtime)
        }
    }

    pub(super) fn file_mtime(path: &std::path::Path) -> SystemTime {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .unwrap_or(UNIX_EPOCH)
    }

    /// The attributes of a node, checking that it still exists.
    pub(super) fn attr_of(&self, key: &NodeKey) -> Result<Attr, FsError> {
        let ino = self.inodes.ino(key);
        match key {
            NodeKey::Root => Ok(self.dir_attr(ino, self.mounted_at)),
            NodeKey::Domain(d) | NodeKey::Live(d) | NodeKey::Snapshots(d) => {
                self.domain(d)?;
                Ok(self.dir_attr(ino, self.mounted_at))
            }
            NodeKey::DomainXml(d) => {
                let m = self.domain(d)?;
                Ok(self.bytes_attr(ino, m.xml.len(), self.mounted_at))
            }
            NodeKey::Status(d) => {
                self.domain(d)?;
                let len = self.status_text(d).len();
                let mut a = self.bytes_attr(ino, len, SystemTime::now());
                a.volatile = true;
                Ok(a)
            }
            NodeKey::Current(d) => {
                let m = self.domain(d)?;
                let target = self.current_target(&m)?;
                let mut a = self.bytes_attr(ino, target.len(), self.mounted_at);
                a.kind = NodeKind::Symlink;
                a.perm = 0o777;
                Ok(a)
            }
            NodeKey::Snapshot(d, s) => {
                let m = self.domain(d)?;
                self.snapshot_exists(&m, s)?;
                let created = m.snapshot(s).map_or(0, |s| s.creation_time);
                Ok(self.dir_attr(ino, unix_time(created)))
            }
            NodeKey::SnapshotXml(d, s) => {
                let m = self.domain(d)?;
                let snap = m
                    .snapshot(s)
                    .ok_or_else(|| fs_err!(NotFound, "domain {d}: no snapshot {s}"))?;
                Ok(self.bytes_attr(ino, snap.xml.len(), unix_time(snap.creation_time)))
            }
            NodeKey::LiveDisk(d, t) => {
                let m = self.domain(d)?;
                let disk = self.live_disk(&m, t)?;
                let label = format!("domain {d} live disk {t}");
                // A disk that cannot be read fails stat too: the kernel opens files without
                // asking (see `skips_opens`), so an empty file would read as empty.
                let chain = self.chain(
                    ChainKey::Live(d.clone(), t.clone()),
                    &disk.chain,
                    Some(self.options.refresh),
                    &label,
                )?;
                let mtime = Self::file_mtime(&disk.chain.top.path);
                let mut a = self.disk_attr(ino, Self::chain_sizes(&chain), mtime);
                a.volatile = true;
                a.checked_each_read = true;
                Ok(a)
            }
            NodeKey::SnapshotDisk(d, s, t) => {
                let m = self.domain(d)?;
                let created = m.snapshot(s).map_or(0, |s| s.creation_time);
                let sizes = self.snapshot_disk_sizes(&m, s, t)?;
                Ok(self.disk_attr(ino, sizes, unix_time(created)))
            }
            NodeKey::Files(d, s) => self.files_attr(ino, d, s.as_deref()),
            NodeKey::Guest(d, s, v, i, e) => self.guest_getattr(ino, (d, s, v, *i, *e)),
        }
    }

    /// The `current` symlink's target: `snapshots/ROOT/…/CURRENT`, escaped.
    pub(super) fn current_target(&self, model: &DomainModel) -> Result<String, FsError> {
        let current = model
            .current
            .as_deref()
            .ok_or_else(|| fs_err!(NotFound, "domain {}: no current snapshot", model.name))?;
        let path = model.path_to(current).ok_or_else(|| {
            fs_err!(
                NotFound,
                "domain {}: current snapshot {current} is not in the tree",
                model.name
            )
        })?;
        let mut target = String::from(SNAPSHOTS_DIR);
        for name in path {
            target.push('/');
            target.push_str(&names::snapshot_file_name(name));
        }
        Ok(target)
    }

    /// The entries of a directory node (without `.` and `..`).
    pub(super) fn children(&self, key: &NodeKey) -> Result<Vec<(NodeKey, String)>, FsError> {
        let mut out = Vec::new();
        match key {
            NodeKey::Root => {
                for name in self.catalog.domain_names()?.iter() {
                    out.push((NodeKey::Domain(name.clone()), names::domain_file_name(name)));
                }
            }
            NodeKey::Domain(d) => {
                let m = self.domain(d)?;
                out.push((NodeKey::DomainXml(d.clone()), DOMAIN_XML.into()));
                out.push((NodeKey::Status(d.clone()), STATUS_FILE.into()));
                out.push((NodeKey::Live(d.clone()), LIVE_DIR.into()));
                if m.current.is_some() {
                    out.push((NodeKey::Current(d.clone()), CURRENT_LINK.into()));
                }
                out.push((NodeKey::Snapshots(d.clone()), SNAPSHOTS_DIR.into()));
            }
            NodeKey::Live(d) => {
                let m = self.domain(d)?;
                for disk in &m.disks {
                    out.push((
                        NodeKey::LiveDisk(d.clone(), disk.target.clone()),
                        disk_file_name(&disk.target),
                    ));
                }
                out.push((NodeKey::Files(d.clone(), None), FILES_DIR.into()));
            }
            NodeKey::Snapshots(d) => {
                let m = self.domain(d)?;
                for s in m.children(None) {
                    out.push((
                        NodeKey::Snapshot(d.clone(), s.name.clone()),
                        names::snapshot_file_name(&s.name),
                    ));
                }
            }
            NodeKey::Snapshot(d, s) => {
                let m = self.domain(d)?;
                let snap = m
                    .snapshot(s)
                    .ok_or_else(|| fs_err!(NotFound, "domain {d}: no snapshot {s}"))?;
                out.push((
                    NodeKey::SnapshotXml(d.clone(), s.clone()),
                    SNAPSHOT_XML.into(),
                ));
                for disk in &snap.disks {
                    out.push((
                        NodeKey::SnapshotDisk(d.clone(), s.clone(), disk.target.clone()),
                        disk_file_name(&disk.target),
                    ));
                }
                out.push((NodeKey::Files(d.clone(), Some(s.clone())), FILES_DIR.into()));
                for child in m.children(Some(s)) {
                    out.push((
                        NodeKey::Snapshot(d.clone(), child.name.clone()),
                        names::snapshot_file_name(&child.name),
                    ));
                }
            }
            NodeKey::Files(d, s) => return self.files_children(d, s.as_deref()),
            other => {
                return Err(fs_err!(NotADirectory, "{other:?} is not a directory"));
            }
        }
        Ok(out)
    }

    pub(super) fn parent_of(&self, key: &NodeKey) -> NodeKey {
        match key {
            NodeKey::Root | NodeKey::Domain(_) => NodeKey::Root,
            NodeKey::DomainXml(d)
            | NodeKey::Status(d)
            | NodeKey::Live(d)
            | NodeKey::Current(d)
            | NodeKey::Snapshots(d) => NodeKey::Domain(d.clone()),
            NodeKey::LiveDisk(d, _) => NodeKey::Live(d.clone()),
            NodeKey::SnapshotXml(d, s)
            | NodeKey::SnapshotDisk(d, s, _)
            | NodeKey::Files(d, Some(s)) => NodeKey::Snapshot(d.clone(), s.clone()),
            NodeKey::Files(d, None) => NodeKey::Live(d.clone()),
            NodeKey::Guest(..) => self.guest_parent(key),
            NodeKey::Snapshot(d, s) => {
                let parent = self
                    .catalog
                    .domain(d)
                    .ok()
                    .flatten()
                    .and_then(|m| m.snapshot(s).and_then(|s| s.parent.clone()));
                match parent {
                    Some(p) => NodeKey::Snapshot(d.clone(), p),
                    None => NodeKey::Snapshots(d.clone()),
                }
            }
        }
    }

    /// Finds `name` in directory `parent`. Answers only once stray entries are forgotten
    /// ([`KernelCache::forget_stray`]): while the kernel still holds a reverted snapshot's
    /// inode under `live/`, a lookup of the snapshot's real name makes the kernel move that
    /// entry back, which it cannot do while a rename holds its rename lock: `mv` (a rename)
    /// of the snapshot, or any lookup during any rename on the mount, fails with ESTALE.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        self.kernel_cache.read().clone().settle(SETTLE_LIMIT);
        let parent_key = self.key(parent)?;
        if let NodeKey::Guest(d, s, v, i, e) = &parent_key {
            return self.guest_lookup((d, s, v, *i, *e), name.as_bytes());
        }
        let name = name
            .to_str()
            .ok_or_else(|| fs_err!(NotFound, "{name:?}: not UTF-8"))?;
        let child = self
            .children(&parent_key)?
            .into_iter()
            .find(|(_, shown)| shown == name)
            .map(|(k, _)| k)
            .ok_or_else(|| fs_err!(NotFound, "{name}: no such entry"))?;
        self.attr_of(&child)
    }

    /// The kernel got `ino` from a lookup reply (it will FORGET it later).
    pub fn looked_up(&self, ino: u64) {
        self.inodes.looked_up(ino);
    }

    /// The kernel dropped `count` lookups of `ino`: a guest node it no longer holds is
    /// forgotten here too, so walking a large guest tree does not grow the daemon for good.
    pub fn forget(&self, ino: u64, count: u64) {
        self.inodes.forget(ino, count);
        if self.inodes.key(ino).is_none() {
            self.drop_implicit(ino);
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        match self.key(ino).and_then(|key| self.attr_of(&key)) {
            // A file still open on a deleted snapshot: the kernel refreshes its attributes
            // before each read, and the answer is the read's (EIO, saying why).
            Err(e) if e.kind == crate::error::ErrorKind::NotFound => {
                Err(self.kept_handle_error(ino).unwrap_or(e))
            }
            result => result,
        }
    }

    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        Ok(Arc::unwrap_or_clone(self.readdir_from(ino, 0)?))
    }

    /// A directory's entries for a listing request at `offset` (the entries before it are
    /// skipped by the caller): a guest directory read in several requests is read once.
    pub fn readdir_from(&self, ino: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        let key = self.key(ino)?;
        if let NodeKey::Guest(..) = key {
            return self.guest_readdir(ino, &key, offset);
        }
        let children = self.children(&key)?;
        let mut out = vec![
            DirEntry {
                ino,
                kind: NodeKind::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: self.inodes.ino(&self.parent_of(&key)),
                kind: NodeKind::Directory,
                name: "..".into(),
            },
        ];
        for (child, name) in children {
            let kind = match child {
                NodeKey::DomainXml(_)
                | NodeKey::Status(_)
                | NodeKey::SnapshotXml(..)
                | NodeKey::LiveDisk(..)
                | NodeKey::SnapshotDisk(..) => NodeKind::File,
                NodeKey::Current(_) => NodeKind::Symlink,
                _ => NodeKind::Directory,
            };
            out.push(DirEntry {
                ino: self.inodes.ino(&child),
                kind,
                name: name.into(),
            });
        }
        Ok(Arc::new(out))
    }

    pub fn readlink(&self, ino: u64) -> Result<OsString, FsError> {
        match self.key(ino)? {
            NodeKey::Current(d) => Ok(self.current_target(&*self.domain(&d)?)?.into()),
            NodeKey::Guest(d, s, v, i, e) => self.guest_readlink((&d, &s, &v, i, e)),
            other => Err(fs_err!(InvalidArgument, "{other:?} is not a symlink")),
        }
    }
}
