//! The extent tree: a 12-byte header (magic 0xF30A, entries, max, depth) followed by 12-byte
//! index entries (depth > 0) or extents (depth 0); the root lives in i_block, other nodes fill
//! a block and end with a CRC-32C tail under metadata_csum.
//!
//! Loop safety: the root's depth is at most [`MAX_DEPTH`] and every child must have exactly
//! its parent's depth minus one, so a lookup reads at most six nodes and a child pointing back
//! at an ancestor fails with [`CorruptKind::ExtentDepth`].

use super::super::bytes::{read_u16le, read_u32le};
use super::super::{CorruptKind, GuestError};
use super::inode::Inode;
use super::{checksum, Ext4, Mapping};

pub const EXT4_EXT_MAGIC: u16 = 0xF30A;
/// The kernel's limit (EXT4_MAX_EXTENT_DEPTH).
pub const MAX_DEPTH: u16 = 5;
/// An ee_len above this marks an unwritten extent of ee_len - 32768 blocks.
const EXT_INIT_MAX_LEN: u16 = 32768;
/// Logical block numbers are 32-bit: the tree covers [0, 2^32).
const LOGICAL_END: u64 = 1 << 32;

struct Header {
    entries: u16,
    max: u16,
    depth: u16,
}

fn header(node: &[u8]) -> Result<Header, GuestError> {
    let eh_magic = read_u16le(node, 0);
    let eh_entries = read_u16le(node, 2);
    let eh_max = read_u16le(node, 4);
    let eh_depth = read_u16le(node, 6);
    if eh_magic != EXT4_EXT_MAGIC {
        return Err(CorruptKind::ExtentMagic.into());
    }
    let capacity = node.len().saturating_sub(12) / 12;
    if usize::from(eh_max) > capacity || eh_entries > eh_max {
        return Err(CorruptKind::ExtentEntries.into());
    }
    Ok(Header {
        entries: eh_entries,
        max: eh_max,
        depth: eh_depth,
    })
}

/// Maps logical block `lblk` of an extent-mapped inode.
pub fn map(fs: &Ext4, inode: &Inode, lblk: u32) -> Result<Mapping, GuestError> {
    let lblk = u64::from(lblk);
    let mut node: std::sync::Arc<[u8]> = inode.i_block.to_vec().into();
    let mut expected_depth = None;
    // The exclusive end of the logical range the current node covers.
    let mut bound = LOGICAL_END;
    loop {
        let h = header(&node)?;
        match expected_depth {
            None if h.depth > MAX_DEPTH => return Err(CorruptKind::ExtentDepth.into()),
            Some(d) if h.depth != d => return Err(CorruptKind::ExtentDepth.into()),
            _ => {}
        }
        let entry = |i: u16| 12 + 12 * usize::from(i);
        if h.depth == 0 {
            let mut prev_end = 0u64;
            for i in 0..h.entries {
                let e = entry(i);
                let ee_block = u64::from(read_u32le(&node, e));
                let ee_len = read_u16le(&node, e + 4);
                let ee_start_hi = read_u16le(&node, e + 6);
                let ee_start_lo = read_u32le(&node, e + 8);
                let unwritten = ee_len > EXT_INIT_MAX_LEN;
                let len = u64::from(if unwritten {
                    ee_len - EXT_INIT_MAX_LEN
                } else {
                    ee_len
                });
                if len == 0 {
                    return Err(CorruptKind::ExtentLength.into());
                }
                if ee_block < prev_end {
                    return Err(CorruptKind::ExtentOrder.into());
                }
                let end = ee_block + len;
                prev_end = end;
                if lblk < ee_block {
                    return Ok(Mapping::Zero {
                        len: ee_block - lblk,
                    });
                }
                if lblk < end {
                    let start = u64::from(ee_start_lo) | (u64::from(ee_start_hi) << 32);
                    let phys_end = start.checked_add(len).ok_or(CorruptKind::ExtentRange)?;
                    if start <= u64::from(fs.sb.first_data_block) || phys_end > fs.sb.blocks_count {
                        return Err(CorruptKind::ExtentRange.into());
                    }
                    let len = end - lblk;
                    return Ok(if unwritten {
                        Mapping::Zero { len }
                    } else {
                        Mapping::Data {
                            phys: start + (lblk - ee_block),
                            len,
                        }
                    });
                }
            }
            return Ok(Mapping::Zero {
                len: bound.saturating_sub(lblk).max(1),
            });
        }
        // An index node: the last entry whose ei_block <= lblk covers it.
        let mut found = None;
        let mut prev = None;
        for i in 0..h.entries {
            let ei_block = u64::from(read_u32le(&node, entry(i)));
            if prev.is_some_and(|p| ei_block <= p) {
                return Err(CorruptKind::ExtentOrder.into());
            }
            prev = Some(ei_block);
            if ei_block > lblk {
                if found.is_none() {
                    return Ok(Mapping::Zero {
                        len: ei_block - lblk,
                    });
                }
                bound = bound.min(ei_block);
                break;
            }
            found = Some(i);
        }
        let Some(i) = found else {
            // An empty index node maps nothing.
            return Ok(Mapping::Zero {
                len: bound.saturating_sub(lblk).max(1),
            });
        };
        let e = entry(i);
        let ei_leaf_lo = read_u32le(&node, e + 4);
        let ei_leaf_hi = read_u16le(&node, e + 8);
        let child = u64::from(ei_leaf_lo) | (u64::from(ei_leaf_hi) << 32);
        if child <= u64::from(fs.sb.first_data_block) || child >= fs.sb.blocks_count {
            return Err(CorruptKind::ExtentRange.into());
        }
        let block = fs.block(child)?;
        let ch = header(&block)?;
        if fs.sb.metadata_csum() {
            let tail = 12 + 12 * usize::from(ch.max);
            let stored = block
                .get(tail..tail + 4)
                .map(|b| read_u32le(b, 0))
                .ok_or(CorruptKind::ExtentEntries)?;
            if checksum::extent_block_checksum(inode.csum_seed, &block[..tail]) != stored {
                return Err(fs.checksum_error(CorruptKind::ExtentChecksum));
            }
        }
        expected_depth = Some(h.depth - 1);
        node = block;
    }
}
