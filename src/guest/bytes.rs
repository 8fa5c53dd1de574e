//! Fixed-offset reads of little- and big-endian integers.
//!
//! Callers pass buffers whose length they have checked (a 1024-byte superblock, an inode of
//! `s_inode_size` bytes, a whole block); a read that would still fall outside the buffer yields
//! zero instead of panicking, so a mistake there is a wrong value, never a crash.

fn array<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    offset
        .checked_add(N)
        .and_then(|end| bytes.get(offset..end))
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; N])
}

pub(crate) fn read_u8(bytes: &[u8], offset: usize) -> u8 {
    bytes.get(offset).copied().unwrap_or(0)
}

pub(crate) fn read_u16le(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(array(bytes, offset))
}

pub(crate) fn read_u32le(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(array(bytes, offset))
}

pub(crate) fn read_u64le(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(array(bytes, offset))
}

pub(crate) fn read_u16be(bytes: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes(array(bytes, offset))
}

pub(crate) fn read_u32be(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes(array(bytes, offset))
}

pub(crate) fn read_u64be(bytes: &[u8], offset: usize) -> u64 {
    u64::from_be_bytes(array(bytes, offset))
}

/// The `N` bytes at `offset`, or zeros if they do not fit.
pub(crate) fn read_array<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    array(bytes, offset)
}

/// `bytes[offset..offset + len]`, or `None` when it does not fit.
pub(crate) fn slice(bytes: &[u8], offset: usize, len: usize) -> Option<&[u8]> {
    bytes.get(offset..offset.checked_add(len)?)
}
