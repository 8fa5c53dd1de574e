//! The qcow2 format: parsing and validating one image, and mapping guest offsets to where their
//! bytes live. Knows nothing of backing chains (see `crate::image`), files or libvirt.
//!
//! Images are untrusted input. Every header value is checked against QEMU's limits before use,
//! every offset is computed with checked arithmetic, and nothing is allocated in proportion to a
//! header value: L1 and L2 tables are read in small slices through the shared
//! [`MetadataCache`], so a 4 KiB file claiming a 2 TiB disk costs a few KiB of memory.
//!
//! Modules, one per on-disk structure: [`header`], [`extensions`], [`l2`] (L1/L2 entries),
//! [`compression`], [`snapshot`].

pub mod compression;
pub mod error;
pub mod extensions;
pub mod header;
pub mod l2;
pub mod snapshot;

use std::io;
use std::sync::Arc;

pub use error::FormatError;
pub use extensions::Extensions;
pub use header::Header;
pub use l2::{MappedRun, Mapping};
pub use snapshot::Snapshot;

use crate::cache::{next_id, CacheKey, CacheValue, MetadataCache};
use crate::source::ByteSource;
use l2::Geometry;

/// Tables are read and cached in slices of this many bytes (or one cluster, if smaller), as
/// QEMU does: a random read then costs one 4 KiB metadata read, not a whole 2 MiB L2 table.
const TABLE_SLICE_BYTES: u64 = 4096;

/// Why a read of an image failed: the image is invalid, or the host I/O failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Which L1 table a read goes through: the active one or an internal snapshot's, and the
/// guest disk size that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1View {
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub disk_size: u64,
}

/// An opened, validated qcow2 image.
pub struct Qcow2Image {
    id: u64,
    source: Arc<dyn ByteSource>,
    pub header: Header,
    pub extensions: Extensions,
    pub backing_file: Option<String>,
    pub snapshots: Vec<Snapshot>,
    geometry: Geometry,
}

impl Qcow2Image {
    /// Parses the header, extensions, backing file name and snapshot table of `source`.
    pub fn open(source: Arc<dyn ByteSource>) -> Result<Qcow2Image, ReadError> {
        let file_len = source.byte_len()?;
        let mut fixed = [0u8; header::FIXED_HEADER_READ];
        source.read_exact_at(&mut fixed, 0)?;
        let header = Header::parse(&fixed, file_len)?;

        // The extension area and the backing file name both live in the first cluster.
        let cluster_len = usize::try_from(header.cluster_size())
            .map_err(|_| FormatError::ClusterBits(header.cluster_bits))?;
        let mut first_cluster = vec![0u8; cluster_len];
        source.read_exact_at(&mut first_cluster, 0)?;
        let extensions = extensions::parse(&header, &first_cluster)?;

        let backing_file = if header.backing_file_offset != 0 {
            let start = header.backing_file_offset;
            let end = start
                .checked_add(u64::from(header.backing_file_size))
                .ok_or(FormatError::BackingFileOffset(start))?;
            let mut name = vec![0u8; header.backing_file_size as usize];
            // The name may run past the first cluster; read it from the file, as QEMU does.
            if end <= header.cluster_size() {
                name.copy_from_slice(&first_cluster[start as usize..end as usize]);
            } else {
                source.read_exact_at(&mut name, start)?;
            }
            Some(String::from_utf8_lossy(&name).into_owned())
        } else {
            None
        };

        let snapshots = snapshot::read_table(&header, source.as_ref())?;
        let geometry = Geometry {
            cluster_bits: header.cluster_bits,
            extended_l2: header.extended_l2(),
            has_data_file: header.has_data_file(),
        };
        Ok(Qcow2Image {
            id: next_id(),
            source,
            header,
            extensions,
            backing_file,
            snapshots,
            geometry,
        })
    }

    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// The active L1 table and the image's current virtual size.
    pub fn active_view(&self) -> L1View {
        L1View {
            l1_table_offset: self.header.l1_table_offset,
            l1_size: self.header.l1_size,
            disk_size: self.header.size,
        }
    }

    /// The view of internal snapshot `snapshot` (an entry of [`Self::snapshots`]).
    pub fn snapshot_view(&self, snapshot: &Snapshot) -> L1View {
        L1View {
            l1_table_offset: snapshot.l1_table_offset,
            l1_size: snapshot.l1_size,
            disk_size: snapshot.disk_size,
        }
    }

    /// Finds an internal snapshot by name, or else by id (as `qemu-img snapshot` accepts).
    pub fn find_snapshot(&self, name_or_id: &str) -> Option<&Snapshot> {
        self.snapshots
            .iter()
            .find(|s| s.name == name_or_id)
            .or_else(|| self.snapshots.iter().find(|s| s.id == name_or_id))
    }

    /// How the guest bytes at `guest_offset` (below `view.disk_size`) are stored. The returned
    /// run never crosses the end of a cluster, or of an L2 table's range when unallocated.
    pub fn map(
        &self,
        view: &L1View,
        cache: &MetadataCache,
        guest_offset: u64,
    ) -> Result<MappedRun, ReadError> {
        let cluster_bits = self.header.cluster_bits;
        let l2_bits = self.header.l2_bits();
        let span_bits = cluster_bits + l2_bits;
        let l1_index = guest_offset >> span_bits;
        let span_end = l1_index
            .checked_add(1)
            .and_then(|i| i.checked_mul(1u64 << span_bits))
            .ok_or(FormatError::OffsetOverflow("L1 index"))?;
        let unallocated_span = MappedRun {
            len: span_end - guest_offset,
            mapping: Mapping::Unallocated,
        };
        if l1_index >= u64::from(view.l1_size) {
            return Ok(unallocated_span);
        }
        let l1_entry = self.table_entry(cache, view.l1_table_offset, l1_index)?;
        let Some(l2_offset) = l2::l2_table_offset(l1_entry, &self.geometry)? else {
            return Ok(unallocated_span);
        };
        let l2_index = (guest_offset >> cluster_bits) & ((1u64 << l2_bits) - 1);
        // Entries are u64 pairs with extended L2.
        let width = if self.geometry.extended_l2 { 2 } else { 1 };
        let (slice, mut at) = self.table_slice(cache, l2_offset, l2_index * width)?;
        let entry_at = |i: usize| -> (u64, u64) {
            let entry = slice.get(i).copied().unwrap_or(0);
            let bitmap = if width == 2 {
                slice.get(i + 1).copied().unwrap_or(0)
            } else {
                0
            };
            (entry, bitmap)
        };
        let (entry, bitmap) = entry_at(at);
        let mut run = l2::decode(entry, bitmap, guest_offset, &self.geometry)?;
        // Extend the run over the following entries of the same slice while they continue it
        // (more unallocated or zero clusters, or data at the next host offset), so a long
        // stretch costs one call, not one per cluster: what keeps deep chains cheap.
        let cluster_size = 1u64 << cluster_bits;
        let mut next = guest_offset + run.len;
        let slice_entries = slice.len() / width as usize;
        // All-zero entries are unallocated clusters: count them without decoding each one.
        // A deep chain's overlays are mostly such entries, and decoding them one by one was
        // most of the cost of a deep chain's first read.
        if run.mapping == Mapping::Unallocated && next & (cluster_size - 1) == 0 {
            let to_span_end = (span_end - next) >> cluster_bits;
            let empty = slice
                .get(at + width as usize..)
                .unwrap_or_default()
                .chunks_exact(width as usize)
                .take(usize::try_from(to_span_end).unwrap_or(usize::MAX))
                .take_while(|pair| pair.iter().all(|&e| e == 0))
                .count();
            run.len += empty as u64 * cluster_size;
            next += empty as u64 * cluster_size;
            at += empty * width as usize;
        }
        while next & (cluster_size - 1) == 0
            && next < span_end
            && !matches!(run.mapping, Mapping::Compressed { .. })
        {
            at += width as usize;
            if at / width as usize >= slice_entries {
                break;
            }
            let (entry, bitmap) = entry_at(at);
            let Ok(following) = l2::decode(entry, bitmap, next, &self.geometry) else {
                break;
            };
            let continues = match (run.mapping, following.mapping) {
                (Mapping::Unallocated, Mapping::Unallocated) | (Mapping::Zero, Mapping::Zero) => {
                    true
                }
                (Mapping::Data { host_offset: a }, Mapping::Data { host_offset: b }) => {
                    a.checked_add(run.len) == Some(b)
                }
                _ => false,
            };
            if !continues {
                break;
            }
            run.len += following.len;
            next += following.len;
            // A run that ends inside a cluster (subclusters) cannot be extended further.
            if following.len != cluster_size {
                break;
            }
        }
        Ok(run)
    }

    /// The cached slice of the table at `table_offset` holding u64 entry `index`, and the
    /// entry's position in it.
    fn table_slice(
        &self,
        cache: &MetadataCache,
        table_offset: u64,
        index: u64,
    ) -> Result<(Arc<[u64]>, usize), ReadError> {
        let slice_bytes = TABLE_SLICE_BYTES.min(self.cluster_size());
        let entries_per_slice = slice_bytes / 8;
        let slice_offset = (index / entries_per_slice)
            .checked_mul(slice_bytes)
            .and_then(|o| o.checked_add(table_offset))
            .ok_or(FormatError::OffsetOverflow("table slice"))?;
        let key = CacheKey::TableSlice {
            image: self.id,
            offset: slice_offset,
        };
        let slice = match cache.get(&key) {
            Some(CacheValue::TableSlice(slice)) => slice,
            _ => {
                let mut raw = vec![0u8; slice_bytes as usize];
                self.source.read_exact_at(&mut raw, slice_offset)?;
                let slice: Arc<[u64]> = raw.chunks_exact(8).map(|c| header::be_u64(c, 0)).collect();
                cache.insert(key, CacheValue::TableSlice(slice.clone()));
                slice
            }
        };
        Ok((slice, (index % entries_per_slice) as usize))
    }

    /// Entry `index` (u64-sized) of the table at `table_offset`, through the slice cache.
    fn table_entry(
        &self,
        cache: &MetadataCache,
        table_offset: u64,
        index: u64,
    ) -> Result<u64, ReadError> {
        let (slice, at) = self.table_slice(cache, table_offset, index)?;
        Ok(slice.get(at).copied().unwrap_or(0))
    }

    /// The decompressed contents of the compressed cluster at `host_offset`, through the cache.
    pub fn compressed_cluster(
        &self,
        cache: &MetadataCache,
        host_offset: u64,
        compressed_len: u64,
    ) -> Result<Arc<[u8]>, ReadError> {
        let key = CacheKey::Cluster {
            image: self.id,
            offset: host_offset,
        };
        if let Some(CacheValue::Cluster(cluster)) = cache.get(&key) {
            return Ok(cluster);
        }
        // compressed_len is at most 2^(cluster_bits-8) sectors: under 2 MiB.
        let mut input = vec![0u8; compressed_len as usize];
        self.source.read_exact_at(&mut input, host_offset)?;
        let mut output = vec![0u8; self.cluster_size() as usize];
        if !compression::decompress(self.header.compression_type, &input, &mut output) {
            return Err(FormatError::Decompression(host_offset).into());
        }
        let cluster: Arc<[u8]> = Arc::from(output);
        cache.insert(key, CacheValue::Cluster(cluster.clone()));
        Ok(cluster)
    }

    pub fn source(&self) -> &Arc<dyn ByteSource> {
        &self.source
    }
}

/// The fuzz target's body: open arbitrary bytes as an image, list its snapshots and map a
/// spread of offsets in every view, reading compressed clusters. Must never panic, hang or
/// allocate without bound, whatever `data` holds. Kept in the library so the regression tests
/// run exactly what the fuzzer runs.
pub fn fuzz_one_image(data: &[u8]) {
    let cache = MetadataCache::new(1 << 20);
    let source: Arc<dyn ByteSource> = Arc::new(crate::source::MemorySource::new(data.to_vec()));
    let Ok(image) = Qcow2Image::open(source) else {
        return;
    };
    let mut views = vec![image.active_view()];
    views.extend(image.snapshots.iter().map(|s| image.snapshot_view(s)));
    for view in views.iter().take(8) {
        let mut offset = 0u64;
        for _ in 0..256 {
            if offset >= view.disk_size {
                break;
            }
            match image.map(view, &cache, offset) {
                Ok(run) => {
                    if let Mapping::Compressed {
                        host_offset,
                        compressed_len,
                        ..
                    } = run.mapping
                    {
                        let _ = image.compressed_cluster(&cache, host_offset, compressed_len);
                    }
                    offset = offset.saturating_add(run.len.max(1));
                }
                Err(_) => offset = offset.saturating_add(image.cluster_size()),
            }
        }
    }
}
