//! XFS directories (version 2 directories, the only ones current filesystems have): short
//! form inside the inode (`xfs_dir2_sf_hdr` and packed entries, 4- or 8-byte inode numbers,
//! with or without a file type byte), and directory blocks in the data fork, each
//! `blocksize << sb_dirblklog` bytes: a single block (`XD2B`/`XDB3`, entries then a leaf
//! array and a tail), or data blocks (`XD2D`/`XDD3`) below the 32 GiB leaf offset, with leaf,
//! node and free-index blocks above it. Whether the data fork is a list of extents or a
//! btree (the largest directories) changes only how blocks are found ([`super::bmap`]).
//!
//! A listing reads every data block in file order; the hash-ordered leaf and node blocks
//! are not needed for that. v5 data blocks are checked (CRC-32C, magic, owner, UUID).

use crate::guest::bytes::{read_array, read_u16be, read_u32be, read_u64be, read_u8, slice};
use crate::guest::{CorruptKind, FileKind, GuestError};

use super::inode::{ForkFormat, Inode};
use super::sb::crc_ok;
use super::Xfs;

/// Entries a directory may hold before it is refused (as ext4's bound).
pub const MAX_DIR_ENTRIES: usize = 4 << 20;
/// The byte offset where leaf blocks start: data blocks lie below it.
const LEAF_OFFSET: u64 = 32 << 30;
/// Data-block magics: single-block directories and data blocks, v4 and v5.
const XD2B: u32 = 0x5844_3242;
const XD2D: u32 = 0x5844_3244;
const XDB3: u32 = 0x5844_4233;
const XDD3: u32 = 0x5844_4433;
/// A free region of a data block starts with this tag.
const FREE_TAG: u16 = 0xffff;
/// Extents fetched per step of a listing.
const LIST_EXTENTS: usize = 256;

/// One entry as the directory stores it; `kind` only when entries record the file type.
pub struct DirEnt {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: Option<FileKind>,
}

fn ftype_kind(t: u8) -> Option<FileKind> {
    Some(match t {
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

impl Xfs {
    /// Calls `f` with every entry of directory `dir` but `.` and `..`, in on-disk order,
    /// until it returns false.
    pub(crate) fn for_each_entry(
        &self,
        dir: &Inode,
        f: &mut dyn FnMut(DirEnt) -> bool,
    ) -> Result<(), GuestError> {
        match dir.data.format {
            ForkFormat::Local => self.short_form(dir, f),
            ForkFormat::Extents | ForkFormat::Btree => self.dir_blocks(dir, f),
            ForkFormat::Dev => Err(CorruptKind::XfsInodeFork.into()),
        }
    }

    fn short_form(&self, dir: &Inode, f: &mut dyn FnMut(DirEnt) -> bool) -> Result<(), GuestError> {
        let b = &dir.data.bytes;
        let size = usize::try_from(dir.size).map_err(|_| CorruptKind::XfsDirShortForm)?;
        let b = b.get(..size).ok_or(CorruptKind::XfsDirShortForm)?;
        let count = usize::from(read_u8(b, 0));
        let ino_len = if read_u8(b, 1) != 0 { 8 } else { 4 };
        let mut at = 2 + ino_len;
        if at > b.len() {
            return Err(CorruptKind::XfsDirShortForm.into());
        }
        let ftype = usize::from(self.sb.ftype);
        for _ in 0..count {
            let namelen = usize::from(read_u8(b, at));
            let name = slice(b, at + 3, namelen).ok_or(CorruptKind::XfsDirShortForm)?;
            if namelen == 0 || name.contains(&b'/') || name.contains(&0) {
                return Err(CorruptKind::XfsDirShortForm.into());
            }
            let t = at + 3 + namelen;
            let ino_at = t + ftype;
            let raw = slice(b, ino_at, ino_len).ok_or(CorruptKind::XfsDirShortForm)?;
            let ino = if ino_len == 8 {
                read_u64be(raw, 0)
            } else {
                u64::from(read_u32be(raw, 0))
            };
            let kind = if ftype == 1 {
                ftype_kind(read_u8(b, t))
            } else {
                None
            };
            let go = f(DirEnt {
                name: name.to_vec(),
                ino,
                kind,
            });
            if !go {
                return Ok(());
            }
            at = ino_at + ino_len;
        }
        Ok(())
    }

    /// Every data block of a block, leaf or node directory.
    fn dir_blocks(&self, dir: &Inode, f: &mut dyn FnMut(DirEnt) -> bool) -> Result<(), GuestError> {
        let fsbs = u64::from(self.sb.dir_fsbs);
        let leaf_fsb = LEAF_OFFSET >> self.sb.block_log;
        let mut from = 0u64;
        let mut seen = 0usize;
        loop {
            let exts = self.extents(&dir.data, from, LIST_EXTENTS)?;
            for e in &exts {
                // Directory blocks are aligned to their size in the file.
                let mut lblk = e.offset.div_ceil(fsbs) * fsbs;
                lblk = lblk.max(from);
                while lblk < e.end() && lblk < leaf_fsb {
                    let Some(block) = self.fork_blocks(&dir.data, lblk, self.sb.dir_fsbs)? else {
                        return Err(CorruptKind::XfsDirEntry.into());
                    };
                    if !self.data_block(dir.ino, &block, &mut seen, f)? {
                        return Ok(());
                    }
                    lblk += fsbs;
                }
                from = lblk;
                if from >= leaf_fsb {
                    return Ok(());
                }
            }
            if exts.len() < LIST_EXTENTS {
                return Ok(());
            }
        }
    }

    /// The entries of one directory data block; false when `f` asked to stop.
    fn data_block(
        &self,
        owner: u64,
        b: &[u8],
        seen: &mut usize,
        f: &mut dyn FnMut(DirEnt) -> bool,
    ) -> Result<bool, GuestError> {
        let magic = read_u32be(b, 0);
        let v5 = self.sb.is_v5();
        let (is_block, hdr) = match (magic, v5) {
            (XD2B, false) => (true, 16),
            (XD2D, false) => (false, 16),
            (XDB3, true) => (true, 64),
            (XDD3, true) => (false, 64),
            _ => return Err(CorruptKind::XfsDirMagic.into()),
        };
        if v5 {
            if !crc_ok(b, 4) {
                return Err(CorruptKind::XfsDirChecksum.into());
            }
            if read_u64be(b, 40) != owner || read_array::<16>(b, 24) != self.sb.meta_uuid {
                return Err(CorruptKind::XfsBlockOwner.into());
            }
        }
        let mut end = b.len();
        if is_block {
            // The tail: leaf entry count and stale count; the leaf entries precede it.
            let count = read_u32be(b, b.len() - 8) as usize;
            end = count
                .checked_mul(8)
                .and_then(|n| b.len().checked_sub(8 + n))
                .filter(|&e| e >= hdr)
                .ok_or(CorruptKind::XfsDirEntry)?;
        }
        let ftype = usize::from(self.sb.ftype);
        let mut at = hdr;
        while at < end {
            if read_u16be(b, at) == FREE_TAG {
                let len = usize::from(read_u16be(b, at + 2));
                if len < 8 || len % 8 != 0 || at + len > end {
                    return Err(CorruptKind::XfsDirEntry.into());
                }
                at += len;
                continue;
            }
            let ino = read_u64be(b, at);
            let namelen = usize::from(read_u8(b, at + 8));
            let len = (8 + 1 + namelen + ftype + 2).div_ceil(8) * 8;
            if namelen == 0 || at + len > end || usize::from(read_u16be(b, at + len - 2)) != at {
                return Err(CorruptKind::XfsDirEntry.into());
            }
            let name = slice(b, at + 9, namelen).ok_or(CorruptKind::XfsDirEntry)?;
            at += len;
            if name == b"." || name == b".." {
                continue;
            }
            if name.contains(&b'/') || name.contains(&0) {
                return Err(CorruptKind::XfsDirEntry.into());
            }
            *seen += 1;
            if *seen > MAX_DIR_ENTRIES {
                return Err(CorruptKind::XfsDirTooLarge.into());
            }
            let kind = if ftype == 1 {
                ftype_kind(read_u8(b, at - len + 9 + namelen))
            } else {
                None
            };
            if !f(DirEnt {
                name: name.to_vec(),
                ino,
                kind,
            }) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
