//! Fuzzes the FAT12/16/32 reader (boot sector, allocation table and cluster chains,
//! directories with long names, names, times) over arbitrary bytes taken as the start of a
//! FAT volume as long as its boot sector claims, the rest reading as zeros: a seed of a few
//! hundred KiB can be a FAT32 volume of 33 MiB. Each input is opened, a bounded part of its
//! tree walked and its files read through a small shared metadata cache. Seed it with
//! `fuzz/seed-corpus.sh` (FAT12, FAT16 and FAT32 images with trailing zeros cut) and run
//! from fuzz/: `RUSTC_BOOTSTRAP=1 cargo fuzz run guest_fat -- -max_total_time=600
//! -max_len=1048576 -timeout=10 -rss_limit_mb=2048`. Crashes, timeouts and OOMs found are
//! kept as regression tests in tests/fuzz_regressions.rs. Partition tables in front of FAT
//! volumes are fuzzed by guest_ext4, whose body opens every format.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtsnapfs::guest::fat::fuzz_one_volume(data);
});
