//! The generation handlers, `POST /v1/chat/completions` and `POST /v1/completions`.
//! Both start from one extractor, [`GenerationRequest`]: it parses and validates the
//! body (errors name the parameter) and takes a place in the queue, so that a full
//! queue refuses the request before any costly work. The handlers then build the
//! prompt off the async runtime, check it against the context, queue the job, and
//! either collect the whole answer or stream it as server-sent events ending in
//! `data: [DONE]`.
//!
//! A stream owns the job's event receiver; when the client disconnects, axum drops
//! the stream, the receiver closes, and the worker stops the generation at its next
//! token step.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{Method, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedReceiver;

use super::errors::ApiError;
use super::metrics::Metrics;
use super::openai::{
    finish_reason_str, plain_messages, AssistantMessage, ChatChoice, ChatCompletion,
    ChatCompletionChunk, ChatMessageIn, ChunkChoice, CommonParams, Completion, CompletionChoice,
    Delta, PromptField, PromptInput, Usage, ValidatedParams,
};
use super::queue::{Event, JobSpec, Outcome, QueueSlot};
use super::routes::{log_request, LoggedLater, TokenSummary};
use super::shutdown::Phase;
use super::state::{AppState, ServedModel};

/// Seconds since the epoch, for `created`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}

/// The body bytes, or 413 / 400 in the OpenAI shape.
fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large(limit)
        } else {
            ApiError::invalid_request(format!(
                "cannot read the request body: {}",
                rejection.body_text()
            ))
        }
    })
}

/// Parses the body into a JSON object; syntax errors say where.
fn parse_object(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_request(
            "the request body is empty; send a JSON object (Content-Type: application/json)",
        ));
    }
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::invalid_request(format!(
            "the request body must be a JSON object, not {}",
            json_kind(&other)
        ))),
        Err(e) => Err(ApiError::invalid_request(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// What a field must look like, for type errors of fields whose serde message is
/// unhelpful (untagged enums).
fn expected_shape(param: &str) -> Option<&'static str> {
    let top = param.split(['.', '[']).next().unwrap_or(param);
    match top {
        "stop" => Some("a string or an array of strings"),
        "prompt" => Some("a string, an array with one string, or an array of token ids"),
        "messages" if param.ends_with(".content") => Some("a string or an array of content parts"),
        _ => None,
    }
}

/// Deserializes `value` as `T`; a type error names the parameter (`prefix` plus
/// the path inside the value).
fn from_value<T: DeserializeOwned>(value: serde_json::Value, prefix: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner_path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let mut param = match (prefix.is_empty(), inner_path.as_str()) {
            (true, ".") => String::new(),
            (true, p) => p.to_owned(),
            (false, ".") => prefix.to_owned(),
            (false, p) if p.starts_with('[') => format!("{prefix}{p}"),
            (false, p) => format!("{prefix}.{p}"),
        };
        // "missing field `role`" at messages[0] names messages[0].role.
        if let Some(field) = inner
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            param = if param.is_empty() {
                field.to_owned()
            } else {
                format!("{param}.{field}")
            };
        }
        let message = match expected_shape(&param) {
            Some(shape) if inner.contains("untagged enum") => format!("`{param}` must be {shape}"),
            _ => format!("invalid `{param}`: {inner}"),
        };
        ApiError::invalid_param(
            if param.is_empty() {
                "body".into()
            } else {
                param
            },
            message,
        )
    })
}

/// Checks the prompt against a slot's context and caps the new tokens: the request's
/// `max_tokens`, else `--max-tokens-default`, and never past the slot's end.
fn job_spec(
    prompt_tokens: Vec<u32>,
    params: &ValidatedParams,
    model: &ServedModel,
) -> Result<JobSpec, ApiError> {
    let ctx = model.context_length;
    if prompt_tokens.len() >= ctx {
        return Err(ApiError::context_overflow(prompt_tokens.len(), ctx));
    }
    let room = ctx - prompt_tokens.len();
    Ok(JobSpec {
        max_new_tokens: params
            .max_tokens
            .unwrap_or(model.max_tokens_default)
            .min(room),
        prompt_tokens,
        sampling: params.sampling.clone(),
        stop: params.stop.clone(),
    })
}

/// Runs a prompt builder on the blocking pool.
async fn build_prompt(
    f: impl FnOnce() -> Result<Vec<u32>, ApiError> + Send + 'static,
) -> Result<Vec<u32>, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("prompt building failed: {e}")))?
}

/// Keeps `xpu_requests_in_flight` up while a generation request lives.
struct InFlight(Arc<Metrics>);

impl InFlight {
    fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.requests_in_flight.inc();
        InFlight(metrics.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests_in_flight.dec();
    }
}

/// The part of a request body that differs between the two routes.
pub trait RouteInput: DeserializeOwned + Send {
    /// The body field that holds it; it is required.
    const FIELD: &'static str;
}

impl RouteInput for Vec<ChatMessageIn> {
    const FIELD: &'static str = "messages";
}

impl RouteInput for PromptField {
    const FIELD: &'static str = "prompt";
}

/// A generation request, parsed and validated, holding a place in the queue: what
/// both generation handlers start from.
pub struct GenerationRequest<T> {
    /// `messages` or `prompt`.
    input: T,
    params: ValidatedParams,
    model: Arc<ServedModel>,
    slot: QueueSlot,
    received: Instant,
    in_flight: InFlight,
}

impl<T: RouteInput> FromRequest<Arc<AppState>> for GenerationRequest<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let received = Instant::now();
        let in_flight = InFlight::new(&state.metrics);
        // While the one model of a one-model server loads, answer at once (as
        // /health does) rather than wait.
        if state.lifecycle.phase() == Phase::Loading {
            return Err(ApiError::loading());
        }
        let bytes = body_bytes(
            Bytes::from_request(request, state).await,
            state.max_body_bytes,
        )?;
        let mut object = parse_object(&bytes)?;
        let input: T = match object.remove(T::FIELD) {
            None => {
                return Err(ApiError::invalid_param(
                    T::FIELD,
                    format!("`{}` is required", T::FIELD),
                ))
            }
            Some(v) => from_value(v, T::FIELD)?,
        };
        let common: CommonParams = from_value(serde_json::Value::Object(object), "")?;
        let requested = common.model.clone();
        let params = common.validate()?;
        // A model that is not in memory loads now; this request (and any other for
        // it) waits for the load.
        let model = state.models.get(requested.as_deref()).await?;
        // Admission before templating and tokenizing: under overload a 429 costs a
        // counter check, not a prompt's worth of work.
        let slot = model.scheduler.reserve()?;
        Ok(GenerationRequest {
            input,
            params,
            model,
            slot,
            received,
            in_flight,
        })
    }
}

impl<T> GenerationRequest<T> {
    /// Queues the prompt in the request's place and answers, streaming or not.
    async fn run(self, flavor: Flavor, prompt_tokens: Vec<u32>) -> Result<Response, ApiError> {
        let spec = job_spec(prompt_tokens, &self.params, &self.model)?;
        let events = self.slot.submit(spec, self.received)?;
        let (prefix, path) = match flavor {
            Flavor::Chat => ("chatcmpl", "/v1/chat/completions"),
            Flavor::Text => ("cmpl", "/v1/completions"),
        };
        let context = ResponseContext {
            flavor,
            id: new_id(prefix),
            created: unix_now(),
            model: self.model.id.clone(),
            include_usage: self.params.include_usage,
            path,
            received: self.received,
            _in_flight: self.in_flight,
        };
        respond(context, events, self.params.stream).await
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Chat,
    Text,
}

/// Everything a response needs besides the events.
struct ResponseContext {
    flavor: Flavor,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    path: &'static str,
    received: Instant,
    _in_flight: InFlight,
}

pub async fn chat_completions(
    request: GenerationRequest<Vec<ChatMessageIn>>,
) -> Result<Response, ApiError> {
    let messages = plain_messages(&request.input)?;
    let prompter = request.model.prompter.clone();
    let tokens = build_prompt(move || prompter.chat(&messages)).await?;
    request.run(Flavor::Chat, tokens).await
}

pub async fn completions(request: GenerationRequest<PromptField>) -> Result<Response, ApiError> {
    let tokens = match request.input.prompt_input()? {
        PromptInput::Text(text) => {
            let prompter = request.model.prompter.clone();
            build_prompt(move || prompter.text(&text)).await?
        }
        PromptInput::Tokens(tokens) => {
            let vocab = request.model.prompter.vocab_size();
            if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(ApiError::invalid_param(
                    "prompt",
                    format!("token id {bad} is outside the vocabulary (0..{vocab})"),
                ));
            }
            tokens
        }
    };
    if tokens.is_empty() {
        return Err(ApiError::invalid_param(
            "prompt",
            "`prompt` must not be empty",
        ));
    }
    request.run(Flavor::Text, tokens).await
}

async fn respond(
    context: ResponseContext,
    events: UnboundedReceiver<Event>,
    stream: bool,
) -> Result<Response, ApiError> {
    if stream {
        let sse = Sse::new(sse_stream(context, events)).keep_alive(KeepAlive::default());
        let mut response = sse.into_response();
        response.extensions_mut().insert(LoggedLater);
        Ok(response)
    } else {
        collect(context, events).await
    }
}

/// Waits for the whole generation and answers with one JSON object.
async fn collect(
    context: ResponseContext,
    mut events: UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let outcome = loop {
        match events.recv().await {
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done(outcome)) => break outcome,
            Some(Event::Failed(message)) => return Err(ApiError::internal(message)),
            None => {
                return Err(ApiError::internal(
                    "the generation worker stopped unexpectedly",
                ))
            }
        }
    };
    let usage = Usage::of(&outcome);
    let finish_reason = finish_reason_str(outcome.finish_reason);
    let mut response = match context.flavor {
        Flavor::Chat => Json(ChatCompletion {
            id: context.id,
            object: "chat.completion",
            created: context.created,
            model: context.model,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: text,
                },
                finish_reason,
                logprobs: None,
            }],
            usage,
        })
        .into_response(),
        Flavor::Text => Json(Completion {
            id: context.id,
            object: "text_completion",
            created: context.created,
            model: context.model,
            choices: vec![CompletionChoice {
                index: 0,
                text,
                finish_reason: Some(finish_reason),
                logprobs: None,
            }],
            usage: Some(Some(usage)),
        })
        .into_response(),
    };
    response.extensions_mut().insert(TokenSummary {
        prompt_tokens: outcome.prompt_tokens,
        completion_tokens: outcome.completion_tokens,
    });
    Ok(response)
}

/// State of one SSE stream. Dropping it (client gone) closes the receiver.
struct StreamState {
    context: ResponseContext,
    events: UnboundedReceiver<Event>,
    pending: VecDeque<String>,
    started: bool,
    finished: bool,
    outcome: Option<Outcome>,
    status: u16,
}

impl StreamState {
    fn chunk_json(
        &self,
        content: Option<String>,
        role: bool,
        finish: Option<&'static str>,
    ) -> String {
        let usage = self.context.include_usage.then_some(None);
        match self.context.flavor {
            Flavor::Chat => serde_json::to_string(&ChatCompletionChunk {
                id: self.context.id.clone(),
                object: "chat.completion.chunk",
                created: self.context.created,
                model: self.context.model.clone(),
                choices: vec![ChunkChoice {
                    index: 0,
                    delta: Delta {
                        role: role.then_some("assistant"),
                        content,
                    },
                    finish_reason: finish,
                    logprobs: None,
                }],
                usage,
            }),
            Flavor::Text => serde_json::to_string(&Completion {
                id: self.context.id.clone(),
                object: "text_completion",
                created: self.context.created,
                model: self.context.model.clone(),
                choices: vec![CompletionChoice {
                    index: 0,
                    text: content.unwrap_or_default(),
                    finish_reason: finish,
                    logprobs: None,
                }],
                usage,
            }),
        }
        .unwrap_or_default()
    }

    fn usage_json(&self, usage: Usage) -> String {
        match self.context.flavor {
            Flavor::Chat => serde_json::to_string(&ChatCompletionChunk {
                id: self.context.id.clone(),
                object: "chat.completion.chunk",
                created: self.context.created,
                model: self.context.model.clone(),
                choices: vec![],
                usage: Some(Some(usage)),
            }),
            Flavor::Text => serde_json::to_string(&Completion {
                id: self.context.id.clone(),
                object: "text_completion",
                created: self.context.created,
                model: self.context.model.clone(),
                choices: vec![],
                usage: Some(Some(usage)),
            }),
        }
        .unwrap_or_default()
    }

    /// The next `data:` payload, or None when the stream is over.
    async fn next_data(&mut self) -> Option<String> {
        if !self.started {
            self.started = true;
            if self.context.flavor == Flavor::Chat {
                return Some(self.chunk_json(Some(String::new()), true, None));
            }
        }
        if let Some(data) = self.pending.pop_front() {
            return Some(data);
        }
        if self.finished {
            return None;
        }
        // Every event ends this call: a text chunk, the last chunk, or an error.
        match self.events.recv().await {
            Some(Event::Text(t)) => Some(self.chunk_json(Some(t), false, None)),
            Some(Event::Done(outcome)) => {
                let finish = finish_reason_str(outcome.finish_reason);
                let last = match self.context.flavor {
                    Flavor::Chat => self.chunk_json(None, false, Some(finish)),
                    Flavor::Text => self.chunk_json(Some(String::new()), false, Some(finish)),
                };
                if self.context.include_usage {
                    self.pending.push_back(self.usage_json(Usage::of(&outcome)));
                }
                self.pending.push_back("[DONE]".into());
                self.outcome = Some(outcome);
                self.finished = true;
                Some(last)
            }
            Some(Event::Failed(message)) => {
                self.status = 500;
                self.finished = true;
                self.pending.push_back("[DONE]".into());
                Some(ApiError::internal(message).to_json())
            }
            None => {
                self.status = 500;
                self.finished = true;
                self.pending.push_back("[DONE]".into());
                Some(ApiError::internal("the generation worker stopped unexpectedly").to_json())
            }
        }
    }
}

impl Drop for StreamState {
    /// The request's log line, written when the stream ends or the client leaves.
    fn drop(&mut self) {
        let tokens = self.outcome.as_ref().map(|o| TokenSummary {
            prompt_tokens: o.prompt_tokens,
            completion_tokens: o.completion_tokens,
        });
        let status = if self.finished { self.status } else { 499 };
        if status == 499 {
            tracing::info!(target: "xpu_runner::request", "client closed the stream before it ended");
        }
        log_request(
            &Method::POST,
            self.context.path,
            status,
            self.context.received,
            tokens,
        );
    }
}

fn sse_stream(
    context: ResponseContext,
    events: UnboundedReceiver<Event>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let state = StreamState {
        context,
        events,
        pending: VecDeque::new(),
        started: false,
        finished: false,
        outcome: None,
        status: 200,
    };
    stream::unfold(state, |mut state| async move {
        let data = state.next_data().await?;
        Some((Ok(SseEvent::default().data(data)), state))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_name_the_parameter() {
        let e =
            from_value::<CommonParams>(serde_json::json!({"temperature": "hot"}), "").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = from_value::<Vec<ChatMessageIn>>(serde_json::json!([{"content": "x"}]), "messages")
            .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].role"),
            "{}",
            e.message
        );
        let e = from_value::<CommonParams>(serde_json::json!({"stop": 5}), "").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stop"));
        assert!(e.message.contains("array of strings"), "{}", e.message);
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use axum::http::StatusCode;
    use tower::ServiceExt;

    use crate::server::metrics::Metrics;
    use crate::server::openai::PlainMessage;
    use crate::server::pool::ModelPool;
    use crate::server::queue::testing::{FakeBackend, FakeEngine};
    use crate::server::queue::Scheduler;
    use crate::server::shutdown::Lifecycle;
    use crate::server::state::Prompter;
    use crate::server::telemetry::GpuTelemetry;

    /// Counts how often a prompt is built.
    #[derive(Default)]
    struct CountingPrompter(AtomicUsize);

    impl Prompter for CountingPrompter {
        fn chat(&self, _: &[PlainMessage]) -> Result<Vec<u32>, ApiError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(vec![1, 2, 3])
        }
        fn text(&self, _: &str) -> Result<Vec<u32>, ApiError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(vec![1, 2, 3])
        }
        fn vocab_size(&self) -> usize {
            100
        }
    }

    fn served(
        prompter: Arc<CountingPrompter>,
        scheduler: Scheduler,
        max_tokens_default: usize,
    ) -> ServedModel {
        ServedModel {
            id: "m".into(),
            device: "test".into(),
            context_length: 64,
            parallel_requested: 1,
            max_tokens_default,
            created: 0,
            prompter,
            scheduler,
            engine: None,
            facts: Default::default(),
            device_map: None,
        }
    }

    async fn chat(app: &axum::Router) -> StatusCode {
        let request = axum::http::Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .body(axum::body::Body::from(
                r#"{"messages":[{"role":"user","content":"hi"}]}"#,
            ))
            .unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn a_full_queue_refuses_before_the_prompt_is_built() {
        let (go, gate) = mpsc::channel();
        let metrics = Arc::new(Metrics::new());
        let backend = FakeBackend::gated(FakeEngine::new(1, 64), gate);
        let scheduler = Scheduler::start(backend, 1, metrics.clone()).unwrap();
        let prompter = Arc::new(CountingPrompter::default());
        let state = Arc::new(AppState {
            lifecycle: Arc::new(Lifecycle::default()),
            metrics,
            keys: None,
            max_body_bytes: 4096,
            models: ModelPool::preloaded(served(prompter.clone(), scheduler.clone(), 16)),
            gpu: Arc::new(GpuTelemetry::off()),
            dashboard: Default::default(),
        });
        state.lifecycle.set_ready();
        let app = super::super::routes::router(state, &[]);

        // With room, the prompt is built and the request served.
        go.send(()).unwrap();
        assert_eq!(chat(&app).await, StatusCode::OK);
        assert_eq!(prompter.0.load(Ordering::SeqCst), 1);

        // One job running, one waiting: the queue (1 place) is full.
        let spec = || JobSpec {
            prompt_tokens: vec![1],
            sampling: Default::default(),
            stop: vec![],
            max_new_tokens: 1,
        };
        let _running = scheduler.submit(spec(), Instant::now()).unwrap();
        while scheduler.waiting() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _waiting = scheduler.submit(spec(), Instant::now()).unwrap();
        assert_eq!(chat(&app).await, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            prompter.0.load(Ordering::SeqCst),
            1,
            "the refused request's prompt was built"
        );
        go.send(()).unwrap();
        go.send(()).unwrap();
    }

    #[tokio::test]
    async fn health_shows_the_device_map_and_a_lost_device() {
        use crate::engine::{DeviceMap, MappedDevice};
        use std::sync::atomic::AtomicBool;
        let lost = Arc::new(AtomicBool::new(false));
        let device =
            |index: usize, layers: std::ops::Range<usize>, lost: Arc<AtomicBool>| MappedDevice {
                index,
                adapter: format!("GPU {index}"),
                pci_address: Some(format!("0000:0{index}:00.0")),
                embedding: layers.start == 0,
                output: layers.end == 30,
                layers,
                weight_bytes: 1,
                kv_bytes: 2,
                memory_bytes: None,
                lost: Arc::new(move || {
                    lost.load(Ordering::SeqCst)
                        .then(|| "DeviceLost: injected".to_string())
                }),
            };
        let backend = FakeBackend::new(FakeEngine::new(1, 64));
        let scheduler = Scheduler::start(backend, 1, Arc::new(Metrics::new())).unwrap();
        let mut model = served(Arc::new(CountingPrompter::default()), scheduler, 16);
        model.device_map = Some(DeviceMap(vec![
            device(3, 0..20, Arc::new(AtomicBool::new(false))),
            device(4, 20..30, lost.clone()),
        ]));
        let state = Arc::new(AppState {
            lifecycle: Arc::new(Lifecycle::default()),
            metrics: Arc::new(Metrics::new()),
            keys: None,
            max_body_bytes: 4096,
            models: ModelPool::preloaded(model),
            gpu: Arc::new(GpuTelemetry::off()),
            dashboard: Default::default(),
        });
        state.lifecycle.set_ready();
        let app = super::super::routes::router(state, &[]);
        let health = || async {
            let request = axum::http::Request::builder()
                .uri("/health")
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        };
        let before = health().await;
        assert_eq!(before["status"], "ok");
        assert_eq!(before["devices"][1]["layers"], serde_json::json!([20, 30]));
        assert_eq!(before["devices"][1]["pci_address"], "0000:04:00.0");
        assert_eq!(before["devices"][1]["status"], "ok");
        lost.store(true, Ordering::SeqCst);
        let after = health().await;
        assert_eq!(after["status"], "degraded");
        assert_eq!(after["devices"][1]["status"], "lost");
        assert_eq!(after["devices"][1]["error"], "DeviceLost: injected");
        assert_eq!(after["devices"][0]["status"], "ok");
        let why = after["devices_lost"][0].as_str().unwrap();
        assert!(why.contains("device 4 (GPU 4) was lost"), "{why}");
    }

    #[test]
    fn requests_without_max_tokens_get_the_servers_default() {
        let (_go, gate) = mpsc::channel();
        let backend = FakeBackend::gated(FakeEngine::new(1, 64), gate);
        let scheduler = Scheduler::start(backend, 1, Arc::new(Metrics::new())).unwrap();
        let model = served(Arc::new(CountingPrompter::default()), scheduler, 16);
        let params = |json| {
            serde_json::from_value::<CommonParams>(json)
                .unwrap()
                .validate()
                .unwrap()
        };
        let unset = params(serde_json::json!({}));
        assert_eq!(
            job_spec(vec![1; 4], &unset, &model).unwrap().max_new_tokens,
            16
        );
        // The context (64) still caps it.
        assert_eq!(
            job_spec(vec![1; 60], &unset, &model)
                .unwrap()
                .max_new_tokens,
            4
        );
        // A request's own limit may exceed the default.
        let own = params(serde_json::json!({"max_tokens": 40}));
        assert_eq!(
            job_spec(vec![1; 4], &own, &model).unwrap().max_new_tokens,
            40
        );
    }

    #[test]
    fn bodies() {
        assert!(parse_object(b"  ").unwrap_err().message.contains("empty"));
        assert!(parse_object(b"[1]")
            .unwrap_err()
            .message
            .contains("an array"));
        assert!(parse_object(b"{\"a\":")
            .unwrap_err()
            .message
            .contains("not valid JSON"));
    }
}
