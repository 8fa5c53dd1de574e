//! Replaying the items of committed transactions into the overlay.
//!
//! The order and the rules are the kernel's (xfs_log_recover.c, xfs_buf_item_recover.c,
//! xfs_inode_item_recover.c, xfs_icreate_item.c): within a transaction buffers and inode
//! creations first, then intents, then inodes, then inode buffers and cancel records; a
//! buffer cancelled by a cancel record (counted in pass 1) is skipped until the last cancel
//! record for it has been passed.

use std::collections::{HashMap, HashSet};

use super::super::super::bytes::{read_u16le, read_u32be, read_u32le, read_u64be, read_u64le};
use super::super::super::crc::crc32c_raw;
use super::super::super::CorruptKind;
use super::scan::{ScanError, Transaction, XLOG_MAX_REGIONS_IN_ITEM};
use super::{LogGeometry, LogOverlay, ReplayStats, BBSIZE};
use crate::source::ByteSource;

pub const XFS_LI_EFI: u16 = 0x1236;
pub const XFS_LI_EFD: u16 = 0x1237;
pub const XFS_LI_IUNLINK: u16 = 0x1238;
pub const XFS_LI_INODE: u16 = 0x123b;
pub const XFS_LI_BUF: u16 = 0x123c;
pub const XFS_LI_DQUOT: u16 = 0x123d;
pub const XFS_LI_QUOTAOFF: u16 = 0x123e;
pub const XFS_LI_ICREATE: u16 = 0x123f;
pub const XFS_LI_RUI: u16 = 0x1240;
pub const XFS_LI_RUD: u16 = 0x1241;
pub const XFS_LI_CUI: u16 = 0x1242;
pub const XFS_LI_CUD: u16 = 0x1243;
pub const XFS_LI_BUI: u16 = 0x1244;
pub const XFS_LI_BUD: u16 = 0x1245;
pub const XFS_LI_ATTRI: u16 = 0x1246;
pub const XFS_LI_ATTRD: u16 = 0x1247;
pub const XFS_LI_XMI: u16 = 0x1248;
pub const XFS_LI_XMD: u16 = 0x1249;
pub const XFS_LI_EFI_RT: u16 = 0x124a;
pub const XFS_LI_EFD_RT: u16 = 0x124b;
pub const XFS_LI_RUI_RT: u16 = 0x124c;
pub const XFS_LI_RUD_RT: u16 = 0x124d;
pub const XFS_LI_CUI_RT: u16 = 0x124e;
pub const XFS_LI_CUD_RT: u16 = 0x124f;

const XFS_BLF_INODE_BUF: u16 = 1 << 0;
const XFS_BLF_CANCEL: u16 = 1 << 1;
const XFS_BLF_DQUOT_BUFS: u16 = (1 << 2) | (1 << 3) | (1 << 4);
const XFS_BLF_CHUNK: usize = 128;
/// Words of the dirty bitmap: 64 KiB of 128-byte chunks, plus one.
const XFS_BLF_DATAMAP_SIZE: usize = 65536 / XFS_BLF_CHUNK / 32 + 1;
/// The largest buffer an item may name: 64 KiB (`XFS_MAX_BLOCKSIZE`), in basic blocks.
const MAX_BUF_BBS: u64 = 65536 / BBSIZE;

const XFS_DINODE_MAGIC: u16 = 0x494e;
const XFS_DINODE_FMT_LOCAL: u8 = 1;
const XFS_DINODE_FMT_EXTENTS: u8 = 2;
const XFS_DINODE_FMT_BTREE: u8 = 3;
const XFS_DIFLAG2_BIGTIME: u64 = 1 << 3;
const XFS_DIFLAG2_NREXT64: u64 = 1 << 4;
const XFS_ILOG_CORE: u32 = 0x001;
const XFS_ILOG_DDATA: u32 = 0x002;
const XFS_ILOG_DEXT: u32 = 0x004;
const XFS_ILOG_DBROOT: u32 = 0x008;
const XFS_ILOG_DEV: u32 = 0x010;
const XFS_ILOG_ADATA: u32 = 0x040;
const XFS_ILOG_AEXT: u32 = 0x080;
const XFS_ILOG_ABROOT: u32 = 0x100;
const XFS_ILOG_DOWNER: u32 = 0x200;
const XFS_ILOG_AOWNER: u32 = 0x400;
const XFS_ILOG_DFORK: u32 = XFS_ILOG_DDATA | XFS_ILOG_DEXT | XFS_ILOG_DBROOT;
const XFS_ILOG_AFORK: u32 = XFS_ILOG_ADATA | XFS_ILOG_AEXT | XFS_ILOG_ABROOT;
/// Offset of `di_next_unlinked` and `di_crc` in the on-disk inode.
const DI_NEXT_UNLINKED: usize = 96;
const DI_CRC: usize = 100;
const NULLAGINO: u32 = u32::MAX;

/// Buffer cancel records of committed transactions (pass 1): (daddr, length) -> count.
#[derive(Debug, Default)]
pub struct CancelTable {
    map: HashMap<(u64, u64), u32>,
}

impl CancelTable {
    pub fn pass1(&mut self, t: Transaction, stats: &mut ReplayStats) {
        for item in &t.items {
            let Some(r0) = item.first() else { continue };
            if host16(r0, 0, t.big_endian) != XFS_LI_BUF || r0.len() < 16 {
                continue;
            }
            let flags = host16(r0, 4, t.big_endian);
            if flags & XFS_BLF_CANCEL != 0 {
                let key = (
                    host64(r0, 8, t.big_endian),
                    u64::from(host16(r0, 6, t.big_endian)),
                );
                *self.map.entry(key).or_insert(0) += 1;
                stats.cancel_records += 1;
            }
        }
    }

    fn is_cancelled(&self, daddr: u64, len: u64) -> bool {
        self.map.contains_key(&(daddr, len))
    }

    /// A cancel record passed in pass 2: once the last one is passed, later copies of the
    /// buffer (reallocated) are replayed again.
    fn put(&mut self, daddr: u64, len: u64) {
        if let Some(c) = self.map.get_mut(&(daddr, len)) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.map.remove(&(daddr, len));
            }
        }
    }
}

fn host16(b: &[u8], off: usize, be: bool) -> u16 {
    if be {
        u16::from_be_bytes(super::super::super::bytes::read_array(b, off))
    } else {
        read_u16le(b, off)
    }
}

fn host32(b: &[u8], off: usize, be: bool) -> u32 {
    if be {
        read_u32be(b, off)
    } else {
        read_u32le(b, off)
    }
}

fn host64(b: &[u8], off: usize, be: bool) -> u64 {
    if be {
        read_u64be(b, off)
    } else {
        read_u64le(b, off)
    }
}

fn put_be16(b: &mut [u8], off: usize, v: u16) {
    if let Some(d) = b.get_mut(off..off + 2) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

fn put_be32(b: &mut [u8], off: usize, v: u32) {
    if let Some(d) = b.get_mut(off..off + 4) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

fn put_be64(b: &mut [u8], off: usize, v: u64) {
    if let Some(d) = b.get_mut(off..off + 8) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

/// The XFS metadata checksum: CRC-32C of `buf` with its 4-byte field at `off` taken as
/// zero, inverted, stored little-endian at `off`.
pub fn update_cksum(buf: &mut [u8], off: usize) {
    if off + 4 > buf.len() {
        return;
    }
    buf[off..off + 4].copy_from_slice(&[0; 4]);
    let crc = !crc32c_raw(!0, buf);
    buf[off..off + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Where a v5 metadata buffer keeps its LSN, checksum and uuid, found by its magic as the
/// kernel's recovery (`xlog_recover_get_buf_lsn`) and write verifiers find them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BufLayout {
    lsn: usize,
    crc: Option<usize>,
    uuid: usize,
    /// Remote attribute blocks carry a header in every filesystem block.
    per_block: bool,
    /// Remote attribute blocks are written synchronously: always replayed.
    always_replay: bool,
}

fn buf_layout(buf: &[u8], geo: &LogGeometry) -> Option<BufLayout> {
    // Inode and quota buffers have no buffer-wide LSN: replayed immediately.
    if matches!(
        u16::from_be_bytes(super::super::super::bytes::read_array(buf, 0)),
        0x494e | 0x4451
    ) {
        return None;
    }
    let l = |lsn, crc, uuid| BufLayout {
        lsn,
        crc: Some(crc),
        uuid,
        per_block: false,
        always_replay: false,
    };
    match read_u32be(buf, 0) {
        // Short-form btree blocks: free space by block and size, inodes, free inodes,
        // reverse mapping, reference counts.
        0x4142_3342 | 0x4142_3343 | 0x4941_4233 | 0x4649_4233 | 0x524d_4233 | 0x5233_4643 => {
            Some(l(24, 52, 32))
        }
        0x424d_4133 => Some(l(32, 64, 40)), // BMA3: block map btree (long form)
        0x5841_4746 => Some(l(208, 216, 64)), // XAGF
        0x5841_464c => Some(l(24, 32, 8)),  // XAFL
        0x5841_4749 => Some(l(320, 312, 296)), // XAGI
        0x5853_4c4d => Some(l(48, 12, 16)), // XSLM: remote symlink
        0x5844_4233 | 0x5844_4433 | 0x5844_4633 => Some(l(16, 4, 24)), // XDB3 XDD3 XDF3
        0x5841_524d => Some(BufLayout {
            lsn: 48,
            crc: Some(12),
            uuid: 16,
            per_block: true,
            always_replay: true,
        }), // XARM: remote attribute value
        0x5846_5342 => {
            // XFSB: a superblock copy. Its uuid is the meta uuid when the feature is on.
            let incompat = read_u32be(buf, 216);
            Some(l(240, 224, if incompat & (1 << 2) != 0 { 248 } else { 32 }))
        }
        _ => match u16::from_be_bytes(super::super::super::bytes::read_array(buf, 8)) {
            // Directory/attribute btree nodes and leaves (da3 block info).
            0x3ebe | 0x3bee | 0x3df1 | 0x3dff => Some(l(24, 12, 32)),
            _ => {
                let _ = geo;
                None
            }
        },
    }
}

/// The replay of pass 2.
pub struct Replay<'a> {
    dev: &'a dyn ByteSource,
    geo: &'a LogGeometry,
    cancels: CancelTable,
    work: LogOverlay,
    /// LSN of the transactions being replayed, and the buffers they replayed: their LSN
    /// and checksum are stamped when the LSN changes, as the kernel writes its buffers then.
    cur_lsn: u64,
    pending: Vec<(u64, u64)>,
    /// Unfinished intents that change what files show, and those of free-space metadata.
    open_visible: HashSet<(u16, u64)>,
    open_free_space: HashSet<(u16, u64)>,
    max_bytes: usize,
}

/// Where a buffer item's logged regions go: (offset in the buffer, bytes).
type Regions<'r> = Vec<(usize, &'r [u8])>;

impl<'a> Replay<'a> {
    pub fn new(dev: &'a dyn ByteSource, geo: &'a LogGeometry, cancels: CancelTable) -> Self {
        let log_bytes = usize::try_from(geo.log_bbs * BBSIZE).unwrap_or(usize::MAX);
        Replay {
            dev,
            geo,
            cancels,
            work: LogOverlay::empty(),
            cur_lsn: 0,
            pending: Vec::new(),
            open_visible: HashSet::new(),
            open_free_space: HashSet::new(),
            max_bytes: log_bytes.saturating_mul(16).max(64 << 20),
        }
    }

    pub fn into_overlay(self) -> LogOverlay {
        self.work
    }

    fn check_range(&self, daddr: u64, nbb: u64) -> Result<(), ScanError> {
        let end = daddr
            .checked_add(nbb)
            .and_then(|e| e.checked_mul(BBSIZE))
            .ok_or(CorruptKind::XfsLogBufferRange)?;
        if nbb == 0 || nbb > MAX_BUF_BBS || daddr > i64::MAX as u64 || end > self.geo.dev_len {
            return Err(CorruptKind::XfsLogBufferRange.into());
        }
        Ok(())
    }

    /// The buffer as replay has left it so far.
    fn read_buf(&self, daddr: u64, nbb: u64) -> Result<Vec<u8>, ScanError> {
        self.check_range(daddr, nbb)?;
        let mut buf = vec![0u8; (nbb * BBSIZE) as usize];
        self.dev.read_exact_at(&mut buf, daddr * BBSIZE)?;
        self.work.apply(daddr * BBSIZE, &mut buf);
        Ok(buf)
    }

    /// Keeps the sectors of `buf` that differ from the device (a sector replayed back to
    /// its on-disk bytes is dropped): an inode item holds the sector of its inode, not the
    /// whole cluster.
    fn write_buf(&mut self, daddr: u64, buf: &[u8]) -> Result<(), ScanError> {
        let mut disk = vec![0u8; buf.len()];
        self.dev.read_exact_at(&mut disk, daddr * BBSIZE)?;
        let sectors = buf
            .chunks(BBSIZE as usize)
            .zip(disk.chunks(BBSIZE as usize));
        for (i, (chunk, on_disk)) in sectors.enumerate() {
            if chunk == on_disk {
                self.work.remove_sector(daddr + i as u64);
            } else {
                self.work.put_sector(daddr + i as u64, chunk);
            }
        }
        if self.work.bytes_held() > self.max_bytes {
            return Err(ScanError::FallBack(format!(
                "replayed metadata would exceed {} bytes",
                self.max_bytes
            )));
        }
        Ok(())
    }

    /// Pass 2 for one committed transaction.
    pub fn pass2(&mut self, t: Transaction, stats: &mut ReplayStats) -> Result<(), ScanError> {
        if t.lsn != self.cur_lsn {
            self.flush_pending()?;
            self.cur_lsn = t.lsn;
        }
        let be = t.big_endian;
        // The kernel's order (xlog_recover_reorder_trans).
        let mut buffers = Vec::new();
        let mut others = Vec::new();
        let mut inodes = Vec::new();
        let mut inode_bufs = Vec::new();
        let mut cancels = Vec::new();
        for item in &t.items {
            let Some(r0) = item.first() else {
                return Err(CorruptKind::XfsLogItem.into());
            };
            let ty = host16(r0, 0, be);
            *stats.items_by_type.entry(ty).or_insert(0) += 1;
            match ty {
                XFS_LI_BUF => {
                    let flags = host16(r0, 4, be);
                    if flags & XFS_BLF_CANCEL != 0 {
                        cancels.push(item);
                    } else if flags & XFS_BLF_INODE_BUF != 0 {
                        inode_bufs.push(item);
                    } else {
                        buffers.push(item);
                    }
                }
                XFS_LI_ICREATE => buffers.push(item),
                XFS_LI_INODE => inodes.push(item),
                _ => others.push(item),
            }
        }
        inode_bufs.reverse();
        cancels.reverse();
        for item in buffers
            .into_iter()
            .chain(others)
            .chain(inodes)
            .chain(inode_bufs)
            .chain(cancels)
        {
            match host16(&item[0], 0, be) {
                XFS_LI_BUF => self.buffer(item, be, stats)?,
                XFS_LI_INODE => self.inode(item, be, stats)?,
                XFS_LI_ICREATE => self.icreate(item, stats)?,
                XFS_LI_DQUOT | XFS_LI_QUOTAOFF => stats.dquots_skipped += 1,
                XFS_LI_IUNLINK => {}
                ty @ (XFS_LI_EFI | XFS_LI_RUI | XFS_LI_CUI | XFS_LI_EFI_RT | XFS_LI_RUI_RT
                | XFS_LI_CUI_RT) => {
                    self.open_free_space.insert((ty, intent_id(item, be)?));
                }
                ty @ (XFS_LI_EFD | XFS_LI_RUD | XFS_LI_CUD | XFS_LI_EFD_RT | XFS_LI_RUD_RT
                | XFS_LI_CUD_RT) => {
                    self.open_free_space.remove(&(ty - 1, intent_id(item, be)?));
                }
                ty @ (XFS_LI_BUI | XFS_LI_ATTRI | XFS_LI_XMI) => {
                    self.open_visible.insert((ty, intent_id(item, be)?));
                }
                ty @ (XFS_LI_BUD | XFS_LI_ATTRD | XFS_LI_XMD) => {
                    self.open_visible.remove(&(ty - 1, intent_id(item, be)?));
                }
                ty => {
                    return Err(ScanError::FallBack(format!(
                        "log item type {ty:#x} is not replayed"
                    )))
                }
            }
        }
        stats.transactions += 1;
        Ok(())
    }

    /// After the last transaction: stamps the last buffers and refuses to show a state
    /// whose unfinished intents would change files.
    pub fn finish(&mut self, stats: &mut ReplayStats) -> Result<(), String> {
        self.flush_pending().map_err(|e| match e {
            ScanError::FallBack(s) => s,
            ScanError::Guest(g) => g.to_string(),
        })?;
        stats.unfinished_free_space_intents = self.open_free_space.len() as u32;
        if let Some((ty, id)) = self.open_visible.iter().min() {
            return Err(format!(
                "{} unfinished intent(s) change files (type {ty:#x}, id {id:#x}); the kernel \
                 finishes them after replay, which is not done here",
                self.open_visible.len()
            ));
        }
        Ok(())
    }

    /// Stamps the LSN and recomputes the checksum of the buffers replayed under `cur_lsn`,
    /// as the kernel's write verifiers do when recovery writes them.
    fn flush_pending(&mut self) -> Result<(), ScanError> {
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_unstable();
        pending.dedup();
        if !self.geo.v5 {
            return Ok(());
        }
        for (daddr, nbb) in pending {
            let mut buf = self.read_buf(daddr, nbb)?;
            let Some(layout) = buf_layout(&buf, self.geo) else {
                continue;
            };
            if layout.per_block {
                let bs = self.geo.blocksize as usize;
                for block in buf.chunks_mut(bs) {
                    if read_u32be(block, 0) == 0x5841_524d {
                        put_be64(block, layout.lsn, self.cur_lsn);
                        if let Some(c) = layout.crc {
                            update_cksum(block, c);
                        }
                    }
                }
            } else {
                put_be64(&mut buf, layout.lsn, self.cur_lsn);
                if let Some(c) = layout.crc {
                    update_cksum(&mut buf, c);
                }
            }
            self.write_buf(daddr, &buf)?;
        }
        Ok(())
    }

    fn buffer(
        &mut self,
        item: &[Vec<u8>],
        be: bool,
        stats: &mut ReplayStats,
    ) -> Result<(), ScanError> {
        let r0 = &item[0];
        if r0.len() < 20 {
            return Err(CorruptKind::XfsLogItem.into());
        }
        let flags = host16(r0, 4, be);
        let nbb = u64::from(host16(r0, 6, be));
        let daddr = host64(r0, 8, be);
        if flags & XFS_BLF_CANCEL != 0 {
            self.cancels.put(daddr, nbb);
            return Ok(());
        }
        if self.cancels.is_cancelled(daddr, nbb) {
            stats.cancelled_items += 1;
            return Ok(());
        }
        self.check_range(daddr, nbb)?;
        let map_size = host32(r0, 16, be) as usize;
        if map_size > XFS_BLF_DATAMAP_SIZE || 20 + 4 * map_size > r0.len() {
            return Err(CorruptKind::XfsLogItem.into());
        }
        if flags & XFS_BLF_DQUOT_BUFS != 0 {
            ::log::debug!("XFS log: quota buffer at {daddr} not replayed");
            stats.dquots_skipped += 1;
            return Ok(());
        }
        let map: Vec<u32> = (0..map_size).map(|i| host32(r0, 20 + 4 * i, be)).collect();
        let mut buf = self.read_buf(daddr, nbb)?;
        // Inode buffers carry no buffer LSN (only each inode its own): always replayed.
        if self.geo.v5 && flags & XFS_BLF_INODE_BUF == 0 {
            if let Some(layout) = buf_layout(&buf, self.geo) {
                let lsn = read_u64be(&buf, layout.lsn);
                let uuid: [u8; 16] = super::super::super::bytes::read_array(&buf, layout.uuid);
                if !layout.always_replay
                    && uuid == self.geo.meta_uuid
                    && lsn != 0
                    && lsn != u64::MAX
                    && lsn >= self.cur_lsn
                {
                    stats.buffers_skipped_lsn += 1;
                    return Ok(());
                }
            }
        }
        let regions = chunk_regions(&map, item, buf.len())?;
        if flags & XFS_BLF_INODE_BUF != 0 {
            // Inode buffers log only the unlinked list pointers; each inode touched gets
            // its checksum back.
            let isize = self.geo.inodesize as usize;
            for i in 0..buf.len() / isize {
                let off = i * isize + DI_NEXT_UNLINKED;
                let Some(&(start, bytes)) = regions
                    .iter()
                    .find(|(s, b)| *s <= off && off + 4 <= s + b.len())
                else {
                    continue;
                };
                let logged: [u8; 4] = super::super::super::bytes::read_array(bytes, off - start);
                if logged == [0; 4] {
                    return Err(CorruptKind::XfsLogInodeItem.into());
                }
                buf[off..off + 4].copy_from_slice(&logged);
                if self.geo.v5 {
                    update_cksum(&mut buf[i * isize..(i + 1) * isize], DI_CRC);
                }
            }
        } else {
            for (start, bytes) in regions {
                buf[start..start + bytes.len()].copy_from_slice(bytes);
            }
            self.pending.push((daddr, nbb));
        }
        self.write_buf(daddr, &buf)?;
        stats.buffers_replayed += 1;
        Ok(())
    }

    fn inode(
        &mut self,
        item: &[Vec<u8>],
        be: bool,
        stats: &mut ReplayStats,
    ) -> Result<(), ScanError> {
        let bad = || ScanError::from(CorruptKind::XfsLogInodeItem);
        let r0 = &item[0];
        // The 64-bit layout (56 bytes) or the packed one of 32-bit hosts (52 bytes).
        let (ino_off, rdev_off, blkno_off, len_off, boff_off) = match r0.len() {
            56 => (16, 24, 40, 48, 52),
            52 => (12, 20, 36, 44, 48),
            _ => return Err(bad()),
        };
        let _ilf_ino = host64(r0, ino_off, be);
        let fields = host32(r0, 4, be);
        let rdev = host32(r0, rdev_off, be);
        let daddr = host64(r0, blkno_off, be);
        let nbb = u64::from(host32(r0, len_off, be));
        let boffset = host32(r0, boff_off, be) as usize;
        if item.len() < 2 || fields & XFS_ILOG_CORE == 0 {
            return Err(bad());
        }
        if self.cancels.is_cancelled(daddr, nbb) {
            stats.cancelled_items += 1;
            return Ok(());
        }
        let mut buf = self.read_buf(daddr, nbb)?;
        let isize = self.geo.inodesize as usize;
        let dip_end = boffset.checked_add(isize).ok_or_else(bad)?;
        let dip = buf.get_mut(boffset..dip_end).ok_or_else(bad)?;
        if u16::from_be_bytes([dip[0], dip[1]]) != XFS_DINODE_MAGIC {
            return Err(bad());
        }
        let ld = &item[1];
        // The core is in the logging host's byte order: its magic says which.
        let ld_be = if read_u16le(ld, 0) == XFS_DINODE_MAGIC {
            false
        } else if u16::from_be_bytes(super::super::super::bytes::read_array(ld, 0))
            == XFS_DINODE_MAGIC
        {
            true
        } else {
            return Err(bad());
        };
        if dip[4] >= 3 {
            let lsn = read_u64be(dip, 112);
            if lsn != 0 && lsn != u64::MAX && lsn > self.cur_lsn {
                if fields & (XFS_ILOG_DOWNER | XFS_ILOG_AOWNER) != 0 {
                    return Err(owner_change());
                }
                stats.inodes_skipped += 1;
                return Ok(());
            }
        }
        if !self.geo.v5 {
            let logged = host16(ld, 30, ld_be);
            let on_disk = u16::from_be_bytes([dip[30], dip[31]]);
            if logged < on_disk && !(on_disk == u16::MAX && logged < u16::MAX >> 1) {
                stats.inodes_skipped += 1;
                return Ok(());
            }
        }
        let core_len = if self.geo.v5 { 176 } else { DI_NEXT_UNLINKED };
        if ld.len() != core_len {
            return Err(bad());
        }
        log_dinode_check(ld, ld_be, self.geo)?;
        log_dinode_to_disk(ld, ld_be, dip, self.cur_lsn);
        if fields & XFS_ILOG_DEV != 0 {
            let core = self.geo.dinode_core_size(dip[4]);
            put_be32(dip, core, rdev);
        }
        let core = self.geo.dinode_core_size(dip[4]);
        let litino = isize.checked_sub(core).ok_or_else(bad)?;
        let forkoff = usize::from(dip[82]) << 3;
        if forkoff > litino {
            return Err(bad());
        }
        let dsize = if forkoff != 0 { forkoff } else { litino };
        if item.len() > 2 {
            let src = &item[2];
            match fields & XFS_ILOG_DFORK {
                XFS_ILOG_DDATA | XFS_ILOG_DEXT => {
                    let dst = dip.get_mut(core..core + src.len()).ok_or_else(bad)?;
                    dst.copy_from_slice(src);
                }
                XFS_ILOG_DBROOT => {
                    bmbt_to_bmdr(src, &mut dip[core..core + dsize], self.geo.v5)?;
                }
                _ => {}
            }
        }
        if fields & XFS_ILOG_AFORK != 0 {
            let idx = if fields & XFS_ILOG_DFORK != 0 { 3 } else { 2 };
            let src = item.get(idx).ok_or_else(bad)?;
            let aptr = core + forkoff;
            let asize = litino - forkoff;
            match fields & XFS_ILOG_AFORK {
                XFS_ILOG_ADATA | XFS_ILOG_AEXT => {
                    if src.len() > asize {
                        return Err(bad());
                    }
                    dip[aptr..aptr + src.len()].copy_from_slice(src);
                }
                XFS_ILOG_ABROOT => {
                    bmbt_to_bmdr(src, &mut dip[aptr..aptr + asize], self.geo.v5)?;
                }
                _ => return Err(bad()),
            }
        }
        if fields & (XFS_ILOG_DOWNER | XFS_ILOG_AOWNER) != 0
            && u16::from_be_bytes([dip[2], dip[3]]) != 0
        {
            return Err(owner_change());
        }
        if dip[4] >= 3 {
            update_cksum(dip, DI_CRC);
        }
        self.write_buf(daddr, &buf)?;
        stats.inodes_replayed += 1;
        Ok(())
    }

    fn icreate(&mut self, item: &[Vec<u8>], stats: &mut ReplayStats) -> Result<(), ScanError> {
        let bad = || ScanError::from(CorruptKind::XfsLogIcreate);
        let geo = self.geo;
        let r0 = &item[0];
        if item.len() != 1 || r0.len() < 28 {
            return Err(bad());
        }
        let agno = read_u32be(r0, 4);
        let agbno = read_u32be(r0, 8);
        let count = read_u32be(r0, 12);
        let isize = read_u32be(r0, 16);
        let length = read_u32be(r0, 20);
        let gen = read_u32be(r0, 24);
        let ialloc_blks = (64u32 >> geo.inopblog).max(1);
        if agno >= geo.agcount
            || agbno == 0
            || agbno >= geo.agblocks
            || isize != geo.inodesize
            || count == 0
            || length == 0
            || length >= geo.agblocks
            || (length != ialloc_blks && (geo.spino_align == 0 || length != geo.spino_align))
            || count >> geo.inopblog != length
        {
            return Err(bad());
        }
        // Inode cluster: 8 KiB, scaled by the inode size on v5 when the alignment allows.
        let mut cluster = 8192u32;
        if geo.v5 {
            let scaled = cluster * (geo.inodesize / 256);
            if geo.inoalignmt >= scaled >> geo.blocklog {
                cluster = scaled;
            }
        }
        let bpc = (cluster >> geo.blocklog).max(1);
        if !length.is_multiple_of(bpc) {
            return Err(bad());
        }
        let bb_per_block = u64::from(geo.blocksize) / BBSIZE;
        let nbufs = length / bpc;
        let mut cancelled = 0;
        for j in 0..nbufs {
            let daddr = geo
                .agb_to_daddr(u64::from(agno), u64::from(agbno + j * bpc))
                .ok_or_else(bad)?;
            if self
                .cancels
                .is_cancelled(daddr, u64::from(bpc) * bb_per_block)
            {
                cancelled += 1;
            }
        }
        if cancelled != 0 {
            stats.cancelled_items += 1;
            return Ok(());
        }
        let first_ino = (u64::from(agno) << (u32::from(geo.agblklog) + u32::from(geo.inopblog)))
            | (u64::from(agbno) << geo.inopblog);
        let per_cluster = (u64::from(bpc) << geo.inopblog) as usize;
        for j in 0..nbufs {
            let daddr = geo
                .agb_to_daddr(u64::from(agno), u64::from(agbno + j * bpc))
                .ok_or_else(bad)?;
            let nbb = u64::from(bpc) * bb_per_block;
            self.check_range(daddr, nbb)?;
            let mut buf = vec![0u8; (nbb * BBSIZE) as usize];
            for i in 0..per_cluster {
                let dip = &mut buf[i * isize as usize..(i + 1) * isize as usize];
                put_be16(dip, 0, XFS_DINODE_MAGIC);
                dip[4] = if geo.v5 { 3 } else { 2 };
                put_be32(dip, 92, gen);
                put_be32(dip, DI_NEXT_UNLINKED, NULLAGINO);
                if geo.v5 {
                    let ino = first_ino + u64::from(j) * per_cluster as u64 + i as u64;
                    put_be64(dip, 152, ino);
                    dip[160..176].copy_from_slice(&geo.meta_uuid);
                    update_cksum(dip, DI_CRC);
                }
            }
            self.write_buf(daddr, &buf)?;
        }
        stats.icreates += 1;
        Ok(())
    }
}

fn owner_change() -> ScanError {
    ScanError::FallBack("an inode fork owner change (extent swap) is not replayed".into())
}

fn intent_id(item: &[Vec<u8>], be: bool) -> Result<u64, ScanError> {
    let r0 = &item[0];
    if r0.len() < 16 {
        return Err(CorruptKind::XfsLogItem.into());
    }
    Ok(host64(r0, 8, be))
}

/// The logged regions of a buffer item placed by its dirty bitmap: each run of set bits is
/// one region (or less: a region split at a page boundary covers only its own length).
fn chunk_regions<'r>(
    map: &[u32],
    item: &'r [Vec<u8>],
    buf_len: usize,
) -> Result<Regions<'r>, ScanError> {
    let nbits = map.len() * 32;
    let bit_set = |b: usize| map.get(b / 32).is_some_and(|w| w & (1 << (b % 32)) != 0);
    let mut out = Vec::new();
    let mut bit = 0usize;
    let mut i = 1usize;
    while bit < nbits {
        if !bit_set(bit) {
            bit += 1;
            continue;
        }
        let mut run = 1;
        while bit + run < nbits && bit_set(bit + run) {
            run += 1;
        }
        let region = item.get(i).ok_or(CorruptKind::XfsLogItemRegions)?;
        if region.len() < run * XFS_BLF_CHUNK {
            run = region.len() / XFS_BLF_CHUNK;
        }
        if run == 0 {
            return Err(CorruptKind::XfsLogItem.into());
        }
        let start = bit * XFS_BLF_CHUNK;
        let len = run * XFS_BLF_CHUNK;
        if start + len > buf_len {
            return Err(CorruptKind::XfsLogBufferRange.into());
        }
        out.push((start, &region[..len]));
        i += 1;
        bit += run;
        if i > usize::from(XLOG_MAX_REGIONS_IN_ITEM) {
            return Err(CorruptKind::XfsLogItemRegions.into());
        }
    }
    Ok(out)
}

/// The kernel's checks on a logged inode core before it is replayed.
fn log_dinode_check(ld: &[u8], be: bool, geo: &LogGeometry) -> Result<(), ScanError> {
    let bad = || ScanError::from(CorruptKind::XfsLogInodeItem);
    let mode = host16(ld, 2, be);
    let version = ld[4];
    let format = ld[5];
    match mode & 0o170000 {
        0o100000 if !matches!(format, XFS_DINODE_FMT_EXTENTS | XFS_DINODE_FMT_BTREE) => {
            return Err(bad())
        }
        0o040000
            if !matches!(
                format,
                XFS_DINODE_FMT_LOCAL | XFS_DINODE_FMT_EXTENTS | XFS_DINODE_FMT_BTREE
            ) =>
        {
            return Err(bad())
        }
        _ => {}
    }
    let flags2 = if version >= 3 { host64(ld, 120, be) } else { 0 };
    let (nextents, anextents) = if version >= 3 && flags2 & XFS_DIFLAG2_NREXT64 != 0 {
        if !geo.nrext64 || host16(ld, 80, be) != 0 {
            return Err(bad());
        }
        (host64(ld, 24, be), u64::from(host32(ld, 76, be)))
    } else {
        if version == 3 && host64(ld, 24, be) != 0 {
            return Err(bad());
        }
        (u64::from(host32(ld, 76, be)), u64::from(host16(ld, 80, be)))
    };
    if nextents.saturating_add(anextents) > host64(ld, 64, be) {
        return Err(bad());
    }
    if u32::from(ld[82]) > geo.inodesize {
        return Err(bad());
    }
    Ok(())
}

/// Converts a logged inode core (`xfs_log_dinode`, in the logging host's byte order) into
/// the on-disk big-endian core, as `xfs_log_dinode_to_disk` does. `di_next_unlinked` is
/// left as it is: it is not recovered from the inode item.
pub fn log_dinode_to_disk(ld: &[u8], be: bool, dip: &mut [u8], lsn: u64) {
    let version = ld.get(4).copied().unwrap_or(0);
    let flags2 = if version >= 3 { host64(ld, 120, be) } else { 0 };
    let bigtime = version >= 3 && flags2 & XFS_DIFLAG2_BIGTIME != 0;
    let ts = |dip: &mut [u8], off: usize| {
        if bigtime {
            put_be64(dip, off, host64(ld, off, be));
        } else {
            put_be32(dip, off, host32(ld, off, be));
            put_be32(dip, off + 4, host32(ld, off + 4, be));
        }
    };
    if dip.len() < 176 || ld.len() < DI_NEXT_UNLINKED {
        return;
    }
    put_be16(dip, 0, host16(ld, 0, be));
    put_be16(dip, 2, host16(ld, 2, be));
    dip[4] = version;
    dip[5] = ld.get(5).copied().unwrap_or(0);
    put_be16(dip, 6, 0);
    put_be32(dip, 8, host32(ld, 8, be));
    put_be32(dip, 12, host32(ld, 12, be));
    put_be32(dip, 16, host32(ld, 16, be));
    put_be16(dip, 20, host16(ld, 20, be));
    put_be16(dip, 22, host16(ld, 22, be));
    ts(dip, 32);
    ts(dip, 40);
    ts(dip, 48);
    put_be64(dip, 56, host64(ld, 56, be));
    put_be64(dip, 64, host64(ld, 64, be));
    put_be32(dip, 72, host32(ld, 72, be));
    dip[82] = ld.get(82).copied().unwrap_or(0);
    dip[83] = ld.get(83).copied().unwrap_or(0);
    put_be32(dip, 84, host32(ld, 84, be));
    put_be16(dip, 88, host16(ld, 88, be));
    put_be16(dip, 90, host16(ld, 90, be));
    put_be32(dip, 92, host32(ld, 92, be));
    if version == 3 {
        put_be64(dip, 104, host64(ld, 104, be));
        ts(dip, 144);
        put_be64(dip, 120, flags2);
        put_be32(dip, 128, host32(ld, 128, be));
        put_be64(dip, 152, host64(ld, 152, be));
        put_be64(dip, 112, lsn);
        dip[132..144].fill(0);
        if let Some(u) = ld.get(160..176) {
            dip[160..176].copy_from_slice(u);
        }
        put_be64(dip, 24, 0);
    } else {
        // The flush counter is reset on replay, as the kernel does.
        dip[24..30].fill(0);
        put_be16(dip, 30, 0);
    }
    if version >= 3 && flags2 & XFS_DIFLAG2_NREXT64 != 0 {
        put_be64(dip, 24, host64(ld, 24, be));
        put_be32(dip, 76, host32(ld, 76, be));
        put_be16(dip, 80, host16(ld, 80, be));
    } else {
        put_be32(dip, 76, host32(ld, 76, be));
        put_be16(dip, 80, host16(ld, 80, be));
    }
}

/// Converts a logged block-map btree root (an in-memory btree block with its long header)
/// into the on-disk root in the inode fork (`xfs_bmdr_block`: level, count, keys, pointers).
pub fn bmbt_to_bmdr(src: &[u8], dst: &mut [u8], v5: bool) -> Result<(), ScanError> {
    let bad = || ScanError::from(CorruptKind::XfsLogInodeItem);
    let hl = if v5 { 72 } else { 24 };
    if src.len() < hl || dst.len() < 4 {
        return Err(bad());
    }
    let level = u16::from_be_bytes([src[4], src[5]]);
    let numrecs = u16::from_be_bytes([src[6], src[7]]) as usize;
    let rmax = (src.len() - hl) / 16;
    let dmax = (dst.len() - 4) / 16;
    if numrecs > rmax || numrecs > dmax {
        return Err(bad());
    }
    put_be16(dst, 0, level);
    put_be16(dst, 2, numrecs as u16);
    for i in 0..numrecs {
        let k = hl + i * 8;
        let p = hl + rmax * 8 + i * 8;
        let (Some(key), Some(ptr)) = (src.get(k..k + 8), src.get(p..p + 8)) else {
            return Err(bad());
        };
        let key: [u8; 8] = key.try_into().map_err(|_| bad())?;
        let ptr: [u8; 8] = ptr.try_into().map_err(|_| bad())?;
        dst[4 + i * 8..12 + i * 8].copy_from_slice(&key);
        let dp = 4 + dmax * 8 + i * 8;
        dst[dp..dp + 8].copy_from_slice(&ptr);
    }
    Ok(())
}
