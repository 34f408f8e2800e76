//! The Vulkan engine behind the runner's [`Engine`] boundary: a thin adapter over
//! [`xpu_vulkan::LlamaModel`], which keeps the weights and the KV cache on the GPU.

use std::path::Path;

use anyhow::Context as _;
use xpu_vulkan::{LlamaModel, LoadOptions, VulkanError};

use super::Engine;
use crate::model::LoadError;

/// A llama-architecture GGUF model running on a Vulkan device (Intel GPUs first).
pub struct VulkanEngine {
    model: LlamaModel,
}

impl VulkanEngine {
    /// Loads `path` onto the preferred Vulkan adapter (discrete, then integrated; CPU
    /// adapters only with `XPU_RUNNER_ALLOW_CPU_ADAPTER=1`) with a KV cache of `ctx` tokens.
    /// Problems with the device (no loader, no adapter, out of memory, lost device) are
    /// [`LoadError::Device`], so that `--device auto` can fall back to the CPU; problems
    /// with the model are [`LoadError::Engine`].
    pub fn load(path: &Path, ctx: usize) -> Result<VulkanEngine, LoadError> {
        let opts = LoadOptions { ctx: Some(ctx), ..LoadOptions::default() };
        match LlamaModel::load(path, &opts) {
            Ok(model) => {
                tracing::info!(adapter = %model.adapter_description(), ctx, "vulkan engine ready");
                Ok(VulkanEngine { model })
            }
            Err(
                e @ (VulkanError::NoLoader { .. }
                | VulkanError::NoSuitableAdapter { .. }
                | VulkanError::RequestDevice { .. }
                | VulkanError::OutOfDeviceMemory { .. }
                | VulkanError::DeviceLost { .. }),
            ) => Err(LoadError::Device(format!("vulkan: {e}"))),
            Err(e) => Err(LoadError::Engine { path: path.to_path_buf(), reason: e.to_string() }),
        }
    }
}

impl Engine for VulkanEngine {
    fn forward(&mut self, tokens: &[u32], start: usize) -> anyhow::Result<Vec<f32>> {
        self.model.forward(tokens, start).context("Vulkan forward pass")
    }

    fn reset(&mut self) -> anyhow::Result<()> {
        self.model.reset();
        Ok(())
    }

    fn context_length(&self) -> usize {
        self.model.context_length()
    }

    fn device_description(&self) -> String {
        format!("vulkan: {}", self.model.adapter_description())
    }
}
