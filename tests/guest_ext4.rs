//! ext2/3/4 and partition tables against the kernel: golden images made by mkfs from one
//! source tree (every kind of file, odd names, xattrs, ACLs, sparse files, an htree
//! directory, extreme times and ids), put on MBR and GPT disks by sfdisk; the parser's walk
//! must equal the kernel's read-only loop mount of the same bytes, path by path: type, mode,
//! owner, size, links, three times with nanoseconds, st_blocks, device numbers, symlink
//! target, content, xattrs and hard-link classes. Dirty journals are compared with the
//! kernel's view after its own recovery of a copy. Hostile images give the exact error.
//! Needs root (loop mounts, mknod) and the tools scripts/setup-host.sh installs.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::guest::*;
use virtsnapfs::cache::MetadataCache;
use virtsnapfs::guest::ext4::Ext4;
use virtsnapfs::guest::{self, CorruptKind, GuestError, GuestFs};
use virtsnapfs::source::{ByteSource, FileSource};

fn whole_disk(mkfs_cmd: &str, args: &[&str]) {
    let s = GuestScratch::new(TreeOptions::default());
    let img = s.path("disk.raw");
    mkfs(mkfs_cmd, args, &s.tree(), &img, "96M");
    let len = fs::metadata(&img).unwrap().len();
    let _ = len;
    let n = compare_disk_with_kernel(&img, "vda", &["vda"]);
    assert!(n > 3000, "compared {n} paths");
    eprintln!("{mkfs_cmd} {args:?}: {n} paths equal to the kernel's view");
}

#[test]
fn ext4_default_matches_the_kernel() {
    whole_disk("mkfs.ext4", &[]);
}

#[test]
fn ext4_1k_blocks_match_the_kernel() {
    whole_disk("mkfs.ext4", &["-b", "1024"]);
}

#[test]
fn ext4_128_byte_inodes_match_the_kernel() {
    whole_disk("mkfs.ext4", &["-I", "128"]);
}

#[test]
fn ext4_inline_data_matches_the_kernel() {
    whole_disk("mkfs.ext4", &["-O", "inline_data"]);
}

#[test]
fn ext4_without_64bit_matches_the_kernel() {
    whole_disk("mkfs.ext4", &["-O", "^64bit"]);
}

#[test]
fn ext4_without_metadata_csum_matches_the_kernel() {
    whole_disk("mkfs.ext4", &["-O", "^metadata_csum"]);
}

#[test]
fn ext4_meta_bg_matches_the_kernel() {
    whole_disk("mkfs.ext4", &["-O", "meta_bg,^resize_inode"]);
}

#[test]
fn ext3_matches_the_kernel() {
    whole_disk("mkfs.ext3", &[]);
}

#[test]
fn ext2_matches_the_kernel() {
    whole_disk("mkfs.ext2", &[]);
}

#[test]
fn ext2_1k_blocks_triple_indirect_matches_the_kernel() {
    // With 1 KiB blocks the 1.5 GiB file's last bytes are behind a triple indirect block.
    whole_disk("mkfs.ext2", &["-b", "1024", "-I", "128"]);
}

/// The kernel here refuses 64 KiB blocks ("bad block size 65536": larger than a page), so
/// the oracle is its view of the same tree with 4 KiB blocks; what depends on the block
/// size (st_blocks, directory sizes, inode numbers) is left out of the comparison.
#[test]
fn ext4_64k_blocks_match_the_kernels_view_of_the_same_tree() {
    let s = GuestScratch::new(TreeOptions::default());
    let big = s.path("64k.raw");
    let small = s.path("4k.raw");
    mkfs("mkfs.ext4", &["-b", "65536"], &s.tree(), &big, "256M");
    mkfs("mkfs.ext4", &["-b", "4096"], &s.tree(), &small, "256M");
    let volumes = open_volumes(&big, "vda");
    let fs = &volumes["vda"].1;
    assert_eq!(fs.attr(fs.root()).unwrap().block_size, 65536);
    let normalize = |m: Manifest| -> Manifest {
        m.into_iter()
            .map(|(path, mut e)| {
                e.blocks = 0;
                // Each mkfs read the tree, and reading sets atimes: the two images differ.
                e.atime = (0, 0);
                // mkfs makes these two itself, at its own time.
                if path.is_empty() || path == b"lost+found" {
                    (e.mtime, e.ctime) = ((0, 0), (0, 0));
                }
                if e.kind == guest::FileKind::Directory {
                    e.size = 0;
                }
                (path, e)
            })
            .collect()
    };
    let ours = normalize(parser_manifest(fs.as_ref()));
    let mount = LoopMount::new(&small, 0, fs::metadata(&small).unwrap().len());
    let kernel = normalize(kernel_manifest(mount.path()));
    assert_manifests_eq(&ours, &kernel, "64 KiB blocks");
}

const MBR_SCRIPT: &str = "label: dos
start=2048, size=100M, type=83
start=206848, type=5
size=100M, type=83
size=100M, type=83
size=16M, type=82
";

#[test]
fn mbr_disk_with_logical_partitions_matches_the_kernel() {
    let s = GuestScratch::new(TreeOptions::default());
    let (a, b, c) = (s.path("a.raw"), s.path("b.raw"), s.path("c.raw"));
    mkfs("mkfs.ext4", &[], &s.tree(), &a, "96M");
    mkfs("mkfs.ext2", &["-b", "1024"], &s.tree(), &b, "96M");
    mkfs("mkfs.ext3", &[], &s.tree(), &c, "96M");
    let swap = s.path("swap.raw");
    sh("truncate", &["-s", "16M", swap.to_str().unwrap()]);
    sh("mkswap", &[swap.to_str().unwrap()]);
    let disk = s.path("mbr.raw");
    let parts = partitioned_disk(
        &disk,
        "420M",
        MBR_SCRIPT,
        &[(1, &a), (5, &b), (6, &c), (7, &swap)],
    );
    assert_eq!(parts.keys().copied().collect::<Vec<_>>(), [1, 2, 5, 6, 7]);
    // The extended partition and the swap are not volumes.
    let n = compare_disk_with_kernel(&disk, "vda", &["vda1", "vda5", "vda6"]);
    eprintln!("MBR: {n} paths equal");
    // The volumes' windows are the partitions sfdisk made.
    let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(&disk).unwrap());
    let vols = guest::find_volumes(src, "vda").unwrap();
    let got: Vec<_> = vols
        .iter()
        .map(|v| (v.number.unwrap(), (v.start, v.len)))
        .collect();
    let want: Vec<_> = parts
        .iter()
        .filter(|(n, _)| **n != 2)
        .map(|(n, r)| (*n, *r))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn gpt_disk_matches_the_kernel() {
    let s = GuestScratch::new(TreeOptions::default());
    let (a, b, c) = (s.path("a.raw"), s.path("b.raw"), s.path("c.raw"));
    mkfs("mkfs.ext4", &["-O", "inline_data"], &s.tree(), &a, "96M");
    mkfs(
        "mkfs.ext4",
        &["-O", "^64bit,^metadata_csum"],
        &s.tree(),
        &b,
        "96M",
    );
    mkfs("mkfs.ext2", &["-I", "128"], &s.tree(), &c, "96M");
    let script = "label: gpt
start=2048, size=100M, type=linux
size=100M, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7
size=1M, type=linux
size=100M, type=linux
";
    let disk = s.path("gpt.raw");
    partitioned_disk(&disk, "320M", script, &[(1, &a), (2, &b), (4, &c)]);
    // Partition 3 is empty: nothing recognised, not listed.
    let n = compare_disk_with_kernel(&disk, "vda", &["vda1", "vda2", "vda4"]);
    eprintln!("GPT: {n} paths equal");
    // A damaged primary header falls back to the backup at the end of the disk.
    let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(b"X", 512 + 100).unwrap();
    drop(f);
    let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(&disk).unwrap());
    let names: Vec<_> = guest::find_volumes(src, "sda")
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["sda1", "sda2", "sda3", "sda4"]);
}

#[test]
fn htree_directories_are_read_in_full() {
    let s = GuestScratch::new(TreeOptions {
        big_sparse: false,
        big_dir_entries: 3000,
    });
    let img = s.path("d.raw");
    mkfs("mkfs.ext4", &[], &s.tree(), &img, "64M");
    // debugfs shows an index root only for an htree directory.
    let out = sh("debugfs", &["-R", "htree /big", img.to_str().unwrap()]);
    assert!(out.contains("Root node dump"), "not an htree: {out}");
    let v = open_volumes(&img, "vda");
    let fs = &v["vda"].1;
    let big = fs.lookup(fs.root(), b"big").unwrap().unwrap();
    assert_eq!(fs.read_dir(big).unwrap().len(), 3000);
    assert!(fs
        .lookup(big, b"entry-02999-with-a-longer-name")
        .unwrap()
        .is_some());
    assert!(fs
        .lookup(big, b"entry-03000-with-a-longer-name")
        .unwrap()
        .is_none());
}

#[test]
fn filesystems_share_one_bounded_metadata_cache() {
    // Twenty filesystems opened at once over one small cache: each reads the same tree as
    // one opened alone, their blocks together never exceed the budget, and a cache too small
    // to hold a single block still reads correctly (every block from the device).
    let s = GuestScratch::new(TreeOptions {
        big_sparse: false,
        big_dir_entries: 300,
    });
    let img = s.path("c.raw");
    mkfs("mkfs.ext4", &["-b", "1024"], &s.tree(), &img, "16M");
    let open = |cache: &Arc<MetadataCache>| {
        let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(&img).unwrap());
        guest::open_filesystem(src, cache.clone()).unwrap().unwrap()
    };
    let want = parser_manifest(open(&cache()).as_ref());
    let budget = 64 << 10;
    let shared = Arc::new(MetadataCache::new(budget));
    let mut opened = Vec::new();
    for _ in 0..20 {
        let fs = open(&shared);
        assert_eq!(parser_manifest(fs.as_ref()), want);
        assert!(shared.used_bytes() <= budget, "{}", shared.used_bytes());
        opened.push(fs);
    }
    assert!(shared.used_bytes() > budget / 2, "blocks are cached");
    let tiny = Arc::new(MetadataCache::new(512));
    assert_eq!(parser_manifest(open(&tiny).as_ref()), want);
    assert_eq!(tiny.used_bytes(), 0);
}

#[test]
fn seek_data_and_hole_match_the_kernel() {
    let s = GuestScratch::new(TreeOptions {
        big_sparse: true,
        big_dir_entries: 0,
    });
    let img = s.path("d.raw");
    mkfs("mkfs.ext4", &[], &s.tree(), &img, "64M");
    let v = open_volumes(&img, "vda");
    let (vol, fs) = &v["vda"];
    let mount = LoopMount::new(&img, vol.start, vol.len);
    for name in ["holes", "sparse-1.5g", "fragmented", "hello", "empty"] {
        let ino = fs.lookup(fs.root(), name.as_bytes()).unwrap().unwrap();
        let file = fs::File::open(mount.path().join(name)).unwrap();
        let size = file.metadata().unwrap().len();
        let mut offsets = vec![
            0,
            1,
            4095,
            4096,
            5000,
            300 * 1024,
            size.saturating_sub(1),
            size,
        ];
        offsets.extend((0..40).map(|i| i * 3000 + 7).filter(|&o| o < size));
        offsets.push(700 << 20);
        for off in offsets {
            let kd = lseek(&file, off, libc::SEEK_DATA);
            let kh = lseek(&file, off, libc::SEEK_HOLE);
            let ours = fs.next_data(ino, off).unwrap();
            let od = ours.map(|(start, _)| start);
            let oh = if off >= size {
                None
            } else {
                Some(match ours {
                    Some((start, end)) if start == off => end,
                    _ => off,
                })
            };
            assert_eq!((od, oh), (kd, kh), "{name} at {off}");
        }
    }
}

fn lseek(file: &fs::File, off: u64, whence: i32) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off as i64, whence) };
    (r >= 0).then_some(r as u64)
}

// ---------------------------------------------------------------------------------------
// Dirty journals.

struct Dirty {
    s: GuestScratch,
}

impl Dirty {
    /// Makes `dirty.raw`: a filesystem mounted read-write and written in steps, copied while
    /// still mounted. The last step (new files, a rename, deleted files and directories,
    /// which make revoke records) is committed by the journal's timer (`commit=1`) but not
    /// synced: `sync -f` would also write the blocks to their home locations, and then the
    /// image would not need its journal to show them.
    fn new(mkfs_cmd: &str, args: &[&str], extra_rounds: usize) -> Dirty {
        for attempt in 1..=DIRTY_ATTEMPTS {
            let d = Dirty::new_once(mkfs_cmd, args, extra_rounds);
            if !unreplayed_root_has(&d.s.path("dirty.raw"), "late") {
                return d;
            }
            eprintln!("{mkfs_cmd} {args:?}: the last step reached its home blocks before the copy (attempt {attempt}); starting over");
        }
        panic!("{mkfs_cmd} {args:?}: the last step reached its home blocks before the copy {DIRTY_ATTEMPTS} times");
    }

    fn new_once(mkfs_cmd: &str, args: &[&str], extra_rounds: usize) -> Dirty {
        let s = GuestScratch::new(TreeOptions {
            big_sparse: false,
            big_dir_entries: 200,
        });
        let img = s.path("d.raw");
        mkfs(mkfs_cmd, args, &s.tree(), &img, "64M");
        let m = s.path("m");
        fs::create_dir(&m).unwrap();
        sh(
            "mount",
            &[
                "-o",
                "loop,commit=1",
                img.to_str().unwrap(),
                m.to_str().unwrap(),
            ],
        );
        let sync = || sh("sync", &["-f", m.to_str().unwrap()]);
        fs::create_dir(m.join("doomed")).unwrap();
        for i in 0..300 {
            fs::write(m.join("doomed").join(format!("f{i}")), vec![b'd'; 5000]).unwrap();
        }
        fs::write(m.join("early"), b"written before the first sync\n").unwrap();
        sync();
        for round in 0..extra_rounds {
            for i in 0..20 {
                fs::write(m.join(format!("r{round}-{i}")), vec![b'r'; 3000]).unwrap();
                if round > 0 {
                    let _ = fs::remove_file(m.join(format!("r{}-{i}", round - 1)));
                }
            }
            sync();
        }
        fs::remove_dir_all(m.join("doomed")).unwrap();
        fs::remove_dir_all(m.join("big")).unwrap();
        fs::write(m.join("late"), b"written after the last sync\n").unwrap();
        fs::create_dir_all(m.join("new/dir")).unwrap();
        fs::write(m.join("new/dir/file"), vec![b'n'; 70_000]).unwrap();
        fs::rename(m.join("hello"), m.join("hello-renamed")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2500));
        sh(
            "cp",
            &[
                "--sparse=always",
                img.to_str().unwrap(),
                s.path("dirty.raw").to_str().unwrap(),
            ],
        );
        sh("umount", &[m.to_str().unwrap()]);
        let dump = sh("dumpe2fs", &["-h", s.path("dirty.raw").to_str().unwrap()]);
        assert!(dump.contains("needs_recovery"), "not dirty: {dump}");
        Dirty { s }
    }

    /// The kernel's view after its own recovery of a copy (mounted read-write once).
    fn kernel_view(&self) -> Manifest {
        let copy = self.s.path("recovered.raw");
        sh(
            "cp",
            &[
                "--sparse=always",
                self.s.path("dirty.raw").to_str().unwrap(),
                copy.to_str().unwrap(),
            ],
        );
        let m = self.s.path("r");
        fs::create_dir_all(&m).unwrap();
        sh(
            "mount",
            &["-o", "loop", copy.to_str().unwrap(), m.to_str().unwrap()],
        );
        sh("umount", &[m.to_str().unwrap()]);
        let len = fs::metadata(&copy).unwrap().len();
        let mount = LoopMount::new(&copy, 0, len);
        kernel_manifest(mount.path())
    }

    fn open(&self) -> Ext4 {
        let src: Arc<dyn ByteSource> =
            Arc::new(FileSource::open(&self.s.path("dirty.raw")).unwrap());
        Ext4::open(src, cache()).unwrap().unwrap()
    }

    fn open_unreplayed(&self) -> Ext4 {
        let src: Arc<dyn ByteSource> =
            Arc::new(FileSource::open(&self.s.path("dirty.raw")).unwrap());
        Ext4::open_without_replay(src, cache()).unwrap()
    }

    /// Compares with the kernel and checks the replay mattered; returns the stats.
    fn check(&self, tag_bytes: usize) -> virtsnapfs::guest::ext4::journal::ReplayStats {
        let fs = self.open();
        let stats = fs.replay_stats().cloned().expect("journal replayed");
        assert!(stats.transactions > 0, "{stats:?}");
        assert_eq!(stats.tag_bytes, tag_bytes, "{stats:?}");
        let ours = parser_manifest(&fs);
        let kernel = self.kernel_view();
        assert_manifests_eq(&ours, &kernel, "dirty journal");
        // Without the replay the late file is not there: the replay is what shows it.
        let root = fs.root();
        assert!(fs.lookup(root, b"late").unwrap().is_some());
        let before = self.open_unreplayed();
        assert!(before.lookup(root, b"late").unwrap().is_none());
        eprintln!("replayed: {stats:?}; {} paths equal", kernel.len());
        stats
    }
}

#[test]
fn dirty_journal_replays_like_the_kernel() {
    let d = Dirty::new("mkfs.ext4", &[], 0);
    let stats = d.check(16);
    assert!(stats.revoke_records > 0, "no revoke records: {stats:?}");
}

#[test]
fn dirty_journal_without_metadata_csum() {
    Dirty::new("mkfs.ext4", &["-O", "^metadata_csum"], 0).check(12);
}

#[test]
fn dirty_journal_with_32_bit_tags() {
    Dirty::new("mkfs.ext4", &["-O", "^64bit,^metadata_csum"], 0).check(8);
}

#[test]
fn dirty_journal_32_bit_with_csum_v3() {
    Dirty::new("mkfs.ext4", &["-O", "^64bit"], 0).check(16);
}

#[test]
fn dirty_ext3_journal() {
    Dirty::new("mkfs.ext3", &[], 0).check(8);
}

#[test]
fn dirty_journal_that_wraps() {
    // 1024 journal blocks of 1 KiB; each round commits some tens of blocks. Whether the log
    // is caught wrapped when the image is copied depends on where the kernel's head and tail
    // are at that moment (a loaded host checkpoints at other times), so several lengths
    // are tried.
    for rounds in [60, 120, 240, 90, 180, 300] {
        let d = Dirty::new("mkfs.ext4", &["-b", "1024", "-J", "size=1"], rounds);
        if d.open().replay_stats().is_some_and(|s| s.wrapped) {
            let stats = d.check(16);
            assert!(stats.wrapped);
            return;
        }
    }
    panic!("the log never wrapped");
}

// ---------------------------------------------------------------------------------------
// Hostile images: each gives its exact error, never a panic, a hang or a huge allocation.

fn small_image(args: &[&str]) -> GuestScratch {
    let s = GuestScratch::new(TreeOptions {
        big_sparse: false,
        big_dir_entries: 100,
    });
    let mut all = vec!["-b", "4096"];
    all.extend_from_slice(args);
    mkfs("mkfs.ext4", &all, &s.tree(), &s.path("h.raw"), "16M");
    s
}

fn debugfs_w(img: &Path, cmd: &str) {
    let out = Command::new("debugfs")
        .args(["-w", "-R", cmd, img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs {cmd}: {out:?}");
}

fn open_img(img: &Path) -> Result<Box<dyn GuestFs>, GuestError> {
    let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(img).unwrap());
    guest::open_filesystem(src, cache()).map(|f| f.expect("an ext4 filesystem"))
}

/// "located at block B, offset 0xO" from debugfs imap: the inode's byte offset.
fn inode_offset(img: &Path, path: &str, bs: u64) -> u64 {
    let out = sh(
        "debugfs",
        &["-R", &format!("imap {path}"), img.to_str().unwrap()],
    );
    let block: u64 = out
        .split("located at block ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let off = out.split("offset 0x").nth(1).unwrap().trim();
    block * bs + u64::from_str_radix(off, 16).unwrap()
}

/// The first number after `label` in debugfs stat output, e.g. "(ETB0):1234" or "(0):99".
fn stat_block(img: &Path, path: &str, label: &str) -> u64 {
    let out = sh(
        "debugfs",
        &["-R", &format!("stat {path}"), img.to_str().unwrap()],
    );
    let rest = out
        .split(label)
        .nth(1)
        .unwrap_or_else(|| panic!("{label} not in {out}"));
    rest.trim_start_matches(':')
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn hostile_directory_that_contains_itself() {
    let s = small_image(&[]);
    let img = s.path("h.raw");
    debugfs_w(&img, "link / /dir/loop");
    let fs = open_img(&img).unwrap();
    let dir = fs.lookup(fs.root(), b"dir").unwrap().unwrap();
    assert_eq!(fs.lookup(dir, b"loop").unwrap(), Some(fs.root()));
    let err = guest::walk(fs.as_ref(), guest::WalkLimits::default(), &mut |_, _| {}).unwrap_err();
    assert_eq!(corrupt(err), CorruptKind::DirectoryLoop);
}

#[test]
fn hostile_extent_past_the_end_of_the_device() {
    let s = small_image(&[]);
    let img = s.path("h.raw");
    // i_block[5] is ee_start_lo of the first extent in the root node.
    debugfs_w(&img, "sif /random-200k block[5] 0x7fffff00");
    let fs = open_img(&img).unwrap();
    let ino = fs.lookup(fs.root(), b"random-200k").unwrap().unwrap();
    let mut buf = [0u8; 4096];
    assert_eq!(
        corrupt(fs.read(ino, 0, &mut buf).unwrap_err()),
        CorruptKind::ExtentRange
    );
}

#[test]
fn hostile_extent_tree_loop() {
    // Without metadata_csum, so the edited block reaches the depth check.
    let s = small_image(&["-O", "^metadata_csum"]);
    let img = s.path("h.raw");
    let leaf = stat_block(&img, "/fragmented", "(ETB0)");
    // Make the depth-0 node claim depth 1 with one index entry pointing at itself.
    let mut node = [0u8; 24];
    node[0..2].copy_from_slice(&0xF30Au16.to_le_bytes());
    node[2..4].copy_from_slice(&1u16.to_le_bytes());
    node[4..6].copy_from_slice(&1u16.to_le_bytes());
    node[6..8].copy_from_slice(&1u16.to_le_bytes());
    node[16..20].copy_from_slice(&(leaf as u32).to_le_bytes());
    patch(&img, leaf * 4096, &node);
    let fs = open_img(&img).unwrap();
    let ino = fs.lookup(fs.root(), b"fragmented").unwrap().unwrap();
    let mut buf = [0u8; 4096];
    assert_eq!(
        corrupt(fs.read(ino, 0, &mut buf).unwrap_err()),
        CorruptKind::ExtentDepth
    );
    assert_eq!(
        corrupt(fs.next_data(ino, 0).unwrap_err()),
        CorruptKind::ExtentDepth
    );
}

#[test]
fn hostile_absurd_i_size() {
    let s = small_image(&[]);
    let img = s.path("h.raw");
    debugfs_w(&img, "sif /hello size 0xffffffffffffffff");
    debugfs_w(&img, "sif /empty size 0x7fffffffffffffff");
    let fs = open_img(&img).unwrap();
    let hello = fs.lookup(fs.root(), b"hello").unwrap().unwrap();
    assert_eq!(corrupt(fs.attr(hello).unwrap_err()), CorruptKind::FileSize);
    let empty = fs.lookup(fs.root(), b"empty").unwrap().unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        corrupt(fs.read(empty, 1 << 40, &mut buf).unwrap_err()),
        CorruptKind::FileSize
    );
}

#[test]
fn hostile_bad_checksums() {
    let s = small_image(&[]);
    let img = s.path("h.raw");
    let pristine = fs::read(&img).unwrap();
    let reset = || fs::write(&img, &pristine).unwrap();
    // An inode: its mtime changes, its checksum does not.
    let at = inode_offset(&img, "/hello", 4096);
    patch(&img, at + 0x10, &[0x42]);
    let fs = open_img(&img).unwrap();
    let hello = fs.lookup(fs.root(), b"hello").unwrap().unwrap();
    assert_eq!(
        corrupt(fs.attr(hello).unwrap_err()),
        CorruptKind::InodeChecksum
    );
    // Other inodes stay readable.
    let dir = fs.lookup(fs.root(), b"dir").unwrap().unwrap();
    fs.attr(dir).unwrap();
    // A directory block.
    reset();
    let block = stat_block(&img, "/dir", "(0)");
    patch(&img, block * 4096 + 30, &[0x5A]);
    let fs = open_img(&img).unwrap();
    let dir = fs.lookup(fs.root(), b"dir").unwrap().unwrap();
    assert_eq!(
        corrupt(fs.read_dir(dir).unwrap_err()),
        CorruptKind::DirBlockChecksum
    );
    // The superblock.
    reset();
    patch(&img, 1024 + 0x2C, &[0x11, 0x22]);
    assert_eq!(
        corrupt(open_img(&img).err().unwrap()),
        CorruptKind::SuperblockChecksum
    );
    // A group descriptor (block 1 with 4 KiB blocks): its inode table pointer.
    reset();
    patch(&img, 4096 + 0x8, &[0x77]);
    let fs = open_img(&img).unwrap();
    assert_eq!(
        corrupt(fs.attr(fs.root()).unwrap_err()),
        CorruptKind::GroupDescChecksum
    );
}

fn patch_superblock(img: &Path, at: usize, bytes: &[u8]) {
    let mut sb = vec![0u8; 1024];
    fs::File::open(img)
        .unwrap()
        .read_exact_at(&mut sb, 1024)
        .unwrap();
    sb[at..at + bytes.len()].copy_from_slice(bytes);
    patch(img, 1024, &sb);
}

#[test]
fn hostile_journal_longer_than_mke2fs_makes() {
    // A journal inode claiming 20,000,000 blocks, in a filesystem that needs recovery, is
    // refused before any of it is read or mapped.
    let s = small_image(&[]);
    let img = s.path("h.raw");
    debugfs_w(&img, &format!("sif <8> size {}", 20_000_000u64 * 4096));
    debugfs_w(&img, "feature needs_recovery");
    assert_eq!(
        corrupt(open_img(&img).err().unwrap()),
        CorruptKind::JournalTooLong
    );
}

#[test]
fn hostile_superblock_fields() {
    // Without metadata_csum the field checks themselves are reached.
    let s = small_image(&["-O", "^metadata_csum"]);
    let img = s.path("h.raw");
    let pristine = fs::read(&img).unwrap();
    for (at, bytes, kind) in [
        (0x18, &[200u8, 0, 0, 0][..], CorruptKind::BlockSize),
        (0x28, &[0, 0, 0, 0][..], CorruptKind::InodesPerGroup),
        (0x20, &[0, 0, 0, 0][..], CorruptKind::BlocksPerGroup),
        (0x58, &[0x30, 0][..], CorruptKind::InodeSize),
        (
            0x4,
            &[0xff, 0xff, 0xff, 0x0f][..],
            CorruptKind::DeviceTooSmall,
        ),
    ] {
        fs::write(&img, &pristine).unwrap();
        patch_superblock(&img, at, bytes);
        assert_eq!(
            corrupt(open_img(&img).err().unwrap()),
            kind,
            "field {at:#x}"
        );
    }
}

#[test]
fn hostile_truncated_image() {
    let s = small_image(&[]);
    let img = s.path("h.raw");
    sh("truncate", &["-s", "5M", img.to_str().unwrap()]);
    assert_eq!(
        corrupt(open_img(&img).err().unwrap()),
        CorruptKind::DeviceTooSmall
    );
    // A partition window cut short by the disk is the same: reads past it are zeros, and
    // the filesystem does not fit.
    let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(&img).unwrap());
    let w: Arc<dyn ByteSource> = Arc::new(guest::PartitionWindow::new(src, 0, 4 << 20));
    assert!(guest::open_filesystem(w, cache()).is_err());
}

#[test]
fn corrupting_metadata_bytes_never_panics() {
    // Every byte of the superblock, the first group descriptor, the first inodes and the
    // root directory's block, set to 0x00, 0xff and its complement, through the fuzz
    // target's body (open, walk, read).
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("d/e")).unwrap();
    fs::write(tree.join("f"), vec![7u8; 5000]).unwrap();
    fs::write(tree.join("d/e/g"), b"g").unwrap();
    std::os::unix::fs::symlink("d/e/g", tree.join("l")).unwrap();
    sh(
        "setfattr",
        &["-n", "user.a", "-v", "b", tree.join("f").to_str().unwrap()],
    );
    for i in 0..40 {
        fs::write(tree.join("d").join(format!("n{i}")), b"").unwrap();
    }
    let img = dir.path().join("f.raw");
    mkfs("mkfs.ext4", &["-b", "1024", "-N", "64"], &tree, &img, "2M");
    let bytes = fs::read(&img).unwrap();
    let root_block = stat_block(&img, "/", "(0)");
    let itable = inode_offset(&img, "<1>", 1024);
    let ranges = [
        (1024usize, 1024usize),
        (2048, 64),
        (itable as usize, 256 * 2 + 128),
        (root_block as usize * 1024, 256),
    ];
    let mut runs = 0;
    for (start, len) in ranges {
        for at in start..start + len {
            for v in [0x00, 0xff, !bytes[at]] {
                let mut c = bytes.clone();
                c[at] = v;
                guest::fuzz_one_disk(&c);
                runs += 1;
            }
        }
    }
    eprintln!("{runs} corrupted images read without a panic");
}
