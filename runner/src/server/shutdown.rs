//! Lifecycle: the service phase (loading, ready, draining) that `/health` and the
//! request gate read, and the signal handling that starts a graceful drain on the
//! first SIGTERM/SIGINT and exits at once on the second.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Loading,
    Ready,
    Draining,
}

/// The current phase, shared by all handlers.
#[derive(Debug)]
pub struct Lifecycle {
    phase: AtomicU8,
    drain: tokio::sync::Notify,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: AtomicU8::new(0),
            drain: tokio::sync::Notify::new(),
        }
    }
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Loading,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// Loading -> Ready; a drain that began during loading wins.
    pub fn set_ready(&self) {
        let _ = self
            .phase
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Enters Draining and wakes whoever waits in [`Lifecycle::drained`].
    pub fn begin_drain(&self) {
        self.phase.store(2, Ordering::SeqCst);
        self.drain.notify_waiters();
        self.drain.notify_one();
    }

    /// Resolves once draining has begun.
    pub async fn drain_started(&self) {
        if self.phase() == Phase::Draining {
            return;
        }
        self.drain.notified().await;
    }
}

/// Waits for the first SIGTERM or SIGINT and returns its name. A second signal
/// after that ends the process at once with status 1 (the operator insists).
pub async fn first_signal() -> anyhow::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second termination signal: exiting now without waiting for requests");
        std::process::exit(1);
    });
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_wins_over_late_ready() {
        let l = std::sync::Arc::new(Lifecycle::default());
        assert_eq!(l.phase(), Phase::Loading);
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.drain_started().await })
        };
        tokio::task::yield_now().await;
        l.begin_drain();
        l.set_ready();
        assert_eq!(l.phase(), Phase::Draining);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
