//! Open files: disks read through their image chains (cached per disk), the XML and status
//! files as bytes, and the handles that follow a live disk across snapshot operations.

use super::*;

/// How `lseek` was asked to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    Data,
    Hole,
}

/// What an open() returns: the handle, whether the kernel may keep cached pages, and whether
/// reads must bypass the page cache (contents whose size changes, like `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    pub keep_cache: bool,
    pub direct_io: bool,
}

pub(super) enum Handle {
    Disk {
        chain: Arc<Chain>,
        label: String,
        /// Set for live disks, whose bytes an operation on the domain replaces.
        live: Option<LiveHandle>,
    },
    Bytes(Arc<[u8]>),
    /// A guest regular file under `files/`: its view and inode, and for `live/` the
    /// domain's change counter and its value when the view was opened.
    Guest {
        view: Arc<files::View>,
        ino: u64,
        live: Option<(ChangeCounter, u64)>,
    },
}

/// Whether handles open on a snapshot's disk or guest files may still read. Cleared when the
/// snapshot's deletion begins: its merge may rewrite the very images such a handle reads, so
/// from then on the handle's reads fail with EIO instead of returning another state's bytes.
/// Set again if the deletion fails.
pub(super) type Readable = Arc<std::sync::atomic::AtomicBool>;

/// A domain's change counter. Odd while a snapshot operation on the domain runs; it moves on
/// by one when the operation starts and again when it ends, and by two when the refresher
/// finds that libvirt changed the domain.
pub(super) type ChangeCounter = Arc<AtomicU64>;

/// What a handle open on `live/TARGET.raw` needs to follow the disk: an open handle reads
/// the disk as it is at each read, as a handle on a block device does. Its chain is opened
/// again at the first read after the domain changed, and a read that overlaps an operation
/// waits for it to end, so every read returns the bytes of one state, never a mix.
#[derive(Clone)]
pub(super) struct LiveHandle {
    domain: String,
    target: String,
    changes: ChangeCounter,
    /// The counter's value when `chain` was opened.
    opened_at: u64,
}

/// A handle the daemon opened itself for the reads of one inode. When the kernel skips
/// open and release ([`VirtSnapFs::skips_opens`]), reads name only the inode: what an open
/// would have resolved is resolved at the first read and kept while it is still right.
pub(super) struct ImplicitHandle {
    fh: u64,
    /// The domain's change counter when it was opened: any snapshot operation or change
    /// found by the refresher makes it stale.
    counter: u64,
    opened: Instant,
    /// A live node (live disk, live guest file, domain XML, status): stale after the
    /// refresh interval too, as a disk in use changes without libvirt saying so.
    live: bool,
    /// A live disk's image files and their mtimes and sizes when it was opened: stale as
    /// soon as one changes (a write by the guest or by any tool), as an open was.
    files: Vec<std::path::PathBuf>,
    stamp: Vec<crate::ops::images::FileStamp>,
}

/// At most this many implicit handles are kept; the least recently read is released.
pub(super) const IMPLICIT_HANDLES: usize = 256;

/// The files a chain reads: each layer's image and its external data file.
pub(super) fn chain_files(chain: &Chain) -> Vec<std::path::PathBuf> {
    chain
        .layers()
        .iter()
        .flat_map(|l| std::iter::once(&l.path).chain(l.data_file.as_ref()))
        .cloned()
        .collect()
}

/// How often a live disk's read starts again because an operation began during it.
pub(super) const LIVE_READ_TRIES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum ChainKey {
    Live(String, String),
    Snapshot(String, String, String),
}

pub(super) struct ChainEntry {
    spec: ChainSpec,
    opened: Instant,
    result: Result<Arc<Chain>, String>,
}

/// Moves a domain's change counter on when an operation ends, however it ends.
pub(super) struct ChangeEnds<'a>(pub(super) &'a AtomicU64);

impl Drop for ChangeEnds<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

pub(super) enum HandleRef {
    Disk(Arc<Chain>, String, Option<LiveHandle>),
    Bytes(Arc<[u8]>),
    Guest(Arc<files::View>, u64, Option<(ChangeCounter, u64)>),
}

impl VirtSnapFs {
    /// The opened chain for a disk. `max_age` None reuses a chain opened for the same spec
    /// whatever its age (snapshot disks never change); Some(age) reopens an older one.
    pub(super) fn chain(
        &self,
        key: ChainKey,
        spec: &ChainSpec,
        max_age: Option<Duration>,
        label: &str,
    ) -> Result<Arc<Chain>, FsError> {
        if let Some(entry) = self.chains.lock().get(&key) {
            let fresh = max_age.is_none_or(|age| entry.opened.elapsed() < age);
            if entry.spec == *spec && fresh {
                return entry
                    .result
                    .clone()
                    .map_err(|e| fs_err!(Io, "{label}: {e}"));
            }
        }
        let result = open_chain(spec, self.cache.clone())
            .map(Arc::new)
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            warn!("{label}: cannot be read: {e}");
        }
        self.chains.lock().put(
            key,
            ChainEntry {
                spec: spec.clone(),
                opened: Instant::now(),
                result: result.clone(),
            },
        );
        result.map_err(|e| fs_err!(Io, "{label}: {e}"))
    }

    /// Opens a file for reading. Writing is refused: served disks are read-only views.
    pub fn open(&self, ino: u64, write: bool) -> Result<Opened, FsError> {
        let key = self.key(ino)?;
        if write {
            return Err(fs_err!(
                ReadOnly,
                "{}: virtsnapfs serves disks and XML read-only; copy the file to change it",
                self.describe(&key)
            ));
        }
        let mut direct_io = false;
        let (handle, keep_cache) = match &key {
            NodeKey::DomainXml(d) => {
                let m = self.domain(d)?;
                (Handle::Bytes(Arc::from(m.xml.as_bytes())), false)
            }
            NodeKey::Status(d) => {
                self.domain(d)?;
                direct_io = true;
                (
                    Handle::Bytes(Arc::from(self.status_text(d).as_bytes())),
                    false,
                )
            }
            NodeKey::SnapshotXml(d, s) => {
                let m = self.domain(d)?;
                let snap = m
                    .snapshot(s)
                    .ok_or_else(|| fs_err!(NotFound, "domain {d}: no snapshot {s}"))?;
                (Handle::Bytes(Arc::from(snap.xml.as_bytes())), true)
            }
            NodeKey::LiveDisk(d, t) => {
                let changes = self.change_counter(d);
                let opened_at = changes.load(Ordering::Acquire);
                let (chain, label, keep_cache) = self.open_live_disk(d, t)?;
                let live = LiveHandle {
                    domain: d.clone(),
                    target: t.clone(),
                    changes,
                    opened_at,
                };
                let live = Some(live);
                (Handle::Disk { chain, label, live }, keep_cache)
            }
            NodeKey::SnapshotDisk(d, s, t) => {
                let m = self.domain(d)?;
                let disk = self.snapshot_disk(&m, s, t)?;
                let label = format!("domain {d} snapshot {s} disk {t}");
                let key = ChainKey::Snapshot(d.clone(), s.clone(), t.clone());
                let chain = self.chain(key.clone(), &disk.chain, None, &label)?;
                // A snapshot's bytes never change: the kernel may keep the pages it cached, as
                // long as they came from this very snapshot (a snapshot deleted and made again
                // under the same name has the same inode and other bytes).
                let created = m.snapshot(s).map_or(0, |s| s.creation_time);
                let served = format!("{:?}|{created}", disk.chain);
                let same = self.remember_served(key, served);
                (
                    Handle::Disk {
                        chain,
                        label,
                        live: None,
                    },
                    same,
                )
            }
            NodeKey::Current(_) => {
                return Err(fs_err!(
                    InvalidArgument,
                    "the current symlink cannot be opened"
                ))
            }
            NodeKey::Guest(d, s, v, i, e) => self.guest_open((d, s, v, *i, *e))?,
            other => return Err(fs_err!(IsADirectory, "{other:?} is a directory")),
        };
        let readable = match &key {
            NodeKey::SnapshotDisk(d, s, _) => Some(self.snapshot_readable(d, s)),
            NodeKey::Guest(d, Some(s), ..) => Some(self.snapshot_readable(d, s)),
            _ => None,
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, (handle, readable));
        Ok(Opened {
            fh,
            keep_cache,
            direct_io,
        })
    }

    /// The chain of live disk `target` of `domain` as it is now, its label for messages, and
    /// whether pages the kernel cached from the previous open are still right.
    pub(super) fn open_live_disk(
        &self,
        domain: &str,
        target: &str,
    ) -> Result<(Arc<Chain>, String, bool), FsError> {
        let m = self.domain(domain)?;
        let disk = self.live_disk(&m, target)?;
        let label = format!("domain {domain} live disk {target}");
        let key = ChainKey::Live(domain.to_string(), target.to_string());
        // A live disk may be changing: re-read its metadata at every open.
        let chain = self.chain(key.clone(), &disk.chain, Some(Duration::ZERO), &label)?;
        // Pages cached by earlier reads stay valid while the domain is shut off and the
        // same files, unchanged, serve this open as served the previous one.
        // Unchanged mtimes and sizes of the same files mean unchanged bytes.
        let files = chain_files(&chain);
        let stamp = crate::ops::images::files_stamp(&files);
        let served = format!("{:?}|{files:?}|{stamp:?}", disk.chain);
        let same = self.remember_served(key, served);
        Ok((chain, label, !m.active && same))
    }

    pub(super) fn change_counter(&self, domain: &str) -> ChangeCounter {
        self.changes
            .lock()
            .entry(domain.to_string())
            .or_default()
            .clone()
    }

    /// Runs `f` on the chain a disk handle reads now. A live disk's handle first waits for
    /// an operation on its domain to end and opens the disk again if the domain changed since;
    /// if an operation starts while `f` runs, `f` runs again on the new state.
    pub(super) fn with_disk<T>(
        &self,
        fh: u64,
        mut f: impl FnMut(&Chain, &str) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let (mut chain, label, live) = match self.handle(fh)? {
            HandleRef::Disk(chain, label, live) => (chain, label, live),
            HandleRef::Bytes(_) | HandleRef::Guest(..) => {
                return Err(fs_err!(InvalidArgument, "file handle {fh} is not a disk"))
            }
        };
        let Some(mut live) = live else {
            return f(&chain, &label);
        };
        for _ in 0..LIVE_READ_TRIES {
            let now = live.changes.load(Ordering::Acquire);
            if now % 2 == 1 {
                // The operation holds the domain's lock until it has ended.
                drop(self.ops.domain_lock(&live.domain).lock());
                continue;
            }
            if now != live.opened_at {
                chain = self.open_live_disk(&live.domain, &live.target)?.0;
                live.opened_at = now;
                if let Some((
                    Handle::Disk {
                        chain: held,
                        live: Some(h),
                        ..
                    },
                    _,
                )) = self.handles.lock().get_mut(&fh)
                {
                    *held = chain.clone();
                    h.opened_at = now;
                }
                log::debug!("{label}: handle {fh} follows the disk to its new state");
            }
            let result = f(&chain, &label)?;
            if live.changes.load(Ordering::Acquire) == now {
                return Ok(result);
            }
        }
        Err(fs_err!(
            Io,
            "{label}: snapshot operations on the domain kept replacing the disk during the read; read again"
        ))
    }

    /// The flag that handles open on snapshot `snapshot` of `domain` share.
    fn snapshot_readable(&self, domain: &str, snapshot: &str) -> Readable {
        self.readable
            .lock()
            .entry((domain.to_string(), snapshot.to_string()))
            .or_insert_with(|| Arc::new(true.into()))
            .clone()
    }

    /// Stops the reads of every handle open on `snapshot` (its deletion begins). Dropping the
    /// returned guard lets them read again (the deletion failed), unless
    /// [`SnapshotReaders::gone`] says the snapshot was deleted.
    pub(super) fn stop_snapshot_readers(&self, domain: &str, snapshot: &str) -> SnapshotReaders {
        let flag = self.snapshot_readable(domain, snapshot);
        flag.store(false, Ordering::Release);
        SnapshotReaders(Some(flag))
    }

    /// Snapshot `snapshot` of `domain` was deleted: a snapshot made later under its name gets
    /// a flag of its own, while the old handles stay unreadable.
    pub(super) fn snapshot_deleted(&self, domain: &str, snapshot: &str, readers: SnapshotReaders) {
        self.readable
            .lock()
            .remove(&(domain.to_string(), snapshot.to_string()));
        readers.gone();
    }

    /// Fails when the handle's snapshot is being deleted or was deleted since it was opened.
    fn check_readable(fh: u64, readable: &Option<Readable>) -> Result<(), FsError> {
        match readable {
            Some(r) if !r.load(Ordering::Acquire) => Err(fs_err!(
                Io,
                "file handle {fh}: its snapshot is being deleted or was deleted (a merge may rewrite the images it reads); nothing more is read through it"
            )),
            _ => Ok(()),
        }
    }

    /// The handle `fh`, after checking that it may still read.
    pub(super) fn handle(&self, fh: u64) -> Result<HandleRef, FsError> {
        let (handle, readable) = self.handle_and_flag(fh)?;
        Self::check_readable(fh, &readable)?;
        Ok(handle)
    }

    /// Runs `read` on handle `fh`, failing if its snapshot's deletion began before it ended
    /// (its bytes may then come from an image the merge was rewriting).
    fn read_checked<T>(
        &self,
        fh: u64,
        read: impl FnOnce(HandleRef) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let (handle, readable) = self.handle_and_flag(fh)?;
        Self::check_readable(fh, &readable)?;
        let result = read(handle)?;
        Self::check_readable(fh, &readable)?;
        Ok(result)
    }

    fn handle_and_flag(&self, fh: u64) -> Result<(HandleRef, Option<Readable>), FsError> {
        let handles = self.handles.lock();
        let Some((handle, readable)) = handles.get(&fh) else {
            return Err(fs_err!(BadHandle, "file handle {fh} is not open"));
        };
        let handle = match handle {
            Handle::Disk { chain, label, live } => {
                HandleRef::Disk(chain.clone(), label.clone(), live.clone())
            }
            Handle::Bytes(b) => HandleRef::Bytes(b.clone()),
            Handle::Guest { view, ino, live } => HandleRef::Guest(view.clone(), *ino, live.clone()),
        };
        Ok((handle, readable.clone()))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let mut buf = vec![0; size as usize];
        let n = self.read_into(fh, offset, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads up to `buf.len()` bytes at `offset` into `buf` and returns how many, so a caller
    /// can reuse one buffer for every read instead of allocating a megabyte per request.
    pub fn read_into(&self, fh: u64, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        self.read_checked(fh, |handle| match handle {
            HandleRef::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = start.saturating_add(buf.len()).min(b.len());
                buf[..end - start].copy_from_slice(&b[start..end]);
                Ok(end - start)
            }
            HandleRef::Guest(view, ino, live) => Self::guest_read(&view, ino, &live, offset, buf),
            HandleRef::Disk(..) => self.with_disk(fh, |chain, label| {
                chain
                    .read_at(buf, offset)
                    .map_err(|e| fs_err!(Io, "{label}: read at {offset}: {e}"))
            }),
        })
    }

    /// SEEK_DATA / SEEK_HOLE, so `cp --sparse` and `qemu-img convert` skip holes.
    pub fn lseek(&self, fh: u64, offset: u64, whence: Whence) -> Result<u64, FsError> {
        let past_end = || fs_err!(NoSuchOffset, "offset {offset} is at or past the end");
        self.read_checked(fh, |handle| match handle {
            HandleRef::Bytes(b) => {
                let len = b.len() as u64;
                if offset >= len {
                    return Err(past_end());
                }
                Ok(match whence {
                    Whence::Data => offset,
                    Whence::Hole => len,
                })
            }
            HandleRef::Guest(view, ino, live) => {
                Self::guest_lseek(&view, ino, &live, offset, whence)
            }
            HandleRef::Disk(..) => self.with_disk(fh, |chain, label| {
                if offset >= chain.size() {
                    return Err(past_end());
                }
                let io = |e| fs_err!(Io, "{label}: seek: {e}");
                match whence {
                    Whence::Data => chain.next_data(offset).map_err(io)?.ok_or_else(past_end),
                    Whence::Hole => chain.next_hole(offset).map_err(io),
                }
            }),
        })
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }

    /// Whether the kernel is to skip open and release for this mount: it then opens every
    /// file itself, keeping its cached pages, and reads name only the inode (see
    /// [`VirtSnapFs::read_node`]). Each open and close of a file would otherwise cost a
    /// round trip to the daemon: two of the three requests per file of a warm `tar` of a
    /// guest tree. Safe only while the refresher runs, since the kernel's cached pages are
    /// then dropped whenever a disk changes (a snapshot operation, a change libvirt
    /// reports), and with auto_inval_data whenever a file's mtime or size changes.
    pub fn skips_opens(&self) -> bool {
        !self.options.close_to_open && self.refresher_running.load(Ordering::Relaxed)
    }

    /// Reads inode `ino` without a handle of the caller's (the kernel skips opens).
    pub fn read_node(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        self.with_implicit(ino, |fh| self.read_into(fh, offset, buf))
    }

    /// SEEK_DATA / SEEK_HOLE in inode `ino` without a handle of the caller's.
    pub fn lseek_node(&self, ino: u64, offset: u64, whence: Whence) -> Result<u64, FsError> {
        self.with_implicit(ino, |fh| self.lseek(fh, offset, whence))
    }

    /// Runs `f` on the implicit handle of `ino`, again on a fresh one if the handle went
    /// stale while `f` ran (a snapshot operation, or another reader replaced it).
    fn with_implicit<T>(
        &self,
        ino: u64,
        mut f: impl FnMut(u64) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let mut tries = 0;
        loop {
            let (fh, counter) = self.implicit_handle(ino)?;
            match f(fh) {
                Err(_) if tries < 2 && self.implicit_is_stale(ino, fh, counter) => tries += 1,
                result => return result,
            }
        }
    }

    /// The domain change counter that an implicit handle of `key` is checked against.
    fn counter_of(&self, key: &NodeKey) -> u64 {
        key.domain()
            .map_or(0, |d| self.change_counter(d).load(Ordering::Acquire))
    }

    fn implicit_is_stale(&self, ino: u64, fh: u64, counter: u64) -> bool {
        let now = self
            .key(ino)
            .map(|k| self.counter_of(&k))
            .unwrap_or(counter);
        now != counter || self.implicit.lock().peek(&ino).is_none_or(|h| h.fh != fh)
    }

    /// The handle reads of `ino` go through, and the counter it was checked against:
    /// the kept one while it is still right, else one opened now.
    fn implicit_handle(&self, ino: u64) -> Result<(u64, u64), FsError> {
        let key = match self.key(ino) {
            Ok(key) => key,
            // A deleted snapshot's nodes are gone: a handle kept from before answers (EIO,
            // saying why) rather than "no such inode".
            Err(e) => {
                return match self.kept_unreadable(ino) {
                    Some((fh, _)) => Ok((fh, 0)),
                    None => Err(e),
                }
            }
        };
        let counter = self.counter_of(&key);
        let live = matches!(
            key,
            NodeKey::DomainXml(_)
                | NodeKey::Status(_)
                | NodeKey::LiveDisk(..)
                | NodeKey::Guest(_, None, ..)
        );
        let fresh = |h: &ImplicitHandle| {
            h.counter == counter
                && !(h.live && h.opened.elapsed() >= self.options.refresh)
                && (h.files.is_empty() || crate::ops::images::files_stamp(&h.files) == h.stamp)
        };
        let stale = match self.implicit.lock().get(&ino) {
            Some(h) if fresh(h) => return Ok((h.fh, counter)),
            Some(h) => Some(h.fh),
            None => None,
        };
        let opened = match self.open(ino, false) {
            Ok(o) => o.fh,
            // A snapshot deleted since its handle was opened: the old handle answers the
            // reads (EIO, saying why) rather than the lookup's "no such snapshot".
            Err(e) => {
                return match self.kept_unreadable(ino) {
                    Some((fh, _)) => Ok((fh, counter)),
                    None => Err(e),
                }
            }
        };
        let mut map = self.implicit.lock();
        // Another reader may have opened one meanwhile: the first one kept serves both.
        if let Some(h) = map.get(&ino).filter(|h| fresh(h) && Some(h.fh) != stale) {
            let fh = h.fh;
            drop(map);
            self.release(opened);
            return Ok((fh, counter));
        }
        let files = match (&key, self.handle(opened)) {
            (NodeKey::LiveDisk(..), Ok(HandleRef::Disk(chain, ..))) => chain_files(&chain),
            _ => Vec::new(),
        };
        let handle = ImplicitHandle {
            fh: opened,
            counter,
            opened: Instant::now(),
            live,
            stamp: crate::ops::images::files_stamp(&files),
            files,
        };
        let dropped = map.push(ino, handle);
        drop(map);
        if let Some((_, old)) = dropped {
            self.release(old.fh);
        }
        Ok((opened, counter))
    }

    /// Why the implicit handle kept for `ino` may no longer read (its snapshot is being
    /// deleted or was deleted), if it may not.
    pub(super) fn kept_handle_error(&self, ino: u64) -> Option<FsError> {
        self.kept_unreadable(ino).map(|(_, e)| e)
    }

    /// The implicit handle kept for `ino` and why it may no longer read, if it may not. The
    /// one place that decides when a kept handle, not a fresh lookup, answers for an inode
    /// (its key gone, its reopen failing, or its attributes asked for).
    fn kept_unreadable(&self, ino: u64) -> Option<(u64, FsError)> {
        let fh = self.implicit.lock().peek(&ino)?.fh;
        self.handle(fh).err().map(|e| (fh, e))
    }

    /// Releases the implicit handle of an inode the kernel no longer holds.
    pub(super) fn drop_implicit(&self, ino: u64) {
        let dropped = self.implicit.lock().pop(&ino);
        if let Some(h) = dropped {
            self.release(h.fh);
        }
    }

    /// Records what an open of a disk serves; true when the previous open of the same disk
    /// served the same thing (so pages it left in the kernel's cache are still right).
    pub(super) fn remember_served(&self, key: ChainKey, served: String) -> bool {
        self.served.lock().insert(key, served.clone()) == Some(served)
    }

    /// Forgets what opens of `domain`'s disks served: after a change, no cached page is kept.
    pub(super) fn forget_served(&self, domain: &str) {
        self.served.lock().retain(|k, _| match k {
            ChainKey::Live(d, _) | ChainKey::Snapshot(d, _, _) => d != domain,
        });
    }
}

/// Lets the readers of a snapshot read again when dropped, unless [`SnapshotReaders::gone`]
/// said the snapshot was deleted.
pub(super) struct SnapshotReaders(Option<Readable>);

impl SnapshotReaders {
    /// The snapshot is gone: its handles stay unreadable.
    fn gone(mut self) {
        self.0 = None;
    }
}

impl Drop for SnapshotReaders {
    fn drop(&mut self) {
        if let Some(f) = &self.0 {
            f.store(true, Ordering::Release);
        }
    }
}
