//! What `stat` and `readdir` show of a node: its kind, attributes and directory entries.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Directory,
    File,
    Symlink,
}

/// A node's attributes, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    /// Changes without libvirt knowing (a live disk written by its guest, the status file):
    /// the kernel must not cache it longer than the refresh interval.
    pub volatile: bool,
    pub size: u64,
    /// Allocated bytes (st_blocks * 512).
    pub allocated: u64,
    pub perm: u16,
    pub mtime: SystemTime,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: NodeKind,
    pub name: OsString,
}
