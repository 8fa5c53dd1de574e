//! Reverting to a snapshot (rename onto `live/`): internal ones through libvirt once nothing
//! else reads the current state it discards; external ones here, with a new overlay on the
//! snapshot's image, libvirt's metadata redefined and discarded overlays removed.

use super::*;

impl SnapshotOps {
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
            journal::pause_point("revert-internal:calling-libvirt");
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
    pub(super) fn check_internal_revert_is_safe(
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
                let what = || format!("reverting domain {} to {}", model.name, snap.name);
                c.refuse_if_broken_and_reads(&image, true, what)?;
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
    pub(super) fn revert_external(
        &self,
        model: &DomainModel,
        snap: &SnapshotModel,
    ) -> Result<(), FsError> {
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
        let what = format!("domain {}: revert to {}", model.name, snap.name);
        let intent = self.record(&plan.to_json())?;
        journal::crash_point("revert-external:recorded");
        for (i, o) in plan.overlays.iter().enumerate() {
            if let Err(e) = images::create_overlay(&o.base, o.format, &o.overlay) {
                Self::settle(intent, self.undo_revert(&plan), &what);
                return Err(e);
            }
            if i == 0 {
                journal::crash_point("revert-external:overlay-created");
            }
        }
        if let Err(e) = self.backend.define_domain(&plan.new_xml) {
            Self::settle(intent, self.undo_revert(&plan), &what);
            return Err(backend_err(e));
        }
        journal::crash_point("revert-external:domain-defined");
        if let Err(e) = self.finish_revert(&plan) {
            // The domain already runs on the new overlays: put it back as it was. If that
            // fails too, the record stays and the next mount finishes the revert.
            let undone = self
                .backend
                .define_domain(&old_xml)
                .map_err(backend_err)
                .and_then(|()| self.undo_revert(&plan));
            Self::settle(intent, undone, &what);
            return Err(e);
        }
        // The revert is done; only removing the discarded overlays may be left to the next
        // mount.
        Self::settle(intent, self.remove_unused(&plan.discard), &what);
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

    /// The step of an external revert after the domain points at the new overlays (the
    /// snapshot made current); safe to run again. Then the discarded overlays go
    /// (`remove_unused`).
    pub(super) fn finish_revert(&self, plan: &RevertPlan) -> Result<(), FsError> {
        self.backend
            .create_snapshot(
                &plan.domain,
                &plan.snapshot_xml,
                flags::CREATE_REDEFINE | flags::CREATE_CURRENT,
            )
            .map_err(backend_err)?;
        journal::crash_point("revert-external:snapshot-current");
        Ok(())
    }

    /// Removes the overlays an unfinished revert created, if nothing reads them; an error when
    /// that cannot be found out now.
    pub(super) fn undo_revert(&self, plan: &RevertPlan) -> Result<(), FsError> {
        let created: Vec<PathBuf> = plan
            .overlays
            .iter()
            .map(|o| o.overlay.clone())
            .filter(|p| p.exists())
            .collect();
        self.remove_unused(&created)
    }
}
