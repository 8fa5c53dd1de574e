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
    }
}
