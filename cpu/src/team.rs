//! A fixed team of worker threads for the many short parallel steps of a forward
//! pass.
//!
//! A decode step of a small model is a few hundred parallel steps of tens of
//! microseconds each (every matrix product, the attention). With rayon, idle
//! workers go to sleep after a few yields and each step pays for waking them
//! through the kernel: on SmolLM2 that was about a tenth of the CPU time. The team's
//! workers spin between steps, as llama.cpp's thread pool does, and only go to sleep
//! (on a condition variable) after [`SPIN`] without work, so an idle server does not
//! burn its cores.
//!
//! Each step splits its items into one contiguous share per thread. A thread claims
//! the items of its own share one at a time from the front, by a compare-and-swap on
//! a word on its own cache line, so on an idle machine a claim costs no traffic
//! between cores; a thread that has finished its share steals what is left of the
//! others' from the back. The only shared word written during a step is the count of
//! unfinished items, once per worker.
//!
//! A server shares its machine with other programs, so any worker may lose its core
//! for a scheduler time slice (milliseconds, hundreds of steps). A step therefore
//! never waits for a worker to *arrive*: the caller steals whatever the others have
//! not begun, and a step ends when every item is done, not when every worker has
//! checked in. A worker that arrives late finds its share empty. A share's word holds
//! both ends of what is left of it, so a claim made with a stale view of the word
//! fails, and one that succeeds takes an item not yet claimed in the open step, even
//! if the worker last looked at an earlier step. Only an item that a worker claimed
//! and then lost its core in the middle of is waited for; items are small (the
//! products split into several per thread), so that costs a fraction of a step, not
//! a time slice per step. While the caller waits for such an item, and while an idle
//! worker spins, they yield their core every so often, so that a descheduled team
//! mate sharing it gets to run.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

/// How long a worker waits for work before it sleeps.
const SPIN: Duration = Duration::from_millis(5);

/// How long a thread spins on a word before it starts yielding its core between
/// checks: longer than the gaps between the steps of a forward pass on an idle
/// machine, far shorter than a scheduler time slice.
const YIELD_AFTER: Duration = Duration::from_micros(50);

/// The most items one step can have (a share's ends are 32-bit halves of a word).
const MAX_ITEMS: usize = u32::MAX as usize;

/// The current job: a function of (item, thread) for items `0..items`.
type JobFn<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// What is left of one thread's share of the open step: items `next..end`, the low and
/// high halves of one word, so that a claim checks and moves both ends at once.
struct Share(AtomicU64);

impl Share {
    fn pack(next: usize, end: usize) -> u64 {
        ((end as u64) << 32) | next as u64
    }

    fn unpack(word: u64) -> (usize, usize) {
        ((word & u64::from(u32::MAX)) as usize, (word >> 32) as usize)
    }

    /// Hands out `next..end` (called by `run` only, while no item of this share can
    /// be claimed: the last step's shares are all empty).
    fn open(&self, next: usize, end: usize) {
        self.0.store(Share::pack(next, end), SeqCst);
    }

    /// Claims the first item left, for the share's owner.
    fn take_front(&self) -> Option<usize> {
        self.take(|next, end| (next, Share::pack(next + 1, end)))
    }

    /// Claims the last item left, for a thread that has finished its own share.
    fn take_back(&self) -> Option<usize> {
        self.take(|next, end| (end - 1, Share::pack(next, end - 1)))
    }

    /// Claims the item `pick` chooses from a non-empty `next..end` by replacing the
    /// word with the one it returns. The exchange succeeds only if the word has not
    /// changed since it was read, so the item is one that nobody has claimed in the
    /// step that is open at that moment; the caller reads the step's job after this.
    fn take(&self, pick: impl Fn(usize, usize) -> (usize, u64)) -> Option<usize> {
        let mut word = self.0.load(Relaxed);
        loop {
            let (next, end) = Share::unpack(word);
            if next >= end {
                return None;
            }
            let (item, claimed) = pick(next, end);
            match self
                .0
                .compare_exchange_weak(word, claimed, Acquire, Relaxed)
            {
                Ok(_) => return Some(item),
                Err(now) => word = now,
            }
        }
    }

    fn is_empty(&self) -> bool {
        let (next, end) = Share::unpack(self.0.load(SeqCst));
        next >= end
    }
}

struct Shared {
    /// One share per thread, each on its own cache line.
    shares: Box<[CachePadded<Share>]>,
    /// Items of the open step not counted as done yet: each worker subtracts what it
    /// did once it finds nothing left to claim; the caller's own items are not
    /// subtracted (it compares with what it did itself).
    unfinished: CachePadded<AtomicUsize>,
    /// The job of the open step (erased lifetime: `run` waits until every item is
    /// done before it returns, and only a thread that claimed an item reads it).
    job: UnsafeCell<Option<JobFn<'static>>>,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by `run` while every share is empty and every item of
// the last step is done, so no thread reads it then; a thread reads it only after
// claiming an item of the open step, which keeps the step open until that item is done.
unsafe impl Sync for Shared {}

impl Shared {
    /// Claims an item for `thread`: from the front of its own share, else from the
    /// back of another thread's (the next ones first, so thieves spread out).
    fn claim(&self, thread: usize) -> Option<usize> {
        let n = self.shares.len();
        self.shares[thread]
            .take_front()
            .or_else(|| (1..n).find_map(|k| self.shares[(thread + k) % n].take_back()))
    }

    /// Runs the items that `thread` claims, `first` and then whatever is left in any
    /// share; returns how many it ran and the first panic among them (each item still
    /// counts as done).
    fn work(&self, first: usize, thread: usize) -> (usize, Option<Box<dyn std::any::Any + Send>>) {
        let mut panic = None;
        let mut done = 0;
        let mut item = Some(first);
        while let Some(i) = item {
            // SAFETY: the item was claimed from the open step, whose job `run` set
            // before opening it and clears only after this item is counted as done.
            let job = unsafe { *self.job.get() }.expect("an open step has a job");
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| job(i, thread))) {
                panic.get_or_insert(p);
            }
            done += 1;
            item = self.claim(thread);
        }
        (done, panic)
    }
}

/// Spins, then yields the core, between checks of a condition.
struct Backoff {
    since: Option<Instant>,
    spins: u32,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            since: None,
            spins: 0,
        }
    }

    /// Waits a little; returns how long this backoff has waited so far (measured only
    /// every so often, so the fast path stays a pause instruction).
    fn pause(&mut self) -> Duration {
        self.spins = self.spins.wrapping_add(1);
        let Some(since) = self.since else {
            if self.spins.is_multiple_of(256) {
                self.since = Some(Instant::now());
            }
            std::hint::spin_loop();
            return Duration::ZERO;
        };
        let waited = since.elapsed();
        if waited < YIELD_AFTER {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
        waited
    }
}

/// A team of `threads` threads: the caller and `threads - 1` workers.
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// `run` takes `&self`; this keeps two runs from overlapping.
    running: Mutex<()>,
}

impl Team {
    /// A team of `threads` (at least 1) threads.
    pub fn new(threads: usize) -> Team {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            shares: (0..threads)
                .map(|_| CachePadded::new(Share(AtomicU64::new(0))))
                .collect(),
            unfinished: CachePadded::new(AtomicUsize::new(0)),
            job: UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|thread| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("xpu-cpu-{thread}"))
                    .spawn(move || worker(&shared, thread))
                    .expect("spawning a CPU worker thread")
            })
            .collect();
        Team {
            shared,
            workers,
            running: Mutex::new(()),
        }
    }

    /// Calls `job(index, chunk, thread)` for each `chunk`-long piece of `data` (the
    /// last may be shorter), spread over the team as [`Team::run`] does.
    pub fn run_chunks_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        job: &(dyn Fn(usize, &mut [T], usize) + Sync),
    ) {
        assert!(chunk > 0, "chunk length must be positive");
        let len = data.len();
        let base = SendPtr(data.as_mut_ptr());
        self.run(len.div_ceil(chunk), &|i, thread| {
            let start = i * chunk;
            let end = (start + chunk).min(len);
            // SAFETY: items are distinct, so their ranges are disjoint pieces of `data`,
            // which stays mutably borrowed until `run` has returned.
            let piece =
                unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
            job(i, piece, thread);
        });
    }

    /// Threads in the team, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `job(item, thread)` for every item in `0..items`, spread over the team
    /// (`thread` is in `0..threads()`, each thread's calls run one after another, so
    /// per-thread scratch space can be indexed by it). Returns when all are done. A
    /// panic in a job is re-raised here. A job must not call `run` on the same team
    /// (the team runs one job at a time, so that would wait forever).
    ///
    /// Thread `t` starts on the `t`-th of `threads()` equal contiguous runs of items,
    /// but which thread runs which item depends on timing; every item runs exactly
    /// once.
    pub fn run(&self, items: usize, job: &(dyn Fn(usize, usize) + Sync)) {
        if items == 0 {
            return;
        }
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        if self.workers.is_empty() || items == 1 {
            (0..items).for_each(|i| job(i, 0));
            return;
        }
        assert!(items <= MAX_ITEMS, "too many items for one step");
        // SAFETY: every share is empty and every item of the last step is done, so no
        // thread reads `job`; this run waits for all of its items before the borrow it
        // erases ends.
        unsafe { *s.job.get() = Some(std::mem::transmute::<JobFn<'_>, JobFn<'static>>(job)) };
        s.unfinished.store(items, Relaxed);
        // Open the workers' shares first, so that they start while the caller opens
        // its own.
        let threads = s.shares.len();
        for t in (0..threads).rev() {
            s.shares[t].open(t * items / threads, (t + 1) * items / threads);
        }
        if s.sleeping.load(SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }

        let (done, panic) = match s.claim(0) {
            Some(first) => s.work(first, 0),
            None => (0, None),
        };
        let mut backoff = Backoff::new();
        while s.unfinished.load(Acquire) != done {
            backoff.pause();
        }
        // SAFETY: every item is done and none can be claimed any more.
        unsafe { *s.job.get() = None };
        if let Some(panic) = panic {
            s.panicked.store(false, Relaxed);
            std::panic::resume_unwind(panic);
        }
        if s.panicked.swap(false, Relaxed) {
            panic!("a CPU worker thread panicked");
        }
    }
}

/// A pointer that crosses to worker threads, for disjoint writes.
struct SendPtr<T>(*mut T);
// SAFETY: used only by `run_chunks_mut`, whose workers write disjoint ranges of a
// slice of `T: Send` that stays borrowed until they are done.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as for `Send`: shared only to hand each worker its own range.
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

fn worker(s: &Shared, thread: usize) {
    let own = &s.shares[thread];
    let mut backoff = Backoff::new();
    loop {
        if s.stop.load(Acquire) {
            return;
        }
        // Only the own share is watched between steps: reading another thread's word
        // while it claims from it would move that cache line at every claim.
        if let Some(first) = own.take_front() {
            let (done, panic) = s.work(first, thread);
            if panic.is_some() {
                s.panicked.store(true, Relaxed);
            }
            s.unfinished.fetch_sub(done, Release);
            backoff = Backoff::new();
            continue;
        }
        if backoff.pause() < SPIN {
            continue;
        }
        let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.sleeping.fetch_add(1, SeqCst);
        // `run` opens the shares before it reads `sleeping`, and this worker counts
        // itself before it checks its share: one of the two sees the other.
        if own.is_empty() && !s.stop.load(SeqCst) {
            drop(s.wake.wait(guard).unwrap_or_else(|e| e.into_inner()));
        }
        s.sleeping.fetch_sub(1, SeqCst);
        backoff = Backoff::new();
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        {
            let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team")
            .field("threads", &self.threads())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_on_a_valid_thread() {
        for threads in [1, 2, 3] {
            let team = Team::new(threads);
            for items in [0, 1, 2, 7, 1000] {
                let counts: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
                team.run(items, &|i, t| {
                    assert!(t < threads);
                    counts[i].fetch_add(1, Relaxed);
                });
                assert!(
                    counts.iter().all(|c| c.load(Relaxed) == 1),
                    "{threads} threads, {items} items"
                );
            }
        }
    }

    #[test]
    fn chunks_cover_the_slice_once() {
        let team = Team::new(2);
        let mut data = vec![0usize; 1003];
        team.run_chunks_mut(&mut data, 10, &|i, piece, _| {
            for (k, v) in piece.iter_mut().enumerate() {
                *v += i * 10 + k + 1;
            }
        });
        assert!(data.iter().enumerate().all(|(k, v)| *v == k + 1));
    }

    #[test]
    fn sleeping_workers_wake_up_for_new_work() {
        let team = Team::new(2);
        std::thread::sleep(SPIN * 4);
        let seen = Mutex::new(std::collections::HashSet::new());
        // Enough slow items that the worker, once awake, takes some of them.
        team.run(64, &|_, t| {
            std::thread::sleep(Duration::from_millis(1));
            seen.lock().unwrap().insert(t);
        });
        assert_eq!(seen.into_inner().unwrap().len(), 2);
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_team_goes_on() {
        let team = Team::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            team.run(100, &|i, _| {
                if i == 57 {
                    panic!("item 57");
                }
            })
        }));
        assert!(r.is_err());
        let done = AtomicUsize::new(0);
        team.run(10, &|_, _| {
            done.fetch_add(1, Relaxed);
        });
        assert_eq!(done.load(Relaxed), 10);
    }

    #[test]
    fn the_caller_takes_over_the_share_of_a_worker_that_is_held_up() {
        let team = Team::new(2);
        // The worker's share is items 8..16. Its items wait until the caller has run
        // one of them, which it can only do by taking it from the worker's share; the
        // wait is bounded so that a team that cannot do that fails instead of hanging.
        let stolen = AtomicBool::new(false);
        let ran_by = Mutex::new(vec![None; 16]);
        team.run(16, &|i, t| {
            if t == 0 && i >= 8 {
                stolen.store(true, SeqCst);
            }
            let since = Instant::now();
            while t == 1 && !stolen.load(SeqCst) && since.elapsed() < Duration::from_secs(20) {
                std::thread::yield_now();
            }
            ran_by.lock().unwrap()[i] = Some(t);
        });
        let ran_by = ran_by.into_inner().unwrap();
        assert!(ran_by.iter().all(Option::is_some), "{ran_by:?}");
        assert!(
            stolen.load(SeqCst),
            "the caller ran none of the worker's items: {ran_by:?}"
        );
    }

    /// Busy threads that compete with the team for the cores until dropped, as other
    /// programs on a server do (more of them than this machine has cores, so that
    /// the team's threads lose their cores now and then).
    struct BackgroundLoad {
        stop: Arc<AtomicBool>,
        threads: Vec<JoinHandle<()>>,
    }

    impl BackgroundLoad {
        fn start() -> BackgroundLoad {
            let stop = Arc::new(AtomicBool::new(false));
            let n = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
            let threads = (0..n)
                .map(|_| {
                    let stop = Arc::clone(&stop);
                    std::thread::spawn(move || {
                        let mut x = 0u64;
                        while !stop.load(Relaxed) {
                            x = std::hint::black_box(
                                x.wrapping_mul(6364136223846793005).wrapping_add(1),
                            );
                        }
                    })
                })
                .collect();
            BackgroundLoad { stop, threads }
        }
    }

    impl Drop for BackgroundLoad {
        fn drop(&mut self) {
            self.stop.store(true, Relaxed);
            for t in self.threads.drain(..) {
                t.join().unwrap();
            }
        }
    }

    /// Some arithmetic whose result depends on every bit of its input.
    fn mix(i: usize, step: usize) -> f32 {
        let mut v = (i * 31 + step) as f32 * 0.001;
        for _ in 0..64 {
            v = (v * 1.000_1).sin() + 0.5;
        }
        v
    }

    #[test]
    fn under_background_load_every_item_runs_once_with_the_same_results() {
        let _load = BackgroundLoad::start();
        for threads in [2, 3] {
            let team = Team::new(threads);
            // Every step's counts stay alive to the end, so an item that ran for a
            // step that had already finished (a late worker claiming from a stale
            // view) would show as a second run there.
            let steps = 3000;
            let counts: Vec<Vec<AtomicUsize>> = (0..steps)
                .map(|step| (0..1 + step % 37).map(|_| AtomicUsize::new(0)).collect())
                .collect();
            for (step, counts) in counts.iter().enumerate() {
                let mut out = vec![0f32; counts.len()];
                team.run_chunks_mut(&mut out, 1, &|i, piece, t| {
                    assert!(t < threads);
                    counts[i].fetch_add(1, Relaxed);
                    piece[0] = mix(i, step);
                });
                let alone: Vec<f32> = (0..counts.len()).map(|i| mix(i, step)).collect();
                assert_eq!(out, alone, "{threads} threads, step {step}");
            }
            for (step, counts) in counts.iter().enumerate() {
                assert!(
                    counts.iter().all(|c| c.load(Relaxed) == 1),
                    "{threads} threads, step {step}: {:?}",
                    counts.iter().map(|c| c.load(Relaxed)).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn under_background_load_a_panic_is_still_reported_and_the_team_goes_on() {
        let _load = BackgroundLoad::start();
        let team = Team::new(2);
        for round in 0..200 {
            let r = catch_unwind(AssertUnwindSafe(|| {
                team.run(16, &|i, _| {
                    if i == round % 16 {
                        panic!("item {i}");
                    }
                })
            }));
            assert!(r.is_err(), "round {round}");
            let done = AtomicUsize::new(0);
            team.run(16, &|_, _| {
                done.fetch_add(1, Relaxed);
            });
            assert_eq!(done.load(Relaxed), 16, "round {round}");
        }
    }
}
