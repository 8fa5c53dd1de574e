//! The systemd unit shipped in systemd/virtsnapfs.service: systemd's own checker finds
//! nothing to say about it, and its commands, run the way systemd runs them, mount, tell
//! systemd once the mount is in place, unmount cleanly on stop (SIGTERM), and start again
//! over the dead mount that a killed daemon leaves (what Restart=on-failure needs).
//!
//! The checker needs `systemd-analyze` (package systemd; scripts/setup-host.sh installs it),
//! not systemd running. The commands need root, FUSE and libvirtd on qemu:///system.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use virtsnapfs::mount::is_mounted;

const UNIT: &str = include_str!("../systemd/virtsnapfs.service");
/// Where the unit runs the binary from (scripts/demo.sh installs it there).
const INSTALLED: &str = "/usr/local/bin/virtsnapfs";
/// The unit's mount point.
const MOUNT_POINT: &str = "/mnt/virtsnapfs";

/// The values of `key=` lines in the unit's [Service] section, in order.
fn service_values(key: &str) -> Vec<String> {
    let mut section = "";
    let mut values = Vec::new();
    for line in UNIT.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if let Some(value) = line.strip_prefix(key).and_then(|l| l.strip_prefix('=')) {
            if section == "[Service]" {
                values.push(value.to_string());
            }
        }
    }
    values
}

/// The unit with the binary just built in place of the installed one.
fn unit_running_the_built_binary() -> String {
    UNIT.replace(INSTALLED, env!("CARGO_BIN_EXE_virtsnapfs"))
}

/// Runs `systemd-analyze verify` on `unit` (written as virtsnapfs.service in a scratch
/// directory): its exit status and everything it printed.
fn verify(unit: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("virtsnapfs.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze (package systemd, scripts/setup-host.sh): {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_unit_passes_systemd_analyze_verify_without_a_warning() {
    // verify checks that ExecStart's program exists, and the binary is installed only by
    // scripts/demo.sh: the copy checked names the binary just built, and nothing else differs.
    let exec = service_values("ExecStart");
    assert_eq!(exec.len(), 1, "{exec:?}");
    assert!(
        exec[0].starts_with(&format!("{INSTALLED} -f ")),
        "ExecStart runs the installed binary in the foreground: {exec:?}"
    );
    let (ok, output) = verify(&unit_running_the_built_binary());
    assert!(ok && output.is_empty(), "systemd-analyze verify: {output}");
    // The checker does speak up on this machine: a misspelt key draws a warning.
    let misspelt = unit_running_the_built_binary().replace("RestartSec=", "RestartSecs=");
    let (_, output) = verify(&misspelt);
    assert!(output.contains("RestartSecs"), "{output:?}");
}

/// One of the unit's command lines, split into words, with the binary just built and
/// `mount_point` in place of the installed binary and the unit's mount point; and whether
/// its failure is ignored (a leading '-').
fn command(line: &str, mount_point: &Path) -> (bool, Vec<String>) {
    let (ignore_failure, line) = match line.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let words = line
        .replace(INSTALLED, env!("CARGO_BIN_EXE_virtsnapfs"))
        .replace(MOUNT_POINT, mount_point.to_str().unwrap())
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (ignore_failure, words)
}

/// The daemon started the way the unit starts it, with systemd's notification socket.
struct Service {
    child: Option<Child>,
    log: PathBuf,
    notify: UnixDatagram,
}

impl Service {
    /// Runs the unit's ExecStartPre= lines, then its ExecStart= with NOTIFY_SOCKET set, and
    /// waits (30 s at most) for READY=1.
    fn start(scratch: &Path, mount_point: &Path) -> Service {
        for line in service_values("ExecStartPre") {
            let (ignore_failure, words) = command(&line, mount_point);
            let status = Command::new(&words[0])
                .args(&words[1..])
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(ignore_failure || status.success(), "{line}: {status}");
        }
        let socket = scratch.join("notify");
        let _ = std::fs::remove_file(&socket);
        let notify = UnixDatagram::bind(&socket).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let log = scratch.join("daemon.log");
        let (_, words) = command(&service_values("ExecStart")[0], mount_point);
        let child = Command::new(&words[0])
            .args(&words[1..])
            .env("NOTIFY_SOCKET", &socket)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let service = Service {
            child: Some(child),
            log,
            notify,
        };
        service.expect("READY=1");
        service
    }

    /// Waits for the next notification and checks it is `state`.
    fn expect(&self, state: &str) {
        let mut buf = [0u8; 256];
        let n = self.notify.recv(&mut buf).unwrap_or_else(|e| {
            panic!("no {state} from the daemon: {e}; log: {}", self.log_text())
        });
        assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            state,
            "{}",
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (as systemd's stop does with SIGTERM) and waits for the daemon to end.
    fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Detaches whatever is left mounted on the mount point when the test ends, passed or not.
struct DetachAtEnd(PathBuf);

impl Drop for DetachAtEnd {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-q", "-z"])
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn the_units_commands_mount_notify_stop_cleanly_and_start_over_a_killed_daemons_mount() {
    assert_eq!(service_values("Type"), ["notify"]);
    assert_eq!(service_values("Restart"), ["on-failure"]);
    let scratch = tempfile::tempdir().unwrap();
    // Not created here: the unit's ExecStartPre= makes it.
    let mount_point = scratch.path().join("mnt");
    let _detach = DetachAtEnd(mount_point.clone());

    // Start: READY=1 comes once the mount is in place.
    let mut service = Service::start(scratch.path(), &mount_point);
    assert!(is_mounted(&mount_point), "{}", service.log_text());
    assert!(std::fs::read_dir(&mount_point).is_ok());

    // Stop (systemctl stop sends SIGTERM): STOPPING=1, unmounted, exit status 0.
    let status = service.signal_and_wait("-TERM");
    service.expect("STOPPING=1");
    let log = service.log_text();
    assert!(status.success(), "{status}: {log}");
    assert!(!log.contains("ERROR"), "{log}");
    assert!(!is_mounted(&mount_point), "stale mount: {log}");
    drop(service);

    // A daemon killed outright leaves a dead mount behind; starting again (what
    // Restart=on-failure does) clears it and mounts.
    let mut service = Service::start(scratch.path(), &mount_point);
    let status = service.signal_and_wait("-KILL");
    assert!(!status.success());
    // (A name never looked up goes to the daemon, which is gone.)
    let dead = std::fs::metadata(mount_point.join("never-looked-up")).unwrap_err();
    assert_eq!(dead.raw_os_error(), Some(libc::ENOTCONN), "{dead}");
    drop(service);
    let mut service = Service::start(scratch.path(), &mount_point);
    assert!(
        std::fs::read_dir(&mount_point).is_ok(),
        "{}",
        service.log_text()
    );
    let status = service.signal_and_wait("-TERM");
    assert!(status.success(), "{status}: {}", service.log_text());
    assert!(!is_mounted(&mount_point));
}
