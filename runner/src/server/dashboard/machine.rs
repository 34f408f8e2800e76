//! What the dashboard derives from the probe's facts: the engines this machine can
//! offer, and the memory of each place a model could run.
//!
//! The facts are read through their JSON contract (as `device` does), so a file from
//! another probe version still works; a field that is missing simply counts as unknown.

use crate::cuda_binary;
use crate::engine::Device;
use serde::Serialize;
use serde_json::Value;

/// Largest BAR of a discrete GPU that says nothing about its memory: without
/// Resizable BAR every BAR is 256 MiB or less (see the probe's recommendation).
const SMALL_BAR_BYTES: u64 = 256 << 20;

/// One engine the machine offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineOption {
    /// The `--device` value.
    pub device: &'static str,
    pub label: &'static str,
    /// The hardware it would run on, from the facts.
    pub hardware: Vec<String>,
    /// Whether this install can run the engine: built into this binary, or for CUDA, the
    /// CUDA binary installed beside it (`cuda_binary::available`). The JSON keeps the name
    /// `compiled_in` for the clients that read it.
    pub compiled_in: bool,
    /// Whether the served model runs on it.
    pub in_use: bool,
}

/// A place a model could run and how much memory it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryPlace {
    /// The `--device` value that runs there; `null` for a GPU no engine of ours drives.
    pub device: Option<&'static str>,
    pub name: String,
    pub memory_bytes: Option<u64>,
    /// Where the memory figure comes from.
    pub memory_source: &'static str,
}

/// The compute-capable GPUs of one vendor (`intel`, `nvidia`, ...).
fn gpus_of<'a>(facts: &'a Value, vendor: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    gpus(facts).filter(move |g| g["vendor"] == vendor && g["compute_capable"] == true)
}

fn gpus(facts: &Value) -> impl Iterator<Item = &Value> {
    facts["gpus"].as_array().into_iter().flatten()
}

fn gpu_name(gpu: &Value) -> String {
    let name = gpu["name"].as_str().unwrap_or("unnamed GPU");
    match gpu["pci_address"].as_str() {
        Some(address) => format!("{name} ({address})"),
        None => name.to_owned(),
    }
}

/// Whether the facts show an Intel GPU that can compute: only then is the Intel GPU
/// engine offered.
pub fn has_intel_gpu(facts: &Value) -> bool {
    gpus_of(facts, "intel").next().is_some()
}

/// The engines to show: the CPU always; the Intel GPU engine (Vulkan) only where the
/// facts show an Intel GPU; CUDA only where they show an NVIDIA GPU. `in_use` is the
/// device the model was loaded on, if loaded.
pub fn engine_options(facts: Option<&Value>, in_use: Option<&str>) -> Vec<EngineOption> {
    let cpu_name = facts
        .and_then(|f| f["cpu"]["model_name"].as_str())
        .unwrap_or("this machine's CPU")
        .to_owned();
    let mut options = vec![EngineOption {
        device: "cpu",
        label: "CPU",
        hardware: vec![cpu_name],
        compiled_in: true,
        in_use: in_use == Some("cpu"),
    }];
    let Some(facts) = facts else { return options };
    for (vendor, engine, label) in [
        ("intel", Device::Vulkan, "Intel GPU (Vulkan)"),
        ("nvidia", Device::Cuda, "NVIDIA GPU (CUDA)"),
    ] {
        let hardware: Vec<String> = gpus_of(facts, vendor).map(gpu_name).collect();
        if !hardware.is_empty() {
            let device = engine.name();
            options.push(EngineOption {
                device,
                label,
                hardware,
                compiled_in: match engine {
                    Device::Cuda => cuda_binary::available().is_ok(),
                    _ => engine.compiled_in(),
                },
                in_use: in_use == Some(device),
            });
        }
    }
    options
}

/// The system memory and every compute-capable GPU with its memory: Level Zero's
/// figure when the probe queried it, else the GPU telemetry's, else the VRAM BAR of a
/// discrete card with Resizable BAR on; integrated GPUs share the system memory.
pub fn memory_places(facts: &Value, telemetry: Option<&Value>) -> Vec<MemoryPlace> {
    let system = facts["memory"]["total_bytes"].as_u64();
    let mut places = vec![MemoryPlace {
        device: Some("cpu"),
        name: "CPU (system memory)".into(),
        memory_bytes: system,
        memory_source: if system.is_some() {
            "facts: memory"
        } else {
            "unknown"
        },
    }];
    for gpu in gpus(facts).filter(|g| g["compute_capable"] == true) {
        let device = match gpu["vendor"].as_str() {
            Some("intel") => Some("vulkan"),
            Some("nvidia") => Some("cuda"),
            _ => None,
        };
        let address = gpu["pci_address"].as_str();
        let (memory_bytes, memory_source) = if gpu["integrated"] == true {
            (system, "shared system memory")
        } else if let Some(bytes) = level_zero_memory(facts, address) {
            (Some(bytes), "Level Zero")
        } else if let Some(bytes) = telemetry_memory(telemetry, address) {
            (Some(bytes), "Level Zero Sysman")
        } else if let Some(bytes) = largest_bar(facts, address).filter(|&b| b > SMALL_BAR_BYTES) {
            (Some(bytes), "PCI BAR size")
        } else {
            (None, "unknown")
        };
        places.push(MemoryPlace {
            device,
            name: gpu_name(gpu),
            memory_bytes,
            memory_source,
        });
    }
    places
}

fn level_zero_memory(facts: &Value, address: Option<&str>) -> Option<u64> {
    let address = address?;
    facts["level_zero"]["drivers"]
        .as_array()?
        .iter()
        .flat_map(|d| d["devices"].as_array().into_iter().flatten())
        .find(|d| d["pci_address"].as_str() == Some(address) && d["sub_device"] != true)
        .and_then(|d| d["memory_bytes"].as_u64())
        .filter(|&b| b > 0)
}

fn telemetry_memory(telemetry: Option<&Value>, address: Option<&str>) -> Option<u64> {
    let address = address?;
    telemetry?["devices"]
        .as_array()?
        .iter()
        .find(|d| d["pci_address"].as_str() == Some(address))
        .and_then(|d| d["memory_total_bytes"].as_u64())
}

fn largest_bar(facts: &Value, address: Option<&str>) -> Option<u64> {
    let address = address?;
    facts["pci"]
        .as_array()?
        .iter()
        .find(|p| p["address"].as_str() == Some(address))?["bars"]
        .as_array()?
        .iter()
        .filter_map(|b| b["size"].as_u64())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn intel_facts() -> Value {
        json!({
            "schema_version": 1,
            "cpu": {"model_name": "12th Gen Intel(R) Core(TM) i9-12900K"},
            "memory": {"total_bytes": 64u64 << 30},
            "pci": [
                {"address": "0000:03:00.0", "bars": [{"index": 0, "size": 16u64 << 20}, {"index": 2, "size": 16u64 << 30}]},
                {"address": "0000:04:00.0", "bars": [{"index": 0, "size": 256u64 << 20}]}
            ],
            "gpus": [
                {"pci_address": "0000:03:00.0", "vendor": "intel", "name": "Intel Arc A770", "integrated": false, "compute_capable": true},
                {"pci_address": "0000:00:02.0", "vendor": "intel", "name": "Intel UHD Graphics 770", "integrated": true, "compute_capable": true},
                {"pci_address": "0000:04:00.0", "vendor": "intel", "name": "Intel Arc B580", "integrated": false, "compute_capable": true},
                {"pci_address": "0000:05:00.0", "vendor": "other", "name": "ASPEED", "integrated": false, "compute_capable": false}
            ],
            "level_zero": {"drivers": [{"devices": [{"pci_address": "0000:04:00.0", "memory_bytes": 12u64 << 30, "sub_device": false}]}]}
        })
    }

    #[test]
    fn the_intel_engine_is_offered_only_with_an_intel_gpu() {
        let options = engine_options(Some(&intel_facts()), Some("cpu"));
        let devices: Vec<_> = options.iter().map(|o| o.device).collect();
        assert_eq!(devices, ["cpu", "vulkan"]);
        assert!(options[0].in_use);
        assert_eq!(
            options[0].hardware,
            ["12th Gen Intel(R) Core(TM) i9-12900K"]
        );
        assert_eq!(options[1].hardware.len(), 3);
        assert_eq!(options[1].compiled_in, cfg!(feature = "vulkan"));
        assert!(has_intel_gpu(&intel_facts()));

        let cpu_only = json!({"schema_version": 1, "gpus": [
            {"pci_address": "0000:05:00.0", "vendor": "other", "compute_capable": false},
            {"pci_address": "0000:06:00.0", "vendor": "intel", "compute_capable": false}
        ]});
        assert!(!has_intel_gpu(&cpu_only));
        assert_eq!(engine_options(Some(&cpu_only), None).len(), 1);
        assert_eq!(engine_options(None, None).len(), 1);
    }

    #[test]
    fn gpu_memory_comes_from_the_best_source() {
        let places = memory_places(&intel_facts(), None);
        let by_name = |n: &str| {
            places
                .iter()
                .find(|p| p.name.starts_with(n))
                .unwrap()
                .clone()
        };
        assert_eq!(by_name("CPU").memory_bytes, Some(64 << 30));
        assert_eq!(by_name("Intel Arc A770").memory_bytes, Some(16 << 30));
        assert_eq!(by_name("Intel Arc A770").memory_source, "PCI BAR size");
        assert_eq!(by_name("Intel UHD").memory_bytes, Some(64 << 30));
        assert_eq!(by_name("Intel Arc B580").memory_bytes, Some(12 << 30));
        assert_eq!(by_name("Intel Arc B580").device, Some("vulkan"));
        assert!(!places.iter().any(|p| p.name.starts_with("ASPEED")));

        // A small BAR says nothing; telemetry fills in.
        let mut facts = intel_facts();
        facts["level_zero"] = json!({"drivers": []});
        assert_eq!(
            by_name_in(&memory_places(&facts, None), "Intel Arc B580").memory_bytes,
            None
        );
        let telemetry = json!({"devices": [{"pci_address": "0000:04:00.0", "memory_total_bytes": 11u64 << 30}]});
        let place = by_name_in(&memory_places(&facts, Some(&telemetry)), "Intel Arc B580");
        assert_eq!(
            (place.memory_bytes, place.memory_source),
            (Some(11 << 30), "Level Zero Sysman")
        );
    }

    fn by_name_in(places: &[MemoryPlace], name: &str) -> MemoryPlace {
        places
            .iter()
            .find(|p| p.name.starts_with(name))
            .unwrap()
            .clone()
    }
}
