//! A short human summary of the facts.

use std::fmt::Write;

use crate::facts::{Facts, Gpu};

/// Renders a few lines: the recommendation first, then the hardware behind it.
pub fn text(facts: &Facts) -> String {
    let mut out = String::new();
    let r = &facts.recommendation;
    let _ = writeln!(out, "Recommended variant: {}", r.variant);
    for reason in &r.reasons {
        let _ = writeln!(out, "  - {reason}");
    }
    if !r.kernel_params.is_empty() {
        let _ = writeln!(out, "Kernel parameters: {}", r.kernel_params.join(" "));
    }
    if !r.device_allow.is_empty() {
        let _ = writeln!(out, "DeviceAllow: {}", r.device_allow.join(", "));
    }
    if !r.supplementary_groups.is_empty() {
        let _ = writeln!(out, "Groups: {}", r.supplementary_groups.join(", "));
    }

    let _ = writeln!(out);
    if facts.gpus.is_empty() {
        let _ = writeln!(out, "GPUs: none");
    } else {
        let _ = writeln!(out, "GPUs:");
        for gpu in &facts.gpus {
            let _ = writeln!(out, "  {}", gpu_line(gpu));
        }
    }
    match &facts.cpu {
        Some(cpu) => {
            let flags = [
                ("avx2", cpu.flags.avx2),
                ("fma", cpu.flags.fma),
                ("f16c", cpu.flags.f16c),
                ("avx512f", cpu.flags.avx512f),
                ("avx512_vnni", cpu.flags.avx512vnni),
                ("avx512_bf16", cpu.flags.avx512bf16),
                ("avx_vnni", cpu.flags.avx_vnni),
                ("amx", cpu.flags.amx_tile),
            ];
            let present: Vec<&str> = flags.iter().filter(|f| f.1).map(|f| f.0).collect();
            let _ = writeln!(
                out,
                "CPU: {} ({} cores, {} threads; {})",
                cpu.model_name.as_deref().unwrap_or("unknown model"),
                cpu.cores,
                cpu.threads,
                if present.is_empty() {
                    "no SIMD extensions of interest".to_string()
                } else {
                    present.join(" ")
                }
            );
        }
        None => {
            let _ = writeln!(out, "CPU: unknown");
        }
    }
    if let Some(memory) = &facts.memory {
        let _ = writeln!(
            out,
            "Memory: {:.1} GiB",
            memory.total_bytes as f64 / (1u64 << 30) as f64
        );
    }
    let _ = writeln!(
        out,
        "Kernel: {}{}",
        facts
            .kernel
            .as_ref()
            .map(|k| k.release.as_str())
            .unwrap_or("unknown"),
        match (&facts.virtualization, &facts.container) {
            (Some(vm), Some(ct)) => format!(" (virtual machine: {vm}, container: {ct})"),
            (Some(vm), None) => format!(" (virtual machine: {vm})"),
            (None, Some(ct)) => format!(" (container: {ct})"),
            (None, None) => String::new(),
        }
    );
    if let Some(nvidia) = &facts.nvidia {
        let _ = writeln!(out, "NVIDIA driver: {}", nvidia.driver_version);
    }
    let l0 = &facts.level_zero;
    let level_zero = if l0.skipped {
        "skipped".to_string()
    } else if !l0.loader_found {
        "loader not found".to_string()
    } else {
        let devices: usize = l0.drivers.iter().map(|d| d.devices.len()).sum();
        let mut line = format!(
            "loader {}, {} driver(s), {} device(s)",
            l0.loader_version.as_deref().unwrap_or("?"),
            l0.drivers.len(),
            devices
        );
        if let Some(error) = &l0.error {
            let _ = write!(line, "; {}", error.name);
        }
        line
    };
    let _ = writeln!(out, "Level Zero: {level_zero}");
    let _ = writeln!(out, "PCI functions: {}", facts.pci.len());

    let warnings: Vec<&String> = r.warnings.iter().chain(&facts.warnings).collect();
    if !warnings.is_empty() {
        let _ = writeln!(out, "\nWarnings:");
        for warning in warnings {
            let _ = writeln!(out, "  ! {warning}");
        }
    }
    out
}

fn gpu_line(gpu: &Gpu) -> String {
    let mut line = format!(
        "{} {} {}",
        gpu.pci_address,
        gpu.vendor_id.as_deref().unwrap_or("????"),
        gpu.device_id.as_deref().unwrap_or("????"),
    );
    let _ = write!(line, " {}", gpu.name.as_deref().unwrap_or("(unnamed)"));
    if let Some(family) = &gpu.family {
        let _ = write!(line, " [{family}]");
    }
    let _ = write!(line, ", driver {}", gpu.driver.as_deref().unwrap_or("none"));
    if let Some(render) = &gpu.render_node {
        let _ = write!(line, ", {render}");
    }
    if !gpu.compute_capable {
        line.push_str(", not for compute");
    }
    line
}
