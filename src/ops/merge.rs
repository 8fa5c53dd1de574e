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
    /// The commit, once done, is marked in the intent record `record` and not done again;
    /// every other step is idempotent.
    pub(super) fn merge(
        &self,
        domain: &str,
        plan: &MergePlan,
        record: &Path,
    ) -> Result<(), FsError> {
        let running = self.running_layers(domain, &plan.target)?;
        if journal::is_marked(record, &committed_mark(plan)) {
            log_merged_already(domain, plan, "recorded");
        } else {
            self.commit_step(domain, plan, running.as_deref(), record)?;
            mark_step(domain, plan, record, &committed_mark(plan))?;
        }
        journal::crash_point("delete-external:committed");
        self.point_at_base(plan, running)
    }

    /// The commit of `merge`: live, offline, or nothing when the running domain (whose disk
    /// reads `running`) finished it already.
    fn commit_step(
        &self,
        domain: &str,
        plan: &MergePlan,
        running: Option<&[PathBuf]>,
        record: &Path,
    ) -> Result<(), FsError> {
        let live = running.filter(|l| l.contains(&plan.overlay));
        // A running disk that reads the base but no longer the overlay: its QEMU finished
        // this commit while the daemon or libvirtd was away (a commit below the top ends by
        // itself, an active one with its pivot). Committing again offline is refused by
        // QEMU's lock on the base and, after a pivot, would write the overlay's old data
        // over what the guest wrote since: the overlay's data is checked to be in the base
        // instead, and nothing is written.
        let finished_by_qemu = live.is_none() && running.is_some_and(|l| l.contains(&plan.base));
        if plan.overlay.exists() && finished_by_qemu {
            // The overlay was this disk's top and the base is now: only a pivot does that,
            // and the guest may have written to the base since, so the data is not compared.
            let pivoted = plan
                .domain_users
                .iter()
                .any(|(d, t)| d == domain && *t == plan.target)
                && running.and_then(|l| l.first()) == Some(&plan.base);
            if !pivoted
                && !images::overlay_is_in_base(
                    &plan.overlay,
                    &plan.base,
                    plan.base_format,
                    &self.cache,
                )?
            {
                return Err(fs_err!(
                    Busy,
                    "domain {domain} disk {}: the running disk reads {} but no longer {}, and not all of the latter's data is in the former: nothing was changed; see virsh domblklist {domain} and virsh blockjob {domain} {}",
                    plan.target,
                    plan.base.display(),
                    plan.overlay.display(),
                    plan.target
                ));
            }
            log_merged_already(domain, plan, "the running domain finished the block commit");
        } else if plan.overlay.exists() {
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
                    self.live_commit(domain, plan, active, record)?;
                }
                None if journal::is_marked(record, &pivot_mark(plan)) => {
                    self.after_a_pivot_was_asked(domain, plan)?;
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
        Ok(())
    }

    /// A shut-off domain whose earlier daemon asked QEMU to pivot `plan`'s disk onto the base
    /// and stopped before recording the commit done. If the pivot was made, the guest may
    /// have written to the base since, and committing the overlay again would put its old
    /// data over those writes; if not, the commit may still be needed. libvirt moves the
    /// persistent definition onto the base with the pivot, which tells; else the overlay's
    /// data must read the same from the base, or nothing is done (EBUSY).
    fn after_a_pivot_was_asked(&self, domain: &str, plan: &MergePlan) -> Result<(), FsError> {
        let model = self.fresh_model(domain)?;
        let on_base = model
            .disks
            .iter()
            .any(|d| d.target == plan.target && images::canonical(&d.chain.top.path) == plan.base);
        if on_base {
            log_merged_already(
                domain,
                plan,
                "the pivot was made: the domain's definition reads the base",
            );
            return Ok(());
        }
        if images::overlay_is_in_base(&plan.overlay, &plan.base, plan.base_format, &self.cache)? {
            log_merged_already(
                domain,
                plan,
                "every cluster it holds reads the same from the base",
            );
            return Ok(());
        }
        Err(fs_err!(
            Busy,
            "domain {domain} disk {}: a pivot from {} onto {} was asked for before the daemon stopped; the domain's definition still reads the overlay and the two differ, so it cannot be told whether the guest wrote to the base since: nothing was changed; compare them (qemu-img compare) and repair the definition (virsh edit {domain}) by hand",
            plan.target,
            plan.overlay.display(),
            plan.base.display()
        ))
    }

    /// After the commit of `plan`: everything that read the overlay is pointed at the base.
    /// `running`: the layers of the running domain's disk, if it runs.
    fn point_at_base(
        &self,
        plan: &MergePlan,
        running: Option<Vec<PathBuf>>,
    ) -> Result<(), FsError> {
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
        record: &Path,
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
                // Recorded first: from the pivot on, the guest writes to the base, and a
                // recovery must know a pivot may have been made (see
                // after_a_pivot_was_asked).
                mark_step(domain, plan, record, &pivot_mark(plan))?;
                journal::crash_point("delete-external:pivot-asked");
                match self.backend.block_job_abort(domain, target, true) {
                    Ok(()) => {
                        // Not Busy: once a pivot was asked for, the record must stay (a
                        // Busy failure before any merge forgets it).
                        wait_gone("the pivot").map_err(|e| FsError {
                            kind: crate::error::ErrorKind::Io,
                            ..e
                        })?;
                        journal::crash_point("delete-external:pivoted");
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

/// The mark of an intent record that says the commit of `plan` is done.
fn committed_mark(plan: &MergePlan) -> String {
    format!("committed-{}", plan.target)
}

/// The mark of an intent record that says a pivot of `plan`'s disk was asked for.
fn pivot_mark(plan: &MergePlan) -> String {
    format!("pivot-asked-{}", plan.target)
}

/// Marks step `mark` of `plan` in the intent record `record` (see [`journal::mark`]).
fn mark_step(domain: &str, plan: &MergePlan, record: &Path, mark: &str) -> Result<(), FsError> {
    journal::mark(record, mark).map_err(|e| {
        fs_err!(
            Io,
            "domain {domain} disk {}: cannot record {mark} in {}: {e}",
            plan.target,
            record.display()
        )
    })
}

/// Logs that the commit of `plan` is found done already, and `why`.
fn log_merged_already(domain: &str, plan: &MergePlan, why: &str) {
    info!(
        "domain {domain} disk {}: {} is merged into {} already ({why})",
        plan.target,
        plan.overlay.display(),
        plan.base.display()
    );
}
