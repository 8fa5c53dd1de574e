//! FAT12, FAT16 and FAT32 against mtools (the kernel here has no vfat): images made by
//! mkfs.vfat and filled by mcopy from one source tree (long names, names that need the NT
//! lowercase flags, Unicode names, nested directories, a directory of several clusters,
//! empty files, files of many clusters, a fragmented file made by writing, deleting and
//! writing again), whole disks and partitions of MBR and GPT disks. The parser's walk must
//! equal what `mcopy -s -n -m` extracts: every name, type, size, byte and file time, and
//! `mattrib`'s read-only attribute. Hostile images give their exact error.
//! Needs dosfstools, mtools and fdisk (scripts/setup-host.sh installs them).

mod common;
#[path = "common/fat.rs"]
mod fat_helpers;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::guest::{
    cache, corrupt, exercise_everything, open_volumes, partitioned_disk, patch, sh, OneByteChanged,
};
use fat_helpers::*;
use virtsnapfs::cache::MetadataCache;
use virtsnapfs::guest::fat::boot::Geometry;
use virtsnapfs::guest::fat::{Fat, DIR_INO_BASE};
use virtsnapfs::guest::{self, CorruptKind, FileKind, GuestError, GuestFs};
use virtsnapfs::source::{ByteSource, FileSource};

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new(big_dir: usize) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        fat_tree(&dir.path().join("tree"), big_dir);
        Scratch { dir }
    }
    fn tree(&self) -> PathBuf {
        self.dir.path().join("tree")
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn open_img(img: &Path) -> Result<Box<dyn GuestFs>, GuestError> {
    let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(img).unwrap());
    guest::open_filesystem(src, cache()).map(|f| f.expect("a FAT filesystem"))
}

fn geometry(img: &Path) -> Geometry {
    let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(img).unwrap());
    Fat::open(src, cache()).unwrap().geometry().clone()
}

/// The ranges of clusters mshowfat lists for a file: "<5-6><9>" -> [(5, 6), (9, 9)].
fn showfat_ranges(out: &str) -> Vec<(u32, u32)> {
    out.split('<')
        .skip(1)
        .map(|r| {
            let r = r.split('>').next().unwrap();
            let mut it = r.split('-').map(|n| n.trim().parse::<u32>().unwrap());
            let a = it.next().unwrap();
            (a, it.next().unwrap_or(a))
        })
        .collect()
}

/// The clusters of a file, in chain order, from mtools.
fn clusters_of(img: &Path, path: &str) -> Vec<u32> {
    let out = mtools("mshowfat", &["-i", img.to_str().unwrap(), path]);
    showfat_ranges(&out)
        .into_iter()
        .flat_map(|(a, b)| a..=b)
        .collect()
}

/// Byte position on the volume of the 8.3 entry whose raw name is `name11`, searched in
/// the directory areas (the root region and the data clusters) of `img`.
fn short_entry_pos(img: &Path, name11: &[u8; 11]) -> u64 {
    let g = geometry(img);
    let bytes = fs::read(img).unwrap();
    let start = if g.root_bytes > 0 {
        g.root_start
    } else {
        g.data_start
    } as usize;
    (start..bytes.len())
        .step_by(32)
        .find(|&at| &bytes[at..at + 11] == name11 && bytes[at + 11] != 0x0F)
        .unwrap_or_else(|| panic!("no entry {:?}", String::from_utf8_lossy(name11))) as u64
}

/// Writes `value` into the first table's entry of `cluster`.
fn set_fat_entry(img: &Path, cluster: u32, value: u32) {
    let g = geometry(img);
    use virtsnapfs::guest::fat::boot::FatType;
    let c = u64::from(cluster);
    match g.fat_type {
        FatType::Fat12 => {
            let at = g.fat_start + c + c / 2;
            let mut two = [0u8; 2];
            fs::File::open(img)
                .unwrap()
                .read_exact_at(&mut two, at)
                .unwrap();
            let old = u16::from_le_bytes(two);
            let v = (value & 0xFFF) as u16;
            let new = if cluster % 2 == 1 {
                (old & 0x000F) | (v << 4)
            } else {
                (old & 0xF000) | v
            };
            patch(img, at, &new.to_le_bytes());
        }
        FatType::Fat16 => patch(img, g.fat_start + c * 2, &(value as u16).to_le_bytes()),
        FatType::Fat32 => patch(img, g.fat_start + c * 4, &value.to_le_bytes()),
    }
}

// ---------------------------------------------------------------------------------------
// Golden images against mtools.

/// Makes an image, fragments a file in it, and compares the parser with mtools. Returns
/// the scratch and image path for further checks.
fn whole_volume(bits: u32, size: &str, args: &[&str], big_dir: usize) -> (Scratch, PathBuf) {
    let s = Scratch::new(big_dir);
    let img = s.path("fat.raw");
    make_fat(&img, bits, size, args, &s.tree());
    let showfat = fragment(&img, s.dir.path(), 40_000);
    let ranges = showfat_ranges(&showfat);
    assert!(ranges.len() > 1, "not fragmented: {showfat}");
    let g = geometry(&img);
    let volumes = open_volumes(&img, "vda");
    let fs = &volumes["vda"].1;
    assert_eq!(fs.format_name(), format!("fat{bits}"));
    let ours = parser_fat_manifest(fs.as_ref());
    let oracle = mtools_manifest(&img, 0);
    assert_fat_manifests_eq(&ours, &oracle, &format!("FAT{bits} {args:?}"));
    // What the comparison covered: the big directory spans several clusters, a file spans
    // many, the fragmented file is in pieces, and the deep leaf was reached.
    let big = fs.lookup(fs.root(), b"big").unwrap().unwrap();
    let big_size = fs.attr(big).unwrap().size;
    assert!(
        big_size > u64::from(g.cluster_size),
        "big/ is {big_size} bytes"
    );
    assert!(oracle["multi-cluster.bin".as_bytes()].size.unwrap() > 4 * u64::from(g.cluster_size));
    assert!(oracle.contains_key("deep/one/two/three/four/five/six/leaf.txt".as_bytes()));
    assert!(oracle.contains_key("fragmented.bin".as_bytes()));
    eprintln!(
        "FAT{bits} {args:?}: {} paths equal to mtools' view ({} byte clusters, fragmented file in {} runs)",
        oracle.len(),
        g.cluster_size,
        ranges.len()
    );
    (s, img)
}

#[test]
fn fat12_matches_mtools() {
    whole_volume(12, "4M", &[], 120);
}

#[test]
fn fat16_matches_mtools() {
    // With a volume label: an entry in the root directory that is not listed.
    whole_volume(16, "24M", &["-s", "4", "-n", "ESP LABEL"], 200);
}

#[test]
fn fat32_matches_mtools() {
    whole_volume(32, "40M", &[], 200);
}

#[test]
fn fat32_with_4k_sectors_matches_mtools() {
    whole_volume(32, "300M", &["-S", "4096"], 40);
}

#[test]
fn fat16_with_one_fat_and_a_small_root_matches_mtools() {
    // One allocation table, 64-entry root directory, 512-byte clusters.
    whole_volume(16, "20M", &["-f", "1", "-r", "64", "-s", "1"], 40);
}

#[test]
fn broken_long_names_fall_back_to_the_short_name_like_mtools() {
    let s = Scratch::new(0);
    let img = s.path("lfn.raw");
    make_fat(&img, 16, "16M", &["-s", "1"], &s.tree());
    let bytes = fs::read(&img).unwrap();
    // The long-name entries right before an 8.3 entry, last one first in the directory.
    let lfn_before = |name11: &[u8; 11]| -> Vec<u64> {
        let at = short_entry_pos(&img, name11);
        let mut out = Vec::new();
        let mut p = at - 32;
        while bytes[p as usize + 11] == 0x0F {
            out.push(p);
            p -= 32;
        }
        out
    };
    let mixed = lfn_before(b"MIXEDC~1TXT");
    let long = lfn_before(b"A_VERY~1TEX");
    let dotfile = lfn_before(b"HIDDEN~1   ");
    assert!(!mixed.is_empty() && long.len() > 3 && !dotfile.is_empty());
    // A checksum that does not match the 8.3 name; an orphan (the first entry lost its
    // "last" flag, so the rest belong to nothing); an ordinal out of sequence.
    let mixed_first = *mixed.last().unwrap();
    patch(
        &img,
        mixed_first + 13,
        &[bytes[mixed_first as usize + 13] ^ 0x55],
    );
    let long_first = *long.last().unwrap();
    patch(&img, long_first, &[bytes[long_first as usize] & !0x40]);
    patch(&img, dotfile[0], &[0x07]);
    let fs = open_img(&img).unwrap();
    let ours = parser_fat_manifest(fs.as_ref());
    let oracle = mtools_manifest(&img, 0);
    assert!(
        oracle.contains_key("MIXEDC~1.TXT".as_bytes()),
        "{:?}",
        oracle.keys()
    );
    assert_fat_manifests_eq(&ours, &oracle, "broken long names");
}

#[test]
fn read_only_attribute_clears_the_write_bits() {
    let s = Scratch::new(0);
    let img = s.path("ro.raw");
    make_fat(&img, 16, "16M", &[], &s.tree());
    let i = img.to_str().unwrap();
    mtools("mattrib", &["+r", "-i", i, "::/readme.txt"]);
    mtools("mattrib", &["+r", "-i", i, "::/deep/one"]);
    mtools("mattrib", &["+h", "+s", "-i", i, "::/UPPER.TXT"]);
    let fs = open_img(&img).unwrap();
    let oracle = mtools_manifest(&img, 0);
    assert_eq!(oracle["readme.txt".as_bytes()].read_only, Some(true));
    assert_fat_manifests_eq(&parser_fat_manifest(fs.as_ref()), &oracle, "read-only");
    let perm = |path: &[&[u8]]| {
        let mut ino = fs.root();
        for part in path {
            ino = fs.lookup(ino, part).unwrap().unwrap();
        }
        fs.attr(ino).unwrap().perm
    };
    // Files lose their write bits; directories keep theirs (Linux without `rodir`);
    // hidden and system change nothing.
    assert_eq!(perm(&[b"readme.txt"]), 0o555);
    assert_eq!(perm(&[b"lower.TXT"]), 0o755);
    assert_eq!(perm(&[b"deep", b"one"]), 0o755);
    assert_eq!(perm(&[b"UPPER.TXT"]), 0o755);
}

#[test]
fn lookups_ignore_ascii_case_and_accept_short_names_like_mtools() {
    let s = Scratch::new(0);
    let img = s.path("case.raw");
    make_fat(&img, 12, "4M", &[], &s.tree());
    let fs = open_img(&img).unwrap();
    let i = img.to_str().unwrap();
    // The 8.3 aliases mtools gave the long names, from its listing.
    let listing = mtools("mdir", &["-i", i, "::/"]);
    let alias_of = |long: &str| -> String {
        let line = listing
            .lines()
            .find(|l| l.ends_with(long))
            .unwrap_or_else(|| panic!("{long} not in {listing}"));
        let base = line[..8].trim_end();
        let ext = line[9..12].trim_end();
        if ext.is_empty() {
            base.to_string()
        } else {
            format!("{base}.{ext}")
        }
    };
    let mixed = alias_of("MixedCase.Txt");
    assert!(mixed.contains('~'), "{mixed}");
    for name in [
        "README.TXT",
        "Readme.Txt",
        "mixedcase.txt",
        mixed.as_str(),
        "LOWER.txt",
    ] {
        let ino = fs
            .lookup(fs.root(), name.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{name} not found"));
        let want = mtools("mtype", &["-i", i, &format!("::/{name}")]);
        assert_eq!(read_all(fs.as_ref(), ino), want.as_bytes(), "{name}");
    }
    assert_eq!(fs.lookup(fs.root(), b"no-such-file").unwrap(), None);
}

#[test]
fn times_are_the_entry_fields_read_as_utc() {
    // mcopy -m writes the source's modification time as the entry's write time, its date as
    // the access date, and (mtools 4.0) the same time as the creation time.
    let s = Scratch::new(0);
    let img = s.path("t.raw");
    make_fat(&img, 32, "40M", &[], &s.tree());
    let fs = open_img(&img).unwrap();
    let oracle = mtools_manifest(&img, 0);
    let mut checked = 0;
    for (path, e) in &oracle {
        let Some(mtime) = e.mtime else { continue };
        let mut ino = fs.root();
        for part in path.split(|&b| b == b'/') {
            ino = fs.lookup(ino, part).unwrap().unwrap();
        }
        let a = fs.attr(ino).unwrap();
        assert_eq!(a.mtime.secs, mtime, "{}", String::from_utf8_lossy(path));
        assert_eq!(a.ctime, a.mtime);
        assert_eq!(
            a.atime.secs,
            mtime - mtime.rem_euclid(86400),
            "atime is the date"
        );
        let cr = a.crtime.unwrap();
        assert!(
            cr.secs - mtime < 2 && cr.secs >= mtime,
            "crtime {cr:?} mtime {mtime}"
        );
        checked += 1;
    }
    assert!(checked > 10, "{checked} files");
    // The tree's extreme times came through.
    let src = fs::metadata(s.tree().join("UPPER.TXT")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(oracle["UPPER.TXT".as_bytes()].mtime, Some(src.mtime()));
}

#[test]
fn inode_numbers_are_stable_and_found_again() {
    let s = Scratch::new(30);
    let img = s.path("ino.raw");
    make_fat(&img, 16, "16M", &[], &s.tree());
    let first = parser_inos(open_img(&img).unwrap().as_ref());
    // A second opening (nothing remembered) gives the same numbers, and attr of a deep
    // directory's number works before any listing has named it: found through `..`.
    let fs = open_img(&img).unwrap();
    let deep = first["deep/one/two/three".as_bytes()];
    assert!(deep >= DIR_INO_BASE);
    let a = fs.attr(deep).unwrap();
    assert_eq!(a.kind, FileKind::Directory);
    assert_eq!(parser_inos(fs.as_ref()), first);
    let mut seen = std::collections::BTreeSet::new();
    assert!(
        first.values().all(|i| seen.insert(*i)),
        "numbers are unique"
    );
    // nlink of a directory: its subdirectories + 2, as mtools lists them.
    let listing = mtools("mdir", &["-a", "-i", img.to_str().unwrap(), "::/deep/one"]);
    let dirs = listing.lines().filter(|l| l.contains("<DIR>")).count() as u32;
    let one = fs.attr(first["deep/one".as_bytes()]).unwrap();
    assert_eq!(one.nlink, dirs, "{listing}");
}

fn parser_inos(fs: &dyn GuestFs) -> std::collections::BTreeMap<Vec<u8>, u64> {
    let mut m = std::collections::BTreeMap::new();
    guest::walk(fs, guest::WalkLimits::default(), &mut |p, a| {
        m.insert(p.to_vec(), a.ino);
    })
    .unwrap();
    m
}

#[test]
fn efi_system_partitions_on_mbr_and_gpt_disks_match_mtools() {
    let s = Scratch::new(60);
    let (a, b) = (s.path("a.raw"), s.path("b.raw"));
    make_fat(&a, 32, "40M", &[], &s.tree());
    make_fat(&b, 16, "20M", &[], &s.tree());
    for (label, script) in [
        (
            "MBR",
            "label: dos\nstart=2048, size=41M, type=ef\nsize=21M, type=6\nsize=4M, type=83\n",
        ),
        (
            "GPT",
            "label: gpt\nstart=2048, size=41M, type=U\nsize=21M, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\nsize=4M, type=L\n",
        ),
    ] {
        let disk = s.path(&format!("{label}.raw"));
        let parts = partitioned_disk(&disk, "80M", script, &[(1, &a), (2, &b)]);
        let volumes = open_volumes(&disk, "vda");
        // Partition 3 is empty: not recognised, not listed.
        let names: Vec<&str> = volumes.keys().map(String::as_str).collect();
        assert_eq!(names, ["vda1", "vda2"], "{label}");
        for (n, bits) in [(1u32, 32), (2, 16)] {
            let (v, fs) = &volumes[&format!("vda{n}")];
            assert_eq!((v.start, v.len), parts[&n]);
            assert_eq!(fs.format_name(), format!("fat{bits}"));
            let oracle = mtools_manifest(&disk, v.start);
            assert_fat_manifests_eq(
                &parser_fat_manifest(fs.as_ref()),
                &oracle,
                &format!("{label} partition {n}"),
            );
            eprintln!("{label} vda{n}: {} paths equal", oracle.len());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hostile images: each gives its exact error (EIO at the mount), never a panic, a hang,
// wrong bytes or a huge allocation. fsck.fat agrees each one is damaged.

fn small_fat(bits: u32) -> (Scratch, PathBuf) {
    let s = Scratch::new(20);
    let img = s.path("h.raw");
    let (size, args): (&str, &[&str]) = match bits {
        12 => ("4M", &[]),
        16 => ("16M", &["-s", "1"]),
        _ => ("40M", &[]),
    };
    make_fat(&img, bits, size, args, &s.tree());
    (s, img)
}

fn fsck_finds_damage(img: &Path) {
    let out = std::process::Command::new("fsck.fat")
        .args(["-n", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "fsck.fat found nothing wrong: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn read_file_err(img: &Path, path: &[&[u8]]) -> CorruptKind {
    let fs = open_img(img).unwrap();
    let mut ino = fs.root();
    for part in path {
        ino = fs.lookup(ino, part).unwrap().unwrap();
    }
    let mut buf = vec![0u8; 1 << 20];
    corrupt(fs.read(ino, 0, &mut buf).unwrap_err())
}

#[test]
fn hostile_cluster_chain_loop() {
    for bits in [12, 16, 32] {
        let (_s, img) = small_fat(bits);
        let clusters = clusters_of(&img, "::/multi-cluster.bin");
        assert!(clusters.len() > 4);
        // The fourth cluster links back to the second.
        set_fat_entry(&img, clusters[3], clusters[1]);
        fsck_finds_damage(&img);
        assert_eq!(
            read_file_err(&img, &[b"multi-cluster.bin"]),
            CorruptKind::FatChainLoop
        );
        // A cluster that links to itself, in a directory's chain.
        let (_s, img) = small_fat(bits);
        let big = clusters_of(&img, "::/big");
        assert!(big.len() > 1, "big/ has one cluster");
        set_fat_entry(&img, big[1], big[1]);
        let fs = open_img(&img).unwrap();
        let dir = fs.lookup(fs.root(), b"big").unwrap().unwrap();
        assert_eq!(
            corrupt(fs.read_dir(dir).unwrap_err()),
            CorruptKind::FatChainLoop
        );
        assert_eq!(
            corrupt(fs.attr(dir).unwrap_err()),
            CorruptKind::FatChainLoop
        );
    }
}

#[test]
fn hostile_chain_past_the_volume_or_into_free_bad_and_reserved_clusters() {
    for bits in [12, 16, 32] {
        let (_s, img) = small_fat(bits);
        let pristine = fs::read(&img).unwrap();
        let g = geometry(&img);
        let clusters = clusters_of(&img, "::/multi-cluster.bin");
        let bad = match bits {
            12 => 0xFF7,
            16 => 0xFFF7,
            _ => 0x0FFF_FFF7,
        };
        for (value, kind) in [
            (g.cluster_count + 2, CorruptKind::FatClusterRange),
            (0, CorruptKind::FatChainFree),
            (bad, CorruptKind::FatChainBad),
            (bad - 1, CorruptKind::FatChainReserved),
            (1, CorruptKind::FatChainReserved),
        ] {
            fs::write(&img, &pristine).unwrap();
            set_fat_entry(&img, clusters[2], value);
            fsck_finds_damage(&img);
            assert_eq!(
                read_file_err(&img, &[b"multi-cluster.bin"]),
                kind,
                "FAT{bits} link {value:#x}"
            );
        }
        // A chain that ends before the file's size.
        fs::write(&img, &pristine).unwrap();
        set_fat_entry(&img, clusters[2], 0x0FFF_FFFF);
        fsck_finds_damage(&img);
        assert_eq!(
            read_file_err(&img, &[b"multi-cluster.bin"]),
            CorruptKind::FatChainShort
        );
        // The first cluster past the volume.
        fs::write(&img, &pristine).unwrap();
        let at = short_entry_pos(&img, b"UPPER   TXT");
        let past = g.cluster_count + 2;
        patch(&img, at + 26, &(past as u16).to_le_bytes());
        if bits == 32 {
            patch(&img, at + 20, &((past >> 16) as u16).to_le_bytes());
        }
        assert_eq!(
            read_file_err(&img, &[b"UPPER.TXT"]),
            CorruptKind::FatClusterRange
        );
    }
}

#[test]
fn hostile_directory_that_contains_itself() {
    for bits in [12, 16, 32] {
        let (_s, img) = small_fat(bits);
        // deep/one/two's entry points at deep's first cluster: two is deep again.
        let deep = clusters_of(&img, "::/deep")[0];
        let at = short_entry_pos(&img, b"TWO        ");
        patch(&img, at + 26, &(deep as u16).to_le_bytes());
        patch(&img, at + 20, &((deep >> 16) as u16).to_le_bytes());
        fsck_finds_damage(&img);
        let fs = open_img(&img).unwrap();
        let d = fs.lookup(fs.root(), b"deep").unwrap().unwrap();
        let one = fs.lookup(d, b"one").unwrap().unwrap();
        assert_eq!(fs.lookup(one, b"two").unwrap(), Some(d));
        let err =
            guest::walk(fs.as_ref(), guest::WalkLimits::default(), &mut |_, _| {}).unwrap_err();
        assert_eq!(corrupt(err), CorruptKind::DirectoryLoop, "FAT{bits}");
        // A subdirectory entry naming the root (cluster 0, as `..` does, or the FAT32
        // root's cluster) is the root.
        let (_s, img) = small_fat(bits);
        let root_cluster = if bits == 32 {
            geometry(&img).root_cluster
        } else {
            0
        };
        let at = short_entry_pos(&img, b"FIVE       ");
        patch(&img, at + 26, &(root_cluster as u16).to_le_bytes());
        patch(&img, at + 20, &((root_cluster >> 16) as u16).to_le_bytes());
        let fs = open_img(&img).unwrap();
        let err =
            guest::walk(fs.as_ref(), guest::WalkLimits::default(), &mut |_, _| {}).unwrap_err();
        assert_eq!(corrupt(err), CorruptKind::DirectoryLoop, "FAT{bits} root");
    }
}

#[test]
fn hostile_absurd_boot_sector_fields() {
    for bits in [12, 16, 32] {
        let (_s, img) = small_fat(bits);
        let pristine = fs::read(&img).unwrap();
        let mut cases: Vec<(u64, Vec<u8>, CorruptKind)> = vec![
            (11, vec![0, 0], CorruptKind::FatBytesPerSector),
            (11, vec![0x00, 0x03], CorruptKind::FatBytesPerSector),
            (11, vec![0x00, 0x20], CorruptKind::FatBytesPerSector),
            (13, vec![0], CorruptKind::FatSectorsPerCluster),
            (13, vec![3], CorruptKind::FatSectorsPerCluster),
            (14, vec![0, 0], CorruptKind::FatReservedSectors),
            (16, vec![0], CorruptKind::FatCount),
            (21, vec![0x00], CorruptKind::FatMedia),
        ];
        if bits == 32 {
            cases.push((36, vec![0, 0, 0, 0], CorruptKind::FatTableSize));
            cases.push((32, vec![40, 0, 0, 0], CorruptKind::FatTotalSectors));
            cases.push((44, vec![0, 0, 0, 0], CorruptKind::FatRootCluster));
            cases.push((17, vec![16, 0], CorruptKind::FatTypeMismatch));
        } else {
            // BPB_FATSz16 0 sends the reader to BPB_FATSz32, which on FAT12/16 holds the
            // drive number and boot signature: a table far larger than the volume.
            cases.push((22, vec![0, 0], CorruptKind::FatTotalSectors));
            cases.push((22, vec![1, 0], CorruptKind::FatTableSize));
            cases.push((19, vec![4, 0], CorruptKind::FatTotalSectors));
            cases.push((17, vec![3, 0], CorruptKind::FatRootEntries));
        }
        for (at, bytes, kind) in cases {
            fs::write(&img, &pristine).unwrap();
            patch(&img, at, &bytes);
            let err = open_img(&img)
                .err()
                .unwrap_or_else(|| panic!("FAT{bits} field {at} opened"));
            assert_eq!(corrupt(err), kind, "FAT{bits} field {at} = {bytes:?}");
        }
    }
}

#[test]
fn hostile_truncated_image() {
    for bits in [12, 16, 32] {
        let (_s, img) = small_fat(bits);
        let len = fs::metadata(&img).unwrap().len();
        sh(
            "truncate",
            &["-s", &(len / 2).to_string(), img.to_str().unwrap()],
        );
        assert_eq!(
            corrupt(open_img(&img).err().unwrap()),
            CorruptKind::FatDeviceTooSmall,
            "FAT{bits}"
        );
        // A partition window cut short is the same.
        let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(&img).unwrap());
        let w: Arc<dyn ByteSource> = Arc::new(guest::PartitionWindow::new(src, 0, len / 4));
        assert!(guest::open_filesystem(w, cache()).is_err());
    }
}

/// What `guest::fuzz_one_disk` does (volumes found and opened, and everything in each
/// exercised), over a source instead of a copied buffer.
fn read_everything(disk: Arc<dyn ByteSource>) {
    let Ok(volumes) = guest::find_volumes(disk, "vda") else {
        return;
    };
    let cache = Arc::new(MetadataCache::new(256 << 10));
    for v in volumes {
        if let Ok(Some(fs)) = guest::open_filesystem(v.source, cache.clone()) {
            exercise_everything(fs.as_ref(), &[b"A"]);
        }
    }
}

#[test]
fn corrupting_metadata_bytes_never_panics() {
    // Every byte of the boot sector, the start of the table and of the root directory, set
    // to 0x00, 0xff and its complement, then opened, walked and read as the fuzz target
    // does.
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("d/e")).unwrap();
    fs::write(tree.join("f"), pattern(5000, 3)).unwrap();
    fs::write(tree.join("d/e/g"), b"g").unwrap();
    fs::write(tree.join("Long File Name.txt"), b"l").unwrap();
    let mut runs = 0;
    for bits in [12, 16, 32] {
        let img = dir.path().join(format!("f{bits}.raw"));
        let (size, args): (&str, &[&str]) = match bits {
            12 => ("1M", &[]),
            16 => ("3M", &["-s", "1"]),
            _ => ("33M", &["-s", "1"]),
        };
        make_fat(&img, bits, size, args, &tree);
        let g = geometry(&img);
        let image = Arc::new(fs::read(&img).unwrap());
        let root = if bits == 32 {
            g.data_start
        } else {
            g.root_start
        } as usize;
        for (start, len) in [
            (0usize, 96usize),
            (510, 2),
            (g.fat_start as usize, 48),
            (root, 192),
        ] {
            for at in start..start + len {
                for value in [0x00, 0xff, !image[at]] {
                    read_everything(Arc::new(OneByteChanged {
                        image: image.clone(),
                        at,
                        value,
                    }));
                    runs += 1;
                }
            }
        }
    }
    eprintln!("{runs} corrupted images read without a panic");
}
