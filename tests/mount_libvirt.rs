//! The mount against a real libvirtd (qemu:///system): the tree equals virsh's, every disk
//! equals qemu-img's bytes, checked with real ls, find, stat, cat, cp, cmp and readlink.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::vm::{
    convert, eventually, expected_tree, mounted_tree, same_bytes, sh, sh_fails, virsh, Mount,
    TestDomain,
};

fn stat(path: &Path, format: &str) -> String {
    sh("stat", &["-c", format, path.to_str().unwrap()])
        .trim()
        .to_string()
}

fn creation_time(dom: &TestDomain, snapshot: &str) -> String {
    let xml = virsh(&["snapshot-dumpxml", &dom.name, snapshot]);
    let start = xml.find("<creationTime>").unwrap() + "<creationTime>".len();
    let end = xml.find("</creationTime>").unwrap();
    xml[start..end].to_string()
}

/// Bytes qemu-img map reports as data (what st_blocks should count).
fn mapped_data_bytes(image: &Path) -> u64 {
    let map: serde_json::Value = serde_json::from_str(&sh(
        "qemu-img",
        &["map", "-U", "--output=json", image.to_str().unwrap()],
    ))
    .unwrap();
    map.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"].as_bool().unwrap())
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

/// Copies `file` out of the mount with cp and compares it with the oracle's raw image.
fn assert_cp_matches(file: &Path, oracle_image: &Path, snapshot: Option<&str>, scratch: &Path) {
    let ours = scratch.join("ours.raw");
    let theirs = scratch.join("theirs.raw");
    sh(
        "cp",
        &[
            "--sparse=always",
            file.to_str().unwrap(),
            ours.to_str().unwrap(),
        ],
    );
    convert(oracle_image, snapshot, &theirs);
    assert!(
        same_bytes(&ours, &theirs),
        "{} differs from qemu-img convert of {}{}",
        file.display(),
        oracle_image.display(),
        snapshot.map(|s| format!(" at {s}")).unwrap_or_default()
    );
}

#[test]
fn offline_tree_with_branch_internal_and_external_snapshots() {
    let dom = TestDomain::new("tree", "16M");
    let scratch = tempfile::tempdir().unwrap();
    dom.write("vda.qcow2", "write -P 0x11 0 1M");
    dom.snapshot("s1", &["first"]);
    dom.write("vda.qcow2", "write -P 0x22 512k 1M");
    dom.snapshot("s2", &[]);
    virsh(&["snapshot-revert", &dom.name, "s1"]);
    dom.write("vda.qcow2", "write -P 0x33 2M 64k");
    dom.snapshot("s3", &[]);
    dom.snapshot("e1", &["--disk-only", "--atomic"]);
    let overlay = dom.live_source("vda");
    assert_ne!(overlay, dom.path("vda.qcow2"));
    sh(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x44 0 64k",
            overlay.to_str().unwrap(),
        ],
    );

    let mount = Mount::new(&[]);
    let d = |rel: &str| mount.path(&format!("{}/{rel}", dom.name));

    // The tree equals virsh's, branch included.
    let tree = mounted_tree(&mount, &dom);
    assert_eq!(tree, expected_tree(&dom));
    assert!(
        tree.contains("s1/s2") && tree.contains("s1/s3/e1"),
        "{tree:?}"
    );
    let listing = sh("ls", &[d("").to_str().unwrap()]);
    assert_eq!(
        listing.split_whitespace().collect::<Vec<_>>(),
        ["current", "domain.xml", "live", "snapshots", "status"]
    );
    let listing = sh("ls", &[d("snapshots/s1/s3").to_str().unwrap()]);
    assert_eq!(
        listing.split_whitespace().collect::<Vec<_>>(),
        ["e1", "files", "snapshot.xml", "vda.raw"]
    );

    // current points at the current snapshot.
    assert_eq!(dom.current().as_deref(), Some("e1"));
    assert_eq!(
        sh("readlink", &[d("current").to_str().unwrap()]).trim(),
        "snapshots/s1/s3/e1"
    );
    assert!(d("current/vda.raw").exists());

    // Every disk equals qemu-img's bytes.
    for s in ["s1", "s2", "s3"] {
        let path = match s {
            "s1" => "snapshots/s1/vda.raw",
            "s2" => "snapshots/s1/s2/vda.raw",
            _ => "snapshots/s1/s3/vda.raw",
        };
        assert_cp_matches(&d(path), &dom.path("vda.qcow2"), Some(s), scratch.path());
    }
    // External: the image that became read-only under the overlay.
    assert_cp_matches(
        &d("snapshots/s1/s3/e1/vda.raw"),
        &dom.path("vda.qcow2"),
        None,
        scratch.path(),
    );
    assert_cp_matches(&d("live/vda.raw"), &overlay, None, scratch.path());

    // XML files are libvirt's.
    assert_eq!(
        std::fs::read_to_string(d("domain.xml")).unwrap(),
        virsh(&["dumpxml", &dom.name]).trim_end().to_string() + "\n"
    );
    let snap_xml = std::fs::read_to_string(d("snapshots/s1/snapshot.xml")).unwrap();
    assert_eq!(
        snap_xml.trim_end(),
        virsh(&["snapshot-dumpxml", &dom.name, "s1"]).trim_end()
    );

    // stat: size, blocks, mtime, stable inode numbers, owner-only disks.
    let disk = d("snapshots/s1/s3/e1/vda.raw");
    assert_eq!(stat(&disk, "%s"), (16u64 << 20).to_string());
    assert_eq!(stat(&disk, "%Y"), creation_time(&dom, "e1"));
    assert_eq!(stat(&d("snapshots/s1"), "%Y"), creation_time(&dom, "s1"));
    assert_eq!(stat(&disk, "%a %U"), "400 root");
    let blocks: u64 = stat(&disk, "%b").parse().unwrap();
    assert_eq!(blocks * 512, mapped_data_bytes(&dom.path("vda.qcow2")));
    let live_blocks: u64 = stat(&d("live/vda.raw"), "%b").parse().unwrap();
    assert_eq!(live_blocks * 512, mapped_data_bytes(&overlay));
    // Each internal snapshot's size and st_blocks (found together by the first stat of a
    // snapshot disk) are its own: qemu-img's count of data in a copy of that snapshot.
    for (s, path) in [
        ("s1", "snapshots/s1/vda.raw"),
        ("s2", "snapshots/s1/s2/vda.raw"),
        ("s3", "snapshots/s1/s3/vda.raw"),
    ] {
        let copy = scratch.path().join(format!("{s}.qcow2"));
        let image = dom.path("vda.qcow2");
        let snapshot = format!("snapshot.name={s}");
        let args = ["convert", "-U", "-l", &snapshot, "-O", "qcow2"];
        let paths = [image.to_str().unwrap(), copy.to_str().unwrap()];
        sh("qemu-img", &[&args[..], &paths[..]].concat());
        let blocks: u64 = stat(&d(path), "%b").parse().unwrap();
        assert_eq!(blocks * 512, mapped_data_bytes(&copy), "snapshot {s}");
        assert_eq!(stat(&d(path), "%s"), (16u64 << 20).to_string());
    }
    let ino = stat(&disk, "%i");
    assert_eq!(stat(&disk, "%i"), ino);
    assert_ne!(stat(&d("snapshots/s1/vda.raw"), "%i"), ino);

    // SEEK_DATA/SEEK_HOLE: cp --sparse=always leaves the holes unallocated, and qemu-img
    // reading the mounted file as raw gets the same bytes.
    let sparse = scratch.path().join("sparse.raw");
    sh(
        "cp",
        &[
            "--sparse=always",
            disk.to_str().unwrap(),
            sparse.to_str().unwrap(),
        ],
    );
    let copied_blocks: u64 = stat(&sparse, "%b").parse().unwrap();
    assert!(
        copied_blocks * 512 < 16 << 20,
        "cp copied holes: {copied_blocks} blocks"
    );
    let via_qemu = scratch.path().join("via-qemu.raw");
    sh(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            disk.to_str().unwrap(),
            via_qemu.to_str().unwrap(),
        ],
    );
    assert!(same_bytes(&via_qemu, &sparse));
}

#[test]
fn running_domain_live_disk_and_live_snapshots() {
    let dom = TestDomain::new("running", "32M");
    let scratch = tempfile::tempdir().unwrap();
    virsh(&["start", &dom.name]);
    dom.write_running("write -P 0x55 0 1M");
    dom.write_running("flush");
    // A running domain's internal snapshot is a full checkpoint (disk and RAM).
    dom.snapshot("r1", &[]);
    dom.write_running("write -P 0x66 1M 1M");
    dom.write_running("flush");
    dom.snapshot("r2", &["--disk-only", "--atomic"]);
    dom.write_running("write -P 0x77 4M 64k");
    dom.write_running("flush");
    let overlay = dom.live_source("vda");

    let mount = Mount::new(&[]);
    let d = |rel: &str| mount.path(&format!("{}/{rel}", dom.name));
    assert_eq!(mounted_tree(&mount, &dom), expected_tree(&dom));
    assert_cp_matches(
        &d("snapshots/r1/vda.raw"),
        &dom.path("vda.qcow2"),
        Some("r1"),
        scratch.path(),
    );
    assert_cp_matches(
        &d("snapshots/r1/r2/vda.raw"),
        &dom.path("vda.qcow2"),
        None,
        scratch.path(),
    );
    assert_cp_matches(&d("live/vda.raw"), &overlay, None, scratch.path());
    let r1_xml = std::fs::read_to_string(d("snapshots/r1/snapshot.xml")).unwrap();
    assert!(r1_xml.contains("<state>running</state>"), "{r1_xml}");

    // A new guest write shows at the next read, although the range was read (and cached)
    // before the write: the kernel asks for a live disk's attributes before each read and
    // drops its pages when the image's mtime or size changed, and the daemon opens the
    // chain again when one of its files changed.
    let at_8m = |path: &Path| {
        let mut buf = vec![0u8; 65536];
        let f = std::fs::File::open(path).unwrap();
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 8 << 20).unwrap();
        buf
    };
    assert!(at_8m(&d("live/vda.raw")).iter().all(|&b| b != 0x78));
    dom.write_running("write -P 0x78 8M 64k");
    dom.write_running("flush");
    assert!(at_8m(&d("live/vda.raw")).iter().all(|&b| b == 0x78));
    // With close_to_open, at the very next open.
    let strict = Mount::new(&["close_to_open"]);
    let strict_disk = strict.path(&format!("{}/live/vda.raw", dom.name));
    assert!(at_8m(&strict_disk).iter().all(|&b| b == 0x78));
    dom.write_running("write -P 0x79 8M 64k");
    dom.write_running("flush");
    assert!(at_8m(&strict_disk).iter().all(|&b| b == 0x79));
}

#[test]
fn odd_snapshot_names_are_escaped_reversibly() {
    let dom = TestDomain::new("names", "4M");
    // libvirt refuses names starting with '.', so '.' and '..' cannot occur.
    let names = [
        "vda.raw",
        "snapshot.xml",
        "100%",
        "with space",
        "x&y<z>",
        "tab\tname",
    ];
    for n in names {
        dom.snapshot(n, &[]);
    }
    let mount = Mount::new(&[]);
    let snaps = mount.path(&format!("{}/snapshots", dom.name));
    let shown: BTreeSet<String> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    // Each is nested in the previous one (each snapshot's parent is the current one).
    assert_eq!(shown, BTreeSet::from(["%76da.raw".to_string()]));
    let deepest = "%76da.raw/%73napshot.xml/100%25/with space/x&y<z>/tab%09name";
    let xml = std::fs::read_to_string(snaps.join(deepest).join("snapshot.xml")).unwrap();
    assert!(xml.contains("<name>tab\tname</name>"), "{xml}");
    for (i, n) in names.iter().enumerate() {
        let rel: Vec<&str> = deepest.split('/').take(i + 1).collect();
        let xml = std::fs::read_to_string(snaps.join(rel.join("/")).join("snapshot.xml")).unwrap();
        let escaped = n
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert!(
            xml.contains(&format!("<name>{escaped}</name>")),
            "{n}: {xml}"
        );
        assert_eq!(virtsnapfs::fs::names::decode(rel[i]).as_deref(), Some(*n));
    }
    assert_eq!(
        sh(
            "readlink",
            &[mount
                .path(&format!("{}/current", dom.name))
                .to_str()
                .unwrap()]
        )
        .trim(),
        format!("snapshots/{deepest}")
    );
}

#[test]
fn writes_creates_and_attribute_changes_are_refused() {
    let dom = TestDomain::new("refuse", "4M");
    dom.snapshot("s", &[]);
    let mount = Mount::new(&[]);
    let disk = mount.path(&format!("{}/snapshots/s/vda.raw", dom.name));
    let live = mount.path(&format!("{}/live/vda.raw", dom.name));
    let xml = mount.path(&format!("{}/domain.xml", dom.name));
    let dir = mount.path(&format!("{}/snapshots/s", dom.name));
    let q = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("sh", vec!["-c".into(), format!("echo x > '{}'", q(&live))]),
        // Appending: the open succeeds (the kernel opens files itself) and the write fails;
        // tee reports the write's errno (dash's echo would say only "I/O error").
        (
            "sh",
            vec!["-c".into(), format!("echo x | tee -a '{}'", q(&disk))],
        ),
        ("truncate", vec!["-s".into(), "0".into(), q(&disk)]),
        ("touch", vec![q(&xml)]),
        ("chmod", vec!["644".into(), q(&disk)]),
        ("rm", vec!["-f".into(), q(&xml)]),
        ("touch", vec![q(&dir.join("new-file"))]),
        ("ln", vec!["-s".into(), "x".into(), q(&dir.join("link"))]),
    ];
    for (program, args) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = sh_fails(program, &refs);
        assert!(
            err.contains("Read-only file system"),
            "{program} {args:?}: {err}"
        );
    }
    assert!(
        mount.log_text().contains("read-only"),
        "no log line: {}",
        mount.log_text()
    );
    // Nothing changed: the snapshot still reads as before.
    let scratch = tempfile::tempdir().unwrap();
    assert_cp_matches(&disk, &dom.path("vda.qcow2"), Some("s"), scratch.path());
}

#[test]
fn changes_made_with_virsh_show_within_two_seconds() {
    let dom = TestDomain::new("changes", "4M");
    let mount = Mount::new(&[]);
    let d = |rel: &str| mount.path(&format!("{}/{rel}", dom.name));
    assert!(d("snapshots").is_dir());
    assert!(!d("current").exists());

    dom.snapshot("a", &[]);
    eventually(3, "new snapshot a", || d("snapshots/a/vda.raw").exists());
    assert_eq!(
        sh("readlink", &[d("current").to_str().unwrap()]).trim(),
        "snapshots/a"
    );
    dom.snapshot("b", &[]);
    eventually(3, "new snapshot b", || d("snapshots/a/b").is_dir());
    virsh(&["snapshot-revert", &dom.name, "a"]);
    eventually(3, "revert moves current", || {
        std::fs::read_link(d("current"))
            .map(|p| p == Path::new("snapshots/a"))
            .unwrap_or(false)
    });
    virsh(&["snapshot-delete", &dom.name, "a"]);
    eventually(3, "deleted snapshot a, b moved up", || {
        !d("snapshots/a").exists() && d("snapshots/b").is_dir()
    });

    let other = TestDomain::new("changes-new", "1M");
    eventually(3, "new domain", || mount.path(&other.name).is_dir());
    let name = other.name.clone();
    drop(other);
    eventually(3, "undefined domain", || !mount.path(&name).exists());
}

#[test]
fn broken_images_give_eio_and_a_log_line_while_the_rest_works() {
    let dom = TestDomain::new("broken", "4M");
    dom.write("vda.qcow2", "write -P 0x12 0 64k");
    dom.snapshot("good", &[]);
    let missing = dom.path("missing.qcow2");
    let corrupt = dom.path("corrupt.qcow2");
    sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            corrupt.to_str().unwrap(),
            "4M",
        ],
    );
    sh(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 1 0 64k",
            corrupt.to_str().unwrap(),
        ],
    );
    // Point the L1 entry at an unaligned L2 table.
    let mut bytes = std::fs::read(&corrupt).unwrap();
    let l1 = u64::from_be_bytes(bytes[40..48].try_into().unwrap()) as usize;
    bytes[l1 + 6] |= 0x02;
    std::fs::write(&corrupt, bytes).unwrap();
    dom.define(&[
        ("vda", "qcow2", &dom.path("vda.qcow2")),
        ("vdb", "qcow2", &missing),
        ("vdc", "qcow2", &corrupt),
    ]);

    let mount = Mount::new(&[]);
    let d = |rel: &str| mount.path(&format!("{}/{rel}", dom.name));
    let listing = sh("ls", &[d("live").to_str().unwrap()]);
    assert_eq!(
        listing.split_whitespace().collect::<Vec<_>>(),
        ["files", "vda.raw", "vdb.raw", "vdc.raw"]
    );
    let err = sh_fails("cat", &[d("live/vdb.raw").to_str().unwrap()]);
    assert!(err.contains("Input/output error"), "{err}");
    let err = sh_fails("cat", &[d("live/vdc.raw").to_str().unwrap()]);
    assert!(err.contains("Input/output error"), "{err}");
    let log = mount.log_text();
    assert!(
        log.contains(&format!("domain {} live disk vdb", dom.name)) && log.contains("No such file"),
        "{log}"
    );
    assert!(
        log.contains(&format!("domain {} live disk vdc", dom.name))
            && log.contains("L2 table offset"),
        "{log}"
    );
    // The rest of the tree keeps working.
    let scratch = tempfile::tempdir().unwrap();
    assert_cp_matches(
        &d("live/vda.raw"),
        &dom.path("vda.qcow2"),
        None,
        scratch.path(),
    );
    assert_cp_matches(
        &d("snapshots/good/vda.raw"),
        &dom.path("vda.qcow2"),
        Some("good"),
        scratch.path(),
    );
}

#[test]
fn foreground_mount_unmounts_cleanly_on_sigterm() {
    let _dom = TestDomain::new("sigterm", "1M");
    let mut mount = Mount::new(&[]);
    let root = mount.root();
    assert!(virtsnapfs::mount::is_mounted(&root));
    let status = mount.stop();
    assert!(status.success(), "{status}: {}", mount.log_text());
    assert!(
        !virtsnapfs::mount::is_mounted(&root),
        "stale mount left behind"
    );
}

#[test]
fn sigterm_after_fusermount3_unmounted_it_exits_0_without_an_error() {
    // The signal must come before the daemon notices the unmount by itself (it looks every
    // 200 ms), for the path under test to be the one taken: repeated until its log shows so,
    // which the first try nearly always does.
    for _ in 0..5 {
        let mut mount = Mount::new(&[]);
        let root = mount.root();
        sh("fusermount3", &["-u", root.to_str().unwrap()]);
        let status = mount.stop();
        let log = mount.log_text();
        assert!(status.success(), "{status}: {log}");
        assert!(!log.contains("ERROR"), "{log}");
        assert!(!virtsnapfs::mount::is_mounted(&root), "{log}");
        if log.contains("signal 15: unmounting") {
            return;
        }
    }
    panic!("the daemon noticed the unmount before the signal every time");
}

#[test]
fn sigterm_while_the_mount_is_busy_reports_the_failure() {
    let mut mount = Mount::new(&[]);
    let root = mount.root();
    // A process whose working directory is inside the mount: umount(2) answers EBUSY.
    let mut user = Command::new("sleep")
        .arg("60")
        .current_dir(&root)
        .spawn()
        .unwrap();
    let status = mount.stop();
    let _ = user.kill();
    let _ = user.wait();
    // The daemon is gone: clear the dead mount it leaves.
    sh("fusermount3", &["-u", "-z", root.to_str().unwrap()]);
    let log = mount.log_text();
    assert!(!status.success(), "{status}: {log}");
    assert!(
        log.contains("ERROR") && log.contains("unmount failed: Device or resource busy"),
        "{log}"
    );
}

#[test]
fn detached_mount_and_fstab_style_mount_through_mount_fuse3() {
    let dom = TestDomain::new("detach", "1M");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let log = dir.path().join("log");
    // Without --foreground the command returns once mounted.
    sh(
        env!("CARGO_BIN_EXE_virtsnapfs"),
        &[
            "-c",
            "qemu:///system",
            "--log-file",
            log.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ],
    );
    assert!(virtsnapfs::mount::is_mounted(&mnt));
    assert!(mnt.join(&dom.name).join("live/vda.raw").exists());
    sh("fusermount3", &["-u", mnt.to_str().unwrap()]);
    eventually(5, "unmounted", || !virtsnapfs::mount::is_mounted(&mnt));

    // The fstab form: `mount -t fuse.virtsnapfs URI MOUNTPOINT -o options` runs mount.fuse3,
    // which runs `virtsnapfs URI MOUNTPOINT -o …` found on PATH (mount(8) itself resets PATH
    // to the standard directories, where the setup script installs the binary).
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_virtsnapfs"), bin.join("virtsnapfs")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let opts = format!("allow_other,disk_mode=0444,log_file={}", log.display());
    let out = Command::new("/sbin/mount.fuse3")
        .args([
            "qemu:///system",
            mnt.to_str().unwrap(),
            "-t",
            "virtsnapfs",
            "-o",
            &opts,
        ])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let disk = mnt.join(&dom.name).join("live/vda.raw");
    assert_eq!(stat(&disk, "%a"), "444");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(mnt.to_str().unwrap()) && l.contains("fuse.virtsnapfs")),
        "{mounts}"
    );
    sh("umount", &[mnt.to_str().unwrap()]);
    eventually(5, "unmounted", || !virtsnapfs::mount::is_mounted(&mnt));
}

#[test]
fn disks_are_owner_only_unless_disk_mode_says_otherwise() {
    let dom = TestDomain::new("perm", "1M");
    dom.snapshot("s", &[]);
    let as_nobody = |mount: &Mount, rel: &str| {
        Command::new("runuser")
            .args(["-u", "nobody", "--", "cat"])
            .arg(mount.path(&format!("{}/{rel}", dom.name)))
            .output()
            .unwrap()
    };
    let mount = Mount::new(&["allow_other"]);
    let out = as_nobody(&mount, "snapshots/s/vda.raw");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // XML files are world-readable.
    assert!(as_nobody(&mount, "domain.xml").status.success());
    drop(mount);

    let mount = Mount::new(&["allow_other", "disk_mode=0444"]);
    let out = as_nobody(&mount, "snapshots/s/vda.raw");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.len(), 1 << 20);
}

/// Pages of `file` in the kernel's page cache, as fincore(1) counts them.
fn cached_pages(file: &Path) -> u64 {
    let out = sh(
        "fincore",
        &["--raw", "-n", "-o", "PAGES", file.to_str().unwrap()],
    );
    out.trim().parse().unwrap()
}

#[test]
fn the_kernel_keeps_cached_disk_pages_while_nothing_changes() {
    let dom = TestDomain::new("pagecache", "8M");
    dom.write("vda.qcow2", "write -P 0x5a 0 8M");
    dom.snapshot("s", &[]);
    let mount = Mount::with_env(&[], &[("RUST_LOG", "info,virtsnapfs::fs=debug")]);
    let disks = [
        mount.path(&format!("{}/live/vda.raw", dom.name)),
        mount.path(&format!("{}/snapshots/s/vda.raw", dom.name)),
    ];
    let pages = (8u64 << 20) / 4096;
    for disk in &disks {
        sh("cat", &[disk.to_str().unwrap()]);
        assert_eq!(cached_pages(disk), pages, "{} after a read", disk.display());
    }
    // Past the time snapshot XML is trusted, the refresher reads the domain again in full.
    // Finding it unchanged, it must not tell the kernel to forget anything. (The host may
    // reclaim a few idle pages itself, so half is the bar: a forgotten file keeps none.)
    let trusted = virtsnapfs::model::SNAPSHOT_XML_TRUSTED_FOR;
    eventually(
        trusted.as_secs() + 15,
        "a full re-read of the domain",
        || {
            mount.log_text().contains(&format!(
                "domain {}: read again in full, unchanged",
                dom.name
            ))
        },
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    for disk in &disks {
        let kept = cached_pages(disk);
        assert!(
            kept >= pages / 2,
            "{}: {kept} of {pages} pages kept",
            disk.display()
        );
    }
}
