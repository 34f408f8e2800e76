//! Our own CPU engine ([`xpu_cpu`]) behind the runner's [`Engine`] boundary, and the
//! choice between it and candle for GGUF `llama` files.

use super::Engine;

pub use xpu_cpu::CpuLlamaEngine;

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
        Ok(v) => Err(format!(
            "{ENGINE_ENV}={v} is not a CPU engine; use `xpu` (default) or `candle`"
        )),
    }
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

    fn device_description(&self) -> String {
        CpuLlamaEngine::device_description(self)
    }
}
