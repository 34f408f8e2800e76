//! The wire format between the Level Zero child and its parent, and the child's
//! writing side of it.
//!
//! One line each on stdout (other lines, e.g. a chatty driver's, are ignored by the
//! parent):
//! - `xpu-level-zero:step <call>` before each call, so that a crash can be attributed;
//! - `xpu-level-zero:facts <json>` after each milestone, so that a crash keeps what was
//!   learnt before it;
//! - `xpu-level-zero:done <json>` (facts or telemetry) once, at the end;
//! - `xpu-level-zero:telemetry <json>` once per interval (`telemetry-stream` mode).

use std::io::Write;

use serde::Serialize;

pub(super) const STEP: &str = "xpu-level-zero:step ";
pub(super) const FACTS: &str = "xpu-level-zero:facts ";
pub(super) const DONE: &str = "xpu-level-zero:done ";
pub(super) const TELEMETRY: &str = "xpu-level-zero:telemetry ";

/// Writes one line and flushes it, so that the parent has it even if the next call
/// crashes. Returns false when stdout is closed (the parent is gone).
pub(super) fn line(prefix: &str, text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{prefix}{text}")
        .and_then(|()| out.flush())
        .is_ok()
}

/// Announces the Level Zero call about to be made.
pub(super) fn step(call: &str) {
    line(STEP, call);
}

/// Writes `value` as one JSON line; false when stdout is closed.
pub(super) fn json<T: Serialize>(prefix: &str, value: &T) -> bool {
    match serde_json::to_string(value) {
        Ok(text) => line(prefix, &text),
        Err(e) => {
            eprintln!("xpu-level-zero: cannot serialise the answer: {e}");
            true
        }
    }
}

/// Leaves without running destructors or `atexit` handlers: the loader's teardown
/// (it `dlclose`s drivers) is exactly the kind of code that crashes, and the answer
/// has already been written.
pub(super) fn exit_now(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}
