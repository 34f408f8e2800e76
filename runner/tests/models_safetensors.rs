//! Safetensors directories (`config.json` + `*.safetensors` + `tokenizer.json`):
//! the real SmolLM2 weights, dequantized from the GGUF and written in the Hugging
//! Face llama layout in f32, f16 and bf16, must generate what the GGUF generates.

mod support;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device, Tensor};
use support::{read_gguf, runner, test_model};
use xpu_runner::generate::{generate, GenerationRequest};
use xpu_runner::model::{self, ChatMessage, LoadOptions, LoadedModel};
use xpu_runner::sampling::SamplingParams;

/// Undoes llama.cpp's permutation of q/k rows (GGUF interleaves the two RoPE
/// halves; Hugging Face keeps them apart).
fn unpermute(w: &Tensor, heads: usize) -> Tensor {
    let (out, inp) = w.dims2().unwrap();
    w.reshape((heads, out / heads / 2, 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((out, inp))
        .unwrap()
}

fn md_u32(md: &HashMap<String, Value>, key: &str) -> usize {
    md[key].to_u32().unwrap() as usize
}

/// Writes the test model as a Hugging Face llama directory in `dtype`.
/// Writes the test model as a Hugging Face directory of `arch` (`llama`, or `qwen2`:
/// the same weights plus zero q/k/v biases, which makes it the same function).
fn write_hf_dir(dir: &Path, dtype: DType, arch: &str) {
    let (md, tensors) = read_gguf(&test_model());
    let heads = md_u32(&md, "llama.attention.head_count");
    let kv_heads = md_u32(&md, "llama.attention.head_count_kv");
    let mut out = HashMap::new();
    for (name, q) in &tensors {
        let t = q.dequantize(&Device::Cpu).unwrap();
        let hf = if name == "token_embd.weight" {
            "model.embed_tokens.weight".to_string()
        } else if name == "output_norm.weight" {
            "model.norm.weight".to_string()
        } else if name == "output.weight" {
            "lm_head.weight".to_string()
        } else {
            let rest = name.strip_prefix("blk.").unwrap();
            let (layer, part) = rest.split_once('.').unwrap();
            let part = match part {
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                "attn_norm.weight" => "input_layernorm.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                other => panic!("unexpected tensor {other}"),
            };
            format!("model.layers.{layer}.{part}")
        };
        let t = if name.ends_with("attn_q.weight") {
            unpermute(&t, heads)
        } else if name.ends_with("attn_k.weight") {
            unpermute(&t, kv_heads)
        } else {
            t
        };
        out.insert(hf, t.to_dtype(dtype).unwrap());
    }
    if arch == "qwen2" {
        let biases: Vec<(String, Tensor)> = out
            .iter()
            .filter(|(name, _)| {
                name.ends_with("_proj.weight")
                    && name.contains("self_attn.")
                    && !name.contains("o_proj")
            })
            .map(|(name, w)| {
                (
                    name.replace(".weight", ".bias"),
                    Tensor::zeros(w.dims()[0], dtype, &Device::Cpu).unwrap(),
                )
            })
            .collect();
        assert_eq!(biases.len(), 3 * md_u32(&md, "llama.block_count"));
        out.extend(biases);
    }
    let tied = !out.contains_key("lm_head.weight");
    candle_core::safetensors::save(&out, dir.join("model.safetensors")).unwrap();

    let mut config = serde_json::json!({
        "model_type": arch,
        "architectures": [if arch == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "hidden_size": md_u32(&md, "llama.embedding_length"),
        "intermediate_size": md_u32(&md, "llama.feed_forward_length"),
        "num_hidden_layers": md_u32(&md, "llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": md["llama.attention.layer_norm_rms_epsilon"].to_f32().unwrap(),
        "rope_theta": md["llama.rope.freq_base"].to_f32().unwrap(),
        "max_position_embeddings": 2048,
        "vocab_size": out["model.embed_tokens.weight"].dims()[0],
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": 2,
    });
    if arch == "qwen2" {
        let extra = serde_json::json!({
            "sliding_window": 4096,
            "max_window_layers": 0,
            "use_sliding_window": false,
            "hidden_act": "silu",
        });
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    let gguf = model::load(&test_model(), &LoadOptions::default()).unwrap();
    gguf.tokenizer
        .inner()
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
    let template = md["tokenizer.chat_template"].to_string().unwrap().clone();
    let tokenizer_config = serde_json::json!({
        "chat_template": template,
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        tokenizer_config.to_string(),
    )
    .unwrap();
}

fn greedy_ids(model: &mut LoadedModel, n: usize) -> Vec<u32> {
    let prompt_tokens = model
        .chat_prompt_tokens(&[ChatMessage::new(
            "user",
            "What is the capital of France? Answer in one sentence.",
        )])
        .unwrap();
    let request = GenerationRequest {
        prompt_tokens,
        sampling: SamplingParams::greedy(),
        stop: vec![],
        max_new_tokens: n,
        top_logprobs: 0,
    };
    let mut ids = Vec::new();
    generate(model, &request, |e| {
        if !e.flush {
            ids.push(e.token_id);
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    ids
}

/// The test model's first 6 greedy tokens from the GGUF file itself.
fn gguf_greedy_ids(options: &LoadOptions) -> Vec<u32> {
    let mut gguf = model::load(&test_model(), options).unwrap();
    greedy_ids(&mut gguf, 6)
}

#[test]
fn safetensors_llama_generates_like_the_gguf() {
    let options = LoadOptions {
        threads: Some(2),
        ..Default::default()
    };
    let expected = gguf_greedy_ids(&options);

    for (dtype, agree) in [(DType::F32, 6), (DType::F16, 3), (DType::BF16, 1)] {
        let dir = tempfile::tempdir().unwrap();
        write_hf_dir(dir.path(), dtype, "llama");
        let mut st = model::load(dir.path(), &options).unwrap();
        assert_eq!(st.eos_token_ids, vec![2]);
        assert!(st.chat_template.is_some());
        let got = greedy_ids(&mut st, 6);
        // The GGUF engine multiplies with 8-bit-quantized activations, so only the
        // first tokens must match exactly; fewer for the rounded half types.
        assert_eq!(
            got[..agree],
            expected[..agree],
            "{dtype:?}: {got:?} vs {expected:?}"
        );
    }
}

#[test]
fn safetensors_qwen2_generates_like_the_gguf() {
    let options = LoadOptions {
        threads: Some(2),
        ..Default::default()
    };
    let expected = gguf_greedy_ids(&options);

    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path(), DType::F32, "qwen2");
    let mut st = model::load(dir.path(), &options).unwrap();
    let got = greedy_ids(&mut st, 6);
    assert_eq!(
        got, expected,
        "qwen2 safetensors: {got:?} vs the GGUF's {expected:?}"
    );
}

#[test]
fn safetensors_directory_without_tokenizer_or_weights() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type":"llama","hidden_size":8,"intermediate_size":8,"vocab_size":8,"num_hidden_layers":1,"num_attention_heads":1,"rms_norm_eps":1e-5,"max_position_embeddings":64}"#,
    )
    .unwrap();
    let model = dir.path().to_str().unwrap();
    let out = runner(&["generate", "--model", model, "--prompt", "x"]);
    support::assert_one_line_error(&out, &["no *.safetensors"]);

    let mut t = HashMap::new();
    t.insert(
        "x".to_string(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();
    let out = runner(&["generate", "--model", model, "--prompt", "x"]);
    support::assert_one_line_error(&out, &["no tokenizer.json", "--tokenizer"]);
}

#[test]
fn safetensors_unsupported_architecture() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type":"gpt_neox"}"#,
    )
    .unwrap();
    let out = runner(&[
        "generate",
        "--model",
        dir.path().to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    support::assert_one_line_error(
        &out,
        &[
            "unsupported model architecture `gpt_neox`",
            "safetensors llama, qwen2",
        ],
    );
}
