//! Host facts outside PCI: CPU, memory, kernel, virtualisation and the NVIDIA driver.

use crate::facts::{Cpu, Kernel, Memory, NvidiaDriver};
use crate::parse;
use crate::read::{excerpt, Reader};

/// The CPU from `/proc/cpuinfo`, and whether it reports the `hypervisor` flag.
pub fn cpu(reader: &mut Reader) -> (Option<Cpu>, bool) {
    let path = reader.path("proc/cpuinfo");
    let Some(text) = reader.required(&path) else {
        return (None, false);
    };
    let hypervisor = parse::cpuinfo_has_hypervisor(&text);
    match parse::cpuinfo(&text) {
        Ok(cpu) => (Some(cpu), hypervisor),
        Err(err) => {
            let shown = reader.display(&path);
            reader.warn(format!("{shown}: {err}, found {}", excerpt(&text)));
            (None, hypervisor)
        }
    }
}

/// Total memory from `/proc/meminfo`.
pub fn memory(reader: &mut Reader) -> Option<Memory> {
    let path = reader.path("proc/meminfo");
    let text = reader.required(&path)?;
    match parse::meminfo_total_bytes(&text) {
        Ok(total_bytes) => Some(Memory { total_bytes }),
        Err(err) => {
            let shown = reader.display(&path);
            reader.warn(format!("{shown}: {err}"));
            None
        }
    }
}

/// The kernel release from `/proc/sys/kernel/osrelease`.
pub fn kernel(reader: &mut Reader) -> Option<Kernel> {
    let path = reader.path("proc/sys/kernel/osrelease");
    let text = reader.required(&path)?;
    let release = text.trim();
    let printable = release.bytes().all(|b| b.is_ascii_graphic());
    if release.is_empty() || release.len() > 128 || !printable {
        let shown = reader.display(&path);
        reader.warn(format!(
            "{shown}: expected a kernel release like 6.12.8, found {}",
            excerpt(&text)
        ));
        return None;
    }
    Some(Kernel {
        release: release.to_string(),
    })
}

/// The kernel command line, used for `force_probe` parameters.
pub fn cmdline(reader: &mut Reader) -> Option<String> {
    let path = reader.path("proc/cmdline");
    reader.required(&path)
}

/// The NVIDIA driver from `/proc/driver/nvidia/version`; absent means not loaded (no warning).
pub fn nvidia(reader: &mut Reader) -> Option<NvidiaDriver> {
    let path = reader.path("proc/driver/nvidia/version");
    let text = reader.optional(&path)?;
    match parse::nvidia_version(&text) {
        Ok(driver) => Some(driver),
        Err(err) => {
            let shown = reader.display(&path);
            reader.warn(format!("{shown}: {err}, found {}", excerpt(&text)));
            None
        }
    }
}

/// The hypervisor, named as `systemd-detect-virt` names it, from the cpuinfo `hypervisor`
/// flag and the DMI strings under `/sys/class/dmi/id`. `None` on bare metal.
pub fn virtualization(reader: &mut Reader, hypervisor_flag: bool) -> Option<String> {
    let mut dmi = |name: &str| {
        let path = reader.path(&format!("sys/class/dmi/id/{name}"));
        reader.optional(&path).map(|text| text.trim().to_string())
    };
    let sys_vendor = dmi("sys_vendor").unwrap_or_default();
    let product = dmi("product_name").unwrap_or_default();
    let bios_vendor = dmi("bios_vendor").unwrap_or_default();
    let all = format!("{sys_vendor}\n{product}\n{bios_vendor}");
    // Order as in systemd's detect_vm_dmi(): the first match wins.
    const DMI_VENDORS: [(&str, &str); 12] = [
        ("KVM", "kvm"),
        ("OpenStack", "kvm"),
        ("KubeVirt", "kvm"),
        ("Amazon EC2", "amazon"),
        ("QEMU", "qemu"),
        ("VMware", "vmware"),
        ("VMW", "vmware"),
        ("innotek GmbH", "oracle"),
        ("VirtualBox", "oracle"),
        ("Xen", "xen"),
        ("Bochs", "bochs"),
        ("Parallels", "parallels"),
    ];
    if let Some((_, name)) = DMI_VENDORS.iter().find(|(key, _)| all.contains(key)) {
        return Some(name.to_string());
    }
    if sys_vendor == "Microsoft Corporation" && product.contains("Virtual Machine") {
        return Some("microsoft".into());
    }
    if sys_vendor == "Google" && product.contains("Google Compute Engine") {
        return Some("google".into());
    }
    hypervisor_flag.then(|| "vm-other".to_string())
}

/// The container manager, from the marker files container engines leave in the root.
pub fn container(reader: &mut Reader) -> Option<String> {
    let marker = reader.path("run/systemd/container");
    if let Some(text) = reader.optional(&marker) {
        let name = text.trim();
        if !name.is_empty() && name.len() < 64 {
            return Some(name.to_string());
        }
    }
    if reader.path(".dockerenv").exists() {
        return Some("docker".into());
    }
    if reader.path("run/.containerenv").exists() {
        return Some("podman".into());
    }
    None
}
