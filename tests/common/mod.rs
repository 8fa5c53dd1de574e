//! Helpers shared by the integration tests: a scratch directory, qemu-img / qemu-io runners
//! (the oracle), and the comparison of our bytes with `qemu-img convert -O raw`.
#![allow(dead_code)]

pub mod guest;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use virtsnapfs::cache::{MetadataCache, DEFAULT_CACHE_BYTES};
use virtsnapfs::image::{open_chain, Chain, ChainSpec, Format, ImageError};

pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("create temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a command inside the scratch directory; panics with its stderr when it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        self.try_run(program, args)
            .unwrap_or_else(|stderr| panic!("{program} {args:?} failed: {stderr}"))
    }

    /// Runs a command inside the scratch directory: its stdout, or its stderr if it failed.
    pub fn try_run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(program)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is qemu-utils installed?)"));
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn qemu_img(&self, args: &[&str]) -> String {
        self.run("qemu-img", args)
    }

    /// Creates qcow2 image `name` of `size` with creation options `opts` ("" for none).
    pub fn create(&self, name: &str, opts: &str, size: &str) {
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([name, size]);
        self.qemu_img(&args);
    }

    /// Creates qcow2 overlay `name` on `backing` (of format `backing_fmt`), as large as it.
    pub fn overlay(&self, name: &str, backing: &str, backing_fmt: &str) {
        self.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            backing,
            "-F",
            backing_fmt,
            name,
        ]);
    }

    /// Runs qemu-io commands on `image` (opened with format `fmt`).
    pub fn qemu_io(&self, fmt: &str, image: &str, commands: &[&str]) {
        let mut args = vec!["-f", fmt];
        for c in commands {
            args.push("-c");
            args.push(c);
        }
        args.push(image);
        let out = self.run("qemu-io", &args);
        // qemu-io reports command failures on stdout and still exits 0.
        assert!(
            !out.contains("failed") && !out.contains("error"),
            "qemu-io {commands:?} on {image}: {out}"
        );
    }

    /// A file of `len` pseudo-random bytes (deterministic per seed), for `write -s`.
    pub fn random_file(&self, name: &str, len: usize, seed: u64) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, pseudo_random(len, seed)).unwrap();
        path
    }

    /// The oracle: `qemu-img convert -O raw` of `image`. For an internal snapshot, the image
    /// is copied and the snapshot applied (`qemu-img snapshot -a`, what a revert does), so the
    /// snapshot is read with its own disk size; `convert -l snapshot.name=` would read it with
    /// the image's current size. The two must agree on their common prefix, which is checked.
    pub fn reference(&self, image: &str, fmt: &str, snapshot: Option<&str>) -> Vec<u8> {
        let Some(name) = snapshot else {
            return self.convert(image, fmt, &[]);
        };
        let copy = format!("{image}.__applied");
        std::fs::copy(self.path(image), self.path(&copy)).unwrap();
        self.qemu_img(&["snapshot", "-a", name, &copy]);
        let applied = self.convert(&copy, fmt, &[]);
        std::fs::remove_file(self.path(&copy)).unwrap();
        let loaded = self.convert(image, fmt, &["-l", &format!("snapshot.name={name}")]);
        let common = applied.len().min(loaded.len());
        assert_bytes_eq(
            &applied[..common],
            &loaded[..common],
            "snapshot -a vs convert -l",
        );
        applied
    }

    fn convert(&self, image: &str, fmt: &str, extra: &[&str]) -> Vec<u8> {
        let out = self.path("__reference.raw");
        let mut args = vec!["convert", "-U", "-f", fmt, "-O", "raw"];
        args.extend_from_slice(extra);
        args.push(image);
        args.push(path_str(&out));
        self.qemu_img(&args);
        let bytes = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        bytes
    }

    pub fn open(&self, image: &str, fmt: Option<Format>, snapshot: Option<&str>) -> Chain {
        self.try_open(image, fmt, snapshot)
            .unwrap_or_else(|e| panic!("open {image}: {e}"))
    }

    pub fn try_open(
        &self,
        image: &str,
        fmt: Option<Format>,
        snapshot: Option<&str>,
    ) -> Result<Chain, ImageError> {
        let mut spec = ChainSpec::from_image(self.path(image), fmt);
        spec.snapshot = snapshot.map(str::to_string);
        open_chain(&spec, Arc::new(MetadataCache::new(DEFAULT_CACHE_BYTES)))
    }

    /// Asserts that every byte we serve for `image` equals qemu-img's, read three ways:
    /// sequentially with an odd buffer size, with a tiny cache (constant eviction), and at
    /// random unaligned offsets and lengths.
    pub fn assert_matches_qemu(&self, image: &str, fmt: &str, snapshot: Option<&str>) {
        let expected = self.reference(image, fmt, snapshot);
        let format = Format::from_name(fmt);
        let chain = self.open(image, format, snapshot);
        assert_eq!(chain.size(), expected.len() as u64, "{image}: virtual size");
        assert_bytes_eq(&read_all(&chain, (1 << 20) + 4099), &expected, image);

        let mut spec = ChainSpec::from_image(self.path(image), format);
        spec.snapshot = snapshot.map(str::to_string);
        let tiny = open_chain(&spec, Arc::new(MetadataCache::new(16 << 10))).unwrap();
        assert_bytes_eq(&read_all(&tiny, 65_537), &expected, image);

        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ expected.len() as u64;
        for _ in 0..200 {
            let offset = next_random(&mut state) % (expected.len() as u64 + 1);
            let len = (next_random(&mut state) % (300 << 10)) as usize;
            let mut buf = vec![0xA5u8; len];
            let n = chain.read_at(&mut buf, offset).unwrap();
            let want_end = (offset as usize + len).min(expected.len());
            assert_eq!(
                n,
                want_end - offset as usize,
                "{image}: read length at {offset}"
            );
            assert!(
                buf[..n] == expected[offset as usize..want_end],
                "{image}: bytes differ in random read at {offset} len {len}"
            );
        }
    }
}

pub fn read_all(chain: &Chain, buf_size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; buf_size];
    loop {
        let n = chain.read_at(&mut buf, out.len() as u64).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Compares two byte strings and reports the first differing offset (not a 10 MB dump).
pub fn assert_bytes_eq(ours: &[u8], expected: &[u8], what: &str) {
    assert_eq!(ours.len(), expected.len(), "{what}: length differs");
    if let Some(i) = ours.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at offset {i:#x}: ours {:#04x}, qemu {:#04x}",
            ours[i], expected[i]
        );
    }
}

pub fn next_random(state: &mut u64) -> u64 {
    // xorshift64*: deterministic, dependency-free.
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&next_random(&mut state).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
