//! JBD2 recovery, in memory.
//!
//! A filesystem whose superblock says `needs_recovery` is shown as the kernel shows it after
//! `jbd2_journal_recover`: the committed transactions of the log replayed over the
//! filesystem's blocks. Nothing is written: the replay builds an [`Overlay`], a map from
//! filesystem block to the log block holding its newest copy, that every block read of the
//! filesystem consults first. It holds at most one entry per block of the log, so its size
//! is bounded by the journal's (24 bytes an entry plus the map's overhead).
//!
//! The passes follow the kernel's fs/jbd2/recovery.c:
//! 1. scan: from `s_start`, expecting `s_sequence`, read descriptor, revoke and commit blocks
//!    until a block's magic or sequence does not match, a checksum fails or the whole log has
//!    been read; the log is circular (`s_first` .. `s_maxlen`, less the fast-commit area) and
//!    wraps. A transaction without a valid commit block is not replayed.
//! 2. revoke: the revoke records of the committed transactions, each keeping its latest
//!    sequence ([`revoke::RevokeTable`]).
//! 3. replay: every tagged block of the committed transactions in order, unless revoked at
//!    its own or a later sequence; with v2/v3 checksums a block whose tag checksum does not
//!    match is skipped (the kernel skips it too, and reports an error). Escaped blocks (whose
//!    first four bytes were the JBD2 magic) get the magic back when read.
//!
//! Fast commits (the area after the log) are not replayed: the view is the last full commit,
//! and the open logs it. External journal devices are not read (the caller refuses them).

pub mod revoke;
pub mod superblock;
pub mod tags;

use std::collections::HashMap;

use super::super::bytes::{read_u32be, read_u8};
use super::super::crc::{crc32_be_raw, crc32c_raw};
use super::super::{CorruptKind, GuestError};
use super::inode::Inode;
use super::{Ext4, Mapping};
use revoke::RevokeTable;
use superblock::*;
use tags::FLAG_ESCAPE;

/// Where the replayed copy of a filesystem block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBlock {
    /// The filesystem block (on the device) that holds the journal's copy.
    pub phys: u64,
    /// The copy was stored with its first four bytes (the JBD2 magic) zeroed.
    pub escaped: bool,
}

/// Filesystem block -> newest committed journal copy.
#[derive(Debug, Default)]
pub struct Overlay {
    map: HashMap<u64, LogBlock>,
}

impl Overlay {
    pub fn get(&self, block: u64) -> Option<&LogBlock> {
        self.map.get(&block)
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// What a recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Committed transactions replayed.
    pub transactions: u32,
    /// Sequence of the first and one past the last committed transaction.
    pub first_sequence: u32,
    pub end_sequence: u32,
    /// Tagged block copies written to the overlay (later copies replace earlier ones).
    pub replayed_blocks: usize,
    /// Tagged block copies skipped because a revoke record covers them.
    pub revoked_blocks: usize,
    /// Distinct blocks named by revoke records of committed transactions.
    pub revoke_records: usize,
    /// Copies skipped because their tag checksum did not match.
    pub bad_block_checksums: usize,
    /// The committed part of the log wrapped around the end of the journal.
    pub wrapped: bool,
    /// Escaped blocks among the replayed ones.
    pub escaped_blocks: usize,
    /// The journal has a fast-commit area, whose commits are not replayed.
    pub fast_commit: bool,
    /// Bytes of each block tag (8, 10, 12, 14 or 16), as the journal's features say.
    pub tag_bytes: usize,
}

/// The journal's blocks as the recovery reads them.
pub(crate) trait LogDevice {
    /// Number of journal blocks mapped.
    fn blocks(&self) -> u64;
    fn block_size(&self) -> usize;
    /// Reads journal block `jblk` into `buf` (one block).
    fn read(&self, jblk: u32, buf: &mut [u8]) -> Result<(), GuestError>;
    /// The device block where journal block `jblk` is stored.
    fn phys(&self, jblk: u32) -> Result<u64, GuestError>;
}

/// The longest journal replayed, in blocks (fast-commit area included): the most mke2fs and
/// tune2fs make. A longer one is refused before it is read: a journal inode whose extents map
/// the same device blocks again and again can claim 2^32 blocks, and one transaction that
/// never commits would make the scan read them all and keep a record of every tag.
pub const MAX_JOURNAL_BLOCKS: u64 = 10_240_000;

/// The internal journal: the journal inode's blocks, as contiguous runs.
struct InodeLog<'a> {
    fs: &'a Ext4,
    /// (first journal block, first device block, length) in journal-block order.
    runs: Vec<(u64, u64, u64)>,
    blocks: u64,
}

impl<'a> InodeLog<'a> {
    fn new(fs: &'a Ext4, inode: &Inode) -> Result<InodeLog<'a>, GuestError> {
        let bs = u64::from(fs.sb.block_size);
        let blocks = inode.size / bs;
        if blocks == 0 {
            return Err(CorruptKind::JournalInode.into());
        }
        if blocks > MAX_JOURNAL_BLOCKS {
            return Err(CorruptKind::JournalTooLong.into());
        }
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        let mut l = 0u64;
        while l < blocks {
            let lblk = u32::try_from(l).map_err(|_| CorruptKind::JournalInode)?;
            match fs.map(inode, lblk)? {
                Mapping::Zero { .. } => return Err(CorruptKind::JournalInode.into()),
                Mapping::Data { phys, len } => {
                    let len = len.min(blocks - l);
                    match runs.last_mut() {
                        Some(r) if r.0 + r.2 == l && r.1 + r.2 == phys => r.2 += len,
                        _ => runs.push((l, phys, len)),
                    }
                    l += len;
                }
            }
        }
        Ok(InodeLog { fs, runs, blocks })
    }
}

impl LogDevice for InodeLog<'_> {
    fn blocks(&self) -> u64 {
        self.blocks
    }
    fn block_size(&self) -> usize {
        usize::try_from(self.fs.sb.block_size).unwrap_or(4096)
    }
    fn read(&self, jblk: u32, buf: &mut [u8]) -> Result<(), GuestError> {
        let phys = self.phys(jblk)?;
        self.fs.read_device(buf, phys)
    }
    fn phys(&self, jblk: u32) -> Result<u64, GuestError> {
        let j = u64::from(jblk);
        let i = self.runs.partition_point(|r| r.0 <= j);
        let r = i
            .checked_sub(1)
            .and_then(|i| self.runs.get(i))
            .ok_or(CorruptKind::JournalGeometry)?;
        if j >= r.0 + r.2 {
            return Err(CorruptKind::JournalGeometry.into());
        }
        Ok(r.1 + (j - r.0))
    }
}

/// Replays the internal journal of `fs` (whose journal inode is `inode`) in memory.
pub fn recover(fs: &Ext4, inode: &Inode) -> Result<(Overlay, ReplayStats), GuestError> {
    let log = InodeLog::new(fs, inode)?;
    let (overlay, stats) = recover_log(&log, fs.sb.blocks_count)?;
    if stats.fast_commit {
        log::info!(
            "ext4: journal has fast commits; they are not replayed: the view is the last full commit"
        );
    }
    Ok((overlay, stats))
}

/// Reads a replayed block from the log into `buf`.
pub fn read_logged(fs: &Ext4, logged: &LogBlock, buf: &mut [u8]) -> Result<(), GuestError> {
    fs.read_device(buf, logged.phys)?;
    unescape(buf, logged.escaped);
    Ok(())
}

/// Puts back the JBD2 magic that an escaped copy had zeroed.
pub(crate) fn unescape(buf: &mut [u8], escaped: bool) {
    if escaped {
        if let Some(head) = buf.get_mut(..4) {
            head.copy_from_slice(&JBD2_MAGIC.to_be_bytes());
        }
    }
}

/// One block copy of a committed transaction: its tag and where in the log it is.
struct Copy {
    tag: tags::Tag,
    jblk: u32,
}

struct Transaction {
    sequence: u32,
    copies: Vec<Copy>,
    revoked: Vec<u64>,
}

/// Verifies the CRC-32C in the last four bytes of a v2/v3 descriptor or revoke block.
fn tail_ok(jsb: &JournalSuperblock, block: &[u8]) -> bool {
    let Some(at) = block.len().checked_sub(4) else {
        return false;
    };
    let stored = read_u32be(block, at);
    let mut copy = block.to_vec();
    copy[at..].fill(0);
    crc32c_raw(jsb.csum_seed, &copy) == stored
}

/// Verifies a commit block: v2/v3 CRC-32C of the block with h_chksum[0] zeroed, or the v1
/// CRC-32/BE (`h_chksum_type` 1, size 4) over the transaction's descriptor and data blocks.
fn commit_ok(jsb: &JournalSuperblock, block: &[u8], v1_sum: u32) -> bool {
    let h_chksum_type = read_u8(block, 12);
    let h_chksum_size = read_u8(block, 13);
    let h_chksum0 = read_u32be(block, 16);
    if jsb.csum_v2or3() {
        let mut copy = block.to_vec();
        copy[16..20].fill(0);
        return crc32c_raw(jsb.csum_seed, &copy) == h_chksum0;
    }
    if jsb.feature_compat & COMPAT_CHECKSUM != 0 && h_chksum_type == 1 && h_chksum_size == 4 {
        return v1_sum == h_chksum0;
    }
    true
}

pub(crate) fn recover_log(
    log: &dyn LogDevice,
    fs_blocks: u64,
) -> Result<(Overlay, ReplayStats), GuestError> {
    let bs = log.block_size();
    let mut block = vec![0u8; bs];
    log.read(0, &mut block)?;
    let jsb = JournalSuperblock::parse(&block, u32::try_from(bs).unwrap_or(0), log.blocks())?;
    let mut stats = ReplayStats {
        fast_commit: jsb.has_incompat(INCOMPAT_FAST_COMMIT),
        tag_bytes: tags::tag_bytes(&jsb),
        first_sequence: jsb.sequence,
        end_sequence: jsb.sequence,
        ..ReplayStats::default()
    };
    if jsb.start == 0 {
        return Ok((Overlay::default(), stats));
    }
    let ring = jsb.last - jsb.first;
    let advance = |pos: u32, wrapped: &mut bool| -> u32 {
        let next = pos + 1;
        if next >= jsb.last {
            *wrapped = true;
            jsb.first
        } else {
            next
        }
    };

    // Pass 1: scan.
    let mut committed: Vec<Transaction> = Vec::new();
    let mut pos = jsb.start;
    let mut sequence = jsb.sequence;
    let mut current = Transaction {
        sequence,
        copies: Vec::new(),
        revoked: Vec::new(),
    };
    let mut wrapped = false;
    let mut consumed = 0u32;
    let v1_checksums = jsb.feature_compat & COMPAT_CHECKSUM != 0 && !jsb.csum_v2or3();
    let mut v1_sum = !0u32;
    let mut data = vec![0u8; bs];
    'scan: while consumed < ring {
        log.read(pos, &mut block)?;
        pos = advance(pos, &mut wrapped);
        consumed += 1;
        let h_magic = read_u32be(&block, 0);
        let h_blocktype = read_u32be(&block, 4);
        let h_sequence = read_u32be(&block, 8);
        if h_magic != JBD2_MAGIC || h_sequence != sequence {
            break;
        }
        match h_blocktype {
            BLOCKTYPE_DESCRIPTOR => {
                if jsb.csum_v2or3() && !tail_ok(&jsb, &block) {
                    break;
                }
                if v1_checksums {
                    v1_sum = crc32_be_raw(v1_sum, &block);
                }
                for tag in tags::parse(&block, &jsb) {
                    if consumed >= ring {
                        break 'scan;
                    }
                    if v1_checksums {
                        log.read(pos, &mut data)?;
                        v1_sum = crc32_be_raw(v1_sum, &data);
                    }
                    current.copies.push(Copy { tag, jblk: pos });
                    pos = advance(pos, &mut wrapped);
                    consumed += 1;
                }
            }
            BLOCKTYPE_COMMIT => {
                if !commit_ok(&jsb, &block, v1_sum) {
                    break;
                }
                v1_sum = !0;
                sequence = sequence.wrapping_add(1);
                let done = std::mem::replace(
                    &mut current,
                    Transaction {
                        sequence,
                        copies: Vec::new(),
                        revoked: Vec::new(),
                    },
                );
                committed.push(done);
                stats.wrapped = wrapped;
            }
            BLOCKTYPE_REVOKE => {
                if jsb.csum_v2or3() && !tail_ok(&jsb, &block) {
                    break;
                }
                current.revoked.extend(revoke::parse(&block, &jsb)?);
            }
            _ => break,
        }
    }
    stats.transactions = u32::try_from(committed.len()).unwrap_or(u32::MAX);
    stats.end_sequence = sequence;

    // Pass 2: revoke records of the committed transactions.
    let mut revoked = RevokeTable::default();
    for t in &committed {
        for &b in &t.revoked {
            revoked.record(b, t.sequence);
        }
    }
    stats.revoke_records = revoked.len();

    // Pass 3: replay.
    let mut overlay = Overlay::default();
    for t in &committed {
        for c in &t.copies {
            if revoked.is_revoked(c.tag.blocknr, t.sequence) {
                stats.revoked_blocks += 1;
                continue;
            }
            if c.tag.blocknr >= fs_blocks {
                return Err(CorruptKind::JournalTagBlock.into());
            }
            if jsb.csum_v2or3() {
                log.read(c.jblk, &mut data)?;
                let crc = crc32c_raw(jsb.csum_seed, &t.sequence.to_be_bytes());
                let crc = crc32c_raw(crc, &data);
                let ok = if jsb.has_incompat(INCOMPAT_CSUM_V3) {
                    crc == c.tag.checksum
                } else {
                    crc & 0xFFFF == c.tag.checksum
                };
                if !ok {
                    log::warn!(
                        "ext4 journal: bad checksum of the copy of block {} in transaction {}; not replayed",
                        c.tag.blocknr,
                        t.sequence
                    );
                    stats.bad_block_checksums += 1;
                    continue;
                }
            }
            let escaped = c.tag.flags & FLAG_ESCAPE != 0;
            stats.escaped_blocks += usize::from(escaped);
            stats.replayed_blocks += 1;
            overlay.map.insert(
                c.tag.blocknr,
                LogBlock {
                    phys: log.phys(c.jblk)?,
                    escaped,
                },
            );
        }
    }
    Ok((overlay, stats))
}

#[cfg(test)]
mod tests;
