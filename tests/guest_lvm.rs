//! LVM2 logical volumes against the kernel: PVs and VGs made by lvm2's own tools on loop
//! devices (whole disks, MBR and GPT partitions), LVs written into the metadata with
//! `vgcfgrestore` (this kernel has no device-mapper, so `lvcreate` cannot run; see
//! tests/common/lvm.rs), and ext4 filesystems made by mkfs from a source tree and written
//! where the LVs' extents are. Each LV the parser shows must read the filesystem image's exact
//! bytes, and its walk must equal the kernel's read-only loop mount of that image (or, for an
//! LV lying in one piece, of the disk itself at the LV's place). Hostile metadata (bad
//! checksums, absurd sizes, extents past the PV, deep nesting, truncation) must give nothing
//! or an error, never a panic, wrong bytes or a huge allocation.
//! Needs root (loop devices, mknod) and lvm2, e2fsprogs, fdisk.
//!
//! Findings of the `guest_lvm` fuzz target are kept here, one named test each (none so far:
//! 101,351 then 136,440 executions, ten minutes each, from the seeds of fuzz/seed-corpus.sh
//! found no crash, timeout or OOM).

mod common;
#[path = "common/lvm.rs"]
mod lvm;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::guest::*;
use lvm::*;
use virtsnapfs::cache::{MetadataCache, DEFAULT_CACHE_BYTES};
use virtsnapfs::guest::{self, Volume};
use virtsnapfs::source::{ByteSource, FileSource, MemorySource};

const MIB: u64 = 1 << 20;

fn small_tree() -> GuestScratch {
    GuestScratch::new(TreeOptions {
        big_sparse: false,
        big_dir_entries: 300,
    })
}

/// An ext4 image of `mib` MiB made from the scratch's tree.
fn ext4_image(s: &GuestScratch, name: &str, mib: u64) -> PathBuf {
    let img = s.path(name);
    mkfs("mkfs.ext4", &[], &s.tree(), &img, &format!("{mib}M"));
    img
}

fn volumes_of(disk: &Path) -> Vec<Volume> {
    let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(disk).unwrap());
    guest::find_volumes(src, "vda").unwrap()
}

fn volumes_of_bytes(disk: Vec<u8>) -> Result<Vec<Volume>, guest::GuestError> {
    let src: Arc<dyn ByteSource> = Arc::new(MemorySource::new(disk));
    guest::find_volumes(src, "vda")
}

fn names(volumes: &[Volume]) -> Vec<String> {
    volumes.iter().map(|v| v.name.clone()).collect()
}

/// The parser's LV `name` on `disk` must read `fs_img`'s bytes and show the same tree as the
/// kernel's mount of it. With `in_one_piece`, the kernel mounts the disk itself at the LV's
/// start instead (the LV is one run of the disk). Returns the number of paths compared.
fn assert_lv_matches_kernel(disk: &Path, name: &str, fs_img: &Path, in_one_piece: bool) -> usize {
    let volumes = volumes_of(disk);
    let v = volumes
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name} in {:?}", names(&volumes)));
    let want = fs::read(fs_img).unwrap();
    assert!(
        v.len >= want.len() as u64,
        "LV {name} is shorter than its filesystem"
    );
    let mut got = vec![0u8; want.len()];
    v.source.read_exact_at(&mut got, 0).unwrap();
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "LV {name}: bytes differ from the filesystem image"
    );
    let cache = Arc::new(MetadataCache::new(DEFAULT_CACHE_BYTES));
    let fs = guest::open_filesystem(v.source.clone(), cache)
        .unwrap()
        .expect("no filesystem recognised on the LV");
    let mount = if in_one_piece {
        LoopMount::new(disk, v.start, want.len() as u64)
    } else {
        LoopMount::new(fs_img, 0, want.len() as u64)
    };
    let kernel = kernel_manifest(mount.path());
    let ours = parser_manifest(fs.as_ref());
    assert_manifests_eq(&ours, &kernel, &format!("LV {name} ({})", fs.format_name()));
    kernel.len()
}

fn whole_disk(s: &GuestScratch, mib: u64) -> PathBuf {
    let disk = s.path("disk.raw");
    let _ = fs::remove_file(&disk);
    sh(
        "truncate",
        &["-s", &format!("{mib}M"), disk.to_str().unwrap()],
    );
    disk
}

fn linear(count: u64, pv: usize, pe: u64) -> SegSpec {
    SegSpec::Linear { count, pv, pe }
}

#[test]
fn lv_on_a_whole_disk_pv_matches_the_kernel() {
    let s = small_tree();
    let img = ext4_image(&s, "root.raw", 12);
    let disk = whole_disk(&s, 40);
    let vg = unique_vg("vsfw");
    let lvs = [LvSpec::new("root", vec![linear(12, 0, 3)])];
    lvm_disk(&disk, &[(0, 40 * MIB)], &vg, &lvs, &[(0, &img)]);
    let volumes = volumes_of(&disk);
    assert_eq!(names(&volumes), [format!("{vg}-root")]);
    let n = assert_lv_matches_kernel(&disk, &format!("{vg}-root"), &img, true);
    assert!(n > 300, "compared {n} paths");
}

#[test]
fn lv_on_an_mbr_partition_matches_the_kernel_beside_a_plain_partition() {
    let s = small_tree();
    let img = ext4_image(&s, "root.raw", 12);
    let plain = ext4_image(&s, "plain.raw", 8);
    let disk = s.path("disk.raw");
    let parts = partitioned_disk(
        &disk,
        "40M",
        "label: dos\nstart=2048, size=16384, type=83\nstart=18432, size=40960, type=8e\n",
        &[(1, &plain)],
    );
    let vg = unique_vg("vsfm");
    let lvs = [LvSpec::new("root", vec![linear(12, 0, 0)])];
    lvm_disk(&disk, &[parts[&2]], &vg, &lvs, &[(0, &img)]);
    assert_eq!(
        names(&volumes_of(&disk)),
        ["vda1".to_string(), format!("{vg}-root")]
    );
    assert_lv_matches_kernel(&disk, &format!("{vg}-root"), &img, true);
    // The plain partition is read as before.
    compare_disk_with_kernel_subset(&disk, "vda1");
}

/// compare_disk_with_kernel for one partition of a disk that also holds LVs.
fn compare_disk_with_kernel_subset(disk: &Path, name: &str) {
    let volumes = open_volumes(disk, "vda");
    let (v, fs) = &volumes[name];
    let mount = LoopMount::new(disk, v.start, v.len);
    assert_manifests_eq(
        &parser_manifest(fs.as_ref()),
        &kernel_manifest(mount.path()),
        name,
    );
}

#[test]
fn lv_on_a_gpt_partition_matches_the_kernel() {
    let s = small_tree();
    let img = ext4_image(&s, "root.raw", 12);
    let disk = s.path("disk.raw");
    let parts = partitioned_disk(
        &disk,
        "40M",
        "label: gpt\nstart=2048, size=40960, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
        &[],
    );
    let vg = unique_vg("vsfg");
    let lvs = [LvSpec::new("root", vec![linear(12, 0, 5)])];
    lvm_disk(&disk, &[parts[&1]], &vg, &lvs, &[(0, &img)]);
    assert_eq!(names(&volumes_of(&disk)), [format!("{vg}-root")]);
    assert_lv_matches_kernel(&disk, &format!("{vg}-root"), &img, true);
}

#[test]
fn lv_spanning_two_pvs_on_two_partitions_matches_the_kernel() {
    let s = small_tree();
    let img = ext4_image(&s, "root.raw", 14);
    let disk = s.path("disk.raw");
    let parts = partitioned_disk(
        &disk,
        "40M",
        "label: gpt\nstart=2048, size=20480, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\nstart=22528, size=20480, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
        &[],
    );
    let vg = unique_vg("vsf2");
    // The second PV's extents first, then the first's.
    let lvs = [LvSpec::new("span", vec![linear(6, 1, 2), linear(8, 0, 1)])];
    lvm_disk(&disk, &[parts[&1], parts[&2]], &vg, &lvs, &[(0, &img)]);
    assert_eq!(names(&volumes_of(&disk)), [format!("{vg}-span")]);
    assert_lv_matches_kernel(&disk, &format!("{vg}-span"), &img, false);
}

/// `disk`'s bytes `[start, start + len)` as a disk image of its own, `name` beside it.
fn cut_disk(s: &GuestScratch, disk: &Path, start: u64, len: u64, name: &str) -> PathBuf {
    let out = s.path(name);
    let bytes = fs::read(disk).unwrap();
    fs::write(&out, &bytes[start as usize..(start + len) as usize]).unwrap();
    out
}

fn volumes_of_disks(disks: &[(&Path, &str)]) -> guest::DiskVolumes {
    guest::find_volumes_of_disks(
        disks
            .iter()
            .map(|(path, name)| {
                let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(path).unwrap());
                (src, name.to_string())
            })
            .collect(),
    )
}

/// A volume group of two whole-disk PVs on two disks (as when a second disk was added to
/// grow a guest's root): a linear LV whose first segment is on the second disk and the rest
/// on the first, and an LV striped over both. Read with both disks, each LV reads its
/// filesystem image's exact bytes and its tree equals the kernel's mount of it; read with
/// one disk alone, neither is shown (and nothing else is misread); a clone of the first disk
/// attached beside both changes nothing (the first copy of a duplicate PV is read).
#[test]
fn vg_spanning_two_disks_shows_its_lvs_when_both_are_read() {
    let s = small_tree();
    let span_img = ext4_image(&s, "span.raw", 14);
    let striped_img = ext4_image(&s, "striped.raw", 8);
    let both = whole_disk(&s, 48);
    let vg = unique_vg("vsf2d");
    let lvs = [
        LvSpec::new("span", vec![linear(6, 1, 2), linear(8, 0, 1)]),
        LvSpec::new(
            "striped",
            vec![SegSpec::Striped {
                count: 8,
                stripe_sectors: 128,
                areas: vec![(0, 12), (1, 12)],
            }],
        ),
    ];
    lvm_disk(
        &both,
        &[(0, 24 * MIB), (24 * MIB, 24 * MIB)],
        &vg,
        &lvs,
        &[(0, &span_img), (1, &striped_img)],
    );
    let vda = cut_disk(&s, &both, 0, 24 * MIB, "vda.raw");
    let vdb = cut_disk(&s, &both, 24 * MIB, 24 * MIB, "vdb.raw");

    let found = volumes_of_disks(&[(&vda, "vda"), (&vdb, "vdb")]);
    assert!(found.failed.is_empty(), "{:?}", found.failed);
    let span = format!("{vg}-span");
    let striped = format!("{vg}-striped");
    assert_eq!(names(&found.volumes), [span.clone(), striped.clone()]);
    // The span's first extent is on vdb, so vdb is named first.
    assert_eq!(found.volumes[0].disks, ["vdb", "vda"]);
    assert_eq!(found.volumes[1].disks, ["vda", "vdb"]);
    let cache = Arc::new(MetadataCache::new(DEFAULT_CACHE_BYTES));
    for (v, img) in found.volumes.iter().zip([&span_img, &striped_img]) {
        assert!(lv_reads(&found.volumes, &v.name, img));
        let fs = guest::open_filesystem(v.source.clone(), cache.clone())
            .unwrap()
            .expect("no filesystem recognised on the LV");
        let len = fs::metadata(img).unwrap().len();
        let mount = LoopMount::new(img, 0, len);
        assert_manifests_eq(
            &parser_manifest(fs.as_ref()),
            &kernel_manifest(mount.path()),
            &v.name,
        );
    }

    // One disk alone: its PV is found, the VG's LVs need the other one.
    for (disk, name) in [(&vda, "vda"), (&vdb, "vdb")] {
        let alone = volumes_of_disks(&[(disk, name)]);
        assert!(alone.failed.is_empty());
        assert_eq!(names(&alone.volumes), Vec::<String>::new(), "{name} alone");
    }

    // A clone of vda attached after both: the same LVs, read from vda.
    let clone = s.path("vdc.raw");
    fs::copy(&vda, &clone).unwrap();
    let with_clone = volumes_of_disks(&[(&vda, "vda"), (&vdb, "vdb"), (&clone, "vdc")]);
    assert_eq!(names(&with_clone.volumes), [span.clone(), striped.clone()]);
    assert_eq!(with_clone.volumes[0].disks, ["vdb", "vda"]);
    assert!(lv_reads(&with_clone.volumes, &span, &span_img));
    assert!(lv_reads(&with_clone.volumes, &striped, &striped_img));
}

/// A disk that cannot be read is reported alone and the other disk's volumes are still
/// listed: whether the failure comes while reading its partition table, or later, while
/// reading the LVM label of the whole-disk volume found (the first sector reads as zeros,
/// no partition table, and every read past it fails).
#[test]
fn an_unreadable_disk_fails_alone() {
    let s = small_tree();
    let img = ext4_image(&s, "root.raw", 12);
    let disk = whole_disk(&s, 40);
    let vg = unique_vg("vsfu");
    let lvs = [LvSpec::new("root", vec![linear(12, 0, 3)])];
    lvm_disk(&disk, &[(0, 40 * MIB)], &vg, &lvs, &[(0, &img)]);
    for readable in [0, 512] {
        let good: Arc<dyn ByteSource> = Arc::new(FileSource::open(&disk).unwrap());
        let bad: Arc<dyn ByteSource> = Arc::new(FailingSource { readable });
        let found =
            guest::find_volumes_of_disks(vec![(bad, "vda".to_string()), (good, "vdb".to_string())]);
        assert_eq!(names(&found.volumes), [format!("{vg}-root")]);
        assert_eq!(found.volumes[0].disks, ["vdb"]);
        assert!(lv_reads(&found.volumes, &format!("{vg}-root"), &img));
        assert_eq!(found.failed.len(), 1, "{readable}");
        assert_eq!(found.failed[0].0, "vda");
        assert!(matches!(found.failed[0].1, guest::GuestError::Io(_)));
    }
}

/// A disk whose reads fail (as a host image that gives EIO) but for its first `readable`
/// bytes, which read as zeros.
struct FailingSource {
    readable: u64,
}

impl ByteSource for FailingSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset + buf.len() as u64 <= self.readable {
            buf.fill(0);
            return Ok(());
        }
        Err(std::io::Error::other("injected read error"))
    }

    fn byte_len(&self) -> std::io::Result<u64> {
        Ok(64 * MIB)
    }
}

#[test]
fn linear_lv_of_three_segments_matches_the_kernel() {
    let s = small_tree();
    let img = ext4_image(&s, "root.raw", 12);
    let disk = whole_disk(&s, 40);
    let vg = unique_vg("vsf3");
    let lvs = [
        LvSpec::new("other", vec![linear(2, 0, 4)]),
        // The middle segment says type = "linear", which lvm2 also accepts.
        LvSpec::new(
            "three",
            vec![
                linear(4, 0, 10),
                SegSpec::LinearType {
                    count: 3,
                    pv: 0,
                    pe: 0,
                },
                linear(5, 0, 20),
            ],
        ),
    ];
    lvm_disk(&disk, &[(0, 40 * MIB)], &vg, &lvs, &[(1, &img)]);
    let volumes = volumes_of(&disk);
    assert_eq!(
        names(&volumes),
        [format!("{vg}-other"), format!("{vg}-three")]
    );
    assert_lv_matches_kernel(&disk, &format!("{vg}-three"), &img, false);
}

#[test]
fn striped_lv_of_two_stripes_matches_the_kernel() {
    let s = small_tree();
    let img = ext4_image(&s, "root.raw", 12);
    let disk = s.path("disk.raw");
    let parts = partitioned_disk(
        &disk,
        "40M",
        "label: dos\nstart=2048, size=20480, type=8e\nstart=22528, size=20480, type=8e\n",
        &[],
    );
    let vg = unique_vg("vsfs");
    let lvs = [LvSpec::new(
        "striped",
        vec![SegSpec::Striped {
            count: 12,
            stripe_sectors: 128,
            areas: vec![(0, 1), (1, 3)],
        }],
    )];
    lvm_disk(&disk, &[parts[&1], parts[&2]], &vg, &lvs, &[(0, &img)]);
    assert_lv_matches_kernel(&disk, &format!("{vg}-striped"), &img, false);
}

#[test]
fn striped_lv_of_three_stripes_with_a_linear_tail_matches_the_kernel() {
    let s = small_tree();
    let img = ext4_image(&s, "root.raw", 14);
    let disk = s.path("disk.raw");
    let t = "type=E6D6D379-F507-44C2-A23C-238F2A3DF928";
    let parts = partitioned_disk(
        &disk,
        "40M",
        &format!("label: gpt\nstart=2048, size=20480, {t}\nstart=22528, size=20480, {t}\nstart=43008, size=20480, {t}\n"),
        &[],
    );
    let vg = unique_vg("vsft");
    let lvs = [LvSpec::new(
        "s3",
        vec![
            SegSpec::Striped {
                count: 12,
                stripe_sectors: 8,
                areas: vec![(2, 0), (0, 4), (1, 1)],
            },
            linear(2, 1, 6),
        ],
    )];
    lvm_disk(
        &disk,
        &[parts[&1], parts[&2], parts[&3]],
        &vg,
        &lvs,
        &[(0, &img)],
    );
    assert_lv_matches_kernel(&disk, &format!("{vg}-s3"), &img, false);
}

#[test]
fn dashes_in_vg_and_lv_names_are_doubled() {
    let s = small_tree();
    let img = ext4_image(&s, "root.raw", 12);
    let disk = whole_disk(&s, 40);
    let vg = unique_vg("vsf-d-");
    let lvs = [LvSpec::new("my-root-lv", vec![linear(12, 0, 0)])];
    lvm_disk(&disk, &[(0, 40 * MIB)], &vg, &lvs, &[(0, &img)]);
    let expected = format!("{}-my--root--lv", vg.replace('-', "--"));
    assert_eq!(names(&volumes_of(&disk)), std::slice::from_ref(&expected));
    assert_lv_matches_kernel(&disk, &expected, &img, true);
}

/// Thin pools and thin LVs, an old-style snapshot, RAID 1 and a zero LV beside two linear
/// LVs: lvm2 accepts the metadata; only the linear LVs are shown (the snapshot's origin is
/// one: its extents are its contents), never the snapshot's copy-on-write store.
#[test]
fn unsupported_lvs_are_left_out_beside_supported_ones() {
    let s = small_tree();
    let img = ext4_image(&s, "root.raw", 8);
    let orig = ext4_image(&s, "orig.raw", 6);
    let disk = whole_disk(&s, 64);
    let vg = unique_vg("vsfu");
    let raw = |count, body: &str| SegSpec::Raw {
        count,
        body: body.to_string(),
    };
    let lvs = [
        LvSpec::new("root", vec![linear(8, 0, 0)]),
        LvSpec::new(
            "pool",
            vec![raw(4, "type = \"thin-pool\"\n metadata = \"pool_tmeta\"\n pool = \"pool_tdata\"\n transaction_id = 1\n chunk_size = 128\n discards = \"passdown\"\n zero_new_blocks = 1")],
        ),
        LvSpec::new(
            "thin1",
            vec![raw(8, "type = \"thin\"\n thin_pool = \"pool\"\n transaction_id = 0\n device_id = 1")],
        ),
        LvSpec::hidden("pool_tmeta", vec![linear(1, 0, 10)]),
        LvSpec::hidden("pool_tdata", vec![linear(4, 0, 11)]),
        LvSpec::hidden("lvol0_pmspare", vec![linear(1, 0, 15)]),
        LvSpec::new("orig", vec![linear(6, 0, 16)]),
        LvSpec::new("snap", vec![linear(2, 0, 22)]),
        LvSpec::hidden(
            "snapshot0",
            vec![raw(6, "type = \"snapshot\"\n chunk_size = 8\n origin = \"orig\"\n cow_store = \"snap\"")],
        ),
        LvSpec::new(
            "r1",
            vec![raw(2, "type = \"raid1\"\n device_count = 2\n region_size = 1024\n raids = [\"r1_rmeta_0\", \"r1_rimage_0\", \"r1_rmeta_1\", \"r1_rimage_1\"]")],
        ),
        LvSpec::hidden("r1_rmeta_0", vec![linear(1, 0, 30)]),
        LvSpec::hidden("r1_rimage_0", vec![linear(2, 0, 31)]),
        LvSpec::hidden("r1_rmeta_1", vec![linear(1, 0, 33)]),
        LvSpec::hidden("r1_rimage_1", vec![linear(2, 0, 34)]),
        LvSpec::new("zero", vec![raw(4, "type = \"zero\"")]),
    ];
    let bases = lvm_disk(&disk, &[(0, 64 * MIB)], &vg, &lvs, &[(0, &img), (6, &orig)]);
    // The snapshot's store holds a copy of the filesystem's first bytes: read as an LV it
    // would look like a (broken) filesystem.
    place(
        &disk,
        &fs::read(&orig).unwrap()[..2 * MIB as usize],
        &lvs[7],
        MIB,
        &bases,
    );
    assert_eq!(
        names(&volumes_of(&disk)),
        [format!("{vg}-root"), format!("{vg}-orig")]
    );
    assert_lv_matches_kernel(&disk, &format!("{vg}-root"), &img, true);
    assert_lv_matches_kernel(&disk, &format!("{vg}-orig"), &orig, true);
}

/// A whole-disk PV with one LV "root" holding an ext4 image: (scratch, disk, VG, image).
fn simple_lvm(tag: &str) -> (GuestScratch, PathBuf, String, PathBuf) {
    let s = small_tree();
    let img = ext4_image(&s, "root.raw", 8);
    let disk = whole_disk(&s, 24);
    let vg = unique_vg(tag);
    let lvs = [
        LvSpec::new("root", vec![linear(8, 0, 2)]),
        LvSpec::new("spare", vec![linear(4, 0, 12)]),
    ];
    lvm_disk(&disk, &[(0, 24 * MIB)], &vg, &lvs, &[(0, &img)]);
    (s, disk, vg, img)
}

/// Reads LV `name` of `volumes` whole and compares it with `img`.
fn lv_reads(volumes: &[Volume], name: &str, img: &Path) -> bool {
    let Some(v) = volumes.iter().find(|v| v.name == name) else {
        return false;
    };
    let want = fs::read(img).unwrap();
    let mut got = vec![0u8; want.len()];
    v.source.read_exact_at(&mut got, 0).unwrap();
    assert!(got == want, "LV {name} shown with wrong bytes");
    true
}

#[test]
fn bad_label_crc_shows_neither_the_pv_nor_its_lvs() {
    let (_s, disk, vg, img) = simple_lvm("vsfl");
    let mut bytes = fs::read(&disk).unwrap();
    assert!(lv_reads(
        &volumes_of_bytes(bytes.clone()).unwrap(),
        &format!("{vg}-root"),
        &img
    ));
    // A byte of the label sector that nothing reads but the CRC covers: without the CRC
    // check the LV would still be found.
    let label = (0..4)
        .map(|s| s * 512)
        .find(|&at| &bytes[at..at + 8] == b"LABELONE")
        .unwrap();
    bytes[label + 400] ^= 0x20;
    assert_eq!(
        names(&volumes_of_bytes(bytes).unwrap()),
        Vec::<String>::new()
    );
}

#[test]
fn bad_metadata_checksum_with_no_other_copy_shows_nothing() {
    let (_s, disk, vg, img) = simple_lvm("vsfc");
    let mut bytes = fs::read(&disk).unwrap();
    assert!(lv_reads(
        &volumes_of_bytes(bytes.clone()).unwrap(),
        &format!("{vg}-root"),
        &img
    ));
    let (_, text, len) = metadata_location(&bytes, 0);
    bytes[text + len / 2] ^= 1;
    assert_eq!(
        names(&volumes_of_bytes(bytes).unwrap()),
        Vec::<String>::new()
    );
}

/// Two PVs; the VG's metadata at seqno N lists LV "first", at N+1 also "second". The first
/// PV holds N+1, the second still N (as after a crash between the two writes). The newest
/// valid copy wins; when the first PV's copy is corrupt, the older copy is used.
#[test]
fn bad_metadata_checksum_falls_back_to_an_older_copy() {
    let s = small_tree();
    let img = ext4_image(&s, "root.raw", 8);
    let disk = s.path("disk.raw");
    let parts = partitioned_disk(
        &disk,
        "40M",
        "label: dos\nstart=2048, size=20480, type=8e\nstart=22528, size=20480, type=8e\n",
        &[],
    );
    let vg = unique_vg("vsfo");
    let first = LvSpec::new("first", vec![linear(8, 1, 0)]);
    let second = LvSpec::new("second", vec![linear(2, 0, 0)]);
    let mut host = LvmHost::new(&vg);
    for part in [1, 2] {
        let (start, len) = parts[&part];
        let dev = host.attach(&disk, start, len);
        host.pvcreate(&dev, &[]);
    }
    host.vgcreate("1m");
    host.restore(std::slice::from_ref(&first));
    let old = fs::read(&disk).unwrap();
    host.restore(&[first.clone(), second]);
    let pe_start = host.pe_starts();
    let new = fs::read(&disk).unwrap();
    drop(host);
    let (p1, p2) = (parts[&1].0 as usize, parts[&2].0 as usize);
    let (mda2, _, _) = metadata_location(&new, p2);
    // Both copies valid: N+1 wins. Then the second PV's area as it was at N.
    let mut bytes = new.clone();
    let data = fs::read(&img).unwrap();
    let at = p2 + pe_start[1] as usize;
    bytes[at..at + data.len()].copy_from_slice(&data);
    let both = volumes_of_bytes(bytes.clone()).unwrap();
    assert_eq!(
        names(&both),
        [format!("{vg}-first"), format!("{vg}-second")]
    );
    let area = MIB as usize - 4096;
    // The first PV at N, the second at N+1: the newest wins though found second.
    let (mda1, _, _) = metadata_location(&new, p1);
    let mut older_first = bytes.clone();
    older_first[mda1..mda1 + area].copy_from_slice(&old[mda1..mda1 + area]);
    let v = volumes_of_bytes(older_first).unwrap();
    assert_eq!(names(&v), [format!("{vg}-first"), format!("{vg}-second")]);
    bytes[mda2..mda2 + area].copy_from_slice(&old[mda2..mda2 + area]);
    assert_eq!(names(&volumes_of_bytes(bytes.clone()).unwrap()).len(), 2);
    let (_, text1, len1) = metadata_location(&bytes, p1);
    bytes[text1 + len1 / 2] ^= 1;
    let volumes = volumes_of_bytes(bytes).unwrap();
    assert_eq!(names(&volumes), [format!("{vg}-first")]);
    assert!(lv_reads(&volumes, &format!("{vg}-first"), &img));
}

/// Rewrites the metadata of `disk` (one whole-disk PV) with `edit` and returns the volumes.
fn with_metadata(disk: &Path, edit: impl FnOnce(&str) -> String) -> Vec<Volume> {
    let mut bytes = fs::read(disk).unwrap();
    rewrite_metadata(&mut bytes, 0, edit);
    volumes_of_bytes(bytes).unwrap()
}

/// The text of LV `lv`'s section in `text`, edited by `f`.
fn edit_lv(text: &str, lv: &str, f: impl FnOnce(&str) -> String) -> String {
    let start = text.find(&format!("\n{lv} {{")).unwrap();
    let mut depth = 0;
    let mut end = start;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 1 => {
                end = start + i;
                break;
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    format!("{}{}{}", &text[..start], f(&text[start..end]), &text[end..])
}

#[test]
fn rewritten_metadata_is_read_when_valid() {
    // The rewriting helper itself: an unchanged text (new checksum of the same bytes) and
    // a harmless edit leave both LVs shown.
    let (_s, disk, vg, img) = simple_lvm("vsfr");
    let v = with_metadata(&disk, |t| t.to_string());
    assert!(lv_reads(&v, &format!("{vg}-root"), &img));
    let v = with_metadata(&disk, |t| t.replace("seqno = ", "# x\nseqno = "));
    assert_eq!(names(&v), [format!("{vg}-root"), format!("{vg}-spare")]);
}

#[test]
fn absurd_extent_counts_and_sizes_are_refused() {
    let (_s, disk, vg, img) = simple_lvm("vsfa");
    let spare = format!("{vg}-spare");
    // A segment of 2^62 extents: root not shown, spare still is.
    let v = with_metadata(&disk, |t| {
        edit_lv(t, "root", |l| {
            l.replace("extent_count = 8", "extent_count = 4611686018427387904")
        })
    });
    assert_eq!(names(&v), std::slice::from_ref(&spare));
    // Extent sizes of 0 and of 2^40 sectors, and a PV of 2^62 extents: nothing.
    for (from, to) in [
        ("extent_size = 2048", "extent_size = 0"),
        ("extent_size = 2048", "extent_size = 1099511627776"),
        ("pe_count = ", "pe_count = 4611686018427387904 # "),
        ("seqno = ", "seqno = -"),
    ] {
        let v = with_metadata(&disk, |t| {
            assert!(t.contains(from));
            t.replacen(from, to, 1)
        });
        assert_eq!(names(&v), Vec::<String>::new(), "{to}");
    }
    // Striped with a chunk that does not divide the stripe, and a zero stripe count.
    let v = with_metadata(&disk, |t| {
        edit_lv(t, "root", |l| {
            l.replace("stripe_count = 1", "stripe_count = 2\nstripe_size = 3")
                .replace("\"pv0\", 2", "\"pv0\", 2, \"pv0\", 20")
        })
    });
    assert_eq!(names(&v), std::slice::from_ref(&spare));
    let v = with_metadata(&disk, |t| {
        edit_lv(t, "root", |l| {
            l.replace("stripe_count = 1", "stripe_count = 0")
        })
    });
    assert_eq!(names(&v), [spare]);
    let _ = img;
}

#[test]
fn segments_past_the_pv_or_overlapping_are_refused() {
    let (_s, disk, vg, img) = simple_lvm("vsfp");
    let root = format!("{vg}-root");
    let spare = format!("{vg}-spare");
    // Past pe_count.
    let v = with_metadata(&disk, |t| {
        edit_lv(t, "root", |l| l.replace("\"pv0\", 2", "\"pv0\", 20"))
    });
    assert_eq!(names(&v), std::slice::from_ref(&spare));
    // Within a pe_count that claims more extents than the disk has, but past the disk.
    let v = with_metadata(&disk, |t| {
        let t = t.replacen("pe_count = ", "pe_count = 1000 # ", 1);
        edit_lv(&t, "root", |l| l.replace("\"pv0\", 2", "\"pv0\", 200"))
    });
    assert_eq!(names(&v), std::slice::from_ref(&spare));
    // Overlapping the other LV: neither is shown.
    let v = with_metadata(&disk, |t| {
        edit_lv(t, "spare", |l| l.replace("\"pv0\", 12", "\"pv0\", 9"))
    });
    assert_eq!(names(&v), Vec::<String>::new());
    // A gap between segments, and a segment count that does not match.
    let v = with_metadata(&disk, |t| {
        edit_lv(t, "spare", |l| {
            l.replace("start_extent = 0", "start_extent = 1")
        })
    });
    assert_eq!(names(&v), std::slice::from_ref(&root));
    let v = with_metadata(&disk, |t| {
        edit_lv(t, "spare", |l| {
            l.replace("segment_count = 1", "segment_count = 2")
        })
    });
    assert_eq!(names(&v), std::slice::from_ref(&root));
    assert!(lv_reads(&v, &root, &img));
}

#[test]
fn deep_nesting_and_huge_text_are_refused() {
    let (_s, disk, vg, _img) = simple_lvm("vsfn");
    // 100,000 nested sections inside the VG (the text still fits the 1 MiB area), and 3.
    let nest = |depth: usize| {
        with_metadata(&disk, |t| {
            let at = t.find("physical_volumes").unwrap();
            format!(
                "{}{}{}{}",
                &t[..at],
                "a {".repeat(depth),
                "}".repeat(depth),
                &t[at..]
            )
        })
    };
    assert_eq!(names(&nest(100_000)), Vec::<String>::new());
    assert!(names(&nest(3)).contains(&format!("{vg}-root")));
    // 450,000 array elements in 900 KB: over the parser's item limit.
    let v = with_metadata(&disk, |t| {
        let at = t.find("physical_volumes").unwrap();
        format!("{}x = [{}1]\n{}", &t[..at], "1,".repeat(450_000), &t[at..])
    });
    assert_eq!(names(&v), Vec::<String>::new());
    // The same text with a few elements is read: the limit, not the edit, refused it.
    let v = with_metadata(&disk, |t| {
        let at = t.find("physical_volumes").unwrap();
        format!("{}x = [{}1]\n{}", &t[..at], "1,".repeat(450), &t[at..])
    });
    assert!(names(&v).contains(&format!("{vg}-root")));
    // A metadata location claiming 1 TiB of text, and one starting past the area.
    let mut bytes = fs::read(&disk).unwrap();
    let (mda, _, _) = metadata_location(&bytes, 0);
    set_raw_location(&mut bytes, mda, None, Some(1 << 40), None);
    assert_eq!(
        names(&volumes_of_bytes(bytes.clone()).unwrap()),
        Vec::<String>::new()
    );
    set_raw_location(&mut bytes, mda, Some(1 << 40), Some(100), None);
    assert_eq!(
        names(&volumes_of_bytes(bytes).unwrap()),
        Vec::<String>::new()
    );
}

#[test]
fn truncated_images_show_no_wrong_bytes() {
    let (_s, disk, vg, img) = simple_lvm("vsfx");
    let root = format!("{vg}-root");
    let bytes = fs::read(&disk).unwrap();
    let (mda, text, len) = metadata_location(&bytes, 0);
    let root_end = (2 + 1 + 8) * MIB as usize; // pe_start 1 MiB, extents 2..10
    for cut in [
        0,
        100,
        520,
        700,
        mda + 100,
        text + len / 2,
        text + len,
        3 * MIB as usize,
        root_end - 1,
        root_end,
    ] {
        let v = volumes_of_bytes(bytes[..cut].to_vec()).unwrap();
        if cut >= root_end {
            assert!(lv_reads(&v, &root, &img), "cut at {cut}");
        } else {
            assert!(!names(&v).contains(&root), "cut at {cut}: {:?}", names(&v));
        }
    }
}

/// Every byte of the label sector, the metadata area header and the start of the metadata
/// text, set to 0x00, 0xff and its complement: the fuzz target's body must neither panic nor
/// hang, and an LV still shown must read the right bytes or fail to open.
#[test]
fn corruption_sweep_over_label_and_metadata() {
    let (_s, disk, vg, img) = simple_lvm("vsfz");
    let root = format!("{vg}-root");
    let data = fs::read(&img).unwrap();
    // Keep the disk small: the PV's first 11 MiB hold everything the sweep touches and the
    // root LV (the rest is the spare LV, cut off).
    let bytes = fs::read(&disk).unwrap()[..11 * MIB as usize].to_vec();
    let (mda, text, _) = metadata_location(&bytes, 0);
    let label = (0..4)
        .map(|s| s * 512)
        .find(|&at| &bytes[at..at + 8] == b"LABELONE")
        .unwrap();
    let base = Arc::new(bytes);
    let mut runs = 0;
    for range in [label..label + 160, mda..mda + 72, text..text + 400] {
        for at in range {
            for value in [0x00, 0xff, !base[at]] {
                let src: Arc<dyn ByteSource> = Arc::new(Patched {
                    base: base.clone(),
                    at,
                    value,
                });
                if let Ok(volumes) = guest::find_volumes(src, "vda") {
                    if let Some(v) = volumes.iter().find(|v| v.name == root) {
                        let mut head = vec![0u8; 1 << 16];
                        v.source.read_exact_at(&mut head, 0).unwrap();
                        assert_eq!(head, data[..1 << 16], "byte {at} = {value:#x}");
                    }
                }
                runs += 1;
            }
        }
    }
    eprintln!("{runs} corrupted images");
}

/// A disk image with one byte changed, sharing the original's bytes.
struct Patched {
    base: Arc<Vec<u8>>,
    at: usize,
    value: u8,
}

impl ByteSource for Patched {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.base.len());
        let n = (self.base.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&self.base[start..start + n]);
        buf[n..].fill(0);
        if self.at >= start && self.at < start + n {
            buf[self.at - start] = self.value;
        }
        Ok(())
    }

    fn byte_len(&self) -> std::io::Result<u64> {
        Ok(self.base.len() as u64)
    }
}

/// A PV made with two metadata areas (`--pvmetadatacopies 2`: one at its start, one at its
/// end): when the first copy's checksum fails, the second is used.
#[test]
fn second_metadata_area_is_used_when_the_first_is_corrupt() {
    let s = small_tree();
    let img = ext4_image(&s, "root.raw", 8);
    let disk = whole_disk(&s, 24);
    let vg = unique_vg("vsf2m");
    let lv = LvSpec::new("root", vec![linear(8, 0, 1)]);
    let mut host = LvmHost::new(&vg);
    let dev = host.attach(&disk, 0, 24 * MIB);
    host.pvcreate(&dev, &["--pvmetadatacopies", "2"]);
    host.vgcreate("1m");
    host.restore(std::slice::from_ref(&lv));
    let base = host.pe_starts()[0];
    let mut bytes = fs::read(&disk).unwrap();
    drop(host);
    let data = fs::read(&img).unwrap();
    let at = (base + MIB) as usize;
    bytes[at..at + data.len()].copy_from_slice(&data);
    let name = format!("{vg}-root");
    assert!(lv_reads(
        &volumes_of_bytes(bytes.clone()).unwrap(),
        &name,
        &img
    ));
    let (_, text, len) = metadata_location(&bytes, 0);
    bytes[text + len / 2] ^= 1;
    let volumes = volumes_of_bytes(bytes.clone()).unwrap();
    assert!(lv_reads(&volumes, &name, &img), "{:?}", names(&volumes));
    // With the second copy's text corrupted too, nothing is left.
    let label = (0..4)
        .map(|s| s * 512)
        .find(|&at| &bytes[at..at + 8] == b"LABELONE")
        .unwrap();
    let second = u64::from_le_bytes(bytes[label + 120..label + 128].try_into().unwrap()) as usize;
    assert!(
        second > 20 * MIB as usize,
        "second metadata area at {second}"
    );
    let off = u64::from_le_bytes(bytes[second + 40..second + 48].try_into().unwrap()) as usize;
    let size = u64::from_le_bytes(bytes[second + 48..second + 56].try_into().unwrap()) as usize;
    bytes[second + off + size / 2] ^= 1;
    assert_eq!(
        names(&volumes_of_bytes(bytes).unwrap()),
        Vec::<String>::new()
    );
}

/// A PV not in any VG (`pvcreate` only) holds no filesystem and no LV: nothing is shown.
#[test]
fn pv_without_a_vg_shows_nothing() {
    let s = small_tree();
    let disk = whole_disk(&s, 8);
    let mut host = LvmHost::new(&unique_vg("vsfo"));
    let dev = host.attach(&disk, 0, 8 * MIB);
    host.pvcreate(&dev, &[]);
    let bytes = fs::read(&disk).unwrap();
    drop(host);
    assert!(bytes[..2048].windows(8).any(|w| w == b"LABELONE"));
    assert_eq!(
        names(&volumes_of_bytes(bytes).unwrap()),
        Vec::<String>::new()
    );
}
