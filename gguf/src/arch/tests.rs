use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;

use super::*;

/// A header of architecture `arch` with `keys` (without the `arch.` prefix) and
/// `tensors` by name and shape (candle's order).
fn header(arch: &str, keys: &[(&str, Value)], tensors: &[(String, Vec<usize>)]) -> Content {
    let mut metadata = HashMap::new();
    metadata.insert(
        "general.architecture".to_string(),
        Value::String(arch.to_string()),
    );
    for (k, v) in keys {
        metadata.insert(format!("{arch}.{k}"), v.clone());
    }
    let tensor_infos = tensors
        .iter()
        .map(|(name, shape)| {
            let info = TensorInfo {
                ggml_dtype: GgmlDType::F32,
                shape: shape.clone().into(),
                offset: 0,
            };
            (name.clone(), info)
        })
        .collect();
    Content {
        magic: VersionedMagic::GgufV3,
        metadata,
        tensor_infos,
        tensor_data_offset: 0,
    }
}

/// The keys of a small model: 8 wide, 2 heads of 4 (1 KV head), 16 hidden, `layers`.
fn keys(layers: u32) -> Vec<(&'static str, Value)> {
    vec![
        ("embedding_length", Value::U32(8)),
        ("attention.head_count", Value::U32(2)),
        ("attention.head_count_kv", Value::U32(1)),
        ("block_count", Value::U32(layers)),
        ("feed_forward_length", Value::U32(16)),
        ("context_length", Value::U32(64)),
        ("attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
    ]
}

/// The tensors of a small llama-shaped model (untied, separate q/k/v and gate/up).
fn llama_tensors(layers: usize) -> Vec<(String, Vec<usize>)> {
    let mut t = vec![
        ("token_embd.weight".to_string(), vec![10, 8]),
        ("output_norm.weight".to_string(), vec![8]),
        ("output.weight".to_string(), vec![10, 8]),
    ];
    for i in 0..layers {
        for (name, shape) in [
            ("attn_norm.weight", vec![8]),
            ("attn_q.weight", vec![8, 8]),
            ("attn_k.weight", vec![4, 8]),
            ("attn_v.weight", vec![4, 8]),
            ("attn_output.weight", vec![8, 8]),
            ("ffn_norm.weight", vec![8]),
            ("ffn_gate.weight", vec![16, 8]),
            ("ffn_up.weight", vec![16, 8]),
            ("ffn_down.weight", vec![8, 16]),
        ] {
            t.push((format!("blk.{i}.{name}"), shape));
        }
    }
    t
}

fn with(
    mut tensors: Vec<(String, Vec<usize>)>,
    extra: &[(&str, Vec<usize>)],
) -> Vec<(String, Vec<usize>)> {
    tensors.extend(extra.iter().map(|(n, s)| (n.to_string(), s.clone())));
    tensors
}

fn without(tensors: Vec<(String, Vec<usize>)>, gone: &[&str]) -> Vec<(String, Vec<usize>)> {
    tensors
        .into_iter()
        .filter(|(n, _)| !gone.iter().any(|g| n == g || n.ends_with(&format!(".{g}"))))
        .collect()
}

#[test]
fn a_llama_file_is_described() {
    let content = header("llama", &keys(2), &llama_tensors(2));
    let desc = ModelDesc::read(&content).unwrap();
    let hp = &desc.hparams;
    assert_eq!(
        (hp.n_embd, hp.n_head, hp.n_kv_head, hp.head_dim),
        (8, 2, 1, 4)
    );
    assert_eq!(
        (hp.n_layer, hp.n_ff, hp.vocab, hp.context_length),
        (2, 16, 10, 64)
    );
    assert_eq!(
        hp.rope,
        Rope {
            dim: 4,
            base: 10000.0,
            freq_scale: 1.0,
            attn_factor: 1.0,
            style: RopeStyle::Normal,
            original_context: 64
        }
    );
    assert_eq!(hp.query_scale, 0.5);
    assert_eq!(
        (hp.tied_output, hp.embedding_scale, hp.sliding_window),
        (false, None, None)
    );
    assert_eq!(desc.tensors().len(), 3 + 2 * 9);
    assert!(desc.rope_factors.is_none());
    let b = &desc.blocks[1];
    assert!(
        matches!(&b.qkv, QkvWeights::Separate { k, .. } if k.weight.name == "blk.1.attn_k.weight" && k.weight.shape == [4, 8] && k.bias.is_none())
    );
    assert!(matches!(b.ffn, FeedForward::Gated { .. }));
    assert_eq!((b.q_norm.as_ref(), b.post_ffw_norm.as_ref()), (None, None));
}

#[test]
fn tied_output_and_rope_freqs() {
    let tensors = with(
        without(llama_tensors(1), &["output.weight"]),
        &[("rope_freqs.weight", vec![2])],
    );
    let desc = ModelDesc::read(&header("llama", &keys(1), &tensors)).unwrap();
    assert!(desc.hparams.tied_output);
    assert_eq!(desc.output.weight.name, "token_embd.weight");
    assert_eq!(desc.rope_factors_for(64).unwrap().name, "rope_freqs.weight");
    // Rope factors of the wrong length are named.
    let tensors = with(llama_tensors(1), &[("rope_freqs.weight", vec![4])]);
    assert_eq!(
        ModelDesc::read(&header("llama", &keys(1), &tensors))
            .unwrap_err()
            .to_string(),
        "tensor `rope_freqs.weight` has shape [4], expected [2]"
    );
}

#[test]
fn qwen2_reads_its_biases() {
    let tensors = with(
        llama_tensors(1),
        &[
            ("blk.0.attn_q.bias", vec![8]),
            ("blk.0.attn_k.bias", vec![4]),
            ("blk.0.attn_v.bias", vec![4]),
        ],
    );
    let desc = ModelDesc::read(&header("qwen2", &keys(1), &tensors)).unwrap();
    assert_eq!(desc.hparams.rope.style, RopeStyle::Neox);
    let QkvWeights::Separate { q, k, v } = &desc.blocks[0].qkv else {
        panic!()
    };
    assert_eq!(q.bias.as_ref().unwrap().shape, [8]);
    assert_eq!(k.bias.as_ref().unwrap().role, Role::AttnKBias);
    assert_eq!(v.bias.as_ref().unwrap().name, "blk.0.attn_v.bias");
    let tensors = with(llama_tensors(1), &[("blk.0.attn_k.bias", vec![8])]);
    assert_eq!(
        ModelDesc::read(&header("qwen2", &keys(1), &tensors))
            .unwrap_err()
            .to_string(),
        "tensor `blk.0.attn_k.bias` has shape [8], expected [4]"
    );
}

#[test]
fn qwen3_heads_can_be_wider_than_the_embedding_split() {
    let mut k = keys(1);
    k.push(("attention.key_length", Value::U32(6)));
    k.push(("attention.value_length", Value::U32(6)));
    let tensors = vec![
        ("token_embd.weight".to_string(), vec![10, 8]),
        ("output_norm.weight".to_string(), vec![8]),
        ("blk.0.attn_norm.weight".into(), vec![8]),
        ("blk.0.attn_q.weight".into(), vec![12, 8]),
        ("blk.0.attn_k.weight".into(), vec![6, 8]),
        ("blk.0.attn_v.weight".into(), vec![6, 8]),
        ("blk.0.attn_q_norm.weight".into(), vec![6]),
        ("blk.0.attn_k_norm.weight".into(), vec![6]),
        ("blk.0.attn_output.weight".into(), vec![8, 12]),
        ("blk.0.ffn_norm.weight".into(), vec![8]),
        ("blk.0.ffn_gate.weight".into(), vec![16, 8]),
        ("blk.0.ffn_up.weight".into(), vec![16, 8]),
        ("blk.0.ffn_down.weight".into(), vec![8, 16]),
    ];
    let desc = ModelDesc::read(&header("qwen3", &k, &tensors)).unwrap();
    assert_eq!(
        (
            desc.hparams.head_dim,
            desc.hparams.q_dim(),
            desc.hparams.rope.dim
        ),
        (6, 12, 6)
    );
    assert_eq!(desc.blocks[0].q_norm.as_ref().unwrap().shape, [6]);
    let missing = without(tensors, &["attn_k_norm.weight"]);
    assert_eq!(
        ModelDesc::read(&header("qwen3", &k, &missing)).unwrap_err(),
        ArchError::MissingTensor("blk.0.attn_k_norm.weight".into())
    );
}

#[test]
fn phi3_has_fused_matrices_and_ignores_its_window() {
    let mut k = keys(1);
    k.push(("attention.sliding_window", Value::U32(4)));
    let tensors = with(
        without(
            llama_tensors(1),
            &[
                "attn_q.weight",
                "attn_k.weight",
                "attn_v.weight",
                "ffn_gate.weight",
                "ffn_up.weight",
            ],
        ),
        &[
            ("blk.0.attn_qkv.weight", vec![16, 8]),
            ("blk.0.ffn_up.weight", vec![32, 8]),
        ],
    );
    let desc = ModelDesc::read(&header("phi3", &k, &tensors)).unwrap();
    assert!(matches!(&desc.blocks[0].qkv, QkvWeights::Fused(l) if l.weight.shape == [16, 8]));
    assert!(
        matches!(&desc.blocks[0].ffn, FeedForward::FusedGateUp { gate_up, .. } if gate_up.weight.role == Role::FfnGateUp)
    );
    assert_eq!(desc.hparams.sliding_window, None);
    assert_eq!(desc.blocks[0].sliding_window, None);
    // LongRoPE: short factors up to the original context, long ones above it.
    k.push(("rope.scaling.original_context_length", Value::U32(32)));
    let tensors = with(
        tensors,
        &[
            ("rope_factors_long.weight", vec![2]),
            ("rope_factors_short.weight", vec![2]),
        ],
    );
    let desc = ModelDesc::read(&header("phi3", &k, &tensors)).unwrap();
    assert_eq!(
        desc.rope_factors_for(32).unwrap().name,
        "rope_factors_short.weight"
    );
    assert_eq!(
        desc.rope_factors_for(33).unwrap().name,
        "rope_factors_long.weight"
    );
}

fn gemma3_tensors(layers: usize) -> Vec<(String, Vec<usize>)> {
    let mut t = without(llama_tensors(layers), &["output.weight"]);
    for i in 0..layers {
        for (name, shape) in [
            ("attn_q_norm.weight", vec![4]),
            ("attn_k_norm.weight", vec![4]),
            ("post_attention_norm.weight", vec![8]),
            ("post_ffw_norm.weight", vec![8]),
        ] {
            t.push((format!("blk.{i}.{name}"), shape));
        }
    }
    t
}

#[test]
fn gemma3_interleaves_sliding_and_global_layers() {
    let mut k = keys(12);
    k.push(("rope.freq_base", Value::F32(1e6)));
    k.push(("rope.scaling.type", Value::String("linear".into())));
    k.push(("rope.scaling.factor", Value::F32(8.0)));
    k.push(("attention.sliding_window", Value::U32(4)));
    let desc = ModelDesc::read(&header("gemma3", &k, &gemma3_tensors(12))).unwrap();
    let hp = &desc.hparams;
    assert_eq!(hp.activation, Activation::GeluTanh);
    assert_eq!(hp.embedding_scale, Some(8f32.sqrt()));
    assert_eq!(hp.query_scale, 0.5);
    assert!(hp.tied_output);
    // The default period 6: layers 5 and 11 are global.
    let global: Vec<usize> = desc
        .blocks
        .iter()
        .filter(|b| b.sliding_window.is_none())
        .map(|b| b.index)
        .collect();
    assert_eq!(global, [5, 11]);
    assert_eq!(
        (
            desc.blocks[0].sliding_window,
            desc.blocks[0].rope_base,
            desc.blocks[0].rope_freq_scale
        ),
        (Some(4), 10000.0, 1.0)
    );
    assert_eq!(
        (desc.blocks[5].rope_base, desc.blocks[5].rope_freq_scale),
        (1e6, 0.125)
    );
    assert_eq!(desc.blocks[3].tensors().len(), 13);

    // The pattern key sets the period: every third layer is global.
    k.push(("attention.sliding_window_pattern", Value::U32(3)));
    k.push(("rope.freq_base_swa", Value::F32(5000.0)));
    let desc = ModelDesc::read(&header("gemma3", &k, &gemma3_tensors(12))).unwrap();
    let global: Vec<usize> = desc
        .blocks
        .iter()
        .filter(|b| b.sliding_window.is_none())
        .map(|b| b.index)
        .collect();
    assert_eq!(global, [2, 5, 8, 11]);
    assert_eq!(desc.blocks[0].rope_base, 5000.0);

    // Without a window no layer slides.
    let desc = ModelDesc::read(&header("gemma3", &keys(2), &gemma3_tensors(2))).unwrap();
    assert!(desc
        .blocks
        .iter()
        .all(|b| b.sliding_window.is_none() && b.rope_base == 10000.0));
    let missing = without(gemma3_tensors(2), &["blk.1.post_ffw_norm.weight"]);
    assert_eq!(
        ModelDesc::read(&header("gemma3", &keys(2), &missing))
            .unwrap_err()
            .to_string(),
        "tensor `blk.1.post_ffw_norm.weight` is missing"
    );
}

#[test]
fn unknown_architectures_and_bad_metadata_are_named() {
    let content = header("mamba", &keys(1), &llama_tensors(1));
    assert_eq!(
        ModelDesc::read(&content).unwrap_err().to_string(),
        "unknown architecture `mamba`"
    );
    assert!(supported_architectures().starts_with("llama, qwen2, qwen3, phi3, gemma3"));

    let mut k = keys(1);
    k[2] = ("attention.head_count_kv", Value::U32(3));
    let error = ModelDesc::read(&header("llama", &k, &llama_tensors(1)))
        .unwrap_err()
        .to_string();
    assert!(error.contains("`llama.attention.head_count` (2) is not a multiple of `llama.attention.head_count_kv` (3)"), "{error}");

    let mut k = keys(1);
    k[1] = ("attention.head_count", Value::U32(3));
    k[2] = ("attention.head_count_kv", Value::U32(3));
    let error = ModelDesc::read(&header("llama", &k, &llama_tensors(1)))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "`llama.embedding_length` (8) is not a multiple of `llama.attention.head_count` (3)"
        ),
        "{error}"
    );

    let mut k = keys(1);
    k[3] = ("block_count", Value::I32(-1));
    assert_eq!(
        ModelDesc::read(&header("llama", &k, &llama_tensors(1)))
            .unwrap_err()
            .to_string(),
        "metadata `llama.block_count` must be a positive integer"
    );
    let k: Vec<_> = keys(1)
        .into_iter()
        .filter(|(n, _)| *n != "attention.layer_norm_rms_epsilon")
        .collect();
    assert_eq!(
        ModelDesc::read(&header("llama", &k, &llama_tensors(1)))
            .unwrap_err()
            .to_string(),
        "metadata `llama.attention.layer_norm_rms_epsilon` is missing"
    );
    let mut k = keys(1);
    k.push(("rope.scaling.type", Value::String("yarn".into())));
    let error = ModelDesc::read(&header("qwen2", &k, &llama_tensors(1)))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("rope scaling `yarn` (`qwen2.rope.scaling.type`) is not supported"),
        "{error}"
    );
}

#[test]
fn wrong_shapes_are_named() {
    let tensors: Vec<_> = llama_tensors(2)
        .into_iter()
        .map(|(n, s)| {
            if n == "blk.1.ffn_down.weight" {
                (n, vec![16, 8])
            } else {
                (n, s)
            }
        })
        .collect();
    assert_eq!(
        ModelDesc::read(&header("llama", &keys(2), &tensors))
            .unwrap_err()
            .to_string(),
        "tensor `blk.1.ffn_down.weight` has shape [16, 8], expected [8, 16]"
    );
    let tensors: Vec<_> = llama_tensors(1)
        .into_iter()
        .map(|(n, s)| {
            if n == "token_embd.weight" {
                (n, vec![10, 6])
            } else {
                (n, s)
            }
        })
        .collect();
    let error = ModelDesc::read(&header("llama", &keys(1), &tensors))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("tensor `token_embd.weight` has shape [10, 6]"),
        "{error}"
    );
}

#[test]
fn mixtures_of_experts_list_their_router() {
    let mut k = keys(1);
    k.push(("expert_count", Value::U32(4)));
    k.push(("expert_used_count", Value::U32(2)));
    let tensors = with(
        without(
            llama_tensors(1),
            &["ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"],
        ),
        &[("blk.0.ffn_gate_inp.weight", vec![4, 8])],
    );
    let desc = ModelDesc::read(&header("llama", &k, &tensors)).unwrap();
    assert!(matches!(
        &desc.blocks[0].ffn,
        FeedForward::Experts {
            count: 4,
            used: 2,
            ..
        }
    ));
}
