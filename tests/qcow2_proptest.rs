//! Property test: random backing chains built by qemu-img, with random writes, zero writes,
//! discards and compressed writes at random layers, read by us and by qemu-img; every byte
//! must agree, for the active state and for an internal snapshot taken midway.
//! `PROPTEST_CASES` sets the number of chains (default 24).

mod common;

use common::Scratch;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Random bytes (from a seeded file) at an arbitrary sector-aligned offset.
    Write {
        offset: u64,
        len: u64,
        seed: u64,
    },
    Zero {
        offset: u64,
        len: u64,
        unmap: bool,
    },
    Discard {
        offset: u64,
        len: u64,
    },
    /// A whole cluster, compressed (qemu-io needs cluster alignment for -c).
    Compressed {
        cluster: u64,
        pattern: u8,
    },
}

#[derive(Debug, Clone)]
struct LayerPlan {
    raw: bool,
    cluster_bits: u32,
    extended_l2: bool,
    zstd: bool,
    v2: bool,
    size_sectors: u64,
    ops: Vec<Op>,
    snapshot_after: Option<usize>,
}

const MAX_SIZE: u64 = 3 << 20;

fn op() -> impl Strategy<Value = Op> {
    let range = (0..MAX_SIZE / 512, 1..(256u64 << 10) / 512);
    prop_oneof![
        4 => (range.clone(), any::<u64>()).prop_map(|((o, l), seed)| Op::Write { offset: o * 512, len: l * 512, seed }),
        2 => (range.clone(), any::<bool>()).prop_map(|((o, l), unmap)| Op::Zero { offset: o * 512, len: l * 512, unmap }),
        1 => range.prop_map(|(o, l)| Op::Discard { offset: o * 512, len: l * 512 }),
        1 => (0..48u64, any::<u8>()).prop_map(|(cluster, pattern)| Op::Compressed { cluster, pattern }),
    ]
}

fn layer(is_base: bool) -> impl Strategy<Value = LayerPlan> {
    (
        any::<bool>(),
        prop::sample::select(vec![9u32, 12, 14, 16]),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.2),
        (MAX_SIZE / 2 / 512)..=(MAX_SIZE / 512),
        prop::collection::vec(op(), 1..8),
        prop::option::weighted(0.3, 0..8usize),
    )
        .prop_map(
            move |(raw, cluster_bits, ext, zstd, v2, size_sectors, ops, snap)| LayerPlan {
                raw: raw && is_base,
                cluster_bits,
                extended_l2: ext && cluster_bits >= 14 && !v2,
                zstd: zstd && !v2,
                v2,
                size_sectors,
                ops,
                snapshot_after: snap,
            },
        )
}

fn chain_plan() -> impl Strategy<Value = Vec<LayerPlan>> {
    (layer(true), prop::collection::vec(layer(false), 0..4)).prop_map(|(base, mut rest)| {
        rest.insert(0, base);
        rest
    })
}

fn build_and_compare(plan: &[LayerPlan]) -> Result<(), TestCaseError> {
    let s = Scratch::new();
    let mut snapshots = Vec::new();
    let mut prev: Option<(String, &str)> = None;
    for (i, l) in plan.iter().enumerate() {
        let fmt = if l.raw { "raw" } else { "qcow2" };
        let name = format!("l{i}.{fmt}");
        let size = (l.size_sectors * 512).to_string();
        let mut opts = format!("cluster_size={}", 1u64 << l.cluster_bits);
        if l.v2 {
            opts.push_str(",compat=0.10");
        }
        if l.extended_l2 {
            opts.push_str(",extended_l2=on");
        }
        if l.zstd {
            opts.push_str(",compression_type=zstd");
        }
        match (&prev, l.raw) {
            (_, true) => s.qemu_img(&["create", "-q", "-f", "raw", &name, &size]),
            (None, false) => {
                s.qemu_img(&["create", "-q", "-f", "qcow2", "-o", &opts, &name, &size])
            }
            (Some((p, pfmt)), false) => s.qemu_img(&[
                "create", "-q", "-f", "qcow2", "-o", &opts, "-b", p, "-F", pfmt, &name, &size,
            ]),
        };
        let size = l.size_sectors * 512;
        let cluster = 1u64 << l.cluster_bits;
        for (k, op) in l.ops.iter().enumerate() {
            let clip = |offset: u64, len: u64| {
                let offset = offset % size;
                (offset, len.min(size - offset))
            };
            let cmd = match *op {
                Op::Write { offset, len, seed } => {
                    let (o, n) = clip(offset, len);
                    let f = s.random_file(&format!("r{i}-{k}"), n as usize, seed);
                    format!("write -s {} {o} {n}", f.display())
                }
                Op::Zero { offset, len, unmap } => {
                    let (o, n) = clip(offset, len);
                    format!("write -z {}{o} {n}", if unmap { "-u " } else { "" })
                }
                Op::Discard { offset, len } => {
                    let (o, n) = clip(offset, len);
                    format!("discard {o} {n}")
                }
                Op::Compressed {
                    cluster: c,
                    pattern,
                } => {
                    let o = c * cluster;
                    if !l.raw && o + cluster <= size {
                        // QEMU refuses compressed writes over allocated clusters: then the
                        // write is skipped, which is fine for the comparison.
                        let cmd = format!("write -c -P {pattern} {o} {cluster}");
                        let _ = s.try_run("qemu-io", &["-f", fmt, "-c", &cmd, &name]);
                    }
                    String::new()
                }
            };
            if !cmd.is_empty() {
                s.qemu_io(fmt, &name, &[&cmd]);
            }
            if !l.raw && l.snapshot_after == Some(k) {
                let snap = format!("s{i}");
                s.qemu_img(&["snapshot", "-c", &snap, &name]);
                if i == plan.len() - 1 {
                    snapshots.push(snap);
                }
            }
        }
        prev = Some((name, fmt));
    }
    let (top, fmt) = prev.unwrap();
    s.assert_matches_qemu(&top, fmt, None);
    for snap in snapshots {
        s.assert_matches_qemu(&top, fmt, Some(&snap));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_chains_read_exactly_like_qemu(plan in chain_plan()) {
        build_and_compare(&plan)?;
    }
}
