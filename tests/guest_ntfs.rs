//! NTFS against ntfs-3g: images made by mkntfs and filled through an ntfs-3g mount (long
//! and Unicode names, nested directories, a directory of thousands of entries whose index
//! has several levels, empty, resident and large files, sparse files, a file whose run list
//! spreads over several extension records, hard links, a file with 31 names, Interix
//! symlinks and special files, reparse-point symlinks, alternate data streams, compressed
//! files), on a whole disk and in MBR and GPT partitions. The parser's walk must equal what
//! ntfs-3g's own read-only mount of the same bytes shows: every name, type, mode, owner,
//! size, st_blocks, link count, time, byte, symlink target, xattr and hard-link class.
//! Hostile images give their exact error. Needs ntfs-3g (mkntfs, ntfs-3g), attr and fdisk.

mod common;
#[path = "common/ntfs.rs"]
mod ntfs_helpers;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::guest::{
    assert_manifests_eq, cache, corrupt, exercise_everything, kernel_manifest, open_volumes,
    parser_manifest, partitioned_disk, patch, sh, OneByteChanged,
};
use ntfs_helpers::*;
use virtsnapfs::guest::ntfs::Ntfs;
use virtsnapfs::guest::{self, CorruptKind, FileKind, GuestError, GuestFs};
use virtsnapfs::source::{ByteSource, FileSource};

fn open_img(img: &Path) -> Result<Box<dyn GuestFs>, GuestError> {
    let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(img).unwrap());
    guest::open_filesystem(src, cache()).map(|f| f.expect("an NTFS filesystem"))
}

fn ntfs(img: &Path) -> Ntfs {
    let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(img).unwrap());
    Ntfs::open(src, cache()).unwrap()
}

fn path_ino(fs: &dyn GuestFs, path: &str) -> u64 {
    let mut ino = fs.root();
    for part in path.split('/') {
        ino = fs
            .lookup(ino, part.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("no {path}"));
    }
    ino
}

/// Compares the parser's view of `fs` with ntfs-3g's read-only mount of `img`.
fn compare_with_ntfs3g(fs: &dyn GuestFs, img: &Path, what: &str) -> usize {
    let m = NtfsMount::new(img, &["ro"]);
    let theirs = kernel_manifest(m.path());
    let ours = parser_manifest(fs);
    assert_manifests_eq(&ours, &theirs, what);
    theirs.len()
}

#[test]
fn whole_volume_matches_ntfs3g() {
    let (_dir, img) = scratch();
    make_ntfs(&img, "96M", 3000);
    let fs = open_img(&img).unwrap();
    assert_eq!(fs.format_name(), "ntfs");
    let n = compare_with_ntfs3g(fs.as_ref(), &img, "whole volume");
    // What the comparison covered.
    let big = path_ino(fs.as_ref(), "big");
    assert_eq!(fs.read_dir(big).unwrap().len(), 3000);
    assert!(
        fs.attr(big).unwrap().size > 8 * 4096,
        "big/ has index blocks"
    );
    let text = fs.attr(path_ino(fs.as_ref(), "compressed/text")).unwrap();
    assert!(
        text.blocks * 512 < text.size / 4,
        "compressed/text is compressed: {text:?}"
    );
    let holes = fs.attr(path_ino(fs.as_ref(), "holes")).unwrap();
    assert!(holes.blocks * 512 < holes.size / 10, "holes is sparse");
    let linked = fs.attr(path_ino(fs.as_ref(), "links/origin")).unwrap();
    assert_eq!(linked.nlink, 31);
    assert_eq!(
        fs.attr(path_ino(fs.as_ref(), "reparse-link")).unwrap().kind,
        FileKind::Symlink
    );
    assert_eq!(fs.root(), 5);
    // ntfs-3g gave these files attribute lists (the run list of many-runs in pieces in
    // several extension records).
    for (file, pieces) in [("many-runs", 2), ("links/origin", 1), ("streams", 1)] {
        let info = common::guest::sh(
            "ntfsinfo",
            &["-F", &format!("/{file}"), img.to_str().unwrap()],
        );
        assert!(
            info.contains("$ATTRIBUTE_LIST"),
            "{file} has no attribute list"
        );
        let data = info.matches("Dumping attribute $DATA (0x80)").count();
        assert!(data >= pieces, "{file}: {data} $DATA pieces");
    }
    // Every name of big/ is found by the index search, which descends three levels;
    // a name that is not there is not; names differing in case are found as ntfs-3g finds
    // them (its names are in the POSIX namespace: not at all).
    let started = std::time::Instant::now();
    let entries = fs.read_dir(big).unwrap();
    for e in &entries {
        assert_eq!(fs.lookup(big, &e.name).unwrap(), Some(e.ino));
    }
    eprintln!(
        "{} lookups in big/ took {:?}",
        entries.len(),
        started.elapsed()
    );
    let ro = NtfsMount::new(&img, &["ro"]);
    // Lookups are exact, as ntfs-3g's: a DOS alias is found (though not listed), a name
    // in another case is not.
    for (dir, name, found) in [
        ("", "Long File Name.text", true),
        ("", "long file name.TEXT", false),
        ("", "LONGFI~1.TXT", true),
        ("", "longfi~1.txt", false),
        ("", "PROGRA~1", true),
        ("", "PROGRAM FILES", false),
        ("", "hello", true),
        ("", "HELLO", false),
    ] {
        let theirs = ro.path().join(dir).join(name).exists();
        let ours = fs.lookup(fs.root(), name.as_bytes()).unwrap();
        assert_eq!(ours.is_some(), theirs, "{name:?}: ntfs-3g says {theirs}");
        assert_eq!(theirs, found, "{name:?}");
        if let Some(ino) = ours {
            let theirs_ino = std::os::unix::fs::MetadataExt::ino(
                &fs::metadata(ro.path().join(dir).join(name)).unwrap(),
            );
            assert_eq!(ino, theirs_ino, "{name:?}");
        }
    }
    for name in [
        "entry number 00042 with a long name.txt",
        "ENTRY NUMBER 00042 WITH A LONG NAME.TXT",
        "entry number 00042 with a long name.txt.no",
        "entry number 0004",
        "zzz",
        "",
    ] {
        let theirs = ro.path().join("big").join(name).exists() && !name.is_empty();
        let ours = fs.lookup(big, name.as_bytes()).unwrap();
        assert_eq!(ours.is_some(), theirs, "{name:?}");
    }
    eprintln!("compared {n} paths with ntfs-3g");
}

#[test]
fn mbr_and_gpt_partitions_match_ntfs3g() {
    let (dir, img) = scratch();
    make_ntfs(&img, "40M", 300);
    for (label, script, names) in [
        (
            "mbr",
            "label: dos\nstart=2048, size=90112, type=7\nstart=92160, size=90112, type=7\n",
            ["vda1", "vda2"],
        ),
        (
            "gpt",
            "label: gpt\nstart=2048, size=90112, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\nstart=92160, size=90112, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n",
            ["vda1", "vda2"],
        ),
    ] {
        let disk = dir.path().join(format!("{label}.raw"));
        partitioned_disk(&disk, "100M", script, &[(1, &img), (2, &img)]);
        let volumes = open_volumes(&disk, "vda");
        let found: Vec<&str> = volumes.keys().map(String::as_str).collect();
        assert_eq!(found, names, "{label}");
        for (name, (_, fs)) in &volumes {
            assert_eq!(fs.format_name(), "ntfs");
            compare_with_ntfs3g(fs.as_ref(), &img, &format!("{label} {name}"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hostile images: each check on untrusted bytes gives its own error.

/// A small image with a few files; returns (scratch, image).
fn small_image() -> (tempfile::TempDir, std::path::PathBuf) {
    let (dir, img) = scratch();
    mkntfs(&img, "16M", &[]);
    let m = NtfsMount::new(&img, &[]);
    fs::write(m.path().join("file"), pattern(50_000, 1)).unwrap();
    fs::create_dir(m.path().join("big")).unwrap();
    for i in 0..400 {
        fs::write(
            m.path()
                .join("big")
                .join(format!("entry {i:04} with a name")),
            b"",
        )
        .unwrap();
    }
    m.unmount();
    (dir, img)
}

/// Byte position of MFT record `n` in the image (the MFT of a fresh small volume is one
/// extent from its first cluster).
fn record_pos(img: &Path, n: u64) -> u64 {
    let g = ntfs(img).geometry().clone();
    g.mft_lcn * g.cluster_size + n * u64::from(g.record_size)
}

/// The fixed-up bytes of record `n` and the byte offsets (within it) of its attributes of
/// `type_code`.
fn record_attrs(img: &Path, n: u64, type_code: u32) -> (Vec<u8>, Vec<usize>) {
    use virtsnapfs::guest::ntfs::record;
    let g = ntfs(img).geometry().clone();
    let mut rec = vec![0u8; g.record_size as usize];
    use std::os::unix::fs::FileExt;
    fs::File::open(img)
        .unwrap()
        .read_exact_at(&mut rec, record_pos(img, n))
        .unwrap();
    record::apply_fixups(&mut rec, b"FILE").unwrap();
    let h = record::RecordHeader::parse(&rec).unwrap();
    let mut at = h.attrs_offset;
    let mut found = Vec::new();
    loop {
        let t = u32::from_le_bytes(rec[at..at + 4].try_into().unwrap());
        if t == 0xFFFF_FFFF {
            break;
        }
        if t == type_code {
            found.push(at);
        }
        at += u32::from_le_bytes(rec[at + 4..at + 8].try_into().unwrap()) as usize;
    }
    (rec, found)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

#[test]
fn bad_boot_sector_is_rejected() {
    let (_dir, img) = small_image();
    patch(&img, 11, &1000u16.to_le_bytes());
    assert_eq!(
        corrupt(open_img(&img).err().unwrap()),
        CorruptKind::NtfsBytesPerSector
    );
    // Without the OEM id it is not NTFS at all: not shown.
    patch(&img, 3, b"XXXX");
    let src: Arc<dyn ByteSource> = Arc::new(FileSource::open(&img).unwrap());
    assert!(guest::open_filesystem(src, cache()).unwrap().is_none());
}

#[test]
fn volume_larger_than_its_device_is_rejected() {
    let (_dir, img) = small_image();
    patch(&img, 0x28, &(1u64 << 40).to_le_bytes());
    assert_eq!(
        corrupt(open_img(&img).err().unwrap()),
        CorruptKind::NtfsTotalSectors
    );
}

#[test]
fn torn_record_fails_its_fixup() {
    let (_dir, img) = small_image();
    let fs = open_img(&img).unwrap();
    let file = fs.lookup(fs.root(), b"file").unwrap().unwrap();
    drop(fs);
    let at = record_pos(&img, file) + 510;
    patch(&img, at, &[0x5A, 0xA5]);
    let fs = open_img(&img).unwrap();
    assert_eq!(
        corrupt(fs.attr(file).unwrap_err()),
        CorruptKind::NtfsFixupMismatch
    );
    // The root's record torn: the volume does not open.
    patch(&img, record_pos(&img, 5) + 1022, &[0x5A, 0xA5]);
    assert_eq!(
        corrupt(open_img(&img).err().unwrap()),
        CorruptKind::NtfsFixupMismatch
    );
}

#[test]
fn attribute_running_past_its_record_is_rejected() {
    let (_dir, img) = small_image();
    let fs = open_img(&img).unwrap();
    let file = fs.lookup(fs.root(), b"file").unwrap().unwrap();
    drop(fs);
    let (_, data) = record_attrs(&img, file, 0x80);
    patch(
        &img,
        record_pos(&img, file) + data[0] as u64 + 4,
        &0x800u32.to_le_bytes(),
    );
    let fs = open_img(&img).unwrap();
    assert_eq!(
        corrupt(fs.attr(file).unwrap_err()),
        CorruptKind::NtfsAttrHeader
    );
}

#[test]
fn run_pointing_past_the_volume_is_rejected() {
    let (_dir, img) = small_image();
    let fs = open_img(&img).unwrap();
    let file = fs.lookup(fs.root(), b"file").unwrap().unwrap();
    drop(fs);
    let (rec, data) = record_attrs(&img, file, 0x80);
    let a = data[0];
    let pairs = a + usize::from(u16_at(&rec, a + 0x20));
    let header = rec[pairs];
    let (len_bytes, off_bytes) = (usize::from(header & 0xF), usize::from(header >> 4));
    assert!(off_bytes > 0);
    // The LCN's highest byte: far past the 16 MiB volume, still positive.
    let top = pairs + len_bytes + off_bytes;
    patch(&img, record_pos(&img, file) + top as u64, &[0x70]);
    let fs = open_img(&img).unwrap();
    assert_eq!(
        corrupt(fs.attr(file).unwrap_err()),
        CorruptKind::NtfsRunRange
    );
}

#[test]
fn absurd_sizes_are_rejected() {
    let (_dir, img) = small_image();
    let fs = open_img(&img).unwrap();
    let file = fs.lookup(fs.root(), b"file").unwrap().unwrap();
    drop(fs);
    let (_, data) = record_attrs(&img, file, 0x80);
    // data_size far beyond the allocated size.
    patch(
        &img,
        record_pos(&img, file) + data[0] as u64 + 0x30,
        &(1u64 << 62).to_le_bytes(),
    );
    let fs = open_img(&img).unwrap();
    assert_eq!(
        corrupt(fs.attr(file).unwrap_err()),
        CorruptKind::NtfsAttrSize
    );
    // An inode number past the MFT.
    assert_eq!(
        corrupt(fs.attr(1 << 40).unwrap_err()),
        CorruptKind::NtfsInodeNumber
    );
}

#[test]
fn index_that_loops_is_rejected() {
    use std::os::unix::fs::FileExt;
    use virtsnapfs::guest::ntfs::{record, runlist};
    let (_dir, img) = small_image();
    let fs = open_img(&img).unwrap();
    let big = fs.lookup(fs.root(), b"big").unwrap().unwrap();
    assert_eq!(fs.read_dir(big).unwrap().len(), 400);
    drop(fs);
    let g = ntfs(&img).geometry().clone();
    // The root's last entry leads to the top index block (ntfs-3g keeps only that entry
    // in the root of a large directory).
    let (rec, roots) = record_attrs(&img, big, 0x90);
    let a = roots[0];
    let value = a + usize::from(u16_at(&rec, a + 0x14));
    let hdr = value + 0x10;
    let mut at = hdr + u32::from_le_bytes(rec[hdr..hdr + 4].try_into().unwrap()) as usize;
    while u16_at(&rec, at + 12) & 2 == 0 {
        at += usize::from(u16_at(&rec, at + 8));
    }
    assert_eq!(u16_at(&rec, at + 12) & 1, 1, "the root has a subnode");
    let len = usize::from(u16_at(&rec, at + 8));
    let top_vcn = u64::from_le_bytes(rec[at + len - 8..at + len].try_into().unwrap());
    // Where that block is: $INDEX_ALLOCATION's runs (VCNs in clusters: 4 KiB blocks).
    let (rec, allocs) = record_attrs(&img, big, 0xA0);
    let a = allocs[0];
    let pairs = a + usize::from(u16_at(&rec, a + 0x20));
    let highest = u64::from_le_bytes(rec[a + 0x18..a + 0x20].try_into().unwrap());
    let mut runs = Vec::new();
    runlist::decode(&rec[pairs..], 0, highest, g.total_clusters, &mut runs).unwrap();
    let run = runlist::find(&runs, top_vcn).unwrap();
    let block_pos = (run.lcn.unwrap() + top_vcn - run.vcn) * g.cluster_size;
    let mut block = vec![0u8; 4096];
    fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut block, block_pos)
        .unwrap();
    record::apply_fixups(&mut block, b"INDX").unwrap();
    // Point an entry of the top block back at the top block itself (a field clear of the
    // fixup positions).
    let mut at = 0x18 + u32::from_le_bytes(block[0x18..0x1C].try_into().unwrap()) as usize;
    let field = loop {
        let len = usize::from(u16_at(&block, at + 8));
        let flags = u16_at(&block, at + 12);
        assert_eq!(flags & 1, 1, "the top block has subnodes");
        let f = at + len - 8;
        if f % 512 < 502 {
            break f;
        }
        at += len;
    };
    patch(&img, block_pos + field as u64, &top_vcn.to_le_bytes());
    let fs = open_img(&img).unwrap();
    assert_eq!(
        corrupt(fs.read_dir(big).unwrap_err()),
        CorruptKind::NtfsIndexLoop
    );
    assert_eq!(
        corrupt(fs.lookup(big, b"a").unwrap_err()),
        CorruptKind::NtfsIndexLoop
    );
}

#[test]
fn metadata_files_are_hidden() {
    let (_dir, img) = small_image();
    let fs = open_img(&img).unwrap();
    let names: Vec<Vec<u8>> = fs
        .read_dir(fs.root())
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec![b"big".to_vec(), b"file".to_vec()]);
    for name in ["$MFT", "$Bitmap", "$Extend", "$Volume", "."] {
        assert_eq!(fs.lookup(fs.root(), name.as_bytes()).unwrap(), None);
    }
    assert_eq!(
        corrupt(fs.attr(0).unwrap_err()),
        CorruptKind::NtfsInodeNumber
    );
}

// ---------------------------------------------------------------------------------------
// Links, holes, other reparse points, dirty volumes, threads.

/// A `$REPARSE_POINT` value with `tag` and `data`.
fn reparse(tag: u32, data: &[u8]) -> Vec<u8> {
    let mut v = tag.to_le_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_le_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(data);
    v
}

/// A junction (mount point) value to `target`.
fn junction(target: &str) -> Vec<u8> {
    let t: Vec<u8> = target.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let n = t.len() as u16;
    let mut data = Vec::new();
    for v in [0, n, n + 2, n] {
        data.extend_from_slice(&v.to_le_bytes());
    }
    data.extend_from_slice(&t);
    data.extend_from_slice(&[0, 0]);
    data.extend_from_slice(&t);
    data.extend_from_slice(&[0, 0]);
    reparse(0xA000_0003, &data)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::from("0x"), |s, b| s + &format!("{b:02x}"))
}

#[test]
fn absolute_links_and_junctions_lose_only_ntfs3g_mount_prefix() {
    let (_dir, img) = scratch();
    mkntfs(&img, "16M", &[]);
    let m = NtfsMount::new(&img, &[]);
    let links = [
        (
            "abs-link",
            symlink_reparse(r"\??\C:\Windows\System32", false),
            false,
        ),
        ("junction", junction(r"\??\D:\Data\Shared"), true),
    ];
    for (name, value, dir) in &links {
        let path = m.path().join(name);
        if *dir {
            fs::create_dir(&path).unwrap();
        } else {
            fs::write(&path, b"").unwrap();
        }
        setfattr(&path, "system.ntfs_reparse_data", &hex(value));
    }
    m.unmount();
    let fs = open_img(&img).unwrap();
    let ro = NtfsMount::new(&img, &["ro"]);
    for (name, want, _) in [
        ("abs-link", "C:/Windows/System32", false),
        ("junction", "D:/Data/Shared", true),
    ] {
        let ino = fs.lookup(fs.root(), name.as_bytes()).unwrap().unwrap();
        assert_eq!(fs.attr(ino).unwrap().kind, FileKind::Symlink);
        let ours = fs.read_link(ino).unwrap();
        assert_eq!(ours, want.as_bytes());
        let theirs = fs::read_link(ro.path().join(name)).unwrap();
        let prefix = ro.path().join(".NTFS-3G");
        assert_eq!(
            theirs.strip_prefix(&prefix).unwrap().to_str().unwrap(),
            want,
            "ntfs-3g's target of {name}"
        );
        assert_eq!(fs.attr(ino).unwrap().size, ours.len() as u64);
    }
}

#[test]
fn reparse_point_of_another_kind_is_listed_but_not_read() {
    let (_dir, img) = scratch();
    mkntfs(&img, "16M", &[]);
    let m = NtfsMount::new(&img, &[]);
    let path = m.path().join("wof-compressed");
    fs::write(&path, pattern(10_000, 3)).unwrap();
    // IO_REPARSE_TAG_WOF: the file's real data would be elsewhere.
    setfattr(
        &path,
        "system.ntfs_reparse_data",
        &hex(&reparse(
            0x8000_0017,
            &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        )),
    );
    m.unmount();
    let fs = open_img(&img).unwrap();
    let ino = fs.lookup(fs.root(), b"wof-compressed").unwrap().unwrap();
    let entries = fs.read_dir(fs.root()).unwrap();
    assert_eq!(entries[0].kind, FileKind::File);
    let a = fs.attr(ino).unwrap();
    assert_eq!((a.kind, a.size), (FileKind::File, 10_000));
    let mut buf = [0u8; 100];
    assert!(matches!(
        fs.read(ino, 0, &mut buf),
        Err(GuestError::Unsupported(_))
    ));
}

#[test]
fn holes_are_found_by_next_data() {
    let (_dir, img) = scratch();
    mkntfs(&img, "32M", &[]);
    let m = NtfsMount::new(&img, &[]);
    let path = m.path().join("holes");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(&pattern(4096, 1)).unwrap();
        f.seek(SeekFrom::Start(300 * 1024)).unwrap();
        f.write_all(&pattern(10_000, 2)).unwrap();
        f.seek(SeekFrom::Start((5 << 20) - 5)).unwrap();
        f.write_all(b"tail!").unwrap();
    }
    m.unmount();
    let fs = open_img(&img).unwrap();
    let ino = fs.lookup(fs.root(), b"holes").unwrap().unwrap();
    let end = 5u64 << 20;
    assert_eq!(fs.next_data(ino, 0).unwrap(), Some((0, 4096)));
    assert_eq!(fs.next_data(ino, 4096).unwrap(), Some((307_200, 319_488)));
    assert_eq!(
        fs.next_data(ino, 310_000).unwrap(),
        Some((310_000, 319_488))
    );
    assert_eq!(fs.next_data(ino, 319_488).unwrap(), Some((end - 4096, end)));
    assert_eq!(fs.next_data(ino, end).unwrap(), None);
    // The holes read as zeros.
    let mut buf = vec![0xAAu8; 8192];
    assert_eq!(fs.read(ino, 100_000, &mut buf).unwrap(), 8192);
    assert!(buf.iter().all(|&b| b == 0));
}

/// Warnings logged by this test binary, kept to be looked at.
static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct KeepWarnings;

impl log::Log for KeepWarnings {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            WARNINGS.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn warnings_about(what: &str) -> usize {
    let _ = log::set_logger(&KeepWarnings);
    log::set_max_level(log::LevelFilter::Warn);
    WARNINGS
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.contains(what))
        .count()
}

#[test]
fn dirty_volume_is_shown_as_it_is() {
    warnings_about("");
    let (_dir, img) = small_image();
    let serial = format!("{:016x}", ntfs(&img).geometry().serial);
    let before = parser_manifest(open_img(&img).unwrap().as_ref());
    assert_eq!(
        warnings_about(&serial),
        0,
        "a clean volume is not warned about"
    );
    // $Volume's $VOLUME_INFORMATION flags: VOLUME_IS_DIRTY.
    let (rec, infos) = record_attrs(&img, 3, 0x70);
    let a = infos[0];
    let value = a + usize::from(u16_at(&rec, a + 0x14));
    let flags = u16_at(&rec, value + 0x0A) | 1;
    patch(
        &img,
        record_pos(&img, 3) + value as u64 + 0x0A,
        &flags.to_le_bytes(),
    );
    let after = parser_manifest(open_img(&img).unwrap().as_ref());
    assert_manifests_eq(&after, &before, "dirty volume");
    assert_eq!(warnings_about(&format!("{serial} is marked dirty")), 1);
}

#[test]
fn threads_reading_at_once_see_the_same_bytes() {
    let (_dir, img) = scratch();
    make_ntfs(&img, "64M", 200);
    let fs: Arc<dyn GuestFs> = Arc::from(open_img(&img).unwrap());
    let files = [
        "random-300k",
        "compressed/text",
        "compressed/mixed",
        "many-runs",
        "holes",
        "hello",
    ];
    let read_all = |fs: &dyn GuestFs, ino: u64| {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 7001];
        loop {
            let n = fs.read(ino, out.len() as u64, &mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    };
    let ro = NtfsMount::new(&img, &["ro"]);
    let expected: Vec<Vec<u8>> = files
        .iter()
        .map(|f| fs::read(ro.path().join(f)).unwrap())
        .collect();
    let inos: Vec<u64> = files.iter().map(|f| path_ino(fs.as_ref(), f)).collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let fs = fs.clone();
            let inos = &inos;
            let expected = &expected;
            s.spawn(move || {
                for round in 0..3 {
                    for k in 0..inos.len() {
                        let i = (k + t + round) % inos.len();
                        assert!(
                            read_all(fs.as_ref(), inos[i]) == expected[i],
                            "{}",
                            files[i]
                        );
                    }
                }
            });
        }
    });
}

fn compressible(len: usize) -> Vec<u8> {
    (0..len as u32)
        .flat_map(|i| format!("line {} of a compressible file\n", i % 977).into_bytes())
        .take(len)
        .collect()
}

/// The runs of the unnamed $DATA of record `n` (one attribute piece).
fn data_runs(img: &Path, n: u64) -> Vec<virtsnapfs::guest::ntfs::runlist::Run> {
    let g = ntfs(img).geometry().clone();
    let (rec, data) = record_attrs(img, n, 0x80);
    let a = data[0];
    let pairs = a + usize::from(u16_at(&rec, a + 0x20));
    let highest = u64::from_le_bytes(rec[a + 0x18..a + 0x20].try_into().unwrap());
    let mut runs = Vec::new();
    virtsnapfs::guest::ntfs::runlist::decode(
        &rec[pairs..],
        0,
        highest,
        g.total_clusters,
        &mut runs,
    )
    .unwrap();
    runs
}

#[test]
fn bad_compressed_data_is_rejected() {
    let (_dir, img) = scratch();
    mkntfs(&img, "16M", &[]);
    let m = NtfsMount::new(&img, &[]);
    fs::create_dir(m.path().join("c")).unwrap();
    setfattr(&m.path().join("c"), "system.ntfs_attrib_be", "0x00000800");
    let text = compressible(200_000);
    fs::write(m.path().join("c/text"), &text).unwrap();
    m.unmount();
    let fs = open_img(&img).unwrap();
    let ino = path_ino(fs.as_ref(), "c/text");
    let mut buf = vec![0u8; 200_000];
    assert_eq!(fs.read(ino, 0, &mut buf).unwrap(), 200_000);
    assert!(buf == text);
    drop(fs);
    let runs = data_runs(&img, ino);
    let g = ntfs(&img).geometry().clone();
    // The first chunk: a back-reference before anything was written.
    patch(
        &img,
        runs[0].lcn.unwrap() * g.cluster_size,
        &[0x02, 0xB0, 0x01, 0x00, 0x00],
    );
    let fs = open_img(&img).unwrap();
    assert_eq!(
        corrupt(fs.read(ino, 0, &mut buf).unwrap_err()),
        CorruptKind::NtfsCompressedData
    );
}

#[test]
fn attribute_list_naming_another_files_record_is_rejected() {
    let (_dir, img) = scratch();
    mkntfs(&img, "16M", &[]);
    let m = NtfsMount::new(&img, &[]);
    fs::write(m.path().join("other"), b"other\n").unwrap();
    let streams = m.path().join("streams");
    fs::write(&streams, b"streams\n").unwrap();
    for i in 0..12 {
        setfattr(&streams, &format!("user.s{i:02}"), &"v".repeat(60));
    }
    m.unmount();
    let fs = open_img(&img).unwrap();
    let file = fs.lookup(fs.root(), b"streams").unwrap().unwrap();
    let other = fs.lookup(fs.root(), b"other").unwrap().unwrap();
    assert_eq!(fs.xattrs(file).unwrap().len(), 12);
    drop(fs);
    // ntfs-3g keeps attribute lists non-resident: read the list from its cluster.
    use std::os::unix::fs::FileExt;
    let g = ntfs(&img).geometry().clone();
    let (rec, lists) = record_attrs(&img, file, 0x20);
    let a = lists[0];
    assert_eq!(rec[a + 8], 1, "a non-resident attribute list");
    let pairs = a + usize::from(u16_at(&rec, a + 0x20));
    let len = u64::from_le_bytes(rec[a + 0x30..a + 0x38].try_into().unwrap()) as usize;
    let mut runs = Vec::new();
    virtsnapfs::guest::ntfs::runlist::decode(&rec[pairs..], 0, 0, g.total_clusters, &mut runs)
        .unwrap();
    let list_pos = runs[0].lcn.unwrap() * g.cluster_size;
    let mut list = vec![0u8; len];
    fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut list, list_pos)
        .unwrap();
    let mut at = 0;
    let entry = loop {
        assert!(at < len, "no entry in an extension record");
        let mref = u64::from_le_bytes(list[at + 0x10..at + 0x18].try_into().unwrap());
        if mref & ((1 << 48) - 1) != file {
            break at;
        }
        at += usize::from(u16_at(&list, at + 4));
    };
    patch(
        &img,
        list_pos + entry as u64 + 0x10,
        &other.to_le_bytes()[..6],
    );
    let fs = open_img(&img).unwrap();
    assert_eq!(
        corrupt(fs.attr(file).unwrap_err()),
        CorruptKind::NtfsAttrList
    );
}

// ---------------------------------------------------------------------------------------
// Damage anywhere in the metadata: errors, never a panic, a hang or a huge allocation.

/// Opens and exercises everything, as the fuzz target does.
fn read_everything(dev: Arc<dyn ByteSource>) {
    let cache = Arc::new(virtsnapfs::cache::MetadataCache::new(256 << 10));
    if let Ok(Some(fs)) = guest::open_filesystem(dev, cache) {
        exercise_everything(fs.as_ref(), &[b"a", b"entry 0050"]);
    }
}

#[test]
fn corrupting_metadata_bytes_never_panics() {
    let (_dir, img) = scratch();
    mkntfs(&img, "4M", &["-c", "1024"]);
    let m = NtfsMount::new(&img, &[]);
    let r = |n: &str| m.path().join(n);
    fs::write(r("f"), pattern(5000, 3)).unwrap();
    fs::create_dir(r("d")).unwrap();
    for i in 0..120 {
        fs::write(r("d").join(format!("entry {i:04}")), b"").unwrap();
    }
    fs::hard_link(r("f"), r("d/link")).unwrap();
    std::os::unix::fs::symlink("f", r("sl")).unwrap();
    fs::create_dir(r("c")).unwrap();
    setfattr(&r("c"), "system.ntfs_attrib_be", "0x00000800");
    fs::write(r("c/z"), compressible(40_000)).unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(r("many-runs")).unwrap();
        for i in 0..300u64 {
            f.seek(SeekFrom::Start(i * 2048)).unwrap();
            f.write_all(b"Q").unwrap();
        }
    }
    m.unmount();
    let fsys = open_img(&img).unwrap();
    let d = fsys.lookup(fsys.root(), b"d").unwrap().unwrap();
    let many = fsys.lookup(fsys.root(), b"many-runs").unwrap().unwrap();
    let z = path_ino(fsys.as_ref(), "c/z");
    drop(fsys);
    let image = Arc::new(fs::read(&img).unwrap());
    let rs = 1024usize;
    // The boot sector's fields with three values each; every sixth byte of five records
    // ($MFT, the root, a directory with index blocks, a file with an attribute list, a
    // compressed file) complemented, to keep the run short.
    let mut regions = vec![(0usize, 0x50usize, 1usize), (0x1FE, 2, 1)];
    for rec in [0, 5, d, many, z] {
        regions.push((record_pos(&img, rec) as usize, rs, 6));
    }
    let mut runs = 0;
    let started = std::time::Instant::now();
    for (start, len, step) in regions {
        for at in (start..start + len).step_by(step) {
            let values: &[u8] = if step == 1 {
                &[0x00, 0xff, !image[at]]
            } else {
                &[!image[at]]
            };
            for &value in values {
                read_everything(Arc::new(OneByteChanged {
                    image: image.clone(),
                    at,
                    value,
                }));
                runs += 1;
            }
        }
    }
    eprintln!(
        "{runs} corrupted images read without a panic in {:?}",
        started.elapsed()
    );
}

#[test]
fn malformed_reparse_point_fails_only_its_entry() {
    let (_dir, img) = small_image();
    let m = NtfsMount::new(&img, &[]);
    fs::write(m.path().join("link"), b"").unwrap();
    setfattr(
        &m.path().join("link"),
        "system.ntfs_reparse_data",
        &hex(&symlink_reparse("file", true)),
    );
    m.unmount();
    let fs = open_img(&img).unwrap();
    let link = fs.lookup(fs.root(), b"link").unwrap().unwrap();
    assert_eq!(fs.read_link(link).unwrap(), b"file");
    drop(fs);
    // The substitute name's length, far past the reparse data.
    let (rec, points) = record_attrs(&img, link, 0xC0);
    let a = points[0];
    let value = a + usize::from(u16_at(&rec, a + 0x14));
    patch(
        &img,
        record_pos(&img, link) + (value + 8 + 2) as u64,
        &0x4000u16.to_le_bytes(),
    );
    let fs = open_img(&img).unwrap();
    assert_eq!(
        corrupt(fs.attr(link).unwrap_err()),
        CorruptKind::NtfsReparse
    );
    let names: Vec<Vec<u8>> = fs
        .read_dir(fs.root())
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, [&b"big"[..], b"file", b"link"]);
}

#[test]
fn wsl_special_files_match_ntfs3g() {
    // ntfs-3g makes WSL reparse points for special files and symlinks with
    // special_files=wsl, as Windows' WSL does; its default mount shows them.
    let (_dir, img) = scratch();
    mkntfs(&img, "16M", &[]);
    let m = NtfsMount::new(&img, &["special_files=wsl"]);
    let r = |n: &str| m.path().join(n);
    fs::write(r("target"), b"target\n").unwrap();
    sh("mkfifo", &[r("fifo").to_str().unwrap()]);
    sh("mknod", &[r("char-dev").to_str().unwrap(), "c", "1", "3"]);
    sh(
        "mknod",
        &[r("block-dev").to_str().unwrap(), "b", "300", "70000"],
    );
    drop(std::os::unix::net::UnixListener::bind(r("socket")).unwrap());
    std::os::unix::fs::symlink("target", r("wsl-link")).unwrap();
    m.unmount();
    let fs = open_img(&img).unwrap();
    compare_with_ntfs3g(fs.as_ref(), &img, "WSL special files");
    let dev = fs.attr(path_ino(fs.as_ref(), "block-dev")).unwrap();
    assert_eq!(
        (dev.kind, dev.perm, dev.rdev_major, dev.rdev_minor),
        (FileKind::BlockDevice, 0, 300, 70000)
    );
    let link = path_ino(fs.as_ref(), "wsl-link");
    assert_eq!(fs.read_link(link).unwrap(), b"target");
}
