//! XFS test helpers: images made by mkfs.xfs (small ones allowed by the variables xfsprogs
//! honours for its own test suite), filled through a read-write loop mount (mkfs.xfs has no
//! populate option) and unmounted cleanly, with XFS-specific shapes made in place: a
//! directory of tens of thousands of entries, two directories grown in alternation so that
//! their block maps fragment into btrees, a file of thousands of extents, unwritten extents,
//! a remote symlink, and attribute forks in short form, leaf, node and with remote values.
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::guest::sh;

fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// `mkfs.xfs -q -f ARGS img` on a new sparse file of `size`. mkfs.xfs refuses filesystems
/// under 300 MB unless TEST_DIR, TEST_DEV and QA_CHECK_FS are set (as xfstests sets them).
pub fn mkfs_xfs(img: &Path, size: &str, args: &[&str]) {
    let _ = fs::remove_file(img);
    sh("truncate", &["-s", size, p(img)]);
    let mut all = vec!["-q", "-f"];
    all.extend_from_slice(args);
    all.push(p(img));
    let out = Command::new("mkfs.xfs")
        .args(&all)
        .env("TEST_DIR", "/tmp")
        .env("TEST_DEV", "/dev/null")
        .env("QA_CHECK_FS", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.xfs {all:?}: {out:?}");
}

/// A read-write loop mount of `img`, for filling it; unmounted on drop (cleanly).
pub struct RwMount {
    dir: tempfile::TempDir,
}

impl RwMount {
    pub fn new(img: &Path) -> RwMount {
        let dir = tempfile::tempdir().unwrap();
        sh("mount", &["-t", "xfs", "-o", "loop", p(img), p(dir.path())]);
        RwMount { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RwMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A read-only loop mount of the XFS at `offset` in `img`, unmounted on drop.
pub struct XfsMount {
    dir: tempfile::TempDir,
}

impl XfsMount {
    pub fn new(img: &Path, offset: u64, len: u64) -> XfsMount {
        let dir = tempfile::tempdir().unwrap();
        sh(
            "mount",
            &[
                "-t",
                "xfs",
                "-o",
                &format!("ro,loop,offset={offset},sizelimit={len}"),
                p(img),
                p(dir.path()),
            ],
        );
        XfsMount { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Copies `tree` into `img` through a read-write mount, calls `extra` with the mount's
/// path, and unmounts.
pub fn fill(img: &Path, tree: &Path, extra: impl FnOnce(&Path)) {
    let m = RwMount::new(img);
    if tree.exists() {
        sh("cp", &["-a", &format!("{}/.", p(tree)), p(m.path())]);
    }
    extra(m.path());
    sh("sync", &["-f", p(m.path())]);
}

fn setfattr(path: &Path, name: &str, value: &str) {
    sh("setfattr", &["-n", name, "-v", value, p(path)]);
}

/// The XFS-specific shapes, made inside the mounted filesystem `m`. `entries` is the size
/// of the one large directory, `interleaved` of each of the two grown in alternation.
pub fn xfs_shapes(m: &Path, entries: usize, interleaved: usize) {
    // A remote symlink: longer than fits in the inode.
    let target = "long/".repeat(200) + "end";
    std::os::unix::fs::symlink(&target, m.join("remote-link")).unwrap();
    // Attributes: short form, leaf (too many for the inode), node (hundreds of entries),
    // a remote value, and a security one.
    let f = m.join("attrs-short");
    fs::write(&f, b"s").unwrap();
    setfattr(&f, "user.a", "1");
    setfattr(&f, "security.s", "sec");
    let f = m.join("attrs-leaf");
    fs::write(&f, b"l").unwrap();
    for i in 0..40 {
        setfattr(
            &f,
            &format!("user.leaf-attribute-{i:03}"),
            &format!("value {i}"),
        );
    }
    let f = m.join("attrs-node");
    fs::write(&f, b"n").unwrap();
    let script = (0..600)
        .map(|i| {
            format!(
                "setfattr -n user.node-attribute-with-a-long-name-{i:04} -v value-number-{i} '{}'",
                p(&f)
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    sh("sh", &["-c", &script]);
    let f = m.join("attrs-remote");
    fs::write(&f, b"r").unwrap();
    setfattr(&f, "user.big", &format!("0x{}", "5a".repeat(9000)));
    setfattr(&f, "trusted.small", "t");
    // A file of 3000 extents: 4 KiB of data every 8 KiB, so the block map is a btree.
    let frag = m.join("btree-file");
    {
        use std::os::unix::fs::FileExt;
        let file = fs::File::create(&frag).unwrap();
        for i in 0..3000u64 {
            file.write_all_at(&[(i % 251) as u8 + 1; 4096], i * 8192)
                .unwrap();
        }
        file.sync_all().unwrap();
    }
    // Unwritten extents: preallocated, partly written.
    let pre = m.join("prealloc");
    sh("fallocate", &["-l", "1M", p(&pre)]);
    sh(
        "xfs_io",
        &["-c", "pwrite -S 0x61 100000 5000", "-c", "fsync", p(&pre)],
    );
    // A large directory (node format, and btree when fragmented), and two directories
    // grown in alternation so that each one's blocks interleave with the other's.
    let big = m.join("huge");
    fs::create_dir(&big).unwrap();
    for i in 0..entries {
        fs::write(big.join(format!("a-fairly-long-file-name-{i:06}")), b"").unwrap();
    }
    let (a, b) = (m.join("interleaved-a"), m.join("interleaved-b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    for i in 0..interleaved {
        fs::write(
            a.join(format!("entry-with-a-name-of-some-length-{i:05}")),
            b"",
        )
        .unwrap();
        fs::write(
            b.join(format!("entry-with-a-name-of-some-length-{i:05}")),
            b"",
        )
        .unwrap();
        if i % 200 == 0 {
            sh("sync", &["-f", p(m)]);
        }
    }
    // A short-form directory and an empty one.
    fs::create_dir_all(m.join("small/dir")).unwrap();
    fs::write(m.join("small/x"), b"x").unwrap();
    fs::create_dir(m.join("empty-dir")).unwrap();
}

/// The data fork format of `path` in `img` as xfs_db names it ("local", "extents",
/// "btree") and its extent count.
pub fn fork_format(img: &Path, path: &str) -> (String, u64) {
    let out = sh(
        "xfs_db",
        &[
            "-r",
            "-c",
            &format!("path {path}"),
            "-c",
            "p core.format core.nextents",
            p(img),
        ],
    );
    let mut format = String::new();
    let mut n = 0;
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("core.format = ") {
            format = v
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .trim_matches(['(', ')'])
                .to_string();
        }
        if let Some(v) = line.strip_prefix("core.nextents = ") {
            n = v.trim().parse().unwrap();
        }
    }
    (format, n)
}
