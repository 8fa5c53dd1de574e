//! A backing chain read as one disk.
//!
//! A guest range is resolved top-down: each layer maps what it holds, and only the parts a
//! layer leaves unallocated go to the layer below; past a backing layer's own size the bytes
//! are zeros. The result is a list of [`Extent`]s (zeros, a host range of one layer, or part of
//! a compressed cluster) with adjacent host ranges merged, so a large read becomes a few large
//! preads. Resolved maps are cached per 2 MiB chunk, so the cost of a read after the first does
//! not grow with the depth of the chain; they are resolved a 32 MiB window at a time, so even
//! the first read asks each layer once per window (one L2 slice of a 64 KiB-cluster image), not
//! once per chunk.
//!
//! A sequential reader also gets the host ranges ahead of it started with a page-cache hint,
//! so a cold read of a deep chain, whose data is scattered over many files, keeps the disk as
//! busy as a read of one file does.
//!
//! A `Chain` is an immutable view of the images' metadata at the time it was opened: a chain
//! whose top changes (a running guest's disk) is re-opened to see new allocations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::{Format, ImageError};
use crate::cache::{next_id, CacheKey, CacheValue, MetadataCache};
use crate::extent::{Extent, ExtentSource};
use crate::qcow2::{L1View, Mapping, Qcow2Image};
use crate::source::{prefetch_in_background, ByteSource};

/// Resolved maps are cached per chunk of this many guest bytes.
pub const CHUNK_BITS: u32 = 21;
const CHUNK_SIZE: u64 = 1 << CHUNK_BITS;
/// Chunk maps are resolved this many chunks at a time (32 MiB): a layer that holds nothing in
/// the window is asked once instead of 16 times, which is what a deep chain's first read
/// costs. 32 MiB is what one 4 KiB L2 slice maps with 64 KiB clusters, so a random read that
/// misses the cache reads no more metadata than it would for a single chunk.
const WINDOW_CHUNKS: u64 = 16;
/// Host prefetch: a read at least `PREFETCH_MIN_READ` long that starts within `PREFETCH_SLACK`
/// of where the previous one ended is sequential (the kernel's readahead requests arrive out
/// of order across FUSE threads), and the host ranges up to `PREFETCH_AHEAD` past it are
/// started, at least `PREFETCH_STEP` at a time. Small random reads never prefetch, and nor do
/// two readers of one disk far apart from each other (each breaks the other's sequence).
const PREFETCH_MIN_READ: u64 = 128 << 10;
const PREFETCH_SLACK: u64 = 8 << 20;
const PREFETCH_AHEAD: u64 = 16 << 20;
const PREFETCH_STEP: u64 = 2 << 20;
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

pub struct Chain {
    id: u64,
    layers: Vec<Layer>,
    cache: Arc<MetadataCache>,
    allocated: OnceLock<u64>,
    /// Where the last read ended, to tell sequential reads from random ones.
    last_read_end: AtomicU64,
    /// How far ahead host reads have been started for the current sequential reader.
    prefetched_to: AtomicU64,
}

impl Chain {
    pub(crate) fn new(layers: Vec<Layer>, cache: Arc<MetadataCache>) -> Chain {
        Chain {
            id: next_id(),
            layers,
            cache,
            allocated: OnceLock::new(),
            last_read_end: AtomicU64::new(0),
            prefetched_to: AtomicU64::new(0),
        }
    }

    /// The guest-visible size: the top layer's (or its snapshot's) virtual size.
    pub fn size(&self) -> u64 {
        self.layers.first().map_or(0, |l| l.size)
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Fills `buf` with the guest bytes at `offset`, zeros past the end of the disk.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let mut done = 0usize;
        while done < buf.len() {
            // `done` bytes were read from `offset` on, so `offset + done` is within the disk.
            let n = self.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
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
        self.prefetch_after(offset, end);
        let mut pending = PendingRead::default();
        let mut chunk_index = offset >> CHUNK_BITS;
        loop {
            let chunk = self.chunk(chunk_index)?;
            for part in chunk.iter().filter_map(|e| e.clipped(offset, end)) {
                let at = (part.guest_offset - offset) as usize;
                let part_len = part.len as usize;
                match part.source {
                    ExtentSource::Zero => buf[at..at + part_len].fill(0),
                    ExtentSource::Data { layer, host_offset } => {
                        if !pending.extend(layer, host_offset, at, part_len) {
                            self.flush(&mut pending, buf)?;
                            pending = PendingRead::start(layer, host_offset, at, part_len);
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
                        let from = offset_in_cluster as usize;
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

    /// Starts host reads of what follows a sequential read (see `PREFETCH_AHEAD`). Only a
    /// hint: a range whose map cannot be resolved is skipped, and the read that needs it
    /// reports the error.
    fn prefetch_after(&self, offset: u64, end: u64) {
        let last_end = self.last_read_end.swap(end, Ordering::Relaxed);
        if end - offset < PREFETCH_MIN_READ || offset.abs_diff(last_end) > PREFETCH_SLACK {
            return;
        }
        let target = end.saturating_add(PREFETCH_AHEAD).min(self.size());
        let started = self.prefetched_to.load(Ordering::Relaxed);
        // A mark behind this read or beyond its window belongs to an earlier stream.
        let from = if started < end || started > target {
            end
        } else {
            started
        };
        let wanted = target.saturating_sub(from);
        // Near the end of the disk the last step may be shorter than PREFETCH_STEP.
        if wanted == 0 || wanted < PREFETCH_STEP.min(self.size() - end) {
            return;
        }
        // One thread starts each range.
        if self
            .prefetched_to
            .compare_exchange(started, target, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // Runs contiguous in one layer's file are hinted as one range.
        let mut run: Option<(u32, u64, u64)> = None;
        let hint = |(layer, start, len): (u32, u64, u64)| {
            prefetch_in_background(self.layers[layer as usize].data.clone(), start, len);
        };
        for index in (from >> CHUNK_BITS)..=((target - 1) >> CHUNK_BITS) {
            let Ok(chunk) = self.chunk(index) else {
                break;
            };
            for extent in chunk.iter().filter_map(|e| e.clipped(from, target)) {
                let ExtentSource::Data { layer, host_offset } = extent.source else {
                    continue;
                };
                match &mut run {
                    Some((l, start, len))
                        if *l == layer && start.checked_add(*len) == Some(host_offset) =>
                    {
                        *len += extent.len;
                    }
                    _ => {
                        if let Some(done) = run.replace((layer, host_offset, extent.len)) {
                            hint(done);
                        }
                    }
                }
            }
        }
        if let Some(done) = run {
            hint(done);
        }
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

    /// The resolved map of chunk `index`, from the cache or freshly resolved together with
    /// the rest of its window.
    fn chunk(&self, index: u64) -> Result<Arc<[Extent]>, ImageError> {
        let key = |index| CacheKey::ChainChunk {
            chain: self.id,
            index,
        };
        if let Some(CacheValue::ChainChunk(extents)) = self.cache.get(&key(index)) {
            return Ok(extents);
        }
        let size = self.size();
        let first = index - index % WINDOW_CHUNKS;
        let window_start = first << CHUNK_BITS;
        let window_len = (WINDOW_CHUNKS << CHUNK_BITS).min(size.saturating_sub(window_start));
        let extents = self.resolve(window_start, window_len)?;
        let mut wanted = None;
        let mut rest = extents.as_slice();
        let mut chunk_start = window_start;
        let mut chunk_index = first;
        while chunk_start < window_start + window_len {
            let chunk_end = (chunk_start + CHUNK_SIZE).min(size);
            let mut map = Vec::new();
            while let Some(extent) = rest.first() {
                if let Some(part) = extent.clipped(chunk_start, chunk_end) {
                    map.push(part);
                }
                if extent.end() > chunk_end {
                    break;
                }
                rest = &rest[1..];
            }
            let map: Arc<[Extent]> = Arc::from(map);
            self.cache
                .insert(key(chunk_index), CacheValue::ChainChunk(map.clone()));
            if chunk_index == index {
                wanted = Some(map);
            }
            chunk_start = chunk_end;
            chunk_index += 1;
        }
        // `index` is inside the window unless the disk ends before it; then its map is empty.
        Ok(wanted.unwrap_or_else(|| Arc::from(Vec::new())))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemorySource;
    use parking_lot::Mutex;
    use std::time::{Duration, Instant};

    /// A store of zeros that records the prefetch hints it gets.
    #[derive(Default)]
    struct HintRecorder {
        hints: Mutex<Vec<(u64, u64)>>,
    }

    impl ByteSource for HintRecorder {
        fn read_exact_at(&self, buf: &mut [u8], _offset: u64) -> std::io::Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn byte_len(&self) -> std::io::Result<u64> {
            Ok(1 << 40)
        }
        fn prefetch(&self, offset: u64, len: u64) {
            self.hints.lock().push((offset, len));
        }
    }

    fn raw_chain(data: Arc<dyn ByteSource>, size: u64) -> Chain {
        let layer = Layer {
            path: "disk.raw".into(),
            format: Format::Raw,
            size,
            kind: LayerKind::Raw,
            data,
            data_file: None,
        };
        Chain::new(vec![layer], Arc::new(MetadataCache::new(1 << 20)))
    }

    /// Waits up to 5 s for the hints to cover `[start, end)` (they arrive from another thread).
    fn hinted_range(recorder: &HintRecorder, start: u64, end: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut hints = recorder.hints.lock().clone();
            hints.sort();
            let mut covered = start;
            for (offset, len) in hints {
                if offset <= covered {
                    covered = covered.max(offset + len);
                }
            }
            if covered >= end {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn window_maps_are_cut_at_chunk_edges_with_host_offsets_moved_along() {
        // 40 MiB + 4 KiB: a full window, a second one and a short last chunk.
        let size = (40 << 20) + 4096;
        let chain = raw_chain(Arc::new(MemorySource::new(vec![7; 16])), size);
        for index in [0u64, 1, 15, 16, 19, 20] {
            let map = chain.chunk(index).unwrap();
            let start = index << CHUNK_BITS;
            let expected_len = CHUNK_SIZE.min(size - start);
            assert_eq!(
                &map[..],
                &[Extent {
                    guest_offset: start,
                    len: expected_len,
                    source: ExtentSource::Data {
                        layer: 0,
                        host_offset: start
                    },
                }],
                "chunk {index}"
            );
        }
        assert!(
            chain.chunk(21).unwrap().is_empty(),
            "past the end of the disk"
        );
    }

    #[test]
    fn sequential_reads_start_the_host_ranges_ahead_of_them() {
        let recorder = Arc::new(HintRecorder::default());
        let chain = raw_chain(recorder.clone(), 256 << 20);
        let mut buf = vec![0u8; 1 << 20];
        for i in 0..4u64 {
            chain.read_at(&mut buf, i << 20).unwrap();
        }
        assert!(
            // Hints advance a step at a time, so the last step may still be to come.
            hinted_range(
                &recorder,
                1 << 20,
                (4 << 20) + PREFETCH_AHEAD - PREFETCH_STEP
            ),
            "hints: {:?}",
            recorder.hints.lock()
        );
        let far = recorder.hints.lock().iter().map(|h| h.0 + h.1).max();
        assert!(
            far <= Some((4 << 20) + PREFETCH_AHEAD),
            "no further than the window"
        );
    }

    #[test]
    fn small_random_reads_start_no_host_reads() {
        let recorder = Arc::new(HintRecorder::default());
        let chain = raw_chain(recorder.clone(), 1 << 30);
        let mut buf = vec![0u8; 4096];
        for i in 0..64u64 {
            let offset = (i * 7919 % 256) << 22;
            chain.read_at(&mut buf, offset).unwrap();
        }
        // A large read far from the last one is not sequential either.
        let mut big = vec![0u8; 1 << 20];
        chain.read_at(&mut big, 900 << 20).unwrap();
        chain.read_at(&mut big, 100 << 20).unwrap();
        // A sequential control read proves hints would have been seen by now.
        let control = Arc::new(HintRecorder::default());
        let control_chain = raw_chain(control.clone(), 1 << 30);
        control_chain.read_at(&mut big, 0).unwrap();
        assert!(hinted_range(&control, 1 << 20, 2 << 20));
        assert_eq!(recorder.hints.lock().len(), 0);
    }
}
