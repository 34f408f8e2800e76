//! Level Zero facts and telemetry: the loader, its drivers and their devices.
//!
//! Every Level Zero call runs in a child process: loader 1.8.12 segfaults on calls made
//! after a failed `zeInit`, and a broken driver must not take the probe, or the runner
//! that embeds it, down. The child is this same executable, re-started with the
//! environment variable [`CHILD_ENV`] set; [`run_child_if_requested`] (called first
//! thing in `main`) answers and exits. The parent waits with a timeout and
//! turns a crash, a hang or garbage into a [`LevelZeroError`] with a clear meaning.
//!
//! - [`query`]: the facts (loader version, drivers, devices) for `xpu-probe`;
//! - [`telemetry`]: memory use, temperature and power, one reading per call;
//! - [`TelemetryMonitor`]: the same from one long-lived child, for a server's `/metrics`.
//!
//! Inside: `child` (parent side: start, wait, interpret), `protocol` (the lines the
//! child prints), `collect` (the child's facts queries), `sample` (the child's Sysman
//! readings) and [`monitor`]. The calls themselves go through `level-zero-sys`.
//!
//! Environment variables (all optional):
//! - `XPU_LEVEL_ZERO_LOADER=/path/libze_loader.so.1`: the loader to use instead of the
//!   dynamic linker's `libze_loader.so.1`;
//! - `XPU_LEVEL_ZERO_TIMEOUT_SECS=N`: how long the child may take (default 20);
//! - the loader's own, e.g. `ZE_ENABLE_ALT_DRIVERS` to select a driver library.

mod child;
mod collect;
pub mod monitor;
mod protocol;
mod sample;

pub use monitor::TelemetryMonitor;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Set in the child's environment to what it should do: `facts`, `telemetry` or
/// `telemetry-stream`.
pub const CHILD_ENV: &str = "XPU_LEVEL_ZERO_CHILD";
/// Overrides the loader library the child opens.
pub const LOADER_ENV: &str = "XPU_LEVEL_ZERO_LOADER";
/// Overrides the child's timeout, in seconds.
pub const TIMEOUT_ENV: &str = "XPU_LEVEL_ZERO_TIMEOUT_SECS";
/// Tells a `telemetry-stream` child its interval, in milliseconds.
pub const INTERVAL_ENV: &str = "XPU_LEVEL_ZERO_INTERVAL_MS";
/// The child's default time limit. Real drivers initialise in well under a second per
/// GPU; a hung driver must not hold the probe for long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// What the Level Zero loader reported on this machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LevelZeroFacts {
    /// Whether `libze_loader.so.1` could be loaded. `false` is normal on hosts without
    /// Intel compute: then `error` is `null` and `drivers` empty.
    pub loader_found: bool,
    /// The loader's version, e.g. "1.8.0" (from `zelLoaderGetVersions`, else from the
    /// library's file name).
    pub loader_version: Option<String>,
    /// One entry per Level Zero driver (e.g. Intel's compute-runtime).
    pub drivers: Vec<LevelZeroDriver>,
    /// Why the query failed, if it did. Facts gathered before the failure are kept.
    pub error: Option<LevelZeroError>,
    /// True when the query was not run (`--no-level-zero`).
    pub skipped: bool,
}

/// One Level Zero driver.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LevelZeroDriver {
    /// Driver version as `major.minor.build` from the top, next and low 16 bits of
    /// `driverVersion` (compute-runtime encodes `1.3.<NEO build>`, e.g. "1.3.26918").
    pub version: String,
    /// Level Zero API version the driver implements, e.g. "1.3".
    pub api_version: String,
    /// Top-level devices of this driver.
    pub devices: Vec<LevelZeroDevice>,
}

/// One Level Zero device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LevelZeroDevice {
    /// Marketing name, e.g. "Intel(R) Arc(TM) A770 Graphics".
    pub name: String,
    /// Device UUID as 32 lowercase hex digits.
    pub uuid: String,
    /// "gpu", "cpu", "fpga", "mca", "vpu" or `"unknown(<n>)"`.
    #[serde(rename = "type")]
    pub r#type: String,
    /// PCI vendor id, lowercase hex without `0x` ("8086").
    pub vendor_id: String,
    /// PCI device id, lowercase hex without `0x` ("56a0").
    pub device_id: String,
    /// PCI address like "0000:03:00.0" (from `zeDevicePciGetPropertiesExt`), to match
    /// the device with `pci[]`/`gpus[]`; `null` when the driver does not say.
    pub pci_address: Option<String>,
    /// Integrated (shares memory with the host).
    pub integrated: bool,
    /// This device is a sub-device (tile) of another.
    pub sub_device: bool,
    /// Execution units: slices × sub-slices per slice × EUs per sub-slice.
    pub eu_count: u64,
    /// Hardware threads per EU.
    pub threads_per_eu: u32,
    /// SIMD width of one EU.
    pub eu_simd_width: u32,
    /// Core clock in MHz.
    pub core_clock_mhz: u32,
    /// Sum of the device's memory modules, in bytes.
    pub memory_bytes: u64,
    /// Largest single allocation, in bytes.
    pub max_alloc_bytes: u64,
    /// Largest work-group (items).
    pub max_group_size: u32,
    /// Shared local memory per work-group, in bytes.
    pub shared_local_memory_bytes: u32,
    /// Supported sub-group sizes, e.g. [8, 16, 32].
    pub sub_group_sizes: Vec<u32>,
    /// Number of sub-devices (tiles).
    pub sub_devices: u32,
}

/// A failed Level Zero query: a `ze_result_t` code, or one of the [`codes`] for a
/// child that crashed, hung or answered garbage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LevelZeroError {
    /// The `ze_result_t` value (e.g. 2013265921 = 0x78000001), or one of the [`codes`].
    pub code: u32,
    /// Its symbolic name, e.g. "ZE_RESULT_ERROR_UNINITIALIZED".
    pub name: String,
    /// What it means and what to do.
    pub meaning: String,
}

/// Codes for failures outside Level Zero itself. They sit in 0xE000_00xx, a range no
/// `ze_result_t` uses.
pub mod codes {
    /// The child process could not be started.
    pub const CHILD_SPAWN_FAILED: u32 = 0xE000_0001;
    /// The child was killed by a signal (a crash in the loader or driver).
    pub const CHILD_CRASHED: u32 = 0xE000_0002;
    /// The child did not answer in time and was killed.
    pub const CHILD_TIMEOUT: u32 = 0xE000_0003;
    /// The child exited without a valid answer.
    pub const CHILD_NO_ANSWER: u32 = 0xE000_0004;
    /// A library was found under the loader's name but lacks its functions.
    pub const LOADER_INVALID: u32 = 0xE000_0005;
}

impl LevelZeroError {
    /// An error for a `ze_result_t` returned by `call`.
    pub fn from_result(result: level_zero_sys::ZeResult, call: &str) -> LevelZeroError {
        LevelZeroError {
            code: result.0,
            name: result.display_name(),
            meaning: format!("{} failed: {}", call, result.meaning()),
        }
    }
}

/// Live readings of the Intel GPUs: summed (memory, power) or maximised (temperature)
/// over the card-level devices, and per device in `devices`. A field is `None` when no
/// device reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Telemetry {
    /// Device memory in use, in bytes.
    pub memory_used_bytes: Option<u64>,
    /// Device memory in total, in bytes.
    pub memory_total_bytes: Option<u64>,
    /// The hottest sensor, in degrees Celsius.
    pub temperature_c: Option<f64>,
    /// Power draw in watts, from two energy-counter samples.
    pub power_w: Option<f64>,
    /// The same readings for each device, in Level Zero's order.
    #[serde(default)]
    pub devices: Vec<DeviceTelemetry>,
}

/// Live readings of one device (a card; its tiles are included).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceTelemetry {
    /// Device name, as in the facts.
    pub name: String,
    /// PCI address like "0000:03:00.0", when the driver reports it.
    pub pci_address: Option<String>,
    /// Device memory in use, in bytes.
    pub memory_used_bytes: Option<u64>,
    /// Device memory in total, in bytes.
    pub memory_total_bytes: Option<u64>,
    /// The hottest sensor, in degrees Celsius.
    pub temperature_c: Option<f64>,
    /// Power draw in watts.
    pub power_w: Option<f64>,
}

impl Telemetry {
    /// Aggregates per-device readings: sums memory and power, keeps the hottest
    /// temperature.
    pub fn from_devices(devices: Vec<DeviceTelemetry>) -> Telemetry {
        fn sum<T: std::iter::Sum<T>>(values: impl Iterator<Item = Option<T>>) -> Option<T> {
            let present: Vec<T> = values.flatten().collect();
            (!present.is_empty()).then(|| present.into_iter().sum())
        }
        Telemetry {
            memory_used_bytes: sum(devices.iter().map(|d| d.memory_used_bytes)),
            memory_total_bytes: sum(devices.iter().map(|d| d.memory_total_bytes)),
            temperature_c: devices
                .iter()
                .filter_map(|d| d.temperature_c)
                .reduce(f64::max),
            power_w: sum(devices.iter().map(|d| d.power_w)),
            devices,
        }
    }
}

/// How to run the child.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// The executable to start as the child. It must call [`run_child_if_requested`]
    /// first in `main`. Default: this process's own executable.
    pub exe: Option<PathBuf>,
    /// How long the child may take before it is killed.
    pub timeout: Duration,
    /// Extra environment for the child (e.g. `ZE_ENABLE_ALT_DRIVERS` in tests), on top
    /// of this process's environment.
    pub env: Vec<(OsString, OsString)>,
}

impl Default for QueryOptions {
    /// This executable, the timeout from `XPU_LEVEL_ZERO_TIMEOUT_SECS` or 20 s, no extra
    /// environment.
    ///
    /// An invalid `XPU_LEVEL_ZERO_TIMEOUT_SECS` is reported on stderr and the default
    /// used: a typo must not disable the time limit or the query.
    fn default() -> Self {
        let timeout = match std::env::var_os(TIMEOUT_ENV) {
            None => DEFAULT_TIMEOUT,
            Some(value) => parse_timeout(&value.to_string_lossy()).unwrap_or_else(|problem| {
                eprintln!("warning: {problem}; using {} s", DEFAULT_TIMEOUT.as_secs());
                DEFAULT_TIMEOUT
            }),
        };
        QueryOptions {
            exe: None,
            timeout,
            env: Vec::new(),
        }
    }
}

/// Parses a timeout in seconds (fractions allowed, at most a day).
fn parse_timeout(value: &str) -> Result<Duration, String> {
    match value.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!(
            "{TIMEOUT_ENV}={value:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

/// Queries Level Zero in a child process (see the module documentation). Never fails:
/// problems are reported in [`LevelZeroFacts::error`].
pub fn query() -> LevelZeroFacts {
    query_with(&QueryOptions::default())
}

/// [`query`] with explicit options.
pub fn query_with(options: &QueryOptions) -> LevelZeroFacts {
    child::run_facts(options)
}

/// Reads GPU telemetry through Level Zero Sysman, in a child process. `None` when there
/// is no loader, no driver, no device, or the child failed: absence is not an error.
/// Takes about 0.1 s (two energy samples for the power reading) plus driver start-up.
pub fn telemetry() -> Option<Telemetry> {
    telemetry_with(&QueryOptions::default())
}

/// [`telemetry`] with explicit options.
pub fn telemetry_with(options: &QueryOptions) -> Option<Telemetry> {
    child::run_telemetry(options)
}

/// Facts for a probe run with Level Zero disabled.
pub fn skipped() -> LevelZeroFacts {
    LevelZeroFacts {
        skipped: true,
        ..Default::default()
    }
}

/// Must be called first thing in `main` of every binary that uses [`query`] or
/// [`telemetry`]: when this process is the Level Zero child (the environment variable
/// [`CHILD_ENV`] is set), it runs the query, prints the answer on stdout and exits
/// without returning. Otherwise it returns at once.
pub fn run_child_if_requested() {
    let Some(mode) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    match mode.to_str() {
        Some("facts") => collect::child_facts(),
        Some("telemetry") => sample::child_telemetry(),
        Some("telemetry-stream") => sample::child_telemetry_stream(),
        _ => {
            eprintln!(
                "{CHILD_ENV}={mode:?}: expected \"facts\", \"telemetry\" or \"telemetry-stream\""
            );
            protocol::exit_now(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_or_say_what_is_wrong() {
        assert_eq!(parse_timeout("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_timeout(" 60 "), Ok(Duration::from_secs(60)));
        for bad in ["", "abc", "0", "-1", "inf", "NaN", "1e9"] {
            let problem = parse_timeout(bad).expect_err(bad);
            assert!(
                problem.starts_with("XPU_LEVEL_ZERO_TIMEOUT_SECS="),
                "{problem}"
            );
        }
    }

    #[test]
    fn telemetry_aggregates_what_devices_report() {
        let a = DeviceTelemetry {
            memory_used_bytes: Some(1),
            memory_total_bytes: Some(10),
            temperature_c: Some(50.0),
            power_w: None,
            ..Default::default()
        };
        let b = DeviceTelemetry {
            memory_used_bytes: Some(2),
            temperature_c: Some(70.0),
            power_w: Some(3.5),
            ..Default::default()
        };
        let t = Telemetry::from_devices(vec![a, b]);
        assert_eq!(t.memory_used_bytes, Some(3));
        assert_eq!(t.memory_total_bytes, Some(10));
        assert_eq!(t.temperature_c, Some(70.0));
        assert_eq!(t.power_w, Some(3.5));
        assert_eq!(t.devices.len(), 2);
        assert_eq!(Telemetry::from_devices(Vec::new()), Telemetry::default());
    }
}
