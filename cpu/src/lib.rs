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
mod kv;
pub mod llama;
pub mod swiglu;
pub mod team;
pub mod wide;

use std::path::Path;

pub use llama::SeqChunk;

/// The CPU engine: one model and the KV cache of its sequences (slots).
pub struct CpuLlamaEngine {
    model: llama::LlamaModel,
}

impl CpuLlamaEngine {
    /// Loads a GGUF file of an architecture with a model description, with a KV cache
    /// of `slots` sequences (0 means 1). `max_context` caps the context length of each
    /// (default: the model's own).
    pub fn load(path: &Path, max_context: Option<usize>, slots: usize) -> anyhow::Result<Self> {
        Ok(CpuLlamaEngine {
            model: llama::LlamaModel::load(path, max_context, slots)?,
        })
    }

    /// Builds the engine on a GGUF file the caller has opened (its header parsed once),
    /// with a KV cache of `slots` sequences (0 means 1).
    pub fn from_gguf(
        gguf: xpu_gguf::GgufFile,
        max_context: Option<usize>,
        slots: usize,
    ) -> anyhow::Result<Self> {
        Ok(CpuLlamaEngine {
            model: llama::LlamaModel::from_gguf(gguf, max_context, slots)?,
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
    /// Runs `tokens` at positions `start..start + tokens.len()` of the sequence in slot
    /// 0, writes their keys and values to the KV cache and returns the logits of the
    /// last token.
    pub fn forward(&mut self, tokens: &[u32], start: usize) -> anyhow::Result<Vec<f32>> {
        self.model.forward(tokens, start)
    }

    /// Runs one step of several sequences in one pass (each weight read once for all
    /// their tokens) and returns each chunk's last-token logits, in chunk order. Chunks
    /// name distinct slots; a chunk may start at any position its slot holds (a cached
    /// prefix), which drops what followed. A sequence's logits are bitwise the same
    /// whatever shares the pass and however its prompt is chunked.
    pub fn forward_batch(&mut self, chunks: &[SeqChunk<'_>]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.model.forward_batch(chunks)
    }

    /// Forgets every slot's sequence so that new ones can start at position 0.
    pub fn reset(&mut self) {
        self.model.reset();
    }

    /// The longest sequence one slot holds.
    pub fn context_length(&self) -> usize {
        self.model.config.context_length
    }

    /// How many sequences the KV cache holds.
    pub fn slots(&self) -> usize {
        self.model.slots()
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
