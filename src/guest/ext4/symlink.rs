//! Symbolic links: "fast" ones keep the target in i_block (when the inode owns no data
//! blocks), inline-data ones in i_block plus system.data, "slow" ones in data block 0.
//!
//! As `readlink` on Linux returns it: the target is the first `i_size` bytes, cut at the
//! first NUL.

use super::super::{CorruptKind, GuestError};
use super::inode::{Inode, FL_ENCRYPT, FL_INLINE_DATA};
use super::{inline, Ext4, Mapping};

/// PATH_MAX: no symlink target is longer (the kernel also caps it at the block size).
const PATH_MAX: u64 = 4096;

pub fn read_link(fs: &Ext4, inode: &Inode) -> Result<Vec<u8>, GuestError> {
    if inode.has_flag(FL_ENCRYPT) {
        return Err(GuestError::Unsupported("ext4 encrypted symlink".into()));
    }
    let size = inode.size;
    if size == 0 || size >= PATH_MAX.min(u64::from(fs.sb.block_size)).max(61) {
        return Err(CorruptKind::SymlinkSize.into());
    }
    let len = usize::try_from(size).map_err(|_| CorruptKind::SymlinkSize)?;
    let mut target = if inode.has_flag(FL_INLINE_DATA) {
        let data = inline::inline_bytes(fs, inode)?;
        data.get(..len).ok_or(CorruptKind::SymlinkSize)?.to_vec()
    } else if is_fast(fs, inode) {
        // nd_terminate_link(i_data, i_size, sizeof(i_data) - 1).
        inode.i_block[..len.min(59)].to_vec()
    } else {
        match fs.map(inode, 0)? {
            Mapping::Data { phys, .. } => {
                let block = fs.block(phys)?;
                block.get(..len).ok_or(CorruptKind::SymlinkSize)?.to_vec()
            }
            Mapping::Zero { .. } => return Err(CorruptKind::SymlinkSize.into()),
        }
    };
    if let Some(nul) = target.iter().position(|&b| b == 0) {
        target.truncate(nul);
    }
    Ok(target)
}

/// `ext4_inode_is_fast_symlink`: no data blocks besides an xattr block.
fn is_fast(fs: &Ext4, inode: &Inode) -> bool {
    let ea_blocks = if inode.file_acl != 0 {
        u64::from(fs.sb.block_size >> 9)
    } else {
        0
    };
    inode.blocks.saturating_sub(ea_blocks) == 0 && inode.size < 60
}
