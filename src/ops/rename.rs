//! Renaming a snapshot: its metadata redefined under the new name, children re-parented.

use super::*;

impl SnapshotOps {
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
    pub(super) fn finish_rename(&self, plan: &RenamePlan) -> Result<(), FsError> {
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
}
