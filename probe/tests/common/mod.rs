//! Helpers shared by the integration tests: run the real `xpu-probe` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use xpu_probe::Facts;

/// The fixture tree `name` under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every fixture tree (directories under `tests/fixtures/`).
pub fn all_fixtures() -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
            .expect("fixtures directory")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    names.sort();
    names
}

/// A command for the real binary.
pub fn probe_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xpu-probe"))
}

/// Runs `xpu-probe` with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    probe_command().args(args).output().expect("xpu-probe runs")
}

/// Runs the probe on `root` without Level Zero, asserts success, parses the JSON.
pub fn facts_of_root(root: &Path) -> Facts {
    let output = run(&["--root", root.to_str().unwrap(), "--no-level-zero"]);
    assert!(
        output.status.success(),
        "xpu-probe --root {} failed: {}",
        root.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "output for {} is not facts JSON: {err}\n{}",
            root.display(),
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The facts of fixture `name`.
pub fn facts(name: &str) -> Facts {
    facts_of_root(&fixture(name))
}

/// Whether any warning (top-level or recommendation) contains `needle`.
pub fn has_warning(facts: &Facts, needle: &str) -> bool {
    facts
        .warnings
        .iter()
        .chain(&facts.recommendation.warnings)
        .any(|w| w.contains(needle))
}
