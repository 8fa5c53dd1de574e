//! Fuzzes partition tables (MBR, EBR chains, GPT) and the ext2/3/4 reader (superblock, group
//! descriptors, inodes, extent trees, block maps, directories, symlinks, inline data, xattrs,
//! JBD2 recovery) over arbitrary bytes taken as a whole disk: volumes are found and opened,
//! a bounded part of each tree is walked and its files, links and xattrs read. Run from the
//! repository root: `RUSTC_BOOTSTRAP=1 cargo fuzz run guest_ext4 -- -max_total_time=300
//! -rss_limit_mb=512`. Crashes found are kept as regression tests in tests/guest_ext4.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtsnapfs::guest::fuzz_one_disk(data);
});
