//! XFS inodes (`struct xfs_dinode`): the v1/v2 core of 100 bytes and the v3 core of 176
//! (CRC-32C, its own number, creation time), mode, owners, link count, size, blocks,
//! timestamps (seconds and nanoseconds, or bigtime nanoseconds since 1901-12-13), extent
//! counts (32/16-bit, or 64/32-bit with nrext64), and the two forks that follow the core:
//! the data fork and, from `di_forkoff * 8`, the attribute fork.

use crate::guest::bytes::{read_u16be, read_u32be, read_u64be, read_u8};
use crate::guest::{CorruptKind, FileKind, GuestError, GuestTime};

use super::sb::Superblock;

/// "IN".
const XFS_DINODE_MAGIC: u16 = 0x494e;
/// Core sizes: v1/v2 and v3.
const CORE_V2: usize = 100;
const CORE_V3: usize = 176;
/// Offset of `di_crc` in a v3 inode.
const DI_CRC_OFF: usize = 100;

// di_flags.
const DIFLAG_REALTIME: u16 = 0x0001;
// di_flags2.
const DIFLAG2_BIGTIME: u64 = 1 << 3;
const DIFLAG2_NREXT64: u64 = 1 << 4;

/// Seconds between the bigtime epoch (the smallest 32-bit time, 1901-12-13) and 1970.
const BIGTIME_EPOCH_OFFSET: i64 = 1 << 31;

/// A fork's format (`di_format`, `di_aformat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkFormat {
    /// Device number (data fork of devices).
    Dev,
    /// Bytes inside the inode (short-form directories and attributes, short symlinks).
    Local,
    /// An array of extent records inside the inode.
    Extents,
    /// The root of a block map btree inside the inode.
    Btree,
}

impl ForkFormat {
    fn from_raw(v: u8) -> Option<ForkFormat> {
        Some(match v {
            0 => ForkFormat::Dev,
            1 => ForkFormat::Local,
            2 => ForkFormat::Extents,
            3 => ForkFormat::Btree,
            _ => return None,
        })
    }
}

/// One fork of an inode: its format, extent count and raw bytes (a copy of the literal area).
#[derive(Debug, Clone)]
pub struct Fork {
    /// The inode it belongs to (v5 btree blocks record it).
    pub owner: u64,
    pub format: ForkFormat,
    pub nextents: u64,
    pub bytes: Vec<u8>,
}

/// A parsed inode.
#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u64,
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub nblocks: u64,
    pub atime: GuestTime,
    pub mtime: GuestTime,
    pub ctime: GuestTime,
    pub crtime: Option<GuestTime>,
    pub realtime: bool,
    pub data: Fork,
    pub attr: Option<Fork>,
}

fn kind_of(mode: u16) -> Option<FileKind> {
    Some(match mode & 0o170000 {
        0o100000 => FileKind::File,
        0o040000 => FileKind::Directory,
        0o120000 => FileKind::Symlink,
        0o020000 => FileKind::CharDevice,
        0o060000 => FileKind::BlockDevice,
        0o010000 => FileKind::Fifo,
        0o140000 => FileKind::Socket,
        _ => return None,
    })
}

fn timestamp(b: &[u8], at: usize, bigtime: bool) -> GuestTime {
    if bigtime {
        let ns = read_u64be(b, at);
        let secs = i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX) - BIGTIME_EPOCH_OFFSET;
        GuestTime {
            secs,
            nsecs: (ns % 1_000_000_000) as u32,
        }
    } else {
        GuestTime {
            secs: i64::from(read_u32be(b, at) as i32),
            nsecs: read_u32be(b, at + 4).min(999_999_999),
        }
    }
}

impl Inode {
    /// Parses inode `ino` from its `sb.inode_size` bytes `b`.
    pub fn parse(sb: &Superblock, ino: u64, b: &[u8]) -> Result<Inode, GuestError> {
        let isize = usize::try_from(sb.inode_size).map_err(|_| CorruptKind::XfsInodeNumber)?;
        let b = b.get(..isize).ok_or(CorruptKind::XfsInodeNumber)?;
        if read_u16be(b, 0) != XFS_DINODE_MAGIC {
            return Err(CorruptKind::XfsInodeMagic.into());
        }
        let version = read_u8(b, 4);
        let core = match (sb.is_v5(), version) {
            (true, 3) => CORE_V3,
            (false, 1) => CORE_V2,
            (false, 2) if sb.nlink_v2 => CORE_V2,
            _ => return Err(CorruptKind::XfsInodeVersion.into()),
        };
        if version == 3 {
            if !sb.crc_good(b, DI_CRC_OFF) {
                return Err(CorruptKind::XfsInodeChecksum.into());
            }
            if read_u64be(b, 152) != ino
                || crate::guest::bytes::read_array::<16>(b, 160) != sb.meta_uuid
            {
                return Err(CorruptKind::XfsInodeOwner.into());
            }
        }
        let mode = read_u16be(b, 2);
        let nlink = if version == 1 {
            u32::from(read_u16be(b, 6))
        } else {
            read_u32be(b, 16)
        };
        if mode == 0 || nlink == 0 {
            return Err(CorruptKind::XfsInodeUnallocated.into());
        }
        let kind = kind_of(mode).ok_or(CorruptKind::XfsInodeFileType)?;
        let flags2 = if version == 3 { read_u64be(b, 120) } else { 0 };
        let bigtime = sb.bigtime && flags2 & DIFLAG2_BIGTIME != 0;
        let nrext64 = sb.nrext64 && flags2 & DIFLAG2_NREXT64 != 0;
        let (nextents, anextents) = if nrext64 {
            (read_u64be(b, 24), u64::from(read_u32be(b, 76)))
        } else {
            (u64::from(read_u32be(b, 76)), u64::from(read_u16be(b, 80)))
        };
        let size = read_u64be(b, 56);
        if size > i64::MAX as u64 {
            return Err(CorruptKind::XfsFileSize.into());
        }
        let forkoff = usize::from(read_u8(b, 82)) * 8;
        let literal = isize - core;
        let format = ForkFormat::from_raw(read_u8(b, 5)).ok_or(CorruptKind::XfsInodeFork)?;
        let format_ok = match kind {
            FileKind::CharDevice | FileKind::BlockDevice | FileKind::Fifo | FileKind::Socket => {
                format == ForkFormat::Dev
            }
            FileKind::File => matches!(format, ForkFormat::Extents | ForkFormat::Btree),
            FileKind::Directory | FileKind::Symlink => format != ForkFormat::Dev,
        };
        if !format_ok || forkoff >= literal {
            return Err(CorruptKind::XfsInodeFork.into());
        }
        let data_len = if forkoff == 0 { literal } else { forkoff };
        let data = Fork {
            owner: ino,
            format,
            nextents,
            bytes: b
                .get(core..core + data_len)
                .ok_or(CorruptKind::XfsInodeFork)?
                .to_vec(),
        };
        let attr = if forkoff != 0 {
            let aformat = ForkFormat::from_raw(read_u8(b, 83))
                .filter(|f| *f != ForkFormat::Dev)
                .ok_or(CorruptKind::XfsInodeFork)?;
            Some(Fork {
                owner: ino,
                format: aformat,
                nextents: anextents,
                bytes: b
                    .get(core + forkoff..)
                    .ok_or(CorruptKind::XfsInodeFork)?
                    .to_vec(),
            })
        } else {
            None
        };
        Ok(Inode {
            ino,
            kind,
            perm: mode & 0o7777,
            uid: read_u32be(b, 8),
            gid: read_u32be(b, 12),
            nlink,
            size,
            nblocks: read_u64be(b, 64),
            atime: timestamp(b, 32, bigtime),
            mtime: timestamp(b, 40, bigtime),
            ctime: timestamp(b, 48, bigtime),
            crtime: (version == 3).then(|| timestamp(b, 144, bigtime)),
            realtime: read_u16be(b, 90) & DIFLAG_REALTIME != 0,
            data,
            attr,
        })
    }

    /// Major and minor of a device inode (`xfs_dev_t`: major in bits 18.., minor in 0..18,
    /// as the kernel's `xfs_to_linux_dev_t` reads it).
    pub fn rdev(&self) -> (u32, u32) {
        if !matches!(self.kind, FileKind::CharDevice | FileKind::BlockDevice) {
            return (0, 0);
        }
        let dev = read_u32be(&self.data.bytes, 0);
        ((dev >> 18) & 0x1ff, dev & 0x3_ffff)
    }
}
