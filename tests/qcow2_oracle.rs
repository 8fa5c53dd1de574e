//! Byte-exact comparison with `qemu-img convert -O raw` for every feature the resolver reads.
//! All images are generated here with qemu-img / qemu-io; none are committed.

mod common;

use common::{path_str, Scratch};
use virtsnapfs::image::{Format, ImageError};
use virtsnapfs::qcow2::FormatError;

/// Writes a mix of random data, patterns, zeros and discards over a `size`-byte image, at
/// offsets that straddle cluster and subcluster boundaries.
fn scribble(s: &Scratch, fmt: &str, image: &str, size: u64, seed: u64) {
    let rnd = s.random_file(&format!("rnd-{seed}"), 300 << 10, seed);
    let rnd = path_str(&rnd).to_string();
    let at = |num: u64, den: u64| size * num / den;
    s.qemu_io(
        fmt,
        image,
        &[
            &format!("write -s {rnd} {} 200k", at(1, 16) + 1536),
            &format!("write -P 0x5a {} 70k", at(3, 8) + 512),
            &format!("write -z {} 40k", at(3, 8) + 8192),
            &format!("write -s {rnd} {} 100k", at(5, 8)),
            &format!("discard {} 64k", at(5, 8)),
            &format!("write -P 0x77 {} 4k", size - 4096),
        ],
    );
}

#[test]
fn v2_and_v3_images() {
    let s = Scratch::new();
    for (name, compat) in [("v2.qcow2", "0.10"), ("v3.qcow2", "1.1")] {
        s.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("compat={compat}"),
            name,
            "8M",
        ]);
        scribble(&s, "qcow2", name, 8 << 20, 1);
        s.assert_matches_qemu(name, "qcow2", None);
    }
    assert_eq!(
        s.open("v2.qcow2", None, None).layers()[0]
            .qcow2()
            .unwrap()
            .header
            .version,
        2
    );
}

#[test]
fn cluster_sizes_from_512_bytes_to_2_mib() {
    let s = Scratch::new();
    for (bits, size) in [
        (9, 4u64 << 20),
        (12, 8 << 20),
        (16, 8 << 20),
        (21, 24 << 20),
    ] {
        let name = format!("c{bits}.qcow2");
        let opt = format!("cluster_size={}", 1u64 << bits);
        s.create(&name, &opt, &size.to_string());
        scribble(&s, "qcow2", &name, size, bits);
        s.assert_matches_qemu(&name, "qcow2", None);
    }
}

#[test]
fn refcount_widths_1_to_64_bits() {
    let s = Scratch::new();
    for bits in [1, 2, 4, 8, 16, 32, 64] {
        let name = format!("r{bits}.qcow2");
        let opt = format!("refcount_bits={bits}");
        s.create(&name, &opt, "4M");
        scribble(&s, "qcow2", &name, 4 << 20, bits);
        s.assert_matches_qemu(&name, "qcow2", None);
    }
}

#[test]
fn preallocated_images() {
    let s = Scratch::new();
    for mode in ["metadata", "falloc", "full"] {
        let name = format!("p-{mode}.qcow2");
        let opt = format!("preallocation={mode}");
        s.create(&name, &opt, "6M");
        scribble(&s, "qcow2", &name, 6 << 20, 7);
        s.assert_matches_qemu(&name, "qcow2", None);
    }
}

#[test]
fn unallocated_clusters_fall_through_and_zero_clusters_do_not() {
    let s = Scratch::new();
    s.create("base.qcow2", "", "4M");
    s.qemu_io("qcow2", "base.qcow2", &["write -P 0x11 0 4M"]);
    s.overlay("top.qcow2", "base.qcow2", "qcow2");
    s.qemu_io(
        "qcow2",
        "top.qcow2",
        &[
            "write -P 0x22 64k 64k",
            // Plain zero cluster (no host cluster) and allocated zero cluster: both must hide
            // the base's 0x11.
            "write -z -u 256k 64k",
            "write -P 0x33 512k 64k",
            "write -z 512k 64k",
            // Discard of an allocated cluster in an overlay leaves a zero cluster.
            "write -P 0x44 1M 128k",
            "discard 1M 64k",
        ],
    );
    s.assert_matches_qemu("top.qcow2", "qcow2", None);
    let expected = s.reference("top.qcow2", "qcow2", None);
    assert!(expected[256 << 10..320 << 10].iter().all(|&b| b == 0));
    assert!(expected[0..64 << 10].iter().all(|&b| b == 0x11));
}

#[test]
fn backing_file_shorter_and_longer_than_the_overlay() {
    let s = Scratch::new();
    s.create("short.qcow2", "", "1M");
    s.qemu_io("qcow2", "short.qcow2", &["write -P 0x61 0 1M"]);
    s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "short.qcow2",
        "-F",
        "qcow2",
        "big.qcow2",
        "3M",
    ]);
    s.qemu_io("qcow2", "big.qcow2", &["write -P 0x62 2M 4k"]);
    s.assert_matches_qemu("big.qcow2", "qcow2", None);

    s.qemu_img(&["create", "-q", "-f", "raw", "long.raw", "5M"]);
    s.qemu_io("raw", "long.raw", &["write -P 0x63 0 5M"]);
    s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "long.raw",
        "-F",
        "raw",
        "small.qcow2",
        "2M",
    ]);
    s.assert_matches_qemu("small.qcow2", "qcow2", None);
    assert_eq!(s.open("small.qcow2", None, None).size(), 2 << 20);
}

#[test]
fn compressed_clusters_deflate_and_zstd_crossing_host_clusters() {
    let s = Scratch::new();
    // Half random, half zero per 4 KiB: compresses to about half a cluster, so consecutive
    // compressed clusters are packed across host cluster boundaries.
    let mut data = common::pseudo_random(8 << 20, 42);
    for block in data.chunks_mut(4096) {
        block[2048..].fill(0);
    }
    std::fs::write(s.path("src.raw"), &data).unwrap();
    for ctype in ["zlib", "zstd"] {
        for cluster in ["4k", "64k"] {
            let name = format!("c-{ctype}-{cluster}.qcow2");
            let opt = format!("compression_type={ctype},cluster_size={cluster}");
            s.qemu_img(&[
                "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", &opt, "src.raw", &name,
            ]);
            s.assert_matches_qemu(&name, "qcow2", None);
        }
    }
    // Prove at least one compressed cluster crosses a host cluster boundary.
    let chain = s.open("c-zstd-64k.qcow2", None, None);
    let crossing = chain.resolve(0, 8 << 20).unwrap().iter().any(|e| {
        matches!(e.source, virtsnapfs::image::ExtentSource::Compressed { host_offset, compressed_len, .. }
            if host_offset / 65536 != (host_offset + compressed_len - 1) / 65536)
    });
    assert!(
        crossing,
        "no compressed cluster crossed a host cluster boundary"
    );
    // Compressed writes into an overlay, with its own compression type.
    s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd",
        "-b",
        "c-zstd-64k.qcow2",
        "-F",
        "qcow2",
        "ov.qcow2",
    ]);
    s.qemu_io("qcow2", "ov.qcow2", &["write -c -P 0x7e 1M 64k"]);
    s.assert_matches_qemu("ov.qcow2", "qcow2", None);
}

#[test]
fn extended_l2_subclusters() {
    let s = Scratch::new();
    s.create("base.qcow2", "cluster_size=64k", "4M");
    s.qemu_io("qcow2", "base.qcow2", &["write -P 0x10 0 4M"]);
    for cluster in ["16k", "64k", "2M"] {
        let name = format!("ext-{cluster}.qcow2");
        let opt = format!("extended_l2=on,cluster_size={cluster}");
        s.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &opt,
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            &name,
        ]);
        // 2 KiB subclusters with 64k clusters: these writes allocate some subclusters of a
        // cluster and leave the others to the backing file, and zero others.
        scribble(&s, "qcow2", &name, 4 << 20, 3);
        s.qemu_io(
            "qcow2",
            &name,
            &[
                "write -P 0x20 2052k 2k",
                "write -z 2060k 6k",
                "write -z -u 3M 4k",
            ],
        );
        s.assert_matches_qemu(&name, "qcow2", None);
    }
}

#[test]
fn external_data_files_plain_and_raw() {
    let s = Scratch::new();
    s.create("plain.qcow2", "data_file=plain.data", "4M");
    scribble(&s, "qcow2", "plain.qcow2", 4 << 20, 5);
    s.assert_matches_qemu("plain.qcow2", "qcow2", None);

    s.create("raw.qcow2", "data_file=raw.data,data_file_raw=on", "4M");
    scribble(&s, "qcow2", "raw.qcow2", 4 << 20, 6);
    s.assert_matches_qemu("raw.qcow2", "qcow2", None);
    let chain = s.open("raw.qcow2", None, None);
    assert!(chain.layers()[0].qcow2().unwrap().header.data_file_raw());

    // A data file image as the backing file of an ordinary overlay.
    s.overlay("over.qcow2", "plain.qcow2", "qcow2");
    s.qemu_io("qcow2", "over.qcow2", &["write -P 0x31 1M 64k"]);
    s.assert_matches_qemu("over.qcow2", "qcow2", None);
}

#[test]
fn chain_of_70_layers_mixing_raw_and_qcow2_relative_and_absolute_names() {
    let s = Scratch::new();
    std::fs::create_dir(s.path("sub")).unwrap();
    s.qemu_img(&["create", "-q", "-f", "raw", "l0.raw", "8M"]);
    s.qemu_io("raw", "l0.raw", &["write -P 0x01 0 8M"]);
    let mut prev = ("l0.raw".to_string(), "raw");
    for i in 1..70u64 {
        // Alternate relative names, names relative to a subdirectory, and absolute names.
        let name = if i % 3 == 1 {
            format!("sub/l{i}.qcow2")
        } else {
            format!("l{i}.qcow2")
        };
        // prev is never in sub/ when i % 3 == 1, and always is when i % 3 == 2.
        let backing = match i % 3 {
            0 => path_str(&s.path(&prev.0)).to_string(),
            1 => format!("../{}", prev.0),
            _ => prev.0.clone(),
        };
        s.qemu_img(&[
            "create", "-q", "-f", "qcow2", "-u", "-b", &backing, "-F", prev.1, &name, "8M",
        ]);
        let off = (i * 113) << 10;
        s.qemu_io("qcow2", &name, &[&format!("write -P {} {off} 5k", i + 1)]);
        prev = (name, "qcow2");
    }
    let top = prev.0.clone();
    s.assert_matches_qemu(&top, "qcow2", None);
    assert_eq!(s.open(&top, None, None).layers().len(), 70);
}

#[test]
fn declared_backing_format_is_honoured_not_probed() {
    let s = Scratch::new();
    // A raw disk whose first bytes happen to be a qcow2 header: declared raw, it must be read
    // raw (probing it would be a security hole and give different bytes).
    s.create("inner.qcow2", "", "1M");
    s.qemu_io("qcow2", "inner.qcow2", &["write -P 0x99 0 64k"]);
    let mut disk = std::fs::read(s.path("inner.qcow2")).unwrap();
    disk.resize(2 << 20, 0);
    std::fs::write(s.path("disk.raw"), &disk).unwrap();
    s.overlay("top.qcow2", "disk.raw", "raw");
    s.assert_matches_qemu("top.qcow2", "qcow2", None);
    let chain = s.open("top.qcow2", None, None);
    assert_eq!(chain.layers()[1].format, Format::Raw);
    assert_eq!(chain.size(), 2 << 20);
}

#[test]
fn internal_snapshots_listed_and_read_with_their_own_disk_size() {
    let s = Scratch::new();
    s.create("img.qcow2", "", "4M");
    s.qemu_io("qcow2", "img.qcow2", &["write -P 0x01 0 1M"]);
    s.qemu_img(&["snapshot", "-c", "first", "img.qcow2"]);
    s.qemu_io("qcow2", "img.qcow2", &["write -P 0x02 512k 1M"]);
    s.qemu_img(&["resize", "-q", "img.qcow2", "6M"]);
    s.qemu_io("qcow2", "img.qcow2", &["write -P 0x03 5M 64k"]);
    s.qemu_img(&["snapshot", "-c", "after-resize", "img.qcow2"]);
    s.qemu_img(&["resize", "-q", "--shrink", "img.qcow2", "3M"]);
    s.qemu_io("qcow2", "img.qcow2", &["write -z 0 64k"]);

    s.assert_matches_qemu("img.qcow2", "qcow2", None);
    s.assert_matches_qemu("img.qcow2", "qcow2", Some("first"));
    s.assert_matches_qemu("img.qcow2", "qcow2", Some("after-resize"));
    assert_eq!(s.open("img.qcow2", None, Some("first")).size(), 4 << 20);
    assert_eq!(
        s.open("img.qcow2", None, Some("after-resize")).size(),
        6 << 20
    );
    assert_eq!(s.open("img.qcow2", None, None).size(), 3 << 20);

    // The listing equals qemu-img's: id, name, date, VM clock, disk size.
    let info: serde_json::Value =
        serde_json::from_str(&s.qemu_img(&["info", "--output=json", "img.qcow2"])).unwrap();
    let chain = s.open("img.qcow2", None, None);
    let ours = &chain.layers()[0].qcow2().unwrap().snapshots;
    let theirs = info["snapshots"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o.id, t["id"].as_str().unwrap());
        assert_eq!(o.name, t["name"].as_str().unwrap());
        assert_eq!(u64::from(o.date_sec), t["date-sec"].as_u64().unwrap());
        assert_eq!(u64::from(o.date_nsec), t["date-nsec"].as_u64().unwrap());
        assert_eq!(o.vm_clock_nsec, t["vm-clock-nsec"].as_u64().unwrap());
        assert_eq!(o.vm_state_size, t["vm-state-size"].as_u64().unwrap());
    }
    // A snapshot is also found by id, and a missing one is a clear error.
    assert_eq!(s.open("img.qcow2", None, Some("1")).size(), 4 << 20);
    assert!(matches!(
        s.try_open("img.qcow2", None, Some("nope")),
        Err(ImageError::NoSuchSnapshot { .. })
    ));
}

#[test]
fn a_snapshot_table_larger_than_one_read_is_listed_like_qemu_img_lists_it() {
    // 220 entries of about 300 bytes: the table spans more than the 64 KiB read at a time, and
    // an entry straddles each read's end.
    let s = Scratch::new();
    s.create("img.qcow2", "", "1M");
    let names: Vec<String> = (0..220)
        .map(|i| format!("{i:03}-{}", "n".repeat(240)))
        .collect();
    for (i, name) in names.iter().enumerate() {
        if i % 100 == 0 {
            s.qemu_io(
                "qcow2",
                "img.qcow2",
                &[&format!("write -P {} 0 64k", i / 100 + 1)],
            );
        }
        s.qemu_img(&["snapshot", "-c", name, "img.qcow2"]);
    }
    let info: serde_json::Value =
        serde_json::from_str(&s.qemu_img(&["info", "--output=json", "img.qcow2"])).unwrap();
    let theirs: Vec<(&str, &str)> = info["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap(), t["name"].as_str().unwrap()))
        .collect();
    let chain = s.open("img.qcow2", None, None);
    let ours: Vec<(&str, &str)> = chain.layers()[0]
        .qcow2()
        .unwrap()
        .snapshots
        .iter()
        .map(|o| (o.id.as_str(), o.name.as_str()))
        .collect();
    assert_eq!(ours.len(), 220);
    assert_eq!(ours, theirs);
    s.assert_matches_qemu("img.qcow2", "qcow2", Some(&names[150]));
    s.assert_matches_qemu("img.qcow2", "qcow2", Some(&names[219]));
}

#[test]
fn internal_snapshot_inside_an_overlay_reads_through_the_backing_file() {
    let s = Scratch::new();
    s.create("base.qcow2", "", "4M");
    s.qemu_io("qcow2", "base.qcow2", &["write -P 0x0b 0 4M"]);
    s.overlay("ov.qcow2", "base.qcow2", "qcow2");
    s.qemu_io("qcow2", "ov.qcow2", &["write -P 0x0c 1M 64k"]);
    s.qemu_img(&["snapshot", "-c", "snap", "ov.qcow2"]);
    s.qemu_io("qcow2", "ov.qcow2", &["write -P 0x0d 0 2M"]);
    s.assert_matches_qemu("ov.qcow2", "qcow2", Some("snap"));
    s.assert_matches_qemu("ov.qcow2", "qcow2", None);
}

#[test]
fn vm_state_past_the_disk_is_not_served() {
    let s = Scratch::new();
    s.create("vm.qcow2", "", "1M");
    s.qemu_io(
        "qcow2",
        "vm.qcow2",
        &["write -P 0x01 0 1M", "write -b -P 0xee 0 256k"],
    );
    s.assert_matches_qemu("vm.qcow2", "qcow2", None);
}

#[test]
fn encrypted_images_are_refused_with_a_clear_error() {
    let s = Scratch::new();
    for fmt in ["aes", "luks"] {
        let name = format!("{fmt}.qcow2");
        let mut opt = format!("encrypt.format={fmt},encrypt.key-secret=s0");
        if fmt == "luks" {
            opt.push_str(",encrypt.iter-time=200");
        }
        let args = [
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=s0,data=pw",
            "-o",
            &opt,
            &name,
            "1M",
        ];
        // QEMU's LUKS key-derivation benchmark fails now and then on a loaded machine
        // ("Unable to get accurate CPU usage"): retry that step of the oracle itself.
        let created = (0..5).any(|_| s.try_run("qemu-img", &args).is_ok());
        assert!(created, "qemu-img could not create {name}");
        let err = s
            .try_open(&name, None, None)
            .err()
            .expect("encrypted image opened");
        assert!(err.is_encrypted(), "{err}");
        assert!(
            err.to_string()
                .contains("encrypted images are not supported"),
            "{err}"
        );
    }
    // An encrypted backing file is refused the same way, naming that file.
    s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "luks.qcow2",
        "-F",
        "qcow2",
        "-u",
        "ov.qcow2",
        "1M",
    ]);
    let err = s.try_open("ov.qcow2", None, None).err().unwrap();
    assert!(
        matches!(&err, ImageError::Format { path, source: FormatError::Encrypted(2) } if path.ends_with("luks.qcow2"))
    );
}

#[test]
fn raw_top_images_and_odd_sizes() {
    let s = Scratch::new();
    std::fs::write(s.path("odd.raw"), common::pseudo_random(1_000_003, 9)).unwrap();
    s.assert_matches_qemu("odd.raw", "raw", None);
    s.create("odd.qcow2", "", "1000448");
    scribble(&s, "qcow2", "odd.qcow2", 1_000_448, 11);
    s.assert_matches_qemu("odd.qcow2", "qcow2", None);
}

#[test]
fn allocation_and_seek_data_agree_with_qemu_img_map() {
    let s = Scratch::new();
    s.create("base.qcow2", "", "8M");
    s.qemu_io(
        "qcow2",
        "base.qcow2",
        &["write -P 1 0 1M", "write -P 2 4M 512k"],
    );
    s.overlay("top.qcow2", "base.qcow2", "qcow2");
    s.qemu_io(
        "qcow2",
        "top.qcow2",
        &["write -P 3 2M 64k", "write -z 4M 64k"],
    );
    let map: serde_json::Value =
        serde_json::from_str(&s.qemu_img(&["map", "--output=json", "top.qcow2"])).unwrap();
    let mut data_bytes = 0;
    for e in map.as_array().unwrap() {
        if e["data"].as_bool().unwrap() {
            data_bytes += e["length"].as_u64().unwrap();
        }
    }
    let chain = s.open("top.qcow2", None, None);
    assert_eq!(chain.allocated_bytes().unwrap(), data_bytes);
    assert_eq!(chain.next_data(0).unwrap(), Some(0));
    assert_eq!(chain.next_hole(0).unwrap(), 1 << 20);
    assert_eq!(chain.next_data(1 << 20).unwrap(), Some(2 << 20));
    assert_eq!(
        chain.next_data((4 << 20) + 1).unwrap(),
        Some((4 << 20) + (64 << 10))
    );
    assert_eq!(chain.next_data((4 << 20) + (512 << 10)).unwrap(), None);
    assert_eq!(chain.next_hole((8 << 20) - 1).unwrap(), (8 << 20) - 1);
}

#[test]
fn reads_from_many_threads_at_once_agree_with_qemu() {
    let s = Scratch::new();
    s.create("base.qcow2", "cluster_size=4k", "8M");
    scribble(&s, "qcow2", "base.qcow2", 8 << 20, 21);
    s.overlay("top.qcow2", "base.qcow2", "qcow2");
    scribble(&s, "qcow2", "top.qcow2", 8 << 20, 22);
    let expected = s.reference("top.qcow2", "qcow2", None);
    // A small cache, so threads also race on evictions.
    let spec = virtsnapfs::image::ChainSpec::from_image(s.path("top.qcow2"), None);
    let cache = std::sync::Arc::new(virtsnapfs::cache::MetadataCache::new(64 << 10));
    let chain = virtsnapfs::image::open_chain(&spec, cache).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let (chain, expected) = (&chain, &expected);
            scope.spawn(move || {
                let mut state = t + 1;
                for _ in 0..300 {
                    let offset = common::next_random(&mut state) % (8 << 20);
                    let len = (common::next_random(&mut state) % (200 << 10)) as usize;
                    let mut buf = vec![0u8; len];
                    let n = chain.read_at(&mut buf, offset).unwrap();
                    let o = offset as usize;
                    assert!(
                        buf[..n] == expected[o..o + n],
                        "thread {t}: bytes differ at {offset}"
                    );
                }
            });
        }
    });
}

#[test]
fn inspect_json_agrees_with_qemu_img_info() {
    let s = Scratch::new();
    s.qemu_img(&["create", "-q", "-f", "raw", "base.raw", "2M"]);
    s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=16k,extended_l2=on",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "mid.qcow2",
        "3M",
    ]);
    s.qemu_io("qcow2", "mid.qcow2", &["write -P 1 0 100k"]);
    s.qemu_img(&["snapshot", "-c", "snap1", "mid.qcow2"]);
    s.overlay("top.qcow2", "mid.qcow2", "qcow2");
    let out = s.run(
        env!("CARGO_BIN_EXE_virtsnapfs"),
        &["inspect", "--json", "top.qcow2"],
    );
    let ours: serde_json::Value = serde_json::from_str(&out).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&s.qemu_img(&[
        "info",
        "--backing-chain",
        "--output=json",
        "top.qcow2",
    ]))
    .unwrap();
    let (ours, theirs) = (
        ours["layers"].as_array().unwrap(),
        theirs.as_array().unwrap(),
    );
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o["format"], t["format"]);
        assert_eq!(o["virtual-size"], t["virtual-size"]);
        if let Some(cluster) = t.get("cluster-size") {
            assert_eq!(&o["qcow2"]["cluster-size"], cluster);
        }
        if let Some(backing) = t.get("backing-filename") {
            assert_eq!(&o["qcow2"]["backing-filename"], backing);
        }
        let names = |v: Option<&serde_json::Value>| -> Vec<String> {
            v.and_then(|s| s.as_array())
                .map(|a| {
                    a.iter()
                        .map(|x| x["name"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(
            names(o["qcow2"].get("snapshots")),
            names(t.get("snapshots"))
        );
    }
    // Extended L2 with 16 KiB clusters allocates in 512-byte subclusters: exactly 100 KiB.
    assert_eq!(ours[1]["allocated-bytes"], 100 << 10);
    assert!(ours[1]["qcow2"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "extended-l2"));
    // The text form names every layer too.
    let text = s.run(env!("CARGO_BIN_EXE_virtsnapfs"), &["inspect", "top.qcow2"]);
    assert!(
        text.contains("snap1") && text.contains("base.raw") && text.contains("file format: raw"),
        "{text}"
    );
}
