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
use super::{Crc, Xfs};

/// v5 data blocks keep their CRC at 4; leaf and node blocks at 12.
const DATA_CRC: Crc = Crc::At(4, CorruptKind::XfsDirChecksum);
const DA_CRC: Crc = Crc::At(12, CorruptKind::XfsDirChecksum);

/// Entries a directory may hold before it is refused (as ext4's bound).
pub const MAX_DIR_ENTRIES: usize = 4 << 20;
/// Bytes of data blocks a listing reads before the directory is refused: 4,194,304
/// entries of 255-byte names fill about 1.1 GiB.
pub const MAX_DIR_BYTES: u64 = 5 << 28;
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
        let mut bytes = 0u64;
        loop {
            let exts = self.extents(&dir.data, from, LIST_EXTENTS)?;
            for e in &exts {
                // Directory blocks are aligned to their size in the file.
                let mut lblk = e.offset.div_ceil(fsbs) * fsbs;
                lblk = lblk.max(from);
                while lblk < e.end() && lblk < leaf_fsb {
                    let Some(block) =
                        self.fork_blocks(&dir.data, lblk, self.sb.dir_fsbs, DATA_CRC)?
                    else {
                        return Err(CorruptKind::XfsDirEntry.into());
                    };
                    bytes += u64::from(self.sb.dir_block_size);
                    if bytes > MAX_DIR_BYTES {
                        return Err(CorruptKind::XfsDirTooLarge.into());
                    }
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
        if v5 && (read_u64be(b, 40) != owner || read_array::<16>(b, 24) != self.sb.meta_uuid) {
            return Err(CorruptKind::XfsBlockOwner.into());
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

// Hashed lookups: the leaf entries (hash of the name, address of its data entry) of a
// single-block directory's tail, a leaf directory's one leaf block, or a node directory's
// dabtree over leaf blocks, all at or above the 32 GiB leaf offset.

/// Leaf-block magics (`xfs_da_blkinfo.magic`): one-leaf directories, leaves under nodes,
/// dabtree nodes; v4 then v5.
const LEAF1_MAGIC: u16 = 0xd2f1;
const LEAFN_MAGIC: u16 = 0xd2ff;
const DA_NODE_MAGIC: u16 = 0xfebe;
const LEAF1_MAGIC_V5: u16 = 0x3df1;
const LEAFN_MAGIC_V5: u16 = 0x3dff;
const DA_NODE_MAGIC_V5: u16 = 0x3ebe;
/// The dabtree is at most this deep (XFS_DA_NODE_MAXDEPTH).
const MAX_DA_DEPTH: usize = 5;
/// Leaf blocks one lookup follows while entries keep the same hash.
const MAX_SAME_HASH_LEAVES: usize = 64;

/// `xfs_da_hashname`: the hash XFS orders directory and attribute entries by.
pub fn da_hashname(name: &[u8]) -> u32 {
    let mut hash = 0u32;
    let mut chunks = name.chunks_exact(4);
    for c in &mut chunks {
        hash = (u32::from(c[0]) << 21)
            ^ (u32::from(c[1]) << 14)
            ^ (u32::from(c[2]) << 7)
            ^ u32::from(c[3])
            ^ hash.rotate_left(28);
    }
    match *chunks.remainder() {
        [a, b, c] => {
            (u32::from(a) << 14) ^ (u32::from(b) << 7) ^ u32::from(c) ^ hash.rotate_left(21)
        }
        [a, b] => (u32::from(a) << 7) ^ u32::from(b) ^ hash.rotate_left(14),
        [a] => u32::from(a) ^ hash.rotate_left(7),
        _ => hash,
    }
}

impl Xfs {
    /// The inode named `name` in a block, leaf or node directory, found through its hash.
    pub(crate) fn lookup_hashed(
        &self,
        dir: &Inode,
        name: &[u8],
    ) -> Result<Option<u64>, GuestError> {
        let hash = da_hashname(name);
        let v5 = self.sb.is_v5();
        let leaf_fsb = LEAF_OFFSET >> self.sb.block_log;
        let fsbs = self.sb.dir_fsbs;
        let mut addrs = Vec::new();
        match self.fork_blocks(&dir.data, leaf_fsb, fsbs, DA_CRC)? {
            None => {
                // A single-block directory: its leaf entries precede the tail.
                let b = self
                    .fork_blocks(&dir.data, 0, fsbs, DATA_CRC)?
                    .ok_or(CorruptKind::XfsDirLeaf)?;
                let magic = read_u32be(&b, 0);
                if magic != XD2B && magic != XDB3 {
                    return Err(CorruptKind::XfsDirMagic.into());
                }
                let count = read_u32be(&b, b.len() - 8) as usize;
                let start = count
                    .checked_mul(8)
                    .and_then(|n| b.len().checked_sub(8 + n))
                    .ok_or(CorruptKind::XfsDirLeaf)?;
                leaf_matches(&b, start, count, hash, &mut addrs);
            }
            Some(mut b) => {
                let mut depth = 0;
                loop {
                    let magic = read_u16be(&b, 8);
                    self.check_da_block(&b, magic, dir.ino)?;
                    let (count_at, ents) = if v5 { (56, 64) } else { (12, 16) };
                    let count = usize::from(read_u16be(&b, count_at));
                    match magic {
                        DA_NODE_MAGIC | DA_NODE_MAGIC_V5 => {
                            depth += 1;
                            if depth > MAX_DA_DEPTH || count == 0 || ents + count * 8 > b.len() {
                                return Err(CorruptKind::XfsDirLeaf.into());
                            }
                            // The first entry whose hash is not below ours (or the last).
                            let mut before = read_u32be(&b, ents + (count - 1) * 8 + 4);
                            for i in 0..count {
                                if read_u32be(&b, ents + i * 8) >= hash {
                                    before = read_u32be(&b, ents + i * 8 + 4);
                                    break;
                                }
                            }
                            b = self
                                .fork_blocks(&dir.data, u64::from(before), fsbs, DA_CRC)?
                                .ok_or(CorruptKind::XfsDirLeaf)?;
                        }
                        LEAF1_MAGIC | LEAF1_MAGIC_V5 | LEAFN_MAGIC | LEAFN_MAGIC_V5 => {
                            // Entries of one hash may continue in the next leaves.
                            let mut leaves = 0;
                            loop {
                                let count = usize::from(read_u16be(&b, count_at));
                                if ents + count * 8 > b.len() {
                                    return Err(CorruptKind::XfsDirLeaf.into());
                                }
                                let last = read_u32be(&b, ents + count.saturating_sub(1) * 8);
                                leaf_matches(&b, ents, count, hash, &mut addrs);
                                let forw = read_u32be(&b, 0);
                                leaves += 1;
                                if count == 0 || last != hash || forw == 0 {
                                    break;
                                }
                                if leaves >= MAX_SAME_HASH_LEAVES {
                                    return Err(CorruptKind::XfsDirLeaf.into());
                                }
                                b = self
                                    .fork_blocks(&dir.data, u64::from(forw), fsbs, DA_CRC)?
                                    .ok_or(CorruptKind::XfsDirLeaf)?;
                                let magic = read_u16be(&b, 8);
                                if magic != LEAFN_MAGIC && magic != LEAFN_MAGIC_V5 {
                                    return Err(CorruptKind::XfsDirLeaf.into());
                                }
                                self.check_da_block(&b, magic, dir.ino)?;
                            }
                            break;
                        }
                        _ => return Err(CorruptKind::XfsDirMagic.into()),
                    }
                }
            }
        }
        // Each address is a data entry's byte offset in the directory, in units of 8.
        let dir_log = self.sb.dir_block_size.trailing_zeros();
        for addr in addrs {
            let byte = u64::from(addr) * 8;
            let db = byte >> dir_log;
            let off = (byte & (u64::from(self.sb.dir_block_size) - 1)) as usize;
            let lblk = db * u64::from(fsbs);
            if lblk >= leaf_fsb {
                return Err(CorruptKind::XfsDirLeaf.into());
            }
            let b = self
                .fork_blocks(&dir.data, lblk, fsbs, DATA_CRC)?
                .ok_or(CorruptKind::XfsDirLeaf)?;
            let mut found = None;
            let mut seen = 0;
            // Checks the block as a listing does, then reads the one entry.
            self.data_block(dir.ino, &b, &mut seen, &mut |_| true)?;
            let namelen = usize::from(read_u8(&b, off + 8));
            if slice(&b, off + 9, namelen) == Some(name) && read_u16be(&b, off) != FREE_TAG {
                found = Some(read_u64be(&b, off));
            }
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// A v5 leaf or node block's CRC, owner and UUID.
    fn check_da_block(&self, b: &[u8], magic: u16, owner: u64) -> Result<(), GuestError> {
        let v5 = matches!(magic, LEAF1_MAGIC_V5 | LEAFN_MAGIC_V5 | DA_NODE_MAGIC_V5);
        if v5 != self.sb.is_v5() {
            return Err(CorruptKind::XfsDirMagic.into());
        }
        if v5 && (read_u64be(b, 48) != owner || read_array::<16>(b, 32) != self.sb.meta_uuid) {
            return Err(CorruptKind::XfsBlockOwner.into());
        }
        Ok(())
    }
}

/// The addresses of the `count` leaf entries at `start` whose hash is `hash` (stale
/// entries, address 0, left out). Entries are sorted by hash.
fn leaf_matches(b: &[u8], start: usize, count: usize, hash: u32, out: &mut Vec<u32>) {
    for i in 0..count {
        let at = start + i * 8;
        let h = read_u32be(b, at);
        if h == hash {
            let addr = read_u32be(b, at + 4);
            if addr != 0 && out.len() < MAX_SAME_HASH_LEAVES * 512 {
                out.push(addr);
            }
        } else if h > hash {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_of_short_and_long_names() {
        // By hand from xfs_da_hashname: one byte is itself; four bytes are shifted in.
        assert_eq!(da_hashname(b""), 0);
        assert_eq!(da_hashname(b"a"), 0x61);
        assert_eq!(da_hashname(b"ab"), (0x61 << 7) ^ 0x62);
        assert_eq!(
            da_hashname(b"abcd"),
            (0x61 << 21) ^ (0x62 << 14) ^ (0x63 << 7) ^ 0x64
        );
        let h4 = da_hashname(b"abcd");
        assert_eq!(da_hashname(b"abcde"), 0x65 ^ h4.rotate_left(7));
    }
}
