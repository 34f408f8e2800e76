//! Level Zero facts: the loader, its drivers and their devices.
//!
//! The queries run in a child process because loader 1.8.12 segfaults on calls made
//! after a failed `zeInit`, and a broken driver must not take the probe (or the runner)
//! down with it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the Level Zero loader reported on this machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LevelZeroFacts {
    /// Whether `libze_loader.so.1` could be loaded.
    pub loader_found: bool,
    /// The loader's own version (e.g. "1.8.0"), when it reports one.
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
    /// Driver version, decoded as `major.minor.build` (compute-runtime encodes 1.3.<NEO build>).
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
    /// "gpu", "cpu", "fpga", "mca", "vpu" or "unknown(<n>)".
    #[serde(rename = "type")]
    pub r#type: String,
    /// PCI vendor id.
    pub vendor_id: u32,
    /// PCI device id.
    pub device_id: u32,
    /// Integrated (shares memory with the host).
    pub integrated: bool,
    /// This device is a sub-device (tile) of another.
    pub sub_device: bool,
    /// Execution units: slices × sub-slices per slice × EUs per sub-slice.
    pub eu_count: u64,
    /// Hardware threads per EU.
    pub threads_per_eu: u32,
    /// Core clock in MHz.
    pub core_clock_mhz: u32,
    /// Sum of the device's memory modules, in bytes.
    pub memory_bytes: u64,
    /// Largest single allocation, in bytes.
    pub max_alloc_bytes: u64,
    /// Number of sub-devices (tiles).
    pub sub_devices: u32,
}

/// A failed Level Zero query: a `ze_result_t` code, or a synthetic one for a crashed child.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LevelZeroError {
    /// The `ze_result_t` value (e.g. 0x78000001 = 2013265921).
    pub code: u32,
    /// Its symbolic name, e.g. "ZE_RESULT_ERROR_UNINITIALIZED".
    pub name: String,
    /// What it means and what to do.
    pub meaning: String,
}

/// Queries Level Zero. (Child-process implementation follows.)
pub fn query() -> LevelZeroFacts {
    LevelZeroFacts {
        loader_found: false,
        error: Some(LevelZeroError {
            code: 0,
            name: "LOADER_NOT_FOUND".into(),
            meaning: "libze_loader.so.1 was not found; install the Level Zero loader (Debian: libze1)".into(),
        }),
        ..Default::default()
    }
}

/// Facts for a probe run with Level Zero disabled.
pub fn skipped() -> LevelZeroFacts {
    LevelZeroFacts {
        skipped: true,
        ..Default::default()
    }
}

/// Must be called first thing in `main` of every binary that uses [`query`]: when this
/// process is the Level Zero child, it runs the query, prints JSON and exits.
pub fn run_child_if_requested() {}
