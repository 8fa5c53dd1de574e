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
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock};

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

/// A file read with pread(2).
pub struct FileSource {
    file: File,
}

impl FileSource {
    pub fn open(path: &Path) -> io::Result<FileSource> {
        Ok(FileSource {
            file: File::open(path)?,
        })
    }
}

impl ByteSource for FileSource {
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
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

    #[test]
    fn memory_source_reads_zeros_past_the_end() {
        let src = MemorySource::new(vec![1, 2, 3]);
        let mut buf = [9u8; 5];
        src.read_exact_at(&mut buf, 1).unwrap();
        assert_eq!(buf, [2, 3, 0, 0, 0]);
        src.read_exact_at(&mut buf, u64::MAX).unwrap();
        assert_eq!(buf, [0; 5]);
    }

    #[test]
    fn file_source_reads_zeros_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 10]).unwrap();
        let src = FileSource::open(&path).unwrap();
        let mut buf = [1u8; 8];
        src.read_exact_at(&mut buf, 6).unwrap();
        assert_eq!(buf, [7, 7, 7, 7, 0, 0, 0, 0]);
        assert_eq!(src.byte_len().unwrap(), 10);
    }
}
