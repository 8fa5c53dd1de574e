//! Extended attributes: entries in the inode after its extra fields (magic 0xEA020000) and in
//! one external block (`i_file_acl`, a 32-byte header with the same magic, then entries;
//! values at the block's end). Values of the ea_inode feature live in an inode of their own.
//!
//! Names are stored as a prefix index plus the rest; the list returned is what Linux's
//! listxattr shows: "user.", "trusted.", "security.", "gnu." and the two POSIX ACL names,
//! but not the "system.data" that holds inline data (ext4 has no handler for it). ACL values
//! are converted from ext4's compact form to the `posix_acl_xattr` form getxattr returns.

use super::super::bytes::{read_u16le, read_u32le, read_u8, slice};
use super::super::Xattr;
use super::super::{CorruptKind, GuestError};
use super::inode::Inode;
use super::{checksum, Ext4};

const XATTR_MAGIC: u32 = 0xEA02_0000;
const BLOCK_HEADER: usize = 32;
const ENTRY_HEADER: usize = 16;
/// XATTR_SIZE_MAX: no value is larger.
const MAX_VALUE: u32 = 65536;

const INDEX_POSIX_ACL_ACCESS: u8 = 2;
const INDEX_POSIX_ACL_DEFAULT: u8 = 3;
const INDEX_SYSTEM: u8 = 7;

struct Entry {
    index: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

fn prefix(index: u8) -> Option<&'static [u8]> {
    Some(match index {
        1 => b"user.",
        INDEX_POSIX_ACL_ACCESS => b"system.posix_acl_access",
        INDEX_POSIX_ACL_DEFAULT => b"system.posix_acl_default",
        4 => b"trusted.",
        5 => b"gnu.",
        6 => b"security.",
        _ => return None,
    })
}

/// Parses the entries of one area. `entries` is where they start, `value_base` what value
/// offsets are relative to; both index into `area`.
fn parse_entries(
    fs: &Ext4,
    area: &[u8],
    entries: usize,
    value_base: usize,
    out: &mut Vec<Entry>,
) -> Result<(), GuestError> {
    let mut pos = entries;
    // Each entry takes at least 16 bytes and the walk only moves forward: it ends.
    while pos.checked_add(4).is_some_and(|e| e <= area.len()) && read_u32le(area, pos) != 0 {
        let e_name_len = read_u8(area, pos);
        let e_name_index = read_u8(area, pos + 1);
        let e_value_offs = read_u16le(area, pos + 2);
        let e_value_inum = read_u32le(area, pos + 4);
        let e_value_size = read_u32le(area, pos + 8);
        let name_end = pos + ENTRY_HEADER + usize::from(e_name_len);
        if name_end > area.len() {
            return Err(CorruptKind::XattrEntry.into());
        }
        let name = area[pos + ENTRY_HEADER..name_end].to_vec();
        if e_value_size > MAX_VALUE {
            return Err(CorruptKind::XattrValue.into());
        }
        let size = usize::try_from(e_value_size).map_err(|_| CorruptKind::XattrValue)?;
        let value = if e_value_inum != 0 {
            fs.ea_inode_value(e_value_inum, e_value_size)?
        } else {
            let start = value_base
                .checked_add(usize::from(e_value_offs))
                .ok_or(CorruptKind::XattrValue)?;
            slice(area, start, size)
                .ok_or(CorruptKind::XattrValue)?
                .to_vec()
        };
        out.push(Entry {
            index: e_name_index,
            name,
            value,
        });
        pos = (name_end + 3) & !3;
    }
    Ok(())
}

fn in_inode(fs: &Ext4, inode: &Inode, out: &mut Vec<Entry>) -> Result<(), GuestError> {
    let area = inode.xattr_area();
    if area.len() < 4 || read_u32le(area, 0) != XATTR_MAGIC {
        return Ok(());
    }
    parse_entries(fs, area, 4, 4, out)
}

fn in_block(fs: &Ext4, inode: &Inode, out: &mut Vec<Entry>) -> Result<(), GuestError> {
    if inode.file_acl == 0 {
        return Ok(());
    }
    if inode.file_acl <= u64::from(fs.sb.first_data_block) || inode.file_acl >= fs.sb.blocks_count {
        return Err(CorruptKind::XattrBlock.into());
    }
    let block = fs.block(inode.file_acl)?;
    let h_magic = read_u32le(&block, 0);
    let h_blocks = read_u32le(&block, 8);
    let h_checksum = read_u32le(&block, 0x10);
    if h_magic != XATTR_MAGIC || h_blocks != 1 {
        return Err(CorruptKind::XattrMagic.into());
    }
    if fs.sb.metadata_csum()
        && checksum::xattr_block_checksum(fs.sb.csum_seed, inode.file_acl, &block) != h_checksum
    {
        return Err(fs.checksum_error(CorruptKind::XattrChecksum));
    }
    parse_entries(fs, &block, BLOCK_HEADER, 0, out)
}

/// The value of "system.data" (inline data continued), if the inode has it.
pub fn system_data(fs: &Ext4, inode: &Inode) -> Result<Option<Vec<u8>>, GuestError> {
    let mut entries = Vec::new();
    in_inode(fs, inode, &mut entries)?;
    Ok(entries
        .into_iter()
        .find(|e| e.index == INDEX_SYSTEM && e.name == b"data")
        .map(|e| e.value))
}

/// The attributes listxattr shows, with the values getxattr returns.
pub fn list(fs: &Ext4, inode: &Inode) -> Result<Vec<Xattr>, GuestError> {
    let mut entries = Vec::new();
    in_inode(fs, inode, &mut entries)?;
    in_block(fs, inode, &mut entries)?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Some(p) = prefix(e.index) else { continue };
        let mut name = p.to_vec();
        let value = if e.index == INDEX_POSIX_ACL_ACCESS || e.index == INDEX_POSIX_ACL_DEFAULT {
            acl_to_xattr(&e.value)?
        } else {
            name.extend_from_slice(&e.name);
            e.value
        };
        out.push((name, value));
    }
    Ok(out)
}

/// ext4's on-disk ACL (version 1; 4-byte entries for the owner, group, mask and other tags,
/// 8-byte ones with an id for named users and groups) to the xattr form (version 2, every
/// entry 8 bytes, id 0xFFFFFFFF where there is none).
fn acl_to_xattr(disk: &[u8]) -> Result<Vec<u8>, GuestError> {
    const ACL_USER: u16 = 2;
    const ACL_GROUP: u16 = 8;
    if disk.len() < 4 || read_u32le(disk, 0) != 1 {
        return Err(CorruptKind::XattrAcl.into());
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut pos = 4;
    while pos < disk.len() {
        let tag = read_u16le(disk, pos);
        let perm = read_u16le(disk, pos + 2);
        let (id, len) = match tag {
            ACL_USER | ACL_GROUP => (read_u32le(disk, pos + 4), 8),
            1 | 4 | 0x10 | 0x20 => (u32::MAX, 4),
            _ => return Err(CorruptKind::XattrAcl.into()),
        };
        if pos + len > disk.len() {
            return Err(CorruptKind::XattrAcl.into());
        }
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
        pos += len;
    }
    Ok(out)
}
