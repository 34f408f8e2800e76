//! Our own CPU engine ([`xpu_cpu`]) behind the runner's [`Engine`] boundary, and the
//! choice between it and candle for GGUF `llama` files.

use super::{Engine, SeqChunk};

pub use xpu_cpu::CpuLlamaEngine;

/// The engine that runs GGUF `llama` files on the CPU (`--cpu-engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CpuEngine {
    /// Our own, [`xpu_cpu`]: several times faster than candle's.
    #[default]
    Xpu,
    /// candle-transformers' `quantized_llama`, which also runs quantizations we have no
    /// kernels for.
    Candle,
}

impl Engine for CpuLlamaEngine {
    fn forward(&mut self, tokens: &[u32], start: usize) -> anyhow::Result<Vec<f32>> {
        CpuLlamaEngine::forward(self, tokens, start)
    }

    fn reset(&mut self) -> anyhow::Result<()> {
        CpuLlamaEngine::reset(self);
        Ok(())
    }

    fn context_length(&self) -> usize {
        CpuLlamaEngine::context_length(self)
    }

    fn slots(&self) -> usize {
        CpuLlamaEngine::slots(self)
    }

    fn forward_batch(&mut self, chunks: &[SeqChunk<'_>]) -> anyhow::Result<Vec<Vec<f32>>> {
        let chunks: Vec<xpu_cpu::SeqChunk<'_>> = chunks
            .iter()
            .map(|c| xpu_cpu::SeqChunk {
                slot: c.slot,
                tokens: c.tokens,
                start: c.start,
            })
            .collect();
        CpuLlamaEngine::forward_batch(self, &chunks)
    }

    fn device_description(&self) -> String {
        CpuLlamaEngine::device_description(self)
    }

    // The cache is positional: a position is written before it is read.
    fn rewinds(&self) -> bool {
        true
    }
}
