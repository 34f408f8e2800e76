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

/// The compute device a user asks for (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// CUDA when this build has it and a GPU answers, otherwise the CPU.
    #[default]
    Auto,
    /// candle on the CPU.
    Cpu,
    /// candle on NVIDIA GPU 0 (cargo feature `cuda`).
    Cuda,
    /// Our own Vulkan engine for Intel GPUs (cargo feature `vulkan`).
    Vulkan,
}

impl DeviceKind {
    /// The names accepted by `--device`.
    pub const NAMES: &'static [&'static str] = &["auto", "cpu", "cuda", "vulkan"];
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Auto => "auto",
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Vulkan => "vulkan",
        })
    }
}

impl FromStr for DeviceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceKind::Auto),
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda),
            "vulkan" => Ok(DeviceKind::Vulkan),
            other => Err(format!(
                "unknown device `{other}`; expected one of: {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}
