//! The file allocation table: one entry per cluster naming the next cluster of its chain,
//! and the walks along those chains.
//!
//! Entries are 12, 16 or 28 (of 32) bits wide. The table is read in 4 KiB pieces through
//! the shared metadata cache (a FAT12 entry may straddle two pieces). Every walk is bounded:
//! a chain is checked once from its first cluster to its end, and must end (an
//! end-of-chain value) without ever reaching a free, bad or reserved value or a cluster past
//! the volume's last; a chain that does not end within the volume's cluster count loops.
//! Loops are found early with Brent's cycle detection, so a hostile two-cluster loop costs
//! a few steps, not a walk over every cluster of the volume.

use super::super::bytes::{read_u16le, read_u32le};
use super::super::{CorruptKind, GuestError};
use super::boot::FatType;
use super::Fat;

/// Bytes of the table read (and cached) at a time.
pub const TABLE_PIECE: u64 = 4096;

/// What a table entry says about the cluster after its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The chain continues at this data cluster.
    Next(u32),
    /// The chain ends here.
    End,
}

impl Fat {
    /// The raw table entry of cluster `c` (2 ..= max_cluster).
    fn table_entry(&self, c: u32) -> Result<u32, GuestError> {
        let g = &self.geo;
        if c < 2 || c > g.max_cluster() {
            return Err(CorruptKind::FatClusterRange.into());
        }
        let c64 = u64::from(c);
        let (at, width) = match g.fat_type {
            FatType::Fat12 => (c64 + c64 / 2, 2),
            FatType::Fat16 => (c64 * 2, 2),
            FatType::Fat32 => (c64 * 4, 4),
        };
        // Geometry::parse checked that the table has an entry for every cluster.
        let mut raw = [0u8; 4];
        for (i, byte) in raw.iter_mut().enumerate().take(width) {
            let pos = at + i as u64;
            let piece = pos / TABLE_PIECE * TABLE_PIECE;
            let bytes = self.table_piece(piece)?;
            let within = usize::try_from(pos - piece).map_err(|_| CorruptKind::FatTableSize)?;
            *byte = *bytes.get(within).ok_or(CorruptKind::FatTableSize)?;
        }
        Ok(match g.fat_type {
            FatType::Fat12 => {
                let v = u32::from(read_u16le(&raw, 0));
                if c % 2 == 1 {
                    v >> 4
                } else {
                    v & 0xFFF
                }
            }
            FatType::Fat16 => u32::from(read_u16le(&raw, 0)),
            FatType::Fat32 => read_u32le(&raw, 0) & 0x0FFF_FFFF,
        })
    }

    /// The link from cluster `c` to the next one of its chain.
    pub(crate) fn link(&self, c: u32) -> Result<Link, GuestError> {
        let v = self.table_entry(c)?;
        let t = self.geo.fat_type;
        match v {
            0 => Err(CorruptKind::FatChainFree.into()),
            1 => Err(CorruptKind::FatChainReserved.into()),
            v if v <= self.geo.max_cluster() => Ok(Link::Next(v)),
            v if v > t.bad() => Ok(Link::End),
            v if v == t.bad() => Err(CorruptKind::FatChainBad.into()),
            v if v >= t.reserved_from() => Err(CorruptKind::FatChainReserved.into()),
            _ => Err(CorruptKind::FatClusterRange.into()),
        }
    }

    /// Walks the whole chain from `first`, calling `f` on each cluster in order, and returns
    /// its length in clusters. Errors if any link is invalid or the chain loops; stops early
    /// (returning the clusters seen so far) when `f` returns false.
    pub(crate) fn walk_chain(
        &self,
        first: u32,
        f: &mut dyn FnMut(u32) -> bool,
    ) -> Result<u32, GuestError> {
        if first < 2 || first > self.geo.max_cluster() {
            return Err(CorruptKind::FatClusterRange.into());
        }
        let limit = self.geo.cluster_count;
        // Brent: `tortoise` sits at the start of a window of `power` steps; the hare meeting
        // it means a cycle.
        let mut tortoise = first;
        let mut power = 1u32;
        let mut lam = 0u32;
        let mut cur = first;
        let mut len = 1u32;
        loop {
            if !f(cur) {
                return Ok(len);
            }
            match self.link(cur)? {
                Link::End => return Ok(len),
                Link::Next(n) => {
                    if n == tortoise || len >= limit {
                        return Err(CorruptKind::FatChainLoop.into());
                    }
                    lam += 1;
                    if lam == power {
                        tortoise = n;
                        power = power.saturating_mul(2);
                        lam = 0;
                    }
                    cur = n;
                    len += 1;
                }
            }
        }
    }
}
