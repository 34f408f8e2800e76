//! Every matrix kernel against candle on the CPU, on random blocks (made by candle's own
//! quantizers) and on real blocks of SmolLM2, plus chunked bindings and bad input.
//!
//! Tolerance: the GPU dequantizes exactly as candle does (f32 products of the same scales
//! and quants), so only the f32 summation order differs. We require a relative L2 error
//! ‖gpu − ref‖/‖ref‖ below 1e-5 for every type (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K,
//! Q6_K),
//! against a reference accumulated in f64 from candle's dequantized weights.

mod common;

use common::{
    decode_input, decode_tolerance, random, random_qtensor, upload_with_reference, ALL_TYPES,
    REL_TOL,
};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use rand::{Rng, SeedableRng};
use xpu_vulkan::{testing, GpuWeight, KernelTuning, VulkanError, WeightType};

/// Reference `y[t, r] = Σ_k W[r, k] x[t, k]` in f64 from candle's dequantized weights.
fn reference(w: &[f32], rows: usize, k: usize, x: &[f32], n_tokens: usize) -> Vec<f64> {
    let mut y = vec![0.0; n_tokens * rows];
    for t in 0..n_tokens {
        for r in 0..rows {
            y[t * rows + r] = (0..k)
                .map(|i| w[r * k + i] as f64 * x[t * k + i] as f64)
                .sum();
        }
    }
    y
}

/// Uploads `qt` (`[rows, k]`) and checks the matmul for several token counts and the row
/// lookup against candle's dequantization.
fn check_tensor(gpu: &xpu_vulkan::Gpu, label: &str, qt: &QTensor, seed: u64) -> usize {
    check_tensor_with(gpu, &common::tuning(), label, qt, seed)
}

/// As [`check_tensor`], on a GPU made with `tuning`.
fn check_tensor_with(
    gpu: &xpu_vulkan::Gpu,
    tuning: &KernelTuning,
    label: &str,
    qt: &QTensor,
    seed: u64,
) -> usize {
    let (rows, k) = qt.shape().dims2().unwrap();
    let (weight, w) = upload_with_reference(gpu, label, qt);
    let ty = weight.weight_type();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // 1: decode; 3 and 11: the decode kernel once per token, or (tuning batch=1) the batched
    // product, with fewer than one token group and more than one group of 8; 17, 40, 100:
    // the tiled product (at least 16 tokens), one partial tile of 32 tokens, one full and one
    // partial, three full and one partial.
    for n_tokens in [1usize, 3, 11, 17, 40, 100] {
        let x = random(&mut rng, n_tokens * k);
        let got = testing::matmul(gpu, &weight, &x, n_tokens).unwrap();
        // A few tokens: the decode product, whose input may be quantized (see decode_input).
        let x_ref: Vec<f32> = if tuning.decode_kernel_for(n_tokens) {
            decode_input(tuning, ty, &x)
                .iter()
                .map(|&v| v as f32)
                .collect()
        } else {
            x.clone()
        };
        let (rel, max_abs) = common::compare(&got, &reference(&w, rows, k, &x_ref, n_tokens));
        println!(
            "{label} {ty:?} [{rows}x{k}] tokens={n_tokens}: rel {rel:.2e} max_abs {max_abs:.2e}"
        );
        let tol = common::product_tolerance(gpu, ty, n_tokens);
        assert!(rel < tol, "{label}: relative error {rel} above {tol}");
    }
    let ids: Vec<u32> = vec![0, (rows - 1) as u32, (rows / 2) as u32];
    let got = testing::get_rows(gpu, &weight, &ids).unwrap();
    for (t, &id) in ids.iter().enumerate() {
        let want = &w[id as usize * k..(id as usize + 1) * k];
        assert_eq!(&got[t * k..(t + 1) * k], want, "{label}: row {id} differs");
    }
    weight.chunk_count()
}

#[test]
fn every_type_on_random_blocks_matches_candle() {
    let gpu = common::gpu(None);
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        // 512 = two K-quant super-blocks; 37 rows = an odd count, not a multiple of anything.
        let qt = random_qtensor(dtype, 37, 512, i as u64);
        assert_eq!(check_tensor(&gpu, "random", &qt, 100 + i as u64), 1);
    }
}

/// The decode product with f32 x (`dp4a=0`; by default the output head's), which multiplies
/// the unit's quants with x before it applies the scales (Q4_0, Q8_0, the K-quants' `k_dot`
/// and Q6_K's sums per 16 values): one token against candle for every type.
#[test]
fn f32_decode_products_on_every_type_match_candle() {
    let tuning: KernelTuning = "dp4a=0".parse().unwrap();
    let gpu = xpu_vulkan::Gpu::new(&xpu_vulkan::DeviceOptions {
        tuning,
        ..common::device_options(None)
    })
    .unwrap();
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        let qt = random_qtensor(dtype, 37, 512, 60 + i as u64);
        let (weight, w) = upload_with_reference(&gpu, "f32 decode", &qt);
        let x = random(&mut rand::rngs::StdRng::seed_from_u64(160 + i as u64), 512);
        let got = testing::matmul(&gpu, &weight, &x, 1).unwrap();
        let (rel, max_abs) = common::compare(&got, &reference(&w, 37, 512, &x, 1));
        println!("f32 decode {dtype:?}: rel {rel:.2e} max_abs {max_abs:.2e}");
        assert!(
            rel < REL_TOL,
            "{dtype:?}: relative error {rel} above {REL_TOL}"
        );
    }
}

#[test]
fn batched_product_of_a_few_tokens_on_every_type() {
    // With batch=1 only one-token steps take the decode kernel: 3 and 11 tokens run the
    // batched product (`matmul`), as every step of 2..16 tokens does with prefill=rows.
    let tuning: KernelTuning = "batch=1".parse().unwrap();
    let gpu = xpu_vulkan::Gpu::new(&xpu_vulkan::DeviceOptions {
        tuning,
        ..common::device_options(None)
    })
    .unwrap();
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        let qt = random_qtensor(dtype, 37, 512, 40 + i as u64);
        check_tensor_with(&gpu, &tuning, "batched", &qt, 500 + i as u64);
    }
}

#[test]
fn tiled_prefill_covers_several_row_tiles() {
    // 150 rows: two full tiles of 64 rows and a partial one, for every type.
    let gpu = common::gpu(None);
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        let qt = random_qtensor(dtype, 150, 256, 70 + i as u64);
        check_tensor(&gpu, "row tiles", &qt, 900 + i as u64);
    }
}

#[test]
fn outputs_side_by_side_and_accumulated() {
    // 70 rows written at offset 5 of 80 floats per token, over and added to what is there:
    // the decode product (1 and 3 tokens: once per token) and the tiled one (40 tokens) each
    // leave the other floats of a token exactly as they were. Where the decode product
    // quantizes x (int8 activations), the reference does the same (decode_input).
    let gpu = common::gpu(None);
    let tuning = common::tuning();
    let (rows, k, stride, offset) = (70, 256, 80, 5);
    let qt = random_qtensor(GgmlDType::Q4K, rows, k, 80);
    let (weight, w) = upload_with_reference(&gpu, "side by side", &qt);
    let ty = weight.weight_type();
    let mut rng = rand::rngs::StdRng::seed_from_u64(81);
    for n_tokens in [1usize, 3, 40] {
        let x = random(&mut rng, n_tokens * k);
        let x_ref: Vec<f32> = if tuning.decode_kernel_for(n_tokens) {
            decode_input(&tuning, ty, &x)
                .iter()
                .map(|&v| v as f32)
                .collect()
        } else {
            x.clone()
        };
        let product = reference(&w, rows, k, &x_ref, n_tokens);
        let initial = random(&mut rng, n_tokens * stride);
        for accumulate in [false, true] {
            let got = testing::matmul_into(
                &gpu, &weight, &x, n_tokens, &initial, stride, offset, accumulate,
            )
            .unwrap();
            let mut got_rows = Vec::new();
            let mut want_rows = Vec::new();
            for t in 0..n_tokens {
                for (i, (&g, &before)) in got[t * stride..(t + 1) * stride]
                    .iter()
                    .zip(&initial[t * stride..])
                    .enumerate()
                {
                    if (offset..offset + rows).contains(&i) {
                        got_rows.push(g);
                        want_rows.push(
                            product[t * rows + i - offset]
                                + if accumulate { before as f64 } else { 0.0 },
                        );
                    } else {
                        assert_eq!(g, before, "tokens={n_tokens} accumulate={accumulate}: token {t} float {i} outside the rows was changed");
                    }
                }
            }
            let (rel, _) = common::compare(&got_rows, &want_rows);
            println!("side by side tokens={n_tokens} accumulate={accumulate}: rel {rel:.2e}");
            // The reference quantizes x as the decode product does, so only the prompt
            // product on cooperative matrices (f16 operands) needs a looser bound.
            let tol = if tuning.tiled_kernel_for(n_tokens) && gpu.uses_cooperative_prefill() {
                common::COOP_REL_TOL
            } else {
                REL_TOL
            };
            assert!(
                rel < tol,
                "tokens={n_tokens} accumulate={accumulate}: relative error {rel}"
            );
        }
    }
}

#[test]
fn workgroup_memory_reductions_match_candle() {
    // The same kernels without subgroup operations (adapters that lack them).
    let gpu = common::gpu_without_subgroups();
    assert!(!gpu.subgroups());
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        let qt = random_qtensor(dtype, 37, 512, 20 + i as u64);
        check_tensor(&gpu, "no subgroups", &qt, 300 + i as u64);
        check_fused(&gpu, "no subgroups", &qt, 400 + i as u64);
    }
    // 16 rows per matrix-vector workgroup.
    let tall = random_qtensor(GgmlDType::Q4_0, 8197, 64, 43);
    check_tensor(&gpu, "no subgroups tall", &tall, 605);
    check_fused(&gpu, "no subgroups tall", &tall, 606);
}

/// The decode kernels with a fused input (RMSNorm, SiLU·mul) against the f64 reference of
/// the same transformation followed by the product.
fn check_fused(gpu: &xpu_vulkan::Gpu, label: &str, qt: &QTensor, seed: u64) {
    let (rows, k) = qt.shape().dims2().unwrap();
    let (weight, w) = upload_with_reference(gpu, label, qt);
    let ty = weight.weight_type();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let product = |x: &[f64]| -> Vec<f64> {
        (0..rows)
            .map(|r| (0..k).map(|i| w[r * k + i] as f64 * x[i]).sum())
            .collect()
    };

    let x = random(&mut rng, k);
    let nw = random(&mut rng, k);
    let eps = 1e-5f32;
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64;
    // The kernel multiplies x by the norm weights first and the row sums by 1/rms at the end.
    let weighted: Vec<f32> = x.iter().zip(&nw).map(|(&v, &g)| v * g).collect();
    let normed: Vec<f64> = decode_input(&common::tuning(), ty, &weighted)
        .iter()
        .map(|&v| v / (ms + eps as f64).sqrt())
        .collect();
    let got =
        testing::matvec_fused(gpu, &weight, &x, testing::Fused::Norm { weight: &nw, eps }).unwrap();
    let (rel, _) = common::compare(&got, &product(&normed));
    println!("{label} {ty:?} rmsnorm·matvec: rel {rel:.2e}");
    assert!(
        rel < decode_tolerance(&common::tuning(), ty, true),
        "{label} {ty:?} rmsnorm·matvec: relative error {rel}"
    );

    let gate_up: Vec<f32> = (0..2 * k).map(|_| rng.random_range(-4.0f32..4.0)).collect();
    let act: Vec<f64> = if common::tuning().decode_quantizes_x(ty) {
        // In f32 as the kernel computes it before quantizing.
        let act: Vec<f32> = (0..k)
            .map(|i| gate_up[i] / (1.0 + (-gate_up[i]).exp()) * gate_up[k + i])
            .collect();
        decode_input(&common::tuning(), ty, &act)
    } else {
        (0..k)
            .map(|i| {
                let g = gate_up[i] as f64;
                g / (1.0 + (-g).exp()) * gate_up[k + i] as f64
            })
            .collect()
    };
    let got = testing::matvec_fused(gpu, &weight, &gate_up, testing::Fused::Glu).unwrap();
    let (rel, _) = common::compare(&got, &product(&act));
    println!("{label} {ty:?} silu·mul·matvec: rel {rel:.2e}");
    assert!(
        rel < decode_tolerance(&common::tuning(), ty, true),
        "{label} {ty:?} silu·mul·matvec: relative error {rel}"
    );
}

#[test]
fn fused_decode_inputs_match_reference() {
    let gpu = common::gpu(None);
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        check_fused(
            &gpu,
            "fused",
            &random_qtensor(dtype, 37, 512, 30 + i as u64),
            500 + i as u64,
        );
    }
    // Rows longer than 64 units: each thread of a matrix-vector workgroup walks several units.
    let long = random_qtensor(GgmlDType::Q4_0, 9, 4096, 41);
    check_tensor(&gpu, "long rows", &long, 601);
    check_fused(&gpu, "long rows", &long, 602);
    // A tall matrix (16 rows per matrix-vector workgroup), 8197 rows: not a multiple of 16.
    let tall = random_qtensor(GgmlDType::Q8_0, 8197, 64, 42);
    check_tensor(&gpu, "tall", &tall, 603);
    check_fused(&gpu, "tall", &tall, 604);
    // Chunked: every chunk recomputes the norm of the whole input.
    let gpu = common::gpu(Some(4100));
    check_fused(
        &gpu,
        "fused chunked",
        &random_qtensor(GgmlDType::Q8_0, 37, 512, 40),
        600,
    );
}

#[test]
fn k_quant_layouts_over_long_rows_tall_matrices_and_chunks() {
    // The K-quant weights are rearranged on upload (quant.rs: units in row order, then the
    // super-blocks' scales), so every place a kernel derives an offset from is covered.
    let gpu = common::gpu(None);
    let small = common::gpu(Some(4100));
    for (i, dtype) in [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K]
        .into_iter()
        .enumerate()
    {
        let i = i as u64;
        // 4096 weights = 128 units: each thread of a matrix-vector workgroup walks two units
        // of a row; 9 rows = two workgroups of 4 and a partial one.
        let long = random_qtensor(dtype, 9, 4096, 80 + i);
        check_tensor(&gpu, "K-quant long rows", &long, 610 + i);
        check_fused(&gpu, "K-quant long rows", &long, 620 + i);
        if dtype == GgmlDType::Q5K {
            continue; // uploaded as stored: its offsets do not depend on the chunk's rows
        }
        // 16 rows per matrix-vector workgroup; 8197 rows: not a multiple of 16.
        let tall = random_qtensor(dtype, 8197, 256, 90 + i);
        check_fused(&gpu, "K-quant tall", &tall, 630 + i);
        // Chunks of 14 (Q4_K) and 8 (Q6_K) of the 37 rows: each chunk's scales follow that
        // chunk's own units.
        let qt = random_qtensor(dtype, 37, 512, 100 + i);
        assert!(check_tensor(&small, "K-quant chunked", &qt, 640 + i) > 1);
        check_fused(&small, "K-quant chunked", &qt, 650 + i);
    }
}

/// The q|k|v decode product with RMSNorm, RoPE and the K/V store fused, against the f64
/// reference of RMSNorm, the product and rope.wgsl's rotation (the angle computed in f32 as
/// the model's table computes it, as ggml does); every cache entry but the token's position
/// must keep its NaN. The caches hold f16: their tolerance is f16's rounding (KV_REL_TOL).
/// f16 keeps 11 significant bits: a rounding error of at most 2^-12 relative per value.
const KV_REL_TOL: f64 = 5e-4;

fn check_qkv_rope(
    gpu: &xpu_vulkan::Gpu,
    label: &str,
    qt: &QTensor,
    n_head: usize,
    n_kv: usize,
    pos: usize,
    seed: u64,
) -> usize {
    let (chunks, dispatches) = check_qkv_rope_parts(gpu, label, &[qt], n_head, n_kv, pos, seed);
    assert_eq!(dispatches, chunks, "{label}: one dispatch per chunk");
    chunks
}

/// As [`check_qkv_rope`] for the rows of several matrices side by side (q|k and v of other
/// types, as in Q4_K_M files), each part's reference with its own type's decode input.
/// Returns the chunk count and the dispatches of the fused product.
fn check_qkv_rope_parts(
    gpu: &xpu_vulkan::Gpu,
    label: &str,
    parts: &[&QTensor],
    n_head: usize,
    n_kv: usize,
    pos: usize,
    seed: u64,
) -> (usize, usize) {
    let k = parts[0].shape().dims2().unwrap().1;
    let uploaded: Vec<(GpuWeight, Vec<f32>)> = parts
        .iter()
        .map(|qt| upload_with_reference(gpu, label, qt))
        .collect();
    let rows: usize = uploaded.iter().map(|(w, _)| w.rows()).sum();
    let hd = rows / (n_head + 2 * n_kv);
    let ctx = pos + 3;
    let types: Vec<WeightType> = uploaded.iter().map(|(w, _)| w.weight_type()).collect();
    let ty = types[0];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let x = random(&mut rng, k);
    let nw = random(&mut rng, k);
    let (eps, base) = (1e-5f32, 10000f32);
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64;
    let weighted: Vec<f32> = x.iter().zip(&nw).map(|(&v, &g)| v * g).collect();
    let mut y: Vec<f64> = Vec::with_capacity(rows);
    for (weight, w) in &uploaded {
        let normed: Vec<f64> = decode_input(&common::tuning(), weight.weight_type(), &weighted)
            .iter()
            .map(|&v| v / (ms + eps as f64).sqrt())
            .collect();
        y.extend(
            (0..weight.rows())
                .map(|r| (0..k).map(|i| w[r * k + i] as f64 * normed[i]).sum::<f64>()),
        );
    }
    // Row r of the product, rotated with its pair partner as rope.wgsl does (pairs 2j, 2j+1).
    let rotated = |r: usize| -> f64 {
        let j = (r % hd) / 2;
        let theta_scale = base.powf(-2.0 / hd as f32);
        let angle = (0..j).fold(pos as f32, |theta, _| theta * theta_scale);
        let (c, s) = (angle.cos() as f64, angle.sin() as f64);
        let (a0, a1) = (y[r & !1], y[r | 1]);
        if r.is_multiple_of(2) {
            a0 * c - a1 * s
        } else {
            a0 * s + a1 * c
        }
    };
    let shape = testing::RopeShape {
        n_head,
        n_kv,
        head_dim: hd,
        ctx,
        pos,
        base,
    };
    let weights: Vec<&GpuWeight> = uploaded.iter().map(|(w, _)| w).collect();
    let got = testing::matvec_norm_rope_parts(gpu, &weights, &x, &nw, eps, &shape).unwrap();
    let want_q: Vec<f64> = (0..n_head * hd).map(rotated).collect();
    let (rel_q, _) = common::compare(&got.q, &want_q);
    let at =
        |cache: &[f32], h: usize| cache[(h * ctx + pos) * hd..(h * ctx + pos + 1) * hd].to_vec();
    let mut got_k = Vec::new();
    let mut got_v = Vec::new();
    for h in 0..n_kv {
        got_k.extend(at(&got.kcache, h));
        got_v.extend(at(&got.vcache, h));
    }
    let want_k: Vec<f64> = (n_head * hd..(n_head + n_kv) * hd).map(rotated).collect();
    let want_v: Vec<f64> = y[(n_head + n_kv) * hd..].to_vec();
    let (rel_k, _) = common::compare(&got_k, &want_k);
    let (rel_v, _) = common::compare(&got_v, &want_v);
    println!(
        "{label} {types:?} rmsnorm·matvec·rope: rel q {rel_q:.2e} k {rel_k:.2e} v {rel_v:.2e}"
    );
    for (what, rel, tol) in [
        (
            "q",
            rel_q,
            types
                .iter()
                .map(|&t| decode_tolerance(&common::tuning(), t, true))
                .fold(REL_TOL, f64::max),
        ),
        ("k", rel_k, KV_REL_TOL),
        ("v", rel_v, KV_REL_TOL),
    ] {
        assert!(
            rel < tol,
            "{label} {ty:?}.. rmsnorm·matvec·rope: relative error of {what} {rel}"
        );
    }
    for (name, cache) in [("k", &got.kcache), ("v", &got.vcache)] {
        for (i, v) in cache.iter().enumerate() {
            assert_eq!(
                v.is_nan(),
                (i / hd) % ctx != pos,
                "{label}: {name} cache entry {i} (position {}) wrongly written or left",
                (i / hd) % ctx
            );
        }
    }
    let chunks = uploaded.iter().map(|(w, _)| w.chunk_count()).sum();
    (chunks, got.dispatches)
}

#[test]
fn fused_qkv_rope_matches_reference() {
    let gpu = common::gpu(None);
    // 4 q heads and 2 k/v heads of 64 dims.
    check_qkv_rope(
        &gpu,
        "qkv rope",
        &random_qtensor(GgmlDType::Q8_0, 512, 512, 50),
        4,
        2,
        7,
        700,
    );
    check_qkv_rope(
        &gpu,
        "qkv rope",
        &random_qtensor(GgmlDType::Q4_0, 512, 512, 51),
        4,
        2,
        0,
        701,
    );
    check_qkv_rope(
        &gpu,
        "qkv rope",
        &random_qtensor(GgmlDType::Q4K, 256, 256, 52),
        2,
        1,
        30,
        702,
    );
    // Tall (16 rows per workgroup): 96 q and 16 k/v heads of 64 dims.
    check_qkv_rope(
        &gpu,
        "qkv rope tall",
        &random_qtensor(GgmlDType::Q4_0, 8192, 64, 53),
        96,
        16,
        5,
        703,
    );
    // Chunked: chunks of an even number of rows, so pairs never straddle two.
    let small = common::gpu(Some(4100));
    let chunks = check_qkv_rope(
        &small,
        "qkv rope chunked",
        &random_qtensor(GgmlDType::Q8_0, 256, 64, 54),
        4,
        2,
        11,
        704,
    );
    assert!(chunks > 1, "expected several chunks, got {chunks}");
    // Without subgroups: the workgroup-memory reductions.
    let plain = common::gpu_without_subgroups();
    check_qkv_rope(
        &plain,
        "qkv rope no subgroups",
        &random_qtensor(GgmlDType::Q8_0, 512, 512, 55),
        4,
        2,
        9,
        705,
    );
    // Mixed types, one dispatch: q|k of one type and v of another, as the Q4_K_M files
    // whose attn_v is Q6_K (the v rows after q|k: k rotated, v not), Q5_K_M's, and a pair
    // whose first type quantizes x to int8 and whose second does not (every type's own
    // decode input); tall (16 rows per workgroup); without subgroups.
    for (a, b, n_head, n_kv, hd, pos, gpu, label) in [
        (
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            4,
            2,
            64,
            7,
            &gpu,
            "qkv rope Q4_K|Q6_K",
        ),
        (
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            2,
            1,
            128,
            3,
            &gpu,
            "qkv rope Q5_K|Q6_K",
        ),
        (
            GgmlDType::Q8_0,
            GgmlDType::Q4_1,
            4,
            2,
            64,
            5,
            &gpu,
            "qkv rope Q8_0|Q4_1",
        ),
        (
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            96,
            16,
            64,
            2,
            &gpu,
            "qkv rope tall Q4_0|Q4_K",
        ),
        (
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            4,
            2,
            64,
            1,
            &plain,
            "qkv rope Q4_K|Q6_K no subgroups",
        ),
    ] {
        let qk = random_qtensor(a, (n_head + n_kv) * hd, 256, 57);
        let v = random_qtensor(b, n_kv * hd, 256, 58);
        let (_, dispatches) = check_qkv_rope_parts(gpu, label, &[&qk, &v], n_head, n_kv, pos, 706);
        assert_eq!(dispatches, 1, "{label}: one dispatch for both types");
    }
    // Parts that cannot be one dispatch (v split into two chunks) refuse the fused RoPE.
    let small = common::gpu(Some(8192));
    let qk = random_qtensor(GgmlDType::Q4K, 192, 256, 59);
    let v = random_qtensor(GgmlDType::Q6K, 64, 256, 60);
    let upload = |qt: &QTensor| {
        let (rows, k) = qt.shape().dims2().unwrap();
        let ty = WeightType::from_ggml(qt.dtype()).unwrap();
        GpuWeight::upload(&small, "w", ty, rows, k, &qt.data().unwrap()).unwrap()
    };
    let (qk, v) = (upload(&qk), upload(&v));
    assert!(v.chunk_count() > 1);
    let shape = testing::RopeShape {
        n_head: 2,
        n_kv: 1,
        head_dim: 64,
        ctx: 4,
        pos: 1,
        base: 10000.0,
    };
    match testing::matvec_norm_rope_parts(
        &small,
        &[&qk, &v],
        &[0.5; 256],
        &[1.0; 256],
        1e-5,
        &shape,
    ) {
        Err(VulkanError::InvalidInput(msg)) => assert!(msg.contains("one dispatch"), "{msg}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a mixed product in several chunks was accepted"),
    }
    // One row per chunk: a pair would straddle two chunks, so the fused kernel is refused.
    let tiny = common::gpu(Some(100));
    let qt = random_qtensor(GgmlDType::Q8_0, 8, 64, 56);
    let weight =
        GpuWeight::upload(&tiny, "w", WeightType::Q8_0, 8, 64, &qt.data().unwrap()).unwrap();
    assert!(!weight.pairs_in_chunks());
    let shape = testing::RopeShape {
        n_head: 2,
        n_kv: 1,
        head_dim: 2,
        ctx: 4,
        pos: 1,
        base: 10000.0,
    };
    match testing::matvec_norm_rope(&tiny, &weight, &[0.5; 64], &[1.0; 64], 1e-5, &shape) {
        Err(VulkanError::InvalidInput(msg)) => assert!(msg.contains("even rows"), "{msg}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a chunking that splits RoPE pairs was accepted"),
    }
}

/// The gate|up decode product with RMSNorm and SiLU·mul fused, on a matrix whose rows are
/// (gate j, up j) pairs, against the f64 reference of RMSNorm, the product and SiLU·mul.
fn check_norm_glu(gpu: &xpu_vulkan::Gpu, label: &str, qt: &QTensor, seed: u64) -> usize {
    let (rows, k) = qt.shape().dims2().unwrap();
    let (weight, w) = upload_with_reference(gpu, label, qt);
    let ty = weight.weight_type();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let x = random(&mut rng, k);
    let nw = random(&mut rng, k);
    let eps = 1e-5f32;
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64;
    let weighted: Vec<f32> = x.iter().zip(&nw).map(|(&v, &g)| v * g).collect();
    let normed: Vec<f64> = decode_input(&common::tuning(), ty, &weighted)
        .iter()
        .map(|&v| v / (ms + eps as f64).sqrt())
        .collect();
    let y: Vec<f64> = (0..rows)
        .map(|r| (0..k).map(|i| w[r * k + i] as f64 * normed[i]).sum())
        .collect();
    let want: Vec<f64> = (0..rows / 2)
        .map(|j| y[2 * j] / (1.0 + (-y[2 * j]).exp()) * y[2 * j + 1])
        .collect();
    let got = testing::matvec_norm_glu(gpu, &weight, &x, &nw, eps).unwrap();
    let (rel, _) = common::compare(&got, &want);
    println!("{label} {ty:?} rmsnorm·matvec·silu·mul: rel {rel:.2e}");
    assert!(
        rel < decode_tolerance(&common::tuning(), ty, true),
        "{label} {ty:?} rmsnorm·matvec·silu·mul: relative error {rel}"
    );
    weight.chunk_count()
}

#[test]
fn fused_gate_up_glu_matches_reference() {
    let gpu = common::gpu(None);
    check_norm_glu(
        &gpu,
        "gate|up glu",
        &random_qtensor(GgmlDType::Q8_0, 64, 512, 60),
        800,
    );
    check_norm_glu(
        &gpu,
        "gate|up glu",
        &random_qtensor(GgmlDType::Q4_0, 64, 512, 61),
        801,
    );
    check_norm_glu(
        &gpu,
        "gate|up glu",
        &random_qtensor(GgmlDType::Q6K, 38, 256, 62),
        802,
    );
    // Tall (16 rows per workgroup).
    check_norm_glu(
        &gpu,
        "gate|up glu tall",
        &random_qtensor(GgmlDType::Q8_0, 8194, 64, 63),
        803,
    );
    // Chunked: chunks of an even number of rows.
    let small = common::gpu(Some(4100));
    let chunks = check_norm_glu(
        &small,
        "gate|up glu chunked",
        &random_qtensor(GgmlDType::Q4_0, 256, 64, 64),
        804,
    );
    assert!(chunks > 1, "expected several chunks, got {chunks}");
    let plain = common::gpu_without_subgroups();
    check_norm_glu(
        &plain,
        "gate|up glu no subgroups",
        &random_qtensor(GgmlDType::Q8_0, 64, 512, 65),
        805,
    );
    // One row per chunk would split the pairs: refused.
    let tiny = common::gpu(Some(100));
    let qt = random_qtensor(GgmlDType::Q8_0, 8, 64, 66);
    let weight =
        GpuWeight::upload(&tiny, "w", WeightType::Q8_0, 8, 64, &qt.data().unwrap()).unwrap();
    match testing::matvec_norm_glu(&tiny, &weight, &[0.5; 64], &[1.0; 64], 1e-5) {
        Err(VulkanError::InvalidInput(msg)) => assert!(msg.contains("even rows"), "{msg}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a chunking that splits gate/up pairs was accepted"),
    }
}

/// A device whose decode products make every matrix of at least 16 rows tall (16 rows per
/// workgroup) with `threads` threads per tall workgroup (`mvwg=`), `extra` keys added, on
/// top of the tuning of the environment (as the reference helpers read it).
fn wide_decode_gpu(threads: u32, extra: &str, subgroups: bool) -> xpu_vulkan::Gpu {
    let env = std::env::var(xpu_vulkan::MATVEC_TUNING_ENV).unwrap_or_default();
    xpu_vulkan::Gpu::new(&xpu_vulkan::DeviceOptions {
        tuning: format!("{env},tall=16,mvwg={threads},{extra}")
            .parse()
            .unwrap(),
        subgroups: Some(subgroups),
        ..common::device_options(None)
    })
    .unwrap()
}

/// The tall decode workgroups with 128 and 256 threads (`mvwg=`, `MV_WG` in matmul.wgsl):
/// x read once per 16 rows by more threads, each taking fewer units of k. Every entry point
/// (RMSNorm, SiLU·mul, RMSNorm with RoPE and the K/V store, RMSNorm with SiLU·mul of
/// interleaved gate|up rows, a mixed Q4_K|Q6_K q|k|v) against its f64 reference with the
/// tolerances of the 64-thread kernels, and the plain one-token products of Q4_0, Q8_0 and
/// Q4_K against the 64-thread ones on the same device (only the order of the sums differs).
/// k = 8448 is 264 units: more than 256 threads and not a multiple of 32 x threads, so some
/// threads take two units and others one; k = 512 (16 units) leaves most threads without
/// one. Rows (37, 30, 38) are not multiples of 16. The last device also takes two units per
/// iteration (`units=2`) and has no subgroups (the workgroup-memory reductions fold the
/// threads past 64 first).
#[test]
fn wide_decode_workgroups_match_reference_and_64_threads() {
    let narrow = wide_decode_gpu(64, "", true);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1900);
    // Each type's matrix, x and the 64-thread product of one token.
    let long: Vec<(QTensor, Vec<f32>, Vec<f64>)> =
        [GgmlDType::Q4_0, GgmlDType::Q8_0, GgmlDType::Q4K]
            .into_iter()
            .enumerate()
            .map(|(i, dtype)| {
                let qt = random_qtensor(dtype, 37, 8448, 1900 + i as u64);
                let x = random(&mut rng, 8448);
                let (weight, _) = upload_with_reference(&narrow, "64 threads", &qt);
                let y = testing::matmul(&narrow, &weight, &x, 1).unwrap();
                (qt, x, y.iter().map(|&v| v as f64).collect())
            })
            .collect();
    for (threads, extra, subgroups) in [(128, "", true), (256, "", true), (256, "units=2", false)] {
        let gpu = wide_decode_gpu(threads, extra, subgroups);
        let label = format!("mvwg={threads} {extra} subgroups={subgroups}");
        for (i, (qt, x, want)) in long.iter().enumerate() {
            check_fused(&gpu, &label, qt, 1910 + i as u64);
            let (weight, _) = upload_with_reference(&gpu, &label, qt);
            let (rel, _) = common::compare(&testing::matmul(&gpu, &weight, x, 1).unwrap(), want);
            let ty = weight.weight_type();
            println!("{label} {ty:?} [37x8448] against 64 threads: rel {rel:.2e}");
            assert!(rel < REL_TOL, "{label} {ty:?}: {rel} from 64 threads");
        }
        let short = random_qtensor(GgmlDType::Q4_0, 37, 512, 1915);
        check_fused(&gpu, &format!("{label} short rows"), &short, 1916);
        check_norm_glu(
            &gpu,
            &label,
            &random_qtensor(GgmlDType::Q8_0, 38, 8448, 1920),
            1921,
        );
        // 3 q heads and 1 k/v head of 6 dims: 30 rows.
        check_qkv_rope(
            &gpu,
            &label,
            &random_qtensor(GgmlDType::Q4_0, 30, 8448, 1924),
            3,
            1,
            4,
            1925,
        );
        // Q4_K q|k (384 rows: 24 workgroups of 16) and Q6_K v, one dispatch.
        let qk = random_qtensor(GgmlDType::Q4K, 384, 8448, 1926);
        let v = random_qtensor(GgmlDType::Q6K, 128, 8448, 1927);
        let (_, dispatches) = check_qkv_rope_parts(&gpu, &label, &[&qk, &v], 4, 2, 6, 1928);
        assert_eq!(dispatches, 1, "{label}: one dispatch for both types");
    }
}

#[test]
fn chunked_bindings_match_candle() {
    // A 4100-byte binding cap splits every matrix of 37 x 512 weights into several chunks.
    let gpu = common::gpu(Some(4100));
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        let qt = random_qtensor(dtype, 37, 512, 10 + i as u64);
        let chunks = check_tensor(&gpu, "chunked", &qt, 200 + i as u64);
        assert!(
            chunks > 1,
            "{dtype:?}: expected several chunks, got {chunks}"
        );
    }
}

#[test]
fn real_smollm2_blocks_match_candle() {
    let path = common::model_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let gpu = common::gpu(None);
    // Q4_1 projections of two layers and the Q8_0 embedding (first 300 rows).
    for (name, max_rows) in [
        ("blk.0.attn_q.weight", usize::MAX),
        ("blk.0.attn_k.weight", usize::MAX),
        ("blk.7.ffn_down.weight", usize::MAX),
        ("blk.29.ffn_gate.weight", usize::MAX),
        ("token_embd.weight", 300),
    ] {
        let qt = content.tensor(&mut file, name, &Device::Cpu).unwrap();
        let (rows, k) = qt.shape().dims2().unwrap();
        let rows = rows.min(max_rows);
        let row_bytes = k / qt.dtype().block_size() * qt.dtype().type_size();
        let raw = qt.data().unwrap()[..rows * row_bytes].to_vec();
        let sub = candle_core::quantized::ggml_file::qtensor_from_ggml(
            qt.dtype(),
            &raw,
            vec![rows, k],
            &Device::Cpu,
        )
        .unwrap();
        check_tensor(&gpu, name, &sub, 7);
    }
}

#[test]
fn bad_weight_input_gives_clear_errors() {
    let gpu = common::gpu(None);
    let tensor_err = |r: Result<GpuWeight, VulkanError>| match r {
        Err(VulkanError::Tensor { detail, .. }) => detail,
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("bad input accepted"),
    };
    // Wrong byte count.
    let detail = tensor_err(GpuWeight::upload(
        &gpu,
        "w",
        WeightType::Q8_0,
        2,
        64,
        &[0u8; 10],
    ));
    assert!(detail.contains("bytes given"), "{detail}");
    // Row length that is not a whole number of K-quant super-blocks.
    let detail = tensor_err(GpuWeight::upload(
        &gpu,
        "w",
        WeightType::Q4K,
        1,
        128,
        &[0u8; 72],
    ));
    assert!(detail.contains("multiple of 256"), "{detail}");
    // A row larger than the binding cap.
    let small = common::gpu(Some(64));
    let detail = tensor_err(GpuWeight::upload(
        &small,
        "w",
        WeightType::F32,
        1,
        64,
        &[0u8; 256],
    ));
    assert!(detail.contains("largest storage binding"), "{detail}");
    // x of the wrong length.
    let w = GpuWeight::upload(&gpu, "w", WeightType::F32, 1, 32, &[0u8; 128]).unwrap();
    assert!(matches!(
        testing::matmul(&gpu, &w, &[0.0; 31], 1),
        Err(VulkanError::InvalidInput(_))
    ));
}

#[test]
fn a_type_without_a_kernel_is_named_with_its_tensor() {
    match WeightType::for_tensor("blk.3.ffn_down.weight", GgmlDType::Q2K) {
        Err(e @ VulkanError::Tensor { .. }) => {
            let msg = e.to_string();
            for part in [
                "blk.3.ffn_down.weight",
                "Q2K",
                "Q5_K",
                "BF16",
                "--device cpu",
            ] {
                assert!(msg.contains(part), "{part:?} missing from: {msg}");
            }
        }
        other => panic!("expected a Tensor error, got {other:?}"),
    }
    for dtype in ALL_TYPES {
        assert!(WeightType::for_tensor("w", dtype).is_ok(), "{dtype:?}");
    }
}

#[test]
fn cpu_adapter_is_skipped_unless_allowed() {
    // On machines whose only Vulkan device is lavapipe (CI), refusing CPU adapters must give
    // the typed error that lists what was found and why it was skipped.
    let opts = xpu_vulkan::DeviceOptions {
        allow_cpu_adapter: false,
        ..Default::default()
    };
    match xpu_vulkan::Gpu::new(&opts) {
        Err(VulkanError::NoSuitableAdapter { found }) => {
            let msg = VulkanError::NoSuitableAdapter {
                found: found.clone(),
            }
            .to_string();
            assert!(
                found.iter().any(|f| f.contains("skipped: CPU adapter")),
                "{msg}"
            );
            assert!(msg.contains("XPU_RUNNER_ALLOW_CPU_ADAPTER=1"), "{msg}");
        }
        Ok(gpu) => {
            let info = gpu.adapter_info();
            assert_ne!(
                info.device_type,
                wgpu_device_type_cpu(),
                "a CPU adapter was chosen although not allowed"
            );
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

fn wgpu_device_type_cpu() -> xpu_vulkan::device::DeviceType {
    xpu_vulkan::device::DeviceType::Cpu
}
