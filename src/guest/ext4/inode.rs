//! On-disk inodes (`struct ext4_inode`): 128 bytes of the original layout plus
//! `i_extra_isize` bytes of extra fields (nanosecond times, checksum high half, crtime),
//! then in-inode extended attributes up to `s_inode_size`.

use super::super::bytes::{read_u16le, read_u32le};
use super::super::{CorruptKind, FileKind, GuestError, GuestTime};
use super::checksum;
use super::superblock::{Superblock, OS_LINUX, RO_COMPAT_HUGE_FILE};

// i_flags
pub const FL_ENCRYPT: u32 = 0x800;
pub const FL_INDEX: u32 = 0x1000;
pub const FL_HUGE_FILE: u32 = 0x40000;
pub const FL_EXTENTS: u32 = 0x80000;
pub const FL_EA_INODE: u32 = 0x200000;
pub const FL_INLINE_DATA: u32 = 0x1000_0000;

const GOOD_OLD_INODE_SIZE: usize = 128;

#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u32,
    /// The whole on-disk inode (`s_inode_size` bytes), kept for xattrs and inline data.
    pub raw: Vec<u8>,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links_count: u16,
    pub flags: u32,
    /// st_blocks in 512-byte units.
    pub blocks: u64,
    pub file_acl: u64,
    pub generation: u32,
    pub extra_isize: u16,
    pub atime: GuestTime,
    pub ctime: GuestTime,
    pub mtime: GuestTime,
    pub crtime: Option<GuestTime>,
    /// i_block: the extent tree root, block map, inline data or fast symlink target.
    pub i_block: [u8; 60],
    /// Seed of this inode's extent and directory block checksums.
    pub csum_seed: u32,
}

/// `ext4_decode_extra_time`: a signed 32-bit seconds field, plus two epoch bits (adding
/// 2^32 s each) and 30 bits of nanoseconds from the extra field when the inode has it.
fn decode_time(base: u32, extra: Option<u32>) -> GuestTime {
    // The on-disk seconds are a signed 32-bit value (times before 1970 are negative).
    let mut secs = i64::from(i32::from_ne_bytes(base.to_ne_bytes()));
    let mut nsecs = 0;
    if let Some(extra) = extra {
        secs = secs.saturating_add(i64::from(extra & 3) << 32);
        nsecs = extra >> 2;
    }
    GuestTime { secs, nsecs }
}

impl Inode {
    /// Parses inode `ino` from its `s_inode_size` on-disk bytes.
    pub fn parse(sb: &Superblock, ino: u32, raw: &[u8]) -> Result<Inode, GuestError> {
        let i_mode = read_u16le(raw, 0x0);
        let i_uid = read_u16le(raw, 0x2);
        let i_size_lo = read_u32le(raw, 0x4);
        let i_atime = read_u32le(raw, 0x8);
        let i_ctime = read_u32le(raw, 0xC);
        let i_mtime = read_u32le(raw, 0x10);
        let i_gid = read_u16le(raw, 0x18);
        let i_links_count = read_u16le(raw, 0x1A);
        let i_blocks_lo = read_u32le(raw, 0x1C);
        let i_flags = read_u32le(raw, 0x20);
        let i_generation = read_u32le(raw, 0x64);
        let i_file_acl_lo = read_u32le(raw, 0x68);
        let i_size_high = read_u32le(raw, 0x6C);
        let l_i_blocks_high = read_u16le(raw, 0x74);
        let l_i_file_acl_high = read_u16le(raw, 0x76);
        let l_i_uid_high = read_u16le(raw, 0x78);
        let l_i_gid_high = read_u16le(raw, 0x7A);
        let l_i_checksum_lo = read_u16le(raw, 0x7C);
        let mut i_block = [0u8; 60];
        i_block.copy_from_slice(&raw[0x28..0x64]);

        let extra_isize = if raw.len() > GOOD_OLD_INODE_SIZE {
            let i_extra_isize = read_u16le(raw, 0x80);
            let end = GOOD_OLD_INODE_SIZE.checked_add(usize::from(i_extra_isize));
            if end.is_none_or(|end| end > raw.len()) || !i_extra_isize.is_multiple_of(4) {
                return Err(CorruptKind::ExtraIsize.into());
            }
            i_extra_isize
        } else {
            0
        };
        // An extra field exists when i_extra_isize reaches past its end.
        let extra = |offset: usize| -> Option<u32> {
            let end = offset.checked_add(4)?;
            (end <= GOOD_OLD_INODE_SIZE + usize::from(extra_isize)).then(|| read_u32le(raw, offset))
        };
        let csum_seed = checksum::inode_seed(sb.csum_seed, ino, i_generation);
        if sb.metadata_csum() && sb.creator_os == OS_LINUX {
            // EXT4_FITS_IN_INODE(i_checksum_hi): 0x82 + 2 <= 128 + i_extra_isize.
            let has_hi = usize::from(extra_isize) >= 4;
            let crc = checksum::inode_checksum(csum_seed, raw, has_hi);
            let stored = if has_hi {
                u32::from(l_i_checksum_lo) | (u32::from(read_u16le(raw, 0x82)) << 16)
            } else {
                u32::from(l_i_checksum_lo)
            };
            let computed = if has_hi { crc } else { crc & 0xFFFF };
            if stored != computed {
                return Err(CorruptKind::InodeChecksum.into());
            }
        }
        let size = u64::from(i_size_lo) | (u64::from(i_size_high) << 32);
        if i64::try_from(size).is_err() {
            return Err(CorruptKind::FileSize.into());
        }
        let mut blocks = u64::from(i_blocks_lo);
        if sb.has_ro_compat(RO_COMPAT_HUGE_FILE) {
            blocks |= u64::from(l_i_blocks_high) << 32;
            if i_flags & FL_HUGE_FILE != 0 {
                // Counted in filesystem blocks, not 512-byte sectors.
                let shift = sb.block_size.trailing_zeros().saturating_sub(9);
                blocks = blocks.checked_shl(shift).unwrap_or(u64::MAX);
            }
        }
        Ok(Inode {
            ino,
            raw: raw.to_vec(),
            mode: i_mode,
            uid: u32::from(i_uid) | (u32::from(l_i_uid_high) << 16),
            gid: u32::from(i_gid) | (u32::from(l_i_gid_high) << 16),
            size,
            links_count: i_links_count,
            flags: i_flags,
            blocks,
            file_acl: u64::from(i_file_acl_lo) | (u64::from(l_i_file_acl_high) << 32),
            generation: i_generation,
            extra_isize,
            atime: decode_time(i_atime, extra(0x8C)),
            ctime: decode_time(i_ctime, extra(0x84)),
            mtime: decode_time(i_mtime, extra(0x88)),
            crtime: extra(0x90).map(|base| decode_time(base, extra(0x94))),
            i_block,
            csum_seed,
        })
    }

    pub fn kind(&self) -> Result<FileKind, GuestError> {
        Ok(match self.mode & 0xF000 {
            0x8000 => FileKind::File,
            0x4000 => FileKind::Directory,
            0xA000 => FileKind::Symlink,
            0x2000 => FileKind::CharDevice,
            0x6000 => FileKind::BlockDevice,
            0x1000 => FileKind::Fifo,
            0xC000 => FileKind::Socket,
            _ => return Err(CorruptKind::InodeFileType.into()),
        })
    }

    pub fn has_flag(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// Device number of a character or block device: the old 16-bit encoding in i_block[0]
    /// if non-zero, else the new 32-bit one in i_block[1] (kernel `ext4_iget`).
    pub fn rdev(&self) -> (u32, u32) {
        let old = read_u32le(&self.i_block, 0);
        if old != 0 {
            return ((old >> 8) & 0xFF, old & 0xFF);
        }
        let new = read_u32le(&self.i_block, 4);
        ((new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00))
    }

    /// The in-inode extended attribute area: after the extra fields, to the inode's end.
    pub fn xattr_area(&self) -> &[u8] {
        let start = GOOD_OLD_INODE_SIZE.saturating_add(usize::from(self.extra_isize));
        self.raw.get(start..).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_time_epoch_bits_and_nanoseconds() {
        // -1 s with epoch 1: 2^32 - 1 s (2106), as the kernel decodes it.
        let t = decode_time(u32::MAX, Some(1 | (5 << 2)));
        assert_eq!(
            t,
            GuestTime {
                secs: (1 << 32) - 1,
                nsecs: 5
            }
        );
        let t = decode_time(0x8000_0000, None);
        assert_eq!(t.secs, -(1 << 31));
    }
}
