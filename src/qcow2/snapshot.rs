//! The internal snapshot table (qcow2.txt, "Snapshots"): variable-length entries, each with its
//! own L1 table and (in v3 extra data) its own virtual disk size.

use super::error::FormatError;
use super::header::{be_u16, be_u32, be_u64, Header, MAX_L1_ENTRIES, MAX_VIRTUAL_SIZE};
use crate::source::ByteSource;

/// QEMU's QCOW_MAX_SNAPSHOTS_SIZE.
pub const MAX_SNAPSHOT_TABLE_BYTES: u64 = 64 << 20;
/// QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA.
pub const MAX_SNAPSHOT_EXTRA_DATA: u32 = 1024;
const ENTRY_FIXED_LEN: u64 = 40;
/// The table is read this much at a time: a table of many small entries costs one read, not
/// two per entry (an image with 40 snapshots took 82 reads at every open).
const TABLE_READ_BYTES: usize = 64 << 10;

/// The snapshot table, read through one buffer.
struct TableReader<'a> {
    source: &'a dyn ByteSource,
    /// File offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
}

impl TableReader<'_> {
    /// `len` bytes at `offset`, read from the file only when the buffer does not hold them.
    fn bytes(&mut self, offset: u64, len: usize) -> Result<&[u8], super::ReadError> {
        let overflow = || FormatError::OffsetOverflow("snapshot table");
        let len_u64 = u64::try_from(len).map_err(|_| overflow())?;
        let end = offset.checked_add(len_u64).ok_or_else(overflow)?;
        let buf_len = u64::try_from(self.buf.len()).map_err(|_| overflow())?;
        let buf_end = self.start.checked_add(buf_len).ok_or_else(overflow)?;
        if offset < self.start || end > buf_end {
            self.buf.resize(len.max(TABLE_READ_BYTES), 0);
            self.source.read_exact_at(&mut self.buf, offset)?;
            self.start = offset;
        }
        let at = usize::try_from(offset - self.start).map_err(|_| overflow())?;
        Ok(&self.buf[at..at + len])
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    /// The guest disk size at the time of the snapshot. When the entry has no extra data for
    /// it (v2), QEMU uses the image's current size, and so do we.
    pub disk_size: u64,
}

/// Reads and validates all `nb_snapshots` entries. Memory is bounded by the 64 MiB table cap
/// before anything is allocated in proportion to the count.
pub fn read_table(
    header: &Header,
    source: &dyn ByteSource,
) -> Result<Vec<Snapshot>, super::ReadError> {
    let mut snapshots = Vec::new();
    let mut offset = header.snapshots_offset;
    let mut table_bytes: u64 = 0;
    let cluster_mask = header.cluster_size() - 1;
    let mut table = TableReader {
        source,
        start: 0,
        buf: Vec::new(),
    };
    for index in 0..header.nb_snapshots {
        let mut fixed = [0u8; ENTRY_FIXED_LEN as usize];
        fixed.copy_from_slice(table.bytes(offset, ENTRY_FIXED_LEN as usize)?);
        let l1_table_offset = be_u64(&fixed, 0);
        let l1_size = be_u32(&fixed, 8);
        let id_len = be_u16(&fixed, 12);
        let name_len = be_u16(&fixed, 14);
        let extra_data_size = be_u32(&fixed, 36);
        if extra_data_size > MAX_SNAPSHOT_EXTRA_DATA {
            return Err(FormatError::SnapshotExtraData {
                index,
                size: extra_data_size,
            }
            .into());
        }
        let entry_len =
            ENTRY_FIXED_LEN + u64::from(extra_data_size) + u64::from(id_len) + u64::from(name_len);
        let padded_len = entry_len.next_multiple_of(8);
        table_bytes = table_bytes.saturating_add(padded_len);
        if table_bytes > MAX_SNAPSHOT_TABLE_BYTES {
            return Err(FormatError::SnapshotTableTooLarge.into());
        }
        let variable_len = usize::try_from(entry_len - ENTRY_FIXED_LEN)
            .map_err(|_| FormatError::SnapshotTableTooLarge)?;
        let variable_offset = offset
            .checked_add(ENTRY_FIXED_LEN)
            .ok_or(FormatError::OffsetOverflow("snapshot table"))?;
        let variable = table.bytes(variable_offset, variable_len)?;
        let (extra, rest) = variable.split_at(extra_data_size as usize);
        let (id, name) = rest.split_at(usize::from(id_len));

        let mut vm_state_size = u64::from(be_u32(&fixed, 32));
        if extra.len() >= 8 {
            vm_state_size = be_u64(extra, 0);
        }
        let disk_size = if extra.len() >= 16 {
            be_u64(extra, 8)
        } else {
            header.size
        };
        if !super::header::valid_table_offset(l1_table_offset, l1_size, 8, cluster_mask + 1) {
            return Err(FormatError::SnapshotL1Offset {
                index,
                offset: l1_table_offset,
            }
            .into());
        }
        if l1_size > MAX_L1_ENTRIES {
            return Err(FormatError::SnapshotL1TooLarge { index, l1_size }.into());
        }
        if disk_size > MAX_VIRTUAL_SIZE {
            return Err(FormatError::SnapshotDiskSize {
                index,
                size: disk_size,
            }
            .into());
        }
        snapshots.push(Snapshot {
            l1_table_offset,
            l1_size,
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            date_sec: be_u32(&fixed, 16),
            date_nsec: be_u32(&fixed, 20),
            vm_clock_nsec: be_u64(&fixed, 24),
            vm_state_size,
            disk_size,
        });
        offset = offset
            .checked_add(padded_len)
            .ok_or(FormatError::OffsetOverflow("snapshot table"))?;
    }
    Ok(snapshots)
}
