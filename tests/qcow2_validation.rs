//! Hostile and broken images: one test per validation. Each starts from a valid image made by
//! qemu-img, changes one field, and asserts the exact error (or, where QEMU reads such an
//! image, the exact bytes QEMU returns).

mod common;

use std::sync::Arc;

use common::Scratch;
use virtsnapfs::cache::MetadataCache;
use virtsnapfs::image::ImageError;
use virtsnapfs::qcow2::{FormatError, Qcow2Image, ReadError};
use virtsnapfs::source::MemorySource;

/// A valid v3 image with one internal snapshot, as bytes.
fn valid_image(s: &Scratch, opts: &str) -> Vec<u8> {
    s.create("v.qcow2", opts, "4M");
    s.qemu_io("qcow2", "v.qcow2", &["write -P 0x42 0 256k"]);
    s.qemu_img(&["snapshot", "-c", "snap", "v.qcow2"]);
    s.qemu_io("qcow2", "v.qcow2", &["write -P 0x43 0 64k"]);
    std::fs::read(s.path("v.qcow2")).unwrap()
}

fn open_bytes(bytes: Vec<u8>) -> Result<Qcow2Image, ReadError> {
    Qcow2Image::open(Arc::new(MemorySource::new(bytes)))
}

fn format_err(bytes: Vec<u8>) -> FormatError {
    match open_bytes(bytes) {
        Err(ReadError::Format(e)) => e,
        Err(e) => panic!("expected a format error, got {e}"),
        Ok(_) => panic!("expected a format error, the image opened"),
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Applies `change` to a fresh valid image and returns the error it causes.
fn flip(change: impl FnOnce(&mut Vec<u8>)) -> FormatError {
    let s = Scratch::new();
    let mut b = valid_image(&s, "cluster_size=64k");
    assert!(
        open_bytes(b.clone()).is_ok(),
        "the unmodified image must open"
    );
    change(&mut b);
    format_err(b)
}

#[test]
fn truncated_header() {
    assert_eq!(
        flip(|b| b.truncate(50)),
        FormatError::HeaderTruncated { len: 50 }
    );
    assert_eq!(
        flip(|b| b.truncate(90)),
        FormatError::HeaderTruncated { len: 90 }
    );
}

#[test]
fn bad_magic() {
    assert_eq!(flip(|b| b[0] = b'X'), FormatError::BadMagic);
}

#[test]
fn unsupported_version() {
    assert_eq!(
        flip(|b| put_u32(b, 4, 1)),
        FormatError::UnsupportedVersion(1)
    );
    assert_eq!(
        flip(|b| put_u32(b, 4, 4)),
        FormatError::UnsupportedVersion(4)
    );
}

#[test]
fn bad_cluster_bits() {
    assert_eq!(flip(|b| put_u32(b, 20, 8)), FormatError::ClusterBits(8));
    assert_eq!(flip(|b| put_u32(b, 20, 22)), FormatError::ClusterBits(22));
    assert_eq!(
        flip(|b| put_u32(b, 20, u32::MAX)),
        FormatError::ClusterBits(u32::MAX)
    );
}

#[test]
fn bad_header_length() {
    assert_eq!(flip(|b| put_u32(b, 100, 96)), FormatError::HeaderLength(96));
    assert_eq!(
        flip(|b| put_u32(b, 100, 1 << 20)),
        FormatError::HeaderLength(1 << 20)
    );
}

#[test]
fn unknown_incompatible_feature_bits() {
    assert_eq!(
        flip(|b| put_u64(b, 72, 1 << 5)),
        FormatError::UnknownIncompatibleFeatures(1 << 5)
    );
    assert_eq!(
        flip(|b| put_u64(b, 72, 1 << 63 | 1)),
        FormatError::UnknownIncompatibleFeatures(1 << 63)
    );
}

#[test]
fn encryption_methods() {
    assert_eq!(flip(|b| put_u32(b, 32, 1)), FormatError::Encrypted(1));
    assert_eq!(flip(|b| put_u32(b, 32, 2)), FormatError::Encrypted(2));
    assert_eq!(
        flip(|b| put_u32(b, 32, 3)),
        FormatError::UnknownCryptMethod(3)
    );
}

#[test]
fn refcount_order_above_6() {
    assert_eq!(flip(|b| put_u32(b, 96, 7)), FormatError::RefcountOrder(7));
}

#[test]
fn compression_type_and_bit_must_agree() {
    // Type 2 does not exist.
    assert_eq!(
        flip(|b| {
            put_u64(b, 72, 1 << 3);
            b[104] = 2;
        }),
        FormatError::CompressionType(2)
    );
    // zstd without the feature bit, and the bit with zlib.
    assert_eq!(flip(|b| b[104] = 1), FormatError::CompressionType(1));
    assert_eq!(
        flip(|b| put_u64(b, 72, 1 << 3)),
        FormatError::CompressionType(0)
    );
}

#[test]
fn extended_l2_needs_16k_clusters() {
    let s = Scratch::new();
    let mut b = valid_image(&s, "cluster_size=4k");
    put_u64(&mut b, 72, 1 << 4);
    assert_eq!(format_err(b), FormatError::ExtendedL2ClusterBits(12));
}

#[test]
fn absurd_virtual_size() {
    assert_eq!(
        flip(|b| put_u64(b, 24, u64::MAX)),
        FormatError::VirtualSizeTooLarge(u64::MAX)
    );
}

#[test]
fn absurd_l1_size_and_offset() {
    assert_eq!(
        flip(|b| put_u32(b, 36, u32::MAX)),
        FormatError::L1TooLarge(u32::MAX)
    );
    // 1 TiB needs 2048 L1 entries with 64 KiB clusters.
    assert_eq!(
        flip(|b| put_u64(b, 24, 1 << 40)),
        FormatError::L1TooSmall {
            l1_size: 1,
            size: 1 << 40
        }
    );
    assert_eq!(
        flip(|b| put_u64(b, 40, 0x30200)),
        FormatError::L1TableOffset(0x30200)
    );
    assert_eq!(
        flip(|b| put_u64(b, 40, 0x8000_0000_0000_0000)),
        FormatError::L1TableOffset(0x8000_0000_0000_0000)
    );
}

#[test]
fn backing_file_name_fields() {
    assert_eq!(
        flip(|b| put_u64(b, 8, 0x10_0000)),
        FormatError::BackingFileOffset(0x10_0000)
    );
    assert_eq!(
        flip(|b| {
            put_u64(b, 8, 0x200);
            put_u32(b, 16, 1024);
        }),
        FormatError::BackingFileSize(1024)
    );
}

#[test]
fn header_extension_overruns_the_header_area() {
    // The first extension after the 112-byte header: make its length run past the cluster.
    assert_eq!(
        flip(|b| {
            let at = get_u32(b, 100) as usize;
            put_u32(b, at, 0x1234_5678);
            put_u32(b, at + 4, 0x10_0000);
        }),
        FormatError::ExtensionOverrun { offset: 112 }
    );
}

#[test]
fn backing_format_extension_too_long() {
    assert_eq!(
        flip(|b| {
            let at = get_u32(b, 100) as usize;
            put_u32(b, at, 0xe279_2aca);
            put_u32(b, at + 4, 16);
        }),
        FormatError::BackingFormatTooLong(16)
    );
}

#[test]
fn data_file_bit_without_a_name() {
    // Clear the snapshot count too, or the snapshot check (data file images have none) fires.
    assert_eq!(
        flip(|b| {
            put_u64(b, 72, 1 << 2);
            put_u32(b, 60, 0);
        }),
        FormatError::DataFileNameMissing
    );
    assert_eq!(
        flip(|b| put_u64(b, 72, 1 << 2)),
        FormatError::SnapshotsWithDataFile
    );
}

#[test]
fn huge_snapshot_count() {
    assert_eq!(
        flip(|b| put_u32(b, 60, 65_537)),
        FormatError::TooManySnapshots(65_537)
    );
    assert_eq!(
        flip(|b| put_u32(b, 60, u32::MAX)),
        FormatError::TooManySnapshots(u32::MAX)
    );
    assert_eq!(
        flip(|b| put_u64(b, 64, 0x10)),
        FormatError::SnapshotTableOffset(0x10)
    );
}

/// Offset of the first snapshot table entry.
fn snap(b: &[u8]) -> usize {
    get_u64(b, 64) as usize
}

#[test]
fn snapshot_entry_fields() {
    assert_eq!(
        flip(|b| {
            let at = snap(b);
            put_u32(b, at + 36, 1025);
        }),
        FormatError::SnapshotExtraData {
            index: 0,
            size: 1025
        }
    );
    assert_eq!(
        flip(|b| {
            let at = snap(b);
            put_u64(b, at, 0x1_0200);
        }),
        FormatError::SnapshotL1Offset {
            index: 0,
            offset: 0x1_0200
        }
    );
    assert_eq!(
        flip(|b| {
            let at = snap(b);
            put_u32(b, at + 8, u32::MAX);
        }),
        FormatError::SnapshotL1TooLarge {
            index: 0,
            l1_size: u32::MAX
        }
    );
    assert_eq!(
        flip(|b| {
            let at = snap(b);
            put_u64(b, at + 48, u64::MAX);
        }),
        FormatError::SnapshotDiskSize {
            index: 0,
            size: u64::MAX
        }
    );
}

#[test]
fn snapshot_table_larger_than_64_mib() {
    // Entries of 40 + 65535 + 65535 bytes (a multiple of 8): the 64 MiB cap trips at entry
    // 512, before the rest of the claimed 65536 entries are read.
    const ENTRY: usize = (40 + 65_535 + 65_535 + 7) & !7;
    assert_eq!(
        flip(|b| {
            let base = b.len().next_multiple_of(65_536);
            b.resize(base + 520 * ENTRY, 0);
            for i in 0..520 {
                let at = base + i * ENTRY;
                b[at + 12..at + 14].copy_from_slice(&u16::MAX.to_be_bytes());
                b[at + 14..at + 16].copy_from_slice(&u16::MAX.to_be_bytes());
            }
            put_u32(b, 60, 65_536);
            put_u64(b, 64, base as u64);
        }),
        FormatError::SnapshotTableTooLarge
    );
}

#[test]
fn l2_and_data_cluster_offsets_checked_on_read() {
    let s = Scratch::new();
    let b = valid_image(&s, "cluster_size=64k");
    let cache = MetadataCache::new(1 << 20);

    let mut bad_l1 = b.clone();
    let l1 = get_u64(&b, 40) as usize;
    put_u64(&mut bad_l1, l1, get_u64(&b, l1) | 0x200);
    let image = open_bytes(bad_l1).unwrap();
    let err = image.map(&image.active_view(), &cache, 0).unwrap_err();
    assert!(
        matches!(err, ReadError::Format(FormatError::L2Unaligned(_))),
        "{err}"
    );

    let mut bad_l2 = b.clone();
    let l2 = (get_u64(&b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    put_u64(&mut bad_l2, l2, get_u64(&b, l2) | 0x200);
    let image = open_bytes(bad_l2).unwrap();
    let err = image.map(&image.active_view(), &cache, 0).unwrap_err();
    assert!(
        matches!(err, ReadError::Format(FormatError::DataClusterUnaligned(_))),
        "{err}"
    );
}

#[test]
fn garbage_compressed_data_is_an_error_not_bytes() {
    let s = Scratch::new();
    s.create("c.qcow2", "", "1M");
    s.qemu_io("qcow2", "c.qcow2", &["write -c -P 0x11 0 64k"]);
    let mut b = std::fs::read(s.path("c.qcow2")).unwrap();
    let l1 = get_u64(&b, 40) as usize;
    let l2 = (get_u64(&b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let entry = get_u64(&b, l2);
    let host = (entry & ((1 << 54) - 1)) as usize;
    b[host..host + 16].fill(0xff);
    std::fs::write(s.path("c.qcow2"), &b).unwrap();
    let chain = s.open("c.qcow2", None, None);
    let err = chain.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert!(
        matches!(&err, ImageError::Format { source: FormatError::Decompression(h), .. } if *h == host as u64),
        "{err}"
    );
    // qemu-img refuses it too.
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read 0 512"])
        .arg(s.path("c.qcow2"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("error") || text.contains("failed"),
        "qemu-io read it: {text}"
    );
}

#[test]
fn a_2_tib_disk_in_a_4_kib_file_reads_zeros_like_qemu() {
    let s = Scratch::new();
    let mut b = valid_image(&s, "cluster_size=64k");
    // 2 TiB needs 4096 L1 entries at 64 KiB clusters; point the table past EOF.
    put_u64(&mut b, 24, 2 << 40);
    put_u32(&mut b, 36, 4096);
    put_u64(&mut b, 40, 1 << 30);
    put_u32(&mut b, 60, 0);
    b.truncate(4096);
    std::fs::write(s.path("huge.qcow2"), &b).unwrap();
    let chain = s.open("huge.qcow2", None, None);
    assert_eq!(chain.size(), 2 << 40);
    for offset in [0u64, 1 << 40, (2 << 40) - 65536] {
        let mut buf = vec![0xffu8; 65536];
        assert_eq!(chain.read_at(&mut buf, offset).unwrap(), 65536);
        assert!(buf.iter().all(|&x| x == 0));
        // The oracle agrees: qemu-io verifies the same range reads as zeros.
        s.qemu_io("qcow2", "huge.qcow2", &[&format!("read -P 0 {offset} 64k")]);
    }
    assert_eq!(chain.allocated_bytes().unwrap(), 0);
    assert_eq!(chain.next_data(0).unwrap(), None);
}

#[test]
fn truncated_image_reads_zeros_where_qemu_does() {
    let s = Scratch::new();
    s.create("t.qcow2", "", "4M");
    s.qemu_io("qcow2", "t.qcow2", &["write -P 0x21 0 4M"]);
    let b = std::fs::read(s.path("t.qcow2")).unwrap();
    std::fs::write(s.path("t.qcow2"), &b[..b.len() - 1_000_000]).unwrap();
    s.assert_matches_qemu("t.qcow2", "qcow2", None);
}

#[test]
fn backing_loops_are_detected() {
    let s = Scratch::new();
    s.create("a.qcow2", "", "1M");
    s.overlay("b.qcow2", "a.qcow2", "qcow2");
    s.qemu_img(&[
        "rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2",
    ]);
    let err = s.try_open("b.qcow2", None, None).err().unwrap();
    assert!(
        matches!(&err, ImageError::BackingLoop { path } if path.ends_with("b.qcow2")),
        "{err}"
    );
    // A self-loop through a symlink is the same file.
    std::os::unix::fs::symlink(s.path("c.qcow2"), s.path("link.qcow2")).unwrap();
    s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "link.qcow2",
        "-F",
        "qcow2",
        "c.qcow2",
        "1M",
    ]);
    assert!(matches!(
        s.try_open("c.qcow2", None, None),
        Err(ImageError::BackingLoop { .. })
    ));
}

#[test]
fn chains_deeper_than_the_cap_are_refused() {
    let s = Scratch::new();
    s.create("l0.qcow2", "", "1M");
    for i in 1..=virtsnapfs::image::MAX_CHAIN_DEPTH {
        let prev = format!("l{}.qcow2", i - 1);
        s.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            &prev,
            "-F",
            "qcow2",
            &format!("l{i}.qcow2"),
            "1M",
        ]);
    }
    let top = format!("l{}.qcow2", virtsnapfs::image::MAX_CHAIN_DEPTH);
    assert!(matches!(
        s.try_open(&top, None, None),
        Err(ImageError::ChainTooDeep { .. })
    ));
    let ok = format!("l{}.qcow2", virtsnapfs::image::MAX_CHAIN_DEPTH - 1);
    assert_eq!(
        s.open(&ok, None, None).layers().len(),
        virtsnapfs::image::MAX_CHAIN_DEPTH
    );
}

#[test]
fn garbage_and_missing_backing_names() {
    let s = Scratch::new();
    s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "nbd:localhost:10809",
        "-F",
        "raw",
        "p.qcow2",
        "1M",
    ]);
    assert!(matches!(
        s.try_open("p.qcow2", None, None),
        Err(ImageError::BadBackingName { .. })
    ));
    s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "missing.qcow2",
        "-F",
        "qcow2",
        "m.qcow2",
        "1M",
    ]);
    let err = s.try_open("m.qcow2", None, None).err().unwrap();
    assert!(
        matches!(&err, ImageError::Io { path, source } if path.ends_with("missing.qcow2") && source.kind() == std::io::ErrorKind::NotFound),
        "{err}"
    );
    s.qemu_img(&[
        "create", "-q", "-f", "qcow2", "-u", "-b", "x.img", "-F", "vmdk", "v.qcow2", "1M",
    ]);
    std::fs::write(s.path("x.img"), b"").unwrap();
    assert!(matches!(
        s.try_open("v.qcow2", None, None),
        Err(ImageError::UnsupportedFormat { .. })
    ));
    // Binary garbage as a backing name: overwrite the stored name with control bytes.
    s.qemu_img(&[
        "create", "-q", "-f", "qcow2", "-u", "-b", "abcd", "-F", "raw", "g.qcow2", "1M",
    ]);
    let mut b = std::fs::read(s.path("g.qcow2")).unwrap();
    let at = get_u64(&b, 8) as usize;
    b[at..at + 4].copy_from_slice(b"a\0:\x01");
    std::fs::write(s.path("g.qcow2"), &b).unwrap();
    assert!(matches!(
        s.try_open("g.qcow2", None, None),
        Err(ImageError::BadBackingName { .. })
    ));
}
