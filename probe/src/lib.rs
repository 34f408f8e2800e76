//! `xpu-probe`: hardware facts for local inference.
//!
//! The probe reads PCI functions from sysfs, the CPU, memory and kernel from procfs, the NVIDIA
//! driver version, and asks Intel Level Zero (in a child process) what it can drive. From these
//! facts it recommends the xpu variant (`exo-intel`, `exo-cuda`, `exo-cpu`) and what the
//! systemd service needs (device access, groups, kernel parameters).
//!
//! Data flows one way: [`read`] (files under a root) → [`pci`], [`system`], [`level_zero`] →
//! [`gpu`] (accelerator view, with the [`intel`] id table) → [`recommend`] → [`facts::Facts`],
//! which [`render`] writes as JSON, Nix or text.
//!
//! ```no_run
//! let facts = xpu_probe::probe(&xpu_probe::ProbeOptions { root: "/".into(), level_zero: false });
//! println!("{}", facts.recommendation.variant);
//! ```

pub mod facts;
pub mod gpu;
pub mod intel;
pub mod level_zero;
pub mod output;
pub mod parse;
pub mod pci;
pub mod read;
pub mod recommend;
pub mod render;
pub mod system;

use std::path::PathBuf;

pub use facts::{Facts, FactsFileError, Variant};

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Read `ROOT/sys/...` and `ROOT/proc/...` instead of `/sys` and `/proc`.
    pub root: PathBuf,
    /// Query Level Zero (in a child process). Off: `level_zero.skipped` is true.
    pub level_zero: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            root: PathBuf::from("/"),
            level_zero: true,
        }
    }
}

/// Probes the machine (or the captured tree at `options.root`). Never fails: whatever cannot be
/// read is missing from the facts and explained in `warnings`.
pub fn probe(options: &ProbeOptions) -> Facts {
    let mut reader = read::Reader::new(&options.root);
    let pci = pci::enumerate(&mut reader);
    let cmdline = system::cmdline(&mut reader);
    let gpus = gpu::gpus(&pci, cmdline.as_deref());
    let (cpu, hypervisor_flag) = system::cpu(&mut reader);
    let memory = system::memory(&mut reader);
    let kernel = system::kernel(&mut reader);
    let virtualization = system::virtualization(&mut reader, hypervisor_flag);
    let container = system::container(&mut reader);
    let nvidia = system::nvidia(&mut reader);
    let level_zero = if options.level_zero {
        level_zero::query()
    } else {
        level_zero::skipped()
    };
    let recommendation = recommend::recommend(&recommend::Inputs {
        gpus: &gpus,
        pci: &pci,
        nvidia: nvidia.as_ref(),
        level_zero: &level_zero,
        root: &options.root,
    });
    Facts {
        schema_version: facts::SCHEMA_VERSION,
        probe_version: env!("CARGO_PKG_VERSION").to_string(),
        pci,
        gpus,
        level_zero,
        cpu,
        memory,
        kernel,
        virtualization,
        container,
        nvidia,
        recommendation,
        warnings: reader.into_warnings(),
    }
}
