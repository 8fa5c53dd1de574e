//! What `stat` and `readdir` show of a node: its kind, attributes and directory entries.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Directory,
    File,
    Symlink,
    /// Guest device nodes, fifos and sockets (only under `files/`): shown, never opened.
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// A node's attributes, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    /// Changes without libvirt knowing (a live disk written by its guest, the status file):
    /// the kernel must not cache it longer than the refresh interval.
    pub volatile: bool,
    /// Changes with every write to an image (a live disk): the kernel asks again before
    /// each read, so that a write made by any means before a read is seen (the kernel drops
    /// the pages it cached once it sees the mtime or size change).
    pub checked_each_read: bool,
    pub size: u64,
    /// Allocated bytes (st_blocks * 512).
    pub allocated: u64,
    /// Permission bits, setuid, setgid and sticky included (`st_mode & 0o7777`).
    pub perm: u16,
    pub nlink: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub uid: u32,
    pub gid: u32,
    /// Device number of a device node, as the kernel encodes it (`new_encode_dev`).
    pub rdev: u32,
    /// Preferred I/O size (`st_blksize`).
    pub blksize: u32,
}

impl Attr {
    /// Attributes of a node virtsnapfs makes itself: one time for all three stamps, one link
    /// (two for directories), no device number, 4 KiB I/O.
    pub fn plain(ino: u64, kind: NodeKind, perm: u16, mtime: SystemTime) -> Attr {
        Attr {
            ino,
            kind,
            volatile: false,
            checked_each_read: false,
            size: 0,
            allocated: 0,
            perm,
            nlink: if kind == NodeKind::Directory { 2 } else { 1 },
            atime: mtime,
            mtime,
            ctime: mtime,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: NodeKind,
    pub name: OsString,
}
