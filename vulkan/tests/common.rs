//! Helpers shared by the test files: the device (lavapipe allowed) and the SmolLM2 model path.

#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use xpu_vulkan::{DeviceOptions, Gpu, GpuWeight, KernelTuning, WeightType, MATVEC_TUNING_ENV};

/// Five chat prompts, tried as a new user would: the prompts of runner/tests/llama_cpp.rs
/// and scripts/compare-llama.py.
pub const PROMPTS: [&str; 5] = [
    "The capital of France is",
    "Once upon a time there was a little",
    "The best way to learn a new language is to",
    "Water is made of hydrogen and",
    "My favorite food is",
];

/// Options that accept a CPU adapter, so that the tests run on lavapipe in CI, with the
/// kernel tuning of `XPU_VULKAN_MATVEC` when set (to test a tuning on a GPU host).
pub fn device_options(max_binding_bytes: Option<u64>) -> DeviceOptions {
    DeviceOptions {
        allow_cpu_adapter: true,
        max_binding_bytes,
        tuning: tuning(),
        ..Default::default()
    }
}

/// The kernel tuning of `XPU_VULKAN_MATVEC`, else the default.
pub fn tuning() -> KernelTuning {
    std::env::var(MATVEC_TUNING_ENV).map_or_else(
        |_| KernelTuning::default(),
        |spec| {
            spec.parse()
                .unwrap_or_else(|e| panic!("{MATVEC_TUNING_ENV}: {e}"))
        },
    )
}

pub fn gpu(max_binding_bytes: Option<u64>) -> Gpu {
    Gpu::new(&device_options(max_binding_bytes))
        .expect("a Vulkan adapter (install mesa-vulkan-drivers for lavapipe)")
}

/// The device with subgroup operations turned off: the kernels' workgroup-memory reductions.
pub fn gpu_without_subgroups() -> Gpu {
    let opts = DeviceOptions {
        subgroups: Some(false),
        ..device_options(None)
    };
    Gpu::new(&opts).expect("a Vulkan adapter (install mesa-vulkan-drivers for lavapipe)")
}

/// The SmolLM2 test model: `XPU_TEST_MODEL`, else whatever `scripts/fetch-model.sh` prints.
pub fn model_path() -> PathBuf {
    if let Ok(p) = std::env::var("XPU_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-model.sh");
    let out = std::process::Command::new(&script)
        .output()
        .expect("run scripts/fetch-model.sh");
    assert!(
        out.status.success(),
        "fetch-model.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// ‖a − b‖ / ‖b‖ and max |a − b|, with the reference in f64. NaN never passes.
pub fn compare(got: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let mut num = 0.0;
    let mut den = 0.0;
    let mut max_abs: f64 = 0.0;
    for (&g, &w) in got.iter().zip(want) {
        assert!(g.is_finite(), "non-finite output {g} (reference {w})");
        let d = g as f64 - w;
        num += d * d;
        den += w * w;
        max_abs = max_abs.max(d.abs());
    }
    ((num / den.max(1e-300)).sqrt(), max_abs)
}

/// The token strings of a GGUF file's vocabulary.
pub fn vocab(content: &candle_core::quantized::gguf_file::Content) -> Vec<String> {
    content.metadata["tokenizer.ggml.tokens"]
        .to_vec()
        .unwrap()
        .iter()
        .map(|v| v.to_string().unwrap().clone())
        .collect()
}

/// Splits on spaces and maps each word to its single gpt2-BPE token ("Ġword" after a space).
/// A crude tokenizer, enough for fixed test prompts made of common words.
pub fn tokenize(vocab: &[String], text: &str) -> Vec<u32> {
    text.split(' ')
        .enumerate()
        .map(|(i, w)| {
            let piece = if i == 0 {
                w.to_string()
            } else {
                format!("Ġ{w}")
            };
            vocab
                .iter()
                .position(|v| *v == piece)
                .unwrap_or_else(|| panic!("'{piece}' is not one token")) as u32
        })
        .collect()
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// A random-weight test file of scripts/make-test-gguf.py (`arch` entry, `ty` F32, Q8_0 or
/// Q4_K_M; the quantized ones need llama.cpp's llama-quantize), made once in the cache.
pub fn test_file(arch: &str, ty: &str) -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-test-gguf.py");
    let out = std::process::Command::new(&script)
        .args(["--arch", arch, "--types", ty, "--reference"])
        .arg(model_path())
        .output()
        .expect("run scripts/make-test-gguf.py");
    assert!(
        out.status.success(),
        "make-test-gguf.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .expect("a path"),
    )
}

/// The relative L2 error every product must stay under against its f64 reference: the GPU
/// dequantizes as candle does, so only the f32 summation order differs.
pub const REL_TOL: f64 = 1e-5;

/// The tolerance of a product whose x the kernel quantizes to int8. The GPU computes each
/// block's 127 / max|x| with its own division (Vulkan allows a few ulp; NVIDIA's differs from
/// the CPU's), so a value that lies within an ulp of a rounding boundary can land one int8
/// step away from the reference's: on NVIDIA, 11 tokens of 4096 values gave 8e-5. A kernel
/// that did not quantize at all is 4e-3 away (and any wrong weight far more), so this bound
/// still tells the paths apart.
pub const INT8_REL_TOL: f64 = 5e-4;

/// The tolerance for a decode product of `ty` on `tuning` (`decode`: the decode kernel runs).
pub fn decode_tolerance(tuning: &KernelTuning, ty: WeightType, decode: bool) -> f64 {
    if decode && tuning.decode_quantizes_x(ty) {
        INT8_REL_TOL
    } else {
        REL_TOL
    }
}

/// The tolerance of a prompt product on cooperative matrices (`matmul_coop`), against the
/// exact product: its weights and x are rounded to f16 (11 significant bits), which puts it
/// about 2.6e-4 off on random data (tests/coop.rs); a wrong weight or token is near 1.
pub const COOP_REL_TOL: f64 = 3e-3;

/// The tolerance of a product of `n_tokens` tokens of `ty` on `gpu`: the decode kernels'
/// ([`decode_tolerance`]), COOP_REL_TOL where the prompt product runs on cooperative
/// matrices, else REL_TOL.
pub fn product_tolerance(gpu: &Gpu, ty: WeightType, n_tokens: usize) -> f64 {
    let tuning = gpu.tuning();
    if tuning.decode_kernel_for(n_tokens) {
        decode_tolerance(tuning, ty, true)
    } else if tuning.tiled_kernel_for(n_tokens) && gpu.uses_cooperative_prefill() {
        COOP_REL_TOL
    } else {
        REL_TOL
    }
}

/// The input of a decode product as the kernel uses it: for types whose decode products
/// quantize x to int8 (`KernelTuning::decode_quantizes_x`), each 32 values become
/// round(v * 127 / max|v|) times max|v| / 127 (computed in f32 as the kernel does); others as is.
pub fn decode_input(tuning: &KernelTuning, ty: WeightType, v: &[f32]) -> Vec<f64> {
    if !tuning.decode_quantizes_x(ty) {
        return v.iter().map(|&x| x as f64).collect();
    }
    v.chunks(32)
        .flat_map(|c| {
            let amax = c.iter().fold(0f32, |m, &x| m.max(x.abs()));
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let scale = amax / 127.0;
            c.iter()
                .map(move |&x| (x * inv).round_ties_even() as f64 * scale as f64)
        })
        .collect()
}

/// `n` values uniform in [-1, 1).
pub fn random(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
    use rand::Rng;
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// A `[rows, k]` tensor of values uniform in [-1, 1) (drawn from `seed`), quantized to `dtype`
/// by candle's own quantizers.
pub fn random_qtensor(dtype: GgmlDType, rows: usize, k: usize, seed: u64) -> QTensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t = Tensor::from_vec(random(&mut rng, rows * k), (rows, k), &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

/// candle's dequantization of `qt`, row after row: the weights the references multiply with.
pub fn dequantized(qt: &QTensor) -> Vec<f32> {
    qt.dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Uploads `qt` (`[rows, k]`) to `gpu` in its own type, with its [`dequantized`] weights.
pub fn upload_with_reference(gpu: &Gpu, label: &str, qt: &QTensor) -> (GpuWeight, Vec<f32>) {
    let (rows, k) = qt.shape().dims2().unwrap();
    let ty = WeightType::from_ggml(qt.dtype()).unwrap();
    let weight = GpuWeight::upload(gpu, label, ty, rows, k, &qt.data().unwrap()).unwrap();
    (weight, dequantized(qt))
}

/// Every weight type the kernels take.
pub const ALL_TYPES: [GgmlDType; 9] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// The test model with every Q4_1 tensor requantized to `dtype`, written next to the
/// other temporary files; the caller removes it.
pub fn requantized(dtype: GgmlDType) -> PathBuf {
    let src = model_path();
    let mut file = std::fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for name in content.tensor_infos.keys() {
        let t = content.tensor(&mut file, name, &Device::Cpu).unwrap();
        let t = if t.dtype() == GgmlDType::Q4_1 {
            QTensor::quantize(&t.dequantize(&Device::Cpu).unwrap(), dtype).unwrap()
        } else {
            t
        };
        tensors.push((name.clone(), t));
    }
    let out = std::env::temp_dir().join(format!(
        "xpu-vulkan-smollm2-{dtype:?}-{}.gguf",
        std::process::id()
    ));
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(
        &mut std::fs::File::create(&out).unwrap(),
        &metadata,
        &tensor_refs,
    )
    .unwrap();
    out
}
