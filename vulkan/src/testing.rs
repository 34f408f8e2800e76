//! Single-kernel entry points, so that tests can compare each kernel with candle on the CPU.
//! Each call compiles its pipeline and allocates its buffers: fine for tests, not for serving.

use crate::kernels::Kernels;
use crate::model::StepParams;
use crate::quant::{FusedInput, GetRowsOp, GpuWeight, MatmulMode, MatmulOp, RopeBuffers};
use crate::record::Recorder;
use crate::{Gpu, VulkanError};

fn run(
    gpu: &Gpu,
    out: &wgpu::Buffer,
    out_len: usize,
    record: impl FnOnce(&mut Recorder<'_, '_>),
) -> Result<Vec<f32>, VulkanError> {
    let mut enc = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("test"),
        });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("test"),
            timestamp_writes: None,
        });
        let mut rec = Recorder::new(&mut pass, None, "start");
        record(&mut rec);
    }
    gpu.queue.submit([enc.finish()]);
    let bytes = gpu.read_back(out, (out_len * 4) as u64)?;
    Ok(bytemuck::cast_slice(&bytes).to_vec())
}

/// The per-token (position, slot's first cache position) table of tokens at positions
/// `start..start + n` of one sequence in the cache's only slot.
fn rows_buffer(gpu: &Gpu, start: usize, n: usize) -> Result<wgpu::Buffer, VulkanError> {
    let rows: Vec<[u32; 2]> = (start..start + n).map(|p| [p as u32, 0]).collect();
    gpu.storage_init("token positions and slots", bytemuck::cast_slice(&rows))
}

fn step_buffer(gpu: &Gpu, n_tokens: usize) -> Result<wgpu::Buffer, VulkanError> {
    let step = StepParams {
        n_tokens: n_tokens as u32,
        out_rows: 0,
        attn_chunks: 1,
        attn_chunk_len: 1,
    };
    gpu.uniform_init("step", bytemuck::bytes_of(&step))
}

/// The WGSL module of the cooperative-matrix prompt product (`matmul_coop`) of weight type
/// `ty` with the tile `tuning` asks for (`cooptile=`, `coopk=`), as a device with subgroups
/// of `subgroup` threads builds it (before its `COOP_SG` override is set to that size), so
/// that a test can translate it for Vulkan on a machine without cooperative matrices.
pub fn coop_module_source(
    ty: crate::WeightType,
    tuning: &crate::KernelTuning,
    subgroup: u32,
) -> String {
    crate::kernels::coop_source(
        crate::kernels::REDUCE_WITH_SUBGROUPS,
        ty,
        tuning.coop_shape(),
        subgroup,
    )
}

/// The WGSL module of the prompt attention on cooperative matrices (`attention_coop`) for
/// head dimension `head_dim` (a multiple of 16), with the matrix operations on the matrix
/// cores or `emulated` (before its `COOP_SG` override is set), so that a test can translate
/// it for Vulkan on a machine without cooperative matrices.
pub fn attention_coop_module_source(head_dim: usize, emulated: bool) -> String {
    crate::attention_coop::source(head_dim, emulated)
}

/// `y[t, r] = sum_k W[r, k] * x[t, k]` for `n_tokens` rows of `x` (`[n_tokens, k]`, row-major).
/// The output buffer is filled with NaN first, so rows the kernel skips show up as NaN.
pub fn matmul(
    gpu: &Gpu,
    weight: &GpuWeight,
    x: &[f32],
    n_tokens: usize,
) -> Result<Vec<f32>, VulkanError> {
    matmul_into(
        gpu,
        weight,
        x,
        n_tokens,
        &vec![f32::NAN; n_tokens * weight.rows],
        weight.rows,
        0,
        false,
    )
}

/// As [`matmul`], into an output of `out_stride` floats per token that starts as `initial`:
/// token t's rows go to `out_offset..out_offset + rows` of its `out_stride` floats (products
/// side by side, as q | k | v), added to what is there when `accumulate` (the fused residual
/// add). Returns the whole output.
#[allow(clippy::too_many_arguments)]
pub fn matmul_into(
    gpu: &Gpu,
    weight: &GpuWeight,
    x: &[f32],
    n_tokens: usize,
    initial: &[f32],
    out_stride: usize,
    out_offset: usize,
    accumulate: bool,
) -> Result<Vec<f32>, VulkanError> {
    if x.len() != n_tokens * weight.k
        || initial.len() != n_tokens * out_stride
        || out_offset + weight.rows > out_stride
    {
        return Err(VulkanError::InvalidInput(format!(
            "x has {} values (expected {n_tokens} x {}), the output {} (expected {n_tokens} x {out_stride}, room for {} rows at {out_offset})",
            x.len(),
            weight.k,
            initial.len(),
            weight.rows
        )));
    }
    let kernels = Kernels::new(gpu, &[weight.ty])?;
    let xb = gpu.storage_init("x", bytemuck::cast_slice(x))?;
    let yb = gpu.storage_init("y", bytemuck::cast_slice(initial))?;
    let step = step_buffer(gpu, n_tokens)?;
    let mode = MatmulMode {
        accumulate,
        out_stride: out_stride as u32,
        out_offset: out_offset as u32,
        ..MatmulMode::default()
    };
    let op = MatmulOp::new(gpu, &kernels, "matmul", weight, &xb, &yb, &step, mode, None)?;
    run(gpu, &yb, initial.len(), |rec| {
        op.record(rec, n_tokens as u32, false)
    })
}

/// [`matmul`] for each input of `xs` (each `[n, k]` for its own token count n), with the
/// kernels compiled once.
pub fn matmul_each(
    gpu: &Gpu,
    weight: &GpuWeight,
    xs: &[Vec<f32>],
) -> Result<Vec<Vec<f32>>, VulkanError> {
    let kernels = Kernels::new(gpu, &[weight.ty])?;
    xs.iter()
        .map(|x| {
            if x.is_empty() || !x.len().is_multiple_of(weight.k) {
                return Err(VulkanError::InvalidInput(format!(
                    "x has {} values, not a whole number of rows of {}",
                    x.len(),
                    weight.k
                )));
            }
            let n = x.len() / weight.k;
            let xb = gpu.storage_init("x", bytemuck::cast_slice(x))?;
            let yb =
                gpu.storage_init("y", bytemuck::cast_slice(&vec![f32::NAN; n * weight.rows]))?;
            let step = step_buffer(gpu, n)?;
            let op = MatmulOp::new(
                gpu,
                &kernels,
                "matmul",
                weight,
                &xb,
                &yb,
                &step,
                MatmulMode::default(),
                None,
            )?;
            run(gpu, &yb, n * weight.rows, |rec| {
                op.record(rec, n as u32, false)
            })
        })
        .collect()
}

/// The input transformation a decode step fuses into a matrix-vector product.
pub enum Fused<'a> {
    /// `x * norm_weight / sqrt(mean(x²) + eps)` (RMSNorm).
    Norm { weight: &'a [f32], eps: f32 },
    /// `silu(x[..k]) * x[k..]`; x has 2k values.
    Glu,
}

/// `y[r] = sum_k W[r, k] * f(x)[k]` for one token with the fused input `f` (the decode
/// kernels `matvec_norm` and `matvec_glu`), output poisoned with NaN first.
pub fn matvec_fused(
    gpu: &Gpu,
    weight: &GpuWeight,
    x: &[f32],
    fused: Fused<'_>,
) -> Result<Vec<f32>, VulkanError> {
    let want = match fused {
        Fused::Norm { weight: nw, .. } if nw.len() != weight.k => {
            return Err(VulkanError::InvalidInput(format!(
                "norm weight has {} values, expected {}",
                nw.len(),
                weight.k
            )))
        }
        Fused::Norm { .. } => weight.k,
        Fused::Glu => 2 * weight.k,
    };
    if x.len() != want {
        return Err(VulkanError::InvalidInput(format!(
            "x has {} values, expected {want}",
            x.len()
        )));
    }
    let kernels = Kernels::new(gpu, &[weight.ty])?;
    let xb = gpu.storage_init("x", bytemuck::cast_slice(x))?;
    let yb = gpu.storage_init("y", bytemuck::cast_slice(&vec![f32::NAN; weight.rows]))?;
    let step = step_buffer(gpu, 1)?;
    let nwb;
    let input = match fused {
        Fused::Norm { weight: nw, eps } => {
            nwb = gpu.storage_init("norm weight", bytemuck::cast_slice(nw))?;
            FusedInput::Norm {
                x: &xb,
                weight: &nwb,
                eps,
            }
        }
        Fused::Glu => FusedInput::Glu {
            x: &xb,
            interleaved: false,
        },
    };
    let op = MatmulOp::new(
        gpu,
        &kernels,
        "matvec",
        weight,
        &xb,
        &yb,
        &step,
        MatmulMode::default(),
        Some(input),
    )?;
    run(gpu, &yb, weight.rows, |rec| op.record(rec, 1, true))
}

/// The layout of a q|k|v product for [`matvec_norm_rope`]: rows are `n_head` q heads, then
/// `n_kv` k heads, then `n_kv` v heads of `head_dim` values.
pub struct RopeShape {
    pub n_head: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    /// Positions the caches hold.
    pub ctx: usize,
    /// The token's position.
    pub pos: usize,
    /// RoPE frequency base.
    pub base: f32,
}

/// What [`matvec_norm_rope`] wrote: the rotated q (`n_head * head_dim` values) and the whole
/// K and V caches (`[n_kv, ctx, head_dim]`, f16 on the GPU, widened here), which start
/// filled with NaN.
pub struct QkvRope {
    pub q: Vec<f32>,
    pub kcache: Vec<f32>,
    pub vcache: Vec<f32>,
    /// Dispatches the fused product took.
    pub dispatches: usize,
}

/// The decode q|k|v product with RMSNorm, RoPE (interleaved pairs) and the K/V cache store
/// fused (`matvec_norm_rope`) for one token at `shape.pos`.
pub fn matvec_norm_rope(
    gpu: &Gpu,
    weight: &GpuWeight,
    x: &[f32],
    norm_weight: &[f32],
    eps: f32,
    shape: &RopeShape,
) -> Result<QkvRope, VulkanError> {
    matvec_norm_rope_parts(gpu, &[weight], x, norm_weight, eps, shape)
}

/// [`matvec_norm_rope`] on the rows of several weights side by side (as q|k and v of
/// different types), one fused product over all of them (a mixed product for two types).
pub fn matvec_norm_rope_parts(
    gpu: &Gpu,
    parts: &[&GpuWeight],
    x: &[f32],
    norm_weight: &[f32],
    eps: f32,
    shape: &RopeShape,
) -> Result<QkvRope, VulkanError> {
    let (hd, ctx) = (shape.head_dim, shape.ctx);
    let Some(weight) = parts.first() else {
        return Err(VulkanError::InvalidInput("no weights".into()));
    };
    let rows: usize = parts.iter().map(|w| w.rows).sum();
    if rows != (shape.n_head + 2 * shape.n_kv) * hd || hd % 2 != 0 || shape.pos >= ctx {
        return Err(VulkanError::InvalidInput(format!(
            "{rows} rows do not hold {} q and 2 x {} k/v heads of {hd} (even) values, or position {} is outside {ctx}",
            shape.n_head, shape.n_kv, shape.pos
        )));
    }
    if x.len() != weight.k || norm_weight.len() != weight.k || parts.iter().any(|w| w.k != weight.k)
    {
        return Err(VulkanError::InvalidInput(format!(
            "x has {} and the norm weight {} values, expected {} (the row length of every part)",
            x.len(),
            norm_weight.len(),
            weight.k
        )));
    }
    let types: Vec<_> = parts.iter().map(|w| w.ty).collect();
    let kernels = Kernels::new(gpu, &types)?;
    let xb = gpu.storage_init("x", bytemuck::cast_slice(x))?;
    let nwb = gpu.storage_init("norm weight", bytemuck::cast_slice(norm_weight))?;
    let yb = gpu.storage_init("y", bytemuck::cast_slice(&vec![f32::NAN; rows]))?;
    let cache_len = shape.n_kv * ctx * hd;
    let kb = gpu.storage_init(
        "k cache",
        bytemuck::cast_slice(&vec![half::f16::NAN; cache_len]),
    )?;
    let vb = gpu.storage_init(
        "v cache",
        bytemuck::cast_slice(&vec![half::f16::NAN; cache_len]),
    )?;
    let table = gpu.storage_init(
        "rope cos/sin",
        bytemuck::cast_slice(&crate::model::rope_table(ctx, hd, shape.base, None)),
    )?;
    let params = crate::model::RopeParams {
        n_head: shape.n_head as u32,
        n_kv: shape.n_kv as u32,
        hd: hd as u32,
        neox: 0,
        cache_base: 0,
        ctx: ctx as u32,
        _pad: [0; 2],
    };
    let pb = gpu.uniform_init("rope params", bytemuck::bytes_of(&params))?;
    let step = StepParams {
        n_tokens: 1,
        out_rows: 0,
        attn_chunks: 1,
        attn_chunk_len: 1,
    };
    let step = gpu.uniform_init("step", bytemuck::bytes_of(&step))?;
    let rows = rows_buffer(gpu, shape.pos, 1)?;
    let rope = RopeBuffers {
        kcache: &kb,
        vcache: &vb,
        cos_sin: &table,
        params: &pb,
        rows: &rows,
    };
    let input = FusedInput::NormRope {
        x: &xb,
        weight: &nwb,
        eps,
        rope,
    };
    let mut offset = 0;
    let with_offsets: Vec<(&GpuWeight, u32)> = parts
        .iter()
        .map(|w| {
            offset += w.rows as u32;
            (*w, offset - w.rows as u32)
        })
        .collect();
    let op = MatmulOp::new_parts(
        gpu,
        &kernels,
        "matvec",
        &with_offsets,
        &xb,
        &yb,
        &step,
        MatmulMode::default(),
        Some(input),
    )?;
    let q_len = shape.n_head * hd;
    let y = run(gpu, &yb, q_len, |rec| op.record(rec, 1, true))?;
    let widen = |bytes: Vec<u8>| {
        bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    };
    let kcache = widen(gpu.read_back(&kb, (cache_len * 2) as u64)?);
    let vcache = widen(gpu.read_back(&vb, (cache_len * 2) as u64)?);
    Ok(QkvRope {
        q: y,
        kcache,
        vcache,
        dispatches: op.decode_dispatches(true),
    })
}

/// The gate|up decode product with RMSNorm and SiLU·mul fused (`matvec_norm_glu`):
/// `weight` holds the gate and up rows interleaved (row 2j gate j, row 2j + 1 up j); returns
/// `silu(gate j) * up j` for every j (`weight.rows / 2` values), output poisoned with NaN first.
pub fn matvec_norm_glu(
    gpu: &Gpu,
    weight: &GpuWeight,
    x: &[f32],
    norm_weight: &[f32],
    eps: f32,
) -> Result<Vec<f32>, VulkanError> {
    if !weight.rows.is_multiple_of(2) || x.len() != weight.k || norm_weight.len() != weight.k {
        return Err(VulkanError::InvalidInput(format!(
            "{} rows (must be even: gate and up pairs), x {} and norm weight {} values (expected {})",
            weight.rows,
            x.len(),
            norm_weight.len(),
            weight.k
        )));
    }
    let kernels = Kernels::new(gpu, &[weight.ty])?;
    let xb = gpu.storage_init("x", bytemuck::cast_slice(x))?;
    let nwb = gpu.storage_init("norm weight", bytemuck::cast_slice(norm_weight))?;
    let yb = gpu.storage_init(
        "gate|up",
        bytemuck::cast_slice(&vec![f32::NAN; weight.rows]),
    )?;
    let act = gpu.storage_init(
        "act",
        bytemuck::cast_slice(&vec![f32::NAN; weight.rows / 2]),
    )?;
    let step = step_buffer(gpu, 1)?;
    let input = FusedInput::NormGlu {
        x: &xb,
        weight: &nwb,
        eps,
        act: &act,
    };
    let op = MatmulOp::new(
        gpu,
        &kernels,
        "matvec",
        weight,
        &xb,
        &yb,
        &step,
        MatmulMode::default(),
        Some(input),
    )?;
    run(gpu, &act, weight.rows / 2, |rec| op.record(rec, 1, true))
}

/// What [`norm_matmul_each`] and [`glu_matmul_each`] computed.
pub struct StepProduct {
    /// `y[t, r]`: `n_tokens` rows of `weight.rows` values.
    pub y: Vec<f32>,
    /// The int8 x the multi-token products read, where they read one (`xq` in
    /// matvec_multi.wgsl: per token and 32-value unit, eight words of four int8 values, then
    /// the scale's f32 bits, the sum and the first 16 values' sum as i32, and a zero word).
    pub xq: Option<Vec<u32>>,
    /// Dispatches of the step, the RMSNorm's or SiLU·mul's included.
    pub dispatches: usize,
}

/// The product after an RMSNorm as a step of n tokens runs it (the q|k|v and gate|up
/// products), for each input of `xs` (each `[n, k]` for its own n): `y[t, r] = Σ_k W[r, k] ·
/// x[t, k] · norm_weight[k] / rms(x[t])`, with the kernels compiled once. `fused`: the norm
/// fused into the product's input (one token: `matvec_norm`; a multi-token step whose
/// products read int8 x: `norm_quantize_x`, the norm and the quantization of x in one
/// dispatch); otherwise, and where the op has no such fusion, `rmsnorm` writes the normalized
/// rows first and the product (with `quantize_x` where it reads int8 x) reads them. The
/// output is poisoned with NaN first.
pub fn norm_matmul_each(
    gpu: &Gpu,
    weight: &GpuWeight,
    xs: &[Vec<f32>],
    norm_weight: &[f32],
    eps: f32,
    fused: bool,
) -> Result<Vec<StepProduct>, VulkanError> {
    let k = weight.k;
    if norm_weight.len() != k {
        return Err(VulkanError::InvalidInput(format!(
            "the norm weight has {} values, expected {k}",
            norm_weight.len()
        )));
    }
    let kernels = Kernels::new(gpu, &[weight.ty])?;
    let nwb = gpu.storage_init("norm weight", bytemuck::cast_slice(norm_weight))?;
    let params = crate::model::NormParams::new(k, eps, false);
    let ubuf = gpu.uniform_init("norm params", bytemuck::bytes_of(&params))?;
    xs.iter()
        .map(|x| {
            if x.is_empty() || !x.len().is_multiple_of(k) {
                return Err(VulkanError::InvalidInput(format!(
                    "x has {} values, not a whole number of rows of {k}",
                    x.len()
                )));
            }
            let n_tokens = x.len() / k;
            let xb = gpu.storage_init("x", bytemuck::cast_slice(x))?;
            let normed =
                gpu.storage_init("normed", bytemuck::cast_slice(&vec![f32::NAN; x.len()]))?;
            let out_len = n_tokens * weight.rows;
            let yb = gpu.storage_init("y", bytemuck::cast_slice(&vec![f32::NAN; out_len]))?;
            let step = step_buffer(gpu, n_tokens)?;
            let norm = crate::kernels::bind(
                gpu,
                &kernels.rmsnorm,
                "rmsnorm",
                &[(0, &xb), (1, &nwb), (2, &normed), (3, &ubuf)],
            );
            let input = FusedInput::Norm {
                x: &xb,
                weight: &nwb,
                eps,
            };
            let op = MatmulOp::new(
                gpu,
                &kernels,
                "matmul",
                weight,
                &normed,
                &yb,
                &step,
                MatmulMode::default(),
                Some(input),
            )?;
            let n = n_tokens as u32;
            let fuse = fused && op.fuses_input(n);
            let mut dispatches = 0;
            let y = run(gpu, &yb, out_len, |rec| {
                if !fuse {
                    rec.dispatch("rmsnorm", &kernels.rmsnorm, &norm, [n, 1, 1]);
                }
                op.record(rec, n, fuse);
                dispatches = rec.dispatched();
            })?;
            let xq = read_xq(gpu, &kernels, &op, n_tokens, k)?;
            Ok(StepProduct { y, xq, dispatches })
        })
        .collect()
}

/// The down product after SiLU·mul as a step of n tokens runs it, for each input of `xs`
/// (each token's gate and up values, `[n, 2k]` for its own n: [gate | up], or gate j and up
/// j side by side where `interleaved`): `y[t, r] = Σ_j W[r, j] · silu(gate[t, j]) · up[t, j]`,
/// with the kernels compiled once. `fused`: SiLU·mul fused into the quantization of a
/// multi-token step's int8 x (`glu_quantize_x`), or for one token of [gate | up] into the
/// product's input (`matvec_glu`); otherwise, and where the op has no such fusion,
/// `silu_mul` writes the activation first and the product (with `quantize_x` where it reads
/// int8 x) reads it. The output is poisoned with NaN first.
pub fn glu_matmul_each(
    gpu: &Gpu,
    weight: &GpuWeight,
    xs: &[Vec<f32>],
    interleaved: bool,
    fused: bool,
) -> Result<Vec<StepProduct>, VulkanError> {
    let k = weight.k;
    let kernels = Kernels::new(gpu, &[weight.ty])?;
    let params = crate::model::EltParams {
        n: k as u32,
        interleaved: interleaved as u32,
        gelu: 0,
        _pad: 0,
    };
    let ubuf = gpu.uniform_init("silu params", bytemuck::bytes_of(&params))?;
    xs.iter()
        .map(|x| {
            if x.is_empty() || !x.len().is_multiple_of(2 * k) {
                return Err(VulkanError::InvalidInput(format!(
                    "x has {} values, not a whole number of gate|up rows of 2 x {k}",
                    x.len()
                )));
            }
            let n_tokens = x.len() / (2 * k);
            let gate_up = gpu.storage_init("gate|up", bytemuck::cast_slice(x))?;
            let act =
                gpu.storage_init("act", bytemuck::cast_slice(&vec![f32::NAN; n_tokens * k]))?;
            let out_len = n_tokens * weight.rows;
            let yb = gpu.storage_init("y", bytemuck::cast_slice(&vec![f32::NAN; out_len]))?;
            let step = step_buffer(gpu, n_tokens)?;
            let silu = crate::kernels::bind(
                gpu,
                &kernels.silu_mul,
                "silu_mul",
                &[(0, &gate_up), (1, &act), (2, &ubuf), (3, &step)],
            );
            let input = FusedInput::Glu {
                x: &gate_up,
                interleaved,
            };
            let op = MatmulOp::new(
                gpu,
                &kernels,
                "matmul",
                weight,
                &act,
                &yb,
                &step,
                MatmulMode::default(),
                Some(input),
            )?;
            let n = n_tokens as u32;
            let fuse = fused && op.fuses_input(n);
            let groups = gpu.tuning().silu_groups(n_tokens * k);
            let mut dispatches = 0;
            let y = run(gpu, &yb, out_len, |rec| {
                if !fuse {
                    rec.dispatch("silu_mul", &kernels.silu_mul, &silu, [groups, 1, 1]);
                }
                op.record(rec, n, fuse);
                dispatches = rec.dispatched();
            })?;
            let xq = read_xq(gpu, &kernels, &op, n_tokens, k)?;
            Ok(StepProduct { y, xq, dispatches })
        })
        .collect()
}

/// The int8 x `op`'s multi-token products read in a step of `n_tokens` rows of `k`, where
/// they read one.
fn read_xq(
    gpu: &Gpu,
    kernels: &Kernels,
    op: &MatmulOp,
    n_tokens: usize,
    k: usize,
) -> Result<Option<Vec<u32>>, VulkanError> {
    Ok(match op.quantized_x() {
        Some(b) if n_tokens > 1 && n_tokens <= kernels.matvec_tokens() as usize => {
            let bytes = gpu.read_back(b, (n_tokens * k / 32 * 48) as u64)?;
            Some(bytemuck::cast_slice(&bytes).to_vec())
        }
        _ => None,
    })
}

/// `y[t] = W[ids[t]]` (dequantized rows), output poisoned with NaN first.
pub fn get_rows(gpu: &Gpu, weight: &GpuWeight, ids: &[u32]) -> Result<Vec<f32>, VulkanError> {
    let kernels = Kernels::new(gpu, &[weight.ty])?;
    let idb = gpu.storage_init("ids", bytemuck::cast_slice(ids))?;
    let out_len = ids.len() * weight.k;
    let yb = gpu.storage_init("y", bytemuck::cast_slice(&vec![f32::NAN; out_len]))?;
    let step = step_buffer(gpu, ids.len())?;
    let op = GetRowsOp::new(gpu, &kernels, weight, &idb, &yb, &step)?;
    run(gpu, &yb, out_len, |rec| op.record(rec, ids.len() as u32))
}

/// The greedy token of each row of `logits` (`rows` rows of `logits.len() / rows` values),
/// picked by the GPU kernel a forward pass uses (`argmax_rows`, one dispatch). The output
/// starts as `u32::MAX`, so a row the kernel skips shows up as that.
pub fn argmax_rows(gpu: &Gpu, logits: &[f32], rows: usize) -> Result<Vec<u32>, VulkanError> {
    if rows == 0 || logits.is_empty() || !logits.len().is_multiple_of(rows) {
        return Err(VulkanError::InvalidInput(format!(
            "{} logits are not {rows} rows of at least one value",
            logits.len()
        )));
    }
    let kernels = Kernels::new(gpu, &[])?;
    let lb = gpu.storage_init("logits", bytemuck::cast_slice(logits))?;
    let pb = gpu.storage_init("picks", bytemuck::cast_slice(&vec![u32::MAX; rows]))?;
    let params = crate::model::ArgmaxParams {
        n: (logits.len() / rows) as u32,
        _pad: [0; 3],
    };
    let ub = gpu.uniform_init("argmax params", bytemuck::bytes_of(&params))?;
    let bg = crate::kernels::bind(
        gpu,
        &kernels.argmax_rows,
        "argmax",
        &[(0, &lb), (1, &pb), (2, &ub)],
    );
    let bits = run(gpu, &pb, rows, |rec| {
        rec.dispatch("argmax", &kernels.argmax_rows, &bg, [rows as u32, 1, 1])
    })?;
    Ok(bits.into_iter().map(f32::to_bits).collect())
}

/// Measures device-memory bandwidth with a copy kernel: copies a buffer of `bytes` (capped at
/// the binding limit) `iterations` times in one submission and returns bytes read plus
/// written per second. Used by the benchmark to put decode speed against the memory bound.
pub fn copy_bandwidth(gpu: &Gpu, bytes: u64, iterations: u32) -> Result<f64, VulkanError> {
    let bytes = bytes.min(gpu.max_binding()) / 16 * 16;
    let src = gpu.storage("copy src", bytes)?;
    let dst = gpu.storage("copy dst", bytes)?;
    let module = gpu
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("copy"),
            source: wgpu::ShaderSource::Wgsl(include_str!("shaders/copy.wgsl").into()),
        });
    let pipeline = gpu
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("copy"),
            layout: None,
            module: &module,
            entry_point: Some("copy"),
            compilation_options: Default::default(),
            cache: None,
        });
    let bg = crate::kernels::bind(gpu, &pipeline, "copy", &[(0, &src), (1, &dst)]);
    let groups = ((bytes / 16).div_ceil(256) as u32).clamp(1, 65535);
    let record = |iters: u32| {
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("copy"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("copy"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bg, &[]);
            for _ in 0..iters {
                pass.dispatch_workgroups(groups, 1, 1);
            }
        }
        gpu.queue.submit([enc.finish()]);
    };
    // Warm-up: pipeline creation and first-touch page mapping stay out of the timing.
    record(2);
    gpu.wait("copy warm-up")?;
    let t = std::time::Instant::now();
    record(iterations);
    gpu.wait("copy benchmark")?;
    Ok(2.0 * bytes as f64 * iterations as f64 / t.elapsed().as_secs_f64())
}

/// The shape of an attention call for [`attention`].
pub struct AttentionShape {
    pub n_head: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    /// Positions the caches hold.
    pub ctx: usize,
}

/// The buffers an attention kernel reads and writes for `n` tokens: q inside the
/// [q | k | v] rows of the q|k|v product (where the kernels read it; k and v there are NaN),
/// the caches, and the output (NaN, so rows a kernel misses show).
fn attention_buffers(
    gpu: &Gpu,
    q: &[f32],
    kcache: &[half::f16],
    vcache: &[half::f16],
    (nh, nkv, hd): (usize, usize, usize),
    n: usize,
) -> Result<[wgpu::Buffer; 4], VulkanError> {
    let row = nh * hd;
    let qkv_row = (nh + 2 * nkv) * hd;
    let mut qkv = vec![f32::NAN; n * qkv_row];
    for t in 0..n {
        qkv[t * qkv_row..t * qkv_row + row].copy_from_slice(&q[t * row..(t + 1) * row]);
    }
    Ok([
        gpu.storage_init("q|k|v", bytemuck::cast_slice(&qkv))?,
        gpu.storage_init("k cache", bytemuck::cast_slice(kcache))?,
        gpu.storage_init("v cache", bytemuck::cast_slice(vcache))?,
        gpu.storage_init("out", bytemuck::cast_slice(&vec![f32::NAN; n * row]))?,
    ])
}

/// Causal attention (`attention`, then `combine` when there are several chunks) of
/// `n_tokens` query tokens at positions `start..start + n_tokens` over the caches, with the
/// positions split into chunks of `chunk_len` as a decode step splits them.
/// `q`: `[n_tokens, n_head * head_dim]`; caches: `[n_kv, ctx, head_dim]` in f16 (as the
/// model keeps them); returns
/// `[n_tokens, n_head * head_dim]`, poisoned with NaN first.
pub fn attention(
    gpu: &Gpu,
    shape: &AttentionShape,
    q: &[f32],
    kcache: &[half::f16],
    vcache: &[half::f16],
    start: usize,
    chunk_len: usize,
) -> Result<Vec<f32>, VulkanError> {
    let (nh, nkv, hd, ctx) = (shape.n_head, shape.n_kv, shape.head_dim, shape.ctx);
    let row = nh * hd;
    let n = q.len() / row.max(1);
    let chunks = (start + n).div_ceil(chunk_len.max(1));
    if hd % 4 != 0
        || hd > 256
        || nkv == 0
        || nh % nkv != 0
        || n == 0
        || q.len() != n * row
        || start + n > ctx
    {
        return Err(VulkanError::InvalidInput(format!(
            "q has {} values for {nh} heads of {hd} (a multiple of 4 up to 256) with {nkv} K/V heads, at positions {start}.. of {ctx}",
            q.len()
        )));
    }
    if kcache.len() != nkv * ctx * hd
        || vcache.len() != kcache.len()
        || chunk_len == 0
        || chunks > crate::model::ATTENTION_CHUNKS_LIMIT
    {
        return Err(VulkanError::InvalidInput(format!(
            "caches of {} and {} values (expected {}), {chunks} chunks of {chunk_len} (at most {})",
            kcache.len(),
            vcache.len(),
            nkv * ctx * hd,
            crate::model::ATTENTION_CHUNKS_LIMIT
        )));
    }
    let kernels = Kernels::new(gpu, &[])?;
    let [qb, kb, vb, out] = attention_buffers(gpu, q, kcache, vcache, (nh, nkv, hd), n)?;
    let part = gpu.storage("partials", (n * chunks * nh * (hd + 4) * 4) as u64)?;
    let params = crate::model::AttnParams::new(nh, nkv, hd, ctx);
    let pb = gpu.uniform_init("attention params", bytemuck::bytes_of(&params))?;
    let step = StepParams {
        n_tokens: n as u32,
        out_rows: 0,
        attn_chunks: chunks as u32,
        attn_chunk_len: chunk_len as u32,
    };
    let step = gpu.uniform_init("step", bytemuck::bytes_of(&step))?;
    let rows = rows_buffer(gpu, start, n)?;
    let attn = crate::kernels::bind(
        gpu,
        &kernels.attention,
        "attention",
        &[
            (0, &qb),
            (1, &kb),
            (2, &vb),
            (3, &out),
            (4, &pb),
            (5, &step),
            (6, &part),
            (7, &rows),
        ],
    );
    let combine = crate::kernels::bind(
        gpu,
        &kernels.attention_combine,
        "attention combine",
        &[(3, &out), (4, &pb), (5, &step), (6, &part)],
    );
    run(gpu, &out, n * row, |rec| {
        rec.dispatch(
            "attention",
            &kernels.attention,
            &attn,
            [nh as u32, n as u32, chunks as u32],
        );
        if chunks > 1 {
            rec.dispatch(
                "attention combine",
                &kernels.attention_combine,
                &combine,
                [nh as u32, n as u32, 1],
            );
        }
    })
}

/// The attention kernel [`attention_rows`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// `attention`, the decode kernel, with every token's positions in one chunk.
    Decode,
    /// `attention_tiled`, the prompt kernel with query tiles.
    Tiled,
    /// `attention_coop`, the prompt kernel with query tiles on cooperative matrices: the
    /// device must be opened with `pattn=2` and run the prompt products on cooperative
    /// matrices or their emulation (`prefill=coop-emulated`, which this kernel follows).
    Coop,
    /// `attention_grouped`, the decode kernel with the query heads of a K/V head in one
    /// workgroup, with every token's positions in chunks of `chunk_len` (merged by
    /// `combine` when there are several).
    Grouped { chunk_len: usize },
    /// `attention_vec`, the decode kernel with coalesced K loads (`dattn=1`), with
    /// `group` query heads a workgroup (1, or the query heads per K/V head as with
    /// `gqa=1`), `threads` a workgroup (64, 128 or 256, `dwg=`) and every token's positions
    /// in chunks of `chunk_len`.
    Vec {
        chunk_len: usize,
        group: usize,
        threads: usize,
    },
}

/// Causal attention of the tokens of one step as the model runs it: token `t` is at position
/// `rows[t][0]` of its sequence, whose slot starts at cache position `rows[t][1]`, and
/// attends the positions of its own slot up to its own (its last `window` of them, 0: all).
/// `q`: `[rows.len(), n_head * head_dim]`; caches: `[n_kv, ctx, head_dim]` in f16, `ctx`
/// covering every slot; returns `[rows.len(), n_head * head_dim]`, poisoned with NaN first.
#[allow(clippy::too_many_arguments)]
pub fn attention_rows(
    gpu: &Gpu,
    shape: &AttentionShape,
    q: &[f32],
    kcache: &[half::f16],
    vcache: &[half::f16],
    rows: &[[u32; 2]],
    window: usize,
    kernel: AttentionKernel,
) -> Result<Vec<f32>, VulkanError> {
    let (nh, nkv, hd, ctx) = (shape.n_head, shape.n_kv, shape.head_dim, shape.ctx);
    let row = nh * hd;
    let n = rows.len();
    if hd % 4 != 0 || hd > 256 || nkv == 0 || nh % nkv != 0 || n == 0 || q.len() != n * row {
        return Err(VulkanError::InvalidInput(format!(
            "q has {} values for {n} tokens of {nh} heads of {hd} (a multiple of 4 up to 256) with {nkv} K/V heads",
            q.len()
        )));
    }
    if let Some([pos, slot]) = rows.iter().find(|[p, s]| (p + s) as usize >= ctx) {
        return Err(VulkanError::InvalidInput(format!(
            "a token at position {pos} of the slot at {slot} is past the {ctx} cache positions"
        )));
    }
    if kcache.len() != nkv * ctx * hd || vcache.len() != kcache.len() {
        return Err(VulkanError::InvalidInput(format!(
            "caches of {} and {} values, expected {}",
            kcache.len(),
            vcache.len(),
            nkv * ctx * hd
        )));
    }
    // Chunks of positions of the decode kernels (the tiled one reads none): the longest
    // sequence's positions, of which shorter sequences leave the last chunks empty.
    let chunk_len = match kernel {
        AttentionKernel::Grouped { chunk_len } | AttentionKernel::Vec { chunk_len, .. } => {
            chunk_len
        }
        _ => ctx,
    };
    let longest = rows.iter().map(|r| r[0] as usize + 1).max().unwrap_or(1);
    let chunks = longest.div_ceil(chunk_len.max(1));
    if chunk_len == 0 || chunks > crate::model::ATTENTION_CHUNKS_LIMIT {
        return Err(VulkanError::InvalidInput(format!(
            "{chunks} chunks of {chunk_len} positions (at most {})",
            crate::model::ATTENTION_CHUNKS_LIMIT
        )));
    }
    let kernels = Kernels::new(gpu, &[])?;
    let [qb, kb, vb, out] = attention_buffers(gpu, q, kcache, vcache, (nh, nkv, hd), n)?;
    let mut params = crate::model::AttnParams::new(nh, nkv, hd, ctx);
    params.window = window as u32;
    let pb = gpu.uniform_init("attention params", bytemuck::bytes_of(&params))?;
    let step = StepParams {
        n_tokens: n as u32,
        out_rows: 0,
        attn_chunks: chunks as u32,
        attn_chunk_len: chunk_len as u32,
    };
    let step = gpu.uniform_init("step", bytemuck::bytes_of(&step))?;
    let rb = gpu.storage_init("token positions and slots", bytemuck::cast_slice(rows))?;
    let mut buffers = vec![(0, &qb), (1, &kb), (2, &vb), (3, &out), (4, &pb), (7, &rb)];
    let part = gpu.storage("partials", (n * chunks * nh * (hd + 4) * 4) as u64)?;
    let (grouped, coop, tiles);
    let (pipeline, groups) = match kernel {
        AttentionKernel::Decode => {
            buffers.extend([(5, &step), (6, &part)]);
            (&kernels.attention, [nh as u32, n as u32, 1])
        }
        AttentionKernel::Grouped { .. } => {
            buffers.extend([(5, &step), (6, &part)]);
            grouped = kernels.attention_grouped(gpu, nh / nkv)?;
            (&grouped, [nkv as u32, n as u32, chunks as u32])
        }
        AttentionKernel::Vec { group, threads, .. } => {
            buffers.extend([(5, &step), (6, &part)]);
            if group == 0 || (nh / nkv) % group != 0 {
                return Err(VulkanError::InvalidInput(format!(
                    "attention_vec takes a group of query heads that divides the {} per K/V head, not {group}",
                    nh / nkv
                )));
            }
            grouped = kernels.attention_vec(gpu, group, threads)?;
            (&grouped, [(nh / group) as u32, n as u32, chunks as u32])
        }
        AttentionKernel::Tiled => {
            // The query tiles as a step writes them (split at slot boundaries).
            let per_tile = crate::model::attention_tiled_rows(hd);
            let table = crate::model::attention_query_tiles(rows, nh / nkv, per_tile);
            tiles = gpu.storage_init("query tiles", bytemuck::cast_slice(&table))?;
            buffers.push((8, &tiles));
            (
                &kernels.attention_tiled,
                [table.len() as u32, nkv as u32, 1],
            )
        }
        AttentionKernel::Coop => {
            coop = kernels.attention_coop(gpu, hd)?.ok_or_else(|| {
                VulkanError::InvalidInput(format!(
                    "attention_coop does not run here (head dimension {hd}, prefill {}): open the device with pattn=2 and prefill=coop or coop-emulated, with a head dimension that is a multiple of 16",
                    gpu.prefill_product()
                ))
            })?;
            let per_tile = crate::attention_coop::ATTENTION_COOP_ROWS;
            let table = crate::model::attention_query_tiles(rows, nh / nkv, per_tile);
            tiles = gpu.storage_init("query tiles", bytemuck::cast_slice(&table))?;
            buffers.push((8, &tiles));
            (&coop, [table.len() as u32, nkv as u32, 1])
        }
    };
    let bg = crate::kernels::bind(gpu, pipeline, "attention", &buffers);
    let combine = crate::kernels::bind(
        gpu,
        &kernels.attention_combine,
        "attention combine",
        &[(3, &out), (4, &pb), (5, &step), (6, &part)],
    );
    run(gpu, &out, n * row, |rec| {
        rec.dispatch("attention", pipeline, &bg, groups);
        if chunks > 1 {
            rec.dispatch(
                "attention combine",
                &kernels.attention_combine,
                &combine,
                [nh as u32, n as u32, 1],
            );
        }
    })
}
