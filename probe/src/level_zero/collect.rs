//! The child side: makes the Level Zero calls in this process and prints the answer.
//!
//! Output protocol, one line each on stdout (other lines, e.g. a chatty driver's, are
//! ignored by the parent):
//! - `xpu-level-zero:step <call>` before each call, so that a crash can be attributed;
//! - `xpu-level-zero:facts <json>` after each milestone, so that a crash keeps what was
//!   learnt before it;
//! - `xpu-level-zero:done <json>` (facts or telemetry) once, at the end;
//! - `xpu-level-zero:telemetry <json>` once per interval (`telemetry-stream` mode).

use std::io::Write;
use std::time::Duration;

use level_zero_sys::types::{self as ze, DeviceHandle, PowerHandle};
use level_zero_sys::{Initialized, LoadError, Loader, ZeResult};
use serde::Serialize;

use super::{codes, DeviceTelemetry, LevelZeroDevice, LevelZeroDriver, LevelZeroError, LevelZeroFacts, Telemetry, LOADER_ENV};

pub(super) const STEP: &str = "xpu-level-zero:step ";
pub(super) const FACTS: &str = "xpu-level-zero:facts ";
pub(super) const DONE: &str = "xpu-level-zero:done ";
pub(super) const TELEMETRY: &str = "xpu-level-zero:telemetry ";

/// The gap between the two energy samples from which power is computed.
const POWER_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

fn line(prefix: &str, text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the parent is gone; nothing useful is left to do.
    let _ = writeln!(out, "{prefix}{text}");
    let _ = out.flush();
}

fn step(call: &str) {
    line(STEP, call);
}

fn json<T: Serialize>(prefix: &str, value: &T) {
    match serde_json::to_string(value) {
        Ok(text) => line(prefix, &text),
        Err(e) => eprintln!("xpu-level-zero: cannot serialise the answer: {e}"),
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

fn open_loader() -> Result<Loader, LoadError> {
    match std::env::var_os(LOADER_ENV).filter(|p| !p.is_empty()) {
        Some(path) => Loader::open_path(std::path::Path::new(&path)),
        None => Loader::open(),
    }
}

/// Card-level devices, with tiles as sub-devices: one Level Zero device per PCI
/// function, as in `pci[]` and `gpus[]`. Newer drivers default to `FLAT` (each tile a
/// device); a user's own setting is kept.
fn prefer_composite_devices() {
    if std::env::var_os("ZE_FLAT_DEVICE_HIERARCHY").is_none() {
        std::env::set_var("ZE_FLAT_DEVICE_HIERARCHY", "COMPOSITE");
    }
}

/// Child entry point for `facts`.
pub(super) fn child_facts() -> ! {
    prefer_composite_devices();
    let facts = collect_facts();
    json(DONE, &facts);
    exit_now(0)
}

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
    match collect_telemetry() {
        Some(telemetry) => json(DONE, &telemetry),
        None => line(DONE, "null"),
    }
    exit_now(0)
}

fn collect_facts() -> LevelZeroFacts {
    let mut facts = LevelZeroFacts::default();
    let loader = match open_loader() {
        Ok(loader) => loader,
        // A host without Level Zero: a normal outcome, not an error.
        Err(LoadError::NotFound { .. }) => return facts,
        Err(e @ LoadError::MissingSymbol { .. }) => {
            facts.error = Some(LevelZeroError {
                code: codes::LOADER_INVALID,
                name: "XPU_LEVEL_ZERO_LOADER_INVALID".into(),
                meaning: format!("{e}; reinstall the Level Zero loader (Debian: libze1)"),
            });
            return facts;
        }
    };
    facts.loader_found = true;
    facts.loader_version = loader.file_version();
    json(FACTS, &facts);

    step("zeInit");
    let l0 = match loader.init(ze::INIT_FLAG_GPU_ONLY) {
        Ok(l0) => l0,
        Err(result) => {
            // No further call: loader 1.8.12 crashes after a failed zeInit.
            facts.error = Some(LevelZeroError::from_result(result, "zeInit"));
            return facts;
        }
    };

    step("zelLoaderGetVersions");
    if let Some(Ok(components)) = l0.loader_versions() {
        if let Some(loader) = components.iter().find(|c| ze::c_chars_to_string(&c.component_name) == "loader") {
            let v = loader.component_lib_version;
            facts.loader_version = Some(format!("{}.{}.{}", v.major, v.minor, v.patch));
        }
    }
    json(FACTS, &facts);

    step("zeDriverGet");
    let drivers = match l0.drivers() {
        Ok(drivers) => drivers,
        Err(result) => {
            facts.error = Some(LevelZeroError::from_result(result, "zeDriverGet"));
            return facts;
        }
    };
    for driver in drivers {
        let mut entry = LevelZeroDriver::default();
        step("zeDriverGetProperties");
        match l0.driver_properties(driver) {
            Ok(props) => entry.version = driver_version(props.driver_version),
            Err(result) => note(&mut facts.error, result, "zeDriverGetProperties"),
        }
        step("zeDriverGetApiVersion");
        match l0.driver_api_version(driver) {
            Ok(version) => entry.api_version = ze::format_api_version(version),
            Err(result) => note(&mut facts.error, result, "zeDriverGetApiVersion"),
        }
        facts.drivers.push(entry);
        json(FACTS, &facts);

        step("zeDeviceGet");
        let devices = match l0.devices(driver) {
            Ok(devices) => devices,
            Err(result) => {
                note(&mut facts.error, result, "zeDeviceGet");
                continue;
            }
        };
        for device in devices {
            match describe(&l0, device) {
                Ok(d) => facts.drivers.last_mut().expect("pushed above").devices.push(d),
                Err((result, call)) => note(&mut facts.error, result, call),
            }
            json(FACTS, &facts);
        }
    }
    facts
}

/// Keeps the first error: later ones are usually consequences of it.
fn note(error: &mut Option<LevelZeroError>, result: ZeResult, call: &str) {
    if error.is_none() {
        *error = Some(LevelZeroError::from_result(result, call));
    }
}

/// "DDDD:BB:DD.F", as sysfs writes PCI addresses.
fn format_pci_address(a: ze::PciAddress) -> String {
    format!("{:04x}:{:02x}:{:02x}.{:x}", a.domain, a.bus, a.device, a.function)
}

/// `driverVersion` → "major.minor.build" (compute-runtime: 0x01030000 + build).
pub(super) fn driver_version(raw: u32) -> String {
    format!("{}.{}.{}", raw >> 24, (raw >> 16) & 0xff, raw & 0xffff)
}

fn device_type(raw: u32) -> String {
    match raw {
        ze::DEVICE_TYPE_GPU => "gpu".into(),
        ze::DEVICE_TYPE_CPU => "cpu".into(),
        ze::DEVICE_TYPE_FPGA => "fpga".into(),
        ze::DEVICE_TYPE_MCA => "mca".into(),
        ze::DEVICE_TYPE_VPU => "vpu".into(),
        other => format!("unknown({other})"),
    }
}

fn describe(l0: &Initialized<'_>, device: DeviceHandle) -> Result<LevelZeroDevice, (ZeResult, &'static str)> {
    step("zeDeviceGetProperties");
    let p = l0.device_properties(device).map_err(|r| (r, "zeDeviceGetProperties"))?;
    step("zeDeviceGetComputeProperties");
    let compute = l0.compute_properties(device).map_err(|r| (r, "zeDeviceGetComputeProperties"))?;
    step("zeDeviceGetMemoryProperties");
    let memory = l0.memory_properties(device).map_err(|r| (r, "zeDeviceGetMemoryProperties"))?;
    step("zeDeviceGetSubDevices");
    let sub_devices = l0.sub_devices(device).map_err(|r| (r, "zeDeviceGetSubDevices"))?;
    step("zeDevicePciGetPropertiesExt");
    // An optional extension: older drivers lack it, so a failure is not an error.
    let pci_address = match l0.pci_properties(device) {
        Some(Ok(pci)) => Some(format_pci_address(pci.address)),
        _ => None,
    };
    let sizes = compute.num_sub_group_sizes.min(ze::SUBGROUPSIZE_COUNT as u32) as usize;
    Ok(LevelZeroDevice {
        name: ze::c_chars_to_string(&p.name),
        uuid: p.uuid.iter().map(|b| format!("{b:02x}")).collect(),
        r#type: device_type(p.device_type),
        vendor_id: format!("{:04x}", p.vendor_id),
        device_id: format!("{:04x}", p.device_id),
        pci_address,
        integrated: p.flags & ze::DEVICE_PROPERTY_FLAG_INTEGRATED != 0,
        sub_device: p.flags & ze::DEVICE_PROPERTY_FLAG_SUBDEVICE != 0,
        eu_count: u64::from(p.num_slices) * u64::from(p.num_subslices_per_slice) * u64::from(p.num_eus_per_subslice),
        threads_per_eu: p.num_threads_per_eu,
        eu_simd_width: p.physical_eu_simd_width,
        core_clock_mhz: p.core_clock_rate,
        memory_bytes: memory.iter().map(|m| m.total_size).fold(0u64, u64::saturating_add),
        max_alloc_bytes: p.max_mem_alloc_size,
        max_group_size: compute.max_total_group_size,
        shared_local_memory_bytes: compute.max_shared_local_memory,
        sub_group_sizes: compute.sub_group_sizes[..sizes].to_vec(),
        sub_devices: sub_devices.len() as u32,
    })
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
                let name = l0.device_properties(handle).map(|p| ze::c_chars_to_string(&p.name)).unwrap_or_default();
                step("zeDevicePciGetPropertiesExt");
                let pci_address = match l0.pci_properties(handle) {
                    Some(Ok(pci)) => Some(format_pci_address(pci.address)),
                    _ => None,
                };
                devices.push(SampledDevice { handle, name, pci_address });
            }
        }
        (!devices.is_empty()).then_some(Sampler { l0, devices, last_energy: Vec::new() })
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
            for module in l0.memory_modules(device.handle).and_then(Result::ok).unwrap_or_default() {
                // Integrated GPUs report system memory modules; only device memory counts.
                step("zesMemoryGetProperties");
                let on_device = match l0.memory_module_properties(module) {
                    Some(Ok(props)) => props.location == ze::ZES_MEM_LOC_DEVICE,
                    _ => true,
                };
                step("zesMemoryGetState");
                if let (true, Some(Ok(state))) = (on_device, l0.memory_state(module)) {
                    *reading.memory_total_bytes.get_or_insert(0) += state.size;
                    *reading.memory_used_bytes.get_or_insert(0) += state.size.saturating_sub(state.free);
                }
            }
            step("zesDeviceEnumTemperatureSensors");
            for sensor in l0.temperature_sensors(device.handle).and_then(Result::ok).unwrap_or_default() {
                step("zesTemperatureGetState");
                if let Some(Ok(celsius)) = l0.temperature(sensor) {
                    reading.temperature_c = max_celsius(reading.temperature_c, celsius);
                }
            }
            step("zesDeviceEnumPowerDomains");
            for domain in l0.power_domains(device.handle).and_then(Result::ok).unwrap_or_default() {
                // Sub-device domains are already included in the card's own domain.
                step("zesPowerGetProperties");
                if let Some(Ok(props)) = l0.power_properties(domain) {
                    if props.on_subdevice != 0 {
                        continue;
                    }
                }
                step("zesPowerGetEnergyCounter");
                if let Some(Ok(after)) = l0.energy_counter(domain) {
                    let before = self.last_energy.iter().find(|(d, _)| *d == domain).map(|(_, c)| *c);
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
        line(DONE, "null");
        exit_now(0)
    };
    let Some(mut sampler) = Sampler::new(&loader) else {
        line(DONE, "null");
        exit_now(0)
    };
    // Prime the energy counters so that the first line has a power reading.
    sampler.read();
    std::thread::sleep(POWER_SAMPLE_INTERVAL);
    loop {
        let telemetry = sampler.read();
        let text = serde_json::to_string(&telemetry).unwrap_or_else(|_| "null".into());
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{TELEMETRY}{text}").and_then(|()| out.flush()).is_err() {
            // The parent is gone.
            exit_now(0)
        }
        drop(out);
        std::thread::sleep(interval);
    }
}

/// Average power between two energy samples (µJ over µs = W); `None` when the counter
/// did not advance in time or went backwards (a reset).
pub(super) fn watts(before: ze::ZesPowerEnergyCounter, after: ze::ZesPowerEnergyCounter) -> Option<f64> {
    let micros = after.timestamp.checked_sub(before.timestamp).filter(|&t| t > 0)?;
    let microjoules = after.energy.checked_sub(before.energy)?;
    Some(microjoules as f64 / micros as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_versions_decode_like_compute_runtime() {
        assert_eq!(driver_version(0x0103_0000 + 24595), "1.3.24595");
        assert_eq!(driver_version(0x0103_002a), "1.3.42");
        assert_eq!(driver_version(0), "0.0.0");
    }

    #[test]
    fn device_types() {
        assert_eq!(device_type(1), "gpu");
        assert_eq!(device_type(5), "vpu");
        assert_eq!(device_type(9), "unknown(9)");
    }

    #[test]
    fn temperatures_keep_the_hottest_finite_reading() {
        assert_eq!(max_celsius(None, 40.0), Some(40.0));
        assert_eq!(max_celsius(Some(40.0), 55.5), Some(55.5));
        assert_eq!(max_celsius(Some(40.0), 30.0), Some(40.0));
        assert_eq!(max_celsius(None, f64::NAN), None);
        assert_eq!(max_celsius(Some(40.0), f64::INFINITY), Some(40.0));
    }

    #[test]
    fn pci_addresses_look_like_sysfs() {
        let a = ze::PciAddress { domain: 0, bus: 0x4d, device: 2, function: 1 };
        assert_eq!(format_pci_address(a), "0000:4d:02.1");
    }

    #[test]
    fn power_from_energy_samples() {
        let at = |energy, timestamp| ze::ZesPowerEnergyCounter { energy, timestamp };
        assert_eq!(watts(at(0, 0), at(10_000_000, 100_000)), Some(100.0));
        assert_eq!(watts(at(5, 10), at(5, 10)), None, "no time passed");
        assert_eq!(watts(at(50, 10), at(5, 20)), None, "counter reset");
    }
}
