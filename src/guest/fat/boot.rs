//! The boot sector's BIOS parameter block (BPB): where the allocation tables, the root
//! directory and the data clusters are, and which FAT type the volume is.
//!
//! Field offsets and names are those of Microsoft's "FAT: General Overview of On-Disk
//! Format" (`BPB_BytsPerSec` at 11, ...). The type is decided as that document says, by the
//! count of data clusters alone (fewer than 4085: FAT12, fewer than 65525: FAT16, else
//! FAT32); the fields that must agree with that type are then checked. The other checks are
//! those Linux's `fat_read_bpb` makes before trusting a field for addressing, each with its
//! own [`CorruptKind`], plus one it leaves to the block layer: the volume must fit on its
//! device, so a truncated image is an error instead of files reading as zeros.

use super::super::bytes::{read_u16le, read_u32le, read_u8};
use super::super::{CorruptKind, GuestError};

/// Bytes read for the boot sector (the BPB is within the first 90).
pub const BOOT_SECTOR_SIZE: usize = 512;

/// Fewer clusters than this: FAT12.
const MAX_FAT12_CLUSTERS: u64 = 4085;
/// Fewer clusters than this: FAT16.
const MAX_FAT16_CLUSTERS: u64 = 65525;
/// The most clusters a FAT32 volume can have: cluster numbers end below 0x0FFFFFF7.
const MAX_FAT32_CLUSTERS: u64 = 0x0FFF_FFF5;

/// The three table widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    /// The value marking a bad cluster; values from the next one up end a chain.
    pub fn bad(self) -> u32 {
        match self {
            FatType::Fat12 => 0xFF7,
            FatType::Fat16 => 0xFFF7,
            FatType::Fat32 => 0x0FFF_FFF7,
        }
    }

    /// The first of the reserved values just below [`FatType::bad`].
    pub fn reserved_from(self) -> u32 {
        self.bad() - 7
    }
}

/// Where everything is, in bytes from the start of the volume.
#[derive(Debug, Clone)]
pub struct Geometry {
    pub fat_type: FatType,
    pub bytes_per_sector: u32,
    pub cluster_size: u32,
    /// Byte offset of the first allocation table (the one read; Linux reads it too).
    pub fat_start: u64,
    /// Bytes of one allocation table.
    pub fat_bytes: u64,
    /// FAT12/16: the fixed root directory region (empty on FAT32).
    pub root_start: u64,
    pub root_bytes: u64,
    /// Byte offset of cluster 2.
    pub data_start: u64,
    /// Data clusters: valid cluster numbers are 2 ..= cluster_count + 1.
    pub cluster_count: u32,
    /// FAT32: the first cluster of the root directory.
    pub root_cluster: u32,
    /// The volume's size as the BPB gives it.
    pub total_bytes: u64,
}

impl Geometry {
    /// The highest valid cluster number.
    pub fn max_cluster(&self) -> u32 {
        self.cluster_count.saturating_add(1)
    }

    /// Byte offset of cluster `c` (2 ..= max_cluster).
    pub fn cluster_offset(&self, c: u32) -> Result<u64, GuestError> {
        if c < 2 || c > self.max_cluster() {
            return Err(CorruptKind::FatClusterRange.into());
        }
        u64::from(c - 2)
            .checked_mul(u64::from(self.cluster_size))
            .and_then(|o| o.checked_add(self.data_start))
            .ok_or_else(|| CorruptKind::FatClusterRange.into())
    }

    /// Parses and checks the boot sector of a volume of `device_len` bytes.
    pub fn parse(bs: &[u8], device_len: u64) -> Result<Geometry, GuestError> {
        let bpb_byts_per_sec = read_u16le(bs, 11);
        let bpb_sec_per_clus = read_u8(bs, 13);
        let bpb_rsvd_sec_cnt = read_u16le(bs, 14);
        let bpb_num_fats = read_u8(bs, 16);
        let bpb_root_ent_cnt = read_u16le(bs, 17);
        let bpb_tot_sec16 = read_u16le(bs, 19);
        let bpb_media = read_u8(bs, 21);
        let bpb_fat_sz16 = read_u16le(bs, 22);
        let bpb_tot_sec32 = read_u32le(bs, 32);
        let bpb_fat_sz32 = read_u32le(bs, 36);
        let bpb_root_clus = read_u32le(bs, 44);

        if !bpb_byts_per_sec.is_power_of_two() || !(512..=4096).contains(&bpb_byts_per_sec) {
            return Err(CorruptKind::FatBytesPerSector.into());
        }
        if !bpb_sec_per_clus.is_power_of_two() {
            return Err(CorruptKind::FatSectorsPerCluster.into());
        }
        if bpb_rsvd_sec_cnt == 0 {
            return Err(CorruptKind::FatReservedSectors.into());
        }
        if bpb_num_fats == 0 {
            return Err(CorruptKind::FatCount.into());
        }
        // Linux's FAT_VALID_MEDIA: 0xF0 or 0xF8..=0xFF.
        if bpb_media != 0xF0 && bpb_media < 0xF8 {
            return Err(CorruptKind::FatMedia.into());
        }
        let bps = u64::from(bpb_byts_per_sec);
        // The root directory must fill whole sectors (Linux: "bogus number of directory
        // entries").
        let root_bytes = u64::from(bpb_root_ent_cnt) * 32;
        if root_bytes % bps != 0 {
            return Err(CorruptKind::FatRootEntries.into());
        }
        let fat_sectors = if bpb_fat_sz16 != 0 {
            u64::from(bpb_fat_sz16)
        } else {
            u64::from(bpb_fat_sz32)
        };
        if fat_sectors == 0 {
            return Err(CorruptKind::FatTableSize.into());
        }
        let total_sectors = if bpb_tot_sec16 != 0 {
            u64::from(bpb_tot_sec16)
        } else {
            u64::from(bpb_tot_sec32)
        };
        // All products below are of values under 2^32 by at most 2^12: no overflow in u64.
        let root_sectors = root_bytes / bps;
        let first_data_sector =
            u64::from(bpb_rsvd_sec_cnt) + u64::from(bpb_num_fats) * fat_sectors + root_sectors;
        if total_sectors <= first_data_sector {
            return Err(CorruptKind::FatTotalSectors.into());
        }
        let cluster_count = (total_sectors - first_data_sector) / u64::from(bpb_sec_per_clus);
        if cluster_count == 0 || cluster_count > MAX_FAT32_CLUSTERS {
            return Err(CorruptKind::FatClusterCount.into());
        }
        let fat_type = if cluster_count < MAX_FAT12_CLUSTERS {
            FatType::Fat12
        } else if cluster_count < MAX_FAT16_CLUSTERS {
            FatType::Fat16
        } else {
            FatType::Fat32
        };
        // FAT32 has no fixed root directory and its table size is BPB_FATSz32 alone;
        // FAT12/16 keep theirs in BPB_FATSz16.
        match fat_type {
            FatType::Fat32 if bpb_fat_sz16 != 0 || bpb_root_ent_cnt != 0 => {
                return Err(CorruptKind::FatTypeMismatch.into())
            }
            FatType::Fat12 | FatType::Fat16 if bpb_fat_sz16 == 0 => {
                return Err(CorruptKind::FatTypeMismatch.into())
            }
            _ => {}
        }
        let fat_bytes = fat_sectors * bps;
        // The table must have an entry for every cluster (and the two reserved ones).
        let entries = match fat_type {
            FatType::Fat12 => fat_bytes * 2 / 3,
            FatType::Fat16 => fat_bytes / 2,
            FatType::Fat32 => fat_bytes / 4,
        };
        if entries < cluster_count + 2 {
            return Err(CorruptKind::FatTableSize.into());
        }
        let cluster_count =
            u32::try_from(cluster_count).map_err(|_| CorruptKind::FatClusterCount)?;
        let max_cluster = cluster_count + 1;
        let root_cluster = if fat_type == FatType::Fat32 {
            if bpb_root_clus < 2 || bpb_root_clus > max_cluster {
                return Err(CorruptKind::FatRootCluster.into());
            }
            bpb_root_clus
        } else {
            0
        };
        let total_bytes = total_sectors * bps;
        if total_bytes > device_len {
            return Err(CorruptKind::FatDeviceTooSmall.into());
        }
        let fat_start = u64::from(bpb_rsvd_sec_cnt) * bps;
        let root_start = fat_start + u64::from(bpb_num_fats) * fat_bytes;
        Ok(Geometry {
            fat_type,
            bytes_per_sector: u32::from(bpb_byts_per_sec),
            cluster_size: u32::from(bpb_byts_per_sec) * u32::from(bpb_sec_per_clus),
            fat_start,
            fat_bytes,
            root_start,
            root_bytes,
            data_start: first_data_sector * bps,
            cluster_count,
            root_cluster,
            total_bytes,
        })
    }
}

/// Whether `bs` (the first 512 bytes of a volume) looks like a FAT boot sector: the 0x55AA
/// signature, an x86 jump at byte 0, and "FAT" where FAT12/16 ("FAT12   ", "FAT16   ") or
/// FAT32 ("FAT32   ") boot sectors name their type. The BPB's fields are not looked at, so
/// a damaged BPB is reported as an error by [`Geometry::parse`], not taken for an unknown
/// volume. NTFS and exFAT boot sectors have no "FAT" at those places.
pub fn looks_like_fat(bs: &[u8]) -> bool {
    let signature = read_u8(bs, 510) == 0x55 && read_u8(bs, 511) == 0xAA;
    let jump = matches!(read_u8(bs, 0), 0xEB | 0xE9);
    let fat_at = |at: usize| bs.get(at..at + 3) == Some(b"FAT");
    signature && jump && (fat_at(54) || fat_at(82))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FAT16 boot sector: 512-byte sectors, 4 sectors per cluster, 1 reserved, 2 FATs of
    /// 40 sectors, 512 root entries, 40960 sectors.
    fn fat16() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0] = 0xEB;
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 4;
        b[14..16].copy_from_slice(&1u16.to_le_bytes());
        b[16] = 2;
        b[17..19].copy_from_slice(&512u16.to_le_bytes());
        b[19..21].copy_from_slice(&40960u16.to_le_bytes());
        b[21] = 0xF8;
        b[22..24].copy_from_slice(&40u16.to_le_bytes());
        b[54..62].copy_from_slice(b"FAT16   ");
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    fn err(b: &[u8], len: u64) -> CorruptKind {
        match Geometry::parse(b, len).unwrap_err() {
            GuestError::Corrupt(k) => k,
            e => panic!("{e}"),
        }
    }

    #[test]
    fn a_valid_fat16_boot_sector() {
        let g = Geometry::parse(&fat16(), 40960 * 512).unwrap();
        assert_eq!(g.fat_type, FatType::Fat16);
        assert_eq!(g.cluster_size, 2048);
        assert_eq!(g.root_start, 512 + 2 * 40 * 512);
        assert_eq!(g.data_start, g.root_start + 512 * 32);
        assert_eq!(
            u64::from(g.cluster_count),
            (40960 - 1 - 80 - 32) / 4,
            "data sectors / sectors per cluster"
        );
        assert!(looks_like_fat(&fat16()));
    }

    #[test]
    fn each_field_has_its_check() {
        let len = 40960 * 512;
        let cases: [(usize, &[u8], CorruptKind); 10] = [
            (11, &[0, 0], CorruptKind::FatBytesPerSector),
            (11, &[0x00, 0x03], CorruptKind::FatBytesPerSector),
            (11, &[0x00, 0x20], CorruptKind::FatBytesPerSector),
            (13, &[0], CorruptKind::FatSectorsPerCluster),
            (13, &[3], CorruptKind::FatSectorsPerCluster),
            (14, &[0, 0], CorruptKind::FatReservedSectors),
            (16, &[0], CorruptKind::FatCount),
            (21, &[0x12], CorruptKind::FatMedia),
            (17, &[1, 0], CorruptKind::FatRootEntries),
            (22, &[0, 0], CorruptKind::FatTableSize),
        ];
        for (at, bytes, kind) in cases {
            let mut b = fat16();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            assert_eq!(err(&b, len), kind, "field at {at}");
        }
        // Total sectors smaller than the reserved area, tables and root directory.
        let mut b = fat16();
        b[19..21].copy_from_slice(&50u16.to_le_bytes());
        assert_eq!(err(&b, len), CorruptKind::FatTotalSectors);
        // A table too small for the clusters.
        let mut b = fat16();
        b[22..24].copy_from_slice(&8u16.to_le_bytes());
        assert_eq!(err(&b, len), CorruptKind::FatTableSize);
        // A device shorter than the volume.
        assert_eq!(err(&fat16(), len - 512), CorruptKind::FatDeviceTooSmall);
    }

    #[test]
    fn the_cluster_count_decides_the_type() {
        // 1 sector per cluster: 40960 - 97 clusters, still FAT16; with 16 per cluster the
        // same volume has fewer than 4085 clusters: FAT12 (the table is larger than needed).
        let mut b = fat16();
        b[13] = 16;
        let g = Geometry::parse(&b, 40960 * 512).unwrap();
        assert_eq!(g.fat_type, FatType::Fat12);
        // A FAT32-sized cluster count with a FAT16 table size field is a contradiction.
        let mut b = fat16();
        b[13] = 1;
        b[19..21].copy_from_slice(&0u16.to_le_bytes());
        b[32..36].copy_from_slice(&200_000u32.to_le_bytes());
        b[22..24].copy_from_slice(&0xFFFFu16.to_le_bytes());
        b[17..19].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(err(&b, 200_000 * 512), CorruptKind::FatTypeMismatch);
    }
}
