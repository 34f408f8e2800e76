//! The bridge between the server and the runner core: loads a model on the decided
//! device ([`crate::device::load`], which falls back to the CPU when `auto` chose an
//! accelerator that fails), and splits the loaded model into the part the handlers
//! share (tokenizer and chat template, for prompts) and the part the worker thread owns
//! (engine). [`EngineLoader`] does all of it for the model pool.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::device::{self, DeviceChoice, DeviceDecision};
use crate::engine::{ChunkOutput, Engine};
use crate::generate::{FinishReason as CoreFinish, GenerationRequest, Sequence};
use crate::model::{
    ChatMessage, ChatTemplate, LoadOptions, LoadedModel, ModelFacts, Tokenizer, DEFAULT_MAX_CONTEXT,
};
use crate::sampling::SamplingParams;

use super::dashboard::EngineInfo;
use super::errors::ApiError;
use super::metrics::Metrics;
use super::openai::PlainMessage;
use super::pool::Loader;
use super::queue::{
    Backend, FinishReason, GenerationTurn, JobSpec, Outcome, SamplingRequest, Scheduler,
    SchedulerOptions, SeqStep, SequenceState,
};
use super::state::{Prompter, ServedModel};

/// Maps request fields onto the core's parameters; unset fields keep the core's
/// defaults.
pub fn sampling_params(r: &SamplingRequest) -> SamplingParams {
    let d = SamplingParams::default();
    SamplingParams {
        temperature: r.temperature.unwrap_or(d.temperature),
        top_k: r.top_k.unwrap_or(d.top_k),
        top_p: r.top_p.unwrap_or(d.top_p),
        min_p: r.min_p.unwrap_or(d.min_p),
        repetition_penalty: r.repetition_penalty.unwrap_or(d.repetition_penalty),
        presence_penalty: r.presence_penalty.unwrap_or(d.presence_penalty),
        frequency_penalty: r.frequency_penalty.unwrap_or(d.frequency_penalty),
        seed: r.seed.or(d.seed),
    }
}

/// Prompt building for the handlers: a tokenizer clone and the chat template.
pub struct ModelPrompter {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
}

impl Prompter for ModelPrompter {
    fn chat(&self, messages: &[PlainMessage]) -> Result<Vec<u32>, ApiError> {
        let Some(template) = &self.template else {
            return Err(ApiError::invalid_request(
                "this model has no chat template, so /v1/chat/completions cannot build its prompt; \
                 use /v1/completions with a plain prompt",
            ));
        };
        let messages: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
            .collect();
        // A template error is usually the conversation's fault (raise_exception on
        // role order), so it is a 400 that quotes the template's message.
        let text = template
            .render(&messages, true)
            .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
        self.tokenizer
            .encode_chat_prompt(&text)
            .map_err(|e| ApiError::internal(format!("tokenizing the prompt failed: {e:#}")))
    }

    fn text(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.tokenizer
            .encode(text, true)
            .map_err(|e| ApiError::internal(format!("tokenizing the prompt failed: {e:#}")))
    }

    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }
}

/// The worker's side: the loaded model; its sequences are the core's [`Sequence`].
pub struct ModelBackend {
    model: LoadedModel,
}

impl SequenceState for Sequence {
    fn next_input(&self) -> (u32, usize) {
        Sequence::next_input(self)
    }

    fn cancel(&mut self) {
        Sequence::cancel(self)
    }

    fn picks_greedily(&self) -> bool {
        Sequence::picks_greedily(self)
    }
}

impl Backend for ModelBackend {
    type Sequence = Sequence;

    fn engine(&mut self) -> &mut dyn Engine {
        &mut *self.model.engine
    }

    fn begin(&mut self, job: &JobSpec) -> anyhow::Result<Sequence> {
        let request = GenerationRequest {
            prompt_tokens: job.prompt_tokens.clone(),
            sampling: sampling_params(&job.sampling),
            stop: job.stop.clone(),
            max_new_tokens: job.max_new_tokens,
            top_logprobs: 0,
        };
        Ok(Sequence::new(&request, self.model.engine.context_length())?)
    }

    fn step(&mut self, sequence: &mut Sequence, output: ChunkOutput) -> anyhow::Result<SeqStep> {
        let (tokenizer, eos) = (&self.model.tokenizer, &self.model.eos_token_ids);
        let step = match output {
            ChunkOutput::Logits(logits) => sequence.step(logits, tokenizer, eos)?,
            ChunkOutput::Token(token) => sequence.step_token(token, tokenizer, eos)?,
        };
        Ok(SeqStep {
            text: step.event.map(|e| e.text),
            finished: step.finished.map(finish_reason),
        })
    }

    fn finish(&mut self, sequence: Sequence) -> anyhow::Result<(Option<String>, Outcome)> {
        let (outcome, flush) = sequence.finish(&self.model.tokenizer)?;
        Ok((
            flush.map(|e| e.text),
            Outcome {
                prompt_tokens: outcome.prompt_tokens,
                cached_tokens: 0,
                completion_tokens: outcome.completion_tokens,
                finish_reason: finish_reason(outcome.finish_reason),
            },
        ))
    }
}

fn finish_reason(reason: CoreFinish) -> FinishReason {
    match reason {
        CoreFinish::Stop => FinishReason::Stop,
        CoreFinish::Length => FinishReason::Length,
        CoreFinish::Cancelled => FinishReason::Cancelled,
    }
}

/// Splits a loaded model into the handlers' prompter and the worker's backend.
pub fn split(mut model: LoadedModel) -> (Arc<dyn Prompter>, ModelBackend) {
    let prompter = ModelPrompter {
        tokenizer: model.tokenizer.clone(),
        template: model.chat_template.take(),
    };
    (Arc::new(prompter), ModelBackend { model })
}

/// Loads the pool's models on the decided device, each with its own worker thread;
/// the workers share one generation turn.
pub struct EngineLoader {
    /// The `--device` value (`auto` falls back to the CPU when the accelerator fails).
    pub choice: DeviceChoice,
    /// The device and why it was chosen (for the dashboard).
    pub decision: DeviceDecision,
    /// Threads, context and engine settings; the device comes from `decision`.
    pub options: LoadOptions,
    pub max_queue: usize,
    /// `--prefill-chunk`.
    pub prefill_chunk: usize,
    /// `--kv-cache-tokens`: the KV budget split over the slots (`options.slots`).
    pub kv_cache_tokens: Option<usize>,
    pub max_tokens_default: usize,
    pub metrics: Arc<Metrics>,
    pub turn: GenerationTurn,
}

impl EngineLoader {
    /// Sequences requested (`--parallel`).
    fn requested_slots(&self) -> usize {
        self.options.slots.max(1)
    }

    /// Each slot's context: `--ctx`, else the model's own (capped); with
    /// `--kv-cache-tokens` at most the budget's share per slot.
    fn slot_context(&self, trained: Option<u64>) -> Option<usize> {
        let Some(budget) = self.kv_cache_tokens else {
            return self.options.ctx;
        };
        let trained = trained.map_or(DEFAULT_MAX_CONTEXT, |c| c as usize);
        let ctx = self.options.ctx.unwrap_or(trained.min(DEFAULT_MAX_CONTEXT));
        Some(ctx.min(budget / self.requested_slots()))
    }
}

impl Loader for EngineLoader {
    fn estimate(&self, _id: &str, path: &Path) -> anyhow::Result<u64> {
        let facts = ModelFacts::read(path)
            .with_context(|| format!("cannot read {} to estimate its memory", path.display()))?;
        // The context the engine will use: --ctx, else the model's own capped as the
        // engines cap it.
        let trained = facts
            .context_length
            .map_or(DEFAULT_MAX_CONTEXT, |c| c as usize);
        let context = self
            .slot_context(facts.context_length)
            .unwrap_or(trained.min(DEFAULT_MAX_CONTEXT));
        // The KV cache grows with the tokens it holds over all slots.
        Ok(facts.memory_needed(context * self.requested_slots()))
    }

    fn load(&self, id: &str, path: &Path) -> anyhow::Result<ServedModel> {
        let mut options = self.options.clone();
        if self.kv_cache_tokens.is_some() {
            let facts = ModelFacts::read(path)
                .with_context(|| format!("cannot read {} to size its KV cache", path.display()))?;
            options.ctx = self.slot_context(facts.context_length);
        }
        let (loaded, device, fallback_reason) =
            device::load(path, self.choice, &self.decision, &options)?;
        let description = loaded.engine.device_description();
        let device_map = loaded.engine.device_map();
        let context_length = loaded.engine.context_length();
        let facts = loaded.facts.clone();
        let (prompter, worker) = split(loaded);
        let scheduler = Scheduler::start_with(
            worker,
            SchedulerOptions {
                max_queue: self.max_queue,
                prefill_chunk: self.prefill_chunk,
                turn: self.turn.clone(),
            },
            self.metrics.clone(),
        )
        .context("cannot start the generation thread")?;
        let requested = self.requested_slots();
        if scheduler.slots() < requested {
            if scheduler.slots() == 1 {
                tracing::warn!(
                    "engine {description} cannot batch; requests run one at a time (--parallel {requested} asked for more)"
                );
            } else {
                tracing::warn!(
                    "engine {description} holds {} sequences, fewer than --parallel {requested}",
                    scheduler.slots()
                );
            }
        }
        tracing::info!(
            "{id}: {} slots of {context_length} tokens",
            scheduler.slots()
        );
        self.metrics.set_device(&description, id);
        Ok(ServedModel {
            id: id.to_owned(),
            device: description.clone(),
            context_length,
            parallel_requested: requested,
            max_tokens_default: self.max_tokens_default,
            created: super::completions::unix_now(),
            prompter,
            scheduler,
            engine: Some(EngineInfo {
                requested: self.choice.to_string(),
                device: device.name(),
                description,
                reasons: self.decision.reasons.clone(),
                fallback_reason,
            }),
            facts,
            device_map,
        })
    }
}
