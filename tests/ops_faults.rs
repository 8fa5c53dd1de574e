//! Faults and concurrent readers.
//!
//! - libvirtd killed (`kill -9`) at named steps of a create, an internal and an external
//!   revert, an offline merge and a live block commit, then started again: the daemon stops at
//!   the step (`VIRTSNAPFS_PAUSE_AT`, see `ops::journal::pause_point`), libvirtd is killed, and
//!   the operation goes on either with libvirtd still dead or after it is back. Then a new
//!   mount recovers: the operation is finished or undone, every disk keeps its exact bytes (what
//!   the mount serves and what `qemu-img convert` reads agree), the tree equals virsh's, no
//!   intent record and no image that nothing reads is left.
//! - The daemon itself killed in the middle of a live block commit.
//! - Readers of snapshots' disks (several threads, random reads and whole-file passes, one
//!   handle held open throughout) while another snapshot of the domain is deleted and merged,
//!   offline and live: every read is the snapshot's bytes as `qemu-img convert` read them
//!   beforehand, or EIO.
//!
//! Restarts the host's libvirtd, so it lives in its own test binary, and its tests take a lock
//! so that only one of them runs at a time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::vm::{
    convert, eventually, expected_tree, mounted_tree, p, same_bytes, sh, virsh, Mount, TestDomain,
    URI,
};
use virtsnapfs::backend::Backend;

/// One test of this binary at a time: they kill libvirtd.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// libvirtd

/// The running (not zombie) libvirtd's process id.
fn libvirtd_pid() -> Option<String> {
    let out = Command::new("pgrep")
        .args(["-x", "libvirtd"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|pid| !is_gone(pid))
        .map(str::to_string)
}

/// Whether process `pid` has exited (gone, or a zombie not reaped yet).
fn is_gone(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'))
    })
}

fn libvirtd_answers() -> bool {
    Command::new("virsh")
        .args(["-q", "-c", URI, "version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts libvirtd and waits until it answers; `down_since`: when it was killed.
fn start_libvirtd(down_since: Instant) {
    if libvirtd_pid().is_none() {
        sh("libvirtd", &["-d"]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !libvirtd_answers() {
        assert!(Instant::now() < deadline, "libvirtd does not answer again");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "  libvirtd was down for {:.2} s",
        down_since.elapsed().as_secs_f64()
    );
}

/// Kills libvirtd with SIGKILL and waits until it is gone; returns when.
fn kill_libvirtd() -> Instant {
    let pid = libvirtd_pid().expect("libvirtd is not running");
    sh("kill", &["-9", &pid]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_gone(&pid) {
        assert!(Instant::now() < deadline, "libvirtd {pid} survived kill -9");
        std::thread::sleep(Duration::from_millis(10));
    }
    Instant::now()
}

/// Starts libvirtd again if a test failed while it was down, so that no other test on the
/// host is left without it.
struct LibvirtdGuard;

impl Drop for LibvirtdGuard {
    fn drop(&mut self) {
        if libvirtd_pid().is_none() {
            let _ = Command::new("libvirtd").arg("-d").status();
            for _ in 0..300 {
                if libvirtd_answers() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pausing the daemon at a step

struct Pause {
    dir: tempfile::TempDir,
}

impl Pause {
    fn new() -> Pause {
        Pause {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn env(&self, step: &str) -> Vec<(&'static str, String)> {
        vec![
            ("VIRTSNAPFS_PAUSE_AT", step.to_string()),
            (
                "VIRTSNAPFS_PAUSE_DIR",
                self.dir.path().to_str().unwrap().to_string(),
            ),
        ]
    }

    fn wait(&self, mount: &Mount, step: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.dir.path().join("paused").exists() {
            assert!(
                Instant::now() < deadline,
                "the daemon never reached {step}: {}",
                mount.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn resume(&self) {
        std::fs::write(self.dir.path().join("resume"), "").unwrap();
    }
}

/// Runs a command in a thread; its output arrives on the receiver.
fn spawn_verb(args: Vec<String>) -> std::sync::mpsc::Receiver<Output> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = Command::new(&args[0]).args(&args[1..]).output().unwrap();
        let _ = tx.send(out);
    });
    rx
}

fn wait_verb(rx: &std::sync::mpsc::Receiver<Output>, what: &str) -> Output {
    rx.recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("{what}: the command did not return"))
}

/// When libvirtd comes back relative to the paused operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// The operation goes on with libvirtd dead (its libvirt calls fail); libvirtd is started
    /// again once the command has returned.
    AfterTheCommand,
    /// libvirtd is started again before the operation goes on (it finds its connection gone).
    BeforeResuming,
}

// ---------------------------------------------------------------------------------------------
// What must hold afterwards

fn sha256(path: &Path) -> String {
    sh("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// SHA-256 of every disk of `dom` as the mount serves it, keyed "live" or the snapshot's name,
/// each asserted equal to SHA-256 of `qemu-img convert` of the image libvirt names for it
/// (the live disk from `virsh domblklist`, snapshots from their XML).
fn checked_hashes(mount: &Mount, dom: &TestDomain, what: &str) -> BTreeMap<String, String> {
    let backend = virtsnapfs::libvirt::LibvirtBackend::connect(Some(URI.into())).unwrap();
    let model = backend.load_domain(&dom.name).unwrap().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut oracle = BTreeMap::new();
    let out = scratch.path().join("live.raw");
    convert(&dom.live_source("vda"), None, &out);
    oracle.insert("live".to_string(), sha256(&out));
    std::fs::remove_file(&out).unwrap();
    for s in &model.snapshots {
        for d in &s.disks {
            let out = scratch.path().join("snap.raw");
            convert(&d.chain.top.path, d.chain.snapshot.as_deref(), &out);
            oracle.insert(s.name.clone(), sha256(&out));
            std::fs::remove_file(&out).unwrap();
        }
    }
    let base = mount.path(&dom.name);
    let listing = sh("find", &[base.to_str().unwrap(), "-name", "vda.raw"]);
    let mut served = BTreeMap::new();
    for file in listing.lines() {
        let dir = Path::new(file).parent().unwrap();
        let dir = dir.file_name().unwrap().to_str().unwrap();
        let key = if dir == "live" {
            "live".to_string()
        } else {
            virtsnapfs::fs::names::decode(dir).unwrap()
        };
        served.insert(key, sha256(Path::new(file)));
    }
    assert_eq!(served, oracle, "{what}: the mount and qemu-img disagree");
    served
}

/// A mount with its own state directory (never recovering another test's intent records).
fn own_mount(options: &[&str]) -> Mount {
    let state = std::env::temp_dir().join(format!("vsfs-faults-state-{}", std::process::id()));
    let state_opt = format!("state_dir={}", state.display());
    let mut opts = vec![state_opt.as_str()];
    opts.extend_from_slice(options);
    Mount::new(&opts)
}

/// [`checked_hashes`] on a mount of its own.
fn hashes_now(dom: &TestDomain) -> BTreeMap<String, String> {
    let mount = own_mount(&[]);
    checked_hashes(&mount, dom, "before")
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

/// Internal snapshots the image holds (`qemu-img snapshot -l`).
fn internal_snapshots(image: &Path) -> Vec<String> {
    let info: serde_json::Value = serde_json::from_str(&sh(
        "qemu-img",
        &["info", "-U", "--output=json", image.to_str().unwrap()],
    ))
    .unwrap();
    let mut names: Vec<String> = info["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// After the new mount's recovery: no intent record, the tree equals virsh's (and `current`
/// names virsh's current snapshot), no image that nothing reads.
fn assert_consistent(mount: &Mount, dom: &TestDomain, state: &Path, what: &str) {
    let journal: Vec<_> = std::fs::read_dir(state.join("journal"))
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(
        journal.is_empty(),
        "{what}: intent records left: {journal:?}"
    );
    eventually(5, "tree equals virsh's", || {
        mounted_tree(mount, dom) == expected_tree(dom)
    });
    let link = std::fs::read_link(mount.path(&format!("{}/current", dom.name)))
        .ok()
        .map(|l| virtsnapfs::fs::names::decode(l.file_name().unwrap().to_str().unwrap()).unwrap());
    assert_eq!(link, dom.current(), "{what}: current");
    assert_eq!(
        unused_images(dom),
        Vec::<PathBuf>::new(),
        "{what}: images nothing reads"
    );
}

/// Mounts with the daemon set to pause at `step`, runs the command `verb` gives, kills libvirtd
/// at the pause, starts it again as `restart` says, then mounts again (the new daemon recovers)
/// and checks what must hold whatever the outcome. Returns the command's output and the new
/// mount.
fn kill_libvirtd_at(
    dom: &TestDomain,
    state: &Path,
    options: &[&str],
    step: &str,
    restart: Restart,
    verb: impl FnOnce(&Mount) -> Vec<String>,
) -> (Output, Mount) {
    let what = format!("{step} ({restart:?})");
    eprintln!("{}: {what}", dom.name);
    let _guard = LibvirtdGuard;
    let state_opt = format!("state_dir={}", state.display());
    let mut opts = vec![state_opt.as_str()];
    opts.extend_from_slice(options);
    let pause = Pause::new();
    let env = pause.env(step);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let paused = Mount::with_env(&opts, &env);
    let rx = spawn_verb(verb(&paused));
    pause.wait(&paused, step);
    let down = kill_libvirtd();
    let out = match restart {
        Restart::BeforeResuming => {
            start_libvirtd(down);
            pause.resume();
            wait_verb(&rx, &what)
        }
        Restart::AfterTheCommand => {
            pause.resume();
            let out = wait_verb(&rx, &what);
            start_libvirtd(down);
            out
        }
    };
    eprintln!(
        "  the command {}: {}",
        if out.status.success() {
            "succeeded"
        } else {
            "failed"
        },
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let left = std::fs::read_dir(state.join("journal"))
        .map(|d| d.count())
        .unwrap_or(0);
    drop(paused);
    let mount = Mount::new(&opts);
    eprintln!(
        "  intent records left for the next mount: {left}; it {}",
        if mount
            .log_text()
            .contains("recovered an unfinished operation")
        {
            "recovered"
        } else {
            "had nothing to recover"
        }
    );
    assert_consistent(&mount, dom, state, &what);
    (out, mount)
}

/// A shut-off domain with external snapshots take-1 > take-2, current take-2, distinct data in
/// each and in the live disk.
fn two_external(label: &str) -> TestDomain {
    let dom = TestDomain::new(label, "8M");
    dom.write("vda.qcow2", "write -P 0x01 0 1M");
    let mount = own_mount(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/take-1")]);
    dom.write_live("write -P 0x02 512k 1M");
    sh("mkdir", &[&p(&mount, &dom, "current/take-2")]);
    dom.write_live("write -P 0x03 2M 64k");
    dom
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const BOTH: [Restart; 2] = [Restart::AfterTheCommand, Restart::BeforeResuming];

// ---------------------------------------------------------------------------------------------
// libvirtd killed mid-operation

#[test]
fn libvirtd_killed_during_an_internal_create_and_revert() {
    let _serial = serial();
    for restart in BOTH {
        let dom = TestDomain::new("fault-internal", "8M");
        dom.write("vda.qcow2", "write -P 0x11 0 1M");
        dom.snapshot("s1", &[]);
        dom.write("vda.qcow2", "write -P 0x12 512k 1M");
        let state = tempfile::tempdir().unwrap();
        let before = hashes_now(&dom);

        let (out, mount) = kill_libvirtd_at(
            &dom,
            state.path(),
            &[],
            "create:calling-libvirt",
            restart,
            |m| args(&["mkdir", &p(m, &dom, "current/s2")]),
        );
        let after = checked_hashes(&mount, &dom, "create");
        let names = internal_snapshots(&dom.path("vda.qcow2"));
        if out.status.success() || dom.current().as_deref() == Some("s2") {
            assert_eq!(names, ["s1", "s2"], "{restart:?}");
            assert_eq!(after["s2"], before["live"], "{restart:?}");
        } else {
            // Undone: no snapshot s2 anywhere, not even in the image.
            assert_eq!(
                names,
                ["s1"],
                "{restart:?}: the image holds a snapshot libvirt lacks"
            );
            assert_eq!(dom.current().as_deref(), Some("s1"));
        }
        assert_eq!(after["s1"], before["s1"], "{restart:?}");
        assert_eq!(after["live"], before["live"], "{restart:?}");
        drop(mount);

        let before = hashes_now(&dom);
        let (out, mount) = kill_libvirtd_at(
            &dom,
            state.path(),
            &[],
            "revert-internal:calling-libvirt",
            restart,
            |m| args(&["mv", &p(m, &dom, "snapshots/s1"), &p(m, &dom, "live/")]),
        );
        let after = checked_hashes(&mount, &dom, "revert");
        for (k, v) in &before {
            if k != "live" {
                assert_eq!(after.get(k), Some(v), "{restart:?}: {k}");
            }
        }
        if out.status.success() || after["live"] == before["s1"] {
            assert_eq!(after["live"], before["s1"], "{restart:?}");
            assert_eq!(dom.current().as_deref(), Some("s1"), "{restart:?}");
        } else {
            assert_eq!(after["live"], before["live"], "{restart:?}");
        }
    }
}

#[test]
fn libvirtd_killed_during_an_external_revert() {
    let _serial = serial();
    for step in [
        "create:calling-libvirt",
        "revert-external:recorded",
        "revert-external:overlay-created",
        "revert-external:domain-defined",
        "revert-external:snapshot-current",
    ] {
        for restart in BOTH {
            let dom = two_external("fault-revert");
            let state = tempfile::tempdir().unwrap();
            let before = hashes_now(&dom);
            let create = step.starts_with("create");
            let (out, mount) = kill_libvirtd_at(
                &dom,
                state.path(),
                &["snapshot_kind=external"],
                step,
                restart,
                |m| {
                    if create {
                        args(&["mkdir", &p(m, &dom, "current/take-3")])
                    } else {
                        args(&["mv", &p(m, &dom, "snapshots/take-1"), &p(m, &dom, "live/")])
                    }
                },
            );
            let what = format!("{step} ({restart:?})");
            let after = checked_hashes(&mount, &dom, &what);
            assert_eq!(after["take-1"], before["take-1"], "{what}");
            assert_eq!(after["take-2"], before["take-2"], "{what}");
            if create {
                if out.status.success() || after.contains_key("take-3") {
                    assert_eq!(after["take-3"], before["live"], "{what}");
                    assert_eq!(dom.current().as_deref(), Some("take-3"), "{what}");
                } else {
                    assert_eq!(dom.current().as_deref(), Some("take-2"), "{what}");
                }
                assert_eq!(after["live"], before["live"], "{what}");
            } else if out.status.success() || dom.current().as_deref() == Some("take-1") {
                assert_eq!(
                    after["live"], before["take-1"],
                    "{what}: revert not finished"
                );
                assert_eq!(dom.current().as_deref(), Some("take-1"), "{what}");
            } else {
                assert_eq!(after["live"], before["live"], "{what}: revert not undone");
                assert_eq!(dom.current().as_deref(), Some("take-2"), "{what}");
            }
        }
    }
}

#[test]
fn libvirtd_killed_during_an_offline_merge() {
    let _serial = serial();
    for step in [
        "delete-external:recorded",
        "delete-external:committed",
        "delete-external:rebased",
        "delete-external:merged",
        "delete-external:metadata-deleted",
    ] {
        for restart in BOTH {
            let dom = two_external("fault-merge");
            let state = tempfile::tempdir().unwrap();
            let before = hashes_now(&dom);
            // take-1's image is read only through take-1's overlay: deleting merges them.
            let (out, mount) = kill_libvirtd_at(&dom, state.path(), &[], step, restart, |m| {
                args(&["rmdir", &p(m, &dom, "snapshots/take-1")])
            });
            let what = format!("{step} ({restart:?})");
            let after = checked_hashes(&mount, &dom, &what);
            assert_eq!(after["take-2"], before["take-2"], "{what}");
            assert_eq!(after["live"], before["live"], "{what}");
            if out.status.success() || !after.contains_key("take-1") {
                assert!(!after.contains_key("take-1"), "{what}: take-1 still there");
                assert!(
                    !dom.path("vda.take-1").exists(),
                    "{what}: merged overlay left"
                );
            } else {
                assert_eq!(after["take-1"], before["take-1"], "{what}");
            }
        }
    }
}

/// A running domain with external snapshots take-1 > take-2 taken live, 8 MiB of data in each
/// overlay, so that a merge at 4 MiB/s takes about two seconds.
fn running_two_external(label: &str) -> TestDomain {
    let dom = TestDomain::new(label, "32M");
    virsh(&["start", &dom.name]);
    dom.write_running("write -P 0x51 0 8M");
    dom.write_running("flush");
    let mount = own_mount(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/take-1")]);
    dom.write_running("write -P 0x52 4M 8M");
    dom.write_running("flush");
    sh("mkdir", &[&p(&mount, &dom, "current/take-2")]);
    dom.write_running("write -P 0x53 10M 8M");
    dom.write_running("flush");
    dom
}

const SLOW_MERGE: &str = "merge_bandwidth=4194304";

#[test]
fn libvirtd_killed_during_a_live_block_commit() {
    let _serial = serial();
    // take-1: its overlay is in the middle of the running chain (intermediate commit);
    // take-2: its overlay is the active layer (active commit, then pivot).
    for (snapshot, dir) in [
        ("take-1", "snapshots/take-1"),
        ("take-2", "snapshots/take-1/take-2"),
    ] {
        for restart in BOTH {
            let dom = running_two_external("fault-live");
            let state = tempfile::tempdir().unwrap();
            let before = hashes_now(&dom);
            let (out, mount) = kill_libvirtd_at(
                &dom,
                state.path(),
                &[SLOW_MERGE],
                "delete-external:live-commit-started",
                restart,
                |m| args(&["rmdir", &p(m, &dom, dir)]),
            );
            let what = format!("{snapshot} ({restart:?})");
            assert_eq!(virsh(&["domstate", &dom.name]).trim(), "running", "{what}");
            let after = checked_hashes(&mount, &dom, &what);
            assert_eq!(after["live"], before["live"], "{what}");
            for (k, v) in &before {
                if k != snapshot && k != "live" {
                    assert_eq!(after.get(k), Some(v), "{what}: {k}");
                }
            }
            if out.status.success() || !after.contains_key(snapshot) {
                assert!(!after.contains_key(snapshot), "{what}: still there");
            } else {
                assert_eq!(after[snapshot], before[snapshot], "{what}");
            }
            assert!(
                !dom.path(&format!("vda.{snapshot}")).exists() || after.contains_key(snapshot),
                "{what}: merged overlay left"
            );
        }
    }
}

/// `rmdir DIR` on a mount whose daemon aborts at `step` (the daemon killed there).
fn rmdir_killed_at(dom: &TestDomain, opts: &[&str], step: &str, dir: &str) {
    let mut crashing = Mount::with_env(opts, &[("VIRTSNAPFS_CRASH_AT", step)]);
    let _ = Command::new("rmdir").arg(p(&crashing, dom, dir)).output();
    assert!(!crashing.wait_exit().success(), "{}", crashing.log_text());
}

/// The daemon killed at `step` while deleting `snapshot` (at `dir`) of a running domain,
/// `meanwhile` run before the next mount, whose recovery must finish the delete: the
/// domain still runs, every other state reads as before, the overlay is gone. Returns the
/// recovering mount's log.
fn live_delete_killed_at(
    snapshot: &str,
    dir: &str,
    step: &str,
    meanwhile: impl FnOnce(&TestDomain),
) -> String {
    let dom = running_two_external("crash-live");
    let state = tempfile::tempdir().unwrap();
    let before = hashes_now(&dom);
    let state_opt = format!("state_dir={}", state.path().display());
    let opts = [state_opt.as_str(), SLOW_MERGE];
    rmdir_killed_at(&dom, &opts, step, dir);
    meanwhile(&dom);
    let mount = Mount::new(&opts);
    let log = mount.log_text();
    assert!(log.contains("recovered an unfinished operation"), "{log}");
    assert_consistent(&mount, &dom, state.path(), snapshot);
    assert_eq!(virsh(&["domstate", &dom.name]).trim(), "running");
    let after = checked_hashes(&mount, &dom, snapshot);
    assert!(!after.contains_key(snapshot), "{snapshot}: still there");
    for (k, v) in &before {
        if k != snapshot {
            assert_eq!(after.get(k), Some(v), "{snapshot}: {k}");
        }
    }
    assert!(!dom.path(&format!("vda.{snapshot}")).exists());
    log
}

#[test]
fn daemon_killed_during_a_live_block_commit() {
    let _serial = serial();
    for (snapshot, dir) in [
        ("take-1", "snapshots/take-1"),
        ("take-2", "snapshots/take-1/take-2"),
    ] {
        live_delete_killed_at(snapshot, dir, "delete-external:live-commit-started", |_| {});
    }
}

/// The daemon dies while QEMU finishes a block commit for it, and the next mount finds the
/// commit done: it must finish the deletion without committing again (QEMU's lock on the
/// base refuses that, and the record was then kept forever; after a pivot, it would write
/// the overlay's old data over what the guest wrote since). Two cases:
/// - take-1 (in the middle of the running chain): the daemon dies right after starting the
///   commit, which then ends in QEMU by itself; libvirt drops take-1 from the running chain
///   before the next mount (its data is checked to be in the base);
/// - take-2 (the active layer): the daemon dies right after the pivot onto take-1.
#[test]
fn daemon_killed_while_qemu_finishes_the_commit() {
    let _serial = serial();
    for (snapshot, dir, step) in [
        (
            "take-1",
            "snapshots/take-1",
            "delete-external:live-commit-started",
        ),
        (
            "take-2",
            "snapshots/take-1/take-2",
            "delete-external:committed",
        ),
    ] {
        let log = live_delete_killed_at(snapshot, dir, step, |dom| {
            let overlay = dom.path(&format!("vda.{snapshot}"));
            eventually(
                60,
                "the commit to end and the overlay to leave the chain",
                || !virsh(&["dumpxml", &dom.name]).contains(overlay.to_str().unwrap()),
            );
            assert!(
                overlay.exists(),
                "{snapshot}: removed by QEMU, not by the daemon"
            );
        });
        assert!(
            log.contains("is merged into") && log.contains("already"),
            "{snapshot}: the recovery should find the commit done: {log}"
        );
    }
}

/// The running guest writes `pattern` over 11M..13M of its disk, then the domain is shut
/// off; returns `image` (the chain that then holds the disk) converted to raw in `scratch`.
fn write_then_shut_off(dom: &TestDomain, pattern: u8, image: &Path, scratch: &Path) -> PathBuf {
    dom.write_running(&format!("write -P {pattern:#x} 11M 2M"));
    dom.write_running("flush");
    virsh(&["destroy", &dom.name]);
    let expected = scratch.join("expected.raw");
    convert(image, None, &expected);
    expected
}

/// `raw` holds `write_then_shut_off`'s write.
fn assert_guest_write(raw: &Path, pattern: u8) {
    let out = sh(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("read -P {pattern:#x} 11M 2M"),
            raw.to_str().unwrap(),
        ],
    );
    assert!(!out.contains("verification failed"), "{out}");
}

/// The daemon dies right after the pivot of an active commit (take-2 merged into take-1),
/// the guest then writes over data take-2 held, and the domain is shut off before the next
/// mount. Recovery must not commit take-2 again (offline now, nothing holds the images):
/// that would put take-2's old data over the guest's newer writes. Two moments:
/// - after the commit was recorded done (`committed`): the record says so;
/// - between the pivot and that record (`pivoted`): the record says a pivot was asked for,
///   and libvirt's definition, moved onto the base by the pivot, says it was made.
///
/// Either way the live disk after recovery reads what the guest wrote.
#[test]
fn daemon_killed_after_the_pivot_keeps_the_guests_later_writes() {
    let _serial = serial();
    for (step, why) in [
        ("delete-external:committed", "already (recorded)"),
        ("delete-external:pivoted", "already (the pivot was made"),
    ] {
        let dom = running_two_external("crash-pivot");
        let state = tempfile::tempdir().unwrap();
        let state_opt = format!("state_dir={}", state.path().display());
        let opts = [state_opt.as_str(), SLOW_MERGE];
        rmdir_killed_at(&dom, &opts, step, "snapshots/take-1/take-2");
        let (base, overlay) = (dom.path("vda.take-1"), dom.path("vda.take-2"));
        assert_eq!(dom.live_source("vda"), base, "{step}: the pivot was made");
        // take-2 held 0x53 at 10M..18M; the guest now writes 0x54 over part of it.
        let scratch = tempfile::tempdir().unwrap();
        let expected = write_then_shut_off(&dom, 0x54, &base, scratch.path());
        assert!(overlay.exists());
        let mount = Mount::new(&opts);
        let log = mount.log_text();
        assert!(
            log.contains("recovered an unfinished operation"),
            "{step}: {log}"
        );
        assert!(log.contains(why), "{step}: {log}");
        assert_consistent(&mount, &dom, state.path(), step);
        let live = scratch.path().join("live.raw");
        convert(&dom.live_source("vda"), None, &live);
        assert!(
            same_bytes(&live, &expected),
            "{step}: the live disk lost the guest's writes made after the pivot"
        );
        assert_guest_write(&live, 0x54);
        assert!(!overlay.exists());
    }
}

/// The daemon dies after recording that it asks for a pivot, before asking; the commit job
/// is then cancelled, the guest writes to take-2 (no longer mirrored into take-1), and the
/// domain is shut off. The definition still reads take-2 and the two images differ, so the
/// next mount cannot tell a pivot was not made: it changes nothing, keeps the record, and
/// says what to check. The live disk still reads the guest's writes.
#[test]
fn an_undecidable_pivot_changes_nothing() {
    let _serial = serial();
    let dom = running_two_external("crash-ask");
    let state = tempfile::tempdir().unwrap();
    let state_opt = format!("state_dir={}", state.path().display());
    let opts = [state_opt.as_str(), SLOW_MERGE];
    rmdir_killed_at(
        &dom,
        &opts,
        "delete-external:pivot-asked",
        "snapshots/take-1/take-2",
    );
    virsh(&["blockjob", &dom.name, "vda", "--abort"]);
    eventually(30, "the commit job to go", || {
        !virsh(&["blockjob", &dom.name, "vda", "--info"]).contains("Commit")
    });
    let overlay = dom.path("vda.take-2");
    assert_eq!(dom.live_source("vda"), overlay, "no pivot was made");
    let scratch = tempfile::tempdir().unwrap();
    let expected = write_then_shut_off(&dom, 0x55, &overlay, scratch.path());
    let mount = Mount::new(&opts);
    let log = mount.log_text();
    assert!(log.contains("cannot be told"), "{log}");
    let left = std::fs::read_dir(state.path().join("journal"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(left, 1, "the record is kept for a later mount");
    assert_eq!(dom.live_source("vda"), overlay);
    let live = scratch.path().join("live.raw");
    convert(&overlay, None, &live);
    assert!(same_bytes(&live, &expected), "the live disk changed");
    assert_guest_write(&live, 0x55);
}

// ---------------------------------------------------------------------------------------------
// Readers during a merge

/// A small deterministic generator for read offsets and lengths.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    /// Random offsets and lengths (4 KiB to 256 KiB), the file opened again for each read.
    Random,
    /// Random reads on one handle opened before the merge and held across it.
    Held,
    /// Whole-file passes, 1 MiB at a time, the file opened again for each pass.
    WholeFile,
}

struct Reader {
    name: String,
    kind: ReadKind,
    /// Where the disk is, tried in order (a snapshot's directory moves up when its parent is
    /// deleted).
    paths: Vec<PathBuf>,
    /// `qemu-img convert` of the snapshot, made beforehand.
    oracle: PathBuf,
}

/// What a reader saw: each read's start and end (seconds from the test's clock) and outcome.
#[derive(Default)]
struct Seen {
    reads: Vec<(f64, f64)>,
    bytes: u64,
    passes: u64,
    eio: u64,
    wrong: Vec<String>,
    other: Vec<String>,
}

/// Opens `path` for reading around the kernel's page cache (O_DIRECT), so every read reaches
/// the daemon.
fn open_direct(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

fn open_any(paths: &[PathBuf]) -> std::io::Result<std::fs::File> {
    let mut last = None;
    for p in paths {
        match open_direct(p) {
            Ok(f) => return Ok(f),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap())
}

/// A 4 KiB-aligned buffer of `len` bytes (O_DIRECT wants one).
struct Aligned {
    storage: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let storage = vec![0u8; len + 4096];
        let start = storage.as_ptr().align_offset(4096);
        Aligned { storage, start }
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.storage[self.start..self.start + len]
    }
}

fn run_reader(r: &Reader, clock: Instant, stop: &std::sync::atomic::AtomicBool, seed: u64) -> Seen {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::Ordering;
    let oracle = std::fs::File::open(&r.oracle).unwrap();
    let size = oracle.metadata().unwrap().len();
    let mut seen = Seen::default();
    let mut rng = XorShift(seed);
    let mut buf = Aligned::new(1 << 20);
    let mut expect = vec![0u8; 1 << 20];
    let held = (r.kind == ReadKind::Held).then(|| open_any(&r.paths).unwrap());
    let mut one_read = |file: &std::fs::File, offset: u64, len: usize, seen: &mut Seen| {
        let start = clock.elapsed().as_secs_f64();
        let got = file.read_at(buf.get(len), offset);
        let end = clock.elapsed().as_secs_f64();
        seen.reads.push((start, end));
        match got {
            Ok(n) => {
                let n_expected = len.min((size - offset) as usize);
                oracle
                    .read_exact_at(&mut expect[..n_expected], offset)
                    .unwrap();
                seen.bytes += n as u64;
                if n != n_expected || buf.get(len)[..n] != expect[..n] {
                    let first = (0..n.min(n_expected))
                        .find(|&i| buf.get(len)[i] != expect[i])
                        .map_or(n as u64, |i| i as u64);
                    if seen.wrong.len() < 5 {
                        seen.wrong.push(format!(
                            "{}: read of {len} at {offset} returned {n} bytes, first wrong byte at {} (t={start:.2}..{end:.2})",
                            r.name,
                            offset + first
                        ));
                    } else {
                        seen.wrong.push(String::new());
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EIO) => seen.eio += 1,
            Err(e) => {
                if seen.other.len() < 5 {
                    seen.other
                        .push(format!("{}: read at {offset}: {e}", r.name));
                }
            }
        }
    };
    while !stop.load(Ordering::Relaxed) {
        match r.kind {
            ReadKind::Random | ReadKind::Held => {
                let len = ((1 + rng.next() % 64) * 4096) as usize;
                let offset = (rng.next() % (size / 4096)) * 4096;
                match &held {
                    Some(f) => one_read(f, offset, len, &mut seen),
                    None => match open_any(&r.paths) {
                        Ok(f) => one_read(&f, offset, len, &mut seen),
                        Err(e) => seen.other.push(format!("{}: open: {e}", r.name)),
                    },
                }
            }
            ReadKind::WholeFile => {
                let f = match open_any(&r.paths) {
                    Ok(f) => f,
                    Err(e) => {
                        seen.other.push(format!("{}: open: {e}", r.name));
                        continue;
                    }
                };
                let mut offset = 0;
                while offset < size && !stop.load(Ordering::Relaxed) {
                    one_read(&f, offset, 1 << 20, &mut seen);
                    offset += 1 << 20;
                }
                if offset >= size {
                    seen.passes += 1;
                }
            }
        }
    }
    seen
}

/// A domain with a 256 MiB disk full of random data and external snapshots take-1 > take-2 >
/// take-3 (running or shut off), 160 MiB of new data in take-1's overlay, so that deleting
/// take-1 merges 160 MiB. Returns the domain and the scratch directory holding the data files.
fn three_external_256m(label: &str, running: bool) -> (TestDomain, tempfile::TempDir) {
    let dom = TestDomain::new(label, "256M");
    let scratch = tempfile::tempdir().unwrap();
    let data = |name: &str, mib: u32| {
        let path = scratch.path().join(name);
        sh(
            "dd",
            &[
                "if=/dev/urandom",
                &format!("of={}", path.display()),
                "bs=1M",
                &format!("count={mib}"),
                "status=none",
            ],
        );
        path.display().to_string()
    };
    let write = |command: String| {
        if running {
            dom.write_running(&command);
            dom.write_running("flush");
        } else {
            dom.write_live(&command);
        }
    };
    if running {
        virsh(&["start", &dom.name]);
    }
    write(format!("write -s {} 0 256M", data("base", 256)));
    let mount = own_mount(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/take-1")]);
    write(format!("write -s {} 48M 160M", data("one", 160)));
    sh("mkdir", &[&p(&mount, &dom, "current/take-2")]);
    write(format!("write -s {} 8M 16M", data("two", 16)));
    sh("mkdir", &[&p(&mount, &dom, "current/take-3")]);
    write(format!("write -s {} 100M 8M", data("three", 8)));
    (dom, scratch)
}

/// Deletes take-1 of a [`three_external_256m`] domain (a merge of 160 MiB) while readers read
/// take-2, take-3 and the live disk, and one handle on take-3 opened before is held across
/// it; every read must return the oracle's bytes or EIO, and enough reads must overlap the
/// merge.
fn readers_during_a_merge(running: bool, options: &[&str]) {
    let (dom, scratch) =
        three_external_256m(if running { "read-live" } else { "read-offline" }, running);
    let state = tempfile::tempdir().unwrap();
    let state_opt = format!("state_dir={}", state.path().display());
    let mut opts = vec![state_opt.as_str()];
    opts.extend_from_slice(options);
    let mount = Mount::new(&opts);
    let before = checked_hashes(&mount, &dom, "before");
    // The oracles: qemu-img convert of each disk, made before the merge.
    let backend = virtsnapfs::libvirt::LibvirtBackend::connect(Some(URI.into())).unwrap();
    let model = backend.load_domain(&dom.name).unwrap().unwrap();
    let oracle = |name: &str| -> PathBuf {
        let out = scratch.path().join(format!("{name}.raw"));
        let top = if name == "live" {
            dom.live_source("vda")
        } else {
            model.snapshot(name).unwrap().disks[0]
                .chain
                .top
                .path
                .clone()
        };
        convert(&top, None, &out);
        out
    };
    let m = |rel: &str| mount.path(&format!("{}/{rel}", dom.name));
    let take2 = vec![
        m("snapshots/take-1/take-2/vda.raw"),
        m("snapshots/take-2/vda.raw"),
    ];
    let take3 = vec![
        m("snapshots/take-1/take-2/take-3/vda.raw"),
        m("snapshots/take-2/take-3/vda.raw"),
    ];
    let readers = [
        Reader {
            name: "take-2 random".into(),
            kind: ReadKind::Random,
            paths: take2.clone(),
            oracle: oracle("take-2"),
        },
        Reader {
            name: "take-2 whole file".into(),
            kind: ReadKind::WholeFile,
            paths: take2,
            oracle: oracle("take-2"),
        },
        Reader {
            name: "take-3 random".into(),
            kind: ReadKind::Random,
            paths: take3.clone(),
            oracle: oracle("take-3"),
        },
        Reader {
            name: "take-3 held open".into(),
            kind: ReadKind::Held,
            paths: take3,
            oracle: oracle("take-3"),
        },
        Reader {
            name: "live random".into(),
            kind: ReadKind::Random,
            paths: vec![m("live/vda.raw")],
            oracle: oracle("live"),
        },
    ];
    let clock = Instant::now();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (merge, seen) = std::thread::scope(|s| {
        let handles: Vec<_> = readers
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (clock, stop) = (clock, &stop);
                s.spawn(move || run_reader(r, clock, stop, 0x9e37_79b9_7f4a_7c15 + i as u64))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        let start = clock.elapsed().as_secs_f64();
        sh("rmdir", &[&p(&mount, &dom, "snapshots/take-1")]);
        let end = clock.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen: Vec<Seen> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        ((start, end), seen)
    });
    let (merge_start, merge_end) = merge;
    eprintln!(
        "{}: rmdir take-1 (merging 160 MiB{}) from {merge_start:.2} s to {merge_end:.2} s ({:.2} s)",
        dom.name,
        if running { ", live block commit" } else { ", offline" },
        merge_end - merge_start
    );
    let mut overlapped_total = 0;
    let mut wrong = Vec::new();
    let mut other = Vec::new();
    for (r, s) in readers.iter().zip(&seen) {
        let overlapped = s
            .reads
            .iter()
            .filter(|(a, b)| *a < merge_end && *b > merge_start)
            .count();
        overlapped_total += overlapped;
        eprintln!(
            "  {:<18} {:>6} reads, {:>5} MiB checked, {:>3} whole-file passes, {:>4} overlapped the merge, {} EIO, {} wrong",
            r.name,
            s.reads.len(),
            s.bytes >> 20,
            s.passes,
            overlapped,
            s.eio,
            s.wrong.len()
        );
        wrong.extend(s.wrong.iter().filter(|w| !w.is_empty()).cloned());
        other.extend(s.other.iter().cloned());
        assert!(s.bytes > 0, "{}: read nothing", r.name);
    }
    assert!(
        wrong.is_empty(),
        "reads that returned wrong bytes: {wrong:#?}"
    );
    assert!(
        other.is_empty(),
        "reads that failed otherwise than EIO: {other:#?}"
    );
    assert!(
        overlapped_total >= 20,
        "only {overlapped_total} reads overlapped the merge"
    );
    // And afterwards: take-1 gone, everything else as before.
    assert!(!dom.path("vda.take-1").exists());
    let after = checked_hashes(&mount, &dom, "after");
    let mut expected = before.clone();
    expected.remove("take-1");
    assert_eq!(after, expected);
}

#[test]
fn readers_during_an_offline_merge_see_exact_bytes() {
    let _serial = serial();
    readers_during_a_merge(false, &[]);
}

#[test]
fn readers_during_a_live_block_commit_see_exact_bytes() {
    let _serial = serial();
    // 64 MiB/s: the 160 MiB commit takes about 2.5 s.
    readers_during_a_merge(true, &["merge_bandwidth=67108864"]);
}

/// A handle held open on the snapshot being deleted: its merge rewrites the images the handle
/// reads, so once the deletion begins every read through it fails with EIO; before, it reads
/// the snapshot's bytes. Another snapshot's held handle keeps reading exact bytes.
#[test]
fn a_handle_held_on_the_snapshot_being_deleted_gets_eio_never_other_bytes() {
    let dom = two_external("held-deleted");
    let mount = own_mount(&["snapshot_kind=external"]);
    let take1 = mount.path(&format!("{}/snapshots/take-1/vda.raw", dom.name));
    let take2 = mount.path(&format!("{}/snapshots/take-1/take-2/vda.raw", dom.name));
    let expected1 = std::fs::read(&take1).unwrap();
    let expected2 = std::fs::read(&take2).unwrap();
    let held1 = open_direct(&take1).unwrap();
    let held2 = open_direct(&take2).unwrap();
    let read = |f: &std::fs::File, len: usize| -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        // O_DIRECT wants an aligned buffer: read into a 4 KiB-aligned slice of a larger one.
        let mut raw = vec![0u8; len + 4096];
        let start = raw.as_ptr().align_offset(4096);
        let buf = &mut raw[start..start + len];
        f.read_exact_at(buf, 0)?;
        Ok(buf.to_vec())
    };
    let len = expected1.len();
    assert!(read(&held1, len).unwrap() == expected1);
    // Deleting take-1 merges take-2's overlay into take-1's image (the base).
    sh("rmdir", &[&p(&mount, &dom, "snapshots/take-1")]);
    let take2_now = mount.path(&format!("{}/snapshots/take-2/vda.raw", dom.name));
    assert!(std::fs::read(&take2_now).unwrap() == expected2);
    let Err(err) = read(&held1, len) else {
        panic!("a handle on the deleted snapshot still reads");
    };
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        mount
            .log_text()
            .contains("its snapshot is being deleted or was deleted"),
        "{}",
        mount.log_text()
    );
    // The other snapshot's handle still reads its exact bytes.
    assert!(read(&held2, len).unwrap() == expected2);
}
