//! Decoding L1 and L2 entries (qcow2.txt, "Cluster mapping" and "Extended L2 Entries") into
//! what a guest read must do. Pure functions over entry values, so every rule is unit-tested
//! without an image; the classification follows QEMU's `qcow2_get_subcluster_type`.

use super::error::FormatError;

/// Bits 9..=55 of an L1 entry or a standard L2 entry: the host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const OFLAG_COPIED: u64 = 1 << 63;
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
pub const OFLAG_ZERO: u64 = 1 << 0;
pub const SUBCLUSTERS_PER_CLUSTER: u32 = 32;
const BITMAP_ALL_ALLOC: u64 = 0xffff_ffff;
const COMPRESSED_SECTOR_SIZE: u64 = 512;

/// How the guest bytes from some offset onward are stored in one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Stored at `host_offset` in the image's data file (the image itself, or its external
    /// data file), contiguous for the run's length.
    Data { host_offset: u64 },
    /// Reads as zeros; does not fall through to the backing file.
    Zero,
    /// Not in this image: read the backing file (zeros when there is none).
    Unallocated,
    /// Part of a compressed cluster: decompress `compressed_len` bytes at `host_offset`, then
    /// take the bytes from `offset_in_cluster` on.
    Compressed {
        host_offset: u64,
        compressed_len: u64,
        offset_in_cluster: u64,
    },
}

/// A mapping and the number of guest bytes, from the queried offset, that it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedRun {
    pub len: u64,
    pub mapping: Mapping,
}

/// The fixed facts of an image's geometry that entry decoding needs.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub cluster_bits: u32,
    pub extended_l2: bool,
    pub has_data_file: bool,
}

impl Geometry {
    fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// x = 62 - (cluster_bits - 8): where the compressed sector count starts.
    fn csize_shift(&self) -> u32 {
        62 - (self.cluster_bits - 8)
    }
}

/// The L2 table offset named by an L1 entry, or None when that whole range is unallocated.
pub fn l2_table_offset(l1_entry: u64, geometry: &Geometry) -> Result<Option<u64>, FormatError> {
    let offset = l1_entry & OFFSET_MASK;
    if offset == 0 {
        return Ok(None);
    }
    if offset & (geometry.cluster_size() - 1) != 0 {
        return Err(FormatError::L2Unaligned(offset));
    }
    Ok(Some(offset))
}

/// Decodes the L2 entry (and, with extended L2, its subcluster bitmap) covering
/// `guest_offset`, returning the run from `guest_offset` to the end of the longest stretch of
/// the cluster with the same state.
pub fn decode(
    entry: u64,
    bitmap: u64,
    guest_offset: u64,
    geometry: &Geometry,
) -> Result<MappedRun, FormatError> {
    let cluster_size = geometry.cluster_size();
    let offset_in_cluster = guest_offset & (cluster_size - 1);
    let to_cluster_end = cluster_size - offset_in_cluster;

    if entry & OFLAG_COMPRESSED != 0 {
        if geometry.has_data_file {
            return Err(FormatError::CompressedWithDataFile);
        }
        let shift = geometry.csize_shift();
        let host_offset = entry & ((1u64 << shift) - 1);
        let csize_mask = (1u64 << (geometry.cluster_bits - 8)) - 1;
        let sectors = ((entry >> shift) & csize_mask) + 1;
        let compressed_len = sectors * COMPRESSED_SECTOR_SIZE - (host_offset & 511);
        return Ok(MappedRun {
            len: to_cluster_end,
            mapping: Mapping::Compressed {
                host_offset,
                compressed_len,
                offset_in_cluster,
            },
        });
    }

    let host_cluster = entry & OFFSET_MASK;
    // Offset 0 means unallocated, except in an external data file, where 0 is a real offset
    // and the COPIED flag (always set there) tells the two apart.
    let allocated = host_cluster != 0 || (geometry.has_data_file && entry & OFLAG_COPIED != 0);
    let check_host = || -> Result<(), FormatError> {
        if host_cluster & (cluster_size - 1) != 0 {
            return Err(FormatError::DataClusterUnaligned(host_cluster));
        }
        let guest_cluster = guest_offset - offset_in_cluster;
        if geometry.has_data_file && host_cluster != guest_cluster {
            return Err(FormatError::DataFileOffsetMismatch {
                host: host_cluster,
                guest: guest_cluster,
            });
        }
        Ok(())
    };
    let data = Mapping::Data {
        host_offset: host_cluster + offset_in_cluster,
    };

    if !geometry.extended_l2 {
        let mapping = if entry & OFLAG_ZERO != 0 {
            if host_cluster != 0 {
                check_host()?;
            }
            Mapping::Zero
        } else if allocated {
            check_host()?;
            data
        } else {
            Mapping::Unallocated
        };
        return Ok(MappedRun {
            len: to_cluster_end,
            mapping,
        });
    }

    // Extended L2: 32 subclusters, each allocated (bits 0..32), zero (bits 32..64) or neither.
    let alloc_bits = bitmap & BITMAP_ALL_ALLOC;
    let zero_bits = bitmap >> 32;
    if allocated {
        if alloc_bits & zero_bits != 0 {
            return Err(FormatError::InvalidSubclusterBitmap(bitmap));
        }
        check_host()?;
    } else if alloc_bits != 0 {
        return Err(FormatError::InvalidSubclusterBitmap(bitmap));
    }
    let subcluster_bits = geometry.cluster_bits - 5;
    let state = |sc: u64| -> u8 {
        if zero_bits & (1 << sc) != 0 {
            0
        } else if alloc_bits & (1 << sc) != 0 {
            1
        } else {
            2
        }
    };
    let first = offset_in_cluster >> subcluster_bits;
    let first_state = state(first);
    let mut end = first + 1;
    while end < u64::from(SUBCLUSTERS_PER_CLUSTER) && state(end) == first_state {
        end += 1;
    }
    let len = (end << subcluster_bits) - offset_in_cluster;
    let mapping = match first_state {
        0 => Mapping::Zero,
        1 => data,
        _ => Mapping::Unallocated,
    };
    Ok(MappedRun { len, mapping })
}

#[cfg(test)]
mod tests {
    use super::*;

    const G64K: Geometry = Geometry {
        cluster_bits: 16,
        extended_l2: false,
        has_data_file: false,
    };
    const G64K_EXT: Geometry = Geometry {
        cluster_bits: 16,
        extended_l2: true,
        has_data_file: false,
    };

    #[test]
    fn standard_entries() {
        let run = decode(0x5_0000 | OFLAG_COPIED, 0, 0x1_0010, &G64K).unwrap();
        assert_eq!(run.len, 0x1_0000 - 0x10);
        assert_eq!(
            run.mapping,
            Mapping::Data {
                host_offset: 0x5_0010
            }
        );
        assert_eq!(
            decode(0, 0, 0, &G64K).unwrap().mapping,
            Mapping::Unallocated
        );
        assert_eq!(
            decode(OFLAG_ZERO, 0, 0, &G64K).unwrap().mapping,
            Mapping::Zero
        );
        assert_eq!(
            decode(0x5_0000 | OFLAG_ZERO, 0, 0, &G64K).unwrap().mapping,
            Mapping::Zero
        );
    }

    #[test]
    fn unaligned_data_cluster_is_corrupt() {
        assert_eq!(
            decode(0x5_0200, 0, 0, &G64K).unwrap_err(),
            FormatError::DataClusterUnaligned(0x5_0200)
        );
    }

    #[test]
    fn unaligned_l2_table_is_corrupt() {
        assert_eq!(
            l2_table_offset(0x3_0200, &G64K).unwrap_err(),
            FormatError::L2Unaligned(0x3_0200)
        );
        assert_eq!(l2_table_offset(OFLAG_COPIED, &G64K).unwrap(), None);
    }

    #[test]
    fn compressed_descriptor_fields() {
        // cluster_bits 16: x = 54; offset in bits 0..54, additional sectors above.
        let entry = OFLAG_COMPRESSED | (3u64 << 54) | 0x12345;
        let run = decode(entry, 0, 0x100, &G64K).unwrap();
        assert_eq!(
            run.mapping,
            Mapping::Compressed {
                host_offset: 0x12345,
                compressed_len: 4 * 512 - 0x145,
                offset_in_cluster: 0x100
            }
        );
    }

    #[test]
    fn compressed_with_data_file_is_corrupt() {
        let g = Geometry {
            has_data_file: true,
            ..G64K
        };
        assert_eq!(
            decode(OFLAG_COMPRESSED, 0, 0, &g).unwrap_err(),
            FormatError::CompressedWithDataFile
        );
    }

    #[test]
    fn data_file_offset_zero_with_copied_is_allocated() {
        let g = Geometry {
            has_data_file: true,
            ..G64K
        };
        assert_eq!(
            decode(OFLAG_COPIED, 0, 0x20, &g).unwrap().mapping,
            Mapping::Data { host_offset: 0x20 }
        );
        assert_eq!(
            decode(0x2_0000 | OFLAG_COPIED, 0, 0, &g).unwrap_err(),
            FormatError::DataFileOffsetMismatch {
                host: 0x2_0000,
                guest: 0
            }
        );
    }

    #[test]
    fn subcluster_runs() {
        // Subclusters of 2 KiB: 0-1 allocated, 2 zero, 3.. unallocated.
        let bitmap = 0b11 | (0b100 << 32);
        let run = decode(0x7_0000, bitmap, 0x100, &G64K_EXT).unwrap();
        assert_eq!(run.len, 0x1000 - 0x100);
        assert_eq!(
            run.mapping,
            Mapping::Data {
                host_offset: 0x7_0100
            }
        );
        let run = decode(0x7_0000, bitmap, 0x1000, &G64K_EXT).unwrap();
        assert_eq!((run.len, run.mapping), (0x800, Mapping::Zero));
        let run = decode(0x7_0000, bitmap, 0x1800, &G64K_EXT).unwrap();
        assert_eq!(
            (run.len, run.mapping),
            (0x1_0000 - 0x1800, Mapping::Unallocated)
        );
        // Bit 0 of the entry is not a zero flag with extended L2.
        let run = decode(0x7_0000 | OFLAG_ZERO, 1, 0, &G64K_EXT).unwrap();
        assert_eq!(
            run.mapping,
            Mapping::Data {
                host_offset: 0x7_0000
            }
        );
    }

    #[test]
    fn invalid_subcluster_bitmaps() {
        let both = 1 | (1 << 32);
        assert_eq!(
            decode(0x7_0000, both, 0, &G64K_EXT).unwrap_err(),
            FormatError::InvalidSubclusterBitmap(both)
        );
        assert_eq!(
            decode(0, 1, 0, &G64K_EXT).unwrap_err(),
            FormatError::InvalidSubclusterBitmap(1)
        );
        // Unallocated cluster with zero bits: reads as zeros.
        let run = decode(0, 1 << 32, 0, &G64K_EXT).unwrap();
        assert_eq!((run.len, run.mapping), (0x800, Mapping::Zero));
    }
}
