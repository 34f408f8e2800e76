//! The scheduler: a bounded queue in front of one dedicated worker thread that owns
//! the model. The engine is single-sequence and CPU-bound, so generations run one at
//! a time, off the async runtime; up to `--max-queue` requests wait, and further ones
//! are refused at once (429 with a Retry-After estimated from recent request times)
//! instead of piling up in memory.
//!
//! A request takes its place in the queue ([`Scheduler::reserve`]) before its prompt
//! is templated and tokenized, so that a full queue refuses it at the cost of a
//! counter check; the place is given back if the request fails before it is queued.
//!
//! Each job streams its tokens back through a channel. When the receiver is gone
//! (the client disconnected and the HTTP layer dropped the stream), the next token
//! step sees the closed channel and breaks the generation loop, and the cancellation
//! is counted.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::errors::ApiError;
use super::metrics::Metrics;

/// Sampling fields of a request; `None` means the core's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingRequest {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
}

/// One generation, ready for the engine.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub prompt_tokens: Vec<u32>,
    pub sampling: SamplingRequest,
    pub stop: Vec<String>,
    pub max_new_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
}

/// The end of a generation as the engine reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
}

/// What a job sends back to its request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A safe-to-emit text delta (stop strings already held back or cut).
    Text(String),
    Done(Outcome),
    Failed(String),
}

/// A piece of a generation's text, as the backend hands it to the worker.
#[derive(Debug, Clone, Copy)]
pub struct Delta<'a> {
    /// The text to send (possibly empty: a token whose text is held back).
    pub text: &'a str,
    /// False for the held-back text released when the generation ends, which is no new
    /// token: the live token counts must match `completion_tokens`.
    pub new_token: bool,
}

/// What the worker thread needs from a loaded model.
pub trait Backend: Send + 'static {
    /// Generates for `job`, calling `on_token` once per generated token with its
    /// text delta (possibly empty), and once more for text held back to the end;
    /// `Break` stops within that step.
    fn generate(
        &mut self,
        job: &JobSpec,
        on_token: &mut dyn FnMut(Delta<'_>) -> ControlFlow<()>,
    ) -> anyhow::Result<Outcome>;
}

struct Job {
    spec: JobSpec,
    events: UnboundedSender<Event>,
    received: Instant,
    enqueued: Instant,
}

/// One generation at a time in the whole process: every model's worker takes the
/// turn for each job, so two loaded models never generate at once.
#[derive(Clone, Default)]
pub struct GenerationTurn(Arc<std::sync::Mutex<()>>);

impl GenerationTurn {
    fn take(&self) -> std::sync::MutexGuard<'_, ()> {
        // A worker that panicked mid-job leaves nothing to repair.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Shared state between the scheduler handle, the worker and the watchdog.
struct Shared {
    /// Places taken in the queue: reserved ones (prompt still being built) and
    /// queued jobs. The worker gives a place back when it takes the job.
    waiting: AtomicUsize,
    running: AtomicBool,
    /// Set when the shutdown timeout ends: the running generation stops at its next
    /// token and queued jobs end at once, all with the `abort` finish reason.
    abort: AtomicBool,
    /// Smoothed seconds per job (f64 bits), for Retry-After.
    avg_job_seconds: AtomicU64,
}

/// Handle to submit jobs. Dropping every handle stops the worker after its queue.
#[derive(Clone)]
pub struct Scheduler {
    sender: SyncSender<Job>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    max_queue: usize,
    worker: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl Scheduler {
    /// Starts the worker thread that owns `backend`, with a turn of its own.
    pub fn start<B: Backend>(
        backend: B,
        max_queue: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        Self::start_sharing(backend, max_queue, metrics, GenerationTurn::default())
    }

    /// Starts the worker thread that owns `backend`; it runs a job only while it
    /// holds `turn`, which other models' workers share.
    pub fn start_sharing<B: Backend>(
        backend: B,
        max_queue: usize,
        metrics: Arc<Metrics>,
        turn: GenerationTurn,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel::<Job>(max_queue);
        let shared = Arc::new(Shared {
            waiting: AtomicUsize::new(0),
            running: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            avg_job_seconds: AtomicU64::new(1.0f64.to_bits()),
        });
        let worker_shared = shared.clone();
        let worker_metrics = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("xpu-generate".into())
            .spawn(move || {
                let mut backend = backend;
                for job in receiver {
                    let _turn = turn.take();
                    worker_shared.waiting.fetch_sub(1, Ordering::SeqCst);
                    worker_metrics.queue_depth.dec();
                    run_job(&mut backend, job, &worker_shared, &worker_metrics);
                }
            })?;
        Ok(Scheduler {
            sender,
            shared,
            metrics,
            max_queue,
            worker: Arc::new(std::sync::Mutex::new(Some(handle))),
        })
    }

    /// Takes a place in the queue; 429 when `max_queue` places are taken. Nothing
    /// else is done, so refusing costs next to nothing.
    pub fn reserve(&self) -> Result<QueueSlot, ApiError> {
        let taken =
            self.shared
                .waiting
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |waiting| {
                    (waiting < self.max_queue).then_some(waiting + 1)
                });
        if taken.is_err() {
            return Err(ApiError::queue_full(self.max_queue, self.retry_after()));
        }
        self.metrics.queue_depth.inc();
        Ok(QueueSlot {
            scheduler: self.clone(),
            queued: false,
        })
    }

    /// Reserves a place and queues a job in it.
    pub fn submit(
        &self,
        spec: JobSpec,
        received: Instant,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        self.reserve()?.submit(spec, received)
    }

    /// Ends every generation: the running one at its next token, queued ones at
    /// once, each with [`FinishReason::Cancelled`] (`abort` in the API).
    pub fn abort_all(&self) {
        self.shared.abort.store(true, Ordering::SeqCst);
    }

    /// Seconds until a slot is likely free: waiting jobs times the average job time.
    pub fn retry_after(&self) -> u64 {
        let avg = f64::from_bits(self.shared.avg_job_seconds.load(Ordering::Relaxed));
        let waiting = self.shared.waiting.load(Ordering::Relaxed) as f64;
        ((waiting + 1.0) * avg).ceil().clamp(1.0, 300.0) as u64
    }

    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// Whether the worker thread is alive (it only ends when every handle is gone).
    pub fn worker_alive(&self) -> bool {
        match self.worker.lock() {
            Ok(guard) => guard.as_ref().is_some_and(|h| !h.is_finished()),
            Err(_) => false,
        }
    }
}

/// A place in the queue, held while the request's prompt is built. Dropping it
/// without [`QueueSlot::submit`] gives the place back.
pub struct QueueSlot {
    scheduler: Scheduler,
    queued: bool,
}

impl QueueSlot {
    /// Queues the job in this place.
    pub fn submit(
        mut self,
        spec: JobSpec,
        received: Instant,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        let (events, receiver) = unbounded_channel();
        let job = Job {
            spec,
            events,
            received,
            enqueued: Instant::now(),
        };
        // The channel holds at most `max_queue` jobs and each one holds a place, so it
        // is never full here.
        match self.scheduler.sender.try_send(job) {
            Ok(()) => {
                // The worker gives the place back when it takes the job.
                self.queued = true;
                Ok(receiver)
            }
            Err(TrySendError::Full(_)) => Err(ApiError::queue_full(
                self.scheduler.max_queue,
                self.scheduler.retry_after(),
            )),
            Err(TrySendError::Disconnected(_)) => Err(ApiError::internal(
                "the generation worker has stopped; restart the service",
            )),
        }
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        if !self.queued {
            self.scheduler.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            self.scheduler.metrics.queue_depth.dec();
        }
    }
}

fn run_job<B: Backend>(backend: &mut B, job: Job, shared: &Shared, metrics: &Metrics) {
    metrics
        .queue_wait
        .observe(job.enqueued.elapsed().as_secs_f64());
    if job.events.is_closed() {
        // The client left while the request waited.
        metrics.cancellations.inc();
        tracing::debug!("skipping a queued request whose client has gone");
        return;
    }
    if shared.abort.load(Ordering::SeqCst) {
        let outcome = Outcome {
            prompt_tokens: job.spec.prompt_tokens.len(),
            completion_tokens: 0,
            finish_reason: FinishReason::Cancelled,
        };
        let _ = job.events.send(Event::Done(outcome));
        return;
    }
    shared.running.store(true, Ordering::SeqCst);
    metrics.generations_running.inc();
    metrics
        .live
        .generation_started(job.spec.prompt_tokens.len());
    let started = Instant::now();
    let mut last_token: Option<Instant> = None;
    let mut client_gone = false;
    let events = job.events.clone();
    let result = {
        let mut on_token = |delta: Delta<'_>| -> ControlFlow<()> {
            let text = delta.text;
            if !delta.new_token {
                // Held-back text at the end: send it, count nothing.
                return if text.is_empty() || events.send(Event::Text(text.to_owned())).is_ok() {
                    ControlFlow::Continue(())
                } else {
                    client_gone = true;
                    ControlFlow::Break(())
                };
            }
            let now = Instant::now();
            metrics
                .live
                .token(now, last_token.is_none().then(|| now - job.received));
            match last_token {
                None => metrics
                    .time_to_first_token
                    .observe((now - job.received).as_secs_f64()),
                Some(prev) => metrics
                    .time_per_output_token
                    .observe((now - prev).as_secs_f64()),
            }
            last_token = Some(now);
            let gone = if text.is_empty() {
                events.is_closed()
            } else {
                events.send(Event::Text(text.to_owned())).is_err()
            };
            if gone {
                client_gone = true;
                ControlFlow::Break(())
            } else if shared.abort.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        // A panic in the engine must not take the worker (and the service) down.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            backend.generate(&job.spec, &mut on_token)
        }))
    };
    let elapsed = started.elapsed().as_secs_f64();
    let old = f64::from_bits(shared.avg_job_seconds.load(Ordering::Relaxed));
    shared
        .avg_job_seconds
        .store((0.7 * old + 0.3 * elapsed).to_bits(), Ordering::Relaxed);
    metrics.generations_running.dec();
    metrics.live.generation_finished();
    shared.running.store(false, Ordering::SeqCst);
    metrics
        .request_duration
        .observe(job.received.elapsed().as_secs_f64());
    match result {
        Ok(Ok(outcome)) => {
            metrics.prompt_tokens.inc_by(outcome.prompt_tokens as u64);
            metrics
                .generated_tokens
                .inc_by(outcome.completion_tokens as u64);
            if client_gone {
                metrics.cancellations.inc();
                tracing::info!(
                    completion_tokens = outcome.completion_tokens,
                    "generation cancelled: the client disconnected"
                );
            } else if outcome.finish_reason == FinishReason::Cancelled {
                tracing::info!(
                    completion_tokens = outcome.completion_tokens,
                    "generation aborted: the shutdown timeout ended"
                );
            }
            let _ = job.events.send(Event::Done(outcome));
        }
        Ok(Err(e)) => {
            tracing::error!("generation failed: {e:#}");
            let _ = job
                .events
                .send(Event::Failed(format!("generation failed: {e:#}")));
        }
        Err(_) => {
            tracing::error!(
                "the engine panicked during generation; the request fails, the service goes on"
            );
            let _ = job.events.send(Event::Failed(
                "the engine failed during generation (panic)".into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Emits `max_new_tokens` tokens "t", waiting for a go signal per job.
    struct Fake {
        gate: mpsc::Receiver<()>,
    }

    impl Backend for Fake {
        fn generate(
            &mut self,
            job: &JobSpec,
            on_token: &mut dyn FnMut(Delta<'_>) -> ControlFlow<()>,
        ) -> anyhow::Result<Outcome> {
            let _ = self.gate.recv_timeout(Duration::from_secs(5));
            let mut n = 0;
            for _ in 0..job.max_new_tokens {
                n += 1;
                let delta = Delta {
                    text: "t",
                    new_token: true,
                };
                if on_token(delta).is_break() {
                    return Ok(Outcome {
                        prompt_tokens: job.prompt_tokens.len(),
                        completion_tokens: n,
                        finish_reason: FinishReason::Cancelled,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // Text held back to the end, as a tokenizer's unfinished character is.
            let held_back = Delta {
                text: "!",
                new_token: false,
            };
            let _ = on_token(held_back);
            Ok(Outcome {
                prompt_tokens: job.prompt_tokens.len(),
                completion_tokens: n,
                finish_reason: FinishReason::Length,
            })
        }
    }

    fn spec(n: usize) -> JobSpec {
        JobSpec {
            prompt_tokens: vec![1, 2],
            sampling: Default::default(),
            stop: vec![],
            max_new_tokens: n,
        }
    }

    #[tokio::test]
    async fn bounded_queue_refuses_and_cancels() {
        let (go, gate) = mpsc::channel();
        let metrics = Arc::new(Metrics::new());
        let s = Scheduler::start(Fake { gate }, 2, metrics.clone()).unwrap();
        let mut first = s.submit(spec(3), Instant::now()).unwrap();
        // Wait until the worker has taken the first job, so two more fit the queue.
        while s.waiting() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let second = s.submit(spec(1000), Instant::now()).unwrap();
        let third = s.submit(spec(1), Instant::now()).unwrap();
        let refused = s.submit(spec(1), Instant::now()).unwrap_err();
        assert_eq!(refused.status.as_u16(), 429);
        assert!(refused.retry_after.unwrap() >= 1);
        go.send(()).unwrap();
        let mut texts = 0;
        loop {
            match first.recv().await.unwrap() {
                Event::Text(_) => texts += 1,
                Event::Done(o) => {
                    assert_eq!(
                        (o.completion_tokens, o.finish_reason),
                        (3, FinishReason::Length)
                    );
                    break;
                }
                Event::Failed(e) => panic!("{e}"),
            }
        }
        // Three tokens and the held-back text; only the tokens are counted as generated.
        assert_eq!(texts, 4);
        let live = metrics.live.snapshot();
        let last = live.last_generation.unwrap();
        assert_eq!(last.completion_tokens, 3);
        // The second client goes away: its generation must stop early and be counted.
        drop(second);
        drop(third);
        go.send(()).unwrap();
        go.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.cancellations.get() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(metrics.cancellations.get(), 2);
        assert!(
            metrics.generated_tokens.get() < 100,
            "cancelled generation ran on"
        );
    }

    #[tokio::test]
    async fn a_reserved_place_counts_until_queued_or_dropped() {
        let (_go, gate) = mpsc::channel();
        let s = Scheduler::start(Fake { gate }, 1, Arc::new(Metrics::new())).unwrap();
        let slot = s.reserve().unwrap();
        assert_eq!(s.waiting(), 1);
        assert_eq!(s.reserve().err().unwrap().status.as_u16(), 429);
        drop(slot);
        assert_eq!(s.waiting(), 0);
        let _events = s
            .reserve()
            .unwrap()
            .submit(spec(1), Instant::now())
            .unwrap();
    }

    /// Collects a job's events until its end.
    async fn outcome(events: &mut UnboundedReceiver<Event>) -> Outcome {
        loop {
            match events.recv().await.unwrap() {
                Event::Text(_) => {}
                Event::Done(o) => return o,
                Event::Failed(e) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn abort_ends_running_and_queued_jobs() {
        let (go, gate) = mpsc::channel();
        let metrics = Arc::new(Metrics::new());
        let s = Scheduler::start(Fake { gate }, 2, metrics.clone()).unwrap();
        let mut running = s.submit(spec(100_000), Instant::now()).unwrap();
        while s.waiting() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut queued = s.submit(spec(100_000), Instant::now()).unwrap();
        go.send(()).unwrap();
        s.abort_all();
        let first = outcome(&mut running).await;
        assert_eq!(first.finish_reason, FinishReason::Cancelled);
        assert!(first.completion_tokens < 100_000);
        let second = outcome(&mut queued).await;
        assert_eq!(
            (second.finish_reason, second.completion_tokens),
            (FinishReason::Cancelled, 0)
        );
        // Aborting is not a client leaving.
        assert_eq!(metrics.cancellations.get(), 0);
    }
}
