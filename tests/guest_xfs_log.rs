//! XFS log recovery against the kernel's: dirty images made by the kernel itself (a
//! read-write loop mount, changes, a forced shutdown that leaves them only in the log), then
//! two views compared path by path (name, type, mode, owner, size, links, times, xattrs,
//! symlink target, content): the kernel's own recovery of a copy, and our overlay written
//! into another copy mounted `ro,norecovery` (so the kernel reads exactly our replayed
//! metadata). Hostile logs give the exact error. Needs root (loop mounts) and xfsprogs.

mod common;
#[path = "common/xfs_log.rs"]
mod xfs_log;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::guest::*;
use xfs_log::*;

fn setfattr(path: &Path, name: &str, value: &str) {
    let st = Command::new("setfattr")
        .args(["-n", name, "-v", value])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// The churn every dirty image gets: a copied tree, renames, deletes, xattrs, a big
/// directory, a fragmented file, overwrites.
fn churn(m: &Path, tree: &Path) {
    sh(
        "cp",
        &["-a", &format!("{}/.", tree.display()), m.to_str().unwrap()],
    );
    fs::rename(m.join("hello"), m.join("hello-renamed")).unwrap();
    fs::remove_file(m.join("random-200k")).unwrap();
    fs::create_dir(m.join("bigdir-new")).unwrap();
    for i in 0..1500 {
        fs::write(
            m.join("bigdir-new").join(format!("entry-{i:05}")),
            format!("{i}\n"),
        )
        .unwrap();
    }
    for i in (0..1500).step_by(3) {
        fs::remove_file(m.join("bigdir-new").join(format!("entry-{i:05}"))).unwrap();
    }
    let frag = m.join("frag-new");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&frag)
        .unwrap();
    use std::os::unix::fs::FileExt;
    for i in 0..200u64 {
        f.write_all_at(&pattern(4096, i as u8), i * 16384).unwrap();
    }
    drop(f);
    setfattr(&m.join("hello-renamed"), "user.colour", "blue");
    setfattr(&m.join("bigdir-new"), "user.many", &"v".repeat(300));
    symlink("x/".repeat(200), m.join("long-link")).unwrap();
    fs::write(m.join("late"), b"written last\n").unwrap();
}

fn compare(dirty: &Path, scratch: &Path, what: &str) -> virtsnapfs::guest::xfs::log::Recovery {
    let t = Instant::now();
    let r = our_recovery(dirty);
    let took = t.elapsed();
    eprintln!(
        "{what}: replay {took:?}, overlay {} bytes, stats {:?}",
        r.overlay.bytes_held(),
        r.stats
    );
    assert!(
        r.stats.fell_back.is_none(),
        "{what}: fell back: {:?}",
        r.stats.fell_back
    );
    if let Ok(d) = std::env::var("XFS_LOG_DEBUG_DIR") {
        copy(dirty, &Path::new(&d).join("dirty.raw"));
        copy(dirty, &Path::new(&d).join("ours.raw"));
        write_overlay(&Path::new(&d).join("ours.raw"), &r);
    }
    let kernel = kernel_view(dirty, scratch);
    let ours = our_view(dirty, scratch, &r);
    assert_manifests_eq(&ours, &kernel, what);
    // The test can fail: without the replay the kernel shows something else.
    let unreplayed = our_view(dirty, scratch, &Default::default());
    assert_ne!(
        unreplayed, kernel,
        "{what}: the log changed nothing visible"
    );
    // Every replayed block and inode has a valid checksum and the btrees agree: only the
    // lazy superblock counters (recomputed by the kernel at mount) may differ.
    let problems = repair_problems(dirty, scratch, &r);
    assert!(problems.is_empty(), "{what}: xfs_repair -n: {problems:?}");
    assert!(kernel.len() > 50, "{what}: only {} paths", kernel.len());
    r
}

#[test]
fn replayed_tree_matches_the_kernel_v5() {
    let s = GuestScratch::new(TreeOptions {
        big_sparse: false,
        big_dir_entries: 300,
    });
    let img = s.path("v5.raw");
    mkfs_xfs(&img, "96M", &[]);
    make_dirty(
        &img,
        |m| fs::write(m.join("early"), b"before the sync\n").unwrap(),
        |m| churn(m, &s.tree()),
    );
    let r = compare(&img, s.dir.path(), "v5 default");
    assert!(r.stats.transactions > 0 && !r.stats.clean);
    assert!(r.stats.inodes_replayed > 100, "{:?}", r.stats);
    assert!(r.stats.icreates > 0, "{:?}", r.stats);
}
