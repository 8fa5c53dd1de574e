//! XFS against the kernel: images made by mkfs.xfs, filled through a read-write loop mount
//! from the common source tree plus XFS-specific shapes (see common/xfs.rs), unmounted
//! cleanly, then compared with the kernel's read-only loop mount of the same bytes: every
//! path, type, mode, owner, size, link count, time, st_blocks, device number, symlink
//! target, content and extended attribute, and hard-link classes. Hostile images give
//! their exact error. The kernel here refuses v4 (crc=0) filesystems, so v4 is compared with
//! the prototype it was made from and with xfs_db's own reading of it.
//! Needs xfsprogs, attr and fdisk (scripts/setup-host.sh installs them).

mod common;
#[path = "common/xfs.rs"]
mod xfs_helpers;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::guest::{
    assert_manifests_eq, build_tree, cache, corrupt, kernel_manifest, parser_manifest,
    partitioned_disk, patch, sh, TreeOptions,
};
use virtsnapfs::guest::xfs::Xfs;
use virtsnapfs::guest::{self, CorruptKind, FileKind, GuestError, GuestFs};
use virtsnapfs::source::{ByteSource, FileSource};
use xfs_helpers::*;

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// The common tree with its 1.5 GiB sparse file (which costs the kernel's side most).
    fn new() -> Scratch {
        Scratch::with(TreeOptions::default())
    }
    /// The common tree without the 1.5 GiB sparse file.
    fn light() -> Scratch {
        Scratch::with(TreeOptions {
            big_sparse: false,
            ..TreeOptions::default()
        })
    }
    fn with(opts: TreeOptions) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        build_tree(&dir.path().join("tree"), opts);
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
    guest::open_filesystem(src, cache()).map(|f| f.expect("an XFS filesystem"))
}

fn open_xfs(img: &Path) -> Result<Xfs, GuestError> {
    let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(img).unwrap());
    Xfs::open(src, cache())
}

/// Compares the parser's view of the XFS at `offset` in `img` with the kernel's; returns the
/// number of paths compared.
fn compare(img: &Path, offset: u64, len: u64, fs: &dyn GuestFs, what: &str) -> usize {
    let mount = XfsMount::new(img, offset, len);
    let kernel = kernel_manifest(mount.path());
    let ours = parser_manifest(fs);
    assert_manifests_eq(&ours, &kernel, what);
    assert_lookups_agree(fs, what);
    kernel.len()
}

/// Every name of every directory listing is found by `lookup` (hashed in block, leaf and
/// node directories), with the same inode; names not there are not found.
fn assert_lookups_agree(fs: &dyn GuestFs, what: &str) {
    let mut dirs = Vec::new();
    guest::walk(fs, Default::default(), &mut |_, a| {
        if a.kind == FileKind::Directory {
            dirs.push(a.ino);
        }
    })
    .unwrap();
    for dir in dirs {
        for e in fs.read_dir(dir).unwrap() {
            assert_eq!(
                fs.lookup(dir, &e.name).unwrap(),
                Some(e.ino),
                "{what}: lookup of {:?} in {dir}",
                String::from_utf8_lossy(&e.name)
            );
            let mut other = e.name.clone();
            other.push(b'~');
            assert_eq!(fs.lookup(dir, &other).unwrap(), None, "{what}");
        }
    }
}

fn image(s: &Scratch, name: &str, args: &[&str], entries: usize, interleaved: usize) -> PathBuf {
    let img = s.path(name);
    mkfs_xfs(&img, "400M", args);
    fill(&img, &s.tree(), |m| xfs_shapes(m, entries, interleaved));
    img
}

fn whole(img: &Path, what: &str) -> usize {
    let fs = open_img(img).unwrap();
    let len = std::fs::metadata(img).unwrap().len();
    compare(img, 0, len, fs.as_ref(), what)
}

#[test]
fn v5_default_matches_the_kernel() {
    let s = Scratch::new();
    let img = image(&s, "v5.raw", &[], 40_000, 6000);
    // The shapes are what they are meant to be: a file and directories whose block maps are
    // btrees, short-form directories, a remote symlink, attribute forks of blocks.
    let (format, extents) = fork_format(&img, "/btree-file");
    assert_eq!((format.as_str(), extents > 2000), ("btree", true));
    assert_eq!(fork_format(&img, "/interleaved-a").0, "btree");
    assert_eq!(fork_format(&img, "/huge").0, "btree");
    assert_eq!(fork_format(&img, "/small").0, "local");
    assert_eq!(fork_format(&img, "/remote-link").0, "extents");
    assert_eq!(fork_format(&img, "/fast-link").0, "local");
    let fs = open_img(&img).unwrap();
    assert_eq!(fs.format_name(), "xfs");
    let n = whole(&img, "v5 default");
    assert!(n > 55_000, "{n} paths");
}

#[test]
fn v5_large_directory_blocks_and_inodes_match_the_kernel() {
    let s = Scratch::light();
    for (name, args) in [
        ("dir8k-ino2k.raw", &["-n", "size=8k", "-i", "size=2048"][..]),
        // 1 KiB blocks: directory blocks of 64 blocks each, remote symlinks of two blocks.
        (
            "b1k-dir64k-nrext64.raw",
            &["-b", "size=1024", "-n", "size=64k", "-i", "nrext64=1"][..],
        ),
    ] {
        let img = image(&s, name, args, 3000, 1000);
        let n = whole(&img, name);
        assert!(n > 5000, "{name}: {n} paths");
    }
}

#[test]
fn v5_without_bigtime_finobt_reflink_or_sparse_inodes_matches_the_kernel() {
    let s = Scratch::light();
    // bigtime=0: times before 1901 or after 2038 are clamped by the kernel when written.
    let img = image(
        &s,
        "old.raw",
        &["-m", "bigtime=0,finobt=0,reflink=0", "-i", "sparse=0"],
        3000,
        0,
    );
    whole(&img, "v5 without bigtime");
}

#[test]
fn xfs_in_gpt_and_mbr_partitions_matches_the_kernel() {
    let s = Scratch::light();
    let img = image(&s, "part.raw", &[], 2000, 0);
    for (label, script) in [
        ("gpt", "label: gpt\nstart=2048, size=819200, type=linux\n"),
        ("mbr", "label: dos\nstart=2048, size=819200, type=83\n"),
    ] {
        let disk = s.path(&format!("{label}.raw"));
        let parts = partitioned_disk(&disk, "402M", script, &[(1, &img)]);
        let (start, len) = parts[&1];
        let volumes = common::guest::open_volumes(&disk, "vda");
        let names: Vec<&str> = volumes.keys().map(String::as_str).collect();
        assert_eq!(names, ["vda1"], "{label}");
        let fs = &volumes["vda1"].1;
        assert_eq!(fs.format_name(), "xfs");
        compare(&disk, start, len, fs.as_ref(), label);
    }
}

// Hostile images: each a small filesystem with one field changed, by hand or with
// `xfs_db -x` (which recomputes the v5 CRCs of what it writes, so that the check after the
// CRC is the one that fails).

fn small_image(s: &Scratch, name: &str) -> PathBuf {
    let img = s.path(name);
    mkfs_xfs(&img, "64M", &[]);
    fill(&img, &s.tree(), |m| xfs_shapes(m, 0, 0));
    img
}

fn xfs_db_write(img: &Path, cmds: &[&str]) {
    let mut args = vec!["-x"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(img.to_str().unwrap());
    sh("xfs_db", &args);
}

fn ino_of(fs: &dyn GuestFs, path: &str) -> u64 {
    let mut ino = fs.root();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = fs.lookup(ino, part.as_bytes()).unwrap().unwrap();
    }
    ino
}

fn read_all(fs: &dyn GuestFs, ino: u64) -> Result<(), GuestError> {
    let size = fs.attr(ino)?.size;
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0;
    while at < size {
        let n = fs.read(ino, at, &mut buf)?;
        assert!(n > 0);
        at += n as u64;
    }
    Ok(())
}

#[test]
fn hostile_superblock_magic_and_checksum() {
    let s = Scratch::light();
    let img = small_image(&s, "sb.raw");
    let bad = s.path("magic.raw");
    std::fs::copy(&img, &bad).unwrap();
    patch(&bad, 0, b"XFSC");
    assert_eq!(
        corrupt(open_xfs(&bad).err().unwrap()),
        CorruptKind::XfsSuperblockMagic
    );
    // Not XFS at all for the probe: nothing is shown.
    let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(&bad).unwrap());
    assert!(guest::open_filesystem(src, cache()).unwrap().is_none());
    // The label, covered by the CRC.
    patch(&img, 108, b"X");
    assert_eq!(
        corrupt(open_img(&img).err().unwrap()),
        CorruptKind::XfsSuperblockChecksum
    );
}

#[test]
fn hostile_superblock_geometry_and_features() {
    let s = Scratch::light();
    let img = small_image(&s, "geo.raw");
    let copy = |name: &str| {
        let p = s.path(name);
        std::fs::copy(&img, &p).unwrap();
        p
    };
    let agcount = copy("agcount.raw");
    xfs_db_write(&agcount, &["sb 0", "write -d agcount 1000000"]);
    assert_eq!(
        corrupt(open_img(&agcount).err().unwrap()),
        CorruptKind::XfsAgGeometry
    );
    let blocksize = copy("blocksize.raw");
    xfs_db_write(&blocksize, &["sb 0", "write -d blocksize 12345"]);
    assert_eq!(
        corrupt(open_img(&blocksize).err().unwrap()),
        CorruptKind::XfsGeometrySizes
    );
    let dblocks = copy("dblocks.raw");
    // A filesystem larger than its device: the last group grown past the end.
    let sb = open_xfs(&img).unwrap().superblock().clone();
    let more = u64::from(sb.ag_count) * u64::from(sb.ag_blocks);
    xfs_db_write(&dblocks, &["sb 0", &format!("write -d dblocks {more}")]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&dblocks)
        .unwrap()
        .set_len(sb.dblocks * u64::from(sb.block_size) - 4096)
        .unwrap();
    assert_eq!(
        corrupt(open_img(&dblocks).err().unwrap()),
        CorruptKind::XfsDeviceTooSmall
    );
    let feature = copy("feature.raw");
    xfs_db_write(&feature, &["sb 0", "write -d features_incompat 0x1000b"]);
    match open_img(&feature).err().unwrap() {
        GuestError::Unsupported(m) => assert!(m.contains("incompat bit 16"), "{m}"),
        e => panic!("{e}"),
    }
}

#[test]
fn hostile_inode_checksum_and_fields() {
    let s = Scratch::light();
    let img = small_image(&s, "ino.raw");
    let (hello, small, loc) = {
        let fs = open_xfs(&img).unwrap();
        let hello = ino_of(&fs, "hello");
        (
            hello,
            ino_of(&fs, "small"),
            fs.superblock().inode_location(hello).unwrap(),
        )
    };
    // One byte of di_uid, CRC left as it was.
    let crc = s.path("crc.raw");
    std::fs::copy(&img, &crc).unwrap();
    patch(&crc, loc.0 + loc.1 as u64 + 11, b"\x55");
    let fs = open_img(&crc).unwrap();
    assert_eq!(
        corrupt(fs.attr(hello).unwrap_err()),
        CorruptKind::XfsInodeChecksum
    );
    // An absurd extent count for an inode's extent list.
    let count = s.path("count.raw");
    std::fs::copy(&img, &count).unwrap();
    xfs_db_write(
        &count,
        &[&format!("inode {hello}"), "write -d core.nextents 1000000"],
    );
    let fs = open_img(&count).unwrap();
    assert_eq!(
        corrupt(read_all(fs.as_ref(), hello).unwrap_err()),
        CorruptKind::XfsExtentCount
    );
    // An extent past the end of the filesystem.
    let range = s.path("range.raw");
    std::fs::copy(&img, &range).unwrap();
    xfs_db_write(
        &range,
        &[
            &format!("inode {hello}"),
            "write -d u3.bmx[0].startblock 4000000000",
        ],
    );
    let fs = open_img(&range).unwrap();
    assert_eq!(
        corrupt(read_all(fs.as_ref(), hello).unwrap_err()),
        CorruptKind::XfsExtentRange
    );
    // A short-form directory larger than its inode.
    let size = s.path("size.raw");
    std::fs::copy(&img, &size).unwrap();
    xfs_db_write(
        &size,
        &[&format!("inode {small}"), "write -d core.size 100000"],
    );
    let fs = open_img(&size).unwrap();
    assert_eq!(
        corrupt(fs.read_dir(small).unwrap_err()),
        CorruptKind::XfsDirShortForm
    );
    // An absurd file size.
    let huge = s.path("huge.raw");
    std::fs::copy(&img, &huge).unwrap();
    xfs_db_write(
        &huge,
        &[&format!("inode {hello}"), "write -d core.size -- -1"],
    );
    let fs = open_img(&huge).unwrap();
    assert_eq!(
        corrupt(fs.attr(hello).unwrap_err()),
        CorruptKind::XfsFileSize
    );
}

#[test]
fn hostile_directory_containing_itself() {
    let s = Scratch::light();
    let img = small_image(&s, "loop.raw");
    let small = ino_of(open_img(&img).unwrap().as_ref(), "small");
    // small/dir now names small itself.
    xfs_db_write(
        &img,
        &[
            &format!("inode {small}"),
            &format!("write -d u3.sfdir3.list[0].inumber.i4 {small}"),
        ],
    );
    let fs = open_img(&img).unwrap();
    assert_eq!(ino_of(fs.as_ref(), "small/dir"), small);
    let err = guest::walk(fs.as_ref(), Default::default(), &mut |_, _| {}).unwrap_err();
    assert_eq!(corrupt(err), CorruptKind::DirectoryLoop);
}

#[test]
fn hostile_block_map_btree_loops() {
    let s = Scratch::light();
    let img = small_image(&s, "bmbt.raw");
    let fs = open_img(&img).unwrap();
    let file = ino_of(fs.as_ref(), "btree-file");
    drop(fs);
    let node = sh(
        "xfs_db",
        &[
            "-r",
            "-c",
            &format!("inode {file}"),
            "-c",
            "p u3.bmbt.ptrs[1]",
            img.to_str().unwrap(),
        ],
    );
    let node: u64 = node.trim().rsplit(' ').next().unwrap().parse().unwrap();
    // The level-1 node's first pointer leads back to the node itself.
    let to_self = s.path("self.raw");
    std::fs::copy(&img, &to_self).unwrap();
    xfs_db_write(
        &to_self,
        &[
            &format!("fsb {node}"),
            "type bmapbtd",
            &format!("write -d ptrs[1] {node}"),
        ],
    );
    let fs = open_img(&to_self).unwrap();
    assert_eq!(
        corrupt(read_all(fs.as_ref(), file).unwrap_err()),
        CorruptKind::XfsBmbtLevel
    );
    // The first leaf's right sibling is itself: the extents repeat.
    let leaf = sh(
        "xfs_db",
        &[
            "-r",
            "-c",
            &format!("fsb {node}"),
            "-c",
            "type bmapbtd",
            "-c",
            "p ptrs[1]",
            img.to_str().unwrap(),
        ],
    );
    let leaf: u64 = leaf.trim().rsplit(' ').next().unwrap().parse().unwrap();
    xfs_db_write(
        &img,
        &[
            &format!("fsb {leaf}"),
            "type bmapbtd",
            &format!("write -d rightsib {leaf}"),
        ],
    );
    let fs = open_img(&img).unwrap();
    assert_eq!(
        corrupt(read_all(fs.as_ref(), file).unwrap_err()),
        CorruptKind::XfsExtentOrder
    );
    // A stale CRC of a btree block.
    let fs_sb = open_xfs(&img).unwrap().superblock().clone();
    let at = fs_sb.fsb_to_byte(leaf).unwrap();
    patch(&img, at + 100, b"\xff\xff");
    let fs = open_img(&img).unwrap();
    assert_eq!(
        corrupt(read_all(fs.as_ref(), file).unwrap_err()),
        CorruptKind::XfsBmbtChecksum
    );
}

#[test]
fn unwritten_extents_read_as_zeros_and_are_holes() {
    let s = Scratch::light();
    let img = small_image(&s, "unwritten.raw");
    let fs = open_img(&img).unwrap();
    let f = ino_of(fs.as_ref(), "prealloc");
    let a = fs.attr(f).unwrap();
    assert_eq!(a.kind, FileKind::File);
    assert_eq!(a.size, 1 << 20);
    let mut buf = vec![0xeeu8; 1 << 20];
    assert_eq!(fs.read(f, 0, &mut buf).unwrap(), 1 << 20);
    assert!(buf[..100_000].iter().all(|&b| b == 0));
    assert!(buf[100_000..105_000].iter().all(|&b| b == 0x61));
    assert!(buf[105_000..].iter().all(|&b| b == 0));
    // The written blocks are the only data SEEK_DATA finds.
    let (start, end) = fs.next_data(f, 0).unwrap().unwrap();
    assert!((100_000 - 4096..=100_000).contains(&start), "{start}");
    assert!((105_000..=105_000 + 4096).contains(&end), "{end}");
    assert_eq!(fs.next_data(f, end).unwrap(), None);
    // Sparse: data, a hole, data; and the holes of the btree file.
    let b = ino_of(fs.as_ref(), "btree-file");
    assert_eq!(fs.next_data(b, 0).unwrap(), Some((0, 4096)));
    assert_eq!(fs.next_data(b, 4096).unwrap(), Some((8192, 12288)));
    let last = 2999 * 8192;
    assert_eq!(
        fs.next_data(b, last - 1).unwrap(),
        Some((last, last + 4096))
    );
}

/// v4 (crc=0): the kernel here refuses to mount it ("Deprecated V4 format (crc=0) not
/// supported by kernel"), and it cannot be filled through a mount, so mkfs.xfs fills it
/// from a prototype file and the oracle is the source the prototype names: every name,
/// type, mode, owner, size, content, symlink target and device number. 256-byte inodes,
/// directory entries without file types, short-form, block and node directories, and
/// remote symlinks without v5 headers.
#[test]
fn v4_from_a_prototype_matches_its_source() {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // Expected view: path -> (kind, mode, uid, gid, content or target, rdev).
    type Want = (FileKind, u16, u32, u32, Vec<u8>, (u32, u32));
    let mut want: BTreeMap<String, Want> = BTreeMap::new();
    let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
    let file = |proto: &mut String,
                want: &mut BTreeMap<String, Want>,
                path: &str,
                name: &str,
                data: Vec<u8>,
                mode: u16,
                uid: u32| {
        let f = src.join(path.replace('/', "_"));
        std::fs::write(&f, &data).unwrap();
        writeln!(
            proto,
            "{name} ---{mode:o} {uid} {} {}",
            uid + 1,
            f.display()
        )
        .unwrap();
        want.insert(
            path.to_string(),
            (FileKind::File, mode, uid, uid + 1, data, (0, 0)),
        );
    };
    file(
        &mut proto,
        &mut want,
        "hello",
        "hello",
        b"hello, v4\n".to_vec(),
        0o644,
        1000,
    );
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    file(&mut proto, &mut want, "big", "big", big, 0o600, 7);
    file(
        &mut proto,
        &mut want,
        "empty",
        "empty",
        Vec::new(),
        0o444,
        0,
    );
    let long = "v4/".repeat(300) + "end";
    writeln!(proto, "remote-link l--777 0 0 {long}").unwrap();
    want.insert(
        "remote-link".into(),
        (FileKind::Symlink, 0o777, 0, 0, long.into_bytes(), (0, 0)),
    );
    writeln!(proto, "short-link l--777 0 0 hello").unwrap();
    want.insert(
        "short-link".into(),
        (FileKind::Symlink, 0o777, 0, 0, b"hello".to_vec(), (0, 0)),
    );
    writeln!(proto, "cdev c--640 0 6 300 70000").unwrap();
    want.insert(
        "cdev".into(),
        (FileKind::CharDevice, 0o640, 0, 6, Vec::new(), (300, 70000)),
    );
    writeln!(proto, "bdev b--660 0 6 7 200").unwrap();
    want.insert(
        "bdev".into(),
        (FileKind::BlockDevice, 0o660, 0, 6, Vec::new(), (7, 200)),
    );
    writeln!(proto, "fifo p--600 0 0").unwrap();
    want.insert(
        "fifo".into(),
        (FileKind::Fifo, 0o600, 0, 0, Vec::new(), (0, 0)),
    );
    // Directories: short form, block (a few dozen), node (thousands).
    for (d, n) in [("few", 3usize), ("block", 40), ("node", 3000)] {
        writeln!(proto, "{d} d--755 0 0").unwrap();
        want.insert(
            d.into(),
            (FileKind::Directory, 0o755, 0, 0, Vec::new(), (0, 0)),
        );
        for i in 0..n {
            let name = format!("entry-number-{i:05}-of-{d}");
            let path = format!("{d}/{name}");
            file(
                &mut proto,
                &mut want,
                &path,
                &name,
                format!("{i}").into_bytes(),
                0o644,
                3,
            );
        }
        proto.push_str("$\n");
    }
    proto.push_str("$\n");
    let proto_path = dir.path().join("proto");
    std::fs::write(&proto_path, proto).unwrap();
    let img = dir.path().join("v4.raw");
    mkfs_xfs(
        &img,
        "64M",
        &[
            "-m",
            "crc=0",
            "-n",
            "ftype=0",
            "-i",
            "size=256",
            "-p",
            proto_path.to_str().unwrap(),
        ],
    );
    assert_eq!(fork_format(&img, "/node").0, "btree");
    assert_eq!(fork_format(&img, "/few").0, "local");
    assert_eq!(fork_format(&img, "/remote-link").0, "extents");
    let fs = open_img(&img).unwrap();
    let xfs = open_xfs(&img).unwrap();
    assert_eq!(xfs.superblock().version, 4);
    assert!(!xfs.superblock().ftype);
    let mut got: BTreeMap<String, Want> = BTreeMap::new();
    guest::walk(fs.as_ref(), Default::default(), &mut |path, a| {
        if path.is_empty() {
            return;
        }
        let data = match a.kind {
            FileKind::File => {
                let mut buf = vec![0u8; a.size as usize];
                assert_eq!(fs.read(a.ino, 0, &mut buf).unwrap(), buf.len());
                buf
            }
            FileKind::Symlink => fs.read_link(a.ino).unwrap(),
            _ => Vec::new(),
        };
        let path = String::from_utf8(path.to_vec()).unwrap();
        got.insert(
            path,
            (
                a.kind,
                a.perm,
                a.uid,
                a.gid,
                data,
                (a.rdev_major, a.rdev_minor),
            ),
        );
    })
    .unwrap();
    assert_eq!(got.len(), want.len());
    for (path, w) in &want {
        assert_eq!(got.get(path), Some(w), "{path}");
    }
    assert_lookups_agree(fs.as_ref(), "v4");
    assert_xfs_db_agrees(&img, fs.as_ref(), &["/", "/few", "/block", "/node"]);
}

/// xfs_db's own reading of `img` as a second oracle (it reads v4, which this kernel does
/// not mount): the names and inode numbers `ls` lists in each of `dirs`, and each entry's
/// mode, owner, size and link count as `print core.*` shows them, equal ours.
fn assert_xfs_db_agrees(img: &Path, fs: &dyn GuestFs, dirs: &[&str]) {
    use std::collections::BTreeMap;
    let xfs_db = |cmds: &[String]| -> String {
        let mut args = vec!["-r".to_string()];
        for c in cmds {
            args.push("-c".into());
            args.push(c.clone());
        }
        args.push(img.to_str().unwrap().into());
        sh(
            "xfs_db",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let mut inodes = BTreeMap::new();
    for dir in dirs {
        // "6          131                unknown        0x6d3b32b7   5 file1 (good)"
        let theirs: BTreeMap<String, u64> = xfs_db(&[format!("ls {dir}")])
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 7 && f[f.len() - 1] == "(good)")
                    .then(|| (f[5..f.len() - 1].join(" "), f[1].parse().unwrap()))
            })
            .filter(|(name, _)| name != "." && name != "..")
            .collect();
        let dir_ino = dir
            .split('/')
            .filter(|c| !c.is_empty())
            .fold(fs.root(), |at, c| {
                fs.lookup(at, c.as_bytes()).unwrap().unwrap()
            });
        let ours: BTreeMap<String, u64> = fs
            .read_dir(dir_ino)
            .unwrap()
            .into_iter()
            .map(|e| (String::from_utf8(e.name).unwrap(), e.ino))
            .collect();
        assert!(!theirs.is_empty(), "xfs_db listed nothing in {dir}");
        assert_eq!(ours, theirs, "names and inode numbers in {dir}");
        inodes.extend(theirs.into_values().map(|i| (i, ())));
    }
    let cmds: Vec<String> = inodes
        .keys()
        .flat_map(|i| {
            [
                format!("inode {i}"),
                "print core.mode core.uid core.gid core.size core.nlinkv2".to_string(),
            ]
        })
        .collect();
    let out = xfs_db(&cmds);
    let values: Vec<u64> = out
        .lines()
        .map(|l| {
            let v = l.split(" = ").nth(1).unwrap();
            match v.strip_prefix('0') {
                Some(octal) if !octal.is_empty() => u64::from_str_radix(octal, 8).unwrap(),
                _ => v.parse().unwrap(),
            }
        })
        .collect();
    assert_eq!(values.len(), inodes.len() * 5, "{out}");
    for (ino, v) in inodes.keys().zip(values.chunks(5)) {
        let a = fs.attr(*ino).unwrap();
        let kind_bits = match a.kind {
            FileKind::File => 0o100000,
            FileKind::Directory => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::CharDevice => 0o020000,
            FileKind::BlockDevice => 0o060000,
            FileKind::Fifo => 0o010000,
            FileKind::Socket => 0o140000,
        };
        let ours = [
            kind_bits | u64::from(a.perm),
            u64::from(a.uid),
            u64::from(a.gid),
            a.size,
            u64::from(a.nlink),
        ];
        assert_eq!(ours, v, "inode {ino}: mode, uid, gid, size, nlink");
    }
    eprintln!("xfs_db agrees on {} inodes", inodes.len());
}

/// The byte offset xfs_db's `stack` shows after `cmds`.
fn xfs_db_offset(img: &Path, cmds: &[&str]) -> u64 {
    let mut args = vec!["-r"];
    for c in cmds.iter().chain(&["stack"]) {
        args.extend(["-c", c]);
    }
    args.push(img.to_str().unwrap());
    let out = sh("xfs_db", &args);
    let at = out.split("byte offset ").nth(1).expect("an offset");
    at.split(',').next().unwrap().trim().parse().unwrap()
}

#[test]
fn hostile_directory_and_attribute_block_checksums() {
    let s = Scratch::light();
    let img = small_image(&s, "blocks.raw");
    let fs = open_img(&img).unwrap();
    let (big, node) = (
        ino_of(fs.as_ref(), "big"),
        ino_of(fs.as_ref(), "attrs-node"),
    );
    drop(fs);
    // A data block of a large directory: listing and lookups both check it.
    let dir = s.path("dir.raw");
    std::fs::copy(&img, &dir).unwrap();
    let at = xfs_db_offset(&dir, &["path /big", "dblock 0"]);
    patch(&dir, at + 200, b"\xa5");
    let fs = open_img(&dir).unwrap();
    assert_eq!(
        corrupt(fs.read_dir(big).unwrap_err()),
        CorruptKind::XfsDirChecksum
    );
    // The dabtree root of a node directory (at the 32 GiB leaf offset).
    let leaf = s.path("leaf.raw");
    std::fs::copy(&img, &leaf).unwrap();
    let at = xfs_db_offset(&leaf, &["path /big", "dblock 8388608"]);
    patch(&leaf, at + 100, b"\xa5");
    let fs = open_img(&leaf).unwrap();
    assert!(
        fs.read_dir(big).is_ok(),
        "listings do not need the hash index"
    );
    let err = fs
        .lookup(big, b"entry-00001-with-a-longer-name")
        .unwrap_err();
    assert_eq!(corrupt(err), CorruptKind::XfsDirChecksum);
    // The dabtree root of an attribute fork.
    let at = xfs_db_offset(&img, &["path /attrs-node", "ablock 0"]);
    patch(&img, at + 100, b"\xa5");
    let fs = open_img(&img).unwrap();
    assert_eq!(
        corrupt(fs.xattrs(node).unwrap_err()),
        CorruptKind::XfsAttrChecksum
    );
}

/// Bytes laid over the device from `at`, as a replayed log's overlay lays them.
struct Patch {
    at: u64,
    bytes: Vec<u8>,
}

impl virtsnapfs::guest::xfs::ReplayOverlay for Patch {
    fn apply(&self, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let pos = offset + i as u64;
            if pos >= self.at && pos < self.at + self.bytes.len() as u64 {
                *b = self.bytes[(pos - self.at) as usize];
            }
        }
    }
    fn is_empty(&self) -> bool {
        false
    }
}

/// Every read goes through the overlay: the superblock's, an inode's, a file's data.
#[test]
fn reads_go_through_the_replay_overlay() {
    let s = Scratch::light();
    let img = small_image(&s, "overlay.raw");
    let open = |p: Patch| {
        let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(&img).unwrap());
        Xfs::open_with_overlay(src, cache(), Box::new(p))
    };
    let magic = open(Patch {
        at: 0,
        bytes: b"XFSC".to_vec(),
    });
    assert_eq!(
        corrupt(magic.err().unwrap()),
        CorruptKind::XfsSuperblockMagic
    );
    let fs = open_xfs(&img).unwrap();
    let hello = ino_of(&fs, "hello");
    let (block, within) = fs.superblock().inode_location(hello).unwrap();
    let mut data_at = None;
    let mut buf = [0u8; 13];
    fs.read(hello, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello, world\n");
    // Where hello's data is: its first extent, from xfs_db.
    let out = sh(
        "xfs_db",
        &[
            "-r",
            "-c",
            &format!("inode {hello}"),
            "-c",
            "bmap",
            img.to_str().unwrap(),
        ],
    );
    if let Some(b) = out.split("startblock ").nth(1) {
        let fsb: u64 = b.split_whitespace().next().unwrap().parse().unwrap();
        data_at = fs.superblock().fsb_to_byte(fsb);
    }
    let fs = open(Patch {
        at: data_at.expect("hello has a data block"),
        bytes: b"HELLO".to_vec(),
    })
    .unwrap();
    fs.read(hello, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"HELLO, world\n");
    // An inode's uid rewritten without its CRC: the overlay's bytes are checked too.
    let fs = open(Patch {
        at: block + within as u64 + 11,
        bytes: vec![0x55],
    })
    .unwrap();
    assert_eq!(
        corrupt(fs.attr(hello).unwrap_err()),
        CorruptKind::XfsInodeChecksum
    );
}
