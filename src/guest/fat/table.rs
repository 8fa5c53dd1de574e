//! The file allocation table: one entry per cluster naming the next cluster of its chain,
//! and the walks along those chains.
//!
//! Entries are 12, 16 or 28 (of 32) bits wide. The table is read in 4 KiB pieces through
//! the shared metadata cache (a FAT12 entry may straddle two pieces). Every walk is bounded:
//! a chain is checked once from its first cluster to its end, and must end (an
//! end-of-chain value) without ever reaching a free, bad or reserved value or a cluster past
//! the volume's last; a chain that does not end within the volume's cluster count loops.
//! Loops are found early with Brent's cycle detection, so a hostile two-cluster loop costs
//! a few steps, not a walk over every cluster of the volume. The walk leaves a
//! [`ChainMap`] in the cache (the chain's length and runs), with which a read at any offset
//! finds its cluster by a binary search instead of following the chain from its start.

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

/// Runs a chain map keeps at most: 4096 runs of 12 bytes, 48 KiB per chain.
pub const MAX_RUNS: usize = 4096;
/// Cache keys of chain maps: this bit (no volume offset has it) plus the first cluster.
const CHAIN_MAP_KEY: u64 = 1 << 63;

/// A checked chain: its length and its runs of consecutive clusters (every run when there
/// are at most [`MAX_RUNS`], else every `2^k`-th, evenly spread), so that the cluster at
/// any index is found by a binary search, plus at most the clusters between two kept runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainMap {
    pub len: u32,
    /// (index in the chain, first cluster, count), by index; the first starts at index 0.
    pub runs: Vec<(u32, u32, u32)>,
}

impl ChainMap {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.runs.len() * 12);
        out.extend_from_slice(&self.len.to_le_bytes());
        for &(i, c, n) in &self.runs {
            out.extend_from_slice(&i.to_le_bytes());
            out.extend_from_slice(&c.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> ChainMap {
        let runs = b
            .get(4..)
            .unwrap_or(&[])
            .chunks_exact(12)
            .map(|r| (read_u32le(r, 0), read_u32le(r, 4), read_u32le(r, 8)))
            .collect();
        ChainMap {
            len: read_u32le(b, 0),
            runs,
        }
    }
}

impl Fat {
    /// The chain from `first`, walked and checked once, then kept in the shared cache.
    pub(crate) fn chain_map(&self, first: u32) -> Result<ChainMap, GuestError> {
        use crate::cache::{CacheKey, CacheValue};
        let key = CacheKey::GuestBlock {
            fs: self.cache_id,
            block: CHAIN_MAP_KEY | u64::from(first),
        };
        if let Some(CacheValue::GuestBlock(b)) = self.cache.get(&key) {
            return Ok(ChainMap::decode(&b));
        }
        let mut runs: Vec<(u32, u32, u32)> = Vec::new();
        // The run being extended, the number of runs seen before it, and which are kept.
        let mut cur = (0u32, first, 0u32);
        let mut seen = 0u64;
        let mut stride = 1u64;
        let mut index = 0u32;
        let len = self.walk_chain(first, &mut |c| {
            if cur.2 > 0 && cur.1.checked_add(cur.2) == Some(c) {
                cur.2 += 1;
            } else {
                if cur.2 > 0 {
                    if seen.is_multiple_of(stride) {
                        runs.push(cur);
                    }
                    seen += 1;
                    if runs.len() >= MAX_RUNS {
                        let mut k = 0;
                        runs.retain(|_| {
                            k += 1;
                            k % 2 == 1
                        });
                        stride *= 2;
                    }
                }
                cur = (index, c, 1);
            }
            index = index.saturating_add(1);
            true
        })?;
        if seen.is_multiple_of(stride) {
            runs.push(cur);
        }
        let map = ChainMap { len, runs };
        self.cache
            .insert(key, CacheValue::GuestBlock(map.encode().into()));
        Ok(map)
    }

    /// The cluster at `index` of the chain from `first` (the caller checked `index` is below
    /// the chain's length).
    pub(crate) fn cluster_at(&self, first: u32, index: u32) -> Result<u32, GuestError> {
        let map = self.chain_map(first)?;
        let at = map.runs.partition_point(|r| r.0 <= index);
        let &(start, cluster, count) = at
            .checked_sub(1)
            .and_then(|i| map.runs.get(i))
            .ok_or(CorruptKind::FatChainShort)?;
        let within = index.saturating_sub(start);
        if within < count {
            return Ok(cluster.saturating_add(within));
        }
        // Past a kept run: follow the table from its last cluster.
        let last = count.checked_sub(1).ok_or(CorruptKind::FatChainShort)?;
        let mut at = start.saturating_add(last);
        let mut c = cluster.saturating_add(last);
        while at < index {
            c = match self.link(c)? {
                Link::Next(n) => n,
                Link::End => return Err(CorruptKind::FatChainShort.into()),
            };
            at += 1;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FAT16 volume in memory: 512-byte clusters, one table, 30,000 clusters, and a chain
    /// from cluster 2 through every other cluster (2, 4, 6, ...), `n` clusters long.
    fn every_other_cluster(n: u32) -> Fat {
        use crate::cache::MetadataCache;
        use crate::source::{ByteSource, MemorySource};
        use std::sync::Arc;
        let (fat_sectors, clusters) = (120u32, 30_000u32);
        let total = 1 + fat_sectors + 1 + clusters;
        let mut img = vec![0u8; total as usize * 512];
        img[0] = 0xEB;
        img[11..13].copy_from_slice(&512u16.to_le_bytes());
        img[13] = 1;
        img[14..16].copy_from_slice(&1u16.to_le_bytes());
        img[16] = 1;
        img[17..19].copy_from_slice(&16u16.to_le_bytes());
        img[19..21].copy_from_slice(&(total as u16).to_le_bytes());
        img[21] = 0xF8;
        img[22..24].copy_from_slice(&(fat_sectors as u16).to_le_bytes());
        for i in 0..n {
            let c = 2 + 2 * i as usize;
            let next = if i + 1 == n { 0xFFFF } else { c as u16 + 2 };
            img[512 + 2 * c..512 + 2 * c + 2].copy_from_slice(&next.to_le_bytes());
        }
        let dev: Arc<dyn ByteSource> = Arc::new(MemorySource::new(img));
        Fat::open(dev, Arc::new(MetadataCache::new(1 << 20))).unwrap()
    }

    #[test]
    fn a_chain_of_more_runs_than_kept_still_maps_every_index() {
        let fat = every_other_cluster(10_000);
        let map = fat.chain_map(2).unwrap();
        assert_eq!(map.len, 10_000);
        assert!(map.runs.len() <= MAX_RUNS && map.runs.len() > MAX_RUNS / 4);
        assert_eq!(map.runs[0], (0, 2, 1));
        for i in [0, 1, 2, 4095, 4096, 4097, 5000, 8191, 8192, 9998, 9999] {
            assert_eq!(fat.cluster_at(2, i).unwrap(), 2 + 2 * i, "index {i}");
        }
        // Few runs: all kept.
        let fat = every_other_cluster(100);
        assert_eq!(fat.chain_map(2).unwrap().runs.len(), 100);
    }

    #[test]
    fn chain_maps_survive_the_cache() {
        let m = ChainMap {
            len: 9,
            runs: vec![(0, 5, 3), (3, 20, 6)],
        };
        assert_eq!(ChainMap::decode(&m.encode()), m);
        assert_eq!(ChainMap::decode(&[1, 2]).runs, vec![]);
    }
}
