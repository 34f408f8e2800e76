//! The multi-token matrix-vector kernel (`matvec_multi`, the products of a batched decode
//! step of 2..=16 tokens) against an f64 reference from candle's dequantized weights, for
//! every weight type, with and without int8 activations (quantized once per step by
//! `quantize_x`, or in every workgroup with `xq=0`), and against the one-token kernel run
//! once per token (`multi=0`), whose arithmetic it repeats per token.
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
