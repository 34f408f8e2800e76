//! `xpu-runner bench`: prefill and decode speed and time to first token, measured
//! the way llama.cpp's `llama-bench` does (a synthetic prompt of N tokens, then N
//! greedy single-token decode steps that ignore end-of-sequence), reported as the
//! median of several runs after one warm-up run.

use std::time::Instant;

use anyhow::bail;
use serde::Serialize;

use crate::model::LoadedModel;
use crate::sampling::{Sampler, SamplingParams};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub repetitions: usize,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRun {
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
    pub time_to_first_token_ms: f64,
}

/// Medians over all runs, plus the runs themselves.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub repetitions: usize,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
    pub time_to_first_token_ms: f64,
    pub runs: Vec<BenchRun>,
}

/// A prompt of exactly `n` tokens: ordinary English text, repeated as needed, so
/// that attention sees realistic ids (the values do not change the speed).
fn synthetic_prompt(model: &LoadedModel, n: usize) -> anyhow::Result<Vec<u32>> {
    const TEXT: &str = "The quick brown fox jumps over the lazy dog while the busy engineers measure how fast a language model reads and writes text on their machine. ";
    let piece = model.tokenizer.encode(TEXT, false)?;
    if piece.is_empty() {
        bail!("the tokenizer produced no tokens for the benchmark prompt");
    }
    Ok(piece.iter().copied().cycle().take(n).collect())
}

/// Runs the benchmark.
pub fn run(model: &mut LoadedModel, options: &BenchOptions) -> anyhow::Result<BenchReport> {
    if options.prompt_tokens == 0 || options.gen_tokens == 0 || options.repetitions == 0 {
        bail!("--prompt-tokens, --gen-tokens and --repetitions must all be at least 1");
    }
    let context = model.engine.context_length();
    let needed = options.prompt_tokens + options.gen_tokens;
    if needed > context {
        bail!(
            "--prompt-tokens + --gen-tokens = {needed} exceeds the context length {context}; lower them or raise --ctx"
        );
    }
    let prompt = synthetic_prompt(model, options.prompt_tokens)?;

    // Warm-up: page in the weights and let the thread pools start.
    one_run(model, &prompt[..prompt.len().min(8)], 2)?;

    let mut runs = Vec::with_capacity(options.repetitions);
    for i in 0..options.repetitions {
        let run = one_run(model, &prompt, options.gen_tokens)?;
        tracing::debug!(repetition = i, ?run, "bench run");
        runs.push(run);
    }
    Ok(BenchReport {
        model: model.id.clone(),
        device: model.engine.device_description(),
        prompt_tokens: options.prompt_tokens,
        gen_tokens: options.gen_tokens,
        repetitions: options.repetitions,
        prefill_tokens_per_second: median(runs.iter().map(|r| r.prefill_tokens_per_second)),
        decode_tokens_per_second: median(runs.iter().map(|r| r.decode_tokens_per_second)),
        time_to_first_token_ms: median(runs.iter().map(|r| r.time_to_first_token_ms)),
        runs,
    })
}

fn one_run(model: &mut LoadedModel, prompt: &[u32], gen_tokens: usize) -> anyhow::Result<BenchRun> {
    let mut sampler = Sampler::new(SamplingParams::greedy())?;
    model.engine.reset()?;

    let start = Instant::now();
    let mut logits = model.engine.forward(prompt, 0)?;
    let prefill = start.elapsed().as_secs_f64();
    let mut token = sampler.sample(&mut logits, &[]);
    let ttft = start.elapsed().as_secs_f64();

    let decode_start = Instant::now();
    for step in 0..gen_tokens {
        let mut logits = model.engine.forward(&[token], prompt.len() + step)?;
        token = sampler.sample(&mut logits, &[]);
    }
    let decode = decode_start.elapsed().as_secs_f64();

    Ok(BenchRun {
        prefill_tokens_per_second: prompt.len() as f64 / prefill,
        decode_tokens_per_second: gen_tokens as f64 / decode,
        time_to_first_token_ms: ttft * 1000.0,
    })
}

/// The median of a non-empty list (the mean of the middle two for even lengths).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_lists() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }
}
