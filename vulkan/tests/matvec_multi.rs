//! The multi-token matrix-vector kernel (`matvec_multi`, the products of a batched decode
//! step of 2..=16 tokens) against an f64 reference from candle's dequantized weights, for
//! every weight type, with and without int8 activations (quantized once per step by
//! `quantize_x`, or in every workgroup with `xq=0`), and against the one-token kernel run
//! once per token (`multi=0`), whose arithmetic it repeats per token.
//!
//! The one-token kernel with x quantized once per product (`xq1=1`) against the same kernel
//! quantizing x in every workgroup (`xq1=0`), bit for bit.
//!
//! Token counts 1, 2, 3, 8, 11 and 16: one token (the one-token kernel), fewer than one
//! workgroup's 8 tokens, exactly 8, and across the 8-token boundary (a full and a partial
//! z slice, two full ones). The rows are 4096 values long (128 units: every thread of a
//! 64-thread workgroup takes two) and 13 of them (a partial workgroup of 4 or 8 rows).

mod common;

use common::{
    decode_input, decode_tolerance, random, random_qtensor, upload_with_reference, ALL_TYPES,
};

use candle_core::quantized::GgmlDType;
use rand::SeedableRng;
use xpu_vulkan::{testing, Gpu, GpuWeight, KernelTuning};

/// The multi-token and the one-token kernel sum each product in the same order; what a
/// driver compiles differently for the two (contracted multiply-adds) stays far below this.
const SAME_TOL: f64 = 1e-6;
const TOKEN_COUNTS: [usize; 6] = [1, 2, 3, 8, 11, 16];
const ROWS: usize = 13;
const K: usize = 4096;

fn gpu_with(spec: &str) -> (Gpu, KernelTuning) {
    let tuning: KernelTuning = spec.parse().unwrap();
    let gpu = Gpu::new(&xpu_vulkan::DeviceOptions {
        tuning,
        ..common::device_options(None)
    })
    .unwrap();
    (gpu, tuning)
}

/// `y[t, r] = Σ_k W[r, k] x[t, k]` in f64.
fn reference(w: &[f32], x: &[f64], n_tokens: usize) -> Vec<f64> {
    let mut y = vec![0.0; n_tokens * ROWS];
    for t in 0..n_tokens {
        for r in 0..ROWS {
            y[t * ROWS + r] = (0..K).map(|i| w[r * K + i] as f64 * x[t * K + i]).sum();
        }
    }
    y
}

/// Checks every type and token count on a GPU made with `spec`, against the reference and
/// against the one-token kernel run once per token on a GPU made with `spec,multi=0`.
fn check(spec: &str) {
    let (gpu, tuning) = gpu_with(spec);
    let (per_token, _) = gpu_with(&format!("{spec},multi=0"));
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        let qt = random_qtensor(dtype, ROWS, K, 70 + i as u64);
        let (weight, w) = upload_with_reference(&gpu, "multi", &qt);
        let (weight_one, _) = upload_with_reference(&per_token, "one", &qt);
        let ty = weight.weight_type();
        let mut rng = rand::rngs::StdRng::seed_from_u64(170 + i as u64);
        let xs: Vec<Vec<f32>> = TOKEN_COUNTS
            .iter()
            .map(|&n| random(&mut rng, n * K))
            .collect();
        let multi = testing::matmul_each(&gpu, &weight, &xs).unwrap();
        let per_token = testing::matmul_each(&per_token, &weight_one, &xs).unwrap();
        for (((n, x), got), one) in TOKEN_COUNTS.into_iter().zip(&xs).zip(multi).zip(per_token) {
            assert!(tuning.decode_kernel_for(n));
            let want = reference(&w, &decode_input(&tuning, ty, x), n);
            let (rel, max_abs) = common::compare(&got, &want);
            let one: Vec<f64> = one.iter().map(|&v| v as f64).collect();
            let (same, _) = common::compare(&got, &one);
            println!(
                "{spec:10} {ty:?} [{ROWS}x{K}] tokens={n}: rel {rel:.2e} max_abs {max_abs:.2e}, from the one-token kernel {same:.1e}"
            );
            let tol = decode_tolerance(&tuning, ty, true);
            assert!(
                rel < tol,
                "{spec} {ty:?} tokens={n}: relative error {rel} above {tol}"
            );
            assert!(
                same < SAME_TOL,
                "{spec} {ty:?} tokens={n}: {same} away from the one-token kernel's products"
            );
        }
    }
}

#[test]
fn multi_token_products_match_reference_with_int8_activations() {
    check("dp4a=1");
}

#[test]
fn multi_token_products_match_reference_in_f32() {
    check("dp4a=0");
}

#[test]
fn multi_token_products_quantizing_x_in_every_workgroup() {
    // Without the `quantize_x` dispatch: each workgroup quantizes the x it reads.
    check("dp4a=1,xq=0");
}

#[test]
fn multi_token_products_with_other_rows_and_tokens_per_workgroup() {
    // 8 rows and 3 tokens per workgroup: 11 and 16 tokens take 4 and 6 z slices.
    check("mrows=8,cols=3");
}

/// Checks the one-token products with x quantized once by `quantize_x` (`xq1=1`) against
/// those that quantize it in every workgroup (`xq1=0`) on GPUs made with `spec`, for every
/// type and token count: the same int8 values and sums in the same order, so the same
/// products bit for bit (for the types without int8 products both run the same kernel), and
/// within the decode tolerance of the reference. One token runs `matvec`; with `multi=0`
/// every token count does (one z slice per token, each reading its token's int8 x).
fn check_quantized_ahead(spec: &str) {
    let (ahead, tuning) = gpu_with(&format!("{spec},xq1=1"));
    let (each, _) = gpu_with(&format!("{spec},xq1=0"));
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        let qt = random_qtensor(dtype, ROWS, K, 230 + i as u64);
        let (weight, w) = upload_with_reference(&ahead, "ahead", &qt);
        let (weight_each, _) = upload_with_reference(&each, "each", &qt);
        let ty = weight.weight_type();
        let mut rng = rand::rngs::StdRng::seed_from_u64(330 + i as u64);
        let xs: Vec<Vec<f32>> = TOKEN_COUNTS
            .iter()
            .map(|&n| random(&mut rng, n * K))
            .collect();
        let got = testing::matmul_each(&ahead, &weight, &xs).unwrap();
        let want_each = testing::matmul_each(&each, &weight_each, &xs).unwrap();
        for (((n, x), got), each) in TOKEN_COUNTS.into_iter().zip(&xs).zip(got).zip(want_each) {
            let want = reference(&w, &decode_input(&tuning, ty, x), n);
            let (rel, _) = common::compare(&got, &want);
            let differ = got
                .iter()
                .zip(&each)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            println!("{spec:24} xq1=1 {ty:?} tokens={n}: rel {rel:.2e}, {differ} products differ from xq1=0");
            let tol = decode_tolerance(&tuning, ty, true);
            assert!(
                rel < tol,
                "{spec} xq1=1 {ty:?} tokens={n}: relative error {rel} above {tol}"
            );
            assert_eq!(
                differ, 0,
                "{spec} {ty:?} tokens={n}: {differ} products of xq1=1 differ from xq1=0's"
            );
        }
    }
}

#[test]
fn one_token_products_with_x_quantized_ahead_equal_those_quantizing_in_every_workgroup() {
    // 4-row workgroups, and two units per thread and iteration.
    check_quantized_ahead("dp4a=1");
    check_quantized_ahead("dp4a=1,units=2");
}

#[test]
fn tall_one_token_products_with_x_quantized_ahead_equal_those_quantizing_in_every_workgroup() {
    // 16-row workgroups (13 rows count as tall with tall=8) of 64 and 256 threads.
    check_quantized_ahead("dp4a=1,tall=8,mvwg=64");
    check_quantized_ahead("dp4a=1,tall=8,mvwg=256");
}

#[test]
fn per_token_products_with_x_quantized_ahead_equal_those_quantizing_in_every_workgroup() {
    // multi=0: steps of several tokens run `matvec` once per token on one quantize_x of all.
    check_quantized_ahead("dp4a=1,multi=0");
}

/// The RMSNorm of token row `x` times `w` in f32, as rmsnorm.wgsl computes it (the values
/// the products quantize; the reference then quantizes them as the kernel does).
fn rms_normed(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    let scale = (1.0 / (ms + eps as f64).sqrt()) as f32;
    x.iter().zip(w).map(|(&v, &g)| v * scale * g).collect()
}

/// silu(gate) * up of one token's gate|up row (`interleaved`: gate j and up j side by side,
/// else [gate | up]), in f32 as silu_mul.wgsl computes it.
fn silu_mul(row: &[f32], interleaved: bool) -> Vec<f32> {
    let k = row.len() / 2;
    (0..k)
        .map(|j| {
            let (g, u) = if interleaved {
                (row[2 * j], row[2 * j + 1])
            } else {
                (row[j], row[k + j])
            };
            g / (1.0 + (-g).exp()) * u
        })
        .collect()
}

/// The token counts of multi-token steps (one token runs the one-token fused kernel).
const STEP_TOKENS: [usize; 5] = [2, 3, 8, 11, 16];
/// Rows of the fused-input tests: 2304 values (72 units, more than the 64 threads of the
/// workgroup that normalizes a token; whole K-quant blocks), 13 of them.
const FUSED_K: usize = 2304;
const FUSED_ROWS: usize = 13;

/// A weight of `dtype` for the fused-input tests (random values from `seed`), uploaded, and
/// its dequantized values.
fn fused_weight(gpu: &Gpu, dtype: GgmlDType, seed: u64) -> (GpuWeight, Vec<f32>) {
    upload_with_reference(
        gpu,
        "fused",
        &random_qtensor(dtype, FUSED_ROWS, FUSED_K, seed),
    )
}

/// Checks a step with its input transformation fused into the quantization of x (`fused`)
/// against the same step with the transformation as its own dispatch (`apart`), for each
/// of STEP_TOKENS: for the types whose products read int8 x, the same int8 x bit for bit and
/// one dispatch less; for the others both the unfused path; the same products either way,
/// and within the decode tolerance of the reference product of `inputs` (each step's
/// transformed x in f32, as the GPU computes it).
fn check_fused_step(
    label: &str,
    tuning: &KernelTuning,
    weight: (&GpuWeight, &[f32]),
    inputs: &[Vec<f32>],
    fused: &[testing::StepProduct],
    apart: &[testing::StepProduct],
) {
    let (weight, w) = weight;
    let ty = weight.weight_type();
    let int8 = tuning.decode_quantizes_x(ty);
    for (((n, x), f), a) in STEP_TOKENS.into_iter().zip(inputs).zip(fused).zip(apart) {
        let want = reference_k(w, &decode_input(tuning, ty, x), n, FUSED_ROWS, FUSED_K);
        let (rel, _) = common::compare(&f.y, &want);
        println!(
            "{label} {ty:?} tokens={n}: rel {rel:.2e}, {} dispatches fused, {} apart",
            f.dispatches, a.dispatches
        );
        let tol = decode_tolerance(tuning, ty, true);
        assert!(
            rel < tol,
            "{label} {ty:?} tokens={n}: relative error {rel} above {tol}"
        );
        if int8 {
            let (fq, aq) = (f.xq.as_ref().unwrap(), a.xq.as_ref().unwrap());
            assert_eq!(fq.len(), n * FUSED_K / 32 * 12);
            let differ = fq.iter().zip(aq).filter(|(p, q)| p != q).count();
            assert_eq!(
                differ, 0,
                "{label} {ty:?} tokens={n}: {differ} words of xq differ"
            );
            assert_eq!(
                (f.dispatches, a.dispatches),
                (2, 3),
                "{label} {ty:?} tokens={n}: the fused quantization + matvec_multi against the transformation + quantize_x + matvec_multi"
            );
        } else {
            // f32 x: the transformation, then the product, either way.
            assert!(
                f.xq.is_none() && a.xq.is_none(),
                "{label} {ty:?}: no int8 x"
            );
            assert_eq!(
                (f.dispatches, a.dispatches),
                (2, 2),
                "{label} {ty:?} tokens={n}"
            );
        }
        let same =
            f.y.iter()
                .zip(&a.y)
                .all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{label} {ty:?} tokens={n}: products differ");
    }
}

/// A multi-token step's RMSNorm fused into the quantization of x (`norm_quantize_x`, one
/// dispatch instead of `rmsnorm` then `quantize_x`, before the q|k|v and gate|up products):
/// it repeats rmsnorm.wgsl's sums in the same order, so the int8 x is the same bit for bit.
#[test]
fn rmsnorm_fused_into_quantize_x_matches_rmsnorm_then_quantize_x() {
    let (gpu, tuning) = gpu_with("");
    let eps = 1e-5;
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        let (weight, w) = fused_weight(&gpu, dtype, 90 + i as u64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(190 + i as u64);
        // Norm weights around 1 and hidden states of a few sizes, as a model's.
        let norm_w: Vec<f32> = random(&mut rng, FUSED_K)
            .iter()
            .map(|v| 1.0 + 0.5 * v)
            .collect();
        let xs: Vec<Vec<f32>> = STEP_TOKENS
            .iter()
            .map(|&n| {
                random(&mut rng, n * FUSED_K)
                    .iter()
                    .enumerate()
                    .map(|(j, v)| v * (1 + j / FUSED_K) as f32)
                    .collect()
            })
            .collect();
        let fused = testing::norm_matmul_each(&gpu, &weight, &xs, &norm_w, eps, true).unwrap();
        let apart = testing::norm_matmul_each(&gpu, &weight, &xs, &norm_w, eps, false).unwrap();
        let normed: Vec<Vec<f32>> = xs
            .iter()
            .map(|x| {
                x.chunks(FUSED_K)
                    .flat_map(|row| rms_normed(row, &norm_w, eps))
                    .collect()
            })
            .collect();
        check_fused_step("rmsnorm", &tuning, (&weight, &w), &normed, &fused, &apart);
    }
}

/// A multi-token step's SiLU·mul fused into the quantization of the down product's x
/// (`glu_quantize_x`, one dispatch instead of `silu_mul` then `quantize_x`), for gate|up rows
/// as [gate | up] and interleaved: the same values as silu_mul.wgsl's, so the same int8 x.
#[test]
fn silu_mul_fused_into_quantize_x_matches_silu_mul_then_quantize_x() {
    let (gpu, tuning) = gpu_with("");
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        let (weight, w) = fused_weight(&gpu, dtype, 110 + i as u64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(210 + i as u64);
        // Gate and up values of a few sizes.
        let xs: Vec<Vec<f32>> = STEP_TOKENS
            .iter()
            .map(|&n| {
                random(&mut rng, n * 2 * FUSED_K)
                    .iter()
                    .map(|v| 4.0 * v)
                    .collect()
            })
            .collect();
        for interleaved in [false, true] {
            let fused = testing::glu_matmul_each(&gpu, &weight, &xs, interleaved, true).unwrap();
            let apart = testing::glu_matmul_each(&gpu, &weight, &xs, interleaved, false).unwrap();
            let act: Vec<Vec<f32>> = xs
                .iter()
                .map(|x| {
                    x.chunks(2 * FUSED_K)
                        .flat_map(|row| silu_mul(row, interleaved))
                        .collect()
                })
                .collect();
            let label = if interleaved {
                "silu_mul (interleaved)"
            } else {
                "silu_mul"
            };
            check_fused_step(label, &tuning, (&weight, &w), &act, &fused, &apart);
        }
    }
}

/// A one-token product after an RMSNorm with x normalized and quantized ahead (`xq1=2`:
/// `norm_quantize_x`, then `matvec_norm` reading its int8 x) is the multi-token step's
/// arithmetic (`norm_quantize_x`, then `matvec_multi`): for the types whose products read
/// int8 x, a step of one token and a step of two copies of that token give the same products
/// (within SAME_TOL, as the one-token and multi-token kernels everywhere: on lavapipe bit for
/// bit, as printed), with the norm's dispatch before the product; within the decode tolerance of
/// the reference of the normalized, then quantized, x; and as close to the products that
/// quantize x * norm weight in every workgroup and scale the sums (`xq1=0`) as that
/// tolerance. The other types keep one dispatch.
#[test]
fn one_token_rmsnorm_products_with_x_normalized_ahead_equal_a_multi_token_step() {
    check_normalized_ahead("");
}

#[test]
fn tall_one_token_rmsnorm_products_with_x_normalized_ahead_equal_a_multi_token_step() {
    // 16-row workgroups (13 rows count as tall with tall=8) of 64 threads, which walk k as
    // matvec_multi's 64 do; with 128 or 256 (mvwg=) each thread sums other units, so the
    // products are the multi-token step's only within the decode tolerance.
    check_normalized_ahead("tall=8,mvwg=64");
}

/// See [`one_token_rmsnorm_products_with_x_normalized_ahead_equal_a_multi_token_step`]; on
/// GPUs made with `spec`.
fn check_normalized_ahead(spec: &str) {
    let (gpu, tuning) = gpu_with(&format!("{spec},xq1=2"));
    let (each, _) = gpu_with(&format!("{spec},xq1=0"));
    let eps = 1e-5;
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        let (weight, w) = fused_weight(&gpu, dtype, 250 + i as u64);
        let (weight_each, _) = fused_weight(&each, dtype, 250 + i as u64);
        let ty = weight.weight_type();
        let mut rng = rand::rngs::StdRng::seed_from_u64(350 + i as u64);
        let norm_w: Vec<f32> = random(&mut rng, FUSED_K)
            .iter()
            .map(|v| 1.0 + 0.5 * v)
            .collect();
        let x: Vec<f32> = random(&mut rng, FUSED_K).iter().map(|v| 3.0 * v).collect();
        let xs = vec![x.clone(), [x.clone(), x.clone()].concat()];
        let got = testing::norm_matmul_each(&gpu, &weight, &xs, &norm_w, eps, true).unwrap();
        let old =
            testing::norm_matmul_each(&each, &weight_each, &xs[..1], &norm_w, eps, true).unwrap();
        let (one, two) = (&got[0], &got[1]);
        let want = reference_k(
            &w,
            &decode_input(&tuning, ty, &rms_normed(&x, &norm_w, eps)),
            1,
            FUSED_ROWS,
            FUSED_K,
        );
        let (rel, _) = common::compare(&one.y, &want);
        let from_old: Vec<f64> = old[0].y.iter().map(|&v| v as f64).collect();
        let (rel_old, _) = common::compare(&one.y, &from_old);
        let two_first: Vec<f64> = two.y[..FUSED_ROWS].iter().map(|&v| v as f64).collect();
        let (same, _) = common::compare(&one.y, &two_first);
        let differ = one
            .y
            .iter()
            .zip(&two.y[..FUSED_ROWS])
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        println!(
            "{spec} xq1=2 {ty:?}: rel {rel:.2e}, {rel_old:.2e} from xq1=0, {differ} products differ from the 2-token step's, {} dispatches",
            one.dispatches
        );
        let tol = decode_tolerance(&tuning, ty, true);
        assert!(rel < tol, "{ty:?}: relative error {rel} above {tol}");
        assert!(rel_old < tol, "{ty:?}: {rel_old} away from xq1=0");
        if tuning.decode_quantizes_x(ty) {
            assert!(
                same < SAME_TOL,
                "{ty:?}: {same} away from the 2-token step's products ({differ} differ)"
            );
            assert_eq!(one.dispatches, 2, "{ty:?}: norm_quantize_x + matvec_norm");
        } else {
            assert_eq!(one.dispatches, 1, "{ty:?}: matvec_norm alone");
        }
    }
}

/// ‖a − b‖ / ‖b‖ over the entries both hold (the caches' unwritten entries are NaN in both,
/// checked), in f64.
fn rel_diff(label: &str, a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "{label}: lengths");
    let (mut diff, mut norm) = (0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        assert_eq!(x.is_nan(), y.is_nan(), "{label}: written entries differ");
        if !x.is_nan() {
            diff += (x as f64 - y as f64).powi(2);
            norm += (y as f64).powi(2);
        }
    }
    (diff / norm).sqrt()
}

/// The q|k|v product with RoPE and the K/V store (`matvec_norm_rope`) and the gate|up product
/// with SiLU·mul (`matvec_norm_glu`) of one token with x normalized and quantized ahead
/// (`xq1=2`, one `norm_quantize_x` dispatch before the product where the type reads int8 x)
/// against the same products quantizing x * norm weight in every workgroup (`xq1=0`): q, the
/// caches and the activation within the decode tolerance (they differ only in where the
/// norm's scale is applied around the int8 rounding).
#[test]
fn rope_and_silu_products_with_x_normalized_ahead_match_those_quantizing_in_every_workgroup() {
    let (ahead, tuning) = gpu_with("xq1=2");
    let (each, _) = gpu_with("xq1=0");
    let shape = testing::RopeShape {
        n_head: 4,
        n_kv: 2,
        head_dim: 64,
        ctx: 8,
        pos: 3,
        base: 10000.0,
    };
    let (rows, k, eps) = (512, 512, 1e-5);
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        let qt = random_qtensor(dtype, rows, k, 270 + i as u64);
        let (weight, _) = upload_with_reference(&ahead, "qkv", &qt);
        let (weight_each, _) = upload_with_reference(&each, "qkv", &qt);
        let ty = weight.weight_type();
        let mut rng = rand::rngs::StdRng::seed_from_u64(370 + i as u64);
        let norm_w: Vec<f32> = random(&mut rng, k).iter().map(|v| 1.0 + 0.5 * v).collect();
        let x: Vec<f32> = random(&mut rng, k).iter().map(|v| 3.0 * v).collect();
        let a = testing::matvec_norm_rope(&ahead, &weight, &x, &norm_w, eps, &shape).unwrap();
        let b = testing::matvec_norm_rope(&each, &weight_each, &x, &norm_w, eps, &shape).unwrap();
        let glu_a = testing::matvec_norm_glu(&ahead, &weight, &x, &norm_w, eps).unwrap();
        let glu_b = testing::matvec_norm_glu(&each, &weight_each, &x, &norm_w, eps).unwrap();
        let tol = decode_tolerance(&tuning, ty, true);
        for (what, got, want) in [
            ("q", &a.q, &b.q),
            ("k cache", &a.kcache, &b.kcache),
            ("v cache", &a.vcache, &b.vcache),
            ("silu(gate) * up", &glu_a, &glu_b),
        ] {
            let rel = rel_diff(&format!("{ty:?} {what}"), got, want);
            println!("xq1=2 {ty:?} {what}: {rel:.2e} from xq1=0");
            assert!(
                rel < tol,
                "{ty:?} {what}: {rel} away from xq1=0 (tolerance {tol})"
            );
        }
        let expected = if tuning.decode_quantizes_x(ty) { 2 } else { 1 };
        assert_eq!(
            (a.dispatches, b.dispatches),
            (expected, 1),
            "{ty:?}: norm_quantize_x + matvec_norm_rope where the type reads int8 x"
        );
    }
}

/// `y[t, r] = Σ_k W[r, k] x[t, k]` in f64 for `rows` rows of `k`.
fn reference_k(w: &[f32], x: &[f64], n_tokens: usize, rows: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0.0; n_tokens * rows];
    for t in 0..n_tokens {
        for r in 0..rows {
            y[t * rows + r] = (0..k).map(|i| w[r * k + i] as f64 * x[t * k + i]).sum();
        }
    }
    y
}
