//! The XFS superblock (`struct xfs_dsb`, big-endian, in the first sector of the device) and
//! the geometry derived from it: block, sector, inode and directory block sizes, allocation
//! groups, and inode numbers (`agno | agbno | offset in block`).
//!
//! Feature flags decide what is read and what is refused ([`Superblock::parse`]): a v5
//! filesystem's incompatible features must all be known (unknown ones are
//! [`GuestError::Unsupported`], naming them), read-only-compatible ones are ignored as the
//! kernel ignores them for a read-only mount.

use crate::guest::bytes::{read_u16be, read_u32be, read_u32le, read_u64be, read_u8};
use crate::guest::crc::crc32c_raw;
use crate::guest::{CorruptKind, GuestError};

/// "XFSB".
pub const XFS_SB_MAGIC: u32 = 0x5846_5342;
/// Offset of `sb_crc` (little-endian CRC-32C of the sector).
const SB_CRC_OFF: usize = 224;

// sb_versionnum bits.
const VERSION_NUMBITS: u16 = 0x000f;
const VERSION_NLINKBIT: u16 = 0x0020;
const VERSION_DIRV2BIT: u16 = 0x2000;
const VERSION_MOREBITSBIT: u16 = 0x8000;

// sb_features2 bits (v4).
const VERSION2_FTYPE: u32 = 0x0000_0200;

// sb_features_incompat bits (v5).
const INCOMPAT_FTYPE: u32 = 1 << 0;
const INCOMPAT_SPINODES: u32 = 1 << 1;
const INCOMPAT_META_UUID: u32 = 1 << 2;
const INCOMPAT_BIGTIME: u32 = 1 << 3;
const INCOMPAT_NEEDSREPAIR: u32 = 1 << 4;
const INCOMPAT_NREXT64: u32 = 1 << 5;
const INCOMPAT_EXCHRANGE: u32 = 1 << 6;
const INCOMPAT_PARENT: u32 = 1 << 7;
/// The incompatible features this reader understands: none changes where file data,
/// directories or attributes are, or they are handled ([`Superblock::has_ftype`],
/// bigtime timestamps, 64-bit extent counts, parent pointers hidden from xattrs).
const INCOMPAT_KNOWN: u32 = INCOMPAT_FTYPE
    | INCOMPAT_SPINODES
    | INCOMPAT_META_UUID
    | INCOMPAT_BIGTIME
    | INCOMPAT_NREXT64
    | INCOMPAT_EXCHRANGE
    | INCOMPAT_PARENT;

/// Names of incompatible feature bits, for the Unsupported message.
fn incompat_name(bit: u32) -> String {
    match bit {
        4 => "needsrepair".into(),
        8 => "metadir".into(),
        9 => "zoned".into(),
        b => format!("incompat bit {b}"),
    }
}

/// The geometry and features of one XFS filesystem.
#[derive(Debug, Clone)]
pub struct Superblock {
    /// 4 or 5.
    pub version: u8,
    pub block_size: u32,
    pub block_log: u8,
    pub sect_size: u32,
    pub inode_size: u32,
    pub inode_log: u8,
    pub inopb_log: u8,
    pub ag_blocks: u32,
    pub ag_count: u32,
    pub agblk_log: u8,
    pub dblocks: u64,
    pub rblocks: u64,
    pub root_ino: u64,
    /// Directory block size in bytes (`blocksize << sb_dirblklog`).
    pub dir_block_size: u32,
    /// Filesystem blocks per directory block.
    pub dir_fsbs: u32,
    /// Whether directory entries record the file type.
    pub ftype: bool,
    /// Whether v2 inodes (32-bit nlink) may exist on a v4 filesystem.
    pub nlink_v2: bool,
    pub bigtime: bool,
    pub nrext64: bool,
    pub parent: bool,
    /// `sb_meta_uuid` if META_UUID is set, else `sb_uuid`: what v5 blocks record.
    pub meta_uuid: [u8; 16],
    /// Whether v5 CRCs are checked: always, except in the fuzz target, whose mutations
    /// would otherwise almost all stop at a checksum.
    pub(crate) verify_crc: bool,
}

fn uuid_at(b: &[u8], at: usize) -> [u8; 16] {
    crate::guest::bytes::read_array(b, at)
}

fn is_pow2_log(value: u64, log: u8) -> bool {
    log < 64 && value == 1u64 << log
}

/// CRC-32C of a v5 metadata buffer with its 4-byte checksum field at `crc_off` taken as
/// zero (`xfs_start_cksum` + `xfs_end_cksum`); compared with the little-endian field.
pub fn crc_ok(buf: &[u8], crc_off: usize) -> bool {
    let Some(end) = crc_off.checked_add(4) else {
        return false;
    };
    let (Some(head), Some(tail)) = (buf.get(..crc_off), buf.get(end..)) else {
        return false;
    };
    let c = crc32c_raw(!0, head);
    let c = crc32c_raw(c, &[0; 4]);
    let c = !crc32c_raw(c, tail);
    c == read_u32le(buf, crc_off)
}

impl Superblock {
    /// Parses and validates the superblock sector `s` (at least `sb_sectsize` bytes once the
    /// sector size is known: the caller passes the whole sector) of a device of `dev_len`
    /// bytes.
    pub fn parse(s: &[u8], dev_len: u64) -> Result<Superblock, GuestError> {
        if read_u32be(s, 0) != XFS_SB_MAGIC {
            return Err(CorruptKind::XfsSuperblockMagic.into());
        }
        let versionnum = read_u16be(s, 100);
        let version = (versionnum & VERSION_NUMBITS) as u8;
        let features2 = if versionnum & VERSION_MOREBITSBIT != 0 {
            read_u32be(s, 200)
        } else {
            0
        };
        match version {
            5 => {}
            4 if versionnum & VERSION_DIRV2BIT != 0 => {}
            _ => return Err(CorruptKind::XfsVersion.into()),
        }
        let block_size = read_u32be(s, 4);
        let sect_size = u32::from(read_u16be(s, 102));
        let inode_size = u32::from(read_u16be(s, 104));
        let inopblock = u32::from(read_u16be(s, 106));
        let block_log = read_u8(s, 120);
        let sect_log = read_u8(s, 121);
        let inode_log = read_u8(s, 122);
        let inopb_log = read_u8(s, 123);
        let agblk_log = read_u8(s, 124);
        let sizes_ok = is_pow2_log(u64::from(block_size), block_log)
            && (9..=16).contains(&block_log)
            && is_pow2_log(u64::from(sect_size), sect_log)
            && (9..=15).contains(&sect_log)
            && sect_size <= block_size
            && is_pow2_log(u64::from(inode_size), inode_log)
            && (8..=11).contains(&inode_log)
            && inode_size <= block_size
            && inopb_log == block_log - inode_log
            && inopblock == block_size / inode_size
            && (version == 4 || inode_size >= 512);
        if !sizes_ok {
            return Err(CorruptKind::XfsGeometrySizes.into());
        }
        if version == 5 {
            let len = usize::try_from(sect_size).unwrap_or(usize::MAX);
            let sector = s.get(..len).ok_or(CorruptKind::XfsGeometrySizes)?;
            if !crc_ok(sector, SB_CRC_OFF) {
                return Err(CorruptKind::XfsSuperblockChecksum.into());
            }
        }
        let dblocks = read_u64be(s, 8);
        let rblocks = read_u64be(s, 16);
        let ag_blocks = read_u32be(s, 84);
        let ag_count = read_u32be(s, 88);
        // agblklog is the log2 of agblocks rounded up; the kernel asks for at least 64
        // blocks per group (XFS_MIN_AG_BLOCKS).
        let ag_ok = ag_blocks >= 64
            && ag_count >= 1
            && agblk_log < 32
            && u64::from(ag_blocks) <= 1u64 << agblk_log
            && u64::from(ag_blocks) > (1u64 << agblk_log) / 2
            && u32::from(agblk_log) + u32::from(inopb_log) <= 32
            && dblocks <= u64::from(ag_count) * u64::from(ag_blocks)
            && dblocks > u64::from(ag_count - 1) * u64::from(ag_blocks);
        if !ag_ok {
            return Err(CorruptKind::XfsAgGeometry.into());
        }
        let dir_log = read_u8(s, 192);
        if u32::from(block_log) + u32::from(dir_log) > 16 {
            return Err(CorruptKind::XfsDirBlockSize.into());
        }
        let bytes = dblocks
            .checked_mul(u64::from(block_size))
            .ok_or(CorruptKind::XfsAgGeometry)?;
        if bytes > dev_len {
            return Err(CorruptKind::XfsDeviceTooSmall.into());
        }
        let ftype;
        let (mut bigtime, mut nrext64, mut parent) = (false, false, false);
        let mut meta_uuid = uuid_at(s, 32);
        if version == 5 {
            let incompat = read_u32be(s, 216);
            let unknown = incompat & !INCOMPAT_KNOWN;
            if unknown != 0 || incompat & INCOMPAT_NEEDSREPAIR != 0 {
                let names: Vec<String> = (0..32)
                    .filter(|b| (unknown | (incompat & INCOMPAT_NEEDSREPAIR)) & (1 << b) != 0)
                    .map(incompat_name)
                    .collect();
                return Err(GuestError::Unsupported(format!(
                    "XFS incompatible features: {}",
                    names.join(", ")
                )));
            }
            ftype = incompat & INCOMPAT_FTYPE != 0;
            bigtime = incompat & INCOMPAT_BIGTIME != 0;
            nrext64 = incompat & INCOMPAT_NREXT64 != 0;
            parent = incompat & INCOMPAT_PARENT != 0;
            if incompat & INCOMPAT_META_UUID != 0 {
                meta_uuid = uuid_at(s, 248);
            }
        } else {
            ftype = features2 & VERSION2_FTYPE != 0;
        }
        let sb = Superblock {
            version,
            block_size,
            block_log,
            sect_size,
            inode_size,
            inode_log,
            inopb_log,
            ag_blocks,
            ag_count,
            agblk_log,
            dblocks,
            rblocks,
            root_ino: read_u64be(s, 56),
            dir_block_size: block_size << dir_log,
            dir_fsbs: 1 << dir_log,
            ftype,
            nlink_v2: version == 5 || versionnum & VERSION_NLINKBIT != 0,
            bigtime,
            nrext64,
            parent,
            meta_uuid,
            verify_crc: true,
        };
        sb.inode_location(sb.root_ino)?;
        Ok(sb)
    }

    pub fn is_v5(&self) -> bool {
        self.version == 5
    }

    /// Whether a v5 buffer's CRC at `crc_off` is to be taken as good.
    pub fn crc_good(&self, buf: &[u8], crc_off: usize) -> bool {
        !self.verify_crc || crc_ok(buf, crc_off)
    }

    /// The byte offset on the device of filesystem block `fsb` (`agno << agblklog | agbno`),
    /// checked to lie inside its group and the filesystem.
    pub fn fsb_to_byte(&self, fsb: u64) -> Option<u64> {
        let agno = fsb >> self.agblk_log;
        let agbno = fsb & ((1u64 << self.agblk_log) - 1);
        if agno >= u64::from(self.ag_count) || agbno >= u64::from(self.ag_blocks) {
            return None;
        }
        let linear = agno * u64::from(self.ag_blocks) + agbno;
        if linear >= self.dblocks {
            return None;
        }
        Some(linear << self.block_log)
    }

    /// Whether `count` blocks from `fsb` all lie in one group, inside the filesystem.
    pub fn fsb_range_ok(&self, fsb: u64, count: u64) -> bool {
        let Some(last) = count.checked_sub(1).and_then(|c| fsb.checked_add(c)) else {
            return false;
        };
        self.fsb_to_byte(fsb).is_some()
            && self.fsb_to_byte(last).is_some()
            && fsb >> self.agblk_log == last >> self.agblk_log
    }

    /// Where inode `ino` is: (byte offset of its filesystem block, offset within the block).
    pub fn inode_location(&self, ino: u64) -> Result<(u64, usize), GuestError> {
        let bits = u32::from(self.agblk_log) + u32::from(self.inopb_log);
        let agno = ino.checked_shr(bits).unwrap_or(0);
        if agno >= u64::from(self.ag_count) {
            return Err(CorruptKind::XfsInodeNumber.into());
        }
        let agino = ino & ((1u64 << bits) - 1);
        let agbno = agino >> self.inopb_log;
        let index = agino & ((1u64 << self.inopb_log) - 1);
        let fsb = (agno << self.agblk_log) | agbno;
        let block = self.fsb_to_byte(fsb).ok_or(CorruptKind::XfsInodeNumber)?;
        let within =
            usize::try_from(index << self.inode_log).map_err(|_| CorruptKind::XfsInodeNumber)?;
        Ok((block, within))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v5 superblock as mkfs.xfs 6.1 writes it for 320 MiB: 4 KiB blocks, 4 groups of
    /// 20,480 blocks, 512-byte inodes, ftype, sparse inodes and bigtime.
    fn template() -> Vec<u8> {
        let mut s = vec![0u8; 512];
        let put = |s: &mut Vec<u8>, at: usize, v: &[u8]| s[at..at + v.len()].copy_from_slice(v);
        put(&mut s, 0, &XFS_SB_MAGIC.to_be_bytes());
        put(&mut s, 4, &4096u32.to_be_bytes());
        put(&mut s, 8, &81920u64.to_be_bytes());
        put(&mut s, 56, &128u64.to_be_bytes());
        put(&mut s, 84, &20480u32.to_be_bytes());
        put(&mut s, 88, &4u32.to_be_bytes());
        put(&mut s, 100, &0xb4a5u16.to_be_bytes());
        put(&mut s, 102, &512u16.to_be_bytes());
        put(&mut s, 104, &512u16.to_be_bytes());
        put(&mut s, 106, &8u16.to_be_bytes());
        put(&mut s, 120, &[12, 9, 9, 3, 15]);
        put(&mut s, 200, &0x18au32.to_be_bytes());
        put(&mut s, 216, &0xbu32.to_be_bytes());
        fix(&mut s);
        s
    }

    fn fix(s: &mut [u8]) {
        s[224..228].fill(0);
        let c = !crc32c_raw(!0, s);
        s[224..228].copy_from_slice(&c.to_le_bytes());
    }

    const DEV: u64 = 81920 * 4096;

    fn err(mut s: Vec<u8>, at: usize, v: &[u8]) -> CorruptKind {
        s[at..at + v.len()].copy_from_slice(v);
        fix(&mut s);
        match Superblock::parse(&s, DEV) {
            Err(GuestError::Corrupt(k)) => k,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn template_parses() {
        let sb = Superblock::parse(&template(), DEV).unwrap();
        assert!(sb.is_v5() && sb.ftype && sb.bigtime && !sb.nrext64);
        assert_eq!((sb.dir_block_size, sb.dir_fsbs), (4096, 1));
        assert_eq!(sb.inode_location(128).unwrap(), (16 * 4096, 0));
        // Inode 131 is the fourth of block 16; group 1 starts at agblklog bits.
        assert_eq!(sb.inode_location(131).unwrap(), (16 * 4096, 3 * 512));
        assert_eq!(
            sb.inode_location((1 << 18) | 8).unwrap(),
            (20480 * 4096 + 4096, 0)
        );
    }

    #[test]
    fn each_field_has_its_check() {
        let t = template;
        assert_eq!(err(t(), 0, b"XFSC"), CorruptKind::XfsSuperblockMagic);
        let mut bad_crc = t();
        bad_crc[108] ^= 1;
        assert!(matches!(
            Superblock::parse(&bad_crc, DEV),
            Err(GuestError::Corrupt(CorruptKind::XfsSuperblockChecksum))
        ));
        assert_eq!(
            err(t(), 100, &0x0003u16.to_be_bytes()),
            CorruptKind::XfsVersion
        );
        assert_eq!(
            err(t(), 4, &4097u32.to_be_bytes()),
            CorruptKind::XfsGeometrySizes
        );
        assert_eq!(
            err(t(), 104, &256u16.to_be_bytes()),
            CorruptKind::XfsGeometrySizes
        );
        assert_eq!(
            err(t(), 88, &0u32.to_be_bytes()),
            CorruptKind::XfsAgGeometry
        );
        assert_eq!(
            err(t(), 84, &9000u32.to_be_bytes()),
            CorruptKind::XfsAgGeometry
        );
        assert_eq!(
            err(t(), 8, &90000u64.to_be_bytes()),
            CorruptKind::XfsAgGeometry
        );
        assert_eq!(err(t(), 192, &[5]), CorruptKind::XfsDirBlockSize);
        assert_eq!(
            err(t(), 56, &(1u64 << 40).to_be_bytes()),
            CorruptKind::XfsInodeNumber
        );
        let s = t();
        assert!(matches!(
            Superblock::parse(&s, DEV - 1),
            Err(GuestError::Corrupt(CorruptKind::XfsDeviceTooSmall))
        ));
    }

    #[test]
    fn unknown_incompatible_features_are_named() {
        for (bits, name) in [
            (0x10u32, "needsrepair"),
            (0x100, "metadir"),
            (0x4000, "incompat bit 14"),
        ] {
            let mut s = template();
            s[216..220].copy_from_slice(&(0xb | bits).to_be_bytes());
            fix(&mut s);
            match Superblock::parse(&s, DEV) {
                Err(GuestError::Unsupported(m)) => assert!(m.contains(name), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
