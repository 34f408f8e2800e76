//! The served model as the dashboard describes it: architecture, quantization,
//! parameters and layers from the file's own header, and an estimate of the memory it
//! needs, to say which devices it suits.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use serde::Serialize;

use crate::model::gguf;

use super::machine::MemoryPlace;

/// Bytes per KV-cache value in the estimate: our engines keep keys and values in f32.
const KV_BYTES_PER_VALUE: u64 = 4;
/// Room for activations, scratch buffers and the runtime, on top of weights and cache.
const OVERHEAD_PERCENT: u64 = 10;

/// What the model's file says about it.
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

/// Whether the model fits one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suitability {
    pub device: Option<&'static str>,
    pub name: String,
    pub memory_bytes: Option<u64>,
    pub memory_source: &'static str,
    /// `null` when the memory is unknown.
    pub fits: Option<bool>,
}

/// Reads the header of a GGUF file or a safetensors directory.
pub fn read(path: &Path) -> anyhow::Result<ModelFacts> {
    if path.is_dir() {
        read_safetensors(path)
    } else {
        read_gguf(path)
    }
}

fn read_gguf(path: &Path) -> anyhow::Result<ModelFacts> {
    let file = gguf::open(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let content = &file.content;
    let architecture = gguf::metadata_str(content, "general.architecture").map(str::to_owned);
    let key = |suffix: &str| {
        architecture
            .as_deref()
            .and_then(|a| gguf::metadata_u64(content, &format!("{a}.{suffix}")))
    };
    let mut by_type: HashMap<String, u64> = HashMap::new();
    let mut parameters = 0u64;
    for info in content.tensor_infos.values() {
        let elements = info.shape.elem_count() as u64;
        parameters += elements;
        *by_type.entry(ggml_type_name(info.ggml_dtype)).or_default() += elements;
    }
    let heads = key("attention.head_count");
    let kv_heads = key("attention.head_count_kv").or(heads);
    let head_size = key("attention.key_length")
        .or_else(|| Some(key("embedding_length")? / heads.filter(|&h| h > 0)?));
    let layers = key("block_count");
    let context_length = key("context_length");
    Ok(ModelFacts {
        format: "gguf",
        architecture,
        quantization: dominant(by_type),
        parameters,
        weights_bytes: file.bytes().len() as u64,
        layers,
        kv_width: kv_heads.zip(head_size).map(|(h, s)| h * s),
        context_length,
    })
}

fn read_safetensors(dir: &Path) -> anyhow::Result<ModelFacts> {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    let maps = files
        .iter()
        .map(|path| xpu_cpu::mapped::map_path(path))
        .collect::<Result<Vec<_>, _>>()?;
    let mut by_type: HashMap<String, u64> = HashMap::new();
    let (mut parameters, mut weights_bytes) = (0u64, 0u64);
    for map in &maps {
        for (_, view) in candle_core::safetensors::SliceSafetensors::new(map)?.tensors() {
            let elements = view.shape().iter().product::<usize>() as u64;
            parameters += elements;
            weights_bytes += view.data().len() as u64;
            *by_type
                .entry(format!("{:?}", view.dtype()).to_uppercase())
                .or_default() += elements;
        }
    }
    let get = |key: &str| config.get(key).and_then(serde_json::Value::as_u64);
    let heads = get("num_attention_heads");
    let head_size =
        get("head_dim").or_else(|| Some(get("hidden_size")? / heads.filter(|&h| h > 0)?));
    Ok(ModelFacts {
        format: "safetensors",
        architecture: config
            .get("model_type")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        quantization: dominant(by_type),
        parameters,
        weights_bytes,
        layers: get("num_hidden_layers"),
        kv_width: get("num_key_value_heads")
            .or(heads)
            .zip(head_size)
            .map(|(h, s)| h * s),
        context_length: get("max_position_embeddings"),
    })
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

/// The type with the most elements (ties broken by name, so the answer is stable).
fn dominant(by_type: HashMap<String, u64>) -> Option<String> {
    by_type
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(name, _)| name)
}

impl ModelFacts {
    /// Estimated memory to serve `context` tokens: weights, the KV cache for the whole
    /// context, and 10 % on top.
    pub fn memory_needed(&self, context: usize) -> u64 {
        let kv = match (self.layers, self.kv_width) {
            (Some(layers), Some(width)) => 2 * layers * width * context as u64 * KV_BYTES_PER_VALUE,
            _ => 0,
        };
        (self.weights_bytes + kv) * (100 + OVERHEAD_PERCENT) / 100
    }
}

/// For each place, whether `needed` bytes fit its memory.
pub fn suitability(needed: u64, places: Vec<MemoryPlace>) -> Vec<Suitability> {
    places
        .into_iter()
        .map(|p| Suitability {
            fits: p.memory_bytes.map(|m| needed <= m),
            device: p.device,
            name: p.name,
            memory_bytes: p.memory_bytes,
            memory_source: p.memory_source,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dominant_type_has_most_elements() {
        let types = HashMap::from([
            ("F32".to_string(), 10),
            ("Q4_1".to_string(), 1000),
            ("Q6K".to_string(), 50),
        ]);
        assert_eq!(dominant(types).as_deref(), Some("Q4_1"));
        assert_eq!(dominant(HashMap::new()), None);
        assert_eq!(ggml_type_name(GgmlDType::Q6K), "Q6_K");
        assert_eq!(ggml_type_name(GgmlDType::Q4_1), "Q4_1");
    }

    #[test]
    fn memory_estimate_counts_the_cache_and_the_overhead() {
        let facts = ModelFacts {
            weights_bytes: 1000,
            layers: Some(2),
            kv_width: Some(8),
            ..Default::default()
        };
        // 1000 + 2 (K, V) * 2 layers * 8 * 10 tokens * 4 bytes = 2280, plus 10 %.
        assert_eq!(facts.memory_needed(10), 2508);
        let places = vec![
            MemoryPlace {
                device: Some("cpu"),
                name: "CPU".into(),
                memory_bytes: Some(4096),
                memory_source: "facts: memory",
            },
            MemoryPlace {
                device: Some("vulkan"),
                name: "small".into(),
                memory_bytes: Some(2000),
                memory_source: "Level Zero",
            },
            MemoryPlace {
                device: None,
                name: "unknown".into(),
                memory_bytes: None,
                memory_source: "unknown",
            },
        ];
        let fits: Vec<_> = suitability(2508, places).iter().map(|s| s.fits).collect();
        assert_eq!(fits, [Some(true), Some(false), None]);
    }
}
