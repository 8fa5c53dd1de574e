//! Fuzzes header, extension, snapshot-table and L1/L2 parsing, and compressed cluster
//! decoding, over arbitrary bytes taken as a qcow2 image. Run from the repository root:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run qcow2_image -- -max_total_time=300 -max_len=262144
//! -timeout=10 -rss_limit_mb=2048` (see README). Crashes found are kept as regression tests
//! in tests/fuzz_regressions.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtsnapfs::qcow2::fuzz_one_image(data);
});
