//! Multi-sector records (MFT records "FILE" and index blocks "INDX"): the update sequence
//! fixups, the MFT record header, and the attributes a record holds.
//!
//! NTFS protects a record against torn writes by storing, in the last two bytes of every
//! 512-byte stride, an update sequence number whose copy is in the record's header; the
//! original bytes are kept in the update sequence array. A stride whose last bytes differ
//! from the number was not written with the rest: the record is rejected
//! ([`CorruptKind::NtfsFixupMismatch`]), as ntfs-3g rejects it.

use super::super::bytes::{read_u16le, read_u32le, read_u64le, read_u8, slice};
use super::super::{CorruptKind, GuestError};

/// The fixup stride: 512 bytes whatever the sector size (`NTFS_BLOCK_SIZE`).
const STRIDE: usize = 512;

/// Attribute type codes used here.
pub const AT_STANDARD_INFORMATION: u32 = 0x10;
pub const AT_ATTRIBUTE_LIST: u32 = 0x20;
pub const AT_FILE_NAME: u32 = 0x30;
pub const AT_DATA: u32 = 0x80;
pub const AT_INDEX_ROOT: u32 = 0x90;
pub const AT_INDEX_ALLOCATION: u32 = 0xA0;
pub const AT_REPARSE_POINT: u32 = 0xC0;
pub const AT_VOLUME_INFORMATION: u32 = 0x70;
pub const AT_EA: u32 = 0xE0;
const AT_END: u32 = 0xFFFF_FFFF;

/// MFT record flags.
pub const MFT_RECORD_IN_USE: u16 = 0x0001;
pub const MFT_RECORD_IS_DIRECTORY: u16 = 0x0002;

/// Attribute flags.
pub const ATTR_IS_COMPRESSED: u16 = 0x0001;
pub const ATTR_IS_ENCRYPTED: u16 = 0x4000;
pub const ATTR_IS_SPARSE: u16 = 0x8000;

/// Applies the update sequence fixups to `rec` in place, after checking its signature.
pub fn apply_fixups(rec: &mut [u8], magic: &[u8; 4]) -> Result<(), GuestError> {
    if rec.get(0..4) != Some(&magic[..]) {
        return Err(CorruptKind::NtfsRecordMagic.into());
    }
    let usa_ofs = usize::from(read_u16le(rec, 4));
    let usa_count = usize::from(read_u16le(rec, 6));
    // One number plus one saved pair per stride; the array must lie in the first stride,
    // before its own last two bytes, and be 2-byte aligned.
    if !rec.len().is_multiple_of(STRIDE)
        || usa_count != rec.len() / STRIDE + 1
        || usa_ofs % 2 != 0
        || usa_ofs < 8
        || usa_ofs + usa_count * 2 > STRIDE - 2
    {
        return Err(CorruptKind::NtfsFixupArray.into());
    }
    let usn = read_u16le(rec, usa_ofs);
    for i in 1..usa_count {
        let end = i * STRIDE - 2;
        if read_u16le(rec, end) != usn {
            return Err(CorruptKind::NtfsFixupMismatch.into());
        }
        let saved = read_u16le(rec, usa_ofs + i * 2);
        if let Some(s) = rec.get_mut(end..end + 2) {
            s.copy_from_slice(&saved.to_le_bytes());
        }
    }
    Ok(())
}

/// The header fields of an MFT record that are used.
#[derive(Debug, Clone, Copy)]
pub struct RecordHeader {
    pub sequence_number: u16,
    pub link_count: u16,
    pub attrs_offset: usize,
    pub flags: u16,
    pub bytes_in_use: usize,
    /// The base record's number for an extension record (0 for a base record).
    pub base_mft_record: u64,
}

impl RecordHeader {
    /// Parses and checks the header of a fixed-up MFT record.
    pub fn parse(rec: &[u8]) -> Result<RecordHeader, GuestError> {
        let h = RecordHeader {
            sequence_number: read_u16le(rec, 0x10),
            link_count: read_u16le(rec, 0x12),
            attrs_offset: usize::from(read_u16le(rec, 0x14)),
            flags: read_u16le(rec, 0x16),
            bytes_in_use: read_u32le(rec, 0x18) as usize,
            base_mft_record: read_u64le(rec, 0x20) & MREF_MASK,
        };
        if h.attrs_offset < 0x18
            || !h.attrs_offset.is_multiple_of(8)
            || h.bytes_in_use > rec.len()
            || h.attrs_offset >= h.bytes_in_use
        {
            return Err(CorruptKind::NtfsRecordHeader.into());
        }
        Ok(h)
    }
}

/// The low 48 bits of an MFT reference: the record number (the high 16 are its sequence).
pub const MREF_MASK: u64 = (1 << 48) - 1;

/// One attribute as stored in a record, borrowed from it.
#[derive(Debug, Clone)]
pub struct RawAttr<'a> {
    pub type_code: u32,
    /// The name in UTF-16 code units (empty for the unnamed attribute).
    pub name: Vec<u16>,
    pub flags: u16,
    pub body: RawBody<'a>,
}

#[derive(Debug, Clone)]
pub enum RawBody<'a> {
    Resident(&'a [u8]),
    NonResident(NonResidentHeader<'a>),
}

/// The non-resident header: the piece of the run list this attribute holds (from
/// `lowest_vcn` to `highest_vcn`) and, in the piece starting at VCN 0, the sizes.
#[derive(Debug, Clone)]
pub struct NonResidentHeader<'a> {
    pub lowest_vcn: u64,
    pub highest_vcn: u64,
    pub mapping_pairs: &'a [u8],
    pub compression_unit: u8,
    pub allocated_size: u64,
    pub data_size: u64,
    pub initialized_size: u64,
    /// Only in compressed or sparse attributes: the clusters actually allocated, in bytes.
    pub compressed_size: Option<u64>,
}

/// UTF-16 code units stored little-endian in `bytes`.
pub fn utf16_units(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// The attributes of a fixed-up record whose header is `h`, in stored order. Each must lie
/// within the record's bytes in use.
pub fn attributes<'a>(rec: &'a [u8], h: &RecordHeader) -> Result<Vec<RawAttr<'a>>, GuestError> {
    let mut out = Vec::new();
    let mut at = h.attrs_offset;
    let end = h.bytes_in_use;
    // Every attribute is at least 16 bytes: the loop ends within end / 16 steps.
    loop {
        let type_code = read_u32le(rec, at);
        if type_code == AT_END {
            return Ok(out);
        }
        if at.checked_add(16).is_none_or(|e| e > end) {
            return Err(CorruptKind::NtfsAttrHeader.into());
        }
        let length = read_u32le(rec, at + 4) as usize;
        if length < 16 || !length.is_multiple_of(8) || length > end - at {
            return Err(CorruptKind::NtfsAttrHeader.into());
        }
        let a = &rec[at..at + length];
        out.push(parse_attr(a, type_code)?);
        at += length;
    }
}

/// Parses one attribute of `a.len()` bytes (already checked to fit its record).
fn parse_attr(a: &[u8], type_code: u32) -> Result<RawAttr<'_>, GuestError> {
    let non_resident = read_u8(a, 8);
    let name_length = usize::from(read_u8(a, 9));
    let name_offset = usize::from(read_u16le(a, 0x0A));
    let flags = read_u16le(a, 0x0C);
    let name = if name_length == 0 {
        Vec::new()
    } else {
        let bytes = slice(a, name_offset, name_length * 2).ok_or(CorruptKind::NtfsAttrName)?;
        utf16_units(bytes)
    };
    let body = if non_resident == 0 {
        let value_length = read_u32le(a, 0x10) as usize;
        let value_offset = usize::from(read_u16le(a, 0x14));
        if a.len() < 0x18 {
            return Err(CorruptKind::NtfsAttrHeader.into());
        }
        let v = slice(a, value_offset, value_length).ok_or(CorruptKind::NtfsResidentValue)?;
        RawBody::Resident(v)
    } else {
        if a.len() < 0x40 {
            return Err(CorruptKind::NtfsAttrHeader.into());
        }
        let has_compressed = flags & (ATTR_IS_COMPRESSED | ATTR_IS_SPARSE) != 0;
        let lowest_vcn = read_u64le(a, 0x10);
        let highest_vcn = read_u64le(a, 0x18);
        let mp_offset = usize::from(read_u16le(a, 0x20));
        let header_end = if has_compressed && lowest_vcn == 0 {
            0x48
        } else {
            0x40
        };
        if a.len() < header_end || mp_offset < header_end.min(0x40) || mp_offset > a.len() {
            return Err(CorruptKind::NtfsAttrHeader.into());
        }
        RawBody::NonResident(NonResidentHeader {
            lowest_vcn,
            highest_vcn,
            mapping_pairs: &a[mp_offset..],
            compression_unit: read_u8(a, 0x22),
            allocated_size: read_u64le(a, 0x28),
            data_size: read_u64le(a, 0x30),
            initialized_size: read_u64le(a, 0x38),
            compressed_size: (has_compressed && lowest_vcn == 0).then(|| read_u64le(a, 0x40)),
        })
    };
    Ok(RawAttr {
        type_code,
        name,
        flags,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 KiB record with fixups applied as a writer would: USN 7 in both strides.
    fn record() -> Vec<u8> {
        let mut r = vec![0u8; 1024];
        r[0..4].copy_from_slice(b"FILE");
        r[4..6].copy_from_slice(&0x30u16.to_le_bytes());
        r[6..8].copy_from_slice(&3u16.to_le_bytes());
        r[0x30..0x32].copy_from_slice(&7u16.to_le_bytes());
        r[0x32..0x34].copy_from_slice(&0xABCDu16.to_le_bytes());
        r[0x34..0x36].copy_from_slice(&0x1234u16.to_le_bytes());
        r[510..512].copy_from_slice(&7u16.to_le_bytes());
        r[1022..1024].copy_from_slice(&7u16.to_le_bytes());
        r
    }

    #[test]
    fn fixups_restore_the_saved_bytes() {
        let mut r = record();
        apply_fixups(&mut r, b"FILE").unwrap();
        assert_eq!(read_u16le(&r, 510), 0xABCD);
        assert_eq!(read_u16le(&r, 1022), 0x1234);
    }

    #[test]
    fn a_torn_stride_is_rejected() {
        let mut r = record();
        r[1022] = 8;
        let e = apply_fixups(&mut r, b"FILE").unwrap_err();
        assert!(matches!(
            e,
            GuestError::Corrupt(CorruptKind::NtfsFixupMismatch)
        ));
    }

    #[test]
    fn a_bad_array_is_rejected() {
        for (at, v) in [(4usize, 0x31u16), (6, 2), (6, 400), (4, 600)] {
            let mut r = record();
            r[at..at + 2].copy_from_slice(&v.to_le_bytes());
            let e = apply_fixups(&mut r, b"FILE").unwrap_err();
            assert!(
                matches!(e, GuestError::Corrupt(CorruptKind::NtfsFixupArray)),
                "{at} {v}"
            );
        }
        let mut r = record();
        assert!(matches!(
            apply_fixups(&mut r, b"INDX").unwrap_err(),
            GuestError::Corrupt(CorruptKind::NtfsRecordMagic)
        ));
    }
}
