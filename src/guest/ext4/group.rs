//! Block group descriptors: 32 bytes, or `s_desc_size` (>= 64) with the 64bit feature.
//!
//! Where the descriptor blocks are is `descriptor_loc` in the kernel's fs/ext4/super.c: right
//! after the superblock, except with meta_bg, where descriptor block `n >= s_first_meta_bg`
//! lives in the first group of meta group `n` (after that group's superblock backup, if any).
//! flex_bg changes only where bitmaps and inode tables are, which the descriptor says.

use super::super::bytes::{read_u16le, read_u32le};
use super::super::crc::crc32c_raw;
use super::super::{CorruptKind, GuestError};
use super::superblock::{
    Superblock, COMPAT_SPARSE_SUPER2, INCOMPAT_META_BG, RO_COMPAT_SPARSE_SUPER,
};

#[derive(Debug, Clone, Copy)]
pub struct GroupDesc {
    pub inode_table: u64,
    pub flags: u16,
}

/// Whether group `g` holds a superblock backup (`ext4_bg_has_super`).
pub fn has_super(sb: &Superblock, g: u32) -> bool {
    if g == 0 {
        return true;
    }
    if sb.has_compat(COMPAT_SPARSE_SUPER2) {
        return g == sb.backup_bgs[0] || g == sb.backup_bgs[1];
    }
    if g <= 1 || !sb.has_ro_compat(RO_COMPAT_SPARSE_SUPER) {
        return true;
    }
    if g & 1 == 0 {
        return false;
    }
    [3u32, 5, 7].iter().any(|&base| is_power_of(g, base))
}

fn is_power_of(mut n: u32, base: u32) -> bool {
    while n > 1 && n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

/// The block holding descriptor block `nr` (kernel `descriptor_loc`).
pub fn descriptor_block(sb: &Superblock, nr: u32) -> Result<u64, GuestError> {
    let first_data = u64::from(sb.first_data_block);
    if !sb.has_incompat(INCOMPAT_META_BG) || nr < sb.first_meta_bg {
        // The superblock is block first_data_block; descriptors follow it.
        return first_data
            .checked_add(u64::from(nr))
            .and_then(|b| b.checked_add(1))
            .ok_or_else(|| CorruptKind::InodeTableLocation.into());
    }
    let bg = sb
        .descs_per_block()
        .checked_mul(nr)
        .ok_or(CorruptKind::InodeTableLocation)?;
    let mut skip = u64::from(has_super(sb, bg));
    if sb.block_size == 1024 && nr == 0 && sb.first_data_block == 0 {
        skip += 1;
    }
    u64::from(bg)
        .checked_mul(u64::from(sb.blocks_per_group))
        .and_then(|b| b.checked_add(first_data))
        .and_then(|b| b.checked_add(skip))
        .ok_or_else(|| CorruptKind::InodeTableLocation.into())
}

/// Parses descriptor `group` from its bytes (`desc_size` of them), checking its checksum.
pub fn parse(sb: &Superblock, group: u32, d: &[u8]) -> Result<GroupDesc, GuestError> {
    let bg_inode_table_lo = read_u32le(d, 0x8);
    let bg_flags = read_u16le(d, 0x12);
    let bg_checksum = read_u16le(d, 0x1E);
    let bg_inode_table_hi = if sb.desc_size >= 64 {
        read_u32le(d, 0x28)
    } else {
        0
    };
    if sb.metadata_csum() {
        // crc32c(seed, le32 group, descriptor with bg_checksum zeroed), low 16 bits.
        let mut copy = d.to_vec();
        if let Some(c) = copy.get_mut(0x1E..0x20) {
            c.fill(0);
        }
        let crc = crc32c_raw(sb.csum_seed, &group.to_le_bytes());
        let crc = crc32c_raw(crc, &copy);
        if (crc & 0xFFFF) as u16 != bg_checksum {
            return Err(CorruptKind::GroupDescChecksum.into());
        }
    }
    let inode_table = u64::from(bg_inode_table_lo) | (u64::from(bg_inode_table_hi) << 32);
    let table_blocks = u64::from(sb.inodes_per_group)
        .checked_mul(u64::from(sb.inode_size))
        .ok_or(CorruptKind::InodeTableLocation)?
        .div_ceil(u64::from(sb.block_size));
    let end = inode_table
        .checked_add(table_blocks)
        .ok_or(CorruptKind::InodeTableLocation)?;
    if inode_table <= u64::from(sb.first_data_block) || end > sb.blocks_count {
        return Err(CorruptKind::InodeTableLocation.into());
    }
    Ok(GroupDesc {
        inode_table,
        flags: bg_flags,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sparse_super_groups() {
        let got: Vec<u32> = (0..50)
            .filter(|&g| {
                g <= 1
                    || super::is_power_of(g, 3)
                    || super::is_power_of(g, 5)
                    || super::is_power_of(g, 7)
            })
            .collect();
        assert_eq!(got, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }
}
