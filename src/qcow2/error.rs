//! Every way a qcow2 image can fail validation, one variant per check.
//!
//! Each check in the parser returns exactly one of these, so a test can flip one field of a
//! valid image and assert the precise variant (see `tests/qcow2_validation.rs`). Messages name
//! the on-disk field in the spec's words so a user can match them against `qemu-img info`.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    #[error("file is too short for a qcow2 header ({len} bytes)")]
    HeaderTruncated { len: u64 },
    #[error("not a qcow2 image (bad magic)")]
    BadMagic,
    #[error("unsupported qcow2 version {0} (only 2 and 3 exist)")]
    UnsupportedVersion(u32),
    #[error("cluster_bits {0} is outside 9..=21")]
    ClusterBits(u32),
    #[error("header_length {0} is invalid (v3: at least 104, a multiple of 8, within the first cluster)")]
    HeaderLength(u32),
    #[error("unknown incompatible feature bits {0:#x}")]
    UnknownIncompatibleFeatures(u64),
    #[error("encrypted images are not supported (crypt_method {0})")]
    Encrypted(u32),
    #[error("unknown crypt_method {0}")]
    UnknownCryptMethod(u32),
    #[error("refcount_order {0} exceeds 6")]
    RefcountOrder(u32),
    #[error("extended L2 entries need cluster_bits >= 14, found {0}")]
    ExtendedL2ClusterBits(u32),
    #[error("compression_type {0} is not valid with the compression type feature bit as set")]
    CompressionType(u8),
    #[error("virtual size {0} exceeds the largest size a block device can have")]
    VirtualSizeTooLarge(u64),
    #[error("L1 table has {0} entries, more than the 32 MiB limit")]
    L1TooLarge(u32),
    #[error("L1 table has {l1_size} entries, too few for a virtual size of {size} bytes")]
    L1TooSmall { l1_size: u32, size: u64 },
    #[error("L1 table offset {0:#x} is not aligned to a cluster or the table ends past 2^63")]
    L1TableOffset(u64),
    #[error("backing_file_offset {0:#x} lies outside the first cluster")]
    BackingFileOffset(u64),
    #[error("backing_file_size {0} exceeds 1023 bytes")]
    BackingFileSize(u32),
    #[error("header extension at {offset:#x} overruns the header area")]
    ExtensionOverrun { offset: u64 },
    #[error("backing format extension is {0} bytes long (at most 15)")]
    BackingFormatTooLong(u32),
    #[error("external data file bit set but the image names no data file")]
    DataFileNameMissing,
    #[error("the number of snapshots ({0}) exceeds 65536")]
    TooManySnapshots(u32),
    #[error("snapshots_offset {0:#x} is not aligned to a cluster or the table ends past 2^63")]
    SnapshotTableOffset(u64),
    #[error("the snapshot table exceeds 64 MiB")]
    SnapshotTableTooLarge,
    #[error("snapshot {index}: extra_data_size {size} exceeds 1024 bytes")]
    SnapshotExtraData { index: u32, size: u32 },
    #[error("snapshot {index}: L1 table offset {offset:#x} is not aligned to a cluster or ends past 2^63")]
    SnapshotL1Offset { index: u32, offset: u64 },
    #[error("snapshot {index}: L1 table has {l1_size} entries, more than the 32 MiB limit")]
    SnapshotL1TooLarge { index: u32, l1_size: u32 },
    #[error("snapshot {index}: disk size {size} exceeds the largest size a block device can have")]
    SnapshotDiskSize { index: u32, size: u64 },
    #[error("internal snapshots are not allowed with an external data file")]
    SnapshotsWithDataFile,
    #[error("offset arithmetic overflows in {0}")]
    OffsetOverflow(&'static str),
    #[error("L2 table offset {0:#x} is not aligned to a cluster")]
    L2Unaligned(u64),
    #[error("data cluster offset {0:#x} is not aligned to a cluster")]
    DataClusterUnaligned(u64),
    #[error("external data file cluster offset {host:#x} does not match guest offset {guest:#x}")]
    DataFileOffsetMismatch { host: u64, guest: u64 },
    #[error("subcluster bitmap {0:#018x} marks a subcluster both allocated and zero")]
    InvalidSubclusterBitmap(u64),
    #[error("compressed cluster in an image with an external data file")]
    CompressedWithDataFile,
    #[error("compressed cluster at {0:#x} does not decompress to a full cluster")]
    Decompression(u64),
}
