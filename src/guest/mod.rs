//! The guest's own files: partition tables and filesystems parsed in userspace.
//!
//! Everything here reads untrusted bytes (a guest's disk) through [`ByteSource`] and knows
//! nothing of FUSE or libvirt. Layout:
//!
//! ```text
//! src/guest/
//!   mod.rs          this file: the GuestFs trait, detection (open_filesystem), volumes
//!                   (find_volumes, find_volumes_of_disks), a bounded tree walk
//!   error.rs        GuestError and CorruptKind (one variant per check)
//!   bytes.rs        fixed-offset integer reads
//!   crc.rs          CRC-32, CRC-32C and CRC-32/BE (no dependency)
//!   readahead.rs    a listed directory's inodes and subdirectories read in the background
//!   partition/      MBR (primary, extended + logical from 5) and GPT; a partition is a
//!                   ByteSource window over the disk; lvm/: an LVM2 physical volume is
//!                   replaced by its volume group's linear and striped logical volumes
//!   ext4/           ext2/ext3/ext4: superblock, group descriptors, inodes, extents, block
//!                   maps, directories, symlinks, inline data, xattrs, checksums, and
//!                   journal/ (JBD2 recovery, replayed in memory as a block overlay)
//!   fat/            FAT12/FAT16/FAT32 with VFAT long names: boot sector, allocation table and
//!                   cluster chains, directories, names, times; synthesized inode numbers
//!   xfs/            XFS v4 and v5: superblock, inodes, block maps and btrees, directories,
//!                   symlinks, attributes and ACLs; log replay through an overlay
//!     log/          XFS log recovery: head and tail, transactions, buffer/inode/icreate
//!                   items replayed in memory as a byte overlay
//!   ntfs/           NTFS: boot sector, MFT records with fixups, attribute lists, run lists,
//!                   $I30 index B+trees, LZNT1 compression, reparse points and Interix links
//! ```
//!
//! A new format is a new folder implementing [`GuestFs`] plus one probe in
//! [`open_filesystem`]; the tree above never names a format. Rules for every parser: no
//! `unsafe`, checked arithmetic on every value read from the disk, one [`CorruptKind`] per
//! check, no panic, no unbounded allocation and no endless loop whatever the bytes. Nothing
//! here writes: a dirty journal is replayed into memory, the image is never modified.
//!
//! Memory: every format keeps its metadata blocks in the crate's one byte-budgeted
//! [`MetadataCache`], passed to [`open_filesystem`] and keyed by an id of each opened
//! filesystem's own ([`crate::cache::next_id`]), so all opened filesystems together stay
//! within that one budget however many there are; what a filesystem holds itself besides is
//! bounded per format and stated in its module ([`ext4`]: the superblock and the journal
//! overlay, at most 24 bytes per journal block; [`fat`]: its geometry and one map of at most
//! 65,536 directory entry positions; [`xfs`]: its superblock and the log replay overlay;
//! [`ntfs`]: its geometry, $UpCase (128 KiB) and the run list of $MFT).
#![forbid(unsafe_code)]

pub mod error;
pub mod ext4;
pub mod fat;
pub mod ntfs;
pub mod partition;
pub mod readahead;
pub mod xfs;

mod bytes;
mod crc;

use std::sync::Arc;

use crate::cache::MetadataCache;
use crate::source::ByteSource;

pub use error::{CorruptKind, GuestError};
pub use partition::{find_volumes, find_volumes_of_disks, DiskVolumes, PartitionWindow, Volume};

/// The type of a file, as `st_mode & S_IFMT` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// A timestamp: seconds since the epoch (may be negative or past 2038) and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestTime {
    pub secs: i64,
    pub nsecs: u32,
}

/// What `stat` shows for a guest file, as the guest's kernel would show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAttr {
    /// The guest's inode number (unique within one filesystem; hard links share it).
    pub ino: u64,
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime: GuestTime,
    pub mtime: GuestTime,
    pub ctime: GuestTime,
    /// Creation time, where the format has one.
    pub crtime: Option<GuestTime>,
    /// Space allocated, in 512-byte units (`st_blocks`), as the guest accounts it.
    pub blocks: u64,
    /// The filesystem's block size (`st_blksize`).
    pub block_size: u32,
    /// Device number of character and block devices (0 otherwise).
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

/// An extended attribute: full name ("user.x") and value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// One entry of a directory listing (never `.` or `..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDirEntry {
    /// The name as stored: any bytes but `/` and NUL.
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: FileKind,
}

/// A read-only guest filesystem. Every format implements this; the tree above uses only it.
/// Inode numbers are the guest's own. Methods take `&self` and may be called from many
/// threads at once.
pub trait GuestFs: Send + Sync {
    /// A short name of the format ("ext4", "ext3", "ext2").
    fn format_name(&self) -> &'static str;
    /// The inode number of the root directory.
    fn root(&self) -> u64;
    /// The attributes of an inode.
    fn attr(&self, ino: u64) -> Result<GuestAttr, GuestError>;
    /// The inode named `name` in directory `dir`, if any.
    fn lookup(&self, dir: u64, name: &[u8]) -> Result<Option<u64>, GuestError>;
    /// All entries of a directory but `.` and `..`, in on-disk order.
    fn read_dir(&self, dir: u64) -> Result<Vec<GuestDirEntry>, GuestError>;
    /// Reads a regular file's bytes at `offset`; returns how many were read (short only at
    /// the end of the file). Holes and unwritten extents read as zeros.
    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize, GuestError>;
    /// A symbolic link's target.
    fn read_link(&self, ino: u64) -> Result<Vec<u8>, GuestError>;
    /// Extended attributes as `listxattr`/`getxattr` show them: full names ("user.x",
    /// "security.selinux", "system.posix_acl_access") and values.
    fn xattrs(&self, ino: u64) -> Result<Vec<Xattr>, GuestError>;
    /// The first range `[start, end)` of data at or after `offset` in a regular file, with
    /// `start >= offset` and `end <= size`; `None` if only holes follow. SEEK_DATA is
    /// `start`; SEEK_HOLE is `end` if `start == offset`, else `offset` (and the size when
    /// `None`).
    fn next_data(&self, ino: u64, offset: u64) -> Result<Option<(u64, u64)>, GuestError>;
}

/// Probes `dev` for a filesystem this layer reads and opens it. `Ok(None)` for anything not
/// recognised (empty, swap, unknown formats): such volumes are not shown. The filesystem
/// keeps its metadata blocks in `cache` (the crate's one byte-budgeted LRU, shared with the
/// images and every other filesystem), under an id of its own.
pub fn open_filesystem(
    dev: Arc<dyn ByteSource>,
    cache: Arc<MetadataCache>,
) -> Result<Option<Box<dyn GuestFs>>, GuestError> {
    if ext4::probe(dev.as_ref())? {
        return Ok(ext4::Ext4::open(dev, cache)?.map(|fs| Box::new(fs) as Box<dyn GuestFs>));
    }
    if fat::probe(dev.as_ref())? {
        return Ok(Some(Box::new(fat::Fat::open(dev, cache)?)));
    }
    if xfs::probe(dev.as_ref())? {
        return Ok(Some(Box::new(xfs::Xfs::open(dev, cache)?)));
    }
    if ntfs::probe(dev.as_ref())? {
        return Ok(Some(Box::new(ntfs::Ntfs::open(dev, cache)?)));
    }
    Ok(None)
}

/// Bounds for [`walk`].
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    /// Directories deeper than this give [`CorruptKind::TreeTooDeep`].
    pub max_depth: usize,
    /// The walk stops (successfully) after visiting this many entries.
    pub max_entries: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        // PATH_MAX is 4096: no real path has more than 2048 components.
        WalkLimits {
            max_depth: 2048,
            max_entries: usize::MAX,
        }
    }
}

/// Walks the whole tree depth first, calling `visit(path, attr)` for every entry (the root
/// first, with an empty path; paths are `/`-joined bytes). Recursion is an explicit stack
/// bounded by `limits.max_depth`; a directory that contains one of its own ancestors gives
/// [`CorruptKind::DirectoryLoop`]. Stops at the first error.
pub fn walk(
    fs: &dyn GuestFs,
    limits: WalkLimits,
    visit: &mut dyn FnMut(&[u8], &GuestAttr),
) -> Result<(), GuestError> {
    struct Frame {
        path: Vec<u8>,
        ino: u64,
        entries: std::vec::IntoIter<GuestDirEntry>,
    }
    let root = fs.root();
    let attr = fs.attr(root)?;
    visit(b"", &attr);
    let mut visited = 1usize;
    if attr.kind != FileKind::Directory {
        return Err(GuestError::NotADirectory);
    }
    let mut stack = vec![Frame {
        path: Vec::new(),
        ino: root,
        entries: fs.read_dir(root)?.into_iter(),
    }];
    while let Some(top) = stack.last_mut() {
        let Some(entry) = top.entries.next() else {
            stack.pop();
            continue;
        };
        if visited >= limits.max_entries {
            return Ok(());
        }
        visited = visited.saturating_add(1);
        let mut path = top.path.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&entry.name);
        let attr = fs.attr(entry.ino)?;
        visit(&path, &attr);
        if attr.kind == FileKind::Directory {
            if stack.iter().any(|f| f.ino == entry.ino) {
                return Err(CorruptKind::DirectoryLoop.into());
            }
            if stack.len() >= limits.max_depth {
                return Err(CorruptKind::TreeTooDeep.into());
            }
            let entries = fs.read_dir(entry.ino)?.into_iter();
            stack.push(Frame {
                path,
                ino: entry.ino,
                entries,
            });
        }
    }
    Ok(())
}

/// The fuzz target's body: `data` as a whole disk; finds its volumes, opens each, walks a
/// bounded part of the tree and reads files, links and xattrs. Errors are expected; panics,
/// hangs and huge allocations are the bugs it looks for. The filesystems share a small cache
/// (256 KiB), so eviction is exercised too.
pub fn fuzz_one_disk(data: &[u8]) {
    let disk: Arc<dyn ByteSource> = Arc::new(crate::source::MemorySource::new(data.to_vec()));
    let Ok(volumes) = find_volumes(disk, "vda") else {
        return;
    };
    let cache = Arc::new(MetadataCache::new(256 << 10));
    for volume in volumes.into_iter().take(8) {
        let Ok(Some(fs)) = open_filesystem(volume.source, cache.clone()) else {
            continue;
        };
        fuzz_read_all(fs.as_ref());
    }
}

/// A fuzz input read as the start of a volume `len` bytes long, the rest zeros: the
/// format-specific fuzz targets take a volume as long as its own header claims, so a seed
/// with its trailing zeros cut can still be a volume of many megabytes.
struct ZeroExtended {
    data: Vec<u8>,
    len: u64,
}

impl ByteSource for ZeroExtended {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        buf.fill(0);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        let end = start.saturating_add(buf.len()).min(self.data.len());
        buf[..end - start].copy_from_slice(&self.data[start..end]);
        Ok(())
    }

    fn byte_len(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }
}

/// The body every format-specific fuzz target shares: `data` as the start of a volume of
/// `claimed` bytes (its own header's claim; the rest reads as zeros), probed with `probe`,
/// opened with `open` through a small cache, then read as [`fuzz_one_disk`] reads a
/// filesystem.
pub(crate) fn fuzz_volume_prefix<F: GuestFs>(
    data: &[u8],
    claimed: u64,
    probe: fn(&dyn ByteSource) -> Result<bool, GuestError>,
    open: impl FnOnce(Arc<dyn ByteSource>, Arc<MetadataCache>) -> Result<F, GuestError>,
) {
    let dev: Arc<dyn ByteSource> = Arc::new(ZeroExtended {
        data: data.to_vec(),
        len: claimed.max(data.len() as u64),
    });
    if !probe(dev.as_ref()).unwrap_or(false) {
        return;
    }
    if let Ok(fs) = open(dev, Arc::new(MetadataCache::new(256 << 10))) {
        fuzz_read_all(&fs);
    }
}

/// The part of [`fuzz_one_disk`] that reads an opened filesystem: a bounded walk, then the
/// files' first and last bytes, symlinks, xattrs and a lookup in each directory. Also the
/// body of format-specific fuzz targets ([`fat::fuzz_one_volume`]).
pub(crate) fn fuzz_read_all(fs: &dyn GuestFs) {
    let limits = WalkLimits {
        max_depth: 16,
        max_entries: 512,
    };
    let mut seen = Vec::new();
    let _ = walk(fs, limits, &mut |_, attr| seen.push(attr.clone()));
    let mut buf = vec![0u8; 8192];
    for attr in seen.iter().take(128) {
        let _ = fs.xattrs(attr.ino);
        match attr.kind {
            FileKind::File => {
                let _ = fs.read(attr.ino, 0, &mut buf);
                let _ = fs.read(attr.ino, attr.size.saturating_sub(100), &mut buf);
                let _ = fs.next_data(attr.ino, 0);
            }
            FileKind::Symlink => {
                let _ = fs.read_link(attr.ino);
            }
            FileKind::Directory => {
                let _ = fs.lookup(attr.ino, b"a");
            }
            _ => {}
        }
    }
}
