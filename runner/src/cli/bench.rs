//! `xpu-runner bench`: prefill tok/s, decode tok/s and time to first token.

use clap::Args;
use xpu_runner::bench::{self, BenchOptions};

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Length of the synthetic prompt.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub prompt_tokens: usize,

    /// Number of decode steps.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub gen_tokens: usize,

    /// Measured runs (after one warm-up); figures are their medians.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub repetitions: usize,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut model = args.model.load()?;
    let report = bench::run(
        &mut model,
        &BenchOptions {
            prompt_tokens: args.prompt_tokens,
            gen_tokens: args.gen_tokens,
            repetitions: args.repetitions,
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("model:   {}", report.model);
        println!("device:  {}", report.device);
        println!(
            "prefill: {:.1} tok/s ({} tokens, median of {})",
            report.prefill_tokens_per_second, report.prompt_tokens, report.repetitions
        );
        println!(
            "decode:  {:.1} tok/s ({} tokens, median of {})",
            report.decode_tokens_per_second, report.gen_tokens, report.repetitions
        );
        println!("ttft:    {:.1} ms", report.time_to_first_token_ms);
    }
    Ok(())
}
