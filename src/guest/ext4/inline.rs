//! inline_data: small files and directories stored in the inode itself, the first 60 bytes
//! in i_block and the rest in the value of the in-inode xattr "system.data".

use super::super::{CorruptKind, GuestError};
use super::inode::Inode;
use super::{xattr, Ext4};

/// The inline bytes of an inode: i_block, then the system.data value.
pub fn inline_bytes(fs: &Ext4, inode: &Inode) -> Result<Vec<u8>, GuestError> {
    let mut data = inode.i_block.to_vec();
    if let Some(more) = xattr::system_data(fs, inode)? {
        data.extend_from_slice(&more);
    }
    Ok(data)
}

/// Reads `buf.len()` bytes at `offset` of an inline file of `size` bytes; bytes the inline
/// area does not hold read as zeros.
pub fn read(fs: &Ext4, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<(), GuestError> {
    let max = 60u64.saturating_add(u64::from(fs.sb.inode_size));
    if inode.size > max {
        return Err(CorruptKind::InlineData.into());
    }
    let data = inline_bytes(fs, inode)?;
    buf.fill(0);
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    if let Some(src) = data.get(start..) {
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
    }
    Ok(())
}
