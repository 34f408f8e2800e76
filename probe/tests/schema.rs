//! The committed JSON Schema matches the Rust types, and real outputs validate against it.

mod common;

use std::path::Path;

fn schema_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/facts.schema.json")
}

fn generated() -> String {
    let mut text = serde_json::to_string_pretty(&xpu_probe::Facts::json_schema()).unwrap();
    text.push('\n');
    text
}

/// Fails when `probe/schema/facts.schema.json` is stale. Regenerate it with
/// `XPU_UPDATE_SCHEMA=1 cargo test -p xpu-probe --test schema`.
#[test]
fn committed_schema_is_current() {
    let path = schema_path();
    let fresh = generated();
    if std::env::var_os("XPU_UPDATE_SCHEMA").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale: the facts types changed. Regenerate it with \
         `XPU_UPDATE_SCHEMA=1 cargo test -p xpu-probe --test schema` and commit it.",
        path.display()
    );
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path()).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("the committed schema is a valid JSON Schema")
}

fn assert_valid(validator: &jsonschema::Validator, json: &serde_json::Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(json)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match the schema: {errors:#?}"
    );
}

#[test]
fn every_fixture_validates() {
    let validator = validator();
    for name in common::all_fixtures() {
        let output = common::run(&[
            "--root",
            common::fixture(&name).to_str().unwrap(),
            "--no-level-zero",
        ]);
        assert!(output.status.success());
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_valid(&validator, &json, &name);
    }
}

#[test]
fn schema_rejects_wrong_documents() {
    let validator = validator();
    let output = common::run(&[
        "--root",
        common::fixture("h100").to_str().unwrap(),
        "--no-level-zero",
    ]);
    let good: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut bad = good.clone();
    bad["recommendation"]["variant"] = "exo-rocm".into();
    assert!(
        !validator.is_valid(&bad),
        "an unknown variant must not validate"
    );
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("gpus");
    assert!(
        !validator.is_valid(&bad),
        "a document without gpus must not validate"
    );
    let mut bad = good.clone();
    bad["gpus"][0]["device_id"] = "0x2330".into();
    assert!(
        !validator.is_valid(&bad),
        "ids are 4 lowercase hex digits without 0x"
    );
    let mut bad = good;
    bad["pci"][0]["bars"] = "none".into();
    assert!(!validator.is_valid(&bad), "bars must be a list");
}

/// On this very machine: valid facts; `exo-cpu` whenever no GPU can compute here.
#[test]
fn this_machine() {
    let output = common::run(&["--root", "/"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_valid(&validator(), &json, "the facts of this machine");
    let facts: xpu_probe::Facts = serde_json::from_value(json).unwrap();
    assert!(
        !facts.pci.is_empty()
            || facts
                .warnings
                .iter()
                .any(|w| w.contains("/sys/bus/pci/devices"))
    );
    assert!(
        facts.cpu.is_some() && facts.memory.is_some() && facts.kernel.is_some(),
        "{:?}",
        facts.warnings
    );
    assert!(
        !facts.level_zero.skipped,
        "Level Zero is queried unless --no-level-zero"
    );
    if !facts.gpus.iter().any(|g| g.compute_capable) {
        assert_eq!(facts.recommendation.variant, xpu_probe::Variant::ExoCpu);
    }
}

/// The library API the runner uses reads what the binary writes.
#[test]
fn facts_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("facts.json");
    let output = common::run(&[
        "--root",
        common::fixture("arc-b580-xe").to_str().unwrap(),
        "--no-level-zero",
        "-o",
        path.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let facts = xpu_probe::Facts::from_json_file(&path).unwrap();
    assert_eq!(facts.recommendation.variant, xpu_probe::Variant::ExoIntel);

    std::fs::write(&path, "{\"schema_version\": 1}").unwrap();
    let err = xpu_probe::Facts::from_json_file(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a valid xpu-probe facts file") && err.contains("xpu-probe -o"),
        "{err}"
    );
    let err = xpu_probe::Facts::from_json_file(&dir.path().join("missing.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read facts file"), "{err}");
    let mut value: serde_json::Value = serde_json::to_value(&facts).unwrap();
    value["schema_version"] = 2.into();
    std::fs::write(&path, value.to_string()).unwrap();
    let err = xpu_probe::Facts::from_json_file(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("schema_version 2"), "{err}");
}
