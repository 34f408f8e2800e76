//! Our own CPU engine for GGUF models of the llama family (every architecture with a
//! description in `xpu_gguf::arch`: llama, qwen2, qwen3, phi3, gemma3): a hand-written
//! forward pass ([`llama`]) on memory-mapped weights with AVX2 kernels, each with a portable
//! fallback: [`kernels`] for 32-weight blocks, [`kquants`] and [`floats`] (through
//! [`wide`]) for K-quants and float matrices.
//!
//! It exists because candle's CPU path is several times slower than llama.cpp on
//! the same file (scalar Q4_1 dot product, KV cache copied every token); see
//! docs/benchmarks.md for the figures. candle stays the reference: the tests check
//! that this engine's logits match candle's `quantized_llama` on the real test model.

// Private: its functions trust their `simd` argument (see `f16_vec::simd`).
mod f16_vec;
pub mod floats;
pub mod geglu;
pub mod kernels;
pub mod kquants;
pub mod llama;
pub mod swiglu;
pub mod team;
pub mod wide;

use std::path::Path;

/// The CPU engine: one model and the KV cache of one sequence.
pub struct CpuLlamaEngine {
    model: llama::LlamaModel,
}

impl CpuLlamaEngine {
    /// Loads a GGUF file of an architecture with a model description. `max_context` caps the context length (default: the
    /// model's own).
    pub fn load(path: &Path, max_context: Option<usize>) -> anyhow::Result<Self> {
        Ok(CpuLlamaEngine {
            model: llama::LlamaModel::load(path, max_context)?,
        })
    }

    /// Builds the engine on a GGUF file the caller has opened (its header parsed once).
    pub fn from_gguf(gguf: xpu_gguf::GgufFile, max_context: Option<usize>) -> anyhow::Result<Self> {
        Ok(CpuLlamaEngine {
            model: llama::LlamaModel::from_gguf(gguf, max_context)?,
        })
    }
}

impl std::fmt::Debug for CpuLlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuLlamaEngine")
            .field("config", &self.model.config)
            .finish_non_exhaustive()
    }
}

/// What the runner's `Engine` boundary needs, with the same meaning (see
/// `xpu_runner::engine::Engine`).
impl CpuLlamaEngine {
    /// Runs `tokens` at positions `start..start + tokens.len()`, appends their keys and
    /// values to the KV cache and returns the logits of the last token.
    pub fn forward(&mut self, tokens: &[u32], start: usize) -> anyhow::Result<Vec<f32>> {
        self.model.forward(tokens, start)
    }

    /// Forgets the KV cache so that a new sequence can start at position 0.
    pub fn reset(&mut self) {
        self.model.reset();
    }

    /// The longest sequence the KV cache holds.
    pub fn context_length(&self) -> usize {
        self.model.config.context_length
    }

    /// The threads and SIMD kernels in use, for logs and `/health`.
    pub fn device_description(&self) -> String {
        format!(
            "cpu ({} threads, {}, xpu {} kernels)",
            self.model.team.threads(),
            kernels::simd_name(),
            self.model.config.arch
        )
    }
}
