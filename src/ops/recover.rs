//! Finishing or undoing the operations an earlier daemon left half done, from their intent
//! records ([`super::journal`]).

use super::*;

impl SnapshotOps {
    /// Finishes or undoes every operation that an earlier daemon left unfinished: run at mount
    /// time, before anything is served. A record that cannot be handled is kept and logged.
    pub fn recover(&self) {
        for (path, _lock, intent) in self.journal.pending() {
            let result = intent
                .map_err(|e| fs_err!(Io, "unreadable intent record: {e}"))
                .and_then(|v| self.recover_one(&v, &path));
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

    /// Finishes or undoes the operation of `intent`, recorded at `record`.
    pub(super) fn recover_one(
        &self,
        intent: &serde_json::Value,
        record: &Path,
    ) -> Result<String, FsError> {
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
                    self.remove_unused(&plan.discard)?;
                    Ok(format!("revert of domain {} finished", plan.domain))
                } else {
                    self.undo_revert(&plan)?;
                    Ok(format!("revert of domain {} undone", plan.domain))
                }
            }
            "delete-external" => {
                let plan = DeletePlan::from_json(intent).ok_or_else(bad)?;
                self.finish_delete(&plan, &mut 0, record)?;
                self.remove_leftovers(&plan)?;
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
