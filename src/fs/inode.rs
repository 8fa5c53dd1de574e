//! Inode numbers: one per node, assigned on first sight and never reused while mounted, so
//! `stat` gives the same st_ino for the same domain, snapshot or disk for the mount's life.
//! Nodes are keyed by names, not by position in the tree: a snapshot that moves to another
//! parent keeps its inode.
//!
//! Guest files are the exception to "for the mount's life": a guest filesystem may hold
//! millions of them, so a guest node's number is kept while the kernel holds it (from its
//! first lookup until the kernel's FORGET brings its lookup count back to zero) and then
//! dropped; a later lookup gives it a new number. The mount's own nodes are few and kept.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeKey {
    Root,
    Domain(String),
    DomainXml(String),
    /// What a snapshot operation on the domain is doing now.
    Status(String),
    Live(String),
    /// (domain, disk target)
    LiveDisk(String, String),
    Current(String),
    Snapshots(String),
    /// (domain, snapshot)
    Snapshot(String, String),
    SnapshotXml(String, String),
    /// (domain, snapshot, disk target)
    SnapshotDisk(String, String, String),
    /// `files/` of a snapshot (domain, Some(snapshot)) or of `live/` (domain, None).
    Files(String, Option<String>),
    /// An inode of a guest filesystem: (domain, snapshot or None for `live/`, volume such as
    /// `vda1`, the guest's inode number). Keyed on the guest's number, so every name of a
    /// hard-linked file has one st_ino; the volume's root directory is its root inode. The
    /// names are shared (`Arc`): a listing makes one key per entry, and copying three
    /// strings for each of them was most of a cold walk's time in the daemon. The last field
    /// is the node's epoch: for `live/`, the domain's change counter when it was looked up
    /// (0 for a snapshot), so that after a revert the same guest inode number is another
    /// node, and a file held open across it fails instead of reading whatever file now has
    /// that number.
    Guest(Arc<str>, Option<Arc<str>>, Arc<str>, u64, u64),
}

impl NodeKey {
    pub fn domain(&self) -> Option<&str> {
        match self {
            NodeKey::Root => None,
            NodeKey::Domain(d)
            | NodeKey::DomainXml(d)
            | NodeKey::Status(d)
            | NodeKey::Live(d)
            | NodeKey::LiveDisk(d, _)
            | NodeKey::Current(d)
            | NodeKey::Snapshots(d)
            | NodeKey::Snapshot(d, _)
            | NodeKey::SnapshotXml(d, _)
            | NodeKey::SnapshotDisk(d, _, _)
            | NodeKey::Files(d, _) => Some(d),
            NodeKey::Guest(d, ..) => Some(d),
        }
    }
}

pub struct InodeTable {
    inner: Mutex<Inner>,
}

/// The tables hash with foldhash (seeded per process, as the `lru` caches already hash):
/// a cold listing of a large guest directory assigns a number to every entry, and SipHash
/// over each key's names was a tenth of a cold walk's time in the daemon.
type Table<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

struct Inner {
    by_key: Table<NodeKey, u64>,
    by_ino: Table<u64, Node>,
    /// The number the next new node gets.
    next: u64,
}

struct Node {
    key: NodeKey,
    /// Lookups the kernel counts for this inode (guest nodes only; see [`InodeTable::forget`]).
    lookups: u64,
}

impl InodeTable {
    pub fn new() -> InodeTable {
        let mut by_key = Table::default();
        by_key.insert(NodeKey::Root, ROOT_INO);
        let root = Node {
            key: NodeKey::Root,
            lookups: 0,
        };
        InodeTable {
            inner: Mutex::new(Inner {
                by_key,
                by_ino: Table::from_iter([(ROOT_INO, root)]),
                next: ROOT_INO + 1,
            }),
        }
    }

    /// The inode of `key`, assigning the next number on first sight.
    pub fn ino(&self, key: &NodeKey) -> u64 {
        let mut inner = self.inner.lock();
        if let Some(&ino) = inner.by_key.get(key) {
            return ino;
        }
        let ino = inner.next;
        inner.next += 1;
        inner.by_ino.insert(
            ino,
            Node {
                key: key.clone(),
                lookups: 0,
            },
        );
        inner.by_key.insert(key.clone(), ino);
        ino
    }

    /// The kernel got inode `ino` from a lookup: one more reference it will FORGET.
    pub fn looked_up(&self, ino: u64) {
        if let Some(node) = self.inner.lock().by_ino.get_mut(&ino) {
            if matches!(node.key, NodeKey::Guest(..)) {
                node.lookups = node.lookups.saturating_add(1);
            }
        }
    }

    /// The kernel forgot `count` lookups of `ino`. A guest node it no longer holds is
    /// dropped (its number is never given again).
    pub fn forget(&self, ino: u64, count: u64) {
        let mut inner = self.inner.lock();
        let Some(node) = inner.by_ino.get_mut(&ino) else {
            return;
        };
        if !matches!(node.key, NodeKey::Guest(..)) {
            return;
        }
        node.lookups = node.lookups.saturating_sub(count);
        if node.lookups == 0 {
            if let Some(node) = inner.by_ino.remove(&ino) {
                inner.by_key.remove(&node.key);
            }
        }
    }

    /// How many inode numbers are held now.
    pub fn held(&self) -> usize {
        self.inner.lock().by_ino.len()
    }

    /// The inode of `key` if one was ever assigned (the kernel may have it cached).
    pub fn existing(&self, key: &NodeKey) -> Option<u64> {
        self.inner.lock().by_key.get(key).copied()
    }

    /// Every assigned inode whose node belongs to `domain`.
    pub fn of_domain(&self, domain: &str) -> Vec<u64> {
        let inner = self.inner.lock();
        inner
            .by_ino
            .iter()
            .filter(|(_, n)| n.key.domain() == Some(domain))
            .map(|(&ino, _)| ino)
            .collect()
    }

    /// Snapshot `old` of `domain` is now called `new`: its nodes keep their inode numbers,
    /// as a renamed file does, so the kernel's moved dentries stay valid.
    pub fn rename_snapshot(&self, domain: &str, old: &str, new: &str) {
        let mut inner = self.inner.lock();
        let Inner { by_key, by_ino, .. } = &mut *inner;
        for (&ino, Node { key, .. }) in by_ino.iter_mut() {
            let renamed = match key {
                NodeKey::Snapshot(d, s) if d == domain && s == old => {
                    NodeKey::Snapshot(d.clone(), new.to_string())
                }
                NodeKey::SnapshotXml(d, s) if d == domain && s == old => {
                    NodeKey::SnapshotXml(d.clone(), new.to_string())
                }
                NodeKey::SnapshotDisk(d, s, t) if d == domain && s == old => {
                    NodeKey::SnapshotDisk(d.clone(), new.to_string(), t.clone())
                }
                NodeKey::Files(d, Some(s)) if d == domain && s == old => {
                    NodeKey::Files(d.clone(), Some(new.to_string()))
                }
                NodeKey::Guest(d, Some(s), v, i, e) if **d == *domain && **s == *old => {
                    NodeKey::Guest(d.clone(), Some(new.into()), v.clone(), *i, *e)
                }
                _ => continue,
            };
            by_key.remove(key);
            by_key.insert(renamed.clone(), ino);
            *key = renamed;
        }
    }

    pub fn key(&self, ino: u64) -> Option<NodeKey> {
        self.inner.lock().by_ino.get(&ino).map(|n| n.key.clone())
    }
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_nodes_are_dropped_when_the_kernel_forgets_them_and_never_renumbered() {
        let t = InodeTable::new();
        let guest = NodeKey::Guest("d".into(), Some("s".into()), "vda1".into(), 12, 0);
        let snap = t.ino(&NodeKey::Snapshot("d".into(), "s".into()));
        let g = t.ino(&guest);
        t.looked_up(g);
        t.looked_up(g);
        t.forget(g, 1);
        assert_eq!(t.key(g), Some(guest.clone()), "still held once");
        t.forget(g, 1);
        assert_eq!(t.key(g), None, "forgotten");
        let again = t.ino(&guest);
        assert!(
            again > g,
            "a new number, never an old one: {again} after {g}"
        );
        // The mount's own nodes are kept whatever the kernel forgets.
        t.looked_up(snap);
        t.forget(snap, 5);
        assert_eq!(t.key(snap), Some(NodeKey::Snapshot("d".into(), "s".into())));
        assert_eq!(t.held(), 3);
    }

    #[test]
    fn inodes_are_stable_and_distinct() {
        let t = InodeTable::new();
        let a = t.ino(&NodeKey::Domain("a".into()));
        let b = t.ino(&NodeKey::Snapshot("a".into(), "s".into()));
        assert_eq!(t.ino(&NodeKey::Root), ROOT_INO);
        assert_ne!(a, b);
        assert_eq!(t.ino(&NodeKey::Domain("a".into())), a);
        assert_eq!(t.key(b), Some(NodeKey::Snapshot("a".into(), "s".into())));
        assert_eq!(t.key(0), None);
        assert_eq!(t.key(999), None);
    }

    #[test]
    fn a_renamed_snapshot_keeps_its_inodes() {
        let t = InodeTable::new();
        let dir = t.ino(&NodeKey::Snapshot("d".into(), "a".into()));
        let disk = t.ino(&NodeKey::SnapshotDisk("d".into(), "a".into(), "vda".into()));
        let other = t.ino(&NodeKey::Snapshot("e".into(), "a".into()));
        let files = t.ino(&NodeKey::Files("d".into(), Some("a".into())));
        let guest = t.ino(&NodeKey::Guest(
            "d".into(),
            Some("a".into()),
            "vda1".into(),
            12,
            0,
        ));
        let live = t.ino(&NodeKey::Guest("d".into(), None, "vda1".into(), 12, 2));
        t.rename_snapshot("d", "a", "b");
        assert_eq!(t.ino(&NodeKey::Files("d".into(), Some("b".into()))), files);
        assert_eq!(
            t.ino(&NodeKey::Guest(
                "d".into(),
                Some("b".into()),
                "vda1".into(),
                12,
                0
            )),
            guest
        );
        assert_eq!(
            t.ino(&NodeKey::Guest("d".into(), None, "vda1".into(), 12, 2)),
            live
        );
        assert_eq!(t.ino(&NodeKey::Snapshot("d".into(), "b".into())), dir);
        assert_eq!(
            t.ino(&NodeKey::SnapshotDisk("d".into(), "b".into(), "vda".into())),
            disk
        );
        assert_eq!(t.ino(&NodeKey::Snapshot("e".into(), "a".into())), other);
        assert_ne!(t.ino(&NodeKey::Snapshot("d".into(), "a".into())), dir);
    }
}
