//! The meaning of a VG's metadata text: the VG's identity and extent size, its PVs, and for
//! each LV either the extents its segments map or why it is not shown.
//!
//! Field names are lvm2's (`lib/format_text/import_vsn1.c`). Only segments of type
//! `"striped"` (and `"linear"`, which lvm2 accepts for one stripe) are read: one stripe is a
//! linear mapping, more stripe round robin in chunks of `stripe_size` sectors, as
//! device-mapper's `striped` target does. Every other segment type
//! (thin, thin-pool, snapshot, raid*, mirror, cache, writecache, vdo, integrity, zero,
//! error, …) makes its LV unsupported; so does a segment whose areas are another LV (a
//! pvmove in progress), and an LV that another LV's non-striped segment uses (a snapshot's
//! copy-on-write store, the origin of a merging snapshot), whose own extents are not its
//! contents.

use super::super::super::{CorruptKind, GuestError};
use super::text::{Section, Value};

/// PVs of one VG (lvm2 itself has no limit; thousands would be unheard of).
pub const MAX_PVS: usize = 4096;
/// LVs of one VG.
pub const MAX_LVS: usize = 16_384;
/// Segments of one LV.
pub const MAX_SEGMENTS: usize = 65_536;
/// Stripes of one segment (lvm2's `MAX_STRIPES`).
pub const MAX_STRIPES: usize = 128;
/// The largest extent size accepted, in 512-byte sectors (lvm2 allows up to 16 GiB).
pub const MAX_EXTENT_SECTORS: u64 = 1 << 25;
/// lvm2's `NAME_LEN` is 128 with the terminating NUL.
const MAX_NAME: usize = 127;

pub const SECTOR: u64 = 512;

/// One PV as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvMeta {
    /// The PV's name within the metadata ("pv0").
    pub name: Vec<u8>,
    /// The UUID without dashes, as in the PV's label.
    pub uuid: Vec<u8>,
    /// Where extent 0 starts on the PV, in bytes.
    pub pe_start: u64,
    pub pe_count: u64,
}

/// One striped (or linear) segment: LV extents `[start_extent, start_extent + extent_count)`
/// spread over `stripes`, each `(PV index in VgMeta::pvs, first PV extent)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub start_extent: u64,
    pub extent_count: u64,
    /// The chunk size in bytes (0 for one stripe).
    pub stripe_size: u64,
    pub stripes: Vec<(usize, u64)>,
}

impl Segment {
    /// Extents of each stripe.
    pub fn area_len(&self) -> u64 {
        let n = u64::try_from(self.stripes.len()).unwrap_or(1).max(1);
        self.extent_count / n
    }
}

/// Whether and how an LV is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LvState {
    /// Shown: its segments, in extent order, contiguous from extent 0.
    Readable(Vec<Segment>),
    /// Not shown by lvm2 either (no `VISIBLE` flag: a component of another LV).
    Hidden,
    /// A kind of LV this reader does not map (named in the message).
    Unsupported(String),
    /// Its metadata breaks a rule.
    Corrupt(CorruptKind),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvMeta {
    pub name: String,
    pub state: LvState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgMeta {
    pub name: String,
    pub id: Vec<u8>,
    pub seqno: u64,
    /// In bytes.
    pub extent_size: u64,
    pub pvs: Vec<PvMeta>,
    pub lvs: Vec<LvMeta>,
}

/// Whether `name` is a valid VG or LV name for lvm2 (`validate_name`): 1 to 127 bytes of
/// `[A-Za-z0-9+_.-]`, not starting with `-`, not `.` or `..`. Such names are safe as file
/// names.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name[0] != b'-'
        && name != b"."
        && name != b".."
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
}

/// The device-mapper name of an LV: `VG-LV`, each `-` inside the names doubled.
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

fn nonneg(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

/// The UUID of a PV as its label has it: the 32 characters without the dashes.
fn uuid_of(id: &[u8]) -> Option<Vec<u8>> {
    let u: Vec<u8> = id.iter().copied().filter(|&b| b != b'-').collect();
    (u.len() == 32 && u.iter().all(u8::is_ascii_alphanumeric)).then_some(u)
}

fn read_pv(name: &[u8], s: &Section<'_>, extent_size: u64) -> Result<PvMeta, GuestError> {
    let uuid = s
        .str("id")
        .and_then(uuid_of)
        .ok_or(CorruptKind::LvmPvEntry)?;
    let pe_start = nonneg(s.int("pe_start"))
        .and_then(|v| v.checked_mul(SECTOR))
        .ok_or(CorruptKind::LvmPvEntry)?;
    let pe_count = nonneg(s.int("pe_count")).ok_or(CorruptKind::LvmPvEntry)?;
    pe_count
        .checked_mul(extent_size)
        .and_then(|b| b.checked_add(pe_start))
        .ok_or(CorruptKind::LvmPvEntry)?;
    Ok(PvMeta {
        name: name.to_vec(),
        uuid,
        pe_start,
        pe_count,
    })
}

/// Reads one segment. `Ok(Err(message))` for a segment of a kind not read.
fn read_segment(
    s: &Section<'_>,
    vg: &VgMeta,
    lv_names: &[&[u8]],
) -> Result<Result<Segment, String>, CorruptKind> {
    let start_extent = nonneg(s.int("start_extent")).ok_or(CorruptKind::LvmSegment)?;
    let extent_count = nonneg(s.int("extent_count"))
        .filter(|&n| n > 0)
        .ok_or(CorruptKind::LvmSegment)?;
    let seg_type = s.str("type").ok_or(CorruptKind::LvmSegment)?;
    // lvm2 writes "striped" for linear segments too, and accepts "linear" (one stripe).
    let linear = seg_type == b"linear";
    if seg_type != b"striped" && !linear {
        return Ok(Err(format!(
            "segment type \"{}\"",
            String::from_utf8_lossy(seg_type)
        )));
    }
    let stripe_count = nonneg(s.int("stripe_count"))
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| (1..=MAX_STRIPES).contains(&n) && (n == 1 || !linear))
        .ok_or(CorruptKind::LvmSegment)?;
    let Some(Value::Array(areas)) = s.get("stripes") else {
        return Err(CorruptKind::LvmSegment);
    };
    if Some(areas.len()) != stripe_count.checked_mul(2) {
        return Err(CorruptKind::LvmSegment);
    }
    let n = u64::try_from(stripe_count).map_err(|_| CorruptKind::LvmSegment)?;
    if extent_count % n != 0 {
        return Err(CorruptKind::LvmSegment);
    }
    let area_len = extent_count / n;
    let stripe_size = if stripe_count == 1 {
        0
    } else {
        let size = nonneg(s.int("stripe_size"))
            .filter(|&v| v > 0)
            .and_then(|v| v.checked_mul(SECTOR))
            .ok_or(CorruptKind::LvmStripeSize)?;
        // device-mapper: each stripe's length must be a multiple of the chunk size.
        let width = area_len
            .checked_mul(vg.extent_size)
            .ok_or(CorruptKind::LvmSegment)?;
        if width % size != 0 {
            return Err(CorruptKind::LvmStripeSize);
        }
        size
    };
    let mut stripes = Vec::with_capacity(stripe_count);
    for pair in areas.chunks_exact(2) {
        let (Value::Str(pv_name), Value::Int(pe)) = (&pair[0], &pair[1]) else {
            return Err(CorruptKind::LvmSegment);
        };
        let pe = u64::try_from(*pe).map_err(|_| CorruptKind::LvmSegment)?;
        let Some(pv) = vg.pvs.iter().position(|p| &p.name == pv_name) else {
            if lv_names.contains(&pv_name.as_slice()) {
                return Ok(Err(
                    "a segment on another LV (pvmove in progress)".to_string()
                ));
            }
            return Err(CorruptKind::LvmSegment);
        };
        let end = pe
            .checked_add(area_len)
            .ok_or(CorruptKind::LvmExtentRange)?;
        if end > vg.pvs[pv].pe_count {
            return Err(CorruptKind::LvmExtentRange);
        }
        stripes.push((pv, pe));
    }
    Ok(Ok(Segment {
        start_extent,
        extent_count,
        stripe_size,
        stripes,
    }))
}

fn read_lv(s: &Section<'_>, vg: &VgMeta, lv_names: &[&[u8]]) -> LvState {
    let segments: Vec<&Section<'_>> = s.sections().map(|(_, seg)| seg).collect();
    if segments.len() > MAX_SEGMENTS {
        return LvState::Corrupt(CorruptKind::LvmTooMany);
    }
    if nonneg(s.int("segment_count")) != u64::try_from(segments.len()).ok() {
        return LvState::Corrupt(CorruptKind::LvmSegment);
    }
    let mut out = Vec::with_capacity(segments.len());
    let mut unsupported = None;
    for seg in segments {
        match read_segment(seg, vg, lv_names) {
            Ok(Ok(seg)) => out.push(seg),
            Ok(Err(why)) => {
                unsupported.get_or_insert(why);
            }
            Err(kind) => return LvState::Corrupt(kind),
        }
    }
    if let Some(why) = unsupported {
        return LvState::Unsupported(why);
    }
    out.sort_by_key(|seg| seg.start_extent);
    let mut next = 0u64;
    for seg in &out {
        if seg.start_extent != next {
            return LvState::Corrupt(CorruptKind::LvmSegmentOrder);
        }
        let Some(end) = seg.start_extent.checked_add(seg.extent_count) else {
            return LvState::Corrupt(CorruptKind::LvmSegmentOrder);
        };
        next = end;
    }
    if next.checked_mul(vg.extent_size).is_none() {
        return LvState::Corrupt(CorruptKind::LvmSegment);
    }
    LvState::Readable(out)
}

/// Names that a non-striped segment of `s` refers to, other than those that leave the
/// named LV's extents its contents (the origin of a snapshot that is not merging).
fn used_names<'s>(s: &'s Section<'_>) -> Vec<&'s [u8]> {
    let mut out = Vec::new();
    for (_, seg) in s.sections() {
        let seg_type = seg.str("type").unwrap_or_default();
        if seg_type == b"striped" || seg_type == b"linear" {
            continue;
        }
        let merging = seg.get("merging_store").is_some();
        for (key, value) in &seg.items {
            if seg_type == b"snapshot" && *key == b"origin" && !merging {
                continue;
            }
            match value {
                Value::Str(v) => out.push(v.as_slice()),
                Value::Array(a) => out.extend(a.iter().filter_map(|v| match v {
                    Value::Str(v) => Some(v.as_slice()),
                    _ => None,
                })),
                _ => {}
            }
        }
    }
    out
}

/// Interprets a parsed metadata text. VG-wide breaches are errors; an LV's own breach only
/// marks that LV.
pub fn read_vg(root: &Section<'_>) -> Result<VgMeta, GuestError> {
    let mut vgs = root.sections();
    let (vg_name, s) = vgs.next().ok_or(CorruptKind::LvmVgSection)?;
    if vgs.next().is_some() {
        return Err(CorruptKind::LvmVgSection.into());
    }
    if !valid_name(vg_name) {
        return Err(CorruptKind::LvmName.into());
    }
    let name = String::from_utf8_lossy(vg_name).into_owned();
    let id = s.str("id").ok_or(CorruptKind::LvmVgField)?.to_vec();
    let seqno = nonneg(s.int("seqno")).ok_or(CorruptKind::LvmVgField)?;
    let extent_size = nonneg(s.int("extent_size"))
        .filter(|v| (1..=MAX_EXTENT_SECTORS).contains(v))
        .ok_or(CorruptKind::LvmExtentSize)?
        * SECTOR;
    let pv_sections = s
        .section("physical_volumes")
        .ok_or(CorruptKind::LvmVgField)?;
    let mut vg = VgMeta {
        name,
        id,
        seqno,
        extent_size,
        pvs: Vec::new(),
        lvs: Vec::new(),
    };
    for (pv_name, pv) in pv_sections.sections() {
        if vg.pvs.len() >= MAX_PVS {
            return Err(CorruptKind::LvmTooMany.into());
        }
        let pv = read_pv(pv_name, pv, extent_size)?;
        if vg
            .pvs
            .iter()
            .any(|p| p.name == pv.name || p.uuid == pv.uuid)
        {
            return Err(CorruptKind::LvmPvEntry.into());
        }
        vg.pvs.push(pv);
    }
    let empty = Section::default();
    let lv_sections: Vec<(&[u8], &Section<'_>)> = s
        .section("logical_volumes")
        .unwrap_or(&empty)
        .sections()
        .collect();
    if lv_sections.len() > MAX_LVS {
        return Err(CorruptKind::LvmTooMany.into());
    }
    let lv_names: Vec<&[u8]> = lv_sections.iter().map(|(n, _)| *n).collect();
    let mut used: Vec<(&[u8], &[u8])> = Vec::new();
    for (lv_name, lv) in &lv_sections {
        used.extend(used_names(lv).into_iter().map(|u| (u, *lv_name)));
    }
    for (i, (lv_name, lv)) in lv_sections.iter().enumerate() {
        let state = if !valid_name(lv_name) || lv_names[..i].contains(lv_name) {
            LvState::Corrupt(CorruptKind::LvmName)
        } else {
            read_lv(lv, &vg, &lv_names)
        };
        vg.lvs.push(LvMeta {
            name: String::from_utf8_lossy(lv_name).into_owned(),
            state,
        });
    }
    // Overlaps first, over every striped LV, hidden ones and copy-on-write stores included.
    mark_overlaps(&mut vg);
    for (lv, (lv_name, section)) in vg.lvs.iter_mut().zip(&lv_sections) {
        if !matches!(lv.state, LvState::Readable(_)) {
            continue;
        }
        if let Some((_, user)) = used.iter().find(|(u, _)| u == lv_name) {
            lv.state = LvState::Unsupported(format!(
                "used by LV {} (a snapshot's store or a merging origin)",
                String::from_utf8_lossy(user)
            ));
        } else if !section.has_flag("status", "VISIBLE") {
            lv.state = LvState::Hidden;
        }
    }
    Ok(vg)
}

/// Marks corrupt every LV with an extent that some other area (of it or of another LV, shown
/// or not) maps too: such metadata is not what lvm2 writes, and either LV's bytes would be
/// the other's.
fn mark_overlaps(vg: &mut VgMeta) {
    // (pv, first extent, end, lv index), for every striped area of every LV.
    let mut areas: Vec<(usize, u64, u64, usize)> = Vec::new();
    for (i, lv) in vg.lvs.iter().enumerate() {
        if let LvState::Readable(segs) = &lv.state {
            for seg in segs {
                let len = seg.area_len();
                for &(pv, pe) in &seg.stripes {
                    areas.push((pv, pe, pe.saturating_add(len), i));
                }
            }
        }
    }
    areas.sort_unstable();
    let mut bad = Vec::new();
    let mut reach: Option<(usize, u64, usize)> = None;
    for &(pv, start, end, lv) in &areas {
        if let Some((rpv, rend, rlv)) = reach {
            if rpv == pv && start < rend {
                bad.push(lv);
                bad.push(rlv);
                if end > rend {
                    reach = Some((pv, end, lv));
                }
                continue;
            }
        }
        reach = Some((pv, end, lv));
    }
    for i in bad {
        vg.lvs[i].state = LvState::Corrupt(CorruptKind::LvmExtentOverlap);
    }
}

#[cfg(test)]
mod tests {
    use super::super::text::parse;
    use super::*;

    const PV: &str =
        "pv0 { id = \"AAAAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAAAA\" pe_start = 2048 pe_count = 100 }";

    fn vg(lvs: &str) -> VgMeta {
        let text = format!(
            "my-vg {{ id = \"x\" seqno = 3 extent_size = 8192 physical_volumes {{ {PV} }} logical_volumes {{ {lvs} }} }}"
        );
        read_vg(&parse(text.as_bytes()).unwrap()).unwrap()
    }

    fn lv(name: &str, segs: &[&str]) -> String {
        let mut s = format!(
            "{name} {{ status = [\"READ\", \"VISIBLE\"] segment_count = {} ",
            segs.len()
        );
        for (i, seg) in segs.iter().enumerate() {
            s += &format!("segment{} {{ {seg} }} ", i + 1);
        }
        s + "}"
    }

    fn lin(start: u64, count: u64, pe: u64) -> String {
        format!("start_extent = {start} extent_count = {count} type = \"striped\" stripe_count = 1 stripes = [\"pv0\", {pe}]")
    }

    fn state(v: &VgMeta, name: &str) -> LvState {
        v.lvs.iter().find(|l| l.name == name).unwrap().state.clone()
    }

    #[test]
    fn names_follow_device_mapper() {
        assert_eq!(dm_name("vg", "root"), "vg-root");
        assert_eq!(dm_name("my-vg", "a-b-c"), "my--vg-a--b--c");
        assert!(valid_name(b"a+b_c.d-e"));
        for bad in [&b""[..], b"-a", b".", b"..", b"a/b", b"a b", &[b'a'; 128]] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn linear_and_striped_segments_are_read() {
        let v = vg(&[
            lv("a", &[&lin(4, 6, 0), &lin(0, 4, 10)]),
            lv(
                "s",
                &["start_extent = 0 extent_count = 4 type = \"striped\" stripe_count = 2 stripe_size = 128 stripes = [\"pv0\", 20, \"pv0\", 30]"],
            ),
        ]
        .join(" "));
        assert_eq!(v.extent_size, 4 << 20);
        assert_eq!(v.pvs[0].pe_start, 1 << 20);
        let LvState::Readable(a) = state(&v, "a") else {
            panic!()
        };
        assert_eq!(a.iter().map(|s| s.start_extent).collect::<Vec<_>>(), [0, 4]);
        let LvState::Readable(s) = state(&v, "s") else {
            panic!()
        };
        assert_eq!(s[0].stripe_size, 64 << 10);
        assert_eq!(s[0].stripes, [(0, 20), (0, 30)]);
    }

    #[test]
    fn linear_type_is_one_stripe() {
        let v = vg(&[
            lv("a", &[&lin(0, 2, 0).replace("\"striped\"", "\"linear\"")]),
            lv(
                "b",
                &["start_extent = 0 extent_count = 2 type = \"linear\" stripe_count = 2 stripe_size = 8 stripes = [\"pv0\", 10, \"pv0\", 20]"],
            ),
        ]
        .join(" "));
        let LvState::Readable(a) = state(&v, "a") else {
            panic!()
        };
        assert_eq!(a[0].stripes, [(0, 0)]);
        assert_eq!(state(&v, "b"), LvState::Corrupt(CorruptKind::LvmSegment));
    }

    #[test]
    fn each_lv_breach_has_its_error() {
        let cases = [
            (lv("gap", &[&lin(0, 2, 0), &lin(3, 2, 2)]), CorruptKind::LvmSegmentOrder),
            (lv("dup", &[&lin(0, 2, 0), &lin(1, 2, 2)]), CorruptKind::LvmSegmentOrder),
            (lv("past", &[&lin(0, 2, 99)]), CorruptKind::LvmExtentRange),
            (lv("huge", &[&lin(0, 1 << 62, 0)]), CorruptKind::LvmExtentRange),
            (lv("nopv", &[&lin(0, 2, 0).replace("pv0", "pv9")]), CorruptKind::LvmSegment),
            (
                lv("odd", &["start_extent = 0 extent_count = 3 type = \"striped\" stripe_count = 2 stripe_size = 128 stripes = [\"pv0\", 40, \"pv0\", 50]"]),
                CorruptKind::LvmSegment,
            ),
            (
                lv("chunk", &["start_extent = 0 extent_count = 2 type = \"striped\" stripe_count = 2 stripe_size = 12345 stripes = [\"pv0\", 40, \"pv0\", 50]"]),
                CorruptKind::LvmStripeSize,
            ),
            (
                "cnt { status = [\"VISIBLE\"] segment_count = 2 segment1 { } }".to_string(),
                CorruptKind::LvmSegment,
            ),
        ];
        for (text, kind) in cases {
            let v = vg(&text);
            assert_eq!(v.lvs[0].state, LvState::Corrupt(kind), "{text}");
        }
    }

    #[test]
    fn overlapping_lvs_are_both_corrupt_and_others_stay() {
        let v = vg(&[
            lv("a", &[&lin(0, 4, 0)]),
            lv("b", &[&lin(0, 4, 3)]),
            lv("c", &[&lin(0, 4, 7)]),
        ]
        .join(" "));
        assert_eq!(
            state(&v, "a"),
            LvState::Corrupt(CorruptKind::LvmExtentOverlap)
        );
        assert_eq!(
            state(&v, "b"),
            LvState::Corrupt(CorruptKind::LvmExtentOverlap)
        );
        assert!(matches!(state(&v, "c"), LvState::Readable(_)));
    }

    #[test]
    fn other_segment_types_and_their_users_are_unsupported() {
        let v = vg(&[
            lv("thin", &["start_extent = 0 extent_count = 4 type = \"thin\" thin_pool = \"pool\""]),
            lv("cow", &[&lin(0, 2, 0)]),
            lv("orig", &[&lin(0, 4, 10)]),
            "snapshot0 { status = [\"READ\"] segment_count = 1 segment1 { start_extent = 0 extent_count = 4 type = \"snapshot\" origin = \"orig\" cow_store = \"cow\" } }".to_string(),
            lv("moving", &[&lin(0, 2, 0).replace("pv0", "pvmove0")]),
            "pvmove0 { status = [\"READ\"] segment_count = 1 segment1 { start_extent = 0 extent_count = 2 type = \"mirror\" mirror_count = 2 mirrors = [\"pv0\", 20, \"pv0\", 30] } }".to_string(),
            "hidden { status = [\"READ\"] segment_count = 1 segment1 { ".to_string() + &lin(0, 2, 40) + " } }",
        ]
        .join(" "));
        assert!(matches!(state(&v, "thin"), LvState::Unsupported(_)));
        assert!(matches!(state(&v, "cow"), LvState::Unsupported(_)));
        assert!(matches!(state(&v, "orig"), LvState::Readable(_)));
        assert!(matches!(state(&v, "moving"), LvState::Unsupported(_)));
        assert_eq!(state(&v, "hidden"), LvState::Hidden);
    }

    #[test]
    fn vg_breaches_are_errors() {
        let bad = |text: &str| match read_vg(&parse(text.as_bytes()).unwrap()) {
            Err(GuestError::Corrupt(k)) => k,
            other => panic!("{other:?}"),
        };
        assert_eq!(bad("a = 1"), CorruptKind::LvmVgSection);
        assert_eq!(
            bad("v { id = \"x\" seqno = 1 extent_size = 0 physical_volumes { } }"),
            CorruptKind::LvmExtentSize
        );
        assert_eq!(
            bad("v { id = \"x\" seqno = -1 extent_size = 8 physical_volumes { } }"),
            CorruptKind::LvmVgField
        );
        assert_eq!(
            bad("v/x { id = \"x\" seqno = 1 extent_size = 8 physical_volumes { } }"),
            CorruptKind::LvmName
        );
        assert_eq!(
            bad("v { id = \"x\" seqno = 1 extent_size = 8 physical_volumes { pv0 { id = \"short\" pe_start = 0 pe_count = 1 } } }"),
            CorruptKind::LvmPvEntry
        );
        assert_eq!(
            bad(&format!(
                "v {{ id = \"x\" seqno = 1 extent_size = 33554432 physical_volumes {{ {} }} }}",
                PV.replace("100", "9223372036854775807")
            )),
            CorruptKind::LvmPvEntry
        );
    }
}
