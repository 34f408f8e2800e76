//! The recommendation: which xpu variant to run and what the service needs for it.
//!
//! Order of preference: NVIDIA (CUDA) when an NVIDIA GPU can run it, then Intel (Level Zero and
//! Vulkan) for the GPUs in the Intel family table, then the CPU. GPUs bound to `vfio-pci` are
//! reserved for virtual machines and never chosen.

use std::path::Path;

use crate::facts::{Gpu, GpuVendor, NvidiaDriver, Recommendation, Variant};
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
        GpuVendor::Intel if !gpu.compute_capable => {
            let ids = format!(
                "{}:{}",
                gpu.vendor_id.as_deref().unwrap_or("?"),
                gpu.device_id.as_deref().unwrap_or("?")
            );
            warnings.push(format!(
                "Intel device {ids} at {} is not in the GPU family table (older than Gen12, an NPU, or newer than this probe); it is not used",
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
        let kind = if gpu.integrated { "integrated" } else { "discrete" };
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
    }
    if let Some(warning) = level_zero_warning(inputs.level_zero) {
        warnings.push(warning);
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
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated path; faccessat only reads it.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::R_OK | libc::W_OK,
            libc::AT_EACCESS,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
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
