//! The ext2/3/4 superblock: 1024 bytes at byte 1024 of the volume.
//!
//! Field offsets and names are those of `struct ext4_super_block` in the kernel's
//! Documentation/filesystems/ext4/super.rst. Every check the kernel makes before trusting a
//! field for addressing is made here, each with its own [`CorruptKind`].

use super::super::bytes::{read_array, read_u16le, read_u32le, read_u8};
use super::super::crc::crc32c_raw;
use super::super::{CorruptKind, GuestError};

pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_SIZE: usize = 1024;
pub const EXT4_MAGIC: u16 = 0xEF53;

// s_feature_compat
pub const COMPAT_HAS_JOURNAL: u32 = 0x4;
pub const COMPAT_SPARSE_SUPER2: u32 = 0x200;
pub const COMPAT_FAST_COMMIT: u32 = 0x400;

// s_feature_incompat
pub const INCOMPAT_COMPRESSION: u32 = 0x1;
pub const INCOMPAT_FILETYPE: u32 = 0x2;
pub const INCOMPAT_RECOVER: u32 = 0x4;
pub const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
pub const INCOMPAT_META_BG: u32 = 0x10;
pub const INCOMPAT_EXTENTS: u32 = 0x40;
pub const INCOMPAT_64BIT: u32 = 0x80;
pub const INCOMPAT_MMP: u32 = 0x100;
pub const INCOMPAT_FLEX_BG: u32 = 0x200;
pub const INCOMPAT_EA_INODE: u32 = 0x400;
pub const INCOMPAT_DIRDATA: u32 = 0x1000;
pub const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub const INCOMPAT_LARGEDIR: u32 = 0x4000;
pub const INCOMPAT_INLINE_DATA: u32 = 0x8000;
pub const INCOMPAT_ENCRYPT: u32 = 0x10000;
pub const INCOMPAT_CASEFOLD: u32 = 0x20000;

/// The incompatible features this reader handles. Encryption is accepted here because only
/// the encrypted inodes are unreadable (they give Unsupported); casefold directories are read
/// as stored (lookups match the stored bytes exactly).
const INCOMPAT_SUPPORTED: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD;

// s_feature_ro_compat (a read-only reader may ignore unknown ones, as the kernel does).
pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub const RO_COMPAT_HUGE_FILE: u32 = 0x8;
pub const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// s_creator_os value of Linux: inode checksums are only checked for it, as in the kernel.
pub const OS_LINUX: u32 = 0;

#[derive(Debug, Clone)]
pub struct Superblock {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub first_data_block: u32,
    pub block_size: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub creator_os: u32,
    pub first_ino: u32,
    pub inode_size: u32,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub uuid: [u8; 16],
    pub journal_inum: u32,
    pub journal_dev: u32,
    pub desc_size: u32,
    pub first_meta_bg: u32,
    pub backup_bgs: [u32; 2],
    /// Number of block groups.
    pub group_count: u32,
    /// Seed of every metadata checksum: s_checksum_seed or crc32c(~0, s_uuid).
    pub csum_seed: u32,
}

impl Superblock {
    pub fn has_compat(&self, f: u32) -> bool {
        self.feature_compat & f != 0
    }
    pub fn has_incompat(&self, f: u32) -> bool {
        self.feature_incompat & f != 0
    }
    pub fn has_ro_compat(&self, f: u32) -> bool {
        self.feature_ro_compat & f != 0
    }
    pub fn metadata_csum(&self) -> bool {
        self.has_ro_compat(RO_COMPAT_METADATA_CSUM)
    }

    /// Group descriptors per block.
    pub fn descs_per_block(&self) -> u32 {
        self.block_size / self.desc_size
    }

    /// Parses and validates a superblock. `device_len` is the volume's size in bytes.
    pub fn parse(sb: &[u8], device_len: u64) -> Result<Superblock, GuestError> {
        if sb.len() < SUPERBLOCK_SIZE {
            return Err(CorruptKind::SuperblockMagic.into());
        }
        let s_inodes_count = read_u32le(sb, 0x0);
        let s_blocks_count_lo = read_u32le(sb, 0x4);
        let s_first_data_block = read_u32le(sb, 0x14);
        let s_log_block_size = read_u32le(sb, 0x18);
        let s_blocks_per_group = read_u32le(sb, 0x20);
        let s_inodes_per_group = read_u32le(sb, 0x28);
        let s_magic = read_u16le(sb, 0x38);
        let s_creator_os = read_u32le(sb, 0x48);
        let s_rev_level = read_u32le(sb, 0x4C);
        let s_first_ino = read_u32le(sb, 0x54);
        let s_inode_size = read_u16le(sb, 0x58);
        let s_feature_compat = read_u32le(sb, 0x5C);
        let s_feature_incompat = read_u32le(sb, 0x60);
        let s_feature_ro_compat = read_u32le(sb, 0x64);
        let s_uuid = read_array::<16>(sb, 0x68);
        let s_journal_inum = read_u32le(sb, 0xE0);
        let s_journal_dev = read_u32le(sb, 0xE4);
        let s_desc_size = read_u16le(sb, 0xFE);
        let s_first_meta_bg = read_u32le(sb, 0x104);
        let s_blocks_count_hi = read_u32le(sb, 0x150);
        let s_checksum_type = read_u8(sb, 0x175);
        let s_backup_bgs = [read_u32le(sb, 0x24C), read_u32le(sb, 0x250)];
        let s_checksum_seed = read_u32le(sb, 0x270);
        let s_checksum = read_u32le(sb, 0x3FC);

        if s_magic != EXT4_MAGIC {
            return Err(CorruptKind::SuperblockMagic.into());
        }
        let metadata_csum = s_feature_ro_compat & RO_COMPAT_METADATA_CSUM != 0;
        if metadata_csum {
            if s_checksum_type != 1 {
                return Err(CorruptKind::SuperblockChecksumType.into());
            }
            if crc32c_raw(!0, &sb[..0x3FC]) != s_checksum {
                return Err(CorruptKind::SuperblockChecksum.into());
            }
        }
        let unknown = s_feature_incompat & !INCOMPAT_SUPPORTED;
        if unknown & INCOMPAT_COMPRESSION != 0 {
            return Err(GuestError::Unsupported("ext4 compression".into()));
        }
        if unknown & INCOMPAT_DIRDATA != 0 {
            return Err(GuestError::Unsupported("ext4 dirdata (Lustre)".into()));
        }
        if unknown != 0 {
            return Err(GuestError::Unsupported(format!(
                "ext4 incompatible features {unknown:#x} (not known to this reader)"
            )));
        }
        // 1 KiB << 6 = 64 KiB, the kernel's EXT4_MAX_BLOCK_LOG_SIZE.
        if s_log_block_size > 6 {
            return Err(CorruptKind::BlockSize.into());
        }
        let block_size = 1024u32 << s_log_block_size;
        let bits_per_block = block_size.checked_mul(8).ok_or(CorruptKind::BlockSize)?;
        if s_blocks_per_group == 0 || s_blocks_per_group > bits_per_block {
            return Err(CorruptKind::BlocksPerGroup.into());
        }
        if s_inodes_per_group == 0 || s_inodes_per_group > bits_per_block {
            return Err(CorruptKind::InodesPerGroup.into());
        }
        let (inode_size, first_ino) = if s_rev_level == 0 {
            (128, 11)
        } else {
            (u32::from(s_inode_size), s_first_ino)
        };
        if inode_size < 128 || !inode_size.is_power_of_two() || inode_size > block_size {
            return Err(CorruptKind::InodeSize.into());
        }
        if first_ino < 11 || first_ino > s_inodes_count {
            return Err(CorruptKind::FirstIno.into());
        }
        let is_64bit = s_feature_incompat & INCOMPAT_64BIT != 0;
        let blocks_count = if is_64bit {
            u64::from(s_blocks_count_lo) | (u64::from(s_blocks_count_hi) << 32)
        } else {
            u64::from(s_blocks_count_lo)
        };
        if blocks_count == 0 {
            return Err(CorruptKind::BlocksCount.into());
        }
        if u64::from(s_first_data_block) >= blocks_count || s_first_data_block > 1 {
            return Err(CorruptKind::FirstDataBlock.into());
        }
        let fs_bytes = blocks_count
            .checked_mul(u64::from(block_size))
            .ok_or(CorruptKind::BlocksCount)?;
        if fs_bytes > device_len {
            return Err(CorruptKind::DeviceTooSmall.into());
        }
        let group_count =
            (blocks_count - u64::from(s_first_data_block)).div_ceil(u64::from(s_blocks_per_group));
        let group_count = u32::try_from(group_count).map_err(|_| CorruptKind::BlocksCount)?;
        if u64::from(group_count) * u64::from(s_inodes_per_group) != u64::from(s_inodes_count) {
            return Err(CorruptKind::InodesCount.into());
        }
        let desc_size = if is_64bit {
            let d = u32::from(s_desc_size);
            if !(64..=1024).contains(&d) || !d.is_power_of_two() {
                return Err(CorruptKind::DescSize.into());
            }
            d
        } else {
            32
        };
        let descs_per_block = block_size / desc_size;
        let desc_blocks = group_count.div_ceil(descs_per_block);
        if s_feature_incompat & INCOMPAT_META_BG != 0 && s_first_meta_bg > desc_blocks {
            return Err(CorruptKind::FirstMetaBg.into());
        }
        let csum_seed = if s_feature_incompat & INCOMPAT_CSUM_SEED != 0 {
            s_checksum_seed
        } else {
            crc32c_raw(!0, &s_uuid)
        };
        Ok(Superblock {
            inodes_count: s_inodes_count,
            blocks_count,
            first_data_block: s_first_data_block,
            block_size,
            blocks_per_group: s_blocks_per_group,
            inodes_per_group: s_inodes_per_group,
            creator_os: s_creator_os,
            first_ino,
            inode_size,
            feature_compat: s_feature_compat,
            feature_incompat: s_feature_incompat,
            feature_ro_compat: s_feature_ro_compat,
            uuid: s_uuid,
            journal_inum: s_journal_inum,
            journal_dev: s_journal_dev,
            desc_size,
            first_meta_bg: s_first_meta_bg,
            backup_bgs: s_backup_bgs,
            group_count,
            csum_seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid superblock: 1 KiB blocks, 8192 blocks, one group of 2048 inodes.
    pub(crate) fn minimal() -> Vec<u8> {
        let mut sb = vec![0u8; 1024];
        sb[0x0..0x4].copy_from_slice(&2048u32.to_le_bytes());
        sb[0x4..0x8].copy_from_slice(&8192u32.to_le_bytes());
        sb[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        sb[0x20..0x24].copy_from_slice(&8192u32.to_le_bytes());
        sb[0x28..0x2C].copy_from_slice(&2048u32.to_le_bytes());
        sb[0x38..0x3A].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        sb[0x4C..0x50].copy_from_slice(&1u32.to_le_bytes());
        sb[0x54..0x58].copy_from_slice(&11u32.to_le_bytes());
        sb[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        sb
    }

    fn err(sb: &[u8]) -> GuestError {
        Superblock::parse(sb, 8 << 20).unwrap_err()
    }

    #[test]
    fn minimal_parses() {
        let sb = Superblock::parse(&minimal(), 8 << 20).unwrap();
        assert_eq!(
            (sb.block_size, sb.group_count, sb.inode_size),
            (1024, 1, 256)
        );
    }

    #[test]
    fn each_field_check_has_its_own_error() {
        let cases: &[(usize, &[u8], CorruptKind)] = &[
            (0x38, &[0, 0], CorruptKind::SuperblockMagic),
            (0x18, &[7, 0, 0, 0], CorruptKind::BlockSize),
            (0x18, &[0xff, 0xff, 0xff, 0xff], CorruptKind::BlockSize),
            (0x20, &[0, 0, 0, 0], CorruptKind::BlocksPerGroup),
            (0x28, &[0, 0, 0, 0], CorruptKind::InodesPerGroup),
            (0x58, &[1, 4], CorruptKind::InodeSize),
            (0x58, &[0, 8], CorruptKind::InodeSize),
            (0x0, &[1, 8, 0, 0], CorruptKind::InodesCount),
            (0x4, &[0, 0, 0, 0], CorruptKind::BlocksCount),
            (0x4, &[0, 0, 0, 1], CorruptKind::DeviceTooSmall),
            (0x14, &[5, 0, 0, 0], CorruptKind::FirstDataBlock),
            (0x54, &[3, 0, 0, 0], CorruptKind::FirstIno),
        ];
        for &(at, bytes, kind) in cases {
            let mut sb = minimal();
            sb[at..at + bytes.len()].copy_from_slice(bytes);
            match err(&sb) {
                GuestError::Corrupt(k) => assert_eq!(k, kind, "field at {at:#x}"),
                e => panic!("field at {at:#x}: {e}"),
            }
        }
    }

    #[test]
    fn unknown_incompat_is_unsupported_and_checksum_is_checked() {
        let mut sb = minimal();
        sb[0x60..0x64].copy_from_slice(&0x8000_0000u32.to_le_bytes());
        assert!(matches!(err(&sb), GuestError::Unsupported(_)));
        let mut sb = minimal();
        sb[0x64..0x68].copy_from_slice(&RO_COMPAT_METADATA_CSUM.to_le_bytes());
        sb[0x175] = 1;
        assert!(matches!(
            err(&sb),
            GuestError::Corrupt(CorruptKind::SuperblockChecksum)
        ));
        let c = crc32c_raw(!0, &sb[..0x3FC]);
        sb[0x3FC..].copy_from_slice(&c.to_le_bytes());
        Superblock::parse(&sb, 8 << 20).unwrap();
    }
}
