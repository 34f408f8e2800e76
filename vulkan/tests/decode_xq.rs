//! One-token decode steps with the plain-input products' x quantized once per product
//! (`xq1=1`: `quantize_x` before attn_output and ffn_down where their type takes int8 x)
//! against the same steps quantizing x in every workgroup (`xq1=0`), end to end on real
//! models: the same int8 x and the same sums, so the same logits bit for bit and the same
//! greedy tokens, with one `quantize_x` dispatch more per such product and step. With
//! `xq1=2` the RMSNorm products of one weight (q|k|v, gate|up) read x normalized and
//! quantized ahead too (`norm_quantize_x`), which rounds the normalized x, not x * norm
//! weight before the scale, as a multi-token step does. The products move by about 2e-7
//! (tests/matvec_multi.rs), but every later quantization of x turns such a change into int8
//! steps wherever a value lies near a rounding boundary, so the int8 rounding errors of the
//! two settings drift apart over the layers: on lavapipe the logits end up 2.5 % (SmolLM2
//! Q8_0, relative L2) and 0.35 % (llama3 Q4_K_M) from `xq1=0`'s, about as far as int8
//! activations themselves put them from f32 ones (2.9 % and 0.69 %). So the test holds
//! `xq1=2` to `xq1=0`'s accuracy: its logits at most 1.5 times as far from those of f32 x
//! (`dp4a=0`) as `xq1=0`'s (a broken product is near 100 %), the same greedy tokens, and one
//! dispatch more per such product.
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

/// The products of a one-token step with RMSNorm input that are one weight of a type that
/// takes int8 x, per layer q|k|v and gate|up where their matrices share one such type (the
/// loader puts matrices of one type side by side into one weight).
fn norm_int8_products(content: &gguf_file::Content) -> usize {
    let tuning = KernelTuning::default();
    let ty = |name: &str| WeightType::from_ggml(content.tensor_infos[name].ggml_dtype).unwrap();
    let one_int8 = |names: &[String]| {
        let first = ty(&names[0]);
        tuning.decode_quantizes_x(first) && names.iter().all(|n| ty(n) == first)
    };
    (0..)
        .map_while(|l| {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            content.tensor_infos.contains_key(&p("attn_q")).then(|| {
                one_int8(&[p("attn_q"), p("attn_k"), p("attn_v")]) as usize
                    + one_int8(&[p("ffn_gate"), p("ffn_up")]) as usize
            })
        })
        .sum()
}

/// ‖a − b‖ / ‖b‖ over every step's logits.
fn relative_l2(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mut diff, mut norm) = (0.0, 0.0);
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        diff += (*x as f64 - *y as f64).powi(2);
        norm += (*y as f64).powi(2);
    }
    (diff / norm).sqrt()
}

fn check_norm_ahead(path: &Path, label: &str) {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let prompt = common::tokenize(&common::vocab(&content), PROMPT);
    let norm = decode(path, &prompt, "xq1=2");
    let plain = decode(path, &prompt, "xq1=1");
    let each = decode(path, &prompt, "xq1=0");
    let exact = decode(path, &prompt, "dp4a=0");
    let expected = norm_int8_products(&content);
    let rel = relative_l2(&norm.logits, &each.logits);
    let (err, err_each) = (
        relative_l2(&norm.logits, &exact.logits),
        relative_l2(&each.logits, &exact.logits),
    );
    println!(
        "{label}: greedy tokens {:?} (xq1=2) {:?} (xq1=0); logits {rel:.2e} from xq1=0's; from f32 x's {err:.2e} (xq1=2) and {err_each:.2e} (xq1=0); {} dispatches a step with xq1=2, {} with xq1=1 ({expected} RMSNorm int8 products of one weight)",
        norm.tokens, each.tokens, norm.dispatches, plain.dispatches
    );
    assert!(
        expected > 0,
        "{label}: the file has RMSNorm int8 products of one weight"
    );
    assert!(
        err <= 1.5 * err_each,
        "{label}: logits {err} from f32 x's, xq1=0's {err_each}"
    );
    assert_eq!(norm.tokens, each.tokens, "{label}: greedy tokens");
    assert_eq!(
        norm.dispatches - plain.dispatches,
        expected,
        "{label}: one norm_quantize_x per RMSNorm int8 product of one weight"
    );
    assert_eq!(norm.counted, norm.dispatches, "{label}: decode_dispatches");
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
    let result = std::panic::catch_unwind(|| {
        check(&path, "SmolLM2 Q8_0");
        check_norm_ahead(&path, "SmolLM2 Q8_0");
    });
    let _ = std::fs::remove_file(&path);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn k_quant_decode_with_x_quantized_ahead_equals_quantizing_in_every_workgroup() {
    let path = common::test_file("llama3", "Q4_K_M");
    check(&path, "llama3 Q4_K_M");
    check_norm_ahead(&path, "llama3 Q4_K_M");
}
