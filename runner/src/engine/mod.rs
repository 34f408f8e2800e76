//! The engine boundary: everything the generation loop needs from a compute backend.
//!
//! An engine owns the weights of one model on one device plus the KV cache of one
//! sequence. The generation loop (tokenizing, sampling, stopping) is shared by all
//! engines and never touches a device directly. Implementations: `cpu` (our own, crate
//! `xpu-cpu`, for GGUF `llama` on the CPU), `candle` (every other model on the CPU, and
//! CUDA behind the `cuda` feature) and `vulkan` (crate `xpu-vulkan`, behind the `vulkan`
//! feature).

/// What every compute backend offers the generation loop.
pub trait Engine: Send {
    /// Runs `tokens`, which sit at positions `start..start + tokens.len()` of the
    /// current sequence, appends their keys and values to the KV cache, and returns the
    /// logits of the last token (one `f32` per vocabulary entry).
    fn forward(&mut self, tokens: &[u32], start: usize) -> anyhow::Result<Vec<f32>>;

    /// Forgets the KV cache so that a new sequence can start at position 0.
    fn reset(&mut self) -> anyhow::Result<()>;

    /// The longest sequence (prompt plus generated tokens) the engine can hold.
    fn context_length(&self) -> usize;

    /// A short description of the device for logs, `/health` and metrics, such as
    /// `cpu (2 threads, avx2)` or `vulkan: Intel(R) Arc(TM) A770 Graphics`.
    fn device_description(&self) -> String;
}

pub mod candle;
pub mod cpu;
#[cfg(feature = "vulkan")]
pub mod vulkan;

use std::fmt;
use std::str::FromStr;

pub use cpu::CpuEngine;

/// Engine settings beyond the device, for tests, benchmarks and debugging. The library
/// never reads the environment: the binary fills these from flags and their variables.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Which engine runs GGUF `llama` files on the CPU.
    pub cpu_engine: CpuEngine,
    /// How the Vulkan engine picks and configures its device (CPU adapters, kernel tuning).
    #[cfg(feature = "vulkan")]
    pub vulkan: xpu_vulkan::DeviceOptions,
}

/// A compute device that an engine runs on. What `--device auto` means is decided in
/// [`crate::device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// Our own CPU engine for GGUF `llama`, candle for the rest.
    #[default]
    Cpu,
    /// candle on NVIDIA GPU 0 (cargo feature `cuda`).
    Cuda,
    /// Our own Vulkan engine for Intel GPUs (cargo feature `vulkan`).
    Vulkan,
}

impl Device {
    pub const ALL: [Device; 3] = [Device::Cpu, Device::Cuda, Device::Vulkan];

    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Vulkan => "vulkan",
        }
    }

    /// Whether this binary was built with the engine for the device.
    pub fn compiled_in(self) -> bool {
        match self {
            Device::Cpu => true,
            Device::Cuda => cfg!(feature = "cuda"),
            Device::Vulkan => cfg!(feature = "vulkan"),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Device::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown device `{s}`; expected one of: cpu, cuda, vulkan"))
    }
}
