//! Domain models as the filesystem sees them, refreshed from the backend when older than the
//! refresh interval, so changes made with virsh or virt-manager show within that interval.
//!
//! When libvirt cannot be reached, the last models seen keep being served (logged once per
//! failure) and the backend reconnects on a later refresh; only what was never loaded fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;
use parking_lot::Mutex;

use crate::backend::Backend;
use crate::error::FsError;
use crate::fs_err;
use crate::model::DomainModel;

/// A list of domain names, shared.
type Names = Arc<Vec<String>>;
/// A domain's model, or None when the domain does not exist.
type Model = Option<Arc<DomainModel>>;

struct Cached<T> {
    loaded: Instant,
    value: T,
}

/// A domain's model and when it was last checked against libvirt. When its snapshot XML was
/// last read in full is the model's own `snapshots_read_at`.
struct CachedDomain {
    checked: Instant,
    model: Option<Arc<DomainModel>>,
}

pub struct Catalog {
    backend: Arc<dyn Backend>,
    refresh: Duration,
    names: Mutex<Option<Cached<Arc<Vec<String>>>>>,
    domains: Mutex<HashMap<String, CachedDomain>>,
}

impl Catalog {
    pub fn new(backend: Arc<dyn Backend>, refresh: Duration) -> Catalog {
        Catalog {
            backend,
            refresh,
            names: Mutex::new(None),
            domains: Mutex::new(HashMap::new()),
        }
    }

    /// The names of all domains.
    pub fn domain_names(&self) -> Result<Arc<Vec<String>>, FsError> {
        if let Some(c) = self.names.lock().as_ref() {
            if c.loaded.elapsed() < self.refresh {
                return Ok(c.value.clone());
            }
        }
        match self.backend.list_domains() {
            Ok(mut names) => {
                names.sort();
                let names = Arc::new(names);
                *self.names.lock() = Some(Cached {
                    loaded: Instant::now(),
                    value: names.clone(),
                });
                Ok(names)
            }
            Err(e) => match self.names.lock().as_ref() {
                Some(c) => {
                    warn!("{e}; showing the domains as last seen");
                    Ok(c.value.clone())
                }
                None => Err(fs_err!(Io, "{e}")),
            },
        }
    }

    /// The model of domain `name`, or None if there is no such domain. Older than the
    /// refresh interval, it is checked against libvirt with a cheap fingerprint and reloaded
    /// only when that changed, or in full once its snapshot XML is no longer trusted (a
    /// snapshot's XML edited in place does not change the fingerprint; see
    /// `SNAPSHOT_XML_TRUSTED_FOR`).
    pub fn domain(&self, name: &str) -> Result<Option<Arc<DomainModel>>, FsError> {
        let cached = self
            .domains
            .lock()
            .get(name)
            .map(|c| (c.checked.elapsed(), c.model.clone()));
        // A domain known not to exist has no snapshot XML to distrust.
        let trusted =
            |model: &Option<Arc<DomainModel>>| model.as_ref().is_none_or(|m| m.snapshots_trusted());
        if let Some((checked, model)) = &cached {
            if *checked < self.refresh {
                return Ok(model.clone());
            }
            if trusted(model) {
                let current = model.as_ref().map(|m| m.fingerprint());
                if let Ok(fp) = self.backend.domain_fingerprint(name) {
                    if fp == current {
                        if let Some(c) = self.domains.lock().get_mut(name) {
                            c.checked = Instant::now();
                        }
                        return Ok(model.clone());
                    }
                }
            }
        }
        // While trusted, the snapshots already loaded are kept (as an unchanged fingerprint
        // is): only new ones are read, and the model keeps the time of its last full read.
        let reusable = cached
            .as_ref()
            .filter(|(_, model)| trusted(model))
            .and_then(|(_, model)| model.clone());
        let loaded = match &reusable {
            Some(known) => self.backend.load_domain_reusing(name, known),
            None => self.backend.load_domain(name),
        };
        match loaded {
            Ok(model) => {
                let model = model.map(Arc::new);
                let now = Instant::now();
                self.domains.lock().insert(
                    name.to_string(),
                    CachedDomain {
                        checked: now,
                        model: model.clone(),
                    },
                );
                Ok(model)
            }
            Err(e) => match cached {
                Some((_, model)) => {
                    warn!("{e}; showing domain {name} as last seen");
                    Ok(model)
                }
                None => Err(fs_err!(Io, "{e}")),
            },
        }
    }

    /// Names of the domains whose models are loaded (what the kernel may have cached).
    pub fn loaded_domains(&self) -> Vec<String> {
        self.domains.lock().keys().cloned().collect()
    }

    /// The models loaded so far, as last checked (not checked again now).
    pub fn loaded_models(&self) -> Vec<Arc<DomainModel>> {
        self.domains
            .lock()
            .values()
            .filter_map(|c| c.model.clone())
            .collect()
    }

    /// The domain names as last listed, without asking libvirt.
    pub fn known_names(&self) -> Option<Arc<Vec<String>>> {
        self.names.lock().as_ref().map(|c| c.value.clone())
    }

    /// Re-lists the domains now; returns (before, after) when the list changed.
    pub fn recheck_names(&self) -> Option<(Names, Names)> {
        let before = self.known_names()?;
        *self.names.lock() = None;
        let after = self.domain_names().ok()?;
        (before != after).then_some((before, after))
    }

    /// Checks domain `name` against libvirt now (fingerprint, reload if changed); returns the
    /// old and new models when what they show differs (a reload that found the same is no
    /// change).
    pub fn recheck(&self, name: &str) -> Option<(Model, Model)> {
        let before = self.domains.lock().get(name).map(|c| c.model.clone())?;
        // Expire it so domain() consults libvirt (or drop it, to reload in full).
        let expired = Instant::now().checked_sub(self.refresh + Duration::from_millis(1));
        match expired {
            Some(t) => {
                if let Some(c) = self.domains.lock().get_mut(name) {
                    c.checked = t;
                }
            }
            None => {
                self.domains.lock().remove(name);
            }
        }
        let after = self.domain(name).ok()?;
        let same = match (&before, &after) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => true,
            (Some(a), Some(b)) if a.shows_the_same_as(b) => {
                log::debug!("domain {name}: read again in full, unchanged");
                true
            }
            (None, None) => true,
            _ => false,
        };
        (!same).then_some((before, after))
    }

    /// The model of `name` checked against libvirt now (fingerprint; reloaded if changed),
    /// for operations that must act on the current state.
    pub fn fresh(&self, name: &str) -> Result<Option<Arc<DomainModel>>, FsError> {
        self.recheck(name);
        self.domain(name)
    }

    /// Forgets what is cached of `name`, so the next access reloads it.
    pub fn invalidate(&self, name: &str) {
        self.domains.lock().remove(name);
        *self.names.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SNAPSHOT_XML_TRUSTED_FOR;

    /// A catalog over libvirt's test driver, with `domain` defined in it (the driver's state
    /// is shared by every connection of the process, so each test uses its own domain).
    fn catalog_with(domain: &str) -> (virt::connect::Connect, Catalog) {
        let uri = "test:///default";
        let conn = virt::connect::Connect::open(Some(uri)).unwrap();
        conn.define_domain_xml(&format!(
            "<domain type='test'><name>{domain}</name><memory>65536</memory>\
             <os><type>hvm</type></os></domain>"
        ))
        .unwrap();
        let backend = crate::libvirt::LibvirtBackend::connect(Some(uri.into())).unwrap();
        (conn, Catalog::new(Arc::new(backend), Duration::ZERO))
    }

    /// Makes the cached model of `name` look as if its snapshot XML was read long ago.
    fn age(catalog: &Catalog, name: &str) {
        let mut domains = catalog.domains.lock();
        let cached = domains.get_mut(name).unwrap();
        let mut model = (**cached.model.as_ref().unwrap()).clone();
        model.snapshots_read_at = Instant::now()
            .checked_sub(SNAPSHOT_XML_TRUSTED_FOR + Duration::from_secs(1))
            .unwrap();
        cached.model = Some(Arc::new(model));
    }

    #[test]
    fn a_full_reload_that_finds_the_same_is_no_change() {
        let (conn, catalog) = catalog_with("catalog-reload");
        let dom = conn.lookup_domain_by_name("catalog-reload").unwrap();
        dom.create_snapshot_xml("<domainsnapshot><name>a</name></domainsnapshot>", 0)
            .unwrap();
        assert!(catalog.domain("catalog-reload").unwrap().is_some());
        age(&catalog, "catalog-reload");
        assert!(catalog.recheck("catalog-reload").is_none());
        // It was read again in full, not merely trusted.
        let reloaded = catalog.domain("catalog-reload").unwrap().unwrap();
        assert!(reloaded.snapshots_trusted());

        // A real change still is one.
        dom.create_snapshot_xml("<domainsnapshot><name>b</name></domainsnapshot>", 0)
            .unwrap();
        let (before, after) = catalog.recheck("catalog-reload").unwrap();
        assert_eq!(before.unwrap().snapshots.len(), 1);
        assert_eq!(after.unwrap().snapshots.len(), 2);
    }
}
