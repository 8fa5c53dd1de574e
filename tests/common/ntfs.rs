//! NTFS test helpers: images made by mkntfs and filled through an ntfs-3g mount (so every
//! structure is what ntfs-3g writes: Interix symlinks and special files, reparse points set
//! through its `system.ntfs_reparse_data` attribute, alternate data streams through
//! `user.*` xattrs, compressed files in a directory given the compressed attribute), and
//! ntfs-3g's own read-only view of an image, the oracle.
#![allow(dead_code)]

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::guest::sh;

fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

pub use crate::common::guest::pattern;

/// An ntfs-3g mount of an image, unmounted on drop.
pub struct NtfsMount {
    dir: tempfile::TempDir,
}

impl NtfsMount {
    /// Mounts `img` with ntfs-3g's default options, plus `opts` ("ro").
    pub fn new(img: &Path, opts: &[&str]) -> NtfsMount {
        let dir = tempfile::tempdir().unwrap();
        let mut args = Vec::new();
        if !opts.is_empty() {
            args.push("-o".to_string());
            args.push(opts.join(","));
        }
        args.push(p(img).to_string());
        args.push(p(dir.path()).to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sh("ntfs-3g", &args);
        NtfsMount { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Unmounts now (waiting for ntfs-3g to write everything back). A mount can be busy for
    /// a moment after its last file is closed: tried again for up to 5 s.
    pub fn unmount(self) {
        let mut last = String::new();
        for _ in 0..25 {
            let out = Command::new("umount")
                .arg(self.dir.path())
                .output()
                .unwrap();
            if out.status.success() {
                drop(self);
                return;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!("umount {}: {last}", self.dir.path().display());
    }
}

impl Drop for NtfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Makes an empty NTFS image of `size` (mkntfs -q -F -Q, with `args`).
pub fn mkntfs(img: &Path, size: &str, args: &[&str]) {
    let _ = fs::remove_file(img);
    sh("truncate", &["-s", size, p(img)]);
    let mut all = vec!["-q", "-F", "-Q"];
    all.extend_from_slice(args);
    all.push(p(img));
    let out = Command::new("mkntfs").args(&all).output().unwrap();
    assert!(
        out.status.success(),
        "mkntfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `$REPARSE_POINT` value: a symbolic link (relative when `relative`) to `target`.
pub fn symlink_reparse(target: &str, relative: bool) -> Vec<u8> {
    let t: Vec<u8> = target.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let n = t.len() as u16;
    let mut data = Vec::new();
    for v in [0, n, n, n] {
        data.extend_from_slice(&v.to_le_bytes());
    }
    data.extend_from_slice(&u32::from(relative).to_le_bytes());
    data.extend_from_slice(&t);
    data.extend_from_slice(&t);
    let mut v = 0xA000_000Cu32.to_le_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_le_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&data);
    v
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::from("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn setfattr(path: &Path, name: &str, value: &str) {
    sh("setfattr", &["-n", name, "-v", value, p(path)]);
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
}

/// Fills the mounted volume at `m` with the test tree; `big_dir` entries go in `big/`.
pub fn ntfs_tree(m: &Path, big_dir: usize) {
    let r = |name: &str| m.join(name);
    // Small (resident), empty and large files.
    fs::write(r("hello"), b"hello, world\n").unwrap();
    fs::write(r("empty"), b"").unwrap();
    fs::write(r("random-300k"), pattern(300 * 1024 + 17, 1)).unwrap();
    fs::write(r("exact-4k"), pattern(4096, 2)).unwrap();
    // Nested directories.
    fs::create_dir_all(r("deep/one/two/three/four/five")).unwrap();
    fs::write(r("deep/one/two/three/four/five/leaf.txt"), b"leaf\n").unwrap();
    fs::write(r("deep/one/mid.txt"), b"middle\n").unwrap();
    // Long and Unicode names (NTFS allows 255 UTF-16 units).
    fs::write(r("héllo wörld ünïcode.txt"), "ü".repeat(100)).unwrap();
    fs::write(r("名前のファイル.txt"), b"cjk\n").unwrap();
    fs::write(r("emoji-\u{1F389}-party.txt"), b"astral\n").unwrap();
    fs::write(r(&"n".repeat(255)), b"long name\n").unwrap();
    fs::write(r("MixedCase.Txt"), b"mixed\n").unwrap();
    fs::write(r("with space and.dots.tar.gz"), b"space\n").unwrap();
    // Names as Windows writes them: a Win32 long name with a DOS 8.3 alias (ntfs-3g moves
    // the long name to the Win32 namespace when given a DOS name); the alias is not listed.
    fs::write(r("Long File Name.text"), b"has a DOS name\n").unwrap();
    setfattr(
        &r("Long File Name.text"),
        "system.ntfs_dos_name",
        "LONGFI~1.TXT",
    );
    fs::create_dir(r("Program Files")).unwrap();
    fs::write(r("Program Files/inside"), b"inside\n").unwrap();
    setfattr(&r("Program Files"), "system.ntfs_dos_name", "PROGRA~1");
    // Sparse: data at 0, at 300 KiB and at the end of 5 MiB; a file of 600 one-byte
    // pieces 12 KiB apart, whose run list needs several extension records (an attribute
    // list with $DATA in pieces).
    write_at(&r("holes"), 0, &pattern(4096, 3));
    write_at(&r("holes"), 300 * 1024, &pattern(10_000, 4));
    write_at(&r("holes"), (5 << 20) - 5, b"tail!");
    {
        let mut f = fs::File::create(r("many-runs")).unwrap();
        for i in 0..600u64 {
            f.seek(SeekFrom::Start(i * 12288)).unwrap();
            f.write_all(&[(i % 251) as u8 + 1]).unwrap();
        }
    }
    // Hard links, one in another directory, and a file with 30 names (its $FILE_NAMEs
    // overflow the record: an attribute list).
    fs::create_dir_all(r("dir/sub")).unwrap();
    fs::write(r("linked"), b"one record, three names\n").unwrap();
    fs::hard_link(r("linked"), r("dir/linked-too")).unwrap();
    fs::hard_link(r("linked"), r("dir/sub/linked-three")).unwrap();
    fs::create_dir(r("links")).unwrap();
    fs::write(r("links/origin"), b"many names\n").unwrap();
    for i in 0..30 {
        fs::hard_link(
            r("links/origin"),
            r(&format!("links/another-name-for-the-same-file-{i:02}")),
        )
        .unwrap();
    }
    // Symlinks as ntfs-3g makes them (Interix), and reparse-point symlinks.
    std::os::unix::fs::symlink("hello", r("interix-link")).unwrap();
    std::os::unix::fs::symlink("dir/sub", r("interix-dir-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", r("interix-dangling")).unwrap();
    fs::write(r("reparse-link"), b"").unwrap();
    setfattr(
        &r("reparse-link"),
        "system.ntfs_reparse_data",
        &hex(&symlink_reparse(r"dir\sub\linked-three", true)),
    );
    // Interix special files.
    sh("mkfifo", &[p(&r("fifo"))]);
    sh("mknod", &[p(&r("char-dev")), "c", "1", "3"]);
    sh("mknod", &[p(&r("block-dev")), "b", "7", "200"]);
    // Alternate data streams, on a file and a directory; a stream too large for an xattr;
    // 24 streams on one file (an attribute list again).
    setfattr(&r("hello"), "user.color", "red");
    setfattr(&r("hello"), "user.bin", "0x00ff10");
    setfattr(&r("dir"), "user.dir-stream", "on a dir");
    fs::write(r("streams"), b"streams\n").unwrap();
    for i in 0..24 {
        setfattr(
            &r("streams"),
            &format!("user.stream-{i:02}"),
            &format!("value of stream {i} {}", "x".repeat(40)),
        );
    }
    // Compressed files: a directory with the compressed attribute compresses new files.
    fs::create_dir(r("compressed")).unwrap();
    setfattr(&r("compressed"), "system.ntfs_attrib_be", "0x00000800");
    let text: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("line {} of a compressible file\n", i % 977).into_bytes())
        .take(1_000_003)
        .collect();
    fs::write(r("compressed/text"), &text).unwrap();
    fs::write(r("compressed/random"), pattern(200_000, 5)).unwrap();
    fs::write(r("compressed/small"), b"tiny\n").unwrap();
    write_at(&r("compressed/sparse"), 0, &text[..70_000]);
    write_at(&r("compressed/sparse"), 1 << 20, &text[..5000]);
    let mut mixed = pattern(100_000, 6);
    mixed.extend_from_slice(&text[..300_000]);
    mixed.extend_from_slice(&vec![0u8; 200_000]);
    mixed.extend_from_slice(&pattern(70_000, 7));
    fs::write(r("compressed/mixed"), &mixed).unwrap();
    // A large directory (several index levels).
    fs::create_dir(r("big")).unwrap();
    for i in 0..big_dir {
        fs::write(
            r("big").join(format!("entry number {i:05} with a long name.txt")),
            b"",
        )
        .unwrap();
    }
}

/// Makes `img` of `size`, filled with [`ntfs_tree`] through ntfs-3g.
pub fn make_ntfs(img: &Path, size: &str, big_dir: usize) {
    mkntfs(img, size, &[]);
    let m = NtfsMount::new(img, &[]);
    ntfs_tree(m.path(), big_dir);
    m.unmount();
}

/// A scratch directory.
pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ntfs.raw");
    (dir, img)
}
