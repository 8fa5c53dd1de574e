//! How libvirt names become file names, reversibly.
//!
//! A name is shown as it is unless it cannot be a file name or would collide with an entry the
//! filesystem itself puts in the same directory. Then bytes are percent-encoded (`%XX`,
//! uppercase hex):
//! - always: `%` itself, `/`, and control characters (below 0x20, and 0x7f);
//! - the first character, when the name is `.` or `..`, or (snapshot names only) when it is
//!   `snapshot.xml` or `files` or ends in `.raw`, the fixed entries of a snapshot directory.
//!
//! Decoding is plain percent-decoding, so every shown name maps back to exactly one libvirt
//! name, and nothing is hidden.

/// Whether a snapshot name collides with a fixed entry of a snapshot directory.
fn is_reserved_in_snapshot_dir(name: &str) -> bool {
    name == "snapshot.xml" || name == "files" || name.ends_with(".raw")
}

fn encode(name: &str, force_first: bool) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, ch) in name.char_indices() {
        let must = ch == '%' || ch == '/' || ch.is_ascii_control();
        if must || (i == 0 && force_first) {
            let mut buf = [0u8; 4];
            for b in ch.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// The file name of domain `name`.
pub fn domain_file_name(name: &str) -> String {
    encode(name, name == "." || name == ".." || name.is_empty())
}

/// The directory name of snapshot `name`.
pub fn snapshot_file_name(name: &str) -> String {
    encode(
        name,
        name == "." || name == ".." || name.is_empty() || is_reserved_in_snapshot_dir(name),
    )
}

/// The libvirt name a file name stands for; None if it is not a valid encoding.
pub fn decode(file_name: &str) -> Option<String> {
    let bytes = file_name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_shown_as_they_are() {
        assert_eq!(
            snapshot_file_name("before-upgrade 2024"),
            "before-upgrade 2024"
        );
        assert_eq!(domain_file_name("web01"), "web01");
        assert_eq!(snapshot_file_name("état"), "état");
    }

    #[test]
    fn impossible_and_colliding_names_are_escaped() {
        assert_eq!(snapshot_file_name("a/b"), "a%2Fb");
        assert_eq!(snapshot_file_name("100%"), "100%25");
        assert_eq!(snapshot_file_name("tab\there"), "tab%09here");
        assert_eq!(snapshot_file_name("."), "%2E");
        assert_eq!(snapshot_file_name(".."), "%2E.");
        assert_eq!(snapshot_file_name("snapshot.xml"), "%73napshot.xml");
        assert_eq!(snapshot_file_name("vda.raw"), "%76da.raw");
        assert_eq!(snapshot_file_name("éa.raw"), "%C3%A9a.raw");
        // Domains share no directory with fixed entries.
        assert_eq!(domain_file_name("vda.raw"), "vda.raw");
    }

    #[test]
    fn every_encoding_decodes_back() {
        for name in [
            "a/b",
            "100%",
            "tab\there",
            ".",
            "..",
            "snapshot.xml",
            "files",
            "x.raw",
            "éa.raw",
            "%41",
            "",
        ] {
            assert_eq!(decode(&snapshot_file_name(name)).as_deref(), Some(name));
            assert_eq!(decode(&domain_file_name(name)).as_deref(), Some(name));
        }
        assert_eq!(snapshot_file_name("files"), "%66iles");
        assert_eq!(snapshot_file_name("files2"), "files2");
        assert_eq!(decode("bad%"), None);
        assert_eq!(decode("bad%zz"), None);
        assert_eq!(decode("%FF"), None);
    }
}
