//! systemd integration through the `sd-notify` and `listenfd` crates: readiness
//! (`READY=1`), human-readable `STATUS=` lines, `STOPPING=1`, watchdog pings while
//! the service is healthy, and socket activation (`LISTEN_FDS`). Every call is a
//! no-op outside systemd (no `NOTIFY_SOCKET`, no `LISTEN_FDS`).

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

/// `STATUS=<text>`: shown by `systemctl status`.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// `READY=1` with a status line: the model is loaded and requests are served.
pub fn ready(text: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(text)]);
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping(text: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(text)]);
}

/// The interval at which to send `WATCHDOG=1` (half the configured timeout), when
/// systemd asked for watchdog pings for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// Sends `WATCHDOG=1` every `interval` while `healthy()` holds. Running on the async
/// runtime, the pings also prove that the runtime itself still makes progress; if
/// the generation worker dies, pings stop and systemd restarts the service.
pub async fn watchdog_loop(interval: Duration, healthy: impl Fn() -> bool) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        if healthy() {
            send(&[NotifyState::Watchdog]);
        } else {
            tracing::error!("the service is unhealthy; withholding the systemd watchdog ping");
        }
    }
}

/// The listening socket passed by systemd socket activation, if any.
pub fn activated_listener() -> anyhow::Result<Option<std::net::TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    if fds.len() > 1 {
        tracing::warn!(
            "systemd passed {} sockets; only the first is used",
            fds.len()
        );
    }
    let listener = fds.take_tcp_listener(0).map_err(|e| {
        anyhow::anyhow!("the socket passed by systemd (LISTEN_FDS) is not a TCP listener: {e}")
    })?;
    Ok(listener)
}
