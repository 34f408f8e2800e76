//! Several sequences in one forward pass (`LlamaModel::forward_batch`) on lavapipe: each
//! sequence's greedy tokens alone and batched with 3 others, on SmolLM2 (Q4_1) and on a
//! K-quant file (scripts/make-test-gguf.py's llama3 entry as Q4_K_M: Q4_K and Q6_K weights,
//! grouped-query heads, RoPE frequency factors); the errors of bad batches; and the load
//! error that names what to lower when the slots do not fit.

mod common;

use std::path::{Path, PathBuf};

use xpu_vulkan::{LlamaModel, LoadOptions, SeqChunk, VulkanError};

use common::PROMPTS;
const NEW_TOKENS: usize = 32;
const SLOTS: usize = 4;

/// Generated greedily: the tokens, and the logits of every step.
struct Generation {
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn load(path: &Path, max_batch: usize) -> LlamaModel {
    load_with(path, max_batch, false)
}

/// `int8`: the Q8_0, Q4_0 and K-quant decode products quantize x to int8 (the default), as
/// steps of up to 16 rows do (`matvec_multi`); steps of more rows do not, which alone moves
/// the logits by about 1 % (tests/model_int8.rs), so the tests that take such steps keep x
/// in f32 throughout.
fn load_with(path: &Path, max_batch: usize, int8: bool) -> LlamaModel {
    let mut device = common::device_options(None);
    device.tuning = device.tuning.with_dp4a(int8);
    let opts = LoadOptions {
        device,
        ctx: Some(96),
        max_batch,
        slots: SLOTS,
    };
    LlamaModel::load(path, &opts).unwrap()
}

/// Each prompt alone in slot 0: the prompt in one call, then one token per call.
fn alone(model: &mut LlamaModel, prompt: &[u32]) -> Generation {
    model.reset();
    let mut logits = vec![model.forward(prompt, 0).unwrap()];
    let mut tokens = Vec::new();
    for i in 0..NEW_TOKENS {
        tokens.push(common::argmax(logits.last().unwrap()));
        if i + 1 < NEW_TOKENS {
            let step = model.forward(&tokens[i..], prompt.len() + i).unwrap();
            logits.push(step);
        }
    }
    Generation { tokens, logits }
}

/// The prompts as one batch, as a continuous-batching server runs them: sequence i joins at
/// step i (so prompts are prefilled in the same pass as the others' decode steps), in slot
/// `SLOTS - 1 - i`, its prompt in two chunks (all but the last token, then the last).
fn batched(model: &mut LlamaModel, prompts: &[Vec<u32>]) -> Vec<Generation> {
    model.reset();
    let mut out: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            tokens: Vec::new(),
            logits: Vec::new(),
        })
        .collect();
    // Tokens of each sequence fed so far (prompt then generated).
    let mut fed = vec![0usize; prompts.len()];
    let mut step = 0;
    while out.iter().any(|g| g.tokens.len() < NEW_TOKENS) {
        let mut members = Vec::new();
        let mut inputs: Vec<Vec<u32>> = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            if step < i || out[i].tokens.len() == NEW_TOKENS {
                continue;
            }
            let tokens: Vec<u32> = if fed[i] == 0 && prompt.len() > 1 {
                prompt[..prompt.len() - 1].to_vec()
            } else if fed[i] < prompt.len() {
                prompt[fed[i]..].to_vec()
            } else {
                vec![*out[i].tokens.last().unwrap()]
            };
            members.push(i);
            inputs.push(tokens);
        }
        let chunks: Vec<SeqChunk<'_>> = members
            .iter()
            .zip(&inputs)
            .map(|(&i, tokens)| SeqChunk {
                slot: SLOTS - 1 - i,
                tokens,
                start: fed[i],
            })
            .collect();
        let logits = model.forward_batch(&chunks).unwrap();
        assert_eq!(logits.len(), chunks.len());
        for ((&i, tokens), logits) in members.iter().zip(&inputs).zip(logits) {
            fed[i] += tokens.len();
            if fed[i] >= prompts[i].len() {
                out[i].tokens.push(common::argmax(&logits));
                out[i].logits.push(logits);
            }
        }
        step += 1;
    }
    out
}

/// Compares every prompt alone and batched with 3 others; returns how many gave the same
/// tokens, and asserts that logits agree while the tokens do.
fn compare_alone_and_batched(path: &Path, max_batch: usize) -> usize {
    compare_alone_and_batched_with(path, max_batch, false)
}

/// As [`compare_alone_and_batched`], with int8 activations where `int8` (see [`load_with`]).
fn compare_alone_and_batched_with(path: &Path, max_batch: usize, int8: bool) -> usize {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let vocab = common::vocab(&content);
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| common::tokenize(&vocab, p))
        .collect();
    let mut model = load_with(path, max_batch, int8);
    let single: Vec<Generation> = prompts.iter().map(|p| alone(&mut model, p)).collect();
    // Every prompt batched with 3 others: prompts 0-3, then 4 with 0-2.
    let mut together: Vec<Option<Generation>> = (0..prompts.len()).map(|_| None).collect();
    for group in [vec![0, 1, 2, 3], vec![4, 0, 1, 2]] {
        let batch: Vec<Vec<u32>> = group.iter().map(|&i| prompts[i].clone()).collect();
        for (&i, g) in group.iter().zip(batched(&mut model, &batch)) {
            together[i].get_or_insert(g);
        }
    }
    // With int8 x the one-token steps quantize x·norm_w inside the fused RMSNorm and the
    // batched ones the normalized x: at a rounding tie one int8 value can differ by one step
    // (1/127 of its unit's largest), which moved the logits by up to 1.8e-3 of the largest
    // on lavapipe; in f32 only the summation order differs.
    let tol = if int8 { 1e-2 } else { 1e-3 };
    let mut same = 0;
    let mut largest: f32 = 0.0;
    for (i, (a, b)) in single.iter().zip(&together).enumerate() {
        let b = b.as_ref().unwrap();
        let agree = a
            .tokens
            .iter()
            .zip(&b.tokens)
            .take_while(|(x, y)| x == y)
            .count();
        // Logits of the steps whose inputs are the same tokens: before the first difference.
        let steps = (agree + 1).min(NEW_TOKENS);
        for (la, lb) in a.logits[..steps].iter().zip(&b.logits[..steps]) {
            let top = la.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = la
                .iter()
                .zip(lb)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff.is_finite(), "prompt {i}: non-finite logits");
            largest = largest.max(diff / top);
            assert!(
                diff < tol * top,
                "prompt {i}: logits alone and batched differ by {diff} (largest {top})"
            );
        }
        println!(
            "{:?}: {}",
            PROMPTS[i],
            if agree == NEW_TOKENS {
                format!("same {NEW_TOKENS} tokens alone and batched")
            } else {
                format!("differs from token {agree}")
            }
        );
        same += (agree == NEW_TOKENS) as usize;
    }
    println!(
        "{}: {same} of {} prompts gave the same tokens; largest logit difference {largest:.2e} of the largest logit",
        path.display(),
        PROMPTS.len()
    );
    same
}

#[test]
fn smollm2_batched_matches_alone() {
    // Batches of up to 16 tokens: prefill passes of the tiled product and of the one-row
    // one, split over several passes with logits from more than one.
    let same = compare_alone_and_batched(&common::model_path(), 16);
    assert!(same >= 4, "only {same} of 5 prompts");
}

/// scripts/make-test-gguf.py's llama3 entry as Q4_K_M, made once in the cache.
fn k_quant_model() -> PathBuf {
    common::test_file("llama3", "Q4_K_M")
}

#[test]
fn k_quant_batched_matches_alone() {
    let same = compare_alone_and_batched(&k_quant_model(), 64);
    assert!(same >= 4, "only {same} of 5 prompts");
}

#[test]
fn k_quant_batched_matches_alone_with_int8_activations() {
    // Every step here has at most 16 rows (prompts of at most 9 tokens, 4 sequences), so
    // alone and batched, prompts and decode steps, the Q4_K and Q6_K products quantize x
    // to int8: one-token steps in the fused kernels, the others in `matvec_multi`.
    let same = compare_alone_and_batched_with(&k_quant_model(), 16, true);
    assert!(same >= 4, "only {same} of 5 prompts");
}

/// SmolLM2 requantized to Q4_0, whose multi-token products read int8 x: a batched decode
/// step of 4 sequences with each input transformation of an int8 product fused into the
/// quantization of its x (`fuseq=1`, the default: the RMSNorms before q|k|v and gate|up in
/// `norm_quantize_x`, the SiLU·mul before down in `glu_quantize_x`) takes one dispatch fewer
/// for each than with the transformation and `quantize_x` apart (`fuseq=0`, as before), with
/// the same greedy tokens and logits (the fused kernels write the same int8 x:
/// tests/matvec_multi.rs). (Alone against batched is not compared here: on this small model
/// the one-token steps' int8 x, quantized before the norm's scale, and the batched steps',
/// quantized after it, put the logits 3 % of the largest apart on lavapipe, with or without
/// the fused kernels, whose logits are those of `fuseq=0`.)
#[test]
fn smollm2_int8_batched_steps_fuse_norms_and_silu_into_the_quantization() {
    let path = common::requantized(candle_core::quantized::GgmlDType::Q4_0);
    let result = std::panic::catch_unwind(|| {
        let fused = decode_steps(&path, "fuseq=1");
        let apart = decode_steps(&path, "fuseq=0");
        let expected = fusable_inputs(&path);
        println!(
            "a batched step of {SLOTS} sequences: {} dispatches with the inputs fused, {} without ({expected} products with int8 x after a norm or SiLU·mul)",
            fused.dispatches, apart.dispatches
        );
        assert!(
            expected >= 2 * fused.n_layer,
            "the norms' products read int8 x"
        );
        assert_eq!(apart.dispatches - fused.dispatches, expected);
        assert_eq!(fused.tokens, apart.tokens);
        for (a, b) in fused.logits.iter().zip(&apart.logits) {
            let top = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff <= 1e-5 * top,
                "logits differ by {diff} (largest {top})"
            );
        }
    });
    let _ = std::fs::remove_file(&path);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The products of the file at `path` whose input transformation a multi-token step fuses
/// into the quantization of x: per layer, q|k|v (after the attention norm), gate|up (after
/// the FFN norm) and down (after SiLU·mul), each where all its weights' products read int8 x.
fn fusable_inputs(path: &Path) -> usize {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let tuning = xpu_vulkan::KernelTuning::default();
    let int8 = |names: &[String]| {
        names.iter().all(|name| {
            let dtype = content.tensor_infos[name].ggml_dtype;
            let ty = xpu_vulkan::WeightType::from_ggml(dtype).unwrap();
            tuning.decode_quantizes_x(ty)
        })
    };
    let mut count = 0;
    for l in 0.. {
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        if !content.tensor_infos.contains_key(&p("attn_q")) {
            break;
        }
        for group in [
            &["attn_q", "attn_k", "attn_v"][..],
            &["ffn_gate", "ffn_up"],
            &["ffn_down"],
        ] {
            let names: Vec<String> = group.iter().map(|s| p(s)).collect();
            count += int8(&names) as usize;
        }
    }
    count
}

/// What [`decode_steps`] saw: the greedy tokens and logits of every sequence at every step,
/// and the dispatches of the last step.
struct Steps {
    tokens: Vec<Vec<u32>>,
    logits: Vec<Vec<f32>>,
    dispatches: usize,
    n_layer: usize,
}

/// The first [`SLOTS`] prompts prefilled together, then 8 batched decode steps of one token
/// per sequence, on a model loaded with the kernel settings `spec` (int8 x).
fn decode_steps(path: &Path, spec: &str) -> Steps {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let vocab = common::vocab(&content);
    let prompts: Vec<Vec<u32>> = PROMPTS[..SLOTS]
        .iter()
        .map(|p| common::tokenize(&vocab, p))
        .collect();
    let mut device = common::device_options(None);
    device.tuning = spec.parse().unwrap();
    let opts = LoadOptions {
        device,
        ctx: Some(96),
        max_batch: 16,
        slots: SLOTS,
    };
    let mut model = LlamaModel::load(path, &opts).unwrap();
    let mut fed: Vec<Vec<u32>> = prompts.clone();
    let mut starts = [0; SLOTS];
    let mut out = Steps {
        tokens: Vec::new(),
        logits: Vec::new(),
        dispatches: 0,
        n_layer: model.config().n_layer,
    };
    for _ in 0..9 {
        let chunks: Vec<SeqChunk<'_>> = fed
            .iter()
            .enumerate()
            .map(|(slot, tokens)| SeqChunk {
                slot,
                tokens,
                start: starts[slot],
            })
            .collect();
        let logits = model.forward_batch(&chunks).unwrap();
        out.dispatches = model.last_timing().dispatches;
        let next: Vec<u32> = logits.iter().map(|l| common::argmax(l)).collect();
        for (slot, tokens) in fed.iter_mut().enumerate() {
            starts[slot] += tokens.len();
            *tokens = vec![next[slot]];
        }
        out.tokens.push(next);
        out.logits.extend(logits);
    }
    out
}

#[test]
fn bad_batches_are_errors() {
    let mut model = load(&common::model_path(), 16);
    fn chunk(slot: usize, tokens: &[u32], start: usize) -> SeqChunk<'_> {
        SeqChunk {
            slot,
            tokens,
            start,
        }
    }
    let long = vec![1; 97];
    let expect_error = |model: &mut LlamaModel, chunks: &[SeqChunk<'_>], want: &str| match model
        .forward_batch(chunks)
    {
        Err(VulkanError::InvalidInput(msg)) => assert!(msg.contains(want), "{msg}"),
        other => panic!("expected an error containing {want:?}, got {other:?}"),
    };
    expect_error(&mut model, &[], "no sequences");
    expect_error(
        &mut model,
        &[chunk(SLOTS, &[1, 2], 0)],
        "slot 4 does not exist: the KV cache holds 4 sequences",
    );
    expect_error(
        &mut model,
        &[chunk(1, &[1, 2], 0), chunk(1, &[3], 0)],
        "slot 1 appears in more than one chunk",
    );
    expect_error(
        &mut model,
        &[chunk(2, &[], 0)],
        "no tokens to run for slot 2",
    );
    // Slot 0 holds 3 positions; slot 1 none.
    model.forward_batch(&[chunk(0, &[1, 2, 3], 0)]).unwrap();
    expect_error(
        &mut model,
        &[chunk(0, &[4], 3), chunk(1, &[4], 2)],
        "start position 2 is past the 0 tokens in the KV cache of slot 1",
    );
    expect_error(
        &mut model,
        &[chunk(3, &long, 0)],
        "97 tokens from position 0 exceed the context length of 96 (slot 3)",
    );
    expect_error(
        &mut model,
        &[chunk(0, &[4], 3), chunk(2, &[u32::MAX], 0)],
        "outside the vocabulary",
    );
    // A refused batch changed nothing: slot 0 still continues where it was.
    let batched = model
        .forward_batch(&[chunk(0, &[4], 3), chunk(1, &[1, 2, 3, 4], 0)])
        .unwrap();
    assert_eq!(batched.len(), 2);
    let close = |a: &[f32], b: &[f32]| {
        let top = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3 * top)
    };
    // Both slots now hold the same 4 tokens: the same next-token logits.
    assert!(close(&batched[0], &batched[1]));
}

/// With several slots the KV cache of every slot counts, and a context that does not fit
/// names what to lower: --ctx, --kv-cache-tokens, --parallel.
#[test]
fn the_cache_of_every_slot_must_fit_the_device_memory() {
    let path = common::model_path();
    let load = |limit: Option<u64>, ctx: Option<usize>, slots: usize| {
        let device = xpu_vulkan::DeviceOptions {
            memory_limit: limit,
            ..common::device_options(None)
        };
        LlamaModel::load(
            &path,
            &LoadOptions {
                device,
                ctx,
                max_batch: 4,
                slots,
            },
        )
    };
    let needed = |limit: u64| match load(Some(limit), Some(2000), 1) {
        Err(VulkanError::DoesNotFit { needed, .. }) => needed,
        other => panic!("expected DoesNotFit, got {:?}", other.err()),
    };
    // Room for one slot of 2000 positions (1 MiB is not even the weights: that error gives
    // the need at 256 positions, which is not enough for 2000): 4 slots get about a quarter
    // of that without --ctx.
    let one_slot_limit = needed(needed(1 << 20));
    assert_eq!(
        load(Some(one_slot_limit), Some(2000), 1)
            .unwrap()
            .context_length(),
        2000
    );
    let four = load(Some(one_slot_limit), None, 4).unwrap();
    assert_eq!(four.slots(), 4);
    assert!(
        four.context_length() <= 500 && four.context_length() >= 256,
        "{}",
        four.context_length()
    );
    drop(four);
    match load(Some(one_slot_limit), Some(2000), 4) {
        Err(e @ VulkanError::DoesNotFit { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("--ctx 2000 for each of 4 sequences")
                    && msg.contains("--kv-cache-tokens")
                    && msg.contains("--parallel"),
                "{msg}"
            );
        }
        other => panic!("expected DoesNotFit, got {:?}", other.err()),
    }
}
