//! A GGUF transformer (llama and the architectures built like it: qwen2, qwen3, phi3,
//! gemma3) on the GPU.
//!
//! Weights are uploaded once at load, in their quantized form. The KV cache lives on the GPU
//! (one K and one V buffer per layer, f16 as in llama.cpp: half the memory of f32, and the
//! same rounding of keys and values as the reference) and holds several sequences, one per
//! slot of `ctx` positions. A forward pass runs the tokens of one or more sequences as the
//! rows of one batch: it writes the token ids, each row's position and slot and a few
//! counters, records every kernel of every layer, and reads back the logits of each
//! sequence's last token: only ids, positions and logits cross the bus.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use xpu_gguf::{GgufError, GgufFile};

use crate::device::{DeviceOptions, Gpu};
use crate::kernels::{self, Kernels};
use crate::quant::{
    FusedInput, GetRowsOp, GpuWeight, MatmulMode, MatmulOp, RopeBuffers, WeightType,
};
use crate::record::{Recorder, Timer};
use crate::VulkanError;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Adapter selection and binding size.
    pub device: DeviceOptions,
    /// Context length (KV cache size) in tokens; `None`: the model's, capped at
    /// [`DEFAULT_MAX_CTX`] and at what fits the device's memory (see [`choose_context`]).
    pub ctx: Option<usize>,
    /// Most tokens one GPU submission processes; longer prompts are split (prefill batch).
    pub max_batch: usize,
    /// Sequences the KV cache holds at once (slots of `ctx` positions each); 0 counts as 1.
    pub slots: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: DeviceOptions::default(),
            ctx: None,
            max_batch: 256,
            slots: 1,
        }
    }
}

/// Cap on the context when the caller gives none. Llama 3.x files declare 131072 tokens,
/// whose KV cache alone would not fit most GPUs; few conversations need more than this.
pub const DEFAULT_MAX_CTX: usize = 8192;
/// Share of the device-local memory heap that the model may fill: the rest is left to the
/// driver, the display and other programs.
const MEMORY_SHARE: f64 = 0.9;
/// A context chosen to fit the memory is rounded down to a multiple of this.
const CTX_GRANULE: usize = 256;

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Per-pair divisors of the RoPE frequencies (`rope_freqs.weight`, Llama 3.1/3.2).
    pub rope_freq_factors: Option<Vec<f32>>,
    /// RoPE pairs (i, i + d/2) instead of (2i, 2i + 1).
    pub rope_neox: bool,
    /// Context length the model was trained for.
    pub train_ctx: usize,
    /// `general.architecture`.
    pub arch: String,
    /// The feed-forward activation is GELU (tanh approximation, GeGLU) instead of SiLU.
    pub gelu: bool,
    /// The token embeddings are multiplied by this (Gemma: sqrt(n_embd)).
    pub embedding_scale: Option<f32>,
    /// Interleaved sliding-window layers (Gemma 3).
    pub sliding_window: Option<SlidingWindow>,
}

/// Layers that attend only the last `window` positions, with their own RoPE base.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    pub window: usize,
    /// Which layers slide (the others attend every position).
    pub layers: Vec<bool>,
    pub rope_base: f32,
}

/// The architectures this engine runs; others are refused by name at load.
pub const ARCHITECTURES: [&str; 5] = ["llama", "qwen2", "qwen3", "phi3", "gemma3"];

/// Uniform updated before each submission (`Step` in the shaders).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct StepParams {
    pub n_tokens: u32,
    /// Rows whose logits the step computes (one per sequence: its last token).
    pub out_rows: u32,
    /// Chunks of positions attention splits each (head, token) into, and their length.
    pub attn_chunks: u32,
    pub attn_chunk_len: u32,
}

/// Most chunks per (head, token): each costs a partial result to write and to combine.
pub(crate) const ATTENTION_MAX_CHUNKS: usize = 32;
/// Positions of one tile of the attention kernel (`tile_groups` in attention.wgsl): chunks
/// are a multiple of it, so that no workgroup loads a tile of which it uses a few positions.
fn attention_tile(head_dim: usize) -> usize {
    8 * (64 / (head_dim / 4)).min(4)
}

/// How attention splits the positions of a step of `n` tokens whose longest sequence holds
/// `len` positions (flash-decoding): `(chunks, positions per chunk)`, the same for every
/// token (a token's chunks past its own position are empty). Prompt batches already have a
/// workgroup per (head, token) and get one chunk; a decoded token gets up to
/// ATTENTION_MAX_CHUNKS. `target`: the workgroups a step aims for
/// (`Kernels::attention_groups`).
fn attention_split(
    n: usize,
    len: usize,
    n_head: usize,
    target: usize,
    tile: usize,
) -> (usize, usize) {
    let chunk_len = len
        .div_ceil(attention_chunks_wanted(n, n_head, target))
        .div_ceil(tile)
        * tile;
    (len.div_ceil(chunk_len), chunk_len)
}

/// Chunks a step of `n` tokens aims for, an upper bound of what `attention_split` gives at
/// any length (the size of the partial-results buffer depends on it).
fn attention_chunks_wanted(n: usize, n_head: usize, target: usize) -> usize {
    target.div_ceil(n * n_head).clamp(1, ATTENTION_MAX_CHUNKS)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormParams {
    n: u32,
    eps: f32,
    _pad: u32,
    accumulate: u32,
}

/// head_norm.wgsl's parameters.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct HeadNormParams {
    hd: u32,
    heads: u32,
    offset: u32,
    stride: u32,
    eps: f32,
    _pad: [u32; 3],
}

/// elementwise.wgsl's parameters.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ElementwiseParams {
    width: u32,
    offset: u32,
    stride: u32,
    factor: f32,
}

/// rope.wgsl's parameters (also read by `matvec_norm_rope` in matmul.wgsl).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RopeParams {
    pub n_head: u32,
    pub n_kv: u32,
    pub hd: u32,
    pub neox: u32,
    pub cache_base: u32,
    /// Positions per K/V head in the caches: every slot's.
    pub ctx: u32,
    pub _pad: [u32; 2],
}

/// attention.wgsl's parameters.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AttnParams {
    pub n_head: u32,
    pub n_kv: u32,
    pub hd: u32,
    pub cache_base: u32,
    pub ctx: u32,
    pub scale: f32,
    /// Sliding-window layers: positions attended per token; 0: all.
    pub window: u32,
    pub _pad: u32,
}

impl AttnParams {
    /// The parameters of a model's attention over caches of `ctx` positions per K/V head (all
    /// slots together).
    pub fn new(n_head: usize, n_kv: usize, head_dim: usize, ctx: usize) -> AttnParams {
        AttnParams {
            n_head: n_head as u32,
            n_kv: n_kv as u32,
            hd: head_dim as u32,
            cache_base: 0,
            ctx: ctx as u32,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: 0,
            _pad: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct EltParams {
    n: u32,
    /// silu_mul: the [gate | up] rows are interleaved (see `matvec_norm_glu`).
    interleaved: u32,
    /// GELU instead of SiLU (GeGLU).
    gelu: u32,
    _pad: u32,
}

struct LayerOps {
    /// RMSNorm of the prompt path; a decode step fuses it into the q|k|v product.
    attn_norm: wgpu::BindGroup,
    /// One op when q, k and v have the same type (fused at upload), else three.
    qkv: Vec<MatmulOp>,
    /// Qwen2's q|k|v biases, added after the product.
    qkv_bias: Option<wgpu::BindGroup>,
    /// Per-head RMSNorm of q and of k (Qwen3, Gemma 3), before RoPE.
    qk_norm: Option<[wgpu::BindGroup; 2]>,
    /// Gemma's RMSNorms of the attention and FFN outputs, added into the residual stream
    /// (the products then write `normed` instead of adding into the hidden state).
    post_attn_norm: Option<wgpu::BindGroup>,
    post_ffn_norm: Option<wgpu::BindGroup>,
    /// The decode q|k|v product also does RoPE and the K/V store (one op, interleaved pairs).
    qkv_rope: bool,
    rope: wgpu::BindGroup,
    attention: wgpu::BindGroup,
    attention_combine: wgpu::BindGroup,
    o: MatmulOp,
    ffn_norm: wgpu::BindGroup,
    gate_up: Vec<MatmulOp>,
    /// The decode gate|up product also does SiLU·mul (one op, interleaved rows whose pairs
    /// never straddle a chunk).
    glu_fused: bool,
    silu_mul: wgpu::BindGroup,
    down: MatmulOp,
}

/// A llama model whose weights and KV cache live on a Vulkan device.
pub struct LlamaModel {
    gpu: Gpu,
    kernels: Kernels,
    cfg: LlamaConfig,
    /// Positions per slot.
    ctx: usize,
    slots: usize,
    max_batch: usize,
    ids: wgpu::Buffer,
    /// Per token of a step: (position in its sequence, first cache position of its slot).
    rows: wgpu::Buffer,
    /// The tokens whose logits a step computes (each sequence's last), as indices into the step.
    logit_rows: wgpu::Buffer,
    step: wgpu::Buffer,
    logits: wgpu::Buffer,
    staging: wgpu::Buffer,
    embed: GetRowsOp,
    /// Scaling of the embeddings (Gemma).
    embed_scale: Option<wgpu::BindGroup>,
    layers: Vec<LayerOps>,
    final_norm: wgpu::BindGroup,
    output: MatmulOp,
    /// The output product for a one-token step: RMSNorm fused, reading the hidden state.
    output_fused: MatmulOp,
    /// Tokens currently in each slot of the KV cache.
    cached: Vec<usize>,
    /// The work of a step of this shape, recorded ahead (see `forward_batch`). Its inputs
    /// (token ids, rows, step uniform) are written when it is submitted.
    next_step: Option<(PassShape, wgpu::CommandBuffer)>,
    weight_bytes: u64,
    timing: ForwardTiming,
}

/// One sequence's share of a batched forward pass ([`LlamaModel::forward_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqChunk<'a> {
    /// The KV-cache slot that holds the sequence, `0..slots()`.
    pub slot: usize,
    /// Tokens at positions `start..start + tokens.len()` of that sequence (at least one).
    pub tokens: &'a [u32],
    pub start: usize,
}

/// What the recorded commands of one GPU pass depend on: its token count, the positions of
/// its longest sequence (the attention split) and how many rows of logits it computes. Two
/// passes of one shape run the same commands on other inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PassShape {
    tokens: usize,
    len: usize,
    logit_rows: usize,
}

/// The inputs of one GPU pass: at most `max_batch` tokens of one or more sequences.
#[derive(Default)]
struct PassInputs {
    ids: Vec<u32>,
    /// Per token: (position in its sequence, first cache position of its slot).
    rows: Vec<[u32; 2]>,
    /// Tokens (indices into this pass) whose logits are read: each chunk's last.
    logit_rows: Vec<u32>,
}

impl PassInputs {
    fn shape(&self) -> PassShape {
        PassShape {
            tokens: self.ids.len(),
            len: self
                .rows
                .iter()
                .map(|r| r[0] as usize + 1)
                .max()
                .unwrap_or(0),
            logit_rows: self.logit_rows.len(),
        }
    }
}

/// Where the host time of the last forward pass went (for benchmarks).
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardTiming {
    /// Seconds spent before waiting: writing the inputs, recording and submitting the
    /// command buffers, and recording the next decode step ahead (see `forward`).
    pub record_s: f64,
    /// Seconds spent waiting for the GPU and reading the logits back.
    pub wait_s: f64,
}

/// The tensors of a mapped GGUF file, as raw bytes and checked against this engine's needs.
struct GgufReader<'a> {
    path: PathBuf,
    gguf: &'a GgufFile,
    content: &'a gguf_file::Content,
}

impl<'a> GgufReader<'a> {
    fn new(gguf: &'a GgufFile) -> GgufReader<'a> {
        GgufReader {
            path: gguf.path().to_path_buf(),
            gguf,
            content: &gguf.content,
        }
    }

    fn unsupported(&self, detail: String) -> VulkanError {
        VulkanError::UnsupportedModel {
            path: self.path.clone(),
            detail,
        }
    }

    fn meta_u32(&self, key: &str) -> Result<usize, VulkanError> {
        let v = self
            .content
            .metadata
            .get(key)
            .ok_or_else(|| self.unsupported(format!("metadata key {key} is missing")))?;
        v.to_u32()
            .map(|x| x as usize)
            .map_err(|e| self.unsupported(format!("metadata key {key}: {e}")))
    }

    fn meta_f32(&self, key: &str) -> Result<Option<f32>, VulkanError> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(v) => v
                .to_f32()
                .map(Some)
                .map_err(|e| self.unsupported(format!("metadata key {key}: {e}"))),
        }
    }

    fn config(&self) -> Result<LlamaConfig, VulkanError> {
        let arch = self
            .content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        if !ARCHITECTURES.contains(&arch.as_str()) {
            return Err(self.unsupported(format!(
                "architecture '{arch}' is not supported by the Vulkan engine (supported: {}); use --device cpu",
                ARCHITECTURES.join(", ")
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let n_embd = self.meta_u32(&key("embedding_length"))?;
        let n_head = self.meta_u32(&key("attention.head_count"))?;
        let n_kv_head = self
            .meta_u32(&key("attention.head_count_kv"))
            .unwrap_or(n_head);
        // Heads may be narrower or wider than n_embd / n_head where the file says so
        // (attention.key_length, e.g. Gemma 3 and Qwen3).
        let key_length = self.meta_u32(&key("attention.key_length")).ok();
        if n_head == 0
            || n_kv_head == 0
            || n_head % n_kv_head != 0
            || (key_length.is_none() && n_embd % n_head != 0)
        {
            return Err(self.unsupported(format!(
                "inconsistent heads: {n_head} heads, {n_kv_head} kv heads, width {n_embd}"
            )));
        }
        let head_dim = key_length.unwrap_or(n_embd / n_head);
        if head_dim == 0 || head_dim > 256 || !head_dim.is_multiple_of(4) {
            return Err(self.unsupported(format!(
                "head dimension {head_dim} (the kernels handle multiples of 4 up to 256)"
            )));
        }
        let value_length = self
            .meta_u32(&key("attention.value_length"))
            .unwrap_or(head_dim);
        if value_length != head_dim {
            return Err(self.unsupported(format!(
                "values of {value_length} dims with keys of {head_dim} (the kernels need them equal)"
            )));
        }
        let rope_dim = self
            .meta_u32(&key("rope.dimension_count"))
            .unwrap_or(head_dim);
        if rope_dim != head_dim {
            return Err(self.unsupported(format!(
                "partial rotary embedding ({rope_dim} of {head_dim} dims)"
            )));
        }
        if self.content.metadata.contains_key(&key("expert_count")) {
            return Err(self.unsupported("mixture-of-experts models are not supported".into()));
        }
        let vocab = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| self.unsupported("tensor token_embd.weight is missing".into()))?;
        let n_layer = self.meta_u32(&key("block_count"))?;
        let gemma = arch == "gemma3";
        Ok(LlamaConfig {
            n_layer,
            n_embd,
            n_head,
            n_kv_head,
            head_dim,
            n_ff: self.meta_u32(&key("feed_forward_length"))?,
            vocab,
            rms_eps: self
                .meta_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_base: self.meta_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
            rope_freq_factors: None,
            // llama.cpp rotates pairs (i, i + d/2) for every architecture here but llama.
            rope_neox: arch != "llama",
            train_ctx: self
                .meta_u32(&key("context_length"))
                .unwrap_or(DEFAULT_MAX_CTX),
            gelu: gemma,
            embedding_scale: gemma.then(|| (n_embd as f32).sqrt()),
            sliding_window: if gemma {
                self.sliding_window(&arch, n_layer)?
            } else {
                None
            },
            arch,
        })
    }

    /// Gemma 3's sliding-window layers, as llama.cpp reads them: a window of
    /// `attention.sliding_window` positions (none: every layer is global) on the layers `l`
    /// with `l % pattern < pattern - 1` (`attention.sliding_window_pattern`, default 6, or
    /// one flag per layer), with RoPE base `rope.freq_base_swa` (default 10000).
    fn sliding_window(
        &self,
        arch: &str,
        n_layer: usize,
    ) -> Result<Option<SlidingWindow>, VulkanError> {
        let window = match self.meta_u32(&format!("{arch}.attention.sliding_window")) {
            Ok(0) | Err(_) => return Ok(None),
            Ok(w) => w,
        };
        let pattern_key = format!("{arch}.attention.sliding_window_pattern");
        let layers = match self.content.metadata.get(&pattern_key) {
            Some(gguf_file::Value::Array(flags)) => {
                let flags: Vec<bool> = flags
                    .iter()
                    .map(|f| f.to_bool())
                    .collect::<Result<_, _>>()
                    .map_err(|e| self.unsupported(format!("metadata key {pattern_key}: {e}")))?;
                if flags.len() != n_layer {
                    return Err(self.unsupported(format!(
                        "metadata key {pattern_key}: {} flags for {n_layer} layers",
                        flags.len()
                    )));
                }
                flags
            }
            _ => {
                let pattern = self.meta_u32(&pattern_key).unwrap_or(6);
                (0..n_layer)
                    .map(|l| pattern == 0 || l % pattern < pattern - 1)
                    .collect()
            }
        };
        Ok(Some(SlidingWindow {
            window,
            layers,
            rope_base: self
                .meta_f32(&format!("{arch}.rope.freq_base_swa"))?
                .unwrap_or(10000.0),
        }))
    }

    /// A tensor's type, shape and bytes (a slice of the mapped file).
    fn raw(&self, name: &str) -> Result<(WeightType, Vec<usize>, &'a [u8]), VulkanError> {
        let (info, data) = self
            .gguf
            .tensor(name)
            .ok_or_else(|| VulkanError::UnsupportedModel {
                path: self.path.clone(),
                detail: format!("tensor {name} is missing"),
            })?;
        let dims = info.shape.dims().to_vec();
        let dtype = info.ggml_dtype;
        let ty = WeightType::for_tensor(name, dtype)?;
        Ok((ty, dims, data))
    }

    /// A 1-D tensor (norm weights) as f32 values.
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, VulkanError> {
        let (ty, dims, raw) = self.raw(name)?;
        if dims != [len] {
            return Err(VulkanError::Tensor {
                name: name.into(),
                detail: format!("shape {dims:?}, expected [{len}]"),
            });
        }
        match ty {
            WeightType::F32 => Ok(raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            WeightType::F16 => Ok(raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            WeightType::BF16 => Ok(raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            other => Err(VulkanError::Tensor {
                name: name.into(),
                detail: format!("norm weights of type {other:?} (expected F32, F16 or BF16)"),
            }),
        }
    }

    /// A 2-D weight `[rows, k]` uploaded to the GPU.
    fn matrix(
        &mut self,
        gpu: &Gpu,
        name: &str,
        rows: usize,
        k: usize,
    ) -> Result<GpuWeight, VulkanError> {
        let (ty, dims, raw) = self.raw(name)?;
        if dims != [rows, k] {
            return Err(VulkanError::Tensor {
                name: name.into(),
                detail: format!("shape {dims:?}, expected [{rows}, {k}]"),
            });
        }
        GpuWeight::upload(gpu, name, ty, rows, k, raw)
    }

    /// Matrices `[rows_i, k]` whose outputs go side by side in one output row. When all have
    /// the same type they are uploaded as one matrix (one dispatch instead of several);
    /// otherwise each is uploaded alone. Returns each uploaded matrix with its output offset.
    /// `interleave` (two parts of equal rows, uploaded as one): rows alternate, part 0's row
    /// j at 2j and part 1's at 2j + 1 (the gate|up matrix, see `matvec_norm_glu`).
    fn side_by_side(
        &mut self,
        gpu: &Gpu,
        label: &str,
        parts: &[(String, usize)],
        k: usize,
        interleave: bool,
    ) -> Result<Vec<(GpuWeight, u32)>, VulkanError> {
        let mut raws = Vec::with_capacity(parts.len());
        for (name, rows) in parts {
            let (ty, dims, raw) = self.raw(name)?;
            if dims != [*rows, k] {
                return Err(VulkanError::Tensor {
                    name: name.clone(),
                    detail: format!("shape {dims:?}, expected [{rows}, {k}]"),
                });
            }
            raws.push((name, ty, *rows, raw));
        }
        if raws.iter().all(|r| r.1 == raws[0].1) {
            let ty = raws[0].1;
            let rows: usize = raws.iter().map(|r| r.2).sum();
            let mut all = Vec::with_capacity(raws.iter().map(|r| r.3.len()).sum());
            if interleave && raws.len() == 2 && raws[0].2 == raws[1].2 {
                let row = ty.row_bytes(k);
                for (a, b) in raws[0].3.chunks_exact(row).zip(raws[1].3.chunks_exact(row)) {
                    all.extend_from_slice(a);
                    all.extend_from_slice(b);
                }
            } else {
                for r in &raws {
                    all.extend_from_slice(r.3);
                }
            }
            return Ok(vec![(GpuWeight::upload(gpu, label, ty, rows, k, &all)?, 0)]);
        }
        let mut out = Vec::with_capacity(raws.len());
        let mut offset = 0;
        for (name, ty, rows, raw) in raws {
            out.push((
                GpuWeight::upload(gpu, name, ty, rows, k, raw)?,
                offset as u32,
            ));
            offset += rows;
        }
        Ok(out)
    }

    /// A fused `[gate | up]` matrix (Phi-3's ffn_up: `2 * half` rows, gate first) uploaded
    /// with its rows interleaved as `side_by_side` does for separate gate and up matrices.
    fn interleaved_halves(
        &mut self,
        gpu: &Gpu,
        name: &str,
        half: usize,
        k: usize,
    ) -> Result<GpuWeight, VulkanError> {
        let (ty, dims, raw) = self.raw(name)?;
        if dims != [2 * half, k] {
            return Err(VulkanError::Tensor {
                name: name.into(),
                detail: format!("shape {dims:?}, expected [{}, {k}]", 2 * half),
            });
        }
        let row = ty.row_bytes(k);
        let (gate, up) = raw.split_at(half * row);
        let mut all = Vec::with_capacity(raw.len());
        for (a, b) in gate.chunks_exact(row).zip(up.chunks_exact(row)) {
            all.extend_from_slice(a);
            all.extend_from_slice(b);
        }
        GpuWeight::upload(gpu, name, ty, 2 * half, k, &all)
    }

    /// Bytes of all tensors, the weights to upload.
    fn tensor_bytes(&self) -> u64 {
        self.content
            .tensor_infos
            .values()
            .map(|t| {
                (t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size()) as u64
            })
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn types(&self) -> Result<Vec<WeightType>, VulkanError> {
        let mut out = Vec::new();
        for (name, info) in &self.content.tensor_infos {
            if info.shape.dims().len() != 2 {
                continue;
            }
            let ty = WeightType::for_tensor(name, info.ggml_dtype)?;
            if !out.contains(&ty) {
                out.push(ty);
            }
        }
        Ok(out)
    }
}

/// Cos/sin of every (position, pair), computed as ggml's rope does (and the CPU engine): the
/// angle of pair i is the position times i repeated f32 multiplications by base^(-2/dim),
/// divided by the pair's frequency factor when the model has them (`rope_freqs.weight`), so
/// that the angles round as llama.cpp's do.
pub(crate) fn rope_table(
    ctx: usize,
    head_dim: usize,
    base: f32,
    factors: Option<&[f32]>,
) -> Vec<f32> {
    let half = head_dim / 2;
    let theta_scale = base.powf(-2.0 / head_dim as f32);
    let mut out = Vec::with_capacity(ctx * head_dim);
    for pos in 0..ctx {
        let mut theta = pos as f32;
        for i in 0..half {
            let a = factors.map_or(theta, |f| theta / f[i]);
            out.push(a.cos());
            out.push(a.sin());
            theta *= theta_scale;
        }
    }
    out
}

/// What a model needs of the device's memory: the weights, the buffers of a forward pass,
/// the KV cache per position of every slot, and the RoPE table per context position.
#[derive(Debug, Clone, Copy)]
struct MemoryNeeds {
    weights: u64,
    activations: u64,
    /// K and V of every layer for one position of one slot.
    kv_per_token: u64,
    /// The cos/sin tables for one context position (shared by the slots).
    rope_per_token: u64,
    /// One layer's K (or V) cache for one position of one slot, and the RoPE table's bytes
    /// for one position: each of these buffers must fit one storage binding.
    kv_layer_per_token: u64,
    rope_table_per_token: u64,
    slots: u64,
}

impl MemoryNeeds {
    fn new(cfg: &LlamaConfig, weights: u64, max_batch: usize, slots: usize) -> MemoryNeeds {
        let (d, hd, nh, nkv, ff) = (
            cfg.n_embd as u64,
            cfg.head_dim as u64,
            cfg.n_head as u64,
            cfg.n_kv_head as u64,
            cfg.n_ff as u64,
        );
        let (b, s) = (max_batch as u64, slots as u64);
        // hidden, normed, q|k|v, attention out, gate|up, activation (f32) per batch token;
        // per slot the last hidden state, the logits and their staging copy; the attention
        // partials (bounded by 32 chunks).
        let activations = b * (2 * d + (nh + 2 * nkv) * hd + nh * hd + 3 * ff) * 4
            + s * (d + 2 * cfg.vocab as u64) * 4
            + b * ATTENTION_MAX_CHUNKS as u64 * nh * (hd + 4) * 4;
        // K and V in f16 for every layer, and the f32 cos/sin of every pair.
        let kv_layer = nkv * hd * 2;
        let rope_table = hd * 4;
        MemoryNeeds {
            weights,
            activations,
            kv_per_token: 2 * cfg.n_layer as u64 * kv_layer,
            // Sliding-window layers have their own table.
            rope_per_token: rope_table * (1 + cfg.sliding_window.is_some() as u64),
            kv_layer_per_token: kv_layer,
            rope_table_per_token: rope_table,
            slots: s,
        }
    }

    /// Bytes per position of a slot's context: every slot's K and V, and the RoPE tables.
    fn per_token(&self) -> u64 {
        self.slots * self.kv_per_token + self.rope_per_token
    }

    /// Bytes per context position of the largest single buffer, which must fit one binding.
    fn per_token_binding(&self) -> u64 {
        (self.slots * self.kv_layer_per_token).max(self.rope_table_per_token)
    }

    fn total(&self, ctx: usize) -> u64 {
        self.weights + self.activations + ctx as u64 * self.per_token()
    }

    /// What to lower when `ctx` positions per slot do not fit (`fits`: the most that do).
    fn lower_hint(&self, fits: usize) -> String {
        if self.slots == 1 {
            format!("use --ctx {fits} or less")
        } else {
            format!(
                "use --ctx {fits} or less for {} sequences (or --kv-cache-tokens {} or less), or fewer sequences (--parallel)",
                self.slots,
                fits as u64 * self.slots
            )
        }
    }
}

/// The context length per slot to allocate. `requested`: the caller's `--ctx`, which must
/// fit; without it, the model's own context capped at [`DEFAULT_MAX_CTX`], and lower where
/// the weights plus the KV cache of every slot would not fit `memory` (the bytes the model
/// may use; `None` when the driver does not tell) or a layer's cache would not fit one
/// storage binding (`max_binding`). Logs the choice and the reason. Weights that do not fit
/// at all are an error whatever the context.
fn choose_context(
    requested: Option<usize>,
    train_ctx: usize,
    needs: &MemoryNeeds,
    memory: Option<u64>,
    max_binding: u64,
) -> Result<usize, VulkanError> {
    let fixed = needs.weights + needs.activations;
    let per_token = needs.per_token();
    let slots = needs.slots;
    if let Some(available) = memory {
        if fixed + CTX_GRANULE as u64 * per_token > available {
            let (what, hint) = if fixed + CTX_GRANULE as u64 * needs.rope_per_token > available
                || slots == 1
            {
                (
                    format!(
                        "the weights ({} bytes) and the buffers of a forward pass",
                        needs.weights
                    ),
                    "use a smaller or more quantized model, or --device cpu".to_string(),
                )
            } else {
                (
                    format!(
                        "the weights ({} bytes) and the KV cache of {slots} sequences of {CTX_GRANULE} tokens",
                        needs.weights
                    ),
                    "serve fewer sequences at once (--parallel), or use a smaller model or --device cpu".to_string(),
                )
            };
            return Err(VulkanError::DoesNotFit {
                what,
                needed: needs.total(CTX_GRANULE),
                available,
                hint,
            });
        }
    }
    let binding_ctx = (max_binding / needs.per_token_binding()) as usize;
    let memory_ctx = memory.map(|m| ((m - fixed) / per_token) as usize);
    if let Some(ctx) = requested {
        if let Some(available) = memory.filter(|_| memory_ctx.is_some_and(|m| ctx > m)) {
            let what = if slots == 1 {
                format!(
                    "--ctx {ctx} (weights plus a KV cache of {} bytes)",
                    ctx as u64 * per_token
                )
            } else {
                format!(
                    "--ctx {ctx} for each of {slots} sequences (weights plus a KV cache of {} bytes)",
                    ctx as u64 * per_token
                )
            };
            return Err(VulkanError::DoesNotFit {
                what,
                needed: needs.total(ctx),
                available,
                hint: needs.lower_hint(memory_ctx.unwrap_or(0)),
            });
        }
        if ctx > binding_ctx {
            return Err(VulkanError::DoesNotFit {
                what: if slots == 1 {
                    format!("--ctx {ctx} (one layer's K cache in one storage binding)")
                } else {
                    format!("--ctx {ctx} for each of {slots} sequences (one layer's K cache of every sequence in one storage binding)")
                },
                needed: ctx as u64 * needs.per_token_binding(),
                available: max_binding,
                hint: needs.lower_hint(binding_ctx),
            });
        }
        tracing::info!(ctx, slots, needed = needs.total(ctx), available = ?memory, "context: --ctx as given");
        return Ok(ctx);
    }
    let wanted = train_ctx.min(DEFAULT_MAX_CTX);
    let fits = memory_ctx.unwrap_or(usize::MAX).min(binding_ctx);
    let ctx = if wanted <= fits {
        wanted
    } else {
        fits / CTX_GRANULE * CTX_GRANULE
    };
    if ctx == 0 {
        return Err(VulkanError::DoesNotFit {
            what: format!(
                "a context of {CTX_GRANULE} tokens for each of {slots} sequences (one layer's K cache of every sequence in one storage binding)"
            ),
            needed: CTX_GRANULE as u64 * needs.per_token_binding(),
            available: max_binding,
            hint: if slots == 1 {
                "use --device cpu".into()
            } else {
                "serve fewer sequences at once (--parallel), or use --device cpu".into()
            },
        });
    }
    let reason = if ctx == train_ctx {
        "the model's own context".to_string()
    } else if ctx == DEFAULT_MAX_CTX {
        format!("the model's {train_ctx} capped at {DEFAULT_MAX_CTX}; pass --ctx for more")
    } else if memory_ctx.is_some_and(|m| m < binding_ctx) {
        format!(
            "the most that fits the device's memory for {slots} sequences ({} bytes usable, {} of them for the weights)",
            memory.unwrap_or(0),
            needs.weights
        )
    } else {
        format!("the most whose per-layer K/V cache of {slots} sequences fits one storage binding ({max_binding} bytes)")
    };
    tracing::info!(
        ctx,
        slots,
        model_ctx = train_ctx,
        kv_and_rope_bytes = ctx as u64 * per_token,
        "context {ctx}: {reason}"
    );
    Ok(ctx)
}

fn elementwise_groups(total: usize) -> u32 {
    (total.div_ceil(kernels::WORKGROUP as usize) as u32).clamp(1, kernels::ELEMENTWISE_GROUPS)
}

impl LlamaModel {
    /// Loads a llama-architecture GGUF file onto the selected Vulkan device.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<LlamaModel, VulkanError> {
        let gguf = GgufFile::open(path).map_err(|e| VulkanError::ModelFile {
            path: path.to_path_buf(),
            detail: match e {
                GgufError::Io(e) => e.to_string(),
                e => format!("not a readable GGUF file: {e}"),
            },
        })?;
        Self::from_gguf(&gguf, opts)
    }

    /// Loads a GGUF file that the caller has opened (its header parsed and checked once,
    /// by `xpu-gguf`) onto the selected Vulkan device.
    pub fn from_gguf(gguf: &GgufFile, opts: &LoadOptions) -> Result<LlamaModel, VulkanError> {
        let mut gguf = GgufReader::new(gguf);
        let mut cfg = gguf.config()?;
        let types = gguf.types()?;
        if opts.ctx == Some(0) {
            return Err(VulkanError::InvalidInput("context length 0".into()));
        }
        if gguf.has("rope_freqs.weight") {
            cfg.rope_freq_factors = Some(gguf.vector("rope_freqs.weight", cfg.head_dim / 2)?);
        }
        let gpu = Gpu::new(&opts.device)?;
        // Check what the weights and the cache need before anything is uploaded.
        let slots = opts.slots.max(1);
        let needs = MemoryNeeds::new(&cfg, gguf.tensor_bytes(), opts.max_batch.max(1), slots);
        let memory = match (gpu.memory_bytes(), opts.device.memory_limit) {
            (Some(heap), limit) => {
                Some(((heap as f64 * MEMORY_SHARE) as u64).min(limit.unwrap_or(u64::MAX)))
            }
            (None, limit) => limit,
        };
        let ctx = choose_context(opts.ctx, cfg.train_ctx, &needs, memory, gpu.max_binding())?;
        let max_batch = opts.max_batch.clamp(1, ctx);
        let kernels = Kernels::new(&gpu, &types)?;
        let (d, hd, nh, nkv, ff) = (
            cfg.n_embd,
            cfg.head_dim,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.n_ff,
        );

        let f = 4u64;
        let b = max_batch as u64;
        let ids = gpu.storage("token ids", b * 4)?;
        let rows = gpu.storage("token positions and slots", b * 8)?;
        let logit_rows = gpu.storage("logit rows", slots as u64 * 4)?;
        let step = gpu.uniform_init(
            "step",
            bytemuck::bytes_of(&StepParams {
                n_tokens: 0,
                out_rows: 0,
                attn_chunks: 1,
                attn_chunk_len: 1,
            }),
        )?;
        let hidden = gpu.storage("hidden", b * d as u64 * f)?;
        let normed = gpu.storage("normed", b * d as u64 * f)?;
        let qkv_width = (nh + 2 * nkv) * hd;
        let qkv = gpu.storage("q|k|v", b * qkv_width as u64 * f)?;
        let attn = gpu.storage("attention out", b * (nh * hd) as u64 * f)?;
        let gate_up = gpu.storage("ffn gate|up", b * 2 * ff as u64 * f)?;
        let act = gpu.storage("ffn activation", b * ff as u64 * f)?;
        // Per sequence of a step: its last token's normalised hidden state and logits.
        let s = slots as u64;
        let last = gpu.storage("last hidden", s * d as u64 * f)?;
        let logits = gpu.storage("logits", s * cfg.vocab as u64 * f)?;
        let staging = gpu.buffer_map_read("logits staging", s * cfg.vocab as u64 * f)?;
        // Sliding-window layers rotate with their own base (and no frequency factors).
        let swa_rope_table = match &cfg.sliding_window {
            Some(swa) => Some(gpu.storage_init(
                "rope cos/sin (sliding-window layers)",
                bytemuck::cast_slice(&rope_table(ctx, hd, swa.rope_base, None)),
            )?),
            None => None,
        };
        let table = rope_table(ctx, hd, cfg.rope_base, cfg.rope_freq_factors.as_deref());
        let rope_table = gpu.storage_init("rope cos/sin", bytemuck::cast_slice(&table))?;
        // f16 K and V values: per K/V head, the slots' positions one after another.
        let cache_positions = slots * ctx;
        let cache_bytes = (nkv * cache_positions * hd) as u64 * 2;

        let mut weight_bytes = 0u64;
        let embd = gguf.matrix(&gpu, "token_embd.weight", cfg.vocab, d)?;
        let embed = GetRowsOp::new(&gpu, &kernels, &embd, &ids, &hidden, &step)?;
        let elementwise = |label: &str,
                           pipeline: &wgpu::ComputePipeline,
                           x: &wgpu::Buffer,
                           bias: Option<&wgpu::Buffer>,
                           params: ElementwiseParams|
         -> Result<wgpu::BindGroup, VulkanError> {
            let ubuf = gpu.uniform_init(label, bytemuck::bytes_of(&params))?;
            let mut entries = vec![(0, x), (2, &ubuf), (3, &step)];
            if let Some(b) = bias {
                entries.push((1, b));
            }
            Ok(kernels::bind(&gpu, pipeline, label, &entries))
        };
        let embed_scale = match cfg.embedding_scale {
            Some(factor) => Some(elementwise(
                "embedding scale",
                &kernels.scale,
                &hidden,
                None,
                ElementwiseParams {
                    width: d as u32,
                    offset: 0,
                    stride: d as u32,
                    factor,
                },
            )?),
            None => None,
        };
        // Partial results of split attention: hd + 4 floats per (token, chunk, head) slot (the
        // output, then a vec4 holding its max and sum), for the largest number of slots any
        // batch size can need.
        let part_slots = (1..=max_batch)
            .map(|n| n * attention_chunks_wanted(n, nh, kernels.attention_groups()))
            .max()
            .unwrap_or(1)
            * nh;
        let attn_part = gpu.storage("attention partials", (part_slots * (hd + 4)) as u64 * f)?;

        let norm_op = |name: &str,
                       weights: &[f32],
                       x: &wgpu::Buffer,
                       y: &wgpu::Buffer,
                       accumulate: bool|
         -> Result<(wgpu::BindGroup, wgpu::Buffer), VulkanError> {
            let wbuf = gpu.storage_init(name, bytemuck::cast_slice(weights))?;
            let params = NormParams {
                n: d as u32,
                eps: cfg.rms_eps,
                _pad: 0,
                accumulate: accumulate as u32,
            };
            let ubuf = gpu.uniform_init("norm params", bytemuck::bytes_of(&params))?;
            let bg = kernels::bind(
                &gpu,
                &kernels.rmsnorm,
                name,
                &[(0, x), (1, &wbuf), (2, y), (3, &ubuf)],
            );
            Ok((bg, wbuf))
        };
        let residual = MatmulMode {
            accumulate: true,
            ..MatmulMode::default()
        };

        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{l}.{s}");
            let attn_norm_w = gguf.vector(&p("attn_norm.weight"), d)?;
            let ffn_norm_w = gguf.vector(&p("ffn_norm.weight"), d)?;
            // Phi-3 stores q|k|v as one matrix; the others as three, uploaded side by side.
            let qkv_w = if gguf.has(&p("attn_qkv.weight")) {
                vec![(gguf.matrix(&gpu, &p("attn_qkv.weight"), qkv_width, d)?, 0)]
            } else {
                gguf.side_by_side(
                    &gpu,
                    &p("attn_qkv"),
                    &[
                        (p("attn_q.weight"), nh * hd),
                        (p("attn_k.weight"), nkv * hd),
                        (p("attn_v.weight"), nkv * hd),
                    ],
                    d,
                    false,
                )?
            };
            // Qwen2's biases, as one [q | k | v] vector (a missing part is zero).
            let qkv_bias = if gguf.has(&p("attn_q.bias")) {
                let mut bias = Vec::with_capacity(qkv_width);
                for (part, len) in [
                    ("attn_q.bias", nh * hd),
                    ("attn_k.bias", nkv * hd),
                    ("attn_v.bias", nkv * hd),
                ] {
                    if gguf.has(&p(part)) {
                        bias.extend(gguf.vector(&p(part), len)?);
                    } else {
                        bias.resize(bias.len() + len, 0.0);
                    }
                }
                let buf = gpu.storage_init(&p("attn_qkv.bias"), bytemuck::cast_slice(&bias))?;
                Some(elementwise(
                    "q|k|v bias",
                    &kernels.add_bias,
                    &qkv,
                    Some(&buf),
                    ElementwiseParams {
                        width: qkv_width as u32,
                        offset: 0,
                        stride: qkv_width as u32,
                        factor: 1.0,
                    },
                )?)
            } else {
                None
            };
            // Per-head RMSNorm of q and k (Qwen3, Gemma 3), in place in the q|k|v rows.
            let qk_norm = if gguf.has(&p("attn_q_norm.weight")) {
                let mut groups = Vec::with_capacity(2);
                for (part, offset, heads) in [
                    ("attn_q_norm.weight", 0, nh),
                    ("attn_k_norm.weight", nh * hd, nkv),
                ] {
                    let w = gguf.vector(&p(part), hd)?;
                    let wbuf = gpu.storage_init(&p(part), bytemuck::cast_slice(&w))?;
                    let params = HeadNormParams {
                        hd: hd as u32,
                        heads: heads as u32,
                        offset: offset as u32,
                        stride: qkv_width as u32,
                        eps: cfg.rms_eps,
                        _pad: [0; 3],
                    };
                    let ubuf = gpu.uniform_init("head norm params", bytemuck::bytes_of(&params))?;
                    groups.push(kernels::bind(
                        &gpu,
                        &kernels.head_rmsnorm,
                        part,
                        &[(0, &qkv), (1, &wbuf), (2, &ubuf)],
                    ));
                }
                let [q, k]: [wgpu::BindGroup; 2] = groups.try_into().expect("two norms");
                Some([q, k])
            } else {
                None
            };
            // Gemma's norms of the attention and FFN outputs: the products then write
            // `normed`, and the norm adds into the hidden state.
            let post_norms = gguf.has(&p("post_attention_norm.weight"));
            let (mut post_attn_norm, mut post_ffn_norm) = (None, None);
            if post_norms {
                for (name, slot) in [
                    ("post_attention_norm.weight", &mut post_attn_norm),
                    ("post_ffw_norm.weight", &mut post_ffn_norm),
                ] {
                    let w = gguf.vector(&p(name), d)?;
                    *slot = Some(norm_op(&p(name), &w, &normed, &hidden, true)?.0);
                }
            }
            let (out_target, out_mode) = if post_norms {
                (&normed, MatmulMode::default())
            } else {
                (&hidden, residual)
            };
            let wo = gguf.matrix(&gpu, &p("attn_output.weight"), d, nh * hd)?;
            // Interleaved rows when gate and up are one matrix: a decode step's gate|up product
            // then does SiLU·mul itself (`matvec_norm_glu`). Phi-3 stores them as one.
            let gate_up_w = if gguf.has(&p("ffn_gate.weight")) {
                gguf.side_by_side(
                    &gpu,
                    &p("ffn_gate_up"),
                    &[(p("ffn_gate.weight"), ff), (p("ffn_up.weight"), ff)],
                    d,
                    true,
                )?
            } else {
                vec![(
                    gguf.interleaved_halves(&gpu, &p("ffn_up.weight"), ff, d)?,
                    0,
                )]
            };
            // The fused epilogues compute SiLU only; GeGLU runs its own kernel.
            let glu_fused = !cfg.gelu && gate_up_w.len() == 1 && gate_up_w[0].0.pairs_in_chunks();
            let wd = gguf.matrix(&gpu, &p("ffn_down.weight"), d, ff)?;
            for w in qkv_w
                .iter()
                .chain(&gate_up_w)
                .map(|(w, _)| w)
                .chain([&wo, &wd])
            {
                weight_bytes += (w.rows * w.ty.row_bytes(w.k)) as u64;
            }
            let (attn_norm, attn_norm_buf) =
                norm_op(&p("attn_norm"), &attn_norm_w, &hidden, &normed, false)?;
            let (ffn_norm, ffn_norm_buf) =
                norm_op(&p("ffn_norm"), &ffn_norm_w, &hidden, &normed, false)?;
            // The epilogue a decode step's fused product adds after the RMSNorm and the product.
            enum Epilogue<'b> {
                None,
                Rope(RopeBuffers<'b>),
                Glu(&'b wgpu::Buffer),
            }
            let side_by_side_ops = |label: &'static str,
                                    parts: &[(GpuWeight, u32)],
                                    y: &wgpu::Buffer,
                                    stride: usize,
                                    norm_w: &wgpu::Buffer,
                                    epilogue: Epilogue<'_>|
             -> Result<Vec<MatmulOp>, VulkanError> {
                parts
                    .iter()
                    .map(|(w, offset)| {
                        let mode = MatmulMode {
                            out_stride: stride as u32,
                            out_offset: *offset,
                            ..MatmulMode::default()
                        };
                        let (x, weight, eps) = (&hidden, norm_w, cfg.rms_eps);
                        let fused = match epilogue {
                            Epilogue::Rope(rope) => FusedInput::NormRope {
                                x,
                                weight,
                                eps,
                                rope,
                            },
                            Epilogue::Glu(act) => FusedInput::NormGlu {
                                x,
                                weight,
                                eps,
                                act,
                            },
                            Epilogue::None => FusedInput::Norm { x, weight, eps },
                        };
                        MatmulOp::new(
                            &gpu,
                            &kernels,
                            label,
                            w,
                            &normed,
                            y,
                            &step,
                            mode,
                            Some(fused),
                        )
                    })
                    .collect()
            };
            let kcache = gpu.storage(&format!("k cache {l}"), cache_bytes)?;
            let vcache = gpu.storage(&format!("v cache {l}"), cache_bytes)?;
            let rope_params = RopeParams {
                n_head: nh as u32,
                n_kv: nkv as u32,
                hd: hd as u32,
                neox: cfg.rope_neox as u32,
                cache_base: 0,
                ctx: cache_positions as u32,
                _pad: [0; 2],
            };
            let rope_u = gpu.uniform_init("rope params", bytemuck::bytes_of(&rope_params))?;
            let sliding = cfg.sliding_window.as_ref().filter(|swa| swa.layers[l]);
            let layer_rope_table = match (sliding, &swa_rope_table) {
                (Some(_), Some(table)) => table,
                _ => &rope_table,
            };
            let mut attn_params = AttnParams::new(nh, nkv, hd, cache_positions);
            attn_params.window = sliding.map_or(0, |swa| swa.window as u32);
            let attn_u = gpu.uniform_init("attention params", bytemuck::bytes_of(&attn_params))?;
            let interleaved = gate_up_w.len() == 1;
            let silu_u = gpu.uniform_init(
                "silu params",
                bytemuck::bytes_of(&EltParams {
                    n: ff as u32,
                    interleaved: interleaved as u32,
                    gelu: cfg.gelu as u32,
                    _pad: 0,
                }),
            )?;
            // A decode step rotates q and k and stores k and v in the q|k|v product itself when
            // it is one matrix with interleaved pairs that never straddle a chunk.
            // Biases and q/k norms come between the product and RoPE, so not then.
            let qkv_rope = !cfg.rope_neox
                && qkv_bias.is_none()
                && qk_norm.is_none()
                && qkv_w.len() == 1
                && qkv_w[0].0.pairs_in_chunks();
            let rope_buffers = RopeBuffers {
                kcache: &kcache,
                vcache: &vcache,
                cos_sin: layer_rope_table,
                params: &rope_u,
                rows: &rows,
            };
            layers.push(LayerOps {
                attn_norm,
                qkv: side_by_side_ops(
                    "q|k|v",
                    &qkv_w,
                    &qkv,
                    qkv_width,
                    &attn_norm_buf,
                    if qkv_rope {
                        Epilogue::Rope(rope_buffers)
                    } else {
                        Epilogue::None
                    },
                )?,
                qkv_rope,
                qkv_bias,
                qk_norm,
                post_attn_norm,
                post_ffn_norm,
                rope: kernels::bind(
                    &gpu,
                    &kernels.rope,
                    "rope",
                    &[
                        (0, &qkv),
                        (1, &kcache),
                        (2, &vcache),
                        (3, layer_rope_table),
                        (4, &rope_u),
                        (5, &step),
                        (6, &rows),
                    ],
                ),
                attention: kernels::bind(
                    &gpu,
                    &kernels.attention,
                    "attention",
                    &[
                        (0, &qkv),
                        (1, &kcache),
                        (2, &vcache),
                        (3, &attn),
                        (4, &attn_u),
                        (5, &step),
                        (6, &attn_part),
                        (7, &rows),
                    ],
                ),
                attention_combine: kernels::bind(
                    &gpu,
                    &kernels.attention_combine,
                    "attention combine",
                    &[(3, &attn), (4, &attn_u), (5, &step), (6, &attn_part)],
                ),
                o: MatmulOp::new(
                    &gpu,
                    &kernels,
                    "attn_output",
                    &wo,
                    &attn,
                    out_target,
                    &step,
                    out_mode,
                    None,
                )?,
                ffn_norm,
                gate_up: side_by_side_ops(
                    "ffn gate|up",
                    &gate_up_w,
                    &gate_up,
                    2 * ff,
                    &ffn_norm_buf,
                    if glu_fused {
                        Epilogue::Glu(&act)
                    } else {
                        Epilogue::None
                    },
                )?,
                glu_fused,
                silu_mul: kernels::bind(
                    &gpu,
                    &kernels.silu_mul,
                    "silu_mul",
                    &[(0, &gate_up), (1, &act), (2, &silu_u), (3, &step)],
                ),
                // With gate and up as two matrices ([gate | up] side by side), a decode step's
                // down product does the SiLU·mul on its input.
                down: MatmulOp::new(
                    &gpu,
                    &kernels,
                    "ffn_down",
                    &wd,
                    &act,
                    out_target,
                    &step,
                    out_mode,
                    (!interleaved && !cfg.gelu).then_some(FusedInput::Glu { x: &gate_up }),
                )?,
            });
        }
        let out_norm_w = gguf.vector("output_norm.weight", d)?;
        let final_norm_buf = gpu.storage_init("output_norm", bytemuck::cast_slice(&out_norm_w))?;
        let final_norm_u = gpu.uniform_init(
            "norm params",
            bytemuck::bytes_of(&NormParams {
                n: d as u32,
                eps: cfg.rms_eps,
                _pad: 0,
                accumulate: 0,
            }),
        )?;
        // The final norm of the rows whose logits are wanted, into `last` in their order.
        let final_norm = kernels::bind(
            &gpu,
            &kernels.rmsnorm_rows,
            "output_norm",
            &[
                (0, &hidden),
                (1, &final_norm_buf),
                (2, &last),
                (3, &final_norm_u),
                (5, &logit_rows),
            ],
        );
        // Models with tied embeddings (SmolLM2) have no output.weight.
        let out_w = if gguf.has("output.weight") {
            gguf.matrix(&gpu, "output.weight", cfg.vocab, d)?
        } else {
            embd
        };
        weight_bytes += (out_w.rows * out_w.ty.row_bytes(out_w.k)) as u64;
        let head = MatmulMode {
            logit_rows: true,
            exact_input: true,
            ..MatmulMode::default()
        };
        let output = MatmulOp::new(
            &gpu, &kernels, "output", &out_w, &last, &logits, &step, head, None,
        )?;
        let fused = FusedInput::Norm {
            x: &hidden,
            weight: &final_norm_buf,
            eps: cfg.rms_eps,
        };
        let output_fused = MatmulOp::new(
            &gpu,
            &kernels,
            "output",
            &out_w,
            &hidden,
            &logits,
            &step,
            head,
            Some(fused),
        )?;
        gpu.wait("uploading the weights")?;
        tracing::info!(
            adapter = %gpu.description(),
            layers = cfg.n_layer,
            ctx,
            slots,
            weight_bytes,
            "model loaded on the Vulkan device"
        );
        Ok(LlamaModel {
            gpu,
            kernels,
            cfg,
            ctx,
            slots,
            max_batch,
            ids,
            rows,
            logit_rows,
            step,
            logits,
            staging,
            embed,
            embed_scale,
            layers,
            final_norm,
            output,
            output_fused,
            cached: vec![0; slots],
            weight_bytes,
            timing: ForwardTiming::default(),
            next_step: None,
        })
    }

    /// Runs `tokens` at positions `start..start + tokens.len()` of the sequence in slot 0 and
    /// returns the logits of the last one. The slot must hold positions `0..start` (from
    /// earlier calls).
    pub fn forward(&mut self, tokens: &[u32], start: usize) -> Result<Vec<f32>, VulkanError> {
        let chunk = SeqChunk {
            slot: 0,
            tokens,
            start,
        };
        Ok(self.forward_batch(&[chunk])?.remove(0))
    }

    /// Runs the tokens of several sequences as one batch and returns the logits of each
    /// chunk's last token, in chunk order. Every matrix product takes the tokens of all
    /// chunks as its rows (each weight is read once per pass), RoPE and the K/V store use
    /// each token's own position and slot, and attention runs per token over its own slot's
    /// positions `0..=position`. Chunks name distinct slots, and each slot must hold the
    /// positions `0..start` of its chunk from earlier calls; what it held from `start` on is
    /// overwritten. More than `max_batch` tokens in all run as several passes in order.
    ///
    /// A sequence's logits do not depend on the other chunks beyond the float rounding of the
    /// kernels: a pass of one token uses the matrix-vector kernels, a pass of several the
    /// batched or tiled products, which sum in another order (see docs/vulkan.md).
    pub fn forward_batch(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<Vec<f32>>, VulkanError> {
        self.check_chunks(chunks)?;
        let started = std::time::Instant::now();
        // If a pass fails, only the positions before each chunk's start are known intact.
        for c in chunks {
            self.cached[c.slot] = self.cached[c.slot].min(c.start);
        }
        let passes = self.plan_passes(chunks);
        let mut logit_rows = 0;
        for pass in &passes {
            let shape = pass.shape();
            self.write_step(pass);
            match self.next_step.take() {
                Some((recorded, work)) if recorded == shape && logit_rows == 0 => {
                    self.gpu.queue.submit([work]);
                }
                _ => self.record_pass(shape, logit_rows, true, None, |cb| {
                    self.gpu.queue.submit([cb]);
                }),
            }
            logit_rows += shape.logit_rows;
            self.gpu.check("running the model")?;
        }
        // While the GPU runs this pass, record the step that most likely comes next (every
        // sequence one token further), so that its recording (about a quarter of a
        // millisecond for a 16-layer model) is off the critical path; it is used only if a
        // step of that shape comes. (The loop above took any earlier recording.)
        let next = PassShape {
            tokens: chunks.len(),
            len: chunks
                .iter()
                .map(|c| c.start + c.tokens.len() + 1)
                .max()
                .unwrap_or(0),
            logit_rows: chunks.len(),
        };
        if next.len <= self.ctx && next.tokens <= self.max_batch {
            let mut work = None;
            self.record_pass(next, 0, false, None, |cb| work = Some(cb));
            self.next_step = work.map(|w| (next, w));
        }
        let recorded = std::time::Instant::now();
        let vocab = self.cfg.vocab;
        let bytes = self
            .gpu
            .map_read(&self.staging, (logit_rows * vocab * 4) as u64)?;
        self.timing = ForwardTiming {
            record_s: (recorded - started).as_secs_f64(),
            wait_s: recorded.elapsed().as_secs_f64(),
        };
        for c in chunks {
            self.cached[c.slot] = c.start + c.tokens.len();
        }
        let logits: &[f32] = bytemuck::cast_slice(&bytes);
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// Runs one decode step (`token` at position `pos` of slot 0, as
    /// [`forward`](Self::forward) does) with a GPU timestamp after every dispatch, and returns
    /// each dispatch's name and GPU seconds in order, plus the logits. `None` when the device
    /// has no timestamp queries. For benchmarks: the timestamps add a little GPU time of
    /// their own.
    #[allow(clippy::type_complexity)]
    pub fn profile_step(
        &mut self,
        token: u32,
        pos: usize,
    ) -> Result<Option<(Vec<(&'static str, f64)>, Vec<f32>)>, VulkanError> {
        let Some(mut timer) = Timer::new(&self.gpu, 1024) else {
            return Ok(None);
        };
        let chunks = [SeqChunk {
            slot: 0,
            tokens: &[token],
            start: pos,
        }];
        self.check_chunks(&chunks)?;
        self.cached[0] = self.cached[0].min(pos);
        let passes = self.plan_passes(&chunks);
        self.write_step(&passes[0]);
        self.record_pass(passes[0].shape(), 0, true, Some(&mut timer), |cb| {
            self.gpu.queue.submit([cb]);
        });
        self.gpu.check("running the model")?;
        let bytes = self
            .gpu
            .map_read(&self.staging, self.cfg.vocab as u64 * 4)?;
        self.cached[0] = pos + 1;
        let times = timer.read(&self.gpu)?;
        Ok(Some((times, bytemuck::cast_slice(&bytes).to_vec())))
    }

    /// The errors of `forward_batch` for bad input, before anything is submitted.
    fn check_chunks(&self, chunks: &[SeqChunk<'_>]) -> Result<(), VulkanError> {
        if chunks.is_empty() {
            return Err(VulkanError::InvalidInput("no sequences to run".into()));
        }
        let mut seen = vec![false; self.slots];
        for c in chunks {
            let slot = c.slot;
            if slot >= self.slots {
                return Err(VulkanError::InvalidInput(format!(
                    "slot {slot} does not exist: the KV cache holds {} sequences (slots 0..{})",
                    self.slots,
                    self.slots - 1
                )));
            }
            if std::mem::replace(&mut seen[slot], true) {
                return Err(VulkanError::InvalidInput(format!(
                    "slot {slot} appears in more than one chunk of the batch; a sequence runs once per pass"
                )));
            }
            if c.tokens.is_empty() {
                return Err(VulkanError::InvalidInput(format!(
                    "no tokens to run for slot {slot}"
                )));
            }
            if c.start > self.cached[slot] {
                return Err(VulkanError::InvalidInput(format!(
                    "start position {} is past the {} tokens in the KV cache of slot {slot}",
                    c.start, self.cached[slot]
                )));
            }
            if c.start + c.tokens.len() > self.ctx {
                return Err(VulkanError::InvalidInput(format!(
                    "{} tokens from position {} exceed the context length of {} (slot {slot})",
                    c.tokens.len(),
                    c.start,
                    self.ctx
                )));
            }
            if let Some(bad) = c.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
                return Err(VulkanError::InvalidInput(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.cfg.vocab
                )));
            }
        }
        Ok(())
    }

    /// The chunks' tokens in order, cut into passes of at most `max_batch` tokens; a chunk's
    /// last token is a logit row of the pass it falls in.
    fn plan_passes(&self, chunks: &[SeqChunk<'_>]) -> Vec<PassInputs> {
        let mut passes = vec![PassInputs::default()];
        for c in chunks {
            let slot_base = (c.slot * self.ctx) as u32;
            for (i, &id) in c.tokens.iter().enumerate() {
                if passes.last().is_some_and(|p| p.ids.len() == self.max_batch) {
                    passes.push(PassInputs::default());
                }
                let pass = passes.last_mut().expect("at least one pass");
                if i + 1 == c.tokens.len() {
                    pass.logit_rows.push(pass.ids.len() as u32);
                }
                pass.ids.push(id);
                pass.rows.push([(c.start + i) as u32, slot_base]);
            }
        }
        passes
    }

    /// Writes the inputs of a pass (token ids, rows, logit rows, step uniform): the per-step
    /// inputs of the recorded work, written before the submission that runs it.
    fn write_step(&self, pass: &PassInputs) {
        let c = &self.cfg;
        let shape = pass.shape();
        let queue = &self.gpu.queue;
        queue.write_buffer(&self.ids, 0, bytemuck::cast_slice(&pass.ids));
        queue.write_buffer(&self.rows, 0, bytemuck::cast_slice(&pass.rows));
        if !pass.logit_rows.is_empty() {
            queue.write_buffer(&self.logit_rows, 0, bytemuck::cast_slice(&pass.logit_rows));
        }
        let (chunks, chunk_len) = attention_split(
            shape.tokens,
            shape.len,
            c.n_head,
            self.kernels.attention_groups(),
            attention_tile(c.head_dim),
        );
        let step = StepParams {
            n_tokens: shape.tokens as u32,
            out_rows: shape.logit_rows as u32,
            attn_chunks: chunks as u32,
            attn_chunk_len: chunk_len as u32,
        };
        queue.write_buffer(&self.step, 0, bytemuck::bytes_of(&step));
    }

    /// Records the work of a pass of this shape (whose inputs `write_step` writes) and hands
    /// each command buffer to `sink` as soon as it is finished. Its logits are copied to the
    /// staging buffer from row `staging_row` on. `split`: several command buffers, the first
    /// one small, so that a caller submitting each at once gets the GPU started early;
    /// otherwise one. A one-token pass uses the decode kernels: matrix-vector products with
    /// the RMSNorm and the SiLU·mul fused into their input, and attention split over
    /// positions.
    fn record_pass(
        &self,
        shape: PassShape,
        staging_row: usize,
        split: bool,
        mut timer: Option<&mut Timer>,
        mut sink: impl FnMut(wgpu::CommandBuffer),
    ) {
        let n = shape.tokens;
        let read_logits = shape.logit_rows > 0;
        let decode = n == 1;
        let gpu = &self.gpu;
        let c = &self.cfg;
        let (chunks, _) = attention_split(
            n,
            shape.len,
            c.n_head,
            self.kernels.attention_groups(),
            attention_tile(c.head_dim),
        );
        let rope_groups = elementwise_groups(n * (c.n_head + 2 * c.n_kv_head) * c.head_dim / 2);
        let elt_groups = |width: usize| elementwise_groups(n * width);
        let silu_groups = elementwise_groups(n * c.n_ff);
        let n = n as u32;
        // Layers per command buffer: the GPU starts on the first kernels::FIRST_SUBMIT_LAYERS
        // while the host records the next ones; each submission costs the GPU a gap.
        let groups: Vec<&[LayerOps]> = if split {
            let first_layers = kernels::FIRST_SUBMIT_LAYERS.min(self.layers.len());
            let (head, rest) = self.layers.split_at(first_layers);
            std::iter::once(head)
                .chain(rest.chunks(self.kernels.submit_layers))
                .collect()
        } else {
            vec![&self.layers[..]]
        };
        for (g, layers) in groups.iter().enumerate() {
            let first = g == 0;
            let last = g + 1 == groups.len();
            let mut enc = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("forward"),
                });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("forward"),
                    timestamp_writes: None,
                });
                let mut rec = Recorder::new(
                    &mut pass,
                    timer.as_deref_mut(),
                    if first { "start" } else { "host gap" },
                );
                if first {
                    self.embed.record(&mut rec, n);
                    if let Some(bg) = &self.embed_scale {
                        rec.dispatch(
                            "embedding scale",
                            &self.kernels.scale,
                            bg,
                            [elt_groups(c.n_embd), 1, 1],
                        );
                    }
                }
                for layer in layers.iter() {
                    let fuse_qkv = decode && layer.qkv.iter().all(MatmulOp::has_fused);
                    if !fuse_qkv {
                        rec.dispatch(
                            "rmsnorm",
                            &self.kernels.rmsnorm,
                            &layer.attn_norm,
                            [n, 1, 1],
                        );
                    }
                    for op in &layer.qkv {
                        op.record(&mut rec, n, fuse_qkv);
                    }
                    if let Some(bg) = &layer.qkv_bias {
                        let width = (c.n_head + 2 * c.n_kv_head) * c.head_dim;
                        rec.dispatch(
                            "q|k|v bias",
                            &self.kernels.add_bias,
                            bg,
                            [elt_groups(width), 1, 1],
                        );
                    }
                    if let Some([q_norm, k_norm]) = &layer.qk_norm {
                        rec.dispatch(
                            "q norm",
                            &self.kernels.head_rmsnorm,
                            q_norm,
                            [c.n_head as u32, n, 1],
                        );
                        rec.dispatch(
                            "k norm",
                            &self.kernels.head_rmsnorm,
                            k_norm,
                            [c.n_kv_head as u32, n, 1],
                        );
                    }
                    if !(fuse_qkv && layer.qkv_rope) {
                        rec.dispatch(
                            "rope + kv store",
                            &self.kernels.rope,
                            &layer.rope,
                            [rope_groups, 1, 1],
                        );
                    }
                    rec.dispatch(
                        "attention",
                        &self.kernels.attention,
                        &layer.attention,
                        [c.n_head as u32, n, chunks as u32],
                    );
                    if chunks > 1 {
                        rec.dispatch(
                            "attention combine",
                            &self.kernels.attention_combine,
                            &layer.attention_combine,
                            [c.n_head as u32, n, 1],
                        );
                    }
                    layer.o.record(&mut rec, n, false);
                    if let Some(bg) = &layer.post_attn_norm {
                        rec.dispatch("post-attention norm", &self.kernels.rmsnorm, bg, [n, 1, 1]);
                    }
                    let fuse_gate_up = decode && layer.gate_up.iter().all(MatmulOp::has_fused);
                    if !fuse_gate_up {
                        rec.dispatch("rmsnorm", &self.kernels.rmsnorm, &layer.ffn_norm, [n, 1, 1]);
                    }
                    for op in &layer.gate_up {
                        op.record(&mut rec, n, fuse_gate_up);
                    }
                    // A decode step does SiLU·mul in the gate|up product or in the down product's
                    // input, unless the interleaved gate|up matrix has a chunk splitting a pair.
                    if !decode || !(layer.glu_fused || layer.down.has_fused()) {
                        rec.dispatch(
                            "silu_mul",
                            &self.kernels.silu_mul,
                            &layer.silu_mul,
                            [silu_groups, 1, 1],
                        );
                    }
                    layer
                        .down
                        .record(&mut rec, n, decode && layer.down.has_fused());
                    if let Some(bg) = &layer.post_ffn_norm {
                        rec.dispatch("post-FFN norm", &self.kernels.rmsnorm, bg, [n, 1, 1]);
                    }
                }
                if last && read_logits {
                    let rows = shape.logit_rows as u32;
                    if decode {
                        self.output_fused.record(&mut rec, 1, true);
                    } else {
                        rec.dispatch(
                            "rmsnorm",
                            &self.kernels.rmsnorm_rows,
                            &self.final_norm,
                            [rows, 1, 1],
                        );
                        self.output.record(&mut rec, rows, false);
                    }
                }
            }
            if last && read_logits {
                let row_bytes = self.cfg.vocab as u64 * 4;
                enc.copy_buffer_to_buffer(
                    &self.logits,
                    0,
                    &self.staging,
                    staging_row as u64 * row_bytes,
                    shape.logit_rows as u64 * row_bytes,
                );
            }
            sink(enc.finish());
        }
    }

    /// Forgets the KV cache of every slot; the next forward of each starts at position 0.
    pub fn reset(&mut self) {
        self.cached.fill(0);
    }

    /// Tokens one slot of the KV cache can hold.
    pub fn context_length(&self) -> usize {
        self.ctx
    }

    /// Sequences the KV cache holds at once.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The adapter in use, e.g. `Intel(R) Arc(TM) A770 Graphics (DiscreteGpu, driver ...)`.
    pub fn adapter_description(&self) -> String {
        self.gpu.description()
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Bytes of weight matrices read per decoded token (all layers plus the output head), the
    /// numerator of the memory-bandwidth bound.
    pub fn weight_bytes_per_token(&self) -> u64 {
        self.weight_bytes
    }

    /// Host time split of the last successful forward pass.
    pub fn last_timing(&self) -> ForwardTiming {
        self.timing
    }

    /// The device the model runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_split_covers_every_position_within_the_wanted_chunks() {
        for (n_head, target, head_dim) in [
            (9, 1024, 64),
            (32, 1024, 64),
            (32, 256, 128),
            (32, 4096, 80),
            (8, 1024, 256),
        ] {
            let tile = attention_tile(head_dim);
            for n in [1, 2, 4, 8, 64, 256] {
                for len in n..700 {
                    let (chunks, chunk_len) = attention_split(n, len, n_head, target, tile);
                    assert!(
                        chunks * chunk_len >= len && (chunks - 1) * chunk_len < len,
                        "n {n} len {len}"
                    );
                    assert!(
                        chunks <= attention_chunks_wanted(n, n_head, target),
                        "n {n} len {len}: {chunks} chunks"
                    );
                    assert_eq!(chunk_len % tile, 0);
                }
            }
        }
    }

    #[test]
    fn attention_tiles_give_every_thread_eight_positions() {
        // 64 threads: G groups of hd / 4 threads, a tile of 8 * G positions.
        assert_eq!(
            [32, 64, 80, 128, 256].map(attention_tile),
            [32, 32, 24, 16, 8]
        );
    }
}
