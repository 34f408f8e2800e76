//! The parent side: starts the child, waits with a timeout, and reads its answer.
//!
//! A child that crashes, hangs, exits without an answer or cannot start becomes a
//! [`LevelZeroError`] whose meaning names the last Level Zero call it entered; facts
//! it reported before that are kept.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use wait_timeout::ChildExt;

use super::protocol::{DONE, FACTS, STEP};
use super::{codes, LevelZeroError, LevelZeroFacts, QueryOptions, Telemetry, CHILD_ENV};

/// At most this much of each of the child's output streams is kept. A real answer is a
/// few KiB per device.
const OUTPUT_LIMIT: u64 = 16 << 20;

/// At most this much of the child's stderr is quoted in an error.
const STDERR_QUOTE: usize = 600;

/// What the child printed and how it ended.
struct Outcome {
    stdout: String,
    stderr: String,
    /// `None` when it was killed for running out of time.
    status: Option<ExitStatus>,
}

impl Outcome {
    fn last(&self, prefix: &str) -> Option<&str> {
        self.stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(prefix))
    }

    fn last_step(&self) -> Option<&str> {
        self.last(STEP)
    }

    fn stderr_tail(&self) -> String {
        let text = self.stderr.trim();
        if text.is_empty() {
            return String::new();
        }
        let start = text.len().saturating_sub(STDERR_QUOTE);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        format!("; its stderr ends with: {:?}", &text[start..])
    }

    /// The error for a child that gave no valid answer, or `None` if it did answer.
    fn failure(&self, options: &QueryOptions, answered: bool) -> Option<LevelZeroError> {
        let during = match self.last_step() {
            Some(call) => format!(" during {call}"),
            None => String::new(),
        };
        let Some(status) = self.status else {
            return Some(LevelZeroError {
                code: codes::CHILD_TIMEOUT,
                name: "XPU_LEVEL_ZERO_CHILD_TIMEOUT".into(),
                meaning: format!(
                    "the Level Zero query did not finish within {:.1} s{during} and was killed; a driver is hanging (check dmesg for GPU errors, or raise {} if the machine is just slow){}",
                    options.timeout.as_secs_f64(),
                    super::TIMEOUT_ENV,
                    self.stderr_tail()
                ),
            });
        };
        if let Some(signal) = status.signal() {
            return Some(LevelZeroError {
                code: codes::CHILD_CRASHED,
                name: "XPU_LEVEL_ZERO_CHILD_CRASHED".into(),
                meaning: format!(
                    "the Level Zero query crashed with signal {signal} ({}){during}; the Level Zero loader or GPU driver is broken or mismatched (update intel-compute-runtime and level-zero together); the facts before the crash are kept{}",
                    signal_name(signal),
                    self.stderr_tail()
                ),
            });
        }
        if answered {
            return None;
        }
        Some(LevelZeroError {
            code: codes::CHILD_NO_ANSWER,
            name: "XPU_LEVEL_ZERO_CHILD_NO_ANSWER".into(),
            meaning: format!(
                "the Level Zero query process exited with {status}{during} without an answer; if this is a program embedding xpu-probe, it must call xpu_probe::level_zero::run_child_if_requested() first in main{}",
                self.stderr_tail()
            ),
        })
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        _ => "signal",
    }
}

/// How long to wait for the output pipes to close after the child ended. They stay
/// open only if the child passed them to a process of its own that outlived it.
const PIPE_GRACE: Duration = Duration::from_secs(1);

fn read_all(mut pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error just ends the output early; the exit status tells the story.
        // A child that floods the pipe past the limit blocks or fails on its next write.
        let _ = (&mut pipe).take(OUTPUT_LIMIT).read_to_end(&mut bytes);
        let _ = sender.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    receiver
}

/// Starts the child in `mode` and collects its output, or says why it could not start.
fn run(options: &QueryOptions, mode: &str) -> Result<Outcome, LevelZeroError> {
    let spawn_error = |what: String| LevelZeroError {
        code: codes::CHILD_SPAWN_FAILED,
        name: "XPU_LEVEL_ZERO_CHILD_SPAWN_FAILED".into(),
        meaning: format!("could not start the Level Zero query process: {what}"),
    };
    // A child that queries again would start children of its own, without end (e.g. a
    // test harness re-run as the child runs its tests again).
    if std::env::var_os(CHILD_ENV).is_some() {
        return Err(spawn_error(format!(
            "this process is itself a Level Zero query child ({CHILD_ENV} is set); its main must call xpu_probe::level_zero::run_child_if_requested() first"
        )));
    }
    let exe = match &options.exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe()
            .map_err(|e| spawn_error(format!("cannot find this executable: {e}")))?,
    };
    let mut command = Command::new(&exe);
    command
        .env(CHILD_ENV, mode)
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills whatever it started too.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // Die with the parent: an interrupted probe must not leave a hung driver behind.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| spawn_error(format!("{}: {e}", exe.display())))?;
    let stdout = read_all(child.stdout.take().expect("stdout is piped"));
    let stderr = read_all(child.stderr.take().expect("stderr is piped"));

    let status = match child.wait_timeout(options.timeout) {
        Ok(Some(status)) => Some(status),
        Ok(None) | Err(_) => {
            // Kill its whole group and reap it; errors mean it is already gone.
            // SAFETY: kill has no memory-safety preconditions; the group id is the
            // child's pid because of process_group(0).
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    Ok(Outcome {
        stdout: stdout.recv_timeout(PIPE_GRACE).unwrap_or_default(),
        stderr: stderr.recv_timeout(PIPE_GRACE).unwrap_or_default(),
        status,
    })
}

pub(super) fn run_facts(options: &QueryOptions) -> LevelZeroFacts {
    match run(options, "facts") {
        Ok(outcome) => facts_from(&outcome, options),
        Err(error) => LevelZeroFacts {
            error: Some(error),
            ..Default::default()
        },
    }
}

/// The facts a finished child reported, with an error when it gave no valid answer.
fn facts_from(outcome: &Outcome, options: &QueryOptions) -> LevelZeroFacts {
    let done: Option<LevelZeroFacts> = outcome
        .last(DONE)
        .and_then(|json| serde_json::from_str(json).ok());
    let answered = done.is_some();
    let mut facts = done
        .or_else(|| {
            outcome
                .last(FACTS)
                .and_then(|json| serde_json::from_str(json).ok())
        })
        .unwrap_or_default();
    if let Some(error) = outcome.failure(options, answered) {
        // The child's own error (if any) came first and explains more.
        facts.error.get_or_insert(error);
    }
    facts
}

pub(super) fn run_telemetry(options: &QueryOptions) -> Option<Telemetry> {
    let outcome = run(options, "telemetry").ok()?;
    let telemetry: Option<Telemetry> = serde_json::from_str(outcome.last(DONE)?).ok()?;
    // A crash after the answer (in teardown) does not invalidate it.
    telemetry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(stdout: &str, stderr: &str, status: Option<i32>) -> Outcome {
        Outcome {
            stdout: stdout.into(),
            stderr: stderr.into(),
            status: status.map(ExitStatus::from_raw),
        }
    }

    #[test]
    fn a_signal_names_the_last_call() {
        let o = outcome(
            "xpu-level-zero:step zeInit\nnoise\nxpu-level-zero:step zeDeviceGet\n",
            "",
            Some(11),
        );
        let e = o
            .failure(&QueryOptions::default(), false)
            .expect("an error");
        assert_eq!(e.code, codes::CHILD_CRASHED);
        assert!(
            e.meaning.contains("signal 11 (SIGSEGV) during zeDeviceGet"),
            "{}",
            e.meaning
        );
    }

    #[test]
    fn a_timeout_says_how_long_and_quotes_stderr() {
        let options = QueryOptions {
            timeout: Duration::from_millis(1500),
            ..Default::default()
        };
        let e = outcome("", "driver: waiting for GuC\n", None)
            .failure(&options, false)
            .expect("an error");
        assert_eq!(e.code, codes::CHILD_TIMEOUT);
        assert!(e.meaning.contains("1.5 s"), "{}", e.meaning);
        assert!(e.meaning.contains("waiting for GuC"), "{}", e.meaning);
    }

    #[test]
    fn a_clean_exit_without_answer_explains_run_child_if_requested() {
        let e = outcome("hello\n", "", Some(0))
            .failure(&QueryOptions::default(), false)
            .expect("an error");
        assert_eq!(e.code, codes::CHILD_NO_ANSWER);
        assert!(e.meaning.contains("run_child_if_requested"));
        assert!(outcome("", "", Some(0))
            .failure(&QueryOptions::default(), true)
            .is_none());
    }

    proptest::proptest! {
        /// Whatever the child prints and however it ends, the parent never panics, and
        /// it reports an error exactly when there was no valid final answer.
        #[test]
        fn any_child_output_gives_facts_or_an_error(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    ".*",
                    "xpu-level-zero:(step|facts|done) .*",
                    proptest::strategy::Just(format!("{DONE}{{\"loader_found\":true,\"loader_version\":null,\"drivers\":[],\"error\":null,\"skipped\":false}}")),
                ],
                0..6,
            ),
            // Raw wait statuses: exit codes 0, 1, 2, or killed by SIGSEGV; None = timed out.
            status in proptest::option::of(proptest::sample::select(vec![0, 1 << 8, 2 << 8, 11])),
        ) {
            let outcome = outcome(&lines.join("\n"), "", status);
            let facts = facts_from(&outcome, &QueryOptions::default());
            let answered = outcome.last(DONE).is_some_and(|j| serde_json::from_str::<LevelZeroFacts>(j).is_ok());
            let exited = status.is_some_and(|s| s != 11);
            proptest::prop_assert_eq!(facts.error.is_none(), answered && exited);
        }
    }

    #[test]
    fn long_stderr_is_cut_on_a_char_boundary() {
        let stderr = "é".repeat(1000);
        let tail = outcome("", &stderr, Some(0)).stderr_tail();
        assert!(tail.len() < STDERR_QUOTE + 80);
    }
}
