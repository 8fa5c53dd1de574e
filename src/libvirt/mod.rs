//! The libvirt side: a connection that reconnects by itself, and the loading of a domain's
//! model (disks, snapshot tree, current snapshot) from libvirt's XML.

pub mod blockjob;
pub mod edit;
pub mod xml;

use std::sync::Arc;

use log::{info, warn};
use parking_lot::Mutex;
use virt::connect::Connect;

use crate::backend::{Backend, BackendError, BackendErrorKind, DomainState};
use crate::model::DomainModel;
use xml::DiskEntry;

pub struct LibvirtBackend {
    uri: Option<String>,
    conn: Mutex<Option<Arc<Connect>>>,
}

impl LibvirtBackend {
    /// Reads domain `name` (None: no such domain), taking the snapshots `known` has from it.
    fn load_domain_with(
        &self,
        name: &str,
        known: Option<&DomainModel>,
    ) -> Result<Option<DomainModel>, BackendError> {
        match self.with_connection(&format!("reading domain {name}"), |c| load(c, name, known)) {
            Ok(m) => Ok(Some(m)),
            Err(LoadError::NoDomain) => Ok(None),
            Err(LoadError::Backend(e)) => Err(e),
        }
    }

    /// Connects to `uri` (None: libvirt's default, LIBVIRT_DEFAULT_URI or its built-in one).
    /// Fails if the first connection fails, so a mistyped URI is reported at mount time.
    pub fn connect(uri: Option<String>) -> Result<LibvirtBackend, BackendError> {
        // libvirt prints every error to stderr by default; we log them ourselves, once.
        virt::error::clear_error_callback();
        let backend = LibvirtBackend {
            uri,
            conn: Mutex::new(None),
        };
        backend.connection()?;
        Ok(backend)
    }

    fn connection(&self) -> Result<Arc<Connect>, BackendError> {
        let mut slot = self.conn.lock();
        if let Some(conn) = slot.as_ref() {
            if conn.is_alive().unwrap_or(false) {
                return Ok(conn.clone());
            }
            warn!("libvirt connection lost; reconnecting");
            *slot = None;
        }
        let conn = Connect::open(self.uri.as_deref()).map_err(|e| {
            BackendError::failed(format!(
                "cannot connect to libvirt at {}: {}",
                self.uri.as_deref().unwrap_or("the default URI"),
                e.message()
            ))
        })?;
        if let Ok(uri) = conn.uri() {
            info!("connected to libvirt at {uri}");
        }
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `f` on the connection; on failure, checks the connection so the next call
    /// reconnects if it was lost.
    fn with_connection<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Connect) -> Result<T, virt::error::Error>,
    ) -> Result<T, LoadError> {
        let conn = self.connection().map_err(LoadError::Backend)?;
        f(&conn).map_err(|e| {
            if !conn.is_alive().unwrap_or(false) {
                *self.conn.lock() = None;
            }
            if matches!(
                e.code(),
                virt::enumutil::Enum::Known(virt::error::ErrorNumber::NoDomain)
            ) {
                LoadError::NoDomain
            } else {
                LoadError::Backend(BackendError {
                    kind: classify(&e),
                    message: format!("{what}: {}", e.message()),
                })
            }
        })
    }
}

enum LoadError {
    NoDomain,
    Backend(BackendError),
}

impl LoadError {
    fn into_backend(self, domain: &str) -> BackendError {
        match self {
            LoadError::NoDomain => BackendError {
                kind: BackendErrorKind::Invalid,
                message: format!("no domain {domain}"),
            },
            LoadError::Backend(e) => e,
        }
    }
}

/// Which kind of failure a libvirt error is, for choosing an errno.
fn classify(e: &virt::error::Error) -> BackendErrorKind {
    use virt::error::ErrorNumber as N;
    match e.code() {
        virt::enumutil::Enum::Known(
            N::InvalidArg | N::InvalidDomainSnapshot | N::NoDomainSnapshot | N::OperationInvalid,
        ) => BackendErrorKind::Invalid,
        virt::enumutil::Enum::Known(
            N::NoSupport | N::ConfigUnsupported | N::ArgumentUnsupported | N::OperationUnsupported,
        ) => BackendErrorKind::Unsupported,
        virt::enumutil::Enum::Known(
            N::ResourceBusy | N::BlockCopyActive | N::OperationTimeout | N::AgentUnresponsive,
        ) => BackendErrorKind::Busy,
        _ => BackendErrorKind::Failed,
    }
}

/// Times a domain is read again because a snapshot vanished while it was read.
const LOAD_ATTEMPTS: u32 = 10;

/// Reads domain `name`; a snapshot `known` has is taken from it instead (see
/// `Backend::load_domain_reusing`). A snapshot deleted between libvirt's listing and the
/// reading of its XML (another client at work: a script, a test suite tearing its domains
/// down) makes the listing out of date, not the domain unreadable: it is read again.
fn load(
    conn: &Connect,
    name: &str,
    known: Option<&DomainModel>,
) -> Result<DomainModel, virt::error::Error> {
    let mut attempt = 1;
    loop {
        match load_once(conn, name, known) {
            Err(e)
                if attempt < LOAD_ATTEMPTS
                    && matches!(
                        e.code(),
                        virt::enumutil::Enum::Known(virt::error::ErrorNumber::NoDomainSnapshot)
                    ) =>
            {
                log::debug!(
                    "domain {name}: a snapshot vanished while it was read ({}); reading it again",
                    e.message()
                );
                std::thread::sleep(std::time::Duration::from_millis(10 * u64::from(attempt)));
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// One reading of domain `name` (see [`load`]).
fn load_once(
    conn: &Connect,
    name: &str,
    known: Option<&DomainModel>,
) -> Result<DomainModel, virt::error::Error> {
    let dom = conn.lookup_domain_by_name(name)?;
    let xml = dom.xml_desc(0)?;
    let active = dom.is_active()?;
    let mut snapshots = Vec::new();
    let mut snapshots_read_at = std::time::Instant::now();
    let mut listed = dom.list_all_snapshots(0)?;
    if let Some(known) = known {
        let names = listed
            .iter()
            .map(|s| s.name())
            .collect::<Result<std::collections::HashSet<String>, _>>()?;
        // A snapshot gone means re-parented children: then every snapshot is read again.
        if known.snapshots.iter().all(|s| names.contains(&s.name)) {
            snapshots.extend(known.snapshots.iter().cloned());
            snapshots_read_at = known.snapshots_read_at;
            listed.retain(|s| s.name().is_ok_and(|n| known.snapshot(&n).is_none()));
        }
    }
    log::debug!(
        "domain {name}: reading {} snapshots' XML, {} known",
        listed.len(),
        snapshots.len()
    );
    // One call per snapshot, on several threads at once: a domain with 40 snapshots loads in
    // a third of the time.
    for snap_xml in on_threads(&listed, |s| s.xml_desc(0)) {
        match xml::parse_snapshot(&snap_xml?) {
            Ok((model, skipped)) => {
                log_skipped(name, Some(&model.name), &skipped);
                snapshots.push(model);
            }
            Err(e) => {
                warn!("domain {name}: a snapshot's XML cannot be read ({e}); it is not shown")
            }
        }
    }
    snapshots.sort_by(|a, b| (a.creation_time, &a.name).cmp(&(b.creation_time, &b.name)));
    let current = dom.current_snapshot(0).ok().and_then(|s| s.name().ok());
    let disks = match xml::parse_domain(&xml) {
        Ok(entries) => {
            log_skipped(name, None, &entries);
            entries
                .into_iter()
                .filter_map(|e| match e {
                    DiskEntry::Served(d) => Some(d),
                    DiskEntry::Skipped { .. } => None,
                })
                .collect()
        }
        Err(e) => {
            warn!("domain {name}: its XML cannot be read ({e}); no live disks are shown");
            Vec::new()
        }
    };
    Ok(DomainModel {
        name: name.to_string(),
        xml,
        active,
        disks,
        snapshots,
        current,
        snapshots_read_at,
    })
}

fn log_skipped(domain: &str, snapshot: Option<&str>, entries: &[DiskEntry]) {
    for e in entries {
        if let DiskEntry::Skipped { target, reason } = e {
            // Excluded disks are expected; only unusual skips are worth a warning.
            let at = snapshot.map_or(String::new(), |s| format!(" snapshot {s}"));
            log::debug!("domain {domain}{at} disk {target}: not shown: {reason}");
        }
    }
}

/// Threads making libvirt calls at once for one request. libvirtd runs 5 calls of one client
/// at a time by default (max_client_requests); more threads still overlap our waits with its
/// work: checking 57 domains took 26 ms on one thread, 16 ms on 5 and 13 ms on 10.
const CALL_THREADS: usize = 8;
/// Fewer items than this are not worth a thread each.
const ITEMS_PER_THREAD_MIN: usize = 4;

/// `f` of every item, in order, computed on up to CALL_THREADS threads.
fn on_threads<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    crate::parallel::on_threads(items, CALL_THREADS, ITEMS_PER_THREAD_MIN, f)
}

/// The domain's XML and its snapshots' names: what both fingerprints are made of.
fn xml_and_snapshot_names(
    dom: &virt::domain::Domain,
) -> Result<(String, Vec<String>), virt::error::Error> {
    let xml = dom.xml_desc(0)?;
    let mut names = Vec::new();
    for s in dom.list_all_snapshots(0)? {
        names.push(s.name()?);
    }
    Ok((xml, names))
}

/// A listed domain's name and layout fingerprint; None when it vanished meanwhile.
fn layout_fingerprint(
    dom: &virt::domain::Domain,
) -> Result<Option<(String, u64)>, virt::error::Error> {
    let name = dom.name()?;
    match xml_and_snapshot_names(dom) {
        Ok((xml, names)) => Ok(Some((
            name,
            DomainModel::layout_fingerprint_of(&xml, &names),
        ))),
        Err(e) => match e.code() {
            virt::enumutil::Enum::Known(virt::error::ErrorNumber::NoDomain) => Ok(None),
            _ => Err(e),
        },
    }
}

impl Backend for LibvirtBackend {
    fn list_domains(&self) -> Result<Vec<String>, BackendError> {
        let names = self.with_connection("listing domains", |c| {
            let mut names = Vec::new();
            for d in c.list_all_domains(0)? {
                names.push(d.name()?);
            }
            Ok(names)
        });
        match names {
            Ok(n) => Ok(n),
            Err(LoadError::Backend(e)) => Err(e),
            Err(LoadError::NoDomain) => Ok(Vec::new()),
        }
    }

    fn load_domain(&self, name: &str) -> Result<Option<DomainModel>, BackendError> {
        self.load_domain_with(name, None)
    }

    fn load_domain_reusing(
        &self,
        name: &str,
        known: &DomainModel,
    ) -> Result<Option<DomainModel>, BackendError> {
        self.load_domain_with(name, Some(known))
    }

    fn domain_fingerprint(&self, name: &str) -> Result<Option<u64>, BackendError> {
        let fp = self.with_connection(&format!("checking domain {name}"), |c| {
            let dom = c.lookup_domain_by_name(name)?;
            let (xml, names) = xml_and_snapshot_names(&dom)?;
            let current = dom.current_snapshot(0).ok().and_then(|s| s.name().ok());
            Ok(DomainModel::fingerprint_of(
                &xml,
                &names,
                current.as_deref(),
            ))
        });
        match fp {
            Ok(f) => Ok(Some(f)),
            Err(LoadError::NoDomain) => Ok(None),
            Err(LoadError::Backend(e)) => Err(e),
        }
    }

    fn layout_fingerprints(&self) -> Result<Vec<(String, u64)>, BackendError> {
        let listed = self.with_connection("checking all domains", |c| {
            let domains = c.list_all_domains(0)?;
            // Two calls per domain (XML and snapshot names), on several threads at once.
            let mut out = Vec::new();
            for r in on_threads(&domains, layout_fingerprint) {
                out.extend(r?);
            }
            Ok(out)
        });
        match listed {
            Ok(l) => Ok(l),
            Err(LoadError::Backend(e)) => Err(e),
            Err(LoadError::NoDomain) => Ok(Vec::new()),
        }
    }

    fn domain_state(&self, domain: &str) -> Result<DomainState, BackendError> {
        use virt::domain::DomainState as S;
        self.with_connection(&format!("state of domain {domain}"), |c| {
            let (state, _) = c.lookup_domain_by_name(domain)?.state()?;
            Ok(match state {
                virt::enumutil::Enum::Known(S::Running | S::Blocked) => DomainState::Running,
                virt::enumutil::Enum::Known(S::Paused) => DomainState::Paused,
                virt::enumutil::Enum::Known(S::Shutoff) => DomainState::ShutOff,
                _ => DomainState::Other,
            })
        })
        .map_err(|e| e.into_backend(domain))
    }

    fn inactive_xml(&self, domain: &str) -> Result<String, BackendError> {
        self.with_connection(&format!("XML of domain {domain}"), |c| {
            c.lookup_domain_by_name(domain)?
                .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE | virt::sys::VIR_DOMAIN_XML_SECURE)
        })
        .map_err(|e| e.into_backend(domain))
    }

    fn define_domain(&self, xml: &str) -> Result<(), BackendError> {
        self.with_connection("defining a domain", |c| {
            c.define_domain_xml(xml).map(|_| ())
        })
        .map_err(|e| e.into_backend("(new)"))
    }

    fn destroy_domain(&self, domain: &str) -> Result<(), BackendError> {
        self.with_connection(&format!("stopping domain {domain}"), |c| {
            c.lookup_domain_by_name(domain)?.destroy()
        })
        .map_err(|e| e.into_backend(domain))
    }

    fn create_snapshot(&self, domain: &str, xml: &str, flags: u32) -> Result<(), BackendError> {
        self.with_connection(&format!("creating a snapshot of {domain}"), |c| {
            c.lookup_domain_by_name(domain)?
                .create_snapshot_xml(xml, flags)
                .map(|_| ())
        })
        .map_err(|e| e.into_backend(domain))
    }

    fn revert_snapshot(&self, domain: &str, name: &str, flags: u32) -> Result<(), BackendError> {
        self.with_connection(&format!("reverting {domain} to {name}"), |c| {
            let dom = c.lookup_domain_by_name(domain)?;
            virt::domain::Domain::lookup_snapshot_by_name(&dom, name, 0)?.revert(flags)
        })
        .map_err(|e| e.into_backend(domain))
    }

    fn block_commit(
        &self,
        domain: &str,
        disk: &str,
        base: &std::path::Path,
        top: Option<&std::path::Path>,
        bandwidth: u64,
    ) -> Result<(), BackendError> {
        let base = base.to_string_lossy();
        let top = top.map(|t| t.to_string_lossy().into_owned());
        self.with_connection(&format!("block commit on {domain} disk {disk}"), |c| {
            let dom = c.lookup_domain_by_name(domain)?;
            blockjob::commit(&dom, disk, &base, top.as_deref(), bandwidth)
        })
        .map_err(|e| e.into_backend(domain))
    }

    fn block_job(&self, domain: &str, disk: &str) -> Result<Option<(u64, u64)>, BackendError> {
        self.with_connection(&format!("block job of {domain} disk {disk}"), |c| {
            let dom = c.lookup_domain_by_name(domain)?;
            Ok(blockjob::job_info(&dom, disk)?.map(|j| (j.cur, j.end)))
        })
        .map_err(|e| e.into_backend(domain))
    }

    fn block_job_abort(&self, domain: &str, disk: &str, pivot: bool) -> Result<(), BackendError> {
        self.with_connection(&format!("ending block job of {domain} disk {disk}"), |c| {
            let dom = c.lookup_domain_by_name(domain)?;
            blockjob::abort(&dom, disk, pivot)
        })
        .map_err(|e| e.into_backend(domain))
    }

    fn delete_snapshot(&self, domain: &str, name: &str, flags: u32) -> Result<(), BackendError> {
        self.with_connection(&format!("deleting snapshot {name} of {domain}"), |c| {
            let dom = c.lookup_domain_by_name(domain)?;
            virt::domain::Domain::lookup_snapshot_by_name(&dom, name, 0)?.delete(flags)
        })
        .map_err(|e| e.into_backend(domain))
    }
}
