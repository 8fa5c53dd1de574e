//! Disk images as the guest sees them: a backing chain of qcow2 and raw layers, opened from a
//! top image (following the names stored in the images) or from a chain stated by libvirt's
//! domain XML, read through one merged view ([`chain::Chain`]).
//!
//! Names stored inside images are untrusted: relative names resolve against the naming image's
//! own directory (as QEMU does), the chain depth is capped, loops are detected by device and
//! inode, and a declared format is never second-guessed by probing.

pub mod chain;
pub mod open;

use std::fmt;
use std::path::PathBuf;

pub use crate::extent::{Extent, ExtentSource};
pub use chain::Chain;
pub use open::{open_chain, ChainSpec, LayerSpec};

use crate::qcow2::{FormatError, ReadError};

/// Longest backing chain we open. QEMU has no fixed limit; libvirt guests rarely exceed a few
/// dozen layers, and every layer holds a file descriptor open.
pub const MAX_CHAIN_DEPTH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    /// Parses a format name as libvirt and QEMU spell it.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        }
    }

    /// Parses an optional format name, refusing names of formats virtsnapfs does not read.
    pub fn parse_optional(name: Option<&str>) -> Result<Option<Format>, String> {
        match name {
            None => Ok(None),
            Some(n) => Format::from_name(n)
                .map(Some)
                .ok_or_else(|| format!("format '{n}' is not supported (only raw and qcow2)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong with an image chain. Always says which image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: format '{format}' is not supported (only raw and qcow2)")]
    UnsupportedFormat { path: PathBuf, format: String },
    #[error("{path}: backing file '{name}' cannot be used: {reason}")]
    BadBackingName {
        path: PathBuf,
        name: String,
        reason: &'static str,
    },
    #[error("{path}: backing chain loops back to an image already in the chain")]
    BackingLoop { path: PathBuf },
    #[error("{path}: backing chain is deeper than {MAX_CHAIN_DEPTH} images")]
    ChainTooDeep { path: PathBuf },
    #[error("{path}: no internal snapshot named '{name}'")]
    NoSuchSnapshot { path: PathBuf, name: String },
    #[error("{path}: internal snapshots exist only in qcow2 images")]
    SnapshotOfRaw { path: PathBuf },
}

impl ImageError {
    pub(crate) fn from_read(path: &std::path::Path, e: ReadError) -> ImageError {
        match e {
            ReadError::Format(source) => ImageError::Format {
                path: path.to_path_buf(),
                source,
            },
            ReadError::Io(source) => ImageError::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }

    /// True when the image is encrypted (we refuse those rather than serve ciphertext).
    pub fn is_encrypted(&self) -> bool {
        matches!(
            self,
            ImageError::Format {
                source: FormatError::Encrypted(_),
                ..
            }
        )
    }
}
