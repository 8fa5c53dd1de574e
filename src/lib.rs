//! virtsnapfs: libvirt/KVM snapshots as ordinary directories.
//!
//! Layers, bottom up:
//! - [`source`]: positioned reads over files (zeros past the end, like QEMU).
//! - [`qcow2`]: the qcow2 format, one module per on-disk structure; untrusted input.
//! - [`extent`]: where the bytes of a guest range come from (what chains resolve, the cache keeps).
//! - [`cache`]: one byte-budgeted LRU for all metadata derived from images and guest filesystems.
//! - [`image`]: backing chains (qcow2 and raw layers) read as one disk.
//! - [`inspect`]: the `virtsnapfs inspect` report of a chain.
//! - [`model`]: domains, disks and snapshot trees as plain data.
//! - [`backend`]: what the filesystem and the operations need from the hypervisor side.
//! - [`libvirt`]: builds the model from libvirt (connection, XML); the real [`backend`].
//! - [`error`]: the errors of the filesystem and its operations, and the one errno table.
//! - [`ops`]: the snapshot operations behind mkdir, rename and rmdir.
//! - [`guest`]: the guest's own files: partition tables and ext2/3/4, parsed from untrusted bytes.
//! - [`fs`]: the filesystem core (tree, lookups, reads), FUSE-agnostic; calls [`ops`].
//! - [`fuse`]: the thin fuser adapter over [`fs`].
//! - [`mount`]: command-line mount options, daemonizing and clean unmounting.
//! - [`parallel`]: work spread over a few scoped threads.
//! - [`sys`]: the libc calls std does not wrap (malloc arenas, page-cache advice).

// The only unsafe code is FFI: the block job calls in libvirt/blockjob.rs and the libc calls
// in sys.rs, each of which allows it.
#![deny(unsafe_code)]

pub mod backend;
pub mod cache;
pub mod error;
pub mod extent;
pub mod fs;
pub mod fuse;
pub mod guest;
pub mod image;
pub mod inspect;
pub mod libvirt;
pub mod model;
pub mod mount;
pub mod ops;
pub mod parallel;
pub mod qcow2;
pub mod source;
pub mod sys;
