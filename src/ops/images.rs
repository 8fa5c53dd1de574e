//! Offline image steps of the snapshot operations, run with QEMU's own `qemu-img` (the same
//! tool libvirt uses for inactive domains), and the facts about image files they and the
//! dependency scan (`super::scan`) need.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::cache::MetadataCache;
use crate::error::FsError;
use crate::fs_err;
use crate::image::{open_chain, ChainSpec, Format};

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

pub fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

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
