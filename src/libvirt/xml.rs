//! Reading libvirt's domain and snapshot XML into the model.
//!
//! Which image holds a snapshot's disk state:
//! - internal: the qcow2 image the snapshot's `<domain>` names for that disk, read at the
//!   qcow2 internal snapshot of the same name;
//! - external: the image the snapshot's `<domain>` names for that disk, i.e. the image that
//!   became read-only when the overlay named in `<disks>` was created on top of it;
//! - `snapshot='no'` (or 'manual'): not served.
//!
//! Where the XML states a backing chain (`<backingStore>`, present for running domains), it is
//! used as is; otherwise the chain is followed from the image headers.

use roxmltree::{Document, Node};

use crate::image::open::Backing;
use crate::image::{ChainSpec, Format, LayerSpec};
use crate::model::{DiskModel, SnapshotModel};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    #[error("XML does not parse: {0}")]
    Parse(String),
    #[error("XML lacks <{0}>")]
    Missing(&'static str),
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(name))
}

fn child_text(node: Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name)
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
}

/// A disk the filesystem can serve, and why others are skipped (logged by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskEntry {
    Served(DiskModel),
    Skipped { target: String, reason: String },
}

/// The file path of a `<source>` for file and block disks.
fn source_path(source: Node<'_, '_>) -> Option<String> {
    source
        .attribute("file")
        .or_else(|| source.attribute("dev"))
        .map(str::to_string)
}

/// The `<backingStore>` chain below a disk or backing element: Some(list) when libvirt states
/// it (an empty `<backingStore/>` ends it), None when it is absent (not probed by libvirt).
fn backing_chain(node: Node<'_, '_>) -> Result<Option<Vec<LayerSpec>>, String> {
    let Some(mut store) = child(node, "backingStore") else {
        return Ok(None);
    };
    let mut layers = Vec::new();
    loop {
        let Some(source) = child(store, "source") else {
            return Ok(Some(layers));
        };
        let path = source_path(source).ok_or("a backing store has no file source")?;
        let format =
            Format::parse_optional(child(store, "format").and_then(|f| f.attribute("type")))?;
        layers.push(LayerSpec::new(path, format));
        match child(store, "backingStore") {
            Some(next) => store = next,
            None => return Ok(Some(layers)),
        }
    }
}

/// The disks of a `<domain>` element, by target.
pub fn domain_disks(domain: Node<'_, '_>) -> Vec<DiskEntry> {
    let Some(devices) = child(domain, "devices") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for disk in devices.children().filter(|c| c.has_tag_name("disk")) {
        let device = disk.attribute("device").unwrap_or("disk");
        let Some(target) = child(disk, "target").and_then(|t| t.attribute("dev")) else {
            continue;
        };
        let target = target.to_string();
        if device != "disk" {
            continue;
        }
        let skip = |reason: String| DiskEntry::Skipped {
            target: target.clone(),
            reason,
        };
        let kind = disk.attribute("type").unwrap_or("file");
        if kind != "file" && kind != "block" {
            out.push(skip(format!(
                "disk type '{kind}' is not supported (only file and block)"
            )));
            continue;
        }
        let Some(path) = child(disk, "source").and_then(source_path) else {
            out.push(skip("the disk has no source (empty drive)".into()));
            continue;
        };
        let format =
            match Format::parse_optional(child(disk, "driver").and_then(|d| d.attribute("type"))) {
                Ok(f) => f,
                Err(reason) => {
                    out.push(skip(reason));
                    continue;
                }
            };
        let backing = match backing_chain(disk) {
            Ok(Some(layers)) => Backing::Explicit(layers),
            Ok(None) => Backing::FromImages,
            Err(reason) => {
                out.push(skip(reason.to_string()));
                continue;
            }
        };
        out.push(DiskEntry::Served(DiskModel {
            target,
            chain: ChainSpec {
                top: LayerSpec::new(path, format),
                snapshot: None,
                backing,
            },
            overlay: None,
        }));
    }
    out
}

/// Parses a domain's XML: its disks as they are now.
pub fn parse_domain(xml: &str) -> Result<Vec<DiskEntry>, XmlError> {
    let doc = Document::parse(xml).map_err(|e| XmlError::Parse(e.to_string()))?;
    Ok(domain_disks(doc.root_element()))
}

/// Parses a snapshot's XML into its model; skipped disks are returned for logging.
pub fn parse_snapshot(xml: &str) -> Result<(SnapshotModel, Vec<DiskEntry>), XmlError> {
    let doc = Document::parse(xml).map_err(|e| XmlError::Parse(e.to_string()))?;
    let root = doc.root_element();
    let name = child_text(root, "name").ok_or(XmlError::Missing("name"))?;
    let parent = child(root, "parent").and_then(|p| child_text(p, "name"));
    let creation_time = child_text(root, "creationTime")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let state = child_text(root, "state").unwrap_or_default();

    // The disks as the domain had them when the snapshot was taken.
    let at_snapshot: Vec<DiskEntry> = child(root, "domain").map(domain_disks).unwrap_or_default();
    let mut disks = Vec::new();
    let mut skipped = Vec::new();
    let listed = child(root, "disks");
    for entry in at_snapshot {
        let disk = match entry {
            DiskEntry::Served(d) => d,
            other => {
                skipped.push(other);
                continue;
            }
        };
        let listed_disk = listed.and_then(|l| {
            l.children()
                .find(|c| c.has_tag_name("disk") && c.attribute("name") == Some(&disk.target))
        });
        let mode = listed_disk
            .and_then(|d| d.attribute("snapshot"))
            .unwrap_or("no");
        let overlay = listed_disk
            .and_then(|d| child(d, "source"))
            .and_then(source_path)
            .map(std::path::PathBuf::from);
        match mode {
            "internal" => {
                let mut chain = disk.chain;
                chain.snapshot = Some(name.clone());
                disks.push(DiskModel {
                    target: disk.target,
                    chain,
                    overlay: None,
                });
            }
            "external" => disks.push(DiskModel { overlay, ..disk }),
            other => skipped.push(DiskEntry::Skipped {
                target: disk.target,
                reason: format!("snapshot='{other}': the snapshot holds no data for this disk"),
            }),
        }
    }
    Ok((
        SnapshotModel {
            name,
            parent,
            creation_time,
            state,
            xml: xml.to_string(),
            disks,
        },
        skipped,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING_DOMAIN: &str = r#"<domain type='kvm'><name>d</name><devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='/i/disk.s-ext' index='1'/>
        <backingStore type='file' index='2'>
          <format type='qcow2'/>
          <source file='/i/disk.qcow2'/>
          <backingStore/>
        </backingStore>
        <target dev='vda' bus='virtio'/>
      </disk>
      <disk type='file' device='cdrom'><source file='/i/x.iso'/><target dev='hdc'/></disk>
      <disk type='network' device='disk'><source protocol='nbd'/><target dev='vdb'/></disk>
      <disk type='file' device='disk'><driver type='raw'/><source file='/i/r.img'/><target dev='vdc'/></disk>
    </devices></domain>"#;

    #[test]
    fn domain_disks_with_stated_chains_and_skips() {
        let disks = parse_domain(RUNNING_DOMAIN).unwrap();
        assert_eq!(disks.len(), 3);
        let DiskEntry::Served(vda) = &disks[0] else {
            panic!()
        };
        assert_eq!(vda.target, "vda");
        assert_eq!(
            vda.chain.top,
            LayerSpec::new("/i/disk.s-ext", Some(Format::Qcow2))
        );
        assert_eq!(
            vda.chain.backing,
            Backing::Explicit(vec![LayerSpec::new("/i/disk.qcow2", Some(Format::Qcow2))])
        );
        assert!(matches!(&disks[1], DiskEntry::Skipped { target, .. } if target == "vdb"));
        let DiskEntry::Served(vdc) = &disks[2] else {
            panic!()
        };
        assert_eq!(vdc.chain.backing, Backing::FromImages);
        assert_eq!(vdc.chain.top.format, Some(Format::Raw));
    }

    #[test]
    fn snapshot_disks_internal_external_and_excluded() {
        let xml = r#"<domainsnapshot><name>s2</name><state>shutoff</state>
          <parent><name>s1</name></parent><creationTime>1700000000</creationTime>
          <disks>
            <disk name='vda' snapshot='internal'/>
            <disk name='vdb' snapshot='external' type='file'><source file='/i/b.s2'/></disk>
            <disk name='vdc' snapshot='no'/>
          </disks>
          <domain><devices>
            <disk type='file' device='disk'><driver type='qcow2'/><source file='/i/a.qcow2'/><target dev='vda'/></disk>
            <disk type='file' device='disk'><driver type='raw'/><source file='/i/b.raw'/><target dev='vdb'/></disk>
            <disk type='file' device='disk'><driver type='qcow2'/><source file='/i/c.qcow2'/><target dev='vdc'/></disk>
          </devices></domain></domainsnapshot>"#;
        let (snap, skipped) = parse_snapshot(xml).unwrap();
        assert_eq!(snap.name, "s2");
        assert_eq!(snap.parent.as_deref(), Some("s1"));
        assert_eq!(snap.creation_time, 1_700_000_000);
        assert_eq!(snap.disks.len(), 2);
        assert_eq!(snap.disks[0].chain.snapshot.as_deref(), Some("s2"));
        assert_eq!(snap.disks[0].chain.top.path.to_str(), Some("/i/a.qcow2"));
        // External: the image that became the backing file, not the new overlay.
        assert_eq!(snap.disks[1].chain.top.path.to_str(), Some("/i/b.raw"));
        assert_eq!(snap.disks[1].chain.snapshot, None);
        assert_eq!(
            snap.disks[1].overlay.as_deref().and_then(|p| p.to_str()),
            Some("/i/b.s2")
        );
        assert_eq!(snap.disks[0].overlay, None);
        assert!(matches!(&skipped[0], DiskEntry::Skipped { target, .. } if target == "vdc"));
    }

    #[test]
    fn bad_xml_is_an_error() {
        assert!(matches!(parse_snapshot("<x"), Err(XmlError::Parse(_))));
        assert_eq!(
            parse_snapshot("<domainsnapshot/>").unwrap_err(),
            XmlError::Missing("name")
        );
    }
}
