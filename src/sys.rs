//! Process-wide settings that need a libc call.

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
