//! Fuzzes the NTFS reader (boot sector, MFT records and their fixups, attribute lists, run
//! lists, the $I30 index B+tree, LZNT1 compression, reparse points and Interix files, names)
//! over arbitrary bytes taken as the start of an NTFS volume as long as its boot sector
//! claims, the rest reading as zeros, so a seed with its trailing zeros cut is still a whole
//! volume. Each input is opened, a bounded part of its tree walked and its files, links and
//! streams read through a small shared metadata cache. Seed it with small images made by
//! mkntfs and filled through ntfs-3g (trailing zeros cut) and run from fuzz/:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run guest_ntfs -- -max_total_time=600 -max_len=4194304
//! -timeout=10 -rss_limit_mb=2048`. Crashes, timeouts and OOMs found are kept as
//! regression tests in tests/fuzz_regressions.rs. Partition tables in front of NTFS volumes
//! are fuzzed by guest_ext4, whose body opens every format.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtsnapfs::guest::ntfs::fuzz_one_volume(data);
});
