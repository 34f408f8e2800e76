//! Shared helpers of the runner's integration tests: the real test model, the
//! binary, and ways to make real model files broken.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

/// The SmolLM2 GGUF: `XPU_TEST_MODEL`, else what `scripts/fetch-model.sh` prints.
pub fn test_model() -> PathBuf {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("XPU_TEST_MODEL") {
                return PathBuf::from(path);
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-model.sh");
            let out = Command::new(&script)
                .output()
                .expect("run scripts/fetch-model.sh");
            assert!(
                out.status.success(),
                "scripts/fetch-model.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
        .clone()
}

/// Runs the `xpu-runner` binary with `args`.
pub fn runner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xpu-runner"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("start xpu-runner")
}

/// Asserts that a run failed with exactly one `error:` line on stderr that
/// contains every one of `needles` (case-insensitive), and did not panic.
pub fn assert_one_line_error(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(
        lines[0].starts_with("error: "),
        "not an error line: {stderr}"
    );
    let lower = lines[0].to_lowercase();
    for needle in needles {
        assert!(
            lower.contains(&needle.to_lowercase()),
            "`{needle}` missing from: {}",
            lines[0]
        );
    }
    lines[0].to_string()
}

/// Reads a GGUF file with all its tensors.
pub fn read_gguf(path: &Path) -> (HashMap<String, Value>, Vec<(String, QTensor)>) {
    let bytes = std::fs::read(path).unwrap();
    let mut reader = Cursor::new(&bytes[..]);
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors = names
        .into_iter()
        .map(|name| {
            (
                name.clone(),
                content.tensor(&mut reader, name, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    (content.metadata, tensors)
}

/// Writes a GGUF file.
pub fn write_gguf(path: &Path, metadata: &HashMap<String, Value>, tensors: &[(String, QTensor)]) {
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

/// Copies the test model to `dst` with its metadata changed by `edit`.
pub fn edited_model(dst: &Path, edit: impl FnOnce(&mut HashMap<String, Value>)) {
    let (mut metadata, tensors) = read_gguf(&test_model());
    edit(&mut metadata);
    write_gguf(dst, &metadata, &tensors);
}

/// Byte offset of the ggml type field of tensor `name` in a GGUF (v2/v3) header.
pub fn tensor_type_offset(bytes: &[u8], name: &str) -> usize {
    let mut pos = 8; // magic + version
    let u64_at = |p: usize| u64::from_le_bytes(bytes[p..p + 8].try_into().unwrap());
    let u32_at = |p: usize| u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap());
    let n_tensors = u64_at(pos) as usize;
    let n_kv = u64_at(pos + 8) as usize;
    pos += 16;
    fn skip_value(bytes: &[u8], pos: &mut usize, ty: u32) {
        let u64_at = |p: usize| u64::from_le_bytes(bytes[p..p + 8].try_into().unwrap());
        let u32_at = |p: usize| u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap());
        match ty {
            0 | 1 | 7 => *pos += 1,
            2 | 3 => *pos += 2,
            4..=6 => *pos += 4,   // u32, i32, f32
            10..=12 => *pos += 8, // u64, i64, f64
            8 => *pos += 8 + u64_at(*pos) as usize,
            9 => {
                let inner = u32_at(*pos);
                let n = u64_at(*pos + 4) as usize;
                *pos += 12;
                for _ in 0..n {
                    skip_value(bytes, pos, inner);
                }
            }
            other => panic!("unknown GGUF value type {other}"),
        }
    }
    for _ in 0..n_kv {
        pos += 8 + u64_at(pos) as usize; // key
        let ty = u32_at(pos);
        pos += 4;
        skip_value(bytes, &mut pos, ty);
    }
    for _ in 0..n_tensors {
        let len = u64_at(pos) as usize;
        let tensor_name = std::str::from_utf8(&bytes[pos + 8..pos + 8 + len])
            .unwrap()
            .to_string();
        pos += 8 + len;
        let n_dims = u32_at(pos) as usize;
        pos += 4 + 8 * n_dims;
        if tensor_name == name {
            return pos;
        }
        pos += 4 + 8; // type + offset
    }
    panic!("tensor {name} not found");
}
