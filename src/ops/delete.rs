//! Deleting a snapshot (rmdir): metadata only when its images are still read, else its
//! overlay merged away (see [`super::merge`]), so every other snapshot keeps its bytes.

use super::*;

impl SnapshotOps {
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
    pub(super) fn delete_external(
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
        match self.finish_delete(&plan, &mut merged, intent.path()) {
            Ok(()) => Self::settle(
                intent,
                self.remove_leftovers(&plan),
                &format!("domain {}: deletion of {}", model.name, snap.name),
            ),
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
    /// after a crash at any point. A commit is marked done in the intent record `record` and
    /// never repeated once marked; one cut short is repeated (it writes the same data again).
    pub(super) fn finish_delete(
        &self,
        plan: &DeletePlan,
        merged: &mut usize,
        record: &Path,
    ) -> Result<(), FsError> {
        for merge in &plan.merges {
            let result = self.merge(&plan.domain, merge, record);
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
        Ok(())
    }

    /// The last step of an external delete: the overlays made for the snapshot that were not
    /// merged but that nothing reads now go. An error when that cannot be found out now.
    pub(super) fn remove_leftovers(&self, plan: &DeletePlan) -> Result<(), FsError> {
        let leftovers: Vec<PathBuf> = plan
            .leftovers
            .iter()
            .filter(|p| p.exists())
            .cloned()
            .collect();
        self.remove_unused(&leftovers)
    }

    /// Whether the snapshot's image for `disk` can absorb its overlay, and what then changes.
    /// The outer error is a failure; the inner Err is the reason not to merge.
    pub(super) fn plan_merge(
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
        // The merge removes the overlay and re-points what stands on it: refused when a broken
        // chain reads the overlay (one that reads the base without it kept the images above).
        let what = || format!("deleting snapshot {} of domain {}", snap.name, model.name);
        for c in chains.iter() {
            c.refuse_if_broken_and_reads(&overlay, false, what)?;
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
}
