//! The attention kernels (`attention`, and `combine` for split positions) against causal
//! grouped-query attention computed in f64, for the head dimensions whose tiles differ
//! (32 and 64: 32 positions a tile; 80: 24, with idle threads; 128: 16; 256: 8), decode steps
//! split into chunks (one, several, the most the host allows, chunks shorter than a tile,
//! chunks past the last position) and prompt batches.
//!
//! The caches are f16, as the model keeps them; the reference reads the same f16 values
//! (widened exactly), so the tolerance stays that of f32 arithmetic: relative L2 error below
//! 1e-5 (only f32 summation order and `exp` differ; measured about 1e-7).

mod common;

use half::f16;
use rand::{Rng, SeedableRng};
use xpu_vulkan::testing::{self, AttentionShape};

const REL_TOL: f64 = 1e-5;

/// out[t, h] = softmax(q[t, h] · K[0..=start + t] / sqrt(hd)) · V, K/V of head h / (nh / nkv).
fn reference(s: &AttentionShape, q: &[f32], k: &[f16], v: &[f16], start: usize) -> Vec<f64> {
    let (nh, hd, ctx) = (s.n_head, s.head_dim, s.ctx);
    let n = q.len() / (nh * hd);
    let mut out = vec![0.0; q.len()];
    for t in 0..n {
        for h in 0..nh {
            let kvh = h / (nh / s.n_kv);
            let qv = &q[(t * nh + h) * hd..][..hd];
            let row = |cache: &[f16], pos: usize| {
                cache[(kvh * ctx + pos) * hd..][..hd]
                    .iter()
                    .map(|&x| x.to_f64())
                    .collect::<Vec<_>>()
            };
            let scores: Vec<f64> = (0..=start + t)
                .map(|pos| {
                    row(k, pos)
                        .iter()
                        .zip(qv)
                        .map(|(a, &b)| a * b as f64)
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f64 = w.iter().sum();
            for (pos, wt) in w.iter().enumerate() {
                for (o, x) in out[(t * nh + h) * hd..][..hd].iter_mut().zip(row(v, pos)) {
                    *o += wt / sum * x;
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_reference() {
    let gpu = common::gpu(None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut worst: f64 = 0.0;
    for head_dim in [32usize, 64, 80, 128, 256] {
        let shape = AttentionShape {
            n_head: 8,
            n_kv: 2,
            head_dim,
            ctx: 700,
        };
        let cache = shape.n_kv * shape.ctx * head_dim;
        // Scores spread over a few units, so that the softmax is neither flat nor one-hot.
        let k: Vec<f16> = (0..cache)
            .map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect();
        let v: Vec<f16> = (0..cache)
            .map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect();
        // (tokens, start, chunk length): a first token; decode steps in one chunk, in chunks of
        // a tile, in 32 chunks, in chunks shorter than a tile and with the last chunks empty;
        // prompt batches in one chunk and split.
        for (n, start, chunk_len) in [
            (1usize, 0usize, 32usize),
            (1, 599, 700),
            (1, 511, 32),
            (1, 640, 21),
            (1, 100, 8),
            (1, 40, 16),
            (5, 37, 64),
            (3, 200, 80),
            (5, 78, 16),
            (17, 0, 17),
        ] {
            let chunks = (start + n).div_ceil(chunk_len);
            if chunks > 32 {
                continue;
            }
            let q: Vec<f32> = (0..n * shape.n_head * head_dim)
                .map(|_| rng.random_range(-3.0f32..3.0))
                .collect();
            let got = testing::attention(&gpu, &shape, &q, &k, &v, start, chunk_len).unwrap();
            let want = reference(&shape, &q, &k, &v, start);
            let (rel, max_abs) = common::compare(&got, &want);
            println!("hd {head_dim} tokens {n} start {start} chunks {chunks} x {chunk_len}: rel {rel:.2e} max abs {max_abs:.2e}");
            assert!(rel < REL_TOL, "hd {head_dim} tokens {n} start {start} chunks {chunks} x {chunk_len}: rel {rel:.2e}");
            worst = worst.max(rel);
        }
    }
    println!("worst relative L2 error {worst:.2e}");
}

#[test]
fn attention_rejects_bad_shapes() {
    let gpu = common::gpu(None);
    let shape = AttentionShape {
        n_head: 4,
        n_kv: 2,
        head_dim: 64,
        ctx: 64,
    };
    let cache = vec![f16::ZERO; 2 * 64 * 64];
    let q = vec![0.0f32; 4 * 64];
    for (q, start, chunk_len, what) in [
        (&q[..100], 0, 32, "q length"),
        (&q[..], 64, 32, "position past the context"),
        (&q[..], 63, 1, "more chunks than the host allows"),
        (&q[..], 0, 0, "empty chunks"),
    ] {
        let err = testing::attention(&gpu, &shape, q, &cache, &cache, start, chunk_len)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("q has") || err.contains("chunks"),
            "{what}: {err}"
        );
    }
    // A head dimension that is not a multiple of 4.
    let odd = AttentionShape {
        head_dim: 66,
        ..shape
    };
    let odd_cache = vec![f16::ZERO; 2 * 64 * 66];
    let err = testing::attention(
        &gpu,
        &odd,
        &vec![0.0; 4 * 66],
        &odd_cache,
        &odd_cache,
        0,
        32,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("a multiple of 4"), "{err}");
}
