//! A backing chain read as one disk.
//!
//! A guest range is resolved top-down: each layer maps what it holds, and only the parts a
//! layer leaves unallocated go to the layer below; past a backing layer's own size the bytes
//! are zeros. The result is a list of [`Extent`]s (zeros, a host range of one layer, or part of
//! a compressed cluster) with adjacent host ranges merged, so a large read becomes a few large
//! preads. Resolved maps are cached per 2 MiB chunk, so the cost of a read after the first does
//! not grow with the depth of the chain.
//!
//! A `Chain` is an immutable view of the images' metadata at the time it was opened: a chain
//! whose top changes (a running guest's disk) is re-opened to see new allocations.

use std::sync::{Arc, OnceLock};

use super::{Format, ImageError};
use crate::cache::{next_id, CacheKey, CacheValue, MetadataCache};
use crate::qcow2::{L1View, Mapping, Qcow2Image};
use crate::source::ByteSource;

/// Resolved maps are cached per chunk of this many guest bytes.
pub const CHUNK_BITS: u32 = 21;
const CHUNK_SIZE: u64 = 1 << CHUNK_BITS;
/// Scans over large ranges (allocation, SEEK_DATA/SEEK_HOLE) resolve this much at a time, so
/// a fragmented image never needs more than a few MiB of extents at once.
const SCAN_WINDOW: u64 = 64 << 20;

pub enum LayerKind {
    Raw,
    Qcow2 {
        image: Arc<Qcow2Image>,
        view: L1View,
    },
}

/// One image of a chain.
pub struct Layer {
    pub path: std::path::PathBuf,
    pub format: Format,
    /// The guest size this layer covers (a snapshot's own disk size for a snapshot view).
    pub size: u64,
    pub kind: LayerKind,
    /// Where this layer's data clusters are read: the image itself or its external data file.
    pub data: Arc<dyn ByteSource>,
    pub data_file: Option<std::path::PathBuf>,
}

impl Layer {
    pub fn qcow2(&self) -> Option<&Qcow2Image> {
        match &self.kind {
            LayerKind::Qcow2 { image, .. } => Some(image),
            LayerKind::Raw => None,
        }
    }
}

/// Where the bytes of one guest range come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentSource {
    Zero,
    /// Contiguous bytes at `host_offset` in layer `layer`'s data file.
    Data {
        layer: u32,
        host_offset: u64,
    },
    /// Bytes from `offset_in_cluster` on of a compressed cluster of layer `layer`.
    Compressed {
        layer: u32,
        host_offset: u64,
        compressed_len: u64,
        offset_in_cluster: u64,
    },
}

impl ExtentSource {
    pub fn is_data(&self) -> bool {
        !matches!(self, ExtentSource::Zero)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub guest_offset: u64,
    pub len: u64,
    pub source: ExtentSource,
}

impl Extent {
    fn end(&self) -> u64 {
        self.guest_offset + self.len
    }
}

pub struct Chain {
    id: u64,
    layers: Vec<Layer>,
    cache: Arc<MetadataCache>,
    allocated: OnceLock<u64>,
}

impl Chain {
    pub(crate) fn new(layers: Vec<Layer>, cache: Arc<MetadataCache>) -> Chain {
        Chain {
            id: next_id(),
            layers,
            cache,
            allocated: OnceLock::new(),
        }
    }

    /// The guest-visible size: the top layer's (or its snapshot's) virtual size.
    pub fn size(&self) -> u64 {
        self.layers.first().map_or(0, |l| l.size)
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Reads guest bytes at `offset` into `buf`; returns how many were read (fewer than asked
    /// only at the end of the disk). Safe to call from many threads at once.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, ImageError> {
        let size = self.size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(size - offset);
        let end = offset + len;
        let buf = &mut buf[..len as usize];
        let mut pending = PendingRead::default();
        let mut chunk_index = offset >> CHUNK_BITS;
        loop {
            let chunk = self.chunk(chunk_index)?;
            for extent in chunk.iter() {
                let start = extent.guest_offset.max(offset);
                let stop = extent.end().min(end);
                if start >= stop {
                    continue;
                }
                let at = (start - offset) as usize;
                let part_len = (stop - start) as usize;
                let skip = start - extent.guest_offset;
                match extent.source {
                    ExtentSource::Zero => buf[at..at + part_len].fill(0),
                    ExtentSource::Data { layer, host_offset } => {
                        let host = host_offset + skip;
                        if !pending.extend(layer, host, at, part_len) {
                            self.flush(&mut pending, buf)?;
                            pending = PendingRead::start(layer, host, at, part_len);
                        }
                    }
                    ExtentSource::Compressed {
                        layer,
                        host_offset,
                        compressed_len,
                        offset_in_cluster,
                    } => {
                        let l = &self.layers[layer as usize];
                        let image = l
                            .qcow2()
                            .expect("compressed extents come from qcow2 layers");
                        let cluster = image
                            .compressed_cluster(&self.cache, host_offset, compressed_len)
                            .map_err(|e| ImageError::from_read(&l.path, e))?;
                        let from = (offset_in_cluster + skip) as usize;
                        buf[at..at + part_len].copy_from_slice(&cluster[from..from + part_len]);
                    }
                }
            }
            chunk_index += 1;
            if chunk_index << CHUNK_BITS >= end {
                break;
            }
        }
        self.flush(&mut pending, buf)?;
        Ok(len as usize)
    }

    fn flush(&self, pending: &mut PendingRead, buf: &mut [u8]) -> Result<(), ImageError> {
        if pending.len == 0 {
            return Ok(());
        }
        let layer = &self.layers[pending.layer as usize];
        let target = &mut buf[pending.buf_offset..pending.buf_offset + pending.len];
        layer
            .data
            .read_exact_at(target, pending.host_offset)
            .map_err(|source| ImageError::Io {
                path: layer
                    .data_file
                    .clone()
                    .unwrap_or_else(|| layer.path.clone()),
                source,
            })?;
        pending.len = 0;
        Ok(())
    }

    /// The resolved map of chunk `index`, from the cache or freshly resolved.
    fn chunk(&self, index: u64) -> Result<Arc<[Extent]>, ImageError> {
        let key = CacheKey::ChainChunk {
            chain: self.id,
            index,
        };
        if let Some(CacheValue::ChainChunk(extents)) = self.cache.get(&key) {
            return Ok(extents);
        }
        let start = index << CHUNK_BITS;
        let len = CHUNK_SIZE.min(self.size().saturating_sub(start));
        let extents: Arc<[Extent]> = Arc::from(self.resolve(start, len)?);
        self.cache
            .insert(key, CacheValue::ChainChunk(extents.clone()));
        Ok(extents)
    }

    /// Resolves `[offset, offset + len)` (within the disk) into merged extents, uncached.
    pub fn resolve(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ImageError> {
        let mut out = Vec::new();
        self.resolve_layer(0, offset, len, &mut out)?;
        Ok(out)
    }

    fn resolve_layer(
        &self,
        depth: usize,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent>,
    ) -> Result<(), ImageError> {
        let end = offset.saturating_add(len);
        let Some(layer) = self.layers.get(depth) else {
            push_merged(out, offset, len, ExtentSource::Zero);
            return Ok(());
        };
        // Depth is capped at MAX_CHAIN_DEPTH (256), so the layer index fits in u32.
        let layer_index = depth as u32;
        let covered_end = end.min(layer.size).max(offset);
        let mut cursor = offset;
        while cursor < covered_end {
            let remaining = covered_end - cursor;
            let (run_len, source) = match &layer.kind {
                LayerKind::Raw => (
                    remaining,
                    Some(ExtentSource::Data {
                        layer: layer_index,
                        host_offset: cursor,
                    }),
                ),
                LayerKind::Qcow2 { image, view } => {
                    let run = image
                        .map(view, &self.cache, cursor)
                        .map_err(|e| ImageError::from_read(&layer.path, e))?;
                    let source = match run.mapping {
                        Mapping::Data { host_offset } => Some(ExtentSource::Data {
                            layer: layer_index,
                            host_offset,
                        }),
                        Mapping::Zero => Some(ExtentSource::Zero),
                        Mapping::Unallocated => None,
                        Mapping::Compressed {
                            host_offset,
                            compressed_len,
                            offset_in_cluster,
                        } => Some(ExtentSource::Compressed {
                            layer: layer_index,
                            host_offset,
                            compressed_len,
                            offset_in_cluster,
                        }),
                    };
                    (run.len.min(remaining), source)
                }
            };
            match source {
                Some(source) => push_merged(out, cursor, run_len, source),
                None => self.resolve_layer(depth + 1, cursor, run_len, out)?,
            }
            cursor += run_len;
        }
        if covered_end < end {
            push_merged(out, covered_end, end - covered_end, ExtentSource::Zero);
        }
        Ok(())
    }

    /// Guest bytes that hold data in some layer (not holes or zero clusters): what `st_blocks`
    /// reports. Computed once per chain.
    pub fn allocated_bytes(&self) -> Result<u64, ImageError> {
        if let Some(&bytes) = self.allocated.get() {
            return Ok(bytes);
        }
        let mut total = 0u64;
        self.scan(0, |e| {
            if e.source.is_data() {
                total += e.len;
            }
            false
        })?;
        Ok(*self.allocated.get_or_init(|| total))
    }

    /// SEEK_DATA: the first offset at or after `offset` that holds data, if any.
    pub fn next_data(&self, offset: u64) -> Result<Option<u64>, ImageError> {
        let mut found = None;
        self.scan(offset, |e| {
            if e.source.is_data() {
                found = Some(e.guest_offset.max(offset));
                return true;
            }
            false
        })?;
        Ok(found)
    }

    /// SEEK_HOLE: the first offset at or after `offset` in a hole; the end of the disk counts
    /// as a hole, as lseek(2) specifies.
    pub fn next_hole(&self, offset: u64) -> Result<u64, ImageError> {
        let mut found = self.size();
        self.scan(offset, |e| {
            if !e.source.is_data() {
                found = e.guest_offset.max(offset);
                return true;
            }
            false
        })?;
        Ok(found)
    }

    /// Visits the extents from `offset` to the end of the disk, a window at a time, until
    /// `visit` returns true.
    fn scan(&self, offset: u64, mut visit: impl FnMut(&Extent) -> bool) -> Result<(), ImageError> {
        let size = self.size();
        let mut cursor = offset;
        while cursor < size {
            let len = SCAN_WINDOW.min(size - cursor);
            for extent in self.resolve(cursor, len)? {
                if visit(&extent) {
                    return Ok(());
                }
            }
            cursor += len;
        }
        Ok(())
    }
}

/// Appends an extent, merging it into the previous one when they continue each other.
fn push_merged(out: &mut Vec<Extent>, guest_offset: u64, len: u64, source: ExtentSource) {
    if len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.end() == guest_offset {
            let continues = match (last.source, source) {
                (ExtentSource::Zero, ExtentSource::Zero) => true,
                (
                    ExtentSource::Data {
                        layer: a,
                        host_offset: ha,
                    },
                    ExtentSource::Data {
                        layer: b,
                        host_offset: hb,
                    },
                ) => a == b && ha.checked_add(last.len) == Some(hb),
                _ => false,
            };
            if continues {
                last.len += len;
                return;
            }
        }
    }
    out.push(Extent {
        guest_offset,
        len,
        source,
    });
}

/// A run of data extents that are contiguous both in the output buffer and in one layer's
/// file: issued as a single pread.
#[derive(Default)]
struct PendingRead {
    layer: u32,
    host_offset: u64,
    buf_offset: usize,
    len: usize,
}

impl PendingRead {
    fn start(layer: u32, host_offset: u64, buf_offset: usize, len: usize) -> PendingRead {
        PendingRead {
            layer,
            host_offset,
            buf_offset,
            len,
        }
    }

    fn extend(&mut self, layer: u32, host_offset: u64, buf_offset: usize, len: usize) -> bool {
        let continues = self.len > 0
            && self.layer == layer
            && self.buf_offset + self.len == buf_offset
            && self.host_offset.checked_add(self.len as u64) == Some(host_offset);
        if continues {
            self.len += len;
        }
        continues
    }
}
