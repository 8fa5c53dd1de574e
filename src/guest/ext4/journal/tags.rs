//! Descriptor blocks: after the 12-byte header, block tags naming the filesystem block each
//! following log block is a copy of. Tag layouts (include/linux/jbd2.h):
//! - csum v3: `journal_block_tag3_t`, 16 bytes: blocknr, flags (32-bit), blocknr_high, checksum;
//! - otherwise `journal_block_tag_t`: blocknr, checksum (16-bit), flags (16-bit),
//!   blocknr_high; 12 bytes with 64bit, 8 without, plus 2 with csum v2.
//!
//! A tag without SAME_UUID is followed by a 16-byte UUID; LAST_TAG ends the list.

use super::super::super::bytes::{read_u32be, slice};
use super::superblock::{JournalSuperblock, INCOMPAT_64BIT, INCOMPAT_CSUM_V2, INCOMPAT_CSUM_V3};

pub const FLAG_ESCAPE: u16 = 1;
pub const FLAG_SAME_UUID: u16 = 2;
pub const FLAG_LAST_TAG: u16 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub blocknr: u64,
    pub flags: u16,
    /// The stored checksum (16 bits for v2, 32 for v3).
    pub checksum: u32,
}

/// `journal_tag_bytes`.
pub fn tag_bytes(jsb: &JournalSuperblock) -> usize {
    if jsb.has_incompat(INCOMPAT_CSUM_V3) {
        return 16;
    }
    let mut size = 12;
    if jsb.has_incompat(INCOMPAT_CSUM_V2) {
        size += 2;
    }
    if jsb.has_incompat(INCOMPAT_64BIT) {
        size
    } else {
        size - 4
    }
}

/// The tags of one descriptor block, in order (as the kernel's `count_tags` walks them).
pub fn parse(block: &[u8], jsb: &JournalSuperblock) -> Vec<Tag> {
    let size = block.len().saturating_sub(jsb.tail_bytes());
    let tag_len = tag_bytes(jsb);
    let v3 = jsb.has_incompat(INCOMPAT_CSUM_V3);
    let is_64 = jsb.has_incompat(INCOMPAT_64BIT);
    let mut out = Vec::new();
    let mut pos = 12usize;
    while pos.checked_add(tag_len).is_some_and(|end| end <= size) {
        let Some(t) = slice(block, pos, tag_len) else {
            break;
        };
        let t_blocknr = read_u32be(t, 0);
        // The 16-bit flags of journal_block_tag_t sit where the low half of tag3's 32-bit
        // flags is; the kernel reads them the same way for both.
        let t_flags = u16::from_be_bytes([t[6], t[7]]);
        let t_blocknr_high = if is_64 { read_u32be(t, 8) } else { 0 };
        let checksum = if v3 {
            read_u32be(t, 12)
        } else {
            u32::from(u16::from_be_bytes([t[4], t[5]]))
        };
        out.push(Tag {
            blocknr: u64::from(t_blocknr) | (u64::from(t_blocknr_high) << 32),
            flags: t_flags,
            checksum,
        });
        pos += tag_len;
        if t_flags & FLAG_SAME_UUID == 0 {
            pos += 16;
        }
        if t_flags & FLAG_LAST_TAG != 0 {
            break;
        }
    }
    out
}
