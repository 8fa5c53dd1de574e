//! Fuzzes partition tables (MBR, EBR chains, GPT) and the ext2/3/4 reader (superblock, group
//! descriptors, inodes, extent trees, block maps, directories, symlinks, inline data, xattrs,
//! JBD2 recovery) over arbitrary bytes taken as a whole disk: volumes are found and opened,
//! a bounded part of each tree is walked and its files, links and xattrs read, through a small
//! shared metadata cache. Seed it with `fuzz/seed-corpus.sh` (ext2/3/4 images, a dirty
//! journal, MBR and GPT disks) and run from fuzz/: `RUSTC_BOOTSTRAP=1 cargo fuzz run
//! guest_ext4 -- -max_total_time=600 -max_len=2097152 -timeout=10 -rss_limit_mb=2048` (the
//! seeds are up to 2 MiB; without -max_len inputs are cut to 4 KiB, short of any filesystem).
//! Crashes, timeouts and OOMs found are kept as regression tests in tests/fuzz_regressions.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtsnapfs::guest::fuzz_one_disk(data);
});
