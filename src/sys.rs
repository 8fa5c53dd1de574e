//! The libc calls that Rust's standard library does not wrap: process-wide malloc settings
//! and asking the kernel what of a file its page cache holds.

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

/// cachestat(2)'s number; new system calls have one number on every architecture.
#[cfg(target_os = "linux")]
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Whether the page cache holds every page of `[offset, offset + len)` of `file`, from
/// cachestat(2) (Linux 6.5 and later); None when the kernel cannot tell.
pub fn range_is_cached(file: &std::fs::File, offset: u64, len: u64) -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let page = page_size();
        let first = offset / page;
        let end = offset.checked_add(len)?.div_ceil(page);
        let range = CachestatRange { off: offset, len };
        let mut stat = Cachestat::default();
        // SAFETY: cachestat reads `range` and writes `stat`, both live, correctly laid out
        // (repr(C), as in linux/mman.h) and exclusively borrowed for the call; the fd is open.
        let r = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &range as *const CachestatRange,
                &mut stat as *mut Cachestat,
                0u32,
            )
        };
        (r == 0).then(|| stat.nr_cache >= end - first)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
        None
    }
}

fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf only reads a constant of the system.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
    })
}
