//! Safe wrappers over the libvirt block job calls the `virt` crate does not wrap:
//! virDomainBlockCommit, virDomainGetBlockJobInfo and virDomainBlockJobAbort.
//!
//! The only `unsafe` code of the project. Each call passes a live domain pointer (kept alive
//! by the `Domain` borrowed for the call) and NUL-terminated strings that outlive the call;
//! errors are read back through `virt::error::Error::last_error`, as the virt crate does.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::ptr;

use virt::domain::Domain;
use virt::sys;

/// VIR_DOMAIN_BLOCK_COMMIT_ACTIVE: commit the active layer (the job then waits for a pivot).
const COMMIT_ACTIVE: u32 = 4;
/// VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES: the bandwidth is in bytes/s, not MiB/s.
const COMMIT_BANDWIDTH_BYTES: u32 = 16;
const ABORT_PIVOT: u32 = 2;

/// Progress of a block job: `cur` of `end` units done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobInfo {
    pub cur: u64,
    pub end: u64,
}

fn c_string(s: &str) -> Result<CString, virt::error::Error> {
    CString::new(s).map_err(|_| virt::error::Error::last_error())
}

/// Starts committing `top` (None: the active layer) into `base` on `disk`.
pub fn commit(
    dom: &Domain,
    disk: &str,
    base: &str,
    top: Option<&str>,
    bandwidth_bytes: u64,
) -> Result<(), virt::error::Error> {
    let disk = c_string(disk)?;
    let base = c_string(base)?;
    let top = top.map(c_string).transpose()?;
    let mut flags = if top.is_none() { COMMIT_ACTIVE } else { 0 };
    if bandwidth_bytes > 0 {
        flags |= COMMIT_BANDWIDTH_BYTES;
    }
    let bandwidth = std::os::raw::c_ulong::try_from(bandwidth_bytes).unwrap_or(0);
    // SAFETY: `dom` is a live domain for the whole call; the strings are NUL-terminated and
    // outlive it; a null `top` asks libvirt for the active layer, as documented.
    let ret = unsafe {
        sys::virDomainBlockCommit(
            dom.as_ptr(),
            disk.as_ptr(),
            base.as_ptr(),
            top.as_ref().map_or(ptr::null(), |t| t.as_ptr()),
            bandwidth,
            flags,
        )
    };
    if ret < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(())
}

/// The block job running on `disk`, if any.
pub fn job_info(dom: &Domain, disk: &str) -> Result<Option<JobInfo>, virt::error::Error> {
    let disk = c_string(disk)?;
    let mut info = sys::virDomainBlockJobInfo {
        type_: 0,
        bandwidth: 0,
        cur: 0,
        end: 0,
    };
    // SAFETY: `info` is a valid, writable struct of the type libvirt fills in.
    let ret = unsafe { sys::virDomainGetBlockJobInfo(dom.as_ptr(), disk.as_ptr(), &mut info, 0) };
    match ret {
        r if r < 0 => Err(virt::error::Error::last_error()),
        0 => Ok(None),
        _ => Ok(Some(JobInfo {
            cur: info.cur,
            end: info.end,
        })),
    }
}

/// Ends the block job on `disk`: pivots to the new image (active commit, once ready) or
/// cancels it, leaving the disk as it was.
pub fn abort(dom: &Domain, disk: &str, pivot: bool) -> Result<(), virt::error::Error> {
    let disk = c_string(disk)?;
    let flags = if pivot { ABORT_PIVOT } else { 0 };
    // SAFETY: as above.
    let ret = unsafe { sys::virDomainBlockJobAbort(dom.as_ptr(), disk.as_ptr(), flags) };
    if ret < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(())
}
