//! LVM2: volumes (a whole disk or partitions) that are physical volumes are replaced by the
//! logical volumes of their volume groups, named as device-mapper names them (`VG-LV`, each
//! `-` inside the VG and LV names doubled: `my-vg`/`root` is `my--vg-root`).
//!
//! - [`label`]: the PV label, PV header and metadata area headers, and the metadata text with
//!   its checksum;
//! - [`text`]: a bounded parser of the metadata text;
//! - [`vg`]: what the text says: PVs, LVs and their segments, and which LVs can be read.
//!
//! The PVs of all of a machine's disks are read together, so a VG may span disks. Every
//! metadata copy on the PVs (one or two per PV) is read; copies whose checksum or content
//! fails are skipped (logged), and of the rest the one with the highest `seqno` of each VG is
//! used, as lvm2 does. An LV is shown when all its segments are linear or striped over PVs
//! that were found and inside them; any other LV is logged and left out: another segment
//! type (thin, snapshot, raid, mirror, cache, vdo, …) as "not supported", metadata that
//! breaks a rule (segments with gaps or overlapping, extents past a PV or mapped twice) as
//! corrupt, and an LV needing a PV that is on none of the disks (a disk not attached to
//! this machine) as such. A PV found on two volumes (a disk and its clone attached beside
//! it) is read from the first, in disk order, with a warning, as lvm2 picks one copy of a
//! duplicate PV. Hidden LVs (the components of other LVs) are not shown, as lvm2 does not
//! show them.
//!
//! Memory and time: per LV, its segment table (one entry per segment and stripe), held by
//! the LV's [`ByteSource`]; each metadata text (at most [`label::MAX_METADATA_TEXT`]; all
//! copies on a disk together at most [`MAX_METADATA_PER_DISK`] plus one) and its parse are
//! dropped once read.

pub mod label;
pub mod text;
pub mod vg;

use std::io;
use std::sync::Arc;

use crate::source::ByteSource;

use super::super::GuestError;
use super::Volume;
use vg::{LvState, Segment, VgMeta};

/// A PV found on the disk.
struct FoundPv {
    /// The name of the volume it is on (`vda2`), for messages.
    volume: String,
    /// The disk that volume is on.
    disk: String,
    label: label::PvLabel,
    /// The volume's start on the disk, in bytes.
    start: u64,
    len: u64,
    source: Arc<dyn ByteSource>,
}

/// Replaces each volume of `volumes` (partitions and whole disks, of one or more disks) that
/// is an LVM2 PV by the readable LVs of the VGs found on all the PVs; other volumes are
/// returned as they are, in their order, followed by the LVs (VGs in the order their first
/// PV appears, LVs in metadata order). An I/O error is returned with the disk it came from.
pub fn resolve(volumes: Vec<Volume>) -> Result<Vec<Volume>, (String, GuestError)> {
    let mut out = Vec::new();
    let mut pvs = Vec::new();
    for v in volumes {
        let disk = v.disks.first().cloned().unwrap_or_default();
        match label::read_label(v.source.as_ref()) {
            Ok(None) => out.push(v),
            Ok(Some(label)) => pvs.push(FoundPv {
                volume: v.name,
                disk,
                label,
                start: v.start,
                len: v.len,
                source: v.source,
            }),
            Err(GuestError::Io(e)) => return Err((disk, GuestError::Io(e))),
            Err(e) => log::warn!(
                "volume {}: LVM physical volume cannot be read: {e}; not shown",
                v.name
            ),
        }
    }
    if pvs.is_empty() {
        return Ok(out);
    }
    for vg in newest_metadata(&pvs)? {
        add_lvs(&vg, &pvs, &mut out);
    }
    Ok(out)
}

/// Metadata text read per machine, all copies together: a disk of 256 partitions, each a PV
/// with two areas of 4 MiB of text, is not read whole (real VGs have a few copies of some
/// KiB each).
const MAX_METADATA_PER_DISK: u64 = 32 << 20;

/// The newest valid metadata of each VG found on `pvs`.
fn newest_metadata(pvs: &[FoundPv]) -> Result<Vec<VgMeta>, (String, GuestError)> {
    let mut vgs: Vec<VgMeta> = Vec::new();
    let mut budget = MAX_METADATA_PER_DISK;
    for pv in pvs {
        let mut copies = 0;
        for (n, &area) in pv.label.metadata_areas.iter().enumerate() {
            if budget == 0 {
                log::warn!(
                    "volume {}: LVM metadata copy {} not read: the disks' copies exceed {} MiB",
                    pv.volume,
                    n + 1,
                    MAX_METADATA_PER_DISK >> 20
                );
                continue;
            }
            let parsed = label::read_metadata(pv.source.as_ref(), pv.len, area).and_then(|t| {
                let Some(t) = t else {
                    return Ok(None);
                };
                let len = u64::try_from(t.len()).unwrap_or(u64::MAX);
                budget = budget.saturating_sub(len.max(1));
                vg::read_vg(&text::parse(&t)?).map(Some)
            });
            let meta = match parsed {
                Ok(Some(meta)) => meta,
                Ok(None) => continue,
                Err(GuestError::Io(e)) => return Err((pv.disk.clone(), GuestError::Io(e))),
                Err(e) => {
                    log::warn!(
                        "volume {}: LVM metadata copy {} cannot be used: {e}",
                        pv.volume,
                        n + 1
                    );
                    continue;
                }
            };
            copies += 1;
            match vgs.iter_mut().find(|v| v.id == meta.id) {
                Some(known) if known.seqno >= meta.seqno => {}
                Some(known) => *known = meta,
                None => vgs.push(meta),
            }
        }
        if copies == 0 {
            log::info!(
                "volume {}: LVM physical volume with no usable metadata of its own",
                pv.volume
            );
        }
    }
    Ok(vgs)
}

/// Adds the readable LVs of `vg` to `out`, logging why each other one is left out.
fn add_lvs(vg: &VgMeta, pvs: &[FoundPv], out: &mut Vec<Volume>) {
    // The volume of each of the VG's PVs (None when on none of the disks); of a PV found
    // twice, the first.
    let local: Vec<Option<&FoundPv>> = vg
        .pvs
        .iter()
        .map(|meta| {
            let mut found = pvs.iter().filter(|p| p.label.uuid[..] == meta.uuid[..]);
            let first = found.next()?;
            for other in found {
                log::warn!(
                    "LVM VG {}: PV {} is on both volume {} and volume {} (a cloned disk?); the first is read",
                    vg.name,
                    String::from_utf8_lossy(&meta.uuid),
                    first.volume,
                    other.volume
                );
            }
            Some(first)
        })
        .collect();
    for lv in &vg.lvs {
        let what = format!("LVM VG {} LV {}", vg.name, lv.name);
        let segments = match &lv.state {
            LvState::Readable(segments) => segments,
            LvState::Hidden => continue,
            LvState::Unsupported(why) => {
                log::info!("{what}: not supported ({why}); not shown");
                continue;
            }
            LvState::Corrupt(kind) => {
                log::warn!("{what}: corrupt: {kind}; not shown");
                continue;
            }
        };
        let name = vg::dm_name(&vg.name, &lv.name);
        if out.iter().any(|v| v.name == name) {
            log::warn!("{what}: another volume on the disk is named {name}; not shown");
            continue;
        }
        match LogicalVolume::new(vg, segments, &local) {
            Ok((source, start, disks)) => {
                let len = source.len;
                out.push(Volume {
                    name,
                    number: None,
                    start,
                    len,
                    source: Arc::new(source),
                    disks,
                });
            }
            Err(why) => log::warn!("{what}: {why}; not shown"),
        }
    }
}

/// One segment of an LV, in bytes.
struct Piece {
    /// Where the segment starts in the LV.
    lv_start: u64,
    len: u64,
    /// The chunk size of a striped segment; 0 when it has one stripe.
    chunk: u64,
    /// Each stripe's PV and the byte on it where the stripe starts.
    stripes: Vec<(Arc<dyn ByteSource>, u64)>,
}

/// An LV's bytes: its segments mapped onto the PVs, as device-mapper's `linear` and
/// `striped` targets map them. Reads past the LV's end read zeros.
pub struct LogicalVolume {
    pieces: Vec<Piece>,
    len: u64,
}

impl LogicalVolume {
    /// Maps `segments` (contiguous from extent 0, checked by [`vg::read_vg`]) onto the PVs.
    /// Returns the LV, the disk byte its first extent is at and the disks it reads (that
    /// byte's first); an error message when a PV is on none of the disks or an extent lies
    /// past the end of its PV's volume.
    fn new(
        vg: &VgMeta,
        segments: &[Segment],
        local: &[Option<&FoundPv>],
    ) -> Result<(LogicalVolume, u64, Vec<String>), String> {
        let mut pieces = Vec::with_capacity(segments.len());
        let mut first = None;
        let mut disks: Vec<String> = Vec::new();
        let mut len = 0u64;
        for seg in segments {
            let area_bytes = seg
                .area_len()
                .checked_mul(vg.extent_size)
                .ok_or("segment too large")?;
            let mut stripes = Vec::with_capacity(seg.stripes.len());
            for &(pv, pe) in &seg.stripes {
                let meta = &vg.pvs[pv];
                let Some(found) = local.get(pv).copied().flatten() else {
                    return Err(format!(
                        "needs PV {} which is on none of the disks",
                        String::from_utf8_lossy(&meta.uuid)
                    ));
                };
                let at = pe
                    .checked_mul(vg.extent_size)
                    .and_then(|b| b.checked_add(meta.pe_start))
                    .ok_or("extent offset overflows")?;
                let end = at
                    .checked_add(area_bytes)
                    .ok_or("extent offset overflows")?;
                if end > found.len {
                    return Err(format!(
                        "corrupt: {} (volume {})",
                        super::super::CorruptKind::LvmExtentRange,
                        found.volume
                    ));
                }
                first.get_or_insert(found.start.saturating_add(at));
                if !disks.contains(&found.disk) {
                    disks.push(found.disk.clone());
                }
                stripes.push((found.source.clone(), at));
            }
            let seg_len = seg
                .extent_count
                .checked_mul(vg.extent_size)
                .ok_or("segment too large")?;
            pieces.push(Piece {
                lv_start: len,
                len: seg_len,
                chunk: seg.stripe_size,
                stripes,
            });
            len = len.checked_add(seg_len).ok_or("LV too large")?;
        }
        Ok((LogicalVolume { pieces, len }, first.unwrap_or(0), disks))
    }

    /// Where LV byte `pos` (below `self.len`) is: the PV, the byte on it, and how many bytes
    /// from there on are contiguous on that PV.
    fn locate(&self, pos: u64) -> Option<(&Arc<dyn ByteSource>, u64, u64)> {
        let i = self
            .pieces
            .partition_point(|p| p.lv_start <= pos)
            .checked_sub(1)?;
        let piece = &self.pieces[i];
        let within = pos.checked_sub(piece.lv_start)?;
        if within >= piece.len {
            return None;
        }
        if piece.stripes.len() == 1 {
            let (src, base) = &piece.stripes[0];
            return Some((src, base.checked_add(within)?, piece.len - within));
        }
        let n = u64::try_from(piece.stripes.len()).ok()?;
        let chunk_index = within.checked_div(piece.chunk)?;
        let in_chunk = within % piece.chunk;
        let stripe = usize::try_from(chunk_index % n).ok()?;
        let row = chunk_index / n;
        let (src, base) = &piece.stripes[stripe];
        let at = row
            .checked_mul(piece.chunk)
            .and_then(|o| o.checked_add(in_chunk))
            .and_then(|o| o.checked_add(*base))?;
        Some((src, at, piece.chunk - in_chunk))
    }
}

impl ByteSource for LogicalVolume {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = u64::try_from(done)
                .ok()
                .and_then(|d| offset.checked_add(d))
                .filter(|&p| p < self.len);
            let Some(pos) = pos else {
                buf[done..].fill(0);
                break;
            };
            let (src, at, run) = self
                .locate(pos)
                .ok_or_else(|| io::Error::other("LV offset outside its segments"))?;
            let want = buf.len() - done;
            let n = usize::try_from(run.min(self.len - pos))
                .unwrap_or(usize::MAX)
                .min(want);
            src.read_exact_at(&mut buf[done..done + n], at)?;
            done += n;
        }
        Ok(())
    }

    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn prefetch(&self, offset: u64, len: u64) {
        // Pass on the hint for the first few contiguous runs only.
        let end = offset.saturating_add(len).min(self.len);
        let mut pos = offset;
        for _ in 0..16 {
            if pos >= end {
                break;
            }
            let Some((src, at, run)) = self.locate(pos) else {
                break;
            };
            let n = run.min(end - pos);
            src.prefetch(at, n);
            pos += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemorySource;

    fn pv(bytes: Vec<u8>) -> FoundPv {
        let len = bytes.len() as u64;
        FoundPv {
            volume: "vda".into(),
            disk: "vda".into(),
            label: label::PvLabel {
                uuid: [b'A'; 32],
                device_size: len,
                metadata_areas: Vec::new(),
            },
            start: 0,
            len,
            source: Arc::new(MemorySource::new(bytes)),
        }
    }

    fn vg_of(text: &str) -> VgMeta {
        vg::read_vg(&text::parse(text.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn striped_and_linear_reads_follow_device_mapper() {
        // Extents of 1 KiB (2 sectors) from byte 4096; each byte of the PV is its extent
        // number times 16 plus its 64-byte chunk within the extent.
        let mut bytes = vec![0u8; 4096 + 16 * 1024];
        for (i, b) in bytes[4096..].iter_mut().enumerate() {
            *b = ((i / 1024) * 16 + (i % 1024) / 64) as u8;
        }
        let vg = vg_of(
            "v { id = \"x\" seqno = 1 extent_size = 2 physical_volumes { pv0 { id = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\" pe_start = 8 pe_count = 16 } }
             logical_volumes { l { status = [\"VISIBLE\"] segment_count = 2
               segment1 { start_extent = 0 extent_count = 1 type = \"striped\" stripe_count = 1 stripes = [\"pv0\", 5] }
               segment2 { start_extent = 1 extent_count = 4 type = \"striped\" stripe_count = 2 stripe_size = 1 stripes = [\"pv0\", 8, \"pv0\", 12] } } } }",
        );
        let found = [pv(bytes)];
        let local = [Some(&found[0])];
        let LvState::Readable(segs) = &vg.lvs[0].state else {
            panic!()
        };
        let (lv, start, disks) = LogicalVolume::new(&vg, segs, &local).unwrap();
        assert_eq!(start, 4096 + 5 * 1024);
        assert_eq!(disks, ["vda"]);
        assert_eq!(lv.byte_len().unwrap(), 5 * 1024);
        let mut all = vec![0u8; 5 * 1024 + 100];
        lv.read_exact_at(&mut all, 0).unwrap();
        // Linear extent 5, then 512-byte chunks alternating between extents 8.. and 12..
        let expect = |i: usize| -> u8 {
            if i >= 5 * 1024 {
                return 0;
            }
            if i < 1024 {
                return (5 * 16 + i / 64) as u8;
            }
            let w = i - 1024;
            let (chunk, off) = (w / 512, w % 512);
            let (stripe, row) = (chunk % 2, chunk / 2);
            let pv_off = row * 512 + off; // within the stripe's area
            let extent = [8, 12][stripe] + pv_off / 1024;
            (extent * 16 + (pv_off % 1024) / 64) as u8
        };
        for (i, &b) in all.iter().enumerate() {
            assert_eq!(b, expect(i), "byte {i}");
        }
        // Unaligned reads agree with the whole.
        let mut part = vec![0u8; 777];
        lv.read_exact_at(&mut part, 1000).unwrap();
        assert_eq!(part, all[1000..1777]);
        lv.read_exact_at(&mut part, u64::MAX - 3).unwrap();
        assert_eq!(part, vec![0u8; 777]);
    }

    #[test]
    fn extents_past_the_pvs_volume_are_refused() {
        let vg = vg_of(
            "v { id = \"x\" seqno = 1 extent_size = 2 physical_volumes { pv0 { id = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\" pe_start = 8 pe_count = 100 } }
             logical_volumes { l { status = [\"VISIBLE\"] segment_count = 1
               segment1 { start_extent = 0 extent_count = 4 type = \"striped\" stripe_count = 1 stripes = [\"pv0\", 90] } } } }",
        );
        let found = [pv(vec![0u8; 8192])];
        let local = [Some(&found[0])];
        let LvState::Readable(segs) = &vg.lvs[0].state else {
            panic!()
        };
        assert!(LogicalVolume::new(&vg, segs, &local).is_err());
        assert!(LogicalVolume::new(&vg, segs, &[None]).is_err());
    }

    #[test]
    fn a_pv_with_metadata_becomes_its_lvs() {
        let text = "v-g { id = \"x\" seqno = 1 extent_size = 2 physical_volumes { pv0 { id = \"AAAAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAAAA\" pe_start = 256 pe_count = 100 } }
             logical_volumes { l-v { status = [\"VISIBLE\"] segment_count = 1
               segment1 { start_extent = 0 extent_count = 4 type = \"striped\" stripe_count = 1 stripes = [\"pv0\", 3] } } } }";
        let mut bytes = label::tests::pv_image(text.as_bytes(), 512);
        bytes[(128 << 10) + 3 * 1024] = 0x5a;
        let disk: Arc<dyn ByteSource> = Arc::new(MemorySource::new(bytes));
        let v = super::super::find_volumes(disk, "vda").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "v--g-l--v");
        assert_eq!((v[0].start, v[0].len), ((128 << 10) + 3 * 1024, 4096));
        let mut b = [0u8; 2];
        v[0].source.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(b, [0x5a, 0]);
    }
}
