//! Mounting: `-o` option parsing (FUSE's, fstab's and ours), detaching into the background
//! like other FUSE tools, and unmounting cleanly on SIGINT/SIGTERM or when unmounted.
//!
//! Detaching re-executes this program with `--foreground` in its own process group and waits
//! until the mount appears in /proc/self/mountinfo, so the parent's exit status tells whether
//! the mount worked (as `mount.fuse3` and fstab expect) without fork() in a threaded process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL};
use log::{error, info};

use crate::fs::{Options, VirtSnapFs};
use crate::fuse::FuseAdapter;
use crate::libvirt::LibvirtBackend;

/// What the command line asked for.
#[derive(Debug, Clone, Default)]
pub struct MountRequest {
    pub connect: Option<String>,
    pub foreground: bool,
    /// Each `-o` argument (comma-separated lists).
    pub options: Vec<String>,
    /// `mount.fuse3` passes the fstab source first: a libvirt URI, or `virtsnapfs`/`none`.
    pub source: Option<String>,
    pub mountpoint: PathBuf,
    pub log_file: Option<PathBuf>,
}

/// The parsed `-o` options.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub fuse: Vec<MountOption>,
    pub acl: SessionACL,
    pub fs: Options,
    pub connect: Option<String>,
    /// FUSE worker threads. A worker waits while an image read it serves goes to the disk;
    /// with 4, a cold `tar` of a guest tree spent that time with requests queued behind
    /// them (cold tar of 1.3 GiB of small files: 3.5 s with 4 workers, 3.2 s with 8 to 32).
    /// Reads over 128 KiB share 4 buffers whatever the count (see `fuse::LARGE_READ_BUFFERS`).
    pub threads: usize,
    pub log_file: Option<PathBuf>,
    /// Kernel readahead for the mount, in KiB (the kernel offers FUSE only 128).
    pub readahead_kb: u32,
}

fn parse_octal(value: &str) -> Result<u16, String> {
    u16::from_str_radix(value.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("'{value}' is not a permission mode like 0400 or 0444"))
}

fn parse_number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("option {name}='{value}' is not a number"))
}

/// Parses `-o` option lists. Unknown options are an error, so typos do not pass silently.
pub fn parse_options(lists: &[String]) -> Result<MountOptions, String> {
    let mut o = MountOptions {
        // fuser's own mount path hands Subtype only to fusermount; the kernel takes
        // `subtype=` itself, which makes the mount show as type fuse.virtsnapfs.
        fuse: vec![
            MountOption::FSName("virtsnapfs".into()),
            MountOption::CUSTOM("subtype=virtsnapfs".into()),
            MountOption::DefaultPermissions,
            // files/ shows guests' device nodes and setuid programs: untrusted, never honoured.
            MountOption::NoDev,
            MountOption::NoSuid,
        ],
        acl: SessionACL::Owner,
        fs: Options::default(),
        connect: None,
        threads: 16,
        log_file: None,
        readahead_kb: 4096,
    };
    for item in lists
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|s| !s.is_empty())
    {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (item, None),
        };
        match (name, value) {
            ("allow_other", None) => o.acl = SessionACL::All,
            ("allow_root", None) => o.acl = SessionACL::RootAndOwner,
            ("auto_unmount", None) => o.fuse.push(MountOption::AutoUnmount),
            ("default_permissions", None) => {}
            ("fsname", Some(v)) => o.fuse[0] = MountOption::FSName(v.into()),
            ("subtype", Some(v)) => o.fuse[1] = MountOption::CUSTOM(format!("subtype={v}")),
            ("ro", None) => o.fuse.push(MountOption::RO),
            ("rw", None) => o.fuse.push(MountOption::RW),
            // mount.fuse3 passes dev,suid for root's fstab mounts: accepted, never honoured.
            ("dev" | "suid", None) => log::info!(
                "option {name} ignored: files/ shows guests' device nodes and setuid programs, so the mount is always nodev,nosuid"
            ),
            ("nodev" | "nosuid", None) => {}
            ("exec", None) => o.fuse.push(MountOption::Exec),
            ("noexec", None) => o.fuse.push(MountOption::NoExec),
            ("atime", None) => o.fuse.push(MountOption::Atime),
            ("noatime", None) => o.fuse.push(MountOption::NoAtime),
            ("sync", None) => o.fuse.push(MountOption::Sync),
            ("async", None) => o.fuse.push(MountOption::Async),
            ("dirsync", None) => o.fuse.push(MountOption::DirSync),
            // Options meant for mount(8) and fstab, not for the filesystem.
            (
                "defaults" | "auto" | "noauto" | "nofail" | "user" | "users" | "nouser" | "_netdev",
                None,
            ) => {}
            (n, _) if n.starts_with("x-") || n == "comment" => {}
            ("connect", Some(v)) => o.connect = Some(v.into()),
            ("disk_mode", Some(v)) => o.fs.disk_mode = parse_octal(v)?,
            ("uid", Some(v)) => o.fs.uid = parse_number("uid", v)?,
            ("gid", Some(v)) => o.fs.gid = parse_number("gid", v)?,
            ("refresh", Some(v)) => {
                let secs: f64 = parse_number("refresh", v)?;
                if !(0.0..=3600.0).contains(&secs) {
                    return Err(format!("refresh={v}: use 0 to 3600 seconds"));
                }
                o.fs.refresh = Duration::from_secs_f64(secs);
            }
            ("cache_size", Some(v)) => {
                let mib: usize = parse_number("cache_size", v)?;
                o.fs.cache_bytes = mib.checked_mul(1 << 20).ok_or("cache_size too large")?;
            }
            ("threads", Some(v)) => {
                o.threads = parse_number("threads", v)?;
                if !(1..=64).contains(&o.threads) {
                    return Err(format!("threads={v}: use 1 to 64"));
                }
            }
            ("log_file", Some(v)) => o.log_file = Some(PathBuf::from(v)),
            ("readahead_kb", Some(v)) => o.readahead_kb = parse_number("readahead_kb", v)?,
            ("snapshot_kind", Some(v)) => {
                o.fs.ops.kind = match v {
                    "auto" => crate::ops::SnapshotKind::Auto,
                    "internal" => crate::ops::SnapshotKind::Internal,
                    "external" => crate::ops::SnapshotKind::External,
                    _ => return Err(format!("snapshot_kind={v}: use auto, internal or external")),
                }
            }
            ("allow_stop", None) => o.fs.ops.allow_stop = true,
            ("close_to_open", None) => o.fs.close_to_open = true,
            ("state_dir", Some(v)) => o.fs.ops.state_dir = PathBuf::from(v),
            ("merge_timeout", Some(v)) => {
                let secs: f64 = parse_number("merge_timeout", v)?;
                if !(0.1..=86_400.0).contains(&secs) {
                    return Err(format!("merge_timeout={v}: use 0.1 to 86400 seconds"));
                }
                o.fs.ops.merge_timeout = Duration::from_secs_f64(secs);
            }
            ("merge_bandwidth", Some(v)) => {
                o.fs.ops.merge_bandwidth = parse_number("merge_bandwidth", v)?
            }
            _ => return Err(format!("unknown mount option '{item}' (see virtsnapfs(1))")),
        }
    }
    Ok(o)
}

/// The libvirt URI to use: --connect, then -o connect=, then a URI given as the fstab source.
pub fn connection_uri(request: &MountRequest, options: &MountOptions) -> Option<String> {
    request
        .connect
        .clone()
        .or(options.connect.clone())
        .or_else(|| {
            request
                .source
                .clone()
                .filter(|s| s.contains(':') && s != "none" && s != "virtsnapfs")
        })
}

/// Whether `mountpoint` is a mount point in this process's namespace.
pub fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(canonical) = std::fs::canonicalize(mountpoint) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|field| Path::new(&unescape_mountinfo(field)) == canonical)
    })
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sets the kernel's readahead for the FUSE mount at `mountpoint` (its backing device in
/// /sys/class/bdi). FUSE starts at 128 KiB, which splits sequential reads into small requests:
/// 4 MiB more than doubled a cold sequential read of a qcow2 chain.
fn set_readahead(mountpoint: &Path, kb: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    match std::fs::write(&path, kb.to_string()) {
        Ok(()) => info!("readahead set to {kb} KiB ({path})"),
        Err(e) => log::warn!("could not set readahead through {path}: {e}"),
    }
}

/// Mounts as requested: in the foreground until unmounted or signalled, or detached.
pub fn run(request: MountRequest) -> Result<(), String> {
    let options = parse_options(&request.options)?;
    if !request.mountpoint.is_dir() {
        return Err(format!(
            "mount point {} is not a directory",
            request.mountpoint.display()
        ));
    }
    if request.foreground {
        run_foreground(&request, options)
    } else {
        detach(&request)
    }
}

/// Starts `virtsnapfs --foreground …` in its own process group and waits for the mount.
fn detach(request: &MountRequest) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--foreground");
    if let Some(uri) = &request.connect {
        cmd.arg("--connect").arg(uri);
    }
    for o in &request.options {
        cmd.arg("-o").arg(o);
    }
    // A detached daemon logs to a file: the one asked for, else /var/log/virtsnapfs.log
    // when running as root, else nowhere (stderr goes to /dev/null).
    let log_file = request.log_file.clone().or_else(|| {
        (std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .ok()
            == Some(0))
        .then(|| PathBuf::from("/var/log/virtsnapfs.log"))
    });
    if let Some(f) = &log_file {
        cmd.arg("--log-file").arg(f);
    }
    if let Some(s) = &request.source {
        cmd.arg(s);
    }
    cmd.arg(&request.mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if is_mounted(&request.mountpoint) {
            // Close our end of its stderr: from now on it logs only to its log file.
            drop(child.stderr.take());
            return Ok(());
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let mut msg = String::new();
            if let Some(mut err) = child.stderr.take() {
                use std::io::Read;
                let _ = err.read_to_string(&mut msg);
            }
            return Err(format!("the daemon exited ({status}): {}", msg.trim()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("the mount did not appear within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_foreground(request: &MountRequest, options: MountOptions) -> Result<(), String> {
    let uri = connection_uri(request, &options);
    let backend = LibvirtBackend::connect(uri).map_err(|e| e.to_string())?;
    let fs = Arc::new(VirtSnapFs::new(Arc::new(backend), options.fs.clone()));
    // Before anything is served: finish or undo what an earlier daemon left half done.
    fs.recover_unfinished_operations();
    let mut config = Config::default();
    config.mount_options = options.fuse.clone();
    config.acl = options.acl;
    config.n_threads = Some(options.threads);
    config.clone_fd = true;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let session = fuser::spawn_mount(FuseAdapter::new(fs.clone()), &request.mountpoint, &config)
        .map_err(|e| format!("cannot mount {}: {e}", request.mountpoint.display()))?;
    fs.set_kernel_cache(Arc::new(crate::fuse::NotifierKernelCache::start(
        session.notifier(),
    )));
    fs.start_refresher();
    set_readahead(&request.mountpoint, options.readahead_kb);
    info!("mounted on {}", request.mountpoint.display());
    notify_service_manager("READY=1");

    let (tx, rx) = mpsc::channel();
    let signal_handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _ = tx.send(sig);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(sig) => {
                info!("signal {sig}: unmounting {}", request.mountpoint.display());
                notify_service_manager("STOPPING=1");
                signal_handle.close();
                return unmount_and_join(session, &request.mountpoint);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if session.guard.is_finished() => {
                info!("{} was unmounted", request.mountpoint.display());
                notify_service_manager("STOPPING=1");
                signal_handle.close();
                return session.join().map_err(|e| {
                    error!("session ended with an error: {e}");
                    e.to_string()
                });
            }
            Err(_) => {}
        }
    }
}

/// Unmounts the session's mount point and waits for the session to end. A mount point that
/// is no longer mounted (`fusermount3 -u` or `umount` came first, and the signal before the
/// session's end was noticed) is not a failure: fuser still calls umount(2), which answers
/// EINVAL for a directory that is not a mount point (ENOENT if the directory is gone too).
/// Any other failure, such as EBUSY while something uses the mount, is reported.
fn unmount_and_join(session: fuser::BackgroundSession, mountpoint: &Path) -> Result<(), String> {
    match session.umount_and_join() {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT))
                && !is_mounted(mountpoint) =>
        {
            info!("{} was already unmounted", mountpoint.display());
            Ok(())
        }
        Err(e) => Err(format!("unmount failed: {e}")),
    }
}

/// Tells the service manager that started this process about a change of state: `READY=1`
/// once mounted, `STOPPING=1` when unmounting (systemd's `Type=notify`, through the datagram
/// socket named in NOTIFY_SOCKET). Nothing to do when no service manager asked.
fn notify_service_manager(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notification(&socket, state) {
        log::warn!(
            "could not tell the service manager {state} through {}: {e}",
            Path::new(&socket).display()
        );
    }
}

fn send_notification(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    // A name starting with '@' is an abstract socket (systemd's usual choice).
    let address = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_unknown_ones_are_refused() {
        let o = parse_options(&[
            "allow_other,disk_mode=0444,refresh=0.5".into(),
            "uid=7,x-systemd.automount,nofail".into(),
        ])
        .unwrap();
        assert!(matches!(o.acl, SessionACL::All));
        assert_eq!(o.fs.disk_mode, 0o444);
        assert_eq!(o.fs.uid, 7);
        assert_eq!(o.fs.refresh, Duration::from_millis(500));
        assert!(parse_options(&["bogus".into()])
            .unwrap_err()
            .contains("unknown mount option"));
        assert!(parse_options(&["disk_mode=999".into()]).is_err());
        assert!(parse_options(&["threads=0".into()]).is_err());
        let o = parse_options(&["snapshot_kind=external,allow_stop".into()]).unwrap();
        assert_eq!(o.fs.ops.kind, crate::ops::SnapshotKind::External);
        assert!(o.fs.ops.allow_stop);
        assert!(parse_options(&["snapshot_kind=both".into()]).is_err());
    }

    #[test]
    fn the_mount_is_always_nodev_and_nosuid() {
        for o in [parse_options(&[]), parse_options(&["nodev,nosuid".into()])] {
            let o = o.unwrap();
            assert!(o.fuse.contains(&MountOption::NoDev), "{:?}", o.fuse);
            assert!(o.fuse.contains(&MountOption::NoSuid), "{:?}", o.fuse);
        }
        // mount.fuse3 passes dev,suid for root: accepted, and still nodev,nosuid.
        let o = parse_options(&["allow_other,dev,suid".into()]).unwrap();
        assert!(o.fuse.contains(&MountOption::NoDev), "{:?}", o.fuse);
        assert!(o.fuse.contains(&MountOption::NoSuid), "{:?}", o.fuse);
        assert!(!o.fuse.contains(&MountOption::Dev), "{:?}", o.fuse);
        assert!(!o.fuse.contains(&MountOption::Suid), "{:?}", o.fuse);
    }

    #[test]
    fn uri_priority() {
        let o = parse_options(&["connect=test:///default".into()]).unwrap();
        let mut r = MountRequest {
            source: Some("qemu:///system".into()),
            ..Default::default()
        };
        assert_eq!(connection_uri(&r, &o).as_deref(), Some("test:///default"));
        r.connect = Some("qemu:///session".into());
        assert_eq!(connection_uri(&r, &o).as_deref(), Some("qemu:///session"));
        let none = parse_options(&[]).unwrap();
        r.connect = None;
        assert_eq!(connection_uri(&r, &none).as_deref(), Some("qemu:///system"));
        r.source = Some("virtsnapfs".into());
        assert_eq!(connection_uri(&r, &none), None);
    }

    #[test]
    fn notifications_reach_path_and_abstract_sockets() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let by_path = UnixDatagram::bind(&path).unwrap();
        send_notification(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = by_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let name = format!("virtsnapfs-test-{}", std::process::id());
        let abstract_socket =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        send_notification(format!("@{name}").as_ref(), "STOPPING=1").unwrap();
        let n = abstract_socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
