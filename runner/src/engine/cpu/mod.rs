//! Our own CPU engine for GGUF `llama` models: a hand-written forward pass
//! ([`llama`]) on memory-mapped weights with AVX2 quantized kernels ([`kernels`]).
//!
//! It exists because candle's CPU path is several times slower than llama.cpp on
//! the same file (scalar Q4_1 dot product, KV cache copied every token); see
//! docs/benchmarks.md for the figures. candle stays the reference: the tests check
//! that this engine's logits match candle's `quantized_llama` on the real test model.

pub mod f16_vec;
pub mod kernels;
pub mod llama;
pub mod swiglu;
pub mod team;

use std::path::Path;

use super::Engine;

/// Environment variable that picks the CPU engine for GGUF `llama` files: `xpu` (our
/// own, the default) or `candle` (candle-transformers' `quantized_llama`).
pub const ENGINE_ENV: &str = "XPU_CPU_ENGINE";

/// Whether GGUF `llama` files on the CPU should use this engine, from
/// [`ENGINE_ENV`]. An unknown value is an error that names the accepted ones.
pub fn selected() -> Result<bool, String> {
    match std::env::var(ENGINE_ENV) {
        Err(_) => Ok(true),
        Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("xpu") => Ok(true),
        Ok(v) if v.eq_ignore_ascii_case("candle") => Ok(false),
        Ok(v) => Err(format!("{ENGINE_ENV}={v} is not a CPU engine; use `xpu` (default) or `candle`")),
    }
}

/// The CPU `llama` engine: one model and the KV cache of one sequence.
pub struct CpuLlamaEngine {
    model: llama::LlamaModel,
}

impl CpuLlamaEngine {
    /// Loads a GGUF `llama` file. `max_context` caps the context length (default: the
    /// model's own).
    pub fn load(path: &Path, max_context: Option<usize>) -> anyhow::Result<Self> {
        Ok(CpuLlamaEngine { model: llama::LlamaModel::load(path, max_context)? })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &llama::Config {
        &self.model.config
    }
}

impl std::fmt::Debug for CpuLlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuLlamaEngine").field("config", &self.model.config).finish_non_exhaustive()
    }
}

impl Engine for CpuLlamaEngine {
    fn forward(&mut self, tokens: &[u32], start: usize) -> anyhow::Result<Vec<f32>> {
        self.model.forward(tokens, start)
    }

    fn reset(&mut self) -> anyhow::Result<()> {
        self.model.reset();
        Ok(())
    }

    fn context_length(&self) -> usize {
        self.model.config.context_length
    }

    fn device_description(&self) -> String {
        format!("cpu ({} threads, {}, xpu llama kernels)", self.model.team.threads(), kernels::simd_name())
    }
}
