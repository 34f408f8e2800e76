//! The engine boundary: everything the generation loop needs from a compute backend.
//!
//! An engine owns the weights of one model on one device plus a KV cache of one or more
//! sequences (slots). The generation loop (tokenizing, sampling, stopping) is shared by all
//! engines and never touches a device directly; the server's scheduler batches the steps
//! of several sequences into one [`Engine::forward_batch_read`] call, which reads back each
//! sequence's logits or, for a greedy one, only its token. Implementations: `cpu` (our own, crate
//! `xpu-cpu`, for GGUF `llama` on the CPU), `candle` (every other model on the CPU, and
//! CUDA behind the `cuda` feature) and `vulkan` (crate `xpu-vulkan`, behind the `vulkan`
//! feature).

/// One sequence's share of a batched forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqChunk<'a> {
    /// The KV-cache slot that holds the sequence, `0..slots()`.
    pub slot: usize,
    /// Tokens at positions `start..start + tokens.len()` of that sequence (at least one).
    pub tokens: &'a [u32],
    pub start: usize,
}

/// What a forward pass hands back for one chunk (its last token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readback {
    /// The whole row of logits, for the sampler.
    Logits,
    /// Only the greedy token: the largest logit's id, the lowest of equals, never a NaN, 0
    /// when no logit is above -inf (the rule of [`crate::sampling`]'s greedy pick). An
    /// engine on a GPU picks it there and reads back a few bytes instead of the row.
    Greedy,
}

/// One chunk's result of [`Engine::forward_batch_read`], as its [`Readback`] asked.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkOutput {
    Logits(Vec<f32>),
    Token(u32),
}

/// What every compute backend offers the generation loop.
pub trait Engine: Send {
    /// Runs `tokens`, which sit at positions `start..start + tokens.len()` of the
    /// sequence in slot 0, writes their keys and values to the KV cache, and returns the
    /// logits of the last token (one `f32` per vocabulary entry).
    fn forward(&mut self, tokens: &[u32], start: usize) -> anyhow::Result<Vec<f32>>;

    /// Forgets the KV cache so that a new sequence can start at position 0.
    fn reset(&mut self) -> anyhow::Result<()>;

    /// The longest sequence (prompt plus generated tokens) one slot can hold.
    fn context_length(&self) -> usize;

    /// How many sequences the KV cache holds at once. An engine with one slot generates
    /// one sequence at a time.
    fn slots(&self) -> usize {
        1
    }

    /// Whether a chunk may start before the end of what its slot holds, keeping positions
    /// `0..start` and overwriting the rest: what reusing a cached prompt prefix needs. An
    /// engine whose cache only appends says false, and must be [`reset`](Self::reset)
    /// before each new sequence.
    fn rewinds(&self) -> bool {
        false
    }

    /// Runs one step for several sequences at once: every chunk's tokens go through one
    /// pass (each weight read once for all of them), attention runs per sequence over its
    /// own slot. Returns the logits of each chunk's last token, in chunk order. Chunks name
    /// distinct slots; a slot keeps positions `0..start` from earlier calls. A sequence's
    /// logits must not depend on which other chunks share the pass.
    ///
    /// The default runs the chunks one after another, for single-slot engines.
    fn forward_batch(&mut self, chunks: &[SeqChunk<'_>]) -> anyhow::Result<Vec<Vec<f32>>> {
        chunks
            .iter()
            .map(|c| {
                anyhow::ensure!(
                    c.slot == 0,
                    "this engine holds one sequence; slot {} does not exist",
                    c.slot
                );
                self.forward(c.tokens, c.start)
            })
            .collect()
    }

    /// As [`forward_batch`](Self::forward_batch), returning per chunk what `wants` (one per
    /// chunk) asks for: its logits, or only its greedy token.
    ///
    /// The default runs `forward_batch` and picks the greedy tokens on the host; an engine
    /// that can pick them on its device overrides it.
    fn forward_batch_read(
        &mut self,
        chunks: &[SeqChunk<'_>],
        wants: &[Readback],
    ) -> anyhow::Result<Vec<ChunkOutput>> {
        anyhow::ensure!(
            wants.len() == chunks.len(),
            "{} read-back choices for {} chunks; give one per chunk",
            wants.len(),
            chunks.len()
        );
        let rows = self.forward_batch(chunks)?;
        Ok(rows
            .into_iter()
            .zip(wants)
            .map(|(row, want)| match want {
                Readback::Logits => ChunkOutput::Logits(row),
                Readback::Greedy => ChunkOutput::Token(crate::sampling::argmax(&row)),
            })
            .collect())
    }

    /// A short description of the device for logs, `/health` and metrics, such as
    /// `cpu (2 threads, avx2)` or `vulkan: Intel(R) Arc(TM) A770 Graphics`.
    fn device_description(&self) -> String;

    /// The GPUs the engine runs on and each one's share of the model, with their health,
    /// for `/health` and the dashboard; `None` for engines without a device map.
    fn device_map(&self) -> Option<DeviceMap> {
        None
    }
}

/// Which device runs which layers of a model (one entry, or several for a split), readable
/// from any thread while the engine works on its own.
#[derive(Clone)]
pub struct DeviceMap(pub Vec<MappedDevice>);

/// One device's share of a model.
#[derive(Clone)]
pub struct MappedDevice {
    /// The adapter's index in the engine's list (what `--devices` counts).
    pub index: usize,
    pub adapter: String,
    pub pci_address: Option<String>,
    /// The layers it runs, `first..end`.
    pub layers: std::ops::Range<usize>,
    /// Holds the token embedding / the output head.
    pub embedding: bool,
    pub output: bool,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    pub memory_bytes: Option<u64>,
    /// Why the device was lost, once it is.
    pub lost: std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>,
}

impl DeviceMap {
    /// The first lost device and why, if any.
    pub fn lost(&self) -> Option<String> {
        self.0.iter().find_map(|d| {
            (d.lost)().map(|why| format!("device {} ({}) was lost: {why}", d.index, d.adapter))
        })
    }

    /// The map as `/health` and `/v1/dashboard` show it: one object per device, in layer order.
    pub fn to_json(&self) -> serde_json::Value {
        self.0
            .iter()
            .map(|d| {
                let lost = (d.lost)();
                serde_json::json!({
                    "index": d.index,
                    "adapter": d.adapter,
                    "pci_address": d.pci_address,
                    "layers": [d.layers.start, d.layers.end],
                    "embedding": d.embedding,
                    "output": d.output,
                    "weight_bytes": d.weight_bytes,
                    "kv_cache_bytes": d.kv_bytes,
                    "memory_bytes": d.memory_bytes,
                    "status": if lost.is_some() { "lost" } else { "ok" },
                    "error": lost,
                })
            })
            .collect()
    }
}

impl std::fmt::Debug for DeviceMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_json().to_string())
    }
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
