//! The kernel's caches: how long it may keep names and attributes, what it must forget after
//! an operation, and the refresher that tells it what libvirt changed behind the mount.

use super::*;

/// The kernel's caches of names, attributes and pages, which must forget what an operation
/// changed. The FUSE adapter implements it with fuser's Notifier.
pub trait KernelCache: Send + Sync {
    /// Makes the kernel forget `inodes`' attributes and cached pages before it returns (so
    /// a handle held open reads the new bytes as soon as the operation's reply arrives), and
    /// hands over `entries` to forget without waiting for them: the kernel holds directory
    /// locks while it waits for the reply of mkdir, rename and rmdir, and forgetting an
    /// entry takes its directory's lock. Forgetting pages waits for reads in flight, so the
    /// caller must hold nothing those reads wait for (a domain's operation lock).
    fn invalidate(&self, entries: Vec<(u64, OsString)>, inodes: Vec<u64>);
    /// Hands over entries that the kernel is about to make from our reply although the tree
    /// has no such entry: after a revert (`mv SNAPSHOT DOMAIN/live/`) the kernel moves the
    /// snapshot's directory entry onto `live/SNAPSHOT`, so it holds the snapshot's inode in a
    /// second place. They are forgotten as soon as the kernel has made them, and lookups wait
    /// for that ([`KernelCache::settle`]). Must not block, like `invalidate`.
    fn forget_stray(&self, _entries: Vec<(u64, OsString)>) {}
    /// Waits until every entry handed to [`KernelCache::forget_stray`] so far is forgotten,
    /// or `limit` has passed (the request being answered may itself hold a lock the
    /// forgetting waits for; the limit keeps that from becoming a deadlock).
    fn settle(&self, _limit: Duration) {}
}

pub(super) struct NoKernelCache;

impl KernelCache for NoKernelCache {
    fn invalidate(&self, _entries: Vec<(u64, OsString)>, _inodes: Vec<u64>) {}
}

/// How long a lookup waits for stray entries to be forgotten. That takes microseconds once
/// the request that made them has finished; the limit only matters when the lookup's own
/// request holds a lock the forgetting needs.
pub(super) const SETTLE_LIMIT: Duration = Duration::from_millis(250);

/// Kernel cache lifetime of nodes whose changes the refresher reports as invalidations.
pub(super) const LONG_TTL: Duration = Duration::from_secs(60);

impl VirtSnapFs {
    /// How long the kernel may cache a node's entry and attributes. With the refresher
    /// running, libvirt's changes reach the kernel as invalidations, so only volatile nodes
    /// need the short refresh interval.
    pub fn ttl(&self, attr: &Attr) -> Duration {
        if attr.checked_each_read {
            Duration::ZERO
        } else if attr.volatile || !self.refresher_running.load(Ordering::Relaxed) {
            self.options.refresh
        } else {
            LONG_TTL
        }
    }

    /// Whether the kernel may cache directory listings (the refresher invalidates them).
    pub fn cache_listings(&self) -> bool {
        self.refresher_running.load(Ordering::Relaxed)
    }

    /// Starts the thread that checks every loaded domain against libvirt each refresh
    /// interval and tells the kernel what changed (new, removed or moved snapshots, reverts,
    /// redefined disks, domains defined or undefined).
    pub fn start_refresher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let interval = self.options.refresh.max(Duration::from_millis(100));
        self.refresher_running.store(true, Ordering::Relaxed);
        std::thread::spawn(move || loop {
            std::thread::sleep(interval);
            let Some(fs) = weak.upgrade() else {
                return;
            };
            fs.refresh_tick();
        });
    }

    pub(super) fn refresh_tick(&self) {
        let mut entries = Vec::new();
        let mut inodes = Vec::new();
        if let Some((before, after)) = self.catalog.recheck_names() {
            // The root's cached listing.
            inodes.push(ROOT_INO);
            for gone in before.iter().filter(|n| !after.contains(n)) {
                entries.push((ROOT_INO, OsString::from(names::domain_file_name(gone))));
                inodes.extend(self.inodes.of_domain(gone));
            }
        }
        for domain in self.catalog.loaded_domains() {
            // An operation in progress invalidates when it ends.
            let lock = self.ops.domain_lock(&domain);
            let Some(_guard) = lock.try_lock() else {
                continue;
            };
            if let Some((before, after)) = self.catalog.recheck(&domain) {
                self.forget_served(&domain);
                self.change_counter(&domain).fetch_add(2, Ordering::AcqRel);
                for m in before.iter().chain(after.iter()) {
                    entries.extend(self.cached_entries(m));
                }
                inodes.extend(self.inodes.of_domain(&domain));
            }
        }
        if !entries.is_empty() || !inodes.is_empty() {
            entries.sort();
            entries.dedup();
            self.kernel_cache.read().invalidate(entries, inodes);
        }
    }

    pub fn set_kernel_cache(&self, kernel_cache: Arc<dyn KernelCache>) {
        *self.kernel_cache.write() = kernel_cache;
    }

    /// The (parent inode, name) of every node of the domain's tree as `model` has it, for the
    /// nodes the kernel may have cached.
    pub(super) fn cached_entries(&self, model: &DomainModel) -> Vec<(u64, OsString)> {
        let d = &model.name;
        let mut out = Vec::new();
        let mut add = |parent: NodeKey, name: String| {
            if let Some(p) = self.inodes.existing(&parent) {
                out.push((p, OsString::from(name)));
            }
        };
        for fixed in [
            DOMAIN_XML,
            STATUS_FILE,
            LIVE_DIR,
            CURRENT_LINK,
            SNAPSHOTS_DIR,
        ] {
            add(NodeKey::Domain(d.clone()), fixed.into());
        }
        for disk in &model.disks {
            add(NodeKey::Live(d.clone()), disk_file_name(&disk.target));
        }
        // Forgetting `files/` forgets every guest entry the kernel holds below it.
        add(NodeKey::Live(d.clone()), FILES_DIR.into());
        for s in &model.snapshots {
            let parent = match &s.parent {
                Some(p) => NodeKey::Snapshot(d.clone(), p.clone()),
                None => NodeKey::Snapshots(d.clone()),
            };
            add(parent, names::snapshot_file_name(&s.name));
            add(
                NodeKey::Snapshot(d.clone(), s.name.clone()),
                SNAPSHOT_XML.into(),
            );
            add(
                NodeKey::Snapshot(d.clone(), s.name.clone()),
                FILES_DIR.into(),
            );
            for disk in &s.disks {
                add(
                    NodeKey::Snapshot(d.clone(), s.name.clone()),
                    disk_file_name(&disk.target),
                );
            }
        }
        out
    }
}
