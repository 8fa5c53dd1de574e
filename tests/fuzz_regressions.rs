//! Runs the fuzz target's body (`qcow2::fuzz_one_image`) over systematic corruptions of real
//! images: every byte of the header and extension area, the L1 table, the first L2 table slice
//! and the snapshot table, set to 0x00, 0xff and its bitwise complement. None may panic, hang
//! or allocate without bound. Crash inputs found by `cargo fuzz` are added to REGRESSIONS
//! (none so far: 248,263 executions over 5 minutes, then 1,457,015 over 6 minutes from the
//! seed corpus, found nothing).
//!
//! Findings of the `guest_ext4` target (partition tables, ext2/3/4, journal replay) are kept
//! here too, one named test each calling `guest::fuzz_one_disk` on the input (none so far:
//! 245,688 executions over 26 minutes from the seed corpus of fuzz/seed-corpus.sh found no
//! crash, timeout or OOM). Findings of the `guest_fat` target (FAT12/16/32) are kept the same
//! way, calling `guest::fat::fuzz_one_volume` (none so far: 141,270 executions over 10
//! minutes from the FAT seeds of fuzz/seed-corpus.sh, then 84,417 over 10 minutes of the
//! chain-map reader from the corpus that grew, found no crash, timeout or OOM). Findings of
//! the `guest_xfs_log` target (XFS log recovery) are kept the same way, calling
//! `guest::xfs::log::fuzz_one_log` (none so far: 137,322 executions over 7 minutes from the
//! superblock and log of a kernel-made dirty image, then 198,921 over 5 minutes with a v4
//! copy of it without record checksums added, found no crash, timeout or OOM). Findings of
//! the `guest_ntfs` target (NTFS) are kept the same way, calling
//! `guest::ntfs::fuzz_one_volume` (none so far: 18,464 executions over 8 minutes from two
//! mkntfs images filled through ntfs-3g, then 32,001 and 79,748 over 10 minutes each from
//! the corpus that grew (233 inputs), found no crash, timeout or OOM). Findings of
//! the `guest_xfs` target (XFS) are kept the same way, calling `guest::xfs::fuzz_one_volume`
//! (none so far: 1,827,023 executions over 8 minutes from the first 2 MiB of a small v5
//! image, then 90,732 over 10 minutes adding the first 3 MiB of a 1 KiB-block image with
//! leaf and node directories, an attribute btree and a block map btree, found no crash,
//! timeout or OOM); `xfs_field_sweep_with_checksums_fixed` below sweeps real XFS metadata.

mod common;

use common::Scratch;
use virtsnapfs::qcow2::fuzz_one_image;

/// Inputs that once crashed the fuzz target, kept verbatim.
const REGRESSIONS: &[&[u8]] = &[];

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn sweep(image: &[u8], ranges: &[(usize, usize)]) -> usize {
    let mut runs = 0;
    for &(start, len) in ranges {
        for at in start..(start + len).min(image.len()) {
            for value in [0x00, 0xff, !image[at]] {
                let mut corrupt = image.to_vec();
                corrupt[at] = value;
                fuzz_one_image(&corrupt);
                runs += 1;
            }
        }
    }
    runs
}

#[test]
fn corruption_sweep_over_real_images() {
    let s = Scratch::new();
    let mut runs = 0;
    for (name, opts) in [
        ("v2.qcow2", "compat=0.10,cluster_size=4k"),
        ("v3.qcow2", "cluster_size=4k"),
        ("ext.qcow2", "extended_l2=on,cluster_size=16k"),
        ("zstd.qcow2", "compression_type=zstd,cluster_size=4k"),
    ] {
        s.create(name, opts, "1M");
        s.qemu_io(
            "qcow2",
            name,
            &[
                "write -P 1 0 8k",
                "write -z 64k 8k",
                "write -c -P 2 128k 16k",
            ],
        );
        s.qemu_img(&["snapshot", "-c", "snap", name]);
        s.qemu_io("qcow2", name, &["write -P 3 4k 4k"]);
        let image = std::fs::read(s.path(name)).unwrap();
        let l1 = be_u64(&image, 40) as usize;
        let l2 = (be_u64(&image, l1) & 0x00ff_ffff_ffff_fe00) as usize;
        let snapshots = be_u64(&image, 64) as usize;
        runs += sweep(&image, &[(0, 512), (l1, 64), (l2, 128), (snapshots, 128)]);
    }
    for input in REGRESSIONS {
        fuzz_one_image(input);
    }
    assert!(runs > 3000, "swept only {runs} corruptions");
}

/// CRC-32C as XFS stores it (little-endian `~crc32c(~0, buf)` with the field zeroed).
fn xfs_fix_crc(buf: &mut [u8], crc_off: usize) {
    buf[crc_off..crc_off + 4].fill(0);
    let mut crc = !0u32;
    for &b in buf.iter() {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    buf[crc_off..crc_off + 4].copy_from_slice(&(!crc).to_le_bytes());
}

/// The XFS reader (`guest::xfs::fuzz_one_volume`) over systematic corruptions of the start
/// of a real image (superblock, root inode and its fork), each with its CRC recomputed so
/// the checks behind the CRC are the ones exercised. None may panic, hang or allocate
/// without bound.
#[test]
fn xfs_field_sweep_with_checksums_fixed() {
    let s = Scratch::new();
    let img = s.path("x.raw");
    std::fs::write(&img, b"").unwrap();
    s.run("truncate", &["-s", "64M", img.to_str().unwrap()]);
    let out = std::process::Command::new("mkfs.xfs")
        .args(["-q", "-f", "-d", "agcount=2", img.to_str().unwrap()])
        .env("TEST_DIR", "/tmp")
        .env("TEST_DEV", "/dev/null")
        .env("QA_CHECK_FS", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let image = std::fs::read(&img).unwrap();
    let image = &image[..2 << 20];
    // The root inode: sb_rootino in a 4 KiB-block, 512-byte-inode filesystem.
    let rootino = be_u64(image, 56);
    let agblklog = u32::from(image[124]);
    let root_at =
        ((rootino >> 3) & ((1 << agblklog) - 1)) as usize * 4096 + (rootino & 7) as usize * 512;
    let mut runs = 0;
    for (start, len, crc_region) in [
        (0usize, 272usize, (0usize, 512usize, 224usize)),
        (root_at, 260, (root_at, 512, 100)),
    ] {
        for at in start..start + len {
            for value in [0x00, 0xff, !image[at]] {
                let mut corrupt = image.to_vec();
                corrupt[at] = value;
                let (cs, clen, coff) = crc_region;
                xfs_fix_crc(&mut corrupt[cs..cs + clen], coff);
                virtsnapfs::guest::xfs::fuzz_one_volume(&corrupt);
                runs += 1;
            }
        }
    }
    assert!(runs > 1500, "swept only {runs} corruptions");
}
