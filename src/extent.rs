//! Where the bytes of a guest range come from: the resolved map of a disk.
//!
//! A backing chain ([`crate::image::chain::Chain`]) resolves guest ranges into [`Extent`]s, and
//! the metadata cache ([`crate::cache`]) keeps those maps per chunk. Both use this module and it
//! uses neither, so the cache does not depend on the chain (which depends on the cache).

/// Where the bytes of one guest range come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentSource {
    Zero,
    /// Contiguous bytes at `host_offset` in layer `layer`'s data file.
    Data {
        layer: u32,
        host_offset: u64,
    },
    /// Bytes from `offset_in_cluster` on of a compressed cluster of layer `layer`.
    Compressed {
        layer: u32,
        host_offset: u64,
        compressed_len: u64,
        offset_in_cluster: u64,
    },
}

impl ExtentSource {
    pub fn is_data(&self) -> bool {
        !matches!(self, ExtentSource::Zero)
    }
}

/// The guest range `[guest_offset, guest_offset + len)` and where its bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub guest_offset: u64,
    pub len: u64,
    pub source: ExtentSource,
}

impl Extent {
    /// One past the last guest byte of the range.
    pub fn end(&self) -> u64 {
        self.guest_offset + self.len
    }

    /// The part of this extent inside `[start, end)`, if any, with its source moved along.
    pub fn clipped(&self, start: u64, end: u64) -> Option<Extent> {
        let from = self.guest_offset.max(start);
        let to = self.end().min(end);
        if from >= to {
            return None;
        }
        let skip = from - self.guest_offset;
        let source = match self.source {
            ExtentSource::Zero => ExtentSource::Zero,
            ExtentSource::Data { layer, host_offset } => ExtentSource::Data {
                layer,
                host_offset: host_offset + skip,
            },
            ExtentSource::Compressed {
                layer,
                host_offset,
                compressed_len,
                offset_in_cluster,
            } => ExtentSource::Compressed {
                layer,
                host_offset,
                compressed_len,
                offset_in_cluster: offset_in_cluster + skip,
            },
        };
        Some(Extent {
            guest_offset: from,
            len: to - from,
            source,
        })
    }
}
