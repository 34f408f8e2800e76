//! The attention kernels (`attention`, and `combine` for split positions) against causal
//! grouped-query attention computed in f64: for the head dimensions whose tiles differ
//! (32 and 64: 32 positions a tile; 80: 24, with idle threads; 128: 16; 256: 8), for
//! query heads per K/V head 1, 3, 4, 7 and 8 (a workgroup takes up to 4 query heads of one
//! K/V head: 7 and 8 take two workgroups), decode steps split into chunks (one, several, the
//! most the host allows, chunks shorter than a round, chunks past the last position, odd
//! position counts), prompt batches, and steps whose tokens belong to several sequences
//! (each attends its own slot of the caches).
//!
//! The caches are f16, as the model keeps them; the reference reads the same f16 values
//! (widened exactly), so the tolerance stays that of f32 arithmetic: relative L2 error below
//! 1e-5 (only f32 summation order and `exp` differ; measured about 1e-7).

mod common;

use half::f16;
use rand::{Rng, SeedableRng};
use xpu_vulkan::testing::{self, AttentionShape};

const REL_TOL: f64 = 1e-5;

/// out[t, h] = softmax(q[t, h] · K[slot + 0..=pos] / sqrt(hd)) · V, K/V of head
/// h / (nh / nkv), for token t at (pos, slot) = rows[t].
fn reference(
    s: &AttentionShape,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    rows: &[(usize, usize)],
) -> Vec<f64> {
    let (nh, hd, ctx) = (s.n_head, s.head_dim, s.ctx);
    let mut out = vec![0.0; q.len()];
    for (t, &(last, slot)) in rows.iter().enumerate() {
        for h in 0..nh {
            let kvh = h / (nh / s.n_kv);
            let qv = &q[(t * nh + h) * hd..][..hd];
            let row = |cache: &[f16], pos: usize| {
                cache[(kvh * ctx + slot + pos) * hd..][..hd]
                    .iter()
                    .map(|&x| x.to_f64())
                    .collect::<Vec<_>>()
            };
            let scores: Vec<f64> = (0..=last)
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

/// Random caches for `shape`, values in [-1, 1) (scores spread over a few units, so that the
/// softmax is neither flat nor one-hot with q in [-3, 3)).
fn caches(shape: &AttentionShape, rng: &mut impl Rng) -> (Vec<f16>, Vec<f16>) {
    let len = shape.n_kv * shape.ctx * shape.head_dim;
    let mut random = || -> Vec<f16> {
        (0..len)
            .map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect()
    };
    (random(), random())
}

/// Runs the kernels for tokens at `rows` (position, slot start) in chunks of `chunk_len`,
/// checks them against the reference and returns the relative L2 error.
fn check(
    gpu: &xpu_vulkan::Gpu,
    shape: &AttentionShape,
    (k, v): (&[f16], &[f16]),
    rows: &[(usize, usize)],
    chunk_len: usize,
    rng: &mut impl Rng,
) -> f64 {
    let q: Vec<f32> = (0..rows.len() * shape.n_head * shape.head_dim)
        .map(|_| rng.random_range(-3.0f32..3.0))
        .collect();
    let got = testing::attention_rows(gpu, shape, &q, k, v, rows, chunk_len).unwrap();
    let want = reference(shape, &q, k, v, rows);
    let (rel, max_abs) = common::compare(&got, &want);
    let what = format!(
        "{} heads / {} K/V heads of {}, tokens at {:?}, chunks of {chunk_len}",
        shape.n_head,
        shape.n_kv,
        shape.head_dim,
        rows.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    println!("{what}: rel {rel:.2e} max abs {max_abs:.2e}");
    assert!(rel < REL_TOL, "{what}: rel {rel:.2e}");
    rel
}

/// Tokens start..start + n of one sequence.
fn one_sequence(start: usize, n: usize) -> Vec<(usize, usize)> {
    (start..start + n).map(|pos| (pos, 0)).collect()
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
        let (k, v) = caches(&shape, &mut rng);
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
            if (start + n).div_ceil(chunk_len) > 32 {
                continue;
            }
            let rows = one_sequence(start, n);
            worst = worst.max(check(&gpu, &shape, (&k, &v), &rows, chunk_len, &mut rng));
        }
    }
    println!("worst relative L2 error {worst:.2e}");
}

#[test]
fn grouped_query_heads_match_reference() {
    let gpu = common::gpu(None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // (query heads, K/V heads, head dimension): 4, 8 and 7 query heads per K/V head (8B- and
    // 1B-class Llama files, Qwen2's 14/2), 3 (SmolLM2), 1 (no grouping).
    for (n_head, n_kv, head_dim) in [
        (32usize, 8usize, 128usize),
        (32, 8, 64),
        (32, 4, 128),
        (14, 2, 64),
        (9, 3, 64),
        (4, 4, 128),
    ] {
        let shape = AttentionShape {
            n_head,
            n_kv,
            head_dim,
            ctx: 700,
        };
        let (k, v) = caches(&shape, &mut rng);
        // A first token; odd position counts in one chunk of several rounds, in 22 chunks of
        // 32 and in chunks of a round; a prompt batch split in chunks.
        for (n, start, chunk_len) in [
            (1usize, 0usize, 64usize),
            (1, 698, 700),
            (1, 698, 32),
            (1, 300, 128),
            (1, 4, 64),
            (3, 250, 64),
        ] {
            let rows = one_sequence(start, n);
            check(&gpu, &shape, (&k, &v), &rows, chunk_len, &mut rng);
        }
    }
}

#[test]
fn tokens_of_several_sequences_attend_their_own_slots() {
    let gpu = common::gpu(None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    for (n_head, n_kv, head_dim) in [(32usize, 8usize, 128usize), (14, 2, 64)] {
        // Four slots of 300 positions.
        let shape = AttentionShape {
            n_head,
            n_kv,
            head_dim,
            ctx: 1200,
        };
        let (k, v) = caches(&shape, &mut rng);
        // A decode step of four sequences at different depths (one at its first token, one
        // full), then a step with two tokens of one sequence beside another.
        let steps: [&[(usize, usize)]; 2] = [
            &[(150, 600), (0, 0), (299, 300), (17, 900)],
            &[(40, 900), (41, 900), (5, 0)],
        ];
        for rows in steps {
            for chunk_len in [16, 64, 300] {
                check(&gpu, &shape, (&k, &v), rows, chunk_len, &mut rng);
            }
        }
    }
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
