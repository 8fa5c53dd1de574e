//! Offline image steps of the snapshot operations, run with QEMU's own `qemu-img` (the same
//! tool libvirt uses for inactive domains), and the dependency scan that decides whether an
//! image may be rewritten or removed.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::cache::MetadataCache;
use crate::fs::FsError;
use crate::fs_err;
use crate::image::{open_chain, ChainSpec, Format};
use crate::model::DomainModel;

fn qemu_img(args: &[&str]) -> Result<(), FsError> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| fs_err!(Io, "cannot run qemu-img: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fs_err!(
            Io,
            "qemu-img {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn path_str(p: &Path) -> Result<&str, FsError> {
    p.to_str()
        .ok_or_else(|| fs_err!(InvalidArgument, "{} is not a UTF-8 path", p.display()))
}

/// Creates a new, empty qcow2 overlay `overlay` on `base`.
pub fn create_overlay(base: &Path, base_format: Format, overlay: &Path) -> Result<(), FsError> {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        base_format.name(),
        "-b",
        path_str(base)?,
        path_str(overlay)?,
    ])
}

/// Writes `top`'s data into its backing file `base` (qemu-img commit).
pub fn commit(top: &Path, base: &Path) -> Result<(), FsError> {
    qemu_img(&[
        "commit",
        "-q",
        "-f",
        "qcow2",
        "-b",
        path_str(base)?,
        path_str(top)?,
    ])
}

/// Points `image` at `backing` without copying data: only correct when `backing` reads the
/// same bytes as the old backing file (after a commit of the old one into it).
pub fn rebase_unsafe(image: &Path, backing: &Path, backing_format: Format) -> Result<(), FsError> {
    qemu_img(&[
        "rebase",
        "-q",
        "-u",
        "-f",
        "qcow2",
        "-F",
        backing_format.name(),
        "-b",
        path_str(backing)?,
        path_str(image)?,
    ])
}

/// A free file name next to `base` for an overlay of snapshot `snapshot`, named as libvirt
/// names overlays (`STEM.SNAPSHOT`), with a suffix when that name is taken.
pub fn overlay_name(base: &Path, snapshot: &str, purpose: &str) -> PathBuf {
    let dir = base.parent().unwrap_or(Path::new("/"));
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    let safe: String = snapshot
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    let mut k = 1;
    loop {
        let suffix = if k == 1 { String::new() } else { k.to_string() };
        let candidate = dir.join(format!("{stem}.{safe}-{purpose}{suffix}"));
        if !candidate.exists() {
            return candidate;
        }
        k += 1;
    }
}

/// Whether `path` is named like an overlay made by [`overlay_name`] for a revert.
pub fn is_revert_overlay(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        n.rsplit_once("-revert")
            .is_some_and(|(_, k)| k.chars().all(|c| c.is_ascii_digit()))
    })
}

/// One opened chain of a domain: whose it is, and its layers top first (canonical paths).
#[derive(Debug, Clone)]
pub struct ChainUse {
    pub domain: String,
    /// None for the live disk.
    pub snapshot: Option<String>,
    pub target: String,
    pub layers: Vec<PathBuf>,
    pub formats: Vec<Format>,
    /// True when the top layer is read at an internal snapshot (its active state is not read).
    pub reads_internal_snapshot: bool,
}

impl ChainUse {
    /// Images whose current (active) contents this chain reads.
    pub fn active_images(&self) -> &[PathBuf] {
        if self.reads_internal_snapshot {
            self.layers.get(1..).unwrap_or(&[])
        } else {
            &self.layers
        }
    }

    pub fn who(&self) -> String {
        match &self.snapshot {
            Some(s) => format!(
                "snapshot {s} of domain {} (disk {})",
                self.domain, self.target
            ),
            None => format!("the live disk {} of domain {}", self.target, self.domain),
        }
    }
}

pub fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The layers (canonical paths, top first) and formats of the chain `spec` describes.
pub type Layers = (Vec<PathBuf>, Vec<Format>);

/// Modification time and size of a file, or None for a file that cannot be stat'ed.
pub type FileStamp = Option<(std::time::SystemTime, u64)>;

/// The stamps of `paths`: unchanged stamps mean unchanged headers, so unchanged backing links.
pub fn files_stamp(paths: &[PathBuf]) -> Vec<FileStamp> {
    paths.iter().map(|p| file_stamp(p)).collect()
}

/// One file's modification time and size, None when it cannot be stat'ed.
pub fn file_stamp(path: &Path) -> FileStamp {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// The layers of a chain libvirt states in full (`<backingStore>` down to its end), without
/// opening any image. None when a format is not stated (it would have to be probed).
pub fn stated_layers(spec: &ChainSpec) -> Option<Layers> {
    let crate::image::open::Backing::Explicit(below) = &spec.backing else {
        return None;
    };
    let mut paths = vec![canonical(&spec.top.path)];
    let mut formats = vec![spec.top.format?];
    for layer in below {
        paths.push(canonical(&layer.path));
        formats.push(layer.format?);
    }
    Some((paths, formats))
}

/// Opens `spec` and lists its layers. A chain whose top image does not exist reads nothing
/// (its disk cannot be read at all), so it needs no image: no layers. A missing backing file or
/// a broken image is an error: what such a chain would read is unknown.
pub fn chain_layers(spec: &ChainSpec, cache: &Arc<MetadataCache>) -> Result<Layers, String> {
    if !spec.top.path.exists() {
        log::info!(
            "{} does not exist: its chain reads no image",
            spec.top.path.display()
        );
        return Ok((Vec::new(), Vec::new()));
    }
    let chain = open_chain(spec, cache.clone()).map_err(|e| e.to_string())?;
    Ok((
        chain.layers().iter().map(|l| canonical(&l.path)).collect(),
        chain.layers().iter().map(|l| l.format).collect(),
    ))
}

/// Every chain of every domain: live disks and all snapshots' disks, their layers found by
/// `layers`. A chain that cannot be opened makes the scan fail: without knowing what it
/// needs, nothing may be rewritten.
pub fn all_chains(
    models: &[Arc<DomainModel>],
    layers: &dyn Fn(&ChainSpec) -> Result<Layers, String>,
) -> Result<Vec<ChainUse>, FsError> {
    let mut out = Vec::new();
    let mut add = |domain: &str,
                   snapshot: Option<&str>,
                   target: &str,
                   spec: &ChainSpec|
     -> Result<(), FsError> {
        let (paths, formats) = layers(spec).map_err(|e| {
            fs_err!(
                Busy,
                "refused: cannot tell which images the {} of domain {domain} (disk {target}) reads ({e}), so cannot prove that nothing else needs the images this operation changes; repair or remove that disk, then retry",
                snapshot.map_or("live disk".to_string(), |s| format!("snapshot {s}"))
            )
        })?;
        out.push(ChainUse {
            domain: domain.to_string(),
            snapshot: snapshot.map(str::to_string),
            target: target.to_string(),
            layers: paths,
            formats,
            reads_internal_snapshot: spec.snapshot.is_some(),
        });
        Ok(())
    };
    for m in models {
        for d in &m.disks {
            add(&m.name, None, &d.target, &d.chain)?;
        }
        for s in &m.snapshots {
            for d in &s.disks {
                add(&m.name, Some(&s.name), &d.target, &d.chain)?;
            }
        }
    }
    Ok(out)
}

/// For each image, the images directly above it in some chain.
pub fn dependents(chains: &[ChainUse]) -> HashMap<PathBuf, BTreeSet<PathBuf>> {
    let mut map: HashMap<PathBuf, BTreeSet<PathBuf>> = HashMap::new();
    for c in chains {
        for pair in c.layers.windows(2) {
            map.entry(pair[1].clone())
                .or_default()
                .insert(pair[0].clone());
        }
    }
    map
}

/// Whether the qcow2 image at `path` holds internal snapshots.
pub fn has_internal_snapshots(path: &Path, cache: &Arc<MetadataCache>) -> Result<bool, FsError> {
    let chain = open_chain(
        &ChainSpec::from_image(path, Some(Format::Qcow2)),
        cache.clone(),
    )
    .map_err(|e| fs_err!(Io, "{e}"))?;
    Ok(chain.layers()[0]
        .qcow2()
        .is_some_and(|i| !i.snapshots.is_empty()))
}
