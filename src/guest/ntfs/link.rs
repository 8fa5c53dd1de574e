//! Links and special files: reparse points (symbolic links, junctions, WSL symlinks),
//! Interix files (the symlinks, FIFOs, sockets and devices ntfs-3g itself creates), and
//! whether `$LogFile` was left clean.
//!
//! Targets of reparse points are shown without translating them against a mount point
//! (ntfs-3g rewrites absolute ones into paths under its own mount point, which virtsnapfs
//! does not have): `\` becomes `/`; a relative target stays relative; an absolute one loses
//! its `\??\` prefix and keeps its drive letter ("C:/Users/x", which is a relative path on
//! Linux, so it cannot lead out of the view); one rooted without a drive ("\x") becomes
//! "/x", as an ext4 guest's absolute link is shown. A WSL symlink's target is its bytes.

use super::super::bytes::{read_u16le, read_u32le, read_u64le};
use super::super::{CorruptKind, GuestError};
use super::record::{self, utf16_units};
use super::Shown;

const IO_REPARSE_TAG_MOUNT_POINT: u32 = 0xA000_0003;
const IO_REPARSE_TAG_SYMLINK: u32 = 0xA000_000C;
const IO_REPARSE_TAG_LX_SYMLINK: u32 = 0xA000_001D;
/// WSL special files: a reparse point without data names the type; a device's numbers are
/// in the `$LXDEV` extended attribute of `$EA`.
pub const IO_REPARSE_TAG_AF_UNIX: u32 = 0x8000_0023;
pub const IO_REPARSE_TAG_LX_FIFO: u32 = 0x8000_0024;
pub const IO_REPARSE_TAG_LX_CHR: u32 = 0x8000_0025;
pub const IO_REPARSE_TAG_LX_BLK: u32 = 0x8000_0026;

/// Interix files are recognised up to this size (the magic and a PATH_MAX target).
pub const MAX_INTERIX: u64 = 8 + 2 * 4096;

/// What a reparse point is shown as.
#[derive(Debug, PartialEq, Eq)]
pub enum Reparse {
    Link(Vec<u8>),
    /// A WSL special file (socket, FIFO, device): its tag, with no data.
    WslSpecial(u32),
    /// Any other tag: not a link.
    Other(u32),
}

/// The device numbers in the `$LXDEV` entry of an `$EA` value (entries: next entry offset,
/// flags, name length, value length, name, NUL, value), as ntfs-3g reads them.
pub fn lxdev(ea: &[u8]) -> Option<(u32, u32)> {
    let mut at = 0usize;
    // Each step moves forward by at least one byte: at most ea.len() steps.
    while at < ea.len() {
        let next = read_u32le(ea, at) as usize;
        let name_length = usize::from(*ea.get(at + 5)?);
        let value_length = read_u16le(ea, at + 6);
        if ea.get(at + 8..at + 8 + name_length) == Some(b"$LXDEV") && value_length == 8 {
            let v = at + 8 + name_length + 1;
            return Some((read_u32le(ea, v), read_u32le(ea, v + 4)));
        }
        if next == 0 {
            return None;
        }
        at = at.checked_add(next)?;
    }
    None
}

/// A link target from UTF-16: `\` to `/`, NUL to U+2400, unpaired surrogates as in
/// [`super::name`].
fn target_bytes(units: &[u16]) -> Vec<u8> {
    let mapped: Vec<u16> = units
        .iter()
        .map(|&u| {
            if u == u16::from(b'\\') {
                u16::from(b'/')
            } else {
                u
            }
        })
        .collect();
    unix_bytes(&mapped)
}

/// A Unix path from UTF-16: `/` stays the separator (name::to_bytes maps it away inside a
/// name), so the path is converted piece by piece.
fn unix_bytes(units: &[u16]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, piece) in units.split(|&u| u == u16::from(b'/')).enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(&super::name::to_bytes(piece));
    }
    out
}

/// A Windows target path shown as described in the module documentation.
fn windows_target(units: &[u16]) -> Vec<u8> {
    let prefix: Vec<u16> = r"\??\".encode_utf16().collect();
    let rest = units.strip_prefix(&prefix[..]).unwrap_or(units);
    target_bytes(rest)
}

/// The reparse point whose `$REPARSE_POINT` value is `v`.
pub fn reparse_target(v: &[u8], _is_dir: bool) -> Result<Reparse, GuestError> {
    let bad = || GuestError::from(CorruptKind::NtfsReparse);
    if v.len() < 8 {
        return Err(bad());
    }
    let tag = read_u32le(v, 0);
    let data_length = usize::from(read_u16le(v, 4));
    let data = v.get(8..8 + data_length).ok_or_else(bad)?;
    let (buffer_at, relative) = match tag {
        IO_REPARSE_TAG_SYMLINK => (12, read_u32le(data, 8) & 1 != 0),
        IO_REPARSE_TAG_MOUNT_POINT => (8, false),
        IO_REPARSE_TAG_LX_SYMLINK => {
            if data.len() <= 4 || read_u32le(data, 0) != 2 {
                return Err(bad());
            }
            return Ok(Reparse::Link(data[4..].to_vec()));
        }
        IO_REPARSE_TAG_AF_UNIX
        | IO_REPARSE_TAG_LX_FIFO
        | IO_REPARSE_TAG_LX_CHR
        | IO_REPARSE_TAG_LX_BLK
            if data.is_empty() =>
        {
            return Ok(Reparse::WslSpecial(tag))
        }
        other => return Ok(Reparse::Other(other)),
    };
    if data.len() < buffer_at {
        return Err(bad());
    }
    let subst_offset = usize::from(read_u16le(data, 0));
    let subst_length = usize::from(read_u16le(data, 2));
    let name = data
        .get(buffer_at + subst_offset..buffer_at + subst_offset + subst_length)
        .ok_or_else(bad)?;
    let units = utf16_units(name);
    if units.is_empty() {
        return Err(bad());
    }
    let rooted = units[0] == u16::from(b'\\') || units.get(1) == Some(&u16::from(b':'));
    Ok(Reparse::Link(if relative && !rooted {
        target_bytes(&units)
    } else {
        windows_target(&units)
    }))
}

/// An Interix file (a system file whose unnamed data starts with an Interix magic).
pub fn interix(v: &[u8]) -> Result<Option<Shown>, GuestError> {
    let magic = v.get(0..8);
    if magic == Some(b"IntxLNK\x01") {
        let units = utf16_units(&v[8..]);
        return Ok(Some(Shown::Symlink(unix_bytes(&units))));
    }
    let device = |v: &[u8]| -> Result<(u32, u32), GuestError> {
        let major = u32::try_from(read_u64le(v, 8)).map_err(|_| CorruptKind::NtfsReparse)?;
        let minor = u32::try_from(read_u64le(v, 16)).map_err(|_| CorruptKind::NtfsReparse)?;
        Ok((major, minor))
    };
    if v.len() == 24 && magic == Some(b"IntxCHR\0") {
        let (a, b) = device(v)?;
        return Ok(Some(Shown::CharDevice(a, b)));
    }
    if v.len() == 24 && magic == Some(b"IntxBLK\0") {
        let (a, b) = device(v)?;
        return Ok(Some(Shown::BlockDevice(a, b)));
    }
    Ok(None)
}

/// Whether the first page of `$LogFile` says the volume is clean: no restart page ("RSTR")
/// that can be read, or no client in use, or the clean flag set (ntfs-3g's
/// `ntfs_check_logfile`).
pub fn logfile_clean(page: &mut [u8]) -> bool {
    if page.get(0..4) != Some(b"RSTR") || record::apply_fixups(page, b"RSTR").is_err() {
        return true;
    }
    let ra = usize::from(read_u16le(page, 0x18));
    let client_in_use_list = read_u16le(page, ra + 0x0C);
    let flags = read_u16le(page, ra + 0x0E);
    client_in_use_list == 0xFFFF || flags & 0x0002 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symlink(target: &str, flags: u32, tag: u32) -> Vec<u8> {
        let t: Vec<u8> = target.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let mut data = Vec::new();
        data.extend_from_slice(&0u16.to_le_bytes());
        data.extend_from_slice(&(t.len() as u16).to_le_bytes());
        data.extend_from_slice(&(t.len() as u16).to_le_bytes());
        data.extend_from_slice(&(t.len() as u16).to_le_bytes());
        if tag == IO_REPARSE_TAG_SYMLINK {
            data.extend_from_slice(&flags.to_le_bytes());
        }
        data.extend_from_slice(&t);
        data.extend_from_slice(&t);
        let mut v = tag.to_le_bytes().to_vec();
        v.extend_from_slice(&(data.len() as u16).to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&data);
        v
    }

    #[test]
    fn targets_are_translated_as_documented() {
        let t = |v: &[u8]| match reparse_target(v, false).unwrap() {
            Reparse::Link(t) => String::from_utf8(t).unwrap(),
            r => panic!("{r:?}"),
        };
        assert_eq!(
            t(&symlink(r"..\dir\file", 1, IO_REPARSE_TAG_SYMLINK)),
            "../dir/file"
        );
        assert_eq!(
            t(&symlink(r"\??\C:\Users\x", 0, IO_REPARSE_TAG_SYMLINK)),
            "C:/Users/x"
        );
        assert_eq!(
            t(&symlink(r"\Windows", 1, IO_REPARSE_TAG_SYMLINK)),
            "/Windows"
        );
        assert_eq!(
            t(&symlink(r"\??\D:\data", 0, IO_REPARSE_TAG_MOUNT_POINT)),
            "D:/data"
        );
        assert_eq!(
            reparse_target(&symlink("x", 0, 0x8000_0017), false).unwrap(),
            Reparse::Other(0x8000_0017)
        );
    }

    #[test]
    fn wsl_symlinks_and_interix_files() {
        let mut data = 2u32.to_le_bytes().to_vec();
        data.extend_from_slice(b"../t\\x");
        let mut v = IO_REPARSE_TAG_LX_SYMLINK.to_le_bytes().to_vec();
        v.extend_from_slice(&(data.len() as u16).to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&data);
        assert_eq!(
            reparse_target(&v, false).unwrap(),
            Reparse::Link(b"../t\\x".to_vec())
        );
        let mut lnk = b"IntxLNK\x01".to_vec();
        lnk.extend("a/b\\c".encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(
            interix(&lnk).unwrap(),
            Some(Shown::Symlink(b"a/b\\c".to_vec()))
        );
        let mut chr = b"IntxCHR\0".to_vec();
        chr.extend_from_slice(&300u64.to_le_bytes());
        chr.extend_from_slice(&70000u64.to_le_bytes());
        assert_eq!(interix(&chr).unwrap(), Some(Shown::CharDevice(300, 70000)));
        chr[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            interix(&chr).unwrap_err(),
            GuestError::Corrupt(CorruptKind::NtfsReparse)
        ));
        assert_eq!(interix(b"IntxLNK\x02abcd").unwrap(), None);
    }

    #[test]
    fn lxdev_is_found_among_other_entries() {
        let mut ea = Vec::new();
        for (name, value) in [
            (&b"$LXUID"[..], &[0u8, 0, 0, 0][..]),
            (b"$LXDEV", &[7, 0, 0, 0, 200, 0, 0, 0]),
        ] {
            let len = (8 + name.len() + 1 + value.len()).next_multiple_of(4);
            let start = ea.len();
            ea.extend_from_slice(&(len as u32).to_le_bytes());
            ea.push(0);
            ea.push(name.len() as u8);
            ea.extend_from_slice(&(value.len() as u16).to_le_bytes());
            ea.extend_from_slice(name);
            ea.push(0);
            ea.extend_from_slice(value);
            ea.resize(start + len, 0);
        }
        assert_eq!(lxdev(&ea), Some((7, 200)));
        assert_eq!(lxdev(&ea[..12]), None);
        assert_eq!(lxdev(&[0xFF; 7]), None);
    }

    #[test]
    fn a_name_past_the_data_is_rejected() {
        let mut v = symlink("abc", 1, IO_REPARSE_TAG_SYMLINK);
        v[8 + 2] = 200;
        assert!(matches!(
            reparse_target(&v, false).unwrap_err(),
            GuestError::Corrupt(CorruptKind::NtfsReparse)
        ));
    }
}
