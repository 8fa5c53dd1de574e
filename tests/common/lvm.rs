//! LVM2 test images made by lvm2's own tools. This machine's kernel has no device-mapper, so
//! `lvcreate` cannot run: PVs and the VG are made by `pvcreate`/`vgcreate` on loop devices,
//! and the LVs are written into the VG's metadata by `vgcfgrestore` from the text
//! `vgcfgbackup` gives with a `logical_volumes` block added. Each LV is described once
//! ([`LvSpec`]) and both its metadata text and the placement of a filesystem's bytes on the
//! PVs (device-mapper's linear and striped mappings) are derived from that description.
//!
//! lvm2 runs with a private configuration (`LVM_SYSTEM_DIR`): it sees only this test's loop
//! devices, keeps no backups or archives, and uses no udev. [`LvmHost`] removes the VG, the
//! PV labels and the loop devices it made when dropped, also when the test fails.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::vm::sh;

static NEXT_VG: AtomicUsize = AtomicUsize::new(0);

fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// A unique VG name for this process: `PREFIX` + pid + counter (`PREFIX` may contain `-`).
pub fn unique_vg(prefix: &str) -> String {
    let n = NEXT_VG.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id())
}

/// One segment of an LV, in extents; PVs are indexes into [`LvmHost::pvs`].
#[derive(Clone, Debug)]
pub enum SegSpec {
    Linear {
        count: u64,
        pv: usize,
        pe: u64,
    },
    /// A linear segment written with `type = "linear"` (lvm2 itself writes "striped").
    LinearType {
        count: u64,
        pv: usize,
        pe: u64,
    },
    Striped {
        count: u64,
        stripe_sectors: u64,
        areas: Vec<(usize, u64)>,
    },
    /// Any other segment, written as given (`type = "thin" ...`) after start/count.
    Raw {
        count: u64,
        body: String,
    },
}

impl SegSpec {
    fn count(&self) -> u64 {
        match self {
            SegSpec::Linear { count, .. }
            | SegSpec::LinearType { count, .. }
            | SegSpec::Striped { count, .. }
            | SegSpec::Raw { count, .. } => *count,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LvSpec {
    pub name: String,
    pub visible: bool,
    pub segments: Vec<SegSpec>,
}

impl LvSpec {
    pub fn new(name: &str, segments: Vec<SegSpec>) -> LvSpec {
        LvSpec {
            name: name.to_string(),
            visible: true,
            segments,
        }
    }
    pub fn hidden(name: &str, segments: Vec<SegSpec>) -> LvSpec {
        LvSpec {
            visible: false,
            ..LvSpec::new(name, segments)
        }
    }
    pub fn extents(&self) -> u64 {
        self.segments.iter().map(SegSpec::count).sum()
    }
}

/// The `logical_volumes { ... }` block for `lvs`, PVs named by `pv_names`.
pub fn lv_text(lvs: &[LvSpec], pv_names: &[String]) -> String {
    let mut out = String::from("\tlogical_volumes {\n");
    for (i, lv) in lvs.iter().enumerate() {
        let status = if lv.visible {
            "\"READ\", \"WRITE\", \"VISIBLE\""
        } else {
            "\"READ\", \"WRITE\""
        };
        // lvm2 ids: 32 characters in groups of 6-4-4-4-4-4-6.
        out += &format!(
            "\t\t{} {{\n\t\t\tid = \"LV{i:04}-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\"\n\t\t\tstatus = [{status}]\n\t\t\tflags = []\n\t\t\tsegment_count = {}\n",
            lv.name,
            lv.segments.len()
        );
        let mut start = 0;
        for (n, seg) in lv.segments.iter().enumerate() {
            out += &format!(
                "\t\t\tsegment{} {{\n\t\t\t\tstart_extent = {start}\n\t\t\t\textent_count = {}\n",
                n + 1,
                seg.count()
            );
            out += &match seg {
                SegSpec::Linear { pv, pe, .. } => format!(
                    "\t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = 1\n\t\t\t\tstripes = [\"{}\", {pe}]\n",
                    pv_names[*pv]
                ),
                SegSpec::LinearType { pv, pe, .. } => format!(
                    "\t\t\t\ttype = \"linear\"\n\t\t\t\tstripe_count = 1\n\t\t\t\tstripes = [\"{}\", {pe}]\n",
                    pv_names[*pv]
                ),
                SegSpec::Striped {
                    stripe_sectors,
                    areas,
                    ..
                } => {
                    let list: Vec<String> = areas
                        .iter()
                        .map(|(pv, pe)| format!("\"{}\", {pe}", pv_names[*pv]))
                        .collect();
                    format!(
                        "\t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = {}\n\t\t\t\tstripe_size = {stripe_sectors}\n\t\t\t\tstripes = [{}]\n",
                        areas.len(),
                        list.join(", ")
                    )
                }
                SegSpec::Raw { body, .. } => format!("\t\t\t\t{body}\n"),
            };
            out += "\t\t\t}\n";
            start += seg.count();
        }
        out += "\t\t}\n";
    }
    out + "\t}\n"
}

/// Writes `data` (at most the LV's size) where the LV's bytes are on `disk`: LV byte `o` of a
/// linear segment is at `pv_base[pv] + (pe * extent) + o'`; a striped segment's chunks go
/// round robin over its areas (device-mapper's `striped` target). `pv_base` is the disk
/// byte of each PV's extent 0.
pub fn place(disk: &Path, data: &[u8], lv: &LvSpec, extent: u64, pv_base: &[u64]) {
    let f = fs::OpenOptions::new().write(true).open(disk).unwrap();
    let mut lv_off = 0u64;
    let len = data.len() as u64;
    for seg in &lv.segments {
        let seg_len = seg.count() * extent;
        match seg {
            SegSpec::Linear { pv, pe, .. } | SegSpec::LinearType { pv, pe, .. } => {
                let end = (lv_off + seg_len).min(len);
                if lv_off < end {
                    let at = pv_base[*pv] + pe * extent;
                    f.write_all_at(&data[lv_off as usize..end as usize], at)
                        .unwrap();
                }
            }
            SegSpec::Striped {
                stripe_sectors,
                areas,
                ..
            } => {
                let chunk = stripe_sectors * 512;
                let n = areas.len() as u64;
                let mut w = 0;
                while w < seg_len && lv_off + w < len {
                    let (index, row) = ((w / chunk) % n, (w / chunk) / n);
                    let (pv, pe) = areas[index as usize];
                    let at = pv_base[pv] + pe * extent + row * chunk;
                    let end = (lv_off + w + chunk).min(len);
                    f.write_all_at(&data[(lv_off + w) as usize..end as usize], at)
                        .unwrap();
                    w += chunk;
                }
            }
            SegSpec::Raw { .. } => {}
        }
        lv_off += seg_len;
    }
}

/// lvm2 tools over this test's loop devices; cleans up on drop.
pub struct LvmHost {
    sys: tempfile::TempDir,
    loops: Vec<String>,
    pub vg: String,
    vg_made: bool,
}

impl LvmHost {
    pub fn new(vg: &str) -> LvmHost {
        let host = LvmHost {
            sys: tempfile::tempdir().unwrap(),
            loops: Vec::new(),
            vg: vg.to_string(),
            vg_made: false,
        };
        host.write_conf();
        host
    }

    fn write_conf(&self) {
        let accept: Vec<String> = self
            .loops
            .iter()
            .map(|l| format!("\"a|^{l}$|\""))
            .chain(["\"r|.*|\"".to_string()])
            .collect();
        let filter = accept.join(", ");
        fs::write(
            self.sys.path().join("lvm.conf"),
            format!(
                "devices {{ filter = [ {filter} ] global_filter = [ {filter} ] use_devicesfile = 0 hints = \"none\" obtain_device_list_from_udev = 0 pv_min_size = 512 }}\n\
                 backup {{ backup = 0 archive = 0 }}\n\
                 activation {{ udev_sync = 0 udev_rules = 0 monitoring = 0 }}\n"
            ),
        )
        .unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("lvm");
        c.args(args)
            .env("LVM_SYSTEM_DIR", self.sys.path())
            .env("LVM_SUPPRESS_FD_WARNINGS", "1");
        c
    }

    /// Runs `lvm ARGS`; panics with its output when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "lvm {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A loop device over `[offset, offset + len)` of `img`; returns its path.
    pub fn attach(&mut self, img: &Path, offset: u64, len: u64) -> String {
        let dev = sh(
            "losetup",
            &[
                "-f",
                "--show",
                "-o",
                &offset.to_string(),
                "--sizelimit",
                &len.to_string(),
                p(img),
            ],
        )
        .trim()
        .to_string();
        self.loops.push(dev.clone());
        self.write_conf();
        dev
    }

    /// The loop devices, in the order attached: the PVs [`SegSpec`] indexes.
    pub fn pvs(&self) -> &[String] {
        &self.loops
    }

    pub fn pvcreate(&self, dev: &str, extra: &[&str]) {
        let mut args = vec!["pvcreate", "-q", "-y"];
        args.extend_from_slice(extra);
        args.push(dev);
        self.run(&args);
    }

    /// `vgcreate -s EXTENT VG` over every attached loop device.
    pub fn vgcreate(&mut self, extent: &str) {
        let mut args = vec!["vgcreate", "-q", "-s", extent, &self.vg];
        let loops = self.loops.clone();
        args.extend(loops.iter().map(String::as_str));
        self.run(&args);
        self.vg_made = true;
    }

    /// Each PV's `pe_start`, in bytes.
    pub fn pe_starts(&self) -> Vec<u64> {
        self.loops
            .iter()
            .map(|dev| {
                let out = self.run(&[
                    "pvs",
                    "--noheadings",
                    "--units",
                    "b",
                    "--nosuffix",
                    "-o",
                    "pe_start",
                    dev,
                ]);
                out.trim().parse().unwrap()
            })
            .collect()
    }

    /// The metadata's name of each PV ("pv0"), in [`LvmHost::pvs`] order.
    pub fn pv_names(&self) -> Vec<String> {
        let text = self.backup();
        let mut names = Vec::new();
        for dev in &self.loops {
            let at = text
                .find(&format!("device = \"{dev}\""))
                .unwrap_or_else(|| panic!("{dev} not in {text}"));
            let open = text[..at].rfind('{').unwrap();
            let name = text[..open]
                .trim_end()
                .rsplit(['\t', ' ', '\n'])
                .next()
                .unwrap();
            names.push(name.to_string());
        }
        names
    }

    fn backup(&self) -> String {
        let file = self.sys.path().join("vg.txt");
        self.run(&["vgcfgbackup", "-q", "-f", p(&file), &self.vg]);
        fs::read_to_string(&file).unwrap()
    }

    /// Writes `lvs` into the VG's metadata (replacing any LVs) with `vgcfgrestore`.
    pub fn restore(&self, lvs: &[LvSpec]) {
        let text = self.backup();
        let text = match text.find("\tlogical_volumes {") {
            // Drop the old block: the VG section's last item, up to its closing brace.
            Some(at) => text[..at].to_string() + "}\n",
            None => text[..text.rfind('}').unwrap()].to_string() + "}\n",
        };
        let close = text.rfind('}').unwrap();
        let names = self.pv_names();
        let new = format!(
            "{}{}{}",
            &text[..close],
            lv_text(lvs, &names),
            &text[close..]
        );
        let file = self.sys.path().join("vg-new.txt");
        fs::write(&file, new).unwrap();
        self.run(&["vgcfgrestore", "-q", "--force", "-f", p(&file), &self.vg]);
    }
}

impl Drop for LvmHost {
    fn drop(&mut self) {
        if self.vg_made {
            let _ = self.command(&["vgremove", "-ff", "-y", &self.vg]).output();
        }
        for dev in &self.loops {
            let _ = self.command(&["pvremove", "-ff", "-y", dev]).output();
        }
        for dev in &self.loops {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

/// lvm2's checksum (`calc_crc` seeded with `INITIAL_CRC`), for tests that rewrite metadata.
pub fn lvm_crc(data: &[u8]) -> u32 {
    let mut crc = 0xf597_a6cfu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Where the committed metadata text of the first metadata area of the PV at disk byte
/// `pv` is: (metadata area header's disk offset, text's disk offset, text length).
pub fn metadata_location(disk: &[u8], pv: usize) -> (usize, usize, usize) {
    let u64_at = |at: usize| u64::from_le_bytes(disk[at..at + 8].try_into().unwrap()) as usize;
    let label = (0..4)
        .map(|s| pv + 512 * s)
        .find(|&at| &disk[at..at + 8] == b"LABELONE")
        .expect("no LVM label");
    // PV header at offset 32: uuid, size, data areas up to a zero offset, then metadata areas.
    let mut at = label + 32 + 40;
    while u64_at(at) != 0 {
        at += 16;
    }
    let mda = pv + u64_at(at + 16);
    let text = u64_at(mda + 40);
    let size = u64_at(mda + 48);
    (mda, mda + text, size)
}

/// Replaces the committed metadata text of the PV at `pv` by `edit(old text)`, in place,
/// with its checksum and the header's made right; first checks that [`lvm_crc`] gives the
/// checksum lvm2 wrote. The new text must fit before the end of the metadata area.
pub fn rewrite_metadata(disk: &mut [u8], pv: usize, edit: impl FnOnce(&str) -> String) {
    let (mda, text_at, size) = metadata_location(disk, pv);
    let old = disk[text_at..text_at + size].to_vec();
    let stored = u32::from_le_bytes(disk[mda + 56..mda + 60].try_into().unwrap());
    assert_eq!(lvm_crc(&old), stored, "the test's CRC is not lvm2's");
    let text = String::from_utf8(old[..old.len() - 1].to_vec()).unwrap();
    let mut new = edit(&text).into_bytes();
    new.push(0);
    let area = u64::from_le_bytes(disk[mda + 32..mda + 40].try_into().unwrap()) as usize;
    assert!(
        text_at - mda + new.len() <= area,
        "new metadata does not fit"
    );
    disk[text_at..text_at + new.len()].copy_from_slice(&new);
    set_raw_location(disk, mda, None, Some(new.len() as u64), Some(lvm_crc(&new)));
}

/// Sets fields of the first raw location of the metadata area header at `mda` and makes the
/// header's checksum right.
pub fn set_raw_location(
    disk: &mut [u8],
    mda: usize,
    offset: Option<u64>,
    size: Option<u64>,
    checksum: Option<u32>,
) {
    if let Some(o) = offset {
        disk[mda + 40..mda + 48].copy_from_slice(&o.to_le_bytes());
    }
    if let Some(s) = size {
        disk[mda + 48..mda + 56].copy_from_slice(&s.to_le_bytes());
    }
    if let Some(c) = checksum {
        disk[mda + 56..mda + 60].copy_from_slice(&c.to_le_bytes());
    }
    let crc = lvm_crc(&disk[mda + 4..mda + 512]);
    disk[mda..mda + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A sparse copy of `from` at `to`.
pub fn copy_sparse(from: &Path, to: &Path) -> PathBuf {
    sh("cp", &["--sparse=always", p(from), p(to)]);
    to.to_path_buf()
}

const LVM_MIB: u64 = 1 << 20;

/// A disk image with PVs on `pv_ranges` (byte ranges of `disk`), one VG of 1 MiB extents
/// named `vg` holding `lvs`, and each `(LV index, image)` written at its LV's extents. The
/// lvm2 work is done on a copy that is wiped afterwards. Returns the disk of PVs' extent-0
/// disk offsets too.
pub fn lvm_disk(
    disk: &Path,
    pv_ranges: &[(u64, u64)],
    vg: &str,
    lvs: &[LvSpec],
    images: &[(usize, &Path)],
) -> Vec<u64> {
    let work = disk.with_extension("work");
    copy_sparse(disk, &work);
    let mut host = LvmHost::new(vg);
    for &(start, len) in pv_ranges {
        let dev = host.attach(&work, start, len);
        host.pvcreate(&dev, &[]);
    }
    host.vgcreate("1m");
    host.restore(lvs);
    let bases: Vec<u64> = host
        .pe_starts()
        .iter()
        .zip(pv_ranges)
        .map(|(pe_start, (start, _))| start + pe_start)
        .collect();
    copy_sparse(&work, disk);
    drop(host);
    fs::remove_file(&work).unwrap();
    for &(lv, img) in images {
        let data = fs::read(img).unwrap();
        assert!(
            data.len() as u64 <= lvs[lv].extents() * LVM_MIB,
            "image too big for its LV"
        );
        place(disk, &data, &lvs[lv], LVM_MIB, &bases);
    }
    bases
}
