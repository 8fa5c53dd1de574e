//! Directories: arrays of 32-byte entries, in the fixed root region (FAT12/16) or in a
//! cluster chain (subdirectories, and the FAT32 root).
//!
//! Entries are read as Linux's vfat `__fat_readdir` and `fat_parse_long` read them: free
//! (first byte 0) and deleted (0xE5) entries and volume labels are skipped and the scan goes
//! on to the end of the directory (Linux does not stop at the first free entry either); a
//! run of long-name entries (attribute 0x0F) counts only if it starts with the "last"
//! flag (0x40), its ordinals count down to 1, every entry repeats one checksum, and that
//! checksum is the 8.3 entry's that follows; otherwise the 8.3 entry is shown by its short
//! name, and long-name entries that belong to nothing (orphans) are ignored.
//!
//! A directory is at most 65536 entries (2 MiB, the limit the specification and Linux's
//! `FAT_MAX_DIR_SIZE` set), so a listing allocates at most that much plus its names.

use std::ops::ControlFlow;
use std::sync::Arc;

use super::super::bytes::{read_u16le, read_u8};
use super::super::{CorruptKind, GuestError};
use super::name::{self, DOT, DOTDOT};
use super::table::TABLE_PIECE;
use super::Fat;

/// The largest directory read: 65536 entries of 32 bytes.
pub const MAX_DIR_BYTES: u64 = 2 << 20;

// Attribute bits.
pub const ATTR_RO: u8 = 0x01;
pub const ATTR_VOLUME: u8 = 0x08;
pub const ATTR_DIR: u8 = 0x10;
/// Attribute of a long-name entry (read-only, hidden, system and volume together).
pub const ATTR_LFN: u8 = 0x0F;
const DELETED: u8 = 0xE5;
/// Long-name entries per name at most: ceil(255 * 2 / 26).
const MAX_LFN_SLOTS: usize = 20;

/// A directory's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirRef {
    /// The fixed root region of FAT12/16.
    FixedRoot,
    /// A chain of clusters from this first cluster.
    Chain(u32),
}

/// The fields of an 8.3 entry.
#[derive(Debug, Clone)]
pub struct ShortEntry {
    pub name: [u8; 11],
    pub attr: u8,
    pub lcase: u8,
    pub ctime_cs: u8,
    pub ctime: u16,
    pub cdate: u16,
    pub adate: u16,
    pub mtime: u16,
    pub mdate: u16,
    /// First cluster (the high half only on FAT32, as Linux reads it).
    pub cluster: u32,
    pub size: u32,
}

impl ShortEntry {
    pub fn parse(raw: &[u8], fat32: bool) -> ShortEntry {
        let mut name = [0u8; 11];
        name.copy_from_slice(raw.get(..11).unwrap_or(&[0; 11]));
        let hi = if fat32 {
            u32::from(read_u16le(raw, 20)) << 16
        } else {
            0
        };
        ShortEntry {
            name,
            attr: read_u8(raw, 11),
            lcase: read_u8(raw, 12),
            ctime_cs: read_u8(raw, 13),
            ctime: read_u16le(raw, 14),
            cdate: read_u16le(raw, 16),
            adate: read_u16le(raw, 18),
            mtime: read_u16le(raw, 22),
            mdate: read_u16le(raw, 24),
            cluster: hi | u32::from(read_u16le(raw, 26)),
            size: super::super::bytes::read_u32le(raw, 28),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.attr & ATTR_DIR != 0
    }

    pub fn is_dot_or_dotdot(&self) -> bool {
        &self.name == DOT || &self.name == DOTDOT
    }
}

/// Whether the raw entry is one `fat_get_short_entry` returns: not free, not deleted, not
/// a volume label or long-name entry.
pub fn is_live_short(raw: &[u8]) -> bool {
    let first = read_u8(raw, 0);
    first != 0 && first != DELETED && read_u8(raw, 11) & ATTR_VOLUME == 0
}

/// One entry a listing yields: an 8.3 entry with the name Linux shows for it.
pub struct Listed {
    /// The long name if valid, else the short name; `None` if neither is usable.
    pub name: Option<Vec<u8>>,
    /// The short name as Linux shows it (for case-insensitive lookups).
    pub short_name: Option<Vec<u8>>,
    pub entry: ShortEntry,
    /// Byte position of the 8.3 entry on the volume.
    pub pos: u64,
}

/// A directory's bytes: its pieces (clusters or root-region pieces) in order.
pub struct DirBytes {
    pieces: Vec<(u64, Arc<[u8]>)>,
    piece_len: usize,
    slots: usize,
}

impl DirBytes {
    fn slot(&self, i: usize) -> Option<(u64, &[u8])> {
        let byte = i.checked_mul(32)?;
        let (pos, piece) = self.pieces.get(byte / self.piece_len)?;
        let within = byte % self.piece_len;
        let raw = piece.get(within..within + 32)?;
        Some((pos.checked_add(within as u64)?, raw))
    }
}

impl Fat {
    /// Reads a whole directory.
    pub(crate) fn dir_bytes(&self, dir: DirRef) -> Result<DirBytes, GuestError> {
        let g = &self.geo;
        let mut pieces = Vec::new();
        let piece_len;
        match dir {
            DirRef::FixedRoot => {
                piece_len =
                    usize::try_from(TABLE_PIECE).map_err(|_| CorruptKind::FatDirTooLarge)?;
                let end = g.root_start + g.root_bytes;
                let mut at = g.root_start;
                while at < end {
                    let len = TABLE_PIECE.min(end - at);
                    pieces.push((at, self.cached_bytes(at, len)?));
                    at += len;
                }
            }
            DirRef::Chain(first) => {
                let cs = u64::from(g.cluster_size);
                piece_len = usize::try_from(cs).map_err(|_| CorruptKind::FatDirTooLarge)?;
                let max_clusters = MAX_DIR_BYTES.div_ceil(cs);
                let mut clusters = Vec::new();
                let mut too_large = false;
                self.walk_chain(first, &mut |c| {
                    if clusters.len() as u64 >= max_clusters {
                        too_large = true;
                        return false;
                    }
                    clusters.push(c);
                    true
                })?;
                if too_large {
                    return Err(CorruptKind::FatDirTooLarge.into());
                }
                for c in clusters {
                    let at = g.cluster_offset(c)?;
                    pieces.push((at, self.cached_bytes(at, cs)?));
                }
            }
        }
        let bytes: usize = pieces.iter().map(|(_, p)| p.len()).sum();
        Ok(DirBytes {
            pieces,
            piece_len: piece_len.max(32),
            slots: bytes / 32,
        })
    }

    /// Calls `f` on every live 8.3 entry of `dir` in on-disk order (including `.` and `..`
    /// where they are stored), with the name Linux shows for it; stops when `f` breaks.
    pub(crate) fn for_each_entry(
        &self,
        dir: DirRef,
        f: &mut dyn FnMut(Listed) -> ControlFlow<()>,
    ) -> Result<(), GuestError> {
        let bytes = self.dir_bytes(dir)?;
        let fat32 = self.geo.fat_type == super::boot::FatType::Fat32;
        let mut units = [0u16; MAX_LFN_SLOTS * 13 + 1];
        let mut i = 0usize;
        // Each pass of the outer loop ends at a larger `i`, or (for `continue 'record` with the
        // same `i`) moves from a long-name entry to the parse of what follows it, which
        // is not a long-name entry: every entry is looked at a bounded number of times.
        'record: while i < bytes.slots {
            let Some((_, raw)) = bytes.slot(i) else { break };
            let attr = read_u8(raw, 11);
            let first = read_u8(raw, 0);
            if first == DELETED || (attr != ATTR_LFN && (attr & ATTR_VOLUME != 0 || first == 0)) {
                i += 1;
                continue;
            }
            let mut long: Option<Vec<u8>> = None;
            if attr == ATTR_LFN {
                // fat_parse_long.
                'long: loop {
                    let (_, ds) = bytes.slot(i).ok_or(CorruptKind::FatDirTooLarge)?;
                    let id = read_u8(ds, 0);
                    let slots = usize::from(id & !0x40);
                    if id & 0x40 == 0 || slots == 0 || slots > MAX_LFN_SLOTS {
                        i += 1;
                        continue 'record;
                    }
                    let alias_checksum = read_u8(ds, 13);
                    let mut name_end = slots * 13;
                    let mut slot = slots;
                    let mut ds = ds;
                    loop {
                        slot -= 1;
                        let offset = slot * 13;
                        for (k, at) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                            .into_iter()
                            .enumerate()
                        {
                            units[offset + k] = read_u16le(ds, at);
                        }
                        if read_u8(ds, 0) & 0x40 != 0 {
                            name_end = name_end.min(offset + 13);
                        }
                        i += 1;
                        let Some((_, next)) = bytes.slot(i) else {
                            return Ok(());
                        };
                        ds = next;
                        if slot == 0 {
                            break;
                        }
                        if read_u8(ds, 11) != ATTR_LFN {
                            // Not a long-name entry: parse it as a record of its own.
                            continue 'record;
                        }
                        if usize::from(read_u8(ds, 0) & !0x40) != slot
                            || read_u8(ds, 13) != alias_checksum
                        {
                            continue 'long;
                        }
                    }
                    // `ds` (entry i) follows the long name.
                    let first = read_u8(ds, 0);
                    let attr = read_u8(ds, 11);
                    if first == DELETED {
                        i += 1;
                        continue 'record;
                    }
                    if attr == ATTR_LFN {
                        continue 'long;
                    }
                    if first == 0 || attr & ATTR_VOLUME != 0 {
                        i += 1;
                        continue 'record;
                    }
                    let mut short = [0u8; 11];
                    short.copy_from_slice(&ds[..11]);
                    if name::checksum(&short) == alias_checksum {
                        long = name::long_name(&units[..name_end]);
                    }
                    break;
                }
            }
            let (pos, raw) = bytes.slot(i).ok_or(CorruptKind::FatDirTooLarge)?;
            let entry = ShortEntry::parse(raw, fat32);
            let short_name = name::short_name(&entry.name, entry.lcase);
            let listed = Listed {
                name: long.or_else(|| short_name.clone()),
                short_name,
                entry,
                pos,
            };
            i += 1;
            if f(listed).is_break() {
                return Ok(());
            }
        }
        Ok(())
    }
}
