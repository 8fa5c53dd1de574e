//! Opening a backing chain: from a top image and the names stored in it, or from an explicit
//! list of layers (as libvirt's domain XML states them, which we prefer when we have it).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::chain::{Chain, Layer, LayerKind};
use super::{Format, ImageError, MAX_CHAIN_DEPTH};
use crate::cache::MetadataCache;
use crate::qcow2::header::QCOW2_MAGIC;
use crate::qcow2::Qcow2Image;
use crate::source::{ByteSource, FileSource};

/// One image of a chain: its path and, when known, its format (None: probe, as QEMU does for
/// images that do not declare their backing format).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayerSpec {
    pub path: PathBuf,
    pub format: Option<Format>,
}

impl LayerSpec {
    pub fn new(path: impl Into<PathBuf>, format: Option<Format>) -> LayerSpec {
        LayerSpec {
            path: path.into(),
            format,
        }
    }
}

/// Where the layers below the top come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Backing {
    /// Follow the backing file names and formats stored in the images.
    FromImages,
    /// Exactly these layers, top-most first (the top itself not included).
    Explicit(Vec<LayerSpec>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChainSpec {
    pub top: LayerSpec,
    /// Read this internal snapshot of the top image instead of its active state.
    pub snapshot: Option<String>,
    pub backing: Backing,
}

impl ChainSpec {
    /// The chain below `path`, as the images name it.
    pub fn from_image(path: impl Into<PathBuf>, format: Option<Format>) -> ChainSpec {
        ChainSpec {
            top: LayerSpec::new(path, format),
            snapshot: None,
            backing: Backing::FromImages,
        }
    }
}

/// Opens every layer of `spec`, validating each image.
pub fn open_chain(spec: &ChainSpec, cache: Arc<MetadataCache>) -> Result<Chain, ImageError> {
    let mut seen = HashSet::new();
    let mut layers = Vec::new();
    let mut next = Some(spec.top.clone());
    let mut explicit = match &spec.backing {
        Backing::Explicit(list) => Some(list.iter()),
        Backing::FromImages => None,
    };
    while let Some(layer_spec) = next.take() {
        if layers.len() >= MAX_CHAIN_DEPTH {
            return Err(ImageError::ChainTooDeep {
                path: spec.top.path.clone(),
            });
        }
        let snapshot = if layers.is_empty() {
            spec.snapshot.as_deref()
        } else {
            None
        };
        let (layer, stored_backing) = open_layer(&layer_spec, snapshot, &mut seen)?;
        layers.push(layer);
        next = match explicit.as_mut() {
            Some(list) => list.next().cloned(),
            None => stored_backing,
        };
    }
    Ok(Chain::new(layers, cache))
}

/// Opens one image; returns it and the backing layer its header names, if any.
fn open_layer(
    spec: &LayerSpec,
    snapshot: Option<&str>,
    seen: &mut HashSet<(u64, u64)>,
) -> Result<(Layer, Option<LayerSpec>), ImageError> {
    let path = &spec.path;
    let io_err = |source| ImageError::Io {
        path: path.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !seen.insert((meta.dev(), meta.ino())) {
        return Err(ImageError::BackingLoop { path: path.clone() });
    }
    let source: Arc<dyn ByteSource> = Arc::new(FileSource::open(path).map_err(io_err)?);
    let format = match spec.format {
        Some(f) => f,
        None => probe_format(source.as_ref()).map_err(io_err)?,
    };

    if format == Format::Raw {
        if snapshot.is_some() {
            return Err(ImageError::SnapshotOfRaw { path: path.clone() });
        }
        // QEMU sees a raw file in whole 512-byte sectors: the tail past EOF reads as zeros.
        let size = source
            .byte_len()
            .map_err(io_err)?
            .checked_next_multiple_of(512)
            .unwrap_or(u64::MAX);
        let layer = Layer {
            path: path.clone(),
            format,
            size,
            kind: LayerKind::Raw,
            data: source,
            data_file: None,
        };
        return Ok((layer, None));
    }

    let image = Qcow2Image::open(source.clone()).map_err(|e| ImageError::from_read(path, e))?;
    let view = match snapshot {
        None => image.active_view(),
        Some(name) => {
            let found = image
                .find_snapshot(name)
                .ok_or_else(|| ImageError::NoSuchSnapshot {
                    path: path.clone(),
                    name: name.to_string(),
                })?;
            image.snapshot_view(found)
        }
    };
    let (data, data_file) = match &image.extensions.data_file {
        Some(name) => {
            let data_path = resolve_relative(path, name)?;
            let data: Arc<dyn ByteSource> = Arc::new(FileSource::open(&data_path).map_err(
                |source| ImageError::Io {
                    path: data_path.clone(),
                    source,
                },
            )?);
            (data, Some(data_path))
        }
        None => (source, None),
    };
    let backing = match &image.backing_file {
        None => None,
        Some(name) => {
            let backing_path = resolve_relative(path, name)?;
            let format = match &image.extensions.backing_format {
                None => None,
                Some(f) => {
                    Some(
                        Format::from_name(f).ok_or_else(|| ImageError::UnsupportedFormat {
                            path: backing_path.clone(),
                            format: f.clone(),
                        })?,
                    )
                }
            };
            Some(LayerSpec::new(backing_path, format))
        }
    };
    let layer = Layer {
        path: path.clone(),
        format,
        size: view.disk_size,
        kind: LayerKind::Qcow2 {
            image: Arc::new(image),
            view,
        },
        data,
        data_file,
    };
    Ok((layer, backing))
}

/// The format of the image at `path` by QEMU's probe (see [`probe_format`]).
pub fn probe_path(path: &Path) -> std::io::Result<Format> {
    probe_format(&FileSource::open(path)?)
}

/// QEMU's probe, reduced to the two formats we read: qcow2 by its magic, raw otherwise.
fn probe_format(source: &dyn ByteSource) -> std::io::Result<Format> {
    let mut magic = [0u8; 4];
    source.read_exact_at(&mut magic, 0)?;
    Ok(if u32::from_be_bytes(magic) == QCOW2_MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// Resolves a file name stored in `image` (backing file, data file): absolute names as they
/// are, relative names against the image's own directory. Protocol names (`nbd:`, `json:`,
/// anything with a ':' before the first '/') and names with NUL bytes are refused.
fn resolve_relative(image: &Path, name: &str) -> Result<PathBuf, ImageError> {
    let bad = |reason| ImageError::BadBackingName {
        path: image.to_path_buf(),
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("the name is empty"));
    }
    if name.contains('\0') {
        return Err(bad("the name contains a NUL byte"));
    }
    if name
        .split('/')
        .next()
        .is_some_and(|first| first.contains(':'))
    {
        return Err(bad("network and protocol backing files are not supported"));
    }
    let name = Path::new(name);
    if name.is_absolute() {
        return Ok(name.to_path_buf());
    }
    Ok(match image.parent() {
        Some(dir) => dir.join(name),
        None => name.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_resolve_against_the_image_directory() {
        let p = resolve_relative(Path::new("/a/b/top.qcow2"), "../base.img").unwrap();
        assert_eq!(p, PathBuf::from("/a/b/../base.img"));
        let p = resolve_relative(Path::new("/a/b/top.qcow2"), "/x/base.img").unwrap();
        assert_eq!(p, PathBuf::from("/x/base.img"));
        let p = resolve_relative(Path::new("top.qcow2"), "base.img").unwrap();
        assert_eq!(p, PathBuf::from("base.img"));
    }

    #[test]
    fn protocol_and_garbage_names_are_refused() {
        for name in ["nbd:localhost:10809", "json:{}", "", "a\0b"] {
            assert!(matches!(
                resolve_relative(Path::new("/t.qcow2"), name),
                Err(ImageError::BadBackingName { .. })
            ));
        }
        // A colon after the first slash is part of a file name.
        assert!(resolve_relative(Path::new("/t.qcow2"), "./a:b").is_ok());
    }
}
