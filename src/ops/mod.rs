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
//!
//! - `mod.rs`: [`SnapshotOps`], its options, and what the operations share (status, locks,
//!   intent records, removing images nothing reads).
//! - [`create`], [`revert`], [`rename`], [`delete`]: one file per operation; [`merge`]: the
//!   offline and live merges a delete may need.
//! - [`plans`]: each operation's intent record; [`journal`]: where records are kept;
//!   [`recover`]: finishing or undoing what an earlier daemon left half done.
//! - [`scan`]: which images every chain on the host reads; [`images`]: file-level helpers.

mod create;
mod delete;
pub mod images;
pub mod journal;
mod merge;
mod plans;
mod recover;
mod rename;
mod revert;
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
use plans::{DeletePlan, MergePlan, NewOverlay, RenamePlan, RevertPlan};
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

    /// Whether `domain` runs (or is paused): its QEMU has its disks open. A domain in any
    /// other state than shut off (crashed, shutting down, suspended by its guest) may still
    /// have a QEMU process holding them, so no operation treats it as either: Busy.
    fn is_running(&self, domain: &str) -> Result<bool, FsError> {
        match self.backend.domain_state(domain).map_err(backend_err)? {
            DomainState::Running | DomainState::Paused => Ok(true),
            DomainState::ShutOff => Ok(false),
            DomainState::Other => Err(fs_err!(
                Busy,
                "domain {domain} is neither running nor shut off (crashed, shutting down or suspended by its guest: see virsh domstate --reason {domain}); its QEMU may still hold its disks, so nothing is changed; retry once it runs or is shut off"
            )),
        }
    }

    /// The stated format, else the probed one (raw when the file cannot be read).
    fn disk_format(spec_format: Option<Format>, path: &Path) -> Format {
        spec_format.unwrap_or_else(|| crate::image::open::probe_path(path).unwrap_or(Format::Raw))
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

    fn record(&self, intent: &serde_json::Value) -> Result<journal::IntentFile, FsError> {
        self.journal
            .record(intent)
            .map_err(|e| fs_err!(Io, "cannot write the intent record (state_dir): {e}"))
    }

    /// Removes the images in `candidates` that no chain of any domain reads any more and that
    /// hold no internal snapshot. Anything uncertain is kept. An error when what reads them
    /// cannot be found out now (libvirt unreachable, say): nothing was removed.
    fn remove_unused(&self, candidates: &[PathBuf]) -> Result<(), FsError> {
        if candidates.is_empty() {
            return Ok(());
        }
        let chains = self.scan.chains(None).inspect_err(|e| {
            warn!("keeping old overlays for now: {e}");
        })?;
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
        Ok(())
    }

    /// Ends an operation's intent record once its last step (`last`) is done; when that step
    /// failed, the record stays so that the next mount finishes or undoes the operation.
    fn settle(intent: journal::IntentFile, last: Result<(), FsError>, what: &str) {
        match last {
            Ok(()) => intent.done(),
            Err(e) => warn!(
                "{what}: not finished ({e}); its intent record {} is kept and the next mount finishes it",
                intent.path().display()
            ),
        }
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

    /// A hypervisor whose every domain is in state `.0`; nothing else answers.
    struct AllInState(DomainState);

    impl Backend for AllInState {
        fn list_domains(&self) -> Result<Vec<String>, BackendError> {
            Err(BackendError::failed("not in this test"))
        }
        fn load_domain(&self, _: &str) -> Result<Option<DomainModel>, BackendError> {
            Err(BackendError::failed("not in this test"))
        }
        fn domain_fingerprint(&self, _: &str) -> Result<Option<u64>, BackendError> {
            Err(BackendError::failed("not in this test"))
        }
        fn layout_fingerprints(&self) -> Result<Vec<(String, u64)>, BackendError> {
            Err(BackendError::failed("not in this test"))
        }
        fn domain_state(&self, _: &str) -> Result<DomainState, BackendError> {
            Ok(self.0)
        }
        fn inactive_xml(&self, _: &str) -> Result<String, BackendError> {
            Err(BackendError::failed("not in this test"))
        }
        fn define_domain(&self, _: &str) -> Result<(), BackendError> {
            Err(BackendError::failed("not in this test"))
        }
        fn destroy_domain(&self, _: &str) -> Result<(), BackendError> {
            Err(BackendError::failed("not in this test"))
        }
        fn create_snapshot(&self, _: &str, _: &str, _: u32) -> Result<(), BackendError> {
            Err(BackendError::failed("not in this test"))
        }
        fn revert_snapshot(&self, _: &str, _: &str, _: u32) -> Result<(), BackendError> {
            Err(BackendError::failed("not in this test"))
        }
        fn delete_snapshot(&self, _: &str, _: &str, _: u32) -> Result<(), BackendError> {
            Err(BackendError::failed("not in this test"))
        }
        fn block_commit(
            &self,
            _: &str,
            _: &str,
            _: &Path,
            _: Option<&Path>,
            _: u64,
        ) -> Result<(), BackendError> {
            Err(BackendError::failed("not in this test"))
        }
        fn block_job(&self, _: &str, _: &str) -> Result<Option<(u64, u64)>, BackendError> {
            Err(BackendError::failed("not in this test"))
        }
        fn block_job_abort(&self, _: &str, _: &str, _: bool) -> Result<(), BackendError> {
            Err(BackendError::failed("not in this test"))
        }
    }

    /// Crashed, shutting down or suspended by its guest (libvirt's other states): its QEMU
    /// may still hold the disks, so it is treated as neither running nor shut off, and an
    /// operation that would choose between a live and an offline path is refused (Busy)
    /// instead of rewriting images offline.
    #[test]
    fn a_domain_neither_running_nor_shut_off_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let ops = |s| {
            let options = OpsOptions {
                state_dir: state.path().to_path_buf(),
                ..OpsOptions::default()
            };
            SnapshotOps::new(
                Arc::new(AllInState(s)),
                options,
                Arc::new(MetadataCache::new(1 << 20)),
            )
        };
        assert!(ops(DomainState::Running).is_running("d").unwrap());
        assert!(ops(DomainState::Paused).is_running("d").unwrap());
        assert!(!ops(DomainState::ShutOff).is_running("d").unwrap());
        let e = ops(DomainState::Other).is_running("d").unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::Busy);
        assert!(e.message.contains("neither running nor shut off"), "{e}");
        // The merge's first step asks the same question.
        let e = ops(DomainState::Other)
            .running_layers("d", "vda")
            .unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::Busy);
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
