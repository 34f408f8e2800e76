//! Our engines against llama.cpp b11434, the reference, on the same GGUF files: the first 16
//! greedy tokens and the log-probabilities of llama.cpp's 8 most likely tokens over the first
//! steps, through scripts/compare-llama.py (which drives this build's `xpu-runner generate`
//! and llama.cpp's `llama-server`), on every entry of scripts/make-test-gguf.py (llama3,
//! llama3-tied, mistral, qwen2, qwen3, phi3, gemma3) as F32, Q8_0 and Q4_K_M files, loaded
//! without --ctx (llama3's context is 131072 tokens). One function, [`agrees_with_llama_cpp`],
//! checks one (entry, type, device) row. SmolLM2 is not compared here: on a real quantized
//! model the reference's own rounding depends on the host's instruction set (AVX-512 and AVX2
//! builds of llama.cpp quantize and sum differently), so its near-ties flip by host; see
//! docs/runner.md.
//!
//! Needs llama.cpp's binaries in XPU_LLAMA_CPP_BIN (scripts/test.sh builds them with
//! scripts/build-llama-cpp.sh and sets it); without it each test says so and passes. The
//! Vulkan cases run on lavapipe where no GPU is present (XPU_RUNNER_ALLOW_CPU_ADAPTER=1) and
//! only in builds with the `vulkan` feature: every entry x F32, Q8_0, Q4_K_M, as on the CPU.
//!
//! Agreement: at least 4 of the 5 prompts give llama.cpp's 16 tokens. Tolerance (largest
//! |log-probability difference| over a compared step, see docs/runner.md): 0.02 on the F32
//! files, where only summation order, `exp` and the f16 KV cache that both engines keep differ
//! (measured: at most 0.0011 on the CPU); dropping the RoPE factors moves it by 0.09 to 0.32,
//! dropping qwen2's biases by more. 0.1 on the Q8_0 and Q4_K_M files, where the reference
//! quantizes and sums its activations in its host's order (measured here against an AVX-512
//! build: at most 0.065).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

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
    // One generator at a time: tests running in parallel may ask for the same file.
    static GENERATOR: Mutex<()> = Mutex::new(());
    let _one = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
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

/// The largest log-probability difference allowed on a file of type `ty`.
fn tolerance(ty: &str) -> &'static str {
    match ty {
        "F32" => "0.02",
        _ => "0.1",
    }
}

/// One row: entry `entry` of scripts/make-test-gguf.py as a `ty` file on `device` gives
/// llama.cpp's first 16 greedy tokens on at least 4 of 5 prompts, and log-probabilities
/// within [`tolerance`] over the first steps.
fn agrees_with_llama_cpp(entry: &str, ty: &str, device: &str) {
    let model = test_file(entry, ty);
    let (ok, out) = compare(
        &model,
        None,
        device,
        &["--min-agree", "4", "--tolerance", tolerance(ty)],
    );
    assert!(
        ok,
        "{entry} {ty} on {device} differs from llama.cpp:\n{out}"
    );
}

/// Every file type of `entry` on the CPU engine.
fn cpu_rows(entry: &str) {
    if llama_bin().is_none() {
        return;
    }
    for ty in ["F32", "Q8_0", "Q4_K_M"] {
        agrees_with_llama_cpp(entry, ty, "cpu");
    }
}

#[test]
fn llama3_on_cpu() {
    cpu_rows("llama3");
}

#[test]
fn llama3_tied_on_cpu() {
    cpu_rows("llama3-tied");
}

#[test]
fn mistral_on_cpu() {
    cpu_rows("mistral");
}

#[test]
fn qwen2_on_cpu() {
    cpu_rows("qwen2");
}

#[test]
fn qwen3_on_cpu() {
    cpu_rows("qwen3");
}

#[test]
fn phi3_on_cpu() {
    cpu_rows("phi3");
}

#[test]
fn gemma3_on_cpu() {
    cpu_rows("gemma3");
}

/// Every file type of `entry` on the Vulkan engine (lavapipe where no GPU is present).
fn vulkan_rows(entry: &str) {
    if llama_bin().is_none() {
        return;
    }
    if !cfg!(feature = "vulkan") {
        eprintln!("this build has no `vulkan` feature: only the CPU engine is compared");
        return;
    }
    for ty in ["F32", "Q8_0", "Q4_K_M"] {
        agrees_with_llama_cpp(entry, ty, "vulkan");
    }
}

#[test]
fn llama3_on_vulkan() {
    vulkan_rows("llama3");
}

#[test]
fn llama3_tied_on_vulkan() {
    vulkan_rows("llama3-tied");
}

#[test]
fn mistral_on_vulkan() {
    vulkan_rows("mistral");
}

#[test]
fn qwen2_on_vulkan() {
    vulkan_rows("qwen2");
}

#[test]
fn qwen3_on_vulkan() {
    vulkan_rows("qwen3");
}

#[test]
fn phi3_on_vulkan() {
    vulkan_rows("phi3");
}

#[test]
fn gemma3_on_vulkan() {
    vulkan_rows("gemma3");
}

/// The comparison must catch an engine that ignores rope_freqs: ours runs a copy of the
/// Llama-3-shaped file whose factors are all 1 (what an engine that drops them computes),
/// llama.cpp the original.
#[test]
fn dropped_rope_factors_are_caught() {
    assert_caught(
        "llama3",
        "rope_freqs.weight",
        1.0,
        "dropping the RoPE factors",
    );
}

/// The same for an omission in another architecture: qwen2 without its q/k/v biases.
#[test]
fn dropped_qwen2_biases_are_caught() {
    assert_caught("qwen2", ".bias", 0.0, "dropping qwen2's q/k/v biases");
}

/// Runs ours on a copy of the F32 file of `entry` whose F32 tensors with names ending in
/// `suffix` hold `value` everywhere, llama.cpp on the original, and asserts that the
/// comparison fails on the log-probabilities.
fn assert_caught(entry: &str, suffix: &str, value: f32, what: &str) {
    if llama_bin().is_none() {
        return;
    }
    let model = test_file(entry, "F32");
    let dir = tempfile::tempdir().unwrap();
    let altered = dir.path().join(format!("{entry}-altered.gguf"));
    write_with_tensors_set(&model, &altered, suffix, value);
    let (ok, out) = compare(
        &altered,
        Some(&model),
        "cpu",
        &["--min-agree", "4", "--tolerance", tolerance("F32")],
    );
    assert!(
        !ok && out.contains("OVER TOLERANCE"),
        "{what} went unnoticed:\n{out}"
    );
}

/// Copies `src` with every value of its F32 tensors named `*suffix` set to `value`.
fn write_with_tensors_set(src: &Path, dst: &Path, suffix: &str, value: f32) {
    use candle_core::quantized::{gguf_file, GgmlDType};
    let mut file = std::fs::File::open(src).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut bytes = std::fs::read(src).unwrap();
    let mut changed = 0;
    for (name, info) in &content.tensor_infos {
        if !name.ends_with(suffix) {
            continue;
        }
        assert_eq!(info.ggml_dtype, GgmlDType::F32, "{name}");
        let start = (content.tensor_data_offset + info.offset) as usize;
        let data = &mut bytes[start..start + 4 * info.shape.elem_count()];
        for chunk in data.chunks_exact_mut(4) {
            if f32::from_le_bytes(chunk.try_into().unwrap()) != value {
                changed += 1;
            }
            chunk.copy_from_slice(&value.to_le_bytes());
        }
    }
    assert!(
        changed > 0,
        "{src:?} has no `*{suffix}` values other than {value}"
    );
    std::fs::write(dst, bytes).unwrap();
}
