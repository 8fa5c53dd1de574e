//! ext2, ext3 and ext4, read-only, from the on-disk format described in the kernel's
//! Documentation/filesystems/ext4/.
//!
//! One module per on-disk structure: [`superblock`], [`group`] (descriptors), [`inode`],
//! [`extent`] (extent trees), [`indirect`] (ext2/3 block maps), [`dir`] (linear, htree and
//! inline directories), [`symlink`], [`inline`] (inline_data), [`xattr`], [`checksum`]
//! (metadata_csum) and [`journal`] (JBD2 recovery).
//!
//! Every read of a filesystem block goes through [`Ext4::block`] or the data path of
//! [`GuestFs::read`], both of which consult the journal overlay first: a filesystem whose
//! journal needs recovery is shown as the kernel shows it after recovery, without writing.
//!
//! Memory per opened filesystem: metadata blocks (superblock copies, group descriptors, inode
//! tables, extent and block-map blocks, directories, xattr blocks, journal blocks) are kept in
//! the crate's one byte-budgeted [`MetadataCache`], passed in by the caller and shared with
//! the images' metadata and every other opened filesystem, under keys
//! ([`CacheKey::GuestBlock`]) holding an id of this filesystem's own, so the blocks of all
//! opened filesystems together never exceed that cache's budget, and a filesystem dropped
//! leaves only entries that age out. What each filesystem holds itself is the parsed
//! superblock (a few hundred bytes) and the journal overlay: one 24-byte entry per block the
//! journal replays, at most one per journal block (none for a clean journal; 32,768 entries,
//! about 1.5 MiB with the map's overhead, for the default 128 MiB journal). Journals longer
//! than [`journal::MAX_JOURNAL_BLOCKS`] (10,240,000 blocks, the most mke2fs makes) are
//! refused, so the overlay never exceeds about 300 MiB, plus as much again while the scan
//! that builds it runs. Nothing else is kept between calls.

pub mod checksum;
pub mod dir;
pub mod extent;
pub mod group;
pub mod indirect;
pub mod inline;
pub mod inode;
pub mod journal;
pub mod superblock;
pub mod symlink;
pub mod xattr;

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::cache::{next_id, CacheKey, CacheValue, MetadataCache};
use crate::source::ByteSource;

use super::{CorruptKind, FileKind, GuestAttr, GuestDirEntry, GuestError, GuestFs};
use inode::{Inode, FL_ENCRYPT, FL_EXTENTS, FL_INLINE_DATA};
use superblock::{
    Superblock, COMPAT_HAS_JOURNAL, INCOMPAT_JOURNAL_DEV, INCOMPAT_RECOVER, SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE,
};

/// Regular files larger than this are refused: 2^32 blocks of 64 KiB, what extents address.
const MAX_FILE_BYTES: u64 = 1 << 48;

/// Where a run of logical blocks lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// `len` blocks stored contiguously from filesystem block `phys`.
    Data { phys: u64, len: u64 },
    /// `len` blocks that read as zeros (a hole or an unwritten extent).
    Zero { len: u64 },
}

/// Whether `dev` holds an ext2/3/4 superblock (magic 0xEF53 at byte 1080).
pub fn probe(dev: &dyn ByteSource) -> Result<bool, GuestError> {
    let mut magic = [0u8; 2];
    dev.read_exact_at(&mut magic, SUPERBLOCK_OFFSET + 0x38)?;
    Ok(u16::from_le_bytes(magic) == superblock::EXT4_MAGIC)
}

/// An opened ext2/3/4 filesystem.
pub struct Ext4 {
    dev: Arc<dyn ByteSource>,
    pub(crate) sb: Superblock,
    overlay: journal::Overlay,
    /// Where metadata blocks are kept, under `cache_id`.
    cache: Arc<MetadataCache>,
    /// This view's cache namespace: new for every `Ext4` value, so blocks read before the
    /// journal overlay existed (while it was being recovered) are never served after.
    cache_id: u64,
    replay: Option<journal::ReplayStats>,
    checksum_warned: AtomicBool,
}

impl Ext4 {
    /// Opens the filesystem on `dev`, replaying its journal in memory if it needs recovery.
    /// Metadata blocks are kept in `cache`. `Ok(None)` for an external journal device (a
    /// volume with no files).
    pub fn open(
        dev: Arc<dyn ByteSource>,
        cache: Arc<MetadataCache>,
    ) -> Result<Option<Ext4>, GuestError> {
        let device_len = dev.byte_len()?;
        let mut raw = vec![0u8; SUPERBLOCK_SIZE];
        dev.read_exact_at(&mut raw, SUPERBLOCK_OFFSET)?;
        let incompat = u32::from_le_bytes([raw[0x60], raw[0x61], raw[0x62], raw[0x63]]);
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            log::info!("ext4: volume is an external journal device; no files to show");
            return Ok(None);
        }
        let sb = Superblock::parse(&raw, device_len)?;
        let mut fs = Ext4::with_overlay(dev.clone(), sb, journal::Overlay::default(), &cache);
        if !(fs.sb.has_incompat(INCOMPAT_RECOVER) && fs.sb.has_compat(COMPAT_HAS_JOURNAL)) {
            return Ok(Some(fs));
        }
        if fs.sb.journal_inum == 0 || fs.sb.journal_dev != 0 {
            return Err(GuestError::Unsupported(
                "ext4 external journal that needs recovery".into(),
            ));
        }
        let journal_inode = fs.inode(fs.sb.journal_inum)?;
        let (overlay, stats) = journal::recover(&fs, &journal_inode)?;
        log::info!(
            "ext4: journal needs recovery: replayed {} transactions ({} blocks, {} revoked) in memory",
            stats.transactions,
            stats.replayed_blocks,
            stats.revoked_blocks
        );
        fs = Ext4::with_overlay(dev, fs.sb, overlay, &cache);
        // The superblock and descriptors as the journal left them, as the kernel sees them.
        let sb_block = SUPERBLOCK_OFFSET / u64::from(fs.sb.block_size);
        let sb_at = usize::try_from(SUPERBLOCK_OFFSET % u64::from(fs.sb.block_size))
            .map_err(|_| CorruptKind::BlockSize)?;
        let block = fs.block(sb_block)?;
        let raw = block
            .get(sb_at..sb_at + SUPERBLOCK_SIZE)
            .ok_or(CorruptKind::BlockSize)?;
        let new_sb = Superblock::parse(raw, device_len)?;
        if new_sb.block_size != fs.sb.block_size {
            return Err(CorruptKind::JournalBlockSize.into());
        }
        let overlay = std::mem::take(&mut fs.overlay);
        let mut fs = Ext4::with_overlay(fs.dev.clone(), new_sb, overlay, &cache);
        fs.replay = Some(stats);
        Ok(Some(fs))
    }

    /// Opens the filesystem as it is on the device, ignoring a journal that needs recovery:
    /// what `mount -o ro,noload` shows (possibly inconsistent). For diagnostics and tests.
    pub fn open_without_replay(
        dev: Arc<dyn ByteSource>,
        cache: Arc<MetadataCache>,
    ) -> Result<Ext4, GuestError> {
        let device_len = dev.byte_len()?;
        let mut raw = vec![0u8; SUPERBLOCK_SIZE];
        dev.read_exact_at(&mut raw, SUPERBLOCK_OFFSET)?;
        let sb = Superblock::parse(&raw, device_len)?;
        Ok(Ext4::with_overlay(
            dev,
            sb,
            journal::Overlay::default(),
            &cache,
        ))
    }

    fn with_overlay(
        dev: Arc<dyn ByteSource>,
        sb: Superblock,
        overlay: journal::Overlay,
        cache: &Arc<MetadataCache>,
    ) -> Ext4 {
        Ext4 {
            dev,
            sb,
            overlay,
            cache: cache.clone(),
            cache_id: next_id(),
            replay: None,
            checksum_warned: AtomicBool::new(false),
        }
    }

    /// What the journal replay did, if the filesystem needed recovery.
    pub fn replay_stats(&self) -> Option<&journal::ReplayStats> {
        self.replay.as_ref()
    }

    /// Where the journal replay found the newest copy of filesystem block `block`, if it did.
    pub fn replayed_copy(&self, block: u64) -> Option<journal::LogBlock> {
        self.overlay.get(block).copied()
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// A checksum mismatch: logged once per filesystem (the caller logs each failed
    /// operation with its path), and refused like the kernel refuses it.
    pub(crate) fn checksum_error(&self, kind: CorruptKind) -> GuestError {
        if !self.checksum_warned.swap(true, Ordering::Relaxed) {
            log::warn!("ext4: {kind}; objects with bad checksums read as errors");
        }
        kind.into()
    }

    fn block_offset(&self, n: u64) -> Result<u64, GuestError> {
        if n >= self.sb.blocks_count {
            return Err(CorruptKind::BlockMapRange.into());
        }
        n.checked_mul(u64::from(self.sb.block_size))
            .ok_or_else(|| CorruptKind::BlockMapRange.into())
    }

    /// Reads filesystem block `n` into `buf` (one block long): the journal's copy if the
    /// replay has one, else the device's.
    fn read_block_into(&self, n: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        if let Some(logged) = self.overlay.get(n) {
            return journal::read_logged(self, logged, buf);
        }
        let at = self.block_offset(n)?;
        self.dev.read_exact_at(buf, at)?;
        Ok(())
    }

    /// Filesystem block `n` (metadata: through the shared cache).
    pub(crate) fn block(&self, n: u64) -> Result<Arc<[u8]>, GuestError> {
        let key = CacheKey::GuestBlock {
            fs: self.cache_id,
            block: n,
        };
        if let Some(CacheValue::GuestBlock(b)) = self.cache.get(&key) {
            return Ok(b);
        }
        let mut buf =
            vec![0u8; usize::try_from(self.sb.block_size).map_err(|_| CorruptKind::BlockSize)?];
        self.read_block_into(n, &mut buf)?;
        let b: Arc<[u8]> = buf.into();
        self.cache.insert(key, CacheValue::GuestBlock(b.clone()));
        Ok(b)
    }

    /// Reads device bytes directly, bypassing the overlay (for the journal's own blocks).
    pub(crate) fn read_device(&self, buf: &mut [u8], block: u64) -> Result<(), GuestError> {
        let at = self.block_offset(block)?;
        self.dev.read_exact_at(buf, at)?;
        Ok(())
    }

    /// Inode `ino`, read from its group's inode table.
    pub(crate) fn inode(&self, ino: u32) -> Result<Inode, GuestError> {
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(CorruptKind::InodeNumber.into());
        }
        let index = ino - 1;
        let group = index / self.sb.inodes_per_group;
        let within = index % self.sb.inodes_per_group;
        let desc = self.group_desc(group)?;
        let byte = u64::from(within) * u64::from(self.sb.inode_size);
        let bs = u64::from(self.sb.block_size);
        let block = self.block(desc.inode_table + byte / bs)?;
        let at = usize::try_from(byte % bs).map_err(|_| CorruptKind::InodeSize)?;
        let size = usize::try_from(self.sb.inode_size).map_err(|_| CorruptKind::InodeSize)?;
        let raw = block.get(at..at + size).ok_or(CorruptKind::InodeSize)?;
        Inode::parse(&self.sb, ino, raw)
    }

    fn group_desc(&self, group: u32) -> Result<group::GroupDesc, GuestError> {
        let per_block = self.sb.descs_per_block();
        let block = group::descriptor_block(&self.sb, group / per_block)?;
        let bytes = self.block(block)?;
        let size = usize::try_from(self.sb.desc_size).map_err(|_| CorruptKind::DescSize)?;
        let at = usize::try_from(group % per_block).map_err(|_| CorruptKind::DescSize)? * size;
        let d = bytes.get(at..at + size).ok_or(CorruptKind::DescSize)?;
        group::parse(&self.sb, group, d)
    }

    /// An inode reached through a directory entry: it must be in use.
    fn live_inode(&self, ino: u64) -> Result<Inode, GuestError> {
        let ino = u32::try_from(ino).map_err(|_| CorruptKind::InodeNumber)?;
        let inode = self.inode(ino)?;
        if inode.links_count == 0 {
            return Err(CorruptKind::UnallocatedInode.into());
        }
        Ok(inode)
    }

    /// Maps logical block `lblk` of `inode` through its extent tree or block map.
    pub(crate) fn map(&self, inode: &Inode, lblk: u32) -> Result<Mapping, GuestError> {
        if inode.has_flag(FL_EXTENTS) {
            extent::map(self, inode, lblk)
        } else {
            indirect::map(self, inode, lblk)
        }
    }

    /// The data of an ea_inode xattr value (at most 64 KiB).
    pub(crate) fn ea_inode_value(&self, ino: u32, size: u32) -> Result<Vec<u8>, GuestError> {
        let inode = self.inode(ino)?;
        let mut buf = vec![0u8; usize::try_from(size).map_err(|_| CorruptKind::XattrValue)?];
        self.read_file(&inode, 0, &mut buf)?;
        Ok(buf)
    }

    /// Reads `buf.len()` bytes of a file's data at `offset` (the caller clamps to its size).
    fn read_file(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        if inode.has_flag(FL_INLINE_DATA) {
            return inline::read(self, inode, offset, buf);
        }
        let bs = u64::from(self.sb.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset
                .checked_add(u64::try_from(done).map_err(|_| CorruptKind::FileSize)?)
                .ok_or(CorruptKind::FileSize)?;
            let lblk = u32::try_from(pos / bs).map_err(|_| CorruptKind::FileSize)?;
            let in_block = pos % bs;
            let (run, phys) = match self.map(inode, lblk)? {
                Mapping::Zero { len } => (len, None),
                Mapping::Data { phys, len } => (len, Some(phys)),
            };
            let run_bytes = run.saturating_mul(bs).saturating_sub(in_block);
            let n = usize::try_from(run_bytes)
                .unwrap_or(usize::MAX)
                .min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match phys {
                None => out.fill(0),
                Some(phys) => self.read_data(phys, in_block, out)?,
            }
            done += n;
        }
        Ok(())
    }

    /// Reads `out.len()` bytes starting `in_block` bytes into block `phys`, the blocks being
    /// contiguous on disk. Blocks the journal replays are read from the journal.
    fn read_data(&self, phys: u64, in_block: u64, out: &mut [u8]) -> Result<(), GuestError> {
        let bs = u64::from(self.sb.block_size);
        let blocks = in_block
            .checked_add(u64::try_from(out.len()).map_err(|_| CorruptKind::FileSize)?)
            .ok_or(CorruptKind::FileSize)?
            .div_ceil(bs);
        let last = phys.checked_add(blocks).ok_or(CorruptKind::ExtentRange)?;
        if last > self.sb.blocks_count {
            return Err(CorruptKind::ExtentRange.into());
        }
        if self.overlay.is_empty() || !(phys..last).any(|b| self.overlay.get(b).is_some()) {
            let at = self.block_offset(phys)? + in_block;
            self.dev.read_exact_at(out, at)?;
            return Ok(());
        }
        let mut block = vec![0u8; usize::try_from(bs).map_err(|_| CorruptKind::BlockSize)?];
        let mut done = 0usize;
        let mut skip = usize::try_from(in_block).map_err(|_| CorruptKind::BlockSize)?;
        for b in phys..last {
            self.read_block_into(b, &mut block)?;
            let n = (block.len() - skip).min(out.len() - done);
            out[done..done + n].copy_from_slice(&block[skip..skip + n]);
            done += n;
            skip = 0;
        }
        Ok(())
    }

    fn regular_file(&self, ino: u64) -> Result<Inode, GuestError> {
        let inode = self.live_inode(ino)?;
        if inode.kind()? != FileKind::File {
            return Err(GuestError::NotAFile);
        }
        if inode.has_flag(FL_ENCRYPT) {
            return Err(GuestError::Unsupported("ext4 encrypted file".into()));
        }
        if inode.size > MAX_FILE_BYTES {
            return Err(CorruptKind::FileSize.into());
        }
        Ok(inode)
    }

    fn directory(&self, ino: u64) -> Result<Inode, GuestError> {
        let inode = self.live_inode(ino)?;
        if inode.kind()? != FileKind::Directory {
            return Err(GuestError::NotADirectory);
        }
        if inode.has_flag(FL_ENCRYPT) {
            return Err(GuestError::Unsupported("ext4 encrypted directory".into()));
        }
        Ok(inode)
    }

    /// The `..` entry of a directory (for callers that check a directory has one parent).
    pub fn parent_of(&self, dir: u64) -> Result<Option<u64>, GuestError> {
        let inode = self.directory(dir)?;
        Ok(dir::parent(self, &inode)?.map(u64::from))
    }
}

/// st_blocks as `ext4_file_getattr` reports it: a regular file with inline data also counts
/// the sectors of its size, "so tools like tar, rsync, others don't incorrectly think the
/// file is completely sparse".
fn st_blocks(inode: &Inode, kind: FileKind) -> u64 {
    if kind == FileKind::File && inode.has_flag(FL_INLINE_DATA) {
        return inode.blocks.saturating_add(inode.size.div_ceil(512));
    }
    inode.blocks
}

impl GuestFs for Ext4 {
    fn format_name(&self) -> &'static str {
        use superblock::*;
        let ext4_incompat = INCOMPAT_EXTENTS
            | INCOMPAT_64BIT
            | INCOMPAT_FLEX_BG
            | INCOMPAT_INLINE_DATA
            | INCOMPAT_EA_INODE
            | INCOMPAT_CSUM_SEED
            | INCOMPAT_LARGEDIR
            | INCOMPAT_ENCRYPT
            | INCOMPAT_CASEFOLD
            | INCOMPAT_MMP;
        if self.sb.feature_incompat & ext4_incompat != 0 || self.sb.feature_ro_compat & !0x7 != 0 {
            "ext4"
        } else if self.sb.has_compat(COMPAT_HAS_JOURNAL) {
            "ext3"
        } else {
            "ext2"
        }
    }

    fn root(&self) -> u64 {
        2
    }

    fn attr(&self, ino: u64) -> Result<GuestAttr, GuestError> {
        let inode = self.live_inode(ino)?;
        let kind = inode.kind()?;
        let (rdev_major, rdev_minor) = match kind {
            FileKind::CharDevice | FileKind::BlockDevice => inode.rdev(),
            _ => (0, 0),
        };
        Ok(GuestAttr {
            ino,
            kind,
            perm: inode.mode & 0o7777,
            uid: inode.uid,
            gid: inode.gid,
            size: inode.size,
            nlink: u32::from(inode.links_count),
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            crtime: inode.crtime,
            blocks: st_blocks(&inode, kind),
            block_size: self.sb.block_size,
            rdev_major,
            rdev_minor,
        })
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> Result<Option<u64>, GuestError> {
        let inode = self.directory(dir)?;
        let mut found = None;
        dir::for_each(self, &inode, &mut |d| {
            if d.name == name {
                found = Some(u64::from(d.inode));
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(found)
    }

    fn read_dir(&self, dir: u64) -> Result<Vec<GuestDirEntry>, GuestError> {
        let inode = self.directory(dir)?;
        let mut raw = Vec::new();
        let mut too_many = false;
        dir::for_each(self, &inode, &mut |d| {
            if d.name == b"." || d.name == b".." {
                return ControlFlow::Continue(());
            }
            if raw.len() >= dir::MAX_DIR_ENTRIES {
                too_many = true;
                return ControlFlow::Break(());
            }
            raw.push((d.name.to_vec(), d.inode, dir::kind_from_dirent(d.file_type)));
            ControlFlow::Continue(())
        })?;
        if too_many {
            return Err(CorruptKind::TooManyEntries.into());
        }
        let mut out = Vec::with_capacity(raw.len());
        for (name, ino, kind) in raw {
            let ino = u64::from(ino);
            let kind = match kind {
                Some(k) => k,
                // No filetype feature (old ext2), or an unknown type byte: ask the inode.
                None => self.live_inode(ino)?.kind()?,
            };
            out.push(GuestDirEntry { name, ino, kind });
        }
        Ok(out)
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize, GuestError> {
        let inode = self.regular_file(ino)?;
        if offset >= inode.size {
            return Ok(0);
        }
        let n = usize::try_from(inode.size - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.read_file(&inode, offset, &mut buf[..n])?;
        Ok(n)
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>, GuestError> {
        let inode = self.live_inode(ino)?;
        if inode.kind()? != FileKind::Symlink {
            return Err(GuestError::NotASymlink);
        }
        symlink::read_link(self, &inode)
    }

    fn xattrs(&self, ino: u64) -> Result<Vec<super::Xattr>, GuestError> {
        let inode = self.live_inode(ino)?;
        xattr::list(self, &inode)
    }

    fn next_data(&self, ino: u64, offset: u64) -> Result<Option<(u64, u64)>, GuestError> {
        let inode = self.regular_file(ino)?;
        let size = inode.size;
        if offset >= size {
            return Ok(None);
        }
        if inode.has_flag(FL_INLINE_DATA) {
            return Ok(Some((offset, size)));
        }
        let bs = u64::from(self.sb.block_size);
        let blocks = size.div_ceil(bs);
        let mut lblk = offset / bs;
        let mut start = None;
        // Each step moves past at least one whole mapping: at most one step per extent or
        // block-map run of the file.
        while lblk < blocks {
            let l = u32::try_from(lblk).map_err(|_| CorruptKind::FileSize)?;
            match self.map(&inode, l)? {
                Mapping::Data { len, .. } => {
                    start.get_or_insert(lblk);
                    lblk = lblk.saturating_add(len);
                }
                Mapping::Zero { len } => {
                    if start.is_some() {
                        break;
                    }
                    lblk = lblk.saturating_add(len);
                }
            }
        }
        Ok(start.map(|s| {
            let begin = s.saturating_mul(bs).max(offset);
            (begin, lblk.saturating_mul(bs).min(size))
        }))
    }
}
