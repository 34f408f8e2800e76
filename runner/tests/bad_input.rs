//! Every way a user can hand `xpu-runner` a bad model or request ends with one
//! clear `error:` line and a non-zero exit, never a panic. Each case is built from
//! the real test model, made broken.

mod support;

use candle_core::quantized::gguf_file::Value;
use support::{assert_one_line_error, edited_model, runner, test_model};

fn model_str() -> String {
    test_model().to_string_lossy().into_owned()
}

fn generate(model: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "generate",
        "--model",
        model,
        "--prompt",
        "Hello",
        "--max-tokens",
        "2",
        "--temperature",
        "0",
    ];
    args.extend_from_slice(extra);
    runner(&args)
}

#[test]
fn missing_file() {
    let out = generate("/nonexistent/model.gguf", &[]);
    assert_one_line_error(&out, &["not found", "/nonexistent/model.gguf"]);
}

#[test]
fn truncated_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(test_model()).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let out = generate(path.to_str().unwrap(), &[]);
    assert_one_line_error(&out, &["truncated", "download it again"]);
}

#[test]
fn gguf_cut_inside_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("header-only.gguf");
    let bytes = std::fs::read(test_model()).unwrap();
    std::fs::write(&path, &bytes[..4096]).unwrap();
    let out = generate(path.to_str().unwrap(), &[]);
    assert_one_line_error(&out, &["truncated"]);
}

#[test]
fn corrupt_magic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.gguf");
    let mut bytes = std::fs::read(test_model()).unwrap();
    bytes[..4].copy_from_slice(b"GGML");
    std::fs::write(&path, &bytes).unwrap();
    let out = generate(path.to_str().unwrap(), &[]);
    assert_one_line_error(&out, &["not a model", "GGUF magic"]);
}

#[test]
fn corrupt_header_value() {
    // An absurd metadata count right after the version.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt-header.gguf");
    let mut bytes = std::fs::read(test_model()).unwrap();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let out = generate(path.to_str().unwrap(), &[]);
    let line = assert_one_line_error(&out, &[]);
    assert!(
        line.contains("corrupt") || line.contains("truncated"),
        "{line}"
    );
}

#[test]
fn unsupported_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    edited_model(&path, |md| {
        md.insert("general.architecture".into(), Value::String("mamba".into()));
    });
    let out = generate(path.to_str().unwrap(), &[]);
    assert_one_line_error(
        &out,
        &[
            "unsupported model architecture `mamba`",
            "GGUF llama, qwen2, qwen3, phi3, gemma3",
        ],
    );
}

#[test]
fn unsupported_quantization() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iq4.gguf");
    let mut bytes = std::fs::read(test_model()).unwrap();
    let at = support::tensor_type_offset(&bytes, "blk.0.attn_q.weight");
    bytes[at..at + 4].copy_from_slice(&20u32.to_le_bytes()); // IQ4_NL
    std::fs::write(&path, &bytes).unwrap();
    let out = generate(path.to_str().unwrap(), &[]);
    assert_one_line_error(&out, &["unsupported quantization IQ4_NL", "Q4_0"]);
}

#[test]
fn quantization_without_a_cpu_kernel() {
    // Q2_K is a GGUF type that candle reads but our CPU engine has no kernel for: the
    // engine refuses it by name instead of running it on a slow fallback.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q2k.gguf");
    let (metadata, mut tensors) = support::read_gguf(&test_model());
    let (_, down) = tensors
        .iter_mut()
        .find(|(name, _)| name == "blk.0.ffn_down.weight")
        .unwrap();
    let weights = down.dequantize(&candle_core::Device::Cpu).unwrap();
    *down =
        candle_core::quantized::QTensor::quantize(&weights, candle_core::quantized::GgmlDType::Q2K)
            .unwrap();
    support::write_gguf(&path, &metadata, &tensors);
    let out = generate(path.to_str().unwrap(), &["--device", "cpu"]);
    assert_one_line_error(
        &out,
        &[
            "tensor blk.0.ffn_down.weight has type Q2K",
            "Q4_K",
            "XPU_CPU_ENGINE=candle",
        ],
    );
}

#[test]
fn missing_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-tokenizer.gguf");
    edited_model(&path, |md| md.retain(|k, _| !k.starts_with("tokenizer.")));
    let out = generate(path.to_str().unwrap(), &[]);
    assert_one_line_error(&out, &["no embedded tokenizer", "--tokenizer"]);
}

#[test]
fn embedded_tokenizer_does_not_match_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short-vocab.gguf");
    edited_model(&path, |md| {
        for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type"] {
            if let Some(Value::Array(items)) = md.get_mut(key) {
                items.truncate(1000);
            }
        }
        // Merges that name dropped tokens would be rejected first.
        md.insert("tokenizer.ggml.merges".into(), Value::Array(vec![]));
    });
    let out = generate(path.to_str().unwrap(), &[]);
    assert_one_line_error(&out, &["does not match", "1000 tokens", "49152"]);
}

#[test]
fn external_tokenizer_of_another_model() {
    use tokenizers::models::wordlevel::WordLevel;
    let dir = tempfile::tempdir().unwrap();
    let vocab = (0..500).map(|i| (format!("w{i}"), i as u32)).collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("w0".into())
        .build()
        .unwrap();
    let tokenizer = tokenizers::Tokenizer::new(model);
    let path = dir.path().join("tokenizer.json");
    tokenizer.save(&path, false).unwrap();
    let out = generate(&model_str(), &["--tokenizer", path.to_str().unwrap()]);
    assert_one_line_error(&out, &["does not match", "500 tokens"]);
}

#[test]
fn missing_external_tokenizer_file() {
    let out = generate(
        &model_str(),
        &["--tokenizer", "/nonexistent/tokenizer.json"],
    );
    assert_one_line_error(&out, &["tokenizer", "/nonexistent/tokenizer.json"]);
}

#[test]
fn prompt_longer_than_the_context() {
    let prompt = "word ".repeat(100);
    let out = runner(&[
        "generate",
        "--model",
        &model_str(),
        "--prompt",
        &prompt,
        "--ctx",
        "32",
        "--max-tokens",
        "2",
    ]);
    assert_one_line_error(
        &out,
        &["exceeds the available context size (32 tokens)", "--ctx"],
    );
}

#[test]
fn context_larger_than_the_model_supports() {
    let out = generate(&model_str(), &["--ctx", "1000000"]);
    assert_one_line_error(&out, &["--ctx 1000000", "larger than this model supports"]);
}

#[test]
fn chat_without_a_template() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-template.gguf");
    edited_model(&path, |md| {
        md.remove("tokenizer.chat_template");
    });
    let out = runner(&[
        "generate",
        "--model",
        path.to_str().unwrap(),
        "--chat",
        "Hi",
        "--max-tokens",
        "2",
    ]);
    assert_one_line_error(&out, &["no chat template", "plain prompt"]);
}

#[test]
fn sampling_parameter_out_of_range() {
    let out = generate(&model_str(), &["--top-p", "7"]);
    assert_one_line_error(&out, &["top_p", "0 to 1"]);
}

#[test]
fn unknown_device() {
    let out = generate(&model_str(), &["--device", "tpu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown device `tpu`"), "{stderr}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature() {
    // This build hands CUDA over to xpu-runner-cuda, which the test build does not install.
    let out = generate(&model_str(), &["--device", "cuda"]);
    assert_one_line_error(
        &out,
        &[
            "built without CUDA",
            "xpu-runner-cuda",
            "is not installed",
            "scripts/build-cuda.sh",
        ],
    );
}

#[cfg(not(feature = "vulkan"))]
#[test]
fn vulkan_without_the_feature() {
    let out = generate(&model_str(), &["--device", "vulkan"]);
    assert_one_line_error(&out, &["without the `vulkan` feature"]);
}

#[cfg(feature = "vulkan")]
#[test]
fn bad_vulkan_device_lists() {
    // An index no adapter has: the error lists the adapters to choose from.
    let out = generate(
        &model_str(),
        &[
            "--device",
            "vulkan",
            "--allow-cpu-adapter",
            "--devices",
            "0,9",
        ],
    );
    // (Mesa may print a line of its own first: the last line is ours.)
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        !out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(
        last.starts_with("error: ")
            && last.contains("--devices 9: no such Vulkan adapter; the adapters are: 0: "),
        "{stderr}"
    );
    let out = generate(&model_str(), &["--device", "vulkan", "--devices", "first"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("neither an adapter index nor a PCI address"),
        "{stderr}"
    );
}

#[test]
fn directory_that_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = generate(dir.path().to_str().unwrap(), &[]);
    assert_one_line_error(&out, &["not a model", "config.json"]);
}

/// A copy of the test model with `patch` applied to its bytes.
fn patched_model(dir: &tempfile::TempDir, name: &str, patch: impl FnOnce(&mut Vec<u8>)) -> String {
    let path = dir.path().join(name);
    let mut bytes = std::fs::read(test_model()).unwrap();
    patch(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn gguf_alignment_of_zero() {
    // candle's reader divides by it, so the loader must refuse it before candle reads
    // the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alignment-0.gguf");
    edited_model(&path, |md| {
        md.insert("general.alignment".into(), Value::U32(0));
    });
    let out = generate(path.to_str().unwrap(), &[]);
    assert_one_line_error(
        &out,
        &[
            "alignment-0.gguf",
            "general.alignment",
            "is 0",
            "power of two",
            "download",
        ],
    );
}

#[test]
fn gguf_alignment_not_a_power_of_two() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alignment-48.gguf");
    edited_model(&path, |md| {
        md.insert("general.alignment".into(), Value::U32(48));
    });
    let out = generate(path.to_str().unwrap(), &[]);
    assert_one_line_error(&out, &["general.alignment", "is 48", "power of two"]);
}

#[test]
fn gguf_tensor_count_beyond_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = patched_model(&dir, "tensor-count.gguf", |b| {
        b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes())
    });
    let out = generate(&path, &[]);
    assert_one_line_error(
        &out,
        &[
            "truncated",
            "declares 1099511627776 tensors",
            "download it again",
        ],
    );
}

#[test]
fn gguf_tensor_offset_outside_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = patched_model(&dir, "offset.gguf", |b| {
        let at = support::tensor_type_offset(b, "blk.5.ffn_up.weight") + 4;
        b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    });
    let out = generate(&path, &[]);
    assert_one_line_error(
        &out,
        &[
            "truncated",
            "tensor `blk.5.ffn_up.weight` ends at byte",
            "download it again",
        ],
    );
}

#[test]
fn gguf_dimensions_whose_product_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let path = patched_model(&dir, "overflow.gguf", |b| {
        // The two dimensions of a matrix come just before its type field.
        let at = support::tensor_type_offset(b, "blk.0.attn_q.weight");
        b[at - 16..at - 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        b[at - 8..at].copy_from_slice(&(1u64 << 40).to_le_bytes());
    });
    let out = generate(&path, &[]);
    assert_one_line_error(
        &out,
        &["corrupt", "tensor `blk.0.attn_q.weight`", "overflows"],
    );
}

#[test]
fn gguf_missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = patched_model(&dir, "missing-tensor.gguf", |b| {
        // Rename the tensor in the header (same length): the model then lacks it.
        let name = b"blk.3.ffn_down.weight";
        let at = b.windows(name.len()).position(|w| w == name).unwrap();
        b[at + 14] = b'X';
    });
    let out = generate(&path, &[]);
    assert_one_line_error(
        &out,
        &[
            "missing-tensor.gguf",
            "not a valid `llama` model",
            "tensor `blk.3.ffn_down.weight` is missing",
        ],
    );
}

#[test]
fn gguf_tensor_of_the_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = patched_model(&dir, "wrong-shape.gguf", |b| {
        // attn_k is [192, 576] (rows, columns); halve its rows.
        let at = support::tensor_type_offset(b, "blk.0.attn_k.weight");
        b[at - 8..at].copy_from_slice(&96u64.to_le_bytes());
    });
    let out = generate(&path, &[]);
    assert_one_line_error(
        &out,
        &["tensor `blk.0.attn_k.weight` has shape [96, 576], expected [192, 576]"],
    );
}

#[test]
fn inconsistent_head_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv-heads.gguf");
    // 9 query heads cannot share 2 KV heads evenly.
    edited_model(&path, |md| {
        md.insert("llama.attention.head_count_kv".into(), Value::U32(2));
    });
    let out = generate(path.to_str().unwrap(), &[]);
    assert_one_line_error(
        &out,
        &[
            "`llama.attention.head_count` (9)",
            "`llama.attention.head_count_kv` (2)",
        ],
    );

    let path = dir.path().join("heads.gguf");
    // 576 wide in 7 heads.
    edited_model(&path, |md| {
        md.insert("llama.attention.head_count".into(), Value::U32(7));
        md.insert("llama.attention.head_count_kv".into(), Value::U32(7));
    });
    let out = generate(path.to_str().unwrap(), &[]);
    assert_one_line_error(
        &out,
        &[
            "`llama.embedding_length` (576)",
            "`llama.attention.head_count` (7)",
        ],
    );
}
