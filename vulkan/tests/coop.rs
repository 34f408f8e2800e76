//! The prompt product on cooperative matrices (`matmul_coop`) against the CPU, on random
//! blocks of every weight type (made by candle's quantizers), odd row counts, chunked
//! bindings and outputs side by side or accumulated, at prompt sizes of 16, 33 and 512 tokens;
//! and every tile shape of the tuning keys `cooptile` and `coopk` on ragged rows, tokens and k.
//!
//! It runs only where the adapter offers a 16x16x16 F16->F32 cooperative-matrix
//! configuration (NVIDIA's driver; Mesa 25's lavapipe); elsewhere (Debian 12's lavapipe) each
//! test prints that it did not run and why, and passes. On a GPU host run it as
//! `target/release/deps/coop-* --nocapture`.
//!
//! Tolerance: the kernel rounds the dequantized weights and x to f16 and sums their products
//! in f32. The reference does the same rounding (in f64 from candle's dequantized weights), so
//! what is left is the f32 summation order and the conversion's rounding mode: we require a
//! relative L2 error below COOP_REL_TOL against it. Against the exact product the error is
//! about 4e-4 (f16 has 11 bits); any misplaced weight or token gives errors near 1.

mod common;

use candle_core::quantized::GgmlDType;
use common::{random, random_qtensor, upload_with_reference, ALL_TYPES};
use half::f16;
use rand::SeedableRng;
use xpu_vulkan::{testing, DeviceOptions, Gpu, KernelTuning, VulkanError};

/// The bound against the f16-rounded reference (see the module comment).
const COOP_REL_TOL: f64 = 1e-4;
/// The bound against the exact product: what f16 operands cost.
const COOP_EXACT_REL_TOL: f64 = 3e-3;

/// `prefill=coop` (the device must run matmul_coop) with `batch=1`, so that 16 tokens take
/// the prompt product too (by default steps of up to 16 tokens run the decode kernels).
fn coop_tuning() -> KernelTuning {
    "prefill=coop,batch=1".parse().unwrap()
}

/// The device with matmul_coop on cooperative matrices; where the adapter has none, after
/// printing that and why, the device with its emulation (`prefill=coop-emulated`: the same
/// staging, layouts and numerics, the matrix operations in plain code), or `None` where
/// even that cannot run (no f16 or no fixed subgroup size).
fn coop_gpu(max_binding_bytes: Option<u64>) -> Option<Gpu> {
    coop_gpu_shaped(max_binding_bytes, "")
}

/// As [`coop_gpu`] with the tile `shape` (`cooptile=`, `coopk=` keys; empty: the default).
/// Also `None` where the adapter's workgroup memory is too small for the shape (lavapipe's
/// 32 KiB for the largest ones), after printing that. Unless `shape` sets `coopmin=`, every
/// product runs the shape's tile (`coopmin=0`): the test products have too few rows and
/// tokens for the default's grid, which would run the smallest tile instead. Unless it sets
/// `coopfetch=`, the tiles are staged without the register prefetch (`coopfetch=0`), whose
/// emulation lavapipe compiles many times slower:
/// `register_prefetch_equals_the_staging_bit_for_bit` compares the two.
fn coop_gpu_shaped(max_binding_bytes: Option<u64>, shape: &str) -> Option<Gpu> {
    let mut defaults = String::new();
    if !shape.contains("coopmin=") {
        defaults += ",coopmin=0";
    }
    if !shape.contains("coopfetch=") {
        defaults += ",coopfetch=0";
    }
    let open = |tuning: &str| {
        Gpu::new(&DeviceOptions {
            tuning: format!("{tuning},{shape}{defaults}").parse().unwrap(),
            ..common::device_options(max_binding_bytes)
        })
    };
    let gpu = match open("prefill=coop,batch=1") {
        Ok(gpu) => gpu,
        Err(e @ VulkanError::TuningUnsupported { .. })
            if e.to_string().contains("workgroup memory") =>
        {
            println!("matmul_coop {shape:?} NOT RUN on this adapter: {e}");
            return None;
        }
        Err(e @ VulkanError::TuningUnsupported { .. }) => {
            println!("matmul_coop on cooperative matrices NOT RUN on this adapter: {e}");
            match open("prefill=coop-emulated,batch=1") {
                Ok(gpu) => gpu,
                Err(e @ VulkanError::TuningUnsupported { .. }) => {
                    println!("its emulation {shape:?} NOT RUN either: {e}");
                    return None;
                }
                Err(e) => panic!("opening the device: {e}"),
            }
        }
        Err(e) => panic!("opening the device: {e}"),
    };
    assert!(gpu.uses_cooperative_prefill());
    println!("{}: prefill {}", gpu.description(), gpu.prefill_product());
    Some(gpu)
}

fn round_f16(v: f32) -> f64 {
    f16::from_f32(v).to_f64()
}

/// `y[t, r] = Σ_k W[r, k] x[t, k]` in f64, with W and x rounded to f16 first when `f16_operands`.
fn reference(
    w: &[f32],
    rows: usize,
    k: usize,
    x: &[f32],
    n: usize,
    f16_operands: bool,
) -> Vec<f64> {
    let op = |v: f32| if f16_operands { round_f16(v) } else { v as f64 };
    let w: Vec<f64> = w.iter().map(|&v| op(v)).collect();
    let x: Vec<f64> = x.iter().map(|&v| op(v)).collect();
    let mut y = vec![0.0; n * rows];
    for t in 0..n {
        for r in 0..rows {
            y[t * rows + r] = (0..k).map(|i| w[r * k + i] * x[t * k + i]).sum();
        }
    }
    y
}

/// Checks `got` against both references; returns the errors.
fn check(label: &str, got: &[f32], w: &[f32], rows: usize, k: usize, x: &[f32], n: usize) {
    let (rel, max_abs) = common::compare(got, &reference(w, rows, k, x, n, true));
    let (exact, _) = common::compare(got, &reference(w, rows, k, x, n, false));
    println!("{label} [{rows}x{k}] tokens={n}: rel {rel:.2e} (f16 operands), {exact:.2e} (exact), max_abs {max_abs:.2e}");
    assert!(
        rel < COOP_REL_TOL,
        "{label} tokens={n}: relative error {rel} against the f16-rounded reference"
    );
    assert!(
        exact < COOP_EXACT_REL_TOL,
        "{label} tokens={n}: relative error {exact} against the exact product"
    );
}

#[test]
fn coop_product_matches_the_cpu_for_every_type() {
    let Some(gpu) = coop_gpu(None) else { return };
    for (i, dtype) in ALL_TYPES.into_iter().enumerate() {
        // 37 rows: an odd count, less than one tile of 64; 512 = two K-quant super-blocks.
        let qt = random_qtensor(dtype, 37, 512, 300 + i as u64);
        let (weight, w) = upload_with_reference(&gpu, "coop", &qt);
        let mut rng = rand::rngs::StdRng::seed_from_u64(400 + i as u64);
        // 16: the smallest prompt product, a quarter of a token tile; 33: one partial tile;
        // 512: eight full tiles, as a pp512 prompt batch.
        let xs: Vec<Vec<f32>> = [16usize, 33, 512]
            .iter()
            .map(|&n| random(&mut rng, n * 512))
            .collect();
        let t = std::time::Instant::now();
        let got = testing::matmul_each(&gpu, &weight, &xs).unwrap();
        println!("{dtype:?}: {:.1} s", t.elapsed().as_secs_f64());
        for (x, got) in xs.iter().zip(&got) {
            check(&format!("{dtype:?}"), got, &w, 37, 512, x, x.len() / 512);
        }
    }
}

/// Tile shapes a GPU run compares (`cooptile=`, `coopk=`, `coopvec=`), besides the default
/// that the other tests run: each stages k one, two or four units at a time into tiles of
/// vec4 or vec2 halves, x from its f16 copy or from f32, and has 2 x 2, 4 x 2, 2 x 1, 2 x 4, 4 x 4 or (eight subgroups) 4 x 2 and 2 x 1 accumulators per
/// subgroup. On cooperative matrices every shape runs
/// with every type; the emulation (lavapipe, which takes minutes to compile one type's
/// kernels) runs each with the one type given here: the types of 32-weight blocks where
/// the shape stages several units (k = 160 leaves a partial last stage), and the staging
/// does not depend on the type otherwise (each type's `load_unit` is the default shape's).
const SHAPES: [(&str, GgmlDType); 16] = [
    ("cooptile=64,coopvec=2", GgmlDType::Q4K),
    ("cooptile=64,coopx16=0,coopk=2", GgmlDType::Q8_0),
    ("cooptile=64,coopk=2,coopvec=2", GgmlDType::Q4_0),
    ("cooptile=64,coopk=2", GgmlDType::Q4_0),
    ("cooptile=64,coopk=4", GgmlDType::Q8_0),
    ("cooptile=64x32,coopk=4", GgmlDType::Q8_0),
    ("cooptile=128", GgmlDType::Q4K),
    ("cooptile=128,coopk=2", GgmlDType::Q4_1),
    ("cooptile=128x128", GgmlDType::Q6K),
    ("cooptile=128x128,coopk=2", GgmlDType::F16),
    ("cooptile=64x128", GgmlDType::F16),
    ("cooptile=128x128,coopsg=8", GgmlDType::Q4K),
    ("cooptile=64,coopsg=8,coopk=2", GgmlDType::Q4_0),
    ("cooptile=64,coopbuf=2", GgmlDType::Q4K),
    ("cooptile=64x32,coopbuf=2,coopk=2", GgmlDType::Q8_0),
    ("cooptile=64,coopbuf=2,coopsg=8", GgmlDType::Q4_0),
];

/// The product of 150 random rows of `dtype` and length `k` with 16 and with 150 random
/// tokens on `gpu` against the CPU (`check`); `seeds`: of the weights and of x.
fn check_150_rows(gpu: &Gpu, shape: &str, dtype: GgmlDType, k: usize, seeds: (u64, u64)) {
    let qt = random_qtensor(dtype, 150, k, seeds.0);
    let (weight, w) = upload_with_reference(gpu, "coop", &qt);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seeds.1);
    let xs: Vec<Vec<f32>> = [16usize, 150]
        .iter()
        .map(|&n| random(&mut rng, n * k))
        .collect();
    let got = testing::matmul_each(gpu, &weight, &xs).unwrap();
    for (x, got) in xs.iter().zip(&got) {
        check(
            &format!("{shape} {dtype:?}"),
            got,
            &w,
            150,
            k,
            x,
            x.len() / k,
        );
    }
}

#[test]
fn every_tile_shape_matches_the_cpu_for_every_type() {
    // Ragged in every direction: 150 rows (two and a bit tiles of 64, one and a bit of 128),
    // 16 and 150 tokens (less than one tile; several and a bit of 32, 64 and 128), and for the
    // types with 32-weight blocks k = 160, five units, which is not a whole number of stages
    // of two or four units (the K-quants' k is a multiple of their 256-weight super-blocks).
    let mut ran = 0;
    for (shape, emulation_type) in SHAPES {
        let Some(gpu) = coop_gpu_shaped(None, shape) else {
            continue;
        };
        let types: Vec<GgmlDType> = if gpu.prefill_product().starts_with("coop-emulated") {
            vec![emulation_type]
        } else {
            ALL_TYPES.to_vec()
        };
        assert!(
            gpu.prefill_product().contains(&shape_setting(shape)),
            "{shape}: {}",
            gpu.prefill_product()
        );
        for (i, dtype) in types.into_iter().enumerate() {
            let k = if dtype.block_size() == 256 { 256 } else { 160 };
            check_150_rows(&gpu, shape, dtype, k, (800 + i as u64, 900 + i as u64));
        }
        ran += 1;
    }
    println!("{ran} of {} tile shapes ran", SHAPES.len());
}

#[test]
fn products_of_few_workgroups_take_smaller_tiles_and_match_the_cpu() {
    // `coopmin=` compiles 128 x 64 and 64 x 64 and picks per product and step: 150 rows by
    // 16 tokens gives 2 workgroups of 128 x 64 and 3 of 64 x 64, by 150 tokens 6 and 9.
    // coopmin=1 keeps 128 x 64 for both, 7 takes 64 x 64 for 16 tokens only, 9 for both,
    // 100000 none has enough: the last, 64 x 64. (Which tile a grid picks is
    // quant.rs' unit test; here every pick must give the product.)
    let mut ran = 0;
    for min in [1, 7, 9, 100000] {
        let shape = format!("cooptile=128x64,coopmin={min}");
        let Some(gpu) = coop_gpu_shaped(None, &shape) else {
            continue;
        };
        let dtypes = if gpu.prefill_product().starts_with("coop-emulated") {
            vec![GgmlDType::Q4K]
        } else {
            vec![GgmlDType::Q4K, GgmlDType::Q8_0, GgmlDType::Q6K]
        };
        for (i, dtype) in dtypes.into_iter().enumerate() {
            check_150_rows(&gpu, &shape, dtype, 256, (1000 + i as u64, 1100 + i as u64));
        }
        ran += 1;
    }
    println!("{ran} of 4 coopmin settings ran");
}

/// The register prefetch (`coopfetch=1`) against the staging it replaces (`coopfetch=0`): the
/// same f16 values staged in the same places, so the same products bit for bit. Shapes as
/// (tile keys, the types the emulation runs; on cooperative matrices every type runs): every
/// type with two buffers and two units a stage on a tile that lavapipe's 32 KiB of workgroup
/// memory holds (64 x 32); the default GPU tile (128 x 128, eight subgroups, two buffers:
/// with 256 threads of 32, half the threads have no weight unit to load) and the same with
/// two units a stage, which lavapipe cannot run; 128 x 64 with four subgroups and one buffer
/// (the prefetch between the two barriers of a stage); x staged from f32 (`coopx16=0`) with
/// vec2 tiles. Ragged as in `every_tile_shape_matches_the_cpu_for_every_type`: 150 rows, 16
/// and 150 tokens, and k = 160 (five units, a partial last stage of two) for the types of
/// 32-weight blocks.
const FETCH_SHAPES: [(&str, &[GgmlDType]); 5] = [
    ("cooptile=64x32,coopbuf=2,coopk=2", &ALL_TYPES),
    ("cooptile=128x128,coopsg=8,coopbuf=2", &[GgmlDType::Q4K]),
    (
        "cooptile=128x128,coopsg=8,coopbuf=2,coopk=2",
        &[GgmlDType::Q8_0],
    ),
    ("cooptile=128,coopbuf=1", &[GgmlDType::Q4K, GgmlDType::Q6K]),
    (
        "cooptile=64x32,coopx16=0,coopvec=2,coopk=2",
        &[GgmlDType::Q4_1],
    ),
];

#[test]
fn register_prefetch_equals_the_staging_bit_for_bit() {
    let mut ran = 0;
    for (shape, emulation_types) in FETCH_SHAPES {
        let gpus: Vec<Gpu> = ["coopfetch=0", "coopfetch=1"]
            .iter()
            .filter_map(|fetch| coop_gpu_shaped(None, &format!("{shape},{fetch}")))
            .collect();
        let [plain, fetching] = &gpus[..] else {
            continue;
        };
        assert!(fetching.prefill_product().contains("coopfetch=1"));
        let types = if fetching.prefill_product().starts_with("coop-emulated") {
            emulation_types.to_vec()
        } else {
            ALL_TYPES.to_vec()
        };
        for (i, dtype) in types.into_iter().enumerate() {
            let k = if dtype.block_size() == 256 { 256 } else { 160 };
            let qt = random_qtensor(dtype, 150, k, 1000 + i as u64);
            let mut rng = rand::rngs::StdRng::seed_from_u64(1100 + i as u64);
            let xs: Vec<Vec<f32>> = [16usize, 150]
                .iter()
                .map(|&n| random(&mut rng, n * k))
                .collect();
            let run = |gpu: &Gpu| {
                let (weight, w) = upload_with_reference(gpu, "coop", &qt);
                (testing::matmul_each(gpu, &weight, &xs).unwrap(), w)
            };
            let (want, w) = run(plain);
            let (got, _) = run(fetching);
            for ((x, got), want) in xs.iter().zip(&got).zip(&want) {
                let n = x.len() / k;
                let label = format!("{shape},coopfetch=1 {dtype:?}");
                check(&label, got, &w, 150, k, x, n);
                let differ = got
                    .iter()
                    .zip(want)
                    .filter(|(g, w)| g.to_bits() != w.to_bits())
                    .count();
                assert_eq!(
                    differ,
                    0,
                    "{label} tokens={n}: {differ} of {} outputs differ from coopfetch=0",
                    got.len()
                );
            }
        }
        ran += 1;
    }
    println!("{ran} of {} prefetch shapes ran", FETCH_SHAPES.len());
}

/// `cooptile=RxT,coopk=U,coopvec=V,coopx16=X,coopsg=S,coopbuf=B,coopfetch=F` as the device describes the shape that `shape` asks for.
fn shape_setting(shape: &str) -> String {
    let (mut tile, mut units, mut vec, mut x16, mut sgs, mut bufs, mut fetch) =
        ("64x64".to_string(), "1", "4", "1", "4", "1", "0");
    for item in shape.split(',') {
        match item.split_once('=') {
            Some(("cooptile", t)) if t.contains('x') => tile = t.to_string(),
            Some(("cooptile", r)) => tile = format!("{r}x64"),
            Some(("coopk", u)) => units = u,
            Some(("coopvec", v)) => vec = v,
            Some(("coopx16", v)) => x16 = v,
            Some(("coopsg", v)) => sgs = v,
            Some(("coopbuf", v)) => bufs = v,
            Some(("coopfetch", v)) => fetch = v,
            _ => panic!("{shape}: {item}"),
        }
    }
    format!("cooptile={tile},coopk={units},coopvec={vec},coopx16={x16},coopsg={sgs},coopbuf={bufs},coopfetch={fetch}")
}

#[test]
fn coop_product_covers_several_row_tiles_and_chunks() {
    // 150 rows: two full tiles of 64 rows and a partial one. With a 20000-byte binding cap
    // the matrix is split into chunks whose rows start past 0 (p.row_offset).
    for cap in [None, Some(20000)] {
        let Some(gpu) = coop_gpu(cap) else { return };
        for (i, dtype) in [
            GgmlDType::Q4_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ]
        .into_iter()
        .enumerate()
        {
            let qt = random_qtensor(dtype, 150, 256, 500 + i as u64);
            let (weight, w) = upload_with_reference(&gpu, "coop", &qt);
            if cap.is_some() {
                assert!(
                    weight.chunk_count() > 1,
                    "{dtype:?}: expected several chunks"
                );
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(600 + i as u64);
            let xs: Vec<Vec<f32>> = [33usize, 100]
                .iter()
                .map(|&n| random(&mut rng, n * 256))
                .collect();
            let got = testing::matmul_each(&gpu, &weight, &xs).unwrap();
            for (x, got) in xs.iter().zip(&got) {
                let label = format!("{dtype:?} chunks={}", weight.chunk_count());
                check(&label, got, &w, 150, 256, x, x.len() / 256);
            }
        }
    }
}

#[test]
fn coop_outputs_side_by_side_and_accumulated() {
    // 70 rows written at offset 5 of 80 floats per token, over and added to what is there;
    // the other floats of each token stay exactly as they were.
    let Some(gpu) = coop_gpu(None) else { return };
    let (rows, k, stride, offset) = (70, 256, 80, 5);
    let qt = random_qtensor(GgmlDType::Q4K, rows, k, 700);
    let (weight, w) = upload_with_reference(&gpu, "coop", &qt);
    let mut rng = rand::rngs::StdRng::seed_from_u64(701);
    for n in [16usize, 70] {
        let x = random(&mut rng, n * k);
        let product = reference(&w, rows, k, &x, n, true);
        let initial = random(&mut rng, n * stride);
        for accumulate in [false, true] {
            let got =
                testing::matmul_into(&gpu, &weight, &x, n, &initial, stride, offset, accumulate)
                    .unwrap();
            let mut got_rows = Vec::new();
            let mut want_rows = Vec::new();
            for t in 0..n {
                for i in 0..stride {
                    let (g, before) = (got[t * stride + i], initial[t * stride + i]);
                    if (offset..offset + rows).contains(&i) {
                        got_rows.push(g);
                        let add = if accumulate { before as f64 } else { 0.0 };
                        want_rows.push(product[t * rows + i - offset] + add);
                    } else {
                        assert_eq!(g, before, "tokens={n} accumulate={accumulate}: token {t} float {i} outside the rows was changed");
                    }
                }
            }
            let (rel, _) = common::compare(&got_rows, &want_rows);
            println!("side by side tokens={n} accumulate={accumulate}: rel {rel:.2e}");
            assert!(
                rel < COOP_REL_TOL,
                "tokens={n} accumulate={accumulate}: relative error {rel}"
            );
        }
    }
}

#[test]
fn prefill_coop_is_refused_clearly_where_it_cannot_run() {
    // Where the adapter runs matmul_coop, the default picks it; elsewhere the default is the
    // tiled product and `prefill=coop` is an error that names the setting and the reason.
    let default = Gpu::new(&DeviceOptions {
        tuning: KernelTuning::default(),
        ..common::device_options(None)
    })
    .unwrap();
    let asked = Gpu::new(&DeviceOptions {
        tuning: coop_tuning(),
        ..common::device_options(None)
    });
    println!("default prefill: {}", default.prefill_product());
    match asked {
        Ok(gpu) => {
            assert!(gpu.uses_cooperative_prefill() && default.uses_cooperative_prefill());
            assert!(default.prefill_product().starts_with("coop"));
        }
        Err(e) => {
            let text = e.to_string();
            println!("prefill=coop: {text}");
            assert!(matches!(e, VulkanError::TuningUnsupported { .. }), "{text}");
            assert!(
                text.contains("prefill=coop") && text.contains("Leave it unset"),
                "{text}"
            );
            assert!(!default.uses_cooperative_prefill());
            assert!(
                default.prefill_product().starts_with("tiled"),
                "{}",
                default.prefill_product()
            );
        }
    }
    let tiled = Gpu::new(&DeviceOptions {
        tuning: "prefill=tiled".parse().unwrap(),
        ..common::device_options(None)
    })
    .unwrap();
    assert!(!tiled.uses_cooperative_prefill());
    assert!(tiled.prefill_product().starts_with("tiled"));
}
