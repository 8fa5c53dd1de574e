//! Header extensions (qcow2.txt, "Header extensions"): (type u32, length u32, data padded to 8)
//! records between the end of the header and the backing file name (or the end of the first
//! cluster). Unknown types are skipped, as the spec allows.

use super::error::FormatError;
use super::header::{be_u32, Header};

pub const EXT_END: u32 = 0x0000_0000;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
pub const EXT_BITMAPS: u32 = 0x2385_2875;
pub const EXT_ENCRYPTION: u32 = 0x0537_be77;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// QEMU keeps the backing format in a 16-byte buffer including the terminator.
pub const MAX_BACKING_FORMAT_LEN: u32 = 15;
const FEATURE_NAME_ENTRY: usize = 48;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub backing_format: Option<String>,
    pub data_file: Option<String>,
    /// (feature type, bit, name) from the feature name table.
    pub feature_names: Vec<(u8, u8, String)>,
    pub has_bitmaps: bool,
    pub unknown_types: Vec<u32>,
}

/// Parses the extension area. `first_cluster` holds the image's first cluster (zero-filled past
/// the end of the file).
pub fn parse(header: &Header, first_cluster: &[u8]) -> Result<Extensions, FormatError> {
    let mut ext = Extensions::default();
    let end = if header.backing_file_offset != 0 {
        header.backing_file_offset
    } else {
        header.cluster_size()
    };
    let mut offset = u64::from(header.header_length);
    while offset < end {
        let data_start = offset
            .checked_add(8)
            .filter(|&s| s <= end)
            .ok_or(FormatError::ExtensionOverrun { offset })?;
        let at = usize::try_from(offset).map_err(|_| FormatError::ExtensionOverrun { offset })?;
        let ext_type = be_u32(first_cluster, at);
        let ext_len = be_u32(first_cluster, at.saturating_add(4));
        if ext_type == EXT_END {
            break;
        }
        let data_end = data_start
            .checked_add(u64::from(ext_len))
            .filter(|&e| e <= end)
            .ok_or(FormatError::ExtensionOverrun { offset })?;
        // `end` is at most one cluster, so these fit in usize and lie inside `first_cluster`.
        let data = usize::try_from(data_start)
            .ok()
            .zip(usize::try_from(data_end).ok())
            .and_then(|(s, e)| first_cluster.get(s..e))
            .ok_or(FormatError::ExtensionOverrun { offset })?;
        match ext_type {
            EXT_BACKING_FORMAT => {
                if ext_len > MAX_BACKING_FORMAT_LEN {
                    return Err(FormatError::BackingFormatTooLong(ext_len));
                }
                ext.backing_format = Some(string_until_nul(data));
            }
            EXT_DATA_FILE => ext.data_file = Some(String::from_utf8_lossy(data).into_owned()),
            EXT_FEATURE_NAMES => {
                for entry in data.chunks_exact(FEATURE_NAME_ENTRY) {
                    ext.feature_names
                        .push((entry[0], entry[1], string_until_nul(&entry[2..])));
                }
            }
            EXT_BITMAPS => ext.has_bitmaps = true,
            // Encrypted images are refused by the header check before we get here.
            EXT_ENCRYPTION => {}
            other => ext.unknown_types.push(other),
        }
        offset = data_end
            .checked_add(7)
            .map(|e| e & !7)
            .ok_or(FormatError::ExtensionOverrun { offset })?;
    }
    if header.has_data_file() && ext.data_file.is_none() {
        return Err(FormatError::DataFileNameMissing);
    }
    Ok(ext)
}

fn string_until_nul(bytes: &[u8]) -> String {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}
