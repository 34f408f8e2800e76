//! Model loading: turns a path (a GGUF file or a Hugging Face safetensors
//! directory) into a [`LoadedModel`]: an engine with the weights on the chosen
//! device, the tokenizer, the chat template and the end-of-sequence ids.
//!
//! Every way a user can get this wrong (missing file, truncated or corrupt GGUF,
//! unsupported architecture or quantization, missing or mismatched tokenizer,
//! a context the model cannot hold) is a [`LoadError`] with a one-line message.

pub mod chat_template;
pub mod facts;
pub mod gguf;
pub mod safetensors;
pub mod tokenizer;

use std::io::Cursor;
use std::path::{Path, PathBuf};

pub use chat_template::{ChatMessage, ChatTemplate, ChatTemplateError};
pub use facts::ModelFacts;
pub use tokenizer::{StreamDecoder, Tokenizer};

use xpu_gguf::arch::{self, ArchError, ModelDesc};

use crate::engine::candle::{
    configure_cpu_threads, select_device, CandleEngine, SAFETENSORS_ARCHITECTURES,
};
use crate::engine::{CpuEngine, Device, Engine, EngineOptions};

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Where to run it (what `--device auto` means is decided in [`crate::device`]).
    pub device: Device,
    /// CPU threads (None: candle's default, the physical cores).
    pub threads: Option<usize>,
    /// Context length (prompt plus generated tokens); None: the model's own limit, capped
    /// at [`DEFAULT_MAX_CONTEXT`] (and on a GPU at what fits its memory).
    pub ctx: Option<usize>,
    /// Sequences the KV cache holds at once (`serve --parallel`), each of `ctx` tokens;
    /// 0 means 1. Engines that cannot batch hold one (see [`Engine::slots`]).
    pub slots: usize,
    /// A `tokenizer.json` to use instead of the one in the model.
    pub tokenizer: Option<PathBuf>,
    /// Engine settings beyond the device.
    pub engine: EngineOptions,
}

/// A model ready to generate.
pub struct LoadedModel {
    /// A short name: the file name without extension or Nix store hash (see [`model_id`]).
    pub id: String,
    pub tokenizer: Tokenizer,
    /// None when the model ships no template; chat requests must then fail.
    pub chat_template: Option<ChatTemplate>,
    /// Generation stops at any of these ids.
    pub eos_token_ids: Vec<u32>,
    pub engine: Box<dyn Engine>,
    /// What the files say about the model (size, type, shape), for the dashboard.
    pub facts: ModelFacts,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("id", &self.id)
            .field("tokenizer", &self.tokenizer)
            .field("has_chat_template", &self.chat_template.is_some())
            .field("eos_token_ids", &self.eos_token_ids)
            .field("device", &self.engine.device_description())
            .field("context_length", &self.engine.context_length())
            .finish()
    }
}

impl LoadedModel {
    /// The chat template, or the error to show when the model has none.
    pub fn chat_template(&self) -> Result<&ChatTemplate, ChatTemplateError> {
        self.chat_template
            .as_ref()
            .ok_or(ChatTemplateError::Missing)
    }

    /// Renders a conversation and tokenizes it, ready for generation.
    pub fn chat_prompt_tokens(&self, messages: &[ChatMessage]) -> anyhow::Result<Vec<u32>> {
        let text = self.chat_template()?.render(messages, true)?;
        self.tokenizer.encode_chat_prompt(&text)
    }
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model not found: {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a model: {reason}; expected a GGUF file or a directory with config.json, *.safetensors and tokenizer.json")]
    NotAModel { path: PathBuf, reason: String },
    #[error("{path} is a corrupt GGUF file: {reason}")]
    InvalidGguf { path: PathBuf, reason: String },
    #[error("{path} is truncated: {detail}; download it again")]
    Truncated { path: PathBuf, detail: String },
    #[error("unsupported model architecture `{architecture}` in {path}; supported: {supported}")]
    UnsupportedArchitecture {
        path: PathBuf,
        architecture: String,
        supported: String,
    },
    #[error("unsupported quantization {type_name} (tensor `{tensor}`) in {path}; supported tensor types: {}", gguf::SUPPORTED_TENSOR_TYPES)]
    UnsupportedQuantization {
        path: PathBuf,
        tensor: String,
        type_name: String,
    },
    #[error("{path} is not a valid `{architecture}` model: {reason}; the file is damaged or was converted wrongly, download or convert it again")]
    InvalidModel {
        path: PathBuf,
        architecture: String,
        reason: String,
    },
    #[error("{path} uses something xpu does not support yet: {reason}")]
    UnsupportedModel { path: PathBuf, reason: String },
    #[error("unsupported weight dtype {dtype} in {path}; supported: F32, F16, BF16")]
    UnsupportedDtype { path: PathBuf, dtype: String },
    #[error("invalid model config {path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("tokenizer does not match the model: {0}")]
    TokenizerMismatch(String),
    #[error("--ctx {requested} is larger than this model supports ({max} tokens)")]
    ContextTooLarge { requested: usize, max: usize },
    #[error("device: {0}")]
    Device(String),
    #[error("cannot build the model from {path}: {reason}")]
    Engine { path: PathBuf, reason: String },
}

impl LoadError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            LoadError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            LoadError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Loads the model at `path` (a `.gguf` file or a safetensors directory).
pub fn load(path: &Path, options: &LoadOptions) -> Result<LoadedModel, LoadError> {
    configure_cpu_threads(options.threads);
    let metadata = std::fs::metadata(path).map_err(|e| LoadError::io(path, e))?;
    let (mut model, model_vocab) = if metadata.is_dir() {
        safetensors::load_dir(path, options)?
    } else {
        load_gguf(path, options)?
    };
    if let Some(tokenizer_path) = &options.tokenizer {
        let mut tokenizer =
            Tokenizer::from_file(tokenizer_path).map_err(|e| LoadError::Tokenizer(e.0))?;
        tokenizer.set_special_token_strings(
            model.tokenizer.bos_token().map(str::to_string),
            model.tokenizer.eos_token().map(str::to_string),
        );
        model.tokenizer = tokenizer;
    }
    check_tokenizer_fits(&model, model_vocab)?;
    tracing::info!(
        model = %model.id,
        device = %model.engine.device_description(),
        context = model.engine.context_length(),
        eos = ?model.eos_token_ids,
        "model loaded"
    );
    Ok(model)
}

/// A tokenizer whose ids run past the model's vocabulary, or whose vocabulary is
/// far smaller than the model's, belongs to another model.
fn check_tokenizer_fits(model: &LoadedModel, model_vocab: Option<usize>) -> Result<(), LoadError> {
    let tokenizer_vocab = model.tokenizer.vocab_size();
    if let Some(model_vocab) = model_vocab {
        if tokenizer_vocab > model_vocab {
            return Err(LoadError::TokenizerMismatch(format!(
                "the tokenizer has {tokenizer_vocab} tokens but the model's vocabulary has only {model_vocab}"
            )));
        }
        // Padding the embedding to a multiple of 64 or 128 is common; a tokenizer
        // missing more than that is another model's.
        if tokenizer_vocab + 1024 < model_vocab {
            return Err(LoadError::TokenizerMismatch(format!(
                "the tokenizer has {tokenizer_vocab} tokens but the model's vocabulary has {model_vocab}"
            )));
        }
    }
    if let Some(&bad) = model
        .eos_token_ids
        .iter()
        .find(|&&id| id as usize >= tokenizer_vocab)
    {
        return Err(LoadError::TokenizerMismatch(format!(
            "end-of-sequence id {bad} is outside the tokenizer's {tokenizer_vocab} tokens"
        )));
    }
    Ok(())
}

/// The model's id: the file name without its extension (a directory's whole name),
/// and without the `<hash>-` prefix of a Nix store path, so that a file has the same
/// id in `~/models` and in `/nix/store` (`SmolLM2-135M-Instruct.Q4_1` for both
/// `SmolLM2-135M-Instruct.Q4_1.gguf` and `/nix/store/<hash>-SmolLM2-135M-Instruct.Q4_1.gguf`).
///
/// The file name, not the GGUF's `general.name`, because clients (as with ollama)
/// name models the way their files are named: `general.name` is free text
/// ("SmolLM2 135M Instruct"), often the same for every quantization of a model, and
/// absent from safetensors.
pub(crate) fn model_id(path: &Path, is_dir: bool) -> String {
    let name = if is_dir {
        path.file_name()
    } else {
        path.file_stem().or_else(|| path.file_name())
    };
    let name = name
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = strip_nix_store_hash(&name);
    if name.is_empty() {
        "model".to_string()
    } else {
        name.to_string()
    }
}

/// Removes the `<32 base-32 characters>-` prefix that every Nix store path's first
/// component has.
fn strip_nix_store_hash(name: &str) -> &str {
    // Nix's base-32 alphabet: digits and lower-case letters without e, o, u and t.
    const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let bytes = name.as_bytes();
    let has_hash =
        bytes.len() > 33 && bytes[32] == b'-' && bytes[..32].iter().all(|b| NIX_BASE32.contains(b));
    if has_hash {
        &name[33..]
    } else {
        name
    }
}

/// The context used without `--ctx`, at most: Llama 3.x files declare 131072 tokens, whose
/// KV cache would take gigabytes that few conversations use. `--ctx` gives more.
pub const DEFAULT_MAX_CONTEXT: usize = 8192;

/// Resolves `--ctx` against the model's own limit; without it, the model's limit capped at
/// [`DEFAULT_MAX_CONTEXT`] (logged).
pub(crate) fn resolve_context(requested: Option<usize>, max: usize) -> Result<usize, LoadError> {
    match requested {
        Some(0) => Err(LoadError::ContextTooLarge { requested: 0, max }),
        Some(n) if n > max => Err(LoadError::ContextTooLarge { requested: n, max }),
        Some(n) => Ok(n),
        None if max > DEFAULT_MAX_CONTEXT => {
            tracing::info!(
                "context {DEFAULT_MAX_CONTEXT}: the model's {max} capped at {DEFAULT_MAX_CONTEXT}; pass --ctx for more"
            );
            Ok(DEFAULT_MAX_CONTEXT)
        }
        None => Ok(max),
    }
}

/// Loads a GGUF file; also returns the vocabulary size of the weights.
fn load_gguf(
    path: &Path,
    options: &LoadOptions,
) -> Result<(LoadedModel, Option<usize>), LoadError> {
    let file = gguf::open(path)?;
    let content = &file.content;
    let description = describe(path, content)?;
    let architecture = description.arch.name.to_string();

    let tokenizer = if options.tokenizer.is_some() {
        // Replaced by the caller's tokenizer.json; keep the embedded one only for
        // its BOS/EOS strings when present.
        Tokenizer::from_gguf(content).ok()
    } else {
        Some(Tokenizer::from_gguf(content).map_err(|e| LoadError::Tokenizer(e.0))?)
    };
    let eos_token_ids = gguf_eos_ids(content);
    let chat_template = match gguf::metadata_str(content, "tokenizer.chat_template") {
        Some(source) => Some(
            ChatTemplate::new(
                source,
                tokenizer.as_ref().and_then(|t| t.bos_token()).unwrap_or(""),
                tokenizer.as_ref().and_then(|t| t.eos_token()).unwrap_or(""),
            )
            .map_err(|e| LoadError::InvalidGguf {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?,
        ),
        None => None,
    };
    // The embedding matrix has one row per vocabulary entry.
    let model_vocab = content
        .tensor_infos
        .get("token_embd.weight")
        .and_then(|t| t.shape.dims().first().copied());
    if let (Some(vocab), Some(tok)) = (model_vocab, tokenizer.as_ref()) {
        if options.tokenizer.is_none() && tok.vocab_size() != vocab {
            return Err(LoadError::TokenizerMismatch(format!(
                "the embedded tokenizer has {} tokens but the model's embedding has {vocab} rows",
                tok.vocab_size()
            )));
        }
    }
    let facts = ModelFacts::from_gguf(content, file.bytes().len() as u64);
    let max_context = description.hparams.context_length;

    let engine: Box<dyn Engine> = match options.device {
        #[cfg(feature = "vulkan")]
        Device::Vulkan => {
            // Only a --ctx is checked here: without one the engine picks the context that
            // fits the device (the model's, capped at DEFAULT_MAX_CONTEXT, or less).
            if let Some(ctx) = options.ctx {
                resolve_context(Some(ctx), max_context)?;
            }
            Box::new(crate::engine::vulkan::VulkanEngine::load(
                &file,
                options.ctx,
                options.slots,
                &options.engine.vulkan,
            )?)
        }
        #[cfg(not(feature = "vulkan"))]
        Device::Vulkan => return Err(vulkan_unavailable()),
        device => {
            let device = select_device(device).map_err(|e| LoadError::Device(format!("{e:#}")))?;
            // Every described architecture runs on the CPU on our own engine (crate xpu-cpu:
            // AVX2 kernels on the mapped weights, llama.cpp's greedy tokens, see
            // runner/tests/llama_cpp.rs), except mixtures of experts, which it does not run;
            // `--cpu-engine candle` selects candle instead (llama, qwen2, phi3 only).
            let experts = description
                .blocks
                .iter()
                .any(|b| matches!(b.ffn, arch::FeedForward::Experts { .. }));
            if device.is_cpu() && !experts && options.engine.cpu_engine == CpuEngine::Xpu {
                let ctx = resolve_context(options.ctx, max_context)?;
                let engine =
                    crate::engine::cpu::CpuLlamaEngine::from_gguf(file, Some(ctx), options.slots)
                        .map_err(|e| LoadError::Engine {
                        path: path.to_path_buf(),
                        reason: format!("{e:#}"),
                    })?;
                Box::new(engine)
            } else {
                let (mmap, content) = file.into_parts();
                let mut engine = CandleEngine::from_gguf(
                    &architecture,
                    content,
                    &mut Cursor::new(&mmap[..]),
                    device,
                    max_context,
                )
                .map_err(|e| LoadError::Engine {
                    path: path.to_path_buf(),
                    reason: format!("{e:#}"),
                })?;
                let ctx = resolve_context(options.ctx, engine.context_length())?;
                engine.limit_context(ctx);
                Box::new(engine)
            }
        }
    };
    let tokenizer = match tokenizer {
        Some(t) => t,
        // Placeholder until `load` installs the caller's tokenizer.json.
        None => Tokenizer::from_file(options.tokenizer.as_deref().expect("tokenizer path"))
            .map_err(|e| LoadError::Tokenizer(e.0))?,
    };
    let model = LoadedModel {
        id: model_id(path, false),
        tokenizer,
        chat_template,
        eos_token_ids,
        engine,
        facts,
    };
    Ok((model, model_vocab))
}

/// The model's description (`xpu_gguf::arch`): its hyper-parameters agree and every
/// tensor an engine reads is there with its shape, whichever engine runs it (candle's
/// builders would fail later, or only at the first token, or panic).
fn describe(
    path: &Path,
    content: &candle_core::quantized::gguf_file::Content,
) -> Result<ModelDesc, LoadError> {
    ModelDesc::read(content).map_err(|e| match e {
        ArchError::NoArchitecture => LoadError::InvalidGguf {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
        ArchError::UnknownArchitecture(architecture) => LoadError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            architecture,
            supported: format!(
                "GGUF {}; safetensors {}",
                arch::supported_architectures(),
                SAFETENSORS_ARCHITECTURES.join(", ")
            ),
        },
        ArchError::Unsupported(reason) => LoadError::UnsupportedModel {
            path: path.to_path_buf(),
            reason,
        },
        e => LoadError::InvalidModel {
            path: path.to_path_buf(),
            architecture: gguf::metadata_str(content, "general.architecture")
                .unwrap_or_default()
                .to_string(),
            reason: e.to_string(),
        },
    })
}

/// EOS, end-of-turn and end-of-message ids from the GGUF metadata.
fn gguf_eos_ids(content: &candle_core::quantized::gguf_file::Content) -> Vec<u32> {
    let mut ids: Vec<u32> = [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ]
    .iter()
    .filter_map(|key| gguf::metadata_u64(content, key))
    .filter_map(|id| u32::try_from(id).ok())
    .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The error for `--device vulkan` until the Vulkan engine is part of this build.
pub(crate) fn vulkan_unavailable() -> LoadError {
    if cfg!(feature = "vulkan") {
        LoadError::Device("the Vulkan engine cannot run this model yet".to_string())
    } else {
        LoadError::Device(
            "this xpu-runner was built without the `vulkan` feature; rebuild with `--features vulkan` or use --device cpu"
                .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_file_names_without_the_store_hash() {
        let id = |p: &str| model_id(Path::new(p), false);
        assert_eq!(
            id("/home/u/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "SmolLM2-135M-Instruct.Q4_1"
        );
        assert_eq!(
            id("/nix/store/0c7m4mcfkgjxn36pj0dyyh1ixq2hx5ij-SmolLM2-135M-Instruct.Q4_1.gguf"),
            "SmolLM2-135M-Instruct.Q4_1"
        );
        // Not a store hash: `e` is outside Nix's alphabet, or the name is too short.
        assert_eq!(
            id("/m/e0000000000000000000000000000000-x.gguf"),
            "e0000000000000000000000000000000-x"
        );
        assert_eq!(id("/m/abc-x.gguf"), "abc-x");
        assert_eq!(
            id("/nix/store/0c7m4mcfkgjxn36pj0dyyh1ixq2hx5ij-.gguf"),
            "0c7m4mcfkgjxn36pj0dyyh1ixq2hx5ij-"
        );
        let dir = |p: &str| model_id(Path::new(p), true);
        assert_eq!(
            dir("/nix/store/0c7m4mcfkgjxn36pj0dyyh1ixq2hx5ij-Qwen2.5-0.5B-Instruct"),
            "Qwen2.5-0.5B-Instruct"
        );
        assert_eq!(
            dir("/models/Qwen2.5-0.5B-Instruct/"),
            "Qwen2.5-0.5B-Instruct"
        );
    }
}
