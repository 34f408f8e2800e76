//! The device a model runs on, and the one meaning of `--device auto` for every
//! command: decide from the hardware facts (the probe's JSON, from `--facts` or a live
//! probe) and explain why, then fall back to the CPU if the chosen accelerator fails to
//! initialise. An explicit device is taken as given and never falls back. The facts
//! are read through their JSON contract (`schema_version: 1`,
//! `recommendation.variant`), so that the runner accepts any file the probe writes,
//! including one from another machine's probe version.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::Context as _;

pub use crate::engine::Device;
use crate::model::{self, LoadOptions, LoadedModel};

/// What the user asks for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// Decide from the hardware facts; fall back to the CPU if the accelerator fails.
    #[default]
    Auto,
    /// This device, or an error.
    Given(Device),
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Given(device) => device.fmt(f),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(DeviceChoice::Auto);
        }
        s.parse()
            .map(DeviceChoice::Given)
            .map_err(|_| format!("unknown device `{s}`; expected one of: auto, cpu, cuda, vulkan"))
    }
}

/// The decision and the reasons for it, logged at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDecision {
    pub device: Device,
    pub reasons: Vec<String>,
}

/// The part of the probe's facts that the device choice needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FactsSummary {
    /// `exo-intel`, `exo-cuda` or `exo-cpu`.
    pub variant: Option<String>,
    pub reasons: Vec<String>,
    pub warnings: Vec<String>,
}

impl FactsSummary {
    /// Extracts the summary from facts JSON; rejects other schema versions.
    pub fn from_json(value: &serde_json::Value) -> anyhow::Result<Self> {
        match value.get("schema_version").and_then(|v| v.as_u64()) {
            Some(1) => {}
            Some(other) => anyhow::bail!(
                "facts schema_version {other} is not supported (expected 1); re-run xpu-probe of this version"
            ),
            None => anyhow::bail!("facts JSON has no schema_version; is this a file written by xpu-probe?"),
        }
        let rec = value.get("recommendation");
        let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
            v.and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut warnings = strings(rec.and_then(|r| r.get("warnings")));
        warnings.extend(strings(value.get("warnings")));
        Ok(FactsSummary {
            variant: rec
                .and_then(|r| r.get("variant"))
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            reasons: strings(rec.and_then(|r| r.get("reasons"))),
            warnings,
        })
    }

    /// The JSON of a facts file written by `xpu-probe`; [`Self::from_json`] checks it.
    pub fn read_file(path: &Path) -> anyhow::Result<serde_json::Value> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read facts file {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("facts file {} is not valid JSON: {e}", path.display()))
    }
}

/// The engines `--device auto` tries, in this order, on an NVIDIA GPU (the probe's variant
/// `exo-cuda`): the first one this build can run is chosen. The order is the measured one:
/// the faster engine on the GPU first (scripts/bench-cuda.sh compares them on the same GPU;
/// docs/cuda.md has the figures). Change it here, and only here, when a measurement says so.
pub const NVIDIA_ENGINES: [Device; 2] = [Device::Vulkan, Device::Cuda];

/// Whether this program can run an engine on `device`, and if not, why. CUDA may live in
/// the separate CUDA binary ([`crate::cuda_binary`]).
pub fn available(device: Device) -> Result<(), String> {
    match device {
        Device::Cuda => crate::cuda_binary::available().map_err(|e| e.to_string()),
        _ if device.compiled_in() => Ok(()),
        _ => Err(format!(
            "this binary was built without the `{}` feature",
            device.name()
        )),
    }
}

/// Decides the device. `facts` is only consulted for `auto`.
pub fn decide(choice: DeviceChoice, facts: Option<&FactsSummary>) -> DeviceDecision {
    let nvidia = facts.is_some_and(|f| f.variant.as_deref() == Some("exo-cuda"));
    decide_with(choice, facts, |device| {
        available(device)?;
        // On NVIDIA the alternative to Vulkan is CUDA, so a Vulkan engine without a GPU
        // adapter (the driver's Vulkan part missing or not loadable) must be seen before the
        // choice: at load time the only fallback left is the CPU. Elsewhere the fallback is
        // the CPU either way, and `load` gives it with the reason.
        if nvidia && device == Device::Vulkan {
            vulkan_gpu_adapter()?;
        }
        Ok(())
    })
}

/// The Vulkan GPU adapter this build would run on, or why there is none. Asked once per
/// process: the choice is made more than once at start-up (the CUDA hand-over, then the
/// command), and enumerating adapters starts every Vulkan driver.
fn vulkan_gpu_adapter() -> Result<(), String> {
    #[cfg(feature = "vulkan")]
    {
        static FOUND: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        FOUND
            .get_or_init(|| {
                xpu_vulkan::gpu_adapter()
                    .map(|_| ())
                    .map_err(|e| format!("no Vulkan GPU adapter: {e}"))
            })
            .clone()
    }
    #[cfg(not(feature = "vulkan"))]
    {
        Ok(())
    }
}

/// [`decide`] with the engines' availability given, so that the rule can be tested for
/// every build.
pub fn decide_with(
    choice: DeviceChoice,
    facts: Option<&FactsSummary>,
    available: impl Fn(Device) -> Result<(), String>,
) -> DeviceDecision {
    let explicit = |device: Device| DeviceDecision {
        device,
        reasons: vec![format!("--device {} was given", device.name())],
    };
    if let DeviceChoice::Given(device) = choice {
        return explicit(device);
    }
    let Some(facts) = facts else {
        return DeviceDecision {
            device: Device::Cpu,
            reasons: vec!["no hardware facts are available, so the CPU is used".into()],
        };
    };
    let mut reasons: Vec<String> = facts
        .reasons
        .iter()
        .map(|r| format!("probe: {r}"))
        .collect();
    let variant = facts.variant.as_deref().unwrap_or("none");
    let wanted: &[Device] = match facts.variant.as_deref() {
        Some("exo-intel") => &[Device::Vulkan],
        Some("exo-cuda") => &NVIDIA_ENGINES,
        Some("exo-cpu") => &[],
        Some(other) => {
            reasons.push(format!(
                "unknown recommended variant `{other}`, using the CPU"
            ));
            &[]
        }
        None => {
            reasons.push("the facts have no recommendation, using the CPU".into());
            &[]
        }
    };
    for &device in wanted {
        match available(device) {
            Ok(()) => {
                reasons.push(format!(
                    "recommended variant {variant} -> device {}",
                    device.name()
                ));
                return DeviceDecision { device, reasons };
            }
            Err(why) => reasons.push(format!(
                "the facts recommend {variant}, but device {} cannot be used: {why}",
                device.name()
            )),
        }
    }
    if !wanted.is_empty() {
        reasons.push("using the CPU".into());
    }
    DeviceDecision {
        device: Device::Cpu,
        reasons,
    }
}

/// In the binary without CUDA: when `choice` comes to CUDA, replaces this process with the
/// CUDA binary (same arguments) and does not return; otherwise returns to run here. An
/// explicit `--device cuda` that cannot be honoured is an error naming what is missing;
/// `auto` reads the facts (`facts_file` or a live probe) and only considers CUDA where
/// [`NVIDIA_ENGINES`] puts it first among the engines this build can run.
pub fn hand_over_to_cuda_if_chosen(
    choice: DeviceChoice,
    facts_file: Option<&Path>,
) -> anyhow::Result<()> {
    if crate::cuda_binary::compiled_in() {
        return Ok(());
    }
    match choice {
        DeviceChoice::Given(Device::Cuda) => {
            crate::cuda_binary::available().map_err(|e| anyhow::anyhow!("--device cuda: {e}"))?;
            Err(crate::cuda_binary::hand_over())
        }
        // Only an installed CUDA binary makes the facts worth reading this early.
        DeviceChoice::Auto
            if crate::cuda_binary::expected_path().is_some_and(|path| path.is_file()) =>
        {
            let (_, facts) = read_facts(facts_file)?;
            if decide(choice, Some(&facts)).device == Device::Cuda {
                return Err(crate::cuda_binary::hand_over());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The facts document and its summary: the file if given (a bad file is an error),
/// else a live probe.
pub fn read_facts(file: Option<&Path>) -> anyhow::Result<(serde_json::Value, FactsSummary)> {
    let value = match file {
        Some(path) => FactsSummary::read_file(path)?,
        None => {
            tracing::info!("no --facts file: probing the hardware");
            let facts = xpu_probe::probe(&xpu_probe::ProbeOptions {
                root: "/".into(),
                level_zero: true,
            });
            serde_json::to_value(&facts).context("cannot serialise the probe's facts")?
        }
    };
    let summary = FactsSummary::from_json(&value).map_err(|e| match file {
        Some(path) => anyhow::anyhow!("facts file {}: {e}", path.display()),
        None => e,
    })?;
    Ok((value, summary))
}

/// Loads the model on the decided device (`options.device` is set from it). When the
/// user chose `auto` and the accelerator fails, logs a warning with the reason and
/// loads on the CPU instead; the device used and that reason come back too.
pub fn load(
    path: &Path,
    choice: DeviceChoice,
    decision: &DeviceDecision,
    options: &LoadOptions,
) -> anyhow::Result<(LoadedModel, Device, Option<String>)> {
    let on = |device| LoadOptions {
        device,
        ..options.clone()
    };
    let device = decision.device;
    match model::load(path, &on(device)) {
        Ok(m) => Ok((m, device, None)),
        Err(e)
            if choice == DeviceChoice::Auto && device != Device::Cpu && is_device_failure(&e) =>
        {
            let reason = format!("the {} device failed to initialise ({e})", device.name());
            tracing::warn!("{reason}; falling back to the CPU");
            let m = model::load(path, &on(Device::Cpu))?;
            Ok((m, Device::Cpu, Some(reason)))
        }
        Err(e) => Err(e.into()),
    }
}

/// For `generate` and `bench`: decides (with a live probe for `auto`), logs why, and
/// loads.
pub fn decide_and_load(
    path: &Path,
    choice: DeviceChoice,
    options: &LoadOptions,
) -> anyhow::Result<LoadedModel> {
    let facts = match choice {
        DeviceChoice::Auto => Some(read_facts(None)?.1),
        DeviceChoice::Given(_) => None,
    };
    let decision = decide(choice, facts.as_ref());
    tracing::info!(
        "device {} chosen: {}",
        decision.device,
        decision.reasons.join("; ")
    );
    Ok(load(path, choice, &decision, options)?.0)
}

/// Errors about the model file itself would fail on the CPU too; only device
/// and engine errors justify a fallback.
fn is_device_failure(e: &model::LoadError) -> bool {
    matches!(
        e,
        model::LoadError::Device(_) | model::LoadError::Engine { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(variant: &str) -> FactsSummary {
        FactsSummary::from_json(&serde_json::json!({
            "schema_version": 1,
            "recommendation": {"variant": variant, "reasons": ["found a GPU"], "warnings": []},
            "warnings": ["w"]
        }))
        .unwrap()
    }

    #[test]
    fn auto_without_facts_is_cpu_with_a_reason() {
        let d = decide(DeviceChoice::Auto, None);
        assert_eq!(d.device, Device::Cpu);
        assert!(!d.reasons.is_empty());
    }

    #[test]
    fn auto_follows_the_recommendation_when_available() {
        let only_cpu = |d: Device| match d {
            Device::Cpu => Ok(()),
            _ => Err("not built".to_string()),
        };
        let d = decide_with(DeviceChoice::Auto, Some(&facts("exo-intel")), only_cpu);
        assert_eq!(d.device, Device::Cpu);
        assert!(d.reasons.iter().any(|r| r.contains("found a GPU")));
        assert!(
            d.reasons.iter().any(|r| r.contains("not built")),
            "{:?}",
            d.reasons
        );
        let d = decide_with(DeviceChoice::Auto, Some(&facts("exo-intel")), |_| Ok(()));
        assert_eq!(d.device, Device::Vulkan);
        let d = decide_with(DeviceChoice::Auto, Some(&facts("exo-cpu")), |_| Ok(()));
        assert_eq!(d.device, Device::Cpu);
    }

    /// On NVIDIA a Vulkan engine with no GPU adapter (here: only lavapipe, a CPU adapter,
    /// which is never taken on NVIDIA even where tests allow it) is passed over at the
    /// choice, so that CUDA, or the CPU where CUDA is missing, comes next with the reason.
    #[cfg(feature = "vulkan")]
    #[test]
    fn auto_on_nvidia_passes_over_vulkan_without_a_gpu_adapter() {
        let d = decide(DeviceChoice::Auto, Some(&facts("exo-cuda")));
        assert_ne!(d.device, Device::Vulkan, "{:?}", d.reasons);
        assert!(
            d.reasons
                .iter()
                .any(|r| r.contains("device vulkan cannot be used: no Vulkan GPU adapter")),
            "{:?}",
            d.reasons
        );
    }

    #[test]
    fn auto_on_nvidia_takes_the_first_available_of_the_measured_order() {
        let all = |_: Device| Ok(());
        let d = decide_with(DeviceChoice::Auto, Some(&facts("exo-cuda")), all);
        assert_eq!(d.device, NVIDIA_ENGINES[0]);
        let without_first = |d: Device| {
            if d == NVIDIA_ENGINES[0] {
                Err("missing".to_string())
            } else {
                Ok(())
            }
        };
        let d = decide_with(DeviceChoice::Auto, Some(&facts("exo-cuda")), without_first);
        assert_eq!(d.device, NVIDIA_ENGINES[1]);
        assert!(
            d.reasons.iter().any(|r| r.contains("missing")),
            "{:?}",
            d.reasons
        );
        let neither = |d: Device| match d {
            Device::Cpu => Ok(()),
            _ => Err("missing".to_string()),
        };
        let d = decide_with(DeviceChoice::Auto, Some(&facts("exo-cuda")), neither);
        assert_eq!(d.device, Device::Cpu);
    }

    #[test]
    fn the_nvidia_order_holds_both_gpu_engines() {
        let mut engines = NVIDIA_ENGINES;
        engines.sort_by_key(|d| d.name());
        assert_eq!(engines, [Device::Cuda, Device::Vulkan]);
    }

    #[test]
    fn explicit_choice_wins() {
        assert_eq!(
            decide(DeviceChoice::Given(Device::Vulkan), Some(&facts("exo-cpu"))).device,
            Device::Vulkan
        );
    }

    #[test]
    fn choices_parse_with_one_list_of_names() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("Vulkan".parse(), Ok(DeviceChoice::Given(Device::Vulkan)));
        let error = "gpu".parse::<DeviceChoice>().unwrap_err();
        assert!(error.contains("auto, cpu, cuda, vulkan"), "{error}");
        for choice in [DeviceChoice::Auto, DeviceChoice::Given(Device::Cuda)] {
            assert_eq!(choice.to_string().parse(), Ok(choice));
        }
    }

    #[test]
    fn wrong_schema_is_rejected() {
        let err = FactsSummary::from_json(&serde_json::json!({"schema_version": 2})).unwrap_err();
        assert!(err.to_string().contains("schema_version 2"));
        assert_eq!(facts("exo-cpu").warnings, vec!["w".to_string()]);
    }
}
