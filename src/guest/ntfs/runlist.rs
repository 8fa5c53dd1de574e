//! Run lists ("mapping pairs"): where a non-resident attribute's clusters are.
//!
//! Each pair is a header byte (low nibble: bytes of the run length, high nibble: bytes of
//! the signed LCN delta), the length, and the delta from the previous run's LCN; a pair
//! without a delta is a sparse run (reads as zeros); a zero header ends the list. Every
//! run is checked to lie within the volume, and the pieces of an attribute split over
//! several records must follow each other without a gap.

use super::super::{CorruptKind, GuestError};

/// Runs one stream may have in all; a file more fragmented than this (6 MiB of runs) is
/// refused ([`CorruptKind::NtfsTooManyRuns`]).
pub const MAX_RUNS: usize = 1 << 18;

/// A run of `len` clusters from virtual cluster `vcn`, at `lcn` (None: sparse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub vcn: u64,
    pub len: u64,
    pub lcn: Option<u64>,
}

/// Little-endian integer of `bytes.len()` (1 to 8) bytes, sign-extended when `signed`.
fn le_int(bytes: &[u8], signed: bool) -> i128 {
    let mut v: i128 = 0;
    for (i, b) in bytes.iter().enumerate() {
        v |= i128::from(*b) << (8 * i);
    }
    if signed && bytes.last().is_some_and(|b| b & 0x80 != 0) {
        v -= 1i128 << (8 * bytes.len());
    }
    v
}

/// Decodes the mapping pairs of one attribute piece covering `lowest_vcn ..= highest_vcn`
/// and appends its runs to `out`. `total_clusters` bounds every LCN.
pub fn decode(
    pairs: &[u8],
    lowest_vcn: u64,
    highest_vcn: u64,
    total_clusters: u64,
    out: &mut Vec<Run>,
) -> Result<(), GuestError> {
    let mut at = 0usize;
    let mut vcn = lowest_vcn;
    let mut lcn: i128 = 0;
    loop {
        let Some(&header) = pairs.get(at) else {
            return Err(CorruptKind::NtfsRunList.into());
        };
        if header == 0 {
            break;
        }
        let len_bytes = usize::from(header & 0x0F);
        let off_bytes = usize::from(header >> 4);
        if len_bytes == 0 || len_bytes > 8 || off_bytes > 8 {
            return Err(CorruptKind::NtfsRunList.into());
        }
        let len_field = pairs
            .get(at + 1..at + 1 + len_bytes)
            .ok_or(CorruptKind::NtfsRunList)?;
        let off_field = pairs
            .get(at + 1 + len_bytes..at + 1 + len_bytes + off_bytes)
            .ok_or(CorruptKind::NtfsRunList)?;
        at += 1 + len_bytes + off_bytes;
        let len = u64::try_from(le_int(len_field, false)).map_err(|_| CorruptKind::NtfsRunList)?;
        if len == 0 {
            return Err(CorruptKind::NtfsRunList.into());
        }
        let run_lcn = if off_bytes == 0 {
            None
        } else {
            lcn += le_int(off_field, true);
            let start = u64::try_from(lcn).map_err(|_| CorruptKind::NtfsRunRange)?;
            if start
                .checked_add(len)
                .is_none_or(|end| end > total_clusters)
            {
                return Err(CorruptKind::NtfsRunRange.into());
            }
            Some(start)
        };
        if out.len() >= MAX_RUNS {
            return Err(CorruptKind::NtfsTooManyRuns.into());
        }
        out.push(Run {
            vcn,
            len,
            lcn: run_lcn,
        });
        vcn = vcn.checked_add(len).ok_or(CorruptKind::NtfsRunList)?;
    }
    // The piece must end where its header says (an empty attribute has highest_vcn -1).
    if vcn != highest_vcn.wrapping_add(1) {
        return Err(CorruptKind::NtfsRunList.into());
    }
    Ok(())
}

/// The run holding `vcn`, if any (runs sorted by VCN, contiguous).
pub fn find(runs: &[Run], vcn: u64) -> Option<&Run> {
    let i = runs.partition_point(|r| r.vcn.saturating_add(r.len) <= vcn);
    runs.get(i).filter(|r| r.vcn <= vcn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_runs_sparse_and_negative_deltas() {
        // 0x10 clusters at 0x100; 4 sparse; 2 at 0x100 - 0x20 = 0xE0.
        let pairs = [0x21, 0x10, 0x00, 0x01, 0x01, 0x04, 0x11, 0x02, 0xE0, 0x00];
        let mut runs = Vec::new();
        decode(&pairs, 0, 21, 1000, &mut runs).unwrap();
        assert_eq!(
            runs,
            vec![
                Run {
                    vcn: 0,
                    len: 16,
                    lcn: Some(0x100)
                },
                Run {
                    vcn: 16,
                    len: 4,
                    lcn: None
                },
                Run {
                    vcn: 20,
                    len: 2,
                    lcn: Some(0xE0)
                },
            ]
        );
        assert_eq!(find(&runs, 17).unwrap().vcn, 16);
        assert!(find(&runs, 22).is_none());
    }

    #[test]
    fn a_run_past_the_volume_is_rejected() {
        let pairs = [0x21, 0x10, 0x00, 0x01, 0x00];
        let e = decode(&pairs, 0, 15, 0x105, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, GuestError::Corrupt(CorruptKind::NtfsRunRange)));
        // A negative LCN.
        let pairs = [0x11, 0x01, 0xFF, 0x00];
        let e = decode(&pairs, 0, 0, 100, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, GuestError::Corrupt(CorruptKind::NtfsRunRange)));
    }

    #[test]
    fn malformed_lists_are_rejected() {
        for pairs in [&[0x21u8, 0x10][..], &[0x01, 0x00, 0x00], &[0x90, 1], &[]] {
            let e = decode(pairs, 0, 15, 1 << 20, &mut Vec::new()).unwrap_err();
            assert!(matches!(e, GuestError::Corrupt(CorruptKind::NtfsRunList)));
        }
        // The runs end before highest_vcn.
        let e = decode(&[0x11, 0x01, 0x05, 0x00], 0, 5, 100, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, GuestError::Corrupt(CorruptKind::NtfsRunList)));
    }
}
