//! Weight types, their GPU layouts, and the upload of weight matrices in chunks.
//!
//! Quantized blocks stay quantized on the GPU. Where a GGUF block is not a whole number of
//! 32-bit words the bytes are rearranged once at upload so that kernels read aligned words:
//! Q8_0 and Q4_0 put all quants first and all f16 scales after them (no padding, so the bytes
//! read per token equal the GGUF bytes); Q6_K pads each 210-byte block to 212. F32, F16, Q4_1
//! and Q4_K are uploaded exactly as stored.

use candle_core::quantized::GgmlDType;

use crate::kernels::{self, Kernels};
use crate::{Gpu, VulkanError};

/// Weight formats the matrix kernels can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
}

impl WeightType {
    /// The kernel format for a GGUF tensor type, or `None` if there is no kernel for it.
    pub fn from_ggml(dtype: GgmlDType) -> Option<WeightType> {
        Some(match dtype {
            GgmlDType::F32 => WeightType::F32,
            GgmlDType::F16 => WeightType::F16,
            GgmlDType::Q4_0 => WeightType::Q4_0,
            GgmlDType::Q4_1 => WeightType::Q4_1,
            GgmlDType::Q8_0 => WeightType::Q8_0,
            GgmlDType::Q4K => WeightType::Q4K,
            GgmlDType::Q6K => WeightType::Q6K,
            _ => return None,
        })
    }

    /// Weights per GGUF block.
    pub fn block_elems(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 => 1,
            WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0 => 32,
            WeightType::Q4K | WeightType::Q6K => 256,
        }
    }

    /// Bytes per GGUF block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 => 2,
            WeightType::Q4_0 => 18,
            WeightType::Q4_1 => 20,
            WeightType::Q8_0 => 34,
            WeightType::Q4K => 144,
            WeightType::Q6K => 210,
        }
    }

    /// Bytes of one row of `k` weights as stored in the GGUF file.
    pub fn row_bytes(self, k: usize) -> usize {
        k / self.block_elems() * self.block_bytes()
    }

    /// Bytes of one row on the GPU (Q6_K blocks are padded; scales of Q8_0/Q4_0 are moved).
    fn gpu_row_bytes(self, k: usize) -> usize {
        match self {
            WeightType::Q6K => k / 256 * 212,
            _ => self.row_bytes(k),
        }
    }

    /// Row lengths the kernels accept: whole blocks and whole 32-weight units.
    fn check_row_len(self, k: usize) -> Result<(), String> {
        let unit = self.block_elems().max(32);
        if k == 0 || k % unit != 0 {
            return Err(format!("row length {k} is not a positive multiple of {unit} for {self:?}"));
        }
        Ok(())
    }
}

/// Rearranges `rows` GGUF rows into the GPU layout. Returns the bytes and the word offset of
/// the scales section (0 where the type has none).
pub(crate) fn to_gpu_layout(ty: WeightType, raw: &[u8]) -> (Vec<u8>, u32) {
    match ty {
        WeightType::Q8_0 | WeightType::Q4_0 => {
            let bb = ty.block_bytes();
            let qb = bb - 2;
            let blocks = raw.len() / bb;
            let mut out = Vec::with_capacity(blocks * bb + 2);
            for b in raw.chunks_exact(bb) {
                out.extend_from_slice(&b[2..]);
            }
            let aux = (out.len() / 4) as u32;
            for b in raw.chunks_exact(bb) {
                out.extend_from_slice(&b[..2]);
            }
            debug_assert_eq!(out.len(), blocks * (qb + 2));
            (out, aux)
        }
        WeightType::Q6K => {
            let mut out = Vec::with_capacity(raw.len() / 210 * 212);
            for b in raw.chunks_exact(210) {
                out.extend_from_slice(b);
                out.extend_from_slice(&[0, 0]);
            }
            (out, 0)
        }
        _ => (raw.to_vec(), 0),
    }
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
    pub fn upload(gpu: &Gpu, name: &str, ty: WeightType, rows: usize, k: usize, raw: &[u8]) -> Result<GpuWeight, VulkanError> {
        let terr = |detail: String| VulkanError::Tensor { name: name.to_string(), detail };
        ty.check_row_len(k).map_err(terr)?;
        if raw.len() != rows * ty.row_bytes(k) {
            return Err(terr(format!(
                "{} bytes given, {rows} rows of {k} {ty:?} weights need {}",
                raw.len(),
                rows * ty.row_bytes(k)
            )));
        }
        // Leave room for the 2-byte padding of the scales section.
        let row_gpu = ty.gpu_row_bytes(k) as u64;
        let rows_per_chunk = ((gpu.max_binding().saturating_sub(4)) / row_gpu) as usize;
        if rows_per_chunk == 0 {
            return Err(terr(format!(
                "one row takes {row_gpu} bytes, more than the largest storage binding of {} bytes",
                gpu.max_binding()
            )));
        }
        let rows_per_chunk = rows_per_chunk.min(u32::MAX as usize);
        let row_raw = ty.row_bytes(k);
        let mut chunks = Vec::new();
        let mut r0 = 0;
        while r0 < rows {
            let n = rows_per_chunk.min(rows - r0);
            let (bytes, aux) = to_gpu_layout(ty, &raw[r0 * row_raw..(r0 + n) * row_raw]);
            let buffer = gpu.storage_init(&format!("{name}[{r0}..{}]", r0 + n), &bytes)?;
            chunks.push(Chunk { buffer, row_offset: r0 as u32, rows: n as u32, aux });
            r0 += n;
        }
        Ok(GpuWeight { ty, rows, k, chunks })
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
    last_only: u32,
    out_offset: u32,
    lanes: u32,
    _pad: [u32; 3],
}

/// Threads per row for rows of `k` weights: the largest power of two not above a quarter of
/// the number of 32-weight units, within 8..=64 (`lanes` in matmul.wgsl). About four units per
/// thread amortize the workgroup reduction over more loads (measured on the H100: one unit
/// per thread left decode latency-bound).
fn lanes_for(k: usize) -> u32 {
    let units = (k / 32 / 4).max(1) as u32;
    let pow2 = if units.is_power_of_two() { units } else { units.next_power_of_two() / 2 };
    pow2.clamp(8, kernels::WORKGROUP)
}

/// Where a matmul writes, how it combines, and which tokens it covers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MatmulMode {
    /// Add into the output (a fused residual add) instead of overwriting it.
    pub accumulate: bool,
    /// The input holds a single token (the last one): compute one column.
    pub last_only: bool,
    /// Floats per token in the output; 0: the weight's row count. Larger when several
    /// matmuls write side by side into one output row (q | k | v).
    pub out_stride: u32,
    /// Offset of this weight's first output within a token's output row.
    pub out_offset: u32,
}

/// A matrix product with its bind groups prepared once: `y (+)= x · Wᵀ` per chunk.
pub(crate) struct MatmulOp {
    pipeline: wgpu::ComputePipeline,
    /// Bind group and workgroup count of each chunk.
    groups: Vec<(wgpu::BindGroup, u32)>,
    last_only: bool,
}

impl MatmulOp {
    pub fn new(
        gpu: &Gpu,
        kernels: &Kernels,
        weight: &GpuWeight,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        step: &wgpu::Buffer,
        mode: MatmulMode,
    ) -> Result<MatmulOp, VulkanError> {
        let pipeline = kernels.matmul(weight.ty).clone();
        let mut groups = Vec::new();
        for c in &weight.chunks {
            let params = MatmulParams {
                rows: c.rows,
                row_offset: c.row_offset,
                k: weight.k as u32,
                out_stride: if mode.out_stride == 0 { weight.rows as u32 } else { mode.out_stride },
                aux: c.aux,
                accumulate: mode.accumulate as u32,
                last_only: mode.last_only as u32,
                out_offset: mode.out_offset,
                lanes: lanes_for(weight.k),
                _pad: [0; 3],
            };
            let ubuf = gpu.uniform_init("matmul params", bytemuck::bytes_of(&params))?;
            let bg = kernels::bind(gpu, &pipeline, "matmul", &[(0, &c.buffer), (1, x), (2, y), (3, &ubuf), (4, step)]);
            // Workgroups needed: each covers WORKGROUP / lanes rows.
            let rows_per_group = kernels::WORKGROUP / lanes_for(weight.k);
            groups.push((bg, c.rows.div_ceil(rows_per_group)));
        }
        Ok(MatmulOp { pipeline, groups, last_only: mode.last_only })
    }

    /// Records the dispatches for `n_tokens` tokens.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, n_tokens: u32) {
        let n = if self.last_only { 1 } else { n_tokens };
        pass.set_pipeline(&self.pipeline);
        for (bg, workgroups) in &self.groups {
            pass.set_bind_group(0, bg, &[]);
            let x = (*workgroups).min(kernels::ROWS_PER_Y);
            let y = workgroups.div_ceil(kernels::ROWS_PER_Y);
            pass.dispatch_workgroups(x, y, n.div_ceil(kernels::TOKENS_PER_GROUP));
        }
    }
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
                last_only: 0,
                out_offset: 0,
                lanes: kernels::WORKGROUP,
                _pad: [0; 3],
            };
            let ubuf = gpu.uniform_init("get_rows params", bytemuck::bytes_of(&params))?;
            groups.push(kernels::bind(gpu, &pipeline, "get_rows", &[(0, &c.buffer), (2, y), (3, &ubuf), (4, step), (5, ids)]));
        }
        Ok(GetRowsOp { pipeline, groups })
    }

    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, n_tokens: u32) {
        pass.set_pipeline(&self.pipeline);
        for bg in &self.groups {
            pass.set_bind_group(0, bg, &[]);
            pass.dispatch_workgroups(n_tokens, 1, 1);
        }
    }
}
