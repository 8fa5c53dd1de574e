//! What the filesystem needs from the hypervisor side: domain names and domain models.
//! `crate::libvirt::LibvirtBackend` implements it over a real connection.

use crate::model::DomainModel;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BackendError(pub String);

pub trait Backend: Send + Sync {
    fn list_domains(&self) -> Result<Vec<String>, BackendError>;
    /// The domain's model, or None when no such domain exists.
    fn load_domain(&self, name: &str) -> Result<Option<DomainModel>, BackendError>;
}
