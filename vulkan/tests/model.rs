//! End to end on SmolLM2-135M (Q4_1 weights, Q8_0 embedding): the Vulkan forward pass against
//! candle's `quantized_llama` on the CPU, greedy decoding of 32 tokens for 5 prompts, plus the
//! errors a caller can cause.
//!
//! The reference runs with `CANDLE_DEQUANTIZE_ALL=1`: candle then dequantizes every weight to
//! f32 and multiplies in f32, which is the function the GPU computes (by default candle's CPU
//! matmul also quantizes the activations to 8 bits, which moves logits by a few percent and
//! would hide kernel errors of that size). Summation order still differs, so logits differ by
//! float rounding (max abs/rel difference printed) and a near-tie could flip a greedy token;
//! the issue asks for at least 4 of 5 prompts to match.

mod common;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use xpu_vulkan::{KernelTuning, LlamaModel, LoadOptions, SeqChunk, VulkanError};

use common::PROMPTS;
const NEW_TOKENS: usize = 32;

fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    let max_abs = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let scale = b.iter().map(|x| x.abs()).fold(0.0, f32::max);
    (max_abs, max_abs / scale)
}

fn candle_logits(model: &mut ModelWeights, tokens: &[u32], start: usize) -> Vec<f32> {
    let input = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&input, start)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The model loaded with `spec` added to the tuning of the environment
/// (`XPU_VULKAN_MATVEC`), for tests that compare two settings of one kernel.
fn load_tuned(
    path: &std::path::Path,
    spec: &str,
    ctx: usize,
    max_batch: usize,
    slots: usize,
) -> LlamaModel {
    try_load_tuned(path, spec, ctx, max_batch, slots).unwrap()
}

/// As [`load_tuned`], returning the error (a tuning the adapter cannot run).
fn try_load_tuned(
    path: &std::path::Path,
    spec: &str,
    ctx: usize,
    max_batch: usize,
    slots: usize,
) -> Result<LlamaModel, VulkanError> {
    let env = std::env::var(xpu_vulkan::MATVEC_TUNING_ENV).unwrap_or_default();
    let mut device = common::device_options(None);
    device.tuning = format!("{env},{spec}").parse().unwrap();
    let opts = LoadOptions {
        device,
        ctx: Some(ctx),
        max_batch,
        slots,
    };
    LlamaModel::load(path, &opts)
}

#[test]
fn greedy_decoding_matches_candle() {
    let path = common::model_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let vocab: Vec<String> = common::vocab(&content);
    // Read by candle once per thread, when this thread builds its first QMatMul (just below).
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let mut reference = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();

    // An 8 MiB binding cap splits the 28 MiB Q8_0 embedding (also the output head) into
    // chunks, and a batch of 4 tokens splits every prompt's prefill into several submissions.
    let opts = LoadOptions {
        device: common::device_options(Some(8 << 20)),
        ctx: Some(64),
        max_batch: 4,
        slots: 1,
    };
    let mut gpu = LlamaModel::load(&path, &opts).unwrap();
    println!("adapter: {}", gpu.adapter_description());

    let mut matching = 0;
    for prompt in PROMPTS {
        let tokens = common::tokenize(&vocab, prompt);
        gpu.reset();
        reference.clear_kv_cache();
        let mut g_logits = gpu.forward(&tokens, 0).unwrap();
        let mut c_logits = candle_logits(&mut reference, &tokens, 0);
        let (abs0, rel0) = diff(&g_logits, &c_logits);
        let (mut g_out, mut c_out) = (Vec::new(), Vec::new());
        let (mut g_next, mut c_next) = (common::argmax(&g_logits), common::argmax(&c_logits));
        for i in 0..NEW_TOKENS {
            g_out.push(g_next);
            c_out.push(c_next);
            if i + 1 == NEW_TOKENS {
                break;
            }
            let pos = tokens.len() + i;
            g_logits = gpu.forward(&[g_next], pos).unwrap();
            c_logits = candle_logits(&mut reference, &[c_next], pos);
            g_next = common::argmax(&g_logits);
            c_next = common::argmax(&c_logits);
        }
        let same = g_out == c_out;
        matching += same as usize;
        let (abs1, rel1) = diff(&g_logits, &c_logits);
        println!(
            "{prompt:?}: {} | prompt logits max abs {abs0:.2e} rel {rel0:.2e} | final logits max abs {abs1:.2e} rel {rel1:.2e}",
            if same { "same 32 tokens".to_string() } else { format!("differs from token {}", g_out.iter().zip(&c_out).take_while(|(a, b)| a == b).count()) }
        );
        // The first logits come from identical inputs: they must agree to float rounding.
        assert!(
            rel0 < 1e-3,
            "{prompt:?}: prompt logits differ by {abs0} ({rel0} of the largest)"
        );
    }
    println!(
        "{matching} of {} prompts gave the same {NEW_TOKENS} greedy tokens",
        PROMPTS.len()
    );
    assert!(matching >= 4, "only {matching} of 5 prompts matched candle");

    // Errors a caller can cause, on the same model.
    let vocab_len = gpu.config().vocab as u32;
    assert!(matches!(
        gpu.forward(&[], 0),
        Err(VulkanError::InvalidInput(_))
    ));
    assert!(
        matches!(gpu.forward(&[vocab_len], 0), Err(VulkanError::InvalidInput(m)) if m.contains("outside the vocabulary"))
    );
    gpu.reset();
    assert!(
        matches!(gpu.forward(&[1], 5), Err(VulkanError::InvalidInput(m)) if m.contains("past the"))
    );
    let too_long = vec![1u32; gpu.context_length() + 1];
    assert!(
        matches!(gpu.forward(&too_long, 0), Err(VulkanError::InvalidInput(m)) if m.contains("exceed the context"))
    );
    // After errors, the model still works.
    let again = gpu
        .forward(&common::tokenize(&vocab, PROMPTS[0]), 0)
        .unwrap();
    assert!(again.iter().all(|x| x.is_finite()));
}

/// The five prompts as one batch of 33 tokens: every product of the layers runs the tiled
/// prompt kernel (batches of at least 16 tokens) on one full tile of 32 tokens and a partial
/// one holding the last token. Its logits must match those of the same tokens fed one at a
/// time (the decode kernels, f32 activations for SmolLM2's Q4_1 weights) to float rounding.
#[test]
fn long_prompt_batch_matches_token_by_token() {
    let path = common::model_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let tokens = common::tokenize(&common::vocab(&content), &PROMPTS.join(" "));
    assert!(
        tokens.len() > 32,
        "{} tokens do not fill more than one tile",
        tokens.len()
    );
    let opts = LoadOptions {
        device: common::device_options(None),
        ctx: Some(64),
        max_batch: 64,
        slots: 1,
    };
    let mut gpu = LlamaModel::load(&path, &opts).unwrap();
    let batched = gpu.forward(&tokens, 0).unwrap();
    gpu.reset();
    let mut stepped = Vec::new();
    for (pos, &token) in tokens.iter().enumerate() {
        stepped = gpu.forward(&[token], pos).unwrap();
    }
    let (abs, rel) = diff(&batched, &stepped);
    println!(
        "{} tokens in one batch against one at a time: logits max abs {abs:.2e} rel {rel:.2e}",
        tokens.len()
    );
    // Where the prompt product runs on cooperative matrices its weights and x are f16
    // (11 bits): on lavapipe's emulation of it (`prefill=coop-emulated`, the same numerics)
    // the logits were 1.06e-3 of the largest apart, against 2.1e-4 with f32 tiles.
    let tol = if gpu.gpu().uses_cooperative_prefill() {
        5e-3
    } else {
        1e-3
    };
    assert!(rel < tol, "logits differ by {abs} ({rel} of the largest)");
}

/// A prompt pass whose products all run the cooperative-matrix kernel (its emulation here,
/// `prefill=coop-emulated`, the same numerics): they share one f16 copy of x
/// (`Kernels::x16_scratch`), which `coop_x_f16` rewrites before each product, though their x
/// differ in length (576 values a token for q|k|v, attention output and gate|up, 1536 for
/// down). The logits of the five prompts as one batch must match those of the f32 tiled
/// product within the rounding of f16 operands (1.06e-3 of the largest measured before the
/// copy was shared; a product reading another's x would be off by far more).
#[test]
fn prompt_pass_on_cooperative_products_matches_the_f32_tiles() {
    let path = common::model_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let tokens = common::tokenize(&common::vocab(&content), &PROMPTS.join(" "));
    let logits = |spec: &str| -> Result<Vec<f32>, VulkanError> {
        let mut device = common::device_options(None);
        device.tuning = spec.parse().unwrap();
        let opts = LoadOptions {
            device,
            ctx: Some(64),
            max_batch: 64,
            slots: 1,
        };
        LlamaModel::load(&path, &opts)?.forward(&tokens, 0)
    };
    // Attention stays the f32 kernel on both sides (`pattn=1`): only the products differ.
    // The staging without the register prefetch, whose emulation lavapipe compiles far
    // faster (coop.rs shows the prefetch gives the same values bit for bit).
    let coop = match logits("prefill=coop-emulated,pattn=1,coopfetch=0") {
        Err(VulkanError::TuningUnsupported { detail, .. }) => {
            println!("skipped: this adapter cannot run matmul_coop's emulation ({detail})");
            return;
        }
        other => other.unwrap(),
    };
    let tiled = logits("prefill=tiled,pattn=1").unwrap();
    let (abs, rel) = diff(&coop, &tiled);
    println!("cooperative (emulated) against f32 tiles: logits max abs {abs:.2e} rel {rel:.2e}");
    assert!(rel < 5e-3, "logits differ by {abs} ({rel} of the largest)");
}

/// The prompt attention kernel with query tiles (`attention_tiled`, `pattn=1`) against the
/// decode kernel (`pattn=0`) on the real model: a first prompt chunk, then one step holding
/// the rest of that prompt beside the whole prompt of a second sequence in another slot
/// (workgroups straddle the slot boundary), then greedy decoding from both. Everything but
/// attention runs the same kernels, and both attention kernels compute in f32, so logits
/// must agree within 1e-3 of the largest and the greedy tokens must be the same. The output
/// head reads f32 x (`headq=0`): with int8 x, the head of the two-sequence step turns
/// rounding differences into quantization steps (measured: 2.5e-3 apart, both 1.8e-2 from
/// candle; with f32 x both are 4e-4 to 5e-4 from candle, the tiled kernel the closer).
#[test]
fn prompt_attention_with_query_tiles_matches_the_decode_kernel() {
    let path = common::model_path();
    let (first, second) = two_prompts(&path);
    let cut = 20;
    let load = |spec: &str| load_tuned(&path, spec, 128, 128, 2);
    let (mut tiled, mut plain) = (load("pattn=1,headq=0"), load("pattn=0,headq=0"));
    let tuning = tiled.gpu().tuning();
    assert!(
        tuning.tiled_attention_for(cut, 1)
            && tuning.tiled_attention_for(first.len() - cut + second.len(), 2),
        "the prompt steps must run the tiled attention kernel"
    );
    assert!(!plain.gpu().tuning().tiled_attention_for(cut, 1));
    compare_prompt_steps(&mut tiled, &mut plain, &first, &second, cut, 8, 1e-3);
}

/// The prompt attention on cooperative matrices (`attention_coop`, `pattn=2`; lavapipe runs
/// its emulation with the prompt products', `prefill=coop-emulated`) against the one with
/// f32 query tiles (`pattn=1`) on the real model, every other kernel the same: a first prompt
/// chunk, then one step of the rest of that prompt beside a second prompt in another slot,
/// then greedy decoding from the first. Its Q and P are f16 (11 bits): logits must agree
/// within 5e-3 of the largest (as the cooperative products against the f32 tiles) and the
/// greedy tokens must be the same (measured on lavapipe's emulation: at most 1.6e-3, in the
/// step of two sequences). The head reads f32 x (`headq=0`), as in the test above.
///
/// With `x16fuse=1`, the default, this attention writes its output as the attention output
/// product's f16 x (attention_coop_x16.wgsl), as the RMSNorms and SiLU·mul write theirs:
/// against `x16fuse=0` the same logits bit for bit through the same steps, with four
/// dispatches fewer per layer in a prompt step (its conversion and those of the three
/// products after a norm or SiLU·mul).
#[test]
fn prompt_attention_on_cooperative_matrices_matches_the_f32_tiles() {
    let path = common::model_path();
    let (first, second) = two_prompts(&path);
    let cut = 20;
    let load = |spec: &str| try_load_tuned(&path, spec, 128, 128, 2);
    let products = match load("prefill=coop,pattn=2,headq=0") {
        Ok(_) => "prefill=coop",
        Err(VulkanError::TuningUnsupported { detail, .. }) => {
            println!("the adapter has no cooperative matrices ({detail}): emulated");
            // Without the register prefetch, as above.
            "prefill=coop-emulated,coopfetch=0"
        }
        Err(e) => panic!("loading: {e}"),
    };
    let (mut coop, mut tiled) = match (
        load(&format!("{products},pattn=2,headq=0")),
        load(&format!("{products},pattn=1,headq=0")),
    ) {
        (Err(VulkanError::TuningUnsupported { detail, .. }), _) => {
            println!("skipped: this adapter cannot run the emulation either ({detail})");
            return;
        }
        (a, b) => (a.unwrap(), b.unwrap()),
    };
    assert!(coop.runs_coop_attention() && !tiled.runs_coop_attention());
    compare_prompt_steps(&mut coop, &mut tiled, &first, &second, cut, 4, 5e-3);

    // One prompt step of both prompts from position 0, in slots 0 and 1 (query tiles of
    // both sequences).
    let mut converting = load(&format!("{products},pattn=2,headq=0,x16fuse=0")).unwrap();
    let chunks = [
        SeqChunk {
            slot: 0,
            tokens: &first,
            start: 0,
        },
        SeqChunk {
            slot: 1,
            tokens: &second,
            start: 0,
        },
    ];
    let plain_logits = converting.forward_batch(&chunks).unwrap();
    let converted = converting.last_timing().dispatches;
    let fused_logits = coop.forward_batch(&chunks).unwrap();
    let written = coop.last_timing().dispatches;
    println!(
        "prompt step of {} tokens: {converted} dispatches with x16fuse=0, {written} with x16fuse=1",
        first.len() + second.len()
    );
    assert_eq!(converted, written + 4 * coop.config().n_layer);
    assert!(plain_logits == fused_logits, "x16fuse=1 changed the logits");
}

/// SiLU·mul with 4 workgroups (`silug=4`: every thread walks hundreds of elements) and with
/// one thread per element (`silug=65535`) does the same arithmetic per element: the same logits bit for bit, through
/// prompt steps of two sequences and decoding.
#[test]
fn silu_mul_gives_the_same_values_with_any_grid() {
    let path = common::model_path();
    let (first, second) = two_prompts(&path);
    let load = |spec: &str| load_tuned(&path, spec, 128, 128, 2);
    let (mut few, mut many) = (load("silug=4"), load("silug=65535"));
    assert_eq!(few.gpu().tuning().silu_groups(1 << 20), 4);
    assert_eq!(many.gpu().tuning().silu_groups(1 << 20), 16384);
    // Any difference is at least 1e-7 of the largest logit: only equal logits pass.
    compare_prompt_steps(
        &mut few,
        &mut many,
        &first,
        &second,
        20,
        4,
        f32::MIN_POSITIVE,
    );
}

/// The two prompts `compare_prompt_steps` runs, tokenized for the model at `path`: all of
/// PROMPTS, and PROMPTS after the first.
fn two_prompts(path: &std::path::Path) -> (Vec<u32>, Vec<u32>) {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let vocab = common::vocab(&content);
    (
        common::tokenize(&vocab, &PROMPTS.join(" ")),
        common::tokenize(&vocab, &PROMPTS[1..].join(" ")),
    )
}

/// The steps both prompt-attention tests above run on `a` and `b`: the first `cut` tokens of
/// `first` in slot 0, then one step holding the rest of `first` beside the whole of `second`
/// in slot 1, then `decode` greedy tokens of the first sequence. At every step the logits
/// must agree within `tolerance` of the largest and the greedy tokens must be the same.
fn compare_prompt_steps(
    a: &mut LlamaModel,
    b: &mut LlamaModel,
    first: &[u32],
    second: &[u32],
    cut: usize,
    decode: usize,
    tolerance: f32,
) {
    let check = |what: &str, x: &[f32], y: &[f32]| {
        let (abs, rel) = diff(x, y);
        println!("{what}: logits max abs {abs:.2e} rel {rel:.2e}");
        assert!(
            rel < tolerance,
            "{what}: logits differ by {abs} ({rel} of the largest)"
        );
        assert_eq!(
            common::argmax(x),
            common::argmax(y),
            "{what}: greedy tokens differ"
        );
    };
    let x = a.forward(&first[..cut], 0).unwrap();
    let y = b.forward(&first[..cut], 0).unwrap();
    check("first chunk", &x, &y);
    let chunks = [
        SeqChunk {
            slot: 0,
            tokens: &first[cut..],
            start: cut,
        },
        SeqChunk {
            slot: 1,
            tokens: second,
            start: 0,
        },
    ];
    let x = a.forward_batch(&chunks).unwrap();
    let y = b.forward_batch(&chunks).unwrap();
    check("rest of the first prompt", &x[0], &y[0]);
    check("second prompt beside it", &x[1], &y[1]);
    let mut token = common::argmax(&x[0]);
    for pos in first.len()..first.len() + decode {
        let x = a.forward(&[token], pos).unwrap();
        let y = b.forward(&[token], pos).unwrap();
        check(&format!("decoded token at {pos}"), &x, &y);
        token = common::argmax(&x);
    }
}

/// The decode attention with the query heads of a K/V head in one workgroup
/// (`attention_grouped`, `gqa=1`: SmolLM2's 9 query heads over 3 K/V heads, 3 a workgroup)
/// against `attention` (`gqa=0`) on the real model: greedy decoding of 40 tokens after a
/// prompt (several chunks of positions per token), then batched decode steps of two
/// sequences at different positions of their slots. Both kernels compute in f32 over the
/// same f16 caches, so logits must agree within 1e-3 of the largest and the greedy tokens
/// must be the same (on lavapipe they were identical: the grouped kernel does each head's
/// operations in the same order). The output head reads f32 x (`headq=0`), as in the test
/// above.
#[test]
fn decode_attention_with_grouped_heads_matches_the_plain_kernel() {
    let grouped = decode_attention_matches_the_plain_kernel("gqa=1,dattn=0,headq=0");
    assert!(grouped.grouped_attention_for(9, 3) && !grouped.vec_attention());
}

/// The decode attention with coalesced K loads (`attention_vec`, `dattn=1`), with a
/// workgroup per query head (`gqa=0`; 64 threads, and 256 with `dwg=256`: tiles of 128
/// positions for SmolLM2's head dimension 64) and per K/V head (`gqa=1`, `dwg=256`: 128
/// threads for 3 heads a workgroup), against `attention` on the same steps and with the same
/// tolerance as the grouped kernel above.
#[test]
fn decode_attention_with_coalesced_loads_matches_the_plain_kernel() {
    let per_head = decode_attention_matches_the_plain_kernel("dattn=1,headq=0");
    assert!(per_head.vec_attention() && !per_head.grouped_attention_for(9, 3));
    let per_kv_head = decode_attention_matches_the_plain_kernel("dattn=1,gqa=1,dwg=256,headq=0");
    assert!(per_kv_head.vec_attention() && per_kv_head.grouped_attention_for(9, 3));
    let wide = decode_attention_matches_the_plain_kernel("dattn=1,dwg=256,headq=0");
    assert_eq!(wide.vec_attention_threads(), 256);
}

/// Decode attention with at least 64 positions a chunk (`chunklen=64`): the prompt's steps
/// take one chunk and no combine up to 127 positions, then two and more, against the plain
/// kernel with its 32 chunks (the same tolerance as above).
#[test]
fn decode_attention_in_long_chunks_matches_the_plain_kernel() {
    let long = decode_attention_matches_the_plain_kernel("dattn=1,chunklen=64,headq=0");
    assert_eq!(long.attention_max_chunks_for(127), 1);
    assert_eq!(long.attention_max_chunks_for(128), 2);
}

/// Greedy decoding and batched decode steps of SmolLM2 with the tuning `spec` against
/// `gqa=0,dattn=0,headq=0` (`attention`), as described above; returns the tuning `spec` loaded.
fn decode_attention_matches_the_plain_kernel(spec: &str) -> KernelTuning {
    let path = common::model_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let vocab = common::vocab(&content);
    let first = common::tokenize(&vocab, &PROMPTS.join(" "));
    let second = common::tokenize(&vocab, PROMPTS[2]);
    let load = |spec: &str| load_tuned(&path, spec, 160, 64, 2);
    let (mut grouped, mut plain) = (load(spec), load("gqa=0,dattn=0,headq=0"));
    assert!(!plain.gpu().tuning().grouped_attention_for(9, 3));
    assert!(!plain.gpu().tuning().vec_attention());
    let mut worst: f32 = 0.0;
    let mut check = |what: &str, a: &[f32], b: &[f32]| {
        let (abs, rel) = diff(a, b);
        worst = worst.max(rel);
        assert!(
            rel < 1e-3,
            "{what}: logits differ by {abs} ({rel} of the largest)"
        );
        assert_eq!(
            common::argmax(a),
            common::argmax(b),
            "{what}: greedy tokens differ"
        );
    };
    let a = grouped.forward(&first, 0).unwrap();
    let b = plain.forward(&first, 0).unwrap();
    check("prompt", &a, &b);
    let mut token = common::argmax(&a);
    let mut decoded = Vec::new();
    for pos in first.len()..first.len() + 40 {
        let a = grouped.forward(&[token], pos).unwrap();
        let b = plain.forward(&[token], pos).unwrap();
        check(&format!("decoded token at {pos}"), &a, &b);
        token = common::argmax(&a);
        decoded.push(token);
    }
    println!("greedy decode: {decoded:?}");
    // A second sequence in slot 1, then steps decoding both.
    fn chunk(slot: usize, tokens: &[u32], start: usize) -> SeqChunk<'_> {
        SeqChunk {
            slot,
            tokens,
            start,
        }
    }
    let a = grouped.forward_batch(&[chunk(1, &second, 0)]).unwrap();
    let b = plain.forward_batch(&[chunk(1, &second, 0)]).unwrap();
    check("second prompt", &a[0], &b[0]);
    let mut tokens = [token, common::argmax(&a[0])];
    let mut starts = [first.len() + 40, second.len()];
    for _ in 0..8 {
        let step = [
            chunk(0, &tokens[..1], starts[0]),
            chunk(1, &tokens[1..], starts[1]),
        ];
        let a = grouped.forward_batch(&step).unwrap();
        let b = plain.forward_batch(&step).unwrap();
        for s in 0..2 {
            check(
                &format!("batched step, sequence {s} at {}", starts[s]),
                &a[s],
                &b[s],
            );
        }
        tokens = [common::argmax(&a[0]), common::argmax(&a[1])];
        starts = [starts[0] + 1, starts[1] + 1];
    }
    println!("{spec}: logits at most {worst:.2e} of the largest apart");
    *grouped.gpu().tuning()
}

/// The decode products with 256 threads per tall workgroup (`mvwg=256`) against 64 threads,
/// both with `tall=64` so that every SmolLM2 product is tall (16 rows per workgroup): the
/// q|k|v product with RoPE and the K/V store (960 rows), gate|up with SiLU·mul (3072), down
/// and attn_output with the residual add (576) and the output head (49152). Only the order
/// of the sums may differ, so greedy decoding must give the same tokens, logits within the
/// tolerance of the decode-attention comparisons above. (SmolLM2's rows have at most 48
/// units, so the threads past 64 only add zeros: on lavapipe the logits were identical. The
/// sums over more units than 64 threads are checked in tests/kernels.rs,
/// `wide_decode_workgroups_match_reference_and_64_threads`; this test checks the dispatch,
/// bindings and epilogues of the wide workgroups in a real decode step.)
#[test]
fn decode_products_with_wide_workgroups_match_64_threads() {
    let path = common::model_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let vocab = common::vocab(&content);
    let prompt = common::tokenize(&vocab, PROMPTS[1]);
    let mut wide = load_tuned(&path, "tall=64,mvwg=256", 64, 16, 1);
    let mut narrow = load_tuned(&path, "tall=64,mvwg=64", 64, 16, 1);
    let a = wide.forward(&prompt, 0).unwrap();
    let b = narrow.forward(&prompt, 0).unwrap();
    let mut token = common::argmax(&b);
    let mut worst: f32 = 0.0;
    for pos in prompt.len()..prompt.len() + 24 {
        let a = wide.forward(&[token], pos).unwrap();
        let b = narrow.forward(&[token], pos).unwrap();
        let (abs, rel) = diff(&a, &b);
        worst = worst.max(rel);
        assert!(
            rel < 1e-3,
            "decoded token at {pos}: logits differ by {abs} ({rel} of the largest)"
        );
        assert_eq!(
            common::argmax(&a),
            common::argmax(&b),
            "decoded token at {pos}: greedy tokens differ"
        );
        token = common::argmax(&b);
    }
    assert_eq!(common::argmax(&a), common::argmax(&b));
    println!("mvwg=256: logits at most {worst:.2e} of the largest from mvwg=64");
}

#[test]
fn bad_model_files_give_clear_errors() {
    let opts = LoadOptions {
        device: common::device_options(None),
        ..LoadOptions::default()
    };
    let missing = std::path::Path::new("/nonexistent/model.gguf");
    match LlamaModel::load(missing, &opts) {
        Err(VulkanError::ModelFile { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected ModelFile error, got {:?}", other.err()),
    }
    let dir = std::env::temp_dir().join(format!("xpu-vulkan-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"this is not a gguf file").unwrap();
    match LlamaModel::load(&junk, &opts) {
        Err(e @ VulkanError::ModelFile { .. }) => {
            assert!(e.to_string().contains("not a readable GGUF file"), "{e}")
        }
        other => panic!("expected ModelFile error, got {:?}", other.err()),
    }
    // A llama header whose width gives heads of no dimension.
    let empty = dir.join("zero-width.gguf");
    let metadata = [
        (
            "general.architecture",
            gguf_file::Value::String("llama".into()),
        ),
        ("llama.embedding_length", gguf_file::Value::U32(0)),
        ("llama.attention.head_count", gguf_file::Value::U32(4)),
    ];
    let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut std::fs::File::create(&empty).unwrap(), &metadata, &[]).unwrap();
    match LlamaModel::load(&empty, &opts) {
        Err(e @ VulkanError::UnsupportedModel { .. }) => {
            assert!(e.to_string().contains("head dimension 0"), "{e}")
        }
        other => panic!("expected UnsupportedModel error, got {:?}", other.err()),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A weight of a type without a Vulkan kernel (Q2_K here) is refused at load, before any
/// upload, by a message naming the tensor and its type: no slow path runs it.
#[test]
fn a_tensor_type_without_a_kernel_is_refused_by_name() {
    let path = common::model_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let mut qt = content.tensor(&mut file, name, &Device::Cpu).unwrap();
        if name == "blk.0.ffn_down.weight" {
            let w = qt.dequantize(&Device::Cpu).unwrap();
            qt = candle_core::quantized::QTensor::quantize(
                &w,
                candle_core::quantized::GgmlDType::Q2K,
            )
            .unwrap();
        }
        tensors.push((name.as_str(), qt));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensors: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(n, t)| (*n, t)).collect();
    let dir = std::env::temp_dir().join(format!("xpu-vulkan-q2k-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let q2k = dir.join("q2k.gguf");
    gguf_file::write(
        &mut std::fs::File::create(&q2k).unwrap(),
        &metadata,
        &tensors,
    )
    .unwrap();
    let loaded = LlamaModel::load(
        &q2k,
        &LoadOptions {
            device: common::device_options(None),
            ..LoadOptions::default()
        },
    );
    std::fs::remove_dir_all(&dir).unwrap();
    match loaded {
        Err(e @ VulkanError::Tensor { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("blk.0.ffn_down.weight") && msg.contains("Q2K"),
                "{msg}"
            );
        }
        other => panic!("expected a Tensor error, got {:?}", other.err()),
    }
}

/// A Llama-3-shaped file (a 131072-token context in its metadata, rope_freqs, GQA) loads
/// without a context: the model's own capped at 8192.
#[test]
fn llama3_shaped_file_loads_without_a_context() {
    let path = common::test_file("llama3", "F32");
    let opts = LoadOptions {
        device: common::device_options(None),
        ..LoadOptions::default()
    };
    let mut model = LlamaModel::load(&path, &opts).unwrap();
    assert_eq!(model.config().train_ctx, 131072);
    assert_eq!(model.context_length(), xpu_vulkan::model::DEFAULT_MAX_CTX);
    let factors = model
        .config()
        .rope_freq_factors
        .clone()
        .expect("rope_freqs.weight was read");
    assert_eq!(factors.len(), model.config().head_dim / 2);
    assert!(model
        .forward(&[1, 2, 3], 0)
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
}

/// Bytes per context position the engine keeps: f16 K and V of every layer, and the f32
/// cos/sin of every RoPE pair.
fn per_token_bytes(model_cfg: &xpu_vulkan::LlamaConfig) -> u64 {
    (2 * model_cfg.n_layer * model_cfg.n_kv_head * model_cfg.head_dim * 2 + model_cfg.head_dim * 4)
        as u64
}

/// Weights that do not fit the memory are refused before the upload; without --ctx the
/// context shrinks to what fits; a --ctx that does not fit is refused with the bytes.
#[test]
fn context_and_weights_must_fit_the_device_memory() {
    let path = common::model_path();
    let limited = |limit: u64, ctx: Option<usize>| {
        let device = xpu_vulkan::DeviceOptions {
            memory_limit: Some(limit),
            ..common::device_options(None)
        };
        LlamaModel::load(
            &path,
            &LoadOptions {
                device,
                ctx,
                max_batch: 4,
                slots: 1,
            },
        )
    };
    // 1 MiB: not even the weights.
    let (needed_min, available) = match limited(1 << 20, None) {
        Err(e @ VulkanError::DoesNotFit { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("the weights")
                    && msg.contains("bytes of device memory")
                    && msg.contains("--device cpu"),
                "{msg}"
            );
            let VulkanError::DoesNotFit {
                needed, available, ..
            } = e
            else {
                unreachable!()
            };
            (needed, available)
        }
        other => panic!("expected DoesNotFit, got {:?}", other.err()),
    };
    assert_eq!(available, 1 << 20);
    // Room for the weights and 1000 positions: the context is 768 (a multiple of 256).
    let reference = LlamaModel::load(
        &path,
        &LoadOptions {
            device: common::device_options(None),
            ctx: Some(64),
            max_batch: 4,
            slots: 1,
        },
    )
    .unwrap();
    let per_token = per_token_bytes(reference.config());
    drop(reference);
    // needed_min is the need at 256 positions.
    let limit = needed_min + (1000 - 256) * per_token;
    let model = limited(limit, None).unwrap();
    assert_eq!(model.context_length(), 768);
    drop(model);
    // An explicit --ctx beyond that is an error naming the bytes and the largest that fits.
    match limited(limit, Some(2000)) {
        Err(e @ VulkanError::DoesNotFit { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("--ctx 2000")
                    && msg.contains(&limit.to_string())
                    && msg.contains("use --ctx 1000 or less"),
                "{msg}"
            );
        }
        other => panic!("expected DoesNotFit, got {:?}", other.err()),
    }
    // One that fits is taken as given.
    assert_eq!(limited(limit, Some(1000)).unwrap().context_length(), 1000);
}
