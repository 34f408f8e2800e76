//! Weight types, their GPU layouts, and the upload of weight matrices in chunks.
//!
//! Quantized blocks stay quantized on the GPU. Where a GGUF block is not a whole number of
//! 32-bit words the bytes are rearranged once at upload so that kernels read aligned words:
//! Q8_0 and Q4_0 put all quants first and all f16 scales after them (no padding, so the bytes
//! read per token equal the GGUF bytes); within a row, Q8_0 puts the first 16 quant bytes of
//! every block before the last 16 of every block, so that the threads of a decode product,
//! which take consecutive blocks, read consecutive 16-byte words with each load. Q4_K and Q6_K
//! are split into sections the same way (see [`q4k_layout`] and [`q6k_layout`]): the quants of
//! every 32-weight unit in one 16-byte word (Q6_K's high bits in two more words), units in
//! row order, then the super-blocks' scales. F32, F16, BF16, Q4_1 and Q5_K are uploaded
//! exactly as stored.

use candle_core::quantized::GgmlDType;

use crate::kernels::{self, Kernels, MatvecInput};
use crate::record::Recorder;
use crate::{Gpu, VulkanError};

/// Weight formats the matrix kernels can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl WeightType {
    /// The kernel format for a GGUF tensor type, or `None` if there is no kernel for it.
    pub fn from_ggml(dtype: GgmlDType) -> Option<WeightType> {
        Some(match dtype {
            GgmlDType::F32 => WeightType::F32,
            GgmlDType::F16 => WeightType::F16,
            GgmlDType::BF16 => WeightType::BF16,
            GgmlDType::Q4_0 => WeightType::Q4_0,
            GgmlDType::Q4_1 => WeightType::Q4_1,
            GgmlDType::Q8_0 => WeightType::Q8_0,
            GgmlDType::Q4K => WeightType::Q4K,
            GgmlDType::Q5K => WeightType::Q5K,
            GgmlDType::Q6K => WeightType::Q6K,
            _ => return None,
        })
    }

    /// The kernel format of tensor `name`, or the error that names the tensor, its type and
    /// the types that have kernels.
    pub fn for_tensor(name: &str, dtype: GgmlDType) -> Result<WeightType, VulkanError> {
        WeightType::from_ggml(dtype).ok_or_else(|| VulkanError::Tensor {
            name: name.to_string(),
            detail: format!(
                "type {dtype:?} has no Vulkan kernel (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K); requantize the file to one of these or use --device cpu"
            ),
        })
    }

    /// Weights per GGUF block.
    pub fn block_elems(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 | WeightType::BF16 => 1,
            WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0 => 32,
            WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => 256,
        }
    }

    /// Bytes per GGUF block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 | WeightType::BF16 => 2,
            WeightType::Q4_0 => 18,
            WeightType::Q4_1 => 20,
            WeightType::Q8_0 => 34,
            WeightType::Q4K => 144,
            WeightType::Q5K => 176,
            WeightType::Q6K => 210,
        }
    }

    /// Bytes of one row of `k` weights as stored in the GGUF file.
    pub fn row_bytes(self, k: usize) -> usize {
        k / self.block_elems() * self.block_bytes()
    }

    /// Bytes of one row on the GPU: those of the file (the layouts only move bytes).
    fn gpu_row_bytes(self, k: usize) -> usize {
        self.row_bytes(k)
    }

    /// Whether the kernels read this type's buffer as single words (binding 0 of matmul.wgsl).
    fn word_view(self) -> bool {
        !matches!(
            self,
            WeightType::F32
                | WeightType::F16
                | WeightType::BF16
                | WeightType::Q4K
                | WeightType::Q5K
        )
    }

    /// Whether the kernels also read this type's buffer as vec4 words (binding 7 of
    /// matmul.wgsl): its 32-weight units start on 16-byte boundaries.
    fn vec4_view(self) -> bool {
        matches!(
            self,
            WeightType::F32
                | WeightType::F16
                | WeightType::BF16
                | WeightType::Q8_0
                | WeightType::Q4_0
                | WeightType::Q4K
                | WeightType::Q5K
                | WeightType::Q6K
        )
    }

    /// Row lengths the kernels accept: whole blocks and whole 32-weight units.
    fn check_row_len(self, k: usize) -> Result<(), String> {
        let unit = self.block_elems().max(32);
        if k == 0 || !k.is_multiple_of(unit) {
            return Err(format!(
                "row length {k} is not a positive multiple of {unit} for {self:?}"
            ));
        }
        Ok(())
    }
}

/// Rearranges GGUF rows of `row_bytes` bytes into the GPU layout. Returns the bytes and the
/// word offset of the scales section (0 where the type has none).
pub(crate) fn to_gpu_layout(ty: WeightType, raw: &[u8], row_bytes: usize) -> (Vec<u8>, u32) {
    match ty {
        WeightType::Q8_0 | WeightType::Q4_0 => {
            let bb = ty.block_bytes();
            let qb = bb - 2;
            let blocks = raw.len() / bb;
            let mut out = Vec::with_capacity(blocks * bb + 2);
            if ty == WeightType::Q8_0 {
                for row in raw.chunks_exact(row_bytes) {
                    for half in [2..18, 18..34] {
                        for b in row.chunks_exact(bb) {
                            out.extend_from_slice(&b[half.clone()]);
                        }
                    }
                }
            } else {
                for b in raw.chunks_exact(bb) {
                    out.extend_from_slice(&b[2..]);
                }
            }
            let aux = (out.len() / 4) as u32;
            for b in raw.chunks_exact(bb) {
                out.extend_from_slice(&b[..2]);
            }
            debug_assert_eq!(out.len(), blocks * (qb + 2));
            (out, aux)
        }
        WeightType::Q4K => q4k_layout(raw),
        WeightType::Q6K => q6k_layout(raw),
        _ => (raw.to_vec(), 0),
    }
}

/// The 32 quants of sub-block `s` (0..7) of a Q4_K or Q6_K block as one 16-byte word: byte
/// `i` holds element `i` in its low nibble and element `16 + i` in its high nibble, so that
/// masking a 4-byte word gives four consecutive elements, one a byte, ready for an integer
/// dot product. `nibble(l)`: the low 4 bits of element `l` of the sub-block.
fn unit_nibbles(nibble: impl Fn(usize) -> u8) -> [u8; 16] {
    std::array::from_fn(|i| nibble(i) | (nibble(16 + i) << 4))
}

/// Q4_K for the GPU (matmul.wgsl and q4_k.wgsl read it): every 32-weight unit's quants as one
/// 16-byte word ([`unit_nibbles`]), all units of all rows in order, then every block's 16-byte
/// head (f16 d, f16 dmin, the 12 bytes of packed scales and minimums) from the returned word
/// offset on. A decode thread then reads its unit with one 16-byte load, and the threads of
/// a subgroup, which take consecutive units, read consecutive memory; in the file the two
/// sub-blocks of a byte share it, so each thread read 32 bytes to use half of each.
fn q4k_layout(raw: &[u8]) -> (Vec<u8>, u32) {
    let mut out = Vec::with_capacity(raw.len());
    for b in raw.chunks_exact(144) {
        let qs = &b[16..];
        for s in 0..8 {
            let shift = 4 * (s & 1);
            let q = &qs[32 * (s / 2)..32 * (s / 2) + 32];
            out.extend_from_slice(&unit_nibbles(|l| (q[l] >> shift) & 0xf));
        }
    }
    let aux = (out.len() / 4) as u32;
    for b in raw.chunks_exact(144) {
        out.extend_from_slice(&b[..16]);
    }
    (out, aux)
}

/// Q6_K for the GPU (q6_k.wgsl), in four sections, each in unit or block order over all rows:
/// the units' low 4 bits as one 16-byte word each ([`unit_nibbles`]); their high 2 bits as
/// two words per unit, every unit's first word and then every unit's second word (word `h`,
/// byte `i`, bits `2j..2j + 1`: element `16h + 4j + i`); every block's 16 int8 scales; every
/// block's f16 d. The returned word offset is that of the high bits (the section of
/// low bits has as many words as 4 per unit). In the file a unit's 6-bit values are spread
/// over 16 separate words of a 210-byte block that is not even word aligned.
fn q6k_layout(raw: &[u8]) -> (Vec<u8>, u32) {
    let blocks = raw.len() / 210;
    let mut out = Vec::with_capacity(blocks * 212);
    // Element l of sub-block s = 4h + c: ql byte 64h + 32(c & 1) + l (low nibble for c < 2),
    // qh byte 32h + l, bits 2c..2c + 1 (as ggml's dequantize_row_q6_K).
    let quant = |b: &[u8], s: usize, l: usize| -> u8 {
        let (h, c) = (s / 4, s % 4);
        let lo = (b[64 * h + 32 * (c & 1) + l] >> (4 * (c / 2))) & 0xf;
        let hi = (b[128 + 32 * h + l] >> (2 * c)) & 3;
        lo | (hi << 4)
    };
    for b in raw.chunks_exact(210) {
        for s in 0..8 {
            out.extend_from_slice(&unit_nibbles(|l| quant(b, s, l) & 0xf));
        }
    }
    let aux = (out.len() / 4) as u32;
    for half in 0..2 {
        for b in raw.chunks_exact(210) {
            for s in 0..8 {
                let word: [u8; 4] = std::array::from_fn(|i| {
                    (0..4).fold(0, |acc, j| {
                        acc | ((quant(b, s, 16 * half + 4 * j + i) >> 4) << (2 * j))
                    })
                });
                out.extend_from_slice(&word);
            }
        }
    }
    for b in raw.chunks_exact(210) {
        out.extend_from_slice(&b[192..208]);
    }
    for b in raw.chunks_exact(210) {
        out.extend_from_slice(&b[208..210]);
    }
    (out, aux)
}

/// One contiguous range of rows in its own buffer (one storage binding).
pub(crate) struct Chunk {
    pub buffer: wgpu::Buffer,
    pub row_offset: u32,
    pub rows: u32,
    pub aux: u32,
}

/// A weight matrix `[rows, k]` on the GPU, split by rows into chunks that each fit one binding.
pub struct GpuWeight {
    pub(crate) ty: WeightType,
    pub(crate) rows: usize,
    pub(crate) k: usize,
    pub(crate) chunks: Vec<Chunk>,
}

impl GpuWeight {
    /// Uploads a `[rows, k]` matrix given as raw GGUF bytes of type `ty`.
    pub fn upload(
        gpu: &Gpu,
        name: &str,
        ty: WeightType,
        rows: usize,
        k: usize,
        raw: &[u8],
    ) -> Result<GpuWeight, VulkanError> {
        let terr = |detail: String| VulkanError::Tensor {
            name: name.to_string(),
            detail,
        };
        ty.check_row_len(k).map_err(terr)?;
        if raw.len() != rows * ty.row_bytes(k) {
            return Err(terr(format!(
                "{} bytes given, {rows} rows of {k} {ty:?} weights need {}",
                raw.len(),
                rows * ty.row_bytes(k)
            )));
        }
        // Leave room for the padding of the buffer to a multiple of 16 bytes.
        let row_gpu = ty.gpu_row_bytes(k) as u64;
        let rows_per_chunk = ((gpu.max_binding() / 16 * 16).saturating_sub(16) / row_gpu) as usize;
        if rows_per_chunk == 0 {
            return Err(terr(format!(
                "one row takes {row_gpu} bytes, more than the largest storage binding of {} bytes",
                gpu.max_binding()
            )));
        }
        // An even number of rows per chunk where possible, so that the row pairs of the fused
        // decode epilogues (RoPE, gate/up) stay in one chunk.
        let rows_per_chunk = rows_per_chunk.min(u32::MAX as usize - 1);
        let rows_per_chunk = if rows_per_chunk > 1 {
            rows_per_chunk / 2 * 2
        } else {
            rows_per_chunk
        };
        let row_raw = ty.row_bytes(k);
        let mut chunks = Vec::new();
        let mut r0 = 0;
        while r0 < rows {
            let n = rows_per_chunk.min(rows - r0);
            let (bytes, aux) = to_gpu_layout(ty, &raw[r0 * row_raw..(r0 + n) * row_raw], row_raw);
            let buffer = gpu.storage_init(&format!("{name}[{r0}..{}]", r0 + n), &bytes)?;
            chunks.push(Chunk {
                buffer,
                row_offset: r0 as u32,
                rows: n as u32,
                aux,
            });
            r0 += n;
        }
        Ok(GpuWeight {
            ty,
            rows,
            k,
            chunks,
        })
    }

    /// Whether every chunk starts at an even row, so that rows 2i and 2i + 1 (a RoPE pair of
    /// the q|k|v product, a gate/up pair of the interleaved gate|up product) are always in
    /// the same chunk.
    pub fn pairs_in_chunks(&self) -> bool {
        self.chunks.iter().all(|c| c.row_offset % 2 == 0)
    }

    /// Number of chunks (bindings) the matrix was split into.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The storage format.
    pub fn weight_type(&self) -> WeightType {
        self.ty
    }
}

/// Static parameters of one matmul or get_rows dispatch (`Params` in matmul.wgsl).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MatmulParams {
    rows: u32,
    row_offset: u32,
    k: u32,
    out_stride: u32,
    aux: u32,
    accumulate: u32,
    logit_rows: u32,
    out_offset: u32,
    lanes: u32,
    eps: f32,
    /// Mixed decode products: the rows of the first part and `aux` of the second part's
    /// buffer (see MV_MIXED in matmul.wgsl); 0 otherwise.
    split: u32,
    aux_b: u32,
}

/// Threads per row for rows of `k` weights: the largest power of two not above a quarter of
/// the number of 32-weight units, within 8..=64 (`lanes` in matmul.wgsl). About four units per
/// thread amortize the workgroup reduction over more loads (measured on the H100: one unit
/// per thread left decode latency-bound).
fn lanes_for(k: usize) -> u32 {
    let units = (k / 32 / 4).max(1) as u32;
    let pow2 = if units.is_power_of_two() {
        units
    } else {
        units.next_power_of_two() / 2
    };
    pow2.clamp(8, kernels::WORKGROUP)
}

/// Where a matmul writes, how it combines, and which tokens it covers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MatmulMode {
    /// Add into the output (a fused residual add) instead of overwriting it.
    pub accumulate: bool,
    /// The input holds the rows whose logits are wanted (`out_rows` in the step uniform, one
    /// per sequence of the step), not one row per token: the output head.
    pub logit_rows: bool,
    /// Floats per token in the output; 0: the weight's row count. Larger when several
    /// matmuls write side by side into one output row (q | k | v).
    pub out_stride: u32,
    /// Offset of this weight's first output within a token's output row.
    pub out_offset: u32,
    /// A decode product keeps x in f32 even for the types whose decode products quantize it
    /// to int8 (`MV_DP4A` in matmul.wgsl): the output head, whose products are the logits.
    pub exact_input: bool,
}

/// The input of a decode step's fused matrix-vector product, which replaces the separate
/// RMSNorm or SiLU·mul dispatch before the matrix.
#[derive(Clone, Copy)]
pub(crate) enum FusedInput<'a> {
    /// RMSNorm(x) * weight with this epsilon; x is the un-normalised hidden state.
    Norm {
        x: &'a wgpu::Buffer,
        weight: &'a wgpu::Buffer,
        eps: f32,
    },
    /// silu(gate) * up; x holds the token's gate and up values (2 k values): [gate | up], or
    /// with `interleaved` gate j and up j side by side (the output of a gate|up matrix
    /// uploaded interleaved). One token: `matvec_glu`, only for [gate | up] (with interleaved
    /// rows the gate|up product does SiLU·mul itself, `FusedInput::NormGlu`); a multi-token
    /// step: `glu_quantize_x`, where the product reads int8 x.
    Glu {
        x: &'a wgpu::Buffer,
        interleaved: bool,
    },
    /// RMSNorm as `Norm`, then RoPE with interleaved pairs and the K/V store of the token
    /// (the q|k|v product; the rope kernel's work, see `matvec_norm_rope` in matmul.wgsl).
    /// Only for a matrix whose chunks start at even rows ([`GpuWeight::pairs_in_chunks`]),
    /// written at output offset 0 without accumulation.
    NormRope {
        x: &'a wgpu::Buffer,
        weight: &'a wgpu::Buffer,
        eps: f32,
        rope: RopeBuffers<'a>,
    },
    /// RMSNorm as `Norm` into a gate|up matrix whose rows are interleaved (row 2j gate j,
    /// row 2j + 1 up j), then SiLU·mul: `act[j] = silu(gate j) * up j` is written to `act`
    /// instead of the product's output. Same conditions as `NormRope`.
    NormGlu {
        x: &'a wgpu::Buffer,
        weight: &'a wgpu::Buffer,
        eps: f32,
        act: &'a wgpu::Buffer,
    },
}

/// The buffers the rope kernel binds (rope.wgsl), for `FusedInput::NormRope`.
#[derive(Clone, Copy)]
pub(crate) struct RopeBuffers<'a> {
    pub kcache: &'a wgpu::Buffer,
    pub vcache: &'a wgpu::Buffer,
    pub cos_sin: &'a wgpu::Buffer,
    /// rope.wgsl's `Params` uniform.
    pub params: &'a wgpu::Buffer,
    /// The step's per-token (position, slot's first cache position) table.
    pub rows: &'a wgpu::Buffer,
}

/// Binds the weight chunk as matmul.wgsl reads it: as words (binding 0) and/or as vec4 words
/// (binding 7), whichever the type's kernels use (a binding the shader never reads must not
/// be in the bind group). `entries` are the other bindings.
fn with_weight_views<'b>(
    ty: WeightType,
    chunk: &'b wgpu::Buffer,
    mut entries: Vec<(u32, &'b wgpu::Buffer)>,
) -> Vec<(u32, &'b wgpu::Buffer)> {
    if ty.word_view() {
        entries.push((0, chunk));
    }
    if ty.vec4_view() {
        entries.push((7, chunk));
    }
    entries
}

/// One pipeline with the bind group and workgroup count of each chunk; `more`: those of
/// further parts (other weights written side by side, each with its own pipeline).
struct Dispatches {
    pipeline: wgpu::ComputePipeline,
    chunks: Vec<(wgpu::BindGroup, u32)>,
    more: Vec<Dispatches>,
}

impl Dispatches {
    fn new(pipeline: wgpu::ComputePipeline) -> Dispatches {
        Dispatches {
            pipeline,
            chunks: Vec::new(),
            more: Vec::new(),
        }
    }

    fn record(&self, rec: &mut Recorder<'_, '_>, label: &'static str, z: u32) {
        for (bg, workgroups) in &self.chunks {
            let x = (*workgroups).min(kernels::ROWS_PER_Y);
            let y = workgroups.div_ceil(kernels::ROWS_PER_Y);
            rec.dispatch(label, &self.pipeline, bg, [x, y, z]);
        }
        for d in &self.more {
            d.record(rec, label, z);
        }
    }

    fn dispatch_count(&self) -> usize {
        self.chunks.len()
            + self
                .more
                .iter()
                .map(Dispatches::dispatch_count)
                .sum::<usize>()
    }
}

/// One part's prompt product (`matmul_coop` or `matmul_tiled`) in each tile the device
/// compiled, largest first (`KernelTuning::coop_ladder`), with the tokens of each tile.
struct TiledShapes {
    shapes: Vec<(Dispatches, u32)>,
    /// `coopmin=`: the fewest workgroups a tile may give before the next one is used.
    min_groups: u32,
}

impl TiledShapes {
    /// The tile a step of `n` tokens runs: the largest whose grid has at least `min_groups`
    /// workgroups, else the smallest (the most workgroups). Larger tiles do more products
    /// per staged byte, but a grid of fewer workgroups than the GPU has cores leaves cores
    /// idle for the whole product.
    fn pick(&self, n: u32) -> Option<(&Dispatches, u32)> {
        let groups = self.shapes.iter().map(|(d, tokens)| {
            d.chunks.iter().map(|(_, rows)| rows).sum::<u32>() * n.div_ceil(*tokens)
        });
        let (d, tokens) = self.shapes.get(tile_index(groups, self.min_groups))?;
        Some((d, *tokens))
    }
}

/// The index of the first tile (largest first) whose grid (the workgroup counts `groups`, one
/// per tile) has at least `min_groups` workgroups, else of the last; 0 where there is none.
fn tile_index(groups: impl ExactSizeIterator<Item = u32>, min_groups: u32) -> usize {
    let last = groups.len().saturating_sub(1);
    groups
        .enumerate()
        .find(|&(_, g)| g >= min_groups)
        .map_or(last, |(i, _)| i)
}

/// Whether two side-by-side weights (`parts`: weight and output offset) can be one mixed
/// decode dispatch (see [`Kernels::matvec_mixed`]): each in one chunk, the second written
/// right after the first, the same row length, and the first's rows a whole number of
/// workgroups of the decode product (so that no workgroup straddles the two types; even, so
/// RoPE and gate/up pairs stay in one workgroup).
pub(crate) fn mixed_decode(kernels: &Kernels, parts: &[(&GpuWeight, u32)]) -> bool {
    let [(a, 0), (b, offset)] = parts else {
        return false;
    };
    let group = kernels.matvec_group(a.rows + b.rows, a.k);
    a.chunks.len() == 1
        && b.chunks.len() == 1
        && a.k == b.k
        && *offset as usize == a.rows
        && a.rows.is_multiple_of(group.rows as usize)
}

/// Whether `parts` can have a decode product with a fused epilogue (RoPE, SiLU·mul), which
/// needs all rows in one dispatch: one weight whose chunks keep row pairs together, or two
/// that make one mixed dispatch.
pub(crate) fn one_decode_dispatch(kernels: &Kernels, parts: &[(GpuWeight, u32)]) -> bool {
    match parts {
        [(w, _)] => w.pairs_in_chunks(),
        [(a, oa), (b, ob)] => mixed_decode(kernels, &[(a, *oa), (b, *ob)]),
        _ => false,
    }
}

/// A matrix product with its bind groups prepared once: `y (+)= x · Wᵀ` per chunk. One token
/// uses the matrix-vector kernel (`matvec`), steps of a few tokens (up to
/// Kernels::matvec_tokens, e.g. a batched decode step) the multi-token one (`matvec_multi`,
/// each weight read once per workgroup of tokens), more tokens the batched kernel
/// (`matmul`), at least TILED_MIN_TOKENS the tiled one (`matmul_coop` on cooperative
/// matrices where the device runs it, else `matmul_tiled`) where the kernels have it, and a decode step may use the fused-input matrix-vector kernel instead (see
/// `fused`).
pub(crate) struct MatmulOp {
    label: &'static str,
    batch: Dispatches,
    /// The prompt product of many tokens (`matmul_coop` or `matmul_tiled`) of each part, in
    /// every tile the device compiled.
    tiled: Vec<TiledShapes>,
    single: Dispatches,
    /// `matvec_multi` and its tokens per workgroup; `None` with `multi=0` (then `single`
    /// runs once per token).
    multi: Option<(Dispatches, u32)>,
    /// Where `multi` reads x quantized ahead (`MV_XQ` in matvec_multi.wgsl): the
    /// `quantize_x` pipeline, its bind group and workgroups per token, dispatched once per
    /// step before the products of every part (which share `xq`).
    quantize: Option<(wgpu::ComputePipeline, wgpu::BindGroup, u32)>,
    /// The buffer `quantize_x` writes and `multi` reads (bound even where the pipeline does
    /// not read it); shared by the parts of a side-by-side product.
    xq: Option<wgpu::Buffer>,
    /// Where the prompt product is `matmul_coop`: the f16 copy of x it binds (`x16` in
    /// matmul_coop.wgsl), shared by the parts of a side-by-side product, and, where its tiles
    /// stage that copy (`coopx16=1`), the conversion dispatched once before the parts
    /// (`coop_x_f16`: pipeline, bind group, workgroups per token).
    x16: Option<wgpu::Buffer>,
    x16_convert: Option<(wgpu::ComputePipeline, wgpu::BindGroup, u32)>,
    /// Where the op converts x to f16 and was made with a fused input, with `x16fuse=1`: the
    /// dispatch that computes that input (RMSNorm or SiLU·mul) straight into `x16`, which a
    /// prompt step with the fused input runs instead of the separate transformation before
    /// the op and `x16_convert` (see [`x16_fused`]).
    x16_fused: Option<FusedQuantize>,
    /// Where every part reads `xq` and the fused input can be computed with its quantization:
    /// the dispatch a multi-token step with the fused input runs instead of the separate
    /// transformation before the op and `quantize`.
    fused_quantize: Option<FusedQuantize>,
    fused: Option<Dispatches>,
    /// Steps of at most this many tokens run `single` once per token (Kernels::matvec_tokens).
    matvec_tokens: u32,
}

impl MatmulOp {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &Gpu,
        kernels: &Kernels,
        label: &'static str,
        weight: &GpuWeight,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        step: &wgpu::Buffer,
        mode: MatmulMode,
        fused: Option<FusedInput<'_>>,
    ) -> Result<MatmulOp, VulkanError> {
        let mut op =
            MatmulOp::with_first(gpu, kernels, label, weight, x, y, step, mode, fused, None)?;
        op.fused_quantize = fused_quantize(gpu, kernels, &op, &[weight], step, mode, fused)?;
        op.x16_fused = x16_fused(gpu, kernels, &op, weight.k, fused)?;
        Ok(op)
    }

    /// As [`new`](Self::new); `first`: the first part of a side-by-side product, whose
    /// quantized x (filled by its `quantize_x` dispatch) and f16 x (filled by its `coop_x_f16`
    /// dispatch) every later part reads, else they are made.
    #[allow(clippy::too_many_arguments)]
    fn with_first(
        gpu: &Gpu,
        kernels: &Kernels,
        label: &'static str,
        weight: &GpuWeight,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        step: &wgpu::Buffer,
        mode: MatmulMode,
        fused: Option<FusedInput<'_>>,
        first: Option<&MatmulOp>,
    ) -> Result<MatmulOp, VulkanError> {
        let shared_xq = first.and_then(|op| op.xq.as_ref());
        let batch_pipeline = kernels.matmul(weight.ty).clone();
        let group = kernels.matvec_group(weight.rows, weight.k);
        let mv_rows = group.rows;
        let single_pipeline = kernels
            .matvec(weight.ty, MatvecInput::Plain, group, mode.exact_input)
            .clone();
        let (fused_pipeline, fused_x, norm_w, eps) = match &fused {
            None => (None, x, x, 0.0),
            Some(FusedInput::Norm { x, weight: nw, eps }) => (
                Some(
                    kernels
                        .matvec(weight.ty, MatvecInput::Norm, group, mode.exact_input)
                        .clone(),
                ),
                *x,
                *nw,
                *eps,
            ),
            Some(FusedInput::Glu {
                x,
                interleaved: false,
            }) => (
                Some(
                    kernels
                        .matvec(weight.ty, MatvecInput::Glu, group, false)
                        .clone(),
                ),
                *x,
                *x,
                0.0,
            ),
            // No one-token product reads interleaved gate|up rows.
            Some(FusedInput::Glu {
                interleaved: true, ..
            }) => (None, x, x, 0.0),
            Some(
                FusedInput::NormRope {
                    x, weight: nw, eps, ..
                }
                | FusedInput::NormGlu {
                    x, weight: nw, eps, ..
                },
            ) => {
                if !weight.pairs_in_chunks() || mode.out_offset != 0 || mode.accumulate {
                    return Err(VulkanError::InvalidInput(format!(
                        "{label}: RoPE or SiLU·mul fused into the product needs chunks starting at even rows, output offset 0 and no accumulation"
                    )));
                }
                let input = if matches!(fused, Some(FusedInput::NormRope { .. })) {
                    MatvecInput::NormRope
                } else {
                    MatvecInput::NormGlu
                };
                (
                    Some(kernels.matvec(weight.ty, input, group, false).clone()),
                    *x,
                    *nw,
                    *eps,
                )
            }
        };
        // The fused SiLU·mul writes the activation, not the product's output.
        let fused_y = match &fused {
            Some(FusedInput::NormGlu { act, .. }) => *act,
            _ => y,
        };
        let rope = match &fused {
            Some(FusedInput::NormRope { rope, .. }) => Some(*rope),
            _ => None,
        };
        let mut batch = Dispatches::new(batch_pipeline);
        let tiled_kernels = kernels.matmul_tiled(weight.ty);
        let mut tiled = TiledShapes {
            shapes: tiled_kernels
                .iter()
                .map(|t| (Dispatches::new(t.pipeline.clone()), t.tokens))
                .collect(),
            min_groups: kernels.coop_min_groups(),
        };
        // Half the bytes of x: its values in f16 (every tile of a device binds it or none).
        let x16 = match (tiled_kernels.first(), first.and_then(|op| op.x16.as_ref())) {
            (Some(t), Some(b)) if t.binds_x16 => Some(b.clone()),
            (Some(t), None) if t.binds_x16 => Some(kernels.x16_scratch(gpu, x.size() / 2)?),
            _ => None,
        };
        let mut x16_convert = None;
        let mut single = Dispatches::new(single_pipeline);
        let multi_kernel = kernels.matvec_multi(weight.ty, mode.exact_input);
        let mut multi = multi_kernel.map(|(p, _, cols)| (Dispatches::new(p.clone()), cols));
        // Three vec4 words per unit and token of a multi-token step (see `xq` in
        // matvec_multi.wgsl).
        let units = (weight.k / 32) as u32;
        let xq = match (&multi, shared_xq) {
            (None, _) => None,
            (Some(_), Some(b)) => Some(b.clone()),
            (Some(_), None) => Some(gpu.storage(
                "quantized x",
                units as u64 * kernels.matvec_tokens() as u64 * 48,
            )?),
        };
        let mut quantize = None;
        let mut fused = fused_pipeline.map(Dispatches::new);
        let lanes = lanes_for(weight.k);
        for c in &weight.chunks {
            let params = MatmulParams {
                rows: c.rows,
                row_offset: c.row_offset,
                k: weight.k as u32,
                out_stride: if mode.out_stride == 0 {
                    weight.rows as u32
                } else {
                    mode.out_stride
                },
                aux: c.aux,
                accumulate: mode.accumulate as u32,
                logit_rows: mode.logit_rows as u32,
                out_offset: mode.out_offset,
                lanes,
                eps,
                split: 0,
                aux_b: 0,
            };
            let ubuf = gpu.uniform_init("matmul params", bytemuck::bytes_of(&params))?;
            let with_w4 = |entries| with_weight_views(weight.ty, &c.buffer, entries);
            let bg = kernels::bind(
                gpu,
                &batch.pipeline,
                label,
                &with_w4(vec![(1, x), (2, y), (3, &ubuf), (4, step)]),
            );
            // Workgroups needed: each covers WORKGROUP / lanes rows.
            batch
                .chunks
                .push((bg, c.rows.div_ceil(kernels::WORKGROUP / lanes)));
            for ((t, _), kernel) in tiled.shapes.iter_mut().zip(tiled_kernels) {
                let mut entries = vec![(1, x), (2, y), (3, &ubuf), (4, step)];
                if let Some(x16) = &x16 {
                    entries.push((16, x16));
                }
                let bg = kernels::bind(gpu, &t.pipeline, label, &with_w4(entries));
                t.chunks.push((bg, c.rows.div_ceil(kernel.rows)));
            }
            if let Some(kernel) = tiled_kernels.first() {
                // One conversion for all chunks and parts (it reads only k and the token
                // count), by the first part.
                if let (None, None, Some(conv), Some(x16)) =
                    (&x16_convert, first, &kernel.x_f16, &x16)
                {
                    let bg = kernels::bind(
                        gpu,
                        conv,
                        "x to f16",
                        &[(1, x), (3, &ubuf), (4, step), (16, x16)],
                    );
                    let groups = (weight.k as u32 / 8).div_ceil(kernels::WORKGROUP);
                    x16_convert = Some((conv.clone(), bg, groups));
                }
            }
            let mv_groups = c.rows.div_ceil(mv_rows);
            // Binding 6 (the norm weights) is only read by matvec_norm; the others bind x there.
            let bg = kernels::bind(
                gpu,
                &single.pipeline,
                label,
                &with_w4(vec![(1, x), (2, y), (3, &ubuf), (6, x)]),
            );
            single.chunks.push((bg, mv_groups));
            if let (Some((m, _)), Some((_, rows, _)), Some(xq)) =
                (multi.as_mut(), multi_kernel, xq.as_ref())
            {
                let bg = kernels::bind(
                    gpu,
                    &m.pipeline,
                    label,
                    &with_w4(vec![
                        (1, x),
                        (2, y),
                        (3, &ubuf),
                        (4, step),
                        (6, x),
                        (15, xq),
                    ]),
                );
                m.chunks.push((bg, c.rows.div_ceil(rows)));
                // One quantization for all chunks (it reads only k and the token count).
                if let (None, Some(qp)) = (
                    &quantize,
                    kernels.multi_quantize(weight.ty, mode.exact_input),
                ) {
                    let bg = kernels::bind(
                        gpu,
                        qp,
                        "quantize x",
                        &[(1, x), (3, &ubuf), (4, step), (6, x), (15, xq)],
                    );
                    quantize = Some((qp.clone(), bg, units.div_ceil(kernels::WORKGROUP)));
                }
            }
            if let Some(f) = fused.as_mut() {
                let mut entries = vec![(1, fused_x), (2, fused_y), (3, &ubuf), (6, norm_w)];
                if let Some(r) = rope {
                    entries.extend([
                        (12, r.rows),
                        (8, r.kcache),
                        (9, r.vcache),
                        (10, r.cos_sin),
                        (11, r.params),
                    ]);
                }
                let bg = kernels::bind(gpu, &f.pipeline, label, &with_w4(entries));
                f.chunks.push((bg, mv_groups));
            }
        }
        Ok(MatmulOp {
            label,
            batch,
            tiled: if tiled.shapes.is_empty() {
                Vec::new()
            } else {
                vec![tiled]
            },
            single,
            multi,
            quantize,
            xq,
            x16,
            x16_convert,
            x16_fused: None,
            fused_quantize: None,
            fused,
            matvec_tokens: kernels.matvec_tokens(),
        })
    }

    /// A product of several weights written side by side into one output row (q | k | v):
    /// `parts` are each weight and the offset of its first output in a token's row. Prompt
    /// batches and unfused decode steps run one product per part. The fused decode product
    /// is one dispatch where the parts allow it (one weight, or two that make a mixed
    /// product: [`mixed_decode`]), else one per part, which only the RMSNorm and SiLU·mul
    /// inputs allow (RoPE and SiLU·mul epilogues need all rows in one dispatch: an error).
    #[allow(clippy::too_many_arguments)]
    pub fn new_parts(
        gpu: &Gpu,
        kernels: &Kernels,
        label: &'static str,
        parts: &[(&GpuWeight, u32)],
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        step: &wgpu::Buffer,
        mode: MatmulMode,
        fused: Option<FusedInput<'_>>,
    ) -> Result<MatmulOp, VulkanError> {
        if let [(w, offset)] = parts {
            let mode = MatmulMode {
                out_offset: *offset,
                ..mode
            };
            return MatmulOp::new(gpu, kernels, label, w, x, y, step, mode, fused);
        }
        let mixed = mixed_decode(kernels, parts);
        let epilogue = matches!(
            fused,
            Some(FusedInput::NormRope { .. } | FusedInput::NormGlu { .. })
        );
        if epilogue && !mixed {
            return Err(VulkanError::InvalidInput(format!(
                "{label}: RoPE or SiLU·mul fused into the product needs all rows in one dispatch: one weight, or two in one chunk each whose split is a multiple of the decode workgroup's rows"
            )));
        }
        let out_stride = match mode.out_stride {
            0 => parts.iter().map(|(w, _)| w.rows as u32).sum(),
            s => s,
        };
        let mut op: Option<MatmulOp> = None;
        for (w, offset) in parts {
            let part_mode = MatmulMode {
                out_offset: *offset,
                out_stride,
                ..mode
            };
            let part_fused = if mixed { None } else { fused };
            // Every part reads the x that the first part's `quantize_x` quantizes and
            // `coop_x_f16` converts.
            let part = MatmulOp::with_first(
                gpu,
                kernels,
                label,
                w,
                x,
                y,
                step,
                part_mode,
                part_fused,
                op.as_ref(),
            )?;
            match op.as_mut() {
                None => op = Some(part),
                Some(op) => {
                    op.batch.more.push(part.batch);
                    // Each part picks its own tile: a small part (v beside q|k) may need a
                    // smaller one to fill the GPU.
                    op.tiled.extend(part.tiled);
                    op.single.more.push(part.single);
                    if let (Some((m, _)), Some((p, _))) = (op.multi.as_mut(), part.multi) {
                        m.more.push(p);
                    }
                    // One quantization of the shared x, whichever part's types need it.
                    if op.quantize.is_none() {
                        op.quantize = part.quantize;
                    }
                    if let (Some(f), Some(p)) = (op.fused.as_mut(), part.fused) {
                        f.more.push(p);
                    }
                }
            }
        }
        let mut op = op.ok_or_else(|| {
            VulkanError::InvalidInput(format!("{label}: a product needs at least one weight"))
        })?;
        if let (true, Some(fused)) = (mixed, fused) {
            let (a, b) = (parts[0].0, parts[1].0);
            op.fused = Some(mixed_fused(
                gpu, kernels, label, a, b, y, mode, out_stride, fused,
            )?);
        }
        let weights: Vec<&GpuWeight> = parts.iter().map(|(w, _)| *w).collect();
        op.fused_quantize = fused_quantize(gpu, kernels, &op, &weights, step, mode, fused)?;
        op.x16_fused = x16_fused(gpu, kernels, &op, parts[0].0.k, fused)?;
        Ok(op)
    }

    /// Dispatches one decode step records: the fused ones when `fused`, else the plain ones.
    pub fn decode_dispatches(&self, fused: bool) -> usize {
        match (&self.fused, fused) {
            (Some(f), true) => f.dispatch_count(),
            _ => self.single.dispatch_count(),
        }
    }

    /// Whether a decode step can use the fused input (and skip the norm or SiLU before it).
    pub fn has_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// The int8 x buffer the multi-token products read (`xq`), where they read one; for tests.
    pub(crate) fn quantized_x(&self) -> Option<&wgpu::Buffer> {
        match (&self.quantize, &self.fused_quantize) {
            (None, None) => None,
            _ => self.xq.as_ref(),
        }
    }

    /// Whether a step of `n` tokens can use the fused input given at creation (and skip the
    /// norm or SiLU before it): one token where the op has a fused one-token product; a
    /// multi-token step (2..=Kernels::matvec_tokens tokens) where the transformation is
    /// one dispatch with the quantization of x (`norm_quantize_x`, `glu_quantize_x`); a
    /// prompt step (the tiled products) where the transformation writes the f16 x that the
    /// products stage (`x16fuse=1`, see [`x16_fused`]).
    pub fn fuses_input(&self, n: u32) -> bool {
        match n {
            1 => self.has_fused(),
            _ if n <= self.matvec_tokens => self.multi.is_some() && self.fused_quantize.is_some(),
            _ => {
                n >= kernels::TILED_MIN_TOKENS && !self.tiled.is_empty() && self.x16_fused.is_some()
            }
        }
    }

    /// The f16 copy of x that the prompt products stage, where the op converts x into it
    /// (`coop_x_f16`): for a kernel before the op to write instead in the steps where
    /// [`converts_x16`](Self::converts_x16) (then recorded with
    /// [`record_x16_written`](Self::record_x16_written)).
    pub fn x16_input(&self) -> Option<&wgpu::Buffer> {
        self.x16_convert.as_ref().and(self.x16.as_ref())
    }

    /// Whether a step of `n` tokens runs the prompt products after converting x to f16, as
    /// [`record`](Self::record) chooses.
    pub fn converts_x16(&self, n: u32) -> bool {
        n > self.matvec_tokens
            && n >= kernels::TILED_MIN_TOKENS
            && !self.tiled.is_empty()
            && self.x16_convert.is_some()
    }

    /// As [`record`](Self::record) without fused input, for a step of `n` tokens where
    /// [`converts_x16`](Self::converts_x16) and whose f16 x
    /// ([`x16_input`](Self::x16_input)) the kernel before the op has written: the products
    /// without the conversion.
    pub fn record_x16_written(&self, rec: &mut Recorder<'_, '_>, n: u32) {
        debug_assert!(self.converts_x16(n));
        self.record_tiled(rec, n);
    }

    /// The prompt products of a step of `n` tokens, whose x is prepared.
    fn record_tiled(&self, rec: &mut Recorder<'_, '_>, n: u32) {
        for (t, tokens) in self.tiled.iter().filter_map(|part| part.pick(n)) {
            t.record(rec, self.label, n.div_ceil(tokens));
        }
    }

    /// Records the dispatches for `n` input rows (the step's tokens, or its logit rows for an
    /// op made with `MatmulMode::logit_rows`); `fused`: the step's input is the fused one
    /// given at creation, where [`fuses_input`](Self::fuses_input) says the op can take it.
    pub fn record(&self, rec: &mut Recorder<'_, '_>, n: u32, fused: bool) {
        match (&self.fused, fused) {
            (Some(f), true) if n == 1 => f.record(rec, self.label, 1),
            // A few tokens: the multi-token kernel with one z slice per `cols` tokens (or, with
            // `multi=0`, the one-token kernel with one z slice per token).
            _ if n <= self.matvec_tokens => match &self.multi {
                Some((m, cols)) if n > 1 => {
                    let fused_quantize = self.fused_quantize.as_ref().filter(|_| fused);
                    record_prepare(rec, n, fused_quantize, &self.quantize, "quantize x");
                    m.record(rec, self.label, n.div_ceil(*cols))
                }
                _ => self.single.record(rec, self.label, n),
            },
            _ => match self.tiled.is_empty() {
                false if n >= kernels::TILED_MIN_TOKENS => {
                    let x16_fused = self.x16_fused.as_ref().filter(|_| fused);
                    record_prepare(rec, n, x16_fused, &self.x16_convert, "x to f16");
                    self.record_tiled(rec, n);
                }
                _ => self
                    .batch
                    .record(rec, self.label, n.div_ceil(kernels::TOKENS_PER_GROUP)),
            },
        }
    }
}

/// The dispatch that prepares the x of a step of `n` tokens before its products: `fused`
/// (the input transformation and the preparation in one) where given, else the op's own
/// preparation `plain` (`label`: quantization or f16 conversion of the given x), if any.
fn record_prepare(
    rec: &mut Recorder<'_, '_>,
    n: u32,
    fused: Option<&FusedQuantize>,
    plain: &Option<(wgpu::ComputePipeline, wgpu::BindGroup, u32)>,
    label: &'static str,
) {
    match (fused, plain) {
        (Some(f), _) => rec.dispatch(f.label, &f.pipeline, &f.bind_group, [f.groups, n, 1]),
        (None, Some((pipeline, bg, groups))) => rec.dispatch(label, pipeline, bg, [*groups, n, 1]),
        (None, None) => {}
    }
}

/// A step's input transformation fused with the preparation of its x: one dispatch of
/// `groups` workgroups per token (y = token) that writes the x the products read (`xq` of a
/// multi-token step, `x16` of a prompt step).
struct FusedQuantize {
    label: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    groups: u32,
}

/// The dispatch of `op` (the product of `weights` side by side, made with `fused`) that
/// computes its fused input and quantizes it in a multi-token step: `norm_quantize_x` for an
/// RMSNorm, `glu_quantize_x` for SiLU·mul. `None` where there is no fused input, where not
/// every weight's multi-token product reads the int8 x that `op`'s `quantize_x` writes (see
/// [`Kernels::multi_norm_quantize`]), or with `fuseq=0`: a multi-token step then keeps the
/// transformation and the quantization (if any) as two dispatches.
fn fused_quantize(
    gpu: &Gpu,
    kernels: &Kernels,
    op: &MatmulOp,
    weights: &[&GpuWeight],
    step: &wgpu::Buffer,
    mode: MatmulMode,
    fused: Option<FusedInput<'_>>,
) -> Result<Option<FusedQuantize>, VulkanError> {
    let all_read_xq = weights
        .iter()
        .all(|w| kernels.multi_quantize(w.ty, mode.exact_input).is_some());
    let (Some(first), Some(xq), Some(fused), true, true) = (
        weights.first(),
        op.xq.as_ref(),
        fused,
        op.multi.is_some(),
        all_read_xq,
    ) else {
        return Ok(None);
    };
    let units = (first.k / 32) as u32;
    // (label, pipeline, x, norm weight and epsilon, workgroups per token)
    let (label, pipeline, x, norm, groups) = match fused {
        FusedInput::Norm { x, weight, eps }
        | FusedInput::NormRope { x, weight, eps, .. }
        | FusedInput::NormGlu { x, weight, eps, .. } => (
            "rmsnorm + quantize x",
            kernels.multi_norm_quantize(first.ty, mode.exact_input),
            x,
            Some((weight, eps)),
            // One workgroup normalizes a token.
            1,
        ),
        FusedInput::Glu { x, interleaved } => (
            "silu_mul + quantize x",
            kernels.multi_glu_quantize(first.ty, interleaved),
            x,
            None,
            // One thread per unit.
            units.div_ceil(kernels::WORKGROUP),
        ),
    };
    let Some(pipeline) = pipeline else {
        return Ok(None);
    };
    let params = MatmulParams {
        k: first.k as u32,
        eps: norm.map_or(0.0, |(_, eps)| eps),
        ..bytemuck::Zeroable::zeroed()
    };
    let ubuf = gpu.uniform_init("fused quantize_x params", bytemuck::bytes_of(&params))?;
    let mut entries = vec![(1, x), (3, &ubuf), (4, step), (15, xq)];
    if let Some((weight, _)) = norm {
        entries.push((6, weight));
    }
    let bind_group = kernels::bind(gpu, pipeline, label, &entries);
    Ok(Some(FusedQuantize {
        label,
        pipeline: pipeline.clone(),
        bind_group,
        groups,
    }))
}

/// The dispatch of `op` (a product of rows of `k` weights, made with `fused`) that computes
/// its fused input straight into the f16 copy of x that its prompt products stage
/// (`x16_out` in x16_out.wgsl: the RMSNorm, or SiLU·mul of [gate | up] or interleaved
/// rows), replacing the transformation before the op and its `coop_x_f16`. `None` where
/// there is no fused input, where the op does not convert x to f16 (its tiles stage f32 x,
/// or it is not the first part of a side-by-side product) or without `x16fuse=1`.
fn x16_fused(
    gpu: &Gpu,
    kernels: &Kernels,
    op: &MatmulOp,
    k: usize,
    fused: Option<FusedInput<'_>>,
) -> Result<Option<FusedQuantize>, VulkanError> {
    let (Some(fused), Some(x16), Some(_)) = (fused, op.x16.as_ref(), op.x16_convert.as_ref())
    else {
        return Ok(None);
    };
    let norm = !matches!(fused, FusedInput::Glu { .. });
    let Some(pipeline) = kernels.x16_producer(norm) else {
        return Ok(None);
    };
    let (label, bind_group, groups) = match fused {
        FusedInput::Norm { x, weight, eps }
        | FusedInput::NormRope { x, weight, eps, .. }
        | FusedInput::NormGlu { x, weight, eps, .. } => {
            let params = crate::model::NormParams::new(k, eps, false);
            let ubuf = gpu.uniform_init("norm params", bytemuck::bytes_of(&params))?;
            let entries = [(0, x), (1, weight), (3, &ubuf), (16, x16)];
            let label = "rmsnorm to f16 x";
            // One workgroup normalizes a token (its scale is a reduction over the row).
            (label, kernels::bind(gpu, pipeline, label, &entries), 1)
        }
        FusedInput::Glu { x, interleaved } => {
            let params = crate::model::EltParams {
                n: k as u32,
                interleaved: interleaved as u32,
                gelu: 0,
                _pad: 0,
            };
            let ubuf = gpu.uniform_init("silu params", bytemuck::bytes_of(&params))?;
            let entries = [(0, x), (2, &ubuf), (16, x16)];
            let label = "silu_mul to f16 x";
            // One thread per 8 values, as `coop_x_f16`.
            let groups = (k as u32 / 8).div_ceil(kernels::WORKGROUP);
            (label, kernels::bind(gpu, pipeline, label, &entries), groups)
        }
    };
    Ok(Some(FusedQuantize {
        label,
        pipeline: pipeline.clone(),
        bind_group,
        groups,
    }))
}

/// The one dispatch of a mixed decode product: `a`'s rows, then `b`'s (see
/// [`Kernels::matvec_mixed`]), with the fused input `fused`; the parts were checked by
/// [`mixed_decode`].
#[allow(clippy::too_many_arguments)]
fn mixed_fused(
    gpu: &Gpu,
    kernels: &Kernels,
    label: &'static str,
    a: &GpuWeight,
    b: &GpuWeight,
    y: &wgpu::Buffer,
    mode: MatmulMode,
    out_stride: u32,
    fused: FusedInput<'_>,
) -> Result<Dispatches, VulkanError> {
    let (input, x, norm_w, eps, exact) = match fused {
        FusedInput::Norm { x, weight, eps } => {
            (MatvecInput::Norm, x, weight, eps, mode.exact_input)
        }
        FusedInput::Glu {
            x,
            interleaved: false,
        } => (MatvecInput::Glu, x, x, 0.0, false),
        FusedInput::Glu {
            interleaved: true, ..
        } => {
            return Err(VulkanError::InvalidInput(format!(
                "{label}: no one-token product reads interleaved gate|up rows"
            )))
        }
        FusedInput::NormRope { x, weight, eps, .. } => {
            (MatvecInput::NormRope, x, weight, eps, false)
        }
        FusedInput::NormGlu { x, weight, eps, .. } => (MatvecInput::NormGlu, x, weight, eps, false),
    };
    let fused_y = match fused {
        FusedInput::NormGlu { act, .. } => act,
        _ => y,
    };
    if matches!(input, MatvecInput::NormRope | MatvecInput::NormGlu)
        && (mode.out_offset != 0 || mode.accumulate)
    {
        return Err(VulkanError::InvalidInput(format!(
            "{label}: RoPE or SiLU·mul fused into the product needs output offset 0 and no accumulation"
        )));
    }
    let rows = a.rows + b.rows;
    let group = kernels.matvec_group(rows, a.k);
    let pipeline = kernels.matvec_mixed(gpu, (a.ty, b.ty), input, group, exact)?;
    let (ca, cb) = (&a.chunks[0], &b.chunks[0]);
    let params = MatmulParams {
        rows: rows as u32,
        row_offset: 0,
        k: a.k as u32,
        out_stride,
        aux: ca.aux,
        accumulate: mode.accumulate as u32,
        logit_rows: mode.logit_rows as u32,
        out_offset: mode.out_offset,
        lanes: lanes_for(a.k),
        eps,
        split: a.rows as u32,
        aux_b: cb.aux,
    };
    let ubuf = gpu.uniform_init("matmul params", bytemuck::bytes_of(&params))?;
    let mut entries = vec![(1, x), (2, fused_y), (3, &ubuf), (6, norm_w)];
    if let FusedInput::NormRope { rope: r, .. } = fused {
        entries.extend([
            (12, r.rows),
            (8, r.kcache),
            (9, r.vcache),
            (10, r.cos_sin),
            (11, r.params),
        ]);
    }
    // The second part's buffer at bindings 13 and 14, as the first part's at 0 and 7.
    for (binding, view) in with_weight_views(b.ty, &cb.buffer, Vec::new()) {
        entries.push((if binding == 0 { 13 } else { 14 }, view));
    }
    let entries = with_weight_views(a.ty, &ca.buffer, entries);
    let bg = kernels::bind(gpu, &pipeline, label, &entries);
    let mut d = Dispatches::new(pipeline);
    d.chunks.push((bg, (rows as u32).div_ceil(group.rows)));
    Ok(d)
}

/// Embedding lookup `y[t] = W[ids[t]]` with bind groups prepared once.
pub(crate) struct GetRowsOp {
    pipeline: wgpu::ComputePipeline,
    groups: Vec<wgpu::BindGroup>,
}

impl GetRowsOp {
    pub fn new(
        gpu: &Gpu,
        kernels: &Kernels,
        weight: &GpuWeight,
        ids: &wgpu::Buffer,
        y: &wgpu::Buffer,
        step: &wgpu::Buffer,
    ) -> Result<GetRowsOp, VulkanError> {
        let pipeline = kernels.get_rows(weight.ty).clone();
        let mut groups = Vec::new();
        for c in &weight.chunks {
            let params = MatmulParams {
                rows: c.rows,
                row_offset: c.row_offset,
                k: weight.k as u32,
                out_stride: weight.k as u32,
                aux: c.aux,
                accumulate: 0,
                logit_rows: 0,
                out_offset: 0,
                lanes: kernels::WORKGROUP,
                eps: 0.0,
                split: 0,
                aux_b: 0,
            };
            let ubuf = gpu.uniform_init("get_rows params", bytemuck::bytes_of(&params))?;
            let entries = with_weight_views(
                weight.ty,
                &c.buffer,
                vec![(2, y), (3, &ubuf), (4, step), (5, ids)],
            );
            groups.push(kernels::bind(gpu, &pipeline, "get_rows", &entries));
        }
        Ok(GetRowsOp { pipeline, groups })
    }

    pub fn record(&self, rec: &mut Recorder<'_, '_>, n_tokens: u32) {
        for bg in &self.groups {
            rec.dispatch("embedding", &self.pipeline, bg, [n_tokens, 1, 1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tile_index;

    #[test]
    fn a_prompt_product_takes_the_largest_tile_with_enough_workgroups() {
        // 8B attention output at 512 tokens: 128 workgroups of 128 x 128, 256 of 128 x 64,
        // 512 of 64 x 64.
        assert_eq!(tile_index([128, 256, 512].into_iter(), 256), 1);
        assert_eq!(tile_index([128, 256, 512].into_iter(), 100), 0);
        assert_eq!(tile_index([128, 256, 512].into_iter(), 0), 0);
        // None has enough: the most workgroups, the last.
        assert_eq!(tile_index([16, 32, 64].into_iter(), 256), 2);
        assert_eq!(tile_index([16].into_iter(), 256), 0);
        assert_eq!(tile_index([0u32; 0].into_iter(), 256), 0);
    }
}
