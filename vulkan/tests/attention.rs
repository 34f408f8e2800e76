//! The attention kernels (`attention`, and `combine` for split positions) against causal
//! grouped-query attention computed in f64, for the head dimensions whose tiles differ
//! (32 and 64: 32 positions a tile; 80: 24, with idle threads; 128: 16; 256: 8), decode steps
//! split into chunks (one, several, the most the host allows, chunks shorter than a tile,
//! chunks past the last position) and prompt batches; the prompt kernel with query tiles
//! (`attention_tiled`) and the decode kernel with the heads of a K/V head together
//! (`attention_grouped`) and the decode kernel with coalesced K loads (`attention_vec`) on
//! steps as the model runs them, the latter also at depths up to 4100 of the 8B shape.
//!
//! The caches are f16, as the model keeps them; the reference reads the same f16 values
//! (widened exactly), so the tolerance stays that of f32 arithmetic: relative L2 error below
//! 1e-5 (only f32 summation order and `exp` differ; measured about 1e-7).

mod common;

use half::f16;
use rand::{Rng, SeedableRng};
use xpu_vulkan::testing::{self, AttentionKernel, AttentionShape};
use xpu_vulkan::{DeviceOptions, Gpu, VulkanError};

const REL_TOL: f64 = 1e-5;
/// `attention_coop`'s f16 operands: see [`coop_attention_matches_reference`].
const COOP_REL_TOL: f64 = 2e-3;

/// Random K and V caches for `shape`, f16 values in [-1, 1): with q in [-3, 3) (`random_q`)
/// the scores spread over a few units, so that the softmax is neither flat nor one-hot.
fn random_caches(rng: &mut impl Rng, shape: &AttentionShape) -> (Vec<f16>, Vec<f16>) {
    let cache = shape.n_kv * shape.ctx * shape.head_dim;
    let mut values = || -> Vec<f16> {
        (0..cache)
            .map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect()
    };
    let k = values();
    (k, values())
}

/// `n` random q values in [-3, 3).
fn random_q(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect()
}

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
        let (k, v) = random_caches(&mut rng, &shape);
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
            let q = random_q(&mut rng, n * shape.n_head * head_dim);
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
    // More chunks than `chunks=` may ask for (129 of one position).
    let long = AttentionShape { ctx: 200, ..shape };
    let long_cache = vec![f16::ZERO; 2 * 200 * 64];
    let err = testing::attention(&gpu, &long, &q, &long_cache, &long_cache, 128, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("129 chunks"), "{err}");
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

/// Attention as a step runs it: token t at position rows[t][0] of the slot starting at cache
/// position rows[t][1], attending the positions of its slot up to its own (its last `window`
/// of them; 0: all), in f64 from the same f16 cache values.
fn reference_rows(
    s: &AttentionShape,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    rows: &[[u32; 2]],
    window: usize,
) -> Vec<f64> {
    let (nh, hd, ctx) = (s.n_head, s.head_dim, s.ctx);
    let mut out = vec![0.0; q.len()];
    for (t, &[last, slot]) in rows.iter().enumerate() {
        let (last, slot) = (last as usize, slot as usize);
        let first = if window > 0 && last + 1 > window {
            last + 1 - window
        } else {
            0
        };
        for h in 0..nh {
            let kvh = h / (nh / s.n_kv);
            let qv = &q[(t * nh + h) * hd..][..hd];
            let row = |cache: &[f16], pos: usize| -> Vec<f64> {
                cache[(kvh * ctx + slot + pos) * hd..][..hd]
                    .iter()
                    .map(|&x| x.to_f64())
                    .collect()
            };
            let scores: Vec<f64> = (first..=last)
                .map(|pos| {
                    let kr = row(k, pos);
                    kr.iter().zip(qv).map(|(a, &b)| a * b as f64).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f64 = w.iter().sum();
            for (pos, wt) in (first..=last).zip(&w) {
                for (o, x) in out[(t * nh + h) * hd..][..hd].iter_mut().zip(row(v, pos)) {
                    *o += wt / sum * x;
                }
            }
        }
    }
    out
}

/// Tokens at positions `start..start + n` of the slot starting at cache position `slot`.
fn run_of(start: u32, n: u32, slot: u32) -> Vec<[u32; 2]> {
    (start..start + n).map(|p| [p, slot]).collect()
}

/// The prompt kernel with query tiles (`attention_tiled`) and the decode kernel
/// (`attention`) on the same steps, against the f64 reference: grouped-query heads 32/8
/// (head dimension 128, the 8B shape: 16 rows a workgroup) and 9/3 (64, SmolLM2's heads:
/// 32 rows, which do not hold whole tokens), the other head dimensions' thread layouts
/// (32, 80 with dims past the head, 256 with 8-position tiles), prompts whose rows are not
/// a multiple of a workgroup's, a second prompt chunk (nonzero start), steps mixing
/// sequences of different slots (two prompt chunks and a decode token, so that workgroups
/// straddle a slot boundary), and sliding windows. Tolerance as above (f32 against f64 up
/// to summation order and `exp`): relative L2 error below 1e-5.
#[test]
fn tiled_attention_matches_reference() {
    let gpu = common::gpu(None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    // Slots of 160 positions in a cache of 3 slots.
    let slot = 160u32;
    let mixed: Vec<[u32; 2]> = [
        run_of(40, 21, 0),
        run_of(0, 27, slot),
        run_of(90, 1, 2 * slot),
    ]
    .concat();
    // (query heads, K/V heads, head dimension, what, the step's tokens, window)
    let cases = [
        (32, 8, 128, "prompt of 77", &run_of(0, 77, 0), 0),
        (9, 3, 64, "prompt of 45", &run_of(0, 45, 0), 0),
        (32, 8, 128, "second chunk at 100", &run_of(100, 37, 0), 0),
        (9, 3, 64, "second chunk at 61", &run_of(61, 40, slot), 0),
        (32, 8, 128, "two prompts and a decode token", &mixed, 0),
        (9, 3, 64, "two prompts and a decode token", &mixed, 0),
        (9, 3, 64, "window of 24", &run_of(10, 60, 0), 24),
        (32, 8, 128, "window of 20, mixed", &mixed, 20),
        (8, 2, 32, "prompt of 33", &run_of(5, 33, 0), 0),
        (8, 2, 80, "prompt of 30", &run_of(0, 30, slot), 0),
        (8, 2, 256, "window of 9", &run_of(20, 19, 0), 9),
        (4, 4, 128, "no grouping", &run_of(3, 18, 0), 0),
    ];
    let mut worst: f64 = 0.0;
    for (n_head, n_kv, head_dim, what, rows, window) in cases {
        let shape = AttentionShape {
            n_head,
            n_kv,
            head_dim,
            ctx: 3 * slot as usize,
        };
        let (k, v) = random_caches(&mut rng, &shape);
        let q = random_q(&mut rng, rows.len() * n_head * head_dim);
        let want = reference_rows(&shape, &q, &k, &v, rows, window);
        for kernel in [AttentionKernel::Tiled, AttentionKernel::Decode] {
            let got =
                testing::attention_rows(&gpu, &shape, &q, &k, &v, rows, window, kernel).unwrap();
            let (rel, max_abs) = common::compare(&got, &want);
            let case = format!("{kernel:?} {n_head}/{n_kv} hd {head_dim} {what}");
            println!("{case}: rel {rel:.2e} max abs {max_abs:.2e}");
            assert!(rel < REL_TOL, "{case}: rel {rel:.2e}");
            worst = worst.max(rel);
        }
    }
    println!("worst relative L2 error {worst:.2e}");
}

/// The device for `attention_coop` (`pattn=2`): with the prompt products on cooperative
/// matrices, else, after printing why, with their emulation (`prefill=coop-emulated`, which
/// the attention kernel follows: the same f16 operands and f32 sums in plain code), or `None`
/// where even that cannot run (no f16 or no fixed subgroup size).
fn coop_attention_gpu() -> Option<Gpu> {
    let open = |tuning: &str| {
        Gpu::new(&DeviceOptions {
            tuning: tuning.parse().unwrap(),
            ..common::device_options(None)
        })
    };
    let gpu = match open("pattn=2,prefill=coop") {
        Ok(gpu) => gpu,
        Err(e @ VulkanError::TuningUnsupported { .. }) => {
            println!("attention_coop on cooperative matrices NOT RUN on this adapter: {e}");
            // No products run here: without their register prefetch, whose emulation
            // lavapipe compiles slowly.
            match open("pattn=2,prefill=coop-emulated,coopfetch=0") {
                Ok(gpu) => gpu,
                Err(e @ VulkanError::TuningUnsupported { .. }) => {
                    println!("its emulation NOT RUN either: {e}");
                    return None;
                }
                Err(e) => panic!("opening the device: {e}"),
            }
        }
        Err(e) => panic!("opening the device: {e}"),
    };
    println!("{}: prefill {}", gpu.description(), gpu.prefill_product());
    Some(gpu)
}

/// The prompt kernel on cooperative matrices (`attention_coop`, `pattn=2`) against the f64
/// reference, on steps as the model runs them: grouped-query heads 32/8 at head dimension 128
/// (the 8B shape: 16 tokens a workgroup), 9/3 at 64 (SmolLM2's: 64 rows do not hold whole
/// tokens), no grouping (4/4), 16 dims (one matrix of Q); prompts whose rows are not a multiple
/// of a workgroup's 64 nor their positions of a 32-position tile, a second prompt chunk, a
/// step with two prompt chunks in different slots beside a decode token, and sliding windows.
/// Kept small: on lavapipe the matrix operations are emulated one thread at a time.
///
/// Tolerance: Q and P are rounded to f16 (11 bits) before their products (K and V are f16
/// already), which the reference does not do: relative L2 error below 2e-3 (measured on
/// lavapipe's emulation: 1.8e-4 to 2.6e-4).
#[test]
fn coop_attention_matches_reference() {
    let Some(gpu) = coop_attention_gpu() else {
        return;
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let slot = 96u32;
    let mixed: Vec<[u32; 2]> = [
        run_of(20, 21, 0),
        run_of(0, 27, slot),
        run_of(70, 1, 2 * slot),
    ]
    .concat();
    // (query heads, K/V heads, head dimension, what, the step's tokens, window)
    let cases = [
        (9, 3, 64, "prompt of 45", &run_of(0, 45, 0), 0),
        (9, 3, 64, "second chunk at 61", &run_of(61, 30, slot), 0),
        (9, 3, 64, "two prompts and a decode token", &mixed, 0),
        (9, 3, 64, "window of 24", &run_of(10, 50, 0), 24),
        (6, 2, 64, "window of 20, mixed", &mixed, 20),
        (4, 4, 64, "no grouping", &run_of(3, 18, 0), 0),
        (2, 1, 16, "prompt of 70", &run_of(0, 70, 0), 0),
        // Last: lavapipe takes minutes to compile the emulation at head dimension 128.
        (
            32,
            8,
            128,
            "second chunk at 40 of 19",
            &run_of(40, 19, 0),
            0,
        ),
    ];
    let mut worst: f64 = 0.0;
    for (n_head, n_kv, head_dim, what, rows, window) in cases {
        let shape = AttentionShape {
            n_head,
            n_kv,
            head_dim,
            ctx: 3 * slot as usize,
        };
        let (k, v) = random_caches(&mut rng, &shape);
        let q = random_q(&mut rng, rows.len() * n_head * head_dim);
        let want = reference_rows(&shape, &q, &k, &v, rows, window);
        let got = testing::attention_rows(
            &gpu,
            &shape,
            &q,
            &k,
            &v,
            rows,
            window,
            AttentionKernel::Coop,
        )
        .unwrap();
        let (rel, max_abs) = common::compare(&got, &want);
        let case = format!("coop {n_head}/{n_kv} hd {head_dim} {what}");
        println!("{case}: rel {rel:.2e} max abs {max_abs:.2e}");
        assert!(rel < COOP_REL_TOL, "{case}: rel {rel:.2e}");
        worst = worst.max(rel);
    }
    println!("worst relative L2 error {worst:.2e}");
}

/// Where `attention_coop` cannot run, the test entry point says so: a head dimension that is
/// not a multiple of 16 (the model then runs `attention_tiled`).
#[test]
fn coop_attention_names_what_it_cannot_run() {
    let Some(gpu) = coop_attention_gpu() else {
        return;
    };
    let shape = AttentionShape {
        n_head: 2,
        n_kv: 1,
        head_dim: 40,
        ctx: 64,
    };
    let cache = vec![f16::ZERO; 64 * 40];
    let q = vec![0.0f32; 20 * 2 * 40];
    let rows = run_of(0, 20, 0);
    let err = testing::attention_rows(
        &gpu,
        &shape,
        &q,
        &cache,
        &cache,
        &rows,
        0,
        AttentionKernel::Coop,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("multiple of 16"), "{err}");
}

#[test]
fn tiled_attention_rejects_bad_steps() {
    let gpu = common::gpu(None);
    let shape = AttentionShape {
        n_head: 4,
        n_kv: 2,
        head_dim: 64,
        ctx: 64,
    };
    let cache = vec![f16::ZERO; 2 * 64 * 64];
    let q = vec![0.0f32; 2 * 4 * 64];
    for (rows, want) in [
        (vec![[0, 0], [1, 0], [2, 0]], "q has"),
        (vec![[60, 0], [10, 54]], "past the 64 cache positions"),
    ] {
        let err = testing::attention_rows(
            &gpu,
            &shape,
            &q,
            &cache,
            &cache,
            &rows,
            0,
            AttentionKernel::Tiled,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(want), "{rows:?}: {err}");
    }
}

/// The decode kernel with the query heads of a K/V head in one workgroup
/// (`attention_grouped`), and the one with coalesced K loads (`attention_vec`, `dattn=1`)
/// with a workgroup per query head and per K/V head, against the f64 reference: grouped-query heads 32/8 (head dimension
/// 128, the 8B shape: 4 heads a workgroup) and 9/3 (64, SmolLM2's: 3), no grouping (4/4),
/// the largest group (16/2: 8), the other head dimensions' thread layouts (32; 80 with idle
/// threads and K slices longer than 8 vec4s; 256 with 8-position tiles; 20, whose 5 vec4s
/// leave `attention_vec` a sum past its groups of four); depths that are not
/// multiples of a tile, one chunk, several chunks (of a tile, of several, shorter than a tile,
/// 32 chunks, and 82 as `chunks=` allows), a first token, a sliding window (with whole chunks and
/// tiles before it; one starting at a tile's last position, so that some threads of
/// `attention_vec` see only masked positions in that tile), a batched decode step of three sequences at different positions of
/// their slots (whose shorter sequences leave chunks empty), and a few tokens of one
/// sequence. Tolerance as above: relative L2 error below 1e-5.
#[test]
fn grouped_attention_matches_reference() {
    let gpu = common::gpu(None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    // Slots of 700 positions in a cache of 3 slots.
    let slot = 700u32;
    let batched: Vec<[u32; 2]> = vec![[40, 0], [300, slot], [650, 2 * slot]];
    // (query heads, K/V heads, head dimension, what, the step's tokens, window, chunk length)
    let cases = [
        (
            32,
            8,
            128,
            "decode at 599, one chunk",
            run_of(599, 1, 0),
            0,
            700,
        ),
        (
            32,
            8,
            128,
            "decode at 599, chunks of 32",
            run_of(599, 1, 0),
            0,
            32,
        ),
        (
            32,
            8,
            128,
            "decode at 510, 32 chunks of 16",
            run_of(510, 1, slot),
            0,
            16,
        ),
        (
            32,
            8,
            128,
            "decode at 650, 82 chunks of 8 (chunks=128)",
            run_of(650, 1, 0),
            0,
            8,
        ),
        (
            32,
            8,
            128,
            "first token, chunks of 16",
            run_of(0, 1, 0),
            0,
            16,
        ),
        (
            32,
            8,
            128,
            "batched step of 3, chunks of 64",
            batched.clone(),
            0,
            64,
        ),
        (
            32,
            8,
            128,
            "window of 100, chunks of 48",
            run_of(433, 1, 0),
            100,
            48,
        ),
        (
            32,
            8,
            128,
            "window of 2 from the last position of a tile, chunks of 48",
            run_of(400, 1, 0),
            2,
            48,
        ),
        (
            9,
            3,
            64,
            "decode at 554, chunks of 32",
            run_of(554, 1, slot),
            0,
            32,
        ),
        (
            9,
            3,
            64,
            "decode at 99, chunks of 21",
            run_of(99, 1, 0),
            0,
            21,
        ),
        (
            9,
            3,
            64,
            "batched step of 3, window of 50",
            batched.clone(),
            50,
            32,
        ),
        (
            9,
            3,
            64,
            "5 tokens at 37, one chunk",
            run_of(37, 5, 0),
            0,
            700,
        ),
        (
            9,
            3,
            64,
            "5 tokens at 37, chunks of 8",
            run_of(37, 5, 0),
            0,
            8,
        ),
        (
            4,
            4,
            128,
            "no grouping, decode at 200",
            run_of(200, 1, 0),
            0,
            48,
        ),
        (
            4,
            4,
            128,
            "no grouping, batched step of 3",
            batched.clone(),
            0,
            96,
        ),
        (
            16,
            2,
            64,
            "group of 8, decode at 333",
            run_of(333, 1, slot),
            0,
            64,
        ),
        (8, 2, 32, "hd 32, decode at 140", run_of(140, 1, 0), 0, 32),
        (8, 2, 80, "hd 80, decode at 250", run_of(250, 1, 0), 0, 24),
        (8, 2, 20, "hd 20, decode at 90", run_of(90, 1, 0), 0, 32),
        (8, 2, 256, "hd 256, window of 9", run_of(60, 1, 0), 9, 8),
    ];
    let mut worst: f64 = 0.0;
    for (n_head, n_kv, head_dim, what, rows, window, chunk_len) in cases {
        let shape = AttentionShape {
            n_head,
            n_kv,
            head_dim,
            ctx: 3 * slot as usize,
        };
        let (k, v) = random_caches(&mut rng, &shape);
        let q = random_q(&mut rng, rows.len() * n_head * head_dim);
        let want = reference_rows(&shape, &q, &k, &v, &rows, window);
        // `attention_grouped`, and `attention_vec` (`dattn=1`) with a workgroup per query
        // head (`gqa=0`) and per K/V head (`gqa=1`), of 64 threads and of the most `dwg=256`
        // gives (256, or fewer so that threads x heads <= 512: tiles of other lengths than
        // the chunks').
        let group = n_head / n_kv;
        let vec = |group: usize, threads: usize| AttentionKernel::Vec {
            chunk_len,
            group,
            threads,
        };
        for kernel in [
            AttentionKernel::Grouped { chunk_len },
            vec(1, 64),
            vec(group, 64),
            vec(1, 256),
            vec(1, 512),
            vec(
                group,
                [256, 128, 64]
                    .into_iter()
                    .find(|t| t * group <= 512)
                    .unwrap(),
            ),
        ] {
            let got =
                testing::attention_rows(&gpu, &shape, &q, &k, &v, &rows, window, kernel).unwrap();
            let (rel, max_abs) = common::compare(&got, &want);
            let case = format!("{kernel:?} {n_head}/{n_kv} hd {head_dim} {what}");
            println!("{case}: rel {rel:.2e} max abs {max_abs:.2e}");
            assert!(rel < REL_TOL, "{case}: rel {rel:.2e}");
            worst = worst.max(rel);
        }
    }
    println!("worst relative L2 error {worst:.2e}");
}

/// `attention_vec` (`dattn=1`) and the default `attention` on the 8B shape (32 query heads
/// over 8 K/V heads, head dimension 128) at the depths of issue 19, split as a decode step
/// splits them (`attention_split`: 1024 workgroups aimed for, at most 32 chunks, chunks a
/// multiple of the 16-position tile): a first token (one chunk), 17 positions (two chunks of
/// 16, the second of one position), 500 (32 chunks of 16), 4100 (29 of 144, the last one
/// short); with a workgroup per query head and per K/V head (whose chunks are those of
/// 256 workgroups aimed for per query head: 4 times fewer heads, the same cap). Against
/// the f64 reference, relative L2 error below 1e-5.
#[test]
fn vec_attention_matches_reference_at_depth() {
    let gpu = common::gpu(None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(29);
    let shape = AttentionShape {
        n_head: 32,
        n_kv: 8,
        head_dim: 128,
        ctx: 4100,
    };
    let (k, v) = random_caches(&mut rng, &shape);
    // `attention_split` for one token: len / min(32, 1024 / heads) rounded up to the tile.
    let chunk_len =
        |len: usize, heads: usize| len.div_ceil((1024 / heads).min(32)).div_ceil(16) * 16;
    let mut worst: f64 = 0.0;
    for len in [1usize, 17, 500, 4100] {
        let rows = [[len as u32 - 1, 0]];
        let q = random_q(&mut rng, shape.n_head * shape.head_dim);
        let want = reference_rows(&shape, &q, &k, &v, &rows, 0);
        let per_head = chunk_len(len, 32);
        let per_kv_head = chunk_len(len, 8);
        // With 256 threads a workgroup per query head, tiles of 64 positions; with 128 (the
        // most for 4 heads a workgroup), of 32; chunks rounded up to those tiles as the host
        // rounds them.
        let wide = |len: usize, tile: usize| len.div_ceil(32).div_ceil(tile) * tile;
        for kernel in [
            AttentionKernel::Vec {
                chunk_len: per_head,
                group: 1,
                threads: 64,
            },
            AttentionKernel::Vec {
                chunk_len: per_kv_head,
                group: 4,
                threads: 64,
            },
            AttentionKernel::Vec {
                chunk_len: wide(len, 64),
                group: 1,
                threads: 256,
            },
            AttentionKernel::Vec {
                chunk_len: wide(len, 32),
                group: 4,
                threads: 128,
            },
            AttentionKernel::Grouped {
                chunk_len: per_kv_head,
            },
            // 512 threads (`dwg=512`, tiles of 128 positions) with the whole sequence in
            // one chunk (`chunklen=` at least the length): no `combine`.
            AttentionKernel::Vec {
                chunk_len: len.div_ceil(128) * 128,
                group: 1,
                threads: 512,
            },
        ] {
            let got = testing::attention_rows(&gpu, &shape, &q, &k, &v, &rows, 0, kernel).unwrap();
            let (rel, max_abs) = common::compare(&got, &want);
            let case = format!("{kernel:?} depth {len}");
            println!("{case}: rel {rel:.2e} max abs {max_abs:.2e}");
            assert!(rel < REL_TOL, "{case}: rel {rel:.2e}");
            worst = worst.max(rel);
        }
        // The default kernel with the same split, through `attention` and `combine`.
        let got = testing::attention(&gpu, &shape, &q, &k, &v, len - 1, per_head).unwrap();
        let (rel, _) = common::compare(&got, &want);
        println!("attention depth {len}: rel {rel:.2e}");
        assert!(rel < REL_TOL, "attention depth {len}: rel {rel:.2e}");
    }
    println!("worst relative L2 error {worst:.2e}");
}

#[test]
fn grouped_attention_rejects_groups_past_the_most_and_too_many_chunks() {
    let gpu = common::gpu(None);
    let cache = vec![f16::ZERO; 200 * 64];
    let shape = AttentionShape {
        n_head: 16,
        n_kv: 1,
        head_dim: 64,
        ctx: 200,
    };
    let q = vec![0.0f32; 16 * 64];
    let grouped = |chunk_len| AttentionKernel::Grouped { chunk_len };
    let err = testing::attention_rows(&gpu, &shape, &q, &cache, &cache, &[[10, 0]], 0, grouped(8))
        .unwrap_err()
        .to_string();
    assert!(err.contains("gqa=0"), "{err}");
    let shape = AttentionShape { n_head: 8, ..shape };
    let err = testing::attention_rows(
        &gpu,
        &shape,
        &q[..8 * 64],
        &cache,
        &cache,
        &[[150, 0]],
        0,
        grouped(1),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("151 chunks"), "{err}");
}
