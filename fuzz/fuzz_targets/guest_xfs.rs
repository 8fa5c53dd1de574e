//! Fuzzes the XFS reader (superblock, inodes, block maps and btrees, directories, symlinks,
//! attributes and ACLs) over arbitrary bytes taken as the start of an XFS volume as long as
//! its superblock claims, the rest reading as zeros: a seed made of the first megabytes of a
//! small image still reaches its root directory, inodes and attribute blocks. CRCs are not
//! checked (the superblock's is recomputed), so mutations reach the checks behind them
//! (tests/guest_xfs.rs has one test per CRC). Each input is
//! opened, a bounded part of its tree walked and its files read through a small shared
//! metadata cache. Seed it with the start of images made by mkfs.xfs and filled through a
//! loop mount (`head -c 2M img > corpus/guest_xfs/seed`), and run from fuzz/:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run guest_xfs -- -max_total_time=600 -max_len=2097152
//! -timeout=10 -rss_limit_mb=2048`. Crashes, timeouts and OOMs found are kept as
//! regression tests in tests/fuzz_regressions.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtsnapfs::guest::xfs::fuzz_one_volume(data);
});
