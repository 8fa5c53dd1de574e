//! The filesystem itself, independent of FUSE: a tree of domains, live disks and snapshot
//! trees over a [`crate::backend::Backend`], with every operation returning `Result<_, FsError>`.
//! `crate::fuse` only translates these calls and results to and from the kernel protocol, so
//! everything here is tested without a mount.
//!
//! ```text
//! /DOMAIN/domain.xml             the domain's XML as libvirt has it now
//! /DOMAIN/live/TARGET.raw        each disk as it is now (the whole active chain)
//! /DOMAIN/current                symlink to the current snapshot's directory
//! /DOMAIN/snapshots/NAME/        root snapshots; each snapshot's children nest inside it
//! /DOMAIN/snapshots/NAME/snapshot.xml, TARGET.raw
//! ```
//! See doc/SEMANTICS.md for every path and operation.

pub mod catalog;
pub mod inode;
pub mod names;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::warn;
use lru::LruCache;
use parking_lot::Mutex;

use crate::backend::Backend;
use crate::cache::MetadataCache;
use crate::error::FsError;
use crate::fs_err;
use crate::image::{open_chain, Chain, ChainSpec};
use crate::model::{DiskModel, DomainModel};
use crate::ops::scan::LayoutFetch;
use crate::ops::{OpsOptions, SnapshotOps};
use catalog::Catalog;
use inode::{NodeKey, ROOT_INO};

pub const DOMAIN_XML: &str = "domain.xml";
pub const STATUS_FILE: &str = "status";
pub const LIVE_DIR: &str = "live";
pub const CURRENT_LINK: &str = "current";
pub const SNAPSHOTS_DIR: &str = "snapshots";
pub const SNAPSHOT_XML: &str = "snapshot.xml";
pub const DISK_SUFFIX: &str = ".raw";

/// Opened chains of snapshot disks kept ready (each holds a file descriptor per layer).
const OPEN_CHAINS: usize = 64;
/// Sizes of snapshot disks remembered for `stat` (a few dozen bytes each; they never change).
const DISK_ATTRS: usize = 65_536;
/// A `stat` of a snapshot disk whose size is not known yet finds the sizes of up to this many
/// of the domain's snapshot disks at once, on up to DISK_ATTRS_THREADS threads. `ls -l` of a
/// snapshot tree stats them one after another, and on a cold host each waits on a few small
/// random reads (the snapshot's own L1 table, its L2 tables): found together, they overlap.
const DISK_ATTRS_BATCH: usize = 64;
const DISK_ATTRS_THREADS: usize = 8;
/// Kernel cache lifetime of nodes whose changes the refresher reports as invalidations.
const LONG_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Directory,
    File,
    Symlink,
}

/// A node's attributes, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    /// Changes without libvirt knowing (a live disk written by its guest, the status file):
    /// the kernel must not cache it longer than the refresh interval.
    pub volatile: bool,
    pub size: u64,
    /// Allocated bytes (st_blocks * 512).
    pub allocated: u64,
    pub perm: u16,
    pub mtime: SystemTime,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: NodeKind,
    pub name: OsString,
}

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

#[derive(Debug, Clone)]
pub struct Options {
    /// Permission bits of disk files (default 0400: only the owner reads disks).
    pub disk_mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// How long a domain's model, and a live disk's chain for `stat`, are reused.
    pub refresh: Duration,
    pub cache_bytes: usize,
    pub ops: OpsOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            disk_mode: 0o400,
            uid: 0,
            gid: 0,
            refresh: Duration::from_secs(1),
            cache_bytes: crate::cache::DEFAULT_CACHE_BYTES,
            ops: OpsOptions::default(),
        }
    }
}

enum Handle {
    Disk {
        chain: Arc<Chain>,
        label: String,
        /// Set for live disks, whose bytes an operation on the domain replaces.
        live: Option<LiveHandle>,
    },
    Bytes(Arc<[u8]>),
}

/// A domain's change counter. Odd while a snapshot operation on the domain runs; it moves on
/// by one when the operation starts and again when it ends, and by two when the refresher
/// finds that libvirt changed the domain.
type ChangeCounter = Arc<AtomicU64>;

/// What a handle open on `live/TARGET.raw` needs to follow the disk: an open handle reads
/// the disk as it is at each read, as a handle on a block device does. Its chain is opened
/// again at the first read after the domain changed, and a read that overlaps an operation
/// waits for it to end, so every read returns the bytes of one state, never a mix.
#[derive(Clone)]
struct LiveHandle {
    domain: String,
    target: String,
    changes: ChangeCounter,
    /// The counter's value when `chain` was opened.
    opened_at: u64,
}

/// How often a live disk's read starts again because an operation began during it.
const LIVE_READ_TRIES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ChainKey {
    Live(String, String),
    Snapshot(String, String, String),
}

struct ChainEntry {
    spec: ChainSpec,
    opened: Instant,
    result: Result<Arc<Chain>, String>,
}

/// The kernel's caches of names, attributes and pages, which must forget what an operation
/// changed. The FUSE adapter implements it with fuser's Notifier.
pub trait KernelCache: Send + Sync {
    /// Makes the kernel forget `inodes`' attributes and cached pages before it returns (so
    /// a handle held open reads the new bytes as soon as the operation's reply arrives), and
    /// hands over `entries` to forget without waiting for them: the kernel holds directory
    /// locks while it waits for the reply of mkdir, rename and rmdir, and forgetting an
    /// entry takes its directory's lock. Forgetting pages waits for reads in flight, so the
    /// caller must hold nothing those reads wait for (a domain's operation lock).
    fn invalidate(&self, entries: Vec<(u64, OsString)>, inodes: Vec<u64>);
    /// Waits until everything handed to [`KernelCache::invalidate`] so far has reached the
    /// kernel, or `limit` has passed (the request being answered may itself hold a lock that
    /// an invalidation waits for; the limit keeps that from becoming a deadlock).
    fn settle(&self, _limit: Duration) {}
}

struct NoKernelCache;

impl KernelCache for NoKernelCache {
    fn invalidate(&self, _entries: Vec<(u64, OsString)>, _inodes: Vec<u64>) {}
}

/// How long a lookup waits for earlier invalidations to reach the kernel. They take
/// microseconds once the request that caused them has finished; the limit only matters when
/// the lookup's own request holds a lock an invalidation needs.
const SETTLE_LIMIT: Duration = Duration::from_millis(250);

/// Whether a snapshot operation can change which entries a domain's tree has: a revert keeps
/// every name where it was (only bytes and the current snapshot change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TreeShape {
    Kept,
    Changed,
}

pub struct VirtSnapFs {
    catalog: Catalog,
    ops: SnapshotOps,
    kernel_cache: parking_lot::RwLock<Arc<dyn KernelCache>>,
    inodes: inode::InodeTable,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    chains: Mutex<LruCache<ChainKey, ChainEntry>>,
    /// (size, allocated bytes) of snapshot disks, so `ls -l` of many snapshots opens nothing.
    disk_attrs: Mutex<LruCache<(ChainKey, ChainSpec), (u64, u64)>>,
    /// What the last open of each disk served, to decide whether its cached pages are valid.
    served: Mutex<HashMap<ChainKey, String>>,
    /// Each domain's change counter, for the live-disk handles that follow it.
    changes: Mutex<HashMap<String, ChangeCounter>>,
    cache: Arc<MetadataCache>,
    options: Options,
    mounted_at: SystemTime,
    refresher_running: std::sync::atomic::AtomicBool,
}

fn unix_time(seconds: i64) -> SystemTime {
    match u64::try_from(seconds) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

fn disk_file_name(target: &str) -> String {
    format!("{target}{DISK_SUFFIX}")
}

impl VirtSnapFs {
    pub fn new(backend: Arc<dyn Backend>, options: Options) -> VirtSnapFs {
        let cache = Arc::new(MetadataCache::new(options.cache_bytes));
        VirtSnapFs {
            catalog: Catalog::new(backend.clone(), options.refresh),
            ops: SnapshotOps::new(backend, options.ops.clone(), cache.clone()),
            kernel_cache: parking_lot::RwLock::new(Arc::new(NoKernelCache)),
            inodes: inode::InodeTable::new(),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            chains: Mutex::new(LruCache::new(
                NonZeroUsize::new(OPEN_CHAINS).expect("nonzero"),
            )),
            served: Mutex::new(HashMap::new()),
            changes: Mutex::new(HashMap::new()),
            disk_attrs: Mutex::new(LruCache::new(
                NonZeroUsize::new(DISK_ATTRS).expect("nonzero"),
            )),
            cache,
            options,
            mounted_at: SystemTime::now(),
            refresher_running: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    fn key(&self, ino: u64) -> Result<NodeKey, FsError> {
        self.inodes
            .key(ino)
            .ok_or_else(|| fs_err!(NotFound, "inode {ino} is not known"))
    }

    fn domain(&self, name: &str) -> Result<Arc<DomainModel>, FsError> {
        self.catalog
            .domain(name)?
            .ok_or_else(|| fs_err!(NotFound, "no domain {name}"))
    }

    fn snapshot_exists(&self, model: &DomainModel, snapshot: &str) -> Result<(), FsError> {
        match model.snapshot(snapshot) {
            Some(_) => Ok(()),
            None => Err(fs_err!(
                NotFound,
                "domain {}: no snapshot {snapshot}",
                model.name
            )),
        }
    }

    fn live_disk<'a>(
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

    fn snapshot_disk<'a>(
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

    /// The opened chain for a disk. `max_age` None reuses a chain opened for the same spec
    /// whatever its age (snapshot disks never change); Some(age) reopens an older one.
    fn chain(
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

    fn dir_attr(&self, ino: u64, mtime: SystemTime) -> Attr {
        Attr {
            ino,
            kind: NodeKind::Directory,
            volatile: false,
            size: 0,
            allocated: 0,
            perm: 0o755,
            mtime,
            uid: self.options.uid,
            gid: self.options.gid,
        }
    }

    fn bytes_attr(&self, ino: u64, len: usize, mtime: SystemTime) -> Attr {
        Attr {
            ino,
            kind: NodeKind::File,
            volatile: false,
            size: len as u64,
            allocated: len as u64,
            perm: 0o444,
            mtime,
            uid: self.options.uid,
            gid: self.options.gid,
        }
    }

    /// A disk's (size, allocated bytes). A chain that cannot be opened shows as an empty file
    /// (the error is logged, and open() reports it as EIO), so `ls` of the rest keeps working.
    fn disk_sizes(chain: &Result<Arc<Chain>, FsError>) -> (u64, u64) {
        match chain {
            Ok(c) => Self::chain_sizes(c),
            Err(_) => (0, 0),
        }
    }

    fn chain_sizes(chain: &Chain) -> (u64, u64) {
        (
            chain.size(),
            chain.allocated_bytes().unwrap_or_else(|_| chain.size()),
        )
    }

    /// (size, allocated bytes) of disk `target` of snapshot `snapshot`, remembered. When it
    /// is not known yet, the sizes of other snapshot disks of the domain not known yet are
    /// found with it (see DISK_ATTRS_BATCH); only this disk's failure is logged, as the
    /// others are reported when they are looked at.
    fn snapshot_disk_sizes(
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
        Ok(found[0].as_ref().copied().unwrap_or((0, 0)))
    }

    /// A disk's attributes.
    fn disk_attr(&self, ino: u64, (size, allocated): (u64, u64), mtime: SystemTime) -> Attr {
        Attr {
            ino,
            kind: NodeKind::File,
            volatile: false,
            size,
            allocated,
            perm: self.options.disk_mode,
            mtime,
            uid: self.options.uid,
            gid: self.options.gid,
        }
    }

    fn file_mtime(path: &std::path::Path) -> SystemTime {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .unwrap_or(UNIX_EPOCH)
    }

    /// The attributes of a node, checking that it still exists.
    fn attr_of(&self, key: &NodeKey) -> Result<Attr, FsError> {
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
                let chain = self.chain(
                    ChainKey::Live(d.clone(), t.clone()),
                    &disk.chain,
                    Some(self.options.refresh),
                    &label,
                );
                let mtime = Self::file_mtime(&disk.chain.top.path);
                let mut a = self.disk_attr(ino, Self::disk_sizes(&chain), mtime);
                a.volatile = true;
                Ok(a)
            }
            NodeKey::SnapshotDisk(d, s, t) => {
                let m = self.domain(d)?;
                let created = m.snapshot(s).map_or(0, |s| s.creation_time);
                let sizes = self.snapshot_disk_sizes(&m, s, t)?;
                Ok(self.disk_attr(ino, sizes, unix_time(created)))
            }
        }
    }

    /// The `current` symlink's target: `snapshots/ROOT/…/CURRENT`, escaped.
    fn current_target(&self, model: &DomainModel) -> Result<String, FsError> {
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
    fn children(&self, key: &NodeKey) -> Result<Vec<(NodeKey, String)>, FsError> {
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
                for child in m.children(Some(s)) {
                    out.push((
                        NodeKey::Snapshot(d.clone(), child.name.clone()),
                        names::snapshot_file_name(&child.name),
                    ));
                }
            }
            other => {
                return Err(fs_err!(NotADirectory, "{other:?} is not a directory"));
            }
        }
        Ok(out)
    }

    fn parent_of(&self, key: &NodeKey) -> NodeKey {
        match key {
            NodeKey::Root | NodeKey::Domain(_) => NodeKey::Root,
            NodeKey::DomainXml(d)
            | NodeKey::Status(d)
            | NodeKey::Live(d)
            | NodeKey::Current(d)
            | NodeKey::Snapshots(d) => NodeKey::Domain(d.clone()),
            NodeKey::LiveDisk(d, _) => NodeKey::Live(d.clone()),
            NodeKey::SnapshotXml(d, s) | NodeKey::SnapshotDisk(d, s, _) => {
                NodeKey::Snapshot(d.clone(), s.clone())
            }
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

    /// Finds `name` in directory `parent`. Answers only once earlier invalidations have
    /// reached the kernel: a revert answered with success makes the kernel move the snapshot's
    /// directory entry onto `live/NAME`, a place where the tree has no such entry, and until
    /// that entry is forgotten the kernel holds the snapshot's inode in two places. A lookup
    /// of the snapshot's real name answered then makes the kernel move the stray entry back,
    /// which it cannot do while a rename holds its rename lock: `mv` (a rename) of the
    /// snapshot, or any lookup during any rename on the mount, fails with ESTALE.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        self.kernel_cache.read().clone().settle(SETTLE_LIMIT);
        let parent_key = self.key(parent)?;
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

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let key = self.key(ino)?;
        self.attr_of(&key)
    }

    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let key = self.key(ino)?;
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
        Ok(out)
    }

    pub fn readlink(&self, ino: u64) -> Result<OsString, FsError> {
        match self.key(ino)? {
            NodeKey::Current(d) => Ok(self.current_target(&*self.domain(&d)?)?.into()),
            other => Err(fs_err!(InvalidArgument, "{other:?} is not a symlink")),
        }
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
            other => return Err(fs_err!(IsADirectory, "{other:?} is a directory")),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, handle);
        Ok(Opened {
            fh,
            keep_cache,
            direct_io,
        })
    }

    /// The chain of live disk `target` of `domain` as it is now, its label for messages, and
    /// whether pages the kernel cached from the previous open are still right.
    fn open_live_disk(
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
        let files: Vec<std::path::PathBuf> = chain
            .layers()
            .iter()
            .flat_map(|l| std::iter::once(&l.path).chain(l.data_file.as_ref()))
            .cloned()
            .collect();
        let stamp = crate::ops::images::files_stamp(&files);
        let served = format!("{:?}|{files:?}|{stamp:?}", disk.chain);
        let same = self.remember_served(key, served);
        Ok((chain, label, !m.active && same))
    }

    fn change_counter(&self, domain: &str) -> ChangeCounter {
        self.changes
            .lock()
            .entry(domain.to_string())
            .or_default()
            .clone()
    }

    /// Runs `f` on the chain a disk handle reads now. A live disk's handle first waits for
    /// an operation on its domain to end and opens the disk again if the domain changed since;
    /// if an operation starts while `f` runs, `f` runs again on the new state.
    fn with_disk<T>(
        &self,
        fh: u64,
        mut f: impl FnMut(&Chain, &str) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let (mut chain, label, live) = match self.handle(fh)? {
            HandleRef::Disk(chain, label, live) => (chain, label, live),
            HandleRef::Bytes(_) => {
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
                if let Some(Handle::Disk {
                    chain: held,
                    live: Some(h),
                    ..
                }) = self.handles.lock().get_mut(&fh)
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

    fn handle(&self, fh: u64) -> Result<HandleRef, FsError> {
        match self.handles.lock().get(&fh) {
            Some(Handle::Disk { chain, label, live }) => {
                Ok(HandleRef::Disk(chain.clone(), label.clone(), live.clone()))
            }
            Some(Handle::Bytes(b)) => Ok(HandleRef::Bytes(b.clone())),
            None => Err(fs_err!(BadHandle, "file handle {fh} is not open")),
        }
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
        match self.handle(fh)? {
            HandleRef::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = start.saturating_add(buf.len()).min(b.len());
                buf[..end - start].copy_from_slice(&b[start..end]);
                Ok(end - start)
            }
            HandleRef::Disk(..) => self.with_disk(fh, |chain, label| {
                chain
                    .read_at(buf, offset)
                    .map_err(|e| fs_err!(Io, "{label}: read at {offset}: {e}"))
            }),
        }
    }

    /// SEEK_DATA / SEEK_HOLE, so `cp --sparse` and `qemu-img convert` skip holes.
    pub fn lseek(&self, fh: u64, offset: u64, whence: Whence) -> Result<u64, FsError> {
        let past_end = || fs_err!(NoSuchOffset, "offset {offset} is at or past the end");
        match self.handle(fh)? {
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
        }
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().remove(&fh);
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
    fn status_text(&self, domain: &str) -> String {
        format!("{}\n", self.ops.status(domain))
    }

    /// Finishes or undoes the operations an earlier daemon left unfinished (see ops::journal).
    pub fn recover_unfinished_operations(&self) {
        self.ops.recover();
    }

    /// How long the kernel may cache a node's entry and attributes. With the refresher
    /// running, libvirt's changes reach the kernel as invalidations, so only volatile nodes
    /// need the short refresh interval.
    pub fn ttl(&self, attr: &Attr) -> Duration {
        if attr.volatile || !self.refresher_running.load(Ordering::Relaxed) {
            self.options.refresh
        } else {
            LONG_TTL
        }
    }

    /// Records what an open of a disk serves; true when the previous open of the same disk
    /// served the same thing (so pages it left in the kernel's cache are still right).
    fn remember_served(&self, key: ChainKey, served: String) -> bool {
        self.served.lock().insert(key, served.clone()) == Some(served)
    }

    /// Forgets what opens of `domain`'s disks served: after a change, no cached page is kept.
    fn forget_served(&self, domain: &str) {
        self.served.lock().retain(|k, _| match k {
            ChainKey::Live(d, _) | ChainKey::Snapshot(d, _, _) => d != domain,
        });
    }

    /// Whether the kernel may cache directory listings (the refresher invalidates them).
    pub fn cache_listings(&self) -> bool {
        self.refresher_running.load(Ordering::Relaxed)
    }

    /// Starts the thread that checks every loaded domain against libvirt each refresh
    /// interval and tells the kernel what changed (new, removed or moved snapshots, reverts,
    /// redefined disks, domains defined or undefined).
    pub fn start_refresher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let interval = self.options.refresh.max(Duration::from_millis(100));
        self.refresher_running.store(true, Ordering::Relaxed);
        std::thread::spawn(move || loop {
            std::thread::sleep(interval);
            let Some(fs) = weak.upgrade() else {
                return;
            };
            fs.refresh_tick();
        });
    }

    fn refresh_tick(&self) {
        let mut entries = Vec::new();
        let mut inodes = Vec::new();
        if let Some((before, after)) = self.catalog.recheck_names() {
            // The root's cached listing.
            inodes.push(ROOT_INO);
            for gone in before.iter().filter(|n| !after.contains(n)) {
                entries.push((ROOT_INO, OsString::from(names::domain_file_name(gone))));
                inodes.extend(self.inodes.of_domain(gone));
            }
        }
        for domain in self.catalog.loaded_domains() {
            // An operation in progress invalidates when it ends.
            let lock = self.ops.domain_lock(&domain);
            let Some(_guard) = lock.try_lock() else {
                continue;
            };
            if let Some((before, after)) = self.catalog.recheck(&domain) {
                self.forget_served(&domain);
                self.change_counter(&domain).fetch_add(2, Ordering::AcqRel);
                for m in before.iter().chain(after.iter()) {
                    entries.extend(self.cached_entries(m));
                }
                inodes.extend(self.inodes.of_domain(&domain));
            }
        }
        if !entries.is_empty() || !inodes.is_empty() {
            entries.sort();
            entries.dedup();
            self.kernel_cache.read().invalidate(entries, inodes);
        }
    }

    pub fn set_kernel_cache(&self, kernel_cache: Arc<dyn KernelCache>) {
        *self.kernel_cache.write() = kernel_cache;
    }

    /// The (parent inode, name) of every node of the domain's tree as `model` has it, for the
    /// nodes the kernel may have cached.
    fn cached_entries(&self, model: &DomainModel) -> Vec<(u64, OsString)> {
        let d = &model.name;
        let mut out = Vec::new();
        let mut add = |parent: NodeKey, name: String| {
            if let Some(p) = self.inodes.existing(&parent) {
                out.push((p, OsString::from(name)));
            }
        };
        for fixed in [
            DOMAIN_XML,
            STATUS_FILE,
            LIVE_DIR,
            CURRENT_LINK,
            SNAPSHOTS_DIR,
        ] {
            add(NodeKey::Domain(d.clone()), fixed.into());
        }
        for disk in &model.disks {
            add(NodeKey::Live(d.clone()), disk_file_name(&disk.target));
        }
        for s in &model.snapshots {
            let parent = match &s.parent {
                Some(p) => NodeKey::Snapshot(d.clone(), p.clone()),
                None => NodeKey::Snapshots(d.clone()),
            };
            add(parent, names::snapshot_file_name(&s.name));
            add(
                NodeKey::Snapshot(d.clone(), s.name.clone()),
                SNAPSHOT_XML.into(),
            );
            for disk in &s.disks {
                add(
                    NodeKey::Snapshot(d.clone(), s.name.clone()),
                    disk_file_name(&disk.target),
                );
            }
        }
        out
    }

    /// Runs a snapshot operation on `domain` under its lock, then makes the catalog and the
    /// kernel forget everything the operation may have changed in that domain's tree. An
    /// operation of `TreeShape::Changed` may add, remove or move entries, so the entries of
    /// the domain's new model are forgotten too; that model is loaded right away, while a
    /// `TreeShape::Kept` operation (a revert) leaves loading it to the next lookup. For an
    /// operation that `scans_first`, the dependency scan's fetch starts alongside the
    /// reload of the domain, and `op` gets it.
    fn operate<T>(
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
    fn snapshot_dir(key: &NodeKey) -> Option<(String, Option<String>)> {
        match key {
            NodeKey::Snapshot(d, s) => Some((d.clone(), Some(s.clone()))),
            NodeKey::Snapshots(d) => Some((d.clone(), None)),
            _ => None,
        }
    }

    fn decode_name(name: &OsStr) -> Result<String, FsError> {
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
        let Some((domain, parent_name)) = Self::snapshot_dir(&from) else {
            return Err(fs_err!(
                NotPermitted,
                "rename in {}: only snapshot directories can be moved (onto DOMAIN/live to revert, or renamed in place)",
                self.describe(&from)
            ));
        };
        let snapshot = Self::decode_name(name)?;
        let model = self.domain(&domain)?;
        if !model
            .children(parent_name.as_deref())
            .any(|s| s.name == snapshot)
        {
            return Err(fs_err!(
                NotPermitted,
                "rename {snapshot}: only snapshot directories can be moved (onto DOMAIN/live to revert, or renamed in place)"
            ));
        }
        let new = new_name.to_str().unwrap_or_default();
        let extra = vec![
            (parent, name.to_os_string()),
            (new_parent, new_name.to_os_string()),
        ];
        let revert = |extra| {
            let scans_first = SnapshotOps::revert_scans_first(&model, &snapshot);
            self.operate(&domain, extra, TreeShape::Kept, scans_first, |m, fetch| {
                self.ops.revert(m, &snapshot, fetch)
            })
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

    /// rmdir of a snapshot directory deletes the snapshot; its children move up.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let key = self.key(parent)?;
        let Some((domain, parent_name)) = Self::snapshot_dir(&key) else {
            return Err(fs_err!(
                NotPermitted,
                "rmdir in {}: only snapshot directories can be removed",
                self.describe(&key)
            ));
        };
        let snapshot = Self::decode_name(name)?;
        let model = self.domain(&domain)?;
        if !model
            .children(parent_name.as_deref())
            .any(|s| s.name == snapshot)
        {
            return Err(fs_err!(
                NotFound,
                "domain {domain}: no snapshot {snapshot} here"
            ));
        }
        self.operate(
            &domain,
            vec![(parent, name.to_os_string())],
            TreeShape::Changed,
            SnapshotOps::delete_scans_first(&model, &snapshot),
            |m, fetch| self.ops.delete(m, &snapshot, fetch),
        )
    }

    /// unlink: files are read-only, except that removing the fixed files of a snapshot
    /// directory succeeds and changes nothing, so that `rm -r` reaches the rmdir that deletes
    /// the snapshot (children first). The files go when the snapshot does.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
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

    fn describe(&self, key: &NodeKey) -> String {
        match key {
            NodeKey::Root => "the mount root".into(),
            NodeKey::Domain(d) => format!("domain {d}"),
            NodeKey::DomainXml(d) => format!("domain {d} {DOMAIN_XML}"),
            NodeKey::Status(d) => format!("domain {d} {STATUS_FILE}"),
            NodeKey::Live(d) => format!("domain {d} {LIVE_DIR}/"),
            NodeKey::LiveDisk(d, t) => format!("domain {d} live disk {t}"),
            NodeKey::Current(d) => format!("domain {d} {CURRENT_LINK}"),
            NodeKey::Snapshots(d) => format!("domain {d} {SNAPSHOTS_DIR}/"),
            NodeKey::Snapshot(d, s) => format!("domain {d} snapshot {s}"),
            NodeKey::SnapshotXml(d, s) => format!("domain {d} snapshot {s} {SNAPSHOT_XML}"),
            NodeKey::SnapshotDisk(d, s, t) => format!("domain {d} snapshot {s} disk {t}"),
        }
    }

    pub fn root_ino(&self) -> u64 {
        ROOT_INO
    }
}

/// Moves a domain's change counter on when an operation ends, however it ends.
struct ChangeEnds<'a>(&'a AtomicU64);

impl Drop for ChangeEnds<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

enum HandleRef {
    Disk(Arc<Chain>, String, Option<LiveHandle>),
    Bytes(Arc<[u8]>),
}
