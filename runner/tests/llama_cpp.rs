//! Our engines against llama.cpp b11434, the reference, on the same GGUF files: the first 16
//! greedy tokens and the log-probabilities of llama.cpp's 8 most likely tokens over the first
//! steps, through scripts/compare-llama.py (which drives this build's `xpu-runner generate`
//! and llama.cpp's `llama-server`), on the Llama-3-shaped random file of
//! scripts/make-test-gguf.py (rope_freqs, GQA, a 131072-token context, loaded without --ctx).
//! SmolLM2 is not compared here: on a real quantized model the reference's own rounding
//! depends on the host's instruction set (AVX-512 and AVX2 builds of llama.cpp quantize and
//! sum differently), so its near-ties flip by host; see docs/runner.md.
//!
//! Needs llama.cpp's binaries in XPU_LLAMA_CPP_BIN (scripts/test.sh builds them with
//! scripts/build-llama-cpp.sh and sets it); without it each test says so and passes. The
//! Vulkan cases run on lavapipe where no GPU is present (XPU_RUNNER_ALLOW_CPU_ADAPTER=1) and
//! only in builds with the `vulkan` feature.
//!
//! Tolerance (largest |log-probability difference| over a compared step, see
//! docs/runner.md): 0.02 on the F32 file, where only summation order, `exp` and the f16 KV
//! cache that both engines keep differ (measured: at most 0.0008 on the CPU); dropping the
//! RoPE factors moves it by 0.09 to 0.32.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn llama_bin() -> Option<String> {
    match std::env::var("XPU_LLAMA_CPP_BIN") {
        Ok(dir) if !dir.is_empty() => Some(dir),
        _ => {
            eprintln!("SKIPPED: XPU_LLAMA_CPP_BIN is not set (scripts/test.sh sets it to scripts/build-llama-cpp.sh's output)");
            None
        }
    }
}

/// The SmolLM2 model, whose tokenizer the generated files copy.
fn smollm2() -> PathBuf {
    if let Ok(path) = std::env::var("XPU_TEST_MODEL") {
        return PathBuf::from(path);
    }
    let out = Command::new(format!("{ROOT}/scripts/fetch-model.sh"))
        .output()
        .expect("run scripts/fetch-model.sh");
    assert!(
        out.status.success(),
        "fetch-model.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A generated test file (`arch` entry, `ty` F32, Q8_0 or Q4_K_M), made once in the cache.
fn test_file(arch: &str, ty: &str) -> PathBuf {
    let out = Command::new(format!("{ROOT}/scripts/make-test-gguf.py"))
        .args(["--arch", arch, "--types", ty, "--reference"])
        .arg(smollm2())
        .output()
        .expect("run scripts/make-test-gguf.py");
    assert!(
        out.status.success(),
        "make-test-gguf.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .expect("a path")
        .to_string();
    PathBuf::from(path)
}

/// Runs the comparison; returns whether it passed and its output.
fn compare(
    model: &Path,
    llama_model: Option<&Path>,
    device: &str,
    extra: &[&str],
) -> (bool, String) {
    let mut cmd = Command::new(format!("{ROOT}/scripts/compare-llama.py"));
    cmd.arg("--model")
        .arg(model)
        .args([
            "--device",
            device,
            "--runner",
            env!("CARGO_BIN_EXE_xpu-runner"),
        ])
        .args(extra);
    if let Some(other) = llama_model {
        cmd.arg("--llama-model").arg(other);
    }
    if device == "vulkan" {
        cmd.env("XPU_RUNNER_ALLOW_CPU_ADAPTER", "1");
    }
    let out = cmd.output().expect("run scripts/compare-llama.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    (out.status.success(), text)
}

fn devices() -> Vec<&'static str> {
    if cfg!(feature = "vulkan") {
        vec!["cpu", "vulkan"]
    } else {
        eprintln!("this build has no `vulkan` feature: only the CPU engine is compared");
        vec!["cpu"]
    }
}

#[test]
fn llama3_with_rope_freqs_matches_llama_cpp() {
    if llama_bin().is_none() {
        return;
    }
    let model = test_file("llama3", "F32");
    for device in devices() {
        let (ok, out) = compare(
            &model,
            None,
            device,
            &["--min-agree", "5", "--tolerance", "0.02"],
        );
        assert!(
            ok,
            "{device}: the Llama-3-shaped file differs from llama.cpp:\n{out}"
        );
    }
}

/// The comparison must catch an engine that ignores rope_freqs: ours runs a copy of the
/// Llama-3-shaped file whose factors are all 1 (what an engine that drops them computes),
/// llama.cpp the original.
#[test]
fn dropped_rope_factors_are_caught() {
    if llama_bin().is_none() {
        return;
    }
    let model = test_file("llama3", "F32");
    let dir = tempfile::tempdir().unwrap();
    let ones = dir.path().join("llama3-rope-factors-ones.gguf");
    write_with_unit_rope_factors(&model, &ones);
    let (ok, out) = compare(
        &ones,
        Some(&model),
        "cpu",
        &["--min-agree", "5", "--tolerance", "0.02"],
    );
    assert!(
        !ok && out.contains("OVER TOLERANCE"),
        "dropping the RoPE factors went unnoticed:\n{out}"
    );
}

/// Copies `src` with every value of its F32 `rope_freqs.weight` set to 1.
fn write_with_unit_rope_factors(src: &Path, dst: &Path) {
    use candle_core::quantized::{gguf_file, GgmlDType};
    let mut file = std::fs::File::open(src).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let info = &content.tensor_infos["rope_freqs.weight"];
    assert_eq!(info.ggml_dtype, GgmlDType::F32);
    let start = (content.tensor_data_offset + info.offset) as usize;
    let mut bytes = std::fs::read(src).unwrap();
    let n = info.shape.elem_count();
    let factors: Vec<f32> = bytes[start..start + 4 * n]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(
        factors.iter().any(|&f| f != 1.0),
        "the generated file's factors are already 1: {factors:?}"
    );
    for chunk in bytes[start..start + 4 * n].chunks_exact_mut(4) {
        chunk.copy_from_slice(&1f32.to_le_bytes());
    }
    std::fs::write(dst, bytes).unwrap();
}
