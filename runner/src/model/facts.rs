//! What a model's files say about it (architecture, quantization, parameters, layers),
//! gathered by the loader from the header it already parsed (for the dashboard), or read
//! from the header alone before a load (for the server's memory budget).

use std::path::Path;

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use serde::Serialize;

use super::gguf;

/// A model's size and shape, from its own header.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelFacts {
    /// `gguf` or `safetensors`.
    pub format: &'static str,
    pub architecture: Option<String>,
    /// The tensor type holding most of the parameters (`Q4_1`, `F16`, ...).
    pub quantization: Option<String>,
    pub parameters: u64,
    /// Bytes of weights (the file size for GGUF).
    pub weights_bytes: u64,
    pub layers: Option<u64>,
    /// Key/value heads times head size: values per token and layer, for K and V each.
    pub kv_width: Option<u64>,
    /// The context the model was trained for, in tokens.
    pub context_length: Option<u64>,
}

/// Elements per tensor type, to find the dominant one.
#[derive(Debug, Default)]
pub(crate) struct TypeCounts(HashMap<String, u64>);

impl TypeCounts {
    pub(crate) fn add(&mut self, type_name: String, elements: u64) {
        *self.0.entry(type_name).or_default() += elements;
    }

    /// The type with the most elements (ties broken by name, so the answer is stable).
    fn dominant(self) -> Option<String> {
        self.0
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(name, _)| name)
    }
}

impl ModelFacts {
    /// Reads the header of a GGUF file or a safetensors directory without loading the
    /// model.
    pub fn read(path: &Path) -> anyhow::Result<ModelFacts> {
        if !path.is_dir() {
            let file = gguf::open(path)?;
            return Ok(ModelFacts::from_gguf(
                &file.content,
                file.bytes().len() as u64,
            ));
        }
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path.join("config.json"))?)?;
        let mut files: Vec<_> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        let maps = files
            .iter()
            .map(|path| xpu_gguf::mapped::map_path(path))
            .collect::<Result<Vec<_>, _>>()?;
        let mut types = TypeCounts::default();
        let (mut parameters, mut weights_bytes) = (0u64, 0u64);
        for map in &maps {
            for (_, view) in candle_core::safetensors::SliceSafetensors::new(map)?.tensors() {
                let elements = view.shape().iter().product::<usize>() as u64;
                parameters += elements;
                weights_bytes += view.data().len() as u64;
                types.add(format!("{:?}", view.dtype()).to_uppercase(), elements);
            }
        }
        Ok(ModelFacts::from_safetensors(
            &config,
            types,
            parameters,
            weights_bytes,
        ))
    }

    /// From a GGUF header; `file_bytes` is the file's size.
    pub(crate) fn from_gguf(content: &Content, file_bytes: u64) -> ModelFacts {
        let architecture = gguf::metadata_str(content, "general.architecture").map(str::to_owned);
        let key = |suffix: &str| {
            architecture
                .as_deref()
                .and_then(|a| gguf::metadata_u64(content, &format!("{a}.{suffix}")))
        };
        let mut types = TypeCounts::default();
        let mut parameters = 0u64;
        for info in content.tensor_infos.values() {
            let elements = info.shape.elem_count() as u64;
            parameters += elements;
            types.add(ggml_type_name(info.ggml_dtype), elements);
        }
        let heads = key("attention.head_count");
        let kv_heads = key("attention.head_count_kv").or(heads);
        let head_size = key("attention.key_length")
            .or_else(|| Some(key("embedding_length")? / heads.filter(|&h| h > 0)?));
        let layers = key("block_count");
        let context_length = key("context_length");
        ModelFacts {
            format: "gguf",
            architecture,
            quantization: types.dominant(),
            parameters,
            weights_bytes: file_bytes,
            layers,
            kv_width: kv_heads.zip(head_size).map(|(h, s)| h * s),
            context_length,
        }
    }

    /// From a Hugging Face `config.json` and the tensors of its safetensors files.
    pub(crate) fn from_safetensors(
        config: &serde_json::Value,
        types: TypeCounts,
        parameters: u64,
        weights_bytes: u64,
    ) -> ModelFacts {
        let get = |key: &str| config.get(key).and_then(serde_json::Value::as_u64);
        let heads = get("num_attention_heads");
        let head_size =
            get("head_dim").or_else(|| Some(get("hidden_size")? / heads.filter(|&h| h > 0)?));
        ModelFacts {
            format: "safetensors",
            architecture: config
                .get("model_type")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            quantization: types.dominant(),
            parameters,
            weights_bytes,
            layers: get("num_hidden_layers"),
            kv_width: get("num_key_value_heads")
                .or(heads)
                .zip(head_size)
                .map(|(h, s)| h * s),
            context_length: get("max_position_embeddings"),
        }
    }
}

/// llama.cpp's name of a tensor type (`Q4_K`, not candle's `Q4K`).
fn ggml_type_name(dtype: GgmlDType) -> String {
    match dtype {
        GgmlDType::Q2K => "Q2_K".into(),
        GgmlDType::Q3K => "Q3_K".into(),
        GgmlDType::Q4K => "Q4_K".into(),
        GgmlDType::Q5K => "Q5_K".into(),
        GgmlDType::Q6K => "Q6_K".into(),
        GgmlDType::Q8K => "Q8_K".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dominant_type_has_most_elements() {
        let mut types = TypeCounts::default();
        types.add("F32".into(), 10);
        types.add("Q4_1".into(), 600);
        types.add("Q6_K".into(), 50);
        types.add("Q4_1".into(), 400);
        assert_eq!(types.dominant().as_deref(), Some("Q4_1"));
        assert_eq!(TypeCounts::default().dominant(), None);
        assert_eq!(ggml_type_name(GgmlDType::Q6K), "Q6_K");
        assert_eq!(ggml_type_name(GgmlDType::Q4_1), "Q4_1");
    }
}
