//! Offline image steps of the snapshot operations, run with QEMU's own `qemu-img` (the same
//! tool libvirt uses for inactive domains), and the facts about image files they and the
//! dependency scan (`super::scan`) need.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::cache::MetadataCache;
use crate::error::FsError;
use crate::fs_err;
use crate::image::open::Backing;
use crate::image::{open_chain, ChainSpec, Format};
use crate::qcow2::header::{BackingFields, MAX_BACKING_FILE_NAME};

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

/// Whether every guest byte that `overlay` (a qcow2 whose backing file is `base`) holds
/// itself reads the same from `base`: what a finished commit of the overlay into the base
/// leaves. Only the overlay's own clusters (data and zero clusters) are read from both
/// sides, so the check costs what the overlay holds, not the disk's size.
pub fn overlay_is_in_base(
    overlay: &Path,
    base: &Path,
    base_format: Format,
    cache: &Arc<MetadataCache>,
) -> Result<bool, FsError> {
    use crate::image::ExtentSource;
    let open = |path: &Path, format| {
        open_chain(&ChainSpec::from_image(path, Some(format)), cache.clone())
            .map_err(|e| fs_err!(Io, "{}: {e}", path.display()))
    };
    let over = open(overlay, Format::Qcow2)?;
    let under = open(base, base_format)?;
    fn err(path: &Path) -> impl Fn(crate::image::ImageError) -> FsError + '_ {
        move |e| fs_err!(Io, "{}: {e}", path.display())
    }
    const STEP: u64 = 1 << 20;
    let (mut a, mut b) = (vec![0u8; STEP as usize], vec![0u8; STEP as usize]);
    let size = over.size();
    let mut pos = 0u64;
    while pos < size {
        let window = (64 * STEP).min(size - pos);
        for e in over.resolve(pos, window).map_err(err(overlay))? {
            // Data of a lower layer is the base's own; a zero run may be the overlay's zero
            // clusters, so it is checked too (the base must read zeros there).
            let own = match e.source {
                ExtentSource::Data { layer, .. } | ExtentSource::Compressed { layer, .. } => {
                    layer == 0
                }
                ExtentSource::Zero => true,
            };
            let mut at = e.guest_offset;
            while own && at < e.end() {
                let n = (e.end() - at).min(STEP) as usize;
                if matches!(e.source, ExtentSource::Zero) {
                    // Only what the base holds as data there needs reading.
                    let base_data = under
                        .resolve(at, n as u64)
                        .map_err(err(base))?
                        .iter()
                        .any(|x| x.source.is_data());
                    if base_data {
                        under.read_exact_at(&mut b[..n], at).map_err(err(base))?;
                        if b[..n].iter().any(|&x| x != 0) {
                            return Ok(false);
                        }
                    }
                } else {
                    over.read_exact_at(&mut a[..n], at).map_err(err(overlay))?;
                    under.read_exact_at(&mut b[..n], at).map_err(err(base))?;
                    if a[..n] != b[..n] {
                        return Ok(false);
                    }
                }
                at += n as u64;
            }
        }
        pos += window;
    }
    Ok(true)
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

/// What a chain that cannot be opened whole may still read, from its images' headers alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    /// Canonical paths, top first: each image's own path (a missing one too: recreated, it
    /// would be read) and, as far as they can be read, the backing files their headers name,
    /// then any layer libvirt states below the top.
    pub paths: Vec<PathBuf>,
    /// The format of each path as far as known: stated, else qcow2 by its magic, else raw.
    pub formats: Vec<Format>,
    /// Why what the chain reads cannot be bounded, when it cannot: a header says there is a
    /// backing file but its name cannot be read, or names something that is not a file.
    pub unbounded: Option<String>,
}

/// At most this many images are followed (QEMU's own limit on a chain is lower).
const MAX_REACHED: usize = 1000;

/// The images a chain reaches by the names in its headers, up to where they stop: a missing
/// file (it reads nothing), a raw image (it names nothing), a file that is not a qcow2 image
/// (QEMU cannot open it as one, so it reads nothing beyond itself), a name seen before (a
/// backing loop), or a header that names no backing file. A qcow2 image is followed by the
/// backing file fields of its header alone, so a corrupt image whose header still names its
/// backing file counts as reading it. Nothing is validated beyond that: only ever more images
/// are counted than QEMU would read.
pub fn reachable_images(spec: &ChainSpec) -> Reached {
    let mut reached = Reached {
        paths: Vec::new(),
        formats: Vec::new(),
        unbounded: None,
    };
    let mut starts = vec![(spec.top.path.clone(), spec.top.format)];
    if let Backing::Explicit(below) = &spec.backing {
        starts.extend(below.iter().map(|l| (l.path.clone(), l.format)));
    }
    for start in starts {
        let mut next = Some(start);
        while let Some((path, format)) = next.take() {
            let c = canonical(&path);
            if reached.paths.contains(&c) {
                break;
            }
            if reached.paths.len() >= MAX_REACHED {
                reached.unbounded = Some(format!(
                    "more than {MAX_REACHED} backing files below {}",
                    spec.top.path.display()
                ));
                return reached;
            }
            match named_backing(&path, format) {
                Ok((format, backing)) => {
                    reached.paths.push(c);
                    reached.formats.push(format);
                    next = backing.map(|b| (b, None));
                }
                Err(why) => {
                    reached.paths.push(c);
                    reached.formats.push(format.unwrap_or(Format::Qcow2));
                    reached.unbounded = Some(why);
                    return reached;
                }
            }
        }
    }
    reached
}

/// The format of the image at `path` (`stated`, if libvirt states it) and the backing file
/// its header names, if any. Err: the header says there is a backing file but which one
/// cannot be told.
fn named_backing(path: &Path, stated: Option<Format>) -> Result<(Format, Option<PathBuf>), String> {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileExt;

    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        // Missing: it reads nothing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((stated.unwrap_or(Format::Raw), None))
        }
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    if stated == Some(Format::Raw) {
        return Ok((Format::Raw, None));
    }
    let mut head = Vec::with_capacity(20);
    (&file)
        .take(20)
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read the header of {}: {e}", path.display()))?;
    let (offset, size) = match BackingFields::read(&head) {
        BackingFields::NotQcow2 => return Ok((stated.unwrap_or(Format::Raw), None)),
        BackingFields::None => return Ok((Format::Qcow2, None)),
        BackingFields::Truncated => {
            return Err(format!(
                "{} ends inside its qcow2 header, before the backing file fields",
                path.display()
            ))
        }
        BackingFields::Name { offset, size } => (offset, size),
    };
    if size > MAX_BACKING_FILE_NAME {
        return Err(format!(
            "the header of {} gives its backing file name an impossible length ({size} bytes)",
            path.display()
        ));
    }
    let mut name = vec![0u8; size as usize];
    file.read_exact_at(&mut name, offset).map_err(|e| {
        format!(
            "the header of {} names a backing file, but its name ({size} bytes at offset {offset}) cannot be read: {e}",
            path.display()
        )
    })?;
    // QEMU keeps the name as a C string: it ends at the first NUL.
    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
    if name.is_empty() {
        return Ok((Format::Qcow2, None));
    }
    let first = name.split(|&b| b == b'/').next().unwrap_or_default();
    if first.contains(&b':') {
        return Err(format!(
            "the backing file of {} is {:?}, a protocol name, not a file",
            path.display(),
            String::from_utf8_lossy(name)
        ));
    }
    let name = Path::new(std::ffi::OsStr::from_bytes(name));
    let backing = if name.is_absolute() {
        name.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new("")).join(name)
    };
    Ok((Format::Qcow2, Some(backing)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_img(args: &[&str]) {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    }

    fn names(r: &Reached) -> Vec<String> {
        r.paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    fn reach(path: &Path) -> Reached {
        reachable_images(&ChainSpec::from_image(path, Some(Format::Qcow2)))
    }

    /// Overwrites `bytes` at `offset` of `path`.
    fn poke(path: &Path, offset: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, offset).unwrap();
    }

    #[test]
    fn broken_chains_reach_the_names_their_headers_still_hold() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        let s = |name: &str| p(name).to_str().unwrap().to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", &s("base.qcow2"), "1M"]);
        let overlay = |name: &str, backing: &str| {
            qemu_img(&[
                "create",
                "-q",
                "-u",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                backing,
                &s(name),
                "1M",
            ])
        };

        // A corrupt header (cluster_bits out of range) still names its backing file.
        overlay("corrupt.qcow2", &s("base.qcow2"));
        poke(&p("corrupt.qcow2"), 20, &[0, 0, 0, 40]);
        let r = reach(&p("corrupt.qcow2"));
        assert_eq!(names(&r), ["corrupt.qcow2", "base.qcow2"]);
        assert_eq!(r.unbounded, None);

        // No qcow2 magic: QEMU cannot open it, it names nothing.
        overlay("nomagic.qcow2", &s("base.qcow2"));
        poke(&p("nomagic.qcow2"), 0, b"XXXX");
        assert_eq!(names(&reach(&p("nomagic.qcow2"))), ["nomagic.qcow2"]);

        // A loop: each name once.
        overlay("a.qcow2", &s("base.qcow2"));
        overlay("b.qcow2", "a.qcow2");
        qemu_img(&[
            "rebase",
            "-q",
            "-u",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "b.qcow2",
            &s("a.qcow2"),
        ]);
        assert_eq!(names(&reach(&p("a.qcow2"))), ["a.qcow2", "b.qcow2"]);

        // A missing backing file counts by its name; a missing top reads only its own name.
        overlay("orphan.qcow2", &s("gone.qcow2"));
        assert_eq!(
            names(&reach(&p("orphan.qcow2"))),
            ["orphan.qcow2", "gone.qcow2"]
        );
        assert_eq!(names(&reach(&p("nothing.qcow2"))), ["nothing.qcow2"]);

        // Cut to 100 bytes: without a backing file it reads nothing more; with one, whose name
        // is cut off, what it reads cannot be bounded.
        qemu_img(&["create", "-q", "-f", "qcow2", &s("short.qcow2"), "1M"]);
        std::fs::File::options()
            .write(true)
            .open(p("short.qcow2"))
            .unwrap()
            .set_len(100)
            .unwrap();
        let r = reach(&p("short.qcow2"));
        assert_eq!((names(&r), r.unbounded), (vec!["short.qcow2".into()], None));
        overlay("cut.qcow2", &s("base.qcow2"));
        std::fs::File::options()
            .write(true)
            .open(p("cut.qcow2"))
            .unwrap()
            .set_len(100)
            .unwrap();
        let r = reach(&p("cut.qcow2"));
        assert!(r.unbounded.unwrap().contains("cannot be read"));

        // A protocol name is not a file: unbounded.
        qemu_img(&[
            "rebase",
            "-q",
            "-u",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "nbd://localhost:10809/x",
            &s("orphan.qcow2"),
        ]);
        let r = reach(&p("orphan.qcow2"));
        assert!(r.unbounded.unwrap().contains("protocol"));

        // A stated raw image names nothing, whatever it holds.
        let raw = reachable_images(&ChainSpec::from_image(
            p("corrupt.qcow2"),
            Some(Format::Raw),
        ));
        assert_eq!(names(&raw), ["corrupt.qcow2"]);
    }
}
