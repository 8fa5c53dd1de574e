//! NTFS (Windows guests), read-only, shown as ntfs-3g shows a volume mounted with its
//! default options.
//!
//! One module per on-disk structure: [`boot`] (the boot sector), [`record`] (multi-sector
//! records with their update sequence fixups, MFT record headers, attributes), [`runlist`]
//! (mapping pairs), [`lznt1`] (compressed files), [`index`] (the `$I30` directory B+tree),
//! [`name`] (UTF-16 names to bytes), [`link`] (reparse-point and Interix links and
//! devices).
//!
//! What is shown, and why:
//! - Inode numbers are MFT record numbers (the root is 5), as ntfs-3g's `st_ino`; every
//!   name of a hard-linked file (one `$FILE_NAME` each) shows the same number, and `nlink`
//!   is the record's link count; a directory's is 1, as ntfs-3g says ("make find(1) work").
//! - NTFS metadata files (records 0 to 15: `$MFT`, `$Bitmap`, `$Extend`, ...) are neither
//!   listed nor found by lookup, as in ntfs-3g without `show_sys_files`. Names of the DOS
//!   namespace (8.3 duplicates of long names) are not listed; Win32 and POSIX names are.
//! - Owner and permissions: NTFS has no POSIX owners. Everything is uid 0 and gid 0 with
//!   mode 0777, what ntfs-3g shows when root mounts a volume with its default options (no
//!   `permissions`, `umask=0`); the read-only attribute does not change it, as in ntfs-3g.
//!   The files are read-only through virtsnapfs whatever the mode says.
//! - Times from `$STANDARD_INFORMATION` (100 ns units since 1601): mtime the data change
//!   time, ctime the MFT change time, atime the access time, crtime the creation time.
//! - Sizes: a file's unnamed `$DATA` size; `st_blocks` its allocated size (the compressed
//!   size for compressed and sparse files, resident values rounded to 8 bytes) in 512-byte
//!   units, rounded up; a directory's size and blocks are those of its `$I30` index
//!   allocation (0 for a directory whose index fits in its record), as ntfs-3g shows them.
//! - Symbolic links: reparse points of the symlink, junction (mount point) and WSL symlink
//!   kinds, and the Interix symlinks ntfs-3g itself creates ([`link`] says how targets are
//!   translated). Special files: Interix FIFOs, sockets and devices (a file with the system
//!   attribute, not hidden, of 0 or 1 byte is a FIFO or socket, as ntfs-3g decides), and
//!   WSL sockets, FIFOs and devices (mode 0, as ntfs-3g shows them). A reparse point of
//!   another kind (deduplication, WOF/CompactOS compression, OneDrive placeholders) is
//!   shown as the plain file or directory it is, but reading such a file is refused
//!   (EOPNOTSUPP) rather than showing bytes that are not the file's; ntfs-3g without
//!   plugins shows them as broken symlinks. Encrypted (EFS) files are refused the same way.
//! - Extended attributes: named data streams (alternate data streams) as `user.NAME`, the
//!   only ones ntfs-3g lists with its default `streams_interface=xattr`, on files and
//!   directories; names starting with "ntfs-3g." are left out as ntfs-3g does. A stream
//!   larger than 64 KiB (XATTR_SIZE_MAX, more than getxattr can return) is left out.
//! - Holes: sparse runs and compression units without clusters read as zeros and are
//!   holes for `next_data`; bytes past a stream's initialized size read as zeros.
//! - Lookups match a name exactly (case-sensitive), in any namespace: a DOS 8.3 alias is
//!   found though not listed, as ntfs-3g finds it with its default options. The index is
//!   searched as Windows sorts it (`$UpCase` order), not read whole.
//! - A volume that Windows left dirty (the `$Volume` dirty flag, a `$LogFile` that is not
//!   clean, or a hibernation file in use) is shown as it is on disk, with a warning in the
//!   log: NTFS's log is not replayed.
//! - Damage: every record and index block is checked (signature, fixups, header, attribute
//!   bounds), every run must lie within the volume, index trees are walked with a depth cap
//!   and loop detection, attribute lists and run lists are bounded; each check has its own
//!   [`CorruptKind`] (EIO).
//!
//! Memory per opened filesystem: MFT records, index blocks and decompressed compression
//! units (64 KiB each) are kept in the crate's one byte-budgeted [`MetadataCache`] under ids
//! of this filesystem's own; file data is read from the device and not kept. What the
//! filesystem holds itself is its geometry, the `$UpCase` table (128 KiB) and the run list
//! of `$MFT` (at most [`runlist::MAX_RUNS`] runs, 24 bytes each). A request holds at most one inode's
//! attributes (its attribute list capped at 256 KiB) and one stream's runs.

pub mod boot;
pub mod index;
pub mod link;
pub mod lznt1;
pub mod name;
pub mod record;
pub mod runlist;

use std::sync::Arc;

use crate::cache::{next_id, CacheKey, CacheValue, MetadataCache};
use crate::source::ByteSource;

use super::bytes::{read_u16le, read_u32le, read_u64le};
use super::{CorruptKind, FileKind, GuestAttr, GuestDirEntry, GuestError, GuestFs, GuestTime};
use boot::{Geometry, BOOT_SECTOR_SIZE};
use record::{
    RawBody, RecordHeader, ATTR_IS_COMPRESSED, ATTR_IS_ENCRYPTED, ATTR_IS_SPARSE,
    AT_ATTRIBUTE_LIST, AT_DATA, AT_INDEX_ALLOCATION, AT_REPARSE_POINT, AT_STANDARD_INFORMATION,
    MFT_RECORD_IN_USE, MFT_RECORD_IS_DIRECTORY, MREF_MASK,
};
use runlist::Run;

/// The root directory's record number.
pub const ROOT_INO: u64 = 5;
/// Records below this are the volume's metadata files (`FILE_first_user`).
pub const FIRST_USER_RECORD: u64 = 16;
/// An attribute list longer than this is refused, as ntfs-3g refuses it.
const MAX_ATTR_LIST: u64 = 0x40000;
/// Extension records one inode may have.
const MAX_EXTENSION_RECORDS: usize = 4096;
/// Named streams larger than this are not shown as xattrs (XATTR_SIZE_MAX).
const MAX_XATTR_VALUE: u64 = 65536;
/// Record numbers above this are refused (the header's own number field is 32 bits).
const MAX_RECORDS: u64 = 1 << 32;

/// `$STANDARD_INFORMATION` and `$FILE_NAME` file attribute flags.
pub const FILE_ATTR_HIDDEN: u32 = 0x0002;
pub const FILE_ATTR_SYSTEM: u32 = 0x0004;
pub const FILE_ATTR_REPARSE_POINT: u32 = 0x0400;
pub const FILE_ATTR_ENCRYPTED: u32 = 0x4000;
/// Set on WSL special files (`FILE_ATTRIBUTE_RECALL_ON_OPEN`).
pub const FILE_ATTR_RECALL_ON_OPEN: u32 = 0x0004_0000;
/// In `$FILE_NAME`: the file is a directory (has an `$I30` index).
pub const FILE_ATTR_I30_INDEX_PRESENT: u32 = 0x1000_0000;

/// Whether `dev` starts with an NTFS boot sector ([`boot::looks_like_ntfs`]).
pub fn probe(dev: &dyn ByteSource) -> Result<bool, GuestError> {
    let mut bs = [0u8; BOOT_SECTOR_SIZE];
    dev.read_exact_at(&mut bs, 0)?;
    Ok(boot::looks_like_ntfs(&bs))
}

/// One attribute of an inode, copied out of its record.
#[derive(Debug, Clone)]
pub(crate) struct Attr {
    pub type_code: u32,
    pub name: Vec<u16>,
    pub flags: u16,
    pub body: Body,
}

#[derive(Debug, Clone)]
pub(crate) enum Body {
    Resident(Vec<u8>),
    NonResident {
        lowest_vcn: u64,
        highest_vcn: u64,
        mapping_pairs: Vec<u8>,
        compression_unit: u8,
        allocated_size: u64,
        data_size: u64,
        initialized_size: u64,
        compressed_size: Option<u64>,
    },
}

/// An inode: a base MFT record and the attributes of its extension records.
pub(crate) struct Inode {
    pub no: u64,
    pub header: RecordHeader,
    pub file_attributes: u32,
    pub times: [GuestTime; 4],
    pub attrs: Vec<Attr>,
}

/// A stream (an attribute's value), ready to read.
#[derive(Debug, Clone)]
pub(crate) struct Stream {
    pub flags: u16,
    pub resident: Option<Vec<u8>>,
    pub runs: Vec<Run>,
    pub data_size: u64,
    pub initialized_size: u64,
    /// What `st_blocks` counts, in bytes.
    pub charged_size: u64,
    /// Clusters per compression unit (0: not compressed).
    pub unit_clusters: u64,
}

/// What an inode is shown as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    Directory,
    File,
    /// A reparse point of a kind not shown as a link: listed, but not read.
    UnreadableFile(u32),
    Symlink(Vec<u8>),
    Fifo,
    Socket,
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
    /// A WSL special file: a socket, FIFO or device, shown with mode 0 as ntfs-3g shows it.
    Wsl(FileKind, u32, u32),
}

/// 100 ns units since 1601-01-01 to a Unix time.
pub fn ntfs_time(t: u64) -> GuestTime {
    const EPOCH_DIFF: i64 = 11_644_473_600;
    let secs = (t / 10_000_000) as i64 - EPOCH_DIFF;
    GuestTime {
        secs,
        nsecs: (t % 10_000_000) as u32 * 100,
    }
}

/// An opened NTFS volume.
pub struct Ntfs {
    dev: Arc<dyn ByteSource>,
    pub(crate) geo: Geometry,
    cache: Arc<MetadataCache>,
    /// Cache ids: MFT records (by number), index blocks (by inode and VCN), decompressed
    /// compression units (by first cluster).
    record_id: u64,
    index_id: u64,
    unit_id: u64,
    mft_runs: Vec<Run>,
    mft_records: u64,
    /// `$UpCase`: the upper case of each UTF-16 unit, the order of directory indexes (at
    /// most 65,536 units; units past its end are their own upper case).
    upcase: Vec<u16>,
}

impl Ntfs {
    /// Opens the NTFS volume on `dev`; its metadata is kept in `cache`.
    pub fn open(dev: Arc<dyn ByteSource>, cache: Arc<MetadataCache>) -> Result<Ntfs, GuestError> {
        let device_len = dev.byte_len()?;
        let mut bs = [0u8; BOOT_SECTOR_SIZE];
        dev.read_exact_at(&mut bs, 0)?;
        let geo = Geometry::parse(&bs, device_len)?;
        let rs = u64::from(geo.record_size);
        // Until $MFT's run list is known, record 0 is where the boot sector says, and the
        // first piece of its run list (in record 0 itself) maps the records its attribute
        // list may name: Windows keeps them in the MFT's first extent.
        let first = rs.div_ceil(geo.cluster_size).max(1);
        let mut fs = Ntfs {
            dev,
            cache,
            record_id: next_id(),
            index_id: next_id(),
            unit_id: next_id(),
            mft_runs: vec![Run {
                vcn: 0,
                len: first,
                lcn: Some(geo.mft_lcn),
            }],
            mft_records: 1,
            upcase: Vec::new(),
            geo,
        };
        let rec0 = fs.record(0)?;
        let h0 = RecordHeader::parse(&rec0)?;
        let mut runs = Vec::new();
        for a in record::attributes(&rec0, &h0)? {
            if let (AT_DATA, true, RawBody::NonResident(nr)) =
                (a.type_code, a.name.is_empty(), &a.body)
            {
                if nr.lowest_vcn == 0 {
                    runlist::decode(
                        nr.mapping_pairs,
                        0,
                        nr.highest_vcn,
                        fs.geo.total_clusters,
                        &mut runs,
                    )?;
                    let clusters = nr.highest_vcn.wrapping_add(1);
                    fs.mft_records = clusters
                        .saturating_mul(fs.geo.cluster_size)
                        .checked_div(rs)
                        .unwrap_or(0)
                        .min(MAX_RECORDS);
                }
            }
        }
        if runs.is_empty() {
            return Err(CorruptKind::NtfsAttrMissing.into());
        }
        fs.mft_runs = runs;
        fs.record_id = next_id();
        let mft = fs.inode_unchecked(0)?;
        let data = fs
            .stream(&mft, AT_DATA, &[])?
            .ok_or(CorruptKind::NtfsAttrMissing)?;
        if data.resident.is_some() || data.unit_clusters != 0 {
            return Err(CorruptKind::NtfsAttrMissing.into());
        }
        fs.mft_records = (data.data_size / rs).min(MAX_RECORDS);
        fs.mft_runs = data.runs;
        // Records may have been cached under the provisional map: drop them by id.
        fs.record_id = next_id();
        let root = fs.inode(ROOT_INO)?;
        if root.header.flags & MFT_RECORD_IS_DIRECTORY == 0 {
            return Err(CorruptKind::NtfsIndexRoot.into());
        }
        fs.upcase = fs.read_upcase()?;
        fs.warn_if_dirty();
        Ok(fs)
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Reads `buf.len()` bytes at byte `offset` of a non-resident stream of `runs`; sparse
    /// runs read as zeros, a VCN no run covers is an error.
    fn read_runs(&self, runs: &[Run], offset: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        let cs = self.geo.cluster_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset
                .checked_add(done as u64)
                .ok_or(CorruptKind::NtfsRunCoverage)?;
            let vcn = pos / cs;
            let run = runlist::find(runs, vcn).ok_or(CorruptKind::NtfsRunCoverage)?;
            let run_end = (run.vcn + run.len)
                .checked_mul(cs)
                .ok_or(CorruptKind::NtfsRunCoverage)?;
            let len = usize::try_from(run_end - pos)
                .unwrap_or(usize::MAX)
                .min(buf.len() - done);
            let piece = &mut buf[done..done + len];
            match run.lcn {
                None => piece.fill(0),
                Some(lcn) => {
                    // Within the volume: runs were checked when decoded.
                    let at = (lcn + (vcn - run.vcn)) * cs + pos % cs;
                    self.dev.read_exact_at(piece, at)?;
                }
            }
            done += len;
        }
        Ok(())
    }

    fn cached(&self, id: u64, block: u64) -> Option<Arc<[u8]>> {
        match self.cache.get(&CacheKey::GuestBlock { fs: id, block }) {
            Some(CacheValue::GuestBlock(b)) => Some(b),
            _ => None,
        }
    }

    fn keep(&self, id: u64, block: u64, bytes: Vec<u8>) -> Arc<[u8]> {
        let b: Arc<[u8]> = bytes.into();
        self.cache.insert(
            CacheKey::GuestBlock { fs: id, block },
            CacheValue::GuestBlock(b.clone()),
        );
        b
    }

    /// MFT record `n`, fixed up, through the cache.
    fn record(&self, n: u64) -> Result<Arc<[u8]>, GuestError> {
        if n >= self.mft_records {
            return Err(CorruptKind::NtfsInodeNumber.into());
        }
        if let Some(b) = self.cached(self.record_id, n) {
            return Ok(b);
        }
        let rs = u64::from(self.geo.record_size);
        let mut buf = vec![0u8; self.geo.record_size as usize];
        self.read_runs(&self.mft_runs, n * rs, &mut buf)?;
        record::apply_fixups(&mut buf, b"FILE")?;
        Ok(self.keep(self.record_id, n, buf))
    }

    /// The in-use base record `n` and its attributes, with those of its extension records
    /// when it has an attribute list. Metadata records (below 16) are allowed.
    fn inode_unchecked(&self, n: u64) -> Result<Inode, GuestError> {
        let rec = self.record(n)?;
        let header = RecordHeader::parse(&rec)?;
        if header.flags & MFT_RECORD_IN_USE == 0 || header.base_mft_record != 0 {
            return Err(CorruptKind::NtfsInodeNumber.into());
        }
        let mut attrs: Vec<Attr> = record::attributes(&rec, &header)?
            .into_iter()
            .map(own)
            .collect();
        if let Some(list) = attrs.iter().find(|a| a.type_code == AT_ATTRIBUTE_LIST) {
            let list = list.clone();
            let value = self.attr_list_value(&list)?;
            let mut records = Vec::new();
            for entry in index::attr_list_entries(&value)? {
                let r = entry & MREF_MASK;
                if r != n && !records.contains(&r) {
                    if records.len() >= MAX_EXTENSION_RECORDS {
                        return Err(CorruptKind::NtfsAttrListTooLarge.into());
                    }
                    records.push(r);
                }
            }
            for r in records {
                let ext = self.record(r)?;
                let h = RecordHeader::parse(&ext)?;
                if h.flags & MFT_RECORD_IN_USE == 0 || h.base_mft_record != n {
                    return Err(CorruptKind::NtfsAttrList.into());
                }
                for a in record::attributes(&ext, &h)? {
                    if a.type_code != AT_ATTRIBUTE_LIST {
                        attrs.push(own(a));
                    }
                }
            }
        }
        let si = attrs
            .iter()
            .find(|a| a.type_code == AT_STANDARD_INFORMATION)
            .ok_or(CorruptKind::NtfsAttrMissing)?;
        let Body::Resident(v) = &si.body else {
            return Err(CorruptKind::NtfsStandardInfo.into());
        };
        if v.len() < 0x30 {
            return Err(CorruptKind::NtfsStandardInfo.into());
        }
        let times = [
            ntfs_time(read_u64le(v, 0x00)),
            ntfs_time(read_u64le(v, 0x08)),
            ntfs_time(read_u64le(v, 0x10)),
            ntfs_time(read_u64le(v, 0x18)),
        ];
        let file_attributes = read_u32le(v, 0x20);
        Ok(Inode {
            no: n,
            header,
            file_attributes,
            times,
            attrs,
        })
    }

    /// An inode as the tree shows it: metadata records other than the root are not.
    pub(crate) fn inode(&self, n: u64) -> Result<Inode, GuestError> {
        if n < FIRST_USER_RECORD && n != ROOT_INO {
            return Err(CorruptKind::NtfsInodeNumber.into());
        }
        self.inode_unchecked(n)
    }

    /// The value of an `$ATTRIBUTE_LIST` (at most 256 KiB).
    fn attr_list_value(&self, a: &Attr) -> Result<Vec<u8>, GuestError> {
        match &a.body {
            Body::Resident(v) => Ok(v.clone()),
            Body::NonResident {
                mapping_pairs,
                lowest_vcn,
                highest_vcn,
                data_size,
                allocated_size,
                ..
            } => {
                if *data_size > MAX_ATTR_LIST || *lowest_vcn != 0 {
                    return Err(CorruptKind::NtfsAttrListTooLarge.into());
                }
                if data_size > allocated_size {
                    return Err(CorruptKind::NtfsAttrSize.into());
                }
                let mut runs = Vec::new();
                runlist::decode(
                    mapping_pairs,
                    0,
                    *highest_vcn,
                    self.geo.total_clusters,
                    &mut runs,
                )?;
                let mut buf = vec![0u8; *data_size as usize];
                self.read_runs(&runs, 0, &mut buf)?;
                Ok(buf)
            }
        }
    }

    /// The stream of the attribute of `type_code` named `name`, its pieces joined.
    pub(crate) fn stream(
        &self,
        ino: &Inode,
        type_code: u32,
        name: &[u16],
    ) -> Result<Option<Stream>, GuestError> {
        let mut pieces: Vec<&Attr> = ino
            .attrs
            .iter()
            .filter(|a| a.type_code == type_code && a.name == name)
            .collect();
        let Some(first) = pieces.first() else {
            return Ok(None);
        };
        if let Body::Resident(v) = &first.body {
            let len = v.len() as u64;
            return Ok(Some(Stream {
                flags: first.flags,
                resident: Some(v.clone()),
                runs: Vec::new(),
                data_size: len,
                initialized_size: len,
                charged_size: (len + 7) & !7,
                unit_clusters: 0,
            }));
        }
        let vcn_of = |a: &Attr| match &a.body {
            Body::NonResident { lowest_vcn, .. } => *lowest_vcn,
            Body::Resident(_) => u64::MAX,
        };
        pieces.sort_by_key(|a| vcn_of(a));
        let mut runs = Vec::new();
        let mut next_vcn = 0u64;
        let mut sizes = None;
        for a in &pieces {
            let Body::NonResident {
                lowest_vcn,
                highest_vcn,
                mapping_pairs,
                compression_unit,
                allocated_size,
                data_size,
                initialized_size,
                compressed_size,
            } = &a.body
            else {
                return Err(CorruptKind::NtfsAttrList.into());
            };
            if *lowest_vcn != next_vcn {
                return Err(CorruptKind::NtfsRunCoverage.into());
            }
            if *lowest_vcn == 0 {
                sizes = Some((
                    a.flags,
                    *compression_unit,
                    *allocated_size,
                    *data_size,
                    *initialized_size,
                    *compressed_size,
                ));
            }
            runlist::decode(
                mapping_pairs,
                *lowest_vcn,
                *highest_vcn,
                self.geo.total_clusters,
                &mut runs,
            )?;
            next_vcn = highest_vcn.wrapping_add(1);
        }
        let (flags, cu, allocated, data, initialized, compressed) =
            sizes.ok_or(CorruptKind::NtfsRunCoverage)?;
        let cs = self.geo.cluster_size;
        // The runs must cover the allocated size; the data lies within it.
        if data > allocated || initialized > allocated || allocated > next_vcn.saturating_mul(cs) {
            return Err(CorruptKind::NtfsAttrSize.into());
        }
        let unit_clusters = if flags & ATTR_IS_COMPRESSED != 0 {
            let unit = 1u64 << (cu & 31);
            if cu == 0 || cu > 8 || unit.saturating_mul(cs) > 65536 {
                return Err(CorruptKind::NtfsCompressionUnit.into());
            }
            unit
        } else {
            0
        };
        let charged = if flags & (ATTR_IS_COMPRESSED | ATTR_IS_SPARSE) != 0 {
            compressed.unwrap_or(allocated)
        } else {
            allocated
        };
        Ok(Some(Stream {
            flags,
            resident: None,
            runs,
            data_size: data,
            initialized_size: initialized,
            charged_size: charged,
            unit_clusters,
        }))
    }

    /// Reads a stream at `offset`; returns the bytes read (short only at its end).
    pub(crate) fn read_stream(
        &self,
        s: &Stream,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, GuestError> {
        if offset >= s.data_size || buf.is_empty() {
            return Ok(0);
        }
        let n = usize::try_from(s.data_size - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let buf = &mut buf[..n];
        if let Some(v) = &s.resident {
            // offset < data_size = v.len().
            buf.copy_from_slice(&v[offset as usize..offset as usize + n]);
            return Ok(n);
        }
        if s.flags & ATTR_IS_ENCRYPTED != 0 {
            return Err(GuestError::Unsupported("NTFS encrypted (EFS) file".into()));
        }
        if s.unit_clusters != 0 {
            self.read_compressed(s, offset, buf)?;
            return Ok(n);
        }
        // Bytes past the initialized size read as zeros.
        let init = s.initialized_size.saturating_sub(offset).min(n as u64) as usize;
        self.read_runs(&s.runs, offset, &mut buf[..init])?;
        buf[init..].fill(0);
        Ok(n)
    }

    fn read_compressed(&self, s: &Stream, offset: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        let unit_bytes = s.unit_clusters * self.geo.cluster_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let unit = pos / unit_bytes;
            let within = (pos % unit_bytes) as usize;
            let data = self.compression_unit(s, unit)?;
            let len = (data.len() - within).min(buf.len() - done);
            buf[done..done + len].copy_from_slice(&data[within..within + len]);
            done += len;
        }
        Ok(())
    }

    /// Compression unit `unit` of a compressed stream, decompressed: all sparse reads as
    /// zeros, all allocated is stored as is, else its allocated clusters hold LZNT1 data.
    fn compression_unit(&self, s: &Stream, unit: u64) -> Result<Arc<[u8]>, GuestError> {
        let cs = self.geo.cluster_size;
        let u = s.unit_clusters;
        let unit_bytes = (u * cs) as usize;
        let first_vcn = unit.checked_mul(u).ok_or(CorruptKind::NtfsRunCoverage)?;
        let mut allocated = 0u64;
        let mut first_lcn = None;
        let mut vcn = first_vcn;
        while vcn < first_vcn + u {
            let run = runlist::find(&s.runs, vcn).ok_or(CorruptKind::NtfsRunCoverage)?;
            let take = (run.vcn + run.len - vcn).min(first_vcn + u - vcn);
            if let Some(lcn) = run.lcn {
                if allocated != vcn - first_vcn {
                    // Allocated clusters after a sparse one within a unit.
                    return Err(CorruptKind::NtfsCompressedData.into());
                }
                first_lcn.get_or_insert(lcn + (vcn - run.vcn));
                allocated += take;
            }
            vcn += take;
        }
        let Some(key) = first_lcn else {
            return Ok(vec![0u8; unit_bytes].into());
        };
        if let Some(b) = self.cached(self.unit_id, key) {
            if b.len() == unit_bytes {
                return Ok(b);
            }
        }
        let mut raw = vec![0u8; (allocated * cs) as usize];
        self.read_runs(&s.runs, first_vcn * cs, &mut raw)?;
        if allocated == u {
            return Ok(self.keep(self.unit_id, key, raw));
        }
        let mut out = vec![0u8; unit_bytes];
        lznt1::decompress(&raw, &mut out)?;
        Ok(self.keep(self.unit_id, key, out))
    }

    /// The first data range at or after `offset` of a stream (see [`GuestFs::next_data`]).
    fn stream_next_data(&self, s: &Stream, offset: u64) -> Option<(u64, u64)> {
        if offset >= s.data_size {
            return None;
        }
        if s.resident.is_some() {
            return Some((offset, s.data_size));
        }
        let cs = self.geo.cluster_size;
        let unit = s.unit_clusters.max(1);
        // Allocated runs, widened to whole compression units, merged.
        let mut start_at = None::<(u64, u64)>;
        for r in s.runs.iter().filter(|r| r.lcn.is_some()) {
            let a = (r.vcn / unit * unit).saturating_mul(cs);
            let b = (r.vcn + r.len)
                .div_ceil(unit)
                .saturating_mul(unit)
                .saturating_mul(cs)
                .min(s.data_size);
            match &mut start_at {
                Some((_, end)) if a <= *end => *end = (*end).max(b),
                Some(_) => break,
                None if b > offset => start_at = Some((a.max(offset), b)),
                None => {}
            }
        }
        start_at.filter(|(a, b)| a < b)
    }

    /// How an inode is shown.
    pub(crate) fn shown(&self, ino: &Inode) -> Result<Shown, GuestError> {
        let is_dir = ino.header.flags & MFT_RECORD_IS_DIRECTORY != 0;
        if ino.file_attributes & FILE_ATTR_REPARSE_POINT != 0 {
            if let Some(rp) = self.stream(ino, AT_REPARSE_POINT, &[])? {
                let len = usize::try_from(rp.data_size.min(65536)).unwrap_or(0);
                let mut v = vec![0u8; len];
                self.read_stream(&rp, 0, &mut v)?;
                match link::reparse_target(&v, is_dir)? {
                    link::Reparse::Link(t) => return Ok(Shown::Symlink(t)),
                    link::Reparse::WslSpecial(tag)
                        if ino.file_attributes & FILE_ATTR_RECALL_ON_OPEN != 0 =>
                    {
                        return self.wsl_special(ino, tag);
                    }
                    link::Reparse::WslSpecial(tag) if !is_dir => {
                        return Ok(Shown::UnreadableFile(tag))
                    }
                    link::Reparse::WslSpecial(_) => {}
                    link::Reparse::Other(tag) if !is_dir => return Ok(Shown::UnreadableFile(tag)),
                    link::Reparse::Other(_) => {}
                }
            }
        }
        if is_dir {
            return Ok(Shown::Directory);
        }
        if ino.file_attributes & FILE_ATTR_SYSTEM != 0 {
            if let Some(data) = self.stream(ino, AT_DATA, &[])? {
                let hidden = ino.file_attributes & FILE_ATTR_HIDDEN != 0;
                if !hidden && data.data_size == 0 {
                    return Ok(Shown::Fifo);
                }
                if !hidden && data.data_size == 1 {
                    return Ok(Shown::Socket);
                }
                if data.data_size > 8 && data.data_size <= link::MAX_INTERIX {
                    let mut v = vec![0u8; data.data_size as usize];
                    self.read_stream(&data, 0, &mut v)?;
                    if let Some(s) = link::interix(&v)? {
                        return Ok(s);
                    }
                }
            }
        }
        Ok(Shown::File)
    }

    /// A WSL socket, FIFO or device; a device's numbers from `$EA`'s `$LXDEV`.
    fn wsl_special(&self, ino: &Inode, tag: u32) -> Result<Shown, GuestError> {
        let kind = match tag {
            link::IO_REPARSE_TAG_AF_UNIX => return Ok(Shown::Wsl(FileKind::Socket, 0, 0)),
            link::IO_REPARSE_TAG_LX_FIFO => return Ok(Shown::Wsl(FileKind::Fifo, 0, 0)),
            link::IO_REPARSE_TAG_LX_CHR => FileKind::CharDevice,
            _ => FileKind::BlockDevice,
        };
        let ea = self
            .stream(ino, record::AT_EA, &[])?
            .ok_or(CorruptKind::NtfsReparse)?;
        let mut v = vec![0u8; ea.data_size.min(65536) as usize];
        let n = self.read_stream(&ea, 0, &mut v)?;
        v.truncate(n);
        let (major, minor) = link::lxdev(&v).ok_or(CorruptKind::NtfsReparse)?;
        Ok(Shown::Wsl(kind, major, minor))
    }

    fn make_attr(&self, ino: &Inode) -> Result<GuestAttr, GuestError> {
        let shown = self.shown(ino)?;
        let data = self.stream(ino, AT_DATA, &[])?;
        let (data_size, data_blocks) = data
            .as_ref()
            .map_or((0, 0), |s| (s.data_size, s.charged_size.div_ceil(512)));
        let (kind, size, blocks, nlink, rdev) = match &shown {
            Shown::Directory => {
                let alloc = self.stream(ino, AT_INDEX_ALLOCATION, index::I30)?;
                let (size, blocks) = alloc
                    .as_ref()
                    .filter(|s| s.resident.is_none())
                    .map_or((0, 0), |s| (s.data_size, s.charged_size / 512));
                (FileKind::Directory, size, blocks, 1, (0, 0))
            }
            Shown::File | Shown::UnreadableFile(_) => (
                FileKind::File,
                data_size,
                data_blocks,
                ino.header.link_count,
                (0, 0),
            ),
            Shown::Symlink(t) => (
                FileKind::Symlink,
                t.len() as u64,
                data_blocks,
                ino.header.link_count,
                (0, 0),
            ),
            Shown::Fifo => (
                FileKind::Fifo,
                data_size,
                data_blocks,
                ino.header.link_count,
                (0, 0),
            ),
            Shown::Socket => (
                FileKind::Socket,
                data_size,
                data_blocks,
                ino.header.link_count,
                (0, 0),
            ),
            Shown::CharDevice(ma, mi) => (
                FileKind::CharDevice,
                data_size,
                data_blocks,
                ino.header.link_count,
                (*ma, *mi),
            ),
            Shown::BlockDevice(ma, mi) => (
                FileKind::BlockDevice,
                data_size,
                data_blocks,
                ino.header.link_count,
                (*ma, *mi),
            ),
            Shown::Wsl(kind, ma, mi) => (*kind, 0, 0, ino.header.link_count, (*ma, *mi)),
        };
        let perm = if matches!(shown, Shown::Wsl(..)) {
            0
        } else {
            0o777
        };
        let [crtime, mtime, ctime, atime] = ino.times;
        Ok(GuestAttr {
            ino: ino.no,
            kind,
            perm,
            uid: 0,
            gid: 0,
            size,
            nlink: u32::from(nlink),
            atime,
            mtime,
            ctime,
            crtime: Some(crtime),
            blocks,
            block_size: self.geo.cluster_size.min(u64::from(u32::MAX)) as u32,
            rdev_major: rdev.0,
            rdev_minor: rdev.1,
        })
    }

    /// The kind of the entry a directory listing shows for `e`: from its `$FILE_NAME`
    /// flags, or from its record when those say reparse point or system file. A record
    /// that cannot be read leaves the flags' kind: the listing stands, and that entry's
    /// `attr` gives the error.
    fn entry_kind(&self, e: &index::Entry) -> FileKind {
        let by_flags = if e.file_attributes & FILE_ATTR_I30_INDEX_PRESENT != 0 {
            FileKind::Directory
        } else {
            FileKind::File
        };
        if e.file_attributes & (FILE_ATTR_REPARSE_POINT | FILE_ATTR_SYSTEM) != 0 {
            if let Ok(attr) = self.inode(e.record).and_then(|i| self.make_attr(&i)) {
                return attr.kind;
            }
        }
        by_flags
    }

    fn dir_inode(&self, dir: u64) -> Result<Inode, GuestError> {
        let ino = self.inode(dir)?;
        if self.shown(&ino)? != Shown::Directory {
            return Err(GuestError::NotADirectory);
        }
        Ok(ino)
    }

    /// The `$UpCase` table (record 10's data, at most 128 KiB).
    fn read_upcase(&self) -> Result<Vec<u16>, GuestError> {
        let ino = self.inode_unchecked(10)?;
        let s = self
            .stream(&ino, AT_DATA, &[])?
            .ok_or(CorruptKind::NtfsAttrMissing)?;
        let len = s.data_size.min(2 * 65536) as usize;
        let mut bytes = vec![0u8; len];
        self.read_stream(&s, 0, &mut bytes)?;
        Ok(record::utf16_units(&bytes))
    }

    /// The upper case of a UTF-16 unit.
    pub(crate) fn upcase(&self, u: u16) -> u16 {
        self.upcase.get(usize::from(u)).copied().unwrap_or(u)
    }

    /// Logs a warning when Windows did not leave the volume clean: its changes since may
    /// be in `$LogFile` only, which is not replayed.
    fn warn_if_dirty(&self) {
        let serial = self.geo.serial;
        if let Ok(vol) = self.inode_unchecked(3) {
            let info = vol
                .attrs
                .iter()
                .find(|a| a.type_code == record::AT_VOLUME_INFORMATION);
            if let Some(Attr {
                body: Body::Resident(v),
                ..
            }) = info
            {
                if read_u16le(v, 0x0A) & 0x0001 != 0 {
                    log::warn!(
                        "NTFS volume {serial:016x} is marked dirty (in use or not shut down cleanly): shown as it is on disk, its log is not replayed"
                    );
                }
            }
        }
        if let Ok(lf) = self.inode_unchecked(2) {
            if let Ok(Some(s)) = self.stream(&lf, AT_DATA, &[]) {
                let mut page = vec![0u8; 4096];
                if self.read_stream(&s, 0, &mut page).is_ok() && !link::logfile_clean(&mut page) {
                    log::warn!(
                        "NTFS volume {serial:016x}: $LogFile is not clean: shown as it is on disk, the log is not replayed"
                    );
                }
            }
        }
        if let Ok(Some(h)) = self.lookup(ROOT_INO, b"hiberfil.sys") {
            if let Ok(ino) = self.inode(h) {
                if let Ok(Some(s)) = self.stream(&ino, AT_DATA, &[]) {
                    let mut magic = [0u8; 4];
                    if self.read_stream(&s, 0, &mut magic).is_ok()
                        && (magic.eq_ignore_ascii_case(b"hibr")
                            || magic.eq_ignore_ascii_case(b"wake"))
                    {
                        log::warn!(
                            "NTFS volume {serial:016x} holds a hibernated Windows (hiberfil.sys is in use): shown as it was on disk when Windows hibernated"
                        );
                    }
                }
            }
        }
    }
}

/// Copies an attribute out of its record.
fn own(a: record::RawAttr<'_>) -> Attr {
    let body = match a.body {
        RawBody::Resident(v) => Body::Resident(v.to_vec()),
        RawBody::NonResident(h) => Body::NonResident {
            lowest_vcn: h.lowest_vcn,
            highest_vcn: h.highest_vcn,
            mapping_pairs: h.mapping_pairs.to_vec(),
            compression_unit: h.compression_unit,
            allocated_size: h.allocated_size,
            data_size: h.data_size,
            initialized_size: h.initialized_size,
            compressed_size: h.compressed_size,
        },
    };
    Attr {
        type_code: a.type_code,
        name: a.name,
        flags: a.flags,
        body,
    }
}

impl Ntfs {
    /// Lookup by reading the whole directory (every namespace): the exact name.
    fn scan_lookup(&self, d: &Inode, name: &[u8]) -> Result<Option<u64>, GuestError> {
        let mut found = None;
        self.for_each_name(d, &mut |e| {
            if name::to_bytes(&e.name) == name {
                found = Some(e.record);
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(found)
    }
}

impl GuestFs for Ntfs {
    fn format_name(&self) -> &'static str {
        "ntfs"
    }

    fn root(&self) -> u64 {
        ROOT_INO
    }

    fn attr(&self, ino: u64) -> Result<GuestAttr, GuestError> {
        let i = self.inode(ino)?;
        self.make_attr(&i)
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> Result<Option<u64>, GuestError> {
        let d = self.dir_inode(dir)?;
        // A name no stored name gives (not WTF-8) is not there; one that may stand for a
        // mapped `/` or NUL, or whose index search meets a name equal but for case, is
        // looked for in the whole directory (names equal but for case can lie on either
        // side of each other in the tree).
        let Some(units) = name::to_units(name) else {
            return Ok(None);
        };
        if !units.iter().any(|&u| u == 0x2215 || u == 0x2400) {
            match self.index_find(&d, &units)? {
                index::Found::Record(r) => return Ok(Some(r)),
                index::Found::Absent => return Ok(None),
                index::Found::Ambiguous => {}
            }
        }
        self.scan_lookup(&d, name)
    }

    fn read_dir(&self, dir: u64) -> Result<Vec<GuestDirEntry>, GuestError> {
        let d = self.dir_inode(dir)?;
        let mut entries = Vec::new();
        self.for_each_entry(&d, &mut |e| {
            entries.push(e);
            std::ops::ControlFlow::Continue(())
        })?;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push(GuestDirEntry {
                name: name::to_bytes(&e.name),
                ino: e.record,
                kind: self.entry_kind(&e),
            });
        }
        Ok(out)
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize, GuestError> {
        let i = self.inode(ino)?;
        match self.shown(&i)? {
            Shown::File => {}
            Shown::UnreadableFile(tag) => {
                return Err(GuestError::Unsupported(format!(
                    "NTFS reparse point of tag {tag:#010x}"
                )))
            }
            _ => return Err(GuestError::NotAFile),
        }
        if i.file_attributes & FILE_ATTR_ENCRYPTED != 0 {
            return Err(GuestError::Unsupported("NTFS encrypted (EFS) file".into()));
        }
        match self.stream(&i, AT_DATA, &[])? {
            Some(s) => self.read_stream(&s, offset, buf),
            None => Ok(0),
        }
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>, GuestError> {
        let i = self.inode(ino)?;
        match self.shown(&i)? {
            Shown::Symlink(t) => Ok(t),
            _ => Err(GuestError::NotASymlink),
        }
    }

    fn xattrs(&self, ino: u64) -> Result<Vec<super::Xattr>, GuestError> {
        let i = self.inode(ino)?;
        if !matches!(
            self.shown(&i)?,
            Shown::File | Shown::Directory | Shown::UnreadableFile(_)
        ) {
            return Ok(Vec::new());
        }
        let mut names: Vec<&Vec<u16>> = Vec::new();
        for a in &i.attrs {
            if a.type_code == AT_DATA && !a.name.is_empty() && !names.contains(&&a.name) {
                names.push(&a.name);
            }
        }
        let mut out = Vec::new();
        for n in names {
            let shown = name::to_bytes(n);
            if shown.len() > 8 && shown.starts_with(b"ntfs-3g.") {
                continue;
            }
            let Some(s) = self.stream(&i, AT_DATA, n)? else {
                continue;
            };
            if s.data_size > MAX_XATTR_VALUE {
                continue;
            }
            let mut value = vec![0u8; s.data_size as usize];
            let got = self.read_stream(&s, 0, &mut value)?;
            value.truncate(got);
            let mut full = b"user.".to_vec();
            full.extend_from_slice(&shown);
            out.push((full, value));
        }
        Ok(out)
    }

    fn next_data(&self, ino: u64, offset: u64) -> Result<Option<(u64, u64)>, GuestError> {
        let i = self.inode(ino)?;
        if !matches!(self.shown(&i)?, Shown::File) {
            return Err(GuestError::NotAFile);
        }
        Ok(match self.stream(&i, AT_DATA, &[])? {
            Some(s) => self.stream_next_data(&s, offset),
            None => None,
        })
    }
}

/// The `guest_ntfs` fuzz target's body: `data` as the start of an NTFS volume as long as
/// its boot sector says (at most 1 TiB; the rest reads as zeros), so a seed with trailing
/// zeros cut is still a whole volume. Opened, walked and read as
/// [`super::fuzz_one_disk`] reads a filesystem, through a small cache.
pub fn fuzz_one_volume(data: &[u8]) {
    let claimed = read_u64le(data, 0x28)
        .saturating_mul(u64::from(read_u16le(data, 0x0B)))
        .min(1 << 40);
    super::fuzz_volume_prefix(data, claimed, probe, Ntfs::open);
}
