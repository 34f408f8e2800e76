//! Device choice for `serve`: `--device auto` decides from the hardware facts (the
//! probe's JSON, from `--facts` or a live probe) and explains why; an explicit device
//! is taken as given. The facts are read through their JSON contract
//! (`schema_version: 1`, `recommendation.variant`), so that the runner accepts any
//! file the probe writes, including one from another machine's probe version.

use std::path::Path;

/// What the user asked for.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// Decide from the hardware facts.
    Auto,
    Cpu,
    Cuda,
    Vulkan,
}

/// A concrete device to load the model on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
    Vulkan,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Vulkan => "vulkan",
        }
    }

    /// Whether this binary was built with the engine for the device.
    pub fn compiled_in(self) -> bool {
        match self {
            Device::Cpu => true,
            Device::Cuda => cfg!(feature = "cuda"),
            Device::Vulkan => cfg!(feature = "vulkan"),
        }
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

/// Decides the device. `facts` is only consulted for `auto`.
pub fn decide(choice: DeviceChoice, facts: Option<&FactsSummary>) -> DeviceDecision {
    let explicit = |device: Device| DeviceDecision {
        device,
        reasons: vec![format!("--device {} was given", device.name())],
    };
    match choice {
        DeviceChoice::Cpu => return explicit(Device::Cpu),
        DeviceChoice::Cuda => return explicit(Device::Cuda),
        DeviceChoice::Vulkan => return explicit(Device::Vulkan),
        DeviceChoice::Auto => {}
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
    let wanted = match facts.variant.as_deref() {
        Some("exo-intel") => Device::Vulkan,
        Some("exo-cuda") => Device::Cuda,
        Some("exo-cpu") => Device::Cpu,
        Some(other) => {
            reasons.push(format!(
                "unknown recommended variant `{other}`, using the CPU"
            ));
            Device::Cpu
        }
        None => {
            reasons.push("the facts have no recommendation, using the CPU".into());
            Device::Cpu
        }
    };
    let device = if wanted.compiled_in() {
        reasons.push(format!(
            "recommended variant {} -> device {}",
            facts.variant.as_deref().unwrap_or("none"),
            wanted.name()
        ));
        wanted
    } else {
        reasons.push(format!(
            "the facts recommend {} but this binary was built without the `{}` feature; using the CPU",
            wanted.name(),
            wanted.name()
        ));
        Device::Cpu
    };
    DeviceDecision { device, reasons }
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
    fn auto_follows_the_recommendation_when_compiled_in() {
        let d = decide(DeviceChoice::Auto, Some(&facts("exo-cuda")));
        let expected = if cfg!(feature = "cuda") {
            Device::Cuda
        } else {
            Device::Cpu
        };
        assert_eq!(d.device, expected);
        assert!(d.reasons.iter().any(|r| r.contains("found a GPU")));
        let d = decide(DeviceChoice::Auto, Some(&facts("exo-cpu")));
        assert_eq!(d.device, Device::Cpu);
    }

    #[test]
    fn explicit_choice_wins() {
        assert_eq!(
            decide(DeviceChoice::Vulkan, Some(&facts("exo-cpu"))).device,
            Device::Vulkan
        );
    }

    #[test]
    fn wrong_schema_is_rejected() {
        let err = FactsSummary::from_json(&serde_json::json!({"schema_version": 2})).unwrap_err();
        assert!(err.to_string().contains("schema_version 2"));
        assert_eq!(facts("exo-cpu").warnings, vec!["w".to_string()]);
    }
}
