//! The JBD2 journal superblock (big-endian, in journal block 0), `journal_superblock_t` of
//! the kernel's include/linux/jbd2.h.

use super::super::super::bytes::{read_array, read_u32be, read_u8};
use super::super::super::crc::crc32c_raw;
use super::super::super::{CorruptKind, GuestError};

pub const JBD2_MAGIC: u32 = 0xC03B_3998;

pub const BLOCKTYPE_DESCRIPTOR: u32 = 1;
pub const BLOCKTYPE_COMMIT: u32 = 2;
pub const BLOCKTYPE_SUPERBLOCK_V1: u32 = 3;
pub const BLOCKTYPE_SUPERBLOCK_V2: u32 = 4;
pub const BLOCKTYPE_REVOKE: u32 = 5;

pub const COMPAT_CHECKSUM: u32 = 0x1;
pub const INCOMPAT_REVOKE: u32 = 0x1;
pub const INCOMPAT_64BIT: u32 = 0x2;
pub const INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
pub const INCOMPAT_CSUM_V2: u32 = 0x8;
pub const INCOMPAT_CSUM_V3: u32 = 0x10;
pub const INCOMPAT_FAST_COMMIT: u32 = 0x20;
const INCOMPAT_KNOWN: u32 = 0x3F;

/// JBD2_CRC32C_CHKSUM: the only s_checksum_type v2/v3 journals use.
const CHECKSUM_TYPE_CRC32C: u8 = 4;
/// JBD2_DEFAULT_FAST_COMMIT_BLOCKS, used when s_num_fc_blks is 0.
const DEFAULT_FAST_COMMIT_BLOCKS: u32 = 256;

#[derive(Debug, Clone)]
pub struct JournalSuperblock {
    pub block_size: u32,
    pub maxlen: u32,
    pub first: u32,
    pub sequence: u32,
    pub start: u32,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    /// One past the last block of the circular log (the fast-commit area follows it).
    pub last: u32,
    /// Seed of v2/v3 checksums: crc32c(~0, s_uuid).
    pub csum_seed: u32,
}

impl JournalSuperblock {
    pub fn has_incompat(&self, f: u32) -> bool {
        self.feature_incompat & f != 0
    }
    pub fn csum_v2or3(&self) -> bool {
        self.has_incompat(INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3)
    }
    /// Bytes of the block tail that v2/v3 descriptor and revoke blocks end with.
    pub fn tail_bytes(&self) -> usize {
        if self.csum_v2or3() {
            4
        } else {
            0
        }
    }

    /// Parses journal block 0; `blocks` is how many blocks the journal inode maps.
    pub fn parse(b: &[u8], fs_block_size: u32, blocks: u64) -> Result<Self, GuestError> {
        let h_magic = read_u32be(b, 0x0);
        let h_blocktype = read_u32be(b, 0x4);
        let s_blocksize = read_u32be(b, 0xC);
        let s_maxlen = read_u32be(b, 0x10);
        let s_first = read_u32be(b, 0x14);
        let s_sequence = read_u32be(b, 0x18);
        let s_start = read_u32be(b, 0x1C);
        let v2 = h_blocktype == BLOCKTYPE_SUPERBLOCK_V2;
        let (s_feature_compat, s_feature_incompat) = if v2 {
            (read_u32be(b, 0x24), read_u32be(b, 0x28))
        } else {
            (0, 0)
        };
        let s_uuid = read_array::<16>(b, 0x30);
        let s_checksum_type = read_u8(b, 0x50);
        let s_num_fc_blks = read_u32be(b, 0x54);
        let s_checksum = read_u32be(b, 0xFC);

        if h_magic != JBD2_MAGIC || !(v2 || h_blocktype == BLOCKTYPE_SUPERBLOCK_V1) {
            return Err(CorruptKind::JournalSuperblock.into());
        }
        if s_blocksize != fs_block_size {
            return Err(CorruptKind::JournalBlockSize.into());
        }
        if s_feature_incompat & !INCOMPAT_KNOWN != 0 {
            return Err(CorruptKind::JournalFeatures.into());
        }
        let csum_v2or3 = s_feature_incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) != 0;
        if csum_v2or3 {
            if s_checksum_type != CHECKSUM_TYPE_CRC32C {
                return Err(CorruptKind::JournalSuperblockChecksum.into());
            }
            let mut copy = b
                .get(..1024)
                .ok_or(CorruptKind::JournalSuperblock)?
                .to_vec();
            copy[0xFC..0x100].fill(0);
            if crc32c_raw(!0, &copy) != s_checksum {
                return Err(CorruptKind::JournalSuperblockChecksum.into());
            }
        }
        let mut last = s_maxlen;
        if s_feature_incompat & INCOMPAT_FAST_COMMIT != 0 {
            let fc = if s_num_fc_blks == 0 {
                DEFAULT_FAST_COMMIT_BLOCKS
            } else {
                s_num_fc_blks
            };
            last = s_maxlen
                .checked_sub(fc)
                .ok_or(CorruptKind::JournalGeometry)?;
        }
        if u64::from(s_maxlen) > blocks || s_first == 0 || s_first >= last {
            return Err(CorruptKind::JournalGeometry.into());
        }
        if s_start != 0 && (s_start < s_first || s_start >= last) {
            return Err(CorruptKind::JournalGeometry.into());
        }
        Ok(JournalSuperblock {
            block_size: s_blocksize,
            maxlen: s_maxlen,
            first: s_first,
            sequence: s_sequence,
            start: s_start,
            feature_compat: s_feature_compat,
            feature_incompat: s_feature_incompat,
            last,
            csum_seed: crc32c_raw(!0, &s_uuid),
        })
    }
}
