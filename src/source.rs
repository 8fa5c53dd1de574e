//! Positioned reads over an image file or an in-memory buffer.
//!
//! Everything the resolver reads goes through [`ByteSource::read_exact_at`], which has QEMU's
//! semantics for files: bytes past the end of the file read as zeros. That is what makes a
//! truncated image (or a 2 TiB disk declared in a 4 KiB file) read like QEMU reads it instead of
//! failing. The in-memory implementation lets the parser be tested and fuzzed without files.
//!
//! Large reads of image data that is not in the host's page cache go around it (O_DIRECT), as
//! QEMU's cache=none does: the bytes then land in the FUSE page cache only, not in both, and a
//! cold sequential read no longer pays for filling the host cache first (on the benchmark host a
//! cold 1-deep disk read at 0.7-1.2 GB/s through the host cache, 1.4-1.5 GB/s around it). Data
//! already cached, small reads and unaligned ones are read through the cache as before.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

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
}

/// Memory address, file offset and length alignment of reads made with O_DIRECT: 4 KiB
/// satisfies devices with 512-byte and with 4 KiB logical blocks.
pub const DIRECT_ALIGN: usize = 4096;
/// Reads smaller than this go through the host's page cache even when it does not hold them:
/// small reads are random ones, which the cache serves better the second time.
const DIRECT_MIN_BYTES: usize = 256 << 10;

/// A file read with pread(2).
pub struct FileSource {
    file: File,
    /// The same file opened with O_DIRECT; None where its filesystem refuses that.
    direct: Option<File>,
}

impl FileSource {
    pub fn open(path: &Path) -> io::Result<FileSource> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = File::open(path)?;
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Ok(FileSource { file, direct })
    }

    /// Reads the aligned head of `buf` around the page cache when that is worth it: a large,
    /// aligned read of a range the cache does not hold in full. Returns how many bytes were
    /// read (0: none, read it all through the cache); stops early at the end of the file.
    fn read_direct(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Some(direct) = &self.direct else {
            return Ok(0);
        };
        let aligned_len = buf.len() - buf.len() % DIRECT_ALIGN;
        if aligned_len < DIRECT_MIN_BYTES
            || !offset.is_multiple_of(DIRECT_ALIGN as u64)
            || buf.as_ptr().align_offset(DIRECT_ALIGN) != 0
            || crate::sys::range_is_cached(&self.file, offset, aligned_len as u64) != Some(false)
        {
            return Ok(0);
        }
        let mut done = 0;
        while done < aligned_len {
            let at = offset + done as u64;
            match direct.read_at(&mut buf[done..aligned_len], at) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    if !n.is_multiple_of(DIRECT_ALIGN) {
                        break; // the end of the file, mid-block
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A device whose blocks are larger than DIRECT_ALIGN: the cache it is.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

impl ByteSource for FileSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let direct = self.read_direct(buf, offset)?;
        let mut buf = &mut buf[direct..];
        let mut offset = offset + direct as u64;
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
}

/// A reusable read buffer whose start is aligned for O_DIRECT.
pub struct AlignedBuffer {
    bytes: Vec<u8>,
}

impl AlignedBuffer {
    pub const fn new() -> AlignedBuffer {
        AlignedBuffer { bytes: Vec::new() }
    }

    /// `len` bytes starting at a DIRECT_ALIGN-aligned address. Their contents are whatever
    /// the last use left: callers overwrite what they hand on.
    pub fn get(&mut self, len: usize) -> &mut [u8] {
        let need = len.saturating_add(DIRECT_ALIGN);
        if self.bytes.len() < need {
            self.bytes = vec![0; need];
        }
        let pad = self.bytes.as_ptr().align_offset(DIRECT_ALIGN);
        &mut self.bytes[pad..pad + len]
    }
}

impl Default for AlignedBuffer {
    fn default() -> Self {
        AlignedBuffer::new()
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
