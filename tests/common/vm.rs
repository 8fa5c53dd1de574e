//! Real libvirt domains and real mounts for the integration tests.
//!
//! Needs root, a running libvirtd with the QEMU driver (qemu:///system) and FUSE: the
//! README's test command (scripts/test.sh) sets all of that up. Every domain is named
//! `vsfs-test-…` with its images in its own directory, and is removed when the test ends.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const URI: &str = "qemu:///system";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command; panics with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command expected to fail; returns its stderr.
pub fn sh_fails(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        !out.status.success(),
        "{program} {args:?} unexpectedly succeeded"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn virsh(args: &[&str]) -> String {
    let mut all = vec!["-q", "-c", URI];
    all.extend_from_slice(args);
    sh("virsh", &all)
}

pub struct TestDomain {
    pub name: String,
    pub dir: PathBuf,
}

impl TestDomain {
    /// Defines a shut-off domain with one qcow2 disk `vda` of `size` (e.g. "16M").
    pub fn new(label: &str, size: &str) -> TestDomain {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("vsfs-test-{label}-{}-{n}", std::process::id());
        let dir = PathBuf::from(format!("/var/lib/libvirt/images/{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("vda.qcow2");
        sh(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), size],
        );
        let domain = TestDomain { name, dir };
        domain.define(&[("vda", "qcow2", &disk)]);
        domain
    }

    pub fn define(&self, disks: &[(&str, &str, &Path)]) {
        let virt_type = if Path::new("/dev/kvm").exists() {
            "kvm"
        } else {
            "qemu"
        };
        let mut devices = String::new();
        for (target, format, path) in disks {
            devices.push_str(&format!(
                "<disk type='file' device='disk'><driver name='qemu' type='{format}'/>\
                 <source file='{}'/><target dev='{target}' bus='virtio'/></disk>",
                path.display()
            ));
        }
        // Redefining an existing domain needs its UUID.
        let uuid = Command::new("virsh")
            .args(["-q", "-c", URI, "domuuid", &self.name])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| format!("<uuid>{}</uuid>", String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_default();
        let xml = format!(
            "<domain type='{virt_type}'><name>{}</name>{uuid}<memory unit='MiB'>64</memory>\
             <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>\
             <devices>{devices}<graphics type='vnc' autoport='yes' listen='127.0.0.1'/></devices></domain>",
            self.name
        );
        let file = self.dir.join("domain.xml");
        std::fs::write(&file, xml).unwrap();
        virsh(&["define", file.to_str().unwrap()]);
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Offline write into an image with qemu-io.
    pub fn write(&self, image: &str, command: &str) {
        let path = self.path(image);
        let out = sh(
            "qemu-io",
            &["-f", "qcow2", "-c", command, path.to_str().unwrap()],
        );
        assert!(!out.contains("failed"), "qemu-io {command}: {out}");
    }

    /// Offline write into the image the domain's vda uses now (its live top).
    pub fn write_live(&self, command: &str) {
        let top = self.live_source("vda");
        let out = sh(
            "qemu-io",
            &["-f", "qcow2", "-c", command, top.to_str().unwrap()],
        );
        assert!(!out.contains("failed"), "qemu-io {command}: {out}");
    }

    /// Guest write into a running domain's vda, through QEMU's own qemu-io.
    pub fn write_running(&self, command: &str) {
        let hmp =
            format!("qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"{command}\"");
        let out = virsh(&["qemu-monitor-command", &self.name, "--hmp", &hmp]);
        assert!(out.trim().is_empty(), "qemu-io in the guest: {out}");
    }

    pub fn snapshot(&self, name: &str, extra: &[&str]) {
        let mut args = vec!["snapshot-create-as", &self.name, name];
        args.extend_from_slice(extra);
        virsh(&args);
    }

    pub fn current(&self) -> Option<String> {
        let out = Command::new("virsh")
            .args(["-q", "-c", URI, "snapshot-current", "--name", &self.name])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Each snapshot and its parent, from virsh.
    pub fn snapshot_parents(&self) -> Vec<(String, Option<String>)> {
        let names = virsh(&["snapshot-list", &self.name, "--name"]);
        names
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|n| {
                let out = Command::new("virsh")
                    .args([
                        "-q",
                        "-c",
                        URI,
                        "snapshot-parent",
                        &self.name,
                        "--snapshotname",
                        n,
                    ])
                    .output()
                    .unwrap();
                let parent = out
                    .status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string());
                (n.to_string(), parent)
            })
            .collect()
    }

    /// The disk source libvirt names for `target` now.
    pub fn live_source(&self, target: &str) -> PathBuf {
        let out = virsh(&["domblklist", &self.name, "--details"]);
        let line = out
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(target))
            .unwrap_or_else(|| panic!("no disk {target} in {out}"));
        PathBuf::from(line.split_whitespace().nth(3).unwrap())
    }
}

impl Drop for TestDomain {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args(["-q", "-c", URI, "destroy", &self.name])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("virsh")
            .args([
                "-q",
                "-c",
                URI,
                "undefine",
                &self.name,
                "--snapshots-metadata",
            ])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A virtsnapfs mount in the foreground, unmounted when dropped.
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Mount {
    pub fn new(options: &[&str]) -> Mount {
        Mount::with_env(options, &[])
    }

    /// A mount whose daemon runs with extra environment variables (e.g. a crash point, or a
    /// RUST_LOG that replaces the default `info`).
    pub fn with_env(options: &[&str], env: &[(&str, &str)]) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().with_extension("log");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut args = vec![
            "-f".to_string(),
            "-c".into(),
            URI.into(),
            "-o".into(),
            "refresh=0.5".into(),
        ];
        for o in options {
            args.push("-o".into());
            args.push(o.to_string());
        }
        args.push(mnt.to_str().unwrap().into());
        let child = Command::new(env!("CARGO_BIN_EXE_virtsnapfs"))
            .args(&args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mount = Mount {
            dir,
            log,
            child: Some(child),
        };
        mount.wait_mounted();
        mount
    }

    fn wait_mounted(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !virtsnapfs::mount::is_mounted(&self.root()) {
            assert!(
                Instant::now() < deadline,
                "mount did not appear: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 60 s) for the daemon to exit by itself, e.g. at a crash point; returns
    /// its status, or panics with its log if it is still running.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let child = self.child.as_mut().expect("already stopped");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon with SIGTERM and waits for it; returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        sh("kill", &["-TERM", &child.id().to_string()]);
        child.wait().unwrap()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // A failing test loses its temporary directory: keep the daemon's log and show its end.
        if std::thread::panicking() {
            let text = self.log_text();
            let kept = std::env::temp_dir().join(format!(
                "vsfs-failed-mount-{}-{}.log",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::write(&kept, &text);
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "daemon log kept in {}; its last lines:\n{}",
                kept.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if virtsnapfs::mount::is_mounted(&self.root()) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(self.root())
                .status();
        }
    }
}

/// The path of `rel` inside `dom`'s directory of `mount`, as a string for commands.
pub fn p(mount: &Mount, dom: &TestDomain, rel: &str) -> String {
    mount
        .path(&format!("{}/{rel}", dom.name))
        .to_str()
        .unwrap()
        .to_string()
}

/// Polls `check` for up to `secs` seconds.
pub fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `qemu-img convert -U -O raw` of `image` (optionally at an internal snapshot) into `out`.
pub fn convert(image: &Path, snapshot: Option<&str>, out: &Path) {
    let mut args = vec![
        "convert".to_string(),
        "-U".into(),
        "-O".into(),
        "raw".into(),
    ];
    if let Some(s) = snapshot {
        args.push("-l".into());
        args.push(format!("snapshot.name={s}"));
    }
    args.push(image.to_str().unwrap().into());
    args.push(out.to_str().unwrap().into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    sh("qemu-img", &refs);
}

/// Whether two files have identical bytes (cmp is the judge).
pub fn same_bytes(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg(a)
        .arg(b)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Snapshot directory paths (relative to DOMAIN/snapshots) as virsh's parent links give them.
pub fn expected_tree(dom: &TestDomain) -> BTreeSet<String> {
    let parents = dom.snapshot_parents();
    let parent_of = |n: &str| {
        parents
            .iter()
            .find(|(c, _)| c == n)
            .and_then(|(_, p)| p.clone())
    };
    parents
        .iter()
        .map(|(name, _)| {
            let mut path = vec![name.clone()];
            let mut cursor = name.clone();
            while let Some(p) = parent_of(&cursor) {
                path.push(p.clone());
                cursor = p;
            }
            path.reverse();
            path.join("/")
        })
        .collect()
}

/// Snapshot directory paths as the mount shows them, found with find(1).
pub fn mounted_tree(mount: &Mount, dom: &TestDomain) -> BTreeSet<String> {
    let base = mount.path(&format!("{}/snapshots", dom.name));
    // Right after an operation the kernel may still hold a moved entry for one refresh
    // interval: a failing walk counts as "not equal yet" for the callers that retry.
    let out = Command::new("find")
        .args([base.to_str().unwrap(), "-mindepth", "1"])
        // files/ holds the guest's files, not snapshots.
        .args(["-name", "files", "-prune", "-o", "-type", "d", "-print"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    out.lines()
        .map(|l| {
            l.strip_prefix(base.to_str().unwrap())
                .unwrap()
                .trim_start_matches('/')
                .to_string()
        })
        .collect()
}
