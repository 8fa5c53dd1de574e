//! Fuzzes the LVM2 volume layer (PV label and header, metadata area headers, the circular
//! metadata buffer and its checksums, the metadata text parser, VG/LV/segment checks, linear
//! and striped mappings) and the filesystems on the LVs, over arbitrary bytes taken as a
//! whole disk: `guest::fuzz_one_disk` finds the volumes, opens each and walks a bounded part
//! of its tree. Seed it with `fuzz/seed-corpus.sh` (small LVM disks: a whole-disk PV with a
//! two-segment linear LV and a striped LV, and two PVs on MBR partitions with an LV spanning
//! both beside a thin pool) and run from fuzz/: `RUSTC_BOOTSTRAP=1 cargo fuzz run guest_lvm
//! -- -max_total_time=600 -max_len=2097152 -timeout=10 -rss_limit_mb=2048`. Crashes,
//! timeouts and OOMs found are kept as named tests in tests/guest_lvm.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtsnapfs::guest::fuzz_one_disk(data);
});
