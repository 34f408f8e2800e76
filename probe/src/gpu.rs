//! The accelerator view: display (class 0x03) and processing-accelerator (class 0x12)
//! functions, with vendor, family and what compute needs from the kernel.

use crate::facts::{ForceProbe, Gpu, GpuVendor, IntelDriverFacts, PciDevice};
use crate::intel;
use crate::parse;

/// PCI vendor ids of the GPU vendors xpu knows.
pub const INTEL: &str = "8086";
pub const NVIDIA: &str = "10de";
pub const AMD: &str = "1002";

/// `family` of Intel NPUs (see [`intel::NPU_IDS`]).
pub const NPU_FAMILY: &str = "NPU";

/// PCI base classes that can hold an accelerator: display controller and processing accelerator.
const GPU_BASE_CLASSES: [&str; 2] = ["03", "12"];

/// Builds the GPU view of the PCI functions. `cmdline` is `/proc/cmdline`, if readable.
pub fn gpus(pci: &[PciDevice], cmdline: Option<&str>) -> Vec<Gpu> {
    pci.iter()
        .filter(|device| {
            device
                .class
                .as_ref()
                .is_some_and(|class| GPU_BASE_CLASSES.contains(&class.base.as_str()))
        })
        .map(|device| gpu(device, cmdline))
        .collect()
}

fn gpu(device: &PciDevice, cmdline: Option<&str>) -> Gpu {
    let vendor = match device.vendor_id.as_deref() {
        Some(INTEL) => GpuVendor::Intel,
        Some(NVIDIA) => GpuVendor::Nvidia,
        Some(AMD) => GpuVendor::Amd,
        _ => GpuVendor::Other,
    };
    let display_class = device
        .class
        .as_ref()
        .is_some_and(|class| class.base == "03");
    let device_id = device
        .device_id
        .as_deref()
        .and_then(|id| u16::from_str_radix(id, 16).ok());
    let intel_family = match vendor {
        GpuVendor::Intel => device_id.and_then(intel::family_of),
        _ => None,
    };
    let (family, integrated, compute_capable) = match vendor {
        // Only ids from the table: older Intel graphics (Gen9/Gen11) and NPUs are not targets.
        GpuVendor::Intel => (
            match intel_family {
                Some(family) => Some(family.name.to_string()),
                None => device_id
                    .filter(|id| intel::NPU_IDS.contains(id))
                    .map(|_| NPU_FAMILY.to_string()),
            },
            intel_family.is_some_and(|f| f.integrated)
                || device_id.is_some_and(|id| intel::NPU_IDS.contains(&id)),
            intel_family.is_some(),
        ),
        GpuVendor::Nvidia => (
            device.device_name.as_deref().and_then(nvidia_family),
            false,
            display_class,
        ),
        GpuVendor::Amd => (None, false, true),
        // BMC display chips (ASPEED, Matrox), virtual GPUs and the rest: no compute.
        GpuVendor::Other => (None, false, false),
    };
    let intel = intel_family
        .zip(device.device_id.as_deref())
        .map(|(family, id)| intel_driver_facts(family, id, device.driver.as_deref(), cmdline));
    Gpu {
        pci_address: device.address.clone(),
        vendor,
        vendor_id: device.vendor_id.clone(),
        device_id: device.device_id.clone(),
        name: device.device_name.as_deref().map(marketing_name),
        family,
        integrated,
        driver: device.driver.clone(),
        card_node: device.drm.as_ref().and_then(|drm| drm.card.clone()),
        render_node: device.drm.as_ref().and_then(|drm| drm.render.clone()),
        compute_capable,
        intel,
    }
}

fn intel_driver_facts(
    family: &intel::IntelFamily,
    device_id: &str,
    bound_driver: Option<&str>,
    cmdline: Option<&str>,
) -> IntelDriverFacts {
    let driver = family.driver.module_name();
    let present = cmdline
        .map(|line| parse::force_probe_allows(&parse::force_probe_ids(line, driver), device_id))
        .unwrap_or(false);
    // Bound to the right driver without the parameter: this kernel does not need it.
    let bound_without_param = bound_driver == Some(driver) && !present;
    IntelDriverFacts {
        required_driver: family.driver,
        force_probe: ForceProbe {
            needed: family.force_probe && !bound_without_param,
            param: format!("{driver}.force_probe={device_id}"),
            present,
        },
    }
}

/// pci.ids names are "Codename [Marketing name]"; the bracketed part is what users know.
fn marketing_name(pci_ids_name: &str) -> String {
    match (pci_ids_name.rfind('['), pci_ids_name.ends_with(']')) {
        (Some(open), true) if open + 2 < pci_ids_name.len() => {
            pci_ids_name[open + 1..pci_ids_name.len() - 1].to_string()
        }
        _ => pci_ids_name.to_string(),
    }
}

/// The NVIDIA architecture from the chip prefix of the pci.ids name ("GH100 [H100 ...]").
fn nvidia_family(pci_ids_name: &str) -> Option<String> {
    const CHIPS: [(&str, &str); 9] = [
        ("GB", "Blackwell"),
        ("GH", "Hopper"),
        ("AD", "Ada Lovelace"),
        ("GA", "Ampere"),
        ("TU", "Turing"),
        ("GV", "Volta"),
        ("GP", "Pascal"),
        ("GM", "Maxwell"),
        ("GK", "Kepler"),
    ];
    let chip = pci_ids_name.split_whitespace().next()?;
    let digits = chip.get(2..)?;
    if digits.is_empty() || !digits.bytes().next()?.is_ascii_digit() {
        return None;
    }
    CHIPS
        .iter()
        .find(|(prefix, _)| chip.starts_with(prefix))
        .map(|(_, family)| family.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::PciClass;

    fn device(vendor: &str, device: &str, class: (&str, &str)) -> PciDevice {
        PciDevice {
            address: "0000:00:0b.0".into(),
            vendor_id: Some(vendor.into()),
            device_id: Some(device.into()),
            subsystem_vendor_id: None,
            subsystem_device_id: None,
            revision: None,
            class: Some(PciClass {
                base: class.0.into(),
                sub: class.1.into(),
                prog_if: "00".into(),
            }),
            vendor_name: None,
            device_name: None,
            driver: Some("intel_vpu".into()),
            numa_node: None,
            link: None,
            drm: None,
            iommu_group: None,
            sriov: None,
            bars: Vec::new(),
        }
    }

    #[test]
    fn intel_npu_is_named_but_not_for_compute() {
        let gpus = gpus(&[device("8086", "7d1d", ("12", "00"))], None);
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].family.as_deref(), Some(NPU_FAMILY));
        assert!(!gpus[0].compute_capable && gpus[0].intel.is_none());
    }

    #[test]
    fn only_display_and_accelerator_classes_are_gpus() {
        let network = device("8086", "1593", ("02", "00"));
        let old_igpu = device("8086", "3e92", ("03", "00"));
        let gpus = gpus(&[network, old_igpu], Some("i915.force_probe=*"));
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].family, None);
        assert!(!gpus[0].compute_capable);
    }

    #[test]
    fn names() {
        assert_eq!(marketing_name("DG2 [Arc A770]"), "Arc A770");
        assert_eq!(
            marketing_name("ASPEED Graphics Family"),
            "ASPEED Graphics Family"
        );
        assert_eq!(marketing_name("odd []"), "odd []");
        assert_eq!(
            nvidia_family("GH100 [H100 SXM5 80GB]").as_deref(),
            Some("Hopper")
        );
        assert_eq!(
            nvidia_family("AD102 [GeForce RTX 4090]").as_deref(),
            Some("Ada Lovelace")
        );
        assert_eq!(nvidia_family("GTX 1080"), None);
    }
}
