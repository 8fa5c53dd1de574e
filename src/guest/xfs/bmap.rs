//! Block maps: a fork's logical blocks to filesystem blocks. A fork holds either an array of
//! packed 128-bit extent records (`xfs_bmbt_rec`: unwritten flag, 54-bit file offset,
//! 52-bit block, 21-bit length) or the root of a block map btree (`xfs_bmdr_block`) whose
//! blocks (`BMAP`, or `BMA3` with a v5 header and CRC-32C) hold keys and pointers, and at
//! level 0 extent records, chained left to right by sibling pointers.
//!
//! Lookups descend by keys to the leaf holding a file offset and walk right from there, so a
//! read of a file with 100,000 extents touches a few blocks, not all of them. Every walk is
//! bounded: levels must fall by one at each step (at most [`MAX_LEVELS`]), extents must be
//! in increasing order without overlap (a sibling chain that loops breaks that order), and a
//! caller asks for at most a given number of extents.

use crate::guest::bytes::{read_u16be, read_u32be, read_u64be};
use crate::guest::{CorruptKind, GuestError};

use super::inode::{Fork, ForkFormat};
use super::{Crc, Xfs};

/// The kernel's bound on block map btree height is 9 for 64-bit extent counts.
pub const MAX_LEVELS: u16 = 9;
/// `BMAP` and `BMA3`.
const BMAP_MAGIC: u32 = 0x424d_4150;
const BMAP_CRC_MAGIC: u32 = 0x424d_4133;
/// Long-format btree block header sizes (v4, v5).
const LBLOCK_LEN: usize = 24;
const LBLOCK_CRC_LEN: usize = 72;
/// Offset of `bb_crc` in a v5 long-format block.
const LBLOCK_CRC_OFF: usize = 64;
/// `NULLFSBLOCK`: no sibling.
const NULL_FSB: u64 = u64::MAX;

/// One mapping of `count` file blocks from `offset` to filesystem block `block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub block: u64,
    pub count: u64,
    /// Allocated but never written: reads as zeros.
    pub unwritten: bool,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.count
    }
}

/// Decodes one packed extent record.
fn decode(rec: &[u8]) -> Extent {
    let l0 = read_u64be(rec, 0);
    let l1 = read_u64be(rec, 8);
    Extent {
        unwritten: l0 >> 63 != 0,
        offset: (l0 & ((1 << 63) - 1)) >> 9,
        block: ((l0 & 0x1ff) << 43) | (l1 >> 21),
        count: l1 & ((1 << 21) - 1),
    }
}

/// Collects extents in order, checking each, starting with the first that ends after
/// `from`, until `max` are held.
struct Collector<'a> {
    xfs: &'a Xfs,
    from: u64,
    max: usize,
    out: Vec<Extent>,
    last_end: u64,
}

impl Collector<'_> {
    /// Adds one record; `Break` when enough are held.
    fn push(&mut self, rec: &[u8]) -> Result<bool, GuestError> {
        let e = decode(rec);
        if e.count == 0 {
            return Err(CorruptKind::XfsExtentLength.into());
        }
        if e.offset < self.last_end {
            return Err(CorruptKind::XfsExtentOrder.into());
        }
        self.last_end = e
            .offset
            .checked_add(e.count)
            .ok_or(CorruptKind::XfsExtentOrder)?;
        if !self.xfs.sb.fsb_range_ok(e.block, e.count) {
            return Err(CorruptKind::XfsExtentRange.into());
        }
        if e.end() > self.from {
            self.out.push(e);
        }
        Ok(self.out.len() >= self.max)
    }
}

impl Xfs {
    /// Up to `max` extents of `fork`, in file order, from the one that ends after file block
    /// `from` (holes between them are implied).
    pub(crate) fn extents(
        &self,
        fork: &Fork,
        from: u64,
        max: usize,
    ) -> Result<Vec<Extent>, GuestError> {
        let mut c = Collector {
            xfs: self,
            from,
            max,
            out: Vec::new(),
            last_end: 0,
        };
        match fork.format {
            ForkFormat::Extents => {
                let n = usize::try_from(fork.nextents).map_err(|_| CorruptKind::XfsExtentCount)?;
                if n.checked_mul(16).is_none_or(|len| len > fork.bytes.len()) {
                    return Err(CorruptKind::XfsExtentCount.into());
                }
                for rec in fork.bytes.chunks_exact(16).take(n) {
                    if c.push(rec)? {
                        break;
                    }
                }
            }
            ForkFormat::Btree => self.btree_extents(fork, &mut c)?,
            ForkFormat::Local | ForkFormat::Dev => return Err(CorruptKind::XfsInodeFork.into()),
        }
        Ok(c.out)
    }

    /// The btree walk of [`Xfs::extents`]: descend from the in-inode root by keys to the
    /// leaf holding `c.from`, then follow right siblings.
    fn btree_extents(&self, fork: &Fork, c: &mut Collector) -> Result<(), GuestError> {
        let root = &fork.bytes;
        let level = read_u16be(root, 0);
        let numrecs = usize::from(read_u16be(root, 2));
        // xfs_bmdr_maxrecs: the root holds keys then pointers, 8 bytes each.
        let maxrecs = root.len().saturating_sub(4) / 16;
        if level == 0 || level > MAX_LEVELS {
            return Err(CorruptKind::XfsBmbtLevel.into());
        }
        if numrecs == 0 || numrecs > maxrecs {
            return Err(CorruptKind::XfsBmbtRecords.into());
        }
        let mut ptr = pick(root, 4, 4 + maxrecs * 8, numrecs, c.from);
        let mut level = level;
        let bs = self.sb.block_size as usize;
        let (hdr, magic) = if self.sb.is_v5() {
            (LBLOCK_CRC_LEN, BMAP_CRC_MAGIC)
        } else {
            (LBLOCK_LEN, BMAP_MAGIC)
        };
        loop {
            level -= 1;
            let block = self.bmbt_block(ptr, magic, level, fork)?;
            let numrecs = usize::from(read_u16be(&block, 6));
            if level > 0 {
                let maxrecs = (bs - hdr) / 16;
                if numrecs == 0 || numrecs > maxrecs {
                    return Err(CorruptKind::XfsBmbtRecords.into());
                }
                ptr = pick(&block, hdr, hdr + maxrecs * 8, numrecs, c.from);
                continue;
            }
            // Leaves: records, then the right sibling. The number of leaves visited is
            // bounded by the extent count the inode claims (each leaf holds at least one).
            let mut leaf = block;
            let mut leaves = 0u64;
            loop {
                let numrecs = usize::from(read_u16be(&leaf, 6));
                if numrecs > (bs - hdr) / 16 {
                    return Err(CorruptKind::XfsBmbtRecords.into());
                }
                for i in 0..numrecs {
                    let rec = crate::guest::bytes::slice(&leaf, hdr + i * 16, 16)
                        .ok_or(CorruptKind::XfsBmbtRecords)?;
                    if c.push(rec)? {
                        return Ok(());
                    }
                }
                leaves += 1;
                let right = read_u64be(&leaf, 16);
                if right == NULL_FSB {
                    return Ok(());
                }
                if leaves > fork.nextents {
                    return Err(CorruptKind::XfsBmbtLevel.into());
                }
                leaf = self.bmbt_block(right, magic, 0, fork)?;
            }
        }
    }

    /// A btree block at filesystem block `fsb`, checked: magic, level, and on v5 the CRC
    /// and that it records its own location.
    fn bmbt_block(
        &self,
        fsb: u64,
        magic: u32,
        level: u16,
        fork: &Fork,
    ) -> Result<std::sync::Arc<[u8]>, GuestError> {
        let at = self
            .sb
            .fsb_to_byte(fsb)
            .ok_or(CorruptKind::XfsExtentRange)?;
        let crc = Crc::At(LBLOCK_CRC_OFF, CorruptKind::XfsBmbtChecksum);
        let block = self.meta_block(at, self.sb.block_size as usize, crc)?;
        if read_u32be(&block, 0) != magic {
            return Err(CorruptKind::XfsBmbtMagic.into());
        }
        if self.sb.is_v5()
            && (read_u64be(&block, 24) != at / 512
                || read_u64be(&block, 56) != fork.owner
                || crate::guest::bytes::read_array::<16>(&block, 40) != self.sb.meta_uuid)
        {
            return Err(CorruptKind::XfsBlockOwner.into());
        }
        if read_u16be(&block, 4) != level {
            return Err(CorruptKind::XfsBmbtLevel.into());
        }
        Ok(block)
    }
}

/// In a node with `numrecs` keys at `keys` and pointers at `ptrs` (8 bytes each), the
/// pointer of the last key not above `from` (the first if all are above).
fn pick(node: &[u8], keys: usize, ptrs: usize, numrecs: usize, from: u64) -> u64 {
    let mut i = 0;
    for j in 1..numrecs {
        if read_u64be(node, keys + j * 8) <= from {
            i = j;
        } else {
            break;
        }
    }
    read_u64be(node, ptrs + i * 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_records_unpack_as_the_kernel_packs_them() {
        // xfs_bmbt_disk_set_all: flag in bit 127, offset in 126..73, block in 72..21,
        // count in 20..0.
        let (offset, block, count) = (0x12_3456_789au64, 0x9_8765_4321u64, 0x1_2345u64);
        let l0 = (1u64 << 63) | (offset << 9) | (block >> 43);
        let l1 = (block << 21) | count;
        let mut rec = [0u8; 16];
        rec[..8].copy_from_slice(&l0.to_be_bytes());
        rec[8..].copy_from_slice(&l1.to_be_bytes());
        let e = decode(&rec);
        assert_eq!(
            (e.offset, e.block, e.count, e.unwritten),
            (offset, block, count, true)
        );
    }
}
