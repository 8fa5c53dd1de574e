//! FAT12, FAT16 and FAT32 with VFAT long names, read-only, from Microsoft's "FAT: General
//! Overview of On-Disk Format", shown as Linux's vfat shows a volume mounted with its
//! default options.
//!
//! One module per on-disk structure: [`boot`] (the BPB and the FAT type), [`table`] (the
//! allocation table and cluster chains), [`dir`] (directory entries and long-name runs),
//! [`name`] (8.3 and long names to UTF-8), [`time`] (date and time fields).
//!
//! What is shown, and why:
//! - Inode numbers (FAT has none): the root directory is 1; any other directory is
//!   2^40 + its first cluster, so that an entry naming the root's or an ancestor's cluster
//!   is the same inode as that directory, and a walk reports the loop; a file is the byte
//!   position of its 8.3 entry on the volume divided by 32 (below 2^39, as a volume is at
//!   most 2^32 sectors of 4 KiB). A file's number is enough to find its entry again; a
//!   directory's entry is remembered when a listing or lookup meets it (at most
//!   [`MAX_REMEMBERED`] of them), and otherwise found again through the directory's own `..`
//!   entry and a scan of that parent. Numbers stay the same for as long as the bytes do.
//! - Owner and permissions: uid 0 and gid 0, directories 0755, files 0755 or 0555 with the
//!   read-only attribute: what Linux shows when root mounts the volume with the default
//!   umask 022 (fmask = dmask = 022; the read-only attribute clears a file's write bits,
//!   not a directory's).
//! - Times: the fields are local times without a zone; they are shown as UTC, as Linux does
//!   without `tz=` ([`time`]). mtime and ctime from the write time (2 s resolution); atime the
//!   access date at midnight; crtime the creation time with its 10 ms field. The root
//!   directory has no entry: its times are 0 (1970-01-01), as in Linux.
//! - Sizes: a file's size field; a directory's size is its clusters times the cluster size
//!   (the FAT12/16 root: its entry count times 32); st_blocks is the size rounded up to whole
//!   clusters, in 512-byte units; st_blksize the cluster size. nlink: 1 for files; for
//!   directories the number of subdirectory entries counting `.` and `..` (the root, which
//!   has neither, adds 2), as Linux's `fat_subdirs`.
//! - Lookups match the shown name exactly, or else, as Linux's vfat with its default
//!   options does, ignoring ASCII case, the shown name or the entry's 8.3 name.
//! - No symbolic links, devices or extended attributes exist on FAT: `xattrs` is empty.
//!   Files have no holes: `next_data` is the rest of the file.
//! - Damage: a cluster chain is checked from its first cluster to its end when a file is
//!   first read or a directory listed ([`table`]): a chain that loops, points past the
//!   last cluster, or reaches a free, bad or reserved value, or is shorter than the file's
//!   size, is an error (EIO); a chain longer than the size is read up to the size, as Linux
//!   reads it. The volume must fit on its device ([`boot`]).
//!
//! Memory per opened filesystem: table pieces (4 KiB), root-region pieces, directory
//! clusters and chain maps (a checked chain's length and its runs of consecutive clusters,
//! at most 4096 of them: 48 KiB; [`table::ChainMap`]) are kept in the crate's one
//! byte-budgeted [`MetadataCache`] under an id of this filesystem's own; file data is read
//! from the device and not kept. What the filesystem holds itself is its geometry and one
//! map of directory entry positions, capped at [`MAX_REMEMBERED`] entries (about 1.5 MiB)
//! and emptied when full.

pub mod boot;
pub mod dir;
pub mod name;
pub mod table;
pub mod time;

use std::collections::HashMap;
use std::hash::Hash;
use std::ops::ControlFlow;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::cache::{next_id, CacheKey, CacheValue, MetadataCache};
use crate::source::ByteSource;

use super::{CorruptKind, FileKind, GuestAttr, GuestDirEntry, GuestError, GuestFs, GuestTime};
use boot::{FatType, Geometry, BOOT_SECTOR_SIZE};
use dir::{DirRef, Listed, ShortEntry, ATTR_RO};
use table::{Link, TABLE_PIECE};

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
/// Directories other than the root are this plus their first cluster.
pub const DIR_INO_BASE: u64 = 1 << 40;
/// Entries each of the filesystem's own maps holds at most.
pub const MAX_REMEMBERED: usize = 65536;

/// Whether `dev` starts with a FAT boot sector ([`boot::looks_like_fat`]).
pub fn probe(dev: &dyn ByteSource) -> Result<bool, GuestError> {
    let mut bs = [0u8; BOOT_SECTOR_SIZE];
    dev.read_exact_at(&mut bs, 0)?;
    Ok(boot::looks_like_fat(&bs))
}

/// An opened FAT12/16/32 filesystem.
pub struct Fat {
    dev: Arc<dyn ByteSource>,
    pub(crate) geo: Geometry,
    pub(crate) cache: Arc<MetadataCache>,
    pub(crate) cache_id: u64,
    /// Directory first cluster -> byte position of the 8.3 entry naming it.
    dir_entries: Mutex<HashMap<u32, u64>>,
}

/// Inserts into a map that is emptied when it holds [`MAX_REMEMBERED`] entries.
fn remember<K: Hash + Eq, V>(map: &Mutex<HashMap<K, V>>, k: K, v: V) {
    let mut m = map.lock();
    if m.len() >= MAX_REMEMBERED {
        m.clear();
    }
    m.insert(k, v);
}

/// What an inode number stands for.
enum Node {
    Dir(DirRef),
    /// A file: the byte position of its 8.3 entry.
    File(u64),
}

impl Fat {
    /// Opens the FAT volume on `dev`; its metadata is kept in `cache`.
    pub fn open(dev: Arc<dyn ByteSource>, cache: Arc<MetadataCache>) -> Result<Fat, GuestError> {
        let device_len = dev.byte_len()?;
        let mut bs = [0u8; BOOT_SECTOR_SIZE];
        dev.read_exact_at(&mut bs, 0)?;
        let geo = Geometry::parse(&bs, device_len)?;
        Ok(Fat {
            dev,
            geo,
            cache,
            cache_id: next_id(),
            dir_entries: Mutex::new(HashMap::new()),
        })
    }

    pub fn fat_type(&self) -> FatType {
        self.geo.fat_type
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// `len` bytes at volume offset `at` (a table piece, root piece or directory cluster),
    /// through the shared cache. Each offset is always read with the same length: pieces
    /// start at fixed places within their region, and the regions do not overlap.
    pub(crate) fn cached_bytes(&self, at: u64, len: u64) -> Result<Arc<[u8]>, GuestError> {
        let key = CacheKey::GuestBlock {
            fs: self.cache_id,
            block: at,
        };
        if let Some(CacheValue::GuestBlock(b)) = self.cache.get(&key) {
            return Ok(b);
        }
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| CorruptKind::FatClusterRange)?];
        self.dev.read_exact_at(&mut buf, at)?;
        let b: Arc<[u8]> = buf.into();
        self.cache.insert(key, CacheValue::GuestBlock(b.clone()));
        Ok(b)
    }

    /// The piece of the first allocation table at byte `piece` of the table.
    pub(crate) fn table_piece(&self, piece: u64) -> Result<Arc<[u8]>, GuestError> {
        if piece >= self.geo.fat_bytes {
            return Err(CorruptKind::FatTableSize.into());
        }
        let len = TABLE_PIECE.min(self.geo.fat_bytes - piece);
        self.cached_bytes(self.geo.fat_start + piece, len)
    }

    fn root_ref(&self) -> DirRef {
        match self.geo.fat_type {
            FatType::Fat32 => DirRef::Chain(self.geo.root_cluster),
            _ => DirRef::FixedRoot,
        }
    }

    /// The inode number of the directory whose first cluster is `cluster` (0, as in `..`
    /// entries, and the FAT32 root's cluster name the root).
    fn dir_ino(&self, cluster: u32) -> u64 {
        if cluster == 0 || (self.geo.fat_type == FatType::Fat32 && cluster == self.geo.root_cluster)
        {
            ROOT_INO
        } else {
            DIR_INO_BASE + u64::from(cluster)
        }
    }

    fn child_ino(&self, l: &Listed) -> u64 {
        if l.entry.is_dir() {
            self.dir_ino(l.entry.cluster)
        } else {
            l.pos / 32
        }
    }

    fn node(&self, ino: u64) -> Result<Node, GuestError> {
        if ino == ROOT_INO {
            return Ok(Node::Dir(self.root_ref()));
        }
        if ino >= DIR_INO_BASE {
            let cluster =
                u32::try_from(ino - DIR_INO_BASE).map_err(|_| CorruptKind::FatInodeNumber)?;
            if cluster < 2 || cluster > self.geo.max_cluster() {
                return Err(CorruptKind::FatInodeNumber.into());
            }
            return Ok(Node::Dir(DirRef::Chain(cluster)));
        }
        let pos = ino.checked_mul(32).ok_or(CorruptKind::FatInodeNumber)?;
        Ok(Node::File(pos))
    }

    /// The 32 bytes of the directory entry at volume position `pos`, which must lie in the
    /// root region or in a data cluster.
    fn entry_at(&self, pos: u64) -> Result<ShortEntry, GuestError> {
        let g = &self.geo;
        let (piece, len) = if pos >= g.root_start && pos - g.root_start < g.root_bytes {
            let piece = g.root_start + (pos - g.root_start) / TABLE_PIECE * TABLE_PIECE;
            (piece, TABLE_PIECE.min(g.root_start + g.root_bytes - piece))
        } else if pos >= g.data_start {
            let cs = u64::from(g.cluster_size);
            let index = (pos - g.data_start) / cs;
            let cluster = u32::try_from(index)
                .ok()
                .and_then(|i| i.checked_add(2))
                .ok_or(CorruptKind::FatInodeNumber)?;
            if cluster > g.max_cluster() {
                return Err(CorruptKind::FatInodeNumber.into());
            }
            (g.cluster_offset(cluster)?, cs)
        } else {
            return Err(CorruptKind::FatInodeNumber.into());
        };
        let bytes = self.cached_bytes(piece, len)?;
        let within = usize::try_from(pos - piece).map_err(|_| CorruptKind::FatInodeNumber)?;
        let raw = super::bytes::slice(&bytes, within, 32).ok_or(CorruptKind::FatInodeNumber)?;
        if !dir::is_live_short(raw) {
            return Err(CorruptKind::FatInodeNumber.into());
        }
        Ok(ShortEntry::parse(raw, g.fat_type == FatType::Fat32))
    }

    /// The 8.3 entry of a regular file.
    fn file_entry(&self, ino: u64) -> Result<ShortEntry, GuestError> {
        match self.node(ino)? {
            Node::Dir(_) => Err(GuestError::NotAFile),
            Node::File(pos) => {
                let e = self.entry_at(pos)?;
                if e.is_dir() || e.is_dot_or_dotdot() {
                    return Err(CorruptKind::FatInodeNumber.into());
                }
                Ok(e)
            }
        }
    }

    /// The entry naming the directory that starts at `cluster`: remembered, or found through
    /// the directory's `..` and a scan of its parent.
    fn dir_entry(&self, cluster: u32) -> Result<ShortEntry, GuestError> {
        let ino = self.dir_ino(cluster);
        let names_it =
            |e: &ShortEntry| e.is_dir() && !e.is_dot_or_dotdot() && self.dir_ino(e.cluster) == ino;
        let known = self.dir_entries.lock().get(&cluster).copied();
        if let Some(pos) = known {
            if let Ok(e) = self.entry_at(pos) {
                if names_it(&e) {
                    return Ok(e);
                }
            }
        }
        let mut parent = None;
        self.for_each_entry(DirRef::Chain(cluster), &mut |l| {
            if &l.entry.name == name::DOTDOT {
                parent = Some(l.entry.cluster);
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        let parent = parent.ok_or(CorruptKind::FatDirParent)?;
        let parent_ref = match self.dir_ino(parent) {
            ROOT_INO => self.root_ref(),
            _ => DirRef::Chain(parent),
        };
        let mut found = None;
        self.for_each_entry(parent_ref, &mut |l| {
            if names_it(&l.entry) {
                found = Some((l.pos, l.entry));
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        let (pos, entry) = found.ok_or(CorruptKind::FatDirParent)?;
        remember(&self.dir_entries, cluster, pos);
        Ok(entry)
    }

    /// The length in clusters of the chain from `first`, walked and checked once.
    fn chain_len(&self, first: u32) -> Result<u32, GuestError> {
        Ok(self.chain_map(first)?.len)
    }

    /// The directory's size: its clusters times the cluster size (the fixed root: its
    /// entries).
    fn dir_size(&self, dir: DirRef) -> Result<u64, GuestError> {
        match dir {
            DirRef::FixedRoot => Ok(self.geo.root_bytes),
            DirRef::Chain(first) => {
                let len = u64::from(self.chain_len(first)?);
                let size = len * u64::from(self.geo.cluster_size);
                if size > dir::MAX_DIR_BYTES {
                    return Err(CorruptKind::FatDirTooLarge.into());
                }
                Ok(size)
            }
        }
    }

    /// `fat_subdirs`: the directory entries with the directory attribute.
    fn subdirs(&self, dir: DirRef) -> Result<u32, GuestError> {
        let mut n = 0u32;
        self.for_each_entry(dir, &mut |l| {
            if l.entry.is_dir() {
                n = n.saturating_add(1);
            }
            ControlFlow::Continue(())
        })?;
        Ok(n)
    }

    fn blocks(&self, size: u64) -> u64 {
        size.div_ceil(u64::from(self.geo.cluster_size))
            .saturating_mul(u64::from(self.geo.cluster_size))
            / 512
    }

    fn make_attr(
        &self,
        ino: u64,
        kind: FileKind,
        size: u64,
        nlink: u32,
        e: Option<&ShortEntry>,
    ) -> GuestAttr {
        let (perm, atime, mtime, crtime) = match e {
            Some(e) => {
                let writable = kind == FileKind::Directory || e.attr & ATTR_RO == 0;
                let perm = if writable { 0o755 } else { 0o555 };
                (
                    perm,
                    time::to_unix(0, e.adate, 0),
                    time::to_unix(e.mtime, e.mdate, 0),
                    time::to_unix(e.ctime, e.cdate, e.ctime_cs),
                )
            }
            None => (
                0o755,
                GuestTime::default(),
                GuestTime::default(),
                GuestTime::default(),
            ),
        };
        GuestAttr {
            ino,
            kind,
            perm,
            uid: 0,
            gid: 0,
            size,
            nlink,
            atime,
            mtime,
            ctime: mtime,
            crtime: Some(crtime),
            blocks: self.blocks(size),
            block_size: self.geo.cluster_size,
            rdev_major: 0,
            rdev_minor: 0,
        }
    }
}

impl GuestFs for Fat {
    fn format_name(&self) -> &'static str {
        match self.geo.fat_type {
            FatType::Fat12 => "fat12",
            FatType::Fat16 => "fat16",
            FatType::Fat32 => "fat32",
        }
    }

    fn root(&self) -> u64 {
        ROOT_INO
    }

    fn attr(&self, ino: u64) -> Result<GuestAttr, GuestError> {
        match self.node(ino)? {
            Node::Dir(dir) => {
                let size = self.dir_size(dir)?;
                let subdirs = self.subdirs(dir)?;
                if ino == ROOT_INO {
                    return Ok(self.make_attr(
                        ino,
                        FileKind::Directory,
                        size,
                        subdirs.saturating_add(2),
                        None,
                    ));
                }
                let DirRef::Chain(cluster) = dir else {
                    return Err(CorruptKind::FatInodeNumber.into());
                };
                let e = self.dir_entry(cluster)?;
                Ok(self.make_attr(ino, FileKind::Directory, size, subdirs.max(1), Some(&e)))
            }
            Node::File(_) => {
                let e = self.file_entry(ino)?;
                Ok(self.make_attr(ino, FileKind::File, u64::from(e.size), 1, Some(&e)))
            }
        }
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> Result<Option<u64>, GuestError> {
        let Node::Dir(d) = self.node(dir)? else {
            return Err(GuestError::NotADirectory);
        };
        let mut exact = None;
        let mut folded = None;
        self.for_each_entry(d, &mut |l| {
            if l.entry.is_dot_or_dotdot() {
                return ControlFlow::Continue(());
            }
            let Some(shown) = &l.name else {
                return ControlFlow::Continue(());
            };
            if shown == name {
                exact = Some(l);
                return ControlFlow::Break(());
            }
            if folded.is_none()
                && (shown.eq_ignore_ascii_case(name)
                    || l.short_name
                        .as_deref()
                        .is_some_and(|s| s.eq_ignore_ascii_case(name)))
            {
                folded = Some(l);
            }
            ControlFlow::Continue(())
        })?;
        let Some(l) = exact.or(folded) else {
            return Ok(None);
        };
        if l.entry.is_dir() {
            remember(&self.dir_entries, l.entry.cluster, l.pos);
        }
        Ok(Some(self.child_ino(&l)))
    }

    fn read_dir(&self, dir: u64) -> Result<Vec<GuestDirEntry>, GuestError> {
        let Node::Dir(d) = self.node(dir)? else {
            return Err(GuestError::NotADirectory);
        };
        let mut out = Vec::new();
        self.for_each_entry(d, &mut |l| {
            if l.entry.is_dot_or_dotdot() {
                return ControlFlow::Continue(());
            }
            let ino = self.child_ino(&l);
            let kind = if l.entry.is_dir() {
                remember(&self.dir_entries, l.entry.cluster, l.pos);
                FileKind::Directory
            } else {
                FileKind::File
            };
            if let Some(name) = l.name {
                out.push(GuestDirEntry { name, ino, kind });
            }
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize, GuestError> {
        let e = self.file_entry(ino)?;
        let size = u64::from(e.size);
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = usize::try_from(size - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let cs = u64::from(self.geo.cluster_size);
        let needed = size.div_ceil(cs);
        if e.cluster < 2 || u64::from(self.chain_len(e.cluster)?) < needed {
            return Err(CorruptKind::FatChainShort.into());
        }
        let first = e.cluster;
        // Indexes are below `needed`, at most 2^32 / 512: they fit in u32.
        let index = u32::try_from(offset / cs).map_err(|_| CorruptKind::FatChainShort)?;
        let mut cluster = self.cluster_at(first, index)?;
        let mut done = 0usize;
        let mut within = offset % cs;
        loop {
            // A run of physically contiguous clusters from `cluster`, as long as needed.
            let want = (n - done) as u64;
            let mut run = 1u64;
            let mut last = cluster;
            while run * cs - within < want {
                match self.link(last)? {
                    Link::Next(next) if next == last.wrapping_add(1) => {
                        last = next;
                        run += 1;
                    }
                    _ => break,
                }
            }
            let len = usize::try_from((run * cs - within).min(want))
                .map_err(|_| CorruptKind::FatChainShort)?;
            let at = self.geo.cluster_offset(cluster)? + within;
            self.dev.read_exact_at(&mut buf[done..done + len], at)?;
            done += len;
            if done >= n {
                return Ok(n);
            }
            cluster = match self.link(last)? {
                Link::Next(next) => next,
                Link::End => return Err(CorruptKind::FatChainShort.into()),
            };
            within = 0;
        }
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>, GuestError> {
        self.attr(ino)?;
        Err(GuestError::NotASymlink)
    }

    fn xattrs(&self, ino: u64) -> Result<Vec<super::Xattr>, GuestError> {
        self.attr(ino)?;
        Ok(Vec::new())
    }

    fn next_data(&self, ino: u64, offset: u64) -> Result<Option<(u64, u64)>, GuestError> {
        let e = self.file_entry(ino)?;
        let size = u64::from(e.size);
        Ok((offset < size).then_some((offset, size)))
    }
}

/// The `guest_fat` fuzz target's body: `data` as the start of a FAT volume that is as long
/// as its boot sector says (the rest reads as zeros), so a small input can be a FAT32
/// volume (at least 65525 clusters) and still reach its directories and chains. Opened,
/// walked and read as [`super::fuzz_one_disk`] reads a filesystem, through a small cache.
pub fn fuzz_one_volume(data: &[u8]) {
    let claimed = {
        let sector = u64::from(super::bytes::read_u16le(data, 11));
        let small = u64::from(super::bytes::read_u16le(data, 19));
        let big = u64::from(super::bytes::read_u32le(data, 32));
        sector * if small != 0 { small } else { big }
    };
    super::fuzz_volume_prefix(data, claimed, probe, Fat::open);
}
