//! What a test harness does to a mount, over and over: write into a domain's disk, `mv` a
//! clean snapshot onto `live/`, start again. Every verb in a tight loop must succeed every
//! time, and after every revert the live disk must be the clean snapshot's bytes, as the
//! mount serves them and as `qemu-img convert` reads the image (the oracle).
//!
//! The matrix: internal and external snapshots, offline and running, 1,000 cycles on one
//! domain and 250 on each of four domains at once. Offline loops run their full counts in the
//! suite. A running domain's revert takes 2-5 s, so the suite runs those loops short (a few
//! cycles each) and `VSFS_LOOP_FULL=1` runs every loop at its full count (about 3 hours in
//! all). `VSFS_LOOP_SCALE` (a divisor, for quick runs by hand) shortens them all.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::vm::{convert, p, sh, virsh, Mount, TestDomain};
use common::{next_random, path_str};

/// `n` cycles, divided by VSFS_LOOP_SCALE when it is set.
fn cycles(n: usize) -> usize {
    let scale = std::env::var("VSFS_LOOP_SCALE")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    (n / scale).max(1)
}

/// Cycles of a loop on a running domain: `full` with VSFS_LOOP_FULL set, else `quick`.
fn running_cycles(quick: usize, full: usize) -> usize {
    if std::env::var_os("VSFS_LOOP_FULL").is_some() {
        cycles(full)
    } else {
        cycles(quick)
    }
}

const DISK: &str = "4M";

/// A shut-off domain whose disk holds a pattern, with an internal snapshot `clean` of it.
fn domain_with_clean_snapshot(label: &str) -> TestDomain {
    let dom = TestDomain::new(label, DISK);
    dom.write("vda.qcow2", "write -P 0x5a 0 1M");
    dom.write("vda.qcow2", "write -P 0xa5 3M 512k");
    dom.snapshot("clean", &[]);
    dom
}

/// The bytes of `image` (at internal snapshot `snapshot`) as qemu-img reads them.
fn oracle(image: &Path, snapshot: Option<&str>, scratch: &Path) -> Vec<u8> {
    let out = scratch.join(format!("oracle-{}.raw", std::process::id()));
    convert(image, snapshot, &out);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

/// One harness cycle's change: a write at a pseudo-random place of the disk.
fn scribble(state: &mut u64) -> String {
    let offset = (next_random(state) % 60) * 64 * 1024;
    let pattern = next_random(state) % 250 + 1;
    format!("write -P {pattern} {offset} 64k")
}

/// `mv SNAPSHOT_DIR DOMAIN/live/` as a harness runs it; the error text when it fails.
fn mv_onto_live(snapshot_dir: &str, live: &str) -> Result<(), String> {
    let out = std::process::Command::new("mv")
        .args([snapshot_dir, live])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs `n` cycles of { write with `write`; mv `clean_dir` onto live/ } and checks after each
/// revert that the mount's live disk and qemu-img's reading of the live image both equal
/// `expected`. Returns how many `mv` calls failed (with the first error), so the caller's
/// assertion names them all.
fn revert_cycles(
    mount: &Mount,
    dom: &TestDomain,
    clean_dir: &str,
    expected: &[u8],
    n: usize,
    write: impl Fn(&str),
) -> (usize, Option<String>) {
    let live = p(mount, dom, "live/");
    let live_disk = mount.path(&format!("{}/live/vda.raw", dom.name));
    let mut state = 0x9e37_79b9_7f4a_7c15 ^ n as u64;
    let mut failures = 0;
    let mut first = None;
    let started = Instant::now();
    for cycle in 0..n {
        write(&scribble(&mut state));
        if let Err(e) = mv_onto_live(clean_dir, &live) {
            failures += 1;
            first.get_or_insert(format!("cycle {cycle}: {e}"));
            continue;
        }
        let served = std::fs::read(&live_disk).unwrap();
        assert!(
            served == expected,
            "{}: cycle {cycle}: live/vda.raw is not the clean snapshot's bytes",
            dom.name
        );
        let image = dom.live_source("vda");
        assert!(
            oracle(&image, None, &dom.dir) == expected,
            "{}: cycle {cycle}: qemu-img reads other bytes than the clean snapshot's in {}",
            dom.name,
            image.display()
        );
        // Long runs (VSFS_LOOP_FULL) say how far they are.
        if (cycle + 1) % 100 == 0 {
            eprintln!(
                "{}: {} of {n} cycles in {:.1} s, {failures} failed",
                dom.name,
                cycle + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "{}: {n} cycles in {:.1} s, {failures} failed",
        dom.name,
        started.elapsed().as_secs_f64()
    );
    (failures, first)
}

#[test]
fn revert_in_a_tight_loop_never_fails_internal_offline() {
    let dom = domain_with_clean_snapshot("loop-int");
    let expected = oracle(&dom.path("vda.qcow2"), Some("clean"), &dom.dir);
    let mount = Mount::new(&[]);
    let clean = p(&mount, &dom, "snapshots/clean");
    let (failures, first) = revert_cycles(&mount, &dom, &clean, &expected, cycles(1000), |c| {
        dom.write("vda.qcow2", c)
    });
    assert_eq!(failures, 0, "failed reverts, first: {first:?}");
    assert_eq!(dom.current().as_deref(), Some("clean"));
}

/// One domain's part of a four-domain loop: where its clean snapshot is and what its bytes are.
struct LoopDomain {
    clean_dir: String,
    expected: Vec<u8>,
}

/// Runs `n` revert cycles on each domain of `doms` at once, each in its own thread, and asserts
/// that none failed. `prepare` runs in the domain's thread first; `write` is a cycle's change.
fn revert_loops_at_once(
    mount: &Mount,
    doms: &[TestDomain],
    n: usize,
    prepare: impl Fn(&TestDomain) -> LoopDomain + Sync,
    write: impl Fn(&TestDomain, &str) + Sync,
) {
    let results: Vec<(usize, Option<String>)> = std::thread::scope(|s| {
        let runs: Vec<_> = doms
            .iter()
            .map(|dom| {
                let (prepare, write) = (&prepare, &write);
                s.spawn(move || {
                    let part = prepare(dom);
                    revert_cycles(mount, dom, &part.clean_dir, &part.expected, n, |c| {
                        write(dom, c)
                    })
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let failed: usize = results.iter().map(|(f, _)| f).sum();
    assert_eq!(
        failed,
        0,
        "failed reverts of {} cycles: {results:?}",
        doms.len() * n
    );
    for dom in doms {
        assert_eq!(dom.current().as_deref(), Some("clean"));
    }
}

#[test]
fn revert_loops_on_four_domains_at_once_never_fail() {
    let doms: Vec<TestDomain> = (0..4)
        .map(|i| domain_with_clean_snapshot(&format!("loop4-{i}")))
        .collect();
    let mount = Mount::new(&[]);
    revert_loops_at_once(
        &mount,
        &doms,
        cycles(250),
        |dom| LoopDomain {
            expected: oracle(&dom.path("vda.qcow2"), Some("clean"), &dom.dir),
            clean_dir: p(&mount, dom, "snapshots/clean"),
        },
        |dom, c| dom.write("vda.qcow2", c),
    );
}

#[test]
fn revert_loops_on_four_domains_at_once_never_fail_external() {
    let doms: Vec<TestDomain> = (0..4)
        .map(|i| {
            let dom = TestDomain::new(&format!("loop4x-{i}"), DISK);
            dom.write("vda.qcow2", "write -P 0x5a 0 1M");
            dom
        })
        .collect();
    let mount = Mount::new(&["snapshot_kind=external"]);
    revert_loops_at_once(
        &mount,
        &doms,
        cycles(250),
        |dom| {
            sh("mkdir", &[&p(&mount, dom, "snapshots/clean")]);
            LoopDomain {
                expected: oracle(&dom.path("vda.qcow2"), None, &dom.dir),
                clean_dir: p(&mount, dom, "snapshots/clean"),
            }
        },
        |dom, c| dom.write_live(c),
    );
}

#[test]
fn revert_in_a_tight_loop_never_fails_external_offline() {
    let dom = TestDomain::new("loop-ext", DISK);
    dom.write("vda.qcow2", "write -P 0x5a 0 1M");
    let mount = Mount::new(&["snapshot_kind=external"]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/clean")]);
    // The external snapshot's bytes are its base image's, which nothing writes any more.
    let expected = oracle(&dom.path("vda.qcow2"), None, &dom.dir);
    let clean = p(&mount, &dom, "snapshots/clean");
    let (failures, first) = revert_cycles(&mount, &dom, &clean, &expected, cycles(1000), |c| {
        dom.write_live(c)
    });
    assert_eq!(failures, 0, "failed reverts, first: {first:?}");
    assert_eq!(dom.current().as_deref(), Some("clean"));
    // Every revert made a new overlay and removed the one it replaced.
    let images: Vec<_> = std::fs::read_dir(&dom.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("vda."))
        .collect();
    assert!(images.len() <= 3, "images left behind: {images:?}");
}

#[test]
fn revert_of_a_running_domain_in_a_loop_never_fails() {
    let dom = TestDomain::new("loop-run", "32M");
    virsh(&["start", &dom.name]);
    dom.write_running("write -P 0x5a 0 1M");
    dom.write_running("flush");
    let mount = Mount::new(&[]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/clean")]);
    let expected = oracle(&dom.path("vda.qcow2"), Some("clean"), &dom.dir);
    let clean = p(&mount, &dom, "snapshots/clean");
    let n = running_cycles(20, 1000);
    let (failures, first) = revert_cycles(&mount, &dom, &clean, &expected, n, |c| {
        dom.write_running(c);
        dom.write_running("flush");
    });
    assert_eq!(failures, 0, "failed reverts, first: {first:?}");
    assert_eq!(virsh(&["domstate", &dom.name]).trim(), "running");
}

/// A running domain's external snapshots are disk-only: reverting to one stops the domain
/// (`-o allow_stop`), so each cycle starts it again before the guest writes.
#[test]
fn revert_of_a_running_domain_to_a_disk_only_snapshot_in_a_loop_never_fails() {
    let dom = TestDomain::new("loop-run-ext", "32M");
    dom.write("vda.qcow2", "write -P 0x5a 0 1M");
    let mount = Mount::new(&["snapshot_kind=external", "allow_stop"]);
    virsh(&["start", &dom.name]);
    sh("mkdir", &[&p(&mount, &dom, "snapshots/clean")]);
    let expected = oracle(&dom.path("vda.qcow2"), None, &dom.dir);
    let clean = p(&mount, &dom, "snapshots/clean");
    // About 4.5 s a cycle (the domain starts again each time).
    let n = running_cycles(10, 1000);
    let (failures, first) = revert_cycles(&mount, &dom, &clean, &expected, n, |c| {
        start_and_write(&dom, c)
    });
    assert_eq!(failures, 0, "failed reverts, first: {first:?}");
    assert_eq!(virsh(&["domstate", &dom.name]).trim(), "shut off");
    assert_eq!(dom.current().as_deref(), Some("clean"));
}

/// A cycle's change on a domain that a revert to a disk-only snapshot has stopped: start it
/// again if needed, then write through the guest's disk.
fn start_and_write(dom: &TestDomain, change: &str) {
    if virsh(&["domstate", &dom.name]).trim() != "running" {
        virsh(&["start", &dom.name]);
    }
    dom.write_running(change);
    dom.write_running("flush");
}

#[test]
fn revert_loops_on_four_running_domains_at_once_never_fail() {
    let doms: Vec<TestDomain> = (0..4)
        .map(|i| TestDomain::new(&format!("loop4r-{i}"), "32M"))
        .collect();
    let mount = Mount::new(&[]);
    revert_loops_at_once(
        &mount,
        &doms,
        running_cycles(3, 250),
        |dom| {
            virsh(&["start", &dom.name]);
            dom.write_running("write -P 0x5a 0 1M");
            dom.write_running("flush");
            sh("mkdir", &[&p(&mount, dom, "snapshots/clean")]);
            LoopDomain {
                expected: oracle(&dom.path("vda.qcow2"), Some("clean"), &dom.dir),
                clean_dir: p(&mount, dom, "snapshots/clean"),
            }
        },
        |dom, c| {
            dom.write_running(c);
            dom.write_running("flush");
        },
    );
    for dom in &doms {
        assert_eq!(virsh(&["domstate", &dom.name]).trim(), "running");
    }
}

#[test]
fn revert_loops_on_four_running_domains_to_disk_only_snapshots_at_once_never_fail() {
    let doms: Vec<TestDomain> = (0..4)
        .map(|i| {
            let dom = TestDomain::new(&format!("loop4rx-{i}"), "32M");
            dom.write("vda.qcow2", "write -P 0x5a 0 1M");
            dom
        })
        .collect();
    let mount = Mount::new(&["snapshot_kind=external", "allow_stop"]);
    revert_loops_at_once(
        &mount,
        &doms,
        running_cycles(2, 250),
        |dom| {
            virsh(&["start", &dom.name]);
            sh("mkdir", &[&p(&mount, dom, "snapshots/clean")]);
            LoopDomain {
                expected: oracle(&dom.path("vda.qcow2"), None, &dom.dir),
                clean_dir: p(&mount, dom, "snapshots/clean"),
            }
        },
        start_and_write,
    );
    for dom in &doms {
        assert_eq!(virsh(&["domstate", &dom.name]).trim(), "shut off");
    }
}

/// Checks that the mount's live disk is what qemu-img reads from the live image.
fn assert_live_matches_qemu(mount: &Mount, dom: &TestDomain, what: &str) {
    let served = std::fs::read(mount.path(&format!("{}/live/vda.raw", dom.name))).unwrap();
    let image = dom.live_source("vda");
    assert!(
        served == oracle(&image, None, &dom.dir),
        "{what}: live/vda.raw differs from qemu-img's reading of {}",
        image.display()
    );
}

#[test]
fn create_and_delete_in_a_tight_loop_never_fail_internal() {
    let dom = domain_with_clean_snapshot("loop-mkrm");
    let mount = Mount::new(&[]);
    let n = cycles(300);
    let started = Instant::now();
    for cycle in 0..n {
        // The same name every cycle: the kernel has just seen it come and go.
        let made = p(&mount, &dom, "current/t");
        sh("mkdir", &[&made]);
        dom.write("vda.qcow2", &format!("write -P {} 0 64k", cycle % 250 + 1));
        let t = p(&mount, &dom, "snapshots/clean/t");
        assert!(Path::new(&t).is_dir(), "cycle {cycle}: {t}");
        sh("rmdir", &[&t]);
        assert!(!Path::new(&t).exists(), "cycle {cycle}: {t}");
        assert_live_matches_qemu(&mount, &dom, &format!("cycle {cycle}"));
    }
    eprintln!(
        "{n} mkdir/rmdir cycles in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let left = virsh(&["snapshot-list", &dom.name, "--name"]);
    assert_eq!(left.split_whitespace().collect::<Vec<_>>(), ["clean"]);
}

#[test]
fn create_rename_and_delete_in_a_tight_loop_never_fail_external() {
    let dom = TestDomain::new("loop-verbs", DISK);
    dom.write("vda.qcow2", "write -P 0x5a 0 1M");
    let mount = Mount::new(&["snapshot_kind=external"]);
    let n = cycles(200);
    let started = Instant::now();
    for cycle in 0..n {
        let made = p(&mount, &dom, "snapshots/t");
        sh("mkdir", &[&made]);
        dom.write_live(&format!("write -P {} 1M 64k", cycle % 250 + 1));
        let renamed = p(&mount, &dom, "snapshots/t2");
        sh("mv", &[&made, &renamed]);
        assert!(Path::new(&renamed).is_dir(), "cycle {cycle}: {renamed}");
        assert!(!Path::new(&made).exists(), "cycle {cycle}: {made}");
        // Deleting merges the overlay back: the live disk keeps the cycle's write.
        sh("rmdir", &[&renamed]);
        assert!(!Path::new(&renamed).exists(), "cycle {cycle}: {renamed}");
        assert_live_matches_qemu(&mount, &dom, &format!("cycle {cycle}"));
    }
    eprintln!(
        "{n} mkdir/mv/rmdir cycles in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(virsh(&["snapshot-list", &dom.name, "--name"]).trim(), "");
    assert_eq!(dom.live_source("vda"), dom.path("vda.qcow2"));
}

#[test]
fn a_handle_held_open_across_reverts_reads_each_new_state() {
    let dom = domain_with_clean_snapshot("loop-held");
    let expected = oracle(&dom.path("vda.qcow2"), Some("clean"), &dom.dir);
    let mount = Mount::new(&[]);
    let clean = p(&mount, &dom, "snapshots/clean");
    let live = p(&mount, &dom, "live/");
    let held = std::fs::File::open(mount.path(&format!("{}/live/vda.raw", dom.name))).unwrap();
    let read_all = |f: &std::fs::File| {
        let mut buf = vec![0u8; expected.len()];
        f.read_exact_at(&mut buf, 0).unwrap();
        buf
    };
    assert!(read_all(&held) == expected);
    for cycle in 0..cycles(100) {
        dom.write("vda.qcow2", &format!("write -P {} 0 1M", cycle % 250 + 1));
        // Whatever the handle reads now lands in the kernel's page cache ...
        read_all(&held);
        mv_onto_live(&clean, &live).unwrap();
        // ... and is gone once the revert has returned: the handle reads the clean state.
        assert!(
            read_all(&held) == expected,
            "cycle {cycle}: after the revert the held handle reads other bytes than clean"
        );
    }
}

/// The harness recipe exactly as README.md gives it (between its markers), run on a real
/// domain: each run starts from the clean state, and the snapshot is gone afterwards.
#[test]
fn the_readme_harness_recipe_works_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- harness recipe: begin -->")
        .expect("README has the harness recipe");
    let end = readme[start..]
        .find("<!-- harness recipe: end -->")
        .expect("recipe end marker")
        + start;
    let block = &readme[start..end];
    let code: String = block
        .lines()
        .skip_while(|l| !l.starts_with("```sh"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .map(|l| format!("{l}\n"))
        .collect();
    let function_end = code.find("\n}\n").expect("the recipe defines a function") + 3;
    let recipe = &code[..function_end];
    // The man page shows the same function.
    let man =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/virtsnapfs.1")).unwrap();
    for line in recipe.lines().filter(|l| !l.trim().is_empty()) {
        let in_roff = line.replace('\\', "\\e").replace('-', "\\-");
        assert!(
            man.contains(&in_roff) || man.contains(line),
            "man page lacks recipe line {line:?}"
        );
    }

    let dom = TestDomain::new("recipe", DISK);
    dom.write("vda.qcow2", "write -P 0x5a 0 1M");
    let expected_file: PathBuf = dom.dir.join("expected.raw");
    convert(&dom.path("vda.qcow2"), None, &expected_file);
    let mount = Mount::new(&[]);
    let domain_dir = mount.path(&dom.name);
    let runs = dom.dir.join("runs");
    // The "test suite": checks it starts from the clean state, then changes the disk.
    let suite = format!(
        "cmp {live} {expected} && echo run >> {runs} && qemu-io -f qcow2 -c 'write -P 0x77 0 2M' {image} >/dev/null",
        live = path_str(&domain_dir.join("live/vda.raw")),
        expected = path_str(&expected_file),
        runs = path_str(&runs),
        image = path_str(&dom.path("vda.qcow2")),
    );
    let script = format!(
        "set -eu\n{recipe}harness {} sh -c \"{}\"\n",
        path_str(&domain_dir),
        suite.replace('"', "\\\"")
    );
    sh("bash", &["-c", &script]);
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 3);
    assert!(common::vm::same_bytes(
        &domain_dir.join("live/vda.raw"),
        &expected_file
    ));
    assert_eq!(
        virsh(&["snapshot-list", &dom.name, "--name"]).trim(),
        "",
        "the recipe deletes its snapshot"
    );
}
