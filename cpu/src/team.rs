//! A fixed team of worker threads for the many short parallel steps of a forward
//! pass.
//!
//! A decode step of a small model is a few hundred parallel steps of tens of
//! microseconds each (every matrix product, the attention). With rayon, idle
//! workers go to sleep after a few yields and each step pays for waking them
//! through the kernel: on SmolLM2 that was about a tenth of the CPU time. The team's
//! workers spin on an atomic counter between steps, as llama.cpp's thread pool does,
//! and only go to sleep (on a condition variable) after [`SPIN`] without work, so an
//! idle server does not burn its cores.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a worker spins without work before it sleeps.
const SPIN: Duration = Duration::from_millis(5);

/// The current job: a function of (item, thread) for items `0..items`.
type JobFn<'a> = &'a (dyn Fn(usize, usize) + Sync);

struct Shared {
    /// Bumped to hand out a new job.
    generation: AtomicU64,
    /// The job of the current generation (erased lifetime: `run` waits until every
    /// worker is done with it before it returns).
    job: UnsafeCell<Option<JobFn<'static>>>,
    items: AtomicUsize,
    next: AtomicUsize,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by `run` while no worker reads it (before the
// generation is bumped, after `pending` reached zero); workers only read it between.
unsafe impl Sync for Shared {}

impl Shared {
    /// Takes items until none is left.
    fn work(&self, job: JobFn<'_>, thread: usize) {
        let items = self.items.load(Acquire);
        loop {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= items {
                break;
            }
            job(i, thread);
        }
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
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            items: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads.max(1))
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
        // SAFETY: no worker reads `job` now (the last run waited for all of them), and
        // this run waits for all of them before the borrow it erases ends.
        unsafe { *s.job.get() = Some(std::mem::transmute::<JobFn<'_>, JobFn<'static>>(job)) };
        s.items.store(items, Relaxed);
        s.next.store(0, Relaxed);
        s.pending.store(self.workers.len(), Relaxed);
        s.generation.fetch_add(1, SeqCst);
        if s.sleeping.load(SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| s.work(job, 0)));
        while s.pending.load(Acquire) != 0 {
            std::hint::spin_loop();
        }
        // SAFETY: every worker is done with the job.
        unsafe { *s.job.get() = None };
        if let Err(panic) = mine {
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
    let mut seen = 0;
    loop {
        let mut idle_since: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            if s.stop.load(Acquire) {
                return;
            }
            let generation = s.generation.load(Acquire);
            if generation != seen {
                seen = generation;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) {
                std::hint::spin_loop();
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < SPIN {
                continue;
            }
            let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleeping.fetch_add(1, SeqCst);
            if s.generation.load(SeqCst) == seen && !s.stop.load(SeqCst) {
                drop(s.wake.wait(guard).unwrap_or_else(|e| e.into_inner()));
            }
            s.sleeping.fetch_sub(1, SeqCst);
            idle_since = None;
        }
        // SAFETY: `run` set the job before bumping the generation and clears it only
        // after `pending` reaches zero, which this worker has not signalled yet.
        let job = unsafe { *s.job.get() };
        if let Some(job) = job {
            if catch_unwind(AssertUnwindSafe(|| s.work(job, thread))).is_err() {
                s.panicked.store(true, Relaxed);
            }
        }
        s.pending.fetch_sub(1, Release);
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
}
