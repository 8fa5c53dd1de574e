//! FAT test helpers: a source tree whose names exercise every naming rule (long names,
//! 8.3 names with the NT lowercase flags, Unicode, names of several long-name entries),
//! images made from it by mkfs.vfat and mtools (the kernel here has no vfat, so mtools is
//! the oracle), and the two views to compare: what `mcopy -s -n -m` extracts and
//! `mattrib` says, and what the parser's walk shows.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use virtsnapfs::guest::{self, FileKind, GuestFs, WalkLimits};

fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs an mtools command (UTC, UTF-8, no geometry check); panics with its stderr on failure.
pub fn mtools(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("TZ", "UTC")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (is mtools installed?)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// mtools' name for an image, or for a volume `offset` bytes into a disk.
pub fn mimg(img: &Path, offset: u64) -> String {
    if offset == 0 {
        p(img).to_string()
    } else {
        format!("{}@@{offset}", p(img))
    }
}

pub use crate::common::guest::pattern;

/// Builds the source tree under `root` (must not exist). `big_dir` entries go in `big/`.
pub fn fat_tree(root: &Path, big_dir: usize) {
    let r = |name: &str| root.join(name);
    fs::create_dir_all(r("deep/one/two/three/four/five/six")).unwrap();
    fs::write(r("deep/one/two/three/four/five/six/leaf.txt"), b"leaf\n").unwrap();
    fs::write(r("deep/one/two/mid.txt"), b"middle\n").unwrap();
    // 8.3 names: all upper (no flags), base lower, extension lower, both lower.
    fs::write(r("UPPER.TXT"), b"upper\n").unwrap();
    fs::write(r("lower.TXT"), b"base lower\n").unwrap();
    fs::write(r("LOWEXT.txt"), b"extension lower\n").unwrap();
    fs::write(r("readme.txt"), b"both lower\n").unwrap();
    fs::write(r("makefile"), b"no extension, lower\n").unwrap();
    // Long names: mixed case, spaces, several entries' worth, Unicode (BMP and beyond).
    fs::write(r("MixedCase.Txt"), b"mixed\n").unwrap();
    fs::write(r("with space.dat"), b"space\n").unwrap();
    fs::write(r(".hidden-dotfile"), b"dot\n").unwrap();
    let long = "a_very_long_file_name_that_needs_several_long_name_entries_of_the_vfat_kind_to_hold_it_all.text";
    fs::write(r(long), b"long\n").unwrap();
    fs::write(r("héllo wörld ünïcode.txt"), "ü".repeat(100)).unwrap();
    fs::write(r("名前のファイル.txt"), b"cjk\n").unwrap();
    fs::write(r("emoji-\u{1F389}-party.txt"), b"astral\n").unwrap();
    fs::create_dir_all(r("Sub Dir With A Long Name/nested")).unwrap();
    fs::write(
        r("Sub Dir With A Long Name/nested/file.bin"),
        pattern(5000, 7),
    )
    .unwrap();
    // Empty files; files of many clusters.
    fs::write(r("empty"), b"").unwrap();
    fs::write(r("deep/empty.too"), b"").unwrap();
    fs::write(r("multi-cluster.bin"), pattern(300 * 1024 + 123, 1)).unwrap();
    fs::write(r("deep/one/exact-4k.bin"), pattern(4096, 2)).unwrap();
    // A directory of more than one cluster of entries.
    fs::create_dir(r("big")).unwrap();
    for i in 0..big_dir {
        fs::write(
            r("big").join(format!("entry number {i:04} with a long name.txt")),
            format!("{i}\n"),
        )
        .unwrap();
    }
    // Times (FAT has 2 s resolution and years 1980 to 2107), kept by `mcopy -m`.
    for (name, when) in [
        ("UPPER.TXT", "1999-12-31 23:59:58 UTC"),
        ("readme.txt", "2000-02-29 12:34:56 UTC"),
        ("multi-cluster.bin", "2024-07-15 08:30:44 UTC"),
        ("empty", "1980-01-01 00:00:00 UTC"),
        // Not later: mtools 4.0.32 counts 2100 as a leap year (times after February 2100
        // come out a day late; the unit tests of src/guest/fat/time.rs cover them).
        (long, "2099-12-31 23:59:58 UTC"),
    ] {
        let out = Command::new("touch")
            .args(["-m", "-d", when, p(&r(name))])
            .output()
            .unwrap();
        assert!(out.status.success(), "touch {name}");
    }
}

/// Makes a FAT image of `size` from `tree`: `mkfs.vfat -F bits` with `args`, then
/// `mcopy -s -m` of every top-level entry.
pub fn make_fat(img: &Path, bits: u32, size: &str, args: &[&str], tree: &Path) {
    let _ = fs::remove_file(img);
    let out = Command::new("truncate")
        .args(["-s", size, p(img)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let bits = bits.to_string();
    let mut all = vec!["-F", bits.as_str()];
    all.extend_from_slice(args);
    all.push(p(img));
    let out = Command::new("mkfs.vfat").args(&all).output().unwrap();
    assert!(
        out.status.success(),
        "mkfs.vfat {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<_> = fs::read_dir(tree)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut args = vec!["-s".to_string(), "-m".into(), "-i".into(), p(img).into()];
    args.extend(names.iter().map(|n| p(n).to_string()));
    args.push("::/".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    mtools("mcopy", &args);
}

/// Makes `frag` a fragmented file: small files written, every other one deleted, then
/// `frag` written into the gaps. Returns mshowfat's cluster ranges of it ("<5-6><9-10>...").
pub fn fragment(img: &Path, dir: &Path, frag_len: usize) -> String {
    let i = p(img);
    let small = dir.join("small");
    fs::write(&small, pattern(3000, 9)).unwrap();
    for k in 0..8 {
        mtools("mcopy", &["-i", i, p(&small), &format!("::/gap{k}")]);
    }
    for k in (0..8).step_by(2) {
        mtools("mdel", &["-i", i, &format!("::/gap{k}")]);
    }
    // FAT32 keeps a next-free hint (FSInfo's FSI_Nxt_Free) that mtools allocates from: set
    // it to "unknown" so the search starts at cluster 2 and fills the gaps.
    let bytes = fs::read(img).unwrap();
    if &bytes[82..87] == b"FAT32" {
        let fsinfo = u64::from(u16::from_le_bytes([bytes[48], bytes[49]]));
        let sector = u64::from(u16::from_le_bytes([bytes[11], bytes[12]]));
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(img).unwrap();
        f.write_all_at(&[0xFF; 4], fsinfo * sector + 492).unwrap();
    }
    let frag = dir.join("frag-src");
    fs::write(&frag, pattern(frag_len, 11)).unwrap();
    mtools("mcopy", &["-i", i, p(&frag), "::/fragmented.bin"]);
    mtools("mshowfat", &["-i", i, "::/fragmented.bin"])
}

/// One path as both views show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatEntry {
    pub kind: FileKind,
    /// Files only (a directory's size is the host's in the extracted copy).
    pub size: Option<u64>,
    pub bytes: Option<Vec<u8>>,
    /// Files only: mcopy -m keeps a file's time; a directory's is the extraction's.
    pub mtime: Option<i64>,
    /// Files only: the read-only attribute (mattrib's R; our permission bits without write).
    /// Directories keep their write bits with it, as in Linux: tested on their own.
    pub read_only: Option<bool>,
}

pub type FatManifest = BTreeMap<Vec<u8>, FatEntry>;

/// mtools' view of the volume at `offset` of `img`: `mcopy -s -n -m` into a fresh
/// directory, walked, plus `mattrib -/` for the read-only attribute.
pub fn mtools_manifest(img: &Path, offset: u64) -> FatManifest {
    let out = tempfile::tempdir().unwrap();
    let m = mimg(img, offset);
    mtools("mcopy", &["-s", "-n", "-m", "-i", &m, "::/", p(out.path())]);
    let mut read_only = std::collections::BTreeSet::new();
    for line in mtools("mattrib", &["-/", "-i", &m, "::/"]).lines() {
        if let Some(at) = line.find("::/") {
            if line[..at].contains('R') {
                read_only.insert(line.as_bytes()[at + 3..].to_vec());
            }
        }
    }
    let mut man = FatManifest::new();
    let mut stack = vec![(out.path().to_path_buf(), Vec::<u8>::new())];
    while let Some((dir, rel)) = stack.pop() {
        for child in fs::read_dir(&dir).unwrap() {
            let child = child.unwrap();
            let mut crel = rel.clone();
            if !crel.is_empty() {
                crel.push(b'/');
            }
            crel.extend_from_slice(child.file_name().as_bytes());
            let meta = fs::symlink_metadata(child.path()).unwrap();
            let ro = read_only.contains(&crel);
            if meta.is_dir() {
                man.insert(
                    crel.clone(),
                    FatEntry {
                        kind: FileKind::Directory,
                        size: None,
                        bytes: None,
                        mtime: None,
                        read_only: None,
                    },
                );
                stack.push((child.path(), crel));
            } else {
                man.insert(
                    crel,
                    FatEntry {
                        kind: FileKind::File,
                        size: Some(meta.len()),
                        bytes: Some(fs::read(child.path()).unwrap()),
                        mtime: Some(meta.mtime()),
                        read_only: Some(ro),
                    },
                );
            }
        }
    }
    man
}

/// Reads a whole file through the parser in odd-sized pieces (crossing cluster edges).
pub fn read_all(fs: &dyn GuestFs, ino: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 7001];
    loop {
        let n = fs.read(ino, out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The parser's view, in the same terms.
pub fn parser_fat_manifest(fs: &dyn GuestFs) -> FatManifest {
    let mut attrs = Vec::new();
    guest::walk(fs, WalkLimits::default(), &mut |path, a| {
        attrs.push((path.to_vec(), a.clone()))
    })
    .unwrap();
    let mut man = FatManifest::new();
    for (path, a) in attrs {
        if path.is_empty() {
            continue;
        }
        let file = a.kind == FileKind::File;
        man.insert(
            path,
            FatEntry {
                kind: a.kind,
                size: file.then_some(a.size),
                bytes: file.then(|| read_all(fs, a.ino)),
                mtime: file.then_some(a.mtime.secs),
                read_only: file.then_some(a.perm & 0o222 == 0),
            },
        );
    }
    man
}

/// Asserts the two views are equal, naming the first differences.
pub fn assert_fat_manifests_eq(ours: &FatManifest, oracle: &FatManifest, what: &str) {
    let mut diffs = Vec::new();
    for (path, o) in oracle {
        let name = String::from_utf8_lossy(path);
        match ours.get(path) {
            None => diffs.push(format!("missing in ours: {name:?}")),
            Some(e) if e != o => {
                let short = |e: &FatEntry| {
                    format!(
                        "{:?} size {:?} mtime {:?} ro {:?} bytes {}",
                        e.kind,
                        e.size,
                        e.mtime,
                        e.read_only,
                        e.bytes.as_ref().map_or(0, Vec::len)
                    )
                };
                let same = e.bytes == o.bytes;
                diffs.push(format!(
                    "{name:?}:\n  ours:   {} (bytes equal: {same})\n  mtools: {}",
                    short(e),
                    short(o)
                ))
            }
            _ => {}
        }
    }
    for path in ours.keys().filter(|p| !oracle.contains_key(*p)) {
        diffs.push(format!(
            "extra in ours: {:?}",
            String::from_utf8_lossy(path)
        ));
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} of {} paths differ:\n{}",
        diffs.len(),
        oracle.len(),
        diffs
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
