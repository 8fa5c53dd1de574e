//! Crash safety: each multi-step operation is cut short at each of its steps (the daemon
//! aborts there, as `kill -9` would), then a new daemon mounts and recovers from the intent
//! record. Afterwards nothing is lost: every snapshot and the live disk hold the bytes they
//! should, libvirt's tree equals the mount's, no image is left that nothing reads, and the
//! journal is empty.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::vm::{eventually, expected_tree, mounted_tree, p, sh, Mount, TestDomain, URI};
use virtsnapfs::backend::Backend;

/// SHA-256 of every disk of `dom`, read with the library (not through a mount), keyed
/// "live" or the snapshot's name.
fn hashes(dom: &TestDomain) -> BTreeMap<String, String> {
    let backend = virtsnapfs::libvirt::LibvirtBackend::connect(Some(URI.into())).unwrap();
    let model = backend.load_domain(&dom.name).unwrap().unwrap();
    let cache = Arc::new(virtsnapfs::cache::MetadataCache::new(8 << 20));
    let mut out = BTreeMap::new();
    let mut add = |key: String, spec: &virtsnapfs::image::ChainSpec| {
        let chain = virtsnapfs::image::open_chain(spec, cache.clone()).unwrap();
        let bytes = common::read_all(&chain, 1 << 20);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bytes).unwrap();
        let sum = sh("sha256sum", &[file.path().to_str().unwrap()]);
        out.insert(key, sum.split_whitespace().next().unwrap().to_string());
    };
    for d in &model.disks {
        add("live".into(), &d.chain);
    }
    for s in &model.snapshots {
        for d in &s.disks {
            add(s.name.clone(), &d.chain);
        }
    }
    out
}

/// Images in the domain's directory that no chain of the domain reads.
fn unused_images(dom: &TestDomain) -> Vec<PathBuf> {
    let backend = virtsnapfs::libvirt::LibvirtBackend::connect(Some(URI.into())).unwrap();
    let model = Arc::new(backend.load_domain(&dom.name).unwrap().unwrap());
    let cache = Arc::new(virtsnapfs::cache::MetadataCache::new(8 << 20));
    let mut layers =
        |spec: &virtsnapfs::image::ChainSpec| virtsnapfs::ops::scan::chain_layers(spec, &cache);
    let chains = virtsnapfs::ops::scan::domain_chains(&model, &mut layers).unwrap();
    let used: BTreeSet<PathBuf> = chains.iter().flat_map(|c| c.layers.clone()).collect();
    std::fs::read_dir(&dom.dir)
        .unwrap()
        .map(|e| virtsnapfs::ops::images::canonical(&e.unwrap().path()))
        .filter(|p| p.file_name().unwrap() != "domain.xml" && !used.contains(p))
        .collect()
}

/// Runs `op` on a mount that aborts at `step`, then mounts again (recovering) and returns
/// the new mount.
fn crash_then_recover(
    dom: &TestDomain,
    state: &Path,
    options: &[&str],
    step: &str,
    op: impl FnOnce(&Mount),
) -> Mount {
    let state_opt = format!("state_dir={}", state.display());
    let mut opts = vec![state_opt.as_str()];
    opts.extend_from_slice(options);
    let mut crashing = Mount::with_env(&opts, &[("VIRTSNAPFS_CRASH_AT", step)]);
    op(&crashing);
    let status = crashing.wait_exit();
    assert!(
        !status.success(),
        "{step}: the daemon did not abort: {}",
        crashing.log_text()
    );
    assert!(
        crashing
            .log_text()
            .contains(&format!("VIRTSNAPFS_CRASH_AT={step}")),
        "{step}: {}",
        crashing.log_text()
    );
    drop(crashing);
    let mount = Mount::new(&opts);
    assert!(
        mount
            .log_text()
            .contains("recovered an unfinished operation"),
        "{step}: {}",
        mount.log_text()
    );
    let journal: Vec<_> = std::fs::read_dir(state.join("journal")).unwrap().collect();
    assert!(
        journal.is_empty(),
        "{step}: intent records left: {journal:?}"
    );
    eventually(3, "tree equals virsh's", || {
        mounted_tree(&mount, dom) == expected_tree(dom)
    });
    assert_eq!(
        unused_images(dom),
        Vec::<PathBuf>::new(),
        "{step}: images nothing reads"
    );
    mount
}

/// A domain with external snapshots take-1 > take-2, current take-2, distinct data in each.
fn two_external(label: &str) -> TestDomain {
    let dom = TestDomain::new(label, "8M");
    dom.write("vda.qcow2", "write -P 0x01 0 1M");
    let mount = Mount::new(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/take-1")]);
    dom.write_live("write -P 0x02 512k 1M");
    sh("mkdir", &[&p(&mount, &dom, "current/take-2")]);
    dom.write_live("write -P 0x03 2M 64k");
    dom
}

#[test]
fn external_revert_killed_at_each_step() {
    for (step, finished) in [
        ("revert-external:recorded", false),
        ("revert-external:overlay-created", false),
        ("revert-external:domain-defined", true),
        ("revert-external:snapshot-current", true),
    ] {
        let dom = two_external("crash-revert");
        let state = tempfile::tempdir().unwrap();
        let before = hashes(&dom);
        let _mount = crash_then_recover(&dom, state.path(), &[], step, |m| {
            let _ = std::process::Command::new("mv")
                .args([&p(m, &dom, "snapshots/take-1"), &p(m, &dom, "live/")])
                .output();
        });
        let after = hashes(&dom);
        assert_eq!(after["take-1"], before["take-1"], "{step}");
        assert_eq!(after["take-2"], before["take-2"], "{step}");
        if finished {
            assert_eq!(
                after["live"], before["take-1"],
                "{step}: revert not finished"
            );
            assert_eq!(dom.current().as_deref(), Some("take-1"), "{step}");
        } else {
            assert_eq!(after["live"], before["live"], "{step}: revert not undone");
            assert_eq!(dom.current().as_deref(), Some("take-2"), "{step}");
        }
    }
}

#[test]
fn external_delete_with_merge_killed_at_each_step() {
    for step in [
        "delete-external:recorded",
        "delete-external:committed",
        "delete-external:rebased",
        "delete-external:merged",
        "delete-external:metadata-deleted",
    ] {
        let dom = two_external("crash-delete");
        let state = tempfile::tempdir().unwrap();
        let before = hashes(&dom);
        // take-1's image is read only through take-1's overlay: deleting merges them.
        let _mount = crash_then_recover(&dom, state.path(), &[], step, |m| {
            let _ = std::process::Command::new("rmdir")
                .arg(p(m, &dom, "snapshots/take-1"))
                .output();
        });
        let after = hashes(&dom);
        assert!(!after.contains_key("take-1"), "{step}: take-1 still there");
        assert_eq!(after["take-2"], before["take-2"], "{step}");
        assert_eq!(after["live"], before["live"], "{step}");
        assert!(
            !dom.path("vda.take-1").exists(),
            "{step}: merged overlay left"
        );
    }
}

#[test]
fn rename_killed_at_each_step() {
    for step in [
        "rename:recorded",
        "rename:new-defined",
        "rename:children-moved",
        "rename:old-deleted",
    ] {
        let dom = two_external("crash-rename");
        let state = tempfile::tempdir().unwrap();
        let before = hashes(&dom);
        let _mount = crash_then_recover(&dom, state.path(), &[], step, |m| {
            let _ = std::process::Command::new("mv")
                .args([
                    &p(m, &dom, "snapshots/take-1"),
                    &p(m, &dom, "snapshots/first"),
                ])
                .output();
        });
        let after = hashes(&dom);
        assert_eq!(after.get("first"), Some(&before["take-1"]), "{step}");
        assert!(!after.contains_key("take-1"), "{step}");
        assert_eq!(after["take-2"], before["take-2"], "{step}");
        let parents = dom.snapshot_parents();
        assert!(
            parents.contains(&("take-2".to_string(), Some("first".to_string()))),
            "{step}: {parents:?}"
        );
        assert_eq!(dom.current().as_deref(), Some("take-2"), "{step}");
    }
}
