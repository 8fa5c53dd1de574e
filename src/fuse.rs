//! The fuser adapter: translates kernel requests into [`VirtSnapFs`] calls and results into
//! replies. No filesystem logic lives here, so the core is tested without FUSE in the loop.
//! Each failure is logged here, once, at the level its kind calls for.

use std::ffi::{OsStr, OsString};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::error::FsError;
use crate::fs::{Attr, KernelCache, NodeKind, VirtSnapFs, Whence};

/// The file handle of reads on files the kernel opened itself (opens answered ENOSYS).
/// The core's own handles start at 1.
const NO_HANDLE: u64 = 0;

/// Largest read the kernel sends us in one request (fuser derives max_pages from it).
const MAX_READ: u32 = 1 << 20;

/// Reads up to this size use their worker's own buffer; larger ones one of the shared ones.
const SMALL_READ: usize = 128 << 10;

/// How many buffers for larger reads exist. Workers are many so that lookups and small reads
/// never queue behind reads waiting for the disk; what bounds the memory reads take is this
/// (a worker's own buffer of 1 MiB for every worker took 17 MiB more with 16 workers).
const LARGE_READ_BUFFERS: usize = 4;

thread_local! {
    /// A worker's buffer for reads up to SMALL_READ, reused for every such request.
    static SMALL_READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The buffers for reads larger than SMALL_READ: a worker waits for one while all are in use.
struct LargeReadBuffers {
    free: parking_lot::Mutex<Vec<Vec<u8>>>,
    returned: parking_lot::Condvar,
}

impl LargeReadBuffers {
    fn new(count: usize) -> LargeReadBuffers {
        LargeReadBuffers {
            free: parking_lot::Mutex::new((0..count).map(|_| Vec::new()).collect()),
            returned: parking_lot::Condvar::new(),
        }
    }

    fn take(&self) -> Vec<u8> {
        let mut free = self.free.lock();
        loop {
            if let Some(buf) = free.pop() {
                return buf;
            }
            self.returned.wait(&mut free);
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        self.free.lock().push(buf);
        self.returned.notify_one();
    }
}

pub struct FuseAdapter {
    fs: Arc<VirtSnapFs>,
    large_reads: LargeReadBuffers,
}

impl FuseAdapter {
    pub fn new(fs: Arc<VirtSnapFs>) -> FuseAdapter {
        FuseAdapter {
            fs,
            large_reads: LargeReadBuffers::new(LARGE_READ_BUFFERS),
        }
    }

    /// Reads `size` bytes at `offset` into `buf` and replies with them.
    fn read_with(
        &self,
        buf: &mut Vec<u8>,
        ino: u64,
        fh: u64,
        offset: u64,
        size: usize,
        reply: ReplyData,
    ) {
        buf.resize(size, 0);
        let read = if fh == NO_HANDLE {
            self.fs.read_node(ino, offset, buf)
        } else {
            self.fs.read_into(fh, offset, buf)
        };
        match read {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno("read", &e)),
        }
    }
}

/// Sends the core's invalidations to the kernel. Inodes go at once, from the caller's
/// thread (no directory lock is involved). Entries go from worker threads: never from a
/// request handler, where the kernel may hold the very directory lock a notification needs.
/// Each batch of entries is sent as soon as it is handed over (it then waits for the
/// directory locks of the request that caused it, so it lands after the kernel's own
/// bookkeeping of that request: a rename moves the dentry after our reply). Stray entries
/// have a thread of their own, so that what lookups wait for never queues behind other
/// batches, which may wait for the lock of the very rename whose lookup is waiting.
pub struct NotifierKernelCache {
    notifier: fuser::Notifier,
    /// Every change's entries and inodes, sent again [`RESEND_AFTER`] later.
    changes: NotifierQueue,
    /// Entries the kernel makes from a reply that the tree does not have.
    strays: NotifierQueue,
}

/// Drops the attributes and cached pages of each inode. ENOENT (not cached) is harmless.
fn forget_inodes(notifier: &fuser::Notifier, inodes: &[u64]) {
    for ino in inodes {
        let _ = notifier.inval_inode(INodeNo(*ino), 0, 0);
    }
}

/// Drops each (parent, name) entry. ENOENT (not cached) is harmless.
fn forget_entries(notifier: &fuser::Notifier, entries: &[(u64, OsString)]) {
    for (parent, name) in entries {
        let _ = notifier.inval_entry(INodeNo(*parent), name);
    }
}

/// (parent inode, name) entries and inodes to drop from the kernel's caches.
type Invalidation = (Vec<(u64, OsString)>, Vec<u64>);

/// A batch and its sequence number (1, 2, ...).
type Batch = (u64, Invalidation);

/// When a batch of changes is sent the second time.
const RESEND_AFTER: Duration = Duration::from_millis(100);

/// Batches sent by one worker thread, in order, each as soon as the previous one is sent.
struct NotifierQueue {
    tx: parking_lot::Mutex<mpsc::Sender<Batch>>,
    progress: Arc<SendProgress>,
}

/// How many batches were handed over and how many have been sent once.
#[derive(Default)]
struct SendProgress {
    counts: parking_lot::Mutex<(u64, u64)>,
    sent: parking_lot::Condvar,
}

impl NotifierQueue {
    /// Starts the queue's thread; with `resend`, every batch is sent again RESEND_AFTER later,
    /// without holding up the batches handed over in between.
    fn start(notifier: fuser::Notifier, resend: bool) -> NotifierQueue {
        let (tx, rx) = mpsc::channel::<Batch>();
        let progress = Arc::new(SendProgress::default());
        let sender_progress = progress.clone();
        std::thread::spawn(move || {
            let mut resends: std::collections::VecDeque<(Instant, Invalidation)> =
                std::collections::VecDeque::new();
            loop {
                let next = match resends.front() {
                    Some((due, _)) => {
                        rx.recv_timeout(due.saturating_duration_since(Instant::now()))
                    }
                    None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                };
                match next {
                    Ok((seq, batch)) => {
                        forget_entries(&notifier, &batch.0);
                        let mut counts = sender_progress.counts.lock();
                        counts.1 = counts.1.max(seq);
                        sender_progress.sent.notify_all();
                        drop(counts);
                        if resend {
                            resends.push_back((Instant::now() + RESEND_AFTER, batch));
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                while resends
                    .front()
                    .is_some_and(|(due, _)| *due <= Instant::now())
                {
                    if let Some((_, (entries, inodes))) = resends.pop_front() {
                        forget_entries(&notifier, &entries);
                        forget_inodes(&notifier, &inodes);
                    }
                }
            }
        });
        NotifierQueue {
            tx: parking_lot::Mutex::new(tx),
            progress,
        }
    }

    fn push(&self, batch: Invalidation) {
        // Numbered and queued under one lock, so batches are queued in their numbers' order.
        let tx = self.tx.lock();
        let seq = {
            let mut counts = self.progress.counts.lock();
            counts.0 += 1;
            counts.0
        };
        let _ = tx.send((seq, batch));
    }

    /// Waits until every batch handed over so far is sent, or `limit` has passed.
    fn settle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut counts = self.progress.counts.lock();
        let target = counts.0;
        while counts.1 < target {
            if self
                .progress
                .sent
                .wait_until(&mut counts, deadline)
                .timed_out()
            {
                log::debug!(
                    "stray entries {}..={target} not yet forgotten after {limit:?}; answering anyway",
                    counts.1 + 1
                );
                return;
            }
        }
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::Directory => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
    }
}

impl NotifierKernelCache {
    pub fn start(notifier: fuser::Notifier) -> NotifierKernelCache {
        NotifierKernelCache {
            changes: NotifierQueue::start(notifier.clone(), true),
            strays: NotifierQueue::start(notifier.clone(), false),
            notifier,
        }
    }
}

impl KernelCache for NotifierKernelCache {
    fn invalidate(&self, entries: Vec<(u64, OsString)>, inodes: Vec<u64>) {
        forget_inodes(&self.notifier, &inodes);
        self.changes.push((entries, inodes));
    }

    fn forget_stray(&self, entries: Vec<(u64, OsString)>) {
        self.strays.push((entries, Vec::new()));
    }

    fn settle(&self, limit: Duration) {
        self.strays.settle(limit);
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.allocated.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// Answers an xattr request of `size` bytes with `data`: its size when asked for the size
/// (0), ERANGE when it does not fit.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    let Ok(len) = u32::try_from(data.len()) else {
        return reply.error(Errno::from_i32(libc::E2BIG));
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(data);
    }
}

fn errno(op: &str, e: &FsError) -> Errno {
    log::log!(e.kind.log_level(), "{op}: {e}");
    Errno::from_i32(e.kind.errno())
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large requests mean fewer round trips for sequential reads.
        // The kernel caps readahead at what it offers; take the largest it allows.
        let readahead = match config.set_max_readahead(MAX_READ) {
            Ok(_) => MAX_READ,
            Err(max) => {
                let _ = config.set_max_readahead(max);
                max
            }
        };
        let _ = config.set_max_write(MAX_READ);
        log::info!("kernel readahead for this mount: {} KiB", readahead / 1024);
        // Cached pages of a file whose mtime or size changed are dropped when the kernel
        // next refreshes its attributes: what keeps live files fresh when opens are skipped.
        if config
            .add_capabilities(fuser::InitFlags::FUSE_AUTO_INVAL_DATA)
            .is_err()
        {
            log::warn!("the kernel cannot drop cached pages of changed files by itself (no FUSE_AUTO_INVAL_DATA): mount with -o close_to_open");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name) {
            Ok(a) => {
                self.fs.looked_up(a.ino);
                reply.entry(&self.fs.ttl(&a), &file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(errno("lookup", &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.fs.ttl(&a), &file_attr(&a)),
            Err(e) => reply.error(errno("getattr", &e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let e = self
            .fs
            .refuse_change(ino.0, "changing attributes (chmod, chown, truncate, touch)");
        reply.error(errno("setattr", &e));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str())),
            Err(e) => reply.error(errno("readlink", &e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(errno(
            "mknod",
            &self.fs.refuse_change(parent.0, "creating a file"),
        ));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.fs.mkdir(parent.0, name) {
            Ok(a) => reply.entry(&self.fs.ttl(&a), &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno("mkdir", &e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("unlink", &e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rmdir", &e)),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(errno(
            "symlink",
            &self.fs.refuse_change(parent.0, "creating a symlink"),
        ));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        match self.fs.rename(parent.0, name, newparent.0, newname) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rename", &e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(errno(
            "link",
            &self.fs.refuse_change(ino.0, "creating a hard link"),
        ));
    }

    /// While the refresher runs (see [`VirtSnapFs::skips_opens`]), ENOSYS: the kernel stops
    /// sending open and release for this mount and opens every file itself with
    /// FOPEN_KEEP_CACHE; reads then come with file handle 0 and are served by inode. A write
    /// open is then refused at its first write (or at open, with O_TRUNC) instead of at open.
    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.fs.skips_opens() {
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        match self.fs.open(ino.0, write) {
            Ok(o) => {
                let mut f = FopenFlags::empty();
                if o.keep_cache {
                    f |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                if o.direct_io {
                    f |= FopenFlags::FOPEN_DIRECT_IO;
                }
                reply.opened(FileHandle(o.fh), f);
            }
            Err(e) => reply.error(errno("open", &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let size = size as usize;
        if size <= SMALL_READ {
            SMALL_READ_BUFFER
                .with_borrow_mut(|buf| self.read_with(buf, ino.0, fh.0, offset, size, reply));
        } else {
            let mut buf = self.large_reads.take();
            self.read_with(&mut buf, ino.0, fh.0, offset, size, reply);
            self.large_reads.give_back(buf);
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(errno("write", &self.fs.refuse_change(ino.0, "writing")));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir_from(ino.0, offset) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(e.ino), (i + 1) as u64, file_type(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno("readdir", &e)),
        }
    }

    /// Directory listings may stay in the kernel's cache while the refresher runs: it
    /// invalidates a directory's inode whenever libvirt changes what the directory lists.
    /// Then opendir answers ENOSYS: the kernel stops sending opendir and releasedir for this
    /// mount and opens every directory with FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR itself, the
    /// very flags it would get here, without two round trips per directory (a warm `ls -lR`
    /// of 50 domains x 40 snapshots sent 4,332 of them and nothing else). The refresher runs
    /// until unmount, so the kernel's choice never needs undoing.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.fs.cache_listings() {
            reply.error(Errno::from_i32(libc::ENOSYS));
        } else {
            reply.opened(FileHandle(0), FopenFlags::empty());
        }
    }

    /// Nothing is buffered for writing, so there is nothing to flush, and no file takes
    /// locks that a close would drop. ENOSYS makes the kernel stop sending flush for the
    /// whole mount: every close() of a file costs one round trip less (a warm `tar` of a guest
    /// tree makes one close per file).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    /// Guest files have the guest's extended attributes; every other node has none
    /// (ENODATA). ENOSYS would make the kernel stop asking for the whole mount, guest files
    /// included, so every node answers.
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name) {
            Ok(Some(value)) => reply_xattr(reply, size, &value),
            Ok(None) => reply.error(Errno::from_i32(libc::ENODATA)),
            Err(e) => reply.error(errno("getxattr", &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(names) => reply_xattr(reply, size, &names),
            Err(e) => reply.error(errno("listxattr", &e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            if let Ok(a) = self.fs.getattr(ino.0) {
                if a.kind != NodeKind::Directory {
                    let e = self.fs.refuse_change(ino.0, "write access");
                    return reply.error(errno("access", &e));
                }
            }
        }
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(errno(
            "create",
            &self.fs.refuse_change(parent.0, "creating a file"),
        ));
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let whence = match whence {
            libc::SEEK_DATA => Whence::Data,
            libc::SEEK_HOLE => Whence::Hole,
            _ => return reply.error(Errno::from_i32(libc::EINVAL)),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::from_i32(libc::ENXIO));
        };
        let sought = if fh.0 == NO_HANDLE {
            self.fs.lseek_node(ino.0, offset, whence)
        } else {
            self.fs.lseek(fh.0, offset, whence)
        };
        match sought {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(errno("lseek", &e)),
        }
    }
}
