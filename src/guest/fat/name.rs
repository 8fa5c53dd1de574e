//! Names: the 8.3 short name every entry has, and the VFAT long name some have.
//!
//! Shown as Linux's vfat shows them with its default options (codepage 437, `utf8`,
//! `shortname=mixed`): a long name is its UTF-16 converted to UTF-8 (unpaired surrogates
//! dropped, as the kernel's `utf16s_to_utf8s` drops them); a short name is its base and
//! extension with trailing spaces removed, joined by a dot when there is an extension,
//! lowercased where the NT case flags (byte 12: 0x08 the base, 0x10 the extension) say so,
//! and converted from codepage 437 to UTF-8 (a first byte 0x05 stands for 0xE5).
//!
//! A name Linux could not pass to a program (empty, `.`, `..`, or holding `/` or NUL) is
//! not used: a long name like that falls back to the entry's short name, and an entry whose
//! short name is like that is not listed.

/// Code points of codepage 437's bytes 0x80..=0xFF.
const CP437_HIGH: [u16; 128] = [
    0x00C7, 0x00FC, 0x00E9, 0x00E2, 0x00E4, 0x00E0, 0x00E5, 0x00E7, //
    0x00EA, 0x00EB, 0x00E8, 0x00EF, 0x00EE, 0x00EC, 0x00C4, 0x00C5, //
    0x00C9, 0x00E6, 0x00C6, 0x00F4, 0x00F6, 0x00F2, 0x00FB, 0x00F9, //
    0x00FF, 0x00D6, 0x00DC, 0x00A2, 0x00A3, 0x00A5, 0x20A7, 0x0192, //
    0x00E1, 0x00ED, 0x00F3, 0x00FA, 0x00F1, 0x00D1, 0x00AA, 0x00BA, //
    0x00BF, 0x2310, 0x00AC, 0x00BD, 0x00BC, 0x00A1, 0x00AB, 0x00BB, //
    0x2591, 0x2592, 0x2593, 0x2502, 0x2524, 0x2561, 0x2562, 0x2556, //
    0x2555, 0x2563, 0x2551, 0x2557, 0x255D, 0x255C, 0x255B, 0x2510, //
    0x2514, 0x2534, 0x252C, 0x251C, 0x2500, 0x253C, 0x255E, 0x255F, //
    0x255A, 0x2554, 0x2569, 0x2566, 0x2560, 0x2550, 0x256C, 0x2567, //
    0x2568, 0x2564, 0x2565, 0x2559, 0x2558, 0x2552, 0x2553, 0x256B, //
    0x256A, 0x2518, 0x250C, 0x2588, 0x2584, 0x258C, 0x2590, 0x2580, //
    0x03B1, 0x00DF, 0x0393, 0x03C0, 0x03A3, 0x03C3, 0x00B5, 0x03C4, //
    0x03A6, 0x0398, 0x03A9, 0x03B4, 0x221E, 0x03C6, 0x03B5, 0x2229, //
    0x2261, 0x00B1, 0x2265, 0x2264, 0x2320, 0x2321, 0x00F7, 0x2248, //
    0x00B0, 0x2219, 0x00B7, 0x221A, 0x207F, 0x00B2, 0x25A0, 0x00A0, //
];

/// NT case flags in byte 12 of a short entry.
pub const CASE_LOWER_BASE: u8 = 0x08;
pub const CASE_LOWER_EXT: u8 = 0x10;

/// The short names of the `.` and `..` entries.
pub const DOT: &[u8; 11] = b".          ";
pub const DOTDOT: &[u8; 11] = b"..         ";

/// Codepage 437 byte to a character; lowercased (ASCII and the Latin-1 letters codepage 437
/// has in both cases, as its `tolower` table does) when `lower`.
fn cp437(b: u8, lower: bool) -> char {
    let c = if b < 0x80 {
        char::from(b)
    } else {
        char::from_u32(u32::from(CP437_HIGH[usize::from(b - 0x80)])).unwrap_or('?')
    };
    if !lower {
        return c;
    }
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    if u32::from(c) < 0x100 {
        let mut l = c.to_lowercase();
        if let (Some(one), None) = (l.next(), l.next()) {
            return one;
        }
    }
    c
}

/// The name Linux shows for an 8.3 entry, or `None` if it is not a usable name.
pub fn short_name(raw: &[u8; 11], lcase: u8) -> Option<Vec<u8>> {
    let mut bytes = *raw;
    if bytes[0] == 0x05 {
        bytes[0] = 0xE5;
    }
    let base_len = bytes[..8]
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(0, |i| i + 1);
    let ext_len = bytes[8..]
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(0, |i| i + 1);
    if base_len == 0 {
        return None;
    }
    let mut s = String::with_capacity(24);
    for &b in &bytes[..base_len] {
        s.push(cp437(b, lcase & CASE_LOWER_BASE != 0));
    }
    if ext_len > 0 {
        s.push('.');
        for &b in &bytes[8..8 + ext_len] {
            s.push(cp437(b, lcase & CASE_LOWER_EXT != 0));
        }
    }
    usable(s.into_bytes())
}

/// A long name from its UTF-16 code units (up to the first NUL).
pub fn long_name(units: &[u16]) -> Option<Vec<u8>> {
    let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
    let s: String = char::decode_utf16(units[..end].iter().copied())
        .filter_map(Result::ok)
        .collect();
    usable(s.into_bytes())
}

fn usable(name: Vec<u8>) -> Option<Vec<u8>> {
    let bad = name.is_empty()
        || name == b"."
        || name == b".."
        || name.iter().any(|&b| b == b'/' || b == 0);
    (!bad).then_some(name)
}

/// The checksum of an 8.3 name that each of its long-name entries repeats.
pub fn checksum(raw: &[u8; 11]) -> u8 {
    raw.iter()
        .fold(0u8, |s, &b| s.rotate_right(1).wrapping_add(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_as_linux_shows_them() {
        let n = |raw: &[u8; 11], lcase| short_name(raw, lcase).map(String::from_utf8);
        assert_eq!(n(b"README  TXT", 0), Some(Ok("README.TXT".into())));
        assert_eq!(n(b"README  TXT", 0x08), Some(Ok("readme.TXT".into())));
        assert_eq!(n(b"README  TXT", 0x18), Some(Ok("readme.txt".into())));
        assert_eq!(n(b"MAKEFILE   ", 0x10), Some(Ok("MAKEFILE".into())));
        assert_eq!(n(b"\x05BC     X  ", 0), Some(Ok("σBC.X".into())));
        assert_eq!(n(b"\x90T\x8e        ", 0x08), Some(Ok("étä".into())));
        assert_eq!(n(b"           ", 0), None);
        assert_eq!(n(b"A/B        ", 0), None);
    }

    #[test]
    fn long_names_stop_at_nul_and_drop_unpaired_surrogates() {
        let units: Vec<u16> = "héllo 名前 🎉".encode_utf16().chain([0, 0xFFFF]).collect();
        assert_eq!(long_name(&units).unwrap(), "héllo 名前 🎉".as_bytes());
        assert_eq!(long_name(&[0x61, 0xD800, 0x62]).unwrap(), b"ab");
        assert_eq!(long_name(&[0x2E, 0x2E, 0]), None);
        assert_eq!(long_name(&[0x61, 0x2F]), None);
    }

    #[test]
    fn checksum_of_a_known_name() {
        // The rotate-and-add sum, computed by hand for "A          ": 0x41 then ten spaces.
        let mut s = 0u8;
        for b in *b"A          " {
            s = (((s & 1) << 7) | (s >> 1)).wrapping_add(b);
        }
        assert_eq!(checksum(b"A          "), s);
    }
}
