//! Revoke blocks and the revoke table.
//!
//! A revoke block (`jbd2_journal_revoke_header_t`: header, then r_count, the bytes used
//! including the 16-byte header) lists filesystem blocks, 4 or 8 bytes each (64bit), whose
//! earlier journal copies must not be replayed. As `jbd2_journal_test_revoke` decides: a
//! copy logged in transaction T is skipped if a revoke for its block was recorded in a
//! transaction with sequence >= T (its own or a later one); the table keeps the latest.

use std::collections::HashMap;

use super::super::super::bytes::{read_u32be, read_u64be};
use super::super::super::{CorruptKind, GuestError};
use super::superblock::{JournalSuperblock, INCOMPAT_64BIT};

/// `tid_gt`: sequence numbers compare modulo 2^32.
pub fn tid_gt(x: u32, y: u32) -> bool {
    i32::from_ne_bytes(x.wrapping_sub(y).to_ne_bytes()) > 0
}

#[derive(Default)]
pub struct RevokeTable {
    latest: HashMap<u64, u32>,
}

impl RevokeTable {
    pub fn record(&mut self, block: u64, sequence: u32) {
        let e = self.latest.entry(block).or_insert(sequence);
        if tid_gt(sequence, *e) {
            *e = sequence;
        }
    }

    /// Whether a copy of `block` logged in transaction `sequence` is revoked.
    pub fn is_revoked(&self, block: u64, sequence: u32) -> bool {
        self.latest
            .get(&block)
            .is_some_and(|&revoked_at| !tid_gt(sequence, revoked_at))
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// The blocks a revoke block lists.
pub fn parse(block: &[u8], jsb: &JournalSuperblock) -> Result<Vec<u64>, GuestError> {
    let r_count = usize::try_from(read_u32be(block, 12)).map_err(|_| CorruptKind::JournalRevoke)?;
    if r_count < 16 || r_count > block.len().saturating_sub(jsb.tail_bytes()) {
        return Err(CorruptKind::JournalRevoke.into());
    }
    let record = if jsb.has_incompat(INCOMPAT_64BIT) {
        8
    } else {
        4
    };
    let mut out = Vec::with_capacity((r_count - 16) / record);
    let mut pos = 16;
    while pos + record <= r_count {
        out.push(if record == 8 {
            read_u64be(block, pos)
        } else {
            u64::from(read_u32be(block, pos))
        });
        pos += record;
    }
    Ok(out)
}
