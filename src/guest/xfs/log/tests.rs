//! Unit tests over hand-built log bytes: a tiny v5 filesystem (one AG of 1024 4 KiB blocks,
//! a 512-block log at block 16) whose log records are written here, with the cycle stamps,
//! cycle data and record checksums the kernel writes.

use super::replay::{bmbt_to_bmdr, log_dinode_to_disk, update_cksum};
use super::*;
use crate::guest::crc::crc32c_raw;
use crate::source::MemorySource;

const UUID: [u8; 16] = [7; 16];
const LOG_BYTE: usize = 16 * 4096;
const LOG_BBS: u64 = 512;
const DEV_LEN: usize = 1024 * 4096;
/// The block the test buffer items write (byte 2 MiB).
const TARGET_DADDR: u64 = 4096;

const LI_BUF: u16 = 0x123c;
const START: u8 = 0x01;
const COMMIT: u8 = 0x02;
const CONTINUE: u8 = 0x04;
const WAS_CONT: u8 = 0x08;
const UNMOUNT: u8 = 0x20;

fn superblock() -> Vec<u8> {
    let mut sb = vec![0u8; 512];
    let mut put = |off: usize, b: &[u8]| sb[off..off + b.len()].copy_from_slice(b);
    put(0, b"XFSB");
    put(4, &4096u32.to_be_bytes());
    put(8, &1024u64.to_be_bytes());
    put(32, &UUID);
    put(48, &16u64.to_be_bytes());
    put(84, &1024u32.to_be_bytes());
    put(88, &1u32.to_be_bytes());
    put(96, &64u32.to_be_bytes());
    put(100, &(5u16 | 0x0400).to_be_bytes());
    put(102, &512u16.to_be_bytes());
    put(104, &512u16.to_be_bytes());
    put(106, &8u16.to_be_bytes());
    put(120, &[12, 9, 9, 3, 10]);
    put(180, &4u32.to_be_bytes());
    sb
}

/// A version 4 superblock (no CRCs, 256-byte v2 inodes) of the same geometry.
fn superblock_v4() -> Vec<u8> {
    let mut sb = superblock();
    sb[100..102].copy_from_slice(&(4u16 | 0x0400).to_be_bytes());
    sb[104..106].copy_from_slice(&256u16.to_be_bytes());
    sb[106..108].copy_from_slice(&16u16.to_be_bytes());
    sb[122] = 8;
    sb[123] = 4;
    sb
}

struct Op {
    tid: u32,
    client: u8,
    flags: u8,
    data: Vec<u8>,
}

fn op(tid: u32, flags: u8, data: &[u8]) -> Op {
    Op {
        tid,
        client: 0x69,
        flags,
        data: data.to_vec(),
    }
}

struct Img {
    dev: Vec<u8>,
}

impl Img {
    fn new() -> Img {
        let mut dev = vec![0u8; DEV_LEN];
        dev[..512].copy_from_slice(&superblock());
        Img { dev }
    }

    fn block_mut(&mut self, blk: u64) -> &mut [u8] {
        let off = LOG_BYTE + ((blk % LOG_BBS) as usize) * 512;
        &mut self.dev[off..off + 512]
    }

    /// Writes a record at `blk` in `cycle`; returns the block after it.
    fn record(&mut self, blk: u64, cycle: u32, tail: (u32, u64), ops: &[Op]) -> u64 {
        let mut data = Vec::new();
        for o in ops {
            data.extend_from_slice(&o.tid.to_be_bytes());
            data.extend_from_slice(&(o.data.len() as u32).to_be_bytes());
            data.extend_from_slice(&[o.client, o.flags, 0, 0]);
            data.extend_from_slice(&o.data);
        }
        let h_len = data.len() as u32;
        let bblks = data.len().div_ceil(512);
        data.resize(bblks * 512, 0);
        let mut hdr = vec![0u8; 512];
        for i in 0..bblks {
            let word: [u8; 4] = data[i * 512..i * 512 + 4].try_into().unwrap();
            hdr[44 + 4 * i..48 + 4 * i].copy_from_slice(&word);
            data[i * 512..i * 512 + 4].copy_from_slice(&cycle.to_be_bytes());
        }
        let mut put = |off: usize, b: &[u8]| hdr[off..off + b.len()].copy_from_slice(b);
        put(0, &0xFEED_BABEu32.to_be_bytes());
        put(4, &cycle.to_be_bytes());
        put(8, &2u32.to_be_bytes());
        put(12, &h_len.to_be_bytes());
        put(
            16,
            &((u64::from(cycle) << 32) | (blk % LOG_BBS)).to_be_bytes(),
        );
        put(24, &((u64::from(tail.0) << 32) | tail.1).to_be_bytes());
        put(40, &(ops.len() as u32).to_be_bytes());
        put(300, &1u32.to_be_bytes());
        put(304, &UUID);
        put(320, &32768u32.to_be_bytes());
        let mut crc = crc32c_raw(!0, &hdr[..32]);
        crc = crc32c_raw(crc, &[0; 4]);
        crc = crc32c_raw(crc, &hdr[36..328]);
        crc = crc32c_raw(crc, &data[..h_len as usize]);
        hdr[32..36].copy_from_slice(&(!crc).to_le_bytes());
        self.block_mut(blk).copy_from_slice(&hdr);
        for i in 0..bblks {
            let b = data[i * 512..(i + 1) * 512].to_vec();
            self.block_mut(blk + 1 + i as u64).copy_from_slice(&b);
        }
        blk + 1 + bblks as u64
    }

    fn recover(&self) -> Result<Recovery, GuestError> {
        let geo = LogGeometry::from_superblock(&self.dev[..512], DEV_LEN as u64)?;
        let dev = MemorySource::new(self.dev.clone());
        recover(&dev, &geo)
    }
}

fn trans_header() -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&0x5452_414eu32.to_le_bytes());
    h.extend_from_slice(&40u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h
}

/// A buffer log format (little-endian host) for one 512-byte buffer at `daddr` with the
/// first 128-byte chunk dirty.
fn buf_format(daddr: u64, regions: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&LI_BUF.to_le_bytes());
    f.extend_from_slice(&regions.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes());
    f.extend_from_slice(&daddr.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f
}

fn payload() -> Vec<u8> {
    (0..128u8)
        .map(|i| i.wrapping_mul(3).wrapping_add(1))
        .collect()
}

/// The ops of one transaction logging the test buffer, committed or not.
fn buffer_trans(tid: u32, commit: bool) -> Vec<Op> {
    let mut ops = vec![
        op(tid, START, &[]),
        op(tid, 0, &trans_header()),
        op(tid, 0, &buf_format(TARGET_DADDR, 2)),
        op(tid, 0, &payload()),
    ];
    if commit {
        ops.push(op(tid, COMMIT, &[]));
    }
    ops
}

fn replayed_target(r: &Recovery) -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    r.overlay.apply(TARGET_DADDR * 512, &mut buf);
    buf
}

fn corrupt(r: Result<Recovery, GuestError>) -> CorruptKind {
    match r {
        Err(GuestError::Corrupt(k)) => k,
        Err(e) => panic!("expected a corruption error, got {e}"),
        Ok(r) => panic!("expected a corruption error, got {:?}", r.stats),
    }
}

#[test]
fn never_written_log_is_clean() {
    let r = Img::new().recover().unwrap();
    assert!(r.stats.clean && r.overlay.is_empty());
}

#[test]
fn unmount_record_last_is_clean() {
    let mut img = Img::new();
    let unmount = Op {
        tid: 9,
        client: 0xaa,
        flags: UNMOUNT,
        data: vec![0x6e, 0x55, 0, 0, 0, 0, 0, 0],
    };
    img.record(0, 1, (1, 0), &[unmount]);
    let r = img.recover().unwrap();
    assert!(r.stats.clean && r.overlay.is_empty(), "{:?}", r.stats);
    assert_eq!(r.stats.head, (1, 2));
}

#[test]
fn committed_buffer_is_replayed() {
    let mut img = Img::new();
    let end = img.record(0, 1, (1, 0), &buffer_trans(5, true));
    let r = img.recover().unwrap();
    assert_eq!(r.stats.head, (1, end));
    assert_eq!(r.stats.tail, (1, 0));
    assert_eq!(r.stats.transactions, 1);
    assert_eq!(r.stats.buffers_replayed, 1);
    assert_eq!(replayed_target(&r), payload());
    assert_eq!(r.overlay.bytes_held(), 512);
}

#[test]
fn transaction_without_commit_is_dropped() {
    let mut img = Img::new();
    img.record(0, 1, (1, 0), &buffer_trans(5, false));
    let r = img.recover().unwrap();
    assert!(r.overlay.is_empty());
    assert_eq!((r.stats.transactions, r.stats.uncommitted), (0, 1));
}

#[test]
fn torn_last_record_is_dropped() {
    let mut img = Img::new();
    let mid = img.record(0, 1, (1, 0), &buffer_trans(5, true));
    let end = img.record(mid, 1, (1, 0), &buffer_trans(6, true));
    // The last record's data block never reached the disk: it keeps the old cycle.
    img.block_mut(end - 1)[..4].copy_from_slice(&0u32.to_be_bytes());
    let r = img.recover().unwrap();
    assert_eq!(r.stats.head, (1, mid));
    assert_eq!(r.stats.transactions, 1);
}

#[test]
fn head_and_tail_found_in_a_wrapped_log() {
    let mut img = Img::new();
    // Cycle 1 fills the whole log with records of a transaction nobody started.
    let mut blk = 0;
    while blk + 2 <= LOG_BBS {
        blk = img.record(blk, 1, (1, 0), &[op(77, 0, &[1; 8])]);
    }
    // A transaction starts at the end of cycle 1 and finishes in cycle 2 after the wrap,
    // its buffer region split across the two records.
    let tail = LOG_BBS - 4;
    let p = payload();
    let first = img.record(
        tail,
        1,
        (1, tail),
        &[
            op(5, START, &[]),
            op(5, 0, &trans_header()),
            op(5, 0, &buf_format(TARGET_DADDR, 2)),
            op(5, CONTINUE, &p[..50]),
        ],
    );
    assert_eq!(first, LOG_BBS - 2);
    img.record(first, 1, (1, tail), &[op(77, 0, &[1; 4])]);
    let end = img.record(
        0,
        2,
        (1, tail),
        &[op(5, WAS_CONT | 0x10, &p[50..]), op(5, COMMIT, &[])],
    );
    let r = img.recover().unwrap();
    assert_eq!(r.stats.head, (2, end));
    assert_eq!(r.stats.tail, (1, tail));
    assert_eq!(r.stats.records, 3);
    assert_eq!(replayed_target(&r), p);
}

#[test]
fn cancelled_buffer_is_not_replayed() {
    let mut img = Img::new();
    let mid = img.record(0, 1, (1, 0), &buffer_trans(5, true));
    let mut cancel = buf_format(TARGET_DADDR, 1);
    cancel[4..6].copy_from_slice(&2u16.to_le_bytes());
    img.record(
        mid,
        1,
        (1, 0),
        &[
            op(6, START, &[]),
            op(6, 0, &trans_header()),
            op(6, 0, &cancel),
            op(6, COMMIT, &[]),
        ],
    );
    let r = img.recover().unwrap();
    assert_eq!(r.stats.cancel_records, 1);
    assert_eq!(r.stats.cancelled_items, 1);
    assert!(r.overlay.is_empty());
}

#[test]
fn hostile_record_with_absurd_length() {
    let mut img = Img::new();
    img.record(0, 1, (1, 0), &buffer_trans(5, true));
    img.block_mut(0)[12..16].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    assert_eq!(corrupt(img.recover()), CorruptKind::XfsLogRecordLength);
}

#[test]
fn hostile_cycle_numbers_that_lie() {
    let mut img = Img::new();
    img.record(0, 5, (5, 0), &buffer_trans(5, true));
    // The last block claims cycle 2: neither the previous cycle nor never written.
    img.block_mut(LOG_BBS - 1)[..4].copy_from_slice(&2u32.to_be_bytes());
    assert_eq!(corrupt(img.recover()), CorruptKind::XfsLogCycle);
}

/// A record whose header claims an older cycle than its neighbours reads as the end of
/// what was written (as the kernel reads it): what follows is not replayed.
#[test]
fn record_of_an_older_cycle_ends_the_log() {
    let mut img = Img::new();
    let mid = img.record(0, 1, (1, 0), &buffer_trans(5, true));
    img.record(mid, 1, (1, 0), &buffer_trans(6, true));
    img.block_mut(mid)[4..8].copy_from_slice(&0u32.to_be_bytes());
    let r = img.recover().unwrap();
    assert_eq!(r.stats.head, (1, mid));
    assert_eq!(r.stats.transactions, 1);
}

#[test]
fn hostile_tail_after_head() {
    let mut img = Img::new();
    img.record(0, 1, (1, 300), &buffer_trans(5, true));
    assert_eq!(corrupt(img.recover()), CorruptKind::XfsLogTail);
}

#[test]
fn hostile_op_header_past_the_record() {
    let mut img = Img::new();
    img.record(0, 1, (1, 0), &buffer_trans(5, true));
    // The payload op (after the start, header and format ops) claims 100,000 bytes.
    let at = 12 + (12 + 16) + (12 + 24) + 4;
    patch_data(&mut img, at, &100_000u32.to_be_bytes());
    assert_eq!(corrupt(img.recover()), CorruptKind::XfsLogOpHeader);
}

/// Patches the data of the record at block 0 (offset within its data) and rewrites its
/// cycle data and checksum.
fn patch_data(img: &mut Img, off: usize, bytes: &[u8]) {
    let hdr = img.block_mut(0).to_vec();
    let h_len = u32::from_be_bytes(hdr[12..16].try_into().unwrap()) as usize;
    let bblks = h_len.div_ceil(512);
    let mut data = Vec::new();
    for i in 0..bblks {
        let mut b = img.block_mut(1 + i as u64).to_vec();
        b[..4].copy_from_slice(&hdr[44 + 4 * i..48 + 4 * i]);
        data.extend_from_slice(&b);
    }
    data[off..off + bytes.len()].copy_from_slice(bytes);
    data.truncate(h_len);
    let cycle = u32::from_be_bytes(hdr[4..8].try_into().unwrap());
    let mut hdr = hdr;
    let mut padded = data.clone();
    padded.resize(bblks * 512, 0);
    for i in 0..bblks {
        let word: [u8; 4] = padded[i * 512..i * 512 + 4].try_into().unwrap();
        hdr[44 + 4 * i..48 + 4 * i].copy_from_slice(&word);
        padded[i * 512..i * 512 + 4].copy_from_slice(&cycle.to_be_bytes());
    }
    let mut crc = crc32c_raw(!0, &hdr[..32]);
    crc = crc32c_raw(crc, &[0; 4]);
    crc = crc32c_raw(crc, &hdr[36..328]);
    crc = crc32c_raw(crc, &padded[..h_len]);
    hdr[32..36].copy_from_slice(&(!crc).to_le_bytes());
    img.block_mut(0).copy_from_slice(&hdr);
    for i in 0..bblks {
        let b = padded[i * 512..(i + 1) * 512].to_vec();
        img.block_mut(1 + i as u64).copy_from_slice(&b);
    }
}

#[test]
fn hostile_item_with_absurd_region_count() {
    let mut img = Img::new();
    let mut ops = buffer_trans(5, true);
    ops[2].data = buf_format(TARGET_DADDR, 60_000);
    img.record(0, 1, (1, 0), &ops);
    assert_eq!(corrupt(img.recover()), CorruptKind::XfsLogItemRegions);
}

#[test]
fn hostile_item_with_more_regions_than_announced() {
    let mut img = Img::new();
    let mut ops = buffer_trans(5, false);
    ops[2].data = buf_format(TARGET_DADDR, 1);
    ops.push(op(5, 0, &payload()));
    ops.push(op(5, 0, &[1, 0, 0, 0]));
    ops.push(op(5, COMMIT, &[]));
    img.record(0, 1, (1, 0), &ops);
    // The payload op becomes a new item whose first word announces 0x...: absurd or bad.
    assert!(matches!(
        corrupt(img.recover()),
        CorruptKind::XfsLogItemRegions | CorruptKind::XfsLogItem
    ));
}

#[test]
fn hostile_transaction_header_magic() {
    let mut img = Img::new();
    let mut ops = buffer_trans(5, true);
    ops[1].data[0] = b'X';
    img.record(0, 1, (1, 0), &ops);
    assert_eq!(corrupt(img.recover()), CorruptKind::XfsLogTransHeader);
}

#[test]
fn hostile_buffer_outside_the_device() {
    let mut img = Img::new();
    let mut ops = buffer_trans(5, true);
    ops[2].data = buf_format(1 << 40, 2);
    img.record(0, 1, (1, 0), &ops);
    assert_eq!(corrupt(img.recover()), CorruptKind::XfsLogBufferRange);
}

#[test]
fn hostile_record_of_another_filesystem() {
    let mut img = Img::new();
    img.record(0, 1, (1, 0), &buffer_trans(5, true));
    img.block_mut(0)[304] ^= 1;
    assert_eq!(corrupt(img.recover()), CorruptKind::XfsLogUuid);
}

#[test]
fn hostile_inode_item_pointing_at_no_inode() {
    let mut img = Img::new();
    let mut f = Vec::new();
    f.extend_from_slice(&0x123bu16.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.resize(40, 0);
    f.extend_from_slice(&TARGET_DADDR.to_le_bytes());
    f.extend_from_slice(&8u32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    let mut core = vec![0u8; 176];
    core[..2].copy_from_slice(&0x494eu16.to_le_bytes());
    core[4] = 3;
    img.record(
        0,
        1,
        (1, 0),
        &[
            op(5, START, &[]),
            op(5, 0, &trans_header()),
            op(5, 0, &f),
            op(5, 0, &core),
            op(5, COMMIT, &[]),
        ],
    );
    assert_eq!(corrupt(img.recover()), CorruptKind::XfsLogInodeItem);
}

#[test]
fn hostile_icreate_outside_the_ag() {
    let mut img = Img::new();
    let mut ic = Vec::new();
    ic.extend_from_slice(&0x123fu16.to_le_bytes());
    ic.extend_from_slice(&1u16.to_le_bytes());
    for v in [0u32, 5000, 64, 512, 8, 1] {
        ic.extend_from_slice(&v.to_be_bytes());
    }
    img.record(
        0,
        1,
        (1, 0),
        &[
            op(5, START, &[]),
            op(5, 0, &trans_header()),
            op(5, 0, &ic),
            op(5, COMMIT, &[]),
        ],
    );
    assert_eq!(corrupt(img.recover()), CorruptKind::XfsLogIcreate);
}

#[test]
fn icreate_initialises_the_chunk_with_checksums() {
    let mut img = Img::new();
    let mut ic = Vec::new();
    ic.extend_from_slice(&0x123fu16.to_le_bytes());
    ic.extend_from_slice(&1u16.to_le_bytes());
    // AG 0, block 64, 64 inodes of 512 bytes in 8 blocks, generation 0x1234.
    for v in [0u32, 64, 64, 512, 8, 0x1234] {
        ic.extend_from_slice(&v.to_be_bytes());
    }
    img.record(
        0,
        1,
        (1, 0),
        &[
            op(5, START, &[]),
            op(5, 0, &trans_header()),
            op(5, 0, &ic),
            op(5, COMMIT, &[]),
        ],
    );
    let r = img.recover().unwrap();
    assert_eq!(r.stats.icreates, 1);
    assert_eq!(r.overlay.bytes_held(), 8 * 4096);
    let mut chunk = vec![0u8; 8 * 4096];
    r.overlay.apply(64 * 4096, &mut chunk);
    for (i, dip) in chunk.chunks(512).enumerate() {
        assert_eq!(&dip[..2], b"IN");
        assert_eq!(dip[4], 3);
        assert_eq!(&dip[92..96], &0x1234u32.to_be_bytes());
        assert_eq!(&dip[96..100], &[0xff; 4]);
        assert_eq!(&dip[152..160], &(512 + i as u64).to_be_bytes());
        let mut copy = dip.to_vec();
        update_cksum(&mut copy, 100);
        assert_eq!(copy, dip, "inode {i} checksum");
    }
}

#[test]
fn unknown_item_type_falls_back_to_the_last_checkpoint() {
    let mut img = Img::new();
    let mut ops = buffer_trans(5, false);
    ops.push(op(5, 0, &[0x99, 0x12, 1, 0, 0, 0, 0, 0]));
    ops.push(op(5, COMMIT, &[]));
    img.record(0, 1, (1, 0), &ops);
    let r = img.recover().unwrap();
    assert!(r.stats.fell_back.is_some());
    assert!(r.overlay.is_empty());
}

#[test]
fn unfinished_bmap_intent_falls_back() {
    let mut img = Img::new();
    let mut ops = buffer_trans(5, false);
    let mut bui = Vec::new();
    bui.extend_from_slice(&0x1244u16.to_le_bytes());
    bui.extend_from_slice(&1u16.to_le_bytes());
    bui.extend_from_slice(&1u32.to_le_bytes());
    bui.extend_from_slice(&0xabcdu64.to_le_bytes());
    bui.resize(48, 0);
    ops.push(op(5, 0, &bui));
    ops.push(op(5, COMMIT, &[]));
    img.record(0, 1, (1, 0), &ops);
    let r = img.recover().unwrap();
    assert!(r.stats.fell_back.as_deref().unwrap().contains("intent"));
    assert!(r.overlay.is_empty());
}

/// The same logged inode core written by a little-endian and a big-endian host converts
/// to the same on-disk big-endian inode.
#[test]
fn log_dinode_byte_order_conversion() {
    fn core(be: bool, bigtime: bool) -> Vec<u8> {
        let mut c = vec![0u8; 176];
        let mut put = |off: usize, v: u64, len: usize| {
            let bytes = if be {
                v.to_be_bytes()[8 - len..].to_vec()
            } else {
                v.to_le_bytes()[..len].to_vec()
            };
            c[off..off + len].copy_from_slice(&bytes);
        };
        put(0, 0x494e, 2);
        put(2, 0o100644, 2);
        put(8, 1000, 4);
        put(12, 100, 4);
        put(16, 2, 4);
        if bigtime {
            put(32, 0x0123_4567_89ab_cdef, 8);
        } else {
            put(32, 1_700_000_000, 4);
            put(36, 999, 4);
        }
        put(56, 123_456, 8);
        put(64, 31, 8);
        put(76, 3, 4);
        put(92, 77, 4);
        put(120, if bigtime { 1 << 3 } else { 0 }, 8);
        put(152, 0x80, 8);
        c[4] = 3;
        c[5] = 2;
        c
    }
    for bigtime in [false, true] {
        let mut le = vec![0u8; 512];
        let mut be = vec![0u8; 512];
        log_dinode_to_disk(&core(false, bigtime), false, &mut le, 0x1_0000_0020);
        log_dinode_to_disk(&core(true, bigtime), true, &mut be, 0x1_0000_0020);
        assert_eq!(le, be);
        assert_eq!(&le[0..4], &[0x49, 0x4e, 0x81, 0xa4]);
        assert_eq!(&le[8..12], &1000u32.to_be_bytes());
        assert_eq!(&le[56..64], &123_456u64.to_be_bytes());
        assert_eq!(&le[112..120], &0x1_0000_0020u64.to_be_bytes());
        if bigtime {
            assert_eq!(&le[32..40], &0x0123_4567_89ab_cdefu64.to_be_bytes());
        } else {
            assert_eq!(&le[32..36], &1_700_000_000u32.to_be_bytes());
            assert_eq!(&le[36..40], &999u32.to_be_bytes());
        }
    }
}

#[test]
fn bmbt_root_converts_to_the_on_disk_form() {
    // In-memory root: 72-byte header, room for 3 records (block of 72 + 3 * 16 bytes).
    let mut src = vec![0u8; 72 + 48];
    src[4..6].copy_from_slice(&1u16.to_be_bytes());
    src[6..8].copy_from_slice(&2u16.to_be_bytes());
    for i in 0..2u64 {
        src[72 + 8 * i as usize..80 + 8 * i as usize].copy_from_slice(&(10 + i).to_be_bytes());
        let p = 72 + 3 * 8 + 8 * i as usize;
        src[p..p + 8].copy_from_slice(&(500 + i).to_be_bytes());
    }
    let mut dst = vec![0u8; 4 + 4 * 16];
    bmbt_to_bmdr(&src, &mut dst, true).unwrap();
    assert_eq!(&dst[..4], &[0, 1, 0, 2]);
    assert_eq!(&dst[4..12], &10u64.to_be_bytes());
    assert_eq!(&dst[12..20], &11u64.to_be_bytes());
    assert_eq!(&dst[36..44], &500u64.to_be_bytes());
    assert_eq!(&dst[44..52], &501u64.to_be_bytes());
}

#[test]
fn overlay_apply_covers_partial_sectors() {
    let mut o = LogOverlay::empty();
    o.put_sector(2, &[9u8; 512]);
    let mut buf = vec![0u8; 100];
    o.apply(1000, &mut buf);
    assert_eq!(&buf[..24], &[0u8; 24]);
    assert_eq!(&buf[24..], &[9u8; 76]);
    let mut tail = vec![0u8; 10];
    o.apply(1530, &mut tail);
    assert_eq!(&tail[..6], &[9u8; 6]);
    o.apply(u64::MAX - 3, &mut tail);
}

#[test]
fn external_log_is_unsupported() {
    let mut sb = superblock();
    sb[48..56].copy_from_slice(&0u64.to_be_bytes());
    assert!(matches!(
        LogGeometry::from_superblock(&sb, DEV_LEN as u64),
        Err(GuestError::Unsupported(_))
    ));
}

/// Random byte flips of valid logs never panic or hang.
#[test]
fn mutated_logs_never_panic() {
    let mut img = Img::new();
    let mid = img.record(0, 1, (1, 0), &buffer_trans(5, true));
    img.record(mid, 1, (1, 0), &buffer_trans(6, true));
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let mut m = Img {
            dev: img.dev.clone(),
        };
        for _ in 0..1 + next() % 4 {
            let at = LOG_BYTE + (next() % (8 * 512)) as usize;
            m.dev[at] = next() as u8;
        }
        let _ = m.recover();
    }
}

/// An inode item for a v2 inode at the start of the test buffer, logged by a big-endian
/// host, with the given flush counter.
fn v2_inode_trans(tid: u32, flushiter: u16) -> Vec<Op> {
    let mut f = Vec::new();
    f.extend_from_slice(&0x123bu16.to_be_bytes());
    f.extend_from_slice(&2u16.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes());
    f.resize(40, 0);
    f.extend_from_slice(&TARGET_DADDR.to_be_bytes());
    f.extend_from_slice(&16u32.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    let mut core = vec![0u8; 96];
    core[..2].copy_from_slice(&0x494eu16.to_be_bytes());
    core[2..4].copy_from_slice(&0o100600u16.to_be_bytes());
    core[4] = 2;
    core[5] = 2;
    core[16..20].copy_from_slice(&1u32.to_be_bytes());
    core[30..32].copy_from_slice(&flushiter.to_be_bytes());
    core[56..64].copy_from_slice(&4242u64.to_be_bytes());
    let mut header = trans_header();
    header[..4].copy_from_slice(&0x5452_414eu32.to_be_bytes());
    vec![
        op(tid, START, &[]),
        op(tid, 0, &header),
        op(tid, 0, &f),
        op(tid, 0, &core),
        op(tid, COMMIT, &[]),
    ]
}

/// On v4 filesystems an inode item older than the inode on disk (by its flush counter) is
/// skipped, a newer one replayed with the counter reset; the record here comes from a
/// big-endian host (h_fmt 2).
#[test]
fn v2_inode_flush_counter_decides_replay() {
    for (logged, replayed) in [(3u16, false), (7, true)] {
        let mut img = Img::new();
        img.dev[..512].copy_from_slice(&superblock_v4());
        let at = TARGET_DADDR as usize * 512;
        img.dev[at..at + 2].copy_from_slice(b"IN");
        img.dev[at + 4] = 2;
        img.dev[at + 30..at + 32].copy_from_slice(&5u16.to_be_bytes());
        img.record(0, 1, (1, 0), &v2_inode_trans(5, logged));
        img.block_mut(0)[300..304].copy_from_slice(&2u32.to_be_bytes());
        // The header changed: recompute its checksum as the writer does.
        let h = img.block_mut(0).to_vec();
        let h_len = u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize;
        let data = img.block_mut(1).to_vec();
        let mut crc = crc32c_raw(!0, &h[..32]);
        crc = crc32c_raw(crc, &[0; 4]);
        crc = crc32c_raw(crc, &h[36..328]);
        crc = crc32c_raw(crc, &data[..h_len]);
        img.block_mut(0)[32..36].copy_from_slice(&(!crc).to_le_bytes());
        let r = img.recover().unwrap();
        assert_eq!(r.stats.inodes_replayed == 1, replayed, "{:?}", r.stats);
        let mut dip = vec![0u8; 256];
        r.overlay.apply(TARGET_DADDR * 512, &mut dip);
        if replayed {
            assert_eq!(&dip[2..4], &0o100600u16.to_be_bytes());
            assert_eq!(&dip[30..32], &[0, 0]);
            assert_eq!(&dip[56..64], &4242u64.to_be_bytes());
        } else {
            assert_eq!(r.stats.inodes_skipped, 1);
        }
    }
}
