//! The filesystem's errors and the one table that maps them to errno values.
//!
//! Every error carries the message that is logged (once, by the FUSE adapter) and names what
//! failed and, for refusals, what to do instead. The errno choice lives only in
//! [`ErrorKind::errno`], one exhaustive match.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No such domain, snapshot, disk or file.
    NotFound,
    NotADirectory,
    IsADirectory,
    /// A write, create, truncate or attribute change: served files are read-only.
    ReadOnly,
    /// An operation that makes no sense on this node (e.g. mkdir outside a snapshot tree).
    NotPermitted,
    InvalidArgument,
    /// A disk or image that cannot be read: broken image, missing backing file, lost libvirt.
    Io,
    /// SEEK_DATA/SEEK_HOLE past the end, or no data after the offset.
    NoSuchOffset,
    /// A file handle we never issued.
    BadHandle,
    /// The name is taken (mkdir or rename onto an existing snapshot).
    Exists,
    /// Something still needs what the operation would change, or the domain's state is in
    /// the way; the message says what to do.
    Busy,
    /// libvirt or virtsnapfs cannot do this for this shape of snapshot.
    Unsupported,
    /// A node of a state that is gone (a `live/files/` node looked up before a revert): the
    /// kernel looks a path up again on ESTALE, so only a file held open sees it.
    Stale,
}

impl ErrorKind {
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::NotADirectory => libc::ENOTDIR,
            ErrorKind::IsADirectory => libc::EISDIR,
            ErrorKind::ReadOnly => libc::EROFS,
            ErrorKind::NotPermitted => libc::EPERM,
            ErrorKind::InvalidArgument => libc::EINVAL,
            ErrorKind::Io => libc::EIO,
            ErrorKind::NoSuchOffset => libc::ENXIO,
            ErrorKind::BadHandle => libc::EBADF,
            ErrorKind::Exists => libc::EEXIST,
            ErrorKind::Busy => libc::EBUSY,
            ErrorKind::Unsupported => libc::EOPNOTSUPP,
            ErrorKind::Stale => libc::ESTALE,
        }
    }

    /// How loudly a failure of this kind is logged: lookups of missing names are routine,
    /// refusals are worth a warning (they say what to do), I/O failures are errors.
    pub fn log_level(self) -> log::Level {
        match self {
            ErrorKind::NotFound | ErrorKind::NoSuchOffset => log::Level::Debug,
            ErrorKind::NotADirectory
            | ErrorKind::IsADirectory
            | ErrorKind::BadHandle
            | ErrorKind::Stale => log::Level::Info,
            ErrorKind::ReadOnly
            | ErrorKind::NotPermitted
            | ErrorKind::InvalidArgument
            | ErrorKind::Exists
            | ErrorKind::Busy
            | ErrorKind::Unsupported => log::Level::Warn,
            ErrorKind::Io => log::Level::Error,
        }
    }
}

impl ErrorKind {
    /// The kind of a guest-filesystem error: bad bytes and unreadable disks are I/O errors
    /// (EIO), features virtsnapfs does not read are EOPNOTSUPP, and asking a guest node for
    /// what its kind does not have is ENOTDIR, EINVAL (readlink of a non-symlink) or EISDIR.
    pub fn of_guest(e: &crate::guest::GuestError) -> ErrorKind {
        use crate::guest::GuestError;
        match e {
            GuestError::Corrupt(_) | GuestError::Io(_) => ErrorKind::Io,
            GuestError::Unsupported(_) => ErrorKind::Unsupported,
            GuestError::NotADirectory => ErrorKind::NotADirectory,
            GuestError::NotASymlink => ErrorKind::InvalidArgument,
            GuestError::NotAFile => ErrorKind::IsADirectory,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FsError {}

/// `fs_err!(Kind, "format", args…)` builds an [`FsError`].
#[macro_export]
macro_rules! fs_err {
    ($kind:ident, $($arg:tt)*) => {
        $crate::error::FsError {
            kind: $crate::error::ErrorKind::$kind,
            message: format!($($arg)*),
        }
    };
}
