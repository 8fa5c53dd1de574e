//! Creating a snapshot (mkdir): internal, or external disk-only with new overlays, as the
//! domain's disks and `snapshot_kind` call for.

use super::*;

impl SnapshotOps {
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
            journal::pause_point("create:calling-libvirt");
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
        journal::pause_point("create:calling-libvirt");
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
}
