//! PCI enumeration from `/sys/bus/pci/devices/<address>/`.
//!
//! One directory per PCI function (a symlink into `/sys/devices/...`). Every attribute is
//! optional to the probe: what cannot be read is `null` in the facts and explained in a warning.

use std::path::Path;

use pci_ids::FromId;

use crate::facts::{DrmNodes, PciClass, PciDevice, PciLink, Sriov};
use crate::parse::{self, ParseError};
use crate::read::{excerpt, Dir, Reader};

/// Where the kernel lists PCI functions, relative to the probe root.
pub const PCI_DEVICES_DIR: &str = "sys/bus/pci/devices";

/// Reads every PCI function, sorted by address.
pub fn enumerate(reader: &mut Reader) -> Vec<PciDevice> {
    let dir = reader.path(PCI_DEVICES_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) => {
            let shown = reader.display(&dir);
            reader.warn(format!(
                "cannot list {shown}: {err}; no PCI facts (is sysfs mounted under the root?)"
            ));
            return Vec::new();
        }
    };
    let mut addresses: Vec<String> = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => addresses.push(entry.file_name().to_string_lossy().into_owned()),
            Err(err) => {
                let shown = reader.display(&dir);
                reader.warn(format!("error while listing {shown}: {err}"));
            }
        }
    }
    addresses.sort();
    addresses
        .into_iter()
        .filter_map(|address| read_device(reader, &dir, address))
        .collect()
}

/// Whether `name` looks like a PCI address, `dddd:bb:dd.f` in hex (Intel VMD domains have
/// five or more domain digits, e.g. `10000:e1:00.0`).
pub fn is_pci_address(name: &str) -> bool {
    let hex = |s: &str, len: std::ops::RangeInclusive<usize>| {
        len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let mut parts = name.split(':');
    let (Some(domain), Some(bus), Some(slot), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some((device, function)) = slot.split_once('.') else {
        return false;
    };
    hex(domain, 4..=8) && hex(bus, 2..=2) && hex(device, 2..=2) && hex(function, 1..=1)
}

fn read_device(reader: &mut Reader, dir: &Path, address: String) -> Option<PciDevice> {
    let path = dir.join(&address);
    if !is_pci_address(&address) {
        let shown = reader.display(&path);
        reader.warn(format!(
            "ignoring {shown}: not a PCI address (dddd:bb:dd.f)"
        ));
        return None;
    }
    let dir = match Dir::open(&path) {
        Ok(dir) => dir,
        Err(err) => {
            let shown = reader.display(&path);
            let why = if err.kind() == std::io::ErrorKind::NotFound && path.is_symlink() {
                "dangling link".to_string()
            } else {
                err.to_string()
            };
            reader.warn(format!("ignoring {shown}: {why}"));
            return None;
        }
    };
    let path = &dir;

    let vendor = hex_attribute(reader, path, "vendor", true, parse::hex_u16);
    let device = hex_attribute(reader, path, "device", true, parse::hex_u16);
    let subsystem_vendor = hex_attribute(reader, path, "subsystem_vendor", false, parse::hex_u16);
    let subsystem_device = hex_attribute(reader, path, "subsystem_device", false, parse::hex_u16);
    let revision = hex_attribute(reader, path, "revision", false, parse::hex_u8);
    let class = hex_attribute(reader, path, "class", true, parse::pci_class);

    let vendor_name = vendor
        .and_then(pci_ids::Vendor::from_id)
        .map(|v| v.name().to_string());
    let device_name = match (vendor, device) {
        (Some(v), Some(d)) => pci_ids::Device::from_vid_pid(v, d).map(|d| d.name().to_string()),
        _ => None,
    };

    let numa_node = hex_attribute(reader, path, "numa_node", false, parse::numa_node).flatten();
    let driver = reader.link_name_in(path, "driver");
    let iommu_group = iommu_group(reader, path);

    Some(PciDevice {
        vendor_id: vendor.map(|v| format!("{v:04x}")),
        device_id: device.map(|d| format!("{d:04x}")),
        subsystem_vendor_id: subsystem_vendor.map(|v| format!("{v:04x}")),
        subsystem_device_id: subsystem_device.map(|d| format!("{d:04x}")),
        revision: revision.map(|r| format!("{r:02x}")),
        class: class.map(|(base, sub, prog_if)| PciClass {
            base: format!("{base:02x}"),
            sub: format!("{sub:02x}"),
            prog_if: format!("{prog_if:02x}"),
        }),
        vendor_name,
        device_name,
        driver,
        numa_node,
        link: link(reader, path),
        drm: drm_nodes(reader, path.path()),
        iommu_group,
        sriov: sriov(reader, path),
        bars: hex_attribute(reader, path, "resource", false, parse::resource).unwrap_or_default(),
        address,
    })
}

/// Reads and parses one attribute; a parse failure becomes a warning naming file and value.
fn hex_attribute<T>(
    reader: &mut Reader,
    dir: &Dir,
    name: &str,
    required: bool,
    parser: impl Fn(&str) -> Result<T, ParseError>,
) -> Option<T> {
    let text = if required {
        reader.required_in(dir, name)?
    } else {
        reader.optional_in(dir, name)?
    };
    match parser(&text) {
        Ok(value) => Some(value),
        Err(err) => {
            let shown = reader.display(&dir.path().join(name));
            reader.warn(format!("{shown}: {err}, found {}", excerpt(&text)));
            None
        }
    }
}

fn link(reader: &mut Reader, dir: &Dir) -> Option<PciLink> {
    let names = [
        "current_link_speed",
        "current_link_width",
        "max_link_speed",
        "max_link_width",
    ];
    if !names.iter().any(|name| dir.contains(name)) {
        return None;
    }
    Some(PciLink {
        current_speed: hex_attribute(reader, dir, names[0], false, parse::link_speed).flatten(),
        current_width: hex_attribute(reader, dir, names[1], false, parse::link_width).flatten(),
        max_speed: hex_attribute(reader, dir, names[2], false, parse::link_speed).flatten(),
        max_width: hex_attribute(reader, dir, names[3], false, parse::link_width).flatten(),
    })
}

/// DRM nodes, found by walking `<address>/drm/` (not by guessing minor numbers).
fn drm_nodes(reader: &mut Reader, dir: &Path) -> Option<DrmNodes> {
    let drm = dir.join("drm");
    let entries = match std::fs::read_dir(&drm) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => {
            let shown = reader.display(&drm);
            reader.warn(format!("cannot list {shown}: {err}"));
            return None;
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    // renderD128 before renderD129, card0 before card1.
    names.sort_by_key(|name| (name.len(), name.clone()));
    let node = |prefix: &str| {
        names
            .iter()
            .find(|name| {
                name.strip_prefix(prefix)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|name| format!("/dev/dri/{name}"))
    };
    Some(DrmNodes {
        card: node("card"),
        render: node("renderD"),
    })
}

fn iommu_group(reader: &mut Reader, dir: &Dir) -> Option<u32> {
    let name = reader.link_name_in(dir, "iommu_group")?;
    match parse::decimal_u32(&name) {
        Ok(group) => Some(group),
        Err(_) => {
            let shown = reader.display(&dir.path().join("iommu_group"));
            reader.warn(format!(
                "{shown}: expected a link to an IOMMU group number, found {}",
                excerpt(&name)
            ));
            None
        }
    }
}

fn sriov(reader: &mut Reader, dir: &Dir) -> Option<Sriov> {
    let total_vfs = hex_attribute(reader, dir, "sriov_totalvfs", false, parse::decimal_u32)?;
    let num_vfs = hex_attribute(reader, dir, "sriov_numvfs", false, parse::decimal_u32);
    Some(Sriov {
        total_vfs,
        num_vfs: num_vfs.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(is_pci_address("0000:00:02.0"));
        assert!(is_pci_address("10000:e1:00.0"));
        assert!(!is_pci_address("0000:00:02"));
        assert!(!is_pci_address("0000-00-02.0"));
        assert!(!is_pci_address("zzzz:00:02.0"));
    }
}
