//! virtsnapfs: libvirt/KVM snapshots as ordinary directories.
//!
//! Layers, bottom up:
//! - [`source`]: positioned reads over files (zeros past the end, like QEMU).
//! - [`qcow2`]: the qcow2 format, one module per on-disk structure; untrusted input.
//! - [`cache`]: one byte-budgeted LRU for all metadata derived from images.
//! - [`image`]: backing chains (qcow2 and raw layers) read as one disk.
//! - [`inspect`]: the `virtsnapfs inspect` report of a chain.

pub mod cache;
pub mod image;
pub mod inspect;
pub mod qcow2;
pub mod source;
