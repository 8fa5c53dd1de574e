//! The qcow2 header (QEMU `docs/interop/qcow2.txt`, "Header"): big-endian fields at fixed
//! offsets, validated in the order QEMU validates them so the first error reported is the one
//! QEMU would report.

use super::error::FormatError;

pub const QCOW2_MAGIC: u32 = 0x5146_49fb;
pub const V2_HEADER_LENGTH: u32 = 72;
pub const V3_MIN_HEADER_LENGTH: u32 = 104;
/// Bytes read to parse the fixed header: v3's 104 plus the compression_type byte and padding.
pub const FIXED_HEADER_READ: usize = 112;

pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
pub const MIN_EXTENDED_L2_CLUSTER_BITS: u32 = 14;
pub const MAX_REFCOUNT_ORDER: u32 = 6;
/// QEMU's QCOW_MAX_L1_SIZE: 32 MiB of 8-byte entries.
pub const MAX_L1_ENTRIES: u32 = (32 << 20) / 8;
/// QEMU's QCOW_MAX_SNAPSHOTS.
pub const MAX_SNAPSHOTS: u32 = 65_536;
pub const MAX_BACKING_FILE_NAME: u32 = 1023;
/// QEMU's BDRV_MAX_LENGTH: INT64_MAX aligned down to a 4 KiB page.
pub const MAX_VIRTUAL_SIZE: u64 = 0x7fff_ffff_ffff_f000;

pub const CRYPT_NONE: u32 = 0;
pub const CRYPT_AES: u32 = 1;
pub const CRYPT_LUKS: u32 = 2;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

pub const COMPRESSION_DEFLATE: u8 = 0;
pub const COMPRESSION_ZSTD: u8 = 1;

/// Reads a big-endian u32 at `offset`; callers guarantee `bytes` is long enough (the fixed
/// header buffer), and a short slice reads as zeros rather than panicking.
pub(crate) fn be_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut raw = [0u8; 4];
    if let Some(s) = offset.checked_add(4).and_then(|end| bytes.get(offset..end)) {
        raw.copy_from_slice(s);
    }
    u32::from_be_bytes(raw)
}

pub(crate) fn be_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut raw = [0u8; 8];
    if let Some(s) = offset.checked_add(8).and_then(|end| bytes.get(offset..end)) {
        raw.copy_from_slice(s);
    }
    u64::from_be_bytes(raw)
}

pub(crate) fn be_u16(bytes: &[u8], offset: usize) -> u16 {
    let mut raw = [0u8; 2];
    if let Some(s) = offset.checked_add(2).and_then(|end| bytes.get(offset..end)) {
        raw.copy_from_slice(s);
    }
    u16::from_be_bytes(raw)
}

/// QEMU's validate_table_offset: cluster-aligned, and the whole table (`entries` of
/// `entry_len` bytes) ends below 2^63 (offsets are passed around as signed 64-bit values).
pub(crate) fn valid_table_offset(
    offset: u64,
    entries: u32,
    entry_len: u64,
    cluster_size: u64,
) -> bool {
    let table_len = u64::from(entries) * entry_len;
    offset & (cluster_size - 1) == 0 && offset <= (i64::MAX as u64) - table_len
}

/// The backing file fields of an image, read without validating anything else: what an image
/// too damaged for [`Header::parse`] still names (a repair keeps that name, so what the image
/// holds still depends on that file). Every version, qcow v1 included, keeps them at the same
/// place: magic (0), backing_file_offset (8), backing_file_size (16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingFields {
    /// Not a qcow2 header: another magic, or fewer than 4 bytes.
    NotQcow2,
    /// The magic is qcow2's, but the file ends before the backing file fields.
    Truncated,
    /// No backing file (offset 0, or an empty name, which QEMU reads as none).
    None,
    /// The backing file name: `size` bytes at `offset`.
    Name { offset: u64, size: u32 },
}

impl BackingFields {
    /// Reads the fields from `bytes`, the file's first bytes as far as they exist (at least 20
    /// when the file is that long; not zero-filled).
    pub fn read(bytes: &[u8]) -> BackingFields {
        if bytes.len() < 4 || be_u32(bytes, 0) != QCOW2_MAGIC {
            return BackingFields::NotQcow2;
        }
        if bytes.len() < 20 {
            return BackingFields::Truncated;
        }
        match (be_u64(bytes, 8), be_u32(bytes, 16)) {
            (0, _) | (_, 0) => BackingFields::None,
            (offset, size) => BackingFields::Name { offset, size },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: u8,
}

impl Header {
    /// Parses and validates the fixed header. `bytes` holds the first [`FIXED_HEADER_READ`]
    /// bytes of the image (zero-filled past its end); `file_len` is the image file's length.
    pub fn parse(bytes: &[u8], file_len: u64) -> Result<Header, FormatError> {
        if file_len < u64::from(V2_HEADER_LENGTH) {
            return Err(FormatError::HeaderTruncated { len: file_len });
        }
        if be_u32(bytes, 0) != QCOW2_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = be_u32(bytes, 4);
        if !(2..=3).contains(&version) {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let cluster_bits = be_u32(bytes, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(FormatError::ClusterBits(cluster_bits));
        }
        let cluster_size = 1u64 << cluster_bits;

        let mut header = Header {
            version,
            backing_file_offset: be_u64(bytes, 8),
            backing_file_size: be_u32(bytes, 16),
            cluster_bits,
            size: be_u64(bytes, 24),
            crypt_method: be_u32(bytes, 32),
            l1_size: be_u32(bytes, 36),
            l1_table_offset: be_u64(bytes, 40),
            refcount_table_offset: be_u64(bytes, 48),
            refcount_table_clusters: be_u32(bytes, 56),
            nb_snapshots: be_u32(bytes, 60),
            snapshots_offset: be_u64(bytes, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LENGTH,
            compression_type: COMPRESSION_DEFLATE,
        };

        if version == 3 {
            if file_len < u64::from(V3_MIN_HEADER_LENGTH) {
                return Err(FormatError::HeaderTruncated { len: file_len });
            }
            header.incompatible_features = be_u64(bytes, 72);
            header.compatible_features = be_u64(bytes, 80);
            header.autoclear_features = be_u64(bytes, 88);
            header.refcount_order = be_u32(bytes, 96);
            header.header_length = be_u32(bytes, 100);
            if header.header_length < V3_MIN_HEADER_LENGTH {
                return Err(FormatError::HeaderLength(header.header_length));
            }
            // The compression_type byte exists only when the header is long enough for it.
            if header.header_length > V3_MIN_HEADER_LENGTH {
                header.compression_type = bytes.get(104).copied().unwrap_or(0);
            }
        }
        if u64::from(header.header_length) > cluster_size {
            return Err(FormatError::HeaderLength(header.header_length));
        }
        if header.backing_file_offset > cluster_size {
            return Err(FormatError::BackingFileOffset(header.backing_file_offset));
        }
        let unknown = header.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(FormatError::UnknownIncompatibleFeatures(unknown));
        }
        if header.refcount_order > MAX_REFCOUNT_ORDER {
            return Err(FormatError::RefcountOrder(header.refcount_order));
        }
        let compression_bit = header.incompatible_features & INCOMPAT_COMPRESSION != 0;
        let type_known = matches!(
            header.compression_type,
            COMPRESSION_DEFLATE | COMPRESSION_ZSTD
        );
        if !type_known || compression_bit != (header.compression_type != COMPRESSION_DEFLATE) {
            return Err(FormatError::CompressionType(header.compression_type));
        }
        match header.crypt_method {
            CRYPT_NONE => {}
            CRYPT_AES | CRYPT_LUKS => return Err(FormatError::Encrypted(header.crypt_method)),
            other => return Err(FormatError::UnknownCryptMethod(other)),
        }
        if header.extended_l2() && cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS {
            return Err(FormatError::ExtendedL2ClusterBits(cluster_bits));
        }
        if header.size > MAX_VIRTUAL_SIZE {
            return Err(FormatError::VirtualSizeTooLarge(header.size));
        }
        if header.l1_size > MAX_L1_ENTRIES {
            return Err(FormatError::L1TooLarge(header.l1_size));
        }
        if header.required_l1_entries(header.size) > u64::from(header.l1_size) {
            return Err(FormatError::L1TooSmall {
                l1_size: header.l1_size,
                size: header.size,
            });
        }
        if !valid_table_offset(header.l1_table_offset, header.l1_size, 8, cluster_size) {
            return Err(FormatError::L1TableOffset(header.l1_table_offset));
        }
        if header.nb_snapshots > MAX_SNAPSHOTS {
            return Err(FormatError::TooManySnapshots(header.nb_snapshots));
        }
        if !valid_table_offset(
            header.snapshots_offset,
            header.nb_snapshots,
            40,
            cluster_size,
        ) {
            return Err(FormatError::SnapshotTableOffset(header.snapshots_offset));
        }
        if header.backing_file_offset != 0 && header.backing_file_size > MAX_BACKING_FILE_NAME {
            return Err(FormatError::BackingFileSize(header.backing_file_size));
        }
        if header.has_data_file() && header.nb_snapshots != 0 {
            return Err(FormatError::SnapshotsWithDataFile);
        }
        Ok(header)
    }

    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    pub fn has_data_file(&self) -> bool {
        self.incompatible_features & INCOMPAT_DATA_FILE != 0
    }

    pub fn data_file_raw(&self) -> bool {
        self.has_data_file() && self.autoclear_features & AUTOCLEAR_DATA_FILE_RAW != 0
    }

    /// log2 of the number of entries in one L2 table (an L2 table is one cluster).
    pub fn l2_bits(&self) -> u32 {
        if self.extended_l2() {
            self.cluster_bits - 4
        } else {
            self.cluster_bits - 3
        }
    }

    /// L1 entries needed to map `size` guest bytes (QEMU's size_to_l1).
    pub fn required_l1_entries(&self, size: u64) -> u64 {
        let shift = self.cluster_bits + self.l2_bits();
        size.div_ceil(1u64 << shift)
    }
}
