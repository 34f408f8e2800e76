//! Shared state of the HTTP handlers: lifecycle, metrics, keys, limits, GPU telemetry
//! and the model pool (each loaded model: its prompt builder and its scheduler).

use std::sync::Arc;

use super::auth::ApiKeys;
use super::dashboard::{Dashboard, EngineInfo};
use super::errors::ApiError;
use super::metrics::Metrics;
use super::openai::PlainMessage;
use super::pool::ModelPool;
use super::queue::Scheduler;
use super::shutdown::Lifecycle;
use super::telemetry::GpuTelemetry;
use crate::model::ModelFacts;

/// Turns request text into prompt tokens. Runs on the blocking pool (tokenizing a
/// large prompt takes a while), never on the model's worker thread, so that
/// context-size errors come back at once instead of after the queue.
pub trait Prompter: Send + Sync + 'static {
    /// Renders the chat template (with the generation prompt) and tokenizes it.
    fn chat(&self, messages: &[PlainMessage]) -> Result<Vec<u32>, ApiError>;
    /// Tokenizes raw completion text.
    fn text(&self, text: &str) -> Result<Vec<u32>, ApiError>;
    /// Vocabulary size, to check token-id prompts.
    fn vocab_size(&self) -> usize;
}

/// The loaded model as the handlers see it.
pub struct ServedModel {
    pub id: String,
    pub device: String,
    /// Tokens one sequence may hold (prompt plus generated): a KV-cache slot.
    pub context_length: usize,
    /// Sequences asked to run at once (`--parallel`); the scheduler's
    /// [`slots`](Scheduler::slots) says how many the engine runs.
    pub parallel_requested: usize,
    /// Tokens generated for a request without `max_tokens` (`--max-tokens-default`).
    pub max_tokens_default: usize,
    pub created: u64,
    pub prompter: Arc<dyn Prompter>,
    pub scheduler: Scheduler,
    /// How its device was chosen, for the dashboard.
    pub engine: Option<EngineInfo>,
    /// What its files say about it (from the loader), for the dashboard.
    pub facts: ModelFacts,
    /// Which GPU runs which layers, and whether each still works (`/health`, the dashboard).
    pub device_map: Option<crate::engine::DeviceMap>,
}

/// Everything the handlers share.
pub struct AppState {
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: Arc<Metrics>,
    pub keys: Option<ApiKeys>,
    pub max_body_bytes: usize,
    /// The served models, loaded at start (one model) or on first use (several).
    pub models: ModelPool,
    /// Intel GPU readings for `/metrics` and `/health` (none without an Intel GPU).
    pub gpu: Arc<GpuTelemetry>,
    /// What the dashboard shows besides the metrics (facts, engine, model file).
    pub dashboard: Dashboard,
}
