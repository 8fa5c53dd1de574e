//! The NTFS boot sector: sector and cluster size, where the MFT is, the size of an MFT record
//! and of an index block, and the volume's length.
//!
//! Field offsets and names are those of the NTFS boot sector as Linux's ntfs3 and ntfs-3g
//! (`layout.h`, `NTFS_BOOT_SECTOR`) name them. Each field used for addressing is checked with
//! its own [`CorruptKind`]; the volume must fit on its device, so a truncated image is an
//! error instead of files reading as zeros.

use super::super::bytes::{read_u16le, read_u64le, read_u8};
use super::super::{CorruptKind, GuestError};

/// Bytes read for the boot sector.
pub const BOOT_SECTOR_SIZE: usize = 512;
/// The largest cluster Windows formats (2 MiB, since Windows 10 1709).
pub const MAX_CLUSTER_SIZE: u64 = 2 << 20;
/// Records and index blocks: 256 bytes to 64 KiB (Windows uses 1 KiB or 4 KiB and 4 KiB).
const MIN_RECORD_SIZE: u64 = 256;
const MAX_RECORD_SIZE: u64 = 64 << 10;

/// Where everything is, in bytes and clusters.
#[derive(Debug, Clone)]
pub struct Geometry {
    pub bytes_per_sector: u32,
    pub cluster_size: u64,
    /// Clusters on the volume: valid LCNs are below this.
    pub total_clusters: u64,
    /// The volume's length as the boot sector gives it (`total_sectors * bytes_per_sector`).
    pub total_bytes: u64,
    /// LCN of the first cluster of $MFT.
    pub mft_lcn: u64,
    pub record_size: u32,
    pub index_block_size: u32,
    pub serial: u64,
}

/// Whether the first sector looks like an NTFS boot sector: the OEM id "NTFS    " at 3 and
/// the 0xAA55 end marker (what blkid and ntfs-3g look for first).
pub fn looks_like_ntfs(bs: &[u8]) -> bool {
    bs.get(3..11) == Some(b"NTFS    ") && read_u16le(bs, 0x1FE) == 0xAA55
}

/// A size given as "clusters per ..." (positive) or as a power of two in bytes (negative,
/// `2^-value`), as `clusters_per_mft_record` and `clusters_per_index_record` are.
fn clusters_or_shift(value: u8, cluster_size: u64) -> Option<u64> {
    let v = value as i8;
    if v > 0 {
        u64::from(v.unsigned_abs()).checked_mul(cluster_size)
    } else {
        let shift = u32::from(v.unsigned_abs());
        (shift < 32).then(|| 1u64 << shift)
    }
}

impl Geometry {
    /// Parses and checks the boot sector of a volume of `device_len` bytes.
    pub fn parse(bs: &[u8], device_len: u64) -> Result<Geometry, GuestError> {
        if !looks_like_ntfs(bs) {
            return Err(CorruptKind::NtfsBootSignature.into());
        }
        let bytes_per_sector = read_u16le(bs, 0x0B);
        let sectors_per_cluster = read_u8(bs, 0x0D);
        let total_sectors = read_u64le(bs, 0x28);
        let mft_lcn = read_u64le(bs, 0x30);
        let clusters_per_mft_record = read_u8(bs, 0x40);
        let clusters_per_index_record = read_u8(bs, 0x44);
        let serial = read_u64le(bs, 0x48);

        if !bytes_per_sector.is_power_of_two() || !(256..=4096).contains(&bytes_per_sector) {
            return Err(CorruptKind::NtfsBytesPerSector.into());
        }
        let bps = u64::from(bytes_per_sector);
        // Values above 0x80 are a negative power of two: 2^(256 - value) sectors.
        let spc: u64 = if sectors_per_cluster <= 0x80 {
            u64::from(sectors_per_cluster)
        } else {
            let shift = 256 - u32::from(sectors_per_cluster);
            if shift >= 32 {
                return Err(CorruptKind::NtfsClusterSize.into());
            }
            1 << shift
        };
        let cluster_size = spc.checked_mul(bps).unwrap_or(0);
        if !spc.is_power_of_two() || cluster_size == 0 || cluster_size > MAX_CLUSTER_SIZE {
            return Err(CorruptKind::NtfsClusterSize.into());
        }
        let record_size = clusters_or_shift(clusters_per_mft_record, cluster_size).unwrap_or(0);
        if !record_size.is_power_of_two()
            || !(MIN_RECORD_SIZE..=MAX_RECORD_SIZE).contains(&record_size)
        {
            return Err(CorruptKind::NtfsRecordSize.into());
        }
        let index_block_size =
            clusters_or_shift(clusters_per_index_record, cluster_size).unwrap_or(0);
        if !index_block_size.is_power_of_two()
            || !(MIN_RECORD_SIZE..=MAX_RECORD_SIZE).contains(&index_block_size)
        {
            return Err(CorruptKind::NtfsIndexBlockSize.into());
        }
        let total_bytes = total_sectors
            .checked_mul(bps)
            .ok_or(CorruptKind::NtfsTotalSectors)?;
        if total_sectors == 0 || total_bytes > device_len {
            return Err(CorruptKind::NtfsTotalSectors.into());
        }
        let total_clusters = total_bytes / cluster_size;
        // The MFT's first record must lie within the volume.
        let mft_end = mft_lcn
            .checked_mul(cluster_size)
            .and_then(|b| b.checked_add(record_size));
        if mft_lcn == 0 || mft_end.is_none_or(|end| end > total_bytes) {
            return Err(CorruptKind::NtfsMftLocation.into());
        }
        Ok(Geometry {
            bytes_per_sector: u32::from(bytes_per_sector),
            cluster_size,
            total_clusters,
            total_bytes,
            mft_lcn,
            // Both at most 64 KiB, checked above.
            record_size: record_size as u32,
            index_block_size: index_block_size as u32,
            serial,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> Vec<u8> {
        let mut bs = vec![0u8; 512];
        bs[3..11].copy_from_slice(b"NTFS    ");
        bs[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
        bs[0x0D] = 8;
        bs[0x28..0x30].copy_from_slice(&131071u64.to_le_bytes());
        bs[0x30..0x38].copy_from_slice(&4u64.to_le_bytes());
        bs[0x40] = 0xF6; // 2^10
        bs[0x44] = 1;
        bs[0x1FE..].copy_from_slice(&0xAA55u16.to_le_bytes());
        bs
    }

    fn err(bs: &[u8]) -> CorruptKind {
        match Geometry::parse(bs, 64 << 20).unwrap_err() {
            GuestError::Corrupt(k) => k,
            e => panic!("{e}"),
        }
    }

    #[test]
    fn parses_a_typical_boot_sector() {
        let g = Geometry::parse(&boot(), 64 << 20).unwrap();
        assert_eq!(g.cluster_size, 4096);
        assert_eq!(g.record_size, 1024);
        assert_eq!(g.index_block_size, 4096);
        assert_eq!(g.total_clusters, 131071 * 512 / 4096);
    }

    #[test]
    fn each_field_has_its_check() {
        let mut bs = boot();
        bs[3] = b'X';
        assert_eq!(err(&bs), CorruptKind::NtfsBootSignature);
        let mut bs = boot();
        bs[0x0B..0x0D].copy_from_slice(&500u16.to_le_bytes());
        assert_eq!(err(&bs), CorruptKind::NtfsBytesPerSector);
        let mut bs = boot();
        bs[0x0D] = 3;
        assert_eq!(err(&bs), CorruptKind::NtfsClusterSize);
        let mut bs = boot();
        bs[0x0D] = 0xE0; // 2^32 sectors
        assert_eq!(err(&bs), CorruptKind::NtfsClusterSize);
        let mut bs = boot();
        bs[0x40] = 0x80; // 2^128 bytes
        assert_eq!(err(&bs), CorruptKind::NtfsRecordSize);
        let mut bs = boot();
        bs[0x40] = 100; // 100 clusters
        assert_eq!(err(&bs), CorruptKind::NtfsRecordSize);
        let mut bs = boot();
        bs[0x44] = 0;
        assert_eq!(err(&bs), CorruptKind::NtfsIndexBlockSize);
        let mut bs = boot();
        bs[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(err(&bs), CorruptKind::NtfsTotalSectors);
        let mut bs = boot();
        bs[0x30..0x38].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert_eq!(err(&bs), CorruptKind::NtfsMftLocation);
    }
}
