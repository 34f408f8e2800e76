//! Our own forward pass of the llama family of transformers on the CPU, on
//! memory-mapped weights: every architecture with a model description in
//! [`xpu_gguf::arch`] (llama: Llama 2/3.x, Mistral, SmolLM2; qwen2; qwen3; phi3;
//! gemma3). The description says what differs (biases, q/k norms, fused matrices,
//! post-norms, GELU or SiLU, embedding scale, RoPE style, per-layer RoPE bases and
//! sliding windows); this file runs it.
//!
//! Why not candle's `quantized_llama`: its Q4_1 dot product is scalar, its KV cache
//! grows with `Tensor::cat` (a copy of the whole cache per token) and each op is a
//! separate tensor allocation. Here the KV cache is preallocated, Q/K/V and gate/up
//! are one parallel pass each, and every matrix goes through our own kernels:
//! Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 ([`super::kernels`]), Q4_K/Q5_K/Q6_K and F16/BF16/F32
//! ([`super::wide`]). A matrix of any other type is refused at load with an error
//! that names it ([`SUPPORTED_TYPES`]) rather than run on a slow fallback. The
//! arithmetic follows ggml's, so that greedy tokens match llama.cpp's.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, bail};
use candle_core::quantized::GgmlDType;
use xpu_gguf::arch::{
    Activation, FeedForward, Linear as LinearDesc, QkvWeights, RopeStyle, TensorDesc,
};
use xpu_gguf::{GgufError, GgufFile, ModelDesc};

use half::f16;

use super::f16_vec;
use super::floats::FloatFormat;
use super::geglu::geglu_in_place;
use super::kernels::{self, BlockQ8, MatmulJob, QMatrix, WeightFormat, QK};
use super::kquants::KFormat;
use super::kv::KvCache;
use super::swiglu::swiglu_in_place;
use super::team::Team;
use super::wide::{self, WideFormat, WideJob, WideMatrix};

/// Hyper-parameters, from the model description.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: &'static str,
    pub n_layer: usize,
    pub dim: usize,
    pub ffn: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Width of all query heads (`n_head * head_dim`, not always `dim`).
    pub q_dim: usize,
    pub kv_dim: usize,
    pub rope_dim: usize,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    pub vocab: usize,
    pub context_length: usize,
    pub embedding_scale: Option<f32>,
    /// Factor of the attention scores (the architecture's query scale).
    pub query_scale: f32,
    pub logit_softcap: Option<f32>,
    pub activation: Activation,
}

/// A weight matrix on the mapped bytes, in a 32-weight block format ([`kernels`])
/// or a K-quant or float one ([`wide`]).
enum Linear {
    Own {
        format: WeightFormat,
        rows: usize,
        cols: usize,
        offset: usize,
    },
    Wide {
        format: WideFormat,
        rows: usize,
        cols: usize,
        offset: usize,
    },
}

impl Linear {
    fn rows(&self) -> usize {
        match self {
            Linear::Own { rows, .. } | Linear::Wide { rows, .. } => *rows,
        }
    }
}

/// A matrix and the bias added to each output row.
struct Projection {
    weight: Linear,
    bias: Option<Vec<f32>>,
}

enum QkvProjection {
    Separate {
        q: Projection,
        k: Projection,
        v: Projection,
    },
    /// One matrix whose output rows are Q's, then K's, then V's.
    Fused(Projection),
}

enum GateUp {
    Separate {
        gate: Projection,
        up: Projection,
    },
    /// One matrix whose output rows are gate's, then up's.
    Fused(Projection),
}

struct Layer {
    attn_norm: Vec<f32>,
    qkv: QkvProjection,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Projection,
    post_attention_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate_up: GateUp,
    down: Projection,
    post_ffw_norm: Option<Vec<f32>>,
    /// Keys a query sees, its own included, when the layer slides.
    window: Option<usize>,
    /// Index into [`LlamaModel::rope`].
    rope: usize,
}

/// cos/sin of each position and rotary pair: [pos][rope_dim / 2], for one RoPE base
/// and position scale.
struct RopeTable {
    base: f32,
    freq_scale: f32,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Token embeddings: rows dequantized on lookup.
enum Embeddings {
    Quantized { format: WeightFormat, offset: usize },
    Wide { format: WideFormat, offset: usize },
}

/// One sequence's share of a batched forward pass ([`LlamaModel::forward_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqChunk<'a> {
    /// The KV-cache slot that holds the sequence, `0..slots`.
    pub slot: usize,
    /// Tokens at positions `start..start + tokens.len()` of that sequence (at least one).
    pub tokens: &'a [u32],
    pub start: usize,
}

/// The model: configuration, weights (mapped) and the KV cache of its sequences.
pub struct LlamaModel {
    pub config: Config,
    /// The mapped file: the weights our kernels read in place.
    gguf: GgufFile,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Projection,
    /// One table per distinct RoPE base of the layers.
    rope: Vec<RopeTable>,
    /// Keys and values of every slot's sequence.
    kv: KvCache,
    scratch: Scratch,
    /// The threads that run the parallel steps (as many as rayon's pool has).
    pub(crate) team: Team,
}

#[derive(Default)]
struct Scratch {
    /// The slot and position of each row of the pass.
    rows: Vec<Row>,
    x: Vec<f32>,
    xn: Vec<f32>,
    xq: PreparedInputs,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Output of a fused matrix before it is split.
    fused: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Attention's per-thread scratch, kept between calls so its buffers are reused.
    scores: Vec<Mutex<Scores>>,
    /// The last row of each chunk (the rows whose logits are returned).
    last: Vec<f32>,
    logits: Vec<f32>,
}

/// Where a row of a pass belongs: its sequence's slot and its position there.
#[derive(Debug, Clone, Copy)]
struct Row {
    slot: usize,
    pos: usize,
}

/// A matrix product's input rows in the forms the kernels take (kept between calls
/// so the buffers are reused).
#[derive(Default)]
struct PreparedInputs {
    /// Quantized per 32 ([`kernels`]).
    q8: Vec<BlockQ8>,
    /// Quantized per 256 or rounded ([`wide`]).
    wide: wide::Activations,
}

/// The GGUF types of weight matrices that this engine has kernels for.
pub const SUPPORTED_TYPES: &str = "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, F16, BF16, F32";

/// The kernel family of a weight matrix.
#[derive(Debug, Clone, Copy)]
enum MatrixFormat {
    Own(WeightFormat),
    Wide(WideFormat),
}

/// The kernels for tensor `name` of type `dtype`, or an error that names the tensor,
/// its type and what to do.
fn matrix_format(name: &str, dtype: GgmlDType) -> anyhow::Result<MatrixFormat> {
    use MatrixFormat::{Own, Wide};
    Ok(match dtype {
        GgmlDType::Q4_0 => Own(WeightFormat::Q4_0),
        GgmlDType::Q4_1 => Own(WeightFormat::Q4_1),
        GgmlDType::Q5_0 => Own(WeightFormat::Q5_0),
        GgmlDType::Q5_1 => Own(WeightFormat::Q5_1),
        GgmlDType::Q8_0 => Own(WeightFormat::Q8_0),
        GgmlDType::Q4K => Wide(WideFormat::K(KFormat::Q4K)),
        GgmlDType::Q5K => Wide(WideFormat::K(KFormat::Q5K)),
        GgmlDType::Q6K => Wide(WideFormat::K(KFormat::Q6K)),
        GgmlDType::F16 => Wide(WideFormat::Float(FloatFormat::F16)),
        GgmlDType::BF16 => Wide(WideFormat::Float(FloatFormat::BF16)),
        GgmlDType::F32 => Wide(WideFormat::Float(FloatFormat::F32)),
        other => bail!(
            "tensor {name} has type {other:?}, which the xpu CPU engine has no kernel for (it runs \
             {SUPPORTED_TYPES}); requantize the file to one of those (e.g. llama-quantize to Q4_K_M), \
             or run it on candle's slower kernels with XPU_CPU_ENGINE=candle"
        ),
    })
}

impl LlamaModel {
    /// Maps `path` and builds the model with a KV cache of `slots` sequences (0 means
    /// 1). `max_context` caps the model's context length, which each slot holds.
    pub fn load(path: &Path, max_context: Option<usize>, slots: usize) -> anyhow::Result<Self> {
        let gguf = GgufFile::open(path).map_err(|e| match e {
            GgufError::Io(e) => {
                anyhow::Error::new(e).context(format!("cannot open {}", path.display()))
            }
            GgufError::Truncated(detail) => {
                anyhow::anyhow!("{} is truncated: {detail}", path.display())
            }
            e => anyhow::anyhow!("{} is not a readable GGUF file: {e}", path.display()),
        })?;
        Self::from_gguf(gguf, max_context, slots)
    }

    /// Builds the model on a mapped GGUF file whose header the caller has parsed and
    /// checked (tensor extents lie inside the file), with a KV cache of `slots`
    /// sequences (0 means 1) of up to `max_context` (default: the model's) positions.
    pub fn from_gguf(
        gguf: GgufFile,
        max_context: Option<usize>,
        slots: usize,
    ) -> anyhow::Result<Self> {
        let desc = ModelDesc::read(&gguf.content).map_err(|e| anyhow!("{e}"))?;
        let hp = &desc.hparams;
        let context_length = max_context
            .map_or(hp.context_length, |c| c.min(hp.context_length))
            .max(1);
        let loader = Loader { gguf: &gguf };

        let (emb_info, emb_data) = loader.data(&desc.token_embd)?;
        let (vocab, dim) = (hp.vocab, hp.n_embd);
        let bad = |e: String| anyhow::anyhow!("tensor token_embd.weight: {e}");
        let emb_start = emb_data.as_ptr() as usize - gguf.bytes().as_ptr() as usize;
        let embeddings = match matrix_format("token_embd.weight", emb_info.ggml_dtype)? {
            MatrixFormat::Own(format) => {
                QMatrix::new(format, vocab, dim, emb_data).map_err(bad)?;
                Embeddings::Quantized {
                    format,
                    offset: emb_start,
                }
            }
            MatrixFormat::Wide(format) => {
                WideMatrix::new(format, vocab, dim, emb_data).map_err(bad)?;
                Embeddings::Wide {
                    format,
                    offset: emb_start,
                }
            }
        };

        let mut rope: Vec<RopeTable> = Vec::new();
        let factors = match desc.rope_factors_for(context_length) {
            Some(t) => Some(loader.vector(t)?),
            None => None,
        };
        let mut layers = Vec::with_capacity(hp.n_layer);
        for block in &desc.blocks {
            let qkv = match &block.qkv {
                QkvWeights::Separate { q, k, v } => QkvProjection::Separate {
                    q: loader.projection(q)?,
                    k: loader.projection(k)?,
                    v: loader.projection(v)?,
                },
                QkvWeights::Fused(qkv) => QkvProjection::Fused(loader.projection(qkv)?),
            };
            let (gate_up, down) = match &block.ffn {
                FeedForward::Gated { gate, up, down } => (
                    GateUp::Separate {
                        gate: loader.projection(gate)?,
                        up: loader.projection(up)?,
                    },
                    down,
                ),
                FeedForward::FusedGateUp { gate_up, down } => {
                    (GateUp::Fused(loader.projection(gate_up)?), down)
                }
                FeedForward::Experts { count, .. } => bail!(
                    "this is a mixture of {count} experts, which the xpu CPU engine does not run; \
                     run it on candle's kernels with --cpu-engine candle"
                ),
            };
            let optional =
                |t: &Option<TensorDesc>| t.as_ref().map(|t| loader.vector(t)).transpose();
            let table = match rope
                .iter()
                .position(|r| r.base == block.rope_base && r.freq_scale == block.rope_freq_scale)
            {
                Some(i) => i,
                None => {
                    rope.push(RopeTable::new(
                        block.rope_base,
                        block.rope_freq_scale,
                        hp.rope.attn_factor,
                        hp.rope.dim,
                        factors.as_deref(),
                        context_length,
                    ));
                    rope.len() - 1
                }
            };
            layers.push(Layer {
                attn_norm: loader.vector(&block.attn_norm)?,
                qkv,
                q_norm: optional(&block.q_norm)?,
                k_norm: optional(&block.k_norm)?,
                wo: loader.projection(&block.attn_output)?,
                post_attention_norm: optional(&block.post_attention_norm)?,
                ffn_norm: loader.vector(&block.ffn_norm)?,
                gate_up,
                down: loader.projection(down)?,
                post_ffw_norm: optional(&block.post_ffw_norm)?,
                window: block.sliding_window,
                rope: table,
            });
        }
        let output_norm = loader.vector(&desc.output_norm)?;
        let output = loader.projection(&desc.output)?;

        let config = Config {
            arch: desc.arch.name,
            n_layer: hp.n_layer,
            dim,
            ffn: hp.n_ff,
            n_head: hp.n_head,
            n_kv_head: hp.n_kv_head,
            head_dim: hp.head_dim,
            q_dim: hp.q_dim(),
            kv_dim: hp.kv_dim(),
            rope_dim: hp.rope.dim,
            rope_style: hp.rope.style,
            rms_eps: hp.rms_eps,
            vocab,
            context_length,
            embedding_scale: hp.embedding_scale,
            query_scale: hp.query_scale,
            logit_softcap: hp.final_logit_softcap,
            activation: hp.activation,
        };
        Ok(LlamaModel {
            kv: KvCache::new(
                config.n_layer,
                config.n_kv_head,
                config.head_dim,
                config.context_length,
                slots,
            ),
            config,
            embeddings,
            layers,
            output_norm,
            output,
            rope,
            gguf,
            scratch: Scratch::default(),
            team: Team::new(rayon::current_num_threads()),
        })
    }

    /// How many sequences the KV cache holds.
    pub fn slots(&self) -> usize {
        self.kv.slots()
    }

    /// Runs `tokens` at positions `start..` of the sequence in slot 0 and returns the
    /// logits of the last one.
    pub fn forward(&mut self, tokens: &[u32], start: usize) -> anyhow::Result<Vec<f32>> {
        let chunk = SeqChunk {
            slot: 0,
            tokens,
            start,
        };
        Ok(self.forward_batch(&[chunk])?.remove(0))
    }

    /// Runs one step of several sequences in one pass and returns the logits of each
    /// chunk's last token, in chunk order. The rows of all chunks go through each
    /// weight matrix together (one product, the weights read once); RoPE, the KV cache
    /// and attention use each row's own slot and position. A row's result does not
    /// depend on the other rows (every kernel gives a row the bits it gets alone), so a
    /// sequence's logits are the same whatever shares its pass and however its prompt
    /// was split into chunks.
    pub fn forward_batch(&mut self, chunks: &[SeqChunk<'_>]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.check(chunks)?;
        let c = self.config.clone();
        for chunk in chunks {
            self.kv
                .reserve(chunk.slot, chunk.start + chunk.tokens.len());
        }
        let (dim, q_dim, kv_dim, hd) = (c.dim, c.q_dim, c.kv_dim, c.head_dim);
        let mmap = self.gguf.bytes();
        let mut s = std::mem::take(&mut self.scratch);
        s.rows.clear();
        for chunk in chunks {
            s.rows.extend((0..chunk.tokens.len()).map(|i| Row {
                slot: chunk.slot,
                pos: chunk.start + i,
            }));
        }
        let m = s.rows.len();
        let tokens = chunks.iter().flat_map(|chunk| chunk.tokens);
        s.x.resize(m * dim, 0.0);
        for (row, &t) in s.x.chunks_exact_mut(dim).zip(tokens) {
            match &self.embeddings {
                Embeddings::Quantized { format, offset } => {
                    let bytes = c.vocab * dim / QK * format.block_bytes();
                    let w = QMatrix {
                        format: *format,
                        rows: c.vocab,
                        cols: dim,
                        data: &mmap[*offset..*offset + bytes],
                    };
                    w.dequantize_row(t as usize, row);
                }
                Embeddings::Wide { format, offset } => {
                    let bytes = c.vocab * format.row_bytes(dim);
                    let data = &mmap[*offset..*offset + bytes];
                    WideMatrix {
                        format: *format,
                        rows: c.vocab,
                        cols: dim,
                        data,
                    }
                    .dequantize_row(t as usize, row);
                }
            }
            if let Some(scale) = c.embedding_scale {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }

        for (li, layer) in self.layers.iter().enumerate() {
            // Attention block.
            rms_norm(&s.x, &layer.attn_norm, c.rms_eps, dim, &mut s.xn);
            s.q.resize(m * q_dim, 0.0);
            s.k.resize(m * kv_dim, 0.0);
            s.v.resize(m * kv_dim, 0.0);
            match &layer.qkv {
                QkvProjection::Separate { q, k, v } => project(
                    &self.team,
                    mmap,
                    &s.xn,
                    dim,
                    m,
                    &mut s.xq,
                    &mut [(q, &mut s.q[..]), (k, &mut s.k[..]), (v, &mut s.v[..])],
                )?,
                QkvProjection::Fused(qkv) => {
                    let width = q_dim + 2 * kv_dim;
                    s.fused.resize(m * width, 0.0);
                    project(
                        &self.team,
                        mmap,
                        &s.xn,
                        dim,
                        m,
                        &mut s.xq,
                        &mut [(qkv, &mut s.fused[..])],
                    )?;
                    for (i, row) in s.fused.chunks_exact(width).enumerate() {
                        s.q[i * q_dim..(i + 1) * q_dim].copy_from_slice(&row[..q_dim]);
                        s.k[i * kv_dim..(i + 1) * kv_dim]
                            .copy_from_slice(&row[q_dim..q_dim + kv_dim]);
                        s.v[i * kv_dim..(i + 1) * kv_dim].copy_from_slice(&row[q_dim + kv_dim..]);
                    }
                }
            }
            if let Some(w) = &layer.q_norm {
                rms_norm_in_place(&mut s.q, w, c.rms_eps, hd);
            }
            if let Some(w) = &layer.k_norm {
                rms_norm_in_place(&mut s.k, w, c.rms_eps, hd);
            }
            let table = &self.rope[layer.rope];
            let half = c.rope_dim / 2;
            for (i, &Row { pos, .. }) in s.rows.iter().enumerate() {
                let cos = &table.cos[pos * half..(pos + 1) * half];
                let sin = &table.sin[pos * half..(pos + 1) * half];
                let heads = s.q[i * q_dim..(i + 1) * q_dim]
                    .chunks_exact_mut(hd)
                    .chain(s.k[i * kv_dim..(i + 1) * kv_dim].chunks_exact_mut(hd));
                for head in heads {
                    rope(head, cos, sin, c.rope_style);
                }
            }
            for (i, row) in s.rows.iter().enumerate() {
                let (k, v) = (
                    &s.k[i * kv_dim..(i + 1) * kv_dim],
                    &s.v[i * kv_dim..(i + 1) * kv_dim],
                );
                self.kv.write(li, row.slot, row.pos, k, v);
            }
            s.attn.resize(m * q_dim, 0.0);
            s.scores.resize_with(self.team.threads(), Mutex::default);
            attention(
                &self.team,
                &s.scores,
                &c,
                layer.window,
                &s.q,
                &self.kv,
                li,
                &s.rows,
                &mut s.attn,
            );
            s.proj.resize(m * dim, 0.0);
            project(
                &self.team,
                mmap,
                &s.attn,
                q_dim,
                m,
                &mut s.xq,
                &mut [(&layer.wo, &mut s.proj[..])],
            )?;
            add_residual(
                &mut s.x,
                &s.proj,
                layer.post_attention_norm.as_deref(),
                c.rms_eps,
                dim,
                &mut s.xn,
            );

            // Feed-forward block.
            rms_norm(&s.x, &layer.ffn_norm, c.rms_eps, dim, &mut s.xn);
            s.gate.resize(m * c.ffn, 0.0);
            s.up.resize(m * c.ffn, 0.0);
            match &layer.gate_up {
                GateUp::Separate { gate, up } => project(
                    &self.team,
                    mmap,
                    &s.xn,
                    dim,
                    m,
                    &mut s.xq,
                    &mut [(gate, &mut s.gate[..]), (up, &mut s.up[..])],
                )?,
                GateUp::Fused(gate_up) => {
                    let ffn = c.ffn;
                    s.fused.resize(m * 2 * ffn, 0.0);
                    project(
                        &self.team,
                        mmap,
                        &s.xn,
                        dim,
                        m,
                        &mut s.xq,
                        &mut [(gate_up, &mut s.fused[..])],
                    )?;
                    for (i, row) in s.fused.chunks_exact(2 * ffn).enumerate() {
                        s.gate[i * ffn..(i + 1) * ffn].copy_from_slice(&row[..ffn]);
                        s.up[i * ffn..(i + 1) * ffn].copy_from_slice(&row[ffn..]);
                    }
                }
            }
            match c.activation {
                Activation::Silu => swiglu_in_place(&mut s.gate, &s.up),
                Activation::GeluTanh => geglu_in_place(&mut s.gate, &s.up),
            }
            project(
                &self.team,
                mmap,
                &s.gate,
                c.ffn,
                m,
                &mut s.xq,
                &mut [(&layer.down, &mut s.proj[..])],
            )?;
            add_residual(
                &mut s.x,
                &s.proj,
                layer.post_ffw_norm.as_deref(),
                c.rms_eps,
                dim,
                &mut s.xn,
            );
        }

        // Only each chunk's last row's logits are needed: one product of those rows.
        s.last.clear();
        let mut end = 0;
        for chunk in chunks {
            end += chunk.tokens.len();
            s.last.extend_from_slice(&s.x[(end - 1) * dim..end * dim]);
        }
        let outputs = chunks.len();
        rms_norm(&s.last, &self.output_norm, c.rms_eps, dim, &mut s.xn);
        let vocab = self.output.weight.rows();
        s.logits.resize(outputs * vocab, 0.0);
        project(
            &self.team,
            mmap,
            &s.xn,
            dim,
            outputs,
            &mut s.xq,
            &mut [(&self.output, &mut s.logits[..])],
        )?;
        if let Some(cap) = c.logit_softcap {
            // As ggml: scale by 1/cap, tanh, scale by cap.
            let inv = 1.0 / cap;
            s.logits
                .iter_mut()
                .for_each(|l| *l = (*l * inv).tanh() * cap);
        }
        let logits = s.logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect();
        for chunk in chunks {
            self.kv
                .set_len(chunk.slot, chunk.start + chunk.tokens.len());
        }
        self.scratch = s;
        Ok(logits)
    }

    /// Checks a pass before it touches the cache: each chunk names its own existing
    /// slot, continues from a position the slot holds, fits the context and has
    /// tokens of the vocabulary.
    fn check(&self, chunks: &[SeqChunk<'_>]) -> anyhow::Result<()> {
        let c = &self.config;
        let slots = self.kv.slots();
        if chunks.is_empty() {
            bail!("a forward pass needs at least one sequence chunk");
        }
        let mut seen = vec![false; slots];
        for chunk in chunks {
            let slot = chunk.slot;
            if slot >= slots {
                bail!(
                    "slot {slot} does not exist: the KV cache holds {slots} sequence(s), slots 0 to {}; \
                     load the engine with more slots",
                    slots - 1
                );
            }
            if std::mem::replace(&mut seen[slot], true) {
                bail!("slot {slot} appears in two chunks of one pass; each chunk must name its own slot");
            }
            if chunk.tokens.is_empty() {
                bail!("the chunk for slot {slot} has no tokens; a forward pass needs at least one token per chunk");
            }
            let held = self.kv.len(slot);
            if chunk.start > held {
                bail!(
                    "slot {slot} holds positions 0..{held}, so a chunk cannot start at position {}: \
                     the positions in between were never computed",
                    chunk.start
                );
            }
            let end = chunk.start + chunk.tokens.len();
            if end > c.context_length {
                bail!(
                    "{end} positions exceed the context length {} of slot {slot}",
                    c.context_length
                );
            }
            if let Some(&bad) = chunk.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                bail!(
                    "token id {bad} is outside the vocabulary ({} tokens)",
                    c.vocab
                );
            }
        }
        Ok(())
    }

    /// Forgets every slot's sequence. The cache memory is kept for the next ones.
    pub fn reset(&mut self) {
        self.kv.clear();
    }
}

impl RopeTable {
    /// Angles computed as ggml's rope cache does (the position times repeated f32
    /// multiplications by base^(-2/dim), divided by the pair's frequency factor, times
    /// the position scale), so that they round the same way; cos and sin are
    /// multiplied by `attn_factor` as ggml's `rope_yarn` does.
    fn new(
        base: f32,
        freq_scale: f32,
        attn_factor: f32,
        rope_dim: usize,
        factors: Option<&[f32]>,
        context_length: usize,
    ) -> Self {
        let half = rope_dim / 2;
        let theta_scale = base.powf(-2.0 / rope_dim as f32);
        let mut cos = Vec::with_capacity(context_length * half);
        let mut sin = Vec::with_capacity(context_length * half);
        for pos in 0..context_length {
            let mut theta = pos as f32;
            for i in 0..half {
                let extrapolated = match factors {
                    Some(f) => theta / f[i],
                    None => theta,
                };
                let angle = freq_scale * extrapolated;
                cos.push(angle.cos() * attn_factor);
                sin.push(angle.sin() * attn_factor);
                theta *= theta_scale;
            }
        }
        RopeTable {
            base,
            freq_scale,
            cos,
            sin,
        }
    }
}

/// Reads the tensors a model description names from the mapped file.
struct Loader<'a> {
    gguf: &'a GgufFile,
}

impl Loader<'_> {
    fn data(&self, t: &TensorDesc) -> anyhow::Result<(&xpu_gguf::TensorInfo, &[u8])> {
        self.gguf
            .tensor(&t.name)
            .ok_or_else(|| anyhow!("tensor `{}` is missing", t.name))
    }

    /// A norm weight, bias or factor vector, as f32.
    fn vector(&self, t: &TensorDesc) -> anyhow::Result<Vec<f32>> {
        let (info, raw) = self.data(t)?;
        let name = &t.name;
        match info.ggml_dtype {
            GgmlDType::F32 => Ok(raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            GgmlDType::F16 => Ok(raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            GgmlDType::BF16 => Ok(raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            other => bail!(
                "tensor {name} has type {other:?}; the xpu CPU engine reads vectors of type F32, F16 or BF16"
            ),
        }
    }

    fn linear(&self, t: &TensorDesc) -> anyhow::Result<Linear> {
        let (info, data) = self.data(t)?;
        let (name, rows, cols) = (&t.name, t.rows(), t.cols());
        let offset = data.as_ptr() as usize - self.gguf.bytes().as_ptr() as usize;
        let bad = |e: String| anyhow::anyhow!("tensor {name}: {e}");
        Ok(match matrix_format(name, info.ggml_dtype)? {
            MatrixFormat::Own(format) => {
                QMatrix::new(format, rows, cols, data).map_err(bad)?;
                Linear::Own {
                    format,
                    rows,
                    cols,
                    offset,
                }
            }
            MatrixFormat::Wide(format) => {
                WideMatrix::new(format, rows, cols, data).map_err(bad)?;
                Linear::Wide {
                    format,
                    rows,
                    cols,
                    offset,
                }
            }
        })
    }

    fn projection(&self, l: &LinearDesc) -> anyhow::Result<Projection> {
        Ok(Projection {
            weight: self.linear(&l.weight)?,
            bias: l.bias.as_ref().map(|b| self.vector(b)).transpose()?,
        })
    }
}

/// Multiplies the `m` rows of `x` by each projection's matrix and adds its bias.
fn project(
    team: &Team,
    mmap: &[u8],
    x: &[f32],
    cols: usize,
    m: usize,
    xq: &mut PreparedInputs,
    targets: &mut [(&Projection, &mut [f32])],
) -> anyhow::Result<()> {
    let mut linears: Vec<(&Linear, &mut [f32])> = targets
        .iter_mut()
        .map(|(p, out)| (&p.weight, &mut **out))
        .collect();
    run_linears(team, mmap, x, cols, m, xq, &mut linears)?;
    for (p, out) in targets.iter_mut() {
        if let Some(bias) = &p.bias {
            for row in out[..m * bias.len()].chunks_exact_mut(bias.len()) {
                row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
            }
        }
    }
    Ok(())
}

/// `x += y`, or `x += rms_norm(y) * weight` with a post-norm.
fn add_residual(
    x: &mut [f32],
    y: &[f32],
    post_norm: Option<&[f32]>,
    eps: f32,
    dim: usize,
    tmp: &mut Vec<f32>,
) {
    let y = match post_norm {
        Some(w) => {
            rms_norm(&y[..x.len()], w, eps, dim, tmp);
            &tmp[..]
        }
        None => y,
    };
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

/// `out[r] = x[r] / rms(x[r]) * weight` for each row of `dim` values. The sum of
/// squares is kept in f64, as ggml does.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, dim: usize, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    for (src, dst) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean = (src.iter().map(|v| (v * v) as f64).sum::<f64>() / dim as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((d, s), w) in dst.iter_mut().zip(src).zip(weight) {
            *d = s * scale * w;
        }
    }
}

/// `x[r] = x[r] / rms(x[r]) * weight` for each row of `dim` values (a head, for the
/// q/k norms).
fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32, dim: usize) {
    for row in x.chunks_exact_mut(dim) {
        let mean = (row.iter().map(|v| (v * v) as f64).sum::<f64>() / dim as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (d, w) in row.iter_mut().zip(weight) {
            *d = *d * scale * w;
        }
    }
}

/// Rotates the first `2 * cos.len()` values of a head: the adjacent pairs (2i, 2i+1)
/// for [`RopeStyle::Normal`] (GGUF llama stores Q and K permuted for it), the pairs
/// (i, i + cos.len()) for [`RopeStyle::Neox`]. The products are fused as in
/// llama.cpp's build, where the compiler contracts `a*c - b*s` into one FMA, so the
/// rounding is the same.
fn rope(head: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = cos.len();
    for (i, (c, s)) in cos.iter().zip(sin).enumerate() {
        let (i0, i1) = match style {
            RopeStyle::Normal => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + half),
        };
        let (a, b) = (head[i0], head[i1]);
        head[i0] = a.mul_add(*c, -(b * s));
        head[i1] = a.mul_add(*s, b * c);
    }
}

/// Causal attention of each row's query over its slot's positions `0..=pos`; with a
/// `window`, a query sees only the `window` latest positions, its own included
/// (llama.cpp's standard sliding window). Every query uses ggml's one-query arithmetic
/// ([`attend_f16`]), whatever the number of rows: llama.cpp switches to f32 tiles for
/// batches of 64 queries or more, but then a sequence's logits would depend on how its
/// prompt was chunked and on what shared its pass.
#[allow(clippy::too_many_arguments)]
fn attention(
    team: &Team,
    scratch: &[Mutex<Scores>],
    c: &Config,
    window: Option<usize>,
    q: &[f32],
    kv: &KvCache,
    layer: usize,
    rows: &[Row],
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), rows.len() * c.q_dim);
    let hd = c.head_dim;
    let group = c.n_head / c.n_kv_head;
    let scale = c.query_scale;
    let simd = f16_vec::simd();
    // One task per (row, head): out[i][h*hd..] is written by that task only.
    team.run_chunks_mut(out, hd, &|task, dst, thread| {
        let tmp = &mut *scratch[thread].lock().unwrap_or_else(|e| e.into_inner());
        let (i, h) = (task / c.n_head, task % c.n_head);
        let Row { slot, pos } = rows[i];
        let qv = &q[i * c.q_dim + h * hd..i * c.q_dim + (h + 1) * hd];
        let end = pos + 1;
        let first = window.map_or(0, |w| end.saturating_sub(w));
        let (keys, values) = kv.head(layer, slot, h / group, first..end);
        attend_f16(qv, keys, values, scale, simd, tmp, dst);
    });
}

/// Per-task scratch space of [`attention`].
#[derive(Default)]
struct Scores {
    q16: Vec<f16>,
    acc16: Vec<f16>,
}

/// One query over `len` keys/values as ggml's CPU flash attention computes it for a
/// single query: f16 query, online softmax, f16 running sum of values.
fn attend_f16(
    qv: &[f32],
    keys: &[f16],
    values: &[f16],
    scale: f32,
    simd: bool,
    tmp: &mut Scores,
    dst: &mut [f32],
) {
    let hd = qv.len();
    tmp.q16.clear();
    tmp.q16.extend(qv.iter().map(|&v| f16::from_f32(v)));
    tmp.acc16.clear();
    tmp.acc16.resize(hd, f16::ZERO);
    let (mut sum, mut max) = (0f32, f32::NEG_INFINITY);
    for (k, v) in keys.chunks_exact(hd).zip(values.chunks_exact(hd)) {
        let s = f16_vec::dot(k, &tmp.q16, simd) * scale;
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > max {
            let old = max;
            max = s;
            ms = (old - max).exp();
            f16_vec::scale(&mut tmp.acc16, ms, simd);
        } else {
            vs = (s - max).exp();
        }
        f16_vec::mad(&mut tmp.acc16, v, vs, simd);
        sum = sum.mul_add(ms, vs); // fused, as llama.cpp's compiler emits it
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (d, a) in dst.iter_mut().zip(&tmp.acc16) {
        *d = a.to_f32() * inv;
    }
}

/// Multiplies the `m` rows of `x` (`cols` wide) by each weight matrix. Matrices of one
/// kernel family share one preparation of `x` and one parallel pass.
fn run_linears(
    team: &Team,
    mmap: &[u8],
    x: &[f32],
    cols: usize,
    m: usize,
    xq: &mut PreparedInputs,
    targets: &mut [(&Linear, &mut [f32])],
) -> anyhow::Result<()> {
    let x = &x[..m * cols];
    let mut jobs = Vec::new();
    let mut wide_jobs = Vec::new();
    for (linear, out) in targets.iter_mut() {
        match linear {
            Linear::Own {
                format,
                rows,
                cols: lc,
                offset,
            } => {
                debug_assert_eq!(*lc, cols);
                let bytes = rows * lc / QK * format.block_bytes();
                let weight = QMatrix {
                    format: *format,
                    rows: *rows,
                    cols: *lc,
                    data: &mmap[*offset..*offset + bytes],
                };
                jobs.push(MatmulJob {
                    weight,
                    out: &mut out[..m * rows],
                });
            }
            Linear::Wide {
                format,
                rows,
                cols: lc,
                offset,
            } => {
                debug_assert_eq!(*lc, cols);
                let data = &mmap[*offset..*offset + rows * format.row_bytes(*lc)];
                let weight = WideMatrix {
                    format: *format,
                    rows: *rows,
                    cols: *lc,
                    data,
                };
                wide_jobs.push(WideJob {
                    weight,
                    out: &mut out[..m * rows],
                });
            }
        }
    }
    if !jobs.is_empty() {
        kernels::quantize_rows(x, cols, &mut xq.q8);
        kernels::matmul(team, &xq.q8, m, &mut jobs);
    }
    if !wide_jobs.is_empty() {
        wide::matmul(team, x, cols, m, &mut xq.wide, &mut wide_jobs);
    }
    Ok(())
}
