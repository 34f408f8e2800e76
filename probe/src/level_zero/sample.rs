//! The child side of telemetry: reads Sysman memory, temperature and power from each
//! card, once (`telemetry`) or once per interval (`telemetry-stream`).

use std::time::Duration;

use level_zero_sys::types::{self as ze, DeviceHandle, PowerHandle};
use level_zero_sys::{Initialized, Loader};

use super::collect::{format_pci_address, open_loader, prefer_composite_devices};
use super::protocol::{exit_now, json, line, step, DONE, TELEMETRY};
use super::{DeviceTelemetry, Telemetry};

/// The gap between the two energy samples from which power is computed.
const POWER_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

fn prepare_sysman() {
    // Sysman needs this before zeInit with the 1.4 API (there is no zesInit yet).
    if std::env::var_os("ZES_ENABLE_SYSMAN").is_none() {
        std::env::set_var("ZES_ENABLE_SYSMAN", "1");
    }
    // Per-card readings; a card's memory and power domains include its tiles'.
    prefer_composite_devices();
}

/// Child entry point for `telemetry`.
pub(super) fn child_telemetry() -> ! {
    prepare_sysman();
    // Nothing more to do whether or not the parent still listens.
    let _ = match collect_telemetry() {
        Some(telemetry) => json(DONE, &telemetry),
        None => line(DONE, "null"),
    };
    exit_now(0)
}

/// One device being sampled, with what identifies it in the readings.
struct SampledDevice {
    handle: DeviceHandle,
    name: String,
    pci_address: Option<String>,
}

/// Reads telemetry repeatedly from the same devices. Power is the average since the
/// previous reading (the first reading has none).
struct Sampler<'l> {
    l0: Initialized<'l>,
    devices: Vec<SampledDevice>,
    last_energy: Vec<(PowerHandle, ze::ZesPowerEnergyCounter)>,
}

impl<'l> Sampler<'l> {
    /// `None` when `zeInit` fails or there is no device.
    fn new(loader: &'l Loader) -> Option<Sampler<'l>> {
        step("zeInit");
        // On failure: no further call (see collect_facts).
        let l0 = loader.init(ze::INIT_FLAG_GPU_ONLY).ok()?;
        step("zeDriverGet");
        let mut devices = Vec::new();
        for driver in l0.drivers().ok()? {
            step("zeDeviceGet");
            for handle in l0.devices(driver).unwrap_or_default() {
                step("zeDeviceGetProperties");
                let name = l0
                    .device_properties(handle)
                    .map(|p| ze::c_chars_to_string(&p.name))
                    .unwrap_or_default();
                step("zeDevicePciGetPropertiesExt");
                let pci_address = match l0.pci_properties(handle) {
                    Some(Ok(pci)) => Some(format_pci_address(pci.address)),
                    _ => None,
                };
                devices.push(SampledDevice {
                    handle,
                    name,
                    pci_address,
                });
            }
        }
        (!devices.is_empty()).then_some(Sampler {
            l0,
            devices,
            last_energy: Vec::new(),
        })
    }

    fn read(&mut self) -> Telemetry {
        let l0 = &self.l0;
        let mut energy = Vec::new();
        let mut readings = Vec::new();
        for device in &self.devices {
            let mut reading = DeviceTelemetry {
                name: device.name.clone(),
                pci_address: device.pci_address.clone(),
                ..Default::default()
            };
            step("zesDeviceEnumMemoryModules");
            for module in l0
                .memory_modules(device.handle)
                .and_then(Result::ok)
                .unwrap_or_default()
            {
                // Integrated GPUs report system memory modules; only device memory counts.
                step("zesMemoryGetProperties");
                let on_device = match l0.memory_module_properties(module) {
                    Some(Ok(props)) => props.location == ze::ZES_MEM_LOC_DEVICE,
                    _ => true,
                };
                step("zesMemoryGetState");
                if let (true, Some(Ok(state))) = (on_device, l0.memory_state(module)) {
                    *reading.memory_total_bytes.get_or_insert(0) += state.size;
                    *reading.memory_used_bytes.get_or_insert(0) +=
                        state.size.saturating_sub(state.free);
                }
            }
            step("zesDeviceEnumTemperatureSensors");
            for sensor in l0
                .temperature_sensors(device.handle)
                .and_then(Result::ok)
                .unwrap_or_default()
            {
                step("zesTemperatureGetState");
                if let Some(Ok(celsius)) = l0.temperature(sensor) {
                    reading.temperature_c = max_celsius(reading.temperature_c, celsius);
                }
            }
            step("zesDeviceEnumPowerDomains");
            for domain in l0
                .power_domains(device.handle)
                .and_then(Result::ok)
                .unwrap_or_default()
            {
                // Sub-device domains are already included in the card's own domain.
                step("zesPowerGetProperties");
                if let Some(Ok(props)) = l0.power_properties(domain) {
                    if props.on_subdevice != 0 {
                        continue;
                    }
                }
                step("zesPowerGetEnergyCounter");
                if let Some(Ok(after)) = l0.energy_counter(domain) {
                    let before = self
                        .last_energy
                        .iter()
                        .find(|(d, _)| *d == domain)
                        .map(|(_, c)| *c);
                    if let Some(watts) = before.and_then(|before| watts(before, after)) {
                        *reading.power_w.get_or_insert(0.0) += watts;
                    }
                    energy.push((domain, after));
                }
            }
            readings.push(reading);
        }
        self.last_energy = energy;
        Telemetry::from_devices(readings)
    }
}

/// The larger of two temperatures; NaN and infinite readings are ignored.
fn max_celsius(current: Option<f64>, reading: f64) -> Option<f64> {
    if !reading.is_finite() {
        return current;
    }
    Some(current.map_or(reading, |c| c.max(reading)))
}

fn collect_telemetry() -> Option<Telemetry> {
    let loader = open_loader().ok()?;
    let mut sampler = Sampler::new(&loader)?;
    sampler.read();
    std::thread::sleep(POWER_SAMPLE_INTERVAL);
    Some(sampler.read())
}

/// Child entry point for `telemetry-stream`: one `xpu-level-zero:telemetry` line per
/// interval until the parent goes away (a failed write), or `done null` at once when
/// there is nothing to read.
pub(super) fn child_telemetry_stream() -> ! {
    prepare_sysman();
    let interval = std::env::var(super::INTERVAL_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(super::monitor::DEFAULT_INTERVAL)
        .max(POWER_SAMPLE_INTERVAL);
    let Ok(loader) = open_loader() else {
        let _ = line(DONE, "null");
        exit_now(0)
    };
    let Some(mut sampler) = Sampler::new(&loader) else {
        let _ = line(DONE, "null");
        exit_now(0)
    };
    // Prime the energy counters so that the first line has a power reading.
    sampler.read();
    std::thread::sleep(POWER_SAMPLE_INTERVAL);
    loop {
        if !json(TELEMETRY, &sampler.read()) {
            // The parent is gone.
            exit_now(0)
        }
        std::thread::sleep(interval);
    }
}

/// Average power between two energy samples (µJ over µs = W); `None` when the counter
/// did not advance in time or went backwards (a reset).
fn watts(before: ze::ZesPowerEnergyCounter, after: ze::ZesPowerEnergyCounter) -> Option<f64> {
    let micros = after
        .timestamp
        .checked_sub(before.timestamp)
        .filter(|&t| t > 0)?;
    let microjoules = after.energy.checked_sub(before.energy)?;
    Some(microjoules as f64 / micros as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperatures_keep_the_hottest_finite_reading() {
        assert_eq!(max_celsius(None, 40.0), Some(40.0));
        assert_eq!(max_celsius(Some(40.0), 55.5), Some(55.5));
        assert_eq!(max_celsius(Some(40.0), 30.0), Some(40.0));
        assert_eq!(max_celsius(None, f64::NAN), None);
        assert_eq!(max_celsius(Some(40.0), f64::INFINITY), Some(40.0));
    }

    #[test]
    fn power_from_energy_samples() {
        let at = |energy, timestamp| ze::ZesPowerEnergyCounter { energy, timestamp };
        assert_eq!(watts(at(0, 0), at(10_000_000, 100_000)), Some(100.0));
        assert_eq!(watts(at(5, 10), at(5, 10)), None, "no time passed");
        assert_eq!(watts(at(50, 10), at(5, 20)), None, "counter reset");
    }
}
