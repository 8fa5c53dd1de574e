//! Fuzzes XFS log recovery (head and tail search, record unpacking, transaction reassembly,
//! buffer/inode/icreate replay) over arbitrary bytes: the first 512 are the superblock, the
//! rest the log, placed at the superblock's log start on a device that is zeros elsewhere.
//! Seed it with a dirty image's superblock and log (`dd` of sector 0, then of the log's
//! `logstart`/`logblocks` from `xfs_db -c 'sb 0' -c 'p logstart logblocks'`), and run from
//! fuzz/: `RUSTC_BOOTSTRAP=1 cargo fuzz run guest_xfs_log -- -max_total_time=600
//! -max_len=4194304 -timeout=10 -rss_limit_mb=2048`. Findings are kept as regression tests
//! in tests/fuzz_regressions.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtsnapfs::guest::xfs::log::fuzz_one_log(data);
});
