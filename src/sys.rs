//! The libc calls std does not wrap: malloc tuning, page-cache advice and reads that must not
//! wait for the disk.

#![allow(unsafe_code)]

/// glibc's malloc arenas to use. By default glibc gives each thread that allocates
/// concurrently its own arena (up to 8 per core), and memory freed in one is not reused by
/// another: with several FUSE threads decompressing and reading, the daemon's peak resident
/// memory reached 142 MB (110 MB with two arenas) where one arena stays at 79 MB. The hot
/// read path reuses its buffers, so one arena costs no measurable contention.
const MALLOC_ARENAS: i32 = 1;

/// Limits glibc's malloc arenas; call once at start, before threads are spawned.
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread
    // exists. Its result (0 on failure) only means the default stays in force.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

/// Asks the kernel to start reading `[offset, offset + len)` of `file` into the page cache
/// without waiting for it (POSIX_FADV_WILLNEED). Advice only: a failure changes nothing but
/// speed, so it is ignored.
pub fn advise_will_need(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is borrowed from
    // a live File for the duration of the call.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED);
    }
}

/// What [`read_if_cached`] found.
pub enum CachedRead {
    /// This many bytes were in the page cache and were read (fewer than asked: the rest is
    /// not cached, or the file ends).
    Read(usize),
    /// Nothing at `offset` is in the page cache: reading it would wait for the disk.
    NotCached,
    /// The file's filesystem cannot tell (no RWF_NOWAIT support).
    Unsupported,
}

/// Reads from `file` at `offset` only what is already in the page cache, never waiting for
/// the disk (preadv2 with RWF_NOWAIT).
pub fn read_if_cached(
    file: &std::fs::File,
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<CachedRead> {
    use std::os::fd::AsRawFd;
    // Past off_t, pread fails the same way: the offset is wrong, not the filesystem.
    let Ok(offset) = libc::off_t::try_from(offset) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the one iovec describes `buf`, which is valid for writes of its length and
    // exclusively borrowed for the call; the descriptor is borrowed from a live File.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if let Ok(n) = usize::try_from(n) {
        return Ok(CachedRead::Read(n));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Ok(CachedRead::NotCached),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(CachedRead::Unsupported),
        _ => Err(e),
    }
}
