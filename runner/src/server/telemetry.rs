//! Intel GPU telemetry (memory, temperature, power) for `/metrics` and `/health`.
//!
//! The readings come from the probe library's [`TelemetryMonitor`]: one long-lived
//! child process (this executable, re-started by the probe library) reads Level Zero
//! Sysman every interval, so that a request only copies the newest reading and never
//! waits for a driver. Without Level Zero, a driver or an Intel GPU the child ends at
//! once and there is simply no reading: the GPU lines and the `gpu` field are left out.
//!
//! The monitor is tried on every host, whatever device serves the model: it costs one
//! short-lived process (retried every few minutes) where there is nothing to read, and
//! an Intel GPU is worth watching even while the model runs on the CPU.
//! `--no-gpu-telemetry` turns it off.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use xpu_probe::level_zero::{QueryOptions, Telemetry, TelemetryMonitor};

/// The server's telemetry monitor, if it runs. Shared by the handlers; stopped (and
/// its child killed) once the server has drained.
pub struct GpuTelemetry {
    monitor: Mutex<Option<TelemetryMonitor>>,
}

/// What the first attempt to read telemetry found, for one log line.
#[derive(Debug, Clone, PartialEq)]
pub enum FirstOutcome {
    /// Not known yet: the child is still starting (or the driver initialising).
    Pending,
    /// A reading arrived.
    Reading(Telemetry),
    /// The first child ended without a reading: no Level Zero loader, driver or
    /// device, or a driver that failed.
    Nothing,
    /// Telemetry is off or stopped.
    Off,
}

impl GpuTelemetry {
    /// Starts the monitor with a reading every `interval`; returns at once.
    pub fn start(interval: Duration) -> GpuTelemetry {
        let monitor = TelemetryMonitor::start(&QueryOptions::default(), interval);
        GpuTelemetry {
            monitor: Mutex::new(Some(monitor)),
        }
    }

    /// No monitor: every answer is "no reading".
    pub fn off() -> GpuTelemetry {
        GpuTelemetry {
            monitor: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<TelemetryMonitor>> {
        // The guarded value stays consistent even if a holder panicked.
        self.monitor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The newest reading; `None` when off, without an Intel GPU, before the first
    /// reading, or when the last one is stale (a crashed or hung driver).
    pub fn latest(&self) -> Option<Telemetry> {
        self.lock().as_ref()?.latest()
    }

    /// What the first attempt found so far.
    pub fn first_outcome(&self) -> FirstOutcome {
        let guard = self.lock();
        let Some(monitor) = guard.as_ref() else {
            return FirstOutcome::Off;
        };
        if let Some(reading) = monitor.latest() {
            FirstOutcome::Reading(reading)
        } else if monitor.children_started() > 0 && monitor.child_id().is_none() {
            FirstOutcome::Nothing
        } else {
            FirstOutcome::Pending
        }
    }

    /// Stops the monitor and kills its child; later calls see no reading. Blocks for
    /// as long as that takes (well under a second). Returns whether one was running.
    pub fn stop(&self) -> bool {
        let monitor = self.lock().take();
        let was_running = monitor.is_some();
        drop(monitor);
        was_running
    }
}

/// Logs what the first attempt found, once: an operator should see at start-up
/// whether `/metrics` will carry GPU values, and why not.
pub async fn log_first_outcome(telemetry: std::sync::Arc<GpuTelemetry>) {
    // Quick checks at first (a missing loader is known within milliseconds), then
    // once a second while a slow or hung driver keeps the answer pending.
    let mut pause = Duration::from_millis(50);
    loop {
        match telemetry.first_outcome() {
            FirstOutcome::Pending => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            FirstOutcome::Reading(reading) => {
                tracing::info!("GPU telemetry (Level Zero Sysman): {}", describe(&reading));
                return;
            }
            FirstOutcome::Nothing => {
                tracing::info!(
                    "GPU telemetry: no reading (no Level Zero loader, driver or Intel GPU, or the driver failed); \
                     /metrics and /health carry no GPU values"
                );
                return;
            }
            FirstOutcome::Off => return,
        }
    }
}

/// One line about a reading: each device with its PCI address and memory.
pub fn describe(reading: &Telemetry) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    let devices: Vec<String> = reading
        .devices
        .iter()
        .map(|d| {
            let mut text = d.name.clone();
            if let Some(pci) = &d.pci_address {
                text.push_str(&format!(" at {pci}"));
            }
            if let (Some(used), Some(total)) = (d.memory_used_bytes, d.memory_total_bytes) {
                text.push_str(&format!(
                    ", {:.1} of {:.1} GiB in use",
                    used as f64 / GIB,
                    total as f64 / GIB
                ));
            }
            text
        })
        .collect();
    format!("{} device(s): {}", devices.len(), devices.join("; "))
}

/// The `gpu` field of `/health`: the totals and each device, as the probe library
/// reports them (`null` for a value the driver does not report).
pub fn health_json(reading: &Telemetry) -> serde_json::Value {
    // A plain struct of numbers, strings and options always serialises.
    serde_json::to_value(reading).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xpu_probe::level_zero::DeviceTelemetry;

    fn reading() -> Telemetry {
        Telemetry::from_devices(vec![
            DeviceTelemetry {
                name: "Intel(R) Arc(TM) A770 Graphics".into(),
                pci_address: Some("0000:03:00.0".into()),
                memory_used_bytes: Some(4 << 30),
                memory_total_bytes: Some(16 << 30),
                temperature_c: Some(45.5),
                power_w: Some(100.0),
            },
            DeviceTelemetry {
                name: "Tile-less".into(),
                temperature_c: Some(60.0),
                ..Default::default()
            },
        ])
    }

    #[test]
    fn health_field_has_totals_and_devices() {
        let value = health_json(&reading());
        assert_eq!(value["memory_used_bytes"], 4u64 << 30);
        assert_eq!(value["memory_total_bytes"], 16u64 << 30);
        assert_eq!(value["temperature_c"], 60.0);
        assert_eq!(value["power_w"], 100.0);
        assert_eq!(
            value["devices"][0]["name"],
            "Intel(R) Arc(TM) A770 Graphics"
        );
        assert_eq!(value["devices"][0]["pci_address"], "0000:03:00.0");
        assert_eq!(value["devices"][0]["temperature_c"], 45.5);
        // Values a driver does not report are null, not zero.
        assert_eq!(value["devices"][1]["power_w"], serde_json::Value::Null);
        assert_eq!(value["devices"][1]["pci_address"], serde_json::Value::Null);
        // The probe library's type reads back what we wrote.
        let back: Telemetry = serde_json::from_value(value).unwrap();
        assert_eq!(back, reading());
    }

    #[test]
    fn description_names_devices_and_memory() {
        let text = describe(&reading());
        assert_eq!(
            text,
            "2 device(s): Intel(R) Arc(TM) A770 Graphics at 0000:03:00.0, 4.0 of 16.0 GiB in use; Tile-less"
        );
    }

    #[test]
    fn off_has_no_reading_and_stop_is_idempotent() {
        let telemetry = GpuTelemetry::off();
        assert_eq!(telemetry.latest(), None);
        assert_eq!(telemetry.first_outcome(), FirstOutcome::Off);
        assert!(!telemetry.stop());
    }
}
