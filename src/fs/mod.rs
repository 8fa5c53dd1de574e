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
//! /DOMAIN/snapshots/NAME/files/VOLUME/   the guest's files on each filesystem of its disks
//! /DOMAIN/live/files/VOLUME/             the same for the disks as they are now
//! ```
//! See doc/SEMANTICS.md for every path and operation.
//!
//! - `mod.rs`: [`VirtSnapFs`], its options and the names of the fixed entries.
//! - [`attr`]: what `stat` and `readdir` show of a node.
//! - [`tree`]: which nodes each directory holds; lookups, attributes, listings.
//! - [`disks`]: open files, disks read through their image chains.
//! - [`files`]: `files/`, the guest's own files through [`crate::guest`].
//! - [`verbs`]: mkdir, rename and rmdir, which drive [`crate::ops`].
//! - [`kernel`]: what the kernel may cache and what it must forget; the refresher.
//! - [`catalog`]: domain models from libvirt, refreshed; [`inode`]: stable inode numbers;
//!   [`names`]: how libvirt names are shown.

pub mod attr;
pub mod catalog;
pub mod disks;
pub mod files;
pub mod inode;
pub mod kernel;
pub mod names;
pub mod tree;
pub mod verbs;

pub use attr::{Attr, DirEntry, NodeKind};
pub use disks::{Opened, Whence};
pub use kernel::KernelCache;

use disks::{ChainEntry, ChainKey, ChangeCounter, ChangeEnds, Handle, Readable};
use kernel::{NoKernelCache, SETTLE_LIMIT};

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
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
pub const FILES_DIR: &str = "files";

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
    /// Open and close reach the daemon, so every open of a live file sees the disk as it is
    /// at that open (close-to-open freshness) and a write open is refused at once. Off by
    /// default: the kernel then skips both round trips (see [`VirtSnapFs::skips_opens`]).
    pub close_to_open: bool,
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
            close_to_open: false,
        }
    }
}

pub struct VirtSnapFs {
    catalog: Catalog,
    ops: SnapshotOps,
    kernel_cache: parking_lot::RwLock<Arc<dyn KernelCache>>,
    inodes: inode::InodeTable,
    /// Open files, and for a snapshot's disk or guest file whether it may still be read.
    handles: Mutex<HashMap<u64, (Handle, Option<Readable>)>>,
    /// One flag per snapshot that has open handles, cleared while the snapshot is deleted.
    readable: Mutex<HashMap<(String, String), Readable>>,
    next_fh: AtomicU64,
    /// Handles the daemon opened itself, by inode, for reads that come without one.
    implicit: Mutex<LruCache<u64, disks::ImplicitHandle>>,
    chains: Mutex<LruCache<ChainKey, ChainEntry>>,
    /// (size, allocated bytes) of snapshot disks, so `ls -l` of many snapshots opens nothing.
    disk_attrs: Mutex<LruCache<(ChainKey, ChainSpec), (u64, u64)>>,
    /// What the last open of each disk served, to decide whether its cached pages are valid.
    served: Mutex<HashMap<ChainKey, String>>,
    /// Each domain's change counter, for the live-disk handles that follow it.
    changes: Mutex<HashMap<String, ChangeCounter>>,
    cache: Arc<MetadataCache>,
    /// Opened guest filesystems for `files/`.
    guest: files::GuestViews,
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
            readable: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            implicit: Mutex::new(LruCache::new(
                NonZeroUsize::new(disks::IMPLICIT_HANDLES).expect("nonzero"),
            )),
            chains: Mutex::new(LruCache::new(
                NonZeroUsize::new(OPEN_CHAINS).expect("nonzero"),
            )),
            served: Mutex::new(HashMap::new()),
            changes: Mutex::new(HashMap::new()),
            disk_attrs: Mutex::new(LruCache::new(
                NonZeroUsize::new(DISK_ATTRS).expect("nonzero"),
            )),
            cache,
            guest: files::GuestViews::new(),
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
            NodeKey::Files(d, None) => format!("domain {d} {LIVE_DIR}/{FILES_DIR}/"),
            NodeKey::Files(d, Some(s)) => format!("domain {d} snapshot {s} {FILES_DIR}/"),
            NodeKey::Guest(d, None, v, i, _) => {
                format!("domain {d} {LIVE_DIR} volume {v} guest inode {i}")
            }
            NodeKey::Guest(d, Some(s), v, i, _) => {
                format!("domain {d} snapshot {s} volume {v} guest inode {i}")
            }
        }
    }

    pub fn root_ino(&self) -> u64 {
        ROOT_INO
    }
}
