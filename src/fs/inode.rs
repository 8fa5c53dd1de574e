//! Inode numbers: one per node, assigned on first sight and never reused while mounted, so
//! `stat` gives the same st_ino for the same domain, snapshot or disk for the mount's life.
//! Nodes are keyed by names, not by position in the tree: a snapshot that moves to another
//! parent keeps its inode.

use std::collections::HashMap;

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
    /// hard-linked file has one st_ino; the volume's root directory is its root inode.
    Guest(String, Option<String>, String, u64),
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
            | NodeKey::Files(d, _)
            | NodeKey::Guest(d, _, _, _) => Some(d),
        }
    }
}

pub struct InodeTable {
    inner: Mutex<Inner>,
}

struct Inner {
    by_key: HashMap<NodeKey, u64>,
    by_ino: Vec<NodeKey>,
}

impl InodeTable {
    pub fn new() -> InodeTable {
        let mut by_key = HashMap::new();
        by_key.insert(NodeKey::Root, ROOT_INO);
        InodeTable {
            inner: Mutex::new(Inner {
                by_key,
                by_ino: vec![NodeKey::Root],
            }),
        }
    }

    /// The inode of `key`, assigning the next number on first sight.
    pub fn ino(&self, key: &NodeKey) -> u64 {
        let mut inner = self.inner.lock();
        if let Some(&ino) = inner.by_key.get(key) {
            return ino;
        }
        inner.by_ino.push(key.clone());
        let ino = inner.by_ino.len() as u64;
        inner.by_key.insert(key.clone(), ino);
        ino
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
            .enumerate()
            .filter(|(_, k)| k.domain() == Some(domain))
            .map(|(i, _)| i as u64 + 1)
            .collect()
    }

    /// Snapshot `old` of `domain` is now called `new`: its nodes keep their inode numbers,
    /// as a renamed file does, so the kernel's moved dentries stay valid.
    pub fn rename_snapshot(&self, domain: &str, old: &str, new: &str) {
        let mut inner = self.inner.lock();
        let Inner { by_key, by_ino } = &mut *inner;
        for (index, key) in by_ino.iter_mut().enumerate() {
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
                NodeKey::Guest(d, Some(s), v, i) if d == domain && s == old => {
                    NodeKey::Guest(d.clone(), Some(new.to_string()), v.clone(), *i)
                }
                _ => continue,
            };
            by_key.remove(key);
            by_key.insert(renamed.clone(), index as u64 + 1);
            *key = renamed;
        }
    }

    pub fn key(&self, ino: u64) -> Option<NodeKey> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.inner.lock().by_ino.get(index).cloned()
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
        ));
        let live = t.ino(&NodeKey::Guest("d".into(), None, "vda1".into(), 12));
        t.rename_snapshot("d", "a", "b");
        assert_eq!(t.ino(&NodeKey::Files("d".into(), Some("b".into()))), files);
        assert_eq!(
            t.ino(&NodeKey::Guest(
                "d".into(),
                Some("b".into()),
                "vda1".into(),
                12
            )),
            guest
        );
        assert_eq!(
            t.ino(&NodeKey::Guest("d".into(), None, "vda1".into(), 12)),
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
