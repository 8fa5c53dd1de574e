//! A lost libvirt connection: the mount keeps serving what it last saw, and reconnects by
//! itself once libvirtd is back. Restarts the host's libvirtd, so it lives in its own test
//! binary (cargo runs test binaries one after another, never two at once).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::vm::{eventually, sh, Mount, TestDomain};

fn libvirtd_running() -> bool {
    Command::new("pgrep")
        .args(["-x", "libvirtd"])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn mount_survives_a_libvirtd_restart_and_reconnects() {
    let dom = TestDomain::new("reconnect", "4M");
    dom.write("vda.qcow2", "write -P 0x21 0 64k");
    dom.snapshot("before", &[]);
    let mount = Mount::new(&[]);
    let d = |rel: &str| mount.path(&format!("{}/{rel}", dom.name));
    assert!(d("snapshots/before/vda.raw").exists());

    sh("pkill", &["-x", "libvirtd"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while libvirtd_running() {
        assert!(Instant::now() < deadline, "libvirtd did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    // With libvirtd gone, the last state seen is still served, and disks still read.
    std::thread::sleep(Duration::from_millis(700));
    let listing = sh("ls", &[d("snapshots").to_str().unwrap()]);
    assert_eq!(listing.trim(), "before");
    let bytes = std::fs::read(d("snapshots/before/vda.raw")).unwrap();
    assert!(bytes[..65536].iter().all(|&b| b == 0x21));

    sh("libvirtd", &["-d"]);
    eventually(20, "libvirtd answers again", || {
        Command::new("virsh")
            .args(["-q", "-c", "qemu:///system", "version"])
            .output()
            .unwrap()
            .status
            .success()
    });
    dom.snapshot("after", &[]);
    eventually(5, "the mount reconnects and shows the new snapshot", || {
        d("snapshots/before/after").is_dir()
    });
    let log = mount.log_text();
    assert!(
        log.contains("reconnecting") || log.contains("connected to libvirt"),
        "{log}"
    );
}
