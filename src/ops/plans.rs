//! What each operation records before it changes anything (its intent record), and how a
//! record is read back to finish or undo it.

use super::*;

pub(super) fn paths_json(paths: &[PathBuf]) -> serde_json::Value {
    serde_json::Value::from(
        paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
    )
}

pub(super) fn paths_from(v: &serde_json::Value) -> Option<Vec<PathBuf>> {
    v.as_array()?
        .iter()
        .map(|p| p.as_str().map(PathBuf::from))
        .collect()
}

pub(super) fn strings_from(v: &serde_json::Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|p| p.as_str().map(str::to_string))
        .collect()
}

pub(super) fn format_from(v: &serde_json::Value) -> Option<Format> {
    Format::from_name(v.as_str()?)
}

/// A new overlay of an external revert.
#[derive(Debug, Clone)]
pub(super) struct NewOverlay {
    pub(super) base: PathBuf,
    pub(super) format: Format,
    pub(super) overlay: PathBuf,
}

#[derive(Debug, Clone)]
pub(super) struct RevertPlan {
    pub(super) domain: String,
    pub(super) snapshot_xml: String,
    pub(super) overlays: Vec<NewOverlay>,
    pub(super) new_xml: String,
    /// Live overlays the revert discards, removed if nothing reads them.
    pub(super) discard: Vec<PathBuf>,
}

impl RevertPlan {
    pub(super) fn to_json(&self) -> serde_json::Value {
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

    pub(super) fn from_json(v: &serde_json::Value) -> Option<RevertPlan> {
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
pub(super) struct RenamePlan {
    pub(super) domain: String,
    pub(super) old: String,
    pub(super) new: String,
    pub(super) renamed_xml: String,
    pub(super) children: Vec<String>,
    pub(super) was_current: bool,
}

impl RenamePlan {
    pub(super) fn to_json(&self) -> serde_json::Value {
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

    pub(super) fn from_json(v: &serde_json::Value) -> Option<RenamePlan> {
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
pub(super) struct DeletePlan {
    pub(super) domain: String,
    pub(super) snapshot: String,
    pub(super) merges: Vec<MergePlan>,
    /// Overlays made for the snapshot, removed afterwards if nothing reads them.
    pub(super) leftovers: Vec<PathBuf>,
}

impl DeletePlan {
    pub(super) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "op": "delete-external",
            "domain": self.domain,
            "snapshot": self.snapshot,
            "merges": self.merges.iter().map(MergePlan::to_json).collect::<Vec<_>>(),
            "leftovers": paths_json(&self.leftovers),
        })
    }

    pub(super) fn from_json(v: &serde_json::Value) -> Option<DeletePlan> {
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
pub(super) struct MergePlan {
    pub(super) target: String,
    pub(super) base: PathBuf,
    pub(super) base_format: Format,
    pub(super) overlay: PathBuf,
    /// Images whose backing file is the overlay: rebased onto the base.
    pub(super) rebase: Vec<PathBuf>,
    /// (domain, snapshot, disk) whose disk is the overlay: redefined onto the base.
    pub(super) snapshot_users: Vec<(String, String, String)>,
    /// (domain, disk) whose live disk is the overlay: redefined onto the base.
    pub(super) domain_users: Vec<(String, String)>,
}

impl MergePlan {
    pub(super) fn to_json(&self) -> serde_json::Value {
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

    pub(super) fn from_json(v: &serde_json::Value) -> Option<MergePlan> {
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
