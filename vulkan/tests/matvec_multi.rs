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

use common::{decode_input, decode_tolerance, random, ALL_TYPES};

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use xpu_vulkan::{testing, Gpu, GpuWeight, KernelTuning, WeightType};

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
        let mut rng = rand::rngs::StdRng::seed_from_u64(70 + i as u64);
        let t = Tensor::from_vec(random(&mut rng, ROWS * K), (ROWS, K), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&t, dtype).unwrap();
        let ty = WeightType::from_ggml(dtype).unwrap();
        let data = qt.data().unwrap();
        let weight = GpuWeight::upload(&gpu, "multi", ty, ROWS, K, &data).unwrap();
        let weight_one = GpuWeight::upload(&per_token, "one", ty, ROWS, K, &data).unwrap();
        let w: Vec<f32> = qt
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
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

/// A multi-token step's RMSNorm fused into the quantization of x (`norm_quantize_x`, one
/// dispatch instead of `rmsnorm` then `quantize_x`): for the types whose products read int8
/// x, the same int8 x bit for bit (it repeats rmsnorm.wgsl's sums in the same order) and so
/// the same products, with one dispatch less; for the others the unfused path, unchanged.
/// Rows of 2304 values: 72 units, more than the 64 threads of the workgroup that normalizes a
/// token, and whole K-quant blocks.
/// The token counts of multi-token steps (one token runs the one-token fused kernel).
const STEP_TOKENS: [usize; 5] = [2, 3, 8, 11, 16];

#[test]
fn rmsnorm_fused_into_quantize_x_matches_rmsnorm_then_quantize_x() {
    const K: usize = 2304;
    const ROWS: usize = 13;
    let (gpu, tuning) = gpu_with("");
    let eps = 1e-5;
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(90 + i as u64);
        let t = Tensor::from_vec(random(&mut rng, ROWS * K), (ROWS, K), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&t, dtype).unwrap();
        let ty = WeightType::from_ggml(dtype).unwrap();
        let weight = GpuWeight::upload(&gpu, "normed", ty, ROWS, K, &qt.data().unwrap()).unwrap();
        let w: Vec<f32> = qt
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Norm weights around 1 and hidden states of a few sizes, as a model's.
        let norm_w: Vec<f32> = random(&mut rng, K).iter().map(|v| 1.0 + 0.5 * v).collect();
        let xs: Vec<Vec<f32>> = STEP_TOKENS
            .iter()
            .map(|&n| {
                random(&mut rng, n * K)
                    .iter()
                    .enumerate()
                    .map(|(j, v)| v * (1 + j / K) as f32)
                    .collect()
            })
            .collect();
        let fused = testing::norm_matmul_each(&gpu, &weight, &xs, &norm_w, eps, true).unwrap();
        let apart = testing::norm_matmul_each(&gpu, &weight, &xs, &norm_w, eps, false).unwrap();
        let int8 = tuning.decode_quantizes_x(ty);
        for ((n, x), (f, a)) in STEP_TOKENS.into_iter().zip(&xs).zip(fused.iter().zip(&apart)) {
            let normed: Vec<f32> = x
                .chunks(K)
                .flat_map(|row| rms_normed(row, &norm_w, eps))
                .collect();
            let want = reference_k(&w, &decode_input(&tuning, ty, &normed), n, ROWS, K);
            let (rel, _) = common::compare(&f.y, &want);
            println!(
                "{ty:?} tokens={n}: rel {rel:.2e}, {} dispatches fused, {} apart",
                f.dispatches, a.dispatches
            );
            let tol = decode_tolerance(&tuning, ty, true);
            assert!(rel < tol, "{ty:?} tokens={n}: relative error {rel} above {tol}");
            if int8 {
                let (fq, aq) = (f.xq.as_ref().unwrap(), a.xq.as_ref().unwrap());
                assert_eq!(fq.len(), n * K / 32 * 12);
                let differ = fq.iter().zip(aq).filter(|(p, q)| p != q).count();
                assert_eq!(differ, 0, "{ty:?} tokens={n}: {differ} words of xq differ");
                assert_eq!(
                    (f.dispatches, a.dispatches),
                    (2, 3),
                    "{ty:?} tokens={n}: norm_quantize_x + matvec_multi against rmsnorm + quantize_x + matvec_multi"
                );
            } else {
                // f32 x: rmsnorm, then the product, either way.
                assert!(f.xq.is_none() && a.xq.is_none(), "{ty:?}: no int8 x");
                assert_eq!((f.dispatches, a.dispatches), (2, 2), "{ty:?} tokens={n}");
            }
            let same = f.y.iter().zip(&a.y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{ty:?} tokens={n}: products differ");
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
