//! XFS extended attributes, in the attribute fork: short form inside the inode
//! (`xfs_attr_sf_hdr` and packed entries), or blocks mapped by the fork: one leaf block
//! (`0xfbee`, v5 `0x3bee` with a CRC-32C header) or a dabtree of node blocks (`0xfebe`/`0x3ebe`)
//! over leaves chained by their forward pointers. A leaf entry's value is either local (in
//! the leaf) or remote: blocks of its own in the fork, each with a v5 header (`XARM`).
//!
//! Names are shown as the kernel's listxattr shows them: the namespace flags give the
//! prefix (none `user.`, `XFS_ATTR_ROOT` `trusted.`, `XFS_ATTR_SECURE` `security.`);
//! `trusted.SGI_ACL_FILE` and `trusted.SGI_ACL_DEFAULT` (XFS's POSIX ACLs, big-endian
//! `xfs_acl`) are also shown as `system.posix_acl_access`/`_default` in the generic
//! little-endian encoding; parent pointers and incomplete (half-written) entries are hidden.

use std::collections::HashSet;

use crate::guest::bytes::{read_array, read_u16be, read_u32be, read_u64be, read_u8, slice};
use crate::guest::{CorruptKind, GuestError, Xattr};

use super::inode::{Fork, ForkFormat, Inode};
use super::{Crc, Xfs};

/// Attributes an inode may have before it is refused.
pub const MAX_ATTRS: usize = 1 << 16;
/// The largest value Linux reads (XATTR_SIZE_MAX).
const MAX_VALUE: u32 = 65536;
/// The dabtree is at most this deep (the kernel's XFS_DA_NODE_MAXDEPTH).
const MAX_DEPTH: u16 = 5;
/// Leaf blocks one listing visits at most.
const MAX_LEAVES: usize = 1 << 16;

const ATTR_LEAF_MAGIC: u16 = 0xfbee;
const ATTR3_LEAF_MAGIC: u16 = 0x3bee;
const DA_NODE_MAGIC: u16 = 0xfebe;
const DA3_NODE_MAGIC: u16 = 0x3ebe;
/// "XARM": a v5 remote value block.
const ATTR3_RMT_MAGIC: u32 = 0x5841_524d;
const ATTR3_RMT_HDR: usize = 56;

const ATTR_LOCAL: u8 = 0x01;
const ATTR_ROOT: u8 = 0x02;
const ATTR_SECURE: u8 = 0x04;
const ATTR_PARENT: u8 = 0x08;
const ATTR_INCOMPLETE: u8 = 0x80;

const ACL_USER: u32 = 0x02;
const ACL_GROUP: u32 = 0x08;

/// The name shown for a stored name in namespace `flags`; `None` for hidden entries.
fn full_name(flags: u8, name: &[u8]) -> Option<Vec<u8>> {
    if flags & (ATTR_INCOMPLETE | ATTR_PARENT) != 0 {
        return None;
    }
    let prefix: &[u8] = if flags & ATTR_ROOT != 0 {
        b"trusted."
    } else if flags & ATTR_SECURE != 0 {
        b"security."
    } else {
        b"user."
    };
    let mut out = prefix.to_vec();
    out.extend_from_slice(name);
    Some(out)
}

/// An `xfs_acl` (big-endian count and 12-byte entries) in the generic xattr encoding.
fn acl_to_xattr(v: &[u8]) -> Result<Vec<u8>, GuestError> {
    let count = read_u32be(v, 0) as usize;
    if count.checked_mul(12).and_then(|n| n.checked_add(4)) != Some(v.len()) {
        return Err(CorruptKind::XfsAcl.into());
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    for i in 0..count {
        let e = 4 + i * 12;
        let tag = read_u32be(v, e);
        let id = read_u32be(v, e + 4);
        let perm = read_u16be(v, e + 8);
        let tag16 = u16::try_from(tag).map_err(|_| CorruptKind::XfsAcl)?;
        if perm > 7 {
            return Err(CorruptKind::XfsAcl.into());
        }
        let id = if tag == ACL_USER || tag == ACL_GROUP {
            id
        } else {
            u32::MAX
        };
        out.extend_from_slice(&tag16.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

/// Adds one attribute, and its `system.posix_acl_*` twin for an ACL.
fn add(out: &mut Vec<Xattr>, flags: u8, name: &[u8], value: Vec<u8>) -> Result<(), GuestError> {
    if out.len() >= MAX_ATTRS {
        return Err(CorruptKind::XfsAttrTree.into());
    }
    if flags & ATTR_ROOT != 0 && flags & (ATTR_INCOMPLETE | ATTR_PARENT) == 0 {
        let sys: Option<&[u8]> = match name {
            b"SGI_ACL_FILE" => Some(b"system.posix_acl_access"),
            b"SGI_ACL_DEFAULT" => Some(b"system.posix_acl_default"),
            _ => None,
        };
        if let Some(sys) = sys {
            out.push((sys.to_vec(), acl_to_xattr(&value)?));
        }
    }
    if let Some(full) = full_name(flags, name) {
        out.push((full, value));
    }
    Ok(())
}

impl Xfs {
    /// Every attribute of `inode`, as listxattr and getxattr show them.
    pub(crate) fn list_xattrs(&self, inode: &Inode) -> Result<Vec<Xattr>, GuestError> {
        let mut out = Vec::new();
        let Some(fork) = &inode.attr else {
            return Ok(out);
        };
        match fork.format {
            ForkFormat::Local => short_form(fork, &mut out)?,
            // An attribute fork can outlive its last attribute: no extents, nothing to list.
            ForkFormat::Extents if fork.nextents == 0 => {}
            ForkFormat::Extents | ForkFormat::Btree => self.attr_blocks(fork, &mut out)?,
            ForkFormat::Dev => return Err(CorruptKind::XfsInodeFork.into()),
        }
        Ok(out)
    }

    /// One attribute fork block, checked: its `xfs_da_blkinfo` magic is returned; v5 blocks
    /// are checked for CRC, owner and UUID.
    fn attr_block(
        &self,
        fork: &Fork,
        lblk: u64,
    ) -> Result<(std::sync::Arc<[u8]>, u16), GuestError> {
        let b = self
            .fork_blocks(fork, lblk, 1, Crc::At(12, CorruptKind::XfsAttrChecksum))?
            .ok_or(CorruptKind::XfsAttrTree)?;
        let magic = read_u16be(&b, 8);
        let v5 = self.sb.is_v5();
        let ok = if v5 {
            magic == ATTR3_LEAF_MAGIC || magic == DA3_NODE_MAGIC
        } else {
            magic == ATTR_LEAF_MAGIC || magic == DA_NODE_MAGIC
        };
        if !ok {
            return Err(CorruptKind::XfsAttrMagic.into());
        }
        if v5 && (read_u64be(&b, 48) != fork.owner || read_array::<16>(&b, 32) != self.sb.meta_uuid)
        {
            return Err(CorruptKind::XfsBlockOwner.into());
        }
        Ok((b, magic))
    }

    fn attr_blocks(&self, fork: &Fork, out: &mut Vec<Xattr>) -> Result<(), GuestError> {
        let v5 = self.sb.is_v5();
        // Descend by first entries to the leftmost leaf.
        let (mut b, mut magic) = self.attr_block(fork, 0)?;
        let mut depth = 0u16;
        let mut level_above = u16::MAX;
        while magic == DA_NODE_MAGIC || magic == DA3_NODE_MAGIC {
            let (count_at, ents) = if v5 { (56, 64) } else { (12, 16) };
            let count = read_u16be(&b, count_at);
            let level = read_u16be(&b, count_at + 2);
            depth += 1;
            if count == 0 || level == 0 || level >= level_above || depth > MAX_DEPTH {
                return Err(CorruptKind::XfsAttrTree.into());
            }
            level_above = level;
            let before = u64::from(read_u32be(&b, ents + 4));
            (b, magic) = self.attr_block(fork, before)?;
        }
        let mut visited = HashSet::new();
        loop {
            self.attr_leaf(fork, &b, out)?;
            let forw = u64::from(read_u32be(&b, 0));
            if forw == 0 {
                return Ok(());
            }
            if !visited.insert(forw) || visited.len() > MAX_LEAVES {
                return Err(CorruptKind::XfsAttrTree.into());
            }
            (b, magic) = self.attr_block(fork, forw)?;
            if magic != ATTR_LEAF_MAGIC && magic != ATTR3_LEAF_MAGIC {
                return Err(CorruptKind::XfsAttrMagic.into());
            }
        }
    }

    /// The entries of one leaf block.
    fn attr_leaf(&self, fork: &Fork, b: &[u8], out: &mut Vec<Xattr>) -> Result<(), GuestError> {
        let (count_at, ents) = if self.sb.is_v5() { (56, 80) } else { (12, 32) };
        let count = usize::from(read_u16be(b, count_at));
        if ents + count * 8 > b.len() {
            return Err(CorruptKind::XfsAttrEntry.into());
        }
        for i in 0..count {
            let e = ents + i * 8;
            let nameidx = usize::from(read_u16be(b, e + 4));
            let flags = read_u8(b, e + 6);
            if nameidx < ents + count * 8 || nameidx >= b.len() {
                return Err(CorruptKind::XfsAttrEntry.into());
            }
            if flags & ATTR_LOCAL != 0 {
                let valuelen = usize::from(read_u16be(b, nameidx));
                let namelen = usize::from(read_u8(b, nameidx + 2));
                let name = slice(b, nameidx + 3, namelen).ok_or(CorruptKind::XfsAttrEntry)?;
                let value =
                    slice(b, nameidx + 3 + namelen, valuelen).ok_or(CorruptKind::XfsAttrEntry)?;
                if namelen == 0 {
                    return Err(CorruptKind::XfsAttrEntry.into());
                }
                add(out, flags, name, value.to_vec())?;
            } else {
                let valueblk = u64::from(read_u32be(b, nameidx));
                let valuelen = read_u32be(b, nameidx + 4);
                let namelen = usize::from(read_u8(b, nameidx + 8));
                let name = slice(b, nameidx + 9, namelen).ok_or(CorruptKind::XfsAttrEntry)?;
                if namelen == 0 {
                    return Err(CorruptKind::XfsAttrEntry.into());
                }
                if full_name(flags, name).is_none() {
                    continue;
                }
                let value = self.remote_value(fork, valueblk, valuelen)?;
                add(out, flags, name, value)?;
            }
        }
        Ok(())
    }

    /// A remote value of `len` bytes from fork block `blk`.
    fn remote_value(&self, fork: &Fork, blk: u64, len: u32) -> Result<Vec<u8>, GuestError> {
        if len > MAX_VALUE {
            return Err(CorruptKind::XfsAttrRemote.into());
        }
        let len = len as usize;
        let bs = self.sb.block_size as usize;
        let v5 = self.sb.is_v5();
        let (hdr, per) = if v5 {
            (ATTR3_RMT_HDR, bs - ATTR3_RMT_HDR)
        } else {
            (0, bs)
        };
        let mut out = Vec::with_capacity(len);
        let mut i = 0u64;
        while out.len() < len {
            let lblk = blk.checked_add(i).ok_or(CorruptKind::XfsAttrRemote)?;
            let b = self
                .fork_blocks(fork, lblk, 1, Crc::At(12, CorruptKind::XfsAttrRemote))?
                .ok_or(CorruptKind::XfsAttrRemote)?;
            let take = per.min(len - out.len());
            if v5 {
                let ok = read_u32be(&b, 0) == ATTR3_RMT_MAGIC
                    && read_u32be(&b, 4) as usize == out.len()
                    && read_u32be(&b, 8) as usize == take
                    && read_u64be(&b, 32) == fork.owner;
                if !ok {
                    return Err(CorruptKind::XfsAttrRemote.into());
                }
            }
            out.extend_from_slice(slice(&b, hdr, take).ok_or(CorruptKind::XfsAttrRemote)?);
            i += 1;
        }
        Ok(out)
    }
}

/// The short-form attributes inside the inode.
fn short_form(fork: &Fork, out: &mut Vec<Xattr>) -> Result<(), GuestError> {
    let b = &fork.bytes;
    let totsize = usize::from(read_u16be(b, 0));
    let b = b.get(..totsize).ok_or(CorruptKind::XfsAttrShortForm)?;
    let count = usize::from(read_u8(b, 2));
    let mut at = 4;
    for _ in 0..count {
        let namelen = usize::from(read_u8(b, at));
        let valuelen = usize::from(read_u8(b, at + 1));
        let flags = read_u8(b, at + 2);
        let name = slice(b, at + 3, namelen).ok_or(CorruptKind::XfsAttrShortForm)?;
        let value = slice(b, at + 3 + namelen, valuelen).ok_or(CorruptKind::XfsAttrShortForm)?;
        if namelen == 0 {
            return Err(CorruptKind::XfsAttrShortForm.into());
        }
        add(out, flags, name, value.to_vec())?;
        at += 3 + namelen + valuelen;
    }
    Ok(())
}
