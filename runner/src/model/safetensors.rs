//! Hugging Face model directories: `config.json`, one or more `*.safetensors`
//! (memory-mapped), `tokenizer.json`, and optionally `tokenizer_config.json`,
//! `chat_template.jinja` and `generation_config.json`.

use std::path::{Path, PathBuf};

use candle_core::DType;
use serde_json::Value;

use super::facts::TypeCounts;
use super::{
    model_id, resolve_context, ChatTemplate, LoadError, LoadOptions, LoadedModel, ModelFacts,
    Tokenizer,
};
use crate::engine::candle::{select_device, CandleEngine, SAFETENSORS_ARCHITECTURES};
use crate::engine::Device;

/// Loads a safetensors directory; also returns the vocabulary size of the weights.
pub fn load_dir(
    dir: &Path,
    options: &LoadOptions,
) -> Result<(LoadedModel, Option<usize>), LoadError> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(LoadError::NotAModel {
            path: dir.to_path_buf(),
            reason: "the directory has no config.json".to_string(),
        });
    }
    let config_text = read(&config_path)?;
    let config: Value =
        serde_json::from_str(&config_text).map_err(|e| LoadError::InvalidConfig {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
    let architecture = config
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| LoadError::InvalidConfig {
            path: config_path.clone(),
            reason: "no `model_type`".to_string(),
        })?
        .to_string();
    if !SAFETENSORS_ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(LoadError::UnsupportedArchitecture {
            path: dir.to_path_buf(),
            architecture,
            supported: format!(
                "safetensors {}; GGUF llama, qwen2, phi3",
                SAFETENSORS_ARCHITECTURES.join(", ")
            ),
        });
    }

    let files = safetensors_files(dir)?;
    let (file_dtype, facts) = weights_dtype(dir, &files, &config)?;

    let tokenizer_path = options
        .tokenizer
        .clone()
        .unwrap_or_else(|| dir.join("tokenizer.json"));
    if !tokenizer_path.is_file() {
        return Err(LoadError::Tokenizer(format!(
            "{} has no tokenizer.json; pass --tokenizer with the model's tokenizer.json",
            dir.display()
        )));
    }
    let mut tokenizer =
        Tokenizer::from_file(&tokenizer_path).map_err(|e| LoadError::Tokenizer(e.0))?;
    let tokenizer_config: Value = match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| LoadError::InvalidConfig {
            path: dir.join("tokenizer_config.json"),
            reason: e.to_string(),
        })?,
        Err(_) => Value::Null,
    };
    tokenizer.set_special_token_strings(
        token_string(&tokenizer_config["bos_token"]),
        token_string(&tokenizer_config["eos_token"]),
    );

    let chat_template = chat_template_source(dir, &tokenizer_config)
        .map(|source| {
            ChatTemplate::new(
                &source,
                tokenizer.bos_token().unwrap_or(""),
                tokenizer.eos_token().unwrap_or(""),
            )
            .map_err(|e| LoadError::InvalidConfig {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            })
        })
        .transpose()?;

    let mut eos_token_ids = eos_ids(&config["eos_token_id"]);
    if let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) {
        if let Ok(generation) = serde_json::from_str::<Value>(&text) {
            eos_token_ids.extend(eos_ids(&generation["eos_token_id"]));
        }
    }
    if let Some(id) = tokenizer.eos_token().and_then(|t| tokenizer.token_to_id(t)) {
        eos_token_ids.push(id);
    }
    eos_token_ids.sort_unstable();
    eos_token_ids.dedup();

    if options.device == Device::Vulkan {
        return Err(super::vulkan_unavailable());
    }
    let device = select_device(options.device).map_err(|e| LoadError::Device(format!("{e:#}")))?;
    // candle's CPU kernels are fastest and most complete in f32; GPUs keep the
    // file's half precision.
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        file_dtype
    };
    let mut engine =
        CandleEngine::from_safetensors(&architecture, &config_text, &files, dtype, device)
            .map_err(|e| LoadError::Engine {
                path: dir.to_path_buf(),
                reason: super::gguf::first_line(&format!("{e:#}")),
            })?;
    let ctx = resolve_context(options.ctx, crate::engine::Engine::context_length(&engine))?;
    engine.limit_context(ctx);

    let model_vocab = config["vocab_size"].as_u64().map(|v| v as usize);
    let model = LoadedModel {
        id: model_id(dir, true),
        tokenizer,
        chat_template,
        eos_token_ids,
        engine: Box::new(engine),
        facts,
    };
    Ok((model, model_vocab))
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| LoadError::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LoadError::NotAModel {
            path: dir.to_path_buf(),
            reason: "the directory has no *.safetensors files".to_string(),
        });
    }
    Ok(files)
}

/// The dtype of the weights, checked to be one we run, and the model's facts.
fn weights_dtype(
    dir: &Path,
    files: &[PathBuf],
    config: &Value,
) -> Result<(DType, ModelFacts), LoadError> {
    let unreadable = |e: &dyn std::fmt::Display| LoadError::InvalidConfig {
        path: dir.to_path_buf(),
        reason: format!(
            "cannot read the safetensors files: {}",
            super::gguf::first_line(e)
        ),
    };
    let maps = files
        .iter()
        .map(|path| xpu_gguf::mapped::map_path(path).map_err(|source| LoadError::io(path, source)))
        .collect::<Result<Vec<_>, _>>()?;
    let shards = maps
        .iter()
        .map(|map| candle_core::safetensors::SliceSafetensors::new(map).map_err(|e| unreadable(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut found = None;
    let mut types = TypeCounts::default();
    let (mut parameters, mut weights_bytes) = (0u64, 0u64);
    for (name, view) in shards.iter().flat_map(|shard| shard.tensors()) {
        let elements = view.shape().iter().product::<usize>() as u64;
        parameters += elements;
        weights_bytes += view.data().len() as u64;
        types.add(format!("{:?}", view.dtype()).to_uppercase(), elements);
        let dtype = match view.dtype() {
            ::safetensors::Dtype::F32 => DType::F32,
            ::safetensors::Dtype::F16 => DType::F16,
            ::safetensors::Dtype::BF16 => DType::BF16,
            other => {
                return Err(LoadError::UnsupportedDtype {
                    path: dir.to_path_buf(),
                    dtype: format!("{other:?} (tensor `{name}`)"),
                })
            }
        };
        // Norm weights are sometimes kept in f32 next to half-precision matrices;
        // the largest tensors decide.
        if name.ends_with("embed_tokens.weight") || found.is_none() {
            found = Some(dtype);
        }
    }
    let dtype = found.ok_or_else(|| LoadError::NotAModel {
        path: dir.to_path_buf(),
        reason: "the safetensors files hold no tensors".to_string(),
    })?;
    let facts = ModelFacts::from_safetensors(config, types, parameters, weights_bytes);
    Ok((dtype, facts))
}

/// `bos_token` / `eos_token` in tokenizer_config.json: a string or `{"content": …}`.
fn token_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// `chat_template.jinja`, else `chat_template` in tokenizer_config.json (a string,
/// or a list of named templates of which we take `default`).
fn chat_template_source(dir: &Path, tokenizer_config: &Value) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(text);
    }
    match &tokenizer_config["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    }
}

fn eos_ids(value: &Value) -> Vec<u32> {
    match value {
        Value::Number(n) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}
