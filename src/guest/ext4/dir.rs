//! Directories: linear blocks of `ext4_dir_entry_2` records, htree directories (whose index
//! blocks look to a linear reader like blocks of one empty entry, and are skipped as such),
//! and inline directories (entries in i_block after the parent's inode number, continued in
//! the system.data xattr).
//!
//! Lookups scan every block linearly: slower than following the hash tree on huge
//! directories, but there is no hash to trust, and the htree's index blocks never have to
//! be right. Listing allocates at most what the directory holds: its size is bounded by
//! [`MAX_DIR_BYTES`] and its entries by [`MAX_DIR_ENTRIES`].

use std::ops::ControlFlow;

use super::super::bytes::{read_u16le, read_u32le, read_u8};
use super::super::{CorruptKind, FileKind, GuestError};
use super::inode::{Inode, FL_INDEX, FL_INLINE_DATA};
use super::superblock::INCOMPAT_FILETYPE;
use super::{checksum, inline, Ext4, Mapping};

/// Directories larger than this are refused (a directory of a million entries with 20-byte
/// names takes about 32 MiB).
pub const MAX_DIR_BYTES: u64 = 256 << 20;
/// Listings with more entries than this are refused; each costs about 48 bytes plus its name.
pub const MAX_DIR_ENTRIES: usize = 4 << 20;
/// `EXT4_DIR_REC_LEN(1)`: the smallest valid record.
const MIN_REC_LEN: usize = 12;
const TAIL_FT: u8 = 0xDE;

/// The kind from a dirent's file_type byte; `None` when unknown (then the inode says).
pub fn kind_from_dirent(file_type: u8) -> Option<FileKind> {
    Some(match file_type {
        1 => FileKind::File,
        2 => FileKind::Directory,
        3 => FileKind::CharDevice,
        4 => FileKind::BlockDevice,
        5 => FileKind::Fifo,
        6 => FileKind::Socket,
        7 => FileKind::Symlink,
        _ => return None,
    })
}

/// One raw entry: inode number, name bytes, file_type byte (0 without the filetype feature).
pub struct Dirent<'a> {
    pub inode: u32,
    pub name: &'a [u8],
    pub file_type: u8,
}

/// `ext4_rec_len_from_disk` for 64 KiB blocks, where 65535 (or 0) means the whole block.
fn rec_len(raw: u16, block_size: u32) -> usize {
    if block_size < 65536 {
        return usize::from(raw);
    }
    if raw == u16::MAX || raw == 0 {
        return 65536;
    }
    usize::from(raw & 65532) | (usize::from(raw & 3) << 16)
}

/// Calls `f` on every live entry of `region` (a block, or an inline area).
fn parse_region(
    fs: &Ext4,
    region: &[u8],
    f: &mut dyn FnMut(Dirent<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, GuestError> {
    let filetype = fs.sb.has_incompat(INCOMPAT_FILETYPE);
    let mut pos = 0usize;
    while pos < region.len() {
        let inode = read_u32le(region, pos);
        let rlen = rec_len(read_u16le(region, pos + 4), fs.sb.block_size);
        let name_len_lo = read_u8(region, pos + 6);
        let file_type = read_u8(region, pos + 7);
        let end = pos.checked_add(rlen).ok_or(CorruptKind::DirentRecLen)?;
        if rlen < MIN_REC_LEN || !rlen.is_multiple_of(4) || end > region.len() {
            return Err(CorruptKind::DirentRecLen.into());
        }
        let (name_len, file_type) = if filetype {
            (usize::from(name_len_lo), file_type)
        } else {
            (usize::from(name_len_lo) | (usize::from(file_type) << 8), 0)
        };
        if name_len.checked_add(8).is_none_or(|n| n > rlen) {
            return Err(CorruptKind::DirentNameLen.into());
        }
        if inode != 0 {
            if inode > fs.sb.inodes_count {
                return Err(CorruptKind::DirentInode.into());
            }
            let name = &region[pos + 8..pos + 8 + name_len];
            if f(Dirent {
                inode,
                name,
                file_type,
            })
            .is_break()
            {
                return Ok(ControlFlow::Break(()));
            }
        }
        pos = end;
    }
    Ok(ControlFlow::Continue(()))
}

/// Verifies a directory block's checksum tail. Index blocks of htree directories (the root
/// block, and blocks that are one empty entry covering the block) carry a different tail
/// that a linear reader does not need, and are not checked. They are recognised first: when
/// the kernel turns a linear directory into an htree, the root block keeps the bytes of the
/// old leaf's tail after its index entries, and they look like a leaf tail with a stale
/// checksum.
fn verify_block(fs: &Ext4, dir: &Inode, lblk: u64, block: &[u8]) -> Result<(), GuestError> {
    let bs = block.len();
    let index_block = dir.has_flag(FL_INDEX)
        && (lblk == 0
            || (read_u32le(block, 0) == 0
                && rec_len(read_u16le(block, 4), fs.sb.block_size) == bs));
    if index_block {
        return Ok(());
    }
    let tail = bs.saturating_sub(12);
    let has_tail = read_u32le(block, tail) == 0
        && read_u16le(block, tail + 4) == 12
        && read_u8(block, tail + 6) == 0
        && read_u8(block, tail + 7) == TAIL_FT;
    if !has_tail {
        return Err(fs.checksum_error(CorruptKind::DirBlockNoTail));
    }
    let stored = read_u32le(block, tail + 8);
    if checksum::dir_block_checksum(dir.csum_seed, &block[..tail]) != stored {
        return Err(fs.checksum_error(CorruptKind::DirBlockChecksum));
    }
    Ok(())
}

/// Calls `f` on every live entry of directory `dir` (including `.` and `..` where they are
/// stored), stopping early when it breaks.
pub fn for_each(
    fs: &Ext4,
    dir: &Inode,
    f: &mut dyn FnMut(Dirent<'_>) -> ControlFlow<()>,
) -> Result<(), GuestError> {
    if dir.has_flag(FL_INLINE_DATA) {
        let data = inline::inline_bytes(fs, dir)?;
        // i_block starts with the parent's inode number; entries fill the rest of the 60
        // bytes, then the system.data value is a second area of entries.
        let first = data.get(4..60.min(data.len())).unwrap_or(&[]);
        if parse_region(fs, first, f)?.is_break() {
            return Ok(());
        }
        if let Some(rest) = data.get(60..) {
            if !rest.is_empty() {
                let _ = parse_region(fs, rest, f)?;
            }
        }
        return Ok(());
    }
    if dir.size > MAX_DIR_BYTES {
        return Err(CorruptKind::DirectoryTooLarge.into());
    }
    let bs = u64::from(fs.sb.block_size);
    let blocks = dir.size.div_ceil(bs);
    let mut lblk = 0u64;
    while lblk < blocks {
        let l = u32::try_from(lblk).map_err(|_| CorruptKind::DirectoryTooLarge)?;
        match fs.map(dir, l)? {
            Mapping::Zero { len } => lblk = lblk.saturating_add(len),
            Mapping::Data { phys, len } => {
                for i in 0..len.min(blocks - lblk) {
                    let block = fs.block(phys + i)?;
                    if fs.sb.metadata_csum() {
                        verify_block(fs, dir, lblk + i, &block)?;
                    }
                    if parse_region(fs, &block, f)?.is_break() {
                        return Ok(());
                    }
                }
                lblk = lblk.saturating_add(len);
            }
        }
    }
    Ok(())
}

/// The inode of the parent directory as recorded in `dir` itself (`..`), if any.
pub fn parent(fs: &Ext4, dir: &Inode) -> Result<Option<u32>, GuestError> {
    if dir.has_flag(FL_INLINE_DATA) {
        return Ok(Some(read_u32le(&dir.i_block, 0)));
    }
    let mut found = None;
    for_each(fs, dir, &mut |d| {
        if d.name == b".." {
            found = Some(d.inode);
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    Ok(found)
}
