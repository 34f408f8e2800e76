//! The scheduler: a bounded queue in front of one worker thread per loaded model that
//! owns its engine and runs continuous batching. Up to `engine.slots()` sequences
//! generate at once; a queued job joins between two steps when a slot is free, in
//! arrival order (so no request starves); each step runs one
//! [`Engine::forward_batch_read`](crate::engine::Engine::forward_batch_read) over one token
//! per decoding sequence plus the next prompt chunks of admitted sequences, at most
//! `--prefill-chunk` prompt tokens in all (so a long prompt stalls the running streams
//! for one chunk at most). A finished or cancelled sequence frees its slot at once. A
//! greedy sequence (temperature 0, no penalties) and a prompt chunk whose logits nobody
//! samples ask the engine for the greedy token only (picked on the GPU by the Vulkan
//! engine); the others for their logits.
//!
//! Up to `--max-queue` requests wait for a slot; further ones are refused at once
//! (429 with a Retry-After estimated from recent request times) instead of piling up in
//! memory. A request takes its place in the queue ([`Scheduler::reserve`]) before its
//! prompt is templated and tokenized, so that a full queue refuses it at the cost of a
//! counter check; the place is given back if the request fails before it is queued.
//!
//! Prompt cache: each slot remembers the tokens whose keys and values it holds. A new
//! sequence takes the free slot whose tokens share the longest prefix with its prompt
//! (when the engine can rewind a slot), else the least recently used free slot, and
//! prefills only from there.
//!
//! Each job streams its text back through a channel. When the receiver is gone (the
//! client disconnected and the HTTP layer dropped the stream), the next step sees the
//! closed channel, ends the sequence and counts the cancellation.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::errors::ApiError;
use super::metrics::Metrics;
use crate::engine::{ChunkOutput, Engine, Readback, SeqChunk};

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
    /// Prompt tokens whose keys and values were reused from the slot's cache.
    pub cached_tokens: usize,
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

/// What one step did to a sequence, as the backend reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqStep {
    /// The new token's text (possibly empty: held back); None when the model ended the
    /// sequence without a token (end of sequence).
    pub text: Option<String>,
    /// Set when the sequence ends with this step.
    pub finished: Option<FinishReason>,
}

/// A sequence's state between steps (sampler, stop matcher, decoder), owned by the
/// worker.
pub trait SequenceState: Send {
    /// The token the next forward pass runs for it, and its position.
    fn next_input(&self) -> (u32, usize);
    /// Ends it early (client gone, shutdown).
    fn cancel(&mut self);
    /// Whether its next token is the greedy pick of the logits alone, so that the engine
    /// may pick it ([`Readback::Greedy`]) and hand back the token instead of the logits.
    fn picks_greedily(&self) -> bool {
        false
    }
}

/// What the worker thread needs from a loaded model: its engine and the per-sequence
/// sampling and stopping.
pub trait Backend: Send + 'static {
    type Sequence: SequenceState;
    fn engine(&mut self) -> &mut dyn Engine;
    /// Starts a sequence for `job` (checks its sampling parameters).
    fn begin(&mut self, job: &JobSpec) -> anyhow::Result<Self::Sequence>;
    /// Samples from the logits of the sequence's last forwarded token, or takes the token
    /// the engine picked (for a sequence that [`picks_greedily`](SequenceState::picks_greedily)).
    fn step(
        &mut self,
        sequence: &mut Self::Sequence,
        output: ChunkOutput,
    ) -> anyhow::Result<SeqStep>;
    /// Ends the sequence: the text held back to the end (no new token) and its finish
    /// reason and token count.
    fn finish(&mut self, sequence: Self::Sequence) -> anyhow::Result<(Option<String>, Outcome)>;
}

struct Job {
    spec: JobSpec,
    events: UnboundedSender<Event>,
    received: Instant,
    enqueued: Instant,
}

/// One step at a time in the whole process: every model's worker takes the turn for
/// each forward pass, in the order they asked, so two loaded models interleave their
/// steps and never compute at once.
#[derive(Clone, Default)]
pub struct GenerationTurn(Arc<(Mutex<Tickets>, Condvar)>);

#[derive(Default)]
struct Tickets {
    next: u64,
    serving: u64,
}

/// Holding the turn; dropping it passes the turn to the next in line.
pub struct Turn<'a>(&'a GenerationTurn);

impl GenerationTurn {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tickets> {
        // Two counters stay consistent even if a holder panicked.
        self.0
             .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn take(&self) -> Turn<'_> {
        let mut tickets = self.lock();
        let mine = tickets.next;
        tickets.next += 1;
        while tickets.serving != mine {
            tickets = self
                .0
                 .1
                .wait(tickets)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        Turn(self)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.lock().serving += 1;
        self.0 .0 .1.notify_all();
    }
}

/// Shared state between the scheduler handle, the worker and the watchdog.
struct Shared {
    /// Places taken in the queue: reserved ones (prompt still being built) and
    /// queued jobs. The worker gives a place back when it admits the job to a slot.
    waiting: AtomicUsize,
    /// Set when the shutdown timeout ends: running sequences stop at their next step
    /// and queued jobs end at once, all with the `abort` finish reason.
    abort: AtomicBool,
    /// Smoothed seconds per job (f64 bits), for Retry-After.
    avg_job_seconds: AtomicU64,
    /// Sequences the engine runs at once.
    slots: usize,
}

/// How a scheduler runs its model.
#[derive(Clone)]
pub struct SchedulerOptions {
    /// Jobs that may wait for a slot.
    pub max_queue: usize,
    /// The most prompt tokens one step prefills, over all admitted sequences.
    pub prefill_chunk: usize,
    /// Taken for each step; other models' workers share it.
    pub turn: GenerationTurn,
}

impl SchedulerOptions {
    pub fn new(max_queue: usize) -> Self {
        SchedulerOptions {
            max_queue,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            turn: GenerationTurn::default(),
        }
    }
}

/// `--prefill-chunk`'s default.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// Handle to submit jobs. Dropping every handle stops the worker after its queue.
#[derive(Clone)]
pub struct Scheduler {
    sender: SyncSender<Job>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    max_queue: usize,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Scheduler {
    /// Starts the worker thread that owns `backend`, with a turn of its own.
    pub fn start<B: Backend>(
        backend: B,
        max_queue: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        Self::start_with(backend, SchedulerOptions::new(max_queue), metrics)
    }

    /// Starts the worker thread that owns `backend`.
    pub fn start_with<B: Backend>(
        mut backend: B,
        options: SchedulerOptions,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel::<Job>(options.max_queue);
        let engine = backend.engine();
        // An engine that cannot rewind a slot is reset before each sequence, which
        // clears every slot: it runs one sequence at a time.
        let slots = if engine.rewinds() {
            engine.slots().max(1)
        } else {
            1
        };
        let shared = Arc::new(Shared {
            waiting: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
            avg_job_seconds: AtomicU64::new(1.0f64.to_bits()),
            slots,
        });
        let max_queue = options.max_queue;
        let worker = Worker {
            slots: (0..slots).map(|_| SlotCache::default()).collect(),
            active: Vec::new(),
            backend,
            receiver,
            shared: shared.clone(),
            metrics: metrics.clone(),
            options,
            steps: 0,
        };
        let handle = std::thread::Builder::new()
            .name("xpu-generate".into())
            .spawn(move || worker.run())?;
        Ok(Scheduler {
            sender,
            shared,
            metrics,
            max_queue,
            worker: Arc::new(Mutex::new(Some(handle))),
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

    /// Ends every generation: running ones at their next step, queued ones at once,
    /// each with [`FinishReason::Cancelled`] (`abort` in the API).
    pub fn abort_all(&self) {
        self.shared.abort.store(true, Ordering::SeqCst);
    }

    /// Seconds until a slot is likely free: waiting jobs times the average job time,
    /// over the slots that serve them.
    pub fn retry_after(&self) -> u64 {
        let avg = f64::from_bits(self.shared.avg_job_seconds.load(Ordering::Relaxed));
        let waiting = self.shared.waiting.load(Ordering::Relaxed) as f64;
        ((waiting + 1.0) * avg / self.shared.slots as f64)
            .ceil()
            .clamp(1.0, 300.0) as u64
    }

    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// Sequences generated at once.
    pub fn slots(&self) -> usize {
        self.shared.slots
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
                // The worker gives the place back when it admits the job.
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

/// What a slot's KV cache holds.
#[derive(Default)]
struct SlotCache {
    /// The tokens at positions `0..tokens.len()`.
    tokens: Vec<u32>,
    busy: bool,
    /// The step it was last used in, for least-recently-used reuse.
    last_used: u64,
}

/// A sequence in a slot.
struct Active<S> {
    job: Job,
    sequence: S,
    slot: usize,
    /// Prompt tokens whose keys and values the slot holds.
    prefilled: usize,
    cached: usize,
    /// The dashboard's handle on it.
    live_id: u64,
    last_token: Option<Instant>,
    started: Instant,
    /// Generated tokens sent so far.
    completion_tokens: usize,
    client_gone: bool,
}

impl<S> Active<S> {
    fn decoding(&self) -> bool {
        self.prefilled == self.job.spec.prompt_tokens.len()
    }
}

/// How a sequence leaves its slot.
enum Leave {
    /// Finished by the backend's step (stop, length).
    Done,
    /// Stopped by the server (client gone, shutdown).
    Cancel,
    Fail(String),
}

struct Worker<B: Backend> {
    backend: B,
    receiver: Receiver<Job>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    options: SchedulerOptions,
    slots: Vec<SlotCache>,
    /// In admission order.
    active: Vec<Active<B::Sequence>>,
    steps: u64,
}

impl<B: Backend> Worker<B> {
    fn run(mut self) {
        self.metrics.slots_total.inc_by(self.slots.len() as i64);
        loop {
            if !self.admit() {
                break;
            }
            if !self.active.is_empty() {
                self.step();
            }
        }
        self.metrics.slots_total.dec_by(self.slots.len() as i64);
    }

    /// Moves queued jobs into free slots; blocks for one when nothing runs. False when
    /// every handle is gone and nothing is left to run.
    fn admit(&mut self) -> bool {
        while self.slots.iter().any(|s| !s.busy) {
            let job = if self.active.is_empty() {
                match self.receiver.recv() {
                    Ok(job) => job,
                    Err(_) => return false,
                }
            } else {
                match self.receiver.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return true,
                }
            };
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            self.metrics.queue_depth.dec();
            self.start(job);
        }
        true
    }

    /// Gives `job` a slot, or ends it at once.
    fn start(&mut self, job: Job) {
        self.metrics
            .queue_wait
            .observe(job.enqueued.elapsed().as_secs_f64());
        if job.events.is_closed() {
            // The client left while the request waited.
            self.metrics.cancellations.inc();
            tracing::debug!("skipping a queued request whose client has gone");
            return;
        }
        let prompt_len = job.spec.prompt_tokens.len();
        if self.shared.abort.load(Ordering::SeqCst) {
            let _ = job.events.send(Event::Done(Outcome {
                prompt_tokens: prompt_len,
                cached_tokens: 0,
                completion_tokens: 0,
                finish_reason: FinishReason::Cancelled,
            }));
            return;
        }
        let sequence = match self.backend.begin(&job.spec) {
            Ok(sequence) => sequence,
            Err(e) => {
                tracing::error!("generation failed: {e:#}");
                let _ = job
                    .events
                    .send(Event::Failed(format!("generation failed: {e:#}")));
                return;
            }
        };
        let rewinds = self.backend.engine().rewinds();
        let (slot, cached) = match self.pick_slot(&job.spec.prompt_tokens, rewinds) {
            Ok(picked) => picked,
            Err(e) => {
                tracing::error!("cannot reset the engine's cache: {e:#}");
                let _ = job
                    .events
                    .send(Event::Failed(format!("generation failed: {e:#}")));
                return;
            }
        };
        self.slots[slot].busy = true;
        self.slots[slot].tokens.truncate(cached);
        self.metrics.slots_active.inc();
        self.metrics.generations_running.inc();
        self.metrics.prompt_tokens_cached.inc_by(cached as u64);
        let live_id = self.metrics.live.generation_started(prompt_len);
        let wants_nothing = job.spec.max_new_tokens == 0;
        self.active.push(Active {
            job,
            sequence,
            slot,
            prefilled: cached,
            cached,
            live_id,
            last_token: None,
            started: Instant::now(),
            completion_tokens: 0,
            client_gone: false,
        });
        if wants_nothing {
            let index = self.active.len() - 1;
            self.leave(index, Leave::Done);
        }
    }

    /// The free slot for a prompt and how many of its tokens the slot already holds:
    /// the longest shared prefix when the engine can rewind (at most all but the last
    /// prompt token, whose logits are needed), else the least recently used slot after
    /// a reset.
    fn pick_slot(&mut self, prompt: &[u32], rewinds: bool) -> anyhow::Result<(usize, usize)> {
        let free = || self.slots.iter().enumerate().filter(|(_, s)| !s.busy);
        if !rewinds {
            let (slot, _) = free()
                .min_by_key(|(_, s)| s.last_used)
                .expect("a free slot");
            self.backend.engine().reset()?;
            self.slots.iter_mut().for_each(|s| s.tokens.clear());
            return Ok((slot, 0));
        }
        let shared = |s: &SlotCache| {
            s.tokens
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count()
                .min(prompt.len() - 1)
        };
        let (slot, cached) = free()
            .map(|(i, s)| (i, shared(s), s.last_used))
            .max_by_key(|&(i, cached, last_used)| {
                (cached, std::cmp::Reverse(last_used), std::cmp::Reverse(i))
            })
            .map(|(i, cached, _)| (i, cached))
            .expect("a free slot");
        Ok((slot, cached))
    }

    /// One forward pass for every active sequence, then their sampling.
    fn step(&mut self) {
        self.steps += 1;
        // Sequences whose client has gone, or every one at shutdown, end first.
        let abort = self.shared.abort.load(Ordering::SeqCst);
        let mut index = 0;
        while index < self.active.len() {
            let active = &mut self.active[index];
            if active.job.events.is_closed() {
                active.client_gone = true;
                self.leave(index, Leave::Cancel);
            } else if abort {
                self.leave(index, Leave::Cancel);
            } else {
                index += 1;
            }
        }
        if self.active.is_empty() {
            return;
        }

        // One token per decoding sequence, then prompt chunks in admission order.
        let mut budget = self.options.prefill_chunk;
        let mut inputs: Vec<(usize, Vec<u32>, usize)> = Vec::new();
        for (index, active) in self.active.iter().enumerate() {
            if active.decoding() {
                let (token, position) = active.sequence.next_input();
                inputs.push((index, vec![token], position));
            } else if budget > 0 {
                let prompt = &active.job.spec.prompt_tokens;
                let n = (prompt.len() - active.prefilled).min(budget);
                budget -= n;
                let tokens = prompt[active.prefilled..active.prefilled + n].to_vec();
                inputs.push((index, tokens, active.prefilled));
            }
        }
        let chunks: Vec<SeqChunk<'_>> = inputs
            .iter()
            .map(|(index, tokens, start)| SeqChunk {
                slot: self.active[*index].slot,
                tokens,
                start: *start,
            })
            .collect();
        // Logits only where they are sampled: a prompt chunk before the prompt's end needs
        // none (its greedy token, four bytes, is read and dropped), a greedy sequence only
        // the token.
        let wants: Vec<Readback> = inputs
            .iter()
            .map(|(index, tokens, _)| {
                let active = &self.active[*index];
                let samples = active.decoding()
                    || active.prefilled + tokens.len() == active.job.spec.prompt_tokens.len();
                if samples && !active.sequence.picks_greedily() {
                    Readback::Logits
                } else {
                    Readback::Greedy
                }
            })
            .collect();
        self.metrics.batch_size.observe(chunks.len() as f64);
        let result = {
            let _turn = self.options.turn.take();
            let engine = self.backend.engine();
            // A panic in the engine must not take the worker (and the service) down.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                engine.forward_batch_read(&chunks, &wants)
            }))
        };
        let outputs = match result {
            Ok(Ok(outputs)) if outputs.len() == chunks.len() => outputs,
            failed => {
                let message = match failed {
                    Ok(Ok(outputs)) => format!(
                        "the engine returned {} results for {} sequences",
                        outputs.len(),
                        chunks.len()
                    ),
                    Ok(Err(e)) => format!("generation failed: {e:#}"),
                    Err(_) => "the engine failed during generation (panic)".into(),
                };
                tracing::error!("{message}; the batch's requests fail, the service goes on");
                // What the slots hold is unknown now.
                for slot in &mut self.slots {
                    slot.tokens.clear();
                }
                let mut indices: Vec<usize> = inputs.iter().map(|(i, _, _)| *i).collect();
                indices.sort_unstable();
                for index in indices.into_iter().rev() {
                    self.leave(index, Leave::Fail(message.clone()));
                }
                return;
            }
        };

        // Sample in reverse so that a sequence leaving does not move the ones before.
        let mut ended = Vec::new();
        for ((index, tokens, start), output) in inputs.into_iter().zip(outputs).rev() {
            let slot = &mut self.slots[self.active[index].slot];
            slot.tokens.truncate(start);
            slot.tokens.extend_from_slice(&tokens);
            slot.last_used = self.steps;
            let active = &mut self.active[index];
            if !active.decoding() {
                active.prefilled += tokens.len();
                if !active.decoding() {
                    continue;
                }
            }
            match self.backend.step(&mut active.sequence, output) {
                Ok(step) => {
                    if let Some(text) = step.text {
                        self.token(index, text);
                    }
                    if step.finished.is_some() {
                        ended.push((index, Leave::Done));
                    }
                }
                Err(e) => ended.push((index, Leave::Fail(format!("generation failed: {e:#}")))),
            }
        }
        // `ended` is in descending index order.
        for (index, how) in ended {
            self.leave(index, how);
        }
        let used: usize = self
            .active
            .iter()
            .map(|a| self.slots[a.slot].tokens.len())
            .sum();
        let capacity = self.slots.len() * self.backend.engine().context_length();
        self.metrics
            .kv_cache_usage
            .set(used as f64 / capacity.max(1) as f64);
    }

    /// A generated token's text: count it and send it.
    fn token(&mut self, index: usize, text: String) {
        let active = &mut self.active[index];
        let now = Instant::now();
        let since_arrival = active
            .last_token
            .is_none()
            .then(|| now - active.job.received);
        self.metrics.live.token(active.live_id, now, since_arrival);
        match active.last_token {
            None => self
                .metrics
                .time_to_first_token
                .observe((now - active.job.received).as_secs_f64()),
            Some(prev) => self
                .metrics
                .time_per_output_token
                .observe((now - prev).as_secs_f64()),
        }
        active.last_token = Some(now);
        active.completion_tokens += 1;
        if !text.is_empty() && active.job.events.send(Event::Text(text)).is_err() {
            active.client_gone = true;
        }
    }

    /// Ends the sequence at `index`: its last text and outcome go to the client, its
    /// slot is free for the next job.
    fn leave(&mut self, index: usize, how: Leave) {
        let mut active = self.active.remove(index);
        self.slots[active.slot].busy = false;
        self.metrics.slots_active.dec();
        self.metrics.generations_running.dec();
        self.metrics.live.generation_finished(active.live_id);
        let elapsed = active.started.elapsed().as_secs_f64();
        let old = f64::from_bits(self.shared.avg_job_seconds.load(Ordering::Relaxed));
        self.shared
            .avg_job_seconds
            .store((0.7 * old + 0.3 * elapsed).to_bits(), Ordering::Relaxed);
        self.metrics
            .request_duration
            .observe(active.job.received.elapsed().as_secs_f64());
        if matches!(how, Leave::Cancel) {
            active.sequence.cancel();
        }
        let events = &active.job.events;
        let finished = self.backend.finish(active.sequence);
        let message = match (how, finished) {
            (Leave::Fail(message), _) => message,
            (_, Err(e)) => format!("generation failed: {e:#}"),
            (_, Ok((held_back, mut outcome))) => {
                outcome.cached_tokens = active.cached;
                self.metrics
                    .prompt_tokens
                    .inc_by(outcome.prompt_tokens as u64);
                self.metrics
                    .generated_tokens
                    .inc_by(outcome.completion_tokens as u64);
                if active.client_gone {
                    self.metrics.cancellations.inc();
                    tracing::info!(
                        completion_tokens = outcome.completion_tokens,
                        "generation cancelled: the client disconnected"
                    );
                    return;
                }
                if outcome.finish_reason == FinishReason::Cancelled {
                    tracing::info!(
                        completion_tokens = outcome.completion_tokens,
                        "generation aborted: the shutdown timeout ended"
                    );
                }
                // Held-back text at the end: sent, but no new token.
                if let Some(text) = held_back.filter(|t| !t.is_empty()) {
                    let _ = events.send(Event::Text(text));
                }
                let _ = events.send(Event::Done(outcome));
                return;
            }
        };
        tracing::error!("{message}");
        let _ = events.send(Event::Failed(message));
    }
}

/// A fake engine and backend for the scheduler's tests and the handlers' tests.
#[cfg(test)]
pub mod testing {
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// One chunk of a forward pass as the fake engine saw it: (slot, tokens, start).
    pub type SeenChunk = (usize, Vec<u32>, usize);

    /// Slots that hold token lists; each chunk's "logits" are one number that depends
    /// only on the tokens its slot holds, so a sequence's text tells whether its KV was
    /// right, whatever the batch or the cache did.
    pub struct FakeEngine {
        pub slots: Vec<Vec<u32>>,
        pub context_length: usize,
        pub rewinds: bool,
        /// Every forward pass, in order.
        pub passes: Arc<Mutex<Vec<Vec<SeenChunk>>>>,
        /// What each pass asked to read back of its chunks, in order.
        pub wants: Arc<Mutex<Vec<Vec<Readback>>>>,
        /// Waits this long per pass (so that tests can catch sequences mid-run).
        pub delay: Duration,
        /// Passes after which the next one fails (None: never).
        pub fail_after: Option<usize>,
        /// Shared by several engines: which engine ran each pass (`name`).
        pub order: Option<(Arc<Mutex<Vec<&'static str>>>, &'static str)>,
    }

    impl FakeEngine {
        pub fn new(slots: usize, context_length: usize) -> Self {
            FakeEngine {
                slots: vec![Vec::new(); slots],
                context_length,
                rewinds: true,
                passes: Default::default(),
                wants: Default::default(),
                delay: Duration::from_millis(1),
                fail_after: None,
                order: None,
            }
        }
    }

    impl Engine for FakeEngine {
        fn forward(&mut self, tokens: &[u32], start: usize) -> anyhow::Result<Vec<f32>> {
            Ok(self
                .forward_batch(&[SeqChunk {
                    slot: 0,
                    tokens,
                    start,
                }])?
                .remove(0))
        }

        fn reset(&mut self) -> anyhow::Result<()> {
            self.slots.iter_mut().for_each(Vec::clear);
            Ok(())
        }

        fn context_length(&self) -> usize {
            self.context_length
        }

        fn slots(&self) -> usize {
            self.slots.len()
        }

        fn rewinds(&self) -> bool {
            self.rewinds
        }

        fn forward_batch(&mut self, chunks: &[SeqChunk<'_>]) -> anyhow::Result<Vec<Vec<f32>>> {
            std::thread::sleep(self.delay);
            let mut passes = self.passes.lock().unwrap();
            if self.fail_after == Some(passes.len()) {
                passes.push(Vec::new());
                anyhow::bail!("the device was lost");
            }
            if let Some((order, name)) = &self.order {
                order.lock().unwrap().push(name);
            }
            let mut seen = Vec::new();
            let mut out = Vec::new();
            for c in chunks {
                assert!(!seen.iter().any(|(s, _, _): &SeenChunk| *s == c.slot));
                let held = &mut self.slots[c.slot];
                assert!(c.start <= held.len(), "a chunk skipped positions");
                assert!(self.rewinds || c.start == held.len(), "rewound");
                held.truncate(c.start);
                held.extend_from_slice(c.tokens);
                assert!(held.len() <= self.context_length, "past the slot's end");
                let digest = held.iter().enumerate().fold(0u64, |h, (i, &t)| {
                    (h * 31 + t as u64 * (i as u64 + 1)) % 1_000_003
                });
                out.push(vec![digest as f32]);
                seen.push((c.slot, c.tokens.to_vec(), c.start));
            }
            passes.push(seen);
            Ok(out)
        }

        // The "greedy token" of a chunk is its one logit, as a number.
        fn forward_batch_read(
            &mut self,
            chunks: &[SeqChunk<'_>],
            wants: &[Readback],
        ) -> anyhow::Result<Vec<ChunkOutput>> {
            self.wants.lock().unwrap().push(wants.to_vec());
            let rows = self.forward_batch(chunks)?;
            Ok(rows
                .into_iter()
                .zip(wants)
                .map(|(row, want)| match want {
                    Readback::Logits => ChunkOutput::Logits(row),
                    Readback::Greedy => ChunkOutput::Token(row[0] as u32),
                })
                .collect())
        }

        fn device_description(&self) -> String {
            "fake".into()
        }
    }

    /// Emits the logits' number as each token's text, then feeds token 7; a job with
    /// temperature 0 takes the number as a greedy token instead (the same text).
    pub struct FakeSequence {
        greedy: bool,
        position: usize,
        prompt_tokens: usize,
        generated: usize,
        max_new_tokens: usize,
        context_length: usize,
        finish: FinishReason,
    }

    impl SequenceState for FakeSequence {
        fn next_input(&self) -> (u32, usize) {
            (7, self.position - 1)
        }
        fn cancel(&mut self) {
            self.finish = FinishReason::Cancelled;
        }
        fn picks_greedily(&self) -> bool {
            self.greedy
        }
    }

    pub struct FakeBackend {
        pub engine: FakeEngine,
        /// When set, each job waits for a go signal as it starts.
        pub gate: Option<mpsc::Receiver<()>>,
        /// Prompts in the order their jobs started.
        pub started: Arc<Mutex<Vec<Vec<u32>>>>,
    }

    impl FakeBackend {
        pub fn new(engine: FakeEngine) -> Self {
            FakeBackend {
                engine,
                gate: None,
                started: Default::default(),
            }
        }

        pub fn gated(engine: FakeEngine, gate: mpsc::Receiver<()>) -> Self {
            FakeBackend {
                gate: Some(gate),
                ..Self::new(engine)
            }
        }
    }

    impl Backend for FakeBackend {
        type Sequence = FakeSequence;

        fn engine(&mut self) -> &mut dyn Engine {
            &mut self.engine
        }

        fn begin(&mut self, job: &JobSpec) -> anyhow::Result<FakeSequence> {
            if let Some(gate) = &self.gate {
                let _ = gate.recv_timeout(Duration::from_secs(10));
            }
            self.started.lock().unwrap().push(job.prompt_tokens.clone());
            Ok(FakeSequence {
                greedy: job.sampling.temperature == Some(0.0),
                position: job.prompt_tokens.len(),
                prompt_tokens: job.prompt_tokens.len(),
                generated: 0,
                max_new_tokens: job.max_new_tokens,
                context_length: self.engine.context_length,
                finish: FinishReason::Length,
            })
        }

        fn step(&mut self, seq: &mut FakeSequence, output: ChunkOutput) -> anyhow::Result<SeqStep> {
            let text = match output {
                ChunkOutput::Logits(logits) if !seq.greedy => format!("{} ", logits[0]),
                ChunkOutput::Token(token) if seq.greedy => format!("{token} "),
                other => anyhow::bail!(
                    "the engine answered {other:?} to a greedy={} sequence",
                    seq.greedy
                ),
            };
            seq.generated += 1;
            let finished = (seq.generated >= seq.max_new_tokens
                || seq.position >= seq.context_length)
                .then_some(FinishReason::Length);
            if finished.is_none() {
                seq.position += 1;
            }
            Ok(SeqStep {
                text: Some(text),
                finished,
            })
        }

        fn finish(&mut self, seq: FakeSequence) -> anyhow::Result<(Option<String>, Outcome)> {
            // Text held back to the end, as a tokenizer's unfinished character is.
            Ok((
                Some("!".into()),
                Outcome {
                    prompt_tokens: seq.prompt_tokens,
                    cached_tokens: 0,
                    completion_tokens: seq.generated,
                    finish_reason: seq.finish,
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{FakeBackend, FakeEngine};
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn spec(n: usize) -> JobSpec {
        prompt_spec(vec![1, 2], n)
    }

    fn prompt_spec(prompt_tokens: Vec<u32>, n: usize) -> JobSpec {
        JobSpec {
            prompt_tokens,
            sampling: Default::default(),
            stop: vec![],
            max_new_tokens: n,
        }
    }

    /// Collects a job's text and outcome.
    async fn outcome(events: &mut UnboundedReceiver<Event>) -> (String, Outcome) {
        let mut text = String::new();
        loop {
            match events.recv().await.unwrap() {
                Event::Text(t) => text.push_str(&t),
                Event::Done(o) => return (text, o),
                Event::Failed(e) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn bounded_queue_refuses_and_cancels() {
        let (go, gate) = mpsc::channel();
        let metrics = Arc::new(Metrics::new());
        let backend = FakeBackend::gated(FakeEngine::new(1, 100_000), gate);
        let s = Scheduler::start(backend, 2, metrics.clone()).unwrap();
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
        let done = loop {
            match first.recv().await.unwrap() {
                Event::Text(_) => texts += 1,
                Event::Done(o) => break o,
                Event::Failed(e) => panic!("{e}"),
            }
        };
        assert_eq!(
            (done.completion_tokens, done.finish_reason),
            (3, FinishReason::Length)
        );
        // Three tokens and the held-back text; only the tokens are counted as generated.
        assert_eq!(texts, 4);
        let last = metrics.live.snapshot().last_generation.unwrap();
        assert_eq!(last.completion_tokens, 3);
        // The other clients go away: their generations must stop early and be counted.
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
        let backend = FakeBackend::gated(FakeEngine::new(1, 64), gate);
        let s = Scheduler::start(backend, 1, Arc::new(Metrics::new())).unwrap();
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

    #[tokio::test]
    async fn abort_ends_running_and_queued_jobs() {
        let metrics = Arc::new(Metrics::new());
        let backend = FakeBackend::new(FakeEngine::new(2, 1_000_000));
        let s = Scheduler::start(backend, 4, metrics.clone()).unwrap();
        let mut running: Vec<_> = (0..2)
            .map(|_| s.submit(spec(100_000), Instant::now()).unwrap())
            .collect();
        while s.waiting() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut queued = s.submit(spec(100_000), Instant::now()).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.abort_all();
        for events in &mut running {
            let (_, o) = outcome(events).await;
            assert_eq!(o.finish_reason, FinishReason::Cancelled);
            assert!(o.completion_tokens < 100_000);
        }
        let (_, o) = outcome(&mut queued).await;
        assert_eq!(
            (o.finish_reason, o.completion_tokens),
            (FinishReason::Cancelled, 0)
        );
        // Aborting is not a client leaving.
        assert_eq!(metrics.cancellations.get(), 0);
    }

    /// Runs `jobs` on a fresh scheduler with `slots` slots; their texts and outcomes,
    /// and the forward passes.
    async fn run_all(
        engine: FakeEngine,
        prefill_chunk: usize,
        jobs: Vec<JobSpec>,
    ) -> (Vec<(String, Outcome)>, Vec<Vec<super::testing::SeenChunk>>) {
        let passes = engine.passes.clone();
        let options = SchedulerOptions {
            prefill_chunk,
            ..SchedulerOptions::new(64)
        };
        let s = Scheduler::start_with(FakeBackend::new(engine), options, Arc::new(Metrics::new()))
            .unwrap();
        let mut receivers: Vec<_> = jobs
            .into_iter()
            .map(|j| s.submit(j, Instant::now()).unwrap())
            .collect();
        let mut results = Vec::new();
        for r in &mut receivers {
            results.push(outcome(r).await);
        }
        let passes = passes.lock().unwrap().clone();
        (results, passes)
    }

    #[tokio::test]
    async fn sequences_share_passes_and_give_what_they_give_alone() {
        let prompts = [vec![1, 2, 3], vec![4, 5], vec![6, 7, 8, 9], vec![10]];
        let jobs: Vec<JobSpec> = prompts.iter().map(|p| prompt_spec(p.clone(), 6)).collect();
        let (batched, passes) = run_all(FakeEngine::new(4, 64), 512, jobs.clone()).await;
        assert!(
            passes.iter().any(|p| p.len() == 4),
            "four sequences never shared a pass: {passes:?}"
        );
        for (job, together) in jobs.into_iter().zip(&batched) {
            let (alone, _) = run_all(FakeEngine::new(1, 64), 512, vec![job]).await;
            assert_eq!(alone[0].0, together.0);
            assert_eq!(together.1.completion_tokens, 6);
        }
    }

    #[tokio::test]
    async fn greedy_sequences_and_unsampled_prompt_chunks_read_only_the_token() {
        let greedy = JobSpec {
            sampling: SamplingRequest {
                temperature: Some(0.0),
                ..Default::default()
            },
            ..prompt_spec((100..120).collect(), 5)
        };
        let sampled = prompt_spec((100..120).collect(), 5);
        let engine = FakeEngine::new(2, 64);
        let wants = engine.wants.clone();
        // Prompts of 20 tokens in chunks of 8: two chunks before each prompt's end.
        let (results, passes) = run_all(engine, 8, vec![greedy, sampled]).await;
        assert_eq!(
            results[0].0, results[1].0,
            "the greedy token changed the text"
        );
        let wants = wants.lock().unwrap().clone();
        assert_eq!(wants.len(), passes.len());
        for (pass, wants) in passes.iter().zip(&wants) {
            for ((slot, tokens, start), want) in pass.iter().zip(wants) {
                // The first job runs in the first slot it finds free (slot 0), the second in
                // slot 1; a chunk is sampled when it ends its prompt or decodes.
                let sampled = start + tokens.len() >= 20;
                let expected = if sampled && *slot == 1 {
                    Readback::Logits
                } else {
                    Readback::Greedy
                };
                assert_eq!(*want, expected, "slot {slot} at {start}: {pass:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_long_prompt_is_prefilled_in_chunks_between_decode_steps() {
        let short = prompt_spec(vec![1, 2], 30);
        let long = prompt_spec((100..150).collect(), 3);
        let (results, passes) = run_all(FakeEngine::new(2, 256), 8, vec![short, long]).await;
        let (chunked, _) = run_all(
            FakeEngine::new(1, 256),
            512,
            vec![prompt_spec((100..150).collect(), 3)],
        )
        .await;
        assert_eq!(results[1].0, chunked[0].0, "chunking changed the result");
        for pass in &passes {
            let prompt_tokens: usize = pass
                .iter()
                .filter(|(_, t, _)| t.len() > 1 || t[0] != 7)
                .map(|(_, t, _)| t.len())
                .sum();
            assert!(prompt_tokens <= 8, "{pass:?}");
        }
        // The short sequence decodes in every pass while the long prompt is prefilled.
        let prefill_passes: Vec<_> = passes
            .iter()
            .filter(|p| p.iter().any(|(_, t, _)| t[0] >= 100))
            .collect();
        assert!(prefill_passes.len() >= 6, "{passes:?}");
        assert!(
            prefill_passes
                .iter()
                .skip(1)
                .all(|p| p.iter().any(|(_, t, _)| t == &[7])),
            "{passes:?}"
        );
    }

    #[tokio::test]
    async fn more_jobs_than_slots_all_complete_in_arrival_order() {
        let engine = FakeEngine::new(2, 64);
        let backend = FakeBackend::new(engine);
        let started = backend.started.clone();
        let s = Scheduler::start(backend, 16, Arc::new(Metrics::new())).unwrap();
        let mut receivers: Vec<_> = (0..9u32)
            .map(|i| {
                s.submit(prompt_spec(vec![i + 1; 3], 4), Instant::now())
                    .unwrap()
            })
            .collect();
        for r in &mut receivers {
            let (_, o) = outcome(r).await;
            assert_eq!(o.completion_tokens, 4);
        }
        let order: Vec<u32> = started.lock().unwrap().iter().map(|p| p[0]).collect();
        assert_eq!(order, (1..=9).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_slot_end_stops_with_length() {
        let (results, _) = run_all(
            FakeEngine::new(2, 10),
            512,
            vec![spec(100), prompt_spec(vec![3; 9], 100)],
        )
        .await;
        assert_eq!(results[0].1.finish_reason, FinishReason::Length);
        // The last token is sampled, never forwarded: the slot holds 10.
        assert_eq!(results[0].1.completion_tokens, 9);
        assert_eq!(results[1].1.completion_tokens, 2);
    }

    #[tokio::test]
    async fn the_prompt_cache_reuses_a_slots_prefix_and_gives_the_same_text() {
        let first: Vec<u32> = (1..=10).collect();
        let mut second = first.clone();
        second.extend([20, 21]);
        let metrics = Arc::new(Metrics::new());
        let s =
            Scheduler::start(FakeBackend::new(FakeEngine::new(2, 64)), 4, metrics.clone()).unwrap();
        let (_, a) = outcome(&mut s.submit(prompt_spec(first, 3), Instant::now()).unwrap()).await;
        assert_eq!(a.cached_tokens, 0);
        let (warm, b) = outcome(
            &mut s
                .submit(prompt_spec(second.clone(), 3), Instant::now())
                .unwrap(),
        )
        .await;
        assert_eq!(b.cached_tokens, 10);
        assert_eq!(metrics.prompt_tokens_cached.get(), 10);
        // The same prompt again: all but the last token come from the cache.
        let (again, c) = outcome(
            &mut s
                .submit(prompt_spec(second.clone(), 3), Instant::now())
                .unwrap(),
        )
        .await;
        assert_eq!(c.cached_tokens, 11);
        let (cold, _) = run_all(FakeEngine::new(1, 64), 512, vec![prompt_spec(second, 3)]).await;
        assert_eq!(warm, cold[0].0);
        assert_eq!(again, cold[0].0);
    }

    #[tokio::test]
    async fn an_engine_without_rewind_is_reset_and_runs_one_at_a_time() {
        let mut engine = FakeEngine::new(4, 64);
        engine.rewinds = false;
        let jobs = vec![spec(3), spec(3), spec(3)];
        let (results, passes) = run_all(engine, 512, jobs).await;
        assert!(passes.iter().all(|p| p.len() == 1));
        assert!(results
            .iter()
            .all(|(_, o)| o.cached_tokens == 0 && o.completion_tokens == 3));
    }

    #[tokio::test]
    async fn a_cancelled_stream_frees_its_slot_while_the_others_go_on() {
        let metrics = Arc::new(Metrics::new());
        let mut engine = FakeEngine::new(4, 100_000);
        engine.delay = Duration::from_millis(2);
        let s = Scheduler::start(FakeBackend::new(engine), 8, metrics.clone()).unwrap();
        let mut streams: Vec<_> = (0..4)
            .map(|_| s.submit(spec(200), Instant::now()).unwrap())
            .collect();
        // One more than the slots: it runs once the cancelled one frees its slot.
        let mut fifth = s.submit(spec(5), Instant::now()).unwrap();
        let _ = streams[1].recv().await;
        drop(streams.remove(1));
        let (_, o) = outcome(&mut fifth).await;
        assert_eq!(o.completion_tokens, 5);
        for r in &mut streams {
            let (_, o) = outcome(r).await;
            assert_eq!(
                (o.completion_tokens, o.finish_reason),
                (200, FinishReason::Length)
            );
        }
        assert_eq!(metrics.cancellations.get(), 1);
        assert_eq!(metrics.slots_active.get(), 0);
    }

    #[tokio::test]
    async fn an_engine_failure_fails_its_batch_and_the_worker_goes_on() {
        let mut engine = FakeEngine::new(2, 64);
        engine.fail_after = Some(3);
        let s = Scheduler::start(FakeBackend::new(engine), 8, Arc::new(Metrics::new())).unwrap();
        let mut a = s.submit(spec(20), Instant::now()).unwrap();
        let mut b = s.submit(spec(20), Instant::now()).unwrap();
        for r in [&mut a, &mut b] {
            loop {
                match r.recv().await.unwrap() {
                    Event::Text(_) => {}
                    Event::Failed(e) => {
                        assert!(e.contains("device was lost"), "{e}");
                        break;
                    }
                    Event::Done(o) => panic!("{o:?}"),
                }
            }
        }
        let (_, o) = outcome(&mut s.submit(spec(2), Instant::now()).unwrap()).await;
        assert_eq!(o.completion_tokens, 2);
    }

    #[tokio::test]
    async fn two_models_take_turns_per_step() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let turn = GenerationTurn::default();
        let metrics = Arc::new(Metrics::new());
        let start = |name| {
            let mut engine = FakeEngine::new(1, 1000);
            engine.order = Some((order.clone(), name));
            let options = SchedulerOptions {
                turn: turn.clone(),
                ..SchedulerOptions::new(4)
            };
            Scheduler::start_with(FakeBackend::new(engine), options, metrics.clone()).unwrap()
        };
        let (a, b) = (start("a"), start("b"));
        let mut ra = a.submit(spec(40), Instant::now()).unwrap();
        let mut rb = b.submit(spec(40), Instant::now()).unwrap();
        outcome(&mut ra).await;
        outcome(&mut rb).await;
        let order = order.lock().unwrap();
        // While both run, they take turns: per job, not per step, there would be one
        // switch.
        let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(switches >= 20, "{order:?}");
    }
}
