//! The recommendation: which xpu variant to run and what the service needs for it.
//!
//! Order of preference: NVIDIA (CUDA) when an NVIDIA GPU can run it, then Intel (Level Zero and
//! Vulkan) for the GPUs in the Intel family table, then the CPU. GPUs bound to `vfio-pci` are
//! reserved for virtual machines and never chosen.

use std::path::Path;

use crate::facts::{Gpu, GpuVendor, NvidiaDriver, PciDevice, Recommendation, Variant};
use crate::level_zero::LevelZeroFacts;

/// systemd `DeviceAllow=` entries for Intel compute: every DRM node (by device class).
pub const INTEL_DEVICE_ALLOW: &[&str] = &["char-drm"];

/// systemd `DeviceAllow=` entries for CUDA, the set nixpkgs' ollama module uses:
/// `/dev/nvidiactl`, `/dev/nvidia-caps/*` (MIG), `/dev/nvidia0..N` (major "nvidia-frontend")
/// and `/dev/nvidia-uvm*`.
pub const NVIDIA_DEVICE_ALLOW: &[&str] = &[
    "char-nvidiactl",
    "char-nvidia-caps",
    "char-nvidia-frontend",
    "char-nvidia-uvm",
];

/// Driver that reserves a device for passthrough to a virtual machine.
const PASSTHROUGH_DRIVER: &str = "vfio-pci";

/// What the recommendation looks at.
pub struct Inputs<'a> {
    pub gpus: &'a [Gpu],
    /// All PCI functions (for BAR sizes).
    pub pci: &'a [PciDevice],
    pub nvidia: Option<&'a NvidiaDriver>,
    pub level_zero: &'a LevelZeroFacts,
    /// The probe root; device nodes are checked under `<root>/dev` when that exists.
    pub root: &'a Path,
}

/// Decides the variant and collects what it needs.
pub fn recommend(inputs: &Inputs) -> Recommendation {
    let mut warnings = Vec::new();
    for gpu in inputs.gpus {
        gpu_warnings(gpu, &mut warnings);
    }
    let usable = |vendor: GpuVendor| -> Vec<&Gpu> {
        inputs
            .gpus
            .iter()
            .filter(|gpu| gpu.vendor == vendor && gpu.compute_capable)
            .filter(|gpu| gpu.driver.as_deref() != Some(PASSTHROUGH_DRIVER))
            .collect()
    };
    let nvidia = usable(GpuVendor::Nvidia);
    let intel = usable(GpuVendor::Intel);
    let amd = usable(GpuVendor::Amd);

    let mut recommendation = if !nvidia.is_empty() {
        cuda(&nvidia, inputs, &mut warnings)
    } else if !intel.is_empty() {
        intel_gpu(&intel, inputs, &mut warnings)
    } else {
        cpu(inputs.gpus, &amd)
    };
    recommendation.warnings.splice(0..0, warnings);
    recommendation
}

fn describe(gpu: &Gpu) -> String {
    let name = gpu.name.as_deref().unwrap_or("unnamed GPU");
    format!("{name} ({})", gpu.pci_address)
}

fn gpu_warnings(gpu: &Gpu, warnings: &mut Vec<String>) {
    match gpu.vendor {
        GpuVendor::Intel
            if !gpu.compute_capable && gpu.family.as_deref() != Some(crate::gpu::NPU_FAMILY) =>
        {
            let ids = format!(
                "{}:{}",
                gpu.vendor_id.as_deref().unwrap_or("?"),
                gpu.device_id.as_deref().unwrap_or("?")
            );
            warnings.push(format!(
                "Intel device {ids} at {} is not in the GPU family table (older than Gen12, or newer than this probe); it is not used",
                gpu.pci_address
            ));
        }
        _ => {}
    }
    if !gpu.compute_capable {
        return;
    }
    match gpu.driver.as_deref() {
        None => warnings.push(format!(
            "{} is bound to no kernel driver{}",
            describe(gpu),
            match &gpu.intel {
                Some(intel) if intel.force_probe.needed && !intel.force_probe.present => format!(
                    "; add the kernel parameter {} and reboot",
                    intel.force_probe.param
                ),
                Some(intel) => format!("; it needs {}", intel.required_driver.module_name()),
                None => String::new(),
            }
        )),
        Some(PASSTHROUGH_DRIVER) => warnings.push(format!(
            "{} is bound to vfio-pci (reserved for a virtual machine); it is not used",
            describe(gpu)
        )),
        Some(driver) => {
            if let Some(intel) = &gpu.intel {
                let required = intel.required_driver.module_name();
                if driver != required {
                    warnings.push(format!(
                        "{} is bound to {driver}, but compute needs {required}",
                        describe(gpu)
                    ));
                }
            }
        }
    }
}

fn cuda(gpus: &[&Gpu], inputs: &Inputs, warnings: &mut Vec<String>) -> Recommendation {
    let mut reasons: Vec<String> = gpus
        .iter()
        .map(|gpu| format!("NVIDIA GPU {}", describe(gpu)))
        .collect();
    match inputs.nvidia {
        Some(driver) => reasons.push(format!(
            "NVIDIA kernel driver {} is loaded",
            driver.driver_version
        )),
        None => warnings.push(
            "the NVIDIA kernel driver is not loaded (/proc/driver/nvidia/version is absent); enable hardware.nvidia on NixOS or install the driver".into(),
        ),
    }
    for gpu in gpus {
        if let Some(driver) = gpu.driver.as_deref().filter(|d| *d != "nvidia") {
            warnings.push(format!(
                "{} is bound to {driver}; CUDA needs the nvidia driver",
                describe(gpu)
            ));
        }
    }
    if inputs.nvidia.is_some() && inputs.root.join("dev").is_dir() {
        for node in ["dev/nvidiactl", "dev/nvidia-uvm"] {
            if !inputs.root.join(node).exists() {
                warnings.push(format!(
                    "/{node} does not exist; CUDA needs it (load the nvidia and nvidia_uvm modules)"
                ));
            }
        }
    }
    Recommendation {
        variant: Variant::ExoCuda,
        reasons,
        kernel_params: Vec::new(),
        device_allow: NVIDIA_DEVICE_ALLOW.iter().map(|s| s.to_string()).collect(),
        supplementary_groups: Vec::new(),
        warnings: Vec::new(),
    }
}

fn intel_gpu(gpus: &[&Gpu], inputs: &Inputs, warnings: &mut Vec<String>) -> Recommendation {
    let mut reasons = Vec::new();
    let mut kernel_params = Vec::new();
    for gpu in gpus {
        let family = gpu.family.as_deref().unwrap_or("unknown family");
        let kind = if gpu.integrated {
            "integrated"
        } else {
            "discrete"
        };
        reasons.push(format!("Intel {kind} GPU {} ({family})", describe(gpu)));
        if let Some(intel) = &gpu.intel {
            if intel.force_probe.needed && !kernel_params.contains(&intel.force_probe.param) {
                kernel_params.push(intel.force_probe.param.clone());
            }
        }
        if gpu.family.as_deref() == Some("Data Center Max") && gpu.driver.is_none() {
            warnings.push(format!(
                "{} needs Intel's out-of-tree i915 backport driver; mainline kernels do not drive Data Center GPU Max",
                describe(gpu)
            ));
        }
        render_node_warnings(gpu, inputs.root, warnings);
        small_bar_warning(gpu, inputs.pci, warnings);
    }
    match level_zero_warning(inputs.level_zero) {
        Some(warning) => warnings.push(warning),
        None => match_level_zero_devices(gpus, inputs.level_zero, &mut reasons, warnings),
    }
    Recommendation {
        variant: Variant::ExoIntel,
        reasons,
        kernel_params,
        device_allow: INTEL_DEVICE_ALLOW.iter().map(|s| s.to_string()).collect(),
        supplementary_groups: vec!["render".to_string()],
        warnings: Vec::new(),
    }
}

fn cpu(gpus: &[Gpu], amd: &[&Gpu]) -> Recommendation {
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    if gpus.is_empty() {
        reasons.push("no GPU found (no PCI display or accelerator function)".to_string());
    } else if amd.is_empty() {
        reasons.push("no GPU that xpu can compute on (display-only, virtual, reserved or unbound devices only)".to_string());
    }
    for gpu in amd {
        reasons.push(format!(
            "AMD GPU {} found, but xpu has no ROCm variant",
            describe(gpu)
        ));
        warnings.push(format!(
            "AMD GPU {} is not used: xpu runs on Intel, NVIDIA or the CPU",
            describe(gpu)
        ));
    }
    reasons.push("running on the CPU".to_string());
    Recommendation {
        variant: Variant::ExoCpu,
        reasons,
        kernel_params: Vec::new(),
        device_allow: Vec::new(),
        supplementary_groups: Vec::new(),
        warnings,
    }
}

/// Largest BAR of a discrete Intel GPU that still means "Resizable BAR is off": without it
/// the VRAM aperture is the legacy 256 MiB window.
const SMALL_BAR_BYTES: u64 = 256 << 20;

/// Discrete Intel GPUs need Resizable BAR: compute-runtime refuses to start on xe without it
/// (`isSmallBarConfigAllowed() == false`) and is slow on i915. With ReBAR on, the VRAM BAR
/// (BAR2) spans the whole memory (gigabytes); off, every BAR is 256 MiB or less.
fn small_bar_warning(gpu: &Gpu, pci: &[PciDevice], warnings: &mut Vec<String>) {
    if gpu.integrated {
        return;
    }
    let Some(device) = pci.iter().find(|d| d.address == gpu.pci_address) else {
        return;
    };
    let Some(largest) = device
        .bars
        .iter()
        .filter(|b| b.index < 6)
        .map(|b| b.size)
        .max()
    else {
        return;
    };
    if largest > SMALL_BAR_BYTES {
        return;
    }
    let consequence = match &gpu.intel {
        Some(intel) if intel.required_driver == crate::facts::IntelKernelDriver::Xe => {
            "the compute runtime refuses to start on xe without it"
        }
        _ => "the compute runtime is slow without it",
    };
    warnings.push(format!(
        "{} has no BAR larger than {} MiB, so Resizable BAR looks disabled; {consequence}. Enable \"Above 4G decoding\" and \"Re-Size BAR support\" in the firmware setup",
        describe(gpu),
        largest >> 20
    ));
}

/// The render node must exist and be readable and writable by the current user (the service
/// gets it through `supplementary_groups`). Checked only when the root has a `dev/` directory.
fn render_node_warnings(gpu: &Gpu, root: &Path, warnings: &mut Vec<String>) {
    if !root.join("dev").is_dir() || gpu.driver.is_none() {
        return;
    }
    let Some(node) = gpu.render_node.as_deref() else {
        warnings.push(format!(
            "{} has no DRM render node; compute needs one",
            describe(gpu)
        ));
        return;
    };
    let path = root.join(node.trim_start_matches('/'));
    if !path.exists() {
        warnings.push(format!(
            "render node {node} of {} does not exist (is udev running?)",
            describe(gpu)
        ));
        return;
    }
    if let Err(err) = access_read_write(&path) {
        warnings.push(format!(
            "the current user (uid {}) cannot open {node} read-write ({err}); add the user to group render",
            current_uid()
        ));
    }
}

fn access_read_write(path: &Path) -> std::io::Result<()> {
    use rustix::fs::{accessat, Access, AtFlags, CWD};
    // With the effective ids, as opening the node would use.
    Ok(accessat(
        CWD,
        path,
        Access::READ_OK | Access::WRITE_OK,
        AtFlags::EACCESS,
    )?)
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Pairs each chosen GPU with its Level Zero device (when Level Zero was queried and
/// answered): by PCI address when the driver reports it, else by PCI device id. A listed GPU
/// is a reason; an unlisted one a warning.
fn match_level_zero_devices(
    gpus: &[&Gpu],
    level_zero: &LevelZeroFacts,
    reasons: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    if level_zero.skipped {
        return;
    }
    let devices: Vec<_> = level_zero
        .drivers
        .iter()
        .flat_map(|driver| driver.devices.iter().map(move |device| (driver, device)))
        .collect();
    for gpu in gpus {
        let listed = devices
            .iter()
            .find(|(_, device)| match &device.pci_address {
                Some(address) => address.eq_ignore_ascii_case(&gpu.pci_address),
                None => {
                    device.vendor_id.eq_ignore_ascii_case(crate::gpu::INTEL)
                        && Some(device.device_id.to_ascii_lowercase()) == gpu.device_id
                }
            });
        match listed {
            Some((driver, device)) => reasons.push(format!(
                "Level Zero driver {} lists {} as \"{}\"",
                driver.version, gpu.pci_address, device.name
            )),
            None => warnings.push(format!(
                "Level Zero does not list {}: the installed compute runtime may not support it, or its render node cannot be opened",
                describe(gpu)
            )),
        }
    }
}

/// A warning when Intel compute cannot work through Level Zero.
fn level_zero_warning(level_zero: &LevelZeroFacts) -> Option<String> {
    if level_zero.skipped {
        return None;
    }
    if !level_zero.loader_found {
        return Some("the Level Zero loader (libze_loader.so.1) was not found; install level-zero and intel-compute-runtime (NixOS: hardware.graphics.extraPackages)".into());
    }
    let devices: usize = level_zero.drivers.iter().map(|d| d.devices.len()).sum();
    if let Some(error) = &level_zero.error {
        return Some(format!(
            "Level Zero found no usable driver for the Intel GPU: {} ({}); install intel-compute-runtime",
            error.name, error.meaning
        ));
    }
    if devices == 0 {
        return Some("Level Zero has no driver with a device for the Intel GPU; install intel-compute-runtime".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{ForceProbe, IntelDriverFacts, IntelKernelDriver};
    use crate::level_zero::{LevelZeroDevice, LevelZeroDriver, LevelZeroError};

    fn arc() -> Gpu {
        Gpu {
            pci_address: "0000:03:00.0".into(),
            vendor: GpuVendor::Intel,
            vendor_id: Some("8086".into()),
            device_id: Some("56a0".into()),
            name: Some("Arc A770".into()),
            family: Some("Alchemist".into()),
            integrated: false,
            driver: Some("i915".into()),
            card_node: Some("/dev/dri/card1".into()),
            render_node: Some("/dev/dri/renderD129".into()),
            compute_capable: true,
            intel: Some(IntelDriverFacts {
                required_driver: IntelKernelDriver::I915,
                force_probe: ForceProbe {
                    needed: false,
                    param: "i915.force_probe=56a0".into(),
                    present: false,
                },
            }),
        }
    }

    fn recommend_with(gpus: &[Gpu], level_zero: &LevelZeroFacts) -> Recommendation {
        // A root without dev/: device nodes are not checked.
        let root = Path::new("/nonexistent-xpu-root");
        recommend(&Inputs {
            gpus,
            pci: &[],
            nvidia: None,
            level_zero,
            root,
        })
    }

    fn driver_with(device_id: &str) -> LevelZeroFacts {
        LevelZeroFacts {
            loader_found: true,
            loader_version: Some("1.8.0".into()),
            drivers: vec![LevelZeroDriver {
                version: "1.3.26918".into(),
                api_version: "1.3".into(),
                devices: vec![LevelZeroDevice {
                    name: "Intel(R) Arc(TM) A770 Graphics".into(),
                    vendor_id: "8086".into(),
                    device_id: device_id.into(),
                    ..Default::default()
                }],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn level_zero_listing_the_gpu_is_a_reason() {
        let r = recommend_with(&[arc()], &driver_with("56a0"));
        assert_eq!(r.variant, Variant::ExoIntel);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(r
            .reasons
            .iter()
            .any(|s| s.contains("Level Zero driver 1.3.26918 lists 0000:03:00.0")));
    }

    #[test]
    fn level_zero_not_listing_the_gpu_is_a_warning() {
        let r = recommend_with(&[arc()], &driver_with("e20b"));
        assert!(
            r.warnings
                .iter()
                .any(|w| w.starts_with("Level Zero does not list Arc A770")),
            "{:?}",
            r.warnings
        );
        assert!(
            !r.reasons.iter().any(|s| s.contains("Level Zero driver")),
            "{:?}",
            r.reasons
        );
    }

    #[test]
    fn level_zero_devices_match_by_pci_address_first() {
        let mut facts = driver_with("56a0");
        facts.drivers[0].devices[0].pci_address = Some("0000:04:00.0".into());
        let r = recommend_with(&[arc()], &facts);
        assert!(
            r.warnings
                .iter()
                .any(|w| w.starts_with("Level Zero does not list")),
            "{:?}",
            r.warnings
        );
        facts.drivers[0].devices[0].pci_address = Some("0000:03:00.0".into());
        let r = recommend_with(&[arc()], &facts);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn missing_loader_and_failed_init_are_warnings() {
        let r = recommend_with(&[arc()], &LevelZeroFacts::default());
        assert!(r
            .warnings
            .iter()
            .any(|w| w.contains("loader (libze_loader.so.1) was not found")));
        let failed = LevelZeroFacts {
            loader_found: true,
            error: Some(LevelZeroError {
                code: 0x7800_0001,
                name: "ZE_RESULT_ERROR_UNINITIALIZED".into(),
                meaning: "no driver".into(),
            }),
            ..Default::default()
        };
        let r = recommend_with(&[arc()], &failed);
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("ZE_RESULT_ERROR_UNINITIALIZED")),
            "{:?}",
            r.warnings
        );
        let empty = LevelZeroFacts {
            loader_found: true,
            ..Default::default()
        };
        let r = recommend_with(&[arc()], &empty);
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("no driver with a device")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn skipped_level_zero_and_other_variants_have_no_level_zero_warning() {
        let r = recommend_with(&[arc()], &crate::level_zero::skipped());
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let r = recommend_with(&[], &LevelZeroFacts::default());
        assert_eq!(r.variant, Variant::ExoCpu);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn nvidia_wins_over_intel_and_vfio_is_skipped() {
        let h100 = Gpu {
            pci_address: "0000:1b:00.0".into(),
            vendor: GpuVendor::Nvidia,
            vendor_id: Some("10de".into()),
            device_id: Some("2330".into()),
            name: Some("H100".into()),
            family: Some("Hopper".into()),
            integrated: false,
            driver: Some("nvidia".into()),
            card_node: None,
            render_node: None,
            compute_capable: true,
            intel: None,
        };
        let r = recommend_with(&[arc(), h100.clone()], &crate::level_zero::skipped());
        assert_eq!(r.variant, Variant::ExoCuda);
        assert_eq!(r.device_allow, NVIDIA_DEVICE_ALLOW);
        let reserved = Gpu {
            driver: Some("vfio-pci".into()),
            ..h100
        };
        let r = recommend_with(&[arc(), reserved], &crate::level_zero::skipped());
        assert_eq!(r.variant, Variant::ExoIntel);
        assert!(r.warnings.iter().any(|w| w.contains("vfio-pci")));
    }

    #[test]
    fn wrong_intel_driver_is_a_warning() {
        let gpu = Gpu {
            driver: Some("xe".into()),
            ..arc()
        };
        let r = recommend_with(&[gpu], &crate::level_zero::skipped());
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("bound to xe, but compute needs i915")),
            "{:?}",
            r.warnings
        );
    }
}
