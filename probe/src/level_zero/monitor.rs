//! [`TelemetryMonitor`]: telemetry from one long-lived child, for servers.
//!
//! [`telemetry`](super::telemetry) starts a child, initialises the driver and samples
//! power for 0.1 s on every call. A server's `/metrics` should answer at once instead:
//! the monitor keeps one child that initialises once and prints a reading per interval,
//! and [`TelemetryMonitor::latest`] returns the newest one without blocking. A child
//! that crashes or exits is restarted after [`RESTART_DELAY`]; one that stops
//! answering (a hung driver) makes `latest` return `None` once its last reading is
//! stale, and is killed and restarted.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::protocol::{DONE, TELEMETRY};
use super::{QueryOptions, Telemetry, CHILD_ENV, INTERVAL_ENV};

/// Default time between two readings.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// How long to wait before starting a new child after one ended or was killed.
pub const RESTART_DELAY: Duration = Duration::from_secs(30);

/// Readings older than this many intervals (plus a second) count as stale.
const STALE_INTERVALS: u32 = 3;

struct State {
    latest: Option<(Instant, Telemetry)>,
    child: Option<u32>,
    started: u64,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    interval: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stale_after(&self) -> Duration {
        self.interval * STALE_INTERVALS + Duration::from_secs(1)
    }
}

/// Keeps one Level Zero telemetry child running in the background. Dropping the
/// monitor stops it (and kills the child).
pub struct TelemetryMonitor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl TelemetryMonitor {
    /// Starts the background child with a reading every `interval` (at least 0.1 s).
    /// Returns at once; [`latest`](Self::latest) is `None` until the first reading.
    pub fn start(options: &QueryOptions, interval: Duration) -> TelemetryMonitor {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                latest: None,
                child: None,
                started: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            interval: interval.max(Duration::from_millis(100)),
        });
        let options = options.clone();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("level-zero-telemetry".into())
                .spawn(move || supervise(&shared, &options))
                .ok()
        };
        TelemetryMonitor { shared, thread }
    }

    /// The newest reading, or `None` when there is none yet, no Intel GPU, or the last
    /// one is stale (the child crashed or hangs).
    pub fn latest(&self) -> Option<Telemetry> {
        let state = self.shared.lock();
        let (at, telemetry) = state.latest.as_ref()?;
        (at.elapsed() <= self.shared.stale_after()).then(|| telemetry.clone())
    }

    /// The process id of the current child, if one runs (for diagnostics and tests).
    pub fn child_id(&self) -> Option<u32> {
        self.shared.lock().child
    }

    /// How many children were started so far (1 + restarts).
    pub fn children_started(&self) -> u64 {
        self.shared.lock().started
    }
}

impl Drop for TelemetryMonitor {
    fn drop(&mut self) {
        let child = {
            let mut state = self.shared.lock();
            state.stop = true;
            state.child
        };
        if let Some(pid) = child {
            kill_group(pid);
        }
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn kill_group(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions; the child leads its own group.
    unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
}

/// The background thread: runs children until asked to stop.
fn supervise(shared: &Shared, options: &QueryOptions) {
    loop {
        if shared.lock().stop {
            return;
        }
        let nothing_to_read = run_one(shared, options);
        let delay = if nothing_to_read {
            RESTART_DELAY * 10
        } else {
            RESTART_DELAY
        };
        let state = shared.lock();
        let (state, _) = shared
            .wake
            .wait_timeout_while(state, delay, |s| !s.stop)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.stop {
            return;
        }
    }
}

fn spawn(options: &QueryOptions, interval: Duration) -> Option<Child> {
    let exe = options
        .exe
        .clone()
        .or_else(|| std::env::current_exe().ok())?;
    let mut command = Command::new(exe);
    command
        .env(CHILD_ENV, "telemetry-stream")
        .env(INTERVAL_ENV, interval.as_millis().to_string())
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command.spawn().ok()
}

/// Runs one child until it ends or goes quiet. Returns true when it reported that
/// there is nothing to read (no loader, driver or device).
fn run_one(shared: &Shared, options: &QueryOptions) -> bool {
    // A process that is itself a child must not start more (see child::run).
    if std::env::var_os(CHILD_ENV).is_some() {
        return true;
    }
    let Some(mut child) = spawn(options, shared.interval) else {
        return true;
    };
    let pid = child.id();
    {
        let mut state = shared.lock();
        if state.stop {
            kill_group(pid);
            let _ = child.wait();
            return false;
        }
        state.child = Some(pid);
        state.started += 1;
    }
    let stdout = child.stdout.take().expect("stdout is piped");

    // A watchdog kills a child that stops answering, which ends the read loop below.
    let last_line = Arc::new(Mutex::new(Instant::now()));
    let done = Arc::new((Mutex::new(false), Condvar::new()));
    let watchdog = {
        let last_line = Arc::clone(&last_line);
        let done = Arc::clone(&done);
        // Driver start-up is allowed the same grace as staleness, plus the options' timeout.
        let quiet_limit = shared.stale_after() + options.timeout;
        std::thread::spawn(move || {
            let (finished, wake) = &*done;
            let mut finished_now = finished.lock().unwrap_or_else(|p| p.into_inner());
            while !*finished_now {
                let since = last_line.lock().map(|t| t.elapsed()).unwrap_or_default();
                if since > quiet_limit {
                    kill_group(pid);
                    return;
                }
                finished_now = wake
                    .wait_timeout(finished_now, Duration::from_millis(200))
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        })
    };

    let mut nothing_to_read = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Ok(mut t) = last_line.lock() {
            *t = Instant::now();
        }
        if let Some(json) = line.strip_prefix(TELEMETRY) {
            if let Ok(telemetry) = serde_json::from_str::<Telemetry>(json) {
                shared.lock().latest = Some((Instant::now(), telemetry));
            }
        } else if line.starts_with(DONE) {
            nothing_to_read = true;
        }
    }
    kill_group(pid);
    let _ = child.wait();
    {
        let (finished, wake) = &*done;
        *finished.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
    }
    let _ = watchdog.join();
    let mut state = shared.lock();
    state.child = None;
    state.latest = None;
    nothing_to_read
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_go_stale() {
        let shared = Shared {
            state: Mutex::new(State {
                latest: None,
                child: None,
                started: 0,
                stop: true,
            }),
            wake: Condvar::new(),
            interval: Duration::from_millis(100),
        };
        assert_eq!(shared.stale_after(), Duration::from_millis(1300));
        let monitor = TelemetryMonitor {
            shared: Arc::new(shared),
            thread: None,
        };
        assert_eq!(monitor.latest(), None);
        let reading = Telemetry {
            temperature_c: Some(50.0),
            ..Default::default()
        };
        monitor.shared.lock().latest = Some((Instant::now(), reading.clone()));
        assert_eq!(monitor.latest(), Some(reading.clone()));
        monitor.shared.lock().latest = Some((Instant::now() - Duration::from_secs(2), reading));
        assert_eq!(monitor.latest(), None);
    }
}
