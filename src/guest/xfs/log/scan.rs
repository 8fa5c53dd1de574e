//! The physical log: head and tail, records, and the transactions they carry.
//!
//! Positions are "absolute" block numbers, `cycle * log_bbs + block`: the log is circular
//! and each pass over it increments the cycle, so ordering, wrapping and the cycle a block
//! must carry all follow from one number.

use std::collections::HashMap;
use std::io;

use super::super::super::bytes::{read_u16le, read_u32be, read_u32le, read_u64be, read_u8};
use super::super::super::crc::crc32c_raw;
use super::super::super::{CorruptKind, GuestError};
use super::{LogGeometry, ReplayStats, BBSIZE};
use crate::source::ByteSource;

pub const XLOG_HEADER_MAGIC_NUM: u32 = 0xFEED_BABE;
const XLOG_VERSION_OKBITS: u32 = 1 | 2;
const XLOG_HEADER_CYCLE_SIZE: u64 = 32 * 1024;
const XLOG_MAX_RECORD_BSIZE: u32 = 256 * 1024;
/// Cycle words held in one header block (the record header or an extended header).
const CYCLE_WORDS: u64 = XLOG_HEADER_CYCLE_SIZE / BBSIZE;
/// Records that may be in flight at once: how many the head verification may drop.
const XLOG_MAX_ICLOGS: usize = 8;
const XFS_TRANSACTION: u8 = 0x69;
const XFS_LOG: u8 = 0xaa;
const XLOG_START_TRANS: u8 = 0x01;
const XLOG_COMMIT_TRANS: u8 = 0x02;
const XLOG_CONTINUE_TRANS: u8 = 0x04;
const XLOG_WAS_CONT_TRANS: u8 = 0x08;
const XLOG_END_TRANS: u8 = 0x10;
const XLOG_UNMOUNT_TRANS: u8 = 0x20;
const XFS_TRANS_HEADER_MAGIC: u32 = 0x5452_414e;
const TRANS_HEADER_SIZE: usize = 16;
/// `XLOG_MAX_REGIONS_IN_ITEM`: a 64 KiB buffer of 128-byte chunks, every other one dirty.
pub const XLOG_MAX_REGIONS_IN_ITEM: u16 = (65536 / 128 / 2 + 1) as u16;
/// Transactions open at once; the kernel's CIL has a handful, a log a few thousand at most.
const MAX_OPEN_TRANSACTIONS: usize = 1 << 16;

/// How a scan ends early: bad bytes, or a log that cannot be replayed faithfully.
#[derive(Debug)]
pub enum ScanError {
    Guest(GuestError),
    FallBack(String),
}

impl From<GuestError> for ScanError {
    fn from(e: GuestError) -> Self {
        ScanError::Guest(e)
    }
}

impl From<CorruptKind> for ScanError {
    fn from(k: CorruptKind) -> Self {
        ScanError::Guest(GuestError::Corrupt(k))
    }
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Guest(GuestError::Io(e))
    }
}

impl From<ScanError> for GuestError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::Guest(g) => g,
            ScanError::FallBack(why) => GuestError::Unsupported(why),
        }
    }
}

/// The part of the log to replay: absolute blocks `[tail, head)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRange {
    pub tail: u64,
    pub head: u64,
}

/// A committed transaction: its start LSN and its items, each a list of regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub lsn: u64,
    /// The logging host wrote the item formats big-endian (from the record's `h_fmt`).
    pub big_endian: bool,
    pub items: Vec<Vec<Vec<u8>>>,
}

/// One record read and unpacked.
#[derive(Debug)]
struct Record {
    /// Blocks taken: header blocks plus data blocks.
    blocks: u64,
    lsn: u64,
    tail_lsn: u64,
    num_logops: u32,
    big_endian: bool,
    /// The data, with each block's first word restored.
    data: Vec<u8>,
}

/// Why a record did not verify.
enum Bad {
    /// The record was not fully written (cycle stamps) or its CRC fails.
    Torn(CorruptKind),
    Hard(ScanError),
}

impl From<ScanError> for Bad {
    fn from(e: ScanError) -> Self {
        Bad::Hard(e)
    }
}

impl From<CorruptKind> for Bad {
    fn from(k: CorruptKind) -> Self {
        Bad::Hard(k.into())
    }
}

impl From<io::Error> for Bad {
    fn from(e: io::Error) -> Self {
        Bad::Hard(e.into())
    }
}

pub struct Log<'a> {
    dev: &'a dyn ByteSource,
    geo: &'a LogGeometry,
    bbs: u64,
}

impl<'a> Log<'a> {
    pub fn new(dev: &'a dyn ByteSource, geo: &'a LogGeometry) -> Result<Log<'a>, GuestError> {
        if geo.log_bbs < 2 || geo.log_bbs > u64::from(u32::MAX) {
            return Err(CorruptKind::XfsLogGeometry.into());
        }
        Ok(Log {
            dev,
            geo,
            bbs: geo.log_bbs,
        })
    }

    /// `n` blocks from absolute block `abs`, wrapping at the end of the log.
    fn read_blocks(&self, abs: u64, n: u64) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; (n * BBSIZE) as usize];
        let mut done = 0u64;
        while done < n {
            let blk = (abs + done) % self.bbs;
            let run = (self.bbs - blk).min(n - done);
            let start = (done * BBSIZE) as usize;
            let end = ((done + run) * BBSIZE) as usize;
            self.dev
                .read_exact_at(&mut out[start..end], self.geo.log_start + blk * BBSIZE)?;
            done += run;
        }
        Ok(out)
    }

    /// The cycle a block was last written in (its first word, or a header's second).
    fn cycle_of(block: &[u8]) -> u32 {
        if read_u32be(block, 0) == XLOG_HEADER_MAGIC_NUM {
            read_u32be(block, 4)
        } else {
            read_u32be(block, 0)
        }
    }

    fn cycle_at(&self, blk: u64) -> io::Result<u32> {
        let mut b = [0u8; 8];
        self.dev
            .read_exact_at(&mut b, self.geo.log_start + blk * BBSIZE)?;
        Ok(Self::cycle_of(&b))
    }

    /// Finds head and tail. `None`: the log is clean (or was never written).
    pub fn find_head_tail(&self, stats: &mut ReplayStats) -> Result<Option<LogRange>, GuestError> {
        let n = self.bbs;
        let first = self.cycle_at(0)?;
        if first == 0 {
            // mkfs writes a record at block 0: a zero cycle there means an empty log.
            return Ok(None);
        }
        let last = self.cycle_at(n - 1)?;
        // The end of the log is in the previous cycle, never written, or (wrapped exactly)
        // in the same cycle as the start: anything else is a lie.
        if last != first && last != 0 && last.checked_add(1) != Some(first) {
            return Err(CorruptKind::XfsLogCycle.into());
        }
        // Blocks [0, head) carry `first`; from head on the previous cycle (or zeros).
        let mut head = if first == last {
            n
        } else {
            let (mut lo, mut hi) = (0u64, n - 1);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if self.cycle_at(mid)? == first {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            hi
        };
        // Records are written out of order (up to 8 in flight): a block of an older cycle
        // inside the last records' span moves the head back to it.
        let window = if self.geo.logv2 { 4096 } else { 512 }.min(head);
        let win = self.read_blocks(head - window, window)?;
        for i in 0..window {
            let b = win.get((i * BBSIZE) as usize..).unwrap_or(&[]);
            if Self::cycle_of(b) != first {
                head = head - window + i;
                break;
            }
        }
        let mut head_abs = u64::from(first)
            .checked_mul(n)
            .and_then(|x| x.checked_add(head))
            .ok_or(CorruptKind::XfsLogCycle)?;

        // The last complete record before the head; a torn one is dropped (the head moves
        // back to its start) and the one before it tried, at most XLOG_MAX_ICLOGS times.
        let search_floor = head_abs.saturating_sub(n.min(4096 + 1024));
        let mut abs = head_abs;
        let mut dropped = 0usize;
        let last_rec = loop {
            let hdr_abs = loop {
                if abs <= search_floor {
                    return Err(CorruptKind::XfsLogRecordHeader.into());
                }
                abs -= 1;
                let b = self.read_blocks(abs, 1)?;
                if read_u32be(&b, 0) == XLOG_HEADER_MAGIC_NUM
                    && u64::from(read_u32be(&b, 4)) == abs / n
                {
                    break abs;
                }
            };
            match self.read_record(hdr_abs) {
                Ok(rec) if hdr_abs + rec.blocks == head_abs => break (hdr_abs, rec),
                Ok(_) | Err(Bad::Torn(_)) => {
                    dropped += 1;
                    if dropped > XLOG_MAX_ICLOGS {
                        return Err(CorruptKind::XfsLogCycle.into());
                    }
                    head_abs = hdr_abs;
                }
                Err(Bad::Hard(e)) => return Err(e.into()),
            }
        };
        let (rec_abs, rec) = last_rec;
        stats.head = ((head_abs / n) as u32, head_abs % n);
        // An unmount record as the last record: clean.
        if rec.num_logops == 1 {
            let flags = read_u8(&rec.data, 9);
            let client = read_u8(&rec.data, 8);
            if client == XFS_LOG && flags & XLOG_UNMOUNT_TRANS != 0 {
                stats.tail = stats.head;
                return Ok(None);
            }
        }
        let tail_cycle = rec.tail_lsn >> 32;
        let tail_blk = rec.tail_lsn & 0xffff_ffff;
        if tail_blk >= n {
            return Err(CorruptKind::XfsLogTail.into());
        }
        let tail_abs = tail_cycle
            .checked_mul(n)
            .and_then(|x| x.checked_add(tail_blk))
            .ok_or(CorruptKind::XfsLogTail)?;
        if tail_abs > rec_abs || head_abs - tail_abs > n {
            return Err(CorruptKind::XfsLogTail.into());
        }
        stats.tail = (tail_cycle as u32, tail_blk);
        if tail_abs == head_abs {
            return Ok(None);
        }
        Ok(Some(LogRange {
            tail: tail_abs,
            head: head_abs,
        }))
    }

    /// Reads, verifies and unpacks the record whose header is at absolute block `abs`.
    fn read_record(&self, abs: u64) -> Result<Record, Bad> {
        let n = self.bbs;
        let hdr = self.read_blocks(abs, 1)?;
        if read_u32be(&hdr, 0) != XLOG_HEADER_MAGIC_NUM {
            return Err(CorruptKind::XfsLogRecordHeader.into());
        }
        let h_cycle = read_u32be(&hdr, 4);
        let h_version = read_u32be(&hdr, 8);
        let h_len = read_u32be(&hdr, 12);
        let h_lsn = read_u64be(&hdr, 16);
        let h_tail_lsn = read_u64be(&hdr, 24);
        let h_crc = read_u32le(&hdr, 32);
        let h_num_logops = read_u32be(&hdr, 40);
        let h_fmt = read_u32be(&hdr, 300);
        let h_fs_uuid: [u8; 16] = super::super::super::bytes::read_array(&hdr, 304);
        let h_size = read_u32be(&hdr, 320);
        if h_version == 0 || h_version & !XLOG_VERSION_OKBITS != 0 || !(1..=3).contains(&h_fmt) {
            return Err(CorruptKind::XfsLogRecordHeader.into());
        }
        if u64::from(h_cycle) != abs / n {
            return Err(CorruptKind::XfsLogCycle.into());
        }
        if h_fs_uuid != self.geo.uuid {
            return Err(CorruptKind::XfsLogUuid.into());
        }
        if h_len == 0 || h_len > XLOG_MAX_RECORD_BSIZE {
            return Err(CorruptKind::XfsLogRecordLength.into());
        }
        let hblks: u64 = if h_version & 2 != 0 && u64::from(h_size) > XLOG_HEADER_CYCLE_SIZE {
            if h_size > XLOG_MAX_RECORD_BSIZE {
                return Err(CorruptKind::XfsLogRecordLength.into());
            }
            u64::from(h_size).div_ceil(XLOG_HEADER_CYCLE_SIZE)
        } else {
            1
        };
        let bblks = u64::from(h_len).div_ceil(BBSIZE);
        if bblks > hblks * CYCLE_WORDS || hblks + bblks > n {
            return Err(CorruptKind::XfsLogRecordLength.into());
        }
        let all = self.read_blocks(abs, hblks + bblks)?;
        let (headers, rest) = all.split_at((hblks * BBSIZE) as usize);
        let mut data = rest.to_vec();
        // Every data block must carry the cycle of its place: the record's, or the next one
        // for the part of a record that wrapped to the start of the log (the kernel bumps
        // those stamps when it splits the write). Otherwise it was never written.
        for i in 0..bblks {
            let mut want = ((abs + hblks + i) / n) as u32;
            if want == XLOG_HEADER_MAGIC_NUM {
                want = want.wrapping_add(1);
            }
            if read_u32be(&data, (i * BBSIZE) as usize) != want {
                return Err(Bad::Torn(CorruptKind::XfsLogCycle));
            }
        }
        let len = h_len as usize;
        if self.geo.v5 || h_crc != 0 {
            let xheads = if self.geo.logv2 {
                u64::from(h_len).div_ceil(XLOG_HEADER_CYCLE_SIZE)
            } else {
                1
            };
            let mut ok = false;
            // The header's checksummed size differs between i386 (324) and the rest (328).
            for hsize in [328usize, 324] {
                let mut crc = crc32c_raw(!0, &hdr[..32]);
                crc = crc32c_raw(crc, &[0; 4]);
                crc = crc32c_raw(crc, &hdr[36..hsize]);
                for i in 1..xheads {
                    let off = (i * BBSIZE) as usize;
                    if let Some(x) = headers.get(off..off + 4 + 4 * CYCLE_WORDS as usize) {
                        crc = crc32c_raw(crc, x);
                    }
                }
                crc = crc32c_raw(crc, data.get(..len).unwrap_or(&[]));
                if !crc == h_crc {
                    ok = true;
                    break;
                }
            }
            if !ok {
                return Err(Bad::Torn(CorruptKind::XfsLogRecordCrc));
            }
        }
        // Restore the first word of every data block from the cycle data.
        for i in 0..bblks {
            let (j, k) = (i / CYCLE_WORDS, i % CYCLE_WORDS);
            let src = if j == 0 {
                44 + 4 * k
            } else {
                j * BBSIZE + 4 + 4 * k
            } as usize;
            let word: [u8; 4] = super::super::super::bytes::read_array(headers, src);
            let dst = (i * BBSIZE) as usize;
            if let Some(d) = data.get_mut(dst..dst + 4) {
                d.copy_from_slice(&word);
            }
        }
        data.truncate(len);
        Ok(Record {
            blocks: hblks + bblks,
            lsn: h_lsn,
            tail_lsn: h_tail_lsn,
            num_logops: h_num_logops,
            big_endian: h_fmt != 1,
            data,
        })
    }

    /// Reads the records from tail to head and calls `commit` with every committed
    /// transaction, in log order.
    pub fn scan(
        &self,
        range: &LogRange,
        stats: &mut ReplayStats,
        commit: &mut dyn FnMut(Transaction, &mut ReplayStats) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        let mut open: HashMap<u32, Building> = HashMap::new();
        let mut abs = range.tail;
        let mut records = 0u32;
        while abs < range.head {
            let rec = match self.read_record(abs) {
                Ok(r) => r,
                Err(Bad::Torn(kind)) => return Err(kind.into()),
                Err(Bad::Hard(e)) => return Err(e),
            };
            records += 1;
            abs += rec.blocks;
            if abs > range.head {
                return Err(CorruptKind::XfsLogCycle.into());
            }
            process_ops(&rec, &mut open, stats, commit)?;
        }
        stats.records = records;
        stats.uncommitted = open.len() as u32;
        Ok(())
    }
}

/// A transaction being reassembled.
#[derive(Default)]
struct Building {
    lsn: u64,
    big_endian: bool,
    /// The transaction header has begun (the kernel's placeholder item).
    started: bool,
    header: Vec<u8>,
    /// Items: (regions announced by the first region, regions).
    items: Vec<(u16, Vec<Vec<u8>>)>,
}

fn host_u16(b: &[u8], off: usize, big_endian: bool) -> u16 {
    if big_endian {
        u16::from_be_bytes([read_u8(b, off), read_u8(b, off + 1)])
    } else {
        read_u16le(b, off)
    }
}

fn host_u32(b: &[u8], off: usize, big_endian: bool) -> u32 {
    if big_endian {
        read_u32be(b, off)
    } else {
        read_u32le(b, off)
    }
}

/// Splits one record's data into operations and feeds them to their transactions.
fn process_ops(
    rec: &Record,
    open: &mut HashMap<u32, Building>,
    stats: &mut ReplayStats,
    commit: &mut dyn FnMut(Transaction, &mut ReplayStats) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    let end = rec.data.len();
    let mut dp = 0usize;
    let mut left = rec.num_logops;
    while dp < end && left > 0 {
        if dp + 12 > end {
            return Err(CorruptKind::XfsLogOpHeader.into());
        }
        let tid = read_u32be(&rec.data, dp);
        let len = read_u32be(&rec.data, dp + 4) as usize;
        let client = read_u8(&rec.data, dp + 8);
        let raw_flags = read_u8(&rec.data, dp + 9);
        dp += 12;
        if client != XFS_TRANSACTION && client != XFS_LOG {
            return Err(CorruptKind::XfsLogOpHeader.into());
        }
        let Some(body) = dp.checked_add(len).and_then(|e| rec.data.get(dp..e)) else {
            return Err(CorruptKind::XfsLogOpHeader.into());
        };
        dp += len;
        left -= 1;
        let Some(t) = open.get_mut(&tid) else {
            // Ops of transactions that started before the tail are skipped; a start op
            // opens a transaction and carries nothing else.
            if raw_flags & XLOG_START_TRANS != 0 {
                if open.len() >= MAX_OPEN_TRANSACTIONS {
                    return Err(CorruptKind::XfsLogTooLarge.into());
                }
                open.insert(
                    tid,
                    Building {
                        lsn: rec.lsn,
                        big_endian: rec.big_endian,
                        ..Building::default()
                    },
                );
            }
            continue;
        };
        let mut flags = raw_flags & !XLOG_END_TRANS;
        if flags & XLOG_WAS_CONT_TRANS != 0 {
            flags &= !XLOG_CONTINUE_TRANS;
        }
        match flags {
            0 | XLOG_CONTINUE_TRANS => add_to_trans(t, body)?,
            XLOG_WAS_CONT_TRANS => add_to_cont_trans(t, body)?,
            XLOG_COMMIT_TRANS => {
                if let Some(t) = open.remove(&tid) {
                    let tr = finish(t)?;
                    commit(tr, stats)?;
                }
            }
            XLOG_UNMOUNT_TRANS => {}
            _ => return Err(CorruptKind::XfsLogOpHeader.into()),
        }
    }
    Ok(())
}

fn add_to_trans(t: &mut Building, body: &[u8]) -> Result<(), ScanError> {
    if body.is_empty() {
        return Ok(());
    }
    if !t.started {
        if body.len() > TRANS_HEADER_SIZE {
            return Err(CorruptKind::XfsLogTransHeader.into());
        }
        t.started = true;
        t.header = body.to_vec();
        return Ok(());
    }
    let need_new = match t.items.last() {
        None => true,
        Some((total, regions)) => *total as usize == regions.len(),
    };
    if need_new {
        if body.len() < 4 {
            return Err(CorruptKind::XfsLogItem.into());
        }
        let size = host_u16(body, 2, t.big_endian);
        if size == 0 || size > XLOG_MAX_REGIONS_IN_ITEM {
            return Err(CorruptKind::XfsLogItemRegions.into());
        }
        t.items.push((size, Vec::new()));
    }
    let Some((total, regions)) = t.items.last_mut() else {
        return Err(CorruptKind::XfsLogItem.into());
    };
    if regions.len() >= *total as usize {
        return Err(CorruptKind::XfsLogItemRegions.into());
    }
    regions.push(body.to_vec());
    Ok(())
}

fn add_to_cont_trans(t: &mut Building, body: &[u8]) -> Result<(), ScanError> {
    let last_region = t.items.last_mut().and_then(|(_, r)| r.last_mut());
    match last_region {
        Some(r) => {
            r.extend_from_slice(body);
            Ok(())
        }
        None if t.header.len() + body.len() <= TRANS_HEADER_SIZE => {
            // The transaction header itself was split across records.
            t.started = true;
            t.header.extend_from_slice(body);
            Ok(())
        }
        None => Err(CorruptKind::XfsLogOpHeader.into()),
    }
}

fn finish(t: Building) -> Result<Transaction, ScanError> {
    if !t.items.is_empty()
        && (t.header.len() != TRANS_HEADER_SIZE
            || host_u32(&t.header, 0, t.big_endian) != XFS_TRANS_HEADER_MAGIC)
    {
        return Err(CorruptKind::XfsLogTransHeader.into());
    }
    let mut items = Vec::with_capacity(t.items.len());
    for (total, regions) in t.items {
        if regions.len() != total as usize {
            return Err(CorruptKind::XfsLogItemRegions.into());
        }
        items.push(regions);
    }
    Ok(Transaction {
        lsn: t.lsn,
        big_endian: t.big_endian,
        items,
    })
}
