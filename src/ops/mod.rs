//! The snapshot operations behind mkdir, rename and rmdir: create, revert, rename and delete,
//! for internal and external snapshots, with libvirt's metadata kept true.
//!
//! Where libvirt does the whole job safely (creating snapshots, reverting and deleting
//! internal ones) it is asked to. Where libvirt 9.0 cannot (reverting an external snapshot,
//! deleting one with a merge), the steps are done here with qemu-img and libvirt's metadata
//! is rewritten with REDEFINE, so the result is the same on any libvirt version.
//!
//! Data safety first: before an image is rewritten or removed, every chain of every domain
//! (live disks and all snapshots) is opened to find what reads it, and the operation is
//! refused, or done without the merge, when anything else still needs it. Operations on one
//! domain are serialised.

pub mod images;
pub mod journal;
pub mod scan;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{info, warn};
use parking_lot::Mutex;

use crate::backend::{flags, Backend, BackendError, BackendErrorKind, DomainState};
use crate::cache::MetadataCache;
use crate::error::FsError;
use crate::fs_err;
use crate::image::Format;
use crate::libvirt::edit;
use crate::model::{DomainModel, SnapshotModel};
use scan::{Chains, DependencyScan, LayoutFetch};

/// Which kind of snapshot mkdir creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Internal when every disk is qcow2 (with RAM for a running domain), else external.
    Auto,
    Internal,
    External,
}

#[derive(Debug, Clone)]
pub struct OpsOptions {
    pub kind: SnapshotKind,
    /// Reverting a running domain to a disk-only snapshot may stop it (virsh destroy).
    pub allow_stop: bool,
    /// Where intent records are kept (DIR/journal).
    pub state_dir: PathBuf,
    /// A live merge whose remaining work has not shrunk for this long is cancelled.
    pub merge_timeout: std::time::Duration,
    /// Bandwidth of live merges in bytes/s (0: unlimited).
    pub merge_bandwidth: u64,
}

impl Default for OpsOptions {
    fn default() -> Self {
        OpsOptions {
            kind: SnapshotKind::Auto,
            allow_stop: false,
            state_dir: PathBuf::from(journal::DEFAULT_STATE_DIR),
            merge_timeout: std::time::Duration::from_secs(120),
            merge_bandwidth: 0,
        }
    }
}

pub struct SnapshotOps {
    backend: Arc<dyn Backend>,
    journal: journal::Journal,
    options: OpsOptions,
    cache: Arc<MetadataCache>,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// What each domain's running operation is doing, for DOMAIN/status.
    status: Mutex<HashMap<String, String>>,
    scan: DependencyScan,
}

fn backend_err(e: BackendError) -> FsError {
    let kind = match e.kind {
        BackendErrorKind::Failed => crate::error::ErrorKind::Io,
        BackendErrorKind::Invalid => crate::error::ErrorKind::InvalidArgument,
        BackendErrorKind::Unsupported => crate::error::ErrorKind::Unsupported,
        BackendErrorKind::Busy => crate::error::ErrorKind::Busy,
    };
    FsError {
        kind,
        message: e.message,
    }
}

fn xml_err(e: crate::libvirt::xml::XmlError) -> FsError {
    fs_err!(Io, "cannot edit libvirt's XML: {e}")
}

/// Names libvirt accepts for snapshots.
pub fn check_snapshot_name(name: &str) -> Result<(), FsError> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return Err(fs_err!(
            InvalidArgument,
            "'{name}' cannot be a snapshot name: libvirt refuses empty names, names starting with '.' and names containing '/'"
        ));
    }
    Ok(())
}

impl SnapshotOps {
    pub fn new(
        backend: Arc<dyn Backend>,
        options: OpsOptions,
        cache: Arc<MetadataCache>,
    ) -> SnapshotOps {
        SnapshotOps {
            scan: DependencyScan::new(backend.clone(), cache.clone()),
            backend,
            journal: journal::Journal::new(&options.state_dir),
            options,
            cache,
            locks: Mutex::new(HashMap::new()),
            status: Mutex::new(HashMap::new()),
        }
    }

    /// What an operation on `domain` is doing now ("idle" when none is running).
    pub fn status(&self, domain: &str) -> String {
        self.status
            .lock()
            .get(domain)
            .cloned()
            .unwrap_or_else(|| "idle".into())
    }

    fn set_status(&self, domain: &str, status: Option<String>) {
        let mut map = self.status.lock();
        match status {
            Some(s) => {
                map.insert(domain.to_string(), s);
            }
            None => {
                map.remove(domain);
            }
        }
    }

    /// The lock that serialises operations on `domain`.
    pub fn domain_lock(&self, domain: &str) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .entry(domain.to_string())
            .or_default()
            .clone()
    }

    /// The domain's model as libvirt has it now (not a cached one).
    pub fn fresh_model(&self, domain: &str) -> Result<DomainModel, FsError> {
        self.backend
            .load_domain(domain)
            .map_err(backend_err)?
            .ok_or_else(|| fs_err!(NotFound, "no domain {domain}"))
    }

    /// Offers the dependency scan models the filesystem has loaded (see
    /// `DependencyScan::offer`).
    pub fn offer_models(&self, models: Vec<Arc<DomainModel>>) {
        self.scan.offer(models);
    }

    fn is_running(&self, domain: &str) -> Result<bool, FsError> {
        Ok(matches!(
            self.backend.domain_state(domain).map_err(backend_err)?,
            DomainState::Running | DomainState::Paused
        ))
    }

    /// The stated format, else the probed one (raw when the file cannot be read).
    fn disk_format(spec_format: Option<Format>, path: &Path) -> Format {
        spec_format.unwrap_or_else(|| crate::image::open::probe_path(path).unwrap_or(Format::Raw))
    }

    /// mkdir: creates snapshot `name` of `model`'s domain, a child of the current snapshot.
    pub fn create(&self, model: &DomainModel, name: &str) -> Result<(), FsError> {
        check_snapshot_name(name)?;
        if model.snapshot(name).is_some() {
            return Err(fs_err!(
                Exists,
                "domain {}: snapshot {name} exists",
                model.name
            ));
        }
        let all_qcow2 = model
            .disks
            .iter()
            .all(|d| Self::disk_format(d.chain.top.format, &d.chain.top.path) == Format::Qcow2);
        let internal = match self.options.kind {
            SnapshotKind::Auto => all_qcow2,
            SnapshotKind::Internal => true,
            SnapshotKind::External => false,
        };
        let escaped = edit::escape(name);
        if internal {
            // libvirt's default for qcow2 disks: internal, and with RAM for a running domain.
            let xml = format!("<domainsnapshot><name>{escaped}</name></domainsnapshot>");
            self.backend
                .create_snapshot(&model.name, &xml, flags::CREATE_ATOMIC)
                .map_err(backend_err)?;
            info!("domain {}: created internal snapshot {name}", model.name);
            return Ok(());
        }
        let mut disks = String::new();
        for d in &model.disks {
            disks.push_str(&format!(
                "<disk name='{}' snapshot='external'/>",
                edit::escape(&d.target)
            ));
        }
        let xml = format!(
            "<domainsnapshot><name>{escaped}</name><memory snapshot='no'/><disks>{disks}</disks></domainsnapshot>"
        );
        let base = flags::CREATE_DISK_ONLY | flags::CREATE_ATOMIC;
        let created = if self.is_running(&model.name)? {
            // Quiesce the guest's filesystems when an agent answers; without one, plain.
            self.backend
                .create_snapshot(&model.name, &xml, base | flags::CREATE_QUIESCE)
                .or_else(|e| {
                    info!(
                        "domain {}: no quiesced snapshot ({e}); taking it without",
                        model.name
                    );
                    self.backend.create_snapshot(&model.name, &xml, base)
                })
        } else {
            self.backend.create_snapshot(&model.name, &xml, base)
        };
        created.map_err(backend_err)?;
        info!("domain {}: created external snapshot {name}", model.name);
        Ok(())
    }

    fn snapshot<'a>(
        &self,
        model: &'a DomainModel,
        name: &str,
    ) -> Result<&'a SnapshotModel, FsError> {
        model
            .snapshot(name)
            .ok_or_else(|| fs_err!(NotFound, "domain {}: no snapshot {name}", model.name))
    }

    fn is_internal(snap: &SnapshotModel) -> bool {
        snap.disks.iter().all(|d| d.chain.snapshot.is_some())
    }

    fn is_external(snap: &SnapshotModel) -> bool {
        snap.disks.iter().all(|d| d.chain.snapshot.is_none())
    }

    /// Starts fetching what an operation's dependency scan needs first (see
    /// `DependencyScan::start_fetch`): for an operation that `scans_first`, once it holds its
    /// domain's lock.
    pub fn start_scan(&self) -> LayoutFetch {
        self.scan.start_fetch()
    }

    /// Whether reverting to snapshot `name` of `model` begins with a dependency scan (an
    /// internal revert does; an external one scans only at its end).
    pub fn revert_scans_first(model: &DomainModel, name: &str) -> bool {
        model.snapshot(name).is_some_and(Self::is_internal)
    }

    /// Whether deleting snapshot `name` of `model` begins with a dependency scan (deleting an
    /// external snapshot does; libvirt deletes an internal one alone).
    pub fn delete_scans_first(model: &DomainModel, name: &str) -> bool {
        model.snapshot(name).is_some_and(Self::is_external)
    }

    /// Every chain of every domain, `model` (just loaded by the operation) taken as its
    /// domain's current model; `fetch`: the scan's fetch, if the operation started it.
    fn chains_with(
        &self,
        model: &DomainModel,
        fetch: Option<LayoutFetch>,
    ) -> Result<Chains, FsError> {
        self.scan.remember(model);
        self.scan.chains(fetch)
    }

    /// mv NAME live: reverts the domain to snapshot `name`. `fetch`: the scan's fetch, if the
    /// caller started it (see `revert_scans_first`).
    pub fn revert(
        &self,
        model: &DomainModel,
        name: &str,
        fetch: Option<LayoutFetch>,
    ) -> Result<(), FsError> {
        let snap = self.snapshot(model, name)?;
        if Self::is_internal(snap) {
            self.check_internal_revert_is_safe(model, snap, fetch)?;
            self.backend
                .revert_snapshot(&model.name, name, 0)
                .map_err(backend_err)?;
            info!(
                "domain {}: reverted to internal snapshot {name}",
                model.name
            );
            Ok(())
        } else if Self::is_external(snap) {
            self.revert_external(model, snap)
        } else {
            Err(fs_err!(
                Unsupported,
                "domain {}: snapshot {name} mixes internal and external disks; revert it with virsh",
                model.name
            ))
        }
    }

    /// An internal revert rewrites the current state of the images holding the snapshot. That
    /// state must not be what another snapshot or domain reads (an external snapshot taken
    /// later has it as its disk): reverting would change that snapshot's bytes.
    fn check_internal_revert_is_safe(
        &self,
        model: &DomainModel,
        snap: &SnapshotModel,
        fetch: Option<LayoutFetch>,
    ) -> Result<(), FsError> {
        let chains = self.chains_with(model, fetch)?;
        for disk in &snap.disks {
            let image = images::canonical(&disk.chain.top.path);
            for c in chains.iter() {
                let own_live = c.domain == model.name && c.snapshot.is_none();
                if own_live || c.snapshot.as_deref() == Some(&snap.name) && c.domain == model.name {
                    continue;
                }
                if c.active_images().contains(&image) {
                    return Err(fs_err!(
                        Busy,
                        "domain {}: reverting to internal snapshot {} would rewrite {}, whose current contents {} still needs; delete that snapshot first, or revert to it instead",
                        model.name,
                        snap.name,
                        image.display(),
                        c.who()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reverting to a disk-only (external) snapshot, which libvirt 9.0 cannot do: a fresh
    /// overlay on each of the snapshot's images, the domain pointed at them, the snapshot made
    /// current. The previous live overlays are removed when nothing else reads them.
    fn revert_external(&self, model: &DomainModel, snap: &SnapshotModel) -> Result<(), FsError> {
        if self.is_running(&model.name)? {
            if !self.options.allow_stop {
                return Err(fs_err!(
                    Busy,
                    "domain {} is running; reverting to the disk-only snapshot {} needs it stopped: shut it down (virsh shutdown {}) and retry, or mount with -o allow_stop",
                    model.name,
                    snap.name,
                    model.name
                ));
            }
            warn!(
                "domain {}: stopping it to revert to {} (allow_stop)",
                model.name, snap.name
            );
            self.backend
                .destroy_domain(&model.name)
                .map_err(backend_err)?;
        }
        let old_xml = self
            .backend
            .inactive_xml(&model.name)
            .map_err(backend_err)?;
        let mut new_xml = old_xml.clone();
        let mut overlays = Vec::new();
        for disk in &snap.disks {
            let base = disk.chain.top.path.clone();
            let format = Self::disk_format(disk.chain.top.format, &base);
            let overlay = images::overlay_name(&base, &snap.name, "revert");
            let path = overlay.to_str().unwrap_or_default();
            new_xml = edit::set_domain_disk_source(&new_xml, &disk.target, path, "qcow2")
                .map_err(xml_err)?;
            overlays.push(NewOverlay {
                base,
                format,
                overlay,
            });
        }
        // The discarded live overlays go, if they are overlays made for snapshots (by libvirt
        // or by an earlier revert) and nothing reads them: never a disk a user set up.
        let made_for_snapshots: BTreeSet<PathBuf> = model
            .snapshots
            .iter()
            .flat_map(|s| s.disks.iter().filter_map(|d| d.overlay.as_deref()))
            .map(images::canonical)
            .collect();
        let discard = model
            .disks
            .iter()
            .map(|d| d.chain.top.path.clone())
            .filter(|p| {
                made_for_snapshots.contains(&images::canonical(p)) || images::is_revert_overlay(p)
            })
            .collect();
        let plan = RevertPlan {
            domain: model.name.clone(),
            snapshot_xml: snap.xml.clone(),
            overlays,
            new_xml,
            discard,
        };
        let intent = self.record(&plan.to_json())?;
        journal::crash_point("revert-external:recorded");
        for (i, o) in plan.overlays.iter().enumerate() {
            if let Err(e) = images::create_overlay(&o.base, o.format, &o.overlay) {
                self.undo_revert(&plan);
                intent.done();
                return Err(e);
            }
            if i == 0 {
                journal::crash_point("revert-external:overlay-created");
            }
        }
        if let Err(e) = self.backend.define_domain(&plan.new_xml) {
            self.undo_revert(&plan);
            intent.done();
            return Err(backend_err(e));
        }
        journal::crash_point("revert-external:domain-defined");
        let finished = self.finish_revert(&plan);
        if finished.is_err() {
            // The domain already runs on the new overlays: put it back as it was.
            let _ = self.backend.define_domain(&old_xml);
            self.undo_revert(&plan);
        }
        intent.done();
        finished?;
        info!(
            "domain {}: reverted to external snapshot (new overlays {})",
            model.name,
            plan.overlays
                .iter()
                .map(|o| o.overlay.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    }

    /// The steps of an external revert after the domain points at the new overlays; safe to
    /// run again.
    fn finish_revert(&self, plan: &RevertPlan) -> Result<(), FsError> {
        self.backend
            .create_snapshot(
                &plan.domain,
                &plan.snapshot_xml,
                flags::CREATE_REDEFINE | flags::CREATE_CURRENT,
            )
            .map_err(backend_err)?;
        journal::crash_point("revert-external:snapshot-current");
        self.remove_unused(&plan.discard);
        Ok(())
    }

    /// Removes the overlays an unfinished revert created, if nothing reads them.
    fn undo_revert(&self, plan: &RevertPlan) {
        let created: Vec<PathBuf> = plan
            .overlays
            .iter()
            .map(|o| o.overlay.clone())
            .filter(|p| p.exists())
            .collect();
        self.remove_unused(&created);
    }

    fn record(&self, intent: &serde_json::Value) -> Result<journal::IntentFile, FsError> {
        self.journal
            .record(intent)
            .map_err(|e| fs_err!(Io, "cannot write the intent record (state_dir): {e}"))
    }

    /// Removes the images in `candidates` that no chain of any domain reads any more and that
    /// hold no internal snapshot. Anything uncertain is kept.
    fn remove_unused(&self, candidates: &[PathBuf]) {
        let chains = match self.scan.chains(None) {
            Ok(c) => c,
            Err(e) => {
                warn!("keeping old overlays: {e}");
                return;
            }
        };
        let used: BTreeSet<PathBuf> = chains
            .iter()
            .flat_map(|c| c.layers.iter().cloned())
            .collect();
        for path in candidates {
            let canonical = images::canonical(path);
            if used.contains(&canonical) {
                continue;
            }
            match images::has_internal_snapshots(path, &self.cache) {
                Ok(false) => match std::fs::remove_file(path) {
                    Ok(()) => info!(
                        "removed {}: no snapshot or domain uses it any more",
                        path.display()
                    ),
                    Err(e) => warn!("could not remove unused {}: {e}", path.display()),
                },
                Ok(true) => info!("kept {}: it holds internal snapshots", path.display()),
                Err(e) => warn!("kept {}: {e}", path.display()),
            }
        }
    }

    /// mv NAME NEWNAME: renames a snapshot. Only external snapshots: an internal snapshot's
    /// name is also stored in the qcow2 image, which QEMU's tools cannot rename.
    pub fn rename(&self, model: &DomainModel, old: &str, new: &str) -> Result<(), FsError> {
        check_snapshot_name(new)?;
        let snap = self.snapshot(model, old)?;
        if model.snapshot(new).is_some() {
            return Err(fs_err!(
                Exists,
                "domain {}: snapshot {new} exists",
                model.name
            ));
        }
        if snap.disks.iter().any(|d| d.chain.snapshot.is_some()) {
            return Err(fs_err!(
                NotPermitted,
                "domain {}: snapshot {old} is internal: its name is also the name of the snapshot inside the qcow2 image, which cannot be renamed safely",
                model.name
            ));
        }
        let plan = RenamePlan {
            domain: model.name.clone(),
            old: old.to_string(),
            new: new.to_string(),
            renamed_xml: edit::set_snapshot_name(&snap.xml, new).map_err(xml_err)?,
            children: model.children(Some(old)).map(|c| c.name.clone()).collect(),
            was_current: model.current.as_deref() == Some(old),
        };
        let intent = self.record(&plan.to_json())?;
        journal::crash_point("rename:recorded");
        self.finish_rename(&plan)?;
        intent.done();
        info!("domain {}: renamed snapshot {old} to {new}", model.name);
        Ok(())
    }

    /// Every step of a rename, each done only if not done yet: safe to run again.
    fn finish_rename(&self, plan: &RenamePlan) -> Result<(), FsError> {
        let model = self.fresh_model(&plan.domain)?;
        if model.snapshot(&plan.new).is_none() {
            self.backend
                .create_snapshot(&plan.domain, &plan.renamed_xml, flags::CREATE_REDEFINE)
                .map_err(backend_err)?;
        }
        journal::crash_point("rename:new-defined");
        // Children follow: point them at the new name before the old metadata goes (deleting
        // it would move them to its parent).
        for child in &plan.children {
            if let Some(c) = model.snapshot(child) {
                if c.parent.as_deref() != Some(plan.new.as_str()) {
                    let xml =
                        edit::set_snapshot_parent(&c.xml, Some(&plan.new)).map_err(xml_err)?;
                    self.backend
                        .create_snapshot(&plan.domain, &xml, flags::CREATE_REDEFINE)
                        .map_err(backend_err)?;
                }
            }
        }
        journal::crash_point("rename:children-moved");
        if model.snapshot(&plan.old).is_some() {
            self.backend
                .delete_snapshot(&plan.domain, &plan.old, flags::DELETE_METADATA_ONLY)
                .map_err(backend_err)?;
        }
        journal::crash_point("rename:old-deleted");
        if plan.was_current {
            self.backend
                .create_snapshot(
                    &plan.domain,
                    &plan.renamed_xml,
                    flags::CREATE_REDEFINE | flags::CREATE_CURRENT,
                )
                .map_err(backend_err)?;
        }
        Ok(())
    }

    /// rmdir NAME: deletes a snapshot; its children move up to its parent; every other
    /// snapshot and the live disks keep their bytes. `fetch`: the scan's fetch, if the caller
    /// started it (see `delete_scans_first`).
    pub fn delete(
        &self,
        model: &DomainModel,
        name: &str,
        fetch: Option<LayoutFetch>,
    ) -> Result<(), FsError> {
        let snap = self.snapshot(model, name)?;
        if Self::is_internal(snap) {
            self.backend
                .delete_snapshot(&model.name, name, 0)
                .map_err(backend_err)?;
            info!("domain {}: deleted internal snapshot {name}", model.name);
            return Ok(());
        }
        if !Self::is_external(snap) {
            return Err(fs_err!(
                Unsupported,
                "domain {}: snapshot {name} mixes internal and external disks; delete it with virsh",
                model.name
            ));
        }
        self.delete_external(model, snap, fetch)
    }

    /// Deletes an external snapshot. Its image (the state it shows) is merged with the
    /// overlay created on top of it when nothing else reads that image: the overlay's data is
    /// committed into it, whatever was on the overlay is pointed at it, and the overlay goes.
    /// Otherwise only libvirt's metadata is deleted and the images stay.
    fn delete_external(
        &self,
        model: &DomainModel,
        snap: &SnapshotModel,
        fetch: Option<LayoutFetch>,
    ) -> Result<(), FsError> {
        let chains = self.chains_with(model, fetch)?;
        let mut merges = Vec::new();
        for disk in &snap.disks {
            match self.plan_merge(model, snap, disk, &chains)? {
                Ok(plan) => merges.push(plan),
                Err(reason) => info!(
                    "domain {} snapshot {} disk {}: images kept, not merged: {reason}",
                    model.name, snap.name, disk.target
                ),
            }
        }
        let plan = DeletePlan {
            domain: model.name.clone(),
            snapshot: snap.name.clone(),
            merges,
            leftovers: snap
                .disks
                .iter()
                .filter_map(|d| d.overlay.clone())
                .collect(),
        };
        let intent = self.record(&plan.to_json())?;
        journal::crash_point("delete-external:recorded");
        let mut merged = 0;
        match self.finish_delete(&plan, &mut merged) {
            Ok(()) => intent.done(),
            // A live merge cancelled before any merge completed changed nothing: forget it.
            // After one completed, the record stays, so the next mount finishes the delete.
            Err(e) if e.kind == crate::error::ErrorKind::Busy && merged == 0 => {
                intent.done();
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        info!(
            "domain {}: deleted external snapshot {}",
            model.name, snap.name
        );
        Ok(())
    }

    /// Every step of an external delete, each done only if not done yet: safe to run again
    /// after a crash at any point (a commit repeated writes the same data again).
    fn finish_delete(&self, plan: &DeletePlan, merged: &mut usize) -> Result<(), FsError> {
        for merge in &plan.merges {
            let result = self.merge(&plan.domain, merge);
            self.set_status(&plan.domain, None);
            result?;
            *merged += 1;
        }
        journal::crash_point("delete-external:merged");
        let model = self.fresh_model(&plan.domain)?;
        if model.snapshot(&plan.snapshot).is_some() {
            self.backend
                .delete_snapshot(&plan.domain, &plan.snapshot, flags::DELETE_METADATA_ONLY)
                .map_err(backend_err)?;
        }
        journal::crash_point("delete-external:metadata-deleted");
        for merge in &plan.merges {
            if merge.overlay.exists() {
                match std::fs::remove_file(&merge.overlay) {
                    Ok(()) => info!(
                        "removed {} after merging it into {}",
                        merge.overlay.display(),
                        merge.base.display()
                    ),
                    Err(e) => warn!(
                        "could not remove merged overlay {}: {e}",
                        merge.overlay.display()
                    ),
                }
            }
        }
        // Overlays made for this snapshot that were not merged but that nothing reads now.
        let leftovers: Vec<PathBuf> = plan
            .leftovers
            .iter()
            .filter(|p| p.exists())
            .cloned()
            .collect();
        self.remove_unused(&leftovers);
        Ok(())
    }

    /// Whether the snapshot's image for `disk` can absorb its overlay, and what then changes.
    /// The outer error is a failure; the inner Err is the reason not to merge.
    fn plan_merge(
        &self,
        model: &DomainModel,
        snap: &SnapshotModel,
        disk: &crate::model::DiskModel,
        chains: &Chains,
    ) -> Result<Result<MergePlan, String>, FsError> {
        let base = images::canonical(&disk.chain.top.path);
        let Some(overlay) = disk.overlay.as_deref().map(images::canonical) else {
            return Ok(Err(
                "libvirt did not record the overlay made for this snapshot".into(),
            ));
        };
        if !overlay.exists() {
            return Ok(Err(format!(
                "overlay {} no longer exists",
                overlay.display()
            )));
        }
        for c in chains.iter() {
            let is_this = c.domain == model.name && c.snapshot.as_deref() == Some(&snap.name);
            if is_this {
                continue;
            }
            if let Some(i) = c.layers.iter().position(|l| *l == base) {
                if i == 0 && !c.reads_internal_snapshot {
                    return Ok(Err(format!(
                        "{} is also the disk of {}",
                        base.display(),
                        c.who()
                    )));
                }
                if i > 0 && c.layers[i - 1] != overlay {
                    return Ok(Err(format!(
                        "{} is also the backing file of {} (used by {})",
                        base.display(),
                        c.layers[i - 1].display(),
                        c.who()
                    )));
                }
            }
        }
        if images::has_internal_snapshots(&overlay, &self.cache)? {
            return Ok(Err(format!(
                "{} holds internal snapshots",
                overlay.display()
            )));
        }
        let base_format = Self::disk_format(disk.chain.top.format, &base);
        // Everything that reads the overlay directly: images stacked on it, snapshots whose
        // disk it is, and domains whose live disk it is.
        let mut rebase = BTreeSet::new();
        let mut snapshot_users = Vec::new();
        let mut domain_users = BTreeSet::new();
        for c in chains.iter() {
            match c.layers.iter().position(|l| *l == overlay) {
                Some(0) => match &c.snapshot {
                    Some(s) => snapshot_users.push((c.domain.clone(), s.clone(), c.target.clone())),
                    None => {
                        domain_users.insert((c.domain.clone(), c.target.clone()));
                    }
                },
                Some(i) => {
                    rebase.insert(c.layers[i - 1].clone());
                }
                None => {}
            }
        }
        Ok(Ok(MergePlan {
            target: disk.target.clone(),
            base,
            base_format,
            overlay,
            rebase: rebase.into_iter().collect(),
            snapshot_users,
            domain_users: domain_users.into_iter().collect(),
        }))
    }

    /// The canonical layers of `domain`'s live disk `target` if the domain is running.
    fn running_layers(&self, domain: &str, target: &str) -> Result<Option<Vec<PathBuf>>, FsError> {
        if !self.is_running(domain)? {
            return Ok(None);
        }
        let model = self.fresh_model(domain)?;
        let Some(disk) = model.disks.iter().find(|d| d.target == target) else {
            return Ok(None);
        };
        let chain = crate::image::open_chain(&disk.chain, self.cache.clone())
            .map_err(|e| fs_err!(Io, "domain {domain} disk {target}: {e}"))?;
        Ok(Some(
            chain
                .layers()
                .iter()
                .map(|l| images::canonical(&l.path))
                .collect(),
        ))
    }

    /// Commits `plan.overlay` into `plan.base` and points everything that read the overlay at
    /// the base. Offline with qemu-img; with a block job when `domain` runs on the overlay.
    /// Each step is idempotent.
    fn merge(&self, domain: &str, plan: &MergePlan) -> Result<(), FsError> {
        let running = self.running_layers(domain, &plan.target)?;
        let live = running.as_ref().filter(|l| l.contains(&plan.overlay));
        if plan.overlay.exists() {
            info!(
                "domain {domain} disk {}: merging {} into {}{}",
                plan.target,
                plan.overlay.display(),
                plan.base.display(),
                if live.is_some() { " (live)" } else { "" }
            );
            match live {
                Some(layers) => {
                    let active = layers.first() == Some(&plan.overlay);
                    self.live_commit(domain, plan, active)?;
                }
                None => {
                    self.set_status(
                        domain,
                        Some(format!(
                            "merging {} into {} (offline)",
                            plan.overlay.display(),
                            plan.base.display()
                        )),
                    );
                    images::commit(&plan.overlay, &plan.base)?;
                }
            }
        }
        journal::crash_point("delete-external:committed");
        // A running QEMU has re-pointed the images of its own chain already; the others are
        // rebased here (never an image a running domain has open).
        let open_by_qemu: BTreeSet<PathBuf> = running.unwrap_or_default().into_iter().collect();
        for image in plan
            .rebase
            .iter()
            .filter(|i| i.exists() && !open_by_qemu.contains(*i))
        {
            images::rebase_unsafe(image, &plan.base, plan.base_format)?;
        }
        self.scan.forget();
        journal::crash_point("delete-external:rebased");
        let base = plan.base.to_str().unwrap_or_default();
        for (owner, snapshot, target) in &plan.snapshot_users {
            let m = self.fresh_model(owner)?;
            let Some(s) = m.snapshot(snapshot) else {
                continue;
            };
            let xml = edit::set_snapshot_disk_source(&s.xml, target, base, plan.base_format.name())
                .map_err(xml_err)?;
            let current = m.current.as_deref() == Some(snapshot.as_str());
            let f = flags::CREATE_REDEFINE | if current { flags::CREATE_CURRENT } else { 0 };
            self.backend
                .create_snapshot(owner, &xml, f)
                .map_err(backend_err)?;
        }
        // The persistent definition (a live pivot updates only the running one).
        for (owner, target) in &plan.domain_users {
            let xml = self.backend.inactive_xml(owner).map_err(backend_err)?;
            let on_overlay = crate::libvirt::xml::parse_domain(&xml)
                .map_err(xml_err)?
                .iter()
                .any(|d| match d {
                    crate::libvirt::xml::DiskEntry::Served(d) => {
                        d.target == *target && images::canonical(&d.chain.top.path) == plan.overlay
                    }
                    crate::libvirt::xml::DiskEntry::Skipped { .. } => false,
                });
            if on_overlay {
                let xml = edit::set_domain_disk_source(&xml, target, base, plan.base_format.name())
                    .map_err(xml_err)?;
                self.backend.define_domain(&xml).map_err(backend_err)?;
            }
        }
        Ok(())
    }

    /// A block commit on a running domain: the overlay's data goes into the base while the
    /// guest runs; an active commit then pivots the disk onto the base. A job whose remaining
    /// work stops shrinking for `merge_timeout` (the guest writes faster than it merges) is
    /// cancelled, leaving every image as it read before.
    fn live_commit(&self, domain: &str, plan: &MergePlan, active: bool) -> Result<(), FsError> {
        use std::time::{Duration, Instant};
        let target = &plan.target;
        let wait_gone = |what: &str| -> Result<(), FsError> {
            let deadline = Instant::now() + Duration::from_secs(60);
            while self
                .backend
                .block_job(domain, target)
                .map_err(backend_err)?
                .is_some()
            {
                if Instant::now() > deadline {
                    return Err(fs_err!(
                        Busy,
                        "domain {domain} disk {target}: the block job did not end after {what}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        };
        // A job left by a daemon that died mid-merge: cancel it and start over.
        if self
            .backend
            .block_job(domain, target)
            .map_err(backend_err)?
            .is_some()
        {
            warn!("domain {domain} disk {target}: cancelling a block job left running");
            self.backend
                .block_job_abort(domain, target, false)
                .map_err(backend_err)?;
            wait_gone("cancelling")?;
        }
        let top = if active {
            None
        } else {
            Some(plan.overlay.as_path())
        };
        self.backend
            .block_commit(
                domain,
                target,
                &plan.base,
                top,
                self.options.merge_bandwidth,
            )
            .map_err(backend_err)?;
        let started = Instant::now();
        let mut best_remaining = u64::MAX;
        let mut last_progress = Instant::now();
        let mut last_log = Instant::now();
        loop {
            let Some((cur, end)) = self
                .backend
                .block_job(domain, target)
                .map_err(backend_err)?
            else {
                if active {
                    return Err(fs_err!(Io, "domain {domain} disk {target}: the block commit ended without becoming ready (see libvirt's log)"));
                }
                break;
            };
            let remaining = end.saturating_sub(cur);
            let percent = cur.saturating_mul(100).checked_div(end).unwrap_or(0);
            let status = format!(
                "merging {} into {} (live): {percent}% ({cur}/{end}), {} s",
                plan.overlay.display(),
                plan.base.display(),
                started.elapsed().as_secs()
            );
            if last_log.elapsed() >= Duration::from_secs(5) {
                info!("domain {domain} disk {target}: {status}");
                last_log = Instant::now();
            }
            self.set_status(domain, Some(status));
            if active && end > 0 && cur == end {
                // libvirt can report everything copied a moment before QEMU marks the job
                // ready: a pivot refused as not ready yet (busy) is tried at the next poll,
                // for as long as a stalled merge would be waited for.
                match self.backend.block_job_abort(domain, target, true) {
                    Ok(()) => {
                        wait_gone("the pivot")?;
                        break;
                    }
                    Err(e)
                        if e.kind == BackendErrorKind::Busy
                            && last_progress.elapsed() <= self.options.merge_timeout =>
                    {
                        log::debug!("domain {domain} disk {target}: pivot not possible yet: {e}");
                    }
                    Err(e) => return Err(backend_err(e)),
                }
            }
            if remaining < best_remaining {
                best_remaining = remaining;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > self.options.merge_timeout {
                self.backend
                    .block_job_abort(domain, target, false)
                    .map_err(backend_err)?;
                wait_gone("cancelling")?;
                return Err(fs_err!(
                    Busy,
                    "domain {domain} disk {target}: merging {} into {} made no progress for {} s ({cur} of {end} done), so it was cancelled and nothing changed; retry when the guest writes less, or shut it down",
                    plan.overlay.display(),
                    plan.base.display(),
                    self.options.merge_timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The job is gone: check that the disk no longer reads the overlay.
        if let Some(layers) = self.running_layers(domain, target)? {
            if layers.contains(&plan.overlay) {
                return Err(fs_err!(
                    Io,
                    "domain {domain} disk {target}: after the block commit the disk still reads {}",
                    plan.overlay.display()
                ));
            }
        }
        info!(
            "domain {domain} disk {target}: merged {} into {} in {:.1} s",
            plan.overlay.display(),
            plan.base.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Finishes or undoes every operation that an earlier daemon left unfinished: run at mount
    /// time, before anything is served. A record that cannot be handled is kept and logged.
    pub fn recover(&self) {
        for (path, _lock, intent) in self.journal.pending() {
            let result = intent
                .map_err(|e| fs_err!(Io, "unreadable intent record: {e}"))
                .and_then(|v| self.recover_one(&v));
            match result {
                Ok(what) => {
                    info!("recovered an unfinished operation: {what}");
                    journal::forget(&path);
                }
                Err(e) => log::error!(
                    "cannot recover the unfinished operation in {}: {e}; it is kept for the next mount",
                    path.display()
                ),
            }
        }
    }

    fn recover_one(&self, intent: &serde_json::Value) -> Result<String, FsError> {
        let bad = || fs_err!(Io, "malformed intent record");
        match intent["op"].as_str().ok_or_else(bad)? {
            "revert-external" => {
                let plan = RevertPlan::from_json(intent).ok_or_else(bad)?;
                let model = self.fresh_model(&plan.domain)?;
                let created: BTreeSet<PathBuf> = plan
                    .overlays
                    .iter()
                    .map(|o| images::canonical(&o.overlay))
                    .collect();
                let switched = model
                    .disks
                    .iter()
                    .any(|d| created.contains(&images::canonical(&d.chain.top.path)));
                if switched {
                    self.finish_revert(&plan)?;
                    Ok(format!("revert of domain {} finished", plan.domain))
                } else {
                    self.undo_revert(&plan);
                    Ok(format!("revert of domain {} undone", plan.domain))
                }
            }
            "delete-external" => {
                let plan = DeletePlan::from_json(intent).ok_or_else(bad)?;
                self.finish_delete(&plan, &mut 0)?;
                Ok(format!(
                    "deletion of {} of domain {} finished",
                    plan.snapshot, plan.domain
                ))
            }
            "rename" => {
                let plan = RenamePlan::from_json(intent).ok_or_else(bad)?;
                self.finish_rename(&plan)?;
                Ok(format!(
                    "rename of {} to {} in domain {} finished",
                    plan.old, plan.new, plan.domain
                ))
            }
            other => Err(fs_err!(Io, "unknown operation '{other}' in intent record")),
        }
    }
}

fn paths_json(paths: &[PathBuf]) -> serde_json::Value {
    serde_json::Value::from(
        paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
    )
}

fn paths_from(v: &serde_json::Value) -> Option<Vec<PathBuf>> {
    v.as_array()?
        .iter()
        .map(|p| p.as_str().map(PathBuf::from))
        .collect()
}

fn strings_from(v: &serde_json::Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|p| p.as_str().map(str::to_string))
        .collect()
}

fn format_from(v: &serde_json::Value) -> Option<Format> {
    Format::from_name(v.as_str()?)
}

/// A new overlay of an external revert.
#[derive(Debug, Clone)]
struct NewOverlay {
    base: PathBuf,
    format: Format,
    overlay: PathBuf,
}

#[derive(Debug, Clone)]
struct RevertPlan {
    domain: String,
    snapshot_xml: String,
    overlays: Vec<NewOverlay>,
    new_xml: String,
    /// Live overlays the revert discards, removed if nothing reads them.
    discard: Vec<PathBuf>,
}

impl RevertPlan {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "op": "revert-external",
            "domain": self.domain,
            "snapshot_xml": self.snapshot_xml,
            "overlays": self.overlays.iter().map(|o| serde_json::json!({
                "base": o.base.to_string_lossy(),
                "format": o.format.name(),
                "overlay": o.overlay.to_string_lossy(),
            })).collect::<Vec<_>>(),
            "new_xml": self.new_xml,
            "discard": paths_json(&self.discard),
        })
    }

    fn from_json(v: &serde_json::Value) -> Option<RevertPlan> {
        let overlays = v["overlays"]
            .as_array()?
            .iter()
            .map(|o| {
                Some(NewOverlay {
                    base: PathBuf::from(o["base"].as_str()?),
                    format: format_from(&o["format"])?,
                    overlay: PathBuf::from(o["overlay"].as_str()?),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(RevertPlan {
            domain: v["domain"].as_str()?.to_string(),
            snapshot_xml: v["snapshot_xml"].as_str()?.to_string(),
            overlays,
            new_xml: v["new_xml"].as_str()?.to_string(),
            discard: paths_from(&v["discard"])?,
        })
    }
}

#[derive(Debug, Clone)]
struct RenamePlan {
    domain: String,
    old: String,
    new: String,
    renamed_xml: String,
    children: Vec<String>,
    was_current: bool,
}

impl RenamePlan {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "op": "rename",
            "domain": self.domain,
            "old": self.old,
            "new": self.new,
            "renamed_xml": self.renamed_xml,
            "children": self.children,
            "was_current": self.was_current,
        })
    }

    fn from_json(v: &serde_json::Value) -> Option<RenamePlan> {
        Some(RenamePlan {
            domain: v["domain"].as_str()?.to_string(),
            old: v["old"].as_str()?.to_string(),
            new: v["new"].as_str()?.to_string(),
            renamed_xml: v["renamed_xml"].as_str()?.to_string(),
            children: strings_from(&v["children"])?,
            was_current: v["was_current"].as_bool()?,
        })
    }
}

#[derive(Debug, Clone)]
struct DeletePlan {
    domain: String,
    snapshot: String,
    merges: Vec<MergePlan>,
    /// Overlays made for the snapshot, removed afterwards if nothing reads them.
    leftovers: Vec<PathBuf>,
}

impl DeletePlan {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "op": "delete-external",
            "domain": self.domain,
            "snapshot": self.snapshot,
            "merges": self.merges.iter().map(MergePlan::to_json).collect::<Vec<_>>(),
            "leftovers": paths_json(&self.leftovers),
        })
    }

    fn from_json(v: &serde_json::Value) -> Option<DeletePlan> {
        Some(DeletePlan {
            domain: v["domain"].as_str()?.to_string(),
            snapshot: v["snapshot"].as_str()?.to_string(),
            merges: v["merges"]
                .as_array()?
                .iter()
                .map(MergePlan::from_json)
                .collect::<Option<Vec<_>>>()?,
            leftovers: paths_from(&v["leftovers"])?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MergePlan {
    target: String,
    base: PathBuf,
    base_format: Format,
    overlay: PathBuf,
    /// Images whose backing file is the overlay: rebased onto the base.
    rebase: Vec<PathBuf>,
    /// (domain, snapshot, disk) whose disk is the overlay: redefined onto the base.
    snapshot_users: Vec<(String, String, String)>,
    /// (domain, disk) whose live disk is the overlay: redefined onto the base.
    domain_users: Vec<(String, String)>,
}

impl MergePlan {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target,
            "base": self.base.to_string_lossy(),
            "base_format": self.base_format.name(),
            "overlay": self.overlay.to_string_lossy(),
            "rebase": paths_json(&self.rebase),
            "snapshot_users": self.snapshot_users.iter().map(|(d, s, t)| [d, s, t]).collect::<Vec<_>>(),
            "domain_users": self.domain_users.iter().map(|(d, t)| [d, t]).collect::<Vec<_>>(),
        })
    }

    fn from_json(v: &serde_json::Value) -> Option<MergePlan> {
        let tuples = |v: &serde_json::Value| -> Option<Vec<Vec<String>>> {
            v.as_array()?.iter().map(strings_from).collect()
        };
        Some(MergePlan {
            target: v["target"].as_str()?.to_string(),
            base: PathBuf::from(v["base"].as_str()?),
            base_format: format_from(&v["base_format"])?,
            overlay: PathBuf::from(v["overlay"].as_str()?),
            rebase: paths_from(&v["rebase"])?,
            snapshot_users: tuples(&v["snapshot_users"])?
                .into_iter()
                .map(|t| match t.as_slice() {
                    [d, s, x] => Some((d.clone(), s.clone(), x.clone())),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?,
            domain_users: tuples(&v["domain_users"])?
                .into_iter()
                .map(|t| match t.as_slice() {
                    [d, x] => Some((d.clone(), x.clone())),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Operations over libvirt's test:///default driver, whose domain "test" the scan sees.
    fn test_driver_ops(state: &Path) -> (Arc<dyn Backend>, SnapshotOps) {
        let backend: Arc<dyn Backend> = Arc::new(
            crate::libvirt::LibvirtBackend::connect(Some("test:///default".into())).unwrap(),
        );
        let options = OpsOptions {
            state_dir: state.to_path_buf(),
            ..OpsOptions::default()
        };
        let cache = Arc::new(MetadataCache::new(1 << 20));
        (backend.clone(), SnapshotOps::new(backend, options, cache))
    }

    fn scanned(ops: &SnapshotOps, domain: &str) -> Arc<DomainModel> {
        let models = ops.scan.models().unwrap();
        models.into_iter().find(|m| m.name == domain).unwrap()
    }

    #[test]
    fn the_scan_reuses_an_offered_model_only_while_its_snapshot_xml_is_trusted() {
        let state = tempfile::tempdir().unwrap();
        let (backend, ops) = test_driver_ops(state.path());
        let fresh = Arc::new(backend.load_domain("test").unwrap().unwrap());
        ops.offer_models(vec![fresh.clone()]);
        assert!(Arc::ptr_eq(&scanned(&ops, "test"), &fresh));

        // The same model, read longer ago than SNAPSHOT_XML_TRUSTED_FOR: read again.
        let (_, ops) = test_driver_ops(state.path());
        let read_at = std::time::Instant::now()
            .checked_sub(crate::model::SNAPSHOT_XML_TRUSTED_FOR + std::time::Duration::from_secs(1))
            .unwrap();
        let old = Arc::new(DomainModel {
            snapshots_read_at: read_at,
            ..(*fresh).clone()
        });
        ops.offer_models(vec![old.clone()]);
        let rescanned = scanned(&ops, "test");
        assert!(!Arc::ptr_eq(&rescanned, &old));
        assert!(rescanned.snapshots_trusted());
        // A model no longer trusted is not taken when offered again.
        ops.offer_models(vec![old.clone()]);
        assert!(!Arc::ptr_eq(&scanned(&ops, "test"), &old));
    }

    #[test]
    fn plans_round_trip_through_their_intent_records() {
        let merge = MergePlan {
            target: "vda".into(),
            base: "/i/b.qcow2".into(),
            base_format: Format::Raw,
            overlay: "/i/b.s".into(),
            rebase: vec!["/i/b.t".into()],
            snapshot_users: vec![("d".into(), "t".into(), "vda".into())],
            domain_users: vec![("d".into(), "vda".into())],
        };
        let delete = DeletePlan {
            domain: "d".into(),
            snapshot: "s".into(),
            merges: vec![merge.clone()],
            leftovers: vec!["/i/x".into()],
        };
        let back = DeletePlan::from_json(&delete.to_json()).unwrap();
        assert_eq!(back.merges, vec![merge]);
        assert_eq!(back.leftovers, delete.leftovers);
        let rename = RenamePlan {
            domain: "d".into(),
            old: "a".into(),
            new: "b".into(),
            renamed_xml: "<x/>".into(),
            children: vec!["c".into()],
            was_current: true,
        };
        let back = RenamePlan::from_json(&rename.to_json()).unwrap();
        assert_eq!(
            (back.new, back.children, back.was_current),
            ("b".into(), vec!["c".to_string()], true)
        );
        let revert = RevertPlan {
            domain: "d".into(),
            snapshot_xml: "<s/>".into(),
            overlays: vec![NewOverlay {
                base: "/b".into(),
                format: Format::Qcow2,
                overlay: "/o".into(),
            }],
            new_xml: "<d/>".into(),
            discard: vec![],
        };
        let back = RevertPlan::from_json(&revert.to_json()).unwrap();
        assert_eq!(back.overlays[0].overlay, PathBuf::from("/o"));
        assert!(RevertPlan::from_json(&serde_json::json!({"op": "revert-external"})).is_none());
    }
}
