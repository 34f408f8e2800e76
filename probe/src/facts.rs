//! The facts document: every type that `xpu-probe` writes as JSON (`schema_version: 1`).
//!
//! These types are the contract with the runner (`--facts`) and the NixOS module. The JSON
//! Schema in `probe/schema/facts.schema.json` is generated from them (a test fails when it
//! is stale). Rules that keep the document easy to consume from Nix:
//! - PCI ids are lowercase hex strings without `0x` (`"8086"`, `"56a0"`), as `lspci -n` and the
//!   kernel's `force_probe` parameters write them;
//! - every integer stays below 2^63 (Nix integers are signed 64-bit);
//! - a fact that could not be read is `null` (and explained in `warnings`), never a guess.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::level_zero::LevelZeroFacts;

/// Version of this document's layout. Bumped only for changes that break readers.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything the probe found out about this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Facts {
    /// Layout version of this document; always 1 for now.
    pub schema_version: u32,
    /// Version of the `xpu-probe` that wrote it.
    pub probe_version: String,
    /// Every PCI function under `/sys/bus/pci/devices`, sorted by address.
    pub pci: Vec<PciDevice>,
    /// The display (class 0x03) and processing-accelerator (class 0x12) functions.
    pub gpus: Vec<Gpu>,
    /// What the Level Zero loader reported (queried in a child process).
    pub level_zero: LevelZeroFacts,
    /// The CPU, from `/proc/cpuinfo`; `null` if it could not be read.
    pub cpu: Option<Cpu>,
    /// Memory, from `/proc/meminfo`; `null` if it could not be read.
    pub memory: Option<Memory>,
    /// The running kernel; `null` if `/proc/sys/kernel/osrelease` could not be read.
    pub kernel: Option<Kernel>,
    /// Hypervisor, in `systemd-detect-virt` words (`kvm`, `qemu`, `vmware`, `microsoft`, `xen`,
    /// `oracle`, `amazon`, `google`, `vm-other`); `null` on bare metal.
    pub virtualization: Option<String>,
    /// Container manager (`docker`, `podman`, or the content of `/run/systemd/container`);
    /// `null` outside containers.
    #[serde(default)]
    pub container: Option<String>,
    /// The loaded NVIDIA kernel driver; `null` when `/proc/driver/nvidia/version` is absent.
    pub nvidia: Option<NvidiaDriver>,
    /// What to run here and how to set it up.
    pub recommendation: Recommendation,
    /// Files that were missing, unreadable or garbage. The facts are partial where listed.
    pub warnings: Vec<String>,
}

impl Facts {
    /// Reads a facts file written by `xpu-probe` (any `--format json` output).
    pub fn from_json_file(path: &Path) -> Result<Facts, FactsFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FactsFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let facts: Facts = serde_json::from_str(&text).map_err(|source| FactsFileError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        if facts.schema_version != SCHEMA_VERSION {
            return Err(FactsFileError::SchemaVersion {
                path: path.display().to_string(),
                found: facts.schema_version,
            });
        }
        Ok(facts)
    }

    /// The JSON Schema of this document, as committed in `probe/schema/facts.schema.json`.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Facts)).expect("a schema is plain JSON")
    }
}

/// Why a facts file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FactsFileError {
    /// The file could not be read.
    #[error("cannot read facts file {path}: {source}; run `xpu-probe -o {path}` to create it")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a facts document.
    #[error("{path} is not a valid xpu-probe facts file: {source}; regenerate it with `xpu-probe -o {path}`")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// The file was written by an incompatible probe.
    #[error("{path} has schema_version {found}, this program reads version 1; regenerate it with `xpu-probe -o {path}`")]
    SchemaVersion { path: String, found: u32 },
}

/// One PCI function, from `/sys/bus/pci/devices/<address>/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PciDevice {
    /// Domain:bus:device.function, e.g. `0000:03:00.0`.
    #[schemars(regex(pattern = r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$"))]
    pub address: String,
    /// PCI vendor id (`vendor`), e.g. `8086`.
    #[schemars(regex(pattern = r"^[0-9a-f]{4}$"))]
    pub vendor_id: Option<String>,
    /// PCI device id (`device`), e.g. `56a0`.
    #[schemars(regex(pattern = r"^[0-9a-f]{4}$"))]
    pub device_id: Option<String>,
    /// Subsystem (board maker) vendor id.
    #[schemars(regex(pattern = r"^[0-9a-f]{4}$"))]
    pub subsystem_vendor_id: Option<String>,
    /// Subsystem device id.
    #[schemars(regex(pattern = r"^[0-9a-f]{4}$"))]
    pub subsystem_device_id: Option<String>,
    /// Revision id, two hex digits.
    #[schemars(regex(pattern = r"^[0-9a-f]{2}$"))]
    pub revision: Option<String>,
    /// Class code split into its three bytes.
    pub class: Option<PciClass>,
    /// Vendor name from the bundled pci.ids database; `null` if unknown.
    pub vendor_name: Option<String>,
    /// Device name from the bundled pci.ids database; `null` if unknown.
    pub device_name: Option<String>,
    /// The bound kernel driver (`driver` link), e.g. `i915`; `null` when unbound.
    pub driver: Option<String>,
    /// NUMA node; `null` when the kernel reports none (-1).
    pub numa_node: Option<u32>,
    /// PCIe link; `null` for functions without PCIe link attributes (e.g. virtio).
    pub link: Option<PciLink>,
    /// DRM nodes of this function; `null` when it has no `drm/` directory.
    pub drm: Option<DrmNodes>,
    /// IOMMU group number; `null` without an IOMMU.
    pub iommu_group: Option<u32>,
    /// SR-IOV counts; `null` for functions without the SR-IOV capability.
    pub sriov: Option<Sriov>,
    /// Memory and I/O regions with a non-zero size, from `resource`.
    pub bars: Vec<Bar>,
}

/// A PCI class code, as hex bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PciClass {
    /// Base class, e.g. `03` (display) or `12` (processing accelerator).
    #[schemars(regex(pattern = r"^[0-9a-f]{2}$"))]
    pub base: String,
    /// Sub-class, e.g. `00` (VGA), `02` (3D), `80` (other).
    #[schemars(regex(pattern = r"^[0-9a-f]{2}$"))]
    pub sub: String,
    /// Programming interface.
    #[schemars(regex(pattern = r"^[0-9a-f]{2}$"))]
    pub prog_if: String,
}

/// PCIe link state. Speeds are in GT/s per lane (2.5, 5, 8, 16, 32, 64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PciLink {
    /// Negotiated speed; `null` when the kernel says `Unknown` (link down).
    pub current_speed: Option<f64>,
    /// Negotiated lane count.
    pub current_width: Option<u32>,
    /// Highest speed the function supports.
    pub max_speed: Option<f64>,
    /// Highest lane count the function supports.
    pub max_width: Option<u32>,
}

/// DRM device nodes, as paths under `/dev/dri`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DrmNodes {
    /// Primary node, e.g. `/dev/dri/card0` (display and modesetting).
    pub card: Option<String>,
    /// Render node, e.g. `/dev/dri/renderD128` (what compute needs).
    pub render: Option<String>,
}

/// SR-IOV physical-function counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Sriov {
    /// Virtual functions the device supports (`sriov_totalvfs`).
    pub total_vfs: u32,
    /// Virtual functions enabled now (`sriov_numvfs`).
    pub num_vfs: u32,
}

/// One region from the `resource` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Bar {
    /// Line number in `resource`: 0-5 are BARs, 6 the expansion ROM.
    pub index: u32,
    /// Size in bytes.
    pub size: u64,
}

/// GPU vendor, from the PCI vendor id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GpuVendor {
    /// 8086
    Intel,
    /// 10de
    Nvidia,
    /// 1002
    Amd,
    /// Anything else (BMC display chips, virtual GPUs, ...).
    Other,
}

/// The accelerator view of one display or processing-accelerator function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Gpu {
    /// PCI address, the key into `pci`.
    #[schemars(regex(pattern = r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$"))]
    pub pci_address: String,
    /// Vendor family.
    pub vendor: GpuVendor,
    /// PCI vendor id.
    #[schemars(regex(pattern = r"^[0-9a-f]{4}$"))]
    pub vendor_id: Option<String>,
    /// PCI device id.
    #[schemars(regex(pattern = r"^[0-9a-f]{4}$"))]
    pub device_id: Option<String>,
    /// Marketing name: the Intel table's, else pci.ids', else `null`.
    pub name: Option<String>,
    /// Product family, e.g. `Alchemist`, `Battlemage`, `Hopper`; `null` if unknown.
    pub family: Option<String>,
    /// Integrated into the CPU package (shares system memory).
    pub integrated: bool,
    /// The bound kernel driver; `null` when unbound.
    pub driver: Option<String>,
    /// Primary DRM node, e.g. `/dev/dri/card0`.
    pub card_node: Option<String>,
    /// Render DRM node, e.g. `/dev/dri/renderD128`.
    pub render_node: Option<String>,
    /// Whether xpu can run inference on it (false for BMC and virtual display chips).
    pub compute_capable: bool,
    /// Intel kernel-driver facts; `null` for other vendors.
    pub intel: Option<IntelDriverFacts>,
}

/// The Linux kernel driver an Intel GPU needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IntelKernelDriver {
    /// The older driver: Gen12 integrated, DG1, Alchemist, Flex.
    I915,
    /// The newer driver: Lunar Lake, Battlemage, Panther Lake and later.
    Xe,
}

impl IntelKernelDriver {
    /// The module name, as in `driver` links and kernel parameters.
    pub fn module_name(self) -> &'static str {
        match self {
            IntelKernelDriver::I915 => "i915",
            IntelKernelDriver::Xe => "xe",
        }
    }
}

/// Intel-specific driver facts for one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IntelDriverFacts {
    /// The kernel driver compute needs for this device.
    pub required_driver: IntelKernelDriver,
    /// Whether the kernel must be told to bind it.
    pub force_probe: ForceProbe,
}

/// The `<driver>.force_probe=<id>` kernel parameter for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ForceProbe {
    /// The driver only binds this id with the parameter (and it is not already bound without it).
    pub needed: bool,
    /// The parameter to put on the kernel command line, e.g. `xe.force_probe=e20b`.
    pub param: String,
    /// `/proc/cmdline` already allows this id (the id itself or `*`).
    pub present: bool,
}

/// The CPU, from `/proc/cpuinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Cpu {
    /// `vendor_id`, e.g. `GenuineIntel`, `AuthenticAMD`.
    pub vendor: Option<String>,
    /// `model name` of the first processor.
    pub model_name: Option<String>,
    /// Physical cores (distinct `physical id`/`core id` pairs; the thread count when absent).
    pub cores: u32,
    /// Logical processors (`processor` entries).
    pub threads: u32,
    /// Instruction-set extensions that matter for inference kernels.
    pub flags: CpuFlags,
}

/// CPU flags that inference kernels select on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CpuFlags {
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vnni: bool,
    pub avx512bf16: bool,
    pub avx_vnni: bool,
    pub amx_tile: bool,
    pub amx_int8: bool,
    pub amx_bf16: bool,
}

/// System memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Memory {
    /// `MemTotal`, in bytes.
    pub total_bytes: u64,
}

/// The running kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Kernel {
    /// `uname -r`, e.g. `6.12.8`.
    pub release: String,
}

/// The loaded NVIDIA kernel driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NvidiaDriver {
    /// e.g. `580.159.04`.
    pub driver_version: String,
    /// The open kernel module (`NVIDIA UNIX Open Kernel Module`) rather than the proprietary one.
    #[serde(default)]
    pub open_kernel_module: bool,
}

/// Which xpu package to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Variant {
    /// Intel GPUs through Level Zero / Vulkan.
    #[serde(rename = "exo-intel")]
    ExoIntel,
    /// NVIDIA GPUs through CUDA.
    #[serde(rename = "exo-cuda")]
    ExoCuda,
    /// CPU only.
    #[serde(rename = "exo-cpu")]
    ExoCpu,
}

impl Variant {
    /// The name as written in facts and Nix, e.g. `exo-intel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::ExoIntel => "exo-intel",
            Variant::ExoCuda => "exo-cuda",
            Variant::ExoCpu => "exo-cpu",
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to run on this machine and what the service needs for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Recommendation {
    /// The package variant.
    pub variant: Variant,
    /// Why this variant, in plain words.
    pub reasons: Vec<String>,
    /// Kernel command-line parameters to add, e.g. `xe.force_probe=e20b`.
    pub kernel_params: Vec<String>,
    /// systemd `DeviceAllow=` entries the service needs, e.g. `char-drm`.
    pub device_allow: Vec<String>,
    /// Groups the service user needs, e.g. `render`.
    pub supplementary_groups: Vec<String>,
    /// Problems that stop or slow the recommended variant.
    pub warnings: Vec<String>,
}
