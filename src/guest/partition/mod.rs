//! Partition tables: which volumes a disk holds, named as Linux names their block devices.
//!
//! A GPT (recognised by the 0xEE protective entry of its MBR) wins over the MBR, as in the
//! kernel's `efi` checker, which runs before `msdos`. A disk without a partition table, or
//! whose table lists nothing, is one volume named after the disk itself (`vda`). A volume that
//! is an LVM2 physical volume is replaced by the logical volumes found on the machine's disks
//! ([`lvm`]): the disks are read together ([`find_volumes_of_disks`]), since a volume group
//! may span several of them.

pub mod gpt;
pub mod lvm;
pub mod mbr;

use std::io;
use std::sync::Arc;

use crate::source::ByteSource;

use super::GuestError;

/// One place a filesystem may live: a partition, the whole disk or an LVM logical volume.
#[derive(Clone)]
pub struct Volume {
    /// The Linux device name: `vda` (whole disk), `vda1`, `vda5`, `nvme0n1p1`; for a logical
    /// volume its device-mapper name (`vg-root`, `my--vg-lv`).
    pub name: String,
    /// The partition number (1-based, logical partitions from 5), or `None` for the whole disk
    /// and for logical volumes.
    pub number: Option<u32>,
    /// Where the volume starts on the disk, in bytes (for a logical volume, where its first
    /// extent is: its later extents may be elsewhere).
    pub start: u64,
    /// The volume's length in bytes.
    pub len: u64,
    /// The volume's bytes (a [`PartitionWindow`] for partitions, the disk itself otherwise).
    pub source: Arc<dyn ByteSource>,
    /// The disks whose bytes it reads: its own; for a logical volume, the disks of its PVs
    /// (the one `start` is on first).
    pub disks: Vec<String>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.name)
            .field("number", &self.number)
            .field("start", &self.start)
            .field("len", &self.len)
            .field("disks", &self.disks)
            .finish()
    }
}

/// A partition found in a table: number and byte range on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionEntry {
    pub number: u32,
    pub start: u64,
    pub len: u64,
}

/// The volumes of `disk` named as Linux would name them for a disk called `disk_name`, its
/// LVM2 physical volumes replaced by the logical volumes that lie wholly on this disk.
pub fn find_volumes(disk: Arc<dyn ByteSource>, disk_name: &str) -> Result<Vec<Volume>, GuestError> {
    let mut found = find_volumes_of_disks(vec![(disk, disk_name.to_string())]);
    match found.failed.pop() {
        Some((_, e)) => Err(e),
        None => Ok(found.volumes),
    }
}

/// What the disks of one machine hold.
#[derive(Debug, Default)]
pub struct DiskVolumes {
    /// Partitions and whole disks in disk order, then the logical volumes.
    pub volumes: Vec<Volume>,
    /// The disks that could not be read, with why: none of their volumes is listed, nor any
    /// logical volume with a PV on them.
    pub failed: Vec<(String, GuestError)>,
}

/// The volumes of all of a machine's `disks` (each with the name Linux gives it): the
/// partitions (or the whole disk) of each, and the logical volumes of the LVM2 volume
/// groups whose PVs are on them, whichever disks a volume group spans. A disk that cannot be
/// read is reported in [`DiskVolumes::failed`] and the others are still read.
pub fn find_volumes_of_disks(disks: Vec<(Arc<dyn ByteSource>, String)>) -> DiskVolumes {
    let mut found = DiskVolumes::default();
    let mut all = Vec::new();
    for (disk, name) in disks {
        match disk_volumes(disk, &name) {
            Ok(volumes) => all.extend(volumes),
            Err(e) => found.failed.push((name, e)),
        }
    }
    // A disk whose PV label or metadata cannot be read fails alone: its volumes are taken
    // out and the rest resolved again (at most once per disk).
    loop {
        match lvm::resolve(all.clone()) {
            Ok(volumes) => {
                found.volumes = volumes;
                return found;
            }
            Err((disk, e)) => {
                let before = all.len();
                all.retain(|v| !v.disks.contains(&disk));
                if all.len() == before {
                    // Cannot happen (the error names a disk of a volume given), but the
                    // loop must end whatever happens.
                    all.clear();
                }
                found.failed.push((disk, e));
            }
        }
    }
}

/// The partitions of `disk`, or the whole disk when it has no partition table.
fn disk_volumes(disk: Arc<dyn ByteSource>, disk_name: &str) -> Result<Vec<Volume>, GuestError> {
    let disk_len = disk.byte_len()?;
    let entries = match mbr::read_mbr(disk.as_ref(), disk_len)? {
        Some(mbr) if mbr.protective => gpt::read_gpt(disk.as_ref(), disk_len)?,
        Some(mbr) => mbr.partitions,
        None => Vec::new(),
    };
    if entries.is_empty() {
        return Ok(vec![Volume {
            name: disk_name.to_string(),
            number: None,
            start: 0,
            len: disk_len,
            source: disk,
            disks: vec![disk_name.to_string()],
        }]);
    }
    // Linux: "sda1", but "nvme0n1p1" and "loop0p1" when the disk's name ends in a digit.
    let sep = if disk_name.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    Ok(entries
        .into_iter()
        .map(|e| Volume {
            name: format!("{disk_name}{sep}{}", e.number),
            number: Some(e.number),
            start: e.start,
            len: e.len,
            source: Arc::new(PartitionWindow::new(disk.clone(), e.start, e.len)) as _,
            disks: vec![disk_name.to_string()],
        })
        .collect())
}

/// A window `[start, start + len)` over a disk. Reads past the window's end read zeros, never
/// the bytes of whatever follows on the disk.
pub struct PartitionWindow {
    disk: Arc<dyn ByteSource>,
    start: u64,
    len: u64,
}

impl PartitionWindow {
    pub fn new(disk: Arc<dyn ByteSource>, start: u64, len: u64) -> PartitionWindow {
        PartitionWindow { disk, start, len }
    }
}

impl ByteSource for PartitionWindow {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let inside = self.len.saturating_sub(offset);
        let n = usize::try_from(inside).unwrap_or(usize::MAX).min(buf.len());
        let (head, tail) = buf.split_at_mut(n);
        if !head.is_empty() {
            let at = self
                .start
                .checked_add(offset)
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            self.disk.read_exact_at(head, at)?;
        }
        tail.fill(0);
        Ok(())
    }

    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn prefetch(&self, offset: u64, len: u64) {
        let len = len.min(self.len.saturating_sub(offset));
        if let Some(at) = self.start.checked_add(offset) {
            if len > 0 {
                self.disk.prefetch(at, len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemorySource;

    #[test]
    fn window_reads_zeros_past_its_end_not_the_next_partition() {
        let disk: Arc<dyn ByteSource> = Arc::new(MemorySource::new((0..=255u8).collect()));
        let w = PartitionWindow::new(disk, 16, 8);
        let mut buf = [9u8; 12];
        w.read_exact_at(&mut buf, 4).unwrap();
        assert_eq!(buf, [20, 21, 22, 23, 0, 0, 0, 0, 0, 0, 0, 0]);
        w.read_exact_at(&mut buf, u64::MAX).unwrap();
        assert_eq!(buf, [0; 12]);
        assert_eq!(w.byte_len().unwrap(), 8);
    }

    #[test]
    fn disk_names_ending_in_a_digit_get_p() {
        let mut bytes = vec![0u8; 1 << 20];
        bytes[446 + 4] = 0x83;
        bytes[446 + 8..446 + 12].copy_from_slice(&64u32.to_le_bytes());
        bytes[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
        bytes[510] = 0x55;
        bytes[511] = 0xAA;
        let disk: Arc<dyn ByteSource> = Arc::new(MemorySource::new(bytes));
        let v = find_volumes(disk.clone(), "nvme0n1").unwrap();
        assert_eq!(v[0].name, "nvme0n1p1");
        let v = find_volumes(disk, "vdb").unwrap();
        assert_eq!(v[0].name, "vdb1");
        assert_eq!((v[0].start, v[0].len), (64 * 512, 100 * 512));
    }
}
