//! Times the CPU engine's block-quantized matrix product (`kernels::matmul`) with a few
//! activation rows, as batched decode runs it (one row per sequence), or with the
//! hundreds of a prompt step (e.g. `1,16,128,480`: 16 clients' prompts at once), on
//! the shapes of a 1B Llama (hidden 2048, FFN 8192, a 49152-token vocabulary) with
//! random weights:
//!
//! ```sh
//! cargo run --release -p xpu-cpu --example q4_matmul -- [q4_0|q4_1|q8_0] [threads] [reps] [rows,...]
//! #                                       defaults:        q4_0          2         20    1,4,8,16
//! ```
//!
//! For each number of activation rows `m`, with the AVX-512 kernels allowed (where the
//! CPU has them) and with only the 256-bit ones, it prints every shape's best time over
//! `reps` products (each with its activation quantization) and the multiply-adds per
//! second (`m` x rows x cols / time), and the sum of the shapes as one 1B decode step
//! would run them (16 layers of Q, K, V, O, gate, up and down, plus the output layer):
//! its time per step and the tokens per second that gives at `m` sequences (a prompt
//! step runs the output layer for each sequence's last row only). The sizes are alternated in rounds so that each sees
//! the same state of a shared machine; compare figures of one run only. With one
//! thread the times are the CPU time of the calling thread (which runs the whole
//! product then), which other processes on a shared machine disturb much less than
//! the wall time.

use std::time::Instant;

use xpu_cpu::kernels::{self, MatmulJob, QMatrix, WeightFormat, QK};
use xpu_cpu::kquants;
use xpu_cpu::team::Team;

/// (name, output rows, input columns, times per decode step) of a 1B Llama.
const SHAPES: [(&str, usize, usize, usize); 6] = [
    ("q/o 2048x2048", 2048, 2048, 32),
    ("k/v 512x2048", 512, 2048, 32),
    ("gate/up 8192x2048", 8192, 2048, 32),
    ("down 2048x8192", 2048, 8192, 16),
    ("output 49152x2048", 49152, 2048, 1),
    ("output 128256x2048", 128256, 2048, 0),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let format = match args.first().map(String::as_str).unwrap_or("q4_0") {
        "q4_0" => WeightFormat::Q4_0,
        "q4_1" => WeightFormat::Q4_1,
        "q8_0" => WeightFormat::Q8_0,
        "q5_0" => WeightFormat::Q5_0,
        "q5_1" => WeightFormat::Q5_1,
        other => panic!("unknown format {other}: use q4_0, q4_1, q8_0, q5_0 or q5_1"),
    };
    let threads: usize = args.get(1).map_or(2, |s| s.parse().expect("thread count"));
    let reps: usize = args.get(2).map_or(20, |s| s.parse().expect("repetitions"));
    let sizes: Vec<usize> = args.get(3).map_or(vec![1, 4, 8, 16], |s| {
        s.split(',')
            .map(|n| n.parse().expect("row counts"))
            .collect()
    });
    let mut seed = 1u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    let weights: Vec<Vec<u8>> = SHAPES
        .iter()
        .map(|&(_, rows, cols, _)| {
            let mut data: Vec<u8> = (0..rows * cols / QK * format.block_bytes())
                .map(|_| next() as u8)
                .collect();
            // Small f16 scales (and mins) keep every product finite.
            let scale = half::f16::from_f32(0.001).to_le_bytes();
            for b in data.chunks_exact_mut(format.block_bytes()) {
                b[0..2].copy_from_slice(&scale);
                if matches!(format, WeightFormat::Q4_1 | WeightFormat::Q5_1) {
                    b[2..4].copy_from_slice(&scale);
                }
            }
            data
        })
        .collect();
    let max_cols = SHAPES.iter().map(|s| s.2).max().unwrap_or(QK);
    let max_m = sizes.iter().copied().max().unwrap_or(1);
    let x: Vec<f32> = (0..max_m * max_cols)
        .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let team = Team::new(threads);
    println!(
        "{format:?}, {threads} thread(s), {} SIMD, best {} of {reps}",
        kernels::simd_name(),
        if threads == 1 && thread_cpu_s().is_some() {
            "CPU time"
        } else {
            "wall time"
        }
    );
    let variants = [("avx512 allowed", true), ("256-bit only", false)];
    // best[variant][size][shape]
    let mut best = vec![vec![vec![f64::INFINITY; SHAPES.len()]; sizes.len()]; variants.len()];
    let mut xq = Vec::new();
    // Written once before timing, as the engine reuses its buffers.
    let mut outs: Vec<Vec<f32>> = SHAPES.iter().map(|s| vec![1f32; max_m * s.1]).collect();
    for _ in 0..reps {
        for (v, &(_, allowed)) in variants.iter().enumerate() {
            kquants::allow_avx512(allowed);
            for (si, &m) in sizes.iter().enumerate() {
                for (k, &(_, rows, cols, _)) in SHAPES.iter().enumerate() {
                    let weight =
                        QMatrix::new(format, rows, cols, &weights[k]).expect("matrix size");
                    let out = &mut outs[k][..m * rows];
                    let (t, cpu) = (Instant::now(), thread_cpu_s());
                    kernels::quantize_rows(&x[..m * cols], cols, &mut xq);
                    kernels::matmul(&team, &xq, m, &mut [MatmulJob { weight, out }]);
                    let s = match (threads, cpu, thread_cpu_s()) {
                        (1, Some(a), Some(b)) => b - a,
                        _ => t.elapsed().as_secs_f64(),
                    };
                    best[v][si][k] = best[v][si][k].min(s);
                    std::hint::black_box(&outs[k]);
                }
            }
        }
    }
    for (si, &m) in sizes.iter().enumerate() {
        for (v, (variant, _)) in variants.iter().enumerate() {
            let mut step = 0.0;
            for (k, &(name, rows, cols, per_step)) in SHAPES.iter().enumerate() {
                let t = best[v][si][k];
                step += t * per_step as f64;
                println!(
                    "m={m:2} {variant:14} {name:20} {:8.3} ms {:7.1} G multiply-adds/s",
                    t * 1e3,
                    (m * rows * cols) as f64 / t / 1e9
                );
            }
            println!(
            "m={m:2} {variant:14} one 1B decode step   {:8.3} ms -> {:.1} tok/s at {m} sequence(s)",
            step * 1e3,
            m as f64 / step
        );
        }
    }
}

/// Seconds this thread has run on a CPU, if the clock can be read.
fn thread_cpu_s() -> Option<f64> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill in.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
    ok.then(|| t.tv_sec as f64 + t.tv_nsec as f64 / 1e9)
}
