//! The on-disk structures of an LVM2 physical volume that lead to its metadata text.
//!
//! Layout and names as in lvm2's `lib/format_text/layout.h` and `lib/label/label.h`:
//! - a label header ("LABELONE") in one of the first four 512-byte sectors, with a CRC of the
//!   sector from `offset_xl` on, and the type "LVM2 001";
//! - right after it (at `offset_xl` from the label's start) the PV header: the PV's UUID (32
//!   characters), its size, then two lists of `{offset, size}` areas each ending with a zero
//!   offset: the data areas, then the metadata areas;
//! - each metadata area starts with a 512-byte header (CRC of its last 508 bytes, the magic
//!   `" LVM2 x[5A%r0N*>"`, version 1, its own start and size) and a list of raw locations
//!   `{offset, size, checksum, flags}`; the first is the committed metadata text, at `offset`
//!   from the area's start, wrapping round to just after the header when it reaches the area's
//!   end (the area is a circular buffer), and checksummed with the same CRC.
//!
//! Every value is checked before it is used to address anything; each check has its own
//! [`CorruptKind`].

use crate::source::ByteSource;

use super::super::super::bytes::{read_array, read_u32le, read_u64le, slice};
use super::super::super::{CorruptKind, GuestError};

pub const SECTOR: u64 = 512;
/// The label may be in any of the first four sectors (`LABEL_SCAN_SECTORS`).
const LABEL_SCAN_SECTORS: u64 = 4;
const LABEL_ID: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
/// `struct label_header`: id[8], sector_xl u64, crc_xl u32, offset_xl u32, type[8].
const LABEL_HEADER_SIZE: usize = 32;
/// The CRC of the label covers the sector from the `offset_xl` field (byte 20) on.
const LABEL_CRC_FROM: usize = 20;
const ID_LEN: usize = 32;
/// `MDA_HEADER_SIZE`: the metadata area header; the circular buffer follows it.
pub const MDA_HEADER_SIZE: u64 = 512;
const MDA_MAGIC: &[u8; 16] = b"\x20LVM2\x20x[5A%r0N*>";
const MDA_VERSION: u32 = 1;
/// `RAW_LOCN_IGNORED`: the metadata area is kept but not used (`pvchange --metadataignore`).
const RAW_LOCN_IGNORED: u32 = 1;
/// lvm2's `INITIAL_CRC`.
const INITIAL_CRC: u32 = 0xf597_a6cf;
/// The longest metadata text read. lvm2's default metadata area is about 1 MiB and the text
/// must fit in half of it; VGs of thousands of LVs are given larger areas, and 4 MiB holds
/// well over ten thousand LVs.
pub const MAX_METADATA_TEXT: u64 = 4 << 20;
/// Metadata areas per PV: lvm2 makes at most two (start and end of the PV).
const MAX_METADATA_AREAS: usize = 2;

/// The CRC-32 lvm2 uses (`calc_crc`): reflected polynomial 0xEDB88320, no inversion, seeded
/// with [`INITIAL_CRC`] by callers.
fn calc_crc(crc: u32, data: &[u8]) -> u32 {
    crate::guest::crc::crc32_raw(crc, data)
}

/// lvm2's checksum of `data` (label sectors, metadata area headers, metadata text).
pub fn lvm_crc(data: &[u8]) -> u32 {
    calc_crc(INITIAL_CRC, data)
}

/// What the label of a PV says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvLabel {
    /// The PV's UUID: 32 characters, without the dashes the metadata text puts in it.
    pub uuid: [u8; ID_LEN],
    /// The device size the PV header records, in bytes (0 when unknown).
    pub device_size: u64,
    /// Byte offsets of the metadata areas on the PV.
    pub metadata_areas: Vec<(u64, u64)>,
}

/// Reads the area list at `at` in the label sector: `{offset, size}` pairs up to the one whose
/// offset is zero. Returns the list and where the next list starts.
fn area_list(sector: &[u8], mut at: usize) -> Result<(Vec<(u64, u64)>, usize), GuestError> {
    let mut out = Vec::new();
    loop {
        let entry = slice(sector, at, 16).ok_or(CorruptKind::LvmPvHeader)?;
        let offset = read_u64le(entry, 0);
        let size = read_u64le(entry, 8);
        at = at.checked_add(16).ok_or(CorruptKind::LvmPvHeader)?;
        if offset == 0 {
            return Ok((out, at));
        }
        out.push((offset, size));
    }
}

/// Looks for a PV label in the first four sectors of `dev`. `Ok(None)` when there is none;
/// an error when a label is there but does not check out (its CRC, its sector or its PV
/// header): such a volume is an LVM PV that cannot be read, not a filesystem.
pub fn read_label(dev: &dyn ByteSource) -> Result<Option<PvLabel>, GuestError> {
    let mut sectors = [0u8; 2048];
    dev.read_exact_at(&mut sectors, 0)?;
    for (index, sector) in (0..LABEL_SCAN_SECTORS).zip(sectors.chunks_exact(512)) {
        if &read_array::<8>(sector, 0) != LABEL_ID {
            continue;
        }
        let sector_xl = read_u64le(sector, 8);
        let crc_xl = read_u32le(sector, 16);
        let offset_xl = read_u32le(sector, 20);
        if lvm_crc(&sector[LABEL_CRC_FROM..]) != crc_xl {
            return Err(CorruptKind::LvmLabelChecksum.into());
        }
        if sector_xl != index {
            return Err(CorruptKind::LvmLabelSector.into());
        }
        if &read_array::<8>(sector, 24) != LABEL_TYPE {
            // Another label type (lvm1 and pool PVs had their own): not read.
            return Err(GuestError::Unsupported(
                "LVM label of a type other than LVM2 001".to_string(),
            ));
        }
        let pvh = usize::try_from(offset_xl).map_err(|_| CorruptKind::LvmLabelSector)?;
        if pvh < LABEL_HEADER_SIZE {
            return Err(CorruptKind::LvmLabelSector.into());
        }
        let uuid = slice(sector, pvh, ID_LEN).ok_or(CorruptKind::LvmPvHeader)?;
        let uuid: [u8; ID_LEN] = uuid.try_into().map_err(|_| CorruptKind::LvmPvHeader)?;
        let device_size = read_u64le(sector, pvh.saturating_add(ID_LEN));
        let areas_at = pvh
            .checked_add(ID_LEN + 8)
            .ok_or(CorruptKind::LvmPvHeader)?;
        let (_data, next) = area_list(sector, areas_at)?;
        let (metadata_areas, _) = area_list(sector, next)?;
        if metadata_areas.len() > MAX_METADATA_AREAS {
            return Err(CorruptKind::LvmPvHeader.into());
        }
        return Ok(Some(PvLabel {
            uuid,
            device_size,
            metadata_areas,
        }));
    }
    Ok(None)
}

/// Reads the committed metadata text of the metadata area at `area` (offset, size) of `dev`
/// (whose length is `dev_len`). `Ok(None)` when the area holds no metadata (a PV not in a VG
/// yet) or is marked ignored. The text is returned without its terminating NUL.
pub fn read_metadata(
    dev: &dyn ByteSource,
    dev_len: u64,
    area: (u64, u64),
) -> Result<Option<Vec<u8>>, GuestError> {
    let (area_start, area_size) = area;
    let area_end = area_start
        .checked_add(area_size)
        .ok_or(CorruptKind::LvmMdaHeader)?;
    if area_size <= MDA_HEADER_SIZE || area_end > dev_len {
        return Err(CorruptKind::LvmMdaHeader.into());
    }
    let mut hdr = [0u8; 512];
    dev.read_exact_at(&mut hdr, area_start)?;
    if lvm_crc(&hdr[4..]) != read_u32le(&hdr, 0) {
        return Err(CorruptKind::LvmMdaHeaderChecksum.into());
    }
    if &read_array::<16>(&hdr, 4) != MDA_MAGIC
        || read_u32le(&hdr, 20) != MDA_VERSION
        || read_u64le(&hdr, 24) != area_start
        || read_u64le(&hdr, 32) != area_size
    {
        return Err(CorruptKind::LvmMdaHeader.into());
    }
    // raw_locns[0]: the committed metadata.
    let offset = read_u64le(&hdr, 40);
    let size = read_u64le(&hdr, 48);
    let checksum = read_u32le(&hdr, 56);
    let flags = read_u32le(&hdr, 60);
    if offset == 0 || flags & RAW_LOCN_IGNORED != 0 {
        return Ok(None);
    }
    // The circular buffer is [MDA_HEADER_SIZE, area_size) of the area.
    let buffer = area_size - MDA_HEADER_SIZE;
    if offset < MDA_HEADER_SIZE || offset >= area_size || size == 0 || size > buffer {
        return Err(CorruptKind::LvmRawLocation.into());
    }
    if size > MAX_METADATA_TEXT {
        return Err(CorruptKind::LvmMetadataSize.into());
    }
    let first = size.min(area_size - offset);
    let len = usize::try_from(size).map_err(|_| CorruptKind::LvmMetadataSize)?;
    let first_len = usize::try_from(first).map_err(|_| CorruptKind::LvmMetadataSize)?;
    let mut text = vec![0u8; len];
    let (head, tail) = text.split_at_mut(first_len);
    dev.read_exact_at(head, area_start + offset)?;
    if !tail.is_empty() {
        dev.read_exact_at(tail, area_start + MDA_HEADER_SIZE)?;
    }
    if lvm_crc(&text) != checksum {
        return Err(CorruptKind::LvmMetadataChecksum.into());
    }
    while text.last() == Some(&0) {
        text.pop();
    }
    Ok(Some(text))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::source::MemorySource;

    #[test]
    fn crc_is_lvm2s() {
        // calc_crc(INITIAL_CRC, ...) is the IEEE CRC-32 table run without inversions, so
        // seeding with !0 and inverting gives the standard check value.
        assert_eq!(!calc_crc(!0, b"123456789"), 0xCBF4_3926);
    }

    /// A PV of 1 MiB: label in sector 1, one metadata area at 4 KiB of 64 KiB, `text` at
    /// offset `at` of the area (wrapping if it must).
    pub(crate) fn pv_image(text: &[u8], at: u64) -> Vec<u8> {
        let mut d = vec![0u8; 1 << 20];
        let l = 512;
        d[l..l + 8].copy_from_slice(LABEL_ID);
        d[l + 8..l + 16].copy_from_slice(&1u64.to_le_bytes());
        d[l + 20..l + 24].copy_from_slice(&32u32.to_le_bytes());
        d[l + 24..l + 32].copy_from_slice(LABEL_TYPE);
        d[l + 32..l + 64].copy_from_slice(&[b'A'; 32]);
        d[l + 64..l + 72].copy_from_slice(&(1u64 << 20).to_le_bytes());
        // Data area at 128 KiB, terminator; metadata area at 4 KiB, terminator.
        d[l + 72..l + 80].copy_from_slice(&(128u64 << 10).to_le_bytes());
        d[l + 104..l + 112].copy_from_slice(&4096u64.to_le_bytes());
        d[l + 112..l + 120].copy_from_slice(&(64u64 << 10).to_le_bytes());
        let crc = lvm_crc(&d[l + 20..l + 512]);
        d[l + 16..l + 20].copy_from_slice(&crc.to_le_bytes());
        let m = 4096usize;
        let area = 64usize << 10;
        d[m + 4..m + 20].copy_from_slice(MDA_MAGIC);
        d[m + 20..m + 24].copy_from_slice(&1u32.to_le_bytes());
        d[m + 24..m + 32].copy_from_slice(&4096u64.to_le_bytes());
        d[m + 32..m + 40].copy_from_slice(&(area as u64).to_le_bytes());
        let mut full = text.to_vec();
        full.push(0);
        let at = at as usize;
        for (i, &b) in full.iter().enumerate() {
            let mut o = at + i;
            if o >= area {
                o = o - area + 512;
            }
            d[m + o] = b;
        }
        d[m + 40..m + 48].copy_from_slice(&(at as u64).to_le_bytes());
        d[m + 48..m + 56].copy_from_slice(&(full.len() as u64).to_le_bytes());
        d[m + 56..m + 60].copy_from_slice(&lvm_crc(&full).to_le_bytes());
        let crc = lvm_crc(&d[m + 4..m + 512]);
        d[m..m + 4].copy_from_slice(&crc.to_le_bytes());
        d
    }

    fn read(d: Vec<u8>) -> Result<Option<Vec<u8>>, GuestError> {
        let src = MemorySource::new(d);
        let label = read_label(&src)?.unwrap();
        read_metadata(&src, 1 << 20, label.metadata_areas[0])
    }

    #[test]
    fn metadata_text_is_read_and_may_wrap() {
        let text = b"vg { seqno = 1 }".to_vec();
        assert_eq!(read(pv_image(&text, 512)).unwrap().unwrap(), text);
        // Starts 5 bytes before the end of the area: the rest follows the header.
        assert_eq!(
            read(pv_image(&text, (64 << 10) - 5)).unwrap().unwrap(),
            text
        );
    }

    #[test]
    fn each_check_has_its_error() {
        let good = pv_image(b"x", 512);
        let kind = |d: Vec<u8>| match read(d) {
            Err(GuestError::Corrupt(k)) => k,
            other => panic!("{other:?}"),
        };
        let mut d = good.clone();
        d[512 + 40] ^= 1;
        let src = MemorySource::new(d);
        assert!(matches!(
            read_label(&src),
            Err(GuestError::Corrupt(CorruptKind::LvmLabelChecksum))
        ));
        let mut d = good.clone();
        d[4096 + 30] ^= 1;
        assert_eq!(kind(d), CorruptKind::LvmMdaHeaderChecksum);
        let mut d = good.clone();
        d[4096 + 512] ^= 1;
        assert_eq!(kind(d), CorruptKind::LvmMetadataChecksum);
        // A raw location larger than the buffer, with the header's CRC made right again.
        let mut d = good.clone();
        d[4096 + 48..4096 + 56].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let crc = lvm_crc(&d[4096 + 4..4096 + 512]);
        d[4096..4100].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(kind(d), CorruptKind::LvmRawLocation);
        // No LABELONE at all: not a PV.
        let src = MemorySource::new(vec![0u8; 4096]);
        assert_eq!(read_label(&src).unwrap(), None);
    }
}
