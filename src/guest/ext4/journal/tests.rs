//! Journals built byte by byte in memory: each test exercises one rule of the recovery.

use super::super::super::crc::{crc32_be_raw, crc32c_raw};
use super::*;

const BS: usize = 1024;
const UUID: [u8; 16] = *b"0123456789abcdef";

struct MemLog {
    blocks: Vec<Vec<u8>>,
}

/// Journal block j is stored at device block BASE + j.
const BASE: u64 = 1000;

impl LogDevice for MemLog {
    fn blocks(&self) -> u64 {
        self.blocks.len() as u64
    }
    fn block_size(&self) -> usize {
        BS
    }
    fn read(&self, jblk: u32, buf: &mut [u8]) -> Result<(), GuestError> {
        buf.copy_from_slice(&self.blocks[jblk as usize]);
        Ok(())
    }
    fn phys(&self, jblk: u32) -> Result<u64, GuestError> {
        Ok(BASE + u64::from(jblk))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Commit {
    Good,
    Missing,
    BadChecksum,
}

struct Builder {
    incompat: u32,
    compat: u32,
    maxlen: u32,
    first: u32,
    start: u32,
    seq0: u32,
    blocks: Vec<Vec<u8>>,
    pos: u32,
    seq: u32,
}

fn be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn pattern(n: u8) -> Vec<u8> {
    (0..BS)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(n))
        .collect()
}

impl Builder {
    fn new(incompat: u32, compat: u32, maxlen: u32, start: u32) -> Builder {
        Builder {
            incompat,
            compat,
            maxlen,
            first: 1,
            start,
            seq0: 40,
            blocks: vec![vec![0u8; BS]; maxlen as usize],
            pos: start,
            seq: 40,
        }
    }

    fn seed(&self) -> u32 {
        crc32c_raw(!0, &UUID)
    }
    fn csum(&self) -> bool {
        self.incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) != 0
    }

    fn put(&mut self, block: Vec<u8>) -> u32 {
        let at = self.pos;
        self.blocks[at as usize] = block;
        self.pos = if at + 1 >= self.maxlen {
            self.first
        } else {
            at + 1
        };
        at
    }

    fn header(&self, blocktype: u32) -> Vec<u8> {
        let mut b = vec![0u8; BS];
        be32(&mut b, 0, JBD2_MAGIC);
        be32(&mut b, 4, blocktype);
        be32(&mut b, 8, self.seq);
        b
    }

    fn tail(&self, b: &mut [u8]) {
        if self.csum() {
            b[BS - 4..].fill(0);
            let c = crc32c_raw(self.seed(), b);
            be32(b, BS - 4, c);
        }
    }

    /// One transaction: revoke records, then a descriptor for `writes`, then the commit.
    fn tx(&mut self, writes: &[(u64, Vec<u8>)], revokes: &[u64], commit: Commit) {
        let v3 = self.incompat & INCOMPAT_CSUM_V3 != 0;
        let v2 = self.incompat & INCOMPAT_CSUM_V2 != 0;
        let is64 = self.incompat & INCOMPAT_64BIT != 0;
        if !revokes.is_empty() {
            let mut r = self.header(BLOCKTYPE_REVOKE);
            let rec = if is64 { 8 } else { 4 };
            let mut at = 16;
            for &b in revokes {
                if is64 {
                    r[at..at + 8].copy_from_slice(&b.to_be_bytes());
                } else {
                    be32(&mut r, at, b as u32);
                }
                at += rec;
            }
            be32(&mut r, 12, at as u32);
            self.tail(&mut r);
            self.put(r);
        }
        let mut v1_sum = !0u32;
        if !writes.is_empty() {
            let mut d = self.header(BLOCKTYPE_DESCRIPTOR);
            let tag_len = if v3 {
                16
            } else {
                12 + if v2 { 2 } else { 0 } - if is64 { 0 } else { 4 }
            };
            let mut at = 12;
            let mut stored = Vec::new();
            for (i, (blocknr, data)) in writes.iter().enumerate() {
                let mut data = data.clone();
                let mut flags = 0u16;
                if data[..4] == JBD2_MAGIC.to_be_bytes() {
                    data[..4].fill(0);
                    flags |= tags::FLAG_ESCAPE;
                }
                if i > 0 {
                    flags |= tags::FLAG_SAME_UUID;
                }
                if i + 1 == writes.len() {
                    flags |= tags::FLAG_LAST_TAG;
                }
                let crc = crc32c_raw(self.seed(), &self.seq.to_be_bytes());
                let crc = crc32c_raw(crc, &data);
                be32(&mut d, at, *blocknr as u32);
                d[at + 6..at + 8].copy_from_slice(&flags.to_be_bytes());
                if is64 || v3 {
                    be32(&mut d, at + 8, (*blocknr >> 32) as u32);
                }
                if v3 {
                    be32(&mut d, at + 12, crc);
                } else {
                    d[at + 4..at + 6].copy_from_slice(&(crc as u16).to_be_bytes());
                }
                at += tag_len;
                if i == 0 {
                    d[at..at + 16].copy_from_slice(&UUID);
                    at += 16;
                }
                stored.push(data);
            }
            self.tail(&mut d);
            v1_sum = crc32_be_raw(v1_sum, &d);
            self.put(d);
            for data in stored {
                v1_sum = crc32_be_raw(v1_sum, &data);
                self.put(data);
            }
        }
        if commit == Commit::Missing {
            return;
        }
        let mut c = self.header(BLOCKTYPE_COMMIT);
        if self.csum() {
            c[12] = 4;
            c[13] = 4;
            let crc = crc32c_raw(self.seed(), &c);
            be32(&mut c, 16, crc);
        } else if self.compat & COMPAT_CHECKSUM != 0 {
            c[12] = 1;
            c[13] = 4;
            be32(&mut c, 16, v1_sum);
        }
        if commit == Commit::BadChecksum {
            c[16] ^= 0xFF;
        }
        self.put(c);
        self.seq += 1;
    }

    fn finish(mut self) -> MemLog {
        let mut sb = vec![0u8; BS];
        be32(&mut sb, 0, JBD2_MAGIC);
        be32(&mut sb, 4, BLOCKTYPE_SUPERBLOCK_V2);
        be32(&mut sb, 0xC, BS as u32);
        be32(&mut sb, 0x10, self.maxlen);
        be32(&mut sb, 0x14, self.first);
        be32(&mut sb, 0x18, self.seq0);
        be32(&mut sb, 0x1C, self.start);
        be32(&mut sb, 0x24, self.compat);
        be32(&mut sb, 0x28, self.incompat);
        sb[0x30..0x40].copy_from_slice(&UUID);
        if self.csum() {
            sb[0x50] = 4;
            let c = crc32c_raw(!0, &sb);
            be32(&mut sb, 0xFC, c);
        }
        self.blocks[0] = sb;
        MemLog {
            blocks: self.blocks,
        }
    }
}

const V3_64: u32 = INCOMPAT_REVOKE | INCOMPAT_64BIT | INCOMPAT_CSUM_V3;

fn replay(log: &MemLog) -> (Overlay, ReplayStats) {
    recover_log(log, 1 << 40).unwrap()
}

/// The bytes a replayed block reads as.
fn content(log: &MemLog, overlay: &Overlay, block: u64) -> Option<Vec<u8>> {
    let l = overlay.get(block)?;
    let mut b = log.blocks[(l.phys - BASE) as usize].clone();
    unescape(&mut b, l.escaped);
    Some(b)
}

#[test]
fn committed_transactions_replay_in_order() {
    let mut j = Builder::new(V3_64, 0, 64, 1);
    j.tx(&[(100, pattern(1)), (101, pattern(2))], &[], Commit::Good);
    j.tx(&[(100, pattern(3))], &[], Commit::Good);
    let log = j.finish();
    let (o, s) = replay(&log);
    assert_eq!(content(&log, &o, 100), Some(pattern(3)));
    assert_eq!(content(&log, &o, 101), Some(pattern(2)));
    assert_eq!((s.transactions, s.replayed_blocks, s.tag_bytes), (2, 3, 16));
    assert!(!s.wrapped);
}

#[test]
fn incomplete_last_transaction_is_dropped() {
    let mut j = Builder::new(V3_64, 0, 64, 1);
    j.tx(&[(100, pattern(1))], &[], Commit::Good);
    j.tx(&[(100, pattern(2)), (7, pattern(3))], &[], Commit::Missing);
    let log = j.finish();
    let (o, s) = replay(&log);
    assert_eq!(content(&log, &o, 100), Some(pattern(1)));
    assert_eq!(content(&log, &o, 7), None);
    assert_eq!(s.transactions, 1);
}

#[test]
fn bad_commit_checksum_drops_the_transaction() {
    for incompat in [V3_64, INCOMPAT_REVOKE | INCOMPAT_CSUM_V2] {
        let mut j = Builder::new(incompat, 0, 64, 1);
        j.tx(&[(100, pattern(1))], &[], Commit::Good);
        j.tx(&[(100, pattern(2))], &[], Commit::BadChecksum);
        j.tx(&[(100, pattern(3))], &[], Commit::Good);
        let log = j.finish();
        let (o, s) = replay(&log);
        assert_eq!(content(&log, &o, 100), Some(pattern(1)));
        assert_eq!(s.transactions, 1);
    }
}

#[test]
fn v1_commit_checksum_mismatch_drops_the_transaction() {
    let mut j = Builder::new(INCOMPAT_REVOKE, COMPAT_CHECKSUM, 64, 1);
    j.tx(&[(100, pattern(1))], &[], Commit::Good);
    j.tx(&[(100, pattern(2))], &[], Commit::BadChecksum);
    let log = j.finish();
    let (o, s) = replay(&log);
    assert_eq!(content(&log, &o, 100), Some(pattern(1)));
    assert_eq!((s.transactions, s.tag_bytes), (1, 8));
}

#[test]
fn revoke_cancels_its_own_and_earlier_transactions_but_not_later_ones() {
    let mut j = Builder::new(V3_64, 0, 64, 1);
    j.tx(&[(100, pattern(1)), (200, pattern(2))], &[], Commit::Good);
    // Revokes 100 (logged earlier) and 102 (logged in this same transaction).
    j.tx(
        &[(102, pattern(3)), (103, pattern(4))],
        &[100, 102],
        Commit::Good,
    );
    j.tx(&[(102, pattern(5))], &[], Commit::Good);
    let log = j.finish();
    let (o, s) = replay(&log);
    assert_eq!(content(&log, &o, 100), None);
    assert_eq!(content(&log, &o, 200), Some(pattern(2)));
    assert_eq!(content(&log, &o, 103), Some(pattern(4)));
    assert_eq!(content(&log, &o, 102), Some(pattern(5)));
    assert_eq!((s.revoke_records, s.revoked_blocks), (2, 2));
}

#[test]
fn revoke_in_an_uncommitted_transaction_is_ignored() {
    let mut j = Builder::new(V3_64, 0, 64, 1);
    j.tx(&[(100, pattern(1))], &[], Commit::Good);
    j.tx(&[], &[100], Commit::Missing);
    let log = j.finish();
    let (o, _) = replay(&log);
    assert_eq!(content(&log, &o, 100), Some(pattern(1)));
}

#[test]
fn the_log_wraps_around_its_end() {
    // Blocks 1..16 form the ring; the log starts at 12, so the second transaction wraps.
    let mut j = Builder::new(V3_64, 0, 16, 12);
    j.tx(&[(100, pattern(1))], &[], Commit::Good);
    j.tx(
        &[(101, pattern(2)), (102, pattern(3)), (103, pattern(4))],
        &[],
        Commit::Good,
    );
    let log = j.finish();
    let (o, s) = replay(&log);
    assert!(s.wrapped);
    assert_eq!(s.transactions, 2);
    for (b, n) in [(100, 1), (101, 2), (102, 3), (103, 4)] {
        assert_eq!(content(&log, &o, b), Some(pattern(n)), "block {b}");
    }
}

#[test]
fn escaped_blocks_get_their_magic_back() {
    let mut data = pattern(9);
    data[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
    let mut j = Builder::new(V3_64, 0, 64, 1);
    j.tx(&[(55, data.clone())], &[], Commit::Good);
    let log = j.finish();
    let (o, s) = replay(&log);
    let l = o.get(55).unwrap();
    assert!(l.escaped);
    assert_eq!(log.blocks[(l.phys - BASE) as usize][..4], [0, 0, 0, 0]);
    assert_eq!(content(&log, &o, 55), Some(data));
    assert_eq!(s.escaped_blocks, 1);
}

#[test]
fn every_tag_size_replays() {
    let cases = [
        (INCOMPAT_REVOKE, 8),
        (INCOMPAT_REVOKE | INCOMPAT_CSUM_V2, 10),
        (INCOMPAT_REVOKE | INCOMPAT_64BIT, 12),
        (INCOMPAT_REVOKE | INCOMPAT_64BIT | INCOMPAT_CSUM_V2, 14),
        (INCOMPAT_REVOKE | INCOMPAT_CSUM_V3, 16),
        (V3_64, 16),
    ];
    for (incompat, tag_bytes) in cases {
        let big = if incompat & INCOMPAT_64BIT != 0 {
            5 << 32
        } else {
            0
        };
        let mut j = Builder::new(incompat, 0, 64, 1);
        let writes: Vec<_> = (0..5).map(|i| (big + 300 + i, pattern(i as u8))).collect();
        j.tx(&writes, &[big + 301], Commit::Good);
        let log = j.finish();
        let (o, s) = replay(&log);
        assert_eq!(s.tag_bytes, tag_bytes);
        assert_eq!(
            content(&log, &o, big + 300),
            Some(pattern(0)),
            "{incompat:#x}"
        );
        assert_eq!(content(&log, &o, big + 301), None, "{incompat:#x}");
        assert_eq!(
            content(&log, &o, big + 304),
            Some(pattern(4)),
            "{incompat:#x}"
        );
    }
}

#[test]
fn a_copy_with_a_bad_tag_checksum_is_skipped() {
    let mut j = Builder::new(V3_64, 0, 64, 1);
    j.tx(&[(100, pattern(1)), (101, pattern(2))], &[], Commit::Good);
    let mut log = j.finish();
    // Corrupt the data of the first copy (journal block 3: superblock, start=1 descriptor
    // at 1, data at 2 and 3).
    log.blocks[2][100] ^= 1;
    let (o, s) = replay(&log);
    assert_eq!(content(&log, &o, 100), None);
    assert_eq!(content(&log, &o, 101), Some(pattern(2)));
    assert_eq!(s.bad_block_checksums, 1);
}

#[test]
fn a_stale_block_with_an_old_sequence_ends_the_log() {
    let mut j = Builder::new(V3_64, 0, 64, 1);
    j.tx(&[(100, pattern(1))], &[], Commit::Good);
    let end = j.pos;
    j.seq = 10; // an older transaction's leftovers follow
    j.tx(&[(100, pattern(2))], &[], Commit::Good);
    let log = j.finish();
    let (o, s) = replay(&log);
    assert_eq!(s.transactions, 1);
    assert_eq!(content(&log, &o, 100), Some(pattern(1)));
    assert!(end > 1);
}

#[test]
fn malformed_revoke_block_is_corrupt() {
    let mut j = Builder::new(V3_64, 0, 64, 1);
    j.tx(&[(100, pattern(1))], &[5], Commit::Good);
    let mut log = j.finish();
    be32(&mut log.blocks[1], 12, 5000);
    // Re-seal the tail so only r_count is wrong.
    log.blocks[1][BS - 4..].fill(0);
    let c = crc32c_raw(crc32c_raw(!0, &UUID), &log.blocks[1]);
    be32(&mut log.blocks[1], BS - 4, c);
    let err = recover_log(&log, 1 << 40).unwrap_err();
    assert!(matches!(
        err,
        GuestError::Corrupt(CorruptKind::JournalRevoke)
    ));
}

#[test]
fn clean_journal_replays_nothing_and_bad_superblocks_are_refused() {
    let mut j = Builder::new(V3_64, 0, 64, 1);
    j.tx(&[(100, pattern(1))], &[], Commit::Good);
    j.start = 0;
    let log = j.finish();
    let (o, s) = replay(&log);
    assert!(o.is_empty());
    assert_eq!(s.transactions, 0);

    let j = Builder::new(V3_64, 0, 64, 1);
    let mut log = j.finish();
    log.blocks[0][0x20] ^= 1;
    let err = recover_log(&log, 1 << 40).unwrap_err();
    assert!(matches!(
        err,
        GuestError::Corrupt(CorruptKind::JournalSuperblockChecksum)
    ));

    let mut j = Builder::new(V3_64, 0, 64, 70);
    j.pos = 1;
    let log = j.finish();
    let err = recover_log(&log, 1 << 40).unwrap_err();
    assert!(matches!(
        err,
        GuestError::Corrupt(CorruptKind::JournalGeometry)
    ));
}

#[test]
fn a_log_of_nothing_but_matching_descriptors_ends() {
    // Every block claims to be a descriptor of the expected sequence: the scan stops after
    // one pass over the ring, with nothing committed.
    let mut j = Builder::new(INCOMPAT_REVOKE, 0, 64, 1);
    for _ in 1..64 {
        let d = j.header(BLOCKTYPE_DESCRIPTOR);
        j.put(d);
    }
    let log = j.finish();
    let (o, s) = replay(&log);
    assert!(o.is_empty());
    assert_eq!(s.transactions, 0);
}
