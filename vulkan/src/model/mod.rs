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
//!
//! A model may also be split over several devices (`DeviceOptions::devices`): each runs a
//! range of layers (`stage.rs`), in turn, and the hidden state of the pass's tokens is handed
//! from one to the next through the host; `split.rs` decides which device gets which layers.

use crate::attention_coop::ATTENTION_COOP_ROWS;
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

mod split;
mod stage;

use stage::Stage;

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
            max_batch: 512,
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

/// Most chunks per (head, token) by default (`chunks=`): each costs a partial result to
/// write and to combine. (Up to 128 were measured on an H100 at 4096 positions of the 8B
/// file with `attn=4096` and `attention`: 4 times the chunks, no faster: 191.6 tok/s against
/// 193.4, the combine growing by as much as the attention gained.)
pub(crate) const ATTENTION_MAX_CHUNKS: usize = 32;
/// The most chunks per (head, token) `chunks=` may ask for.
pub(crate) const ATTENTION_CHUNKS_LIMIT: usize = 128;
/// Positions of one tile of the attention kernel (`tile_groups` in attention.wgsl): chunks
/// are a multiple of it, so that no workgroup loads a tile of which it uses a few positions.
fn attention_tile(head_dim: usize) -> usize {
    8 * (64 / (head_dim / 4)).min(4)
}

/// Threads of an `attention_vec` workgroup of `group` query heads when `requested` (`dwg=`)
/// are asked for: the most of [`VEC_ATTENTION_THREADS`](crate::kernels::VEC_ATTENTION_THREADS)
/// up to `requested` that the adapter runs in one workgroup (`max_threads`) and whose
/// workgroup memory ([`attention_vec_bytes`]) fits `max_bytes`; 64 if none does.
pub(crate) fn attention_vec_threads(
    requested: usize,
    group: usize,
    max_threads: usize,
    max_bytes: usize,
) -> usize {
    crate::kernels::VEC_ATTENTION_THREADS
        .into_iter()
        .rev()
        .find(|&t| t <= requested && t <= max_threads && attention_vec_bytes(t, group) <= max_bytes)
        .unwrap_or(64)
}

/// Bytes of workgroup memory `attention_vec` declares with `threads` threads and `group`
/// heads (attention_vec.wgsl): the partial dots, 8 rows of threads + 1 floats per head, and
/// the scores of a tile, threads / 2 floats per head.
pub(crate) fn attention_vec_bytes(threads: usize, group: usize) -> usize {
    4 * group * (8 * (threads + 1) + threads / 2)
}

/// Positions of one tile of `attention_vec` with `threads` threads (`vec_groups` in
/// attention_vec.wgsl): 8 per thread group, min(threads / (hd / 4), threads / 16) groups;
/// with 64 threads, those of `attention` ([`attention_tile`]).
pub(crate) fn attention_vec_tile(head_dim: usize, threads: usize) -> usize {
    8 * (threads / (head_dim / 4)).min(threads / 16)
}

/// Query rows (token, query head) of one `attention_tiled` workgroup: 64 / threads per row
/// (`threads_per_row` in attention_tiled.wgsl, the fewest threads, a power of two, whose 8
/// output vec4s each cover the head).
pub(crate) fn attention_tiled_rows(head_dim: usize) -> usize {
    let vec4s = head_dim / 4;
    let threads = match vec4s {
        0..=8 => 1,
        9..=16 => 2,
        17..=32 => 4,
        _ => 8,
    };
    64 / threads
}

/// Workgroups (along x) of an `attention_tiled` or `attention_coop` step of `tokens` tokens
/// in `runs` runs of consecutive tokens of one slot, `group` query heads per K/V head, with
/// query tiles of up to `per_tile` rows (`attention_tiled_rows`, or ATTENTION_COOP_ROWS): an
/// upper bound of the tiles [`attention_query_tiles`] makes (each run's rows rounded up to
/// whole tiles), so that a pass can be recorded from its shape alone.
pub(crate) fn attention_tiled_groups(
    tokens: usize,
    runs: usize,
    group: usize,
    per_tile: usize,
) -> usize {
    (tokens * group).div_ceil(per_tile) + runs
}

/// The query tiles of an `attention_tiled` or `attention_coop` step: per workgroup, its rows
/// `[first, end)` of the step's rows (token t's query heads of one K/V head are rows
/// t * group..(t + 1) * group), at most `per_tile` of them (the kernel's rows per workgroup)
/// and all of one run of consecutive tokens of one slot (`rows[t][1]`), so that every
/// workgroup reads one slot's K/V; padded with empty tiles to `attention_tiled_groups`.
pub(crate) fn attention_query_tiles(
    rows: &[[u32; 2]],
    group: usize,
    per_tile: usize,
) -> Vec<[u32; 2]> {
    let mut tiles = Vec::new();
    let mut start = 0;
    for run in rows.chunk_by(|a, b| a[1] == b[1]) {
        let (first, end) = (start * group, (start + run.len()) * group);
        tiles.extend(
            (first..end)
                .step_by(per_tile)
                .map(|r| [r as u32, (r + per_tile).min(end) as u32]),
        );
        start += run.len();
    }
    let runs = rows.chunk_by(|a, b| a[1] == b[1]).count();
    tiles.resize(
        attention_tiled_groups(rows.len(), runs, group, per_tile),
        [0, 0],
    );
    tiles
}

/// How attention splits the positions of a step of `n` tokens whose longest sequence holds
/// `len` positions (flash-decoding): `(chunks, positions per chunk)`, the same for every
/// token (a token's chunks past its own position are empty). Prompt batches already have a
/// workgroup per (head, token) and get one chunk; a decoded token gets up to
/// `max_chunks` (`Kernels::attention_max_chunks`). `target`: the workgroups a step aims for
/// (`Kernels::attention_groups`); `heads`: workgroups per (token, chunk): the query heads
/// for `attention`, the K/V heads for `attention_grouped` (so that it gets up to
/// n_head / n_kv times the chunks; see `Stage::attention_heads`).
fn attention_split(
    n: usize,
    len: usize,
    heads: usize,
    target: usize,
    max_chunks: usize,
    tile: usize,
) -> (usize, usize) {
    let chunk_len = len
        .div_ceil(attention_chunks_wanted(n, heads, target, max_chunks))
        .div_ceil(tile)
        * tile;
    (len.div_ceil(chunk_len), chunk_len)
}

/// Chunks a step of `n` tokens aims for, an upper bound of what `attention_split` gives at
/// any length (the size of the partial-results buffer depends on it).
fn attention_chunks_wanted(n: usize, heads: usize, target: usize, max_chunks: usize) -> usize {
    target.div_ceil(n * heads).clamp(1, max_chunks.max(1))
}

/// (token, chunk, query head) slots of partial attention results that a pass of up to
/// `max_batch` tokens can need: the size of the partial-results buffer. Counted with the
/// chunks of `attention_grouped` (workgroups per K/V head), which are at least those of
/// `attention`, so that the buffer serves either kernel.
pub(crate) fn attention_partial_slots(
    max_batch: usize,
    n_head: usize,
    n_kv: usize,
    target: usize,
    max_chunks: usize,
) -> usize {
    (1..=max_batch.max(1))
        .map(|n| n * attention_chunks_wanted(n, n_kv.max(1), target, max_chunks))
        .max()
        .unwrap_or(1)
        * n_head
}

/// rmsnorm.wgsl's parameters.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct NormParams {
    pub n: u32,
    pub eps: f32,
    pub _pad: u32,
    pub accumulate: u32,
}

impl NormParams {
    /// The parameters of a norm over rows of `n` values; `accumulate`: the result is added
    /// to the output instead of written.
    pub(crate) fn new(n: usize, eps: f32, accumulate: bool) -> NormParams {
        NormParams {
            n: n as u32,
            eps,
            _pad: 0,
            accumulate: accumulate as u32,
        }
    }
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

/// argmax.wgsl's parameters.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ArgmaxParams {
    /// Values per row.
    pub n: u32,
    pub _pad: [u32; 3],
}

/// silu_mul.wgsl's parameters.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct EltParams {
    pub n: u32,
    /// silu_mul: the [gate | up] rows are interleaved (see `matvec_norm_glu`).
    pub interleaved: u32,
    /// GELU instead of SiLU (GeGLU).
    pub gelu: u32,
    pub _pad: u32,
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
    /// The decode attention kernel when it is not `attention` (`gqa=1` and/or `dattn=1`,
    /// see `Stage::decode_attention`).
    decode_attention: Option<wgpu::BindGroup>,
    /// Attention of prompt steps with query tiles (see `KernelTuning::tiled_attention_for`).
    attention_tiled: wgpu::BindGroup,
    /// The same on cooperative matrices (`pattn=2`, see `Stage::attention_coop`).
    attention_coop: Option<wgpu::BindGroup>,
    /// The same writing the f16 x of `o` (`x16fuse=1`, see `Stage::attention_coop_x16`).
    attention_coop_x16: Option<wgpu::BindGroup>,
    o: MatmulOp,
    ffn_norm: wgpu::BindGroup,
    gate_up: Vec<MatmulOp>,
    /// The decode gate|up product also does SiLU·mul (one op, interleaved rows whose pairs
    /// never straddle a chunk).
    glu_fused: bool,
    silu_mul: wgpu::BindGroup,
    down: MatmulOp,
}

/// A llama model whose weights and KV cache live on one Vulkan device, or on several that
/// each run a contiguous range of its layers (a pipeline split: only the hidden state of a
/// pass's tokens crosses from one device to the next, through the host).
pub struct LlamaModel {
    /// One per device, in layer order.
    stages: Vec<Stage>,
    cfg: LlamaConfig,
    /// Positions per slot.
    ctx: usize,
    slots: usize,
    max_batch: usize,
    /// Tokens currently in each slot of the KV cache.
    cached: Vec<usize>,
    timing: ForwardTiming,
}

/// One device's share of a model, for the device map (logs, `/health`, the dashboard).
#[derive(Debug, Clone)]
pub struct DevicePart {
    /// The adapter's position in the engine's adapter list (what `--devices` counts).
    pub index: usize,
    /// `name (type, driver ...)`.
    pub adapter: String,
    /// The PCI address, when the driver reports one.
    pub pci_address: Option<String>,
    /// The layers it runs.
    pub layers: std::ops::Range<usize>,
    /// It holds the token embedding (the first device) / the output head (the last).
    pub embedding: bool,
    pub output: bool,
    /// Bytes of weight matrices read per token, and of its KV cache.
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    /// Bytes of the device's largest device-local memory heap, when the driver tells.
    pub memory_bytes: Option<u64>,
    /// The device-lost state, readable from any thread.
    pub lost: crate::LostFlag,
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

/// What a forward pass reads back for one chunk (its last token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readback {
    /// The whole row of logits, for sampling on the host.
    Logits,
    /// Only the greedy token, picked on the GPU: the index of the largest logit, the lowest
    /// of equals, never a NaN, 0 when no logit is above -inf (as the runner's host
    /// `argmax`). Four bytes cross the bus instead of the row.
    Greedy,
}

/// What a forward pass returned for one chunk, as its [`Readback`] asked.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkOutput {
    Logits(Vec<f32>),
    Token(u32),
}

/// What the recorded commands of one GPU pass depend on: its token count, the positions of
/// its longest sequence (the attention split) and how many rows of logits it computes. Two
/// passes of one shape run the same commands on other inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PassShape {
    tokens: usize,
    len: usize,
    logit_rows: usize,
    /// Runs of consecutive tokens of one slot (the query tiles of `attention_tiled`).
    runs: usize,
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
            runs: self.rows.chunk_by(|a, b| a[1] == b[1]).count(),
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
    /// Seconds spent handing hidden states from one device to the next (reading the
    /// previous device's copy and writing it to the next), zero on one device.
    pub cross_s: f64,
    /// Seconds from the first submission to the host seeing the GPU done (the fence): the
    /// GPU's time on the pass, plus the gaps the host leaves it between submissions.
    pub gpu_s: f64,
    /// Seconds before the first submission: planning the passes and writing their inputs.
    pub inputs_s: f64,
    /// Seconds from the fence to the logits as vectors: mapping and copying them out.
    pub readback_s: f64,
    /// Dispatches (kernel launches) of the pass or passes, summed over the devices.
    pub dispatches: usize,
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
        // Runs of one type are uploaded as one matrix (q|k of a Q4_K_M file whose v is Q6_K),
        // so that the decode product can be one mixed dispatch over two weights.
        let mut out: Vec<(GpuWeight, u32)> = Vec::with_capacity(raws.len());
        let mut offset = 0;
        let mut i = 0;
        while i < raws.len() {
            let ty = raws[i].1;
            let run = raws[i..].iter().take_while(|r| r.1 == ty).count();
            let rows: usize = raws[i..i + run].iter().map(|r| r.2).sum();
            let bytes: Vec<u8> = raws[i..i + run]
                .iter()
                .flat_map(|r| r.3.iter().copied())
                .collect();
            let name = if run == 1 { raws[i].0.as_str() } else { label };
            out.push((
                GpuWeight::upload(gpu, name, ty, rows, k, &bytes)?,
                offset as u32,
            ));
            offset += rows;
            i += run;
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

    /// Bytes of the tensors a device running `layers` uploads: their blocks' tensors, the
    /// embedding on the first device, the output head and norm (and the embedding again
    /// when it is tied) on the last, and what belongs to no block on the last.
    fn part_bytes(&self, layers: &std::ops::Range<usize>, n_layer: usize) -> u64 {
        let (first, last) = (layers.start == 0, layers.end == n_layer);
        let tied = !self.has("output.weight");
        self.content
            .tensor_infos
            .iter()
            .filter(|(name, _)| {
                let block = name
                    .strip_prefix("blk.")
                    .and_then(|rest| rest.split('.').next())
                    .and_then(|l| l.parse::<usize>().ok());
                match block {
                    Some(l) => layers.contains(&l),
                    None if name.as_str() == "token_embd.weight" => first || (last && tied),
                    None => last,
                }
            })
            .map(|(_, t)| {
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
    /// The needs of a device that holds `weights` bytes and the KV cache of `layers` layers.
    fn new(
        cfg: &LlamaConfig,
        weights: u64,
        layers: usize,
        max_batch: usize,
        slots: usize,
        (attention_target, attention_max_chunks): (usize, usize),
    ) -> MemoryNeeds {
        let (d, hd, nh, nkv, ff) = (
            cfg.n_embd as u64,
            cfg.head_dim as u64,
            cfg.n_head as u64,
            cfg.n_kv_head as u64,
            cfg.n_ff as u64,
        );
        let (b, s) = (max_batch as u64, slots as u64);
        // hidden, normed, q|k|v, attention out, gate|up, activation (f32) per batch token;
        // per slot the last hidden state, the logits and their staging copy, and the greedy
        // token and its staging copy; the attention partials.
        let partial_slots = attention_partial_slots(
            max_batch,
            cfg.n_head,
            cfg.n_kv_head,
            attention_target,
            attention_max_chunks,
        );
        let activations = b * (2 * d + (nh + 2 * nkv) * hd + nh * hd + 3 * ff) * 4
            + s * (d + 2 * cfg.vocab as u64 + 2) * 4
            + partial_slots as u64 * (hd + 4) * 4;
        // K and V in f16 for every layer, and the f32 cos/sin of every pair.
        let kv_layer = nkv * hd * 2;
        let rope_table = hd * 4;
        MemoryNeeds {
            weights,
            activations,
            kv_per_token: 2 * layers as u64 * kv_layer,
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

/// The bytes of `gpu`'s memory a model may fill: [`MEMORY_SHARE`] of its device-local heap,
/// at most `limit`; `None` when neither is known.
fn usable_memory(gpu: &Gpu, limit: Option<u64>) -> Option<u64> {
    match (gpu.memory_bytes(), limit) {
        (Some(heap), limit) => {
            Some(((heap as f64 * MEMORY_SHARE) as u64).min(limit.unwrap_or(u64::MAX)))
        }
        (None, limit) => limit,
    }
}

/// The error for a `wants` that does not give one [`Readback`] per chunk.
fn check_wants(chunks: &[SeqChunk<'_>], wants: &[Readback]) -> Result<(), VulkanError> {
    if wants.len() != chunks.len() {
        return Err(VulkanError::InvalidInput(format!(
            "{} read-back choices for {} chunks; give one per chunk",
            wants.len(),
            chunks.len()
        )));
    }
    Ok(())
}

/// The rows of `wants` read in full, as runs of `(row, staging row, rows)` whose staging
/// rows follow on from `staging_row` (the rows read in full are packed, in order).
fn full_row_runs(wants: &[Readback], mut staging_row: usize) -> Vec<(usize, usize, usize)> {
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for (row, want) in wants.iter().enumerate() {
        if *want != Readback::Logits {
            continue;
        }
        match runs.last_mut() {
            Some(run) if run.0 + run.2 == row => run.2 += 1,
            _ => runs.push((row, staging_row, 1)),
        }
        staging_row += 1;
    }
    runs
}

/// Reads what `wants` asks for of each chunk once the GPU is done: the rows of logits packed
/// in the staging buffer, and the greedy tokens (one per chunk).
fn read_outputs(
    stage: &Stage,
    vocab: usize,
    wants: &[Readback],
) -> Result<Vec<ChunkOutput>, VulkanError> {
    let full = wants.iter().filter(|w| **w == Readback::Logits).count();
    let mut rows = match full {
        0 => Vec::new(),
        n => stage.gpu.map_read_rows(&stage.staging, n, vocab)?,
    }
    .into_iter();
    let picks: Vec<u32> = if full == wants.len() {
        Vec::new()
    } else {
        stage
            .gpu
            .map_read(&stage.picks_staging, wants.len() as u64 * 4)?
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    wants
        .iter()
        .enumerate()
        .map(|(i, want)| match want {
            Readback::Logits => rows.next().map(ChunkOutput::Logits),
            Readback::Greedy => picks.get(i).copied().map(ChunkOutput::Token),
        })
        .map(|out| {
            out.ok_or_else(|| VulkanError::Internal {
                detail: "fewer results read back than chunks".into(),
            })
        })
        .collect()
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
        let gpus = Gpu::open_all(&opts.device)?;
        // Check what the weights and the cache need on each device before anything is
        // uploaded.
        let slots = opts.slots.max(1);
        let memory: Vec<Option<u64>> = gpus
            .iter()
            .map(|gpu| usable_memory(gpu, opts.device.memory_limit))
            .collect();
        let ranges = split::plan_layers(cfg.n_layer, &memory, opts.device.split.as_deref())?;
        let needs: Vec<MemoryNeeds> = ranges
            .iter()
            .map(|r| {
                MemoryNeeds::new(
                    &cfg,
                    gguf.part_bytes(r, cfg.n_layer),
                    r.len(),
                    opts.max_batch.max(1),
                    slots,
                    (
                        opts.device.tuning.attention_groups(),
                        opts.device.tuning.attention_max_chunks(),
                    ),
                )
            })
            .collect();
        let ctx = split::choose_split_context(opts.ctx, cfg.train_ctx, &gpus, &needs, &memory)?;
        let max_batch = opts.max_batch.clamp(1, ctx);
        let mut stages = Vec::with_capacity(gpus.len());
        for (gpu, range) in gpus.into_iter().zip(ranges) {
            stages.push(Stage::build(
                &mut gguf, &cfg, &types, gpu, range, ctx, slots, max_batch,
            )?);
        }
        let model = LlamaModel {
            stages,
            cfg,
            ctx,
            slots,
            max_batch,
            cached: vec![0; slots],
            timing: ForwardTiming::default(),
        };
        for part in model.device_map() {
            tracing::info!(
                device = part.index,
                adapter = %part.adapter,
                pci_address = part.pci_address.as_deref().unwrap_or("-"),
                layers = ?part.layers,
                embedding = part.embedding,
                output = part.output,
                weight_bytes = part.weight_bytes,
                kv_bytes = part.kv_bytes,
                "device map"
            );
        }
        Ok(model)
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
        let wants = vec![Readback::Logits; chunks.len()];
        self.forward_batch_read(chunks, &wants)?
            .into_iter()
            .map(|out| match out {
                ChunkOutput::Logits(row) => Ok(row),
                ChunkOutput::Token(_) => Err(VulkanError::Internal {
                    detail: "a chunk that asked for logits got a token".into(),
                }),
            })
            .collect()
    }

    /// As [`forward_batch`](Self::forward_batch), reading back per chunk what `wants` (one
    /// per chunk) asks for: its row of logits, or only its greedy token, picked on the GPU
    /// (every pass picks the token of each of its rows; only the rows asked for in full are
    /// copied for the host). A batch of greedy sequences so reads a few bytes per sequence
    /// instead of the vocabulary's logits, and the host has nothing left to pick.
    pub fn forward_batch_read(
        &mut self,
        chunks: &[SeqChunk<'_>],
        wants: &[Readback],
    ) -> Result<Vec<ChunkOutput>, VulkanError> {
        self.check_chunks(chunks)?;
        check_wants(chunks, wants)?;
        let started = std::time::Instant::now();
        // If a pass fails, only the positions before each chunk's start are known intact.
        for c in chunks {
            self.cached[c.slot] = self.cached[c.slot].min(c.start);
        }
        let passes = self.plan_passes(chunks);
        let cfg = &self.cfg;
        let hidden_row = cfg.n_embd as u64 * 4;
        let mut cross = std::time::Duration::ZERO;
        let mut logit_rows = 0;
        let mut full_rows = 0;
        let mut first_submit: Option<std::time::Instant> = None;
        let mut dispatches = 0;
        for pass in &passes {
            let shape = pass.shape();
            // The rows of this pass read in full: runs of (row in the pass, staging row, rows).
            let copy_runs =
                full_row_runs(&wants[logit_rows..logit_rows + shape.logit_rows], full_rows);
            let last = self.stages.len() - 1;
            // Each device runs its layers on every token of the pass, then hands the hidden
            // state on to the next (read back, written to the next device's `hidden`).
            let mut handed: Option<Vec<u8>> = None;
            for (index, stage) in self.stages.iter_mut().enumerate() {
                stage.write_step(cfg, pass);
                if let Some(bytes) = handed.take() {
                    let t = std::time::Instant::now();
                    stage.gpu.queue.write_buffer(&stage.hidden, 0, &bytes);
                    cross += t.elapsed();
                }
                let copy = if index == last {
                    stage.logits_copy(cfg.vocab, &copy_runs)
                } else {
                    None
                };
                first_submit.get_or_insert_with(std::time::Instant::now);
                match stage.next_step.take() {
                    Some((recorded, work, count)) if recorded == shape && logit_rows == 0 => {
                        stage.gpu.queue.submit(std::iter::once(work).chain(copy));
                        dispatches += count;
                    }
                    _ => {
                        dispatches += stage.record_pass(cfg, shape, logit_rows, true, None, |cb| {
                            stage.gpu.queue.submit([cb]);
                        });
                        if let Some(copy) = copy {
                            stage.gpu.queue.submit([copy]);
                        }
                    }
                }
                stage.gpu.check("running the model")?;
                if let Some(handoff) = &stage.handoff {
                    stage.gpu.wait("running the model")?;
                    let t = std::time::Instant::now();
                    handed = Some(
                        stage
                            .gpu
                            .map_read(handoff, shape.tokens as u64 * hidden_row)?,
                    );
                    cross += t.elapsed();
                }
            }
            logit_rows += shape.logit_rows;
            full_rows += copy_runs.iter().map(|r| r.2).sum::<usize>();
        }
        // While the GPU runs this pass, record the step that most likely comes next (every
        // sequence one token further), so that its recording (about a quarter of a
        // millisecond for a 16-layer model) is off the critical path; it is used only if a
        // step of that shape comes. (The loop above took any earlier recording.) Each
        // device keeps its own: a split runs the same pass on every device in turn.
        let next = PassShape {
            tokens: chunks.len(),
            len: chunks
                .iter()
                .map(|c| c.start + c.tokens.len() + 1)
                .max()
                .unwrap_or(0),
            logit_rows: chunks.len(),
            runs: chunks.len(),
        };
        if next.len <= self.ctx && next.tokens <= self.max_batch {
            for stage in &mut self.stages {
                let mut work = None;
                let count = stage.record_pass(cfg, next, 0, false, None, |cb| work = Some(cb));
                stage.next_step = work.map(|w| (next, w, count));
            }
        }
        let recorded = std::time::Instant::now();
        let last = self.stages.last().expect("at least one device");
        last.gpu.wait("running the model")?;
        let done = std::time::Instant::now();
        let outputs = read_outputs(last, cfg.vocab, wants)?;
        let first_submit = first_submit.unwrap_or(started);
        for c in chunks {
            self.cached[c.slot] = c.start + c.tokens.len();
        }
        self.timing = ForwardTiming {
            record_s: (recorded - started).as_secs_f64(),
            wait_s: recorded.elapsed().as_secs_f64(),
            cross_s: cross.as_secs_f64(),
            gpu_s: (done - first_submit).as_secs_f64(),
            inputs_s: (first_submit - started).as_secs_f64(),
            readback_s: done.elapsed().as_secs_f64(),
            dispatches,
        };
        Ok(outputs)
    }

    /// Runs one decode step (`token` at position `pos` of slot 0, as
    /// [`forward`](Self::forward) does) with a GPU timestamp after every dispatch, and returns
    /// each dispatch's name and GPU seconds in order, plus the logits. `None` when the device
    /// has no timestamp queries or the model is split over several devices (whose clocks do
    /// not compare). For benchmarks: the timestamps add a little GPU time of their own.
    #[allow(clippy::type_complexity)]
    pub fn profile_step(
        &mut self,
        token: u32,
        pos: usize,
    ) -> Result<Option<(Vec<(&'static str, f64)>, Vec<f32>)>, VulkanError> {
        let chunks = [SeqChunk {
            slot: 0,
            tokens: &[token],
            start: pos,
        }];
        let Some((times, mut outputs)) = self.profile_batch(&chunks, &[Readback::Logits])? else {
            return Ok(None);
        };
        match outputs.remove(0) {
            ChunkOutput::Logits(row) => Ok(Some((times, row))),
            ChunkOutput::Token(_) => Err(VulkanError::Internal {
                detail: "a chunk that asked for logits got a token".into(),
            }),
        }
    }

    /// As [`profile_step`](Self::profile_step) for a step of several sequences (a batched
    /// decode step, as [`forward_batch_read`](Self::forward_batch_read) runs it): the
    /// dispatches' names and GPU seconds, and what `wants` asks for of each chunk. The
    /// chunks must fit one pass (`max_batch` tokens in all).
    #[allow(clippy::type_complexity)]
    pub fn profile_batch(
        &mut self,
        chunks: &[SeqChunk<'_>],
        wants: &[Readback],
    ) -> Result<Option<(Vec<(&'static str, f64)>, Vec<ChunkOutput>)>, VulkanError> {
        self.check_chunks(chunks)?;
        check_wants(chunks, wants)?;
        let passes = self.plan_passes(chunks);
        let [pass] = &passes[..] else {
            return Err(VulkanError::InvalidInput(format!(
                "a profiled step runs at most {} tokens (one pass)",
                self.max_batch
            )));
        };
        let [stage] = &mut self.stages[..] else {
            return Ok(None);
        };
        let Some(mut timer) = Timer::new(&stage.gpu, 1024) else {
            return Ok(None);
        };
        for c in chunks {
            self.cached[c.slot] = self.cached[c.slot].min(c.start);
        }
        stage.write_step(&self.cfg, pass);
        stage.record_pass(&self.cfg, pass.shape(), 0, true, Some(&mut timer), |cb| {
            stage.gpu.queue.submit([cb]);
        });
        if let Some(copy) = stage.logits_copy(self.cfg.vocab, &full_row_runs(wants, 0)) {
            stage.gpu.queue.submit([copy]);
        }
        stage.gpu.check("running the model")?;
        let outputs = read_outputs(stage, self.cfg.vocab, wants)?;
        for c in chunks {
            self.cached[c.slot] = c.start + c.tokens.len();
        }
        let times = timer.read(&stage.gpu)?;
        Ok(Some((times, outputs)))
    }

    /// Dispatches (kernel launches) of one decode step of one sequence whose previous
    /// tokens are `pos` positions, as recorded for the GPU (summed over the devices of a
    /// split); nothing is run. For benchmarks.
    pub fn decode_dispatches(&self, pos: usize) -> usize {
        let shape = PassShape {
            tokens: 1,
            len: pos + 1,
            logit_rows: 1,
            runs: 1,
        };
        self.stages
            .iter()
            .map(|stage| stage.record_pass(&self.cfg, shape, 0, false, None, drop))
            .sum()
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

    /// The adapter in use, e.g. `Intel(R) Arc(TM) A770 Graphics (DiscreteGpu, driver ...)`;
    /// for a split, each device's with its layers.
    pub fn adapter_description(&self) -> String {
        match &self.stages[..] {
            [one] => one.gpu.description(),
            stages => stages
                .iter()
                .map(|s| {
                    format!(
                        "layers {}-{} on {}",
                        s.layer_range.start,
                        s.layer_range.end - 1,
                        s.gpu.description()
                    )
                })
                .collect::<Vec<_>>()
                .join(" + "),
        }
    }

    /// Which device runs what, in layer order.
    pub fn device_map(&self) -> Vec<DevicePart> {
        self.stages
            .iter()
            .map(|s| DevicePart {
                index: s.gpu.index(),
                adapter: s.gpu.description(),
                pci_address: s.gpu.pci_address().map(str::to_string),
                layers: s.layer_range.clone(),
                embedding: s.layer_range.start == 0,
                output: s.layer_range.end == self.cfg.n_layer,
                weight_bytes: s.weight_bytes,
                kv_bytes: s.kv_bytes,
                memory_bytes: s.gpu.memory_bytes(),
                lost: s.gpu.lost_flag(),
            })
            .collect()
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Bytes of weight matrices read per decoded token (all layers plus the output head), the
    /// numerator of the memory-bandwidth bound.
    pub fn weight_bytes_per_token(&self) -> u64 {
        self.stages.iter().map(|s| s.weight_bytes).sum()
    }

    /// Host time split of the last successful forward pass.
    pub fn last_timing(&self) -> ForwardTiming {
        self.timing
    }

    /// Whether steps of prompt size run the prompt attention on cooperative matrices
    /// (`attention_coop`, `pattn=2` where the device and model run it) on every device.
    pub fn runs_coop_attention(&self) -> bool {
        self.stages.iter().all(|s| s.runs_coop_attention())
    }

    /// The device the model runs on (the first, for a split).
    pub fn gpu(&self) -> &Gpu {
        &self.stages[0].gpu
    }

    /// The devices the model runs on, in layer order.
    pub fn gpus(&self) -> impl Iterator<Item = &Gpu> {
        self.stages.iter().map(|s| &s.gpu)
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
                    let (chunks, chunk_len) = attention_split(n, len, n_head, target, 32, tile);
                    assert!(
                        chunks * chunk_len >= len && (chunks - 1) * chunk_len < len,
                        "n {n} len {len}"
                    );
                    assert!(
                        chunks <= attention_chunks_wanted(n, n_head, target, 32),
                        "n {n} len {len}: {chunks} chunks"
                    );
                    assert_eq!(chunk_len % tile, 0);
                }
            }
        }
    }

    #[test]
    fn query_tiles_cover_every_row_once_within_one_slot() {
        // Two prompt chunks and three decode tokens (slots at 0, 100, 200, 300, 400).
        let mut rows: Vec<[u32; 2]> = (7..30).map(|p| [p, 0]).collect();
        rows.extend((0..9).map(|p| [p, 100]));
        rows.extend([[50, 200], [60, 300], [70, 400]]);
        // (group, rows per tile): attention_tiled's at head dimensions 128, 64, 128, 256 and
        // 128, and attention_coop's.
        let coop = crate::attention_coop::ATTENTION_COOP_ROWS;
        for (group, per_tile) in [
            (4, 16),
            (3, 32),
            (1, 16),
            (8, 8),
            (32, 16),
            (4, coop),
            (3, coop),
        ] {
            let tiles = attention_query_tiles(&rows, group, per_tile);
            assert_eq!(
                tiles.len(),
                attention_tiled_groups(rows.len(), 5, group, per_tile)
            );
            let mut next = 0;
            for &[first, end] in tiles.iter().filter(|t| t[0] < t[1]) {
                assert_eq!(first, next, "group {group} per tile {per_tile}: {tiles:?}");
                assert!((end - first) as usize <= per_tile);
                let slot = |r: u32| rows[r as usize / group][1];
                assert_eq!(
                    slot(first),
                    slot(end - 1),
                    "group {group} per tile {per_tile}: {tiles:?}"
                );
                next = end;
            }
            assert_eq!(next as usize, rows.len() * group);
        }
    }

    #[test]
    fn attention_vec_threads_fit_its_workgroup_memory() {
        // (asked for, heads a workgroup, threads) with 1024 threads and 32 KiB a workgroup
        // (lavapipe's limits) and with 48 KiB (an NVIDIA adapter's).
        for (asked, group, small, large) in [
            (64, 1, 64, 64),
            (256, 1, 256, 256),
            (128, 1, 128, 128),
            (256, 2, 256, 256),
            (256, 3, 256, 256),
            (256, 4, 128, 256),
            (256, 8, 64, 128),
            (128, 8, 64, 128),
            (512, 1, 512, 512),
            (1024, 1, 512, 1024),
            (1024, 2, 256, 512),
        ] {
            assert_eq!(
                attention_vec_threads(asked, group, 1024, 32 << 10),
                small,
                "{asked} {group}, 32 KiB"
            );
            assert_eq!(
                attention_vec_threads(asked, group, 1024, 48 << 10),
                large,
                "{asked} {group}, 48 KiB"
            );
        }
        // An adapter of at most 256 threads a workgroup gets no more.
        assert_eq!(attention_vec_threads(1024, 1, 256, 48 << 10), 256);
        // The memory rule is the shader's: 1024 threads and one head need 34848 bytes.
        assert_eq!(attention_vec_bytes(1024, 1), 34848);
        // hd 128: 64 positions a tile with 256 threads, those of `attention` with 64.
        assert_eq!(attention_vec_tile(128, 256), 64);
        assert_eq!(attention_vec_tile(128, 64), attention_tile(128));
        assert_eq!(attention_vec_tile(64, 64), attention_tile(64));
        assert_eq!(attention_vec_tile(256, 64), attention_tile(256));
        assert_eq!(attention_vec_tile(32, 256), 128);
    }

    #[test]
    fn attention_partials_hold_the_chunks_of_either_decode_kernel() {
        // (query heads, K/V heads, workgroups aimed for, largest batch, most chunks)
        for (n_head, n_kv, target, max_batch, max_chunks) in [
            (32, 8, 1024, 1, 32),
            (32, 8, 1024, 64, 32),
            (32, 8, 4096, 4, 128),
            (9, 3, 1024, 16, 32),
            (4, 4, 256, 8, 32),
            (16, 2, 4096, 3, 64),
        ] {
            let slots = attention_partial_slots(max_batch, n_head, n_kv, target, max_chunks);
            for n in 1..=max_batch {
                // `attention` splits per query head, `attention_grouped` per K/V head; the
                // partials are per (token, chunk, query head) with either.
                for heads in [n_head, n_kv] {
                    let (chunks, _) = attention_split(n, 4096, heads, target, max_chunks, 16);
                    assert!(
                        n * chunks * n_head <= slots,
                        "{n_head}/{n_kv} n {n}: {chunks} chunks"
                    );
                }
            }
        }
    }

    #[test]
    fn tiled_attention_rows_give_every_thread_at_most_eight_vec4s() {
        // 64 threads, a power of two per row, each holding 8 of the head's vec4s at most.
        for head_dim in (4..=256).step_by(4) {
            let rows = attention_tiled_rows(head_dim);
            let threads = 64 / rows;
            assert!(
                threads.is_power_of_two() && threads * 8 >= head_dim / 4,
                "{head_dim}"
            );
            assert!(
                threads == 1 || (threads / 2) * 8 < head_dim / 4,
                "{head_dim}"
            );
        }
        assert_eq!(
            [32, 64, 128, 256].map(attention_tiled_rows),
            [64, 32, 16, 8]
        );
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
