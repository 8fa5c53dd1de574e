//! metadata_csum: CRC-32C checksums over ext4 metadata, as fs/ext4 computes them.
//!
//! On a mismatch the object is refused (EIO for what needs it), as the kernel refuses it
//! with EFSBADCRC; the rest of the filesystem stays readable. The superblock and group
//! descriptor checks live with their parsers; inode, extent-block, directory-block and
//! xattr-block checks are here.

use super::super::crc::crc32c_raw;

/// The per-inode seed: crc32c(crc32c(fs seed, le32 ino), le32 i_generation).
pub fn inode_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    let crc = crc32c_raw(fs_seed, &ino.to_le_bytes());
    crc32c_raw(crc, &generation.to_le_bytes())
}

/// The checksum of an on-disk inode: the whole `inode_size` bytes with i_checksum_lo (0x7C)
/// and, when i_extra_isize covers it, i_checksum_hi (0x82) taken as zero.
pub fn inode_checksum(seed: u32, raw: &[u8], has_hi: bool) -> u32 {
    let mut copy = raw.to_vec();
    if let Some(lo) = copy.get_mut(0x7C..0x7E) {
        lo.fill(0);
    }
    if has_hi {
        if let Some(hi) = copy.get_mut(0x82..0x84) {
            hi.fill(0);
        }
    }
    crc32c_raw(seed, &copy)
}

/// The checksum of an extent tree block: crc32c(inode seed, bytes before the tail).
pub fn extent_block_checksum(inode_seed: u32, covered: &[u8]) -> u32 {
    crc32c_raw(inode_seed, covered)
}

/// The checksum of a directory leaf block: crc32c(inode seed, the block up to its tail).
pub fn dir_block_checksum(inode_seed: u32, covered: &[u8]) -> u32 {
    crc32c_raw(inode_seed, covered)
}

/// The checksum of an external xattr block: crc32c(fs seed, le64 block number, block with
/// h_checksum (0x10) zeroed).
pub fn xattr_block_checksum(fs_seed: u32, block_nr: u64, block: &[u8]) -> u32 {
    let mut copy = block.to_vec();
    if let Some(c) = copy.get_mut(0x10..0x14) {
        c.fill(0);
    }
    let crc = crc32c_raw(fs_seed, &block_nr.to_le_bytes());
    crc32c_raw(crc, &copy)
}
