//! Times one K-quant or float matrix product of the CPU engine (`wide::matmul`) on
//! random weights, to compare kernels and work splits without a whole model:
//!
//! ```sh
//! cargo run --release -p xpu-cpu --example wide_matmul -- q4k 2048 2048 64 1 50
//! #                                                        format rows cols m threads reps
//! ```
//!
//! Prints, for the K-quant prompt kernels with AVX-512 allowed and with only the
//! 256-bit ones (alternated in up to 5 rounds of the `reps` products), the best and
//! median wall time, the multiply-adds per second of the best and, with one thread,
//! the CPU time of the calling thread per product (from `/proc/thread-self/schedstat`), which other processes on a shared
//! machine disturb much less than the wall time. Compare two kernels in the same run
//! of the machine, never against figures taken at another time.

use std::time::Instant;

use xpu_cpu::floats::FloatFormat;
use xpu_cpu::kquants::{self, KFormat};
use xpu_cpu::team::Team;
use xpu_cpu::wide::{self, Activations, WideFormat, WideJob, WideMatrix};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| {
        args.get(i)
            .map(|s| s.parse().expect("numeric argument"))
            .unwrap_or(default)
    };
    let format = match args.first().map(String::as_str).unwrap_or("q4k") {
        "q4k" => WideFormat::K(KFormat::Q4K),
        "q5k" => WideFormat::K(KFormat::Q5K),
        "q6k" => WideFormat::K(KFormat::Q6K),
        "f16" => WideFormat::Float(FloatFormat::F16),
        "bf16" => WideFormat::Float(FloatFormat::BF16),
        "f32" => WideFormat::Float(FloatFormat::F32),
        other => panic!("unknown format {other}: use q4k, q5k, q6k, f16, bf16 or f32"),
    };
    let (rows, cols, m, threads, reps) = (
        arg(1, 2048),
        arg(2, 2048),
        arg(3, 64),
        arg(4, 1),
        arg(5, 50),
    );
    let mut seed = 1u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    let mut data: Vec<u8> = (0..rows * format.row_bytes(cols))
        .map(|_| next() as u8)
        .collect();
    // Small f16 scales keep every product finite.
    let scale = half::f16::from_f32(0.001).to_le_bytes();
    match format {
        WideFormat::K(k) => {
            for b in data.chunks_exact_mut(k.block_bytes()) {
                match k {
                    KFormat::Q4K | KFormat::Q5K => {
                        b[0..2].copy_from_slice(&scale);
                        b[2..4].copy_from_slice(&scale);
                    }
                    KFormat::Q6K => b[208..210].copy_from_slice(&scale),
                }
            }
        }
        WideFormat::Float(_) => data.fill(0x3c),
    }
    let weight = WideMatrix::new(format, rows, cols, &data).expect("matrix size");
    let x: Vec<f32> = (0..m * cols)
        .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let team = Team::new(threads);
    let mut acts = Activations::default();
    let mut out = vec![0f32; m * rows];
    // AVX-512 prompt tiles (where the CPU has them) and the 256-bit ones, alternated
    // in rounds so that both see the same state of a shared machine.
    let variants = [("avx512 allowed", true), ("256-bit only", false)];
    let variants: Vec<_> = variants
        .into_iter()
        .filter(|v| std::env::var("ONLY").map_or(true, |o| o == v.0))
        .collect();
    let mut times = vec![Vec::with_capacity(reps); variants.len()];
    let mut cpu_ns = vec![0u64; variants.len()];
    let rounds = 5.min(reps.max(1));
    for round in 0..rounds {
        for (v, &(_, allowed)) in variants.iter().enumerate() {
            kquants::allow_avx512(allowed);
            let n = reps.max(1) / rounds + usize::from(round < reps.max(1) % rounds);
            let cpu_before = thread_cpu_ns();
            for _ in 0..n {
                let t = Instant::now();
                let job = WideJob {
                    weight,
                    out: &mut out,
                };
                wide::matmul(&team, &x, cols, m, &mut acts, &mut [job]);
                times[v].push(t.elapsed().as_secs_f64());
            }
            if let (Some(a), Some(b)) = (cpu_before, thread_cpu_ns()) {
                cpu_ns[v] += b - a;
            }
        }
    }
    for (v, (name, _)) in variants.iter().enumerate() {
        let times = &mut times[v];
        let cpu_per_product = if threads == 1 && cpu_ns[v] > 0 {
            format!(
                ", {:.3} ms CPU each",
                cpu_ns[v] as f64 / 1e6 / times.len() as f64
            )
        } else {
            String::new()
        };
        times.sort_by(f64::total_cmp);
        let best = times[0];
        println!(
            "{format:?} {rows}x{cols}, m={m}, {threads} thread(s), {name}: best {:.3} ms, median {:.3} ms, {:.1} G multiply-adds/s{cpu_per_product}",
            best * 1e3,
            times[times.len() / 2] * 1e3,
            (rows * cols * m) as f64 / best / 1e9
        );
    }
}

/// Nanoseconds this thread has run on a CPU (Linux), if readable.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
