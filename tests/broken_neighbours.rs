//! Broken domains beside a healthy one, on a real libvirtd: a chain that cannot be read whole
//! blocks only the operations that would rewrite or remove an image it still reaches by its
//! names; everything else goes ahead and keeps its exact bytes (checked with qemu-img).

mod common;

use std::path::Path;

use common::vm::{convert, p, same_bytes, sh, sh_fails, virsh, Mount, TestDomain};

fn qemu_img(args: &[&str]) {
    sh("qemu-img", args);
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A qcow2 overlay `path` on `backing` (made even if `backing` does not exist).
fn overlay(path: &Path, backing: &Path) {
    qemu_img(&[
        "create",
        "-q",
        "-u",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        s(backing),
        s(path),
        "4M",
    ]);
}

/// Breaks `path`'s qcow2 header but keeps its backing file name: cluster_bits out of range.
fn corrupt_keeping_backing_name(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&[0, 0, 0, 40], 20).unwrap();
}

fn sha256(path: &Path) -> String {
    sh("sha256sum", &[s(path)])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A domain named `label` whose disk vda is `image` in its own directory, made by `make`.
fn neighbour(label: &str, image: &str, make: impl FnOnce(&TestDomain, &Path)) -> TestDomain {
    let dom = TestDomain::new(label, "1M");
    let path = dom.path(image);
    make(&dom, &path);
    dom.define(&[("vda", "qcow2", &path)]);
    dom
}

/// The five kinds of broken domain, none of which reads anything of another domain.
fn broken_neighbours() -> Vec<TestDomain> {
    vec![
        // A corrupt header: the magic overwritten.
        neighbour("bad-magic", "vda.qcow2", |_, path| {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.write_all_at(b"XXXX", 0).unwrap();
        }),
        // A backing loop: a.qcow2 -> b.qcow2 -> a.qcow2.
        neighbour("loop", "a.qcow2", |dom, a| {
            let b = dom.path("b.qcow2");
            overlay(a, &dom.path("vda.qcow2"));
            overlay(&b, a);
            qemu_img(&[
                "rebase",
                "-q",
                "-u",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                s(&b),
                s(a),
            ]);
        }),
        // A qcow2 image cut to 100 bytes.
        neighbour("cut", "vda.qcow2", |_, path| {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_len(100)
                .unwrap();
        }),
        // A missing backing file.
        neighbour("orphan", "top.qcow2", |dom, top| {
            overlay(top, &dom.path("vda.qcow2"));
            std::fs::remove_file(dom.path("vda.qcow2")).unwrap();
        }),
        // A missing disk image.
        neighbour("gone", "vda.qcow2", |_, path| {
            std::fs::remove_file(path).unwrap();
        }),
    ]
}

fn mv_to_live(mount: &Mount, dom: &TestDomain, snapshot: &str) -> Result<(), String> {
    let out = std::process::Command::new("mv")
        .args([p(mount, dom, snapshot), p(mount, dom, "live/")])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn broken_neighbours_of_every_kind_block_nothing_of_a_healthy_domain() {
    let _broken = broken_neighbours();
    let dom = TestDomain::new("healthy", "4M");
    dom.write("vda.qcow2", "write -P 0x31 0 1M");
    let scratch = tempfile::tempdir().unwrap();
    let image = dom.path("vda.qcow2");

    // Internal: create, change the disk, revert (scans first), delete.
    let mount = Mount::new(&[]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/i1")]);
    dom.write("vda.qcow2", "write -P 0x32 512k 1M");
    let reference = scratch.path().join("i1.raw");
    convert(&image, Some("i1"), &reference);
    mv_to_live(&mount, &dom, "snapshots/i1").unwrap_or_else(|e| panic!("{e}{}", mount.log_text()));
    let live = scratch.path().join("live.raw");
    convert(&image, None, &live);
    assert!(same_bytes(&live, &reference), "the revert's bytes");
    assert!(same_bytes(
        Path::new(&p(&mount, &dom, "live/vda.raw")),
        &reference
    ));
    sh("rmdir", &[&p(&mount, &dom, "snapshots/i1")]);
    drop(mount);

    // External: create, change the disk, delete with a merge back into the base (scans first).
    let mount = Mount::new(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/e1")]);
    let overlay = dom.live_source("vda");
    assert_ne!(overlay, image);
    dom.write_live("write -P 0x33 1M 1M");
    let reference = scratch.path().join("before-delete.raw");
    convert(&overlay, None, &reference);
    let err = std::process::Command::new("rmdir")
        .arg(p(&mount, &dom, "snapshots/e1"))
        .output()
        .unwrap();
    assert!(err.status.success(), "{err:?}\n{}", mount.log_text());
    assert!(!overlay.exists(), "the overlay was merged and removed");
    assert_eq!(dom.live_source("vda"), image);
    convert(&image, None, &live);
    assert!(same_bytes(&live, &reference), "the merged bytes");
    assert!(same_bytes(
        Path::new(&p(&mount, &dom, "live/vda.raw")),
        &reference
    ));
    // Each broken neighbour was found broken and counted as reading its own images only.
    let log = mount.log_text();
    for (label, why) in [
        ("bad-magic", "vda.qcow2 cannot be read whole"),
        ("loop", "a.qcow2 cannot be read whole"),
        ("cut", "vda.qcow2 cannot be read whole"),
        ("orphan", "top.qcow2 cannot be read whole"),
        ("gone", "vda.qcow2 cannot be read whole"),
    ] {
        assert!(
            log.lines().any(|l| l.contains(label) && l.contains(why)),
            "{label}: {log}"
        );
    }
}

/// The log lines of `mount` that refuse an operation because of broken domain `broken`.
fn refusals_naming(mount: &Mount, broken: &TestDomain) -> Vec<String> {
    mount
        .log_text()
        .lines()
        .filter(|l| l.contains("refused") && l.contains(&broken.name))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_broken_chain_that_reaches_an_image_blocks_what_would_rewrite_it() {
    let dom = TestDomain::new("reached", "4M");
    dom.write("vda.qcow2", "write -P 0x41 0 1M");
    let image = dom.path("vda.qcow2");
    let mount = Mount::new(&[]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/i1")]);
    dom.write("vda.qcow2", "write -P 0x42 0 64k");

    // A neighbour whose chain breaks after reaching the healthy image: a sound top on a corrupt
    // middle image whose header still names vda.qcow2.
    let reader = neighbour("reader", "top.qcow2", |n, top| {
        let mid = n.path("mid.qcow2");
        overlay(&mid, &image);
        overlay(top, &mid);
        corrupt_keeping_backing_name(&mid);
    });
    let hash = sha256(&image);
    let err = mv_to_live(&mount, &dom, "snapshots/i1").unwrap_err();
    assert!(err.contains("Device or resource busy"), "{err}");
    assert_eq!(sha256(&image), hash, "the image was not rewritten");
    let lines = refusals_naming(&mount, &reader);
    assert!(
        lines.iter().any(|l| l.contains("disk vda")
            && l.contains("cannot be read whole")
            && l.contains("mid.qcow2")
            && l.contains("repair")),
        "{}",
        mount.log_text()
    );
    // Once that domain is gone, the revert goes ahead.
    drop(reader);
    mv_to_live(&mount, &dom, "snapshots/i1").unwrap_or_else(|e| panic!("{e}{}", mount.log_text()));
    sh("rmdir", &[&p(&mount, &dom, "snapshots/i1")]);
    drop(mount);

    // An external snapshot whose overlay a corrupt image names as its backing file: merging
    // would remove the overlay, so the delete is refused and both images keep their bytes.
    let mount = Mount::new(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/e1")]);
    let over = dom.live_source("vda");
    dom.write_live("write -P 0x43 0 64k");
    let reader = neighbour("on-overlay", "top.qcow2", |_, top| {
        overlay(top, &over);
        corrupt_keeping_backing_name(top);
    });
    let hashes = (sha256(&image), sha256(&over));
    let err = sh_fails("rmdir", &[&p(&mount, &dom, "snapshots/e1")]);
    assert!(err.contains("Device or resource busy"), "{err}");
    assert_eq!((sha256(&image), sha256(&over)), hashes);
    assert!(dom.snapshot_parents().iter().any(|(n, _)| n == "e1"));
    let lines = refusals_naming(&mount, &reader);
    assert!(
        lines.iter().any(|l| l.contains("disk vda")
            && l.contains("cannot be read whole")
            && l.contains(s(&over))
            && l.contains("detach-disk")),
        "{}",
        mount.log_text()
    );

    // A corrupt image on the base itself: like any other reader of the base, it keeps the
    // images (deleted without a merge), and nothing is rewritten.
    drop(reader);
    let base_reader = neighbour("on-base", "top.qcow2", |_, top| {
        overlay(top, &image);
        corrupt_keeping_backing_name(top);
    });
    let hashes = (sha256(&image), sha256(&over));
    sh("rmdir", &[&p(&mount, &dom, "snapshots/e1")]);
    assert_eq!((sha256(&image), sha256(&over)), hashes);
    assert_eq!(dom.live_source("vda"), over, "not merged");
    assert!(mount.log_text().contains("images kept, not merged"));
    drop(base_reader);
}

/// A neighbour whose snapshots come and go while an operation's dependency scan reads it (a
/// test suite tearing its domains down, an admin's script) never fails that operation: a
/// snapshot deleted between libvirt's listing and the reading of its XML means the listing is
/// out of date, and the domain is read again.
#[test]
fn a_neighbour_whose_snapshots_come_and_go_never_fails_an_operation() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let busy = TestDomain::new("churn", "1M");
    let names: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    for n in &names {
        busy.snapshot(n, &[]);
    }
    let xml: Vec<(String, std::path::PathBuf)> = names
        .iter()
        .map(|n| {
            let file = busy.path(&format!("{n}.xml"));
            std::fs::write(&file, virsh(&["snapshot-dumpxml", &busy.name, n])).unwrap();
            (n.clone(), file)
        })
        .collect();
    let stop = AtomicBool::new(false);
    let dom = TestDomain::new("beside-churn", "4M");
    let mount = Mount::new(&["snapshot_kind=external"]);
    let churned = std::thread::scope(|scope| {
        let churn = scope.spawn(|| {
            // Each snapshot's metadata deleted and defined again, round and round.
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                for (n, file) in &xml {
                    virsh(&["snapshot-delete", &busy.name, n, "--metadata"]);
                    virsh(&["snapshot-create", &busy.name, s(file), "--redefine"]);
                }
                rounds += 1;
            }
            rounds
        });
        // Every rmdir of an external snapshot scans every domain before it merges.
        for cycle in 0..cycles_beside_churn() {
            let made = p(&mount, &dom, "snapshots/t");
            sh("mkdir", &[&made]);
            dom.write_live(&format!("write -P {} 0 64k", cycle % 250 + 1));
            let out = std::process::Command::new("rmdir")
                .arg(&made)
                .output()
                .unwrap();
            if !out.status.success() {
                stop.store(true, Ordering::Relaxed);
                panic!(
                    "cycle {cycle}: rmdir failed: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    mount.log_text()
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        churn.join().unwrap()
    });
    assert!(churned > 0, "the neighbour's snapshots never changed");
    assert_eq!(virsh(&["snapshot-list", &dom.name, "--name"]).trim(), "");
    assert_eq!(dom.live_source("vda"), dom.path("vda.qcow2"));
}

/// How many mkdir/rmdir cycles run beside the churning neighbour.
fn cycles_beside_churn() -> usize {
    std::env::var("VSFS_CHURN_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}
