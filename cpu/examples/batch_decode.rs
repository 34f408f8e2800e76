//! Aggregate decode speed of the CPU engine with several sequences decoding together:
//! for each batch size N, N sequences (each in its own KV slot, after a short prompt)
//! decode in shared passes, one token each per pass, and the aggregate rate is
//! N × passes / time. The weights are read once per pass whatever N, so the aggregate
//! rate grows with N until the products stop being bound by memory.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p xpu-cpu --example batch_decode -- \
//!         MODEL.gguf [--batch 1,4,8] [--steps 64] [--prompt 32]
//!
//! The threads are rayon's (`RAYON_NUM_THREADS`). A figure from a shared machine is rough;
//! compare sizes within one run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use xpu_cpu::{CpuLlamaEngine, SeqChunk};

struct Args {
    model: PathBuf,
    batches: Vec<usize>,
    steps: usize,
    prompt: usize,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let mut model = None;
    let (mut batches, mut steps, mut prompt) = (vec![1, 4, 8], 64, 32);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--batch" => {
                batches = value("--batch")?
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .context("--batch takes sizes such as 1,4,8")
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            "--steps" => steps = value("--steps")?.parse().context("--steps takes a count")?,
            "--prompt" => {
                prompt = value("--prompt")?
                    .parse()
                    .context("--prompt takes a count")?
            }
            _ if arg.starts_with('-') => bail!("unknown option {arg}"),
            _ => model = Some(PathBuf::from(arg)),
        }
    }
    let Some(model) = model else {
        bail!("usage: batch_decode MODEL.gguf [--batch 1,4,8] [--steps 64] [--prompt 32]");
    };
    if batches.contains(&0) || steps == 0 || prompt == 0 {
        bail!("batch sizes, --steps and --prompt must be at least 1");
    }
    Ok(Args {
        model,
        batches,
        steps,
        prompt,
    })
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best }) as u32
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    println!(
        "model {}, {} threads, prompt {} tokens, {} decode passes",
        args.model.display(),
        rayon::current_num_threads(),
        args.prompt,
        args.steps
    );
    println!("sequences  ms/pass  aggregate tok/s  per sequence tok/s");
    for &n in &args.batches {
        let ctx = args.prompt + args.steps + 1;
        let mut engine = CpuLlamaEngine::load(&args.model, Some(ctx), n)?;
        // Different prompts (token ids 100.., shifted per sequence), prefilled together.
        let prompts: Vec<Vec<u32>> = (0..n)
            .map(|s| {
                (0..args.prompt as u32)
                    .map(|i| 100 + 7 * i + s as u32)
                    .collect()
            })
            .collect();
        let chunks: Vec<SeqChunk<'_>> = prompts
            .iter()
            .enumerate()
            .map(|(slot, p)| SeqChunk {
                slot,
                tokens: p,
                start: 0,
            })
            .collect();
        let mut next: Vec<u32> = engine
            .forward_batch(&chunks)?
            .iter()
            .map(|l| argmax(l))
            .collect();
        let started = Instant::now();
        for step in 0..args.steps {
            let tokens = next.clone();
            let chunks: Vec<SeqChunk<'_>> = tokens
                .iter()
                .enumerate()
                .map(|(slot, t)| SeqChunk {
                    slot,
                    tokens: std::slice::from_ref(t),
                    start: args.prompt + step,
                })
                .collect();
            next = engine
                .forward_batch(&chunks)?
                .iter()
                .map(|l| argmax(l))
                .collect();
        }
        let seconds = started.elapsed().as_secs_f64();
        let passes = args.steps as f64;
        println!(
            "{n:>9}  {:>7.1}  {:>15.1}  {:>18.1}",
            seconds * 1e3 / passes,
            n as f64 * passes / seconds,
            passes / seconds
        );
    }
    Ok(())
}
