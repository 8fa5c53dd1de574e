//! NTFS names (UTF-16 code units, not checked by Windows to be valid UTF-16) to the bytes
//! shown on Linux.
//!
//! Valid UTF-16 becomes UTF-8, as ntfs-3g shows it. Two things UTF-8 paths cannot carry
//! are decided here, so that every stored name gives one shown name and no name is lost:
//! - An unpaired surrogate (a lone 0xD800-0xDFFF unit, which Windows allows) is encoded as
//!   its three-byte generalized UTF-8 form (WTF-8, as Rust's `OsString` does on Windows),
//!   which no valid name produces. (ntfs-3g fails the conversion and leaves the entry out.)
//! - `/` (only possible in the POSIX namespace) becomes U+2215 DIVISION SLASH, and NUL
//!   becomes U+2400 SYMBOL FOR NULL, since neither can be part of a Linux name.

/// The shown bytes of a name of UTF-16 `units`.
pub fn to_bytes(units: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(units.len());
    for r in char::decode_utf16(units.iter().copied()) {
        let c = match r {
            Ok('/') => '\u{2215}',
            Ok('\0') => '\u{2400}',
            Ok(c) => c,
            Err(e) => {
                let u = u32::from(e.unpaired_surrogate());
                out.extend_from_slice(&[
                    0xE0 | (u >> 12) as u8,
                    0x80 | ((u >> 6) & 0x3F) as u8,
                    0x80 | (u & 0x3F) as u8,
                ]);
                continue;
            }
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    out
}

/// The UTF-16 units that [`to_bytes`] shows as `bytes` (taking U+2215 and U+2400 as
/// themselves), or `None` when no name is shown so (not WTF-8).
pub fn to_units(bytes: &[u8]) -> Option<Vec<u16>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0usize;
    while i < bytes.len() {
        let b0 = bytes[i];
        let (cp, len) = match b0 {
            0x00..=0x7F => (u32::from(b0), 1),
            0xC2..=0xDF => (u32::from(b0 & 0x1F), 2),
            0xE0..=0xEF => (u32::from(b0 & 0x0F), 3),
            0xF0..=0xF4 => (u32::from(b0 & 0x07), 4),
            _ => return None,
        };
        let tail = bytes.get(i + 1..i + len)?;
        let mut cp = cp;
        for &b in tail {
            if b & 0xC0 != 0x80 {
                return None;
            }
            cp = (cp << 6) | u32::from(b & 0x3F);
        }
        // Shortest forms only, and nothing past U+10FFFF.
        let min = [0, 0, 0x80, 0x800, 0x10000][len];
        if cp < min || cp > 0x10FFFF {
            return None;
        }
        if cp >= 0x10000 {
            let c = cp - 0x10000;
            out.push(0xD800 | (c >> 10) as u16);
            out.push(0xDC00 | (c & 0x3FF) as u16);
        } else {
            out.push(cp as u16);
        }
        i += len;
    }
    // Round trip: a surrogate pair written as two 3-byte forms is not what to_bytes shows.
    (to_bytes(&out) == bytes).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_convert_as_documented() {
        let units: Vec<u16> = "héllo 名前 🎉".encode_utf16().collect();
        assert_eq!(to_bytes(&units), "héllo 名前 🎉".as_bytes());
        assert_eq!(to_bytes(&[0x61, 0x2F, 0x62]), "a\u{2215}b".as_bytes());
        assert_eq!(to_bytes(&[0x61, 0, 0x62]), "a\u{2400}b".as_bytes());
        assert_eq!(to_bytes(&[0x61, 0xD800, 0x62]), b"a\xED\xA0\x80b");
        assert_eq!(to_bytes(&[0xDC00]), b"\xED\xB0\x80");
        for units in [
            &[0x61u16, 0xD800, 0x62][..],
            &[0xD83C, 0xDF89],
            &[0x2215],
            &[0xDC00],
        ] {
            assert_eq!(to_units(&to_bytes(units)).unwrap(), units);
        }
        assert_eq!(to_units(b"\xff"), None);
        assert_eq!(to_units(b"\xED\xA0\xBD\xED\xB2\xA9"), None);
    }
}
