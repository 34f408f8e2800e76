//! `--format nix` parses with `nix-instantiate --parse` and carries the same facts as JSON.
//! The broken fixture puts `${builtins.abort ...}`, quotes and backslashes into a warning, so
//! evaluating its Nix output checks the string escaping.

mod common;

use std::process::Command;
use std::sync::OnceLock;

/// `nix-instantiate`, checked once for all the tests here. The check evaluates an expression,
/// so that Nix creates its state directories (/nix/var/nix) before the tests run it in
/// parallel: on a fresh machine two first evaluations at once race to create them, and one
/// fails ("creating symlink from '/nix/var/nix/gcroots/profiles' ...: File exists").
fn nix_instantiate() -> &'static str {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        match Command::new("nix-instantiate")
            .args(["--eval", "--expr", "1"])
            .output()
        {
            Ok(output) if output.status.success() => Ok(()),
            Ok(output) => Err(format!(
                "nix-instantiate --eval --expr 1 failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )),
            Err(_) => Err(
                "nix-instantiate was not found on PATH; it is needed to check the Nix output. \
                 Install Nix (Debian: apt-get install nix-bin, listed in scripts/apt-packages.txt)."
                    .to_string(),
            ),
        }
    });
    if let Err(problem) = ready {
        panic!("{problem}");
    }
    "nix-instantiate"
}

#[test]
fn nix_output_parses_for_every_fixture() {
    let nix = nix_instantiate();
    let dir = tempfile::tempdir().unwrap();
    for name in common::all_fixtures() {
        let file = dir.path().join(format!("{name}.nix"));
        let output = common::run(&[
            "--root",
            common::fixture(&name).to_str().unwrap(),
            "--no-level-zero",
            "--format",
            "nix",
            "-o",
            file.to_str().unwrap(),
        ]);
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let parsed = Command::new(nix)
            .arg("--parse")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            parsed.status.success(),
            "{name}: nix-instantiate --parse failed: {}\n{}",
            String::from_utf8_lossy(&parsed.stderr),
            std::fs::read_to_string(&file).unwrap()
        );
    }
}

/// Evaluating the Nix output gives the JSON output, value for value.
#[test]
fn nix_output_equals_json_output() {
    let nix = nix_instantiate();
    for name in ["h100", "broken", "flex-170-unbound"] {
        let root = common::fixture(name);
        let root = root.to_str().unwrap();
        let json = common::run(&["--root", root, "--no-level-zero"]);
        let nix_text = common::run(&["--root", root, "--no-level-zero", "--format", "nix"]);
        let evaluated = Command::new(nix)
            .args(["--eval", "--strict", "--json", "--expr"])
            .arg(String::from_utf8(nix_text.stdout).unwrap())
            .output()
            .unwrap();
        assert!(
            evaluated.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&evaluated.stderr)
        );
        let from_nix: serde_json::Value = serde_json::from_slice(&evaluated.stdout).unwrap();
        let from_json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(
            numbers_as_floats(from_nix),
            numbers_as_floats(from_json),
            "{name}"
        );
    }
}

/// Nix 2.8 prints the float 32.0 as `32` in JSON; compare numbers by value.
fn numbers_as_floats(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, numbers_as_floats(v)))
                .collect(),
        ),
        other => other,
    }
}
