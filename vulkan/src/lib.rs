//! Vulkan compute engine for llama-architecture GGUF models: the runner's Intel GPU path.
//!
//! Built on `wgpu` (Vulkan backend only) with WGSL kernels, so the same code runs on Intel's
//! Mesa ANV driver, on NVIDIA's Vulkan driver, and on Mesa lavapipe in CI. Candle (CPU) is the
//! numerical reference in the tests. Layout:
//! - [`device`]: adapter selection (discrete > integrated, CPU adapters only on request);
//! - [`quant`]: weight formats, their GPU layout, chunked upload, matmul dispatch;
//! - `kernels`: WGSL sources and pipelines;
//! - [`model`]: the llama forward pass with the KV cache on the GPU;
//! - [`testing`]: single-kernel entry points for the tests against candle.

mod attention_coop;
pub mod device;
mod error;
mod kernels;
pub mod model;
pub mod quant;
mod record;
pub mod testing;

pub use device::{
    gpu_adapter, parse_split, AdapterSelector, DeviceOptions, DeviceSelection, Gpu, LostFlag,
    ALLOW_CPU_ADAPTER_ENV, DEVICES_ENV, SPLIT_ENV,
};
pub use error::VulkanError;
pub use kernels::{KernelTuning, Prefill, MATVEC_TUNING_ENV};
pub use model::{
    ChunkOutput, ForwardTiming, LlamaConfig, LlamaModel, LoadOptions, Readback, SeqChunk,
};
pub use quant::{GpuWeight, WeightType};
