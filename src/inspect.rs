//! `virtsnapfs inspect IMAGE`: what `qemu-img info --backing-chain` tells, from our own reader,
//! so a user can see exactly how virtsnapfs understands an image: each layer's file, format,
//! sizes, features and internal snapshots, and how many guest bytes each layer holds.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::image::chain::LayerKind;
use crate::image::{Chain, ImageError};
use crate::qcow2::header::{self, Header};
use crate::qcow2::{Mapping, Qcow2Image};

/// Guest bytes this one layer stores (data, compressed or zero clusters), not counting what
/// it leaves to its backing file.
fn layer_allocated_bytes(chain: &Chain, index: usize) -> Result<u64, ImageError> {
    let layer = &chain.layers()[index];
    let (image, view) = match &layer.kind {
        LayerKind::Raw => return Ok(layer.size),
        LayerKind::Qcow2 { image, view } => (image, view),
    };
    let cache = crate::cache::MetadataCache::new(4 << 20);
    let mut total = 0u64;
    let mut offset = 0u64;
    while offset < layer.size {
        let run = image
            .map(view, &cache, offset)
            .map_err(|e| ImageError::from_read(&layer.path, e))?;
        let len = run.len.min(layer.size - offset);
        if run.mapping != Mapping::Unallocated {
            total += len;
        }
        offset += len;
    }
    Ok(total)
}

fn feature_list(h: &Header) -> Vec<&'static str> {
    let mut f = Vec::new();
    let flags = [
        (
            h.incompatible_features & header::INCOMPAT_DIRTY != 0,
            "dirty",
        ),
        (
            h.incompatible_features & header::INCOMPAT_CORRUPT != 0,
            "corrupt",
        ),
        (h.has_data_file(), "data-file"),
        (h.data_file_raw(), "data-file-raw"),
        (h.extended_l2(), "extended-l2"),
        (
            h.compatible_features & header::COMPAT_LAZY_REFCOUNTS != 0,
            "lazy-refcounts",
        ),
        (
            h.autoclear_features & header::AUTOCLEAR_BITMAPS != 0,
            "bitmaps",
        ),
    ];
    for (on, name) in flags {
        if on {
            f.push(name);
        }
    }
    f
}

fn compression_name(t: u8) -> &'static str {
    match t {
        header::COMPRESSION_ZSTD => "zstd",
        _ => "zlib",
    }
}

fn qcow2_json(image: &Qcow2Image) -> Value {
    let h = &image.header;
    json!({
        "version": h.version,
        "cluster-size": h.cluster_size(),
        "refcount-bits": 1u64 << h.refcount_order,
        "compression-type": compression_name(h.compression_type),
        "features": feature_list(h),
        "backing-filename": image.backing_file,
        "backing-format": image.extensions.backing_format,
        "data-file": image.extensions.data_file,
        "snapshots": image.snapshots.iter().map(|s| json!({
            "id": s.id,
            "name": s.name,
            "date-sec": s.date_sec,
            "date-nsec": s.date_nsec,
            "vm-clock-nsec": s.vm_clock_nsec,
            "vm-state-size": s.vm_state_size,
            "disk-size": s.disk_size,
        })).collect::<Vec<_>>(),
    })
}

/// The report as JSON: a list of layers, top first.
pub fn to_json(chain: &Chain) -> Result<Value, ImageError> {
    let mut layers = Vec::new();
    for (i, layer) in chain.layers().iter().enumerate() {
        let mut v = json!({
            "filename": layer.path.display().to_string(),
            "format": layer.format.name(),
            "virtual-size": layer.size,
            "disk-size": layer.data.allocated_bytes().ok(),
            "allocated-bytes": layer_allocated_bytes(chain, i)?,
        });
        if let Some(image) = layer.qcow2() {
            v["qcow2"] = qcow2_json(image);
        }
        layers.push(v);
    }
    Ok(json!({ "virtual-size": chain.size(), "layers": layers }))
}

/// The report as text, one block per layer.
pub fn to_text(chain: &Chain) -> Result<String, ImageError> {
    let mut out = String::new();
    for (i, layer) in chain.layers().iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "image: {}", layer.path.display());
        let _ = writeln!(out, "file format: {}", layer.format);
        let _ = writeln!(out, "virtual size: {} bytes", layer.size);
        if let Ok(bytes) = layer.data.allocated_bytes() {
            let _ = writeln!(out, "disk size: {bytes} bytes");
        }
        let _ = writeln!(
            out,
            "allocated in this layer: {} bytes",
            layer_allocated_bytes(chain, i)?
        );
        if let Some(image) = layer.qcow2() {
            let h = &image.header;
            let _ = writeln!(out, "qcow2 version: {}", h.version);
            let _ = writeln!(out, "cluster size: {}", h.cluster_size());
            let _ = writeln!(out, "refcount bits: {}", 1u64 << h.refcount_order);
            let _ = writeln!(
                out,
                "compression type: {}",
                compression_name(h.compression_type)
            );
            let features = feature_list(h);
            if !features.is_empty() {
                let _ = writeln!(out, "features: {}", features.join(", "));
            }
            if let Some(b) = &image.backing_file {
                let fmt = image
                    .extensions
                    .backing_format
                    .as_deref()
                    .unwrap_or("(probed)");
                let _ = writeln!(out, "backing file: {b} (format {fmt})");
            }
            if let Some(d) = &image.extensions.data_file {
                let _ = writeln!(out, "data file: {d}");
            }
            if !image.snapshots.is_empty() {
                let _ = writeln!(out, "snapshots:");
                let _ = writeln!(
                    out,
                    "  {:<6} {:<24} {:>14} {:>20} {:>16}",
                    "ID", "NAME", "DISK SIZE", "DATE (s since epoch)", "VM CLOCK (ns)"
                );
                for s in &image.snapshots {
                    let _ = writeln!(
                        out,
                        "  {:<6} {:<24} {:>14} {:>20} {:>16}",
                        s.id, s.name, s.disk_size, s.date_sec, s.vm_clock_nsec
                    );
                }
            }
        }
    }
    Ok(out)
}
