//! Our own forward pass of the GGUF `llama` architecture on the CPU (SmolLM2,
//! Llama 2/3, Mistral, TinyLlama...), on memory-mapped weights.
//!
//! Why not candle's `quantized_llama`: its Q4_1 dot product is scalar, its KV cache
//! grows with `Tensor::cat` (a copy of the whole cache per token) and each op is a
//! separate tensor allocation. Here the KV cache is preallocated, Q/K/V and gate/up
//! are one parallel pass each, and every matrix goes through our own kernels:
//! Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 ([`super::kernels`]), Q4_K/Q5_K/Q6_K and F16/BF16/F32
//! ([`super::wide`]). A matrix of any other type is refused at load with an error
//! that names it ([`SUPPORTED_TYPES`]) rather than run on a slow fallback. candle
//! remains a numerical reference: the tests compare logits with `quantized_llama`.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{bail, Context as _};
use candle_core::quantized::{gguf_file, GgmlDType};
use xpu_gguf::{GgufError, GgufFile};

use half::f16;

use super::f16_vec;
use super::floats::FloatFormat;
use super::kernels::{self, BlockQ8, MatmulJob, QMatrix, WeightFormat, QK};
use super::kquants::KFormat;
use super::swiglu::swiglu_in_place;
use super::team::Team;
use super::wide::{self, WideFormat, WideJob, WideMatrix};

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct Config {
    pub n_layer: usize,
    pub dim: usize,
    pub ffn: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub vocab: usize,
    pub context_length: usize,
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

struct Layer {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Token embeddings: rows dequantized on lookup.
enum Embeddings {
    Quantized { format: WeightFormat, offset: usize },
    Wide { format: WideFormat, offset: usize },
}

/// The model: configuration, weights (mapped) and the KV cache of one sequence.
pub struct LlamaModel {
    pub config: Config,
    /// The mapped file: the weights our kernels read in place.
    gguf: GgufFile,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Linear,
    /// cos/sin of each position and rotary pair: [pos][rope_dim / 2].
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    /// Keys and values per layer: [kv_head][position][head_dim], in f16 as in
    /// llama.cpp's default cache (see [`f16_vec`]).
    k_cache: Vec<Vec<f16>>,
    v_cache: Vec<Vec<f16>>,
    /// Positions the cache holds (allocated lazily up to `context_length`).
    cache_capacity: usize,
    scratch: Scratch,
    /// The threads that run the parallel steps (as many as rayon's pool has).
    pub(crate) team: Team,
}

#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    xq: PreparedInputs,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Attention's per-thread scratch, kept between calls so its buffers are reused.
    scores: Vec<Mutex<Scores>>,
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
    /// Maps `path` and builds the model. `max_context` caps the model's context length.
    pub fn load(path: &Path, max_context: Option<usize>) -> anyhow::Result<Self> {
        let gguf = GgufFile::open(path).map_err(|e| match e {
            GgufError::Io(e) => {
                anyhow::Error::new(e).context(format!("cannot open {}", path.display()))
            }
            GgufError::Truncated(detail) => {
                anyhow::anyhow!("{} is truncated: {detail}", path.display())
            }
            e => anyhow::anyhow!("{} is not a readable GGUF file: {e}", path.display()),
        })?;
        Self::from_gguf(gguf, max_context)
    }

    /// Builds the model on a mapped GGUF file whose header the caller has parsed and
    /// checked (tensor extents lie inside the file).
    pub fn from_gguf(gguf: GgufFile, max_context: Option<usize>) -> anyhow::Result<Self> {
        let content = &gguf.content;
        let mmap = gguf.bytes();

        let md = |key: &str| content.metadata.get(key);
        let arch = md("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            bail!("the CPU llama engine runs `llama` GGUF files, not `{arch}`");
        }
        let get_u = |key: &str| -> anyhow::Result<usize> {
            Ok(md(key)
                .with_context(|| format!("GGUF metadata lacks {key}"))?
                .to_u32()? as usize)
        };
        let dim = get_u("llama.embedding_length")?;
        let n_head = get_u("llama.attention.head_count")?;
        let n_kv_head = get_u("llama.attention.head_count_kv").unwrap_or(n_head);
        if n_head == 0 || n_kv_head == 0 || dim % n_head != 0 || n_head % n_kv_head != 0 {
            bail!("invalid attention shape: {n_head} heads, {n_kv_head} KV heads, dimension {dim}");
        }
        let head_dim = dim / n_head;
        let rope_dim = get_u("llama.rope.dimension_count").unwrap_or(head_dim);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            bail!("invalid rope dimension {rope_dim} for head dimension {head_dim}");
        }
        let n_layer = get_u("llama.block_count")?;
        let model_context = get_u("llama.context_length").unwrap_or(4096);
        let context_length = max_context
            .map_or(model_context, |c| c.min(model_context))
            .max(1);
        let rope_base = md("llama.rope.freq_base")
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(10000.0);
        let rms_eps = md("llama.attention.layer_norm_rms_epsilon")
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(1e-5);

        let data_offset = content.tensor_data_offset as usize;
        let tensor = |name: &str| -> anyhow::Result<(&gguf_file::TensorInfo, usize, usize)> {
            let info = content
                .tensor_infos
                .get(name)
                .with_context(|| format!("GGUF file lacks tensor {name}"))?;
            let elems = info.shape.elem_count();
            let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
            let start = data_offset + info.offset as usize;
            if start + bytes > mmap.len() {
                bail!(
                    "tensor {name} needs bytes up to {}, but the file has {} (truncated file?)",
                    start + bytes,
                    mmap.len()
                );
            }
            Ok((info, start, bytes))
        };
        let vector = |name: &str, len: usize| -> anyhow::Result<Vec<f32>> {
            let (info, start, bytes) = tensor(name)?;
            if info.shape.elem_count() != len {
                bail!(
                    "tensor {name} has {} elements, expected {len}",
                    info.shape.elem_count()
                );
            }
            let raw = &mmap[start..start + bytes];
            match info.ggml_dtype {
                GgmlDType::F32 => Ok(raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()),
                GgmlDType::F16 => Ok(raw
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect()),
                other => bail!("tensor {name} has type {other:?}; expected F32 or F16"),
            }
        };
        let linear = |name: &str, rows: usize, cols: usize| -> anyhow::Result<Linear> {
            let (info, start, bytes) = tensor(name)?;
            let dims = info.shape.dims();
            if dims != [rows, cols] {
                bail!("tensor {name} has shape {dims:?}, expected [{rows}, {cols}]");
            }
            let data = &mmap[start..start + bytes];
            let bad = |e: String| anyhow::anyhow!("tensor {name}: {e}");
            Ok(match matrix_format(name, info.ggml_dtype)? {
                MatrixFormat::Own(format) => {
                    QMatrix::new(format, rows, cols, data).map_err(bad)?;
                    Linear::Own {
                        format,
                        rows,
                        cols,
                        offset: start,
                    }
                }
                MatrixFormat::Wide(format) => {
                    WideMatrix::new(format, rows, cols, data).map_err(bad)?;
                    Linear::Wide {
                        format,
                        rows,
                        cols,
                        offset: start,
                    }
                }
            })
        };

        let (emb_info, emb_start, emb_bytes) = tensor("token_embd.weight")?;
        let emb_dims = emb_info.shape.dims().to_vec();
        if emb_dims.len() != 2 || emb_dims[1] != dim {
            bail!("token_embd.weight has shape {emb_dims:?}, expected [vocab, {dim}]");
        }
        let vocab = emb_dims[0];
        let emb_data = &mmap[emb_start..emb_start + emb_bytes];
        let bad = |e: String| anyhow::anyhow!("tensor token_embd.weight: {e}");
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

        let kv_dim = n_kv_head * head_dim;
        let ffn = get_u("llama.feed_forward_length")?;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = format!("blk.{i}.");
            layers.push(Layer {
                attn_norm: vector(&format!("{p}attn_norm.weight"), dim)?,
                wq: linear(&format!("{p}attn_q.weight"), dim, dim)?,
                wk: linear(&format!("{p}attn_k.weight"), kv_dim, dim)?,
                wv: linear(&format!("{p}attn_v.weight"), kv_dim, dim)?,
                wo: linear(&format!("{p}attn_output.weight"), dim, dim)?,
                ffn_norm: vector(&format!("{p}ffn_norm.weight"), dim)?,
                gate: linear(&format!("{p}ffn_gate.weight"), ffn, dim)?,
                up: linear(&format!("{p}ffn_up.weight"), ffn, dim)?,
                down: linear(&format!("{p}ffn_down.weight"), dim, ffn)?,
            });
        }
        let output_norm = vector("output_norm.weight", dim)?;
        // Tied embeddings: without output.weight, the embedding matrix is the output.
        let output = if content.tensor_infos.contains_key("output.weight") {
            linear("output.weight", vocab, dim)?
        } else {
            linear("token_embd.weight", vocab, dim)?
        };

        // Llama 3 files carry per-pair frequency divisors for long contexts.
        let freq_factors = if content.tensor_infos.contains_key("rope_freqs.weight") {
            Some(vector("rope_freqs.weight", rope_dim / 2)?)
        } else {
            None
        };
        // Angles computed as ggml's rope cache does (the position times repeated f32
        // multiplications by base^(-2/dim)), so that they round the same way.
        let half = rope_dim / 2;
        let theta_scale = rope_base.powf(-2.0 / rope_dim as f32);
        let mut rope_cos = Vec::with_capacity(context_length * half);
        let mut rope_sin = Vec::with_capacity(context_length * half);
        for pos in 0..context_length {
            let mut theta = pos as f32;
            for i in 0..half {
                let angle = match &freq_factors {
                    Some(f) => theta / f[i],
                    None => theta,
                };
                rope_cos.push(angle.cos());
                rope_sin.push(angle.sin());
                theta *= theta_scale;
            }
        }

        let config = Config {
            n_layer,
            dim,
            ffn,
            n_head,
            n_kv_head,
            head_dim,
            rope_dim,
            rope_base,
            rms_eps,
            vocab,
            context_length,
        };
        Ok(LlamaModel {
            config,
            gguf,
            embeddings,
            layers,
            output_norm,
            output,
            rope_cos,
            rope_sin,
            k_cache: vec![Vec::new(); n_layer],
            v_cache: vec![Vec::new(); n_layer],
            cache_capacity: 0,
            scratch: Scratch::default(),
            team: Team::new(rayon::current_num_threads()),
        })
    }

    /// Grows the KV cache (geometrically, up to the context length) to hold `needed`
    /// positions, keeping what it holds.
    fn reserve_cache(&mut self, needed: usize) {
        if needed <= self.cache_capacity {
            return;
        }
        let c = &self.config;
        let new_cap = needed
            .max(self.cache_capacity * 2)
            .max(256)
            .min(c.context_length);
        let hd = c.head_dim;
        for cache in self.k_cache.iter_mut().chain(self.v_cache.iter_mut()) {
            let mut grown = vec![f16::ZERO; c.n_kv_head * new_cap * hd];
            for h in 0..c.n_kv_head {
                let old = &cache[h * self.cache_capacity * hd
                    ..(h * self.cache_capacity + self.cache_capacity) * hd];
                grown[h * new_cap * hd..h * new_cap * hd + old.len()].copy_from_slice(old);
            }
            *cache = grown;
        }
        self.cache_capacity = new_cap;
    }

    /// Runs `tokens` at positions `start..` and returns the logits of the last one.
    pub fn forward(&mut self, tokens: &[u32], start: usize) -> anyhow::Result<Vec<f32>> {
        let c = self.config.clone();
        if tokens.is_empty() {
            bail!("forward needs at least one token");
        }
        let end = start + tokens.len();
        if end > c.context_length {
            bail!(
                "{end} positions exceed the context length {}",
                c.context_length
            );
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            bail!(
                "token id {bad} is outside the vocabulary ({} tokens)",
                c.vocab
            );
        }
        self.reserve_cache(end);
        let m = tokens.len();
        let (dim, kv_dim, hd) = (c.dim, c.n_kv_head * c.head_dim, c.head_dim);
        let mut s = std::mem::take(&mut self.scratch);
        s.x.resize(m * dim, 0.0);
        for (row, &t) in s.x.chunks_exact_mut(dim).zip(tokens) {
            match &self.embeddings {
                Embeddings::Quantized { format, offset } => {
                    let bytes = c.vocab * dim / QK * format.block_bytes();
                    let w = QMatrix {
                        format: *format,
                        rows: c.vocab,
                        cols: dim,
                        data: &self.gguf.bytes()[*offset..*offset + bytes],
                    };
                    w.dequantize_row(t as usize, row);
                }
                Embeddings::Wide { format, offset } => {
                    let bytes = c.vocab * format.row_bytes(dim);
                    let data = &self.gguf.bytes()[*offset..*offset + bytes];
                    WideMatrix {
                        format: *format,
                        rows: c.vocab,
                        cols: dim,
                        data,
                    }
                    .dequantize_row(t as usize, row);
                }
            }
        }

        for (li, layer) in self.layers.iter().enumerate() {
            // Attention block.
            rms_norm(&s.x, &layer.attn_norm, c.rms_eps, dim, &mut s.xn);
            s.q.resize(m * dim, 0.0);
            s.k.resize(m * kv_dim, 0.0);
            s.v.resize(m * kv_dim, 0.0);
            run_linears(
                &self.team,
                self.gguf.bytes(),
                &s.xn,
                dim,
                m,
                &mut s.xq,
                &mut [
                    (&layer.wq, &mut s.q[..]),
                    (&layer.wk, &mut s.k[..]),
                    (&layer.wv, &mut s.v[..]),
                ],
            )?;
            for (i, pos) in (start..end).enumerate() {
                let cos = &self.rope_cos[pos * c.rope_dim / 2..(pos + 1) * c.rope_dim / 2];
                let sin = &self.rope_sin[pos * c.rope_dim / 2..(pos + 1) * c.rope_dim / 2];
                for head in s.q[i * dim..(i + 1) * dim].chunks_exact_mut(hd) {
                    rope(head, cos, sin);
                }
                for head in s.k[i * kv_dim..(i + 1) * kv_dim].chunks_exact_mut(hd) {
                    rope(head, cos, sin);
                }
            }
            let cap = self.cache_capacity;
            let (kc, vc) = (&mut self.k_cache[li], &mut self.v_cache[li]);
            for (i, pos) in (start..end).enumerate() {
                for h in 0..c.n_kv_head {
                    let dst = (h * cap + pos) * hd;
                    let src = i * kv_dim + h * hd..i * kv_dim + (h + 1) * hd;
                    for (d, v) in kc[dst..dst + hd].iter_mut().zip(&s.k[src.clone()]) {
                        *d = f16::from_f32(*v);
                    }
                    for (d, v) in vc[dst..dst + hd].iter_mut().zip(&s.v[src]) {
                        *d = f16::from_f32(*v);
                    }
                }
            }
            s.attn.resize(m * dim, 0.0);
            s.scores.resize_with(self.team.threads(), Mutex::default);
            attention(
                &self.team,
                &s.scores,
                &c,
                &s.q,
                kc,
                vc,
                cap,
                start,
                m,
                &mut s.attn,
            );
            s.proj.resize(m * dim, 0.0);
            run_linears(
                &self.team,
                self.gguf.bytes(),
                &s.attn,
                dim,
                m,
                &mut s.xq,
                &mut [(&layer.wo, &mut s.proj[..])],
            )?;
            for (x, p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }

            // Feed-forward block.
            rms_norm(&s.x, &layer.ffn_norm, c.rms_eps, dim, &mut s.xn);
            s.gate.resize(m * c.ffn, 0.0);
            s.up.resize(m * c.ffn, 0.0);
            run_linears(
                &self.team,
                self.gguf.bytes(),
                &s.xn,
                dim,
                m,
                &mut s.xq,
                &mut [(&layer.gate, &mut s.gate[..]), (&layer.up, &mut s.up[..])],
            )?;
            swiglu_in_place(&mut s.gate, &s.up);
            run_linears(
                &self.team,
                self.gguf.bytes(),
                &s.gate,
                c.ffn,
                m,
                &mut s.xq,
                &mut [(&layer.down, &mut s.proj[..])],
            )?;
            for (x, p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }
        }

        // Only the last position's logits are needed.
        let last = &s.x[(m - 1) * dim..m * dim];
        rms_norm(last, &self.output_norm, c.rms_eps, dim, &mut s.xn);
        let mut logits = vec![0f32; self.output.rows()];
        run_linears(
            &self.team,
            self.gguf.bytes(),
            &s.xn,
            dim,
            1,
            &mut s.xq,
            &mut [(&self.output, &mut logits[..])],
        )?;
        self.scratch = s;
        Ok(logits)
    }

    /// Forgets the sequence. The cache memory is kept for the next one.
    pub fn reset(&mut self) {
        // Positions are always written before they are read, so nothing to clear.
    }
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

/// Rotates the interleaved pairs (2i, 2i+1) of the first `2 * cos.len()` values
/// (GGUF llama stores Q and K permuted for this "normal" RoPE). The products are
/// fused as in llama.cpp's build, where the compiler contracts `a*c - b*s` into one
/// FMA, so the rounding is the same.
fn rope(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    for (i, (c, s)) in cos.iter().zip(sin).enumerate() {
        let (a, b) = (head[2 * i], head[2 * i + 1]);
        head[2 * i] = a.mul_add(*c, -(b * s));
        head[2 * i + 1] = a.mul_add(*s, b * c);
    }
}

/// Batches of at least this many queries use f32 arithmetic on the f16 cache, as
/// ggml's tiled flash attention does (`GGML_FA_TILE_Q`); smaller ones (decode) use
/// ggml's one-query-at-a-time arithmetic with f16 accumulation ([`f16_vec`]).
const F32_ATTENTION_MIN_QUERIES: usize = 64;

/// Causal attention of `m` queries at positions `start..start + m` over the cache.
#[allow(clippy::too_many_arguments)]
fn attention(
    team: &Team,
    scratch: &[Mutex<Scores>],
    c: &Config,
    q: &[f32],
    kc: &[f16],
    vc: &[f16],
    cap: usize,
    start: usize,
    m: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), m * c.dim);
    let hd = c.head_dim;
    let group = c.n_head / c.n_kv_head;
    let scale = 1.0 / (hd as f32).sqrt();
    let simd = f16_vec::simd();
    let f32_path = m >= F32_ATTENTION_MIN_QUERIES;
    // One task per (query row, head): out[i][h*hd..] is written by that task only.
    team.run_chunks_mut(out, hd, &|task, dst, thread| {
        let tmp = &mut *scratch[thread].lock().unwrap_or_else(|e| e.into_inner());
        let (i, h) = (task / c.n_head, task % c.n_head);
        let kvh = h / group;
        let qv = &q[i * c.dim + h * hd..i * c.dim + (h + 1) * hd];
        let len = start + i + 1;
        let keys = &kc[kvh * cap * hd..(kvh * cap + len) * hd];
        let values = &vc[kvh * cap * hd..(kvh * cap + len) * hd];
        if f32_path {
            attend_f32(qv, keys, values, scale, simd, tmp, dst);
        } else {
            attend_f16(qv, keys, values, scale, simd, tmp, dst);
        }
    });
}

/// Per-task scratch space of [`attention`].
#[derive(Default)]
struct Scores {
    scores: Vec<f32>,
    q16: Vec<f16>,
    acc16: Vec<f16>,
}

/// One query over `len` keys/values in f32: scores, softmax, weighted sum.
fn attend_f32(
    qv: &[f32],
    keys: &[f16],
    values: &[f16],
    scale: f32,
    simd: bool,
    tmp: &mut Scores,
    dst: &mut [f32],
) {
    let hd = qv.len();
    tmp.scores.clear();
    tmp.scores.extend(
        keys.chunks_exact(hd)
            .map(|k| f16_vec::dot_f32(qv, k, simd) * scale),
    );
    let max = tmp.scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in tmp.scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    dst.fill(0.0);
    for (w, v) in tmp.scores.iter().zip(values.chunks_exact(hd)) {
        f16_vec::axpy_f32(dst, v, w * inv, simd);
    }
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
