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

use crate::model::{LoadedModel, StreamDecoder, Tokenizer};
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

/// One sequence's generation state between forward passes: its sampler, stop matcher,
/// stream decoder, outcome and position. The CLI's [`generate`] and the server's batching
/// scheduler both drive it, so sampling and stopping exist once.
///
/// The caller runs the prompt through the engine, hands the logits of its last token to
/// [`Sequence::step`], forwards [`Sequence::next_input`] and hands the next logits in, until
/// a step says the sequence has finished; [`Sequence::finish`] then releases the text
/// held back.
pub struct Sequence {
    sampler: Sampler,
    stop: StopMatcher,
    decoder: StreamDecoder,
    generated: Vec<u32>,
    outcome: GenerationOutcome,
    max_new_tokens: usize,
    top_logprobs: usize,
    context_length: usize,
    /// Tokens whose keys and values the engine holds once the next input is forwarded.
    position: usize,
}

/// What one step of a sequence produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The generated token and its text (None when the model ended the sequence with an
    /// end-of-sequence id, which is not part of the answer).
    pub event: Option<TokenEvent>,
    /// Set when the sequence ends with this step (a stop, `max_new_tokens`, the end of the
    /// context); otherwise [`Sequence::next_input`] goes into the next forward pass.
    pub finished: Option<FinishReason>,
}

impl Sequence {
    /// Checks the request against an engine slot of `context_length` tokens.
    pub fn new(request: &GenerationRequest, context_length: usize) -> Result<Self, GenerateError> {
        let prompt = &request.prompt_tokens;
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if prompt.len() >= context_length {
            return Err(GenerateError::ContextOverflow {
                prompt_tokens: prompt.len(),
                context_length,
            });
        }
        let sampler = Sampler::new(request.sampling.clone())
            .map_err(|e| GenerateError::Sampling(e.to_string()))?;
        Ok(Sequence {
            sampler,
            stop: StopMatcher::new(request.stop.clone()),
            decoder: StreamDecoder::new(),
            generated: Vec::new(),
            outcome: GenerationOutcome {
                text: String::new(),
                prompt_tokens: prompt.len(),
                completion_tokens: 0,
                finish_reason: FinishReason::Length,
                prefill_seconds: 0.0,
                decode_seconds: 0.0,
            },
            max_new_tokens: request.max_new_tokens,
            top_logprobs: request.top_logprobs,
            context_length,
            position: prompt.len(),
        })
    }

    /// Whether the request asks for no token at all (then no forward pass is needed).
    pub fn wants_no_tokens(&self) -> bool {
        self.max_new_tokens == 0
    }

    /// Whether the next token is the greedy token of the logits alone (temperature 0, no
    /// penalties, no log-probabilities to report): then the engine may pick it
    /// ([`Readback::Greedy`](crate::engine::Readback::Greedy)) and the caller hand it to
    /// [`step_token`](Self::step_token) instead of the logits to [`step`](Self::step).
    pub fn picks_greedily(&self) -> bool {
        self.sampler.params().is_plain_greedy() && self.top_logprobs == 0
    }

    /// Samples from the logits of the sequence's last forwarded token and checks the stop
    /// conditions.
    pub fn step(
        &mut self,
        mut logits: Vec<f32>,
        tokenizer: &Tokenizer,
        eos_token_ids: &[u32],
    ) -> anyhow::Result<Step> {
        let top = top_logprobs(&logits, self.top_logprobs);
        let token = self.sampler.sample(&mut logits, &self.generated);
        self.accept(token, top, tokenizer, eos_token_ids)
    }

    /// As [`step`](Self::step), with the token the engine picked greedily from the logits
    /// (only for a sequence that [`picks_greedily`](Self::picks_greedily)).
    pub fn step_token(
        &mut self,
        token: u32,
        tokenizer: &Tokenizer,
        eos_token_ids: &[u32],
    ) -> anyhow::Result<Step> {
        anyhow::ensure!(
            self.picks_greedily(),
            "a token picked by the engine was handed to a sequence that samples from its logits"
        );
        self.accept(token, Vec::new(), tokenizer, eos_token_ids)
    }

    /// Takes `token` as the next one (with the log-probabilities reported for its step) and
    /// checks the stop conditions.
    fn accept(
        &mut self,
        token: u32,
        top: Vec<(u32, f32)>,
        tokenizer: &Tokenizer,
        eos_token_ids: &[u32],
    ) -> anyhow::Result<Step> {
        if eos_token_ids.contains(&token) {
            self.outcome.finish_reason = FinishReason::Stop;
            return Ok(Step {
                event: None,
                finished: Some(FinishReason::Stop),
            });
        }
        self.generated.push(token);
        self.outcome.completion_tokens += 1;

        let delta = self.decoder.push(tokenizer, token)?;
        let stop = self.stop.push(&delta);
        self.outcome.text.push_str(&stop.text);
        let event = TokenEvent {
            token_id: token,
            text: stop.text,
            flush: false,
            top_logprobs: top,
        };
        // The next forward pass would write position `self.position`.
        let finished = if stop.stopped {
            Some(FinishReason::Stop)
        } else if self.outcome.completion_tokens >= self.max_new_tokens
            || self.position >= self.context_length
        {
            Some(FinishReason::Length)
        } else {
            None
        };
        if let Some(reason) = finished {
            self.outcome.finish_reason = reason;
        } else {
            self.position += 1;
        }
        Ok(Step {
            event: Some(event),
            finished,
        })
    }

    /// The token the next forward pass runs for this sequence, and its position.
    pub fn next_input(&self) -> (u32, usize) {
        (
            self.generated.last().copied().unwrap_or_default(),
            self.position - 1,
        )
    }

    /// Ends the sequence early: its caller stops it (a client gone, a shutdown).
    pub fn cancel(&mut self) {
        self.outcome.finish_reason = FinishReason::Cancelled;
    }

    /// Releases the text held back (a possible stop-string start, an unfinished character)
    /// when the sequence ends for any reason other than a stop string, as a closing
    /// [`TokenEvent::flush`] event; returns the outcome and that event.
    pub fn finish(
        mut self,
        tokenizer: &Tokenizer,
    ) -> anyhow::Result<(GenerationOutcome, Option<TokenEvent>)> {
        let mut flush = None;
        if self.outcome.finish_reason != FinishReason::Stop || !self.stop.is_stopped() {
            let mut rest = self.decoder.flush(tokenizer)?;
            let step = self.stop.push(&rest);
            rest = step.text;
            if !step.stopped {
                rest.push_str(&self.stop.finish());
            }
            if !rest.is_empty() {
                self.outcome.text.push_str(&rest);
                flush = Some(TokenEvent {
                    token_id: self.generated.last().copied().unwrap_or_default(),
                    text: rest,
                    flush: true,
                    top_logprobs: Vec::new(),
                });
            }
        }
        Ok((self.outcome, flush))
    }
}

/// Generates a completion of `request.prompt_tokens`, calling `on_token` after
/// each generated token. The model's KV cache is reset first.
pub fn generate(
    model: &mut LoadedModel,
    request: &GenerationRequest,
    mut on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
) -> anyhow::Result<GenerationOutcome> {
    let mut sequence = Sequence::new(request, model.engine.context_length())?;
    if sequence.wants_no_tokens() {
        return Ok(sequence.finish(&model.tokenizer)?.0);
    }

    model.engine.reset()?;
    let prefill_start = Instant::now();
    let mut logits = model.engine.forward(&request.prompt_tokens, 0)?;
    let prefill_seconds = prefill_start.elapsed().as_secs_f64();

    let decode_start = Instant::now();
    loop {
        let step = sequence.step(logits, &model.tokenizer, &model.eos_token_ids)?;
        let flow = match &step.event {
            Some(event) => on_token(event),
            None => ControlFlow::Continue(()),
        };
        match step.finished {
            Some(FinishReason::Stop) => break,
            _ if flow.is_break() => {
                sequence.cancel();
                break;
            }
            Some(_) => break,
            None => {}
        }
        let (token, position) = sequence.next_input();
        logits = model.engine.forward(&[token], position)?;
    }
    let (mut outcome, flush) = sequence.finish(&model.tokenizer)?;
    if let Some(event) = flush {
        let _ = on_token(&event);
    }
    outcome.prefill_seconds = prefill_seconds;
    outcome.decode_seconds = decode_start.elapsed().as_secs_f64();
    Ok(outcome)
}
