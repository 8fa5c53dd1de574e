//! Directories: the `$I30` index, a B+tree of `$FILE_NAME` keys whose root is the resident
//! `$INDEX_ROOT` and whose other nodes are "INDX" blocks of the `$INDEX_ALLOCATION` stream;
//! and the entries of an `$ATTRIBUTE_LIST`.
//!
//! A listing walks the tree in key order, each node's subnode before its entry. The walk is
//! bounded: at most [`MAX_DEPTH`] levels, each index block visited at most once (a block
//! reached twice is a loop, [`CorruptKind::NtfsIndexLoop`]), at most [`MAX_ENTRIES`]
//! entries. Entries of the DOS namespace, of the volume's metadata files and the root's
//! entry for itself are not passed on (ntfs-3g's `ntfs_filldir`).

use std::cmp::Ordering;
use std::collections::HashSet;
use std::ops::ControlFlow;

use super::super::bytes::{read_u16le, read_u32le, read_u64le, read_u8, slice};
use super::super::{CorruptKind, GuestError};
use super::record::{self, AT_INDEX_ALLOCATION, AT_INDEX_ROOT, MREF_MASK};
use super::{Body, Inode, Ntfs, FIRST_USER_RECORD, ROOT_INO};

/// The name of the directory index, "$I30", in UTF-16.
pub const I30: &[u16] = &[0x24, 0x49, 0x33, 0x30];
/// Deepest index tree walked (a tree of 4 KiB blocks this deep holds more names than any
/// volume).
pub const MAX_DEPTH: usize = 32;
/// Entries one directory may have.
pub const MAX_ENTRIES: usize = 1 << 21;

/// `$FILE_NAME` namespaces.
pub const NAMESPACE_DOS: u8 = 2;

const INDEX_ENTRY_NODE: u16 = 0x0001;
const INDEX_ENTRY_END: u16 = 0x0002;

/// One directory entry: the record it names and its `$FILE_NAME` key.
#[derive(Debug, Clone)]
pub struct Entry {
    pub record: u64,
    pub name: Vec<u16>,
    pub namespace: u8,
    pub file_attributes: u32,
}

/// The MFT references of an attribute list's entries.
pub fn attr_list_entries(value: &[u8]) -> Result<Vec<u64>, GuestError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < value.len() {
        let length = usize::from(read_u16le(value, at + 4));
        if length < 0x1A || at.checked_add(length).is_none_or(|e| e > value.len()) {
            return Err(CorruptKind::NtfsAttrList.into());
        }
        out.push(read_u64le(value, at + 0x10));
        at += length;
    }
    Ok(out)
}

/// Walk state shared by the nodes of one directory.
struct Walk<'a> {
    fs: &'a Ntfs,
    dir: &'a Inode,
    block_size: usize,
    vcn_shift: u32,
    alloc: Option<super::Stream>,
    visited: HashSet<u64>,
    entries: usize,
    /// Whether DOS-namespace names are passed on.
    with_dos: bool,
}

impl Ntfs {
    /// Calls `f` for each entry of directory `dir` shown in listings, in index order, until
    /// it breaks.
    pub(crate) fn for_each_entry(
        &self,
        dir: &Inode,
        f: &mut dyn FnMut(Entry) -> ControlFlow<()>,
    ) -> Result<(), GuestError> {
        let (mut w, area) = self.walk(dir)?;
        let _ = w.node(&area, 0, f)?;
        Ok(())
    }

    /// Like [`Ntfs::for_each_entry`], with the DOS-namespace names too (for lookups: ntfs-3g
    /// finds a file by its 8.3 alias, though it does not list it).
    pub(crate) fn for_each_name(
        &self,
        dir: &Inode,
        f: &mut dyn FnMut(Entry) -> ControlFlow<()>,
    ) -> Result<(), GuestError> {
        let (mut w, area) = self.walk(dir)?;
        w.with_dos = true;
        let _ = w.node(&area, 0, f)?;
        Ok(())
    }

    /// Searches directory `dir` for the name of UTF-16 `target` by descending its B+tree
    /// in `$UpCase` order, as Windows sorts it.
    pub(crate) fn index_find(&self, dir: &Inode, target: &[u16]) -> Result<Found, GuestError> {
        let (mut w, mut area) = self.walk(dir)?;
        let up: Vec<u16> = target.iter().map(|&u| self.upcase(u)).collect();
        for _ in 0..MAX_DEPTH {
            let mut at = 0usize;
            let vcn = loop {
                let e = parse_entry(&area, at)?;
                if let Some(key) = &e.key {
                    let name = record::utf16_units(key.name);
                    let key_up: Vec<u16> = name.iter().map(|&u| self.upcase(u)).collect();
                    match up.cmp(&key_up) {
                        Ordering::Greater => {
                            at += e.length;
                            continue;
                        }
                        Ordering::Equal => {
                            let shown = name == target && e.record >= FIRST_USER_RECORD;
                            return Ok(if shown {
                                Found::Record(e.record)
                            } else {
                                Found::Ambiguous
                            });
                        }
                        Ordering::Less => {}
                    }
                }
                // Before this entry's key, or the node's end: its subnode, if any.
                match e.subnode {
                    Some(vcn) => break vcn,
                    None => return Ok(Found::Absent),
                }
            };
            let block = w.block(vcn)?;
            area = entry_area(&block, 0x18)
                .ok_or(CorruptKind::NtfsIndexBlock)?
                .to_vec();
        }
        Err(CorruptKind::NtfsIndexTooDeep.into())
    }

    /// The walk state of directory `dir` and its root node's entries.
    fn walk<'a>(&'a self, dir: &'a Inode) -> Result<(Walk<'a>, Vec<u8>), GuestError> {
        let root = dir
            .attrs
            .iter()
            .find(|a| a.type_code == AT_INDEX_ROOT && a.name == I30)
            .ok_or(CorruptKind::NtfsAttrMissing)?;
        let Body::Resident(v) = &root.body else {
            return Err(CorruptKind::NtfsIndexRoot.into());
        };
        let indexed_type = read_u32le(v, 0);
        let block_size = read_u32le(v, 8) as usize;
        if indexed_type != record::AT_FILE_NAME
            || !block_size.is_power_of_two()
            || !(256..=65536).contains(&block_size)
        {
            return Err(CorruptKind::NtfsIndexRoot.into());
        }
        let area = entry_area(v, 0x10).ok_or(CorruptKind::NtfsIndexRoot)?;
        let cs = self.geo.cluster_size;
        let vcn_shift = if block_size as u64 >= cs {
            cs.trailing_zeros()
        } else {
            9
        };
        let w = Walk {
            fs: self,
            dir,
            block_size,
            vcn_shift,
            alloc: None,
            visited: HashSet::new(),
            entries: 0,
            with_dos: false,
        };
        Ok((w, area.to_vec()))
    }
}

/// What an index search found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    Record(u64),
    Absent,
    /// A name equal but for case (or a metadata name): the whole directory must be read to
    /// decide.
    Ambiguous,
}

/// An index entry's `$FILE_NAME` key, the parts used.
struct Key<'a> {
    /// UTF-16LE bytes.
    name: &'a [u8],
    namespace: u8,
    file_attributes: u32,
}

/// One index entry, checked.
struct RawEntry<'a> {
    length: usize,
    record: u64,
    subnode: Option<u64>,
    /// None for the node's last (end) entry.
    key: Option<Key<'a>>,
}

/// Parses and checks the index entry at `at` of a node's entry `area`.
fn parse_entry(area: &[u8], at: usize) -> Result<RawEntry<'_>, GuestError> {
    let bad = || GuestError::from(CorruptKind::NtfsIndexEntry);
    if at.checked_add(16).is_none_or(|e| e > area.len()) {
        return Err(bad());
    }
    let mref = read_u64le(area, at);
    let length = usize::from(read_u16le(area, at + 8));
    let key_length = usize::from(read_u16le(area, at + 10));
    let flags = read_u16le(area, at + 12);
    if length < 16 || !length.is_multiple_of(8) || length > area.len() - at {
        return Err(bad());
    }
    let e = &area[at..at + length];
    let subnode = if flags & INDEX_ENTRY_NODE != 0 {
        if length < 24 {
            return Err(bad());
        }
        Some(read_u64le(e, length - 8))
    } else {
        None
    };
    let key = if flags & INDEX_ENTRY_END != 0 {
        None
    } else {
        let key_room = length - 16 - if subnode.is_some() { 8 } else { 0 };
        if key_length < 0x42 || key_length > key_room {
            return Err(bad());
        }
        let key = &e[16..16 + key_length];
        let name_len = usize::from(read_u8(key, 0x40));
        Some(Key {
            name: slice(key, 0x42, name_len * 2).ok_or(CorruptKind::NtfsFileName)?,
            namespace: read_u8(key, 0x41),
            file_attributes: read_u32le(key, 0x38),
        })
    };
    Ok(RawEntry {
        length,
        record: mref & MREF_MASK,
        subnode,
        key,
    })
}

/// The entries of an index node whose INDEX_HEADER is at `hdr` in `bytes`.
fn entry_area(bytes: &[u8], hdr: usize) -> Option<&[u8]> {
    let entries_offset = read_u32le(bytes, hdr) as usize;
    let index_length = read_u32le(bytes, hdr + 4) as usize;
    let start = hdr.checked_add(entries_offset)?;
    let end = hdr.checked_add(index_length)?;
    if start > end {
        return None;
    }
    bytes.get(start..end)
}

impl Walk<'_> {
    fn node(
        &mut self,
        area: &[u8],
        depth: usize,
        f: &mut dyn FnMut(Entry) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, GuestError> {
        let mut at = 0usize;
        loop {
            let e = parse_entry(area, at)?;
            if let Some(vcn) = e.subnode {
                if depth + 1 >= MAX_DEPTH {
                    return Err(CorruptKind::NtfsIndexTooDeep.into());
                }
                let block = self.block(vcn)?;
                let sub = entry_area(&block, 0x18)
                    .ok_or(CorruptKind::NtfsIndexBlock)?
                    .to_vec();
                drop(block);
                if self.node(&sub, depth + 1, f)?.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            let Some(key) = e.key else {
                return Ok(ControlFlow::Continue(()));
            };
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(CorruptKind::NtfsDirTooLarge.into());
            }
            let metadata = e.record < FIRST_USER_RECORD;
            let dos_hidden = key.namespace == NAMESPACE_DOS && !self.with_dos;
            if !dos_hidden && !metadata && e.record != ROOT_INO {
                let entry = Entry {
                    record: e.record,
                    name: record::utf16_units(key.name),
                    namespace: key.namespace,
                    file_attributes: key.file_attributes,
                };
                if f(entry).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            at += e.length;
        }
    }

    /// Index block `vcn` of the directory, fixed up and checked, through the cache.
    fn block(&mut self, vcn: u64) -> Result<std::sync::Arc<[u8]>, GuestError> {
        if vcn >= 1 << 32 || !self.visited.insert(vcn) {
            return Err(if vcn >= 1 << 32 {
                CorruptKind::NtfsIndexBlock
            } else {
                CorruptKind::NtfsIndexLoop
            }
            .into());
        }
        let key = (self.dir.no << 32) | vcn;
        let fs = self.fs;
        if let Some(b) = fs.cached(fs.index_id, key) {
            return Ok(b);
        }
        if self.alloc.is_none() {
            let s = fs
                .stream(self.dir, AT_INDEX_ALLOCATION, I30)?
                .ok_or(CorruptKind::NtfsAttrMissing)?;
            self.alloc = Some(s);
        }
        let Some(alloc) = &self.alloc else {
            return Err(CorruptKind::NtfsAttrMissing.into());
        };
        let offset = vcn
            .checked_shl(self.vcn_shift)
            .filter(|o| {
                o.checked_add(self.block_size as u64)
                    .is_some_and(|e| e <= alloc.data_size)
            })
            .ok_or(CorruptKind::NtfsIndexBlock)?;
        if alloc.resident.is_some() || alloc.unit_clusters != 0 {
            return Err(CorruptKind::NtfsIndexBlock.into());
        }
        let mut buf = vec![0u8; self.block_size];
        fs.read_runs(&alloc.runs, offset, &mut buf)?;
        record::apply_fixups(&mut buf, b"INDX")?;
        if read_u64le(&buf, 0x10) != vcn {
            return Err(CorruptKind::NtfsIndexBlock.into());
        }
        Ok(fs.keep(fs.index_id, key, buf))
    }
}
