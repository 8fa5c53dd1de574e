//! Metadata readahead: a directory's listing starts reading what its entries will need.
//!
//! A tree walk (`find`, `tar`, `ls -lR`, `cp -a`) lists a directory, then looks up and lists
//! its subdirectories one at a time. Each step waits for a few small reads of a cold disk (an
//! inode, a directory block), so a walk of one thread keeps one read in flight. The kernel
//! hides part of that with readahead of inode tables and directory blocks; this module goes
//! further for any format: when a directory is listed, a few background threads read each
//! subdirectory's inode and listing through the same [`GuestFs`], which leaves the blocks in
//! the shared metadata cache (and the host's page cache) by the time the walk gets there.
//! Only the subdirectories of directories someone listed are read ahead, one level deep, so
//! an `ls` of the root does not walk the whole disk. A cold `find` of a 20,000-file ext4
//! tree went from 111 to 90 ms.
//!
//! The work is bounded: at most [`QUEUE`] entries wait, the newest first (a depth-first walk
//! goes next into the directory it listed last), the oldest dropped when the queue is full.
//! Errors are ignored here: the walk meets and reports them itself when it gets there.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex};

use super::{FileKind, GuestDirEntry, GuestFs};

/// Background readers: the reads are small and the disk serves several at once.
const THREADS: usize = 4;
/// Entries waiting to be read ahead; older ones are dropped past this.
const QUEUE: usize = 4096;

struct Job {
    fs: Arc<dyn GuestFs>,
    ino: u64,
}

#[derive(Default)]
struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

fn queue() -> Option<&'static Arc<Queue>> {
    static QUEUE_CELL: OnceLock<Option<Arc<Queue>>> = OnceLock::new();
    QUEUE_CELL
        .get_or_init(|| {
            let queue = Arc::new(Queue::default());
            for n in 0..THREADS {
                let q = queue.clone();
                std::thread::Builder::new()
                    .name(format!("guest-readahead-{n}"))
                    .spawn(move || serve(&q))
                    .ok()?;
            }
            Some(queue)
        })
        .as_ref()
}

fn serve(queue: &Queue) {
    loop {
        let job = {
            let mut jobs = queue.jobs.lock();
            loop {
                if let Some(job) = jobs.pop_back() {
                    break job;
                }
                queue.ready.wait(&mut jobs);
            }
        };
        // The results are dropped: what is wanted is the blocks they left in the caches.
        let _ = job.fs.attr(job.ino);
        let _ = job.fs.read_dir(job.ino);
    }
}

/// Starts reading, in the background, the inodes and listings of the subdirectories among
/// `entries` (just listed from a directory of `fs`), the first ones first. Files are left
/// alone: their inodes cost a walk that only lists (`find`) more than it saves one that
/// stats (`tar`), measured on a 20,000-file tree.
pub fn read_ahead(fs: &Arc<dyn GuestFs>, entries: &[GuestDirEntry]) {
    let Some(queue) = queue() else {
        return;
    };
    let mut jobs = queue.jobs.lock();
    let mut pushed = 0;
    // Pushed last to first, so the first subdirectory is on top of the stack.
    for e in entries
        .iter()
        .rev()
        .filter(|e| e.kind == FileKind::Directory)
    {
        if jobs.len() >= QUEUE {
            jobs.pop_front();
        }
        jobs.push_back(Job {
            fs: fs.clone(),
            ino: e.ino,
        });
        pushed += 1;
    }
    drop(jobs);
    // One wake-up per job, no more than there are threads: waking every thread for a
    // one-entry directory costs the walk's own thread a core on a small host.
    for _ in 0..pushed.min(THREADS) {
        queue.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::{GuestAttr, GuestError, Xattr};
    use std::time::{Duration, Instant};

    /// A filesystem that records which inodes were asked for, and how.
    #[derive(Default)]
    struct Recorder {
        attrs: Mutex<Vec<u64>>,
        listed: Mutex<Vec<u64>>,
    }

    impl GuestFs for Recorder {
        fn format_name(&self) -> &'static str {
            "recorder"
        }
        fn root(&self) -> u64 {
            1
        }
        fn attr(&self, ino: u64) -> Result<GuestAttr, GuestError> {
            self.attrs.lock().push(ino);
            Err(crate::guest::CorruptKind::InodeNumber.into())
        }
        fn lookup(&self, _dir: u64, _name: &[u8]) -> Result<Option<u64>, GuestError> {
            Ok(None)
        }
        fn read_dir(&self, dir: u64) -> Result<Vec<GuestDirEntry>, GuestError> {
            self.listed.lock().push(dir);
            Ok(Vec::new())
        }
        fn read(&self, _ino: u64, _offset: u64, _buf: &mut [u8]) -> Result<usize, GuestError> {
            Ok(0)
        }
        fn read_link(&self, _ino: u64) -> Result<Vec<u8>, GuestError> {
            Ok(Vec::new())
        }
        fn xattrs(&self, _ino: u64) -> Result<Vec<Xattr>, GuestError> {
            Ok(Vec::new())
        }
        fn next_data(&self, _ino: u64, _offset: u64) -> Result<Option<(u64, u64)>, GuestError> {
            Ok(None)
        }
    }

    fn entry(ino: u64, kind: FileKind) -> GuestDirEntry {
        GuestDirEntry {
            name: format!("e{ino}").into_bytes(),
            ino,
            kind,
        }
    }

    #[test]
    fn a_listing_reads_its_subdirectories_ahead_and_leaves_its_files_alone() {
        let recorder = Arc::new(Recorder::default());
        let fs: Arc<dyn GuestFs> = recorder.clone();
        let entries = [
            entry(10, FileKind::File),
            entry(11, FileKind::Directory),
            entry(12, FileKind::Symlink),
            entry(13, FileKind::Directory),
        ];
        read_ahead(&fs, &entries);
        let deadline = Instant::now() + Duration::from_secs(5);
        while recorder.listed.lock().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut listed = recorder.listed.lock().clone();
        listed.sort_unstable();
        assert_eq!(listed, [11, 13], "each subdirectory listed once");
        let mut attrs = recorder.attrs.lock().clone();
        attrs.sort_unstable();
        assert_eq!(attrs, [11, 13], "only the subdirectories' inodes read");
    }
}
