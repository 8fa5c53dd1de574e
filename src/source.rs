//! Positioned reads over an image file or an in-memory buffer.
//!
//! Everything the resolver reads goes through [`ByteSource::read_exact_at`], which has QEMU's
//! semantics for files: bytes past the end of the file read as zeros. That is what makes a
//! truncated image (or a 2 TiB disk declared in a 4 KiB file) read like QEMU reads it instead of
//! failing. The in-memory implementation lets the parser be tested and fuzzed without files.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock};

use crate::sys::CachedRead;

/// A read-only byte store addressed by offset. Implementations must be safe to call from many
/// threads at once (pread has no shared cursor).
pub trait ByteSource: Send + Sync {
    /// Fills `buf` from `offset`; the part past the end of the store is filled with zeros.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The current length of the store in bytes.
    fn byte_len(&self) -> io::Result<u64>;
    /// Bytes of host storage actually allocated (st_blocks * 512 for files).
    fn allocated_bytes(&self) -> io::Result<u64> {
        self.byte_len()
    }
    /// Hints that `[offset, offset + len)` will be read soon, so the host can start reading
    /// it now. Only a hint: it may do nothing.
    fn prefetch(&self, _offset: u64, _len: u64) {}
}

/// Hints at most this many ranges ahead of the prefetch thread; more are dropped.
const PREFETCH_QUEUE: usize = 64;

type PrefetchRange = (Arc<dyn ByteSource>, u64, u64);

/// Passes a [`ByteSource::prefetch`] hint to one background thread, so the reader that gives
/// it never waits on it: starting host reads can block when the disk's queue is full, and the
/// reader has its own read to do. Hints that find the queue full are dropped.
pub fn prefetch_in_background(source: Arc<dyn ByteSource>, offset: u64, len: u64) {
    static QUEUE: OnceLock<Option<SyncSender<PrefetchRange>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (sender, receiver) = sync_channel::<PrefetchRange>(PREFETCH_QUEUE);
        std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || {
                for (source, offset, len) in receiver {
                    source.prefetch(offset, len);
                }
            })
            .ok()
            .map(|_| sender)
    });
    if let Some(queue) = queue {
        let _ = queue.try_send((source, offset, len));
    }
}

/// A read shorter than this that misses the host's page cache has the whole aligned block
/// around it read in (one qcow2 cluster at the default cluster size), as the kernel reads
/// around a page fault: a cold 4 KiB read costs the disk nearly what 64 KiB does, and the
/// guest's next small reads tend to land nearby (the rest of a directory, a file's next
/// blocks, the rest of an L2 table). Cold random 4 KiB reads of an 8-deep chain went from
/// 23,000 to 53,000-61,000 IOPS; longer reads are left to the kernel's readahead and the chain's
/// own prefetch.
const READ_AROUND: u64 = 64 << 10;

/// A file read with pread(2).
pub struct FileSource {
    file: File,
    /// Whether the file's filesystem can tell cached bytes from uncached (RWF_NOWAIT).
    tells_cached: AtomicBool,
}

impl FileSource {
    pub fn open(path: &Path) -> io::Result<FileSource> {
        Ok(FileSource {
            file: File::open(path)?,
            tells_cached: AtomicBool::new(true),
        })
    }

    /// Reads what of a short read's bytes are already cached; on a miss, starts reading the
    /// aligned block around the rest. Returns how many bytes were read (the rest is read
    /// the usual way, waiting for the disk).
    fn read_cached_or_around(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if buf.len() as u64 >= READ_AROUND || !self.tells_cached.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let n = match crate::sys::read_if_cached(&self.file, buf, offset)? {
            CachedRead::Read(n) if n == buf.len() => return Ok(n),
            CachedRead::Read(n) => n,
            CachedRead::NotCached => 0,
            CachedRead::Unsupported => {
                self.tells_cached.store(false, Ordering::Relaxed);
                return Ok(0);
            }
        };
        // Short of the end of the file: the rest is not cached. (At the end, the hint reads
        // nothing and the usual read finds the end.)
        let start = offset.saturating_add(n as u64) / READ_AROUND * READ_AROUND;
        let end = offset
            .saturating_add(buf.len() as u64)
            .div_ceil(READ_AROUND)
            .saturating_mul(READ_AROUND);
        crate::sys::advise_will_need(&self.file, start, end - start);
        Ok(n)
    }
}

impl ByteSource for FileSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let cached = self.read_cached_or_around(buf, offset)?;
        let mut buf = &mut buf[cached..];
        let mut offset = offset
            .checked_add(cached as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        while !buf.is_empty() {
            match self.file.read_at(buf, offset) {
                Ok(0) => {
                    buf.fill(0);
                    return Ok(());
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset = offset
                        .checked_add(n as u64)
                        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn allocated_bytes(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks().saturating_mul(512))
    }

    fn prefetch(&self, offset: u64, len: u64) {
        crate::sys::advise_will_need(&self.file, offset, len);
    }
}

/// An image held in memory: for tests and the fuzz target.
pub struct MemorySource {
    bytes: Vec<u8>,
}

impl MemorySource {
    pub fn new(bytes: Vec<u8>) -> MemorySource {
        MemorySource { bytes }
    }
}

impl ByteSource for MemorySource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = self.bytes.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let available = &self.bytes[start..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        buf[n..].fill(0);
        Ok(())
    }

    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn memory_source_reads_zeros_past_the_end() {
        let src = MemorySource::new(vec![1, 2, 3]);
        let mut buf = [9u8; 5];
        src.read_exact_at(&mut buf, 1).unwrap();
        assert_eq!(buf, [2, 3, 0, 0, 0]);
        src.read_exact_at(&mut buf, u64::MAX).unwrap();
        assert_eq!(buf, [0; 5]);
    }

    /// Pages of `path` in the page cache, as fincore(1) counts them.
    fn cached_pages(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--raw", "-n", "-o", "PAGES"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "fincore: {out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Pages of `path` in the page cache once at least `at_least` are there and the count has
    /// stopped changing, or as many as there are after 10 s. A page under read counts only
    /// once its read has finished (mincore(2) reports up-to-date pages), and the read that
    /// POSIX_FADV_WILLNEED starts is asynchronous: right after the advice, none of its pages
    /// may count yet. Waiting for the count to settle keeps an upper bound honest too.
    fn settled_cached_pages(path: &Path, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = cached_pages(path);
        let mut unchanged_since = Instant::now();
        loop {
            let now = Instant::now();
            if now >= deadline
                || (last >= at_least && now - unchanged_since >= Duration::from_millis(100))
            {
                return last;
            }
            std::thread::sleep(Duration::from_millis(10));
            let pages = cached_pages(path);
            if pages != last {
                last = pages;
                unchanged_since = Instant::now();
            }
        }
    }

    /// Writes `path` out and drops it from the page cache (coreutils dd's nocache).
    fn evict(path: &Path) {
        File::open(path).unwrap().sync_all().unwrap();
        let status = std::process::Command::new("dd")
            .arg(format!("if={}", path.display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(cached_pages(path), 0, "{} still cached", path.display());
    }

    #[test]
    fn a_short_read_that_misses_reads_the_aligned_block_around_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        evict(&path);
        let src = FileSource::open(&path).unwrap();
        // 4 KiB inside the 64 KiB block at 256 KiB, crossing no block boundary.
        let mut buf = vec![0u8; 4096];
        src.read_exact_at(&mut buf, 300_000).unwrap();
        assert_eq!(buf, data[300_000..304_096]);
        // Without the read-around, the kernel reads only the two pages asked for (a small
        // random read gets no readahead), so the count never reaches 16.
        let pages = settled_cached_pages(&path, 16);
        assert!((16..=32).contains(&pages), "{pages} pages cached");
        // A read that straddles two blocks brings in both.
        evict(&path);
        src.read_exact_at(&mut buf, 3 * 65536 - 100).unwrap();
        assert_eq!(buf, data[3 * 65536 - 100..3 * 65536 - 100 + 4096]);
        let pages = settled_cached_pages(&path, 32);
        assert!(pages >= 32, "{pages} pages cached");
        // Bytes already cached are read without the disk, and are the same.
        src.read_exact_at(&mut buf, 300_000).unwrap();
        assert_eq!(buf, data[300_000..304_096]);
        // An offset no file can have fails that read only: read-around stays on.
        assert!(src.read_exact_at(&mut buf, 1 << 63).is_err());
        evict(&path);
        src.read_exact_at(&mut buf, 300_000).unwrap();
        let pages = settled_cached_pages(&path, 16);
        assert!(pages >= 16, "{pages} pages cached");
    }

    #[test]
    fn file_source_reads_zeros_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 10]).unwrap();
        let src = FileSource::open(&path).unwrap();
        // Once from the page cache, once from the disk (the read-around path).
        for evicted in [false, true] {
            if evicted {
                evict(&path);
            }
            let mut buf = [1u8; 8];
            src.read_exact_at(&mut buf, 6).unwrap();
            assert_eq!(buf, [7, 7, 7, 7, 0, 0, 0, 0], "evicted: {evicted}");
        }
        assert_eq!(src.byte_len().unwrap(), 10);
    }
}
