//! XFS log recovery, in memory.
//!
//! A filesystem whose internal log is dirty is shown as the kernel shows it after log
//! recovery (fs/xfs/xfs_log_recover.c and the item recovery files beside it): the committed
//! transactions between the log's tail and head replayed over the metadata. Nothing is
//! written: the replay builds a [`LogOverlay`], the replayed 512-byte sectors of the device,
//! that every read of the filesystem's metadata passes through ([`LogOverlay::apply`]).
//!
//! The steps ("XFS Algorithms & Data Structures", chapter "Journaling Log"):
//! 1. find the head: the cycle number of each 512-byte basic block (the first word of every
//!    block is replaced by the cycle when written; record headers carry it at offset 4),
//!    binary search for where the cycle drops, then a window before it for blocks written
//!    out of order; walk back to the last record header, verify it (cycle stamps and, on v5,
//!    the record CRC), and on failure drop it and try the one before (a torn write);
//! 2. the tail is the last record's `h_tail_lsn`; a last record that is an unmount record
//!    means a clean log (empty overlay);
//! 3. scan the records from tail to head ([`scan`]): restore each block's first word from
//!    the header's cycle data (extended headers for records over 32 KiB), split the data into
//!    operations and reassemble transactions, regions continued across records included;
//!    transactions without a commit record are dropped;
//! 4. pass 1 counts buffer cancel records, pass 2 replays the items of each committed
//!    transaction ([`replay`]): buffers (dirty bitmap of 128-byte chunks), inode buffers
//!    (only the unlinked pointers), inodes (the core converted from the logging host's byte
//!    order, forks copied, a btree root converted to its on-disk form), inode chunk creation;
//!    on v5 a buffer or inode is replayed only when its on-disk LSN is older;
//! 5. the v5 checksums the kernel's write path would recompute: every replayed inode, and
//!    every replayed buffer by its magic, with the LSN stamped as the kernel's write
//!    verifiers stamp it.
//!
//! Intents (extent free, rmap, refcount) that were never finished are finished by the kernel
//! after replay; they only touch free-space metadata that no file view shows, so they are
//! counted, not run. Unfinished intents that change what files show (block mapping, mapping
//! exchange, logged extended attributes), inode fork owner changes and unknown item types
//! cannot be replayed faithfully here: the recovery then falls back to an empty overlay
//! (the filesystem as of its last checkpoint written in place) and says why in
//! [`ReplayStats::fell_back`]. Never half a transaction.
//!
//! After replay the kernel also frees the inodes left on the AGI unlinked lists (removed
//! while open, or not yet inactivated when the log stopped); here they stay allocated, with
//! no name reaching them, so no file view differs (free-space counts do).
//!
//! Memory: the log is read twice, record by record (at most 264 KiB at a time); transactions
//! in flight hold their logged regions (at most the log's size); the overlay holds at most
//! 16 times the log's size (beyond that the recovery falls back). Every loop is bounded by the
//! log's block count.

pub mod replay;
pub mod scan;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use super::super::bytes::{read_u32be, read_u64be, read_u8};
use super::super::{CorruptKind, GuestError};
use crate::source::ByteSource;

/// The size of a basic block, the log's and the device's address unit.
pub const BBSIZE: u64 = 512;

const XFS_SB_MAGIC: u32 = 0x5846_5342;
const XFS_SB_VERSION_NUMBITS: u16 = 0x000f;
const XFS_SB_VERSION_LOGV2BIT: u16 = 0x0400;
const XFS_SB_FEAT_INCOMPAT_META_UUID: u32 = 1 << 2;
const XFS_SB_FEAT_INCOMPAT_NREXT64: u32 = 1 << 5;

/// What the recovery needs to know of the filesystem, from its primary superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogGeometry {
    /// Byte offset of the internal log on the device.
    pub log_start: u64,
    /// Length of the log in basic blocks.
    pub log_bbs: u64,
    pub sectsize: u32,
    pub logsectsize: u32,
    pub blocksize: u32,
    pub blocklog: u8,
    pub inodesize: u32,
    pub inodelog: u8,
    pub inopblog: u8,
    pub agblocks: u32,
    pub agblklog: u8,
    pub agcount: u32,
    pub inoalignmt: u32,
    pub spino_align: u32,
    /// Version 5 superblock: CRCs, v3 inodes, LSNs in metadata blocks.
    pub v5: bool,
    /// Version 2 log (records larger than 32 KiB, extended headers).
    pub logv2: bool,
    /// Large extent counters in the inode (`NREXT64`).
    pub nrext64: bool,
    pub uuid: [u8; 16],
    /// The uuid stamped in metadata blocks (`sb_meta_uuid` when the feature says so).
    pub meta_uuid: [u8; 16],
    /// Log stripe unit in bytes (records are padded to it).
    pub logsunit: u32,
    /// Length of the device holding the filesystem.
    pub dev_len: u64,
}

impl LogGeometry {
    /// Reads the log's geometry from the primary superblock (its first sector). An external
    /// log device is not read: [`GuestError::Unsupported`].
    pub fn from_superblock(sb: &[u8], dev_len: u64) -> Result<LogGeometry, GuestError> {
        let bad = || GuestError::Corrupt(CorruptKind::XfsLogGeometry);
        if sb.len() < 512 || read_u32be(sb, 0) != XFS_SB_MAGIC {
            return Err(bad());
        }
        let sb_blocksize = read_u32be(sb, 4);
        let sb_uuid: [u8; 16] = super::super::bytes::read_array(sb, 32);
        let sb_logstart = read_u64be(sb, 48);
        let sb_agblocks = read_u32be(sb, 84);
        let sb_agcount = read_u32be(sb, 88);
        let sb_logblocks = read_u32be(sb, 96);
        let sb_versionnum = u16::from_be_bytes([read_u8(sb, 100), read_u8(sb, 101)]);
        let sb_sectsize = u16::from_be_bytes([read_u8(sb, 102), read_u8(sb, 103)]);
        let sb_inodesize = u16::from_be_bytes([read_u8(sb, 104), read_u8(sb, 105)]);
        let sb_blocklog = read_u8(sb, 120);
        let sb_inodelog = read_u8(sb, 122);
        let sb_inopblog = read_u8(sb, 123);
        let sb_agblklog = read_u8(sb, 124);
        let sb_inoalignmt = read_u32be(sb, 180);
        let sb_logsectsize = u16::from_be_bytes([read_u8(sb, 194), read_u8(sb, 195)]);
        let sb_logsunit = read_u32be(sb, 196);
        let sb_features_incompat = read_u32be(sb, 216);
        let sb_spino_align = read_u32be(sb, 228);
        let sb_meta_uuid: [u8; 16] = super::super::bytes::read_array(sb, 248);

        let v5 = sb_versionnum & XFS_SB_VERSION_NUMBITS == 5;
        if !(9..=16).contains(&sb_blocklog)
            || sb_blocksize != 1u32 << sb_blocklog
            || !(8..=11).contains(&sb_inodelog)
            || u32::from(sb_inodesize) != 1u32 << sb_inodelog
            || sb_inodelog > sb_blocklog
            || sb_inopblog != sb_blocklog - sb_inodelog
            || sb_agcount == 0
            || sb_agblocks == 0
            || sb_agblklog > 31
            || u64::from(sb_agblocks) > 1u64 << sb_agblklog
            || sb_logblocks == 0
            || !matches!(sb_sectsize, 512 | 1024 | 2048 | 4096 | 8192 | 16384 | 32768)
        {
            return Err(bad());
        }
        if sb_logstart == 0 {
            return Err(GuestError::Unsupported(
                "XFS with an external log device".into(),
            ));
        }
        let logsectsize = if sb_logsectsize == 0 {
            512
        } else {
            u32::from(sb_logsectsize)
        };
        let geo_partial = LogGeometry {
            log_start: 0,
            log_bbs: 0,
            sectsize: u32::from(sb_sectsize),
            logsectsize,
            blocksize: sb_blocksize,
            blocklog: sb_blocklog,
            inodesize: u32::from(sb_inodesize),
            inodelog: sb_inodelog,
            inopblog: sb_inopblog,
            agblocks: sb_agblocks,
            agblklog: sb_agblklog,
            agcount: sb_agcount,
            inoalignmt: sb_inoalignmt,
            spino_align: sb_spino_align,
            v5,
            logv2: v5 || sb_versionnum & XFS_SB_VERSION_LOGV2BIT != 0,
            nrext64: v5 && sb_features_incompat & XFS_SB_FEAT_INCOMPAT_NREXT64 != 0,
            uuid: sb_uuid,
            meta_uuid: if v5 && sb_features_incompat & XFS_SB_FEAT_INCOMPAT_META_UUID != 0 {
                sb_meta_uuid
            } else {
                sb_uuid
            },
            logsunit: sb_logsunit,
            dev_len,
        };
        let log_start = geo_partial
            .fsb_to_daddr(sb_logstart)
            .and_then(|d| d.checked_mul(BBSIZE))
            .ok_or_else(bad)?;
        let log_bytes = u64::from(sb_logblocks) << sb_blocklog;
        match log_start.checked_add(log_bytes) {
            Some(end) if end <= dev_len => {}
            _ => return Err(bad()),
        }
        Ok(LogGeometry {
            log_start,
            log_bbs: log_bytes / BBSIZE,
            ..geo_partial
        })
    }

    /// A filesystem block number (AG number in the high bits) as a basic block number.
    pub fn fsb_to_daddr(&self, fsb: u64) -> Option<u64> {
        let agno = fsb >> self.agblklog;
        let agbno = fsb & ((1u64 << self.agblklog) - 1);
        if agno >= u64::from(self.agcount) || agbno >= u64::from(self.agblocks) {
            return None;
        }
        self.agb_to_daddr(agno, agbno)
    }

    /// An AG-relative block as a basic block number.
    pub fn agb_to_daddr(&self, agno: u64, agbno: u64) -> Option<u64> {
        agno.checked_mul(u64::from(self.agblocks))?
            .checked_add(agbno)?
            .checked_mul(u64::from(self.blocksize) / BBSIZE)
    }

    /// Size of the on-disk inode core (v3: 176 bytes, older: 100).
    pub fn dinode_core_size(&self, version: u8) -> usize {
        if version >= 3 {
            176
        } else {
            100
        }
    }
}

/// The replayed bytes: 512-byte sectors of the device, each as recovery left it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogOverlay {
    sectors: BTreeMap<u64, Box<[u8]>>,
}

impl LogOverlay {
    pub fn empty() -> Self {
        LogOverlay::default()
    }

    pub fn is_empty(&self) -> bool {
        self.sectors.is_empty()
    }

    /// Overwrites the replayed bytes inside `buf`, which holds the device's bytes from
    /// `offset`.
    pub fn apply(&self, offset: u64, buf: &mut [u8]) {
        let Some(end) = offset.checked_add(buf.len() as u64) else {
            return;
        };
        if buf.is_empty() {
            return;
        }
        let first = offset / BBSIZE;
        let last = (end - 1) / BBSIZE;
        for (&sector, bytes) in self.sectors.range(first..=last) {
            let s_start = sector * BBSIZE;
            let from = s_start.max(offset);
            let to = (s_start + BBSIZE).min(end);
            let (Ok(src_off), Ok(dst_off), Ok(n)) = (
                usize::try_from(from - s_start),
                usize::try_from(from - offset),
                usize::try_from(to - from),
            ) else {
                continue;
            };
            if let (Some(dst), Some(src)) = (
                buf.get_mut(dst_off..dst_off + n),
                bytes.get(src_off..src_off + n),
            ) {
                dst.copy_from_slice(src);
            }
        }
    }

    /// Bytes of replayed data held (the map's own overhead aside).
    pub fn bytes_held(&self) -> usize {
        self.sectors.len() * BBSIZE as usize
    }

    /// The replayed sectors, in device order: (byte offset, 512 bytes).
    pub fn sectors(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.sectors.iter().map(|(s, b)| (s * BBSIZE, &b[..]))
    }

    pub(crate) fn put_sector(&mut self, sector: u64, bytes: &[u8]) {
        self.sectors.insert(sector, bytes.into());
    }

    pub(crate) fn remove_sector(&mut self, sector: u64) {
        self.sectors.remove(&sector);
    }
}

/// What a recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// The log was clean (head == tail, or an unmount record last): nothing to replay.
    pub clean: bool,
    /// Head and tail as (cycle, block).
    pub head: (u32, u64),
    pub tail: (u32, u64),
    /// Log records read from tail to head.
    pub records: u32,
    /// Committed transactions replayed.
    pub transactions: u32,
    /// Transactions without a commit record at the head, dropped.
    pub uncommitted: u32,
    /// Items of committed transactions by log item type (`XFS_LI_*`).
    pub items_by_type: BTreeMap<u16, u32>,
    /// Buffer items replayed.
    pub buffers_replayed: u32,
    /// Buffer items skipped because the buffer on disk is as new (v5 LSN).
    pub buffers_skipped_lsn: u32,
    /// Buffer cancel records (pass 1).
    pub cancel_records: u32,
    /// Buffer and inode items not replayed because their buffer was cancelled.
    pub cancelled_items: u32,
    /// Inode items replayed.
    pub inodes_replayed: u32,
    /// Inode items skipped because the inode on disk is as new (v5 LSN, v2 flush counter).
    pub inodes_skipped: u32,
    /// Inode chunks initialised from inode create items.
    pub icreates: u32,
    /// Quota buffers and items not replayed (quota is not shown).
    pub dquots_skipped: u32,
    /// Intents of free-space metadata (extent free, rmap, refcount) left unfinished in the
    /// log: the kernel finishes them after replay; no file view depends on them.
    pub unfinished_free_space_intents: u32,
    /// Set when the log could not be replayed faithfully: the overlay is then empty.
    pub fell_back: Option<String>,
}

/// The result of [`recover`].
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub overlay: LogOverlay,
    pub stats: ReplayStats,
}

/// Recovers the internal log of the filesystem on `dev` in memory. A clean log gives an
/// empty overlay; a log that cannot be replayed faithfully gives an empty overlay and
/// `stats.fell_back`; bytes that break the log's rules give [`GuestError::Corrupt`].
pub fn recover(dev: &dyn ByteSource, geo: &LogGeometry) -> Result<Recovery, GuestError> {
    let log = scan::Log::new(dev, geo)?;
    let mut stats = ReplayStats::default();
    let Some(range) = log.find_head_tail(&mut stats)? else {
        stats.clean = true;
        return Ok(Recovery {
            overlay: LogOverlay::empty(),
            stats,
        });
    };
    // Pass 1: buffer cancel records.
    let mut cancels = replay::CancelTable::default();
    log.scan(&range, &mut stats, &mut |t, st| {
        cancels.pass1(t, st);
        Ok(())
    })?;
    // Pass 2: replay.
    let mut state = replay::Replay::new(dev, geo, cancels);
    let outcome = log.scan(&range, &mut stats, &mut |t, st| state.pass2(t, st));
    match outcome {
        Ok(()) => {}
        Err(scan::ScanError::Guest(e)) => return Err(e),
        Err(scan::ScanError::FallBack(why)) => {
            stats.fell_back = Some(why);
        }
    }
    if stats.fell_back.is_none() {
        if let Err(why) = state.finish(&mut stats) {
            stats.fell_back = Some(why);
        }
    }
    ::log::info!(
        "XFS log replayed in memory: {} records, {} transactions ({} uncommitted dropped), \
         {} buffers ({} skipped as newer on disk, {} cancelled), {} inodes, {} inode chunks, \
         {} quota items skipped, {} free-space intents left to the kernel",
        stats.records,
        stats.transactions,
        stats.uncommitted,
        stats.buffers_replayed,
        stats.buffers_skipped_lsn,
        stats.cancelled_items,
        stats.inodes_replayed,
        stats.icreates,
        stats.dquots_skipped,
        stats.unfinished_free_space_intents
    );
    let overlay = if stats.fell_back.is_some() {
        ::log::warn!(
            "XFS log not replayed, showing the last checkpoint: {}",
            stats.fell_back.as_deref().unwrap_or("")
        );
        LogOverlay::empty()
    } else {
        state.into_overlay()
    };
    Ok(Recovery { overlay, stats })
}

/// The fuzz target's body: `data` is a superblock sector followed by the log's bytes; the
/// device holds them at their places (the superblock at 0, the log at its `sb_logstart`)
/// and zeros elsewhere, so an input of a few hundred KiB is a whole filesystem with a dirty
/// log. Reads the geometry, recovers, applies the overlay. Errors are expected; panics,
/// hangs and huge allocations are the bugs it looks for.
pub fn fuzz_one_log(data: &[u8]) {
    let Some(sb) = data.get(..512) else {
        return;
    };
    let Ok(probe) = LogGeometry::from_superblock(sb, u64::MAX) else {
        return;
    };
    let log_len = probe.log_bbs * BBSIZE;
    if log_len > 64 << 20 {
        return;
    }
    let dev = FuzzDevice {
        sb: sb.to_vec(),
        log_start: probe.log_start,
        log: data[512..].iter().copied().take(log_len as usize).collect(),
        len: probe
            .log_start
            .saturating_add(log_len)
            .saturating_add(64 << 20),
    };
    let Ok(geo) = LogGeometry::from_superblock(sb, dev.len) else {
        return;
    };
    if let Ok(r) = recover(&dev, &geo) {
        let mut buf = vec![0u8; 8192];
        for (off, _) in r.overlay.sectors().take(64) {
            r.overlay.apply(off.saturating_sub(100), &mut buf);
        }
        let _ = r.overlay.bytes_held();
    }
}

/// The fuzz target's device: a superblock and a log at their places, zeros elsewhere.
struct FuzzDevice {
    sb: Vec<u8>,
    log_start: u64,
    log: Vec<u8>,
    len: u64,
}

impl ByteSource for FuzzDevice {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        buf.fill(0);
        let end = offset.saturating_add(buf.len() as u64);
        for (start, bytes) in [(0u64, &self.sb), (self.log_start, &self.log)] {
            let stop = start.saturating_add(bytes.len() as u64);
            let from = offset.max(start);
            let to = end.min(stop);
            if from < to {
                let (a, b) = ((from - offset) as usize, (from - start) as usize);
                let n = (to - from) as usize;
                if let (Some(d), Some(s)) = (buf.get_mut(a..a + n), bytes.get(b..b + n)) {
                    d.copy_from_slice(s);
                }
            }
        }
        Ok(())
    }
    fn byte_len(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }
}
