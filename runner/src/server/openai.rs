//! OpenAI request and response types for `/v1/chat/completions`, `/v1/completions`
//! and `/v1/models`, and the validation that turns a request into a generation job.
//!
//! Unknown request fields are accepted and ignored (the official SDKs send many);
//! fields we cannot honour (`n > 1`, `logprobs`, `tools`, `logit_bias`, JSON
//! `response_format`) are rejected with a 400 that names them instead of being
//! silently ignored. No field names a file: the model is chosen by id only.

use serde::{Deserialize, Serialize};

use super::backend::sampling_params;
use super::errors::ApiError;
use super::queue::{FinishReason, SamplingRequest};

/// `stop`: one string or a list of strings.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// Message `content`: a string or a list of content parts (only text parts).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug, Clone)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `response_format`: only `{"type":"text"}` is supported.
#[derive(Deserialize, Debug, Clone)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
}

/// Sampling and length fields shared by both generation routes.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct CommonParams {
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<serde_json::Value>,
    pub top_logprobs: Option<serde_json::Value>,
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    pub tools: Option<Vec<serde_json::Value>>,
    pub response_format: Option<ResponseFormat>,
    pub echo: Option<bool>,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
}

/// `prompt` of `/v1/completions`: a string, a list with one string, or token ids.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// What a validated request asks the engine for (the prompt still to be tokenized).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedParams {
    pub sampling: SamplingRequest,
    pub stop: Vec<String>,
    /// `None`: up to the end of the context.
    pub max_tokens: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

const MAX_STOP_STRINGS: usize = 4;

impl CommonParams {
    /// Checks every field and converts it; errors name the parameter.
    pub fn validate(&self) -> Result<ValidatedParams, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid_param(
                    "n",
                    format!(
                        "`n` must be 1: this server generates one choice per request (got {n}); \
                         send {n} requests instead"
                    ),
                ));
            }
        }
        if let Some(b) = self.best_of {
            if b != 1 {
                return Err(ApiError::invalid_param("best_of", "`best_of` must be 1"));
            }
        }
        match &self.logprobs {
            None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => {}
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "logprobs",
                    "`logprobs` is not supported by this server; leave it out or set it to false",
                ))
            }
        }
        if matches!(&self.top_logprobs, Some(v) if !v.is_null() && v != &serde_json::json!(0)) {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "`top_logprobs` is not supported by this server",
            ));
        }
        if matches!(&self.logit_bias, Some(m) if !m.is_empty()) {
            return Err(ApiError::invalid_param(
                "logit_bias",
                "`logit_bias` is not supported by this server",
            ));
        }
        if matches!(&self.tools, Some(t) if !t.is_empty()) {
            return Err(ApiError::invalid_param(
                "tools",
                "tool calls are not supported by this server yet; leave out `tools`",
            ));
        }
        if let Some(f) = &self.response_format {
            if f.kind != "text" {
                return Err(ApiError::invalid_param(
                    "response_format",
                    format!(
                        "`response_format` type `{}` is not supported; only `text` is",
                        f.kind
                    ),
                ));
            }
        }
        if self.echo == Some(true) {
            return Err(ApiError::invalid_param("echo", "`echo` is not supported"));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_param(
                "suffix",
                "`suffix` (insertion) is not supported",
            ));
        }
        let top_k = match self.top_k {
            None => None,
            Some(k) if k < 0 => {
                return Err(ApiError::invalid_param(
                    "top_k",
                    format!("`top_k` must be 0 (off) or positive, got {k}"),
                ))
            }
            Some(0) => None,
            Some(k) => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        };
        // Negative seeds are accepted as their two's-complement bit pattern, as the
        // OpenAI API allows any 64-bit integer.
        let seed = self.seed.map(|s| s as u64);
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => Some(("max_completion_tokens", v)),
            (None, Some(v)) => Some(("max_tokens", v)),
            (None, None) => None,
        };
        let max_tokens = match max_tokens {
            None => None,
            Some((param, v)) if v < 1 => {
                return Err(ApiError::invalid_param(
                    param,
                    format!("`{param}` must be at least 1, got {v}"),
                ))
            }
            Some((_, v)) => Some(usize::try_from(v).unwrap_or(usize::MAX)),
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid_param(
                "stop",
                format!(
                    "`stop` may hold at most {MAX_STOP_STRINGS} strings, got {}",
                    stop.len()
                ),
            ));
        }
        if stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::invalid_param(
                "stop",
                "`stop` strings must not be empty",
            ));
        }
        let stream = self.stream.unwrap_or(false);
        let include_usage = match &self.stream_options {
            Some(_) if !stream => {
                return Err(ApiError::invalid_param(
                    "stream_options",
                    "`stream_options` is only allowed when `stream` is true",
                ));
            }
            Some(o) => o.include_usage,
            None => false,
        };
        let sampling = SamplingRequest {
            temperature: self.temperature,
            top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed,
        };
        // The ranges are the sampler's own, checked in one place for every front end.
        sampling_params(&sampling).validate().map_err(|e| {
            ApiError::invalid_param(e.name, format!("`{}` = {}: {}", e.name, e.value, e.allowed))
        })?;
        Ok(ValidatedParams {
            sampling,
            stop,
            max_tokens,
            stream,
            include_usage,
        })
    }
}

/// A chat message reduced to the text the template needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainMessage {
    pub role: String,
    pub content: String,
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// The messages as role + text; errors name the message (`messages[2].content`).
pub fn plain_messages(messages: &[ChatMessageIn]) -> Result<Vec<PlainMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(ApiError::invalid_param(
                format!("messages[{i}].role"),
                format!(
                    "unknown role `{}`; use one of system, developer, user, assistant, tool",
                    m.role
                ),
            ));
        }
        let content = match &m.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        ("text", None) => {
                            return Err(ApiError::invalid_param(
                                format!("messages[{i}].content[{j}].text"),
                                "a text part needs a `text` field",
                            ))
                        }
                        (other, _) => {
                            return Err(ApiError::invalid_param(
                                format!("messages[{i}].content[{j}].type"),
                                format!(
                                    "content part type `{other}` is not supported; only `text` is"
                                ),
                            ))
                        }
                    }
                }
                text
            }
        };
        // `developer` is OpenAI's new name for `system`; templates know `system`.
        let role = if m.role == "developer" {
            "system".to_owned()
        } else {
            m.role.clone()
        };
        out.push(PlainMessage { role, content });
    }
    Ok(out)
}

/// A prompt for `/v1/completions`: text to tokenize, or ready token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl PromptField {
    pub fn prompt_input(&self) -> Result<PromptInput, ApiError> {
        let batch_error = || {
            ApiError::invalid_param(
                "prompt",
                "`prompt` must be one prompt: batches of several prompts are not supported; send one request per prompt",
            )
        };
        match self {
            PromptField::Text(t) => Ok(PromptInput::Text(t.clone())),
            PromptField::Texts(v) if v.len() == 1 => Ok(PromptInput::Text(v[0].clone())),
            PromptField::Texts(_) => Err(batch_error()),
            PromptField::Tokens(t) if !t.is_empty() => Ok(PromptInput::Tokens(t.clone())),
            PromptField::Tokens(_) => Err(ApiError::invalid_param(
                "prompt",
                "`prompt` must not be empty",
            )),
            PromptField::TokenLists(v) if v.len() == 1 && !v[0].is_empty() => {
                Ok(PromptInput::Tokens(v[0].clone()))
            }
            PromptField::TokenLists(_) => Err(batch_error()),
        }
    }
}

// ---------------------------------------------------------------- responses

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// How the prompt was processed, as OpenAI reports it.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose keys and values were reused from the prompt cache.
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }

    pub fn of(outcome: &super::queue::Outcome) -> Self {
        Self::new(
            outcome.prompt_tokens,
            outcome.completion_tokens,
            outcome.cached_tokens,
        )
    }
}

pub fn finish_reason_str(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        // Only seen when the server stops a generation (shutdown timeout).
        FinishReason::Cancelled => "abort",
    }
}

#[derive(Serialize, Debug)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Serialize, Debug)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: &'static str,
    pub logprobs: Option<()>,
}

#[derive(Serialize, Debug)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Serialize, Debug, Default)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<&'static str>,
    pub logprobs: Option<()>,
}

#[derive(Serialize, Debug)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    /// Present (as null) on every chunk when usage was asked for, as OpenAI does;
    /// the last chunk carries the numbers and no choices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Serialize, Debug)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub finish_reason: Option<&'static str>,
    pub logprobs: Option<()>,
}

#[derive(Serialize, Debug)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

#[derive(Serialize, Debug)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: serde_json::Value) -> CommonParams {
        serde_json::from_value(json).unwrap()
    }

    fn messages(json: serde_json::Value) -> Vec<ChatMessageIn> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn n_greater_than_one_is_explained() {
        let e = params(serde_json::json!({"n":2})).validate().unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"));
        assert!(e.message.contains("one choice"));
    }

    #[test]
    fn max_completion_tokens_wins_and_unknown_fields_are_ignored() {
        let p = params(
            serde_json::json!({"max_tokens": 9, "max_completion_tokens": 3, "user": "u",
            "parallel_tool_calls": true}),
        );
        assert_eq!(p.validate().unwrap().max_tokens, Some(3));
    }

    #[test]
    fn ranges_name_the_parameter() {
        for (field, value) in [
            ("temperature", 3.0),
            ("top_p", 1.5),
            ("top_p", -0.1),
            ("min_p", -0.1),
            ("presence_penalty", 2.5),
            ("frequency_penalty", -3.0),
            ("repetition_penalty", 0.0),
        ] {
            let mut j = serde_json::json!({});
            j[field] = serde_json::json!(value);
            let e = params(j).validate().unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field));
            assert!(e.message.contains(field), "{}", e.message);
        }
    }

    #[test]
    fn ranges_are_the_samplers() {
        // The sampler documents top_p = 0 as "only the most probable token", and OpenAI
        // accepts 0 to 1: the API must not be stricter than the sampler.
        let p = params(serde_json::json!({"top_p": 0.0}))
            .validate()
            .unwrap();
        assert_eq!(p.sampling.top_p, Some(0.0));
        params(serde_json::json!({"top_p": 1.0, "temperature": 0.0, "min_p": 1.0}))
            .validate()
            .unwrap();
        let e = params(serde_json::json!({"top_p": 1.5}))
            .validate()
            .unwrap_err();
        assert!(e.message.contains("0 to 1"), "{}", e.message);
    }

    #[test]
    fn content_parts_and_roles() {
        let m = messages(serde_json::json!([
            {"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]));
        assert_eq!(
            plain_messages(&m).unwrap(),
            vec![PlainMessage {
                role: "system".into(),
                content: "ab".into()
            }]
        );
        let m = messages(serde_json::json!([{"role":"wizard","content":"x"}]));
        assert_eq!(
            plain_messages(&m).unwrap_err().param.as_deref(),
            Some("messages[0].role")
        );
        let m = messages(serde_json::json!([{"role":"user","content":[{"type":"image_url"}]}]));
        assert_eq!(
            plain_messages(&m).unwrap_err().param.as_deref(),
            Some("messages[0].content[0].type")
        );
    }

    #[test]
    fn completion_prompts() {
        let p: PromptField = serde_json::from_value(serde_json::json!(["a", "b"])).unwrap();
        assert_eq!(
            p.prompt_input().unwrap_err().param.as_deref(),
            Some("prompt")
        );
        let p: PromptField = serde_json::from_value(serde_json::json!([1, 2, 3])).unwrap();
        assert_eq!(
            p.prompt_input().unwrap(),
            PromptInput::Tokens(vec![1, 2, 3])
        );
    }

    #[test]
    fn stream_options_need_stream() {
        let p = params(serde_json::json!({"stream_options":{"include_usage":true}}));
        assert_eq!(
            p.validate().unwrap_err().param.as_deref(),
            Some("stream_options")
        );
    }
}
