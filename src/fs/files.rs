//! The guest's own files: `files/` in every snapshot directory and in `live/`, one directory
//! per filesystem found on the disks, named as Linux names the block device (`vda` for a
//! filesystem on the whole disk, `vda1`, `vda5`, … for partitions), each showing the guest
//! filesystem's tree through [`crate::guest::GuestFs`].
//!
//! Nothing is opened until `files/` is entered: `files/` itself is a plain directory whose
//! attributes need no disk read; listing it, or looking a name up in it, finds the volumes of
//! the disks and opens the filesystems on them (a few reads each, plus the journal scan of a
//! filesystem whose journal needs recovery).
//!
//! What is kept, and its bounds:
//! - at most [`OPEN_FILESYSTEMS`] opened filesystems, least recently used dropped first; each
//!   bounds its own memory (the ext4 reader: 4 MiB of metadata blocks and its journal
//!   overlay);
//! - per snapshot and `live/`, the names of the volumes found on its disks ([`PLACE_SCANS`]
//!   of them); the disks are read together, since an LVM2 volume group may span several;
//! - per opened filesystem, the parent of each guest directory looked up (at most
//!   [`MAX_PARENTS`]), so that a directory reached under a second parent is refused instead
//!   of making the tree loop;
//! - the last [`LISTINGS`] listings of guest directories, so that a listing read in several
//!   requests is read from the disk once.
//!
//! Snapshot views never change: one is reused as long as the snapshot is the same one (its
//! chain and its creation time: a snapshot made again under the same name is another). A
//! `live/` view is the disk as it was when the view was opened. It is opened again when the
//! domain's change counter moved (a snapshot operation, or libvirt changed the domain), when
//! the files of a shut-off domain's chain changed (mtime or size, compared at most once per
//! refresh interval), and, for a running domain, once it is older than the refresh interval:
//! a running guest's files are crash-consistent, as in a snapshot taken at that moment. A
//! file held open in `live/files` reads the view it was opened in; once the domain's change
//! counter has moved its reads fail (ESTALE) rather than mix two states.

use super::*;

use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::error::ErrorKind;
use crate::guest::{self, FileKind, GuestAttr, GuestError, GuestFs, GuestTime};
use crate::ops::images::{files_stamp, FileStamp};
use crate::source::ByteSource;

/// Opened guest filesystems kept at once.
pub const OPEN_FILESYSTEMS: usize = 16;
/// Snapshots (and `live/` directories) whose volume names are remembered.
pub const PLACE_SCANS: usize = 1024;
/// Directory parents remembered per opened filesystem (16 bytes each, with the map's
/// overhead about 40: at most 160 MiB for a filesystem of 4 million directories).
pub const MAX_PARENTS: usize = 4 << 20;
/// Guest directory listings kept for the requests that read them in parts.
pub const LISTINGS: usize = 4;

/// A disk's bytes, for the guest layer: reads through the disk's chain, zeros past its end.
pub struct ChainSource(pub Arc<Chain>);

impl ByteSource for ChainSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset).map_err(io::Error::other)
    }

    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.0.size())
    }
}

/// A snapshot, or `live/`, of one domain: what volume scans and opened views belong to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PlaceKey {
    domain: String,
    snapshot: Option<String>,
}

/// One disk as it was when a scan or a view was opened.
#[derive(Clone)]
struct OpenedDisk {
    target: String,
    stamp: Stamp,
    /// `live/` only: the chain's files and their (mtime, size) when opened.
    files: Vec<PathBuf>,
    files_stamp: Vec<FileStamp>,
}

/// When and from which disks a scan or a view was opened, to decide whether it still shows
/// them.
struct Opened {
    disks: Vec<OpenedDisk>,
    at: Instant,
    /// When the disks' `files_stamp` were last found unchanged.
    checked: Mutex<Instant>,
}

impl Opened {
    fn new(disks: Vec<OpenedDisk>) -> Opened {
        let now = Instant::now();
        Opened {
            disks,
            at: now,
            checked: Mutex::new(now),
        }
    }

    /// What of `self` concerns the disks named `targets` (a volume's).
    fn of_disks(&self, targets: &[String]) -> Opened {
        Opened {
            disks: self
                .disks
                .iter()
                .filter(|d| targets.contains(&d.target))
                .cloned()
                .collect(),
            at: self.at,
            checked: Mutex::new(*self.checked.lock()),
        }
    }
}

/// What a view was opened from: compared on every request that reaches a guest file, so
/// it is compared field by field, never formatted.
#[derive(Clone, PartialEq, Eq)]
struct Stamp {
    chain: crate::image::ChainSpec,
    /// The snapshot's creation time, or for `live/` the domain's change counter.
    version: i128,
}

/// The volumes of a snapshot's (or `live/`'s) disks that hold a filesystem this layer reads.
struct PlaceScan {
    /// Every disk that was read.
    opened: Opened,
    volumes: Vec<String>,
    /// The disks that could not be read, with their errors (a scan with any is not kept).
    failed: Vec<(String, FsError)>,
}

/// One opened guest filesystem.
pub(super) struct View {
    pub(super) fs: Arc<dyn GuestFs>,
    opened: Opened,
    /// "domain D snapshot S disk vda volume vda1 (ext4)", for messages (a logical volume on
    /// several disks: "disks vda+vdb").
    pub(super) label: String,
    /// Each guest directory's parent as first looked up (the root's is 0).
    parents: Mutex<HashMap<u64, u64>>,
    /// `live/` views: the domain's change counter when the view was opened.
    counter: Option<u64>,
}

impl View {
    fn new(fs: Box<dyn GuestFs>, opened: Opened, label: String, counter: Option<u64>) -> View {
        let fs: Arc<dyn GuestFs> = Arc::from(fs);
        let parents = HashMap::from([(fs.root(), 0)]);
        View {
            fs,
            opened,
            label,
            parents: Mutex::new(parents),
            counter,
        }
    }

    /// A guest directory has one parent: `dir` reached from `parent` is refused when it was
    /// first reached from another (a directory that contains itself or one of its
    /// ancestors, or the same directory linked twice), so that no walk of the tree loops.
    fn check_parent(&self, dir: u64, parent: u64) -> Result<(), FsError> {
        let mut parents = self.parents.lock();
        let first = match parents.get(&dir) {
            Some(&p) => p,
            None if dir == parent => parent.wrapping_add(1),
            None => {
                if parents.len() < MAX_PARENTS {
                    parents.insert(dir, parent);
                }
                return Ok(());
            }
        };
        if first == parent {
            return Ok(());
        }
        let place = if first == 0 {
            "is the volume's root directory".to_string()
        } else if dir == parent {
            "contains itself".to_string()
        } else {
            format!("is already in directory inode {first}")
        };
        Err(fs_err!(
            Io,
            "{}: directory inode {dir} reached from directory inode {parent} {place}: a directory has one parent, so the tree would loop (corrupt filesystem)",
            self.label
        ))
    }
}

/// The opened views and what was found on each disk.
pub(super) struct GuestViews {
    views: Mutex<LruCache<(PlaceKey, String), Arc<View>>>,
    scans: Mutex<LruCache<PlaceKey, Arc<PlaceScan>>>,
    listings: Mutex<LruCache<u64, Arc<Vec<DirEntry>>>>,
}

impl GuestViews {
    pub(super) fn new() -> GuestViews {
        let n = |n| NonZeroUsize::new(n).expect("nonzero");
        GuestViews {
            views: Mutex::new(LruCache::new(n(OPEN_FILESYSTEMS))),
            scans: Mutex::new(LruCache::new(n(PLACE_SCANS))),
            listings: Mutex::new(LruCache::new(n(LISTINGS))),
        }
    }
}

/// A snapshot, or `live/`, with its disks as the catalog has them now.
pub(super) struct Place {
    domain: String,
    snapshot: Option<String>,
    active: bool,
    created: i64,
    disks: Vec<DiskModel>,
    /// `live/` only: the domain's change counter (even: no operation running).
    counter: Option<u64>,
}

impl Place {
    fn label(&self) -> String {
        match &self.snapshot {
            Some(s) => format!("domain {} snapshot {s}", self.domain),
            None => format!("domain {} {LIVE_DIR}", self.domain),
        }
    }

    fn stamp(&self, disk: &DiskModel) -> Stamp {
        Stamp {
            chain: disk.chain.clone(),
            version: self.version(),
        }
    }

    fn version(&self) -> i128 {
        self.counter.map_or(i128::from(self.created), i128::from)
    }

    /// Whether `stamp` is what `disk` of this place would be stamped with now.
    fn stamped(&self, stamp: &Stamp, disk: &DiskModel) -> bool {
        stamp.chain == disk.chain && stamp.version == self.version()
    }

    /// The epoch of the guest nodes looked up here now (see [`NodeKey::Guest`]).
    fn epoch(&self) -> u64 {
        self.counter.unwrap_or(0)
    }

    fn key(&self) -> PlaceKey {
        PlaceKey {
            domain: self.domain.clone(),
            snapshot: self.snapshot.clone(),
        }
    }
}

fn guest_error(label: &str, what: &str, e: GuestError) -> FsError {
    FsError {
        kind: ErrorKind::of_guest(&e),
        message: format!("{label}: {what}: {e}"),
    }
}

fn guest_time(t: GuestTime) -> SystemTime {
    let base = if t.secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.secs.unsigned_abs()))
    };
    base.and_then(|b| b.checked_add(Duration::from_nanos(u64::from(t.nsecs))))
        .unwrap_or(UNIX_EPOCH)
}

/// A device number as the kernel's `new_encode_dev` packs it into FUSE's 32 bits.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn node_kind(kind: FileKind) -> NodeKind {
    match kind {
        FileKind::File => NodeKind::File,
        FileKind::Directory => NodeKind::Directory,
        FileKind::Symlink => NodeKind::Symlink,
        FileKind::CharDevice => NodeKind::CharDevice,
        FileKind::BlockDevice => NodeKind::BlockDevice,
        FileKind::Fifo => NodeKind::Fifo,
        FileKind::Socket => NodeKind::Socket,
    }
}

fn shown(name: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(name))
}

impl VirtSnapFs {
    /// The permission bits of `files/` and of each volume's root: the disks' mode with
    /// search added wherever read is set (0400 gives 0500), so that whoever may read the
    /// disk may enter, and nobody else.
    pub(super) fn files_perm(&self) -> u16 {
        let m = self.options.disk_mode & 0o777;
        m | ((m & 0o444) >> 2)
    }

    /// `files/`'s attributes: no disk is read.
    pub(super) fn files_attr(
        &self,
        ino: u64,
        domain: &str,
        snapshot: Option<&str>,
    ) -> Result<Attr, FsError> {
        let m = self.domain(domain)?;
        let mtime = match snapshot {
            Some(s) => {
                self.snapshot_exists(&m, s)?;
                unix_time(m.snapshot(s).map_or(0, |s| s.creation_time))
            }
            None => self.mounted_at,
        };
        let mut a = self.dir_attr(ino, mtime);
        a.perm = self.files_perm();
        a.volatile = snapshot.is_none();
        Ok(a)
    }

    pub(super) fn place(&self, domain: &str, snapshot: Option<&str>) -> Result<Place, FsError> {
        let mut counter = None;
        if snapshot.is_none() {
            let changes = self.change_counter(domain);
            let mut now = changes.load(Ordering::Acquire);
            for _ in 0..disks::LIVE_READ_TRIES {
                if now.is_multiple_of(2) {
                    break;
                }
                // An operation is changing the disks: wait until it has ended.
                drop(self.ops.domain_lock(domain).lock());
                now = changes.load(Ordering::Acquire);
            }
            counter = Some(now);
        }
        let m = self.domain(domain)?;
        let (created, disks) = match snapshot {
            Some(s) => {
                let snap = m
                    .snapshot(s)
                    .ok_or_else(|| fs_err!(NotFound, "domain {domain}: no snapshot {s}"))?;
                (snap.creation_time, snap.disks.clone())
            }
            None => (0, m.disks.clone()),
        };
        Ok(Place {
            domain: domain.to_string(),
            snapshot: snapshot.map(str::to_string),
            active: m.active,
            created,
            disks,
            counter,
        })
    }

    /// Whether what was opened as `opened` still shows its disks.
    fn still_fresh(&self, opened: &Opened, place: &Place) -> bool {
        for o in &opened.disks {
            match place.disks.iter().find(|d| d.target == o.target) {
                Some(disk) if place.stamped(&o.stamp, disk) => {}
                _ => return false,
            }
        }
        if place.counter.is_none() {
            return true;
        }
        if place.active && opened.at.elapsed() >= self.options.refresh {
            return false;
        }
        let mut checked = opened.checked.lock();
        if checked.elapsed() >= self.options.refresh {
            if opened
                .disks
                .iter()
                .any(|o| files_stamp(&o.files) != o.files_stamp)
            {
                // A shut-off domain's images changed outside this daemon (another mount
                // reverted it, or libvirt did) before our refresh saw it: the nodes looked up
                // before now name files of the old state, so their epoch ends here, as after
                // our own operations (by 2: the counter stays even, no operation running).
                // Otherwise a node would be answered from the new filesystem under its old
                // number, and the kernel fails a node whose type changed with EIO.
                self.change_counter(&place.domain)
                    .fetch_add(2, Ordering::AcqRel);
                return false;
            }
            *checked = Instant::now();
        }
        true
    }

    /// Opens a disk's chain for the guest layer.
    fn open_disk(
        &self,
        place: &Place,
        disk: &DiskModel,
    ) -> Result<(Arc<Chain>, OpenedDisk), FsError> {
        let d = &place.domain;
        let t = &disk.target;
        let label = format!("{} disk {t}", place.label());
        let chain = match &place.snapshot {
            Some(s) => self.chain(
                ChainKey::Snapshot(d.clone(), s.clone(), t.clone()),
                &disk.chain,
                None,
                &label,
            )?,
            None => self.chain(
                ChainKey::Live(d.clone(), t.clone()),
                &disk.chain,
                Some(Duration::ZERO),
                &label,
            )?,
        };
        let files: Vec<PathBuf> = if place.counter.is_some() {
            disks::chain_files(&chain)
        } else {
            Vec::new()
        };
        let opened = OpenedDisk {
            target: t.clone(),
            stamp: place.stamp(disk),
            files_stamp: files_stamp(&files),
            files,
        };
        Ok((chain, opened))
    }

    /// "domain D snapshot S disk vda volume vda1", or "… disks vda+vdb volume vg-lv".
    fn volume_label(place: &Place, volume: &guest::Volume) -> String {
        let s = if volume.disks.len() > 1 { "s" } else { "" };
        format!(
            "{} disk{s} {} volume {}",
            place.label(),
            volume.disks.join("+"),
            volume.name
        )
    }

    /// The volumes of all the place's disks, read together (an LVM2 volume group may span
    /// disks), what they were read from, and the disks that could not be read.
    fn place_volumes(&self, place: &Place) -> (Vec<guest::Volume>, Opened, Vec<(String, FsError)>) {
        let mut sources: Vec<(Arc<dyn ByteSource>, String)> = Vec::new();
        let mut opened = Vec::new();
        let mut failed = Vec::new();
        for disk in &place.disks {
            match self.open_disk(place, disk) {
                Ok((chain, o)) => {
                    sources.push((Arc::new(ChainSource(chain)), disk.target.clone()));
                    opened.push(o);
                }
                Err(e) => failed.push((disk.target.clone(), e)),
            }
        }
        let found = guest::find_volumes_of_disks(sources);
        for (target, e) in found.failed {
            opened.retain(|o| o.target != target);
            let label = format!("{} disk {target}", place.label());
            failed.push((target, guest_error(&label, "reading its volumes", e)));
        }
        (found.volumes, Opened::new(opened), failed)
    }

    /// The volumes of the place's disks that hold a filesystem, found when not known yet;
    /// every filesystem opened on the way is kept as a view. Logs what was found, a line
    /// per disk.
    fn scan_place(&self, place: &Place) -> Arc<PlaceScan> {
        let key = place.key();
        if let Some(scan) = self.guest.scans.lock().get(&key).cloned() {
            if scan.opened.disks.len() == place.disks.len() && self.still_fresh(&scan.opened, place)
            {
                return scan;
            }
        }
        let (found, opened, failed) = self.place_volumes(place);
        for (_, e) in &failed {
            log::log!(e.kind.log_level(), "{e}");
        }
        let mut volumes = Vec::new();
        // What was found, by the disk each volume starts on.
        let mut report: Vec<(String, Vec<String>)> = opened
            .disks
            .iter()
            .map(|d| (d.target.clone(), Vec::new()))
            .collect();
        for v in found {
            let label = Self::volume_label(place, &v);
            let found = match guest::open_filesystem(v.source.clone(), self.cache.clone()) {
                Ok(Some(fs)) => {
                    let format = fs.format_name();
                    self.keep_view(place, &v, fs, &opened);
                    volumes.push(v.name.clone());
                    format.to_string()
                }
                Ok(None) => "nothing recognised".to_string(),
                Err(e) => {
                    warn!("{label}: the filesystem cannot be opened: {e}");
                    "unreadable".to_string()
                }
            };
            let also = match v.disks.get(1..) {
                Some(rest) if !rest.is_empty() => format!(" (also on {})", rest.join(", ")),
                _ => String::new(),
            };
            let first = v.disks.first().map(String::as_str).unwrap_or_default();
            if let Some((_, lines)) = report.iter_mut().find(|(t, _)| t == first) {
                lines.push(format!("{}{also} {found}", v.name));
            }
        }
        for (target, lines) in report {
            info!(
                "{} disk {target}: {}",
                place.label(),
                if lines.is_empty() {
                    "no volumes".to_string()
                } else {
                    lines.join(", ")
                }
            );
        }
        let scan = Arc::new(PlaceScan {
            opened,
            volumes,
            failed,
        });
        if scan.failed.is_empty() {
            self.guest.scans.lock().put(key, scan.clone());
        }
        scan
    }

    /// The error for `volume` not being found while some disks could not be read: the
    /// error of the disk it is named after, or else of the first (it may be a logical
    /// volume with a PV there); `None` when every disk was read.
    fn unread_disk_error(failed: &[(String, FsError)], volume: &str) -> Option<FsError> {
        failed
            .iter()
            .find(|(t, _)| volume.starts_with(t.as_str()))
            .or(failed.first())
            .map(|(_, e)| e.clone())
    }

    /// The opened filesystem of `volume`, opened again when it is not fresh.
    pub(super) fn view(&self, place: &Place, volume: &str) -> Result<Arc<View>, FsError> {
        let key = (place.key(), volume.to_string());
        let cached = || {
            let view = self.guest.views.lock().get(&key).cloned()?;
            self.still_fresh(&view.opened, place).then_some(view)
        };
        if let Some(view) = cached() {
            return Ok(view);
        }
        let scan = self.scan_place(place);
        if let Some(view) = cached() {
            return Ok(view);
        }
        let not_found = |failed: &[(String, FsError)]| {
            Self::unread_disk_error(failed, volume).unwrap_or_else(|| {
                fs_err!(NotFound, "{}: no filesystem on {volume}", place.label())
            })
        };
        if !scan.volumes.iter().any(|v| v == volume) {
            return Err(not_found(&scan.failed));
        }
        // Known, but its view was dropped or is stale: open this volume alone again.
        let (found, opened, failed) = self.place_volumes(place);
        let v = found
            .into_iter()
            .find(|v| v.name == volume)
            .ok_or_else(|| not_found(&failed))?;
        let label = Self::volume_label(place, &v);
        let fs = guest::open_filesystem(v.source.clone(), self.cache.clone())
            .map_err(|e| guest_error(&label, "opening its filesystem", e))?
            .ok_or_else(|| fs_err!(NotFound, "{label}: nothing recognised"))?;
        Ok(self.keep_view(place, &v, fs, &opened))
    }

    /// Keeps `fs`, opened on volume `v` of `place` from the disks `opened` read, as that
    /// volume's view.
    fn keep_view(
        &self,
        place: &Place,
        v: &guest::Volume,
        fs: Box<dyn GuestFs>,
        opened: &Opened,
    ) -> Arc<View> {
        let label = format!("{} ({})", Self::volume_label(place, v), fs.format_name());
        let view = Arc::new(View::new(
            fs,
            opened.of_disks(&v.disks),
            label,
            place.counter,
        ));
        self.guest
            .views
            .lock()
            .put((place.key(), v.name.clone()), view.clone());
        view
    }

    /// `files/`'s entries: one per volume with a filesystem, on all the disks. A disk that
    /// cannot be read is left out (its error is logged).
    pub(super) fn files_children(
        &self,
        domain: &str,
        snapshot: Option<&str>,
    ) -> Result<Vec<(NodeKey, String)>, FsError> {
        let place = self.place(domain, snapshot)?;
        let scan = self.scan_place(&place);
        let mut out = Vec::with_capacity(scan.volumes.len());
        for volume in &scan.volumes {
            let key = (place.key(), volume.clone());
            let root = self
                .guest
                .views
                .lock()
                .peek(&key)
                .map(|v| v.fs.root())
                .map_or_else(|| self.view(&place, volume).map(|v| v.fs.root()), Ok)?;
            out.push((
                NodeKey::Guest(
                    domain.into(),
                    snapshot.map(Arc::from),
                    volume.as_str().into(),
                    root,
                    place.epoch(),
                ),
                volume.clone(),
            ));
        }
        Ok(out)
    }

    /// The place and opened filesystem of a guest node of `epoch` (see [`NodeKey::Guest`]).
    /// A `live/` node looked up before the domain's disks last changed is gone: ESTALE, on
    /// which the kernel walks a path again from the top (its cached entries below `files/`
    /// may still name old nodes until the invalidation sent after the change arrives), so
    /// that only a file or directory held open across the change fails.
    fn guest_place_view(
        &self,
        domain: &str,
        snapshot: &Option<Arc<str>>,
        volume: &str,
        epoch: u64,
    ) -> Result<(Place, Arc<View>), FsError> {
        let stale = |place: &Place, why: &str| {
            fs_err!(
                Stale,
                "{} volume {volume}: a file or directory looked up before the live disks changed ({why}); open it again",
                place.label()
            )
        };
        let place = self.place(domain, snapshot.as_deref())?;
        if place.epoch() != epoch {
            return Err(stale(
                &place,
                "a snapshot operation, or libvirt changed the domain",
            ));
        }
        let view = self.view(&place, volume)?;
        // Opening the view may have found the images changed (see `still_fresh`).
        if place.counter.is_some() && self.change_counter(domain).load(Ordering::Acquire) != epoch {
            return Err(stale(&place, "their images changed outside this mount"));
        }
        Ok((place, view))
    }

    fn to_attr(&self, ino: u64, view: &View, a: &GuestAttr, live: bool) -> Attr {
        let mut attr = Attr {
            ino,
            kind: node_kind(a.kind),
            volatile: live,
            checked_each_read: false,
            size: a.size,
            allocated: a.blocks.saturating_mul(512),
            perm: a.perm & 0o7777,
            nlink: a.nlink,
            atime: guest_time(a.atime),
            mtime: guest_time(a.mtime),
            ctime: guest_time(a.ctime),
            uid: a.uid,
            gid: a.gid,
            rdev: encode_dev(a.rdev_major, a.rdev_minor),
            blksize: a.block_size,
        };
        if a.ino == view.fs.root() {
            // The volume's root takes the disk's rule: whoever cannot read the disk cannot
            // enter.
            attr.perm = self.files_perm();
            attr.uid = self.options.uid;
            attr.gid = self.options.gid;
        }
        attr
    }

    pub(super) fn guest_getattr(
        &self,
        ino: u64,
        (domain, snapshot, volume, guest_ino, epoch): (&str, &Option<Arc<str>>, &str, u64, u64),
    ) -> Result<Attr, FsError> {
        let (_, view) = self.guest_place_view(domain, snapshot, volume, epoch)?;
        let a = view
            .fs
            .attr(guest_ino)
            .map_err(|e| guest_error(&view.label, &format!("inode {guest_ino}"), e))?;
        Ok(self.to_attr(ino, &view, &a, snapshot.is_none()))
    }

    pub(super) fn guest_lookup(
        &self,
        (domain, snapshot, volume, dir, epoch): (&Arc<str>, &Option<Arc<str>>, &Arc<str>, u64, u64),
        name: &[u8],
    ) -> Result<Attr, FsError> {
        let (_, view) = self.guest_place_view(domain, snapshot, volume, epoch)?;
        let what = || format!("{} in directory inode {dir}", shown(name));
        let child = view
            .fs
            .lookup(dir, name)
            .map_err(|e| guest_error(&view.label, &what(), e))?
            .ok_or_else(|| fs_err!(NotFound, "{}: {}: no such entry", view.label, what()))?;
        let a = view
            .fs
            .attr(child)
            .map_err(|e| guest_error(&view.label, &format!("{} (inode {child})", what()), e))?;
        if a.kind == FileKind::Directory {
            view.check_parent(child, dir)?;
        }
        let key = NodeKey::Guest(
            domain.clone(),
            snapshot.clone(),
            volume.clone(),
            child,
            epoch,
        );
        Ok(self.to_attr(self.inodes.ino(&key), &view, &a, snapshot.is_none()))
    }

    /// A guest directory's parent node: `files/` for a volume's root, else the directory it
    /// was first looked up in (itself if that is not known).
    pub(super) fn guest_parent(&self, key: &NodeKey) -> NodeKey {
        let NodeKey::Guest(d, s, v, i, e) = key else {
            return key.clone();
        };
        let Ok((_, view)) = self.guest_place_view(d, s, v, *e) else {
            return key.clone();
        };
        let parent = view.parents.lock().get(i).copied();
        match parent {
            Some(0) => NodeKey::Files(d.to_string(), s.as_deref().map(str::to_string)),
            Some(p) => NodeKey::Guest(d.clone(), s.clone(), v.clone(), p, *e),
            None => key.clone(),
        }
    }

    /// A guest directory's entries, `.` and `..` first. A listing read in several requests
    /// (offset > 0) comes from the one read at offset 0 while it is kept.
    pub(super) fn guest_readdir(
        &self,
        ino: u64,
        key: &NodeKey,
        offset: u64,
    ) -> Result<Arc<Vec<DirEntry>>, FsError> {
        let NodeKey::Guest(domain, snapshot, volume, dir, epoch) = key else {
            return Err(fs_err!(NotADirectory, "{key:?} is not a guest directory"));
        };
        if offset > 0 {
            if let Some(listing) = self.guest.listings.lock().get(&ino).cloned() {
                return Ok(listing);
            }
        }
        let (_, view) = self.guest_place_view(domain, snapshot, volume, *epoch)?;
        let entries = view
            .fs
            .read_dir(*dir)
            .map_err(|e| guest_error(&view.label, &format!("directory inode {dir}"), e))?;
        guest::readahead::read_ahead(&view.fs, &entries);
        let parent = self.inodes.ino(&self.guest_parent(key));
        let mut out = Vec::with_capacity(entries.len() + 2);
        out.push(DirEntry {
            ino,
            kind: NodeKind::Directory,
            name: ".".into(),
        });
        out.push(DirEntry {
            ino: parent,
            kind: NodeKind::Directory,
            name: "..".into(),
        });
        for e in entries {
            let child = NodeKey::Guest(
                domain.clone(),
                snapshot.clone(),
                volume.clone(),
                e.ino,
                *epoch,
            );
            out.push(DirEntry {
                ino: self.inodes.ino(&child),
                kind: node_kind(e.kind),
                name: OsString::from_vec(e.name),
            });
        }
        let out = Arc::new(out);
        self.guest.listings.lock().put(ino, out.clone());
        Ok(out)
    }

    pub(super) fn guest_readlink(
        &self,
        (domain, snapshot, volume, guest_ino, epoch): (&str, &Option<Arc<str>>, &str, u64, u64),
    ) -> Result<OsString, FsError> {
        let (_, view) = self.guest_place_view(domain, snapshot, volume, epoch)?;
        let target = view
            .fs
            .read_link(guest_ino)
            .map_err(|e| guest_error(&view.label, &format!("symlink inode {guest_ino}"), e))?;
        Ok(OsString::from_vec(target))
    }

    /// Opens a guest regular file for reading. Devices, fifos and sockets are never opened
    /// (the mount is `nodev`, and the kernel opens fifos itself; this is the refusal for
    /// any request that still arrives).
    pub(super) fn guest_open(
        &self,
        (domain, snapshot, volume, guest_ino, epoch): (&str, &Option<Arc<str>>, &str, u64, u64),
    ) -> Result<(Handle, bool), FsError> {
        let (place, view) = self.guest_place_view(domain, snapshot, volume, epoch)?;
        let a = view
            .fs
            .attr(guest_ino)
            .map_err(|e| guest_error(&view.label, &format!("inode {guest_ino}"), e))?;
        match a.kind {
            FileKind::File => {}
            FileKind::Directory => {
                return Err(fs_err!(
                    IsADirectory,
                    "{}: inode {guest_ino} is a directory",
                    view.label
                ))
            }
            FileKind::Symlink => {
                return Err(fs_err!(
                    InvalidArgument,
                    "{}: inode {guest_ino} is a symlink",
                    view.label
                ))
            }
            other => {
                return Err(fs_err!(
                    NotPermitted,
                    "{}: inode {guest_ino} is a guest {other:?}: shown, never opened",
                    view.label
                ))
            }
        }
        let live = place
            .counter
            .map(|_| (self.change_counter(domain), view.counter.unwrap_or(0)));
        // A snapshot's files never change: the kernel may keep their pages (the whole
        // domain's inodes are forgotten when a snapshot is made again under the same name).
        Ok((
            Handle::Guest {
                view,
                ino: guest_ino,
                live,
            },
            snapshot.is_some(),
        ))
    }

    pub(super) fn guest_read(
        view: &View,
        ino: u64,
        live: &Option<(ChangeCounter, u64)>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, FsError> {
        Self::check_live(view, ino, live)?;
        view.fs
            .read(ino, offset, buf)
            .map_err(|e| guest_error(&view.label, &format!("inode {ino}: read at {offset}"), e))
    }

    /// A handle on a `live/` guest file fails once the domain's change counter moved: the
    /// same condition, and the same ESTALE, as a node of an earlier epoch (see
    /// `guest_place_view`), whether the kernel or the daemon opened the file.
    fn check_live(
        view: &View,
        ino: u64,
        live: &Option<(ChangeCounter, u64)>,
    ) -> Result<(), FsError> {
        if let Some((changes, at)) = live {
            if changes.load(Ordering::Acquire) != *at {
                return Err(fs_err!(
                    Stale,
                    "{}: inode {ino}: the live disk changed since the file was opened (a snapshot operation, or libvirt changed the domain); open it again",
                    view.label
                ));
            }
        }
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE in a guest file, from its block map.
    pub(super) fn guest_lseek(
        view: &View,
        ino: u64,
        live: &Option<(ChangeCounter, u64)>,
        offset: u64,
        whence: Whence,
    ) -> Result<u64, FsError> {
        Self::check_live(view, ino, live)?;
        let err = |e| guest_error(&view.label, &format!("inode {ino}: seek"), e);
        let size = view.fs.attr(ino).map_err(err)?.size;
        let past_end = || fs_err!(NoSuchOffset, "offset {offset} is at or past the end");
        if offset >= size {
            return Err(past_end());
        }
        let next = view.fs.next_data(ino, offset).map_err(err)?;
        Ok(match (whence, next) {
            (Whence::Data, Some((start, _))) => start,
            (Whence::Data, None) => return Err(past_end()),
            (Whence::Hole, Some((start, end))) => {
                if start == offset {
                    end
                } else {
                    offset
                }
            }
            (Whence::Hole, None) => size,
        })
    }

    fn guest_xattrs(&self, ino: u64) -> Result<Option<Vec<guest::Xattr>>, FsError> {
        let NodeKey::Guest(d, s, v, i, e) = self.key(ino)? else {
            return Ok(None);
        };
        let (_, view) = self.guest_place_view(&d, &s, &v, e)?;
        let list = view
            .fs
            .xattrs(i)
            .map_err(|e| guest_error(&view.label, &format!("inode {i}: extended attributes"), e))?;
        Ok(Some(list))
    }

    /// The value of extended attribute `name`: guest files have the guest's; nothing else
    /// has any.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Option<Vec<u8>>, FsError> {
        Ok(self.guest_xattrs(ino)?.and_then(|list| {
            list.into_iter()
                .find(|(n, _)| n.as_slice() == name.as_bytes())
                .map(|(_, v)| v)
        }))
    }

    /// The names of a node's extended attributes, each followed by a NUL, as `listxattr`
    /// returns them.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let mut out = Vec::new();
        for (name, _) in self.guest_xattrs(ino)?.unwrap_or_default() {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_are_packed_as_the_kernel_unpacks_them() {
        let decode = |dev: u32| ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00));
        for (major, minor) in [(1, 3), (7, 200), (300, 70000), (4095, 0xfffff)] {
            assert_eq!(decode(encode_dev(major, minor)), (major, minor));
        }
    }

    #[test]
    fn guest_times_before_1970_and_after_2038() {
        let t = guest_time(GuestTime {
            secs: -1,
            nsecs: 999_999_999,
        });
        assert_eq!(
            UNIX_EPOCH.duration_since(t).unwrap(),
            Duration::from_nanos(1)
        );
        let t = guest_time(GuestTime {
            secs: 4_102_444_800,
            nsecs: 750_000_000,
        });
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(4_102_444_800, 750_000_000)
        );
    }
}
