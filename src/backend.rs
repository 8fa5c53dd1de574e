//! What the filesystem needs from the hypervisor side: domain names and models, and the few
//! calls that change snapshots and domains. `crate::libvirt::LibvirtBackend` implements it
//! over a real connection.

use crate::model::DomainModel;

/// What kind of failure a backend call had, so the filesystem can pick an errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// Could not talk to the hypervisor, or the call failed for another reason.
    Failed,
    /// The request itself was refused as invalid (a bad name, an impossible shape).
    Invalid,
    /// The hypervisor does not support this operation for this shape.
    Unsupported,
    /// Something is in the way (another job running, the domain's state).
    Busy,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct BackendError {
    pub kind: BackendErrorKind,
    pub message: String,
}

impl BackendError {
    pub fn failed(message: impl Into<String>) -> BackendError {
        BackendError {
            kind: BackendErrorKind::Failed,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    Running,
    Paused,
    ShutOff,
    /// Crashed, suspended to disk, shutting down, ...
    Other,
}

/// libvirt's snapshot flags that the operations use (libvirt-domain-snapshot.h).
pub mod flags {
    pub const CREATE_REDEFINE: u32 = 1;
    pub const CREATE_CURRENT: u32 = 2;
    pub const CREATE_DISK_ONLY: u32 = 16;
    pub const CREATE_QUIESCE: u32 = 64;
    pub const CREATE_ATOMIC: u32 = 128;
    pub const DELETE_METADATA_ONLY: u32 = 2;
}

pub trait Backend: Send + Sync {
    fn list_domains(&self) -> Result<Vec<String>, BackendError>;
    /// The domain's model, or None when no such domain exists.
    fn load_domain(&self, name: &str) -> Result<Option<DomainModel>, BackendError>;
    /// As `load_domain`, but a snapshot `known` already has is taken from it instead of being
    /// read again, unless one of `known`'s snapshots is gone (deleting a snapshot re-parents
    /// its children, which changes their XML). For a caller that already trusts `known`'s
    /// snapshots as unchanged, as the catalog does while `DomainModel::snapshots_trusted`.
    fn load_domain_reusing(
        &self,
        name: &str,
        known: &DomainModel,
    ) -> Result<Option<DomainModel>, BackendError> {
        let _ = known;
        self.load_domain(name)
    }
    /// `DomainModel::fingerprint` of the domain as it is now, from a few cheap calls (None:
    /// no such domain), so an unchanged domain need not be reloaded.
    fn domain_fingerprint(&self, name: &str) -> Result<Option<u64>, BackendError>;
    /// Every domain's `DomainModel::layout_fingerprint`, by name, as libvirt has them now: what
    /// a scan of which images are in use checks before reusing the models it saw last time.
    fn layout_fingerprints(&self) -> Result<Vec<(String, u64)>, BackendError>;
    fn domain_state(&self, domain: &str) -> Result<DomainState, BackendError>;
    /// The persistent (inactive) domain XML, as `virsh dumpxml --inactive --security-info`.
    fn inactive_xml(&self, domain: &str) -> Result<String, BackendError>;
    fn define_domain(&self, xml: &str) -> Result<(), BackendError>;
    /// Stops a running domain at once (virsh destroy).
    fn destroy_domain(&self, domain: &str) -> Result<(), BackendError>;
    fn create_snapshot(&self, domain: &str, xml: &str, flags: u32) -> Result<(), BackendError>;
    fn revert_snapshot(&self, domain: &str, name: &str, flags: u32) -> Result<(), BackendError>;
    fn delete_snapshot(&self, domain: &str, name: &str, flags: u32) -> Result<(), BackendError>;
    /// Starts a block commit of `top` (None: the active layer) into `base` on a running
    /// domain's disk; `bandwidth` in bytes/s, 0 for unlimited.
    fn block_commit(
        &self,
        domain: &str,
        disk: &str,
        base: &std::path::Path,
        top: Option<&std::path::Path>,
        bandwidth: u64,
    ) -> Result<(), BackendError>;
    /// The running block job's progress (cur, end) on a disk, if any.
    fn block_job(&self, domain: &str, disk: &str) -> Result<Option<(u64, u64)>, BackendError>;
    /// Pivots (after an active commit is ready) or cancels the block job on a disk.
    fn block_job_abort(&self, domain: &str, disk: &str, pivot: bool) -> Result<(), BackendError>;
}
