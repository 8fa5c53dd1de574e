//! The shell verbs on a real mount over a real libvirtd: mkdir creates, mv reverts or renames,
//! rmdir deletes (and merges). After every step the bytes of every snapshot and of the live
//! disk are compared with what they were (SHA-256 of what the mount serves, itself checked
//! against qemu-img), and the tree with virsh's.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::vm::{
    convert, expected_tree, mounted_tree, p, same_bytes, sh, sh_fails, virsh, Mount, TestDomain,
};

/// SHA-256 of every disk the mount serves for `dom`, keyed "live/vda" or "SNAPSHOT/vda".
fn disk_hashes(mount: &Mount, dom: &TestDomain) -> BTreeMap<String, String> {
    let base = mount.path(&dom.name);
    let out = sh("find", &[base.to_str().unwrap(), "-name", "*.raw"]);
    let mut map = BTreeMap::new();
    for file in out.lines() {
        let path = Path::new(file);
        let dir = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let owner = if dir == "live" {
            "live".to_string()
        } else {
            virtsnapfs::fs::names::decode(dir).unwrap()
        };
        let disk = path.file_stem().unwrap().to_str().unwrap();
        let hash = sh("sha256sum", &[file])
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        map.insert(format!("{owner}/{disk}"), hash);
    }
    map
}

/// Asserts that the hashes now equal `before` except for the keys listed as changed/removed.
fn assert_unchanged_except(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    changed: &[&str],
) {
    for (k, v) in before {
        if changed.contains(&k.as_str()) {
            continue;
        }
        assert_eq!(after.get(k), Some(v), "bytes of {k} changed");
    }
}

fn assert_tree_matches_virsh(mount: &Mount, dom: &TestDomain) {
    // The kernel may hold the old tree for one refresh interval.
    common::vm::eventually(3, "tree equals virsh's", || {
        mounted_tree(mount, dom) == expected_tree(dom)
    });
}

fn internal_snapshots_in(image: &Path) -> Vec<String> {
    let info: serde_json::Value = serde_json::from_str(&sh(
        "qemu-img",
        &["info", "-U", "--output=json", image.to_str().unwrap()],
    ))
    .unwrap();
    info["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn seed_000_internal_create_revert_delete() {
    let dom = TestDomain::new("seed000", "16M");
    dom.write("vda.qcow2", "write -P 0x10 0 1M");
    let mount = Mount::new(&[]);
    // No snapshot yet: mkdir in snapshots/.
    sh("mkdir", &[&p(&mount, &dom, "snapshots/s1")]);
    assert_eq!(dom.current().as_deref(), Some("s1"));
    assert_eq!(internal_snapshots_in(&dom.path("vda.qcow2")), ["s1"]);
    // Its directory shows the live bytes of that moment.
    let scratch = tempfile::tempdir().unwrap();
    let reference = scratch.path().join("s1.raw");
    convert(&dom.path("vda.qcow2"), Some("s1"), &reference);
    assert!(same_bytes(
        Path::new(&p(&mount, &dom, "snapshots/s1/vda.raw")),
        &reference
    ));

    dom.write("vda.qcow2", "write -P 0x20 512k 1M");
    sh("mkdir", &[&p(&mount, &dom, "current/s2")]);
    dom.write("vda.qcow2", "write -P 0x30 4M 64k");
    assert_tree_matches_virsh(&mount, &dom);
    let before = disk_hashes(&mount, &dom);
    assert_ne!(before["live/vda"], before["s1/vda"]);

    // Refusals: not the current snapshot's directory, taken name, impossible name, renaming
    // an internal snapshot, moving elsewhere.
    let err = sh_fails("mkdir", &[&p(&mount, &dom, "snapshots/s1/other")]);
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(
        mount.log_text().contains("the current snapshot is s2"),
        "{}",
        mount.log_text()
    );
    let err = sh_fails("mkdir", &[&p(&mount, &dom, "current/s2")]);
    assert!(err.contains("File exists"), "{err}");
    let err = sh_fails("mkdir", &[&p(&mount, &dom, "current/.hidden")]);
    assert!(err.contains("Invalid argument"), "{err}");
    let err = sh_fails(
        "mv",
        &[
            &p(&mount, &dom, "snapshots/s1/s2"),
            &p(&mount, &dom, "snapshots/s1/s2b"),
        ],
    );
    assert!(err.contains("Operation not permitted"), "{err}");
    let err = sh_fails(
        "mv",
        &[
            &p(&mount, &dom, "snapshots/s1/s2"),
            &p(&mount, &dom, "snapshots/s1/s2/x"),
        ],
    );
    assert!(
        err.contains("Invalid argument") || err.contains("cannot move"),
        "{err}"
    );
    assert_eq!(
        disk_hashes(&mount, &dom),
        before,
        "a refused operation changed bytes"
    );

    // mv s1 live/: revert.
    sh(
        "mv",
        &[&p(&mount, &dom, "snapshots/s1"), &p(&mount, &dom, "live/")],
    );
    assert_eq!(dom.current().as_deref(), Some("s1"));
    assert_eq!(
        sh("readlink", &[&p(&mount, &dom, "current")]).trim(),
        "snapshots/s1"
    );
    let after = disk_hashes(&mount, &dom);
    assert_eq!(
        after["live/vda"], before["s1/vda"],
        "live does not hold s1's bytes"
    );
    assert_unchanged_except(&before, &after, &["live/vda"]);
    assert_tree_matches_virsh(&mount, &dom);

    // rmdir s1: s2 moves up to the root, every other byte stays.
    let before = after;
    sh("rmdir", &[&p(&mount, &dom, "snapshots/s1")]);
    assert_tree_matches_virsh(&mount, &dom);
    assert_eq!(
        mounted_tree(&mount, &dom).into_iter().collect::<Vec<_>>(),
        ["s2"]
    );
    assert_eq!(internal_snapshots_in(&dom.path("vda.qcow2")), ["s2"]);
    let after = disk_hashes(&mount, &dom);
    assert_unchanged_except(&before, &after, &["s1/vda"]);
    assert!(!after.contains_key("s1/vda"));
}

#[test]
fn seed_003_external_take1_take2_revert_then_delete_and_commit_into_base() {
    let dom = TestDomain::new("seed003", "16M");
    dom.write("vda.qcow2", "write -P 0x01 0 2M");
    let mount = Mount::new(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/take-1")]);
    let overlay1 = dom.live_source("vda");
    assert_eq!(
        overlay1,
        dom.path("vda.take-1"),
        "overlay named as libvirt names them"
    );
    dom.write_live("write -P 0x02 1M 1M");
    sh("mkdir", &[&p(&mount, &dom, "current/take-2")]);
    let overlay2 = dom.live_source("vda");
    dom.write_live("write -P 0x03 3M 64k");
    assert_tree_matches_virsh(&mount, &dom);
    let before = disk_hashes(&mount, &dom);

    // Revert to take-1, which libvirt 9.0 refuses ("not supported yet"): done by virtsnapfs.
    sh(
        "mv",
        &[
            "-T",
            &p(&mount, &dom, "snapshots/take-1"),
            &p(&mount, &dom, "live"),
        ],
    );
    assert_eq!(dom.current().as_deref(), Some("take-1"));
    let after = disk_hashes(&mount, &dom);
    assert_eq!(after["live/vda"], before["take-1/vda"]);
    assert_unchanged_except(&before, &after, &["live/vda"]);
    assert_tree_matches_virsh(&mount, &dom);
    // The discarded live overlay of take-2 is gone; the snapshots' images stay.
    assert!(!overlay2.exists(), "{} left behind", overlay2.display());
    assert!(overlay1.exists());

    // Delete take-2 (a leaf): nothing to merge, metadata only.
    let before = after;
    sh("rmdir", &[&p(&mount, &dom, "snapshots/take-1/take-2")]);
    let after = disk_hashes(&mount, &dom);
    assert_unchanged_except(&before, &after, &["take-2/vda"]);
    assert_tree_matches_virsh(&mount, &dom);

    // Delete take-1: its image (the base) is read by its own overlay and by the live overlay
    // of the revert, so it stays; the overlay made for take-1 is read by nothing: removed.
    let before = after;
    sh("rmdir", &[&p(&mount, &dom, "snapshots/take-1")]);
    let after = disk_hashes(&mount, &dom);
    assert_unchanged_except(&before, &after, &["take-1/vda"]);
    assert_eq!(after.len(), 1);
    assert!(!overlay1.exists(), "{} left behind", overlay1.display());
    assert!(dom.path("vda.qcow2").exists());
    assert_tree_matches_virsh(&mount, &dom);
}

#[test]
fn deleting_an_external_snapshot_commits_its_overlay_back_into_the_base() {
    let dom = TestDomain::new("commit", "16M");
    dom.write("vda.qcow2", "write -P 0x01 0 2M");
    let mount = Mount::new(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/take-1")]);
    dom.write_live("write -P 0x02 1M 1M");
    sh("mkdir", &[&p(&mount, &dom, "current/take-2")]);
    let top = dom.live_source("vda");
    dom.write_live("write -P 0x03 3M 64k");
    let before = disk_hashes(&mount, &dom);

    // take-1's image (the base) is read only through take-1's overlay: the overlay is
    // committed into the base, take-2 and the live overlay now stand on the base.
    sh("rmdir", &[&p(&mount, &dom, "snapshots/take-1")]);
    let after = disk_hashes(&mount, &dom);
    assert_unchanged_except(&before, &after, &["take-1/vda"]);
    assert!(
        !dom.path("vda.take-1").exists(),
        "merged overlay left behind"
    );
    let chain = sh(
        "qemu-img",
        &["info", "-U", "--backing-chain", top.to_str().unwrap()],
    );
    assert_eq!(
        chain.matches("image:").count(),
        2,
        "chain did not shrink: {chain}"
    );
    let take2 = virsh(&["snapshot-dumpxml", &dom.name, "take-2"]);
    assert!(
        take2.contains(&format!(
            "<source file='{}'/>",
            dom.path("vda.qcow2").display()
        )),
        "{take2}"
    );
    assert_tree_matches_virsh(&mount, &dom);

    // take-2 is now the base's only reader too: deleting it commits the live overlay into the
    // base, and the domain runs on the base alone.
    let before = after;
    sh("rmdir", &[&p(&mount, &dom, "snapshots/take-2")]);
    let after = disk_hashes(&mount, &dom);
    assert_unchanged_except(&before, &after, &["take-2/vda"]);
    assert_eq!(dom.live_source("vda"), dom.path("vda.qcow2"));
    assert!(!top.exists());
    let scratch = tempfile::tempdir().unwrap();
    let reference = scratch.path().join("live.raw");
    convert(&dom.path("vda.qcow2"), None, &reference);
    assert!(same_bytes(
        Path::new(&p(&mount, &dom, "live/vda.raw")),
        &reference
    ));
}

#[test]
fn raw_base_gets_external_snapshots_and_merges_back() {
    let dom = TestDomain::new("raw", "8M");
    let raw = dom.path("vda.raw");
    sh(
        "qemu-img",
        &["create", "-q", "-f", "raw", raw.to_str().unwrap(), "8M"],
    );
    sh(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x05 0 1M",
            raw.to_str().unwrap(),
        ],
    );
    dom.define(&[("vda", "raw", &raw)]);
    let mount = Mount::new(&[]);
    // Not qcow2: the automatic kind is external.
    sh("mkdir", &[&p(&mount, &dom, "snapshots/before")]);
    let snap = virsh(&["snapshot-dumpxml", &dom.name, "before"]);
    assert!(snap.contains("snapshot='external'"), "{snap}");
    let overlay = dom.live_source("vda");
    dom.write_live("write -P 0x06 512k 64k");
    let before = disk_hashes(&mount, &dom);
    sh("rmdir", &[&p(&mount, &dom, "snapshots/before")]);
    let after = disk_hashes(&mount, &dom);
    assert_eq!(after["live/vda"], before["live/vda"]);
    assert_eq!(dom.live_source("vda"), raw);
    assert!(!overlay.exists());
}

#[test]
fn mixed_tree_revert_that_would_lose_data_is_refused() {
    let dom = TestDomain::new("mixed", "8M");
    dom.write("vda.qcow2", "write -P 0x01 0 1M");
    let internal = Mount::new(&[]);
    sh("mkdir", &[&p(&internal, &dom, "snapshots/int1")]);
    drop(internal);
    dom.write("vda.qcow2", "write -P 0x02 0 1M");
    let mount = Mount::new(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "current/ext1")]);
    let before = disk_hashes(&mount, &dom);
    // ext1's bytes are vda.qcow2's current state; reverting int1 in place would rewrite it.
    let err = sh_fails(
        "mv",
        &[
            &p(&mount, &dom, "snapshots/int1"),
            &p(&mount, &dom, "live/"),
        ],
    );
    assert!(err.contains("Device or resource busy"), "{err}");
    assert!(
        mount.log_text().contains("still needs"),
        "{}",
        mount.log_text()
    );
    assert_eq!(disk_hashes(&mount, &dom), before);
    assert_eq!(dom.current().as_deref(), Some("ext1"));
    // Reverting to the external one is fine, and then deleting it makes int1 revertible.
    sh(
        "mv",
        &[
            &p(&mount, &dom, "snapshots/int1/ext1"),
            &p(&mount, &dom, "live/"),
        ],
    );
    sh("rmdir", &[&p(&mount, &dom, "snapshots/int1/ext1")]);
    sh(
        "mv",
        &[
            &p(&mount, &dom, "snapshots/int1"),
            &p(&mount, &dom, "live/"),
        ],
    );
    let after = disk_hashes(&mount, &dom);
    assert_eq!(after["live/vda"], before["int1/vda"]);
    assert_eq!(after["int1/vda"], before["int1/vda"]);
}

#[test]
fn renaming_an_external_snapshot_keeps_children_current_and_bytes() {
    let dom = TestDomain::new("rename", "4M");
    let mount = Mount::new(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/a")]);
    sh("mkdir", &[&p(&mount, &dom, "current/b")]);
    sh(
        "mv",
        &[
            "-T",
            &p(&mount, &dom, "snapshots/a/b"),
            &p(&mount, &dom, "live"),
        ],
    );
    let before = disk_hashes(&mount, &dom);
    sh(
        "mv",
        &[
            &p(&mount, &dom, "snapshots/a"),
            &p(&mount, &dom, "snapshots/renamed"),
        ],
    );
    assert_tree_matches_virsh(&mount, &dom);
    assert_eq!(
        mounted_tree(&mount, &dom).into_iter().collect::<Vec<_>>(),
        ["renamed", "renamed/b"]
    );
    assert_eq!(dom.current().as_deref(), Some("b"));
    let after = disk_hashes(&mount, &dom);
    assert_eq!(after["renamed/vda"], before["a/vda"]);
    assert_eq!(after["b/vda"], before["b/vda"]);
    // The current snapshot itself can be renamed, and stays current. (`mv current X` would
    // move the symlink, which is refused.)
    sh(
        "mv",
        &[
            &p(&mount, &dom, "snapshots/renamed/b"),
            &p(&mount, &dom, "snapshots/renamed/c"),
        ],
    );
    assert_eq!(dom.current().as_deref(), Some("c"));
    let err = sh_fails(
        "mv",
        &[&p(&mount, &dom, "current"), &p(&mount, &dom, "snapshots/x")],
    );
    assert!(err.contains("Operation not permitted"), "{err}");
    // Renaming onto a sibling's name: EEXIST, nothing changed.
    sh("mkdir", &[&p(&mount, &dom, "current/d")]);
    sh(
        "mv",
        &[
            &p(&mount, &dom, "snapshots/renamed/c"),
            &p(&mount, &dom, "live/"),
        ],
    );
    sh("mkdir", &[&p(&mount, &dom, "current/e")]);
    let before = disk_hashes(&mount, &dom);
    let err = sh_fails(
        "mv",
        &[
            "-T",
            &p(&mount, &dom, "snapshots/renamed/c/d"),
            &p(&mount, &dom, "snapshots/renamed/c/e"),
        ],
    );
    assert!(err.contains("File exists"), "{err}");
    assert_eq!(disk_hashes(&mount, &dom), before);
    assert_tree_matches_virsh(&mount, &dom);
}

#[test]
fn rm_r_removes_a_subtree_children_first() {
    let dom = TestDomain::new("rmr", "4M");
    let mount = Mount::new(&[]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/a")]);
    sh("mkdir", &[&p(&mount, &dom, "current/b")]);
    sh("mkdir", &[&p(&mount, &dom, "current/c")]);
    sh(
        "mv",
        &[&p(&mount, &dom, "snapshots/a"), &p(&mount, &dom, "live/")],
    );
    sh("mkdir", &[&p(&mount, &dom, "current/d")]);
    // a has children b (with child c) and d; rm -r a/b removes c, then b.
    sh("rm", &["-r", &p(&mount, &dom, "snapshots/a/b")]);
    assert_tree_matches_virsh(&mount, &dom);
    let tree: Vec<String> = mounted_tree(&mount, &dom).into_iter().collect();
    assert_eq!(tree, ["a", "a/d"]);
    assert_eq!(internal_snapshots_in(&dom.path("vda.qcow2")), ["a", "d"]);
}

#[test]
fn running_domain_checkpoint_and_disk_only_snapshots() {
    let dom = TestDomain::new("live-ops", "32M");
    virsh(&["start", &dom.name]);
    dom.write_running("write -P 0x41 0 1M");
    dom.write_running("flush");
    let mount = Mount::new(&[]);
    // A running domain with qcow2 disks gets a full checkpoint (disk and RAM).
    sh("mkdir", &[&p(&mount, &dom, "snapshots/check")]);
    let xml = virsh(&["snapshot-dumpxml", &dom.name, "check"]);
    assert!(
        xml.contains("<state>running</state>") && xml.contains("snapshot='internal'"),
        "{xml}"
    );
    dom.write_running("write -P 0x42 0 1M");
    dom.write_running("flush");
    // Reverting to it brings the domain back running, with the checkpoint's disk.
    sh(
        "mv",
        &[
            &p(&mount, &dom, "snapshots/check"),
            &p(&mount, &dom, "live/"),
        ],
    );
    assert_eq!(virsh(&["domstate", &dom.name]).trim(), "running");
    let hashes = disk_hashes(&mount, &dom);
    assert_eq!(hashes["live/vda"], hashes["check/vda"]);
    drop(mount);

    // Disk-only snapshot of the running domain, then a revert to it: refused while running
    // (EBUSY, saying how to proceed), allowed with allow_stop.
    let mount = Mount::new(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "current/disk-only")]);
    dom.write_running("write -P 0x43 2M 64k");
    dom.write_running("flush");
    let err = sh_fails(
        "mv",
        &[
            &p(&mount, &dom, "snapshots/check/disk-only"),
            &p(&mount, &dom, "live/"),
        ],
    );
    assert!(err.contains("Device or resource busy"), "{err}");
    assert!(
        mount.log_text().contains("allow_stop"),
        "{}",
        mount.log_text()
    );
    drop(mount);
    let mount = Mount::new(&["allow_stop"]);
    let before = disk_hashes(&mount, &dom);
    sh(
        "mv",
        &[
            &p(&mount, &dom, "snapshots/check/disk-only"),
            &p(&mount, &dom, "live/"),
        ],
    );
    assert_eq!(virsh(&["domstate", &dom.name]).trim(), "shut off");
    let after = disk_hashes(&mount, &dom);
    assert_eq!(after["live/vda"], before["disk-only/vda"]);
    assert_unchanged_except(&before, &after, &["live/vda"]);
}

#[test]
fn live_merges_on_a_running_domain_active_and_intermediate() {
    let dom = TestDomain::new("live-merge", "32M");
    virsh(&["start", &dom.name]);
    dom.write_running("write -P 0x51 0 2M");
    dom.write_running("flush");
    let mount = Mount::new(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/take-1")]);
    dom.write_running("write -P 0x52 1M 2M");
    dom.write_running("flush");
    sh("mkdir", &[&p(&mount, &dom, "current/take-2")]);
    dom.write_running("write -P 0x53 4M 64k");
    dom.write_running("flush");
    let top = dom.live_source("vda");
    let before = disk_hashes(&mount, &dom);

    // take-1's overlay sits in the middle of the running chain: a block commit of it into
    // the base, QEMU re-points the top, take-2 is redefined onto the base.
    sh("rmdir", &[&p(&mount, &dom, "snapshots/take-1")]);
    assert_eq!(virsh(&["domstate", &dom.name]).trim(), "running");
    assert!(!dom.path("vda.take-1").exists());
    let after = disk_hashes(&mount, &dom);
    assert_unchanged_except(&before, &after, &["take-1/vda"]);
    assert_tree_matches_virsh(&mount, &dom);

    // take-2's overlay is the running domain's active layer: active commit, then pivot.
    let before = after;
    sh("rmdir", &[&p(&mount, &dom, "snapshots/take-2")]);
    assert_eq!(virsh(&["domstate", &dom.name]).trim(), "running");
    assert_eq!(dom.live_source("vda"), dom.path("vda.qcow2"));
    assert!(!top.exists(), "{} left behind", top.display());
    let after = disk_hashes(&mount, &dom);
    assert_eq!(after["live/vda"], before["live/vda"]);
    // The persistent definition follows too: after a restart the domain still uses the base.
    virsh(&["destroy", &dom.name]);
    assert_eq!(dom.live_source("vda"), dom.path("vda.qcow2"));
    assert_eq!(
        std::fs::read_to_string(mount.path(&format!("{}/status", dom.name))).unwrap(),
        "idle\n"
    );
}

#[test]
fn a_live_merge_that_does_not_converge_is_cancelled_and_changes_nothing() {
    let dom = TestDomain::new("no-converge", "64M");
    virsh(&["start", &dom.name]);
    let state = tempfile::tempdir().unwrap();
    let state_opt = format!("state_dir={}", state.path().display());
    let mount = Mount::new(&[
        "snapshot_kind=external",
        "merge_bandwidth=1",
        "merge_timeout=2",
        &state_opt,
    ]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/s")]);
    dom.write_running("write -P 0x61 0 32M");
    dom.write_running("flush");
    let overlay = dom.live_source("vda");
    let before = disk_hashes(&mount, &dom);
    let rmdir = {
        let path = p(&mount, &dom, "snapshots/s");
        std::thread::spawn(move || {
            std::process::Command::new("rmdir")
                .arg(path)
                .output()
                .unwrap()
        })
    };
    // While it runs, DOMAIN/status says what it does.
    let status_path = mount.path(&format!("{}/status", dom.name));
    common::vm::eventually(10, "status shows the merge", || {
        std::fs::read_to_string(&status_path)
            .unwrap_or_default()
            .contains("merging")
    });
    let out = rmdir.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Device or resource busy"), "{err}");
    assert!(
        mount.log_text().contains("made no progress"),
        "{}",
        mount.log_text()
    );
    assert_eq!(dom.live_source("vda"), overlay);
    assert_eq!(dom.current().as_deref(), Some("s"));
    assert_eq!(disk_hashes(&mount, &dom), before);
    let journal: Vec<_> = std::fs::read_dir(state.path().join("journal"))
        .unwrap()
        .collect();
    assert!(
        journal.is_empty(),
        "a cancelled merge left an intent record"
    );
    assert_eq!(std::fs::read_to_string(&status_path).unwrap(), "idle\n");
}

/// The chain of image paths of `dom`'s live vda, top first, as qemu-img sees it.
fn live_chain(dom: &TestDomain) -> Vec<String> {
    let top = dom.live_source("vda");
    let info: serde_json::Value = serde_json::from_str(&sh(
        "qemu-img",
        &[
            "info",
            "-U",
            "--backing-chain",
            "--output=json",
            top.to_str().unwrap(),
        ],
    ))
    .unwrap();
    info.as_array()
        .unwrap()
        .iter()
        .map(|l| l["filename"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn seed_004_running_chain_base_snap1_snap2_active_loses_one_image() {
    let dom = TestDomain::new("seed004", "32M");
    virsh(&["start", &dom.name]);
    let mount = Mount::new(&["snapshot_kind=external"]);
    for (i, name) in ["snap1", "snap2", "snap3"].iter().enumerate() {
        dom.write_running(&format!("write -P {} {}M 1M", 0x71 + i, i));
        dom.write_running("flush");
        let at = if i == 0 { "snapshots" } else { "current" };
        sh("mkdir", &[&p(&mount, &dom, &format!("{at}/{name}"))]);
    }
    dom.write_running("write -P 0x7f 5M 1M");
    dom.write_running("flush");
    // base <- snap1 <- snap2 <- active, as in the seed.
    assert_eq!(live_chain(&dom).len(), 4);
    let before = disk_hashes(&mount, &dom);
    // The seed pulls snap2 into the active image and forgets the snapshot whose disk was
    // snap2: here that is rmdir of snap3, after which the chain is one image shorter.
    sh("rmdir", &[&p(&mount, &dom, "snapshots/snap1/snap2/snap3")]);
    let after = disk_hashes(&mount, &dom);
    assert_unchanged_except(&before, &after, &["snap3/vda"]);
    assert_eq!(live_chain(&dom).len(), 3, "{:?}", live_chain(&dom));
    assert_eq!(virsh(&["domstate", &dom.name]).trim(), "running");
    assert_tree_matches_virsh(&mount, &dom);
    // With a base: removing snap2 merges the middle of the chain, the guest still running.
    let before = after;
    sh("rmdir", &[&p(&mount, &dom, "snapshots/snap1/snap2")]);
    let after = disk_hashes(&mount, &dom);
    assert_unchanged_except(&before, &after, &["snap2/vda"]);
    assert_eq!(live_chain(&dom).len(), 2, "{:?}", live_chain(&dom));
    assert_tree_matches_virsh(&mount, &dom);
}

#[test]
fn a_domain_whose_disk_is_missing_does_not_block_other_domains_operations() {
    let broken = TestDomain::new("gone-disk", "1M");
    std::fs::remove_file(broken.path("vda.qcow2")).unwrap();
    let dom = TestDomain::new("unblocked", "4M");
    let mount = Mount::new(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/a")]);
    dom.write_live("write -P 0x11 0 64k");
    let before = disk_hashes(&mount, &dom);
    // Deleting a merges images; the scan meets the broken domain, which reads nothing.
    sh("rmdir", &[&p(&mount, &dom, "snapshots/a")]);
    assert_eq!(disk_hashes(&mount, &dom)["live/vda"], before["live/vda"]);
    assert!(!dom.path("vda.a").exists());
}

#[test]
fn a_snapshot_made_again_under_the_same_name_never_shows_the_old_bytes() {
    let dom = TestDomain::new("same-name", "4M");
    dom.write("vda.qcow2", "write -P 0x21 0 1M");
    let mount = Mount::new(&[]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/a")]);
    let disk = p(&mount, &dom, "snapshots/a/vda.raw");
    let old = std::fs::read(&disk).unwrap();
    assert!(old[..1 << 20].iter().all(|&b| b == 0x21));
    sh("rmdir", &[&p(&mount, &dom, "snapshots/a")]);
    dom.write("vda.qcow2", "write -P 0x22 0 1M");
    sh("mkdir", &[&p(&mount, &dom, "snapshots/a")]);
    let new = std::fs::read(&disk).unwrap();
    assert!(
        new[..1 << 20].iter().all(|&b| b == 0x22),
        "stale bytes of the old snapshot"
    );
    // The same for the live disk across a revert of a shut-off domain.
    let live = p(&mount, &dom, "live/vda.raw");
    dom.write("vda.qcow2", "write -P 0x23 0 1M");
    let before_revert = std::fs::read(&live).unwrap();
    assert!(before_revert[..1 << 20].iter().all(|&b| b == 0x23));
    sh(
        "mv",
        &[&p(&mount, &dom, "snapshots/a"), &p(&mount, &dom, "live/")],
    );
    let after_revert = std::fs::read(&live).unwrap();
    assert!(
        after_revert[..1 << 20].iter().all(|&b| b == 0x22),
        "stale live bytes after revert"
    );
}
