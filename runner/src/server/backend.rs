//! The bridge between the server and the runner core: loads the model on the
//! decided device (falling back to the CPU when `auto` chose an accelerator that
//! fails), and splits the loaded model into the part the handlers share (tokenizer
//! and chat template, for prompts) and the part the worker thread owns (engine).
//! [`EngineLoader`] does all of it for the model pool.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::engine::DeviceKind;
use crate::generate::{generate, FinishReason as CoreFinish, GenerateError, GenerationRequest};
use crate::model::{
    self, ChatMessage, ChatTemplate, LoadOptions, LoadedModel, Tokenizer, DEFAULT_MAX_CONTEXT,
};
use crate::sampling::SamplingParams;

use super::dashboard::{model_info, EngineInfo};
use super::device::Device;
use super::errors::ApiError;
use super::metrics::Metrics;
use super::openai::PlainMessage;
use super::pool::Loader;
use super::queue::{
    Backend, FinishReason, GenerationTurn, JobSpec, Outcome, SamplingRequest, Scheduler,
};
use super::state::{Prompter, ServedModel};

fn device_kind(device: Device) -> DeviceKind {
    match device {
        Device::Cpu => DeviceKind::Cpu,
        Device::Cuda => DeviceKind::Cuda,
        Device::Vulkan => DeviceKind::Vulkan,
    }
}

/// Loads the model. When `fallback` is set and the accelerator fails, logs a
/// warning with the reason and loads on the CPU instead; the reason comes back as the
/// third value (for the dashboard).
pub fn load(
    path: &Path,
    device: Device,
    fallback: bool,
    threads: Option<usize>,
    ctx: Option<usize>,
) -> anyhow::Result<(LoadedModel, Device, Option<String>)> {
    let options = |device| LoadOptions {
        device: device_kind(device),
        threads,
        ctx,
        ..Default::default()
    };
    match model::load(path, &options(device)) {
        Ok(m) => Ok((m, device, None)),
        Err(e) if fallback && device != Device::Cpu && is_device_failure(&e) => {
            let reason = format!("the {} device failed to initialise ({e})", device.name());
            tracing::warn!("{reason}; falling back to the CPU");
            let m = model::load(path, &options(Device::Cpu))
                .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", path.display()))?;
            Ok((m, Device::Cpu, Some(reason)))
        }
        Err(e) => Err(anyhow::anyhow!("cannot load {}: {e}", path.display())),
    }
}

/// Errors about the model file itself would fail on the CPU too; only device
/// and engine errors justify a fallback.
fn is_device_failure(e: &model::LoadError) -> bool {
    matches!(
        e,
        model::LoadError::Device(_) | model::LoadError::Engine { .. }
    )
}

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

/// The worker's side: the loaded model and its generation loop.
pub struct ModelBackend {
    model: LoadedModel,
}

impl Backend for ModelBackend {
    fn generate(
        &mut self,
        job: &JobSpec,
        on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> anyhow::Result<Outcome> {
        let request = GenerationRequest {
            prompt_tokens: job.prompt_tokens.clone(),
            sampling: sampling_params(&job.sampling),
            stop: job.stop.clone(),
            max_new_tokens: job.max_new_tokens,
            top_logprobs: 0,
        };
        let outcome =
            generate(&mut self.model, &request, |event| on_token(&event.text)).map_err(|e| {
                match e.downcast_ref::<GenerateError>() {
                    Some(g) => anyhow::anyhow!("{g}"),
                    None => e,
                }
            })?;
        Ok(Outcome {
            prompt_tokens: outcome.prompt_tokens,
            completion_tokens: outcome.completion_tokens,
            finish_reason: match outcome.finish_reason {
                CoreFinish::Stop => FinishReason::Stop,
                CoreFinish::Length => FinishReason::Length,
                CoreFinish::Cancelled => FinishReason::Cancelled,
            },
        })
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
    pub device: Device,
    /// `--device auto`: fall back to the CPU when the accelerator fails.
    pub fallback: bool,
    /// The `--device` value, and why the device was chosen (for the dashboard).
    pub requested: String,
    pub reasons: Vec<String>,
    pub threads: Option<usize>,
    pub ctx: Option<usize>,
    pub max_queue: usize,
    pub max_tokens_default: usize,
    pub metrics: Arc<Metrics>,
    pub turn: GenerationTurn,
}

impl Loader for EngineLoader {
    fn estimate(&self, _id: &str, path: &Path) -> anyhow::Result<u64> {
        let facts = model_info::read(path)
            .with_context(|| format!("cannot read {} to estimate its memory", path.display()))?;
        // The context the engine will use: --ctx, else the model's own capped as the
        // engines cap it.
        let trained = facts
            .context_length
            .map_or(DEFAULT_MAX_CONTEXT, |c| c as usize);
        let context = self.ctx.unwrap_or(trained.min(DEFAULT_MAX_CONTEXT));
        Ok(facts.memory_needed(context))
    }

    fn load(&self, id: &str, path: &Path) -> anyhow::Result<ServedModel> {
        let (loaded, device, fallback_reason) =
            load(path, self.device, self.fallback, self.threads, self.ctx)?;
        let description = loaded.engine.device_description();
        let context_length = loaded.engine.context_length();
        let (prompter, worker) = split(loaded);
        let scheduler = Scheduler::start_sharing(
            worker,
            self.max_queue,
            self.metrics.clone(),
            self.turn.clone(),
        )
        .context("cannot start the generation thread")?;
        self.metrics.set_device(&description, id);
        Ok(ServedModel {
            id: id.to_owned(),
            device: description.clone(),
            context_length,
            max_tokens_default: self.max_tokens_default,
            created: super::completions::unix_now(),
            prompter,
            scheduler,
            engine: Some(EngineInfo {
                requested: self.requested.clone(),
                device: device.name(),
                description,
                reasons: self.reasons.clone(),
                fallback_reason,
            }),
        })
    }
}
