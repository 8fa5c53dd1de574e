//! The MBR (DOS) partition table: four primary entries at byte 446 of sector 0, and logical
//! partitions in a chain of extended boot records (EBRs) inside an extended partition.
//!
//! Numbering and acceptance follow Linux's `block/partitions/msdos.c`: primary partitions are
//! numbered by slot (1-4) and any entry with a non-zero size counts; the extended partition
//! itself holds no filesystem and is not a volume; logical partitions are numbered from 5 in
//! chain order; in each EBR the data entries come first and the first extended entry links to
//! the next EBR, relative to the start of the outer extended partition. The chain is followed
//! at most [`MAX_LOGICAL`] times and never to an EBR already visited.

use crate::source::ByteSource;

use super::super::bytes::{read_u32le, read_u8};
use super::super::{CorruptKind, GuestError};
use super::PartitionEntry;

const SECTOR: u64 = 512;
/// Linux stops at 256 partitions per disk; logical ones are the rest after four primaries.
const MAX_LOGICAL: usize = 252;
const PART_TABLE: usize = 446;
const EFI_PROTECTIVE: u8 = 0xEE;

/// What sector 0 says.
pub struct Mbr {
    /// A 0xEE entry: the disk is GPT (protective or hybrid MBR).
    pub protective: bool,
    pub partitions: Vec<PartitionEntry>,
}

#[derive(Clone, Copy)]
struct RawEntry {
    boot_ind: u8,
    sys_ind: u8,
    start_sect: u32,
    nr_sects: u32,
}

fn entries(sector: &[u8]) -> [RawEntry; 4] {
    let entry = |i: usize| {
        let at = PART_TABLE + 16 * i;
        RawEntry {
            boot_ind: read_u8(sector, at),
            sys_ind: read_u8(sector, at + 4),
            start_sect: read_u32le(sector, at + 8),
            nr_sects: read_u32le(sector, at + 12),
        }
    };
    [entry(0), entry(1), entry(2), entry(3)]
}

fn has_signature(sector: &[u8]) -> bool {
    read_u8(sector, 510) == 0x55 && read_u8(sector, 511) == 0xAA
}

fn is_extended(sys_ind: u8) -> bool {
    // DOS_EXTENDED_PARTITION, WIN98_EXTENDED_PARTITION, LINUX_EXTENDED_PARTITION.
    matches!(sys_ind, 0x05 | 0x0F | 0x85)
}

/// The byte range of a partition, as Linux's `add_partition` treats it: a partition that
/// starts past the disk's end is dropped (`None`), one that ends past it is truncated.
fn byte_range(
    start_sector: u64,
    sectors: u64,
    disk_len: u64,
) -> Result<Option<(u64, u64)>, GuestError> {
    let start = start_sector
        .checked_mul(SECTOR)
        .ok_or(CorruptKind::MbrPartitionRange)?;
    let len = sectors
        .checked_mul(SECTOR)
        .ok_or(CorruptKind::MbrPartitionRange)?;
    if start >= disk_len {
        log::info!("MBR partition starts past the end of the disk; ignored");
        return Ok(None);
    }
    Ok(Some((start, len.min(disk_len - start))))
}

/// Reads sector 0. `None` when it is no partition table (no 0x55AA signature, or boot
/// indicators other than 0 and 0x80, which is how Linux tells a FAT boot sector apart).
pub fn read_mbr(disk: &dyn ByteSource, disk_len: u64) -> Result<Option<Mbr>, GuestError> {
    let mut sector = [0u8; 512];
    disk.read_exact_at(&mut sector, 0)?;
    if !has_signature(&sector) {
        return Ok(None);
    }
    let raw = entries(&sector);
    if raw.iter().any(|e| e.boot_ind != 0 && e.boot_ind != 0x80) {
        return Ok(None);
    }
    if raw.iter().any(|e| e.sys_ind == EFI_PROTECTIVE) {
        return Ok(Some(Mbr {
            protective: true,
            partitions: Vec::new(),
        }));
    }
    let mut partitions = Vec::new();
    let mut extended = None;
    for (slot, e) in (1u32..).zip(raw.iter()) {
        if e.nr_sects == 0 {
            continue;
        }
        let Some((start, len)) = byte_range(e.start_sect.into(), e.nr_sects.into(), disk_len)?
        else {
            continue;
        };
        if is_extended(e.sys_ind) {
            // Linux reads the chain of every extended entry; one is what tools make.
            if extended.is_none() {
                extended = Some((start, len));
            }
            continue;
        }
        partitions.push(PartitionEntry {
            number: slot,
            start,
            len,
        });
    }
    if let Some((start, len)) = extended {
        read_logical(disk, disk_len, start, len, &mut partitions)?;
    }
    Ok(Some(Mbr {
        protective: false,
        partitions,
    }))
}

/// Follows the EBR chain of the extended partition at `[ext_start, ext_start + ext_len)`.
fn read_logical(
    disk: &dyn ByteSource,
    disk_len: u64,
    ext_start: u64,
    ext_len: u64,
    out: &mut Vec<PartitionEntry>,
) -> Result<(), GuestError> {
    let mut number = 5u32;
    let mut this_start = ext_start;
    let mut this_len = ext_len;
    let mut visited = Vec::new();
    loop {
        if visited.contains(&this_start) || visited.len() >= MAX_LOGICAL {
            return Err(CorruptKind::EbrChain.into());
        }
        visited.push(this_start);
        let mut sector = [0u8; 512];
        disk.read_exact_at(&mut sector, this_start)?;
        if !has_signature(&sector) {
            return Ok(());
        }
        let raw = entries(&sector);
        for (i, e) in raw.iter().enumerate() {
            if e.nr_sects == 0 || is_extended(e.sys_ind) {
                continue;
            }
            let offs = u64::from(e.start_sect)
                .checked_mul(SECTOR)
                .ok_or(CorruptKind::MbrPartitionRange)?;
            let size = u64::from(e.nr_sects)
                .checked_mul(SECTOR)
                .ok_or(CorruptKind::MbrPartitionRange)?;
            let next = this_start
                .checked_add(offs)
                .ok_or(CorruptKind::MbrPartitionRange)?;
            let end = next
                .checked_add(size)
                .ok_or(CorruptKind::MbrPartitionRange)?;
            // Linux: the 3rd and 4th entries "sometimes contain random garbage"; keep them
            // only when they lie inside this EBR's and the extended partition's range.
            if i >= 2
                && (offs.saturating_add(size) > this_len
                    || next < ext_start
                    || end > ext_start.saturating_add(ext_len))
            {
                continue;
            }
            if next < disk_len {
                out.push(PartitionEntry {
                    number,
                    start: next,
                    len: size.min(disk_len - next),
                });
            }
            number = number.checked_add(1).ok_or(CorruptKind::EbrChain)?;
            if out.len() >= MAX_LOGICAL + 4 {
                return Ok(());
            }
        }
        let Some(link) = raw
            .iter()
            .find(|e| e.nr_sects != 0 && is_extended(e.sys_ind))
        else {
            return Ok(());
        };
        this_start = u64::from(link.start_sect)
            .checked_mul(SECTOR)
            .and_then(|o| ext_start.checked_add(o))
            .ok_or(CorruptKind::EbrChain)?;
        this_len = u64::from(link.nr_sects)
            .checked_mul(SECTOR)
            .ok_or(CorruptKind::EbrChain)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemorySource;

    fn put(sector: &mut [u8], slot: usize, sys: u8, start: u32, len: u32) {
        let at = PART_TABLE + 16 * slot;
        sector[at + 4] = sys;
        sector[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
        sector[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
        sector[510] = 0x55;
        sector[511] = 0xAA;
    }

    #[test]
    fn ebr_chain_that_loops_is_an_error() {
        let mut disk = vec![0u8; 64 * 512];
        put(&mut disk[..512], 0, 0x05, 8, 32);
        // The EBR at sector 8 links to itself (relative 0 from the extended start).
        put(&mut disk[8 * 512..9 * 512], 0, 0x83, 1, 2);
        put(&mut disk[8 * 512..9 * 512], 1, 0x05, 0, 8);
        let src = MemorySource::new(disk);
        let len = src.byte_len().unwrap();
        let err = read_mbr(&src, len).err().unwrap();
        assert!(matches!(err, GuestError::Corrupt(CorruptKind::EbrChain)));
    }

    #[test]
    fn logical_partitions_are_numbered_from_five() {
        let mut disk = vec![0u8; 64 * 512];
        put(&mut disk[..512], 0, 0x83, 2, 4);
        put(&mut disk[..512], 1, 0x05, 8, 40);
        put(&mut disk[8 * 512..9 * 512], 0, 0x83, 1, 4);
        put(&mut disk[8 * 512..9 * 512], 1, 0x05, 10, 10);
        put(&mut disk[18 * 512..19 * 512], 0, 0x83, 1, 3);
        let src = MemorySource::new(disk);
        let len = src.byte_len().unwrap();
        let mbr = read_mbr(&src, len).unwrap().unwrap();
        let got: Vec<_> = mbr
            .partitions
            .iter()
            .map(|p| (p.number, p.start / 512, p.len / 512))
            .collect();
        assert_eq!(got, [(1, 2, 4), (5, 9, 4), (6, 19, 3)]);
    }

    #[test]
    fn partitions_past_the_disk_end_are_truncated_or_dropped() {
        let mut disk = vec![0u8; 8 * 512];
        put(&mut disk[..512], 0, 0x83, 2, 400);
        put(&mut disk[..512], 1, 0x83, 9, 4);
        let src = MemorySource::new(disk);
        let mbr = read_mbr(&src, 8 * 512).unwrap().unwrap();
        let expected = PartitionEntry {
            number: 1,
            start: 1024,
            len: 3072,
        };
        assert_eq!(mbr.partitions, [expected]);
    }
}
