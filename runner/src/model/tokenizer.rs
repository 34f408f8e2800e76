//! Tokenizers: from GGUF metadata (gpt2 byte-level BPE through candle, SentencePiece
//! built here) or from a Hugging Face `tokenizer.json`, behind one small wrapper.
//!
//! SentencePiece GGUFs (`tokenizer.ggml.model == "llama"`) carry pieces and scores
//! but no merges. llama.cpp tokenizes them by repeatedly merging the adjacent pair
//! whose merged piece has the highest score, with byte fallback to `<0xXX>` pieces.
//! A BPE whose merges are ranked by the score of the merged piece does exactly that,
//! which is how Hugging Face converts these vocabularies too.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper};

/// A tokenizer problem: the file has none, or it cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenizerError(pub String);

fn err(msg: impl Into<String>) -> TokenizerError {
    TokenizerError(msg.into())
}

/// Text ⇄ token ids for one model.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, TokenizerError> {
        let kind = match content.metadata.get("tokenizer.ggml.model") {
            Some(v) => v
                .to_string()
                .map_err(|_| err("GGUF key `tokenizer.ggml.model` is not a string"))?
                .to_lowercase(),
            None => {
                return Err(err(
                    "the GGUF file has no embedded tokenizer (no `tokenizer.ggml.model`); pass --tokenizer with a tokenizer.json",
                ))
            }
        };
        let tokens = string_array(content, "tokenizer.ggml.tokens")?;
        let inner = match kind.as_str() {
            "gpt2" => {
                let mut tokenizer = tokenizers::Tokenizer::from_gguf(content).map_err(|e| {
                    err(format!(
                        "cannot build the GGUF gpt2 tokenizer: {}",
                        e.to_string().lines().next().unwrap_or_default()
                    ))
                })?;
                let pre = content
                    .metadata
                    .get("tokenizer.ggml.pre")
                    .and_then(|v| v.to_string().ok())
                    .map(String::as_str)
                    .unwrap_or("gpt2");
                if let Some(pre_tokenizer) = llama_cpp_pre_tokenizer(pre) {
                    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
                }
                tokenizer
            }
            "llama" => sentencepiece_from_gguf(content, &tokens)?,
            other => {
                return Err(err(format!(
                    "unsupported GGUF tokenizer model `{other}`; supported: gpt2 (byte-level BPE), llama (SentencePiece)"
                )))
            }
        };
        let token_at =
            |key: &str| metadata_u32(content, key).and_then(|id| tokens.get(id as usize).cloned());
        Ok(Self {
            inner,
            bos_token: token_at("tokenizer.ggml.bos_token_id"),
            eos_token: token_at("tokenizer.ggml.eos_token_id"),
        })
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| err(format!("cannot read tokenizer {}: {e}", path.display())))?;
        Ok(Self {
            inner,
            bos_token: None,
            eos_token: None,
        })
    }

    /// Sets the strings of the BOS/EOS tokens (from `tokenizer_config.json`).
    pub fn set_special_token_strings(&mut self, bos: Option<String>, eos: Option<String>) {
        if bos.is_some() {
            self.bos_token = bos;
        }
        if eos.is_some() {
            self.eos_token = eos;
        }
    }

    /// The text of the BOS token, if the model has one.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The text of the EOS token, if the model has one.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Number of ids, including added (special) tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token given by its text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes text. `add_special_tokens` applies the model's post-processor (for
    /// example a BOS token in front); special tokens written in the text, such as
    /// `<|im_start|>`, are always recognised.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> anyhow::Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow::anyhow!("cannot tokenize the prompt: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes a rendered chat template. A template that writes the BOS token itself
    /// must not get a second one from the post-processor.
    pub fn encode_chat_prompt(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let starts_with_bos = self
            .bos_token()
            .is_some_and(|bos| !bos.is_empty() && text.starts_with(bos));
        self.encode(text, !starts_with_bos)
    }

    /// Decodes ids to text, leaving out special tokens when `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> anyhow::Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow::anyhow!("cannot decode tokens: {e}"))
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Turns a stream of generated ids into text deltas that never split a UTF-8
/// character or a multi-token piece (the decoder of the whole window is compared
/// with the decoder of its prefix, as text-generation-inference does).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one id and returns the text that is now complete (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> anyhow::Result<String> {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], true)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Text held back so far (an incomplete character at the very end), decoded
    /// lossily; call once the stream has ended.
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> anyhow::Result<String> {
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], true)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or_default().to_string())
    }
}

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`, where candle's
/// differs. candle handles `qwen2` and `llama3`-style pre-tokenizers exactly;
/// for the others it falls back to a GPT-2 ByteLevel step that adds a space in
/// front of every stretch of text, which llama.cpp never does, and it does not
/// split digits for the `smollm` family.
fn llama_cpp_pre_tokenizer(pre: &str) -> Option<PreTokenizerWrapper> {
    // add_prefix_space = false, trim_offsets = true, use_regex = true (GPT-2 regex).
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        "qwen2" | "llama3" | "smaug-bpe" | "lfm2" => None,
        // llama.cpp splits every digit out first (`\p{N}`), then applies GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => {
            Some(PreSequence::new(vec![Digits::new(true).into(), byte_level.into()]).into())
        }
        _ => Some(byte_level.into()),
    }
}

fn string_array(content: &gguf_file::Content, key: &str) -> Result<Vec<String>, TokenizerError> {
    let value = content.metadata.get(key).ok_or_else(|| {
        err(format!(
            "the GGUF file has no embedded tokenizer (no `{key}`); pass --tokenizer with a tokenizer.json"
        ))
    })?;
    let items = value
        .to_vec()
        .map_err(|_| err(format!("GGUF key `{key}` is not an array")))?;
    items
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|_| err(format!("GGUF key `{key}` holds a non-string")))
        })
        .collect()
}

fn metadata_u32(content: &gguf_file::Content, key: &str) -> Option<u32> {
    use gguf_file::Value::*;
    match content.metadata.get(key)? {
        U8(v) => Some(*v as u32),
        U16(v) => Some(*v as u32),
        U32(v) => Some(*v),
        U64(v) => u32::try_from(*v).ok(),
        I8(v) => u32::try_from(*v).ok(),
        I16(v) => u32::try_from(*v).ok(),
        I32(v) => u32::try_from(*v).ok(),
        I64(v) => u32::try_from(*v).ok(),
        _ => None,
    }
}

fn metadata_bool(content: &gguf_file::Content, key: &str) -> Option<bool> {
    content.metadata.get(key).and_then(|v| v.to_bool().ok())
}

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: u32 = 3;
const TOKEN_TYPE_USER_DEFINED: u32 = 4;

/// Builds a SentencePiece (llama.cpp "SPM") tokenizer from GGUF pieces and scores.
fn sentencepiece_from_gguf(
    content: &gguf_file::Content,
    tokens: &[String],
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let scores: Vec<f32> = match content.metadata.get("tokenizer.ggml.scores") {
        Some(v) => v
            .to_vec()
            .map_err(|_| err("GGUF key `tokenizer.ggml.scores` is not an array"))?
            .iter()
            .map(|s| {
                s.to_f32()
                    .map_err(|_| err("GGUF `tokenizer.ggml.scores` holds a non-f32"))
            })
            .collect::<Result<_, _>>()?,
        None => {
            return Err(err(
                "SentencePiece GGUF tokenizer lacks `tokenizer.ggml.scores`",
            ))
        }
    };
    if scores.len() != tokens.len() {
        return Err(err(format!(
            "GGUF tokenizer has {} pieces but {} scores",
            tokens.len(),
            scores.len()
        )));
    }
    let token_types: Vec<u32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|_| err("GGUF key `tokenizer.ggml.token_type` is not an array"))?
            .iter()
            .map(|t| {
                t.to_i32()
                    .map(|t| t as u32)
                    .or_else(|_| t.to_u32())
                    .unwrap_or(1)
            })
            .collect(),
        None => vec![1; tokens.len()],
    };

    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    // Every split of every piece into two pieces that both exist is a merge; the
    // higher the merged piece's score, the earlier the merge applies.
    let mut merges: Vec<(f32, u32, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if matches!(
            token_types.get(id),
            Some(&TOKEN_TYPE_CONTROL) | Some(&TOKEN_TYPE_USER_DEFINED)
        ) {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                merges.push((scores[id], id as u32, left.to_string(), right.to_string()));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges: Vec<(String, String)> = merges.into_iter().map(|(_, _, l, r)| (l, r)).collect();

    let unk_id = metadata_u32(content, "tokenizer.ggml.unknown_token_id").unwrap_or(0);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab.clone(), merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = tokens.get(unk_id as usize) {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| err(format!("cannot build the SentencePiece tokenizer: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);

    // " " → "▁", with "▁" in front of the text when the model asks for it (llama.cpp
    // `tokenizer.ggml.add_space_prefix`, default true). llama.cpp prefixes every
    // stretch of plain text that starts the input or follows a special token, which
    // is what `Always` does to the pieces between special tokens.
    let add_space_prefix =
        metadata_bool(content, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
    let scheme = if add_space_prefix {
        PrependScheme::Always
    } else {
        PrependScheme::Never
    };
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ")
            .map_err(|e| err(format!("tokenizer decoder: {e}")))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));

    // Control pieces (`<s>`, `<|im_start|>` …) and user-defined pieces are matched
    // whole in the text; only control pieces are left out when decoding.
    let pieces_of_type = |wanted: u32| -> Vec<AddedToken> {
        tokens
            .iter()
            .enumerate()
            .filter(|(id, _)| token_types.get(*id) == Some(&wanted))
            .map(|(_, t)| AddedToken::from(t.clone(), wanted == TOKEN_TYPE_CONTROL))
            .collect()
    };
    tokenizer
        .add_special_tokens(pieces_of_type(TOKEN_TYPE_CONTROL))
        .and_then(|_| tokenizer.add_tokens(pieces_of_type(TOKEN_TYPE_USER_DEFINED)))
        .map_err(|e| err(format!("cannot add special tokens: {e}")))?;

    // llama.cpp adds BOS for SentencePiece vocabularies unless told not to.
    let add_bos = metadata_bool(content, "tokenizer.ggml.add_bos_token").unwrap_or(true);
    let bos = metadata_u32(content, "tokenizer.ggml.bos_token_id")
        .and_then(|id| tokens.get(id as usize).map(|t| (t.clone(), id)));
    if let (true, Some((bos, bos_id))) = (add_bos, bos) {
        let processor = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .and_then(|b| b.try_pair(format!("{bos} $A {bos} $B")))
            .map_err(|e| err(format!("tokenizer post-processor: {e}")))?
            .special_tokens(vec![(bos.clone(), bos_id)])
            .build()
            .map_err(|e| err(format!("tokenizer post-processor: {e}")))?;
        tokenizer.with_post_processor(Some(processor));
    }
    Ok(tokenizer)
}
