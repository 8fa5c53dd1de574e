//! ext2/ext3 block maps: 12 direct pointers in i_block, then one single, one double and one
//! triple indirect block, each a block of 32-bit block numbers (0 = hole).
//!
//! A lookup reads at most three blocks; every pointer is checked against the filesystem's
//! size. A zero pointer at any level is a hole covering its whole subtree, so holes are
//! skipped in one step.

use super::super::bytes::read_u32le;
use super::super::{CorruptKind, GuestError};
use super::inode::Inode;
use super::{Ext4, Mapping};

const DIRECT: u64 = 12;

fn check(fs: &Ext4, ptr: u32) -> Result<u64, GuestError> {
    let p = u64::from(ptr);
    if p <= u64::from(fs.sb.first_data_block) || p >= fs.sb.blocks_count {
        return Err(CorruptKind::BlockMapRange.into());
    }
    Ok(p)
}

/// The run of pointers `ptrs[idx..]`: contiguous data or consecutive holes.
fn run(fs: &Ext4, ptrs: &[u8], idx: usize, count: usize) -> Result<Mapping, GuestError> {
    let at = |i: usize| read_u32le(ptrs, i * 4);
    let first = at(idx);
    let mut len = 1u64;
    if first == 0 {
        while idx + (len as usize) < count && at(idx + len as usize) == 0 {
            len += 1;
        }
        return Ok(Mapping::Zero { len });
    }
    let phys = check(fs, first)?;
    while idx + (len as usize) < count
        && u64::from(at(idx + len as usize)) == phys + len
        && phys + len < fs.sb.blocks_count
    {
        len += 1;
    }
    Ok(Mapping::Data { phys, len })
}

/// Maps logical block `lblk` of a block-mapped inode.
pub fn map(fs: &Ext4, inode: &Inode, lblk: u32) -> Result<Mapping, GuestError> {
    let per_block = u64::from(fs.sb.block_size / 4);
    let lblk = u64::from(lblk);
    if lblk < DIRECT {
        let idx = usize::try_from(lblk).map_err(|_| CorruptKind::BlockMapRange)?;
        return run(fs, &inode.i_block[..48], idx, 12);
    }
    let mut rel = lblk - DIRECT;
    let mut span = per_block;
    for (level, slot) in [(1u32, 12usize), (2, 13), (3, 14)] {
        if rel < span {
            let top = read_u32le(&inode.i_block, slot * 4);
            return walk(fs, top, level, rel, span);
        }
        rel -= span;
        span = span
            .checked_mul(per_block)
            .ok_or(CorruptKind::BlockMapRange)?;
    }
    // Beyond what a block map can address: a hole to the end of the 32-bit range.
    Ok(Mapping::Zero { len: 1 })
}

/// Resolves `rel` inside the subtree of `levels` indirect levels rooted at block `ptr`,
/// which covers `span` logical blocks.
fn walk(
    fs: &Ext4,
    mut ptr: u32,
    levels: u32,
    mut rel: u64,
    mut span: u64,
) -> Result<Mapping, GuestError> {
    let per_block = u64::from(fs.sb.block_size / 4);
    for _ in 0..levels {
        if ptr == 0 {
            return Ok(Mapping::Zero { len: span - rel });
        }
        let block = fs.block(check(fs, ptr)?)?;
        let child_span = span / per_block;
        let idx = usize::try_from(rel / child_span).map_err(|_| CorruptKind::BlockMapRange)?;
        if child_span == 1 {
            let count = usize::try_from(per_block).map_err(|_| CorruptKind::BlockMapRange)?;
            return run(fs, &block, idx, count);
        }
        ptr = read_u32le(&block, idx * 4);
        rel %= child_span;
        span = child_span;
    }
    Ok(Mapping::Zero { len: 1 })
}
