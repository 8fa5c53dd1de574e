//! XFS, read-only: v5 filesystems (CRC-32C on every metadata block) as mkfs.xfs makes them
//! today, and v4 ones (which current kernels refuse to mount but older guests still have),
//! from the "XFS Algorithms & Data Structures" documentation and the kernel's
//! `fs/xfs/libxfs/xfs_format.h`, `xfs_da_format.h` and `xfs_log_format.h`.
//!
//! One module per on-disk structure: [`sb`] (superblock, geometry, feature flags, inode
//! numbers), [`inode`] (dinode v1/v2/v3 and its forks), [`bmap`] (extent records and block map
//! btrees), [`dir`] (short-form, block, leaf and node directories), [`attr`] (short-form, leaf
//! and node attribute forks, remote values, POSIX ACLs).
//!
//! The log: a filesystem whose log still holds transactions (a guest that crashed, or was
//! snapshotted running, even frozen by its agent) is only consistent once they are replayed.
//! [`Xfs::open`] runs the log module's recovery ([`log`]), which yields an overlay of the
//! sectors the log rewrites (empty for a clean log), given to [`Xfs::open_with_overlay`];
//! every read of the device here goes through one function (`read_through`), which applies
//! that overlay. [`Xfs::open_without_replay`] shows the blocks as they are on the device
//! (what `mount -o ro,norecovery` shows).
//!
//! What is shown, and why (as Linux shows a read-only mount):
//! - Inode numbers are XFS's own (`agno | agbno | index`); hard links share them.
//! - `st_blocks` is `di_nblocks` (data, block map and attribute blocks) in 512-byte units,
//!   as `xfs_vn_getattr` reports it once delayed allocations are on disk; `st_blksize` the
//!   block size.
//! - Unwritten extents read as zeros and count as holes for `next_data` (the kernel's
//!   SEEK_DATA does so when no page of them is cached).
//! - Attributes: no namespace flag is `user.`, `XFS_ATTR_ROOT` `trusted.`, `XFS_ATTR_SECURE`
//!   `security.`; the ACLs `trusted.SGI_ACL_FILE`/`SGI_ACL_DEFAULT` are also shown as
//!   `system.posix_acl_access`/`default` in the generic xattr encoding, as the kernel's
//!   listxattr and getxattr show them. Parent pointers and incomplete entries are hidden.
//! - Realtime: a file on the realtime device (`XFS_DIFLAG_REALTIME`) gives
//!   [`GuestError::Unsupported`] when read; its attributes and everything else still show.
//!
//! Bounds: directories hold at most [`dir::MAX_DIR_ENTRIES`] entries in at most
//! [`dir::MAX_DIR_BYTES`] of data blocks, attribute forks at
//! most [`attr::MAX_ATTRS`]; btrees at most [`bmap::MAX_LEVELS`] levels; every chain of
//! sibling blocks is checked for order or counted. Memory per opened filesystem: its
//! superblock; metadata blocks (inode blocks, btree, directory and attribute blocks) are kept
//! in the crate's one [`MetadataCache`] under an id of its own; file data is never kept.

pub mod attr;
pub mod bmap;
pub mod dir;
pub mod inode;
pub mod log;
pub mod sb;

use std::sync::Arc;

use crate::cache::{next_id, CacheKey, CacheValue, MetadataCache};
use crate::source::ByteSource;

use super::{CorruptKind, FileKind, GuestAttr, GuestDirEntry, GuestError, GuestFs, Xattr};
use inode::{ForkFormat, Inode};
use sb::{Superblock, XFS_SB_MAGIC};

/// Bytes a replay of the log rewrites, laid over the device's bytes on every read.
pub trait ReplayOverlay: Send + Sync {
    /// Replaces the bytes of `buf`, which holds the device's bytes from `offset`, with any
    /// the log rewrote.
    fn apply(&self, offset: u64, buf: &mut [u8]);
    /// True when the overlay rewrites nothing.
    fn is_empty(&self) -> bool;
}

impl ReplayOverlay for log::LogOverlay {
    fn apply(&self, offset: u64, buf: &mut [u8]) {
        log::LogOverlay::apply(self, offset, buf)
    }
    fn is_empty(&self) -> bool {
        log::LogOverlay::is_empty(self)
    }
}

/// The overlay of a clean log.
pub struct NoReplay;

impl ReplayOverlay for NoReplay {
    fn apply(&self, _offset: u64, _buf: &mut [u8]) {}
    fn is_empty(&self) -> bool {
        true
    }
}

/// "XSLM": a v5 remote symlink block.
const SYMLINK_MAGIC: u32 = 0x5853_4c4d;
/// v5 remote symlink block header size.
const SYMLINK_HDR: usize = 56;
/// XFS_SYMLINK_MAXLEN.
const SYMLINK_MAXLEN: u64 = 1024;
/// Extents a remote symlink may have (its at most 1080 bytes in blocks of at least 512).
const SYMLINK_MAX_EXTENTS: usize = 3;
/// Extents fetched per step of a read.
const READ_EXTENTS: usize = 64;

/// Where a v5 metadata block keeps its CRC-32C, and the error a mismatch gives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Crc {
    None,
    At(usize, CorruptKind),
}

impl Crc {
    /// A cache-key tag below 512 for each checksum place.
    fn code(self) -> u64 {
        match self {
            Crc::None => 0,
            Crc::At(off, _) => 1 + (off as u64 & 0xff),
        }
    }
}

/// The one place the device is read: its bytes, then the replay overlay's.
fn read_through(
    dev: &dyn ByteSource,
    overlay: &dyn ReplayOverlay,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), GuestError> {
    dev.read_exact_at(buf, offset)?;
    if !overlay.is_empty() {
        overlay.apply(offset, buf);
    }
    Ok(())
}

/// Whether `dev` starts with an XFS superblock magic.
pub fn probe(dev: &dyn ByteSource) -> Result<bool, GuestError> {
    let mut m = [0u8; 4];
    dev.read_exact_at(&mut m, 0)?;
    Ok(u32::from_be_bytes(m) == XFS_SB_MAGIC)
}

/// An opened XFS filesystem.
pub struct Xfs {
    dev: Arc<dyn ByteSource>,
    overlay: Box<dyn ReplayOverlay>,
    pub(crate) sb: Superblock,
    cache: Arc<MetadataCache>,
    cache_id: u64,
}

impl Xfs {
    /// Opens the XFS filesystem on `dev` as the kernel mounts it: a dirty log's committed
    /// transactions replayed in memory first ([`log::recover`]). A log that cannot be read
    /// is an error (the kernel refuses to mount it too); a replay that cannot be done
    /// faithfully falls back to the filesystem as of its last checkpoint, with a warning.
    pub fn open(dev: Arc<dyn ByteSource>, cache: Arc<MetadataCache>) -> Result<Xfs, GuestError> {
        // The superblock's own checks first, so a damaged one is named as such.
        let unreplayed = Xfs::open_without_replay(dev.clone(), cache.clone())?;
        let mut s = vec![0u8; log::BBSIZE as usize];
        dev.read_exact_at(&mut s, 0)?;
        let geometry = log::LogGeometry::from_superblock(&s, dev.byte_len()?)?;
        // The recovery logs what it replayed, or why it fell back (then the overlay is empty:
        // the last checkpoint).
        let recovery = log::recover(dev.as_ref(), &geometry)?;
        if recovery.overlay.is_empty() {
            return Ok(unreplayed);
        }
        Xfs::open_with_overlay(dev, cache, Box::new(recovery.overlay))
    }

    /// Opens the filesystem as its blocks are on the device, ignoring a dirty log: what
    /// `mount -o ro,norecovery` shows (possibly inconsistent). For diagnostics and tests.
    pub fn open_without_replay(
        dev: Arc<dyn ByteSource>,
        cache: Arc<MetadataCache>,
    ) -> Result<Xfs, GuestError> {
        Xfs::open_with_overlay(dev, cache, Box::new(NoReplay))
    }

    /// Opens the XFS filesystem on `dev` with the blocks of `overlay` (a replayed log) laid
    /// over the device's.
    pub fn open_with_overlay(
        dev: Arc<dyn ByteSource>,
        cache: Arc<MetadataCache>,
        overlay: Box<dyn ReplayOverlay>,
    ) -> Result<Xfs, GuestError> {
        let dev_len = dev.byte_len()?;
        // The sector size is in the superblock: read the largest one possible.
        let mut s = vec![0u8; 1 << 15];
        read_through(dev.as_ref(), overlay.as_ref(), 0, &mut s)?;
        let sb = Superblock::parse(&s, dev_len)?;
        Ok(Xfs {
            dev,
            overlay,
            sb,
            cache,
            cache_id: next_id(),
        })
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Every read of the device after opening ([`read_through`]).
    pub(crate) fn read_dev(&self, offset: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        read_through(self.dev.as_ref(), self.overlay.as_ref(), offset, buf)
    }

    /// `len` bytes of metadata at device offset `at`, through the shared cache; on v5 its
    /// CRC is checked once, before it enters the cache (a block is cached apart for each
    /// checksum place it was read with, in the low bits of its sector-aligned offset).
    pub(crate) fn meta_block(
        &self,
        at: u64,
        len: usize,
        crc: Crc,
    ) -> Result<Arc<[u8]>, GuestError> {
        let key = CacheKey::GuestBlock {
            fs: self.cache_id,
            block: at | crc.code(),
        };
        if let Some(CacheValue::GuestBlock(b)) = self.cache.get(&key) {
            // A hostile image may use one place as two structures of different sizes.
            if b.len() == len {
                return Ok(b);
            }
        }
        let mut buf = vec![0u8; len];
        self.read_dev(at, &mut buf)?;
        self.check_crc(&buf, crc)?;
        let b: Arc<[u8]> = buf.into();
        self.cache.insert(key, CacheValue::GuestBlock(b.clone()));
        Ok(b)
    }

    fn check_crc(&self, buf: &[u8], crc: Crc) -> Result<(), GuestError> {
        match crc {
            Crc::At(off, kind) if self.sb.is_v5() && !self.sb.crc_good(buf, off) => {
                Err(kind.into())
            }
            _ => Ok(()),
        }
    }

    /// Inode `ino`, parsed and checked.
    pub fn inode(&self, ino: u64) -> Result<Inode, GuestError> {
        let (block, within) = self.sb.inode_location(ino)?;
        let b = self.meta_block(block, self.sb.block_size as usize, Crc::None)?;
        let raw = super::bytes::slice(&b, within, self.sb.inode_size as usize)
            .ok_or(CorruptKind::XfsInodeNumber)?;
        Inode::parse(&self.sb, ino, raw)
    }

    /// `nfsb` logical blocks of `fork` from `lblk` as one buffer (a directory or attribute
    /// block); `None` if any of it is a hole.
    pub(crate) fn fork_blocks(
        &self,
        fork: &inode::Fork,
        lblk: u64,
        nfsb: u32,
        crc: Crc,
    ) -> Result<Option<Arc<[u8]>>, GuestError> {
        let want = u64::from(nfsb);
        let end = lblk.checked_add(want).ok_or(CorruptKind::XfsExtentRange)?;
        let exts = self.extents(fork, lblk, nfsb as usize)?;
        let bs = u64::from(self.sb.block_size);
        // One extent covering all of it: one cached read.
        if let Some(e) = exts.first() {
            if e.offset <= lblk && e.end() >= end {
                let fsb = e.block + (lblk - e.offset);
                let at = self
                    .sb
                    .fsb_to_byte(fsb)
                    .ok_or(CorruptKind::XfsExtentRange)?;
                return Ok(Some(self.meta_block(at, (want * bs) as usize, crc)?));
            }
        }
        let mut buf = vec![0u8; (want * bs) as usize];
        let mut pos = lblk;
        for e in &exts {
            if pos >= end {
                break;
            }
            if e.offset > pos {
                return Ok(None);
            }
            let n = (e.end().min(end)) - pos;
            let fsb = e.block + (pos - e.offset);
            let at = self
                .sb
                .fsb_to_byte(fsb)
                .ok_or(CorruptKind::XfsExtentRange)?;
            let from = ((pos - lblk) * bs) as usize;
            self.read_dev(at, &mut buf[from..from + (n * bs) as usize])?;
            pos += n;
        }
        if pos < end {
            return Ok(None);
        }
        self.check_crc(&buf, crc)?;
        Ok(Some(buf.into()))
    }

    fn file_inode(&self, ino: u64) -> Result<Inode, GuestError> {
        let inode = self.inode(ino)?;
        if inode.kind != FileKind::File {
            return Err(GuestError::NotAFile);
        }
        if inode.realtime {
            return Err(GuestError::Unsupported(
                "XFS file on the realtime device".into(),
            ));
        }
        Ok(inode)
    }

    fn dir_inode(&self, ino: u64) -> Result<Inode, GuestError> {
        let inode = self.inode(ino)?;
        if inode.kind != FileKind::Directory {
            return Err(GuestError::NotADirectory);
        }
        Ok(inode)
    }
}

impl GuestFs for Xfs {
    fn format_name(&self) -> &'static str {
        "xfs"
    }

    fn root(&self) -> u64 {
        self.sb.root_ino
    }

    fn attr(&self, ino: u64) -> Result<GuestAttr, GuestError> {
        let i = self.inode(ino)?;
        let (rdev_major, rdev_minor) = i.rdev();
        Ok(GuestAttr {
            ino,
            kind: i.kind,
            perm: i.perm,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            nlink: i.nlink,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.crtime,
            blocks: i
                .nblocks
                .saturating_mul(u64::from(self.sb.block_size / 512)),
            block_size: self.sb.block_size,
            rdev_major,
            rdev_minor,
        })
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> Result<Option<u64>, GuestError> {
        let inode = self.dir_inode(dir)?;
        if inode.data.format != ForkFormat::Local {
            return self.lookup_hashed(&inode, name);
        }
        let mut found = None;
        self.for_each_entry(&inode, &mut |e| {
            if e.name == name {
                found = Some(e.ino);
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }

    fn read_dir(&self, dir: u64) -> Result<Vec<GuestDirEntry>, GuestError> {
        let inode = self.dir_inode(dir)?;
        let mut out = Vec::new();
        self.for_each_entry(&inode, &mut |e| {
            out.push(e);
            true
        })?;
        let mut entries: Vec<GuestDirEntry> = Vec::with_capacity(out.len());
        for e in out {
            let kind = match e.kind {
                Some(k) => k,
                None => self.inode(e.ino)?.kind,
            };
            entries.push(GuestDirEntry {
                name: e.name,
                ino: e.ino,
                kind,
            });
        }
        Ok(entries)
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize, GuestError> {
        let inode = self.file_inode(ino)?;
        if offset >= inode.size || buf.is_empty() {
            return Ok(0);
        }
        let n = usize::try_from(inode.size - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let buf = &mut buf[..n];
        buf.fill(0);
        let bs = u64::from(self.sb.block_size);
        let end = offset + n as u64;
        let mut pos = offset;
        while pos < end {
            let exts = self.extents(&inode.data, pos / bs, READ_EXTENTS)?;
            if exts.is_empty() {
                break;
            }
            for e in &exts {
                let e_start = e.offset.saturating_mul(bs);
                let e_end = e.end().saturating_mul(bs);
                if e_start >= end {
                    return Ok(n);
                }
                let from = pos.max(e_start);
                let to = end.min(e_end);
                if from < to && !e.unwritten {
                    let at = self
                        .sb
                        .fsb_to_byte(e.block)
                        .ok_or(CorruptKind::XfsExtentRange)?
                        + (from - e_start);
                    let a = (from - offset) as usize;
                    let b = (to - offset) as usize;
                    self.read_dev(at, &mut buf[a..b])?;
                }
                pos = pos.max(to);
            }
            if exts.len() < READ_EXTENTS {
                break;
            }
        }
        Ok(n)
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>, GuestError> {
        let inode = self.inode(ino)?;
        if inode.kind != FileKind::Symlink {
            return Err(GuestError::NotASymlink);
        }
        if inode.size == 0 || inode.size > SYMLINK_MAXLEN {
            return Err(CorruptKind::XfsSymlinkSize.into());
        }
        let len = inode.size as usize;
        if inode.data.format == ForkFormat::Local {
            return inode
                .data
                .bytes
                .get(..len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| CorruptKind::XfsSymlinkSize.into());
        }
        // As the kernel writes it: one buffer per extent, each with its own v5 header.
        let bs = u64::from(self.sb.block_size);
        let mut out = Vec::with_capacity(len);
        for e in self.extents(&inode.data, 0, SYMLINK_MAX_EXTENTS)? {
            if out.len() >= len {
                break;
            }
            if e.offset.saturating_mul(bs) > SYMLINK_MAXLEN + SYMLINK_HDR as u64
                || e.count.saturating_mul(bs) > 2 * (SYMLINK_MAXLEN + SYMLINK_HDR as u64) + bs
            {
                return Err(CorruptKind::XfsSymlinkSize.into());
            }
            let at = self
                .sb
                .fsb_to_byte(e.block)
                .ok_or(CorruptKind::XfsExtentRange)?;
            let mut buf = vec![0u8; (e.count * bs) as usize];
            self.read_dev(at, &mut buf)?;
            let hdr = if self.sb.is_v5() { SYMLINK_HDR } else { 0 };
            let take = buf.len().saturating_sub(hdr).min(len - out.len());
            if self.sb.is_v5() {
                let ok = super::bytes::read_u32be(&buf, 0) == SYMLINK_MAGIC
                    && super::bytes::read_u32be(&buf, 4) as usize == out.len()
                    && super::bytes::read_u32be(&buf, 8) as usize == take
                    && self.sb.crc_good(&buf, 12)
                    && super::bytes::read_u64be(&buf, 32) == ino;
                if !ok {
                    return Err(CorruptKind::XfsSymlinkHeader.into());
                }
            }
            out.extend_from_slice(
                super::bytes::slice(&buf, hdr, take).ok_or(CorruptKind::XfsSymlinkSize)?,
            );
        }
        if out.len() != len {
            return Err(CorruptKind::XfsSymlinkSize.into());
        }
        Ok(out)
    }

    fn xattrs(&self, ino: u64) -> Result<Vec<Xattr>, GuestError> {
        let inode = self.inode(ino)?;
        self.list_xattrs(&inode)
    }

    fn next_data(&self, ino: u64, offset: u64) -> Result<Option<(u64, u64)>, GuestError> {
        let inode = self.file_inode(ino)?;
        let size = inode.size;
        if offset >= size {
            return Ok(None);
        }
        let bs = u64::from(self.sb.block_size);
        let mut from = offset / bs;
        let mut start: Option<u64> = None;
        let mut end = 0u64;
        // Merge adjacent written extents into one range; stop at the first gap after it.
        loop {
            let exts = self.extents(&inode.data, from, READ_EXTENTS)?;
            for e in &exts {
                if e.unwritten {
                    if start.is_some() {
                        return Ok(start.map(|s| (s, end.min(size))));
                    }
                    continue;
                }
                let e_start = e.offset.saturating_mul(bs);
                let e_end = e.end().saturating_mul(bs);
                match start {
                    None => {
                        if e_start >= size {
                            return Ok(None);
                        }
                        start = Some(e_start.max(offset));
                        end = e_end;
                    }
                    Some(_) if e_start == end => end = e_end,
                    Some(s) => return Ok(Some((s, end.min(size)))),
                }
                if end >= size {
                    return Ok(start.map(|s| (s, size)));
                }
            }
            match exts.last() {
                Some(last) if exts.len() == READ_EXTENTS => from = last.end(),
                _ => return Ok(start.map(|s| (s, end.min(size)))),
            }
        }
    }
}

/// The `guest_xfs` fuzz target's body: `data` as the start of an XFS volume as long as its
/// superblock says (`sb_dblocks * sb_blocksize`, the rest reading as zeros), so that a seed
/// of the metadata-bearing start of an image reaches its inodes and directories. v5 CRCs
/// are not checked (the superblock's is recomputed), so that mutations reach the checks
/// behind them. Opened, walked and read as [`super::fuzz_one_disk`] reads a filesystem,
/// through a small cache.
pub fn fuzz_one_volume(data: &[u8]) {
    // The superblock's CRC is made right (its sector size is a guess: 512, the common
    // one); the CRCs of other blocks are not checked (`verify_crc`).
    let mut data = data.to_vec();
    if data.len() >= 512 {
        let c = crate::guest::crc::crc32c_raw(!0, &data[..224]);
        let c = crate::guest::crc::crc32c_raw(c, &[0; 4]);
        let c = !crate::guest::crc::crc32c_raw(c, &data[228..512]);
        data[224..228].copy_from_slice(&c.to_le_bytes());
    }
    let data = &data[..];
    let claimed = super::bytes::read_u64be(data, 8)
        .saturating_mul(u64::from(super::bytes::read_u32be(data, 4)));
    super::fuzz_volume_prefix(data, claimed, probe, |dev, cache| {
        let mut fs = Xfs::open(dev, cache)?;
        fs.sb.verify_crc = false;
        Ok(fs)
    });
}
