//! The filesystem core without FUSE, over libvirt's test:///default driver (snapshot
//! metadata only, no disk data): tree shape, branches, the current link, inode stability,
//! refresh after changes, and the errno of each refusal.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use virt::connect::Connect;
use virtsnapfs::error::ErrorKind;
use virtsnapfs::fs::{NodeKind, Options, VirtSnapFs, Whence};
use virtsnapfs::libvirt::LibvirtBackend;

const URI: &str = "test:///default";

/// The test driver's default state is shared by every connection of this process, so the
/// snapshots made through `conn` are what the backend's own connection sees. Tests in this
/// file share that state, so each uses its own domain.
fn setup(domain: &str) -> (Connect, VirtSnapFs) {
    let conn = Connect::open(Some(URI)).unwrap();
    let xml = format!(
        "<domain type='test'><name>{domain}</name><memory>65536</memory>\
         <os><type>hvm</type></os><devices><disk type='file' device='disk'>\
         <source file='/nonexistent/{domain}.img'/><target dev='vda'/></disk></devices></domain>"
    );
    conn.define_domain_xml(&xml).unwrap();
    let backend = LibvirtBackend::connect(Some(URI.into())).unwrap();
    let options = Options {
        refresh: Duration::ZERO,
        ..Options::default()
    };
    (conn, VirtSnapFs::new(Arc::new(backend), options))
}

fn snapshot(conn: &Connect, domain: &str, name: &str) {
    let dom = conn.lookup_domain_by_name(domain).unwrap();
    dom.create_snapshot_xml(
        &format!("<domainsnapshot><name>{name}</name></domainsnapshot>"),
        0,
    )
    .unwrap();
}

/// libvirt's snapshot `name` of `domain`, to revert to or delete.
fn existing_snapshot(
    conn: &Connect,
    domain: &str,
    name: &str,
) -> virt::domain_snapshot::DomainSnapshot {
    let dom = conn.lookup_domain_by_name(domain).unwrap();
    virt::domain::Domain::lookup_snapshot_by_name(&dom, name, 0).unwrap()
}

fn walk(fs: &VirtSnapFs, path: &str) -> Result<u64, ErrorKind> {
    let mut ino = fs.root_ino();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = fs.lookup(ino, OsStr::new(part)).map_err(|e| e.kind)?.ino;
    }
    Ok(ino)
}

/// The inode number `path`'s parent lists for it, without a lookup of `path` itself (a
/// disk's lookup fails here: test:///default has no disk data).
fn listed_ino(fs: &VirtSnapFs, path: &str) -> u64 {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    fs.readdir(walk(fs, parent).unwrap())
        .unwrap()
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{path} is not listed"))
        .ino
}

fn names(fs: &VirtSnapFs, path: &str) -> Vec<String> {
    let ino = walk(fs, path).unwrap();
    fs.readdir(ino)
        .unwrap()
        .into_iter()
        .map(|e| e.name.into_string().unwrap())
        .filter(|n| n != "." && n != "..")
        .collect()
}

#[test]
fn tree_branches_and_current_link() {
    let (conn, fs) = setup("core-tree");
    snapshot(&conn, "core-tree", "a");
    snapshot(&conn, "core-tree", "b");
    existing_snapshot(&conn, "core-tree", "a")
        .revert(0)
        .unwrap();
    snapshot(&conn, "core-tree", "c");

    assert!(names(&fs, "").contains(&"core-tree".to_string()));
    assert_eq!(
        names(&fs, "core-tree"),
        ["domain.xml", "status", "live", "current", "snapshots"]
    );
    assert_eq!(names(&fs, "core-tree/snapshots"), ["a"]);
    assert_eq!(
        names(&fs, "core-tree/snapshots/a"),
        ["snapshot.xml", "vda.raw", "files", "b", "c"]
    );
    assert_eq!(names(&fs, "core-tree/live"), ["vda.raw", "files"]);
    let current = walk(&fs, "core-tree/current").unwrap();
    assert_eq!(fs.readlink(current).unwrap(), "snapshots/a/c");
    assert_eq!(fs.getattr(current).unwrap().kind, NodeKind::Symlink);

    // `..` of a nested snapshot is its parent snapshot.
    let c = walk(&fs, "core-tree/snapshots/a/c").unwrap();
    let a = walk(&fs, "core-tree/snapshots/a").unwrap();
    let dotdot = fs
        .readdir(c)
        .unwrap()
        .into_iter()
        .find(|e| e.name == "..")
        .unwrap();
    assert_eq!(dotdot.ino, a);
}

#[test]
fn snapshots_made_after_loading_appear_under_their_parents() {
    // Each change below is picked up by a reload that reads only the new snapshot's XML (the
    // ones already shown are reused), so each must land where libvirt puts it.
    let (conn, fs) = setup("core-grow");
    snapshot(&conn, "core-grow", "a");
    assert_eq!(names(&fs, "core-grow/snapshots"), ["a"]);
    snapshot(&conn, "core-grow", "b");
    assert_eq!(
        names(&fs, "core-grow/snapshots/a"),
        ["snapshot.xml", "vda.raw", "files", "b"]
    );
    existing_snapshot(&conn, "core-grow", "a")
        .revert(0)
        .unwrap();
    snapshot(&conn, "core-grow", "c");
    assert_eq!(
        names(&fs, "core-grow/snapshots/a"),
        ["snapshot.xml", "vda.raw", "files", "b", "c"]
    );
    assert_eq!(
        fs.readlink(walk(&fs, "core-grow/current").unwrap())
            .unwrap(),
        "snapshots/a/c"
    );
}

#[test]
fn deleting_a_parent_moves_children_up_and_keeps_their_inodes() {
    let (conn, fs) = setup("core-delete");
    snapshot(&conn, "core-delete", "a");
    snapshot(&conn, "core-delete", "b");
    let b_before = walk(&fs, "core-delete/snapshots/a/b").unwrap();
    existing_snapshot(&conn, "core-delete", "a")
        .delete(0)
        .unwrap();
    assert_eq!(names(&fs, "core-delete/snapshots"), ["b"]);
    assert_eq!(walk(&fs, "core-delete/snapshots/b").unwrap(), b_before);
    assert_eq!(
        walk(&fs, "core-delete/snapshots/a"),
        Err(ErrorKind::NotFound)
    );
    // The old inode of `a` no longer resolves to a node.
    assert_eq!(
        fs.getattr(walk(&fs, "core-delete/snapshots/b/snapshot.xml").unwrap())
            .unwrap()
            .kind,
        NodeKind::File
    );
}

#[test]
fn errno_of_each_refusal() {
    let (conn, fs) = setup("core-errno");
    snapshot(&conn, "core-errno", "s");
    let xml = walk(&fs, "core-errno/snapshots/s/snapshot.xml").unwrap();
    let dir = walk(&fs, "core-errno/snapshots/s").unwrap();
    // The disk's image does not exist (test:///default has no disk data): its lookup fails,
    // and its inode comes from the listing.
    assert_eq!(
        walk(&fs, "core-errno/snapshots/s/vda.raw"),
        Err(ErrorKind::Io)
    );
    let disk = listed_ino(&fs, "core-errno/snapshots/s/vda.raw");

    assert_eq!(walk(&fs, "core-errno/nope"), Err(ErrorKind::NotFound));
    assert_eq!(walk(&fs, "no-such-domain"), Err(ErrorKind::NotFound));
    assert_eq!(fs.readdir(xml).unwrap_err().kind, ErrorKind::NotADirectory);
    assert_eq!(
        fs.open(dir, false).unwrap_err().kind,
        ErrorKind::IsADirectory
    );
    assert_eq!(fs.open(xml, true).unwrap_err().kind, ErrorKind::ReadOnly);
    assert_eq!(fs.refuse_change(disk, "writing").kind, ErrorKind::ReadOnly);
    assert_eq!(ErrorKind::ReadOnly.errno(), libc::EROFS);
    assert_eq!(fs.read(9999, 0, 10).unwrap_err().kind, ErrorKind::BadHandle);

    // A disk whose image does not exist: listed, EIO on stat and open, with the reason.
    let err = fs.getattr(disk).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Io);
    assert!(
        err.message.contains("snapshot s disk vda"),
        "{}",
        err.message
    );
    let err = fs.open(disk, false).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Io);
    assert!(
        err.message.contains("snapshot s disk vda"),
        "{}",
        err.message
    );

    // XML reads and seeks.
    let opened = fs.open(xml, false).unwrap();
    let bytes = fs.read(opened.fh, 0, 1 << 16).unwrap();
    assert!(String::from_utf8(bytes.clone())
        .unwrap()
        .contains("<name>s</name>"));
    assert_eq!(
        fs.lseek(opened.fh, 0, Whence::Hole).unwrap(),
        bytes.len() as u64
    );
    assert_eq!(
        fs.lseek(opened.fh, bytes.len() as u64, Whence::Data)
            .unwrap_err()
            .kind,
        ErrorKind::NoSuchOffset
    );
    fs.release(opened.fh);
    assert_eq!(
        fs.read(opened.fh, 0, 1).unwrap_err().kind,
        ErrorKind::BadHandle
    );
}

#[test]
fn inode_numbers_are_stable_and_distinct() {
    let (conn, fs) = setup("core-ino");
    snapshot(&conn, "core-ino", "s");
    let paths = [
        "core-ino",
        "core-ino/live",
        "core-ino/live/vda.raw",
        "core-ino/snapshots/s",
        "core-ino/snapshots/s/vda.raw",
        "core-ino/domain.xml",
    ];
    let first: Vec<u64> = paths.iter().map(|p| listed_ino(&fs, p)).collect();
    let again: Vec<u64> = paths.iter().map(|p| listed_ino(&fs, p)).collect();
    assert_eq!(first, again);
    let mut sorted = first.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), first.len());
}

#[test]
fn several_roots_after_deleting_a_root_with_two_children() {
    let (conn, fs) = setup("core-roots");
    snapshot(&conn, "core-roots", "a");
    snapshot(&conn, "core-roots", "b");
    existing_snapshot(&conn, "core-roots", "a")
        .revert(0)
        .unwrap();
    snapshot(&conn, "core-roots", "c");
    existing_snapshot(&conn, "core-roots", "a")
        .delete(0)
        .unwrap();
    let mut roots = names(&fs, "core-roots/snapshots");
    roots.sort();
    assert_eq!(roots, ["b", "c"]);
}
