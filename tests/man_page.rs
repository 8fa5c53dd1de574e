//! The man page renders and lints clean with mandoc, and documents every -o option we parse.

use std::process::Command;

#[test]
fn man_page_lints_clean_and_lists_every_option() {
    let page = concat!(env!("CARGO_MANIFEST_DIR"), "/man/virtsnapfs.1");
    let out = Command::new("mandoc")
        .args(["-Tlint", "-W", "warning", page])
        .output()
        .expect("mandoc is installed");
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = std::fs::read_to_string(page).unwrap();
    // Each option the parser accepts, with a valid value, is documented.
    for (option, example) in [
        ("connect=", "connect=qemu:///system"),
        ("disk_mode=", "disk_mode=0444"),
        ("uid=", "uid=1"),
        ("refresh=", "refresh=2"),
        ("cache_size=", "cache_size=16"),
        ("threads=", "threads=8"),
        ("readahead_kb=", "readahead_kb=1024"),
        ("log_file=", "log_file=/tmp/x"),
        ("allow_other", "allow_other"),
        ("auto_unmount", "auto_unmount"),
        ("nofail", "nofail"),
        ("snapshot_kind=", "snapshot_kind=external"),
        ("allow_stop", "allow_stop"),
        ("close_to_open", "close_to_open"),
        ("state_dir=", "state_dir=/tmp/x"),
        ("merge_timeout=", "merge_timeout=30"),
        ("merge_bandwidth=", "merge_bandwidth=1000000"),
    ] {
        assert!(text.contains(option), "man page does not mention {option}");
        assert!(
            virtsnapfs::mount::parse_options(&[example.to_string()]).is_ok(),
            "{example} is documented but refused"
        );
    }
}
