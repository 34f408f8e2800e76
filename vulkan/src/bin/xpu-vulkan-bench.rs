//! Decode and prefill speed of the Vulkan engine on one GGUF file, with decode put against
//! the memory-bandwidth bound measured in the same run:
//! bound (tok/s) = copy-kernel bandwidth ÷ weight bytes read per token.
//!
//! Usage: xpu-vulkan-bench MODEL.gguf [--prompt N] [--decode N] [--runs N]
//! Prints a human summary and one `RESULT {json}` line for scripts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use xpu_vulkan::{testing, LlamaModel, LoadOptions};

struct Args {
    model: PathBuf,
    prompt: usize,
    decode: usize,
    runs: usize,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut args = Args { model: PathBuf::new(), prompt: 512, decode: 128, runs: 3 };
    let mut model = None;
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{name} needs a positive number"))
        };
        match a.as_str() {
            "--prompt" => args.prompt = num("--prompt")?,
            "--decode" => args.decode = num("--decode")?,
            "--runs" => args.runs = num("--runs")?,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => model = Some(PathBuf::from(s)),
        }
    }
    args.model = model.ok_or("missing MODEL.gguf")?;
    if args.prompt == 0 || args.decode == 0 || args.runs == 0 {
        return Err("--prompt, --decode and --runs must be at least 1".into());
    }
    Ok(args)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> ExitCode {

    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("xpu-vulkan-bench: {e}");
            }
            eprintln!("usage: xpu-vulkan-bench MODEL.gguf [--prompt N (512)] [--decode N (128)] [--runs N (3)]");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xpu-vulkan-bench: {e}");
            ExitCode::FAILURE
        }
    }
}


fn run(args: &Args) -> Result<(), xpu_vulkan::VulkanError> {
    let ctx = args.prompt + args.decode + 1;
    let t = Instant::now();
    let mut model = LlamaModel::load(&args.model, &LoadOptions { ctx: Some(ctx), ..LoadOptions::default() })?;
    let load_s = t.elapsed().as_secs_f64();
    let vocab = model.config().vocab as u32;
    let bandwidth = testing::copy_bandwidth(model.gpu(), 1 << 30, 20)?;
    // Deterministic pseudo-random prompt: speed does not depend on which tokens.
    let prompt: Vec<u32> = (0..args.prompt as u32).map(|i| (i.wrapping_mul(2654435761) >> 7) % vocab).collect();
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    // One untimed warm-up pass compiles pipelines in the driver and touches every buffer.
    model.forward(&prompt[..8.min(prompt.len())], 0)?;
    for _ in 0..args.runs {
        model.reset();
        let t = Instant::now();
        let mut logits = model.forward(&prompt, 0)?;
        prefill.push(args.prompt as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..args.decode {
            let next = logits.iter().enumerate().fold(0, |b, (j, &x)| if x > logits[b] { j } else { b }) as u32;
            logits = model.forward(&[next], args.prompt + i)?;
        }
        decode.push(args.decode as f64 / t.elapsed().as_secs_f64());
    }
    let (prefill, decode) = (median(prefill), median(decode));
    let bytes = model.weight_bytes_per_token();
    let bound = bandwidth / bytes as f64;
    println!("adapter:            {}", model.adapter_description());
    println!("model:              {} ({:.1} MiB of weights read per token)", args.model.display(), bytes as f64 / 1048576.0);
    println!("load:               {load_s:.1} s");
    println!("copy bandwidth:     {:.1} GB/s (read + write)", bandwidth / 1e9);
    println!("prefill:            {prefill:.1} tok/s ({} tokens, median of {})", args.prompt, args.runs);
    println!("decode:             {decode:.1} tok/s ({} tokens after the prompt, median of {})", args.decode, args.runs);
    println!("bandwidth bound:    {bound:.1} tok/s");
    println!("decode / bound:     {:.1} %", 100.0 * decode / bound);
    println!(
        "RESULT {{\"model\":\"{}\",\"adapter\":\"{}\",\"bandwidth_gbs\":{:.1},\"weight_bytes\":{bytes},\"prefill_tps\":{prefill:.2},\"decode_tps\":{decode:.2},\"bound_tps\":{bound:.2},\"decode_pct_of_bound\":{:.1}}}",
        args.model.display(),
        model.adapter_description().replace('"', "'"),
        bandwidth / 1e9,
        100.0 * decode / bound
    );
    Ok(())
}
