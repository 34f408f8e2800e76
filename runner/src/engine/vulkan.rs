//! The Vulkan engine behind the runner's [`Engine`] boundary: a thin adapter over
//! [`xpu_vulkan::LlamaModel`], which keeps the weights and the KV cache on the GPU.

use anyhow::Context as _;
use xpu_vulkan::{DeviceOptions, LlamaModel, LoadOptions, VulkanError};

use super::{ChunkOutput, DeviceMap, Engine, MappedDevice, Readback, SeqChunk};
use crate::model::gguf::GgufFile;
use crate::model::LoadError;

/// A llama-architecture GGUF model running on a Vulkan device (Intel GPUs first).
pub struct VulkanEngine {
    model: LlamaModel,
}

impl VulkanEngine {
    /// Loads the opened GGUF file onto the preferred Vulkan adapter (discrete, then
    /// integrated; CPU adapters only when `device` allows them) with a KV cache of `slots`
    /// sequences (0 counts as 1) of `ctx` tokens each (`None`: the model's context, capped at
    /// 8192 and at what fits the device's memory with every slot). Problems with the device (no loader, no adapter, weights or context
    /// that do not fit its memory, out of memory, lost device) are [`LoadError::Device`], so
    /// that `--device auto` can fall back to the CPU; problems with the model are
    /// [`LoadError::Engine`].
    pub fn load(
        gguf: &GgufFile,
        ctx: Option<usize>,
        slots: usize,
        device: &DeviceOptions,
    ) -> Result<VulkanEngine, LoadError> {
        let opts = LoadOptions {
            ctx,
            slots,
            device: device.clone(),
            ..LoadOptions::default()
        };
        match LlamaModel::from_gguf(gguf, &opts) {
            Ok(model) => {
                tracing::info!(adapter = %model.adapter_description(), ctx = model.context_length(), slots = model.slots(), "vulkan engine ready");
                Ok(VulkanEngine { model })
            }
            Err(
                e @ (VulkanError::NoLoader { .. }
                | VulkanError::NoSuitableAdapter { .. }
                | VulkanError::RequestDevice { .. }
                | VulkanError::NoSuchDevice { .. }
                | VulkanError::DoesNotFit { .. }
                | VulkanError::DoesNotFitSplit { .. }
                | VulkanError::OutOfDeviceMemory { .. }
                | VulkanError::DeviceLost { .. }),
            ) => Err(LoadError::Device(format!("vulkan: {e}"))),
            Err(e) => Err(LoadError::Engine {
                path: gguf.path().to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }
}

impl Engine for VulkanEngine {
    fn forward(&mut self, tokens: &[u32], start: usize) -> anyhow::Result<Vec<f32>> {
        self.model
            .forward(tokens, start)
            .context("Vulkan forward pass")
    }

    fn reset(&mut self) -> anyhow::Result<()> {
        self.model.reset();
        Ok(())
    }

    fn context_length(&self) -> usize {
        self.model.context_length()
    }

    fn slots(&self) -> usize {
        self.model.slots()
    }

    fn forward_batch(&mut self, chunks: &[SeqChunk<'_>]) -> anyhow::Result<Vec<Vec<f32>>> {
        let chunks = vulkan_chunks(chunks);
        self.model
            .forward_batch(&chunks)
            .context("Vulkan batched forward pass")
    }

    // Greedy tokens are picked on the GPU: only they cross the bus, not their rows.
    fn forward_batch_read(
        &mut self,
        chunks: &[SeqChunk<'_>],
        wants: &[Readback],
    ) -> anyhow::Result<Vec<ChunkOutput>> {
        let chunks = vulkan_chunks(chunks);
        let wants: Vec<xpu_vulkan::Readback> = wants
            .iter()
            .map(|w| match w {
                Readback::Logits => xpu_vulkan::Readback::Logits,
                Readback::Greedy => xpu_vulkan::Readback::Greedy,
            })
            .collect();
        let outputs = self
            .model
            .forward_batch_read(&chunks, &wants)
            .context("Vulkan batched forward pass")?;
        Ok(outputs
            .into_iter()
            .map(|o| match o {
                xpu_vulkan::ChunkOutput::Logits(row) => ChunkOutput::Logits(row),
                xpu_vulkan::ChunkOutput::Token(t) => ChunkOutput::Token(t),
            })
            .collect())
    }

    fn device_description(&self) -> String {
        format!("vulkan: {}", self.model.adapter_description())
    }

    fn device_map(&self) -> Option<DeviceMap> {
        let devices = self.model.device_map().into_iter().map(|part| {
            let lost = part.lost.clone();
            MappedDevice {
                index: part.index,
                adapter: part.adapter,
                pci_address: part.pci_address,
                layers: part.layers,
                embedding: part.embedding,
                output: part.output,
                weight_bytes: part.weight_bytes,
                kv_bytes: part.kv_bytes,
                memory_bytes: part.memory_bytes,
                lost: std::sync::Arc::new(move || lost.get()),
            }
        });
        Some(DeviceMap(devices.collect()))
    }

    // The cache is positional: a position is written before it is read.
    fn rewinds(&self) -> bool {
        true
    }
}

/// The engine's chunks as the Vulkan crate spells them (the runner's engine trait does not
/// depend on that optional crate).
fn vulkan_chunks<'a>(chunks: &[SeqChunk<'a>]) -> Vec<xpu_vulkan::SeqChunk<'a>> {
    chunks
        .iter()
        .map(|c| xpu_vulkan::SeqChunk {
            slot: c.slot,
            tokens: c.tokens,
            start: c.start,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_model() -> GgufFile {
        let path: std::path::PathBuf = match std::env::var("XPU_TEST_MODEL") {
            Ok(p) => p.into(),
            Err(_) => {
                let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../scripts/fetch-model.sh");
                let out = std::process::Command::new(script)
                    .output()
                    .expect("run scripts/fetch-model.sh");
                assert!(
                    out.status.success(),
                    "fetch-model.sh: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap().trim().into()
            }
        };
        GgufFile::open(&path).unwrap()
    }

    #[test]
    fn device_problems_are_device_errors() {
        // Without allowing CPU adapters a host with only lavapipe (CI) has no usable
        // adapter: that must be a Device error (so `auto` can fall back) naming the fix.
        // On a host with a real GPU the engine loads instead.
        match VulkanEngine::load(&test_model(), Some(64), 1, &DeviceOptions::default()) {
            Err(LoadError::Device(m)) => {
                assert!(
                    m.contains("no suitable Vulkan adapter") || m.contains("no Vulkan loader"),
                    "{m}"
                );
            }
            Ok(engine) => assert!(engine.device_description().starts_with("vulkan: ")),
            Err(other) => panic!("expected a device error, got: {other}"),
        }
    }

    #[test]
    fn a_bad_device_list_names_the_adapters() {
        let opts = DeviceOptions {
            allow_cpu_adapter: true,
            devices: "0,42".parse().unwrap(),
            ..DeviceOptions::default()
        };
        match VulkanEngine::load(&test_model(), Some(64), 1, &opts) {
            Err(LoadError::Device(m)) => {
                assert!(
                    m.contains("--devices 42: no such Vulkan adapter; the adapters are: 0: ")
                        || m.contains("no Vulkan loader"),
                    "{m}"
                )
            }
            Err(other) => panic!("expected a device error, got: {other}"),
            Ok(_) => panic!("adapter 42 was accepted"),
        }
    }

    #[test]
    fn a_split_engine_reports_its_device_map_and_a_lost_device() {
        let opts = DeviceOptions {
            allow_cpu_adapter: true,
            devices: "0,0".parse().unwrap(),
            split: Some(vec![2, 1]),
            ..DeviceOptions::default()
        };
        let mut engine = VulkanEngine::load(&test_model(), Some(64), 2, &opts).unwrap();
        let map = engine.device_map().unwrap();
        let json = map.to_json();
        assert_eq!(json[0]["layers"], serde_json::json!([0, 20]));
        assert_eq!(json[1]["layers"], serde_json::json!([20, 30]));
        assert_eq!(json[0]["embedding"], true);
        assert_eq!(json[1]["output"], true);
        assert_eq!(json[1]["status"], "ok");
        assert!(map.lost().is_none());
        engine.forward(&[1, 2], 0).unwrap();
        engine.model.gpus().nth(1).unwrap().simulate_loss("test");
        let e = engine.forward(&[3], 2).unwrap_err();
        assert!(format!("{e:#}").contains("device was lost"), "{e:#}");
        assert_eq!(map.to_json()[1]["status"], "lost");
        assert!(map.lost().unwrap().contains("device 0"), "{:?}", map.lost());
    }

    #[test]
    fn model_problems_are_engine_errors() {
        use candle_core::quantized::gguf_file::{self, Value};
        // A llama header whose width gives heads of no dimension.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zero-width.gguf");
        let metadata = [
            ("general.architecture", Value::String("llama".into())),
            ("llama.embedding_length", Value::U32(0)),
            ("llama.attention.head_count", Value::U32(4)),
        ];
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &metadata, &[]).unwrap();
        match VulkanEngine::load(
            &GgufFile::open(&path).unwrap(),
            Some(64),
            1,
            &DeviceOptions::default(),
        ) {
            Err(LoadError::Engine { reason, .. }) => {
                assert!(reason.contains("head dimension 0"), "{reason}")
            }
            Err(other) => panic!("expected an engine error, got: {other}"),
            Ok(_) => panic!("a zero-width model loaded"),
        }
    }
}
