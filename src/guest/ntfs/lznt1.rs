//! LZNT1, the compression of NTFS compressed files ([MS-XCA] 2.5).
//!
//! A compression unit (16 clusters) is stored as a sequence of chunks, each decompressing to
//! at most 4096 bytes: a 16-bit header (bits 0-11: stored bytes minus 1 after the header;
//! bit 15: compressed), then either 4096 bytes stored as is, or groups of a flag byte and
//! eight tokens, each a literal byte or a 16-bit back-reference whose split between offset
//! and length bits depends on the position in the chunk. A chunk that decompresses to less
//! than 4096 bytes is followed by zeros up to the next chunk (as Windows and ntfs-3g read
//! it); a zero header ends the unit. Every reference is checked to point inside the chunk.

use super::super::{CorruptKind, GuestError};

const CHUNK: usize = 4096;

/// Decompresses `input` into `out` (the unit's size); bytes not produced stay zero.
pub fn decompress(input: &[u8], out: &mut [u8]) -> Result<(), GuestError> {
    out.fill(0);
    let bad = || GuestError::from(CorruptKind::NtfsCompressedData);
    let mut ip = 0usize;
    let mut chunk_start = 0usize;
    while chunk_start < out.len() {
        let Some(h) = input.get(ip..ip + 2) else {
            return Ok(());
        };
        let header = u16::from_le_bytes([h[0], h[1]]);
        if header == 0 {
            return Ok(());
        }
        let size = usize::from(header & 0x0FFF) + 1;
        let data = input.get(ip + 2..ip + 2 + size).ok_or_else(bad)?;
        ip += 2 + size;
        let chunk_end = (chunk_start + CHUNK).min(out.len());
        let dst = &mut out[chunk_start..chunk_end];
        if header & 0x8000 == 0 {
            // Stored: the bytes as they are.
            let n = data.len().min(dst.len());
            dst[..n].copy_from_slice(&data[..n]);
        } else {
            decompress_chunk(data, dst)?;
        }
        chunk_start += CHUNK;
    }
    Ok(())
}

/// One compressed chunk into `dst` (at most 4096 bytes).
fn decompress_chunk(data: &[u8], dst: &mut [u8]) -> Result<(), GuestError> {
    let bad = || GuestError::from(CorruptKind::NtfsCompressedData);
    let mut ip = 0usize;
    let mut op = 0usize;
    while ip < data.len() {
        let flags = data[ip];
        ip += 1;
        for bit in 0..8 {
            if ip >= data.len() {
                return Ok(());
            }
            if flags & (1 << bit) == 0 {
                if op >= dst.len() {
                    return Err(bad());
                }
                dst[op] = data[ip];
                op += 1;
                ip += 1;
            } else {
                let t = data.get(ip..ip + 2).ok_or_else(bad)?;
                let token = u16::from_le_bytes([t[0], t[1]]);
                ip += 2;
                if op == 0 {
                    return Err(bad());
                }
                // Offset bits grow with the position: 4 up to 16 bytes in, up to 12.
                let mut shift = 12u32;
                let mut p = op - 1;
                while p >= 0x10 {
                    shift -= 1;
                    p >>= 1;
                }
                let length = usize::from(token & (0xFFFF >> (16 - shift))) + 3;
                let back = usize::from(token >> shift) + 1;
                if back > op || op + length > dst.len() {
                    return Err(bad());
                }
                // Overlapping copies repeat the bytes just written, byte by byte.
                for _ in 0..length {
                    dst[op] = dst[op - back];
                    op += 1;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_an_overlapping_reference() {
        // "abc" then a reference 3 back, length 9: "abcabcabcabc".
        // At op = 3, shift is 12: token = (back-1) << 12 | (len-3) = 2 << 12 | 6.
        let token = (2u16 << 12) | 6;
        let mut chunk = vec![0b0000_1000, b'a', b'b', b'c'];
        chunk.extend_from_slice(&token.to_le_bytes());
        let header = 0xB000u16 | (chunk.len() as u16 - 1);
        let mut input = header.to_le_bytes().to_vec();
        input.extend_from_slice(&chunk);
        let mut out = vec![0xEEu8; 8192];
        decompress(&input, &mut out).unwrap();
        assert_eq!(&out[..12], b"abcabcabcabc");
        assert!(out[12..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_reference_before_the_start_is_rejected() {
        let token = 5u16 << 12;
        let mut chunk = vec![0b0000_0010, b'a'];
        chunk.extend_from_slice(&token.to_le_bytes());
        let header = 0xB000u16 | (chunk.len() as u16 - 1);
        let mut input = header.to_le_bytes().to_vec();
        input.extend_from_slice(&chunk);
        let mut out = vec![0u8; 4096];
        assert!(matches!(
            decompress(&input, &mut out).unwrap_err(),
            GuestError::Corrupt(CorruptKind::NtfsCompressedData)
        ));
    }

    #[test]
    fn a_chunk_past_the_input_is_rejected() {
        let input = [0xFFu8, 0xBF, 1, 2, 3];
        let mut out = vec![0u8; 4096];
        assert!(matches!(
            decompress(&input, &mut out).unwrap_err(),
            GuestError::Corrupt(CorruptKind::NtfsCompressedData)
        ));
    }
}
