//! What the filesystem shows, as plain data: domains, their disks and their snapshot trees.
//! Built by `crate::libvirt` from libvirt's XML, consumed by `crate::fs`; neither side needs
//! the other, so the filesystem core is tested with hand-made models.

use crate::image::ChainSpec;

/// One disk as it is served: its target name (`vda`) and the chain that holds its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskModel {
    pub target: String,
    pub chain: ChainSpec,
    /// For an external snapshot: the overlay libvirt created on top of the snapshot's image
    /// when the snapshot was taken (it took the writes from then on).
    pub overlay: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotModel {
    pub name: String,
    pub parent: Option<String>,
    /// Seconds since the epoch (libvirt's creationTime).
    pub creation_time: i64,
    /// libvirt's state at snapshot time: running, shutoff, disk-snapshot, ...
    pub state: String,
    pub xml: String,
    /// The disks this snapshot captured (disks with snapshot='no' are left out).
    pub disks: Vec<DiskModel>,
}

/// How long snapshot XML read from libvirt is trusted unchanged while the domain's XML and
/// snapshot names are: a snapshot's metadata redefined in place under the same name changes
/// neither, so models are read again in full at least this often.
pub const SNAPSHOT_XML_TRUSTED_FOR: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainModel {
    pub name: String,
    pub xml: String,
    pub active: bool,
    pub disks: Vec<DiskModel>,
    pub snapshots: Vec<SnapshotModel>,
    pub current: Option<String>,
    /// When the oldest snapshot XML in this model was read from libvirt.
    pub snapshots_read_at: std::time::Instant,
}

impl DomainModel {
    /// A cheap summary of what changes when libvirt's view of a domain changes: its XML, its
    /// snapshots' names and its current snapshot (see `Backend::domain_fingerprint`).
    pub fn fingerprint_of(xml: &str, snapshot_names: &[String], current: Option<&str>) -> u64 {
        hash_of(&(Self::layout_fingerprint_of(xml, snapshot_names), current))
    }

    /// A cheap summary of what decides which images the domain's disks and snapshots read:
    /// its XML and its snapshots' names, not which snapshot is current (see
    /// `Backend::layout_fingerprints`).
    pub fn layout_fingerprint_of(xml: &str, snapshot_names: &[String]) -> u64 {
        let mut names = snapshot_names.to_vec();
        names.sort();
        hash_of(&(xml, names))
    }

    pub fn layout_fingerprint(&self) -> u64 {
        Self::layout_fingerprint_of(&self.xml, &self.snapshot_names())
    }

    /// Whether every snapshot XML in this model is recent enough to trust unchanged (see
    /// `SNAPSHOT_XML_TRUSTED_FOR`).
    pub fn snapshots_trusted(&self) -> bool {
        self.snapshots_read_at.elapsed() < SNAPSHOT_XML_TRUSTED_FOR
    }

    /// Whether `other` shows exactly what this model shows: everything but when its snapshot
    /// XML was read. A model read again in full only because its snapshot XML was no longer
    /// trusted is usually the same, and the kernel must not be told to forget what it cached
    /// (every disk's pages among it) each time that happens.
    pub fn shows_the_same_as(&self, other: &DomainModel) -> bool {
        // Destructured, so a field added later cannot be left out of the comparison.
        let DomainModel {
            name,
            xml,
            active,
            disks,
            snapshots,
            current,
            snapshots_read_at: _,
        } = self;
        *name == other.name
            && *xml == other.xml
            && *active == other.active
            && *disks == other.disks
            && *snapshots == other.snapshots
            && *current == other.current
    }

    pub fn fingerprint(&self) -> u64 {
        Self::fingerprint_of(&self.xml, &self.snapshot_names(), self.current.as_deref())
    }

    fn snapshot_names(&self) -> Vec<String> {
        self.snapshots.iter().map(|s| s.name.clone()).collect()
    }

    pub fn snapshot(&self, name: &str) -> Option<&SnapshotModel> {
        self.snapshots.iter().find(|s| s.name == name)
    }

    /// Snapshots whose parent is `parent` (None: the roots), in creation order.
    pub fn children<'a>(
        &'a self,
        parent: Option<&'a str>,
    ) -> impl Iterator<Item = &'a SnapshotModel> + 'a {
        self.snapshots
            .iter()
            .filter(move |s| s.parent.as_deref() == parent)
    }

    /// Names from the root snapshot down to `name`, or None if `name` does not exist. A
    /// parent cycle in the metadata (never produced by libvirt) stops the walk.
    pub fn path_to(&self, name: &str) -> Option<Vec<&str>> {
        let mut path = vec![self.snapshot(name)?.name.as_str()];
        let mut cursor = self.snapshot(name)?;
        while let Some(parent) = cursor.parent.as_deref() {
            if path.len() > self.snapshots.len() {
                return None;
            }
            cursor = self.snapshot(parent)?;
            path.push(cursor.name.as_str());
        }
        path.reverse();
        Some(path)
    }
}

fn hash_of(value: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::DomainModel;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn layout_fingerprint_follows_the_xml_and_the_set_of_snapshot_names() {
        let fp = DomainModel::layout_fingerprint_of;
        let base = fp("<domain/>", &names(&["a", "b"]));
        // Order of listing does not matter; the XML and the set of names do.
        assert_eq!(base, fp("<domain/>", &names(&["b", "a"])));
        assert_ne!(base, fp("<domain><x/></domain>", &names(&["a", "b"])));
        assert_ne!(base, fp("<domain/>", &names(&["a"])));
        // The full fingerprint does see the current snapshot.
        let full = DomainModel::fingerprint_of;
        assert_ne!(
            full("<domain/>", &names(&["a"]), Some("a")),
            full("<domain/>", &names(&["a"]), None)
        );
    }
}
