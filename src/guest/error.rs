//! The one error type of the guest-filesystem layer.
//!
//! Every validation of untrusted bytes has its own [`CorruptKind`], so a test can flip one field
//! and assert the exact check that caught it, and the log names the reason. Callers map
//! [`GuestError::Corrupt`] and [`GuestError::Io`] to EIO, [`GuestError::Unsupported`] to
//! EOPNOTSUPP, and the three wrong-kind variants to ENOTDIR, EINVAL and EISDIR.

use std::io;

/// What went wrong while reading a guest filesystem or partition table.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The bytes on the disk break a rule of the format.
    #[error("corrupt: {0}")]
    Corrupt(#[from] CorruptKind),
    /// The disk itself could not be read.
    #[error("I/O error reading the disk: {0}")]
    Io(#[from] io::Error),
    /// A feature that virtsnapfs does not read (named in the message).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A directory operation on something that is not a directory.
    #[error("not a directory")]
    NotADirectory,
    /// `read_link` on something that is not a symbolic link.
    #[error("not a symbolic link")]
    NotASymlink,
    /// `read` or `next_data` on something that is not a regular file.
    #[error("not a regular file")]
    NotAFile,
}

impl GuestError {
    /// True for the errors that say the bytes are bad (EIO), as opposed to unsupported
    /// features and wrong-kind requests.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, GuestError::Corrupt(_))
    }
}

/// One variant per check made on untrusted bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CorruptKind {
    // Partition tables.
    #[error("MBR partition extends past the end of the disk")]
    MbrPartitionRange,
    #[error("chain of extended boot records loops or is too long")]
    EbrChain,
    #[error("GPT header size is invalid")]
    GptHeaderSize,
    #[error("GPT header checksum mismatch")]
    GptHeaderChecksum,
    #[error("GPT partition entry array is invalid (size or location)")]
    GptEntryArray,
    #[error("GPT partition entry array checksum mismatch")]
    GptEntriesChecksum,
    #[error("GPT partition extends past the end of the disk")]
    GptPartitionRange,

    // LVM2 physical volumes and their metadata.
    #[error("LVM label checksum mismatch")]
    LvmLabelChecksum,
    #[error("LVM label sector number or header offset is invalid")]
    LvmLabelSector,
    #[error("LVM PV header area lists are malformed")]
    LvmPvHeader,
    #[error("LVM metadata area header checksum mismatch")]
    LvmMdaHeaderChecksum,
    #[error("LVM metadata area header is invalid (magic, version, start or size)")]
    LvmMdaHeader,
    #[error("LVM metadata location lies outside its metadata area")]
    LvmRawLocation,
    #[error("LVM metadata text is larger than 4 MiB")]
    LvmMetadataSize,
    #[error("LVM metadata text checksum mismatch")]
    LvmMetadataChecksum,
    #[error("LVM metadata text has a syntax error")]
    LvmTextSyntax,
    #[error("LVM metadata text nests sections too deeply")]
    LvmTextDepth,
    #[error("LVM metadata text has too many items")]
    LvmTextTooLarge,
    #[error("LVM metadata text has an unterminated string")]
    LvmTextString,
    #[error("LVM metadata text has an integer out of range")]
    LvmTextNumber,
    #[error("LVM metadata has no single volume group section")]
    LvmVgSection,
    #[error("LVM volume group id, seqno or physical_volumes is missing or invalid")]
    LvmVgField,
    #[error("LVM volume group extent size is zero or too large")]
    LvmExtentSize,
    #[error("LVM physical volume entry is invalid (id, pe_start or pe_count)")]
    LvmPvEntry,
    #[error("LVM volume group or logical volume name is invalid or repeated")]
    LvmName,
    #[error("LVM volume group has too many PVs, LVs or segments")]
    LvmTooMany,
    #[error("LVM segment is invalid (extents, stripe count or stripe list)")]
    LvmSegment,
    #[error("LVM segments of a logical volume leave a gap or overlap")]
    LvmSegmentOrder,
    #[error("LVM stripe size is zero or does not divide the stripe length")]
    LvmStripeSize,
    #[error("LVM segment maps extents past the end of its physical volume")]
    LvmExtentRange,
    #[error("LVM extents are mapped by two logical volumes or segments")]
    LvmExtentOverlap,

    // ext2/3/4 superblock.
    #[error("ext4 superblock magic is wrong")]
    SuperblockMagic,
    #[error("ext4 superblock checksum mismatch")]
    SuperblockChecksum,
    #[error("ext4 superblock names an unknown checksum type")]
    SuperblockChecksumType,
    #[error("ext4 block size (s_log_block_size) is out of range")]
    BlockSize,
    #[error("ext4 s_blocks_per_group is out of range")]
    BlocksPerGroup,
    #[error("ext4 s_inodes_per_group is out of range")]
    InodesPerGroup,
    #[error("ext4 s_inode_size is invalid")]
    InodeSize,
    #[error("ext4 s_first_data_block is invalid")]
    FirstDataBlock,
    #[error("ext4 block count is zero or too large")]
    BlocksCount,
    #[error("ext4 s_inodes_count does not match groups * inodes per group")]
    InodesCount,
    #[error("ext4 s_desc_size is invalid")]
    DescSize,
    #[error("ext4 s_first_ino is invalid")]
    FirstIno,
    #[error("ext4 s_first_meta_bg is past the group descriptors")]
    FirstMetaBg,
    #[error("ext4 filesystem is larger than its device")]
    DeviceTooSmall,

    // Group descriptors.
    #[error("ext4 group descriptor checksum mismatch")]
    GroupDescChecksum,
    #[error("ext4 group descriptor's inode table is outside the filesystem")]
    InodeTableLocation,

    // Inodes.
    #[error("ext4 inode number out of range")]
    InodeNumber,
    #[error("ext4 inode checksum mismatch")]
    InodeChecksum,
    #[error("ext4 inode i_extra_isize is invalid")]
    ExtraIsize,
    #[error("ext4 inode is not in use (no links)")]
    UnallocatedInode,
    #[error("ext4 inode has an invalid file type in i_mode")]
    InodeFileType,
    #[error("ext4 inode size is too large")]
    FileSize,

    // Block maps.
    #[error("ext4 extent header magic is wrong")]
    ExtentMagic,
    #[error("ext4 extent header entry count exceeds its maximum or node size")]
    ExtentEntries,
    #[error("ext4 extent tree depth is wrong (loop or too deep)")]
    ExtentDepth,
    #[error("ext4 extent entries are out of order or overlap")]
    ExtentOrder,
    #[error("ext4 extent points outside the filesystem")]
    ExtentRange,
    #[error("ext4 extent has zero length")]
    ExtentLength,
    #[error("ext4 extent block checksum mismatch")]
    ExtentChecksum,
    #[error("ext4 block map points outside the filesystem")]
    BlockMapRange,

    // Directories.
    #[error("ext4 directory entry rec_len is invalid")]
    DirentRecLen,
    #[error("ext4 directory entry name is longer than its record")]
    DirentNameLen,
    #[error("ext4 directory entry points at an inode out of range")]
    DirentInode,
    #[error("ext4 directory block checksum mismatch")]
    DirBlockChecksum,
    #[error("ext4 directory leaf block has no checksum tail")]
    DirBlockNoTail,
    #[error("ext4 directory is too large")]
    DirectoryTooLarge,
    #[error("ext4 directory has too many entries")]
    TooManyEntries,
    #[error("directory contains one of its own ancestors")]
    DirectoryLoop,
    #[error("directory tree deeper than the walk allows")]
    TreeTooDeep,

    // Symlinks and inline data.
    #[error("ext4 symlink length is invalid")]
    SymlinkSize,
    #[error("ext4 inline data is invalid")]
    InlineData,

    // Extended attributes.
    #[error("ext4 extended attribute header magic is wrong")]
    XattrMagic,
    #[error("ext4 extended attribute entry is invalid")]
    XattrEntry,
    #[error("ext4 extended attribute value lies outside its area")]
    XattrValue,
    #[error("ext4 extended attribute block checksum mismatch")]
    XattrChecksum,
    #[error("ext4 extended attribute block is outside the filesystem")]
    XattrBlock,
    #[error("ext4 POSIX ACL attribute is malformed")]
    XattrAcl,

    // JBD2 journal.
    #[error("journal inode is invalid")]
    JournalInode,
    #[error("journal is longer than 10,240,000 blocks (more than mke2fs makes)")]
    JournalTooLong,
    #[error("journal superblock magic or type is wrong")]
    JournalSuperblock,
    #[error("journal superblock checksum mismatch")]
    JournalSuperblockChecksum,
    #[error("journal block size differs from the filesystem's")]
    JournalBlockSize,
    #[error("journal geometry (s_first, s_maxlen, s_start) is invalid")]
    JournalGeometry,
    #[error("journal has unknown incompatible features")]
    JournalFeatures,
    #[error("journal block tag names a block outside the filesystem")]
    JournalTagBlock,
    #[error("journal revoke block is malformed")]
    JournalRevoke,

    // XFS log (in-memory recovery of the internal log).
    #[error("XFS superblock log fields are invalid (magic, geometry or log outside the device)")]
    XfsLogGeometry,
    #[error("XFS log record header is invalid (magic, version or format)")]
    XfsLogRecordHeader,
    #[error("XFS log record length or iclog size is out of range")]
    XfsLogRecordLength,
    #[error("XFS log cycle numbers are inconsistent")]
    XfsLogCycle,
    #[error("XFS log record checksum mismatch")]
    XfsLogRecordCrc,
    #[error("XFS log tail is outside the log or after the head")]
    XfsLogTail,
    #[error("XFS log record belongs to another filesystem (uuid mismatch)")]
    XfsLogUuid,
    #[error("XFS log operation header is invalid or runs past its record")]
    XfsLogOpHeader,
    #[error("XFS log transaction header is invalid")]
    XfsLogTransHeader,
    #[error("XFS log item has an invalid number of regions")]
    XfsLogItemRegions,
    #[error("XFS log item format is malformed")]
    XfsLogItem,
    #[error("XFS log buffer item lies outside the device or is too long")]
    XfsLogBufferRange,
    #[error("XFS log inode item is invalid or does not point at an inode")]
    XfsLogInodeItem,
    #[error("XFS log inode create item is invalid")]
    XfsLogIcreate,
    #[error("XFS log holds too many transactions or bytes in flight")]
    XfsLogTooLarge,

    // FAT12/16/32 (boot sector, allocation table, cluster chains, directories).
    #[error("FAT bytes per sector is not a power of two from 512 to 4096")]
    FatBytesPerSector,
    #[error("FAT sectors per cluster is not a power of two")]
    FatSectorsPerCluster,
    #[error("FAT reserved sector count is zero")]
    FatReservedSectors,
    #[error("FAT count (number of allocation tables) is zero")]
    FatCount,
    #[error("FAT media descriptor byte is invalid")]
    FatMedia,
    #[error("FAT root directory entry count is invalid")]
    FatRootEntries,
    #[error("FAT allocation table size is zero or too small for the clusters")]
    FatTableSize,
    #[error("FAT total sector count is zero or smaller than the reserved area, tables and root")]
    FatTotalSectors,
    #[error("FAT cluster count is zero or more than FAT32 can address")]
    FatClusterCount,
    #[error("FAT boot sector fields disagree with the type its cluster count gives")]
    FatTypeMismatch,
    #[error("FAT32 root directory cluster is out of range")]
    FatRootCluster,
    #[error("FAT filesystem is larger than its device")]
    FatDeviceTooSmall,
    #[error("FAT cluster chain points past the last cluster of the volume")]
    FatClusterRange,
    #[error("FAT cluster chain reaches a free cluster")]
    FatChainFree,
    #[error("FAT cluster chain reaches a bad cluster")]
    FatChainBad,
    #[error("FAT cluster chain reaches a reserved cluster value")]
    FatChainReserved,
    #[error("FAT cluster chain loops (longer than the volume's cluster count)")]
    FatChainLoop,
    #[error("FAT cluster chain is shorter than the file's size")]
    FatChainShort,
    #[error("FAT directory is larger than 65536 entries (2 MiB)")]
    FatDirTooLarge,
    #[error("FAT directory's `..` does not lead to an entry naming it")]
    FatDirParent,
    #[error("FAT inode number does not name a live directory entry")]
    FatInodeNumber,

    // XFS (superblock, inodes, block maps, directories, symlinks, extended attributes).
    #[error("XFS superblock magic is wrong")]
    XfsSuperblockMagic,
    #[error("XFS superblock checksum mismatch")]
    XfsSuperblockChecksum,
    #[error("XFS superblock version is neither 4 (with v2 directories) nor 5")]
    XfsVersion,
    #[error("XFS block, sector or inode size is invalid or inconsistent")]
    XfsGeometrySizes,
    #[error("XFS allocation group geometry (agblocks, agcount, agblklog, dblocks) is invalid")]
    XfsAgGeometry,
    #[error("XFS directory block size (sb_dirblklog) is too large")]
    XfsDirBlockSize,
    #[error("XFS filesystem is larger than its device")]
    XfsDeviceTooSmall,
    #[error("XFS inode number is out of range")]
    XfsInodeNumber,
    #[error("XFS inode magic is wrong")]
    XfsInodeMagic,
    #[error("XFS inode checksum mismatch")]
    XfsInodeChecksum,
    #[error("XFS inode version is wrong or does not match the filesystem")]
    XfsInodeVersion,
    #[error("XFS inode records another inode number")]
    XfsInodeOwner,
    #[error("XFS inode is not in use (mode or link count zero)")]
    XfsInodeUnallocated,
    #[error("XFS inode has an invalid file type in di_mode")]
    XfsInodeFileType,
    #[error("XFS inode fork offset or format is invalid")]
    XfsInodeFork,
    #[error("XFS inode size is too large")]
    XfsFileSize,
    #[error("XFS extent count is larger than its fork can hold")]
    XfsExtentCount,
    #[error("XFS extent points outside the filesystem")]
    XfsExtentRange,
    #[error("XFS extents are out of order or overlap")]
    XfsExtentOrder,
    #[error("XFS extent has zero length")]
    XfsExtentLength,
    #[error("XFS block map btree block magic is wrong")]
    XfsBmbtMagic,
    #[error("XFS block map btree block checksum mismatch")]
    XfsBmbtChecksum,
    #[error("XFS block map btree level is wrong (loop or too deep)")]
    XfsBmbtLevel,
    #[error("XFS block map btree record count exceeds what its block holds")]
    XfsBmbtRecords,
    #[error("XFS metadata block names another block or owner (v5 header)")]
    XfsBlockOwner,
    #[error("XFS directory block magic is wrong")]
    XfsDirMagic,
    #[error("XFS directory block checksum mismatch")]
    XfsDirChecksum,
    #[error("XFS directory entry is invalid (length, name or tag)")]
    XfsDirEntry,
    #[error("XFS short-form directory is invalid")]
    XfsDirShortForm,
    #[error("XFS directory is too large or has too many entries")]
    XfsDirTooLarge,
    #[error("XFS directory lookup structure (leaf or node block) is invalid")]
    XfsDirLeaf,
    #[error("XFS symbolic link length is invalid")]
    XfsSymlinkSize,
    #[error("XFS remote symbolic link block header is invalid")]
    XfsSymlinkHeader,
    #[error("XFS short-form attribute fork is invalid")]
    XfsAttrShortForm,
    #[error("XFS attribute block magic is wrong")]
    XfsAttrMagic,
    #[error("XFS attribute block checksum mismatch")]
    XfsAttrChecksum,
    #[error("XFS attribute leaf entry is invalid")]
    XfsAttrEntry,
    #[error("XFS remote attribute value is invalid (blocks, header or length)")]
    XfsAttrRemote,
    #[error("XFS attribute tree is too deep, loops or has too many entries")]
    XfsAttrTree,
    #[error("XFS POSIX ACL attribute is malformed")]
    XfsAcl,

    // NTFS (boot sector, MFT records, attributes, run lists, indexes, compression).
    #[error("NTFS boot sector signature or OEM id is wrong")]
    NtfsBootSignature,
    #[error("NTFS bytes per sector is not a power of two from 256 to 4096")]
    NtfsBytesPerSector,
    #[error("NTFS cluster size is not a power of two up to 2 MiB")]
    NtfsClusterSize,
    #[error("NTFS MFT record size is not a power of two from 256 to 64 KiB")]
    NtfsRecordSize,
    #[error("NTFS index block size is not a power of two from 256 to 64 KiB")]
    NtfsIndexBlockSize,
    #[error("NTFS total sector count is zero or the volume is larger than its device")]
    NtfsTotalSectors,
    #[error("NTFS MFT location is outside the volume")]
    NtfsMftLocation,
    #[error("NTFS record signature (FILE or INDX) is wrong")]
    NtfsRecordMagic,
    #[error("NTFS update sequence array offset or count is invalid")]
    NtfsFixupArray,
    #[error("NTFS update sequence number does not match a sector's last bytes (torn write)")]
    NtfsFixupMismatch,
    #[error("NTFS MFT record header is invalid (attribute offset or bytes in use)")]
    NtfsRecordHeader,
    #[error("NTFS inode number does not name an in-use base MFT record")]
    NtfsInodeNumber,
    #[error("NTFS attribute header runs past its record or is too short")]
    NtfsAttrHeader,
    #[error("NTFS attribute name lies outside its attribute")]
    NtfsAttrName,
    #[error("NTFS resident attribute value lies outside its attribute")]
    NtfsResidentValue,
    #[error("NTFS attribute sizes are invalid (data, allocated or initialized size)")]
    NtfsAttrSize,
    #[error("NTFS run list (mapping pairs) is malformed")]
    NtfsRunList,
    #[error("NTFS run points past the end of the volume")]
    NtfsRunRange,
    #[error("NTFS run list does not cover the attribute's clusters")]
    NtfsRunCoverage,
    #[error("NTFS run list has too many runs")]
    NtfsTooManyRuns,
    #[error("NTFS attribute list is malformed")]
    NtfsAttrList,
    #[error("NTFS attribute list is larger than 256 KiB or names too many records")]
    NtfsAttrListTooLarge,
    #[error("NTFS record lacks a required attribute ($STANDARD_INFORMATION, $DATA, $INDEX_ROOT)")]
    NtfsAttrMissing,
    #[error("NTFS $STANDARD_INFORMATION is too short")]
    NtfsStandardInfo,
    #[error("NTFS $FILE_NAME is malformed")]
    NtfsFileName,
    #[error("NTFS index root is malformed")]
    NtfsIndexRoot,
    #[error("NTFS index entry is malformed (length or key)")]
    NtfsIndexEntry,
    #[error("NTFS index block header is invalid (VCN or entry area)")]
    NtfsIndexBlock,
    #[error("NTFS index tree loops (an index block is reached twice)")]
    NtfsIndexLoop,
    #[error("NTFS index tree is deeper than 32 levels")]
    NtfsIndexTooDeep,
    #[error("NTFS directory has more than 2,097,152 entries")]
    NtfsDirTooLarge,
    #[error("NTFS compressed data (LZNT1) is malformed")]
    NtfsCompressedData,
    #[error("NTFS compression unit size is not 2 to 256 clusters of at most 64 KiB in all")]
    NtfsCompressionUnit,
    #[error("NTFS reparse point or Interix link data is malformed")]
    NtfsReparse,
}
