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

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{info, warn};
use parking_lot::Mutex;

use crate::cache::MetadataCache;
use crate::fs::backend::{flags, Backend, BackendError, BackendErrorKind, DomainState};
use crate::fs::FsError;
use crate::fs_err;
use crate::image::Format;
use crate::libvirt::edit;
use crate::model::{DomainModel, SnapshotModel};
use images::ChainUse;

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
}

impl Default for OpsOptions {
    fn default() -> Self {
        OpsOptions {
            kind: SnapshotKind::Auto,
            allow_stop: false,
        }
    }
}

pub struct SnapshotOps {
    backend: Arc<dyn Backend>,
    options: OpsOptions,
    cache: Arc<MetadataCache>,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

fn backend_err(e: BackendError) -> FsError {
    let kind = match e.kind {
        BackendErrorKind::Failed => crate::fs::ErrorKind::Io,
        BackendErrorKind::Invalid => crate::fs::ErrorKind::InvalidArgument,
        BackendErrorKind::Unsupported => crate::fs::ErrorKind::Unsupported,
        BackendErrorKind::Busy => crate::fs::ErrorKind::Busy,
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
            backend,
            options,
            cache,
            locks: Mutex::new(HashMap::new()),
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

    fn all_models(&self) -> Result<Vec<Arc<DomainModel>>, FsError> {
        let mut out = Vec::new();
        for name in self.backend.list_domains().map_err(backend_err)? {
            if let Some(m) = self.backend.load_domain(&name).map_err(backend_err)? {
                out.push(Arc::new(m));
            }
        }
        Ok(out)
    }

    fn all_chains(&self) -> Result<Vec<ChainUse>, FsError> {
        images::all_chains(&self.all_models()?, &self.cache)
    }

    fn is_running(&self, domain: &str) -> Result<bool, FsError> {
        Ok(matches!(
            self.backend.domain_state(domain).map_err(backend_err)?,
            DomainState::Running | DomainState::Paused
        ))
    }

    fn disk_format(spec_format: Option<Format>, path: &Path) -> Format {
        spec_format.unwrap_or_else(|| {
            let mut magic = [0u8; 4];
            let is_qcow2 = std::fs::File::open(path)
                .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut magic, 0))
                .is_ok()
                && u32::from_be_bytes(magic) == crate::qcow2::header::QCOW2_MAGIC;
            if is_qcow2 {
                Format::Qcow2
            } else {
                Format::Raw
            }
        })
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

    /// mv NAME live: reverts the domain to snapshot `name`.
    pub fn revert(&self, model: &DomainModel, name: &str) -> Result<(), FsError> {
        let snap = self.snapshot(model, name)?;
        if Self::is_internal(snap) {
            self.check_internal_revert_is_safe(model, snap)?;
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
    ) -> Result<(), FsError> {
        let chains = self.all_chains()?;
        for disk in &snap.disks {
            let image = images::canonical(&disk.chain.top.path);
            for c in &chains {
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
        let mut created: Vec<PathBuf> = Vec::new();
        let cleanup = |created: &[PathBuf]| {
            for p in created {
                let _ = std::fs::remove_file(p);
            }
        };
        for disk in &snap.disks {
            let base = &disk.chain.top.path;
            let format = Self::disk_format(disk.chain.top.format, base);
            let overlay = images::overlay_name(base, &snap.name, "revert");
            if let Err(e) = images::create_overlay(base, format, &overlay) {
                cleanup(&created);
                return Err(e);
            }
            created.push(overlay.clone());
            let path = overlay.to_str().unwrap_or_default();
            new_xml = match edit::set_domain_disk_source(&new_xml, &disk.target, path, "qcow2") {
                Ok(x) => x,
                Err(e) => {
                    cleanup(&created);
                    return Err(xml_err(e));
                }
            };
        }
        if let Err(e) = self.backend.define_domain(&new_xml) {
            cleanup(&created);
            return Err(backend_err(e));
        }
        if let Err(e) = self.backend.create_snapshot(
            &model.name,
            &snap.xml,
            flags::CREATE_REDEFINE | flags::CREATE_CURRENT,
        ) {
            let _ = self.backend.define_domain(&old_xml);
            cleanup(&created);
            return Err(backend_err(e));
        }
        info!(
            "domain {}: reverted to external snapshot {} (new overlays {})",
            model.name,
            snap.name,
            created
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        // The discarded live overlays go, if they are overlays made for snapshots (by libvirt
        // or by an earlier revert) and nothing reads them: never a disk a user set up.
        let made_for_snapshots: BTreeSet<PathBuf> = model
            .snapshots
            .iter()
            .flat_map(|s| s.disks.iter().filter_map(|d| d.overlay.as_deref()))
            .map(images::canonical)
            .collect();
        let old_tops: Vec<PathBuf> = model
            .disks
            .iter()
            .map(|d| d.chain.top.path.clone())
            .filter(|p| {
                made_for_snapshots.contains(&images::canonical(p)) || images::is_revert_overlay(p)
            })
            .collect();
        self.remove_unused(&old_tops);
        Ok(())
    }

    /// Removes the images in `candidates` that no chain of any domain reads any more and that
    /// hold no internal snapshot. Anything uncertain is kept.
    fn remove_unused(&self, candidates: &[PathBuf]) {
        let chains = match self.all_chains() {
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
        let was_current = model.current.as_deref() == Some(old);
        let renamed = edit::set_snapshot_name(&snap.xml, new).map_err(xml_err)?;
        self.backend
            .create_snapshot(&model.name, &renamed, flags::CREATE_REDEFINE)
            .map_err(backend_err)?;
        // Children follow: point them at the new name before the old metadata goes.
        for child in model.children(Some(old)) {
            let xml = edit::set_snapshot_parent(&child.xml, Some(new)).map_err(xml_err)?;
            self.backend
                .create_snapshot(&model.name, &xml, flags::CREATE_REDEFINE)
                .map_err(backend_err)?;
        }
        self.backend
            .delete_snapshot(&model.name, old, flags::DELETE_METADATA_ONLY)
            .map_err(backend_err)?;
        if was_current {
            self.backend
                .create_snapshot(
                    &model.name,
                    &renamed,
                    flags::CREATE_REDEFINE | flags::CREATE_CURRENT,
                )
                .map_err(backend_err)?;
        }
        info!("domain {}: renamed snapshot {old} to {new}", model.name);
        Ok(())
    }

    /// rmdir NAME: deletes a snapshot; its children move up to its parent; every other
    /// snapshot and the live disks keep their bytes.
    pub fn delete(&self, model: &DomainModel, name: &str) -> Result<(), FsError> {
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
        self.delete_external(model, snap)
    }

    /// Deletes an external snapshot. Its image (the state it shows) is merged with the
    /// overlay created on top of it when nothing else reads that image: the overlay's data is
    /// committed into it, whatever was on the overlay is pointed at it, and the overlay goes.
    /// Otherwise only libvirt's metadata is deleted and the images stay.
    fn delete_external(&self, model: &DomainModel, snap: &SnapshotModel) -> Result<(), FsError> {
        let chains = self.all_chains()?;
        let mut plans = Vec::new();
        for disk in &snap.disks {
            match self.plan_merge(model, snap, disk, &chains)? {
                Ok(plan) => plans.push(plan),
                Err(reason) => info!(
                    "domain {} snapshot {} disk {}: images kept, not merged: {reason}",
                    model.name, snap.name, disk.target
                ),
            }
        }
        if !plans.is_empty() && self.is_running(&model.name)? {
            return Err(fs_err!(
                Busy,
                "domain {} is running; deleting snapshot {} merges images the running domain uses, which needs a block job; shut the domain down and retry",
                model.name,
                snap.name
            ));
        }
        for plan in &plans {
            self.merge(model, plan)?;
        }
        self.backend
            .delete_snapshot(&model.name, &snap.name, flags::DELETE_METADATA_ONLY)
            .map_err(backend_err)?;
        for plan in &plans {
            match std::fs::remove_file(&plan.overlay) {
                Ok(()) => info!(
                    "removed {} after merging it into {}",
                    plan.overlay.display(),
                    plan.base.display()
                ),
                Err(e) => warn!(
                    "could not remove merged overlay {}: {e}",
                    plan.overlay.display()
                ),
            }
        }
        // Overlays made for this snapshot that were not merged but that nothing reads now.
        let leftovers: Vec<PathBuf> = snap
            .disks
            .iter()
            .filter_map(|d| d.overlay.clone())
            .filter(|p| p.exists())
            .collect();
        self.remove_unused(&leftovers);
        info!(
            "domain {}: deleted external snapshot {}",
            model.name, snap.name
        );
        Ok(())
    }

    /// Whether the snapshot's image for `disk` can absorb its overlay, and what then changes.
    /// The outer error is a failure; the inner Err is the reason not to merge.
    fn plan_merge(
        &self,
        model: &DomainModel,
        snap: &SnapshotModel,
        disk: &crate::model::DiskModel,
        chains: &[ChainUse],
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
        for c in chains {
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
        for c in chains {
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

    fn merge(&self, model: &DomainModel, plan: &MergePlan) -> Result<(), FsError> {
        info!(
            "domain {} disk {}: merging {} into {}",
            model.name,
            plan.target,
            plan.overlay.display(),
            plan.base.display()
        );
        images::commit(&plan.overlay, &plan.base)?;
        for image in &plan.rebase {
            images::rebase_unsafe(image, &plan.base, plan.base_format)?;
        }
        let base = plan.base.to_str().unwrap_or_default();
        for (domain, snapshot, target) in &plan.snapshot_users {
            let m = self.fresh_model(domain)?;
            let s = self.snapshot(&m, snapshot)?;
            let xml = edit::set_snapshot_disk_source(&s.xml, target, base, plan.base_format.name())
                .map_err(xml_err)?;
            let current = m.current.as_deref() == Some(snapshot.as_str());
            let f = flags::CREATE_REDEFINE | if current { flags::CREATE_CURRENT } else { 0 };
            self.backend
                .create_snapshot(domain, &xml, f)
                .map_err(backend_err)?;
        }
        for (domain, target) in &plan.domain_users {
            let xml = self.backend.inactive_xml(domain).map_err(backend_err)?;
            let xml = edit::set_domain_disk_source(&xml, target, base, plan.base_format.name())
                .map_err(xml_err)?;
            self.backend.define_domain(&xml).map_err(backend_err)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
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
