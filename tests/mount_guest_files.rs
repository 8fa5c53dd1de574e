//! `files/` through a real mount over a real libvirtd: golden ext2/3/4 images made by mkfs,
//! on a whole disk, on MBR (with a logical partition) and GPT disks, behind qcow2 internal
//! snapshots; what find, stat, sha256sum, getfattr, cp -a and tar see of them through the
//! mount equals what they see of the kernel's loop mount of the same bytes. A FAT32 EFI
//! system partition and an LVM2 logical volume of ext4 on one GPT disk are checked the same
//! way against mtools' extraction and the kernel's loop mount of the LV's bytes; XFS (with a
//! dirty log) against the kernel's recovery, NTFS on an MBR disk against ntfs-3g's view.

mod common;
#[path = "common/fat.rs"]
mod fat_helpers;
#[path = "common/lvm.rs"]
mod lvm;
#[path = "common/ntfs.rs"]
mod ntfs_helpers;
#[path = "common/xfs.rs"]
mod xfs_helpers;
#[path = "common/xfs_log.rs"]
mod xfs_log;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::guest::{
    assert_tool_manifests_eq, dirty_image, kernel_recovered_copy, mkfs, partitioned_disk, tar_of,
    tool_manifest, GuestScratch, LoopMount, TreeOptions,
};
use common::vm::{convert, eventually, sh, Mount, TestDomain};

const MBR: &str = "label: dos
start=2048, size=40M, type=83
start=83968, type=5
size=40M, type=83
size=8M, type=82
";

const GPT: &str = "label: gpt
start=2048, size=32M, type=linux
size=40M, type=linux
";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes raw image `raw` into the live top of `dom`'s disk `image` (offline).
fn write_raw_into(dom: &TestDomain, image: &Path, raw: &Path) {
    let len = fs::metadata(raw).unwrap().len();
    let out = sh(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -s {} 0 {len}", s(raw)),
            s(image),
        ],
    );
    assert!(!out.contains("failed"), "qemu-io: {out}");
    let _ = dom;
}

fn to_qcow2(raw: &Path, qcow2: &Path) {
    let _ = fs::remove_file(qcow2);
    sh("qemu-img", &["convert", "-O", "qcow2", s(raw), s(qcow2)]);
}

/// A small second tree for the live disk, so live/ and the snapshots differ.
fn after_tree(root: &Path) {
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/after"), b"written after the snapshots\n").unwrap();
    fs::write(root.join("hello"), b"another hello\n").unwrap();
}

fn ls(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("ls {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The kernel's view of `raw` (at `offset`, `len`) against ours at `ours`.
fn compare(ours: &Path, raw: &Path, offset: u64, len: u64, what: &str) -> usize {
    let mount = LoopMount::new(raw, offset, len);
    let (kernel, n) = tool_manifest(mount.path());
    let (mine, _) = tool_manifest(ours);
    assert_tool_manifests_eq(&mine, &kernel, what);
    eprintln!("{what}: {n} paths equal");
    n
}

struct Disks {
    s: GuestScratch,
    whole: PathBuf,
    mbr: PathBuf,
    gpt: PathBuf,
    mbr_parts: std::collections::BTreeMap<u32, (u64, u64)>,
    gpt_parts: std::collections::BTreeMap<u32, (u64, u64)>,
}

fn make_disks() -> Disks {
    let s = GuestScratch::new(TreeOptions {
        big_sparse: false,
        big_dir_entries: 300,
    });
    let whole = s.path("whole.raw");
    mkfs("mkfs.ext4", &[], &s.tree(), &whole, "64M");
    let (p1, p5) = (s.path("p1.raw"), s.path("p5.raw"));
    mkfs("mkfs.ext3", &[], &s.tree(), &p1, "40M");
    mkfs("mkfs.ext4", &["-b", "1024"], &s.tree(), &p5, "40M");
    let swap = s.path("swap.raw");
    sh("truncate", &["-s", "8M", s_(&swap)]);
    sh("mkswap", &[s_(&swap)]);
    let mbr = s.path("mbr.raw");
    let mbr_parts = partitioned_disk(&mbr, "100M", MBR, &[(1, &p1), (5, &p5), (6, &swap)]);
    let (g1, g2) = (s.path("g1.raw"), s.path("g2.raw"));
    mkfs("mkfs.ext2", &[], &s.tree(), &g1, "32M");
    mkfs("mkfs.ext4", &["-O", "inline_data"], &s.tree(), &g2, "40M");
    let gpt = s.path("gpt.raw");
    let gpt_parts = partitioned_disk(&gpt, "80M", GPT, &[(1, &g1), (2, &g2)]);
    Disks {
        s,
        whole,
        mbr,
        gpt,
        mbr_parts,
        gpt_parts,
    }
}

fn s_(p: &Path) -> &str {
    s(p)
}

/// A domain whose three disks hold `disks`, with internal snapshot `s1`.
fn domain_with(label: &str, disks: &Disks) -> TestDomain {
    let dom = TestDomain::new(label, "64M");
    let (a, b, c) = (
        dom.path("vda.qcow2"),
        dom.path("vdb.qcow2"),
        dom.path("vdc.qcow2"),
    );
    to_qcow2(&disks.whole, &a);
    to_qcow2(&disks.mbr, &b);
    to_qcow2(&disks.gpt, &c);
    dom.define(&[
        ("vda", "qcow2", &a),
        ("vdb", "qcow2", &b),
        ("vdc", "qcow2", &c),
    ]);
    dom.snapshot("s1", &[]);
    dom
}

#[test]
fn files_of_snapshots_and_live_match_the_kernels_view() {
    let disks = make_disks();
    let dom = domain_with("files", &disks);
    // A snapshot whose vda holds a filesystem with a journal that needs recovery.
    let dirty = dirty_image(&disks.s, "dirty.raw", "64M");
    write_raw_into(&dom, &dom.path("vda.qcow2"), &dirty);
    dom.snapshot("dirty", &[]);
    // The live disk then holds another filesystem.
    let after_root = disks.s.path("after-tree");
    after_tree(&after_root);
    let after = disks.s.path("after.raw");
    mkfs("mkfs.ext4", &[], &after_root, &after, "64M");
    write_raw_into(&dom, &dom.path("vda.qcow2"), &after);

    let mount = Mount::new(&[]);
    let d = |rel: &str| mount.path(&format!("{}/{rel}", dom.name));

    // Nothing is opened before files/ is entered.
    assert!(ls(&d("snapshots/s1")).contains(&"files".to_string()));
    assert!(ls(&d("live")).contains(&"files".to_string()));
    let meta = fs::metadata(d("snapshots/s1/files")).unwrap();
    assert!(meta.is_dir());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.mode() & 0o7777, 0o500);
    assert!(
        !mount.log_text().contains("disk vda:"),
        "a disk was scanned before files/ was entered: {}",
        mount.log_text()
    );

    // One directory per filesystem, named as Linux names the block devices; the extended
    // partition and the swap are not listed, and the log says what was found.
    assert_eq!(
        ls(&d("snapshots/s1/files")),
        ["vda", "vdb1", "vdb5", "vdc1", "vdc2"]
    );
    let log = mount.log_text();
    assert!(
        log.contains("snapshot s1 disk vdb: vdb1 ext3, vdb5 ext4, vdb6 nothing recognised"),
        "{log}"
    );

    // Devices are shown, never opened (the mount is nodev); a fifo is the kernel's own.
    let dev = d("snapshots/s1/files/vda/char-dev");
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(&dev)
        .unwrap()
        .file_type()
        .is_char_device());
    let err = fs::File::open(&dev).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");

    let mut total = 0;
    let whole_len = fs::metadata(&disks.whole).unwrap().len();
    total += compare(
        &d("snapshots/s1/files/vda"),
        &disks.whole,
        0,
        whole_len,
        "s1 vda (ext4, whole disk)",
    );
    for (n, what) in [
        (1, "s1 vdb1 (ext3, MBR primary)"),
        (5, "s1 vdb5 (ext4 1k, MBR logical)"),
    ] {
        let (start, len) = disks.mbr_parts[&n];
        total += compare(
            &d(&format!("snapshots/s1/files/vdb{n}")),
            &disks.mbr,
            start,
            len,
            what,
        );
    }
    for (n, what) in [
        (1, "s1 vdc1 (ext2, GPT)"),
        (2, "s1 vdc2 (ext4 inline_data, GPT)"),
    ] {
        let (start, len) = disks.gpt_parts[&n];
        total += compare(
            &d(&format!("snapshots/s1/files/vdc{n}")),
            &disks.gpt,
            start,
            len,
            what,
        );
    }
    // The dirty journal: as the kernel shows a copy after its own recovery.
    let recovered = disks.s.path("recovered.raw");
    kernel_recovered_copy(&dirty, &recovered);
    let len = fs::metadata(&recovered).unwrap().len();
    assert_eq!(
        ls(&d("snapshots/s1/dirty/files")),
        ["vda", "vdb1", "vdb5", "vdc1", "vdc2"]
    );
    total += compare(
        &d("snapshots/s1/dirty/files/vda"),
        &recovered,
        0,
        len,
        "dirty vda (journal replayed)",
    );
    // What only the journal holds is there: the rename and the files made after the sync.
    for path in ["late", "new/dir/file", "hello-renamed"] {
        assert!(
            d("snapshots/s1/dirty/files/vda").join(path).exists(),
            "{path}"
        );
    }
    assert!(!d("snapshots/s1/dirty/files/vda/hello").exists());
    // live/: the filesystem written after the snapshots.
    let len = fs::metadata(&after).unwrap().len();
    total += compare(&d("live/files/vda"), &after, 0, len, "live vda");
    eprintln!("{total} paths equal in all");

    // cp -a and tar out of files/ equal the same out of the kernel's mount.
    let kernel = LoopMount::new(&disks.whole, 0, whole_len);
    let out = tempfile::tempdir().unwrap();
    let (ours_cp, kernel_cp) = (out.path().join("ours"), out.path().join("kernel"));
    sh("cp", &["-a", s(&d("snapshots/s1/files/vda")), s(&ours_cp)]);
    sh("cp", &["-a", s(kernel.path()), s(&kernel_cp)]);
    // The copies' st_blocks are the host filesystem's: a copy not yet written back has no
    // extent tree block allocated yet (one such copy showed 8 blocks fewer than the other).
    sh("sync", &["-f", s(out.path())]);
    let (a, n) = tool_manifest(&ours_cp);
    let (b, _) = tool_manifest(&kernel_cp);
    // cp -a cannot keep ctime: find's ctime column (the ninth) is left out. A copied
    // directory's size and blocks are the host filesystem's (how it laid out the entries cp
    // made), not the guest's: left out for directories (the guest's own are compared above).
    let strip_ctime = |t: &str| {
        let (find, rest) = t.split_once("\n== devices").unwrap();
        let mut find: Vec<String> = find
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.splitn(11, ' ').collect();
                if f.len() == 11 {
                    f[8] = "-";
                    if f[0] == "d" {
                        f[4] = "-";
                        f[9] = "-";
                    }
                }
                f.join(" ")
            })
            .collect();
        find.sort();
        format!("{}\n== devices{rest}", find.join("\n"))
    };
    assert_tool_manifests_eq(&strip_ctime(&a), &strip_ctime(&b), "cp -a");
    eprintln!("cp -a: {n} paths equal");
    let (ours_tar, kernel_tar) = (tar_of(&d("snapshots/s1/files/vda")), tar_of(kernel.path()));
    assert!(ours_tar.len() > 100_000);
    if ours_tar != kernel_tar {
        let keep = std::env::temp_dir().join(format!("vsfs-tar-{}", std::process::id()));
        fs::write(keep.with_extension("ours.tar"), &ours_tar).unwrap();
        fs::write(keep.with_extension("kernel.tar"), &kernel_tar).unwrap();
        panic!("tar differs; both kept in {}.*", keep.display());
    }
    eprintln!("tar: {} bytes equal", ours_tar.len());
    drop(kernel);

    // A file held open in live/files/ across the revert fails its reads from then on with
    // ESTALE: its inode number may be another file's, or none, in the reverted state. Paths
    // looked up again show the reverted state at once (below), whatever the kernel cached.
    let find = Command::new("find")
        .args([
            s(&d("live/files/vda")),
            "-type",
            "f",
            "-size",
            "+0",
            "-print",
            "-quit",
        ])
        .output()
        .unwrap();
    let held_path = PathBuf::from(String::from_utf8(find.stdout).unwrap().trim_end());
    let held = fs::File::open(&held_path).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        held.read_at(&mut byte, 0).unwrap(),
        1,
        "{}",
        held_path.display()
    );
    // The same through a mount whose opens reach the daemon (its handle, not the kernel's).
    let strict = Mount::new(&["close_to_open"]);
    let rel = held_path.strip_prefix(mount.root()).unwrap();
    let held_strict = fs::File::open(strict.root().join(rel)).unwrap();
    assert_eq!(held_strict.read_at(&mut byte, 0).unwrap(), 1);

    // A revert: live/files then shows the reverted state.
    sh("mv", &[s(&d("snapshots/s1")), s(&d("live/"))]);
    let err = held.read_at(&mut byte, 0).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ESTALE),
        "{}: {err}",
        held_path.display()
    );
    drop(held);
    // The strict mount's daemon learns of the revert from libvirt, within its refresh.
    eventually(
        10,
        "a held file on the close_to_open mount fails with ESTALE",
        || match held_strict.read_at(&mut byte, 0) {
            Ok(_) => false,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}");
                true
            }
        },
    );
    drop(held_strict);
    drop(strict);
    let s1_kernel = LoopMount::new(&disks.whole, 0, whole_len);
    let (want, _) = tool_manifest(s1_kernel.path());
    eventually(10, "live/files/vda shows the reverted state", || {
        let out = Command::new("find")
            .args([s(&d("live/files/vda/etc")), "-maxdepth", "0"])
            .output()
            .unwrap();
        !out.status.success()
    });
    let (got, _) = tool_manifest(&d("live/files/vda"));
    assert_tool_manifests_eq(&got, &want, "live vda after the revert to s1");
}

/// A domain whose vda holds `raw` (a whole-disk filesystem), with internal snapshot `s1`.
fn single_disk_domain(label: &str, raw: &Path) -> TestDomain {
    let dom = TestDomain::new(label, "64M");
    let a = dom.path("vda.qcow2");
    to_qcow2(raw, &a);
    dom.define(&[("vda", "qcow2", &a)]);
    dom.snapshot("s1", &[]);
    dom
}

fn small_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("hello"), b"hello, world\n").unwrap();
    fs::write(root.join("dir/sub/leaf"), b"leaf\n").unwrap();
    fs::write(root.join("no-perms"), b"secret\n").unwrap();
    sh("chmod", &["0", s(&root.join("no-perms"))]);
}

#[test]
fn hostile_directory_loops_give_eio_and_a_log_line_while_the_rest_works() {
    let scratch = tempfile::tempdir().unwrap();
    let tree = scratch.path().join("tree");
    small_tree(&tree);
    let raw = scratch.path().join("loop.raw");
    mkfs("mkfs.ext4", &[], &tree, &raw, "16M");
    // dir/loop is the root (an ancestor); dir/self is dir itself.
    sh("debugfs", &["-w", "-R", "link / /dir/loop", s(&raw)]);
    sh("debugfs", &["-w", "-R", "link /dir /dir/self", s(&raw)]);
    let dom = single_disk_domain("hostile", &raw);
    let mount = Mount::new(&[]);
    let d = |rel: &str| mount.path(&format!("{}/{rel}", dom.name));
    let vol = d("snapshots/s1/files/vda");

    assert_eq!(ls(&vol.join("dir")), ["loop", "self", "sub"]);
    for name in ["loop", "self"] {
        let err = fs::metadata(vol.join("dir").join(name)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "dir/{name}: {err}");
    }
    // find ends (with an error for the two entries) instead of descending forever.
    let out = Command::new("timeout")
        .args(["20", "find", s(&vol)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(found.contains("dir/sub/leaf"), "{found}");
    let log = mount.log_text();
    let line = format!(
        "domain {} snapshot s1 disk vda volume vda (ext4): directory inode 2 reached from directory inode",
        dom.name
    );
    assert!(log.contains(&line), "{log}");
    assert!(log.contains("the tree would loop"), "{log}");
    // The rest keeps working.
    assert_eq!(fs::read(vol.join("hello")).unwrap(), b"hello, world\n");
    assert_eq!(fs::read(vol.join("dir/sub/leaf")).unwrap(), b"leaf\n");
    assert_eq!(
        fs::metadata(d("live/vda.raw")).unwrap().len(),
        fs::metadata(&raw).unwrap().len()
    );
    assert_eq!(ls(&d("live/files")), ["vda"]);
    // Files are read-only: a write open is refused at its first write (the kernel opens
    // files itself), one with O_TRUNC at open; rm in live/files is refused.
    let hello = d("live/files/vda/hello");
    let err = fs::OpenOptions::new()
        .write(true)
        .open(&hello)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&hello)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert_eq!(fs::read(&hello).unwrap(), b"hello, world\n");
    let err = fs::remove_file(&hello).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert!(hello.exists());
}

/// Runs `cmd` as user `user`; returns whether it succeeded and its stderr.
fn as_user(user: &str, cmd: &[&str]) -> (bool, String) {
    let mut args = vec!["-u", user, "--"];
    args.extend_from_slice(cmd);
    let out = Command::new("runuser").args(&args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_host_user_reads_guest_files_only_if_they_may_read_the_disk() {
    const USER: &str = "vsfs-guest-reader";
    let _ = Command::new("useradd")
        .args(["-M", "-s", "/usr/sbin/nologin", USER])
        .output();
    let scratch = tempfile::tempdir().unwrap();
    let tree = scratch.path().join("tree");
    small_tree(&tree);
    let raw = scratch.path().join("access.raw");
    mkfs("mkfs.ext4", &[], &tree, &raw, "16M");
    let dom = single_disk_domain("access", &raw);
    use std::os::unix::fs::PermissionsExt;

    // disk_mode=0400: only root reads disks, so only root enters files/.
    let mount = Mount::new(&["allow_other", "disk_mode=0400"]);
    fs::set_permissions(mount.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let d = |m: &Mount, rel: &str| m.path(&format!("{}/{rel}", dom.name));
    let (ok, err) = as_user(USER, &["cat", s(&d(&mount, "snapshots/s1/vda.raw"))]);
    assert!(!ok && err.contains("Permission denied"), "{err}");
    for path in ["snapshots/s1/files/vda/hello", "live/files/vda/hello"] {
        let (ok, err) = as_user(USER, &["cat", s(&d(&mount, path))]);
        assert!(!ok && err.contains("Permission denied"), "{path}: {err}");
    }
    let (ok, err) = as_user(USER, &["ls", s(&d(&mount, "snapshots/s1/files"))]);
    assert!(!ok && err.contains("Permission denied"), "{err}");
    assert_eq!(
        fs::read(d(&mount, "snapshots/s1/files/vda/hello")).unwrap(),
        b"hello, world\n"
    );
    drop(mount);

    // disk_mode=0444: everyone reads disks, so everyone enters files/; the guest's own modes
    // still apply (a mode-0 file stays unreadable).
    let mount = Mount::new(&["allow_other", "disk_mode=0444"]);
    fs::set_permissions(mount.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(d(&mount, "snapshots/s1/files"))
            .unwrap()
            .mode()
            & 0o7777,
        0o555
    );
    let out = Command::new("runuser")
        .args(["-u", USER, "--", "cat"])
        .arg(d(&mount, "snapshots/s1/files/vda/hello"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"hello, world\n");
    let (ok, err) = as_user(
        USER,
        &["cat", s(&d(&mount, "snapshots/s1/files/vda/no-perms"))],
    );
    assert!(!ok && err.contains("Permission denied"), "{err}");
}

/// `find -printf '%i %p'` of `dir`: each path's inode number.
fn inode_numbers(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    let out = sh("find", &[s(dir), "-mindepth", "1", "-printf", "%i %P\n"]);
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(i, p)| (p.to_string(), i.parse().unwrap()))
        .collect()
}

/// Guest nodes are kept only while the kernel holds them: once it forgets them (here, when
/// its caches are dropped: it evicts the directories' inodes at least), a second walk gets
/// new numbers for them, never an old one, while hard links still share theirs and every
/// file still reads its bytes.
#[test]
fn guest_inode_numbers_are_dropped_when_the_kernel_forgets_them() {
    let scratch = tempfile::tempdir().unwrap();
    let tree = scratch.path().join("tree");
    for d in 0..20 {
        let dir = tree.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            fs::write(dir.join(format!("f{f}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    fs::hard_link(tree.join("d0/f0"), tree.join("d1/link")).unwrap();
    let raw = scratch.path().join("forget.raw");
    mkfs("mkfs.ext4", &[], &tree, &raw, "32M");
    let dom = single_disk_domain("forget", &raw);
    let mount = Mount::new(&[]);
    let vol = mount.path(&format!("{}/snapshots/s1/files/vda", dom.name));
    let first = inode_numbers(&vol);
    assert_eq!(first.len(), 20 + 20 * 50 + 1 + 1, "{first:?}"); // + d1/link, lost+found
    assert_eq!(first["d0/f0"], first["d1/link"]);
    let newest_old = *first.values().max().unwrap();
    // Dropping the kernel's dentries and inodes makes it FORGET them.
    eventually(20, "the kernel forgets a guest directory", || {
        sh("sh", &["-c", "sync; echo 2 > /proc/sys/vm/drop_caches"]);
        inode_numbers(&vol)["d5"] != first["d5"]
    });
    let second = inode_numbers(&vol);
    assert!(
        second["d5"] > newest_old,
        "a forgotten node's number came back: {} (the first walk's went up to {newest_old})",
        second["d5"]
    );
    assert_eq!(second["d0/f0"], second["d1/link"]);
    assert_eq!(fs::read(vol.join("d19/f49")).unwrap(), b"19/49\n");
}

/// What real tools see of a FAT tree under `dir`: every path's type (`find %y`), each
/// file's size and modification time in seconds, and `sha256sum` of every file. A
/// directory's size and mode are left out: in mtools' extraction they are the host's.
fn fat_tool_view(dir: &Path) -> String {
    sh(
        "sh",
        &[
            "-c",
            "cd \"$1\" && export LC_ALL=C && \
             find . -mindepth 1 -printf '%y %P\\n' | sort && echo == files && \
             find . -mindepth 1 -type f -printf '%s %Ts %P\\n' | sort -k3 && echo == sha256 && \
             find . -mindepth 1 -type f -print0 | sort -z | xargs -0 -r sha256sum",
            "sh",
            s(dir),
        ],
    )
}

/// mtools' view of the FAT volume at `start` of raw disk `raw`: the partition's bytes cut
/// out with dd, then `mcopy -s -n -m` of them into a fresh directory.
fn mtools_fat_view(raw: &Path, start: u64, len: u64) -> String {
    let work = tempfile::tempdir().unwrap();
    let part = work.path().join("part.raw");
    sh(
        "dd",
        &[
            &format!("if={}", s(raw)),
            &format!("of={}", s(&part)),
            "bs=1M",
            &format!("skip={start}"),
            &format!("count={len}"),
            "iflag=skip_bytes,count_bytes",
            "status=none",
        ],
    );
    let out = work.path().join("out");
    fs::create_dir(&out).unwrap();
    fat_helpers::mtools("mcopy", &["-s", "-n", "-m", "-i", s(&part), "::/", s(&out)]);
    fat_tool_view(&out)
}

/// A GPT disk with an EFI system partition (FAT32 by mkfs.vfat and mcopy) and an LVM2 PV
/// partition holding one linear LV of ext4, behind an internal snapshot `s`; after the
/// snapshot the live disk's FAT32 is rewritten. Through the mount, each volume of the
/// snapshot and of live/ equals the oracles' view of the same disk bytes (qemu-img convert
/// of the snapshot or the live state): the FAT32 what mtools extracts, the LV's ext4 the
/// kernel's loop mount.
#[test]
fn fat32_esp_and_lvm_lv_of_a_gpt_disk_match_mtools_and_the_kernel() {
    let scratch = GuestScratch::new(TreeOptions {
        big_sparse: false,
        big_dir_entries: 100,
    });
    // FAT32: long and Unicode names, nested directories, a file of 300 KiB, set times.
    let fat_src = scratch.path("fat-tree");
    fat_helpers::fat_tree(&fat_src, 40);
    let esp = scratch.path("esp.raw");
    fat_helpers::make_fat(&esp, 32, "40M", &[], &fat_src);
    let ext4 = scratch.path("lv-root.raw");
    mkfs("mkfs.ext4", &[], &scratch.tree(), &ext4, "12M");
    let ext4_len = fs::metadata(&ext4).unwrap().len();

    let disk = scratch.path("disk.raw");
    let parts = partitioned_disk(
        &disk,
        "64M",
        "label: gpt\nstart=2048, size=40M, type=U\nsize=20M, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
        &[(1, &esp)],
    );
    let vg = lvm::unique_vg("vsfmnt");
    let lvs = [lvm::LvSpec::new(
        "root",
        vec![lvm::SegSpec::Linear {
            count: 12,
            pv: 0,
            pe: 0,
        }],
    )];
    let bases = lvm::lvm_disk(&disk, &[parts[&2]], &vg, &lvs, &[(0, &ext4)]);
    let lv_name = format!("{vg}-root");

    let dom = TestDomain::new("fatlvm", "64M");
    let image = dom.path("vda.qcow2");
    to_qcow2(&disk, &image);
    dom.define(&[("vda", "qcow2", &image)]);
    dom.snapshot("s", &[]);
    // The live FAT32 changes after the snapshot: a file removed, one added, one rewritten.
    let (esp_start, esp_len) = parts[&1];
    let esp2 = scratch.path("esp2.raw");
    fs::copy(&esp, &esp2).unwrap();
    let after = scratch.path("after.txt");
    fs::write(&after, b"written after the snapshot\n").unwrap();
    let bigger = scratch.path("multi-cluster.bin");
    fs::write(&bigger, fat_helpers::pattern(200 * 1024 + 7, 5)).unwrap();
    let m = s(&esp2);
    fat_helpers::mtools("mdel", &["-i", m, "::/readme.txt"]);
    fat_helpers::mtools("mcopy", &["-i", m, s(&after), "::/deep/after.txt"]);
    fat_helpers::mtools(
        "mcopy",
        &["-o", "-i", m, s(&bigger), "::/multi-cluster.bin"],
    );
    dom.write(
        "vda.qcow2",
        &format!(
            "write -s {} {esp_start} {}",
            s(&esp2),
            fs::metadata(&esp2).unwrap().len()
        ),
    );

    // The oracles read what qemu-img reads of the snapshot and of the live state.
    let (snap_raw, live_raw) = (scratch.path("snap.raw"), scratch.path("live.raw"));
    convert(&image, Some("s"), &snap_raw);
    convert(&image, None, &live_raw);

    let mount = Mount::new(&[]);
    let d = |rel: &str| mount.path(&format!("{}/{rel}", dom.name));
    let mut want_names = vec!["vda1".to_string(), lv_name.clone()];
    want_names.sort();
    assert_eq!(ls(&d("snapshots/s/files")), want_names);
    assert_eq!(ls(&d("live/files")), want_names);

    let snap_fat = fat_tool_view(&d("snapshots/s/files/vda1"));
    let snap_mtools = mtools_fat_view(&snap_raw, esp_start, esp_len);
    assert_tool_manifests_eq(
        &snap_fat,
        &snap_mtools,
        "snapshot s vda1 (FAT32) against mtools",
    );
    let live_fat = fat_tool_view(&d("live/files/vda1"));
    let live_mtools = mtools_fat_view(&live_raw, esp_start, esp_len);
    assert_tool_manifests_eq(&live_fat, &live_mtools, "live vda1 (FAT32) against mtools");
    assert_ne!(
        snap_fat, live_fat,
        "the snapshot and live FAT32 should differ"
    );
    let n = snap_fat
        .lines()
        .take_while(|l| !l.starts_with("=="))
        .count();
    assert!(n > 60, "only {n} FAT paths compared");
    // One file read with cat equals mtools' own output of it (mtype).
    let long = "Sub Dir With A Long Name/nested/file.bin";
    let cat = Command::new("cat")
        .arg(d("snapshots/s/files/vda1").join(long))
        .output()
        .unwrap();
    assert!(cat.status.success(), "{cat:?}");
    let part_img = format!("{}@@{esp_start}", s(&snap_raw));
    let mtype = Command::new("mtype")
        .args(["-i", &part_img, &format!("::/{long}")])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(mtype.status.success(), "{mtype:?}");
    assert_eq!(cat.stdout, mtype.stdout, "cat of {long}");
    eprintln!("FAT32: {n} paths equal in the snapshot, live differs as written");

    // The LV: its ext4 against the kernel's loop mount of the LV's bytes of the snapshot
    // (the LV is one run of the PV partition, from the PV's extent 0).
    let n = compare(
        &d(&format!("snapshots/s/files/{lv_name}")),
        &snap_raw,
        bases[0],
        ext4_len,
        "snapshot s LV (ext4)",
    );
    assert!(n > 100, "only {n} LV paths compared");
    compare(
        &d(&format!("live/files/{lv_name}")),
        &live_raw,
        bases[0],
        ext4_len,
        "live LV (ext4)",
    );
}

/// An LVM2 volume group over two disks, each a whole-disk PV (as when a second disk was
/// added to grow a guest's root): one linear LV of ext4 whose first 6 MiB are on vdb and the
/// next 8 MiB on vda, behind an internal snapshot `s`; after the snapshot the LV gets
/// another ext4 tree in the live state. Through the mount, `files/` of the snapshot and of
/// live/ list the LV once, and each equals the kernel's loop mount of the LV's bytes put
/// together from both disks as `qemu-img convert` reads them (device-mapper's mapping).
#[test]
fn lv_spanning_two_disks_matches_the_kernel() {
    let scratch = GuestScratch::new(TreeOptions {
        big_sparse: false,
        big_dir_entries: 100,
    });
    let ext4 = scratch.path("lv-root.raw");
    mkfs("mkfs.ext4", &[], &scratch.tree(), &ext4, "14M");
    let after_src = scratch.path("after-tree");
    after_tree(&after_src);
    let ext4_after = scratch.path("lv-root-after.raw");
    mkfs("mkfs.ext4", &[], &after_src, &ext4_after, "14M");
    let len = fs::metadata(&ext4).unwrap().len();
    assert_eq!(len, 14 << 20);

    const DISK: u64 = 24 << 20;
    let both = scratch.path("both.raw");
    sh("truncate", &["-s", &(2 * DISK).to_string(), s(&both)]);
    let vg = lvm::unique_vg("vsfspan");
    let seg = |count, pv, pe| lvm::SegSpec::Linear { count, pv, pe };
    let lvs = [lvm::LvSpec::new("root", vec![seg(6, 1, 2), seg(8, 0, 1)])];
    let bases = lvm::lvm_disk(&both, &[(0, DISK), (DISK, DISK)], &vg, &lvs, &[(0, &ext4)]);
    let lv_name = format!("{vg}-root");
    // Where the LV's two pieces are, on each disk of its own.
    let (on_vdb, on_vda) = (bases[1] - DISK + (2 << 20), bases[0] + (1 << 20));
    let (vda_raw, vdb_raw) = (scratch.path("vda.raw"), scratch.path("vdb.raw"));
    slice_to(&both, 0, DISK, &vda_raw);
    slice_to(&both, DISK, DISK, &vdb_raw);

    let dom = TestDomain::new("lvspan", "64M");
    let (a, b) = (dom.path("vda.qcow2"), dom.path("vdb.qcow2"));
    to_qcow2(&vda_raw, &a);
    to_qcow2(&vdb_raw, &b);
    dom.define(&[("vda", "qcow2", &a), ("vdb", "qcow2", &b)]);
    dom.snapshot("s", &[]);
    let (head, tail) = (
        scratch.path("after-head.raw"),
        scratch.path("after-tail.raw"),
    );
    slice_to(&ext4_after, 0, 6 << 20, &head);
    slice_to(&ext4_after, 6 << 20, 8 << 20, &tail);
    dom.write(
        "vdb.qcow2",
        &format!("write -s {} {on_vdb} {}", s(&head), 6 << 20),
    );
    dom.write(
        "vda.qcow2",
        &format!("write -s {} {on_vda} {}", s(&tail), 8 << 20),
    );

    // The LV's bytes of a state, from both disks as qemu-img reads them.
    let lv_of = |snapshot: Option<&str>, what: &str| {
        let (da, db) = (scratch.path("conv-a.raw"), scratch.path("conv-b.raw"));
        convert(&a, snapshot, &da);
        convert(&b, snapshot, &db);
        let mut bytes = fs::read(&db).unwrap()[on_vdb as usize..][..6 << 20].to_vec();
        bytes.extend_from_slice(&fs::read(&da).unwrap()[on_vda as usize..][..8 << 20]);
        let out = scratch.path(&format!("{what}.lv.raw"));
        fs::write(&out, bytes).unwrap();
        out
    };
    let snap_lv = lv_of(Some("s"), "snap");
    let live_lv = lv_of(None, "live");
    assert_eq!(fs::read(&snap_lv).unwrap(), fs::read(&ext4).unwrap());
    assert_eq!(fs::read(&live_lv).unwrap(), fs::read(&ext4_after).unwrap());

    let mount = Mount::new(&[]);
    let d = |rel: &str| mount.path(&format!("{}/{rel}", dom.name));
    assert_eq!(ls(&d("snapshots/s/files")), std::slice::from_ref(&lv_name));
    assert_eq!(ls(&d("live/files")), std::slice::from_ref(&lv_name));
    let n = compare(
        &d(&format!("snapshots/s/files/{lv_name}")),
        &snap_lv,
        0,
        len,
        "snapshot s LV over vdb and vda (ext4)",
    );
    assert!(n > 100, "only {n} LV paths compared");
    compare(
        &d(&format!("live/files/{lv_name}")),
        &live_lv,
        0,
        len,
        "live LV over vdb and vda (ext4)",
    );
    assert!(d(&format!("live/files/{lv_name}/etc/after")).exists());
    assert!(!d(&format!("snapshots/s/files/{lv_name}/etc/after")).exists());
    assert!(
        mount.log_text().contains(&format!(
            "snapshot s disk vdb: {lv_name} (also on vda) ext4"
        )),
        "the scan's log line names both disks"
    );
}

/// An XFS (v5, as mkfs.xfs makes it) in a GPT partition of a domain's disk, behind a qcow2
/// internal snapshot: what find, stat, sha256sum and getfattr see of it through the mount
/// equals what they see of the kernel's loop mount of the snapshot's bytes; the live disk,
/// changed after the snapshot and left with a dirty log, equals the kernel's view after its
/// own log recovery of a copy.
#[test]
fn xfs_in_a_gpt_partition_matches_the_kernel() {
    let scratch = GuestScratch::new(TreeOptions {
        big_sparse: false,
        big_dir_entries: 2000,
    });
    let xfs = scratch.path("xfs.raw");
    xfs_helpers::mkfs_xfs(&xfs, "64M", &[]);
    xfs_helpers::fill(&xfs, &scratch.tree(), |m| xfs_helpers::xfs_shapes(m, 0, 0));
    let disk = scratch.path("disk.raw");
    let parts = partitioned_disk(
        &disk,
        "80M",
        "label: gpt\nstart=2048, size=64M, type=linux\n",
        &[(1, &xfs)],
    );
    let (start, len) = parts[&1];
    let dom = TestDomain::new("xfsgpt", "80M");
    let image = dom.path("vda.qcow2");
    to_qcow2(&disk, &image);
    dom.define(&[("vda", "qcow2", &image)]);
    dom.snapshot("s", &[]);
    // The live XFS changes after the snapshot, and its log is left dirty, as a running
    // guest's is: a file added and one removed, both only in the log.
    let xfs2 = scratch.path("xfs2.raw");
    fs::copy(&xfs, &xfs2).unwrap();
    xfs_log::make_dirty(
        &xfs2,
        |_| {},
        |m| {
            fs::write(m.join("after"), b"written after the snapshot\n").unwrap();
            fs::remove_file(m.join("hello")).unwrap();
        },
    );
    dom.write(
        "vda.qcow2",
        &format!(
            "write -s {} {start} {}",
            s(&xfs2),
            fs::metadata(&xfs2).unwrap().len()
        ),
    );
    let (snap_raw, live_raw) = (scratch.path("snap.raw"), scratch.path("live.raw"));
    convert(&image, Some("s"), &snap_raw);
    convert(&image, None, &live_raw);

    let mount = Mount::new(&[]);
    let d = |rel: &str| mount.path(&format!("{}/{rel}", dom.name));
    assert_eq!(ls(&d("snapshots/s/files")), ["vda1"]);
    let mut n = 0;
    // The kernel's view of the live XFS: its own log recovery of a copy of the partition.
    let live_part = scratch.path("live-part.raw");
    fs::write(
        &live_part,
        &fs::read(&live_raw).unwrap()[start as usize..(start + len) as usize],
    )
    .unwrap();
    xfs_log::Mnt::new(&live_part, "rw").umount();
    for (dir, raw, offset, what) in [
        (
            "snapshots/s/files/vda1",
            &snap_raw,
            start,
            "snapshot s vda1 (XFS)",
        ),
        (
            "live/files/vda1",
            &live_part,
            0,
            "live vda1 (XFS, dirty log replayed)",
        ),
    ] {
        let kernel = xfs_helpers::XfsMount::new(raw, offset, len);
        let (theirs, count) = tool_manifest(kernel.path());
        let (ours, _) = tool_manifest(&d(dir));
        assert_tool_manifests_eq(&ours, &theirs, what);
        n += count;
    }
    assert!(n > 4000, "only {n} paths compared");
    assert!(d("live/files/vda1/after").exists());
    assert!(!d("snapshots/s/files/vda1/after").exists());
}

/// The bytes `len` long at `start` of `raw`, as a file of their own (ntfs-3g reads a file or
/// a device, not a range of one).
fn slice_to(raw: &Path, start: u64, len: u64, out: &Path) {
    let bytes = fs::read(raw).unwrap();
    fs::write(out, &bytes[start as usize..(start + len) as usize]).unwrap();
}

#[test]
fn ntfs_in_an_mbr_partition_matches_ntfs3g() {
    let (scratch, ntfs) = ntfs_helpers::scratch();
    let scratch_path = |name: &str| scratch.path().join(name);
    ntfs_helpers::make_ntfs(&ntfs, "64M", 1500);
    let disk = scratch_path("disk.raw");
    let parts = partitioned_disk(
        &disk,
        "80M",
        "label: dos\nstart=2048, size=64M, type=7\n",
        &[(1, &ntfs)],
    );
    let (start, len) = parts[&1];
    let dom = TestDomain::new("ntfsmbr", "80M");
    let image = dom.path("vda.qcow2");
    to_qcow2(&disk, &image);
    dom.define(&[("vda", "qcow2", &image)]);
    dom.snapshot("s", &[]);
    // The live volume changes after the snapshot, through ntfs-3g: a file added, one
    // removed, one rewritten.
    let ntfs2 = scratch_path("ntfs2.raw");
    fs::copy(&ntfs, &ntfs2).unwrap();
    let m = ntfs_helpers::NtfsMount::new(&ntfs2, &[]);
    fs::write(m.path().join("after"), b"written after the snapshot\n").unwrap();
    fs::remove_file(m.path().join("hello")).unwrap();
    fs::write(m.path().join("exact-4k"), b"rewritten\n").unwrap();
    m.unmount();
    dom.write(
        "vda.qcow2",
        &format!(
            "write -s {} {start} {}",
            s(&ntfs2),
            fs::metadata(&ntfs2).unwrap().len()
        ),
    );
    let (snap_raw, live_raw) = (scratch_path("snap.raw"), scratch_path("live.raw"));
    convert(&image, Some("s"), &snap_raw);
    convert(&image, None, &live_raw);

    let mount = Mount::new(&[]);
    let d = |rel: &str| mount.path(&format!("{}/{rel}", dom.name));
    assert_eq!(ls(&d("snapshots/s/files")), ["vda1"]);
    assert_eq!(ls(&d("live/files")), ["vda1"]);
    let mut n = 0;
    for (dir, raw, what) in [
        (
            "snapshots/s/files/vda1",
            &snap_raw,
            "snapshot s vda1 (NTFS)",
        ),
        ("live/files/vda1", &live_raw, "live vda1 (NTFS)"),
    ] {
        let part = scratch_path("part.raw");
        slice_to(raw, start, len, &part);
        let theirs_mount = ntfs_helpers::NtfsMount::new(&part, &["ro"]);
        let (theirs, count) = tool_manifest(theirs_mount.path());
        let (ours, _) = tool_manifest(&d(dir));
        assert_tool_manifests_eq(&ours, &theirs, what);
        // cp -a of the whole volume keeps every byte, link and stream ntfs-3g shows.
        let copy = scratch_path("copy");
        let _ = fs::remove_dir_all(&copy);
        sh("cp", &["-a", &format!("{}/.", s(&d(dir))), s(&copy)]);
        let (copied, _) = tool_manifest(&copy);
        let (theirs_again, _) = tool_manifest(theirs_mount.path());
        assert_eq!(
            copied
                .lines()
                .filter(|l| l.contains("  ./"))
                .collect::<Vec<_>>(),
            theirs_again
                .lines()
                .filter(|l| l.contains("  ./"))
                .collect::<Vec<_>>(),
            "{what}: sha256 of cp -a's copy"
        );
        theirs_mount.unmount();
        n += count;
    }
    assert!(n > 3000, "only {n} paths compared");
    assert!(d("live/files/vda1/after").exists());
    assert!(!d("snapshots/s/files/vda1/after").exists());
    assert_eq!(
        fs::read(d("snapshots/s/files/vda1/hello")).unwrap(),
        b"hello, world\n"
    );
    assert_eq!(
        fs::read(d("live/files/vda1/exact-4k")).unwrap(),
        b"rewritten\n"
    );
}
