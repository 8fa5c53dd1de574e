//! Merging an overlay into the image below it: offline with qemu-img, or with a block commit
//! on a running domain (active commits pivot), watched for progress and cancelled if stuck.

use super::*;

impl SnapshotOps {
    /// The canonical layers of `domain`'s live disk `target` if the domain is running.
    pub(super) fn running_layers(
        &self,
        domain: &str,
        target: &str,
    ) -> Result<Option<Vec<PathBuf>>, FsError> {
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
    pub(super) fn merge(&self, domain: &str, plan: &MergePlan) -> Result<(), FsError> {
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
    pub(super) fn live_commit(
        &self,
        domain: &str,
        plan: &MergePlan,
        active: bool,
    ) -> Result<(), FsError> {
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
        journal::crash_point("delete-external:live-commit-started");
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
}
