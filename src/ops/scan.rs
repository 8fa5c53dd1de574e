//! The dependency scan: every chain of every domain (live disks and all snapshots' disks) and
//! the images each one reads, so that an operation can be sure nothing else still needs an
//! image before it rewrites or removes it.
//!
//! Every scan asks libvirt for two things per domain, its XML and its snapshots' names (the
//! layout fingerprint): without them the current state is unknown. Everything else is reused
//! while it provably still holds:
//! - a domain's model, while its layout fingerprint is unchanged and its snapshot XML was read
//!   within `SNAPSHOT_XML_TRUSTED_FOR` (a snapshot redefined in place changes neither);
//! - an image's layers (its backing chain), while none of its files changed (mtime and size),
//!   for at most `LAYERS_KEPT`;
//! - a domain's chains, while its model is the same one and the files they were read from
//!   are unchanged, for at most `LAYERS_KEPT` after the oldest of their layers was read.
//!
//! Merges, which re-point images and redefine snapshots without changing names, make the scan
//! forget everything.
//!
//! A chain that cannot be opened whole (a missing or corrupt image, a backing loop) still
//! counts as reading every image its names reach, up to the break (see
//! `images::reachable_images`): it is *broken*, and an operation that would rewrite or remove
//! one of those images is refused (`ChainUse::refuse_if_broken_and_reads`), while operations
//! that touch none of them go ahead. Only a chain whose reach cannot be bounded at all (a
//! header that says it has a backing file whose name cannot be read) fails the scan, and with
//! it every operation that needs one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::images::{canonical, file_stamp, reachable_images, FileStamp};
use crate::backend::{Backend, BackendError};
use crate::cache::MetadataCache;
use crate::error::FsError;
use crate::fs_err;
use crate::image::{open_chain, ChainSpec, Format};
use crate::model::DomainModel;

/// How long layers read from images are trusted while their files look unchanged (our own
/// operations forget them at once; this bounds trust in images changed by other tools).
const LAYERS_KEPT: Duration = Duration::from_secs(30);

/// One chain of a domain: whose it is, and its layers top first (canonical paths).
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
    /// Why the chain cannot be read whole, when it cannot: `layers` are then the images its
    /// names reach up to the break.
    pub broken: Option<String>,
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

    /// Refuses `what`, which rewrites or removes `image`, when this chain cannot be read whole
    /// and still reads `image` (with `current_only`, only its current contents count, as for
    /// an internal revert, which keeps every internal snapshot). A chain that can be read whole
    /// is left to the operation's own checks.
    pub fn refuse_if_broken_and_reads(
        &self,
        image: &Path,
        current_only: bool,
        what: impl FnOnce() -> String,
    ) -> Result<(), FsError> {
        let Some(reason) = &self.broken else {
            return Ok(());
        };
        let reads = if current_only {
            self.active_images()
        } else {
            &self.layers
        };
        if !reads.iter().any(|l| l == image) {
            return Ok(());
        }
        let remove = match &self.snapshot {
            Some(s) => format!(
                "delete that snapshot's metadata (virsh snapshot-delete {} {s} --metadata)",
                self.domain
            ),
            None => format!(
                "remove the disk from the domain (virsh detach-disk {} {} --config) or undefine the domain",
                self.domain, self.target
            ),
        };
        Err(fs_err!(
            Busy,
            "refused: {} would rewrite or remove {}, which {} reads, and that disk cannot be read whole ({reason}); repair it (restore its missing files, or run qemu-img check -r all on a corrupt image) or {remove}, then retry",
            what(),
            image.display(),
            self.who()
        ))
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

/// The layers (canonical paths, top first) and formats of the chain a `ChainSpec` describes.
pub type Layers = (Vec<PathBuf>, Vec<Format>);

/// What a chain reads: its layers; for a chain that cannot be opened whole, the images its
/// names reach up to the break, and why it cannot be opened.
#[derive(Debug, Clone)]
pub struct Reach {
    pub layers: Layers,
    pub broken: Option<String>,
}

impl Reach {
    fn whole(layers: Layers) -> Reach {
        Reach {
            layers,
            broken: None,
        }
    }
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

/// Opens `spec` and lists its layers. A chain that cannot be opened whole (a missing image, a
/// corrupt one, a backing loop) is broken: it counts as reading the images its names reach up
/// to the break (`images::reachable_images`). Err: what it reads cannot be bounded.
pub fn chain_layers(spec: &ChainSpec, cache: &Arc<MetadataCache>) -> Result<Reach, String> {
    let error = match open_chain(spec, cache.clone()) {
        Ok(chain) => {
            return Ok(Reach::whole((
                chain.layers().iter().map(|l| canonical(&l.path)).collect(),
                chain.layers().iter().map(|l| l.format).collect(),
            )))
        }
        Err(e) => e.to_string(),
    };
    let reached = reachable_images(spec);
    if let Some(why) = reached.unbounded {
        return Err(format!("{error}; {why}"));
    }
    log::info!(
        "{} cannot be read whole ({error}): it counts as reading {}",
        spec.top.path.display(),
        reached
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Reach {
        layers: (reached.paths, reached.formats),
        broken: Some(error),
    })
}

/// Every chain of one domain: its live disks and all its snapshots' disks, their layers found
/// by `layers`. A chain whose reach cannot be bounded fails the scan: without knowing what it
/// needs, nothing may be rewritten.
pub fn domain_chains(
    model: &DomainModel,
    layers: &mut dyn FnMut(&ChainSpec) -> Result<Reach, String>,
) -> Result<Vec<ChainUse>, FsError> {
    let live = model.disks.iter().map(|d| (None, d));
    let snapshots = model
        .snapshots
        .iter()
        .flat_map(|s| s.disks.iter().map(move |d| (Some(&s.name), d)));
    live.chain(snapshots)
        .map(|(snapshot, disk)| {
            let reach = layers(&disk.chain).map_err(|e| {
                fs_err!(
                    Busy,
                    "refused: cannot tell which images the {} of domain {} (disk {}) reads ({e}), so cannot prove that nothing else needs the images this operation changes; repair that disk's image or remove the disk from the domain (or undefine the domain), then retry",
                    snapshot.map_or("live disk".to_string(), |s| format!("snapshot {s}")),
                    model.name,
                    disk.target
                )
            })?;
            Ok(ChainUse {
                domain: model.name.clone(),
                snapshot: snapshot.cloned(),
                target: disk.target.clone(),
                layers: reach.layers.0,
                formats: reach.layers.1,
                reads_internal_snapshot: disk.chain.snapshot.is_some(),
                broken: reach.broken,
            })
        })
        .collect()
}

/// The chains one scan found, domain by domain.
pub struct Chains(Vec<Arc<[ChainUse]>>);

impl Chains {
    pub fn iter(&self) -> impl Iterator<Item = &ChainUse> {
        self.0.iter().flat_map(|d| d.iter())
    }

    /// The broken chains, each with what it reaches: equal between two scans when nothing
    /// changed in between.
    fn broken(&self) -> Vec<String> {
        self.iter()
            .filter_map(|c| {
                let reason = c.broken.as_ref()?;
                Some(format!("{}: {reason}: {:?}", c.who(), c.layers))
            })
            .collect()
    }
}

/// Every domain's layout fingerprint, being fetched from libvirt on another thread while the
/// operation that will scan loads its own domain (see `DependencyScan::start_fetch`).
pub struct LayoutFetch(std::thread::JoinHandle<Result<Vec<(String, u64)>, BackendError>>);

impl LayoutFetch {
    fn wait(self) -> Result<Vec<(String, u64)>, BackendError> {
        self.0
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

/// What the scan last used of one domain.
struct SeenDomain {
    model: Arc<DomainModel>,
    /// `model.layout_fingerprint()`, computed once.
    layout: u64,
    /// The model's chains, once found.
    chains: Option<SeenChains>,
}

impl SeenDomain {
    fn new(model: Arc<DomainModel>) -> SeenDomain {
        SeenDomain {
            layout: model.layout_fingerprint(),
            model,
            chains: None,
        }
    }
}

/// A domain's chains, when the oldest of their layers was read, and the stamp of every file
/// they were read from (each top image and each layer).
struct SeenChains {
    read_at: Instant,
    stamps: Vec<(PathBuf, FileStamp)>,
    uses: Arc<[ChainUse]>,
}

/// An image's layers, when they were read, and their files' stamps.
struct SeenLayers {
    read_at: Instant,
    stamps: Vec<FileStamp>,
    reach: Reach,
}

/// Files stat'ed during one scan: each once, however many chains share it.
#[derive(Default)]
struct ScanStamps(HashMap<PathBuf, FileStamp>);

impl ScanStamps {
    fn of(&mut self, path: &Path) -> FileStamp {
        if let Some(stamp) = self.0.get(path) {
            return *stamp;
        }
        let stamp = file_stamp(path);
        self.0.insert(path.to_path_buf(), stamp);
        stamp
    }
}

/// The key of `DependencyScan::layers` that `spec`'s layers are kept under: its image, as
/// every internal snapshot of an image has that image's backing chain.
fn layers_key(spec: &ChainSpec) -> ChainSpec {
    ChainSpec {
        snapshot: None,
        ..spec.clone()
    }
}

pub struct DependencyScan {
    backend: Arc<dyn Backend>,
    cache: Arc<MetadataCache>,
    domains: Mutex<HashMap<String, SeenDomain>>,
    /// Layers by image (a `ChainSpec` without snapshot): every internal snapshot of an image
    /// has that image's backing chain.
    layers: Mutex<HashMap<ChainSpec, SeenLayers>>,
}

impl DependencyScan {
    pub fn new(backend: Arc<dyn Backend>, cache: Arc<MetadataCache>) -> DependencyScan {
        DependencyScan {
            backend,
            cache,
            domains: Mutex::new(HashMap::new()),
            layers: Mutex::new(HashMap::new()),
        }
    }

    /// Starts fetching every domain's layout fingerprint on another thread, for an operation
    /// that will scan: the fetch, the bulk of a scan's time, then overlaps the operation's
    /// own loading. Start it only once the operation holds its domain's lock, so that what
    /// is fetched is not older than the operation.
    pub fn start_fetch(&self) -> LayoutFetch {
        let backend = self.backend.clone();
        LayoutFetch(std::thread::spawn(move || backend.layout_fingerprints()))
    }

    /// Takes a model just loaded from libvirt (the one an operation works on), so it is not
    /// loaded again; it is still used only if its fingerprint is current.
    pub fn remember(&self, model: &DomainModel) {
        let seen = SeenDomain::new(Arc::new(model.clone()));
        self.domains.lock().insert(model.name.clone(), seen);
    }

    /// Takes models the filesystem has loaded (to show the tree): the first operation after
    /// mounting then loads only the domains nobody has looked at. One whose snapshot XML is
    /// no longer trusted is not taken; one that differs from the model the scan has is, as
    /// the tree's models are checked against libvirt every refresh interval and the scan's
    /// only at operations. As with any seen model, the scan uses one only while its layout
    /// fingerprint is current and its snapshot XML trusted.
    pub fn offer(&self, models: Vec<Arc<DomainModel>>) {
        let mut seen = self.domains.lock();
        for m in models.into_iter().filter(|m| m.snapshots_trusted()) {
            let keep_seen = seen.get(&m.name).is_some_and(|old| {
                Arc::ptr_eq(&old.model, &m)
                    || old.model.snapshots_trusted() && old.layout == m.layout_fingerprint()
            });
            if !keep_seen {
                seen.insert(m.name.clone(), SeenDomain::new(m));
            }
        }
    }

    /// Forgets every model, layer and chain seen (after a merge re-pointed images and
    /// redefined snapshots, which leaves names, and so fingerprints, as they were).
    pub fn forget(&self) {
        self.domains.lock().clear();
        self.layers.lock().clear();
    }

    /// Forgets the models and image layers of the domains with a broken chain in `chains`, so
    /// that the next reading loads them afresh. Only those: the other domains' models are
    /// still checked against their layout fingerprints and their chains against their files'
    /// stamps, as in any scan. (Forgetting every domain made each operation on a host with one
    /// broken domain load every snapshot's XML of every domain twice: 2,000 snapshots, 0.4 s.)
    fn forget_broken(&self, chains: &Chains, models: &[Arc<DomainModel>]) {
        let broken: HashSet<&str> = chains
            .iter()
            .filter(|c| c.broken.is_some())
            .map(|c| c.domain.as_str())
            .collect();
        let mut layers = self.layers.lock();
        let mut domains = self.domains.lock();
        for m in models.iter().filter(|m| broken.contains(m.name.as_str())) {
            let snapshot_disks = m.snapshots.iter().flat_map(|s| s.disks.iter());
            for disk in m.disks.iter().chain(snapshot_disks) {
                layers.remove(&layers_key(&disk.chain));
            }
            domains.remove(&m.name);
        }
    }

    /// Every domain's model as libvirt has it now, as far as which images it reads (what a
    /// scan starts from; tests look at it alone).
    #[cfg(test)]
    pub fn models(&self) -> Result<Vec<Arc<DomainModel>>, FsError> {
        let fingerprints = self
            .backend
            .layout_fingerprints()
            .map_err(super::backend_err)?;
        self.models_for(&fingerprints)
    }

    /// The models of the domains `fingerprints` lists: a model seen before whose layout
    /// fingerprint is that one and whose snapshot XML is trusted, else one loaded now.
    fn models_for(&self, fingerprints: &[(String, u64)]) -> Result<Vec<Arc<DomainModel>>, FsError> {
        let reusable: Vec<Option<Arc<DomainModel>>> = {
            let seen = self.domains.lock();
            fingerprints
                .iter()
                .map(|(name, fingerprint)| {
                    seen.get(name)
                        .filter(|s| s.layout == *fingerprint && s.model.snapshots_trusted())
                        .map(|s| s.model.clone())
                })
                .collect()
        };
        let mut models = Vec::with_capacity(fingerprints.len());
        let mut loaded = Vec::new();
        for ((name, _), reuse) in fingerprints.iter().zip(reusable) {
            if let Some(m) = reuse {
                models.push(m);
                continue;
            }
            // None: the domain vanished since it was listed.
            if let Some(m) = self.backend.load_domain(name).map_err(super::backend_err)? {
                let m = Arc::new(m);
                loaded.push(m.clone());
                models.push(m);
            }
        }
        let mut seen = self.domains.lock();
        let listed: HashSet<&str> = models.iter().map(|m| m.name.as_str()).collect();
        seen.retain(|name, _| listed.contains(name.as_str()));
        for m in loaded {
            seen.insert(m.name.clone(), SeenDomain::new(m));
        }
        Ok(models)
    }

    /// Every chain of every domain, as libvirt and the images have them now. `fetch` is the
    /// layout fetch the operation started, if it did.
    pub fn chains(&self, mut fetch: Option<LayoutFetch>) -> Result<Chains, FsError> {
        // Another operation (on another domain) may be re-pointing images right now: a chain
        // that vanished while being read is read again before the scan gives up.
        let mut attempt = 0;
        let mut broken_before = None;
        let started = Instant::now();
        loop {
            let fingerprints = match fetch.take() {
                Some(f) => f.wait(),
                None => self.backend.layout_fingerprints(),
            }
            .map_err(super::backend_err)?;
            let models = self.models_for(&fingerprints)?;
            let models_at = started.elapsed();
            match self.chains_of(&models) {
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    log::debug!("dependency scan, attempt {attempt}: {e}");
                    self.forget();
                    std::thread::sleep(Duration::from_millis(200));
                }
                // A chain that breaks while another operation re-points it (its old backing
                // file removed as it is read) would count as reading too little: a broken
                // chain is believed once a second reading finds it broken the same way.
                Ok(chains)
                    if attempt < 3
                        && !chains.broken().is_empty()
                        && broken_before.as_ref() != Some(&chains.broken()) =>
                {
                    attempt += 1;
                    broken_before = Some(chains.broken());
                    log::debug!("dependency scan, attempt {attempt}: broken chains, reading again");
                    self.forget_broken(&chains, &models);
                    std::thread::sleep(Duration::from_millis(20));
                }
                result => {
                    log::debug!(
                        "dependency scan: {} domains in {:.1} ms, their chains in {:.1} ms",
                        models.len(),
                        models_at.as_secs_f64() * 1e3,
                        (started.elapsed() - models_at).as_secs_f64() * 1e3
                    );
                    return result;
                }
            }
        }
    }

    /// The chains of `models`: those found before for the same model while their files are
    /// unchanged, the others found now.
    fn chains_of(&self, models: &[Arc<DomainModel>]) -> Result<Chains, FsError> {
        let mut stamps = ScanStamps::default();
        let mut out = Vec::with_capacity(models.len());
        for m in models {
            let kept = self
                .domains
                .lock()
                .get(&m.name)
                .filter(|s| Arc::ptr_eq(&s.model, m))
                .and_then(|s| s.chains.as_ref())
                .filter(|c| c.read_at.elapsed() < LAYERS_KEPT)
                .map(|c| (c.stamps.clone(), c.uses.clone()));
            if let Some((kept_stamps, uses)) = kept {
                if kept_stamps.iter().all(|(p, s)| stamps.of(p) == *s) {
                    out.push(uses);
                    continue;
                }
            }
            let seen = self.find_chains(m, &mut stamps)?;
            let uses = seen.uses.clone();
            if let Some(s) = self.domains.lock().get_mut(&m.name) {
                if Arc::ptr_eq(&s.model, m) {
                    s.chains = Some(seen);
                }
            }
            out.push(uses);
        }
        Ok(Chains(out))
    }

    /// Finds the chains of one domain, each image's layers read once per `LAYERS_KEPT`.
    fn find_chains(
        &self,
        model: &DomainModel,
        stamps: &mut ScanStamps,
    ) -> Result<SeenChains, FsError> {
        let mut read_at = Instant::now();
        let mut files: Vec<PathBuf> = Vec::new();
        let mut layers = |spec: &ChainSpec| -> Result<Reach, String> {
            files.push(spec.top.path.clone());
            if let Some(stated) = stated_layers(spec) {
                files.extend(stated.0.iter().cloned());
                return Ok(Reach::whole(stated));
            }
            // An internal snapshot the image lacks is read as nothing; counting the image's
            // layers for it only adds dependencies.
            let image = layers_key(spec);
            let kept = self.layers.lock().get(&image).and_then(|seen| {
                let fresh = seen.read_at.elapsed() < LAYERS_KEPT
                    && seen
                        .reach
                        .layers
                        .0
                        .iter()
                        .map(|p| stamps.of(p))
                        .eq(seen.stamps.iter().copied());
                fresh.then(|| (seen.read_at, seen.reach.clone()))
            });
            let (at, l) = match kept {
                Some(k) => k,
                None => {
                    let l = chain_layers(&image, &self.cache)?;
                    let seen = SeenLayers {
                        read_at: Instant::now(),
                        stamps: l.layers.0.iter().map(|p| stamps.of(p)).collect(),
                        reach: l.clone(),
                    };
                    let at = seen.read_at;
                    self.layers.lock().insert(image, seen);
                    (at, l)
                }
            };
            read_at = read_at.min(at);
            files.extend(l.layers.0.iter().cloned());
            Ok(l)
        };
        let uses = domain_chains(model, &mut layers)?;
        files.sort();
        files.dedup();
        Ok(SeenChains {
            read_at,
            stamps: files
                .into_iter()
                .map(|p| {
                    let stamp = stamps.of(&p);
                    (p, stamp)
                })
                .collect(),
            uses: uses.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DiskModel;
    use crate::ops::images::{create_overlay, rebase_unsafe};

    fn qemu_img(args: &[&str]) {
        let out = std::process::Command::new("qemu-img")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    }

    fn scan() -> DependencyScan {
        let backend: Arc<dyn Backend> = Arc::new(
            crate::libvirt::LibvirtBackend::connect(Some("test:///default".into())).unwrap(),
        );
        DependencyScan::new(backend, Arc::new(MetadataCache::new(1 << 20)))
    }

    /// A shut-off domain whose one disk is `image`, read through its backing chain.
    fn domain_on(image: &Path) -> Arc<DomainModel> {
        Arc::new(DomainModel {
            name: "d".into(),
            xml: "<domain/>".into(),
            active: false,
            disks: vec![DiskModel {
                target: "vda".into(),
                chain: ChainSpec::from_image(image, Some(Format::Qcow2)),
                overlay: None,
            }],
            snapshots: Vec::new(),
            current: None,
            snapshots_read_at: Instant::now(),
        })
    }

    fn layer_names(chains: &Chains) -> Vec<String> {
        let live = chains.iter().next().unwrap();
        live.layers
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_domains_chains_are_reused_only_while_its_model_and_files_are_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", &p("a.qcow2"), "1M"]);
        qemu_img(&["create", "-q", "-f", "qcow2", &p("b.qcow2"), "1M"]);
        let top = p("top.qcow2");
        create_overlay(Path::new(&p("a.qcow2")), Format::Qcow2, Path::new(&top)).unwrap();
        let scan = scan();
        let model = domain_on(Path::new(&top));
        scan.offer(vec![model.clone()]);

        let first = scan.chains_of(std::slice::from_ref(&model)).unwrap();
        assert_eq!(layer_names(&first), ["top.qcow2", "a.qcow2"]);
        let again = scan.chains_of(std::slice::from_ref(&model)).unwrap();
        assert!(Arc::ptr_eq(&first.0[0], &again.0[0]), "unchanged: reused");

        // The same files, but another model (one an operation reloaded): found again.
        scan.remember(&domain_on(Path::new(&top)));
        let seen = scan.domains.lock().get("d").unwrap().model.clone();
        let other = scan.chains_of(&[seen]).unwrap();
        assert!(!Arc::ptr_eq(&first.0[0], &other.0[0]));

        // The top image re-pointed by another tool (its header rewritten): found again, with
        // the new backing file, although the model is the same.
        std::thread::sleep(Duration::from_millis(10));
        rebase_unsafe(Path::new(&top), Path::new(&p("b.qcow2")), Format::Qcow2).unwrap();
        let seen = scan.domains.lock().get("d").unwrap().model.clone();
        let rebased = scan.chains_of(&[seen]).unwrap();
        assert_eq!(layer_names(&rebased), ["top.qcow2", "b.qcow2"]);
    }

    /// Overwrites cluster_bits in `path`'s header: the image cannot be opened, but its header
    /// still names its backing file.
    fn corrupt(path: &str) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&[0, 0, 0, 40], 20).unwrap();
    }

    #[test]
    fn a_broken_chain_counts_as_reading_what_its_names_reach_and_blocks_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", &p("a.qcow2"), "1M"]);
        qemu_img(&["create", "-q", "-f", "qcow2", &p("other.qcow2"), "1M"]);
        let top = p("top.qcow2");
        create_overlay(Path::new(&p("a.qcow2")), Format::Qcow2, Path::new(&top)).unwrap();
        corrupt(&top);
        let scan = scan();
        let chains = scan.chains_of(&[domain_on(Path::new(&top))]).unwrap();
        assert_eq!(layer_names(&chains), ["top.qcow2", "a.qcow2"]);
        let live = chains.iter().next().unwrap();
        assert!(live.broken.as_ref().unwrap().contains("cluster_bits"));

        let a = canonical(Path::new(&p("a.qcow2")));
        let err = live
            .refuse_if_broken_and_reads(&a, true, || "reverting domain h to s".into())
            .unwrap_err();
        assert_eq!(err.kind, crate::error::ErrorKind::Busy);
        for part in [
            "reverting domain h to s",
            "the live disk vda of domain d",
            "cluster_bits",
            "repair it",
            "virsh detach-disk d vda",
        ] {
            assert!(err.message.contains(part), "{part}: {}", err.message);
        }
        let other = canonical(Path::new(&p("other.qcow2")));
        assert!(live
            .refuse_if_broken_and_reads(&other, false, String::new)
            .is_ok());
    }

    #[test]
    fn reading_a_broken_chain_again_reloads_only_its_domain() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", &p("a.qcow2"), "1M"]);
        qemu_img(&["create", "-q", "-f", "qcow2", &p("b.qcow2"), "1M"]);
        let (broken_top, healthy_top) = (p("broken.qcow2"), p("healthy.qcow2"));
        create_overlay(
            Path::new(&p("a.qcow2")),
            Format::Qcow2,
            Path::new(&broken_top),
        )
        .unwrap();
        create_overlay(
            Path::new(&p("b.qcow2")),
            Format::Qcow2,
            Path::new(&healthy_top),
        )
        .unwrap();
        corrupt(&broken_top);
        let broken = domain_on(Path::new(&broken_top));
        let healthy = Arc::new(DomainModel {
            name: "e".into(),
            ..(*domain_on(Path::new(&healthy_top))).clone()
        });
        let scan = scan();
        scan.offer(vec![broken.clone(), healthy.clone()]);
        let models = [broken, healthy];
        let first = scan.chains_of(&models).unwrap();
        assert_eq!(first.broken().len(), 1, "{:?}", first.broken());

        scan.forget_broken(&first, &models);
        assert!(
            !scan.domains.lock().contains_key("d"),
            "the broken domain is reloaded"
        );
        let healthy_image = ChainSpec::from_image(Path::new(&healthy_top), Some(Format::Qcow2));
        assert!(scan.layers.lock().contains_key(&healthy_image));
        assert!(!scan.layers.lock().contains_key(&ChainSpec::from_image(
            Path::new(&broken_top),
            Some(Format::Qcow2)
        )));
        // The healthy domain's model and chains are kept: the same chains, not read again.
        let again = scan.chains_of(&models[1..]).unwrap();
        assert!(Arc::ptr_eq(&first.0[1], &again.0[0]));
    }

    #[test]
    fn a_chain_whose_reach_cannot_be_bounded_fails_the_scan_naming_domain_disk_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        // An overlay cut inside its backing file's name: which file it names is unknown.
        let base = p(&format!("{}.qcow2", "b".repeat(200)));
        qemu_img(&["create", "-q", "-f", "qcow2", &base, "1M"]);
        let top = p("top.qcow2");
        create_overlay(Path::new(&base), Format::Qcow2, Path::new(&top)).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&top).unwrap();
        f.set_len(300).unwrap();
        let err = scan()
            .chains_of(&[domain_on(Path::new(&top))])
            .err()
            .unwrap();
        assert_eq!(err.kind, crate::error::ErrorKind::Busy);
        for part in [
            "cannot tell which images",
            "domain d (disk vda)",
            "names a backing file, but its name",
            "repair",
        ] {
            assert!(err.message.contains(part), "{part}: {}", err.message);
        }
    }
}
