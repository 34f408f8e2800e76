//! One-token decode steps with the plain-input products' x quantized once per product
//! (`xq1=1`: `quantize_x` before attn_output and ffn_down where their type takes int8 x)
//! against the same steps quantizing x in every workgroup (`xq1=0`), end to end on real
//! models: the same int8 x and the same sums, so the same logits bit for bit and the same
//! greedy tokens, with one `quantize_x` dispatch more per such product and step.
//!
//! Files: SmolLM2 requantized to Q8_0 (its own Q4_1 has no int8 products) and
//! make-test-gguf.py's llama3 Q4_K_M file (Q4_K and Q6_K products).

mod common;

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType};
use xpu_vulkan::{KernelTuning, LlamaModel, LoadOptions, WeightType};

const PROMPT: &str = "The capital of France is";
const NEW_TOKENS: usize = 8;

/// What a greedy decode saw: the logits of every one-token step, the tokens picked, and the
/// dispatches of the last step (as run, and as `decode_dispatches` counts it).
struct Decode {
    logits: Vec<Vec<f32>>,
    tokens: Vec<u32>,
    dispatches: usize,
    counted: usize,
}

/// The prompt fed one token at a time (every step a one-token decode step), then
/// NEW_TOKENS greedy tokens, on the file at `path` with the kernel settings `spec`.
fn decode(path: &Path, prompt: &[u32], spec: &str) -> Decode {
    let mut device = common::device_options(None);
    device.tuning = spec.parse().unwrap();
    let opts = LoadOptions {
        device,
        ctx: Some(64),
        max_batch: 16,
        slots: 1,
    };
    let mut model = LlamaModel::load(path, &opts).unwrap();
    let mut out = Decode {
        logits: Vec::new(),
        tokens: Vec::new(),
        dispatches: 0,
        counted: 0,
    };
    let mut next = prompt[0];
    for pos in 0..prompt.len() + NEW_TOKENS - 1 {
        let logits = model.forward(&[next], pos).unwrap();
        out.dispatches = model.last_timing().dispatches;
        out.counted = model.decode_dispatches(pos);
        next = match prompt.get(pos + 1) {
            Some(&t) => t,
            None => {
                let t = common::argmax(&logits);
                out.tokens.push(t);
                t
            }
        };
        out.logits.push(logits);
    }
    out
}

/// The products of a one-token step whose input is plain x and whose type takes int8 x,
/// per layer attn_output and ffn_down (the SiLU·mul before ffn_down is done by the gate|up
/// product, whose rows are interleaved).
fn plain_int8_products(content: &gguf_file::Content) -> usize {
    let tuning = KernelTuning::default();
    let int8 = |name: &str| {
        let dtype = content.tensor_infos[name].ggml_dtype;
        tuning.decode_quantizes_x(WeightType::from_ggml(dtype).unwrap())
    };
    (0..)
        .map_while(|l| {
            let o = format!("blk.{l}.attn_output.weight");
            let down = format!("blk.{l}.ffn_down.weight");
            content
                .tensor_infos
                .contains_key(&o)
                .then(|| int8(&o) as usize + int8(&down) as usize)
        })
        .sum()
}

fn check(path: &Path, label: &str) {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let prompt = common::tokenize(&common::vocab(&content), PROMPT);
    let ahead = decode(path, &prompt, "xq1=1");
    let each = decode(path, &prompt, "xq1=0");
    let expected = plain_int8_products(&content);
    let differ = ahead
        .logits
        .iter()
        .zip(&each.logits)
        .flat_map(|(a, b)| a.iter().zip(b))
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    println!(
        "{label}: greedy tokens {:?} (xq1=1) {:?} (xq1=0); {differ} logits differ; {} dispatches a step with xq1=1, {} with xq1=0 ({expected} plain int8 products)",
        ahead.tokens, each.tokens, ahead.dispatches, each.dispatches
    );
    assert!(expected > 0, "{label}: the file has plain int8 products");
    assert_eq!(
        differ, 0,
        "{label}: {differ} logits of xq1=1 differ from xq1=0's"
    );
    assert_eq!(ahead.tokens, each.tokens, "{label}: greedy tokens");
    assert_eq!(
        ahead.dispatches - each.dispatches,
        expected,
        "{label}: one quantize_x per plain int8 product"
    );
    assert_eq!(
        (ahead.counted, each.counted),
        (ahead.dispatches, each.dispatches),
        "{label}: decode_dispatches counts the dispatches a step runs"
    );
}

#[test]
fn smollm2_q8_0_decode_with_x_quantized_ahead_equals_quantizing_in_every_workgroup() {
    let path = common::requantized(GgmlDType::Q8_0);
    let result = std::panic::catch_unwind(|| check(&path, "SmolLM2 Q8_0"));
    let _ = std::fs::remove_file(&path);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn k_quant_decode_with_x_quantized_ahead_equals_quantizing_in_every_workgroup() {
    check(&common::test_file("llama3", "Q4_K_M"), "llama3 Q4_K_M");
}
