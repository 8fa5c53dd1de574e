//! The GUID partition table: a header at LBA 1 (CRC-32 of its own `header_size` bytes) and an
//! array of 128-byte entries (CRC-32 of the whole array), with a backup header at the last LBA.
//!
//! As Linux's `block/partitions/efi.c`: the primary header is used if valid, else the backup;
//! entries are numbered by their slot (1-based), unused slots (zero type GUID) skipped; the
//! entry size must be 128. Both 512- and 4096-byte sectors are tried (a disk image does not
//! say which its guest used; virtio disks default to 512).

use crate::source::ByteSource;

use super::super::bytes::{read_array, read_u32le, read_u64le};
use super::super::crc::crc32;
use super::super::{CorruptKind, GuestError};
use super::PartitionEntry;

const SIGNATURE: &[u8; 8] = b"EFI PART";
const ENTRY_SIZE: u32 = 128;
/// Linux reads at most 256 partitions; more entries than this are refused outright.
const MAX_ENTRIES: u32 = 4096;
const MAX_PARTITIONS: usize = 256;

struct Header {
    my_lba: u64,
    alternate_lba: u64,
    last_usable_lba: u64,
    partition_entry_lba: u64,
    num_partition_entries: u32,
    partition_entry_array_crc32: u32,
}

fn read_header(disk: &dyn ByteSource, lba: u64, sector: u64) -> Result<Option<Header>, GuestError> {
    let Some(at) = lba.checked_mul(sector) else {
        return Ok(None);
    };
    let mut hdr = vec![0u8; usize::try_from(sector).unwrap_or(512)];
    disk.read_exact_at(&mut hdr, at)?;
    if &read_array::<8>(&hdr, 0) != SIGNATURE {
        return Ok(None);
    }
    let header_size = read_u32le(&hdr, 12);
    let header_crc32 = read_u32le(&hdr, 16);
    if header_size < 92 || u64::from(header_size) > sector {
        return Err(CorruptKind::GptHeaderSize.into());
    }
    let mut copy = hdr[..usize::try_from(header_size).unwrap_or(92)].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != header_crc32 {
        return Err(CorruptKind::GptHeaderChecksum.into());
    }
    let h = Header {
        my_lba: read_u64le(&hdr, 24),
        alternate_lba: read_u64le(&hdr, 32),
        last_usable_lba: read_u64le(&hdr, 48),
        partition_entry_lba: read_u64le(&hdr, 72),
        num_partition_entries: read_u32le(&hdr, 80),
        partition_entry_array_crc32: read_u32le(&hdr, 88),
    };
    if h.my_lba != lba
        || read_u32le(&hdr, 84) != ENTRY_SIZE
        || h.num_partition_entries > MAX_ENTRIES
    {
        return Err(CorruptKind::GptEntryArray.into());
    }
    Ok(Some(h))
}

fn read_entries(
    disk: &dyn ByteSource,
    h: &Header,
    sector: u64,
    disk_len: u64,
) -> Result<Vec<PartitionEntry>, GuestError> {
    let count = usize::try_from(h.num_partition_entries).map_err(|_| CorruptKind::GptEntryArray)?;
    let bytes = count.checked_mul(128).ok_or(CorruptKind::GptEntryArray)?;
    let at = h
        .partition_entry_lba
        .checked_mul(sector)
        .ok_or(CorruptKind::GptEntryArray)?;
    let mut array = vec![0u8; bytes];
    disk.read_exact_at(&mut array, at)?;
    if crc32(&array) != h.partition_entry_array_crc32 {
        return Err(CorruptKind::GptEntriesChecksum.into());
    }
    let last_lba = (disk_len / sector).saturating_sub(1);
    let mut out = Vec::new();
    for (number, e) in (1u32..).zip(array.chunks_exact(128)) {
        if read_array::<16>(e, 0) == [0; 16] {
            continue;
        }
        let first = read_u64le(e, 32);
        let last = read_u64le(e, 40);
        // Linux's is_pte_valid: entries outside the disk are ignored, not fatal.
        if first > last || last > last_lba || last > h.last_usable_lba.max(last_lba) {
            continue;
        }
        let start = first
            .checked_mul(sector)
            .ok_or(CorruptKind::GptPartitionRange)?;
        let len = last
            .checked_sub(first)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(sector))
            .ok_or(CorruptKind::GptPartitionRange)?;
        out.push(PartitionEntry { number, start, len });
        if out.len() >= MAX_PARTITIONS {
            break;
        }
    }
    Ok(out)
}

/// The partitions of a GPT disk; empty if neither header is found.
pub fn read_gpt(disk: &dyn ByteSource, disk_len: u64) -> Result<Vec<PartitionEntry>, GuestError> {
    let mut first_err = None;
    for sector in [512u64, 4096] {
        let last_lba = (disk_len / sector).saturating_sub(1);
        let mut candidates = vec![1u64];
        match read_header(disk, 1, sector) {
            Ok(Some(h)) => {
                match read_entries(disk, &h, sector, disk_len) {
                    Ok(p) => return Ok(p),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
                candidates.push(h.alternate_lba);
            }
            Ok(None) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
        // The backup header: where the primary says, else the disk's last sector.
        candidates.push(last_lba);
        for lba in candidates.into_iter().skip(1) {
            if lba == 1 || lba > last_lba {
                continue;
            }
            match read_header(disk, lba, sector) {
                Ok(Some(h)) => match read_entries(disk, &h, sector, disk_len) {
                    Ok(p) => return Ok(p),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(Vec::new()),
    }
}
