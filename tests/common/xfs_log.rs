//! XFS log test helpers: dirty images made by the kernel (mkfs.xfs, a read-write loop mount,
//! changes, then `xfs_io -x -c 'shutdown -f'`, which forces the log to disk and stops all
//! metadata writeback, so the log holds what the filesystem's home blocks do not), and the
//! two views to compare: the kernel's own recovery (a copy mounted read-write, unmounted,
//! mounted read-only) and our overlay written into another copy mounted `ro,norecovery`
//! (the kernel then reads exactly the replayed metadata, nothing more). With
//! `XFS_LOG_DEBUG_DIR=DIR` set, the images a failing comparison used are copied there.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::guest::{kernel_manifest, sh, Manifest};
use virtsnapfs::guest::xfs::log::{recover, LogGeometry, Recovery};
use virtsnapfs::source::{ByteSource, FileSource};

fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

// One mkfs_xfs for every XFS test (not every test file that includes this one uses it).
#[allow(unused_imports)]
pub use crate::xfs_helpers::mkfs_xfs;

/// A mount point that is unmounted (if still mounted) and removed on drop.
pub struct Mnt {
    pub dir: tempfile::TempDir,
    mounted: bool,
}

impl Mnt {
    pub fn new(img: &Path, opts: &str) -> Mnt {
        let dir = tempfile::tempdir().unwrap();
        // Loop devices are shared with everything else on the machine: a device picked as
        // free can be taken by another mount before ours binds it. Try again then.
        for attempt in 0.. {
            let out = Command::new("mount")
                .args([
                    "-t",
                    "xfs",
                    "-o",
                    &format!("loop,{opts}"),
                    p(img),
                    p(dir.path()),
                ])
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                attempt < 5 && (err.contains("busy") || err.contains("loop")),
                "mount {img:?} -o {opts}: {err}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Mnt { dir, mounted: true }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn umount(&mut self) {
        if self.mounted {
            sh("umount", &[p(self.dir.path())]);
            self.mounted = false;
        }
    }
}

impl Drop for Mnt {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
    }
}

/// Makes `img` dirty: mounts it read-write, runs `changes` on the mount (after a sync of
/// whatever `before` did, which reaches the home blocks), then shuts the filesystem down with
/// the log forced, and unmounts. Asserts xfs_logprint calls the log dirty.
pub fn make_dirty(img: &Path, before: impl FnOnce(&Path), changes: impl FnOnce(&Path)) {
    let mut m = Mnt::new(img, "rw");
    before(m.path());
    sh("sync", &["-f", p(m.path())]);
    // Home blocks of the first part written: only `changes` stays in the log.
    sh("xfs_io", &["-x", "-c", "freeze", "-c", "thaw", p(m.path())]);
    changes(m.path());
    sh("xfs_io", &["-x", "-c", "shutdown -f", p(m.path())]);
    m.umount();
    assert!(
        log_is_dirty(img),
        "xfs_logprint does not call {img:?} dirty"
    );
}

pub fn log_is_dirty(img: &Path) -> bool {
    let out = Command::new("xfs_logprint")
        .args(["-t", p(img)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("DIRTY")
}

pub fn geometry(img: &Path) -> (FileSource, LogGeometry) {
    let src = FileSource::open(img).unwrap();
    let mut sb = vec![0u8; 512];
    src.read_exact_at(&mut sb, 0).unwrap();
    let len = src.byte_len().unwrap();
    let geo = LogGeometry::from_superblock(&sb, len).unwrap();
    (src, geo)
}

/// Our recovery of the log of `img`.
pub fn our_recovery(img: &Path) -> Recovery {
    let (src, geo) = geometry(img);
    match recover(&src, &geo) {
        Ok(r) => r,
        Err(e) => {
            if let Ok(d) = std::env::var("XFS_LOG_DEBUG_DIR") {
                copy(img, &Path::new(&d).join("failed.raw"));
            }
            panic!("recovery of {img:?}: {e:?}")
        }
    }
}

/// Writes the overlay's sectors into `img`.
pub fn write_overlay(img: &Path, r: &Recovery) {
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    for (off, bytes) in r.overlay.sectors() {
        f.write_all_at(bytes, off).unwrap();
    }
}

pub fn copy(from: &Path, to: &Path) {
    sh("cp", &["--sparse=always", p(from), p(to)]);
}

/// The kernel's view after its own recovery of a copy of `dirty`.
pub fn kernel_view(dirty: &Path, scratch: &Path) -> Manifest {
    let copy_path = scratch.join("kernel-recovered.raw");
    copy(dirty, &copy_path);
    let mut m = Mnt::new(&copy_path, "rw");
    m.umount();
    let m = Mnt::new(&copy_path, "ro");
    kernel_manifest(m.path())
}

/// The kernel's view of a copy of `dirty` with our overlay written in, mounted without
/// recovery.
pub fn our_view(dirty: &Path, scratch: &Path, r: &Recovery) -> Manifest {
    let copy_path = scratch.join("ours.raw");
    copy(dirty, &copy_path);
    write_overlay(&copy_path, r);
    let m = Mnt::new(&copy_path, "ro,norecovery");
    kernel_manifest(m.path())
}

pub fn scratch_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// What `xfs_repair -n` finds wrong in a copy of `dirty` with the overlay written in
/// (checksums, magics, btrees, links), other than the superblock's lazy counters.
pub fn repair_problems(dirty: &Path, scratch: &Path, r: &Recovery) -> Vec<String> {
    let copy_path = scratch.join("repair.raw");
    copy(dirty, &copy_path);
    write_overlay(&copy_path, r);
    let out = Command::new("xfs_repair")
        .args(["-n", p(&copy_path)])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if let Ok(d) = std::env::var("XFS_LOG_DEBUG_DIR") {
        copy(dirty, &Path::new(&d).join("repair-dirty.raw"));
        let _ = fs::write(Path::new(&d).join("repair.txt"), &text);
    }
    // Inodes unlinked but not yet freed when the log stopped (nlink 0, on an AGI unlinked
    // list) are freed by the kernel after replay; the overlay leaves them allocated and
    // unreachable, which repair reports as disconnected with no links. Nothing shows them.
    let unlinked: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("would have reset inode ")?;
            let (ino, tail) = rest.split_once(' ')?;
            (tail == "nlinks from 0 to 1").then(|| ino.to_owned())
        })
        .collect();
    let is_unlinked = |l: &str| {
        unlinked.iter().any(|ino| {
            l == format!("would have reset inode {ino} nlinks from 0 to 1")
                || l == format!("disconnected inode {ino}, would move to lost+found")
        })
    };
    text.lines()
        .filter(|l| !is_unlinked(l))
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("crc") || l.contains("would") || l.contains("bad ") || l.contains("corrupt")
        })
        .map(str::to_owned)
        .collect()
}
