//! What a GGUF file of each architecture the runner loads must hold: hyper-parameters
//! that agree with each other, and the tensors the engines read, with their shapes.
//!
//! Checked once, before any engine sees the file, so that a broken or unusual file gets
//! one error that names the key or the tensor, whichever engine would have run it
//! (candle's builders would fail later, or only at the first token, or panic).

use candle_core::quantized::gguf_file::Content;

use super::gguf::metadata_u64;

/// The hyper-parameters every architecture here has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HyperParams {
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_layer: usize,
    pub n_ff: usize,
}

/// Reads the hyper-parameters of `arch` and checks that they agree: the error names
/// the metadata keys.
pub fn hyper_params(content: &Content, arch: &str) -> Result<HyperParams, String> {
    let key = |name: &str| format!("{arch}.{name}");
    let required = |name: &str| -> Result<usize, String> {
        let k = key(name);
        match metadata_u64(content, &k).map(usize::try_from) {
            Some(Ok(v)) if v > 0 => Ok(v),
            Some(_) => Err(format!("metadata `{k}` must be a positive integer")),
            None => Err(format!("metadata `{k}` is missing (or not an integer)")),
        }
    };
    let n_embd = required("embedding_length")?;
    let n_head = required("attention.head_count")?;
    let n_kv_head = match content
        .metadata
        .contains_key(&key("attention.head_count_kv"))
    {
        true => required("attention.head_count_kv")?,
        false => n_head,
    };
    if n_head % n_kv_head != 0 {
        return Err(format!(
            "`{}` ({n_head}) is not a multiple of `{}` ({n_kv_head}): each KV head must serve the same \
             number of query heads",
            key("attention.head_count"),
            key("attention.head_count_kv")
        ));
    }
    // Without an explicit head size, heads split the embedding evenly.
    let head_dim = match content.metadata.contains_key(&key("attention.key_length")) {
        true => required("attention.key_length")?,
        false if n_embd % n_head == 0 => n_embd / n_head,
        false => {
            return Err(format!(
                "`{}` ({n_embd}) is not a multiple of `{}` ({n_head})",
                key("embedding_length"),
                key("attention.head_count")
            ))
        }
    };
    Ok(HyperParams {
        n_embd,
        n_head,
        n_kv_head,
        head_dim,
        n_layer: required("block_count")?,
        n_ff: required("feed_forward_length")?,
    })
}

/// The tensors an `arch` file must have, each with its shape (outermost dimension
/// first, as candle shows it: `[rows, columns]` for a matrix). `None` for an
/// architecture without a description here.
fn required_tensors(arch: &str, hp: &HyperParams, moe: bool) -> Option<Vec<(String, Vec<usize>)>> {
    let HyperParams {
        n_embd,
        n_head,
        n_kv_head,
        head_dim,
        n_layer,
        n_ff,
    } = *hp;
    let (q, kv) = (n_head * head_dim, n_kv_head * head_dim);
    let mut tensors = vec![("output_norm.weight".to_string(), vec![n_embd])];
    for i in 0..n_layer {
        let mut t =
            |name: &str, shape: Vec<usize>| tensors.push((format!("blk.{i}.{name}"), shape));
        t("attn_norm.weight", vec![n_embd]);
        t("ffn_norm.weight", vec![n_embd]);
        t("attn_output.weight", vec![n_embd, q]);
        match arch {
            "llama" | "qwen2" => {
                t("attn_q.weight", vec![q, n_embd]);
                t("attn_k.weight", vec![kv, n_embd]);
                t("attn_v.weight", vec![kv, n_embd]);
                if arch == "qwen2" {
                    t("attn_q.bias", vec![q]);
                    t("attn_k.bias", vec![kv]);
                    t("attn_v.bias", vec![kv]);
                }
                // Mixture-of-experts files keep their feed-forward weights per expert.
                if !moe {
                    t("ffn_gate.weight", vec![n_ff, n_embd]);
                    t("ffn_up.weight", vec![n_ff, n_embd]);
                    t("ffn_down.weight", vec![n_embd, n_ff]);
                }
            }
            "phi3" => {
                t("attn_qkv.weight", vec![q + 2 * kv, n_embd]);
                t("ffn_up.weight", vec![2 * n_ff, n_embd]);
                t("ffn_down.weight", vec![n_embd, n_ff]);
            }
            _ => return None,
        }
    }
    Some(tensors)
}

/// Checks the hyper-parameters and that every tensor the engines read is there with
/// its shape. The error is one sentence that names the key or the tensor.
pub fn check(content: &Content, arch: &str) -> Result<(), String> {
    let hp = hyper_params(content, arch)?;
    let shape_of = |name: &str| {
        content
            .tensor_infos
            .get(name)
            .map(|t| t.shape.dims().to_vec())
    };
    let embedding = shape_of("token_embd.weight").ok_or("tensor `token_embd.weight` is missing")?;
    let vocab = match embedding[..] {
        [vocab, width] if width == hp.n_embd && vocab > 0 => vocab,
        _ => {
            return Err(format!(
                "tensor `token_embd.weight` has shape {embedding:?}, expected [vocabulary, {}] (`{arch}.embedding_length`)",
                hp.n_embd
            ))
        }
    };
    let moe = content
        .metadata
        .contains_key(&format!("{arch}.expert_count"));
    let mut tensors = required_tensors(arch, &hp, moe).unwrap_or_default();
    // Without `output.weight` the embedding doubles as the output matrix.
    if content.tensor_infos.contains_key("output.weight") {
        tensors.push(("output.weight".to_string(), vec![vocab, hp.n_embd]));
    }
    for (name, expected) in tensors {
        match shape_of(&name) {
            None => return Err(format!("tensor `{name}` is missing")),
            Some(shape) if shape != expected => {
                return Err(format!(
                    "tensor `{name}` has shape {shape:?}, expected {expected:?}"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::{TensorInfo, Value, VersionedMagic};
    use candle_core::quantized::GgmlDType;
    use std::collections::HashMap;

    /// A llama header of 2 blocks, 8 wide, 2 heads, 1 KV head.
    fn llama() -> Content {
        let mut metadata = HashMap::new();
        for (k, v) in [
            ("embedding_length", 8u32),
            ("attention.head_count", 2),
            ("attention.head_count_kv", 1),
            ("block_count", 2),
            ("feed_forward_length", 16),
        ] {
            metadata.insert(format!("llama.{k}"), Value::U32(v));
        }
        let mut content = Content {
            magic: VersionedMagic::GgufV3,
            metadata,
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        };
        let hp = hyper_params(&content, "llama").unwrap();
        let mut add = |name: &str, shape: Vec<usize>| {
            let info = TensorInfo {
                ggml_dtype: GgmlDType::F32,
                shape: shape.into(),
                offset: 0,
            };
            content.tensor_infos.insert(name.to_string(), info);
        };
        add("token_embd.weight", vec![10, 8]);
        for (name, shape) in required_tensors("llama", &hp, false).unwrap() {
            add(&name, shape);
        }
        content
    }

    #[test]
    fn a_complete_file_passes() {
        let content = llama();
        assert_eq!(content.tensor_infos.len(), 1 + 1 + 2 * 9);
        check(&content, "llama").unwrap();
    }

    #[test]
    fn inconsistent_heads_name_their_keys() {
        let mut content = llama();
        content
            .metadata
            .insert("llama.attention.head_count_kv".into(), Value::U32(3));
        let error = check(&content, "llama").unwrap_err();
        assert!(
            error.contains("llama.attention.head_count_kv") && error.contains("multiple"),
            "{error}"
        );
        let mut content = llama();
        content
            .metadata
            .insert("llama.attention.head_count".into(), Value::U32(3));
        content
            .metadata
            .insert("llama.attention.head_count_kv".into(), Value::U32(3));
        let error = check(&content, "llama").unwrap_err();
        assert!(
            error.contains("llama.embedding_length") && error.contains("(8)"),
            "{error}"
        );
        let mut content = llama();
        content
            .metadata
            .insert("llama.attention.head_count".into(), Value::U32(0));
        assert!(check(&content, "llama").unwrap_err().contains("positive"));
    }

    #[test]
    fn missing_and_misshapen_tensors_are_named() {
        let mut content = llama();
        content.tensor_infos.remove("blk.1.ffn_down.weight");
        assert_eq!(
            check(&content, "llama").unwrap_err(),
            "tensor `blk.1.ffn_down.weight` is missing"
        );
        let mut content = llama();
        content
            .tensor_infos
            .get_mut("blk.0.attn_k.weight")
            .unwrap()
            .shape = vec![8, 8].into();
        let error = check(&content, "llama").unwrap_err();
        assert_eq!(
            error,
            "tensor `blk.0.attn_k.weight` has shape [8, 8], expected [4, 8]"
        );
    }
}
