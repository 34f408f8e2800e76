//! The greedy token picked on the GPU (`argmax_rows`, `Readback::Greedy`) against the host's
//! rule (runner/src/sampling.rs `argmax`: the largest logit, the lowest index of equals, NaN
//! never, 0 when nothing is above -inf): on crafted rows (ties, -inf, NaN, infinities), and
//! on SmolLM2's logits for every row of batched steps of 4 sequences, of prompt batches
//! spread over several passes and of one-token steps, where the same step is run once for
//! the tokens and once for the full rows.

mod common;

use std::path::Path;

use rand::{Rng, SeedableRng};
use xpu_vulkan::{testing, ChunkOutput, LlamaModel, LoadOptions, Readback, SeqChunk};

use common::PROMPTS;

/// The runner's host rule, written out again (runner/src/sampling.rs `argmax`).
fn host_argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_value {
            best = i;
            best_value = l;
        }
    }
    best as u32
}

/// Checks the kernel on `rows` (all of one length) against the host rule, row by row.
fn check_rows(rows: &[Vec<f32>], what: &str) {
    let gpu = common::gpu(None);
    let flat: Vec<f32> = rows.concat();
    let picked = testing::argmax_rows(&gpu, &flat, rows.len()).unwrap();
    let want: Vec<u32> = rows.iter().map(|r| host_argmax(r)).collect();
    assert_eq!(picked, want, "{what}");
}

#[test]
fn ties_go_to_the_lowest_index_and_nan_or_minus_infinity_never_win() {
    let n = 1000; // not a multiple of the workgroup's 256 threads
    let row = |f: &dyn Fn(usize) -> f32| (0..n).map(f).collect::<Vec<f32>>();
    let rows = vec![
        // The largest value at several indices: in one thread's share (5, 261, 517) and in
        // other threads' (6, 999).
        row(&|i| {
            if [5, 6, 261, 517, 999].contains(&i) {
                3.0
            } else {
                (i % 7) as f32 * 0.1
            }
        }),
        // A tie held by threads in the reverse order of their indices.
        row(&|i| {
            if [900, 700, 300].contains(&i) {
                1.5
            } else {
                -1.0
            }
        }),
        // Every value equal: index 0.
        row(&|_| 0.25),
        // All -inf: 0, as on the host.
        row(&|_| f32::NEG_INFINITY),
        // All NaN: 0.
        row(&|_| f32::NAN),
        // NaN first and larger-looking NaN payloads everywhere but one finite value.
        row(&|i| if i == 640 { -7.0 } else { f32::NAN }),
        // -inf and NaN around one finite value below every other finite one would be.
        row(&|i| match i % 3 {
            0 => f32::NAN,
            1 => f32::NEG_INFINITY,
            _ if i == 998 => -1e30,
            _ => f32::NEG_INFINITY,
        }),
        // +inf beats everything, the first of several.
        row(&|i| {
            if i == 12 || i == 11 + 256 {
                f32::INFINITY
            } else {
                1e30
            }
        }),
        // The largest value last.
        row(&|i| if i == n - 1 { 2.0 } else { 1.0 }),
        // -0.0 and 0.0 compare equal: the first of them.
        row(&|i| match i {
            40 => -0.0,
            41 => 0.0,
            _ => -1.0,
        }),
    ];
    check_rows(&rows, "crafted rows of 1000");
    // Rows long enough that each thread takes eight values per step (eight times the
    // workgroup's 256 threads, then a remainder): ties within one thread's step (5, 261),
    // across its steps (2053 = 5 + 8 x 256) and in its remainder (4101), in other threads'
    // (4999); NaN and -inf around the largest value in a step; the largest in the remainder.
    let n = 5000;
    let row = |f: &dyn Fn(usize) -> f32| (0..n).map(f).collect::<Vec<f32>>();
    check_rows(
        &[
            row(&|i| {
                if [5, 261, 2053, 4101, 4999].contains(&i) {
                    3.0
                } else {
                    (i % 5) as f32 * 0.1
                }
            }),
            row(&|i| {
                if [4999, 4101, 2053].contains(&i) {
                    3.0
                } else {
                    1.0
                }
            }),
            row(&|i| match i {
                1795 => 8.0,
                _ if i % 2 == 0 => f32::NAN,
                _ => f32::NEG_INFINITY,
            }),
            row(&|i| if i == 4360 { 2.0 } else { -(i as f32) }),
        ],
        "crafted rows of 5000",
    );
    // Rows shorter than the workgroup: most threads have nothing to look at.
    check_rows(
        &[
            vec![1.0, 3.0, 3.0],
            vec![f32::NAN, f32::NAN, 2.0],
            vec![f32::NEG_INFINITY; 3],
        ],
        "rows of 3",
    );
    check_rows(&[vec![f32::NAN]], "one NaN");
}

#[test]
fn random_rows_of_a_vocabulary_with_planted_ties_match_the_host() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let n = 49152;
    let rows: Vec<Vec<f32>> = (0..6)
        .map(|r| {
            // Coarse values so that ties are common, plus a planted tie for the maximum.
            let mut row: Vec<f32> = (0..n)
                .map(|_| (rng.random_range(0..64) as f32) * 0.5)
                .collect();
            let a = rng.random_range(0..n);
            let b = rng.random_range(0..n);
            row[a] = 100.0 + r as f32;
            row[b] = 100.0 + r as f32;
            row
        })
        .collect();
    check_rows(&rows, "random rows of 49152");
}

#[test]
fn bad_input_is_refused() {
    let gpu = common::gpu(None);
    for (values, rows) in [(vec![1.0; 10], 3), (vec![1.0; 10], 0), (vec![], 1)] {
        let err = testing::argmax_rows(&gpu, &values, rows).unwrap_err();
        assert!(err.to_string().contains("rows"), "{err}");
    }
}

const SLOTS: usize = 4;

fn load(path: &Path, max_batch: usize) -> LlamaModel {
    let opts = LoadOptions {
        device: common::device_options(None),
        ctx: Some(96),
        max_batch,
        slots: SLOTS,
    };
    LlamaModel::load(path, &opts).unwrap()
}

fn prompts(path: &Path) -> Vec<Vec<u32>> {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let vocab = common::vocab(&content);
    PROMPTS[..SLOTS]
        .iter()
        .map(|p| common::tokenize(&vocab, p))
        .collect()
}

fn tokens(outputs: Vec<ChunkOutput>) -> Vec<u32> {
    outputs
        .into_iter()
        .map(|o| match o {
            ChunkOutput::Token(t) => t,
            ChunkOutput::Logits(_) => panic!("asked for a token, got logits"),
        })
        .collect()
}

fn rows(outputs: Vec<ChunkOutput>) -> Vec<Vec<f32>> {
    outputs
        .into_iter()
        .map(|o| match o {
            ChunkOutput::Logits(row) => row,
            ChunkOutput::Token(_) => panic!("asked for logits, got a token"),
        })
        .collect()
}

/// Runs `chunks` three times (the positions they write are the same each time): for the
/// greedy tokens only, for the full rows, and for both alternately; checks that every
/// token is the host's argmax of its row and that the rows read in the mixed run are the
/// full run's. Returns the tokens.
fn check_step(model: &mut LlamaModel, chunks: &[SeqChunk<'_>], what: &str) -> Vec<u32> {
    let n = chunks.len();
    let picked = tokens(
        model
            .forward_batch_read(chunks, &vec![Readback::Greedy; n])
            .unwrap(),
    );
    let full = rows(
        model
            .forward_batch_read(chunks, &vec![Readback::Logits; n])
            .unwrap(),
    );
    let host: Vec<u32> = full.iter().map(|r| host_argmax(r)).collect();
    assert_eq!(picked, host, "{what}: GPU picks against the host's argmax");
    let mixed: Vec<Readback> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                Readback::Logits
            } else {
                Readback::Greedy
            }
        })
        .collect();
    for (i, out) in model
        .forward_batch_read(chunks, &mixed)
        .unwrap()
        .into_iter()
        .enumerate()
    {
        match out {
            ChunkOutput::Logits(row) => {
                assert_eq!(mixed[i], Readback::Logits, "{what}: chunk {i}");
                assert_eq!(
                    row, full[i],
                    "{what}: chunk {i}'s row, read with others picked"
                );
            }
            ChunkOutput::Token(t) => {
                assert_eq!(mixed[i], Readback::Greedy, "{what}: chunk {i}");
                assert_eq!(
                    t, host[i],
                    "{what}: chunk {i}'s token, read with others in full"
                );
            }
        }
    }
    picked
}

#[test]
fn gpu_picks_equal_the_host_argmax_of_every_row_of_batched_and_one_token_steps() {
    let path = common::model_path();
    let prompts = prompts(&path);
    // 8 tokens a pass: the prompts (5 to 9 tokens each) take several passes, whose rows are
    // picked pass by pass.
    let mut model = load(&path, 8);
    let prompt_chunks: Vec<SeqChunk<'_>> = prompts
        .iter()
        .enumerate()
        .map(|(slot, p)| SeqChunk {
            slot,
            tokens: p,
            start: 0,
        })
        .collect();
    let mut last = check_step(&mut model, &prompt_chunks, "prompts over several passes");
    let mut fed: Vec<usize> = prompts.iter().map(Vec::len).collect();
    // Batched decode steps of the 4 sequences, one token each.
    for step in 0..4 {
        let inputs: Vec<[u32; 1]> = last.iter().map(|&t| [t]).collect();
        let chunks: Vec<SeqChunk<'_>> = inputs
            .iter()
            .enumerate()
            .map(|(slot, t)| SeqChunk {
                slot,
                tokens: t,
                start: fed[slot],
            })
            .collect();
        last = check_step(&mut model, &chunks, &format!("batched decode step {step}"));
        fed.iter_mut().for_each(|f| *f += 1);
    }
    // One-token steps of the sequence in slot 2 alone (the fused output product).
    let mut token = last[2];
    for step in 0..3 {
        let input = [token];
        let chunk = [SeqChunk {
            slot: 2,
            tokens: &input,
            start: fed[2],
        }];
        token = check_step(&mut model, &chunk, &format!("one-token step {step}"))[0];
        fed[2] += 1;
    }
}

/// Greedy generation with the tokens picked on the GPU, step after step (so that each step
/// runs the pass recorded ahead by the one before), gives the tokens the host picks from
/// the full rows.
#[test]
fn greedy_generation_picked_on_the_gpu_equals_the_host_picks() {
    let path = common::model_path();
    let prompts = prompts(&path);
    let mut model = load(&path, 64);
    let generate = |model: &mut LlamaModel, want: Readback| -> Vec<Vec<u32>> {
        model.reset();
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); SLOTS];
        let mut inputs: Vec<Vec<u32>> = prompts.clone();
        let mut starts = [0; SLOTS];
        for _ in 0..12 {
            let chunks: Vec<SeqChunk<'_>> = inputs
                .iter()
                .enumerate()
                .map(|(slot, t)| SeqChunk {
                    slot,
                    tokens: t,
                    start: starts[slot],
                })
                .collect();
            let outputs = model.forward_batch_read(&chunks, &[want; SLOTS]).unwrap();
            for (slot, o) in outputs.into_iter().enumerate() {
                let t = match o {
                    ChunkOutput::Token(t) => t,
                    ChunkOutput::Logits(row) => host_argmax(&row),
                };
                starts[slot] += inputs[slot].len();
                inputs[slot] = vec![t];
                out[slot].push(t);
            }
        }
        out
    };
    let host = generate(&mut model, Readback::Logits);
    let gpu = generate(&mut model, Readback::Greedy);
    assert_eq!(gpu, host);
}

#[test]
fn a_readback_choice_per_chunk_is_required() {
    let path = common::model_path();
    let mut model = load(&path, 64);
    let chunk = [SeqChunk {
        slot: 0,
        tokens: &[1, 2],
        start: 0,
    }];
    let err = model
        .forward_batch_read(&chunk, &[Readback::Greedy, Readback::Logits])
        .unwrap_err();
    assert!(err.to_string().contains("one per chunk"), "{err}");
}
