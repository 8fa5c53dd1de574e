//! Small, exact edits of libvirt XML: change a disk's source, a snapshot's name or parent.
//!
//! Edits are splices at the byte ranges roxmltree reports, so everything else in the document
//! (unknown elements, comments, formatting) is kept as libvirt wrote it.

use roxmltree::{Document, Node};

use super::xml::XmlError;

/// Escapes text for XML content and attribute values.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn parse(xml: &str) -> Result<Document<'_>, XmlError> {
    Document::parse(xml).map_err(|e| XmlError::Parse(e.to_string()))
}

/// Applies (range, replacement) splices, which must not overlap.
fn splice(xml: &str, mut edits: Vec<(std::ops::Range<usize>, String)>) -> String {
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = xml.to_string();
    for (range, text) in edits {
        out.replace_range(range, &text);
    }
    out
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(name))
}

/// The range of an element's text content (empty range just after the start tag if empty).
fn text_range(node: Node<'_, '_>) -> Option<std::ops::Range<usize>> {
    match node.first_child() {
        Some(t) if t.is_text() => Some(t.range()),
        None => {
            // <name></name>: insert right before the closing tag.
            let r = node.range();
            let close = format!("</{}>", node.tag_name().name());
            Some(r.end - close.len()..r.end - close.len())
        }
        Some(_) => None,
    }
}

/// Edits inside the `<domain>` element `domain`: disk `target` now reads `path` as `format`,
/// with any stated backing chain dropped (libvirt re-detects it).
fn disk_source_edits(
    domain: Node<'_, '_>,
    target: &str,
    path: &str,
    format: &str,
) -> Result<Vec<(std::ops::Range<usize>, String)>, XmlError> {
    let disk = child(domain, "devices")
        .and_then(|d| {
            d.children().find(|c| {
                c.has_tag_name("disk")
                    && child(*c, "target").and_then(|t| t.attribute("dev")) == Some(target)
            })
        })
        .ok_or(XmlError::Missing("disk"))?;
    let source = child(disk, "source").ok_or(XmlError::Missing("source"))?;
    let attr = source
        .attribute_node("file")
        .or_else(|| source.attribute_node("dev"))
        .ok_or(XmlError::Missing("source file"))?;
    let mut edits = vec![(attr.range_value(), escape(path))];
    if let Some(driver_type) = child(disk, "driver").and_then(|d| d.attribute_node("type")) {
        edits.push((driver_type.range_value(), escape(format)));
    }
    if let Some(store) = child(disk, "backingStore") {
        edits.push((store.range(), String::new()));
    }
    Ok(edits)
}

/// A domain XML whose disk `target` reads `path` (format `format`).
pub fn set_domain_disk_source(
    xml: &str,
    target: &str,
    path: &str,
    format: &str,
) -> Result<String, XmlError> {
    let doc = parse(xml)?;
    let edits = disk_source_edits(doc.root_element(), target, path, format)?;
    Ok(splice(xml, edits))
}

/// A snapshot XML whose saved `<domain>` has disk `target` reading `path`: used when the image
/// holding a snapshot's state is merged into another.
pub fn set_snapshot_disk_source(
    xml: &str,
    target: &str,
    path: &str,
    format: &str,
) -> Result<String, XmlError> {
    let doc = parse(xml)?;
    let domain = child(doc.root_element(), "domain").ok_or(XmlError::Missing("domain"))?;
    let edits = disk_source_edits(domain, target, path, format)?;
    Ok(splice(xml, edits))
}

/// A snapshot XML with another name.
pub fn set_snapshot_name(xml: &str, name: &str) -> Result<String, XmlError> {
    let doc = parse(xml)?;
    let node = child(doc.root_element(), "name").ok_or(XmlError::Missing("name"))?;
    let range = text_range(node).ok_or(XmlError::Missing("name"))?;
    Ok(splice(xml, vec![(range, escape(name))]))
}

/// A snapshot XML with another parent (None: a root snapshot).
pub fn set_snapshot_parent(xml: &str, parent: Option<&str>) -> Result<String, XmlError> {
    let doc = parse(xml)?;
    let root = doc.root_element();
    let edit = match (child(root, "parent"), parent) {
        (Some(p), Some(new)) => {
            let name = child(p, "name").ok_or(XmlError::Missing("parent name"))?;
            (
                text_range(name).ok_or(XmlError::Missing("parent name"))?,
                escape(new),
            )
        }
        (Some(p), None) => (p.range(), String::new()),
        (None, Some(new)) => {
            let name = child(root, "name").ok_or(XmlError::Missing("name"))?;
            let at = name.range().end;
            (
                at..at,
                format!(
                    "\n  <parent>\n    <name>{}</name>\n  </parent>",
                    escape(new)
                ),
            )
        }
        (None, None) => return Ok(xml.to_string()),
    };
    Ok(splice(xml, vec![edit]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::xml::{parse_domain, parse_snapshot, DiskEntry};

    const DOMAIN: &str = "<domain type='kvm'><name>d</name><!-- keep --><devices>\
        <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
        <source file='/i/a.raw' index='1'/><backingStore/><target dev='vda'/></disk>\
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
        <source file='/i/b.qcow2'/><target dev='vdb'/></disk></devices></domain>";

    #[test]
    fn disk_source_is_replaced_and_the_rest_kept() {
        let out = set_domain_disk_source(DOMAIN, "vda", "/i/a.it's", "qcow2").unwrap();
        assert!(out.contains("<!-- keep -->"));
        assert!(!out.contains("backingStore"));
        let disks = parse_domain(&out).unwrap();
        let DiskEntry::Served(vda) = &disks[0] else {
            panic!()
        };
        assert_eq!(vda.chain.top.path.to_str(), Some("/i/a.it's"));
        assert_eq!(vda.chain.top.format, Some(crate::image::Format::Qcow2));
        let DiskEntry::Served(vdb) = &disks[1] else {
            panic!()
        };
        assert_eq!(vdb.chain.top.path.to_str(), Some("/i/b.qcow2"));
        assert!(set_domain_disk_source(DOMAIN, "vdz", "/x", "raw").is_err());
    }

    #[test]
    fn snapshot_name_and_parent_edits() {
        let xml = "<domainsnapshot><name>old</name><parent><name>p</name></parent>\
                   <domain><devices><disk type='file' device='disk'><driver type='qcow2'/>\
                   <source file='/i/x'/><target dev='vda'/></disk></devices></domain>\
                   <disks><disk name='vda' snapshot='external'><source file='/i/x.old'/></disk></disks>\
                   </domainsnapshot>";
        let renamed = set_snapshot_name(xml, "new & <improved>").unwrap();
        let (m, _) = parse_snapshot(&renamed).unwrap();
        assert_eq!(m.name, "new & <improved>");
        assert_eq!(m.parent.as_deref(), Some("p"));
        let reparented = set_snapshot_parent(&renamed, Some("q")).unwrap();
        assert_eq!(
            parse_snapshot(&reparented).unwrap().0.parent.as_deref(),
            Some("q")
        );
        let root = set_snapshot_parent(&reparented, None).unwrap();
        assert_eq!(parse_snapshot(&root).unwrap().0.parent, None);
        let again = set_snapshot_parent(&root, Some("r")).unwrap();
        assert_eq!(
            parse_snapshot(&again).unwrap().0.parent.as_deref(),
            Some("r")
        );
        let moved = set_snapshot_disk_source(xml, "vda", "/i/base", "raw").unwrap();
        let (m, _) = parse_snapshot(&moved).unwrap();
        assert_eq!(m.disks[0].chain.top.path.to_str(), Some("/i/base"));
        // The overlay named in <disks> is untouched.
        assert!(moved.contains("/i/x.old"));
    }
}
