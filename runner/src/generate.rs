//! The generation loop shared by every engine and front end: prefill the prompt,
//! then sample, check stop conditions and stream text one token at a time.
//!
//! It stops at the first of: an end-of-sequence id from the model's metadata, a
//! stop string (matched across token boundaries; text that may be the start of a
//! stop string is held back), `max_new_tokens`, the end of the context, or the
//! caller returning [`ControlFlow::Break`] from `on_token` (cancellation).

use std::ops::ControlFlow;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::model::{LoadedModel, StreamDecoder};
use crate::sampling::{Sampler, SamplingParams};
use crate::stop::StopMatcher;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The tokenized prompt (chat template already applied).
    pub prompt_tokens: Vec<u32>,
    pub sampling: SamplingParams,
    /// Generation ends before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    pub max_new_tokens: usize,
    /// With each token, report this many most likely tokens of the model's distribution
    /// (before sampling) and their log-probabilities ([`TokenEvent::top_logprobs`]); 0: none.
    pub top_logprobs: usize,
}

/// One generated token and the text that may be shown for it now.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub token_id: u32,
    /// The safe-to-emit text delta: complete characters, never part of a stop
    /// string. It may be empty, and later events may carry text held back earlier.
    pub text: String,
    /// True only for the closing event that releases text held back until the end
    /// (a possible stop-string start, an unfinished character): it is not a new
    /// token and repeats the last token's id.
    pub flush: bool,
    /// The `top_logprobs` most likely tokens at this step, most likely first, with their
    /// natural-log probabilities (empty unless the request asked for them, and for flushes).
    pub top_logprobs: Vec<(u32, f32)>,
}

/// The `n` largest entries of `log_softmax(logits)`, largest first.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = max
        + logits
            .iter()
            .map(|&x| ((x - max) as f64).exp())
            .sum::<f64>()
            .ln() as f32;
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let n = n.min(ids.len());
    if n == 0 {
        return Vec::new();
    }
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    ids.select_nth_unstable_by(n - 1, by_logit);
    ids.truncate(n);
    ids.sort_by(by_logit);
    ids.into_iter()
        .map(|id| (id, logits[id as usize] - log_sum))
        .collect()
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_new_tokens` or the end of the context.
    Length,
    /// `on_token` asked to stop.
    Cancelled,
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct GenerationOutcome {
    /// All generated text (the concatenation of the events' text), without the
    /// stop string that ended it.
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// Time to run the prompt through the model.
    pub prefill_seconds: f64,
    /// Time for everything after the prefill: sampling and the decode steps.
    pub decode_seconds: f64,
}

/// A request the model cannot serve as asked.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt_tokens} tokens, which exceeds the available context size ({context_length} tokens); shorten it or raise --ctx")]
    ContextOverflow {
        prompt_tokens: usize,
        context_length: usize,
    },
    #[error("invalid sampling parameter: {0}")]
    Sampling(String),
}

/// Generates a completion of `request.prompt_tokens`, calling `on_token` after
/// each generated token. The model's KV cache is reset first.
pub fn generate(
    model: &mut LoadedModel,
    request: &GenerationRequest,
    mut on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
) -> anyhow::Result<GenerationOutcome> {
    let prompt = &request.prompt_tokens;
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt.into());
    }
    let context_length = model.engine.context_length();
    if prompt.len() >= context_length {
        return Err(GenerateError::ContextOverflow {
            prompt_tokens: prompt.len(),
            context_length,
        }
        .into());
    }
    let mut sampler = Sampler::new(request.sampling.clone())
        .map_err(|e| GenerateError::Sampling(e.to_string()))?;
    let mut stop = StopMatcher::new(request.stop.clone());
    let mut decoder = StreamDecoder::new();

    let mut outcome = GenerationOutcome {
        text: String::new(),
        prompt_tokens: prompt.len(),
        completion_tokens: 0,
        finish_reason: FinishReason::Length,
        prefill_seconds: 0.0,
        decode_seconds: 0.0,
    };
    if request.max_new_tokens == 0 {
        return Ok(outcome);
    }

    model.engine.reset()?;
    let prefill_start = Instant::now();
    let mut logits = model.engine.forward(prompt, 0)?;
    outcome.prefill_seconds = prefill_start.elapsed().as_secs_f64();

    let decode_start = Instant::now();
    let mut generated: Vec<u32> = Vec::new();
    let mut position = prompt.len();
    loop {
        let top = top_logprobs(&logits, request.top_logprobs);
        let token = sampler.sample(&mut logits, &generated);
        if model.eos_token_ids.contains(&token) {
            outcome.finish_reason = FinishReason::Stop;
            break;
        }
        generated.push(token);
        outcome.completion_tokens += 1;

        let delta = decoder.push(&model.tokenizer, token)?;
        let step = stop.push(&delta);
        outcome.text.push_str(&step.text);
        let event = TokenEvent {
            token_id: token,
            text: step.text,
            flush: false,
            top_logprobs: top,
        };
        let flow = on_token(&event);
        if step.stopped {
            outcome.finish_reason = FinishReason::Stop;
            break;
        }
        if flow.is_break() {
            outcome.finish_reason = FinishReason::Cancelled;
            break;
        }
        // The next forward step would write position `position`.
        if outcome.completion_tokens >= request.max_new_tokens || position >= context_length {
            outcome.finish_reason = FinishReason::Length;
            break;
        }
        logits = model.engine.forward(&[token], position)?;
        position += 1;
    }

    // Text held back (a possible stop-string start, an unfinished character) is
    // released when generation ends for any reason other than a stop string.
    if outcome.finish_reason != FinishReason::Stop || !stop.is_stopped() {
        let mut rest = decoder.flush(&model.tokenizer)?;
        let step = stop.push(&rest);
        rest = step.text;
        if !step.stopped {
            rest.push_str(&stop.finish());
        }
        if !rest.is_empty() {
            outcome.text.push_str(&rest);
            let last = generated.last().copied().unwrap_or_default();
            let _ = on_token(&TokenEvent {
                token_id: last,
                text: rest,
                flush: true,
                top_logprobs: Vec::new(),
            });
        }
    }
    outcome.decode_seconds = decode_start.elapsed().as_secs_f64();
    Ok(outcome)
}
