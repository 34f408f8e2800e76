//! The candle engine: runs GGUF (quantized) and safetensors models through
//! candle-transformers on the CPU, or on an NVIDIA GPU when built with `cuda`.
//!
//! candle's model code is single-sequence: each model keeps one KV cache. GGUF
//! `llama` models come from `quantized_llama`, whose RoPE table stops at
//! [`quantized_llama::MAX_SEQ_LEN`] (4096) and whose KV cache grows with
//! `Tensor::cat` (a copy per step); that caps the context and costs a little speed
//! on long generations. That is acceptable because candle only runs what our own
//! engines do not: other architectures, safetensors, CUDA and `--cpu-engine candle`.

use std::sync::Once;

use anyhow::{bail, Context as _};
use candle_core::quantized::gguf_file;
use candle_core::safetensors::SliceSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use candle_transformers::models::{llama, quantized_llama, quantized_phi3, quantized_qwen2, qwen2};

use super::Engine;

/// Prompt tokens are fed in chunks of at most this many, so that the attention
/// scores of a long prompt (heads × chunk × context floats) stay small.
const PREFILL_CHUNK: usize = 512;

/// Builds rayon's global pool, which the CPU engine and candle's tensor operations
/// run on, with `threads` threads (default: `RAYON_NUM_THREADS`, else the physical
/// cores, as candle chooses). Only the first call has an effect, so binaries call it
/// before loading a model (the model loader calls it too, which is then harmless).
///
/// candle's quantized kernels use a second pool of their own, which candle sizes only
/// from `CANDLE_NUM_THREADS`/`RAYON_NUM_THREADS`; the binary sets those before it starts
/// any thread (see `main.rs`), since changing the environment of a running
/// multi-threaded process is a data race.
pub fn configure_cpu_threads(threads: Option<usize>) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let threads = threads
            .filter(|n| *n > 0)
            .unwrap_or_else(candle_core::utils::get_num_threads);
        // An error means the global pool already exists (started by some earlier rayon
        // call); its size then stands.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .start_handler(|_| candle_core::utils::set_thread_affinity())
            .build_global();
    });
}

/// The candle device for one of ours.
pub fn select_device(device: super::Device) -> anyhow::Result<Device> {
    match device {
        super::Device::Cpu => Ok(Device::Cpu),
        super::Device::Cuda => cuda_device(),
        super::Device::Vulkan => bail!("the candle engine does not run on Vulkan"),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> anyhow::Result<Device> {
    Device::new_cuda(0).context("could not open CUDA device 0 (is the NVIDIA driver loaded?)")
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> anyhow::Result<Device> {
    bail!(
        "this xpu-runner was built without CUDA support; run the CUDA binary ({}) or use --device cpu",
        crate::cuda_binary::FILE_NAME
    )
}

/// A model that candle-transformers can run, with its KV cache.
enum CandleModel {
    QuantLlama(quantized_llama::ModelWeights),
    QuantQwen2(quantized_qwen2::ModelWeights),
    /// `quantized_phi3` has no way to clear its cache, so `fresh` keeps a copy
    /// with an empty cache (the weights are shared through `Arc`s, so it is cheap).
    QuantPhi3 {
        model: quantized_phi3::ModelWeights,
        fresh: quantized_phi3::ModelWeights,
    },
    Llama {
        model: llama::Llama,
        cache: llama::Cache,
        config: llama::Config,
        dtype: DType,
    },
    Qwen2(qwen2::ModelForCausalLM),
}

/// The architectures a GGUF file may declare in `general.architecture`.
pub const GGUF_ARCHITECTURES: &[&str] = &["llama", "qwen2", "phi3"];

/// The architectures a safetensors directory may declare in `config.json`.
pub const SAFETENSORS_ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// candle on one device, holding one model and the KV cache of one sequence.
pub struct CandleEngine {
    model: CandleModel,
    device: Device,
    context_length: usize,
}

impl CandleEngine {
    /// Builds the model of a GGUF file whose architecture the caller has checked
    /// against [`GGUF_ARCHITECTURES`]. `max_context` is the model's own limit.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        architecture: &str,
        content: gguf_file::Content,
        reader: &mut R,
        device: Device,
        max_context: usize,
    ) -> anyhow::Result<Self> {
        let (model, context_length) = match architecture {
            "llama" => (
                CandleModel::QuantLlama(quantized_llama::ModelWeights::from_gguf(
                    content, reader, &device,
                )?),
                // The RoPE table of candle's quantized llama ends here.
                max_context.min(quantized_llama::MAX_SEQ_LEN),
            ),
            "qwen2" => (
                CandleModel::QuantQwen2(quantized_qwen2::ModelWeights::from_gguf(
                    content, reader, &device,
                )?),
                max_context,
            ),
            "phi3" => {
                let model =
                    quantized_phi3::ModelWeights::from_gguf(false, content, reader, &device)?;
                (
                    CandleModel::QuantPhi3 {
                        fresh: model.clone(),
                        model,
                    },
                    max_context,
                )
            }
            other => bail!(
                "unsupported GGUF architecture `{other}`; supported: {}",
                GGUF_ARCHITECTURES.join(", ")
            ),
        };
        Ok(Self {
            model,
            device,
            context_length,
        })
    }

    /// Builds a model from memory-mapped safetensors files. `config_json` is the
    /// text of `config.json`; `dtype` is the compute type of the weights.
    pub fn from_safetensors(
        architecture: &str,
        config_json: &str,
        files: &[std::path::PathBuf],
        dtype: DType,
        device: Device,
    ) -> anyhow::Result<Self> {
        let maps = files
            .iter()
            .map(|path| {
                xpu_gguf::mapped::map_path(path)
                    .with_context(|| format!("cannot map {}", path.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let shards = maps
            .iter()
            .zip(files)
            .map(|(map, path)| {
                SliceSafetensors::new(map)
                    .with_context(|| format!("{} is not a safetensors file", path.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let vb = VarBuilder::from_backend(Box::new(Shards(shards)), dtype, device.clone());
        let (model, context_length) = match architecture {
            "llama" => {
                let config: llama::LlamaConfig = serde_json::from_str(config_json)
                    .context("config.json is not a valid llama config")?;
                let config = config.into_config(false);
                check_llama_tensors(&vb, &config)?;
                // `llama::Llama::load` unwraps per-layer errors; the check above
                // makes a panic unlikely and `catch_unwind` turns one into an error.
                let model = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    llama::Llama::load(vb, &config)
                }))
                .map_err(|_| {
                    anyhow::anyhow!("the safetensors weights do not match config.json")
                })??;
                let cache = llama::Cache::new(true, dtype, &config, &device)?;
                let ctx = config.max_position_embeddings;
                (
                    CandleModel::Llama {
                        model,
                        cache,
                        config,
                        dtype,
                    },
                    ctx,
                )
            }
            "qwen2" => {
                let config: qwen2::Config = serde_json::from_str(config_json)
                    .context("config.json is not a valid qwen2 config")?;
                let ctx = config.max_position_embeddings;
                (
                    CandleModel::Qwen2(qwen2::ModelForCausalLM::new(&config, vb)?),
                    ctx,
                )
            }
            other => bail!(
                "unsupported safetensors architecture `{other}`; supported: {}",
                SAFETENSORS_ARCHITECTURES.join(", ")
            ),
        };
        Ok(Self {
            model,
            device,
            context_length,
        })
    }

    /// Lowers the context length below the model's own limit.
    pub fn limit_context(&mut self, ctx: usize) {
        self.context_length = self.context_length.min(ctx);
    }

    fn forward_chunk(&mut self, tokens: &[u32], start: usize) -> anyhow::Result<Tensor> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = match &mut self.model {
            CandleModel::QuantLlama(m) => m.forward(&input, start)?,
            CandleModel::QuantQwen2(m) => m.forward(&input, start)?,
            CandleModel::QuantPhi3 { model, .. } => model.forward(&input, start)?,
            CandleModel::Llama { model, cache, .. } => model.forward(&input, start, cache)?,
            CandleModel::Qwen2(m) => m.forward(&input, start)?,
        };
        Ok(logits)
    }
}

/// Checks that every tensor `llama::Llama::load` will ask for exists, so that a
/// directory with missing layers gets an error naming the tensor.
fn check_llama_tensors(vb: &VarBuilder, config: &llama::Config) -> anyhow::Result<()> {
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    if !config.tie_word_embeddings {
        names.push("lm_head.weight".to_string());
    }
    for i in 0..config.num_hidden_layers {
        for part in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "input_layernorm",
            "post_attention_layernorm",
        ] {
            names.push(format!("model.layers.{i}.{part}.weight"));
        }
    }
    for name in names {
        if !vb.contains_tensor(&name) {
            bail!("the safetensors files lack tensor `{name}` that config.json implies");
        }
    }
    Ok(())
}

impl Engine for CandleEngine {
    fn forward(&mut self, tokens: &[u32], start: usize) -> anyhow::Result<Vec<f32>> {
        if tokens.is_empty() {
            bail!("forward called with no tokens");
        }
        if start + tokens.len() > self.context_length {
            bail!(
                "positions {start}..{} exceed the context length {}",
                start + tokens.len(),
                self.context_length
            );
        }
        let mut logits = None;
        let mut pos = start;
        for chunk in tokens.chunks(PREFILL_CHUNK) {
            logits = Some(self.forward_chunk(chunk, pos)?);
            pos += chunk.len();
        }
        let logits = logits.expect("at least one chunk");
        Ok(logits
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }

    fn reset(&mut self) -> anyhow::Result<()> {
        match &mut self.model {
            CandleModel::QuantLlama(m) => m.clear_kv_cache(),
            CandleModel::QuantQwen2(m) => m.clear_kv_cache(),
            CandleModel::QuantPhi3 { model, fresh } => *model = fresh.clone(),
            CandleModel::Llama {
                cache,
                config,
                dtype,
                ..
            } => *cache = llama::Cache::new(true, *dtype, config, &self.device)?,
            CandleModel::Qwen2(m) => m.clear_kv_cache(),
        }
        Ok(())
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn device_description(&self) -> String {
        match &self.device {
            Device::Cpu => {
                let mut features = Vec::new();
                if candle_core::utils::with_avx() {
                    features.push("avx2");
                }
                if candle_core::utils::with_f16c() {
                    features.push("f16c");
                }
                if candle_core::utils::with_neon() {
                    features.push("neon");
                }
                format!(
                    "cpu ({} threads{}{})",
                    candle_core::utils::get_num_threads(),
                    if features.is_empty() { "" } else { ", " },
                    features.join(", ")
                )
            }
            Device::Cuda(_) => "cuda:0 (candle)".to_string(),
            other => format!("{other:?} (candle)"),
        }
    }
}

/// The tensors of a model split over several mapped safetensors files. A name that
/// appears in more than one file comes from the last, as with candle's own loader.
struct Shards<'a>(Vec<SliceSafetensors<'a>>);

impl Shards<'_> {
    /// The file that holds `name`, or the first one, whose error then names the tensor.
    fn holding(&self, name: &str) -> &SliceSafetensors<'_> {
        self.0
            .iter()
            .rev()
            .find(|shard| shard.get(name).is_ok())
            .unwrap_or(&self.0[0])
    }
}

impl SimpleBackend for Shards<'_> {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        SimpleBackend::get(self.holding(name), shape, name, init, dtype, device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        SimpleBackend::get_unchecked(self.holding(name), name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.iter().any(|shard| shard.get(name).is_ok())
    }
}
