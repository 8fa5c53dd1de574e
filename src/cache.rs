//! One process-wide LRU for everything derived from image and guest-filesystem metadata.
//!
//! Memory must not grow with the size of an image, the number of images, the number of guest
//! filesystems opened or the number of reads, so table slices, resolved chain maps, decompressed
//! clusters and guest filesystems' metadata blocks all share one byte budget. Entries are
//! immutable (`Arc`) and keyed by the id ([`next_id`]) of the image, chain or filesystem that
//! produced them; one that is re-opened (the live disk of a running domain) gets a new id, so
//! stale entries are never served and simply age out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use crate::extent::Extent;

/// Default budget: large enough to hold the L2 slices covering several TiB of 64 KiB-cluster
/// images, small enough to keep the daemon well under 100 MiB resident.
pub const DEFAULT_CACHE_BYTES: usize = 48 << 20;

/// Fixed bookkeeping cost charged per entry on top of its payload.
const ENTRY_OVERHEAD: usize = 96;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique id for an opened image, chain or guest filesystem: the cache key namespace.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// A slice of an L1 or L2 table: (image id, host offset of the slice).
    TableSlice { image: u64, offset: u64 },
    /// A decompressed cluster: (image id, host offset of the compressed data).
    Cluster { image: u64, offset: u64 },
    /// The resolved map of one chunk of a chain's guest address space.
    ChainChunk { chain: u64, index: u64 },
    /// A metadata block of an opened guest filesystem: (filesystem id, block number).
    GuestBlock { fs: u64, block: u64 },
}

#[derive(Clone)]
pub enum CacheValue {
    TableSlice(Arc<[u64]>),
    Cluster(Arc<[u8]>),
    ChainChunk(Arc<[Extent]>),
    GuestBlock(Arc<[u8]>),
}

impl CacheValue {
    fn cost(&self) -> usize {
        let payload = match self {
            CacheValue::TableSlice(s) => std::mem::size_of_val::<[u64]>(s),
            CacheValue::Cluster(c) | CacheValue::GuestBlock(c) => c.len(),
            CacheValue::ChainChunk(c) => std::mem::size_of_val::<[Extent]>(c),
        };
        payload.saturating_add(ENTRY_OVERHEAD)
    }
}

struct Inner {
    lru: LruCache<CacheKey, CacheValue>,
    used: usize,
}

pub struct MetadataCache {
    inner: Mutex<Inner>,
    budget: usize,
}

impl MetadataCache {
    pub fn new(budget: usize) -> MetadataCache {
        MetadataCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                used: 0,
            }),
            budget,
        }
    }

    pub fn get(&self, key: &CacheKey) -> Option<CacheValue> {
        self.inner.lock().lru.get(key).cloned()
    }

    /// Inserts `value`, evicting least recently used entries until the budget holds. A value
    /// larger than the whole budget is not kept (the caller still has its copy).
    pub fn insert(&self, key: CacheKey, value: CacheValue) {
        let cost = value.cost();
        if cost > self.budget {
            return;
        }
        let mut inner = self.inner.lock();
        if let Some(old) = inner.lru.put(key, value) {
            inner.used = inner.used.saturating_sub(old.cost());
        }
        inner.used = inner.used.saturating_add(cost);
        while inner.used > self.budget {
            match inner.lru.pop_lru() {
                Some((_, evicted)) => inner.used = inner.used.saturating_sub(evicted.cost()),
                None => break,
            }
        }
    }

    /// Bytes currently charged against the budget.
    pub fn used_bytes(&self) -> usize {
        self.inner.lock().used
    }

    pub fn budget_bytes(&self) -> usize {
        self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_never_exceeds_its_budget() {
        let cache = MetadataCache::new(10_000);
        for i in 0..1000u64 {
            let key = CacheKey::Cluster {
                image: 1,
                offset: i,
            };
            cache.insert(key, CacheValue::Cluster(Arc::from(vec![0u8; 1000])));
            assert!(cache.used_bytes() <= 10_000);
        }
        // The most recent entry survives, the oldest is gone.
        assert!(cache
            .get(&CacheKey::Cluster {
                image: 1,
                offset: 999
            })
            .is_some());
        assert!(cache
            .get(&CacheKey::Cluster {
                image: 1,
                offset: 0
            })
            .is_none());
    }

    #[test]
    fn oversized_values_are_not_kept() {
        let cache = MetadataCache::new(100);
        cache.insert(
            CacheKey::Cluster {
                image: 1,
                offset: 0,
            },
            CacheValue::Cluster(Arc::from(vec![0u8; 1000])),
        );
        assert_eq!(cache.used_bytes(), 0);
    }
}
