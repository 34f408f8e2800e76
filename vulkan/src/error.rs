//! Errors of the Vulkan engine. Each variant says what went wrong and what the user can do.

use std::path::PathBuf;

/// Everything that can go wrong while selecting a device, loading a model or running it.
#[derive(Debug, thiserror::Error)]
pub enum VulkanError {
    /// `libvulkan.so.1` could not be loaded, so no Vulkan device can be used at all.
    #[error(
        "no Vulkan loader: {detail}. Install the Vulkan loader (Debian: libvulkan1; NixOS: \
         hardware.graphics.enable = true) and a driver (Intel: mesa ANV), or use --device cpu"
    )]
    NoLoader { detail: String },

    /// The loader works but no adapter is usable; `found` lists each adapter and why it was skipped.
    #[error(
        "no suitable Vulkan adapter; found: {}. Check the GPU driver (vulkaninfo --summary), or set \
         XPU_RUNNER_ALLOW_CPU_ADAPTER=1 to accept a CPU adapter such as lavapipe (slow, for tests)",
        if found.is_empty() { "none".to_string() } else { found.join("; ") }
    )]
    NoSuitableAdapter { found: Vec<String> },

    /// A `--devices` entry names no adapter of this machine.
    #[error(
        "--devices {asked}: no such Vulkan adapter; the adapters are: {}. Name them by index or by PCI address (as xpu-probe reports it), or use --devices auto",
        if choices.is_empty() { "none".to_string() } else { choices.join("; ") }
    )]
    NoSuchDevice { asked: String, choices: Vec<String> },

    /// The model does not fit the selected devices together; per device what its share
    /// needs and what it has.
    #[error(
        "the model does not fit across the {} selected devices: {}; {hint}",
        devices.len(),
        devices.iter().map(|d| format!("{} needs {} bytes, {} available", d.0, d.1, d.2)).collect::<Vec<_>>().join("; ")
    )]
    DoesNotFitSplit {
        /// (device, bytes needed, bytes available)
        devices: Vec<(String, u64, u64)>,
        hint: String,
    },

    /// `--split` does not match the devices or the layers.
    #[error("--split: {0}")]
    BadSplit(String),

    /// The adapter refused to create a logical device.
    #[error("the Vulkan adapter {adapter} refused to create a device: {detail}")]
    RequestDevice { adapter: String, detail: String },

    /// A buffer could not be allocated on the device.
    #[error(
        "out of device memory while {what}: {detail}. Use a smaller model or a smaller context (--ctx), \
         or free GPU memory used by other programs"
    )]
    OutOfDeviceMemory { what: String, detail: String },

    /// The model (or the context asked for) needs more device memory than there is; checked
    /// before anything is uploaded.
    #[error(
        "{what} need {needed} bytes of device memory, but {available} bytes are available; {hint}"
    )]
    DoesNotFit {
        what: String,
        needed: u64,
        available: u64,
        hint: String,
    },

    /// The device was lost (driver reset, GPU hang, hot-unplug); the engine cannot continue.
    #[error("the Vulkan device was lost: {detail}. Restart the service; if it repeats, check the kernel log (dmesg) for GPU resets")]
    DeviceLost { detail: String },

    /// wgpu reported an error that is a bug in this engine or the driver.
    #[error("Vulkan engine error: {detail}")]
    Internal { detail: String },

    /// The GGUF file could not be opened or read.
    #[error("cannot read model file {path}: {detail}")]
    ModelFile { path: PathBuf, detail: String },

    /// The GGUF file is readable but describes something this engine cannot run.
    #[error("unsupported model {path}: {detail}")]
    UnsupportedModel { path: PathBuf, detail: String },

    /// A tensor has a type or shape the kernels do not handle.
    #[error("tensor {name}: {detail}")]
    Tensor { name: String, detail: String },

    /// A kernel setting (`--vulkan-tuning`, XPU_VULKAN_MATVEC) asks for something the adapter
    /// cannot run.
    #[error(
        "the kernel setting {setting} cannot run on the Vulkan adapter {adapter}: {detail}. Leave it unset (the engine picks what the adapter offers) or choose another value"
    )]
    TuningUnsupported {
        setting: String,
        adapter: String,
        detail: String,
    },

    /// The caller passed tokens that do not fit the model or the context.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}
