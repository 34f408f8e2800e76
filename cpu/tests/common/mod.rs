//! What the CPU engine's tests share: the test model and small random model files.

use std::path::PathBuf;
use std::process::Command;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};

/// The test model: `XPU_TEST_MODEL`, else what scripts/fetch-model.sh prints.
pub fn test_model() -> PathBuf {
    if let Ok(path) = std::env::var("XPU_TEST_MODEL") {
        return PathBuf::from(path);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/fetch-model.sh");
    let out = Command::new(script)
        .output()
        .expect("run scripts/fetch-model.sh");
    assert!(
        out.status.success(),
        "fetch-model.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Writes a small random llama GGUF whose matrices are all of type `dtype`.
pub fn write_small_llama(path: &std::path::Path, dtype: candle_core::quantized::GgmlDType) {
    use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
    let (dim, ffn, heads, kv_heads, layers, vocab) =
        (256usize, 512usize, 4u32, 2u32, 2u32, 300usize);
    let kv_dim = dim / heads as usize * kv_heads as usize;
    let mut seed = 7u64;
    let mut random = |rows: usize, cols: usize, scale: f32| {
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * scale
            })
            .collect();
        Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut matrix = |name: String, rows: usize, cols: usize, t: &mut Vec<(String, QTensor)>| {
        t.push((
            name,
            QTensor::quantize(&random(rows, cols, 0.2), dtype).unwrap(),
        ));
    };
    matrix("token_embd.weight".into(), vocab, dim, &mut tensors);
    let ones = |n: usize| {
        QTensor::quantize(
            &Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap()
    };
    for i in 0..layers {
        let p = format!("blk.{i}.");
        tensors.push((format!("{p}attn_norm.weight"), ones(dim)));
        tensors.push((format!("{p}ffn_norm.weight"), ones(dim)));
        matrix(format!("{p}attn_q.weight"), dim, dim, &mut tensors);
        matrix(format!("{p}attn_k.weight"), kv_dim, dim, &mut tensors);
        matrix(format!("{p}attn_v.weight"), kv_dim, dim, &mut tensors);
        matrix(format!("{p}attn_output.weight"), dim, dim, &mut tensors);
        matrix(format!("{p}ffn_gate.weight"), ffn, dim, &mut tensors);
        matrix(format!("{p}ffn_up.weight"), ffn, dim, &mut tensors);
        matrix(format!("{p}ffn_down.weight"), dim, ffn, &mut tensors);
    }
    tensors.push(("output_norm.weight".into(), ones(dim)));
    matrix("output.weight".into(), vocab, dim, &mut tensors);
    let metadata = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", Value::U32(dim as u32)),
        ("llama.feed_forward_length", Value::U32(ffn as u32)),
        ("llama.attention.head_count", Value::U32(heads)),
        ("llama.attention.head_count_kv", Value::U32(kv_heads)),
        ("llama.block_count", Value::U32(layers)),
        ("llama.rope.dimension_count", Value::U32(dim as u32 / heads)),
        ("llama.context_length", Value::U32(64)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
    ];
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &md, &ts).unwrap();
}
