//! Guest-filesystem test helpers: a source tree with every kind of file, golden images made
//! from it by mkfs, disks partitioned by sfdisk, and manifests of two views of the same
//! bytes: the kernel's (a read-only loop mount, walked with std::fs) and the parser's.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::hash::Hasher;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use virtsnapfs::guest::{self, FileKind, GuestAttr, GuestFs, WalkLimits};
use virtsnapfs::source::{ByteSource, FileSource};

pub use super::vm::sh;

fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn touch(path: &Path, mtime: &str, atime: &str) {
    sh("touch", &["-h", "-m", "-d", mtime, p(path)]);
    sh("touch", &["-h", "-a", "-d", atime, p(path)]);
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// `len` pseudo-random bytes (xorshift), the same for the same seed: file contents that
/// no two places in a test image share by chance.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Options for [`build_tree`].
#[derive(Clone, Copy)]
pub struct TreeOptions {
    /// Include a file of more than 1 GiB (sparse: three small runs of data).
    pub big_sparse: bool,
    /// Entries in the large directory (3000 makes an htree after `e2fsck -D`).
    pub big_dir_entries: usize,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            big_sparse: true,
            big_dir_entries: 3000,
        }
    }
}

/// Builds the source tree under `root` (must not exist). Needs root (mknod, chown).
pub fn build_tree(root: &Path, opts: TreeOptions) {
    fs::create_dir_all(root).unwrap();
    let r = |name: &str| root.join(name);
    fs::write(r("hello"), b"hello, world\n").unwrap();
    fs::write(r("empty"), b"").unwrap();
    fs::write(r("random-200k"), pattern(200 * 1024 + 17, 1)).unwrap();
    // Holes: data at 0, at 300 KiB and at the end of 1 MiB.
    let holes = r("holes");
    write_at(&holes, 0, &pattern(4096, 2));
    write_at(&holes, 300 * 1024, &pattern(10_000, 3));
    write_at(&holes, (1 << 20) - 5, b"tail!");
    // Fragmented: 300 runs of 4 KiB, one every 12 KiB, so the extent tree needs index blocks.
    let frag = r("fragmented");
    for i in 0..300u64 {
        write_at(&frag, i * 12288, &pattern(4096, (i % 250) as u32));
    }
    if opts.big_sparse {
        let big = r("sparse-1.5g");
        write_at(&big, 0, b"start");
        write_at(&big, 700 << 20, &pattern(70_000, 4));
        write_at(&big, (3 << 29) + 12_345, b"the end");
    }
    // Hard links, one in another directory.
    fs::create_dir_all(r("dir/sub/deeper/deepest")).unwrap();
    fs::write(r("linked"), b"one inode, three names\n").unwrap();
    fs::hard_link(r("linked"), r("dir/linked-too")).unwrap();
    fs::hard_link(r("linked"), r("dir/sub/linked-three")).unwrap();
    fs::write(r("dir/sub/deeper/deepest/leaf"), b"leaf\n").unwrap();
    // Symlinks: fast (< 60 bytes), slow (a block), dangling, to a directory.
    symlink("hello", r("fast-link")).unwrap();
    let long_target = "x/".repeat(150) + "end";
    symlink(&long_target, r("slow-link")).unwrap();
    symlink("/nonexistent/target", r("dangling")).unwrap();
    symlink("dir/sub", r("dir-link")).unwrap();
    // Odd names: spaces, a newline, non-UTF-8 bytes, UTF-8, a leading dash, 255 bytes.
    for name in [
        &b"with space"[..],
        b"new\nline",
        b"\xff\xfe\x80not-utf8",
        "ü-utf8-名前".as_bytes(),
        b"-dash",
        b"tab\there",
    ] {
        fs::write(root.join(OsStr::from_bytes(name)), name).unwrap();
    }
    fs::write(root.join("n".repeat(255)), b"long name").unwrap();
    // Special files.
    sh("mkfifo", &[p(&r("fifo"))]);
    sh("mknod", &[p(&r("char-dev")), "c", "1", "3"]);
    sh("mknod", &[p(&r("block-dev")), "b", "7", "200"]);
    sh("mknod", &[p(&r("char-dev-big")), "c", "300", "70000"]);
    let sock = std::os::unix::net::UnixListener::bind(r("socket")).unwrap();
    drop(sock);
    // A large directory.
    fs::create_dir(r("big")).unwrap();
    for i in 0..opts.big_dir_entries {
        fs::write(
            r("big").join(format!("entry-{i:05}-with-a-longer-name")),
            b"",
        )
        .unwrap();
    }
    // Extended attributes: short, binary, one large enough for an external block, an ACL.
    sh(
        "setfattr",
        &["-n", "user.color", "-v", "red", p(&r("hello"))],
    );
    sh(
        "setfattr",
        &["-n", "user.bin", "-v", "0x00ff10", p(&r("hello"))],
    );
    sh(
        "setfattr",
        &["-n", "user.dir-attr", "-v", "on a dir", p(&r("dir"))],
    );
    // 600 bytes: more than fits in the inode; mke2fs 1.47.0 refuses values of 1000 and more.
    let large = format!("0x{}", "ab".repeat(600));
    sh(
        "setfattr",
        &["-n", "user.large", "-v", &large, p(&r("random-200k"))],
    );
    sh(
        "setfattr",
        &["-n", "trusted.t", "-v", "trusted value", p(&r("empty"))],
    );
    sh(
        "setfattr",
        &[
            "-n",
            "system.posix_acl_access",
            "-v",
            "0x0200000001000600ffffffff02000600e803000004000400ffffffff10000600ffffffff20000400ffffffff",
            p(&r("linked")),
        ],
    );
    // Modes and owners (ids above 65535 use the high halves).
    fs::write(r("setuid"), b"#!/bin/sh\n").unwrap();
    fs::write(r("no-perms"), b"secret").unwrap();
    fs::create_dir(r("sticky")).unwrap();
    fs::create_dir(r("setgid-dir")).unwrap();
    sh("chmod", &["4755", p(&r("setuid"))]);
    sh("chmod", &["0", p(&r("no-perms"))]);
    sh("chmod", &["1777", p(&r("sticky"))]);
    sh("chmod", &["2750", p(&r("setgid-dir"))]);
    sh("chown", &["100000:200000", p(&r("setuid"))]);
    sh("chown", &["-h", "70000:70001", p(&r("fast-link"))]);
    sh("chown", &["123:456", p(&r("sticky"))]);
    // Times: nanoseconds, before 1970, after 2038 (directories last: writing into them
    // changes their mtime).
    touch(
        &r("hello"),
        "2021-03-04 05:06:07.123456789 UTC",
        "2022-01-01 00:00:00.5 UTC",
    );
    touch(
        &r("random-200k"),
        "1960-06-15 12:00:00.25 UTC",
        "1969-12-31 23:59:59.999999999 UTC",
    );
    touch(
        &r("empty"),
        "2100-01-01 00:00:00.75 UTC",
        "2262-04-11 00:00:00 UTC",
    );
    touch(
        &r("fast-link"),
        "2040-02-29 10:20:30.000000001 UTC",
        "2001-09-09 01:46:40 UTC",
    );
    touch(
        &r("dir/sub"),
        "1999-12-31 23:59:59.999 UTC",
        "2000-01-01 00:00:00 UTC",
    );
    touch(
        &r("dir"),
        "2010-10-10 10:10:10.101010101 UTC",
        "2010-10-10 10:10:10 UTC",
    );
}

/// Makes a filesystem image `img` of `size` from `tree`. `mkfs` is e.g. "mkfs.ext4";
/// `args` are its options. `e2fsck -fyD` then indexes the large directories (htree).
pub fn mkfs(mkfs: &str, args: &[&str], tree: &Path, img: &Path, size: &str) {
    let _ = fs::remove_file(img);
    sh("truncate", &["-s", size, p(img)]);
    let mut all = vec!["-q", "-F"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-d", p(tree), p(img)]);
    sh(mkfs, &all);
    // e2fsck exits 1 when it changed something (it did: it rebuilt directories).
    let st = Command::new("e2fsck")
        .args(["-fyD", p(img)])
        .output()
        .unwrap();
    assert!(st.status.code().is_some_and(|c| c <= 1), "e2fsck: {st:?}");
}

/// Writes a disk of `size` with a partition table from `sfdisk_script` and copies each
/// `(partition number, image)` into place. Returns the partitions' (start, size) in bytes.
pub fn partitioned_disk(
    disk: &Path,
    size: &str,
    sfdisk_script: &str,
    images: &[(u32, &Path)],
) -> BTreeMap<u32, (u64, u64)> {
    let _ = fs::remove_file(disk);
    sh("truncate", &["-s", size, p(disk)]);
    let mut child = Command::new("sfdisk")
        .args(["-q", p(disk)])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sfdisk_script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    let json = sh("sfdisk", &["-J", p(disk)]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut parts = BTreeMap::new();
    for part in v["partitiontable"]["partitions"].as_array().unwrap() {
        let node = part["node"].as_str().unwrap();
        let number: u32 = node
            .trim_start_matches(p(disk))
            .trim_start_matches('p')
            .parse()
            .unwrap();
        let start = part["start"].as_u64().unwrap() * 512;
        let len = part["size"].as_u64().unwrap() * 512;
        parts.insert(number, (start, len));
    }
    for &(number, img) in images {
        let (start, len) = parts[&number];
        assert!(
            fs::metadata(img).unwrap().len() <= len,
            "image too big for partition {number}"
        );
        sh(
            "dd",
            &[
                &format!("if={}", p(img)),
                &format!("of={}", p(disk)),
                "bs=1M",
                &format!("seek={start}"),
                "oflag=seek_bytes",
                "conv=notrunc,sparse",
                "status=none",
            ],
        );
    }
    parts
}

/// A read-only loop mount, unmounted on drop.
pub struct LoopMount {
    dir: tempfile::TempDir,
}

impl LoopMount {
    pub fn new(image: &Path, offset: u64, len: u64) -> LoopMount {
        let dir = tempfile::tempdir().unwrap();
        sh(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                &format!("ro,loop,offset={offset},sizelimit={len}"),
                p(image),
                p(dir.path()),
            ],
        );
        LoopMount { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// One file as both views must show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub blocks: u64,
    pub rdev: (u32, u32),
    pub target: Option<Vec<u8>>,
    /// A digest of the content: a hash of each non-zero 64 KiB chunk with its offset.
    pub digest: Option<u64>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The first path (in sorted order) with the same inode: hard-link classes.
    pub link_class: Vec<u8>,
}

pub type Manifest = BTreeMap<Vec<u8>, Entry>;

const CHUNK: usize = 1 << 16;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// Digest of a stream read in chunks by `read(offset, buf) -> n` (0 at the end).
fn digest(mut read: impl FnMut(u64, &mut [u8]) -> usize) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            let n = read(offset + filled as u64, &mut buf[filled..]);
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        // Comparing with a zero buffer is a memcmp, fast even unoptimized: holes of a 1.5 GiB
        // file cost little.
        if buf[..filled] != ZEROS[..filled] {
            h.write_u64(offset);
            h.write(&buf[..filled]);
        }
        offset += filled as u64;
        if filled < CHUNK {
            break;
        }
    }
    h.write_u64(offset);
    h.finish()
}

fn kind_of(mode: u32) -> FileKind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::File,
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFBLK => FileKind::BlockDevice,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        m => panic!("unknown mode {m:o}"),
    }
}

fn kernel_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: the buffers are valid for the lengths passed.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "llistxattr {}", path.display());
    let mut out = BTreeMap::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        // SAFETY: as above.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(len >= 0, "lgetxattr {} {:?}", path.display(), cname);
        value.truncate(len as usize);
        out.insert(name.to_vec(), value);
    }
    out
}

fn major_minor(rdev: u64) -> (u32, u32) {
    (
        (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as u32,
        ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as u32,
    )
}

fn assign_link_classes(m: &mut Manifest, inos: &BTreeMap<Vec<u8>, u64>) {
    let mut first: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (path, ino) in inos {
        first.entry(*ino).or_insert_with(|| path.clone());
    }
    for (path, e) in m.iter_mut() {
        e.link_class = first[&inos[path]].clone();
    }
}

/// The kernel's view of the tree mounted at `root`.
pub fn kernel_manifest(root: &Path) -> Manifest {
    let mut m = Manifest::new();
    let mut inos = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir_path, rel)) = stack.pop() {
        let meta = fs::symlink_metadata(&dir_path).unwrap();
        let entry = kernel_entry(&dir_path, &meta);
        if entry.kind == FileKind::Directory {
            for child in fs::read_dir(&dir_path).unwrap() {
                let child = child.unwrap();
                let mut crel: Vec<u8> = rel.clone();
                if !crel.is_empty() {
                    crel.push(b'/');
                }
                crel.extend_from_slice(child.file_name().as_bytes());
                stack.push((child.path(), crel));
            }
        }
        inos.insert(rel.clone(), meta.ino());
        m.insert(rel, entry);
    }
    assign_link_classes(&mut m, &inos);
    m
}

fn kernel_entry(path: &Path, meta: &fs::Metadata) -> Entry {
    let kind = kind_of(meta.mode());
    let target = (kind == FileKind::Symlink)
        .then(|| fs::read_link(path).unwrap().as_os_str().as_bytes().to_vec());
    let digest = (kind == FileKind::File).then(|| {
        let mut f = fs::File::open(path).unwrap();
        digest(|_, buf| f.read(buf).unwrap())
    });
    Entry {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.size(),
        nlink: meta.nlink(),
        atime: (meta.atime(), meta.atime_nsec()),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
        blocks: meta.blocks(),
        rdev: major_minor(meta.rdev()),
        target,
        digest,
        xattrs: kernel_xattrs(path),
        link_class: Vec::new(),
    }
}

fn parser_entry(fs: &dyn GuestFs, a: &GuestAttr) -> Entry {
    let target = (a.kind == FileKind::Symlink).then(|| fs.read_link(a.ino).unwrap());
    let digest = (a.kind == FileKind::File)
        .then(|| digest(|offset, buf| fs.read(a.ino, offset, buf).unwrap()));
    let t = |t: guest::GuestTime| (t.secs, i64::from(t.nsecs));
    Entry {
        kind: a.kind,
        mode: u32::from(a.perm),
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        nlink: u64::from(a.nlink),
        atime: t(a.atime),
        mtime: t(a.mtime),
        ctime: t(a.ctime),
        blocks: a.blocks,
        rdev: (a.rdev_major, a.rdev_minor),
        target,
        digest,
        xattrs: fs.xattrs(a.ino).unwrap().into_iter().collect(),
        link_class: Vec::new(),
    }
}

/// The parser's view: a walk from the root.
pub fn parser_manifest(fs: &dyn GuestFs) -> Manifest {
    let mut attrs = Vec::new();
    guest::walk(fs, WalkLimits::default(), &mut |path, attr| {
        attrs.push((path.to_vec(), attr.clone()))
    })
    .unwrap();
    let mut m = Manifest::new();
    let mut inos = BTreeMap::new();
    for (path, attr) in attrs {
        inos.insert(path.clone(), attr.ino);
        m.insert(path, parser_entry(fs, &attr));
    }
    assign_link_classes(&mut m, &inos);
    m
}

/// Asserts two manifests are equal, listing the first differences readably.
pub fn assert_manifests_eq(ours: &Manifest, kernel: &Manifest, what: &str) {
    let mut diffs = Vec::new();
    for (path, k) in kernel {
        match ours.get(path) {
            None => diffs.push(format!(
                "missing in ours: {:?}",
                String::from_utf8_lossy(path)
            )),
            Some(o) if o != k => diffs.push(format!(
                "{:?}:\n  ours:   {o:?}\n  kernel: {k:?}",
                String::from_utf8_lossy(path)
            )),
            _ => {}
        }
    }
    for path in ours.keys().filter(|p| !kernel.contains_key(*p)) {
        diffs.push(format!(
            "extra in ours: {:?}",
            String::from_utf8_lossy(path)
        ));
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} of {} paths differ:\n{}",
        diffs.len(),
        kernel.len(),
        diffs
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Opens the volumes of a disk image file as the parser sees them: name -> filesystem.
pub fn open_volumes(
    disk: &Path,
    disk_name: &str,
) -> BTreeMap<String, (guest::Volume, Box<dyn GuestFs>)> {
    let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(disk).unwrap());
    let mut out = BTreeMap::new();
    let cache = Arc::new(virtsnapfs::cache::MetadataCache::new(
        virtsnapfs::cache::DEFAULT_CACHE_BYTES,
    ));
    for v in guest::find_volumes(src, disk_name).unwrap() {
        if let Some(fs) = guest::open_filesystem(v.source.clone(), cache.clone()).unwrap() {
            out.insert(v.name.clone(), (v, fs));
        }
    }
    out
}

/// Compares the parser's view of every volume of `disk` with the kernel's loop mount of the
/// same bytes; returns the number of paths compared.
pub fn compare_disk_with_kernel(disk: &Path, disk_name: &str, expect: &[&str]) -> usize {
    let volumes = open_volumes(disk, disk_name);
    let names: Vec<&str> = volumes.keys().map(String::as_str).collect();
    assert_eq!(names, expect, "volumes found on {}", disk.display());
    let mut compared = 0;
    for (name, (v, fs)) in &volumes {
        let mount = LoopMount::new(disk, v.start, v.len);
        let kernel = kernel_manifest(mount.path());
        let ours = parser_manifest(fs.as_ref());
        assert_manifests_eq(
            &ours,
            &kernel,
            &format!("{} {name} ({})", disk.display(), fs.format_name()),
        );
        compared += kernel.len();
    }
    compared
}

/// A scratch directory with the source tree built once.
pub struct GuestScratch {
    pub dir: tempfile::TempDir,
}

impl GuestScratch {
    pub fn new(opts: TreeOptions) -> GuestScratch {
        let dir = tempfile::tempdir().unwrap();
        build_tree(&dir.path().join("tree"), opts);
        GuestScratch { dir }
    }
    pub fn tree(&self) -> PathBuf {
        self.dir.path().join("tree")
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Makes `name` in `s`: an ext4 image of `size` filled from `s.tree()` that was mounted
/// read-write, written, and copied while still mounted: its journal needs recovery (the last
/// writes, a rename and deletions, committed by the journal's timer but not synced).
/// Whether the root directory of `img`, read by debugfs without replaying its journal, has
/// an entry `name`. A dirty image made by copying a mounted filesystem is only what a test
/// wants when its last writes are in the journal and not yet at their home locations; under
/// load the kernel may write them home before the copy, so the recipes check and start over.
pub fn unreplayed_root_has(img: &Path, name: &str) -> bool {
    let out = sh("debugfs", &["-R", "ls /", p(img)]);
    out.split_whitespace().any(|w| w == name)
}

/// How often a dirty-image recipe starts over when the kernel wrote its last step home.
pub const DIRTY_ATTEMPTS: usize = 6;

pub fn dirty_image(s: &GuestScratch, name: &str, size: &str) -> PathBuf {
    for attempt in 1..=DIRTY_ATTEMPTS {
        let dirty = dirty_image_once(s, name, size);
        if !unreplayed_root_has(&dirty, "late") {
            return dirty;
        }
        eprintln!("dirty image {name}: the last step reached its home blocks before the copy (attempt {attempt}); starting over");
    }
    panic!("dirty image {name}: the last step reached its home blocks before the copy {DIRTY_ATTEMPTS} times");
}

fn dirty_image_once(s: &GuestScratch, name: &str, size: &str) -> PathBuf {
    let img = s.path(&format!("{name}.clean-start.raw"));
    mkfs("mkfs.ext4", &[], &s.tree(), &img, size);
    let m = s.path(&format!("{name}.mnt"));
    fs::create_dir_all(&m).unwrap();
    sh("mount", &["-o", "loop,commit=1", p(&img), p(&m)]);
    fs::create_dir(m.join("doomed")).unwrap();
    for i in 0..100 {
        fs::write(m.join("doomed").join(format!("f{i}")), vec![b'd'; 5000]).unwrap();
    }
    fs::write(m.join("early"), b"written before the sync\n").unwrap();
    sh("sync", &["-f", p(&m)]);
    fs::remove_dir_all(m.join("doomed")).unwrap();
    fs::write(m.join("late"), b"written after the last sync\n").unwrap();
    fs::create_dir_all(m.join("new/dir")).unwrap();
    fs::write(m.join("new/dir/file"), pattern(70_000, 9)).unwrap();
    fs::rename(m.join("hello"), m.join("hello-renamed")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let dirty = s.path(name);
    sh("cp", &["--sparse=always", p(&img), p(&dirty)]);
    sh("umount", &[p(&m)]);
    let dump = sh("dumpe2fs", &["-h", p(&dirty)]);
    assert!(dump.contains("needs_recovery"), "not dirty: {dump}");
    dirty
}

/// A copy of `dirty` after the kernel's own recovery (mounted read-write once).
pub fn kernel_recovered_copy(dirty: &Path, copy: &Path) {
    sh("cp", &["--sparse=always", p(dirty), p(copy)]);
    let m = tempfile::tempdir().unwrap();
    sh("mount", &["-o", "loop", p(copy), p(m.path())]);
    sh("umount", &[p(m.path())]);
}

fn sh_in(dir: &Path, script: &str) -> Vec<u8> {
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// What real tools see of the tree under `dir` (its root directory itself left out), for
/// comparing two views: `find -printf` of type, mode, owner, size, links, times with
/// nanoseconds, st_blocks, symlink target and path; `stat` of each device's numbers;
/// `sha256sum` of every file; `getfattr` of every node; and the hard-link classes (paths
/// grouped by `st_ino`, from `stat -c '%i %h'`). Returns (text, number of paths).
pub fn tool_manifest(dir: &Path) -> (String, usize) {
    let listing = sh_in(
        dir,
        r"find . -mindepth 1 -printf '%y %m %U %G %s %n %T@ %A@ %C@ %b %l %P\0' | sort -z",
    );
    let devices = sh_in(
        dir,
        r"find . -mindepth 1 \( -type b -o -type c \) -print0 | sort -z | xargs -0 -r stat -c '%t:%T %n'",
    );
    let sums = sh_in(
        dir,
        "find . -mindepth 1 -type f -print0 | sort -z | xargs -0 -r sha256sum",
    );
    let xattrs = sh_in(
        dir,
        "find . -mindepth 1 -print0 | sort -z | xargs -0 -r getfattr -h -d -m - -e hex --absolute-names",
    );
    let inodes = sh_in(
        dir,
        r"find . -mindepth 1 -print0 | sort -z | xargs -0 -r stat --printf '%i %h %n\0'",
    );
    // Hard-link classes: paths grouped by inode number, the numbers themselves dropped.
    let mut classes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for rec in inodes
        .split(|&b| b == 0)
        .filter(|r| !r.iter().all(|b| b.is_ascii_whitespace()))
    {
        let rec = String::from_utf8_lossy(rec)
            .trim_start_matches('\n')
            .to_string();
        let mut it = rec.splitn(3, ' ');
        let (ino, nlink, path) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        classes
            .entry(ino.to_string())
            .or_default()
            .push(format!("{nlink} {path}"));
    }
    let mut links: Vec<String> = classes
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|v| v.join(" = "))
        .collect();
    links.sort();
    let paths = listing.split(|&b| b == 0).filter(|r| !r.is_empty()).count();
    let text = format!(
        "== find\n{}\n== devices\n{}\n== sha256\n{}\n== xattrs\n{}\n== hard links\n{}\n",
        String::from_utf8_lossy(&listing).replace('\0', "\n"),
        String::from_utf8_lossy(&devices),
        String::from_utf8_lossy(&sums),
        String::from_utf8_lossy(&xattrs),
        links.join("\n")
    );
    (text, paths)
}

/// Asserts two tool manifests are equal, showing the first differing lines.
pub fn assert_tool_manifests_eq(ours: &str, kernel: &str, what: &str) {
    if ours == kernel {
        return;
    }
    let keep = std::env::temp_dir().join(format!("vsfs-manifest-{}", std::process::id()));
    let _ = fs::write(keep.with_extension("ours"), ours);
    let _ = fs::write(keep.with_extension("kernel"), kernel);
    let (o, k): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), kernel.lines().collect());
    let mut diffs = Vec::new();
    for line in &k {
        if !o.contains(line) {
            diffs.push(format!("kernel only: {line}"));
        }
    }
    for line in &o {
        if !k.contains(line) {
            diffs.push(format!("ours only:   {line}"));
        }
    }
    panic!(
        "{what}: the views differ ({} lines; both kept in {}.*):\n{}",
        diffs.len(),
        keep.display(),
        diffs
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The bytes `tar` writes of the tree under `dir` (root directory left out), names sorted,
/// numeric owners, xattrs and ACLs, sparse files detected. tar names a sparse file's header
/// after its own process id: it runs as process 1 of a new pid namespace, so that two runs
/// write the same bytes.
pub fn tar_of(dir: &Path) -> Vec<u8> {
    let list = tempfile::NamedTempFile::new().unwrap();
    let names = sh_in(dir, "find . -mindepth 1 -maxdepth 1 -print0 | sort -z");
    fs::write(list.path(), names).unwrap();
    sh_in(
        dir,
        &format!(
            "unshare --pid --fork tar --null -T {} --sort=name --numeric-owner --xattrs --xattrs-include='*' --acls --sparse --pax-option=exthdr.name=%d/PaxHeaders/%f -cf -",
            p(list.path())
        ),
    )
}

/// A cache of the daemon's default size, for one test's filesystems.
pub fn cache() -> Arc<virtsnapfs::cache::MetadataCache> {
    Arc::new(virtsnapfs::cache::MetadataCache::new(
        virtsnapfs::cache::DEFAULT_CACHE_BYTES,
    ))
}

/// The kind of a corruption error; any other error fails the test.
pub fn corrupt(e: guest::GuestError) -> guest::CorruptKind {
    match e {
        guest::GuestError::Corrupt(k) => k,
        e => panic!("expected a corruption error, got {e}"),
    }
}

/// Overwrites `bytes` at `at` in image `img`.
pub fn patch(img: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// An image with one byte changed, read without copying the image (the corruption sweeps of
/// the guest formats).
pub struct OneByteChanged {
    pub image: Arc<Vec<u8>>,
    pub at: usize,
    pub value: u8,
}

impl ByteSource for OneByteChanged {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        buf.fill(0);
        let start = (offset as usize).min(self.image.len());
        let end = (start + buf.len()).min(self.image.len());
        buf[..end - start].copy_from_slice(&self.image[start..end]);
        if (start..end).contains(&self.at) {
            buf[self.at - start] = self.value;
        }
        Ok(())
    }
    fn byte_len(&self) -> std::io::Result<u64> {
        Ok(self.image.len() as u64)
    }
}

/// What the fuzz targets do with an opened filesystem: a bounded walk, then for every entry
/// its extended attributes; for files a read at the start and near the end and the data
/// map; for symlinks (and, as an error path, anything else not a file) the target; for
/// directories a lookup of each of `names`. Errors are expected: only a panic, a hang or a
/// huge allocation is a failure.
pub fn exercise_everything(fs: &dyn GuestFs, names: &[&[u8]]) {
    let limits = WalkLimits {
        max_depth: 16,
        max_entries: 512,
    };
    let mut seen = Vec::new();
    let _ = guest::walk(fs, limits, &mut |_, a| seen.push(a.clone()));
    let mut buf = vec![0u8; 8192];
    for a in &seen {
        let _ = fs.xattrs(a.ino);
        if a.kind == FileKind::File {
            let _ = fs.read(a.ino, 0, &mut buf);
            let _ = fs.read(a.ino, a.size.saturating_sub(100), &mut buf);
            let _ = fs.next_data(a.ino, 0);
            continue;
        }
        let _ = fs.read_link(a.ino);
        if a.kind == FileKind::Directory {
            for name in names {
                let _ = fs.lookup(a.ino, name);
            }
        }
    }
}
