//! XFS: the reader of the filesystem, and log/ (recovery of a dirty log in memory).
pub mod log;
