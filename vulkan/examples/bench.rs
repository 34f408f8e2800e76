//! Decode and prefill speed of the Vulkan engine on one GGUF file, with decode put against
//! the memory-bandwidth bound measured in the same run:
//! bound (tok/s) = copy-kernel bandwidth ÷ weight bytes read per token.
//! `--cpu` runs candle's quantized llama on the CPU on the same file instead, for the record.
//!
//! `--sequences N` decodes N sequences together instead (one `forward_batch_read` per step,
//! each sequence after its own prompt) and puts the aggregate against one sequence decoded
//! alone in the same run. Its greedy tokens are picked on the GPU (`Readback::Greedy`, as the
//! server does for greedy requests); `--host-pick` reads every row of logits back and picks
//! on the host instead, for comparison.
//!
//! `--devices LIST` (the runner's `--devices`: `auto`, adapter indices, PCI addresses) and
//! `--split 3,1` choose the devices; with several, the model's layers are split over them
//! and the summary gives the time spent handing hidden states from one device to the next.
//!
//! Usage: bench MODEL.gguf [--cpu] [--prompt N] [--decode N] [--runs N] [--sequences N] [--max-batch N]
//!                         [--host-pick] [--devices LIST] [--split SHARES]
//! Prints a human summary and one `RESULT {json}` line for scripts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use xpu_vulkan::{
    parse_split, testing, ChunkOutput, DeviceOptions, DeviceSelection, ForwardTiming, KernelTuning,
    LlamaModel, LoadOptions, Readback, SeqChunk, VulkanError, ALLOW_CPU_ADAPTER_ENV,
    MATVEC_TUNING_ENV,
};

struct Args {
    model: PathBuf,
    prompt: usize,
    decode: usize,
    runs: usize,
    cpu: bool,
    /// Sequences decoded together (`--sequences`); `None`: the single-sequence benchmark.
    sequences: Option<usize>,
    /// `--sequences`: read every row of logits back and pick the tokens on the host
    /// (`--host-pick`) instead of picking them on the GPU.
    host_pick: bool,
    devices: DeviceSelection,
    split: Option<Vec<u32>>,
    /// Most tokens one GPU pass processes (`--max-batch`; the prompt runs in such passes).
    max_batch: usize,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut args = Args {
        model: PathBuf::new(),
        prompt: 512,
        decode: 128,
        runs: 3,
        cpu: false,
        sequences: None,
        host_pick: false,
        devices: DeviceSelection::Auto,
        split: None,
        max_batch: LoadOptions::default().max_batch,
    };
    let mut model = None;
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a positive number"))
        };
        match a.as_str() {
            "--prompt" => args.prompt = num("--prompt")?,
            "--decode" => args.decode = num("--decode")?,
            "--runs" => args.runs = num("--runs")?,
            "--sequences" => args.sequences = Some(num("--sequences")?),
            "--max-batch" => args.max_batch = num("--max-batch")?,
            "--cpu" => args.cpu = true,
            "--host-pick" => args.host_pick = true,
            "--devices" => {
                args.devices = it.next().ok_or("--devices needs a list")?.parse()?;
            }
            "--split" => args.split = Some(parse_split(&it.next().ok_or("--split needs shares")?)?),
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => model = Some(PathBuf::from(s)),
        }
    }
    args.model = model.ok_or("missing MODEL.gguf")?;
    if args.prompt == 0
        || args.decode == 0
        || args.runs == 0
        || args.sequences == Some(0)
        || args.max_batch == 0
    {
        return Err(
            "--prompt, --decode, --runs, --sequences and --max-batch must be at least 1".into(),
        );
    }
    Ok(args)
}

/// Deterministic pseudo-random prompt: speed does not depend on which tokens.
fn synthetic_prompt(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) % vocab)
        .collect()
}

/// Index of the largest logit (ties: the lowest index), as the runner's greedy sampler
/// picks it, so that the time a batched step spends picking tokens is the server's.
fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        if x > best_value {
            best = i;
            best_value = x;
        }
    }
    best as u32
}

/// Candle's quantized llama on the CPU (quantized matmuls), same prompt and decode lengths.
fn run_cpu(args: &Args) -> Result<(), String> {
    let e = |e: candle_core::Error| e.to_string();
    let mut file =
        std::fs::File::open(&args.model).map_err(|e| format!("{}: {e}", args.model.display()))?;
    let content = gguf_file::Content::read(&mut file).map_err(e)?;
    let vocab = content
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| t.shape.dims()[0])
        .ok_or("no token_embd.weight")? as u32;
    let t = Instant::now();
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).map_err(e)?;
    println!("load:               {:.1} s", t.elapsed().as_secs_f64());
    let prompt = synthetic_prompt(args.prompt, vocab);
    let forward =
        |model: &mut ModelWeights, tokens: &[u32], pos: usize| -> Result<Vec<f32>, String> {
            let input = Tensor::new(tokens, &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .map_err(e)?;
            model
                .forward(&input, pos)
                .and_then(|l| l.squeeze(0))
                .and_then(|l| l.to_vec1())
                .map_err(e)
        };
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        model.clear_kv_cache();
        let t = Instant::now();
        let mut logits = forward(&mut model, &prompt, 0)?;
        prefill.push(args.prompt as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..args.decode {
            logits = forward(&mut model, &[argmax(&logits)], args.prompt + i)?;
        }
        decode.push(args.decode as f64 / t.elapsed().as_secs_f64());
    }
    let (prefill, decode) = (median(prefill), median(decode));
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("engine:             candle quantized_llama, CPU, {threads} threads");
    println!(
        "prefill:            {prefill:.1} tok/s ({} tokens, median of {})",
        args.prompt, args.runs
    );
    println!(
        "decode:             {decode:.1} tok/s ({} tokens after the prompt, median of {})",
        args.decode, args.runs
    );
    println!(
        "RESULT {{\"model\":\"{}\",\"engine\":\"candle-cpu\",\"threads\":{threads},\"prefill_tps\":{prefill:.2},\"decode_tps\":{decode:.2}}}",
        args.model.display()
    );
    Ok(())
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
                eprintln!("bench: {e}");
            }
            eprintln!("usage: bench MODEL.gguf [--cpu] [--prompt N (512)] [--decode N (128)] [--runs N (3)] [--sequences N] [--max-batch N (512)] [--host-pick] [--devices LIST] [--split SHARES]");
            return ExitCode::from(2);
        }
    };
    let result = match (args.cpu, args.sequences) {
        (true, _) => run_cpu(&args),
        (false, Some(n)) => run_sequences(&args, n).map_err(|e| e.to_string()),
        (false, None) => run(&args).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the prompt again and returns its logits (the state the decode runs started from).
fn logits_after(
    model: &mut LlamaModel,
    prompt: &[u32],
) -> Result<Vec<f32>, xpu_vulkan::VulkanError> {
    model.reset();
    model.forward(prompt, 0)
}

/// Decode steps the kernel profiles run (medians over them).
const PROFILE_STEPS: usize = 9;

/// GPU time of each kernel in a decode step after the prompt, from timestamps written
/// between dispatches: medians over several steps, summed per kernel name.
fn profile(model: &mut LlamaModel, first: u32, pos: usize) -> Result<(), xpu_vulkan::VulkanError> {
    let mut token = first;
    let mut per_step: Vec<Vec<(&'static str, f64)>> = Vec::new();
    for i in 0..PROFILE_STEPS {
        let Some((times, logits)) = model.profile_step(token, pos + i)? else {
            println!("kernel profile:     none (the adapter has no timestamp queries inside passes, or the model is split)");
            return Ok(());
        };
        token = argmax(&logits);
        per_step.push(times);
    }
    print_profile(&format!("decode step at position {pos}"), &per_step);
    Ok(())
}

/// GPU time of each kernel in the prompt's first pass (from an empty cache; at most
/// `max_batch` tokens), as [`profile`] does for decode steps: where prefill time goes.
fn profile_prefill(
    model: &mut LlamaModel,
    prompt: &[u32],
    max_batch: usize,
) -> Result<(), xpu_vulkan::VulkanError> {
    let prompt = &prompt[..prompt.len().min(max_batch)];
    let mut per_pass: Vec<Vec<(&'static str, f64)>> = Vec::new();
    for _ in 0..3 {
        model.reset();
        let chunk = SeqChunk {
            slot: 0,
            tokens: prompt,
            start: 0,
        };
        // At most max_batch tokens: one pass, which profile_batch requires. Without
        // timestamps the decode profile says so; nothing to add here.
        let Some((times, _)) = model.profile_batch(&[chunk], &[Readback::Logits])? else {
            return Ok(());
        };
        per_pass.push(times);
    }
    print_profile(
        &format!("prompt pass of {} tokens", prompt.len()),
        &per_pass,
    );
    Ok(())
}

/// A decode step of every slot: slot i feeds `ids[i]` at position `pos`.
fn one_token_per_slot(ids: &[u32], pos: usize) -> Vec<SeqChunk<'_>> {
    ids.iter()
        .enumerate()
        .map(|(slot, id)| SeqChunk {
            slot,
            tokens: std::slice::from_ref(id),
            start: pos,
        })
        .collect()
}

/// The next token of each chunk: the GPU's pick, or the host's argmax of the row.
fn next_tokens(outputs: Vec<ChunkOutput>) -> Vec<u32> {
    outputs
        .into_iter()
        .map(|o| match o {
            ChunkOutput::Token(t) => t,
            ChunkOutput::Logits(row) => argmax(&row),
        })
        .collect()
}

/// As [`profile`] for a batched decode step of every sequence of `slots` (slot i continues
/// from `next[i]` at position `pos`, after its prompt), reading back what `want` asks for.
fn profile_batch(
    model: &mut LlamaModel,
    mut next: Vec<u32>,
    pos: usize,
    want: Readback,
) -> Result<(), xpu_vulkan::VulkanError> {
    let mut per_step: Vec<Vec<(&'static str, f64)>> = Vec::new();
    for i in 0..PROFILE_STEPS {
        let ids = next.clone();
        let chunks = one_token_per_slot(&ids, pos + i);
        let wants = vec![want; chunks.len()];
        let Some((times, outputs)) = model.profile_batch(&chunks, &wants)? else {
            println!("kernel profile:     none (the adapter has no timestamp queries inside passes, or the model is split)");
            return Ok(());
        };
        next = next_tokens(outputs);
        per_step.push(times);
    }
    print_profile(
        &format!(
            "batched decode step of {} sequences at position {pos}",
            next.len()
        ),
        &per_step,
    );
    Ok(())
}

/// Prints the median GPU time per kernel name over the profiled steps.
fn print_profile(what: &str, per_step: &[Vec<(&'static str, f64)>]) {
    // Sum per name within a step, then the median step for each name.
    let mut names: Vec<&'static str> = Vec::new();
    for (name, _) in &per_step[0] {
        if !names.contains(name) {
            names.push(name);
        }
    }
    println!(
        "kernel profile:     {what}, GPU timestamps after each dispatch (median of {} steps)",
        per_step.len()
    );
    println!(
        "  {:<22} {:>6} {:>10} {:>10}",
        "kernel", "count", "us/step", "us each"
    );
    let mut total = 0.0;
    for name in names {
        let sums: Vec<f64> = per_step
            .iter()
            .map(|s| s.iter().filter(|(n, _)| *n == name).map(|(_, t)| t).sum())
            .collect();
        let count = per_step[0].iter().filter(|(n, _)| *n == name).count();
        let us = median(sums) * 1e6;
        total += us;
        println!(
            "  {name:<22} {count:>6} {us:>10.1} {:>10.2}",
            us / count as f64
        );
    }
    println!("  {:<22} {:>6} {total:>10.1}", "total", per_step[0].len());
}

/// The device options the environment asks for: a CPU adapter (XPU_RUNNER_ALLOW_CPU_ADAPTER)
/// and the kernel tuning (XPU_VULKAN_MATVEC).
fn device_options(args: &Args) -> Result<DeviceOptions, VulkanError> {
    let allow_cpu_adapter = matches!(
        std::env::var(ALLOW_CPU_ADAPTER_ENV)
            .as_deref()
            .map(str::trim),
        Ok("1" | "true" | "yes")
    );
    let tuning = match std::env::var(MATVEC_TUNING_ENV) {
        Ok(spec) => spec
            .parse::<KernelTuning>()
            .map_err(|e| VulkanError::InvalidInput(format!("{MATVEC_TUNING_ENV}: {e}")))?,
        Err(_) => KernelTuning::default(),
    };
    Ok(DeviceOptions {
        allow_cpu_adapter,
        tuning,
        devices: args.devices.clone(),
        split: args.split.clone(),
        ..DeviceOptions::default()
    })
}

/// Decode tok/s of `n` sequences together (aggregate) and of one alone, each after a prompt
/// of `args.prompt` tokens, medians of `args.runs`.
fn run_sequences(args: &Args, n: usize) -> Result<(), VulkanError> {
    let ctx = args.prompt + args.decode.max(PROFILE_STEPS) + 1;
    let t = Instant::now();
    let mut model = LlamaModel::load(
        &args.model,
        &LoadOptions {
            ctx: Some(ctx),
            device: device_options(args)?,
            slots: n,
            max_batch: args.max_batch,
        },
    )?;
    println!("adapter:            {}", model.adapter_description());
    println!(
        "load:               {:.1} s ({n} slots of {ctx} tokens)",
        t.elapsed().as_secs_f64()
    );
    let vocab = model.config().vocab as u32;
    // Each sequence its own prompt, so that the sequences pick different tokens.
    let prompts: Vec<Vec<u32>> = (0..n)
        .map(|s| synthetic_prompt(args.prompt + s, vocab).split_off(s))
        .collect();
    let t = Instant::now();
    model.forward(&prompts[0][..8.min(args.prompt)], 0)?;
    println!("warm-up (8 tokens): {:.2} s", t.elapsed().as_secs_f64());
    let want = if args.host_pick {
        Readback::Logits
    } else {
        Readback::Greedy
    };
    println!(
        "tokens picked:      {}",
        if args.host_pick {
            "on the host, from every row of logits read back (--host-pick)"
        } else {
            "on the GPU (argmax per row; only the token ids are read back)"
        }
    );
    // Decodes `count` sequences from their prompts; returns the aggregate decode tok/s and
    // where a step's time went.
    let decode = |model: &mut LlamaModel, count: usize| -> Result<(f64, StepSplit), VulkanError> {
        model.reset();
        let mut next = Vec::with_capacity(count);
        for (slot, prompt) in prompts[..count].iter().enumerate() {
            let chunk = SeqChunk {
                slot,
                tokens: prompt,
                start: 0,
            };
            next.extend(next_tokens(model.forward_batch_read(&[chunk], &[want])?));
        }
        let mut split = StepSplit::default();
        let t = Instant::now();
        for i in 0..args.decode {
            let step_started = Instant::now();
            let ids = next.clone();
            let chunks = one_token_per_slot(&ids, args.prompt + i);
            let outputs = model.forward_batch_read(&chunks, &vec![want; count])?;
            let picking = Instant::now();
            next = next_tokens(outputs);
            split.add(
                &model.last_timing(),
                picking.elapsed().as_secs_f64(),
                step_started.elapsed().as_secs_f64(),
            );
        }
        let tps = (count * args.decode) as f64 / t.elapsed().as_secs_f64();
        Ok((tps, split.per_step(args.decode)))
    };
    let (mut one, mut all) = (Vec::new(), Vec::new());
    let (mut split_one, mut split_all) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let (tps, split) = decode(&mut model, 1)?;
        one.push(tps);
        split_one.push(split);
        let (tps, split) = decode(&mut model, n)?;
        all.push(tps);
        split_all.push(split);
    }
    // The split of the run with the median decode rate.
    let median_split = |tps: &[f64], splits: Vec<StepSplit>| {
        let mut order: Vec<usize> = (0..tps.len()).collect();
        order.sort_by(|&a, &b| tps[a].total_cmp(&tps[b]));
        splits[order[order.len() / 2]]
    };
    let (split_one, split_all) = (median_split(&one, split_one), median_split(&all, split_all));
    let (one, all) = (median(one), median(all));
    println!("model:              {}", args.model.display());
    println!(
        "decode, 1 sequence: {one:.1} tok/s ({} tokens after a {}-token prompt, median of {})",
        args.decode, args.prompt, args.runs
    );
    println!(
        "decode, {n} together: {all:.1} tok/s in all ({:.1} per sequence), {:.2} x one sequence",
        all / n as f64,
        all / one
    );
    for (label, split) in [
        ("1 sequence", split_one),
        (&format!("{n} together"), split_all),
    ] {
        println!(
            "step, {label:11} {:.3} ms: GPU (submit to fence) {:.3} ms, host {:.3} ms (inputs {:.3}, read-back {:.3}, picking tokens on the host {:.3}, other {:.3}); {} dispatches",
            split.step_s * 1e3,
            split.gpu_s * 1e3,
            split.host_s() * 1e3,
            split.inputs_s * 1e3,
            split.readback_s * 1e3,
            split.pick_s * 1e3,
            split.other_s() * 1e3,
            split.dispatches
        );
    }
    // Where the GPU time of a step goes, kernel by kernel: one sequence, then the N.
    let mut first = Vec::with_capacity(n);
    model.reset();
    for (slot, prompt) in prompts.iter().enumerate() {
        let chunk = SeqChunk {
            slot,
            tokens: prompt,
            start: 0,
        };
        first.extend(next_tokens(model.forward_batch_read(&[chunk], &[want])?));
    }
    profile_batch(&mut model, first.clone(), args.prompt, want)?;
    profile(&mut model, first[0], args.prompt)?;
    println!(
        "RESULT {{\"model\":\"{}\",\"adapter\":\"{}\",\"sequences\":{n},\"pick\":\"{}\",\"decode_tps_one\":{one:.2},\"decode_tps_all\":{all:.2},\"ratio\":{:.2},\"step_ms_one\":{:.3},\"gpu_ms_one\":{:.3},\"dispatches_one\":{},\"step_ms_all\":{:.3},\"gpu_ms_all\":{:.3},\"host_ms_all\":{:.3},\"dispatches_all\":{}}}",
        args.model.display(),
        model.adapter_description().replace('"', "'"),
        if args.host_pick { "host" } else { "gpu" },
        all / one,
        split_one.step_s * 1e3,
        split_one.gpu_s * 1e3,
        split_one.dispatches,
        split_all.step_s * 1e3,
        split_all.gpu_s * 1e3,
        split_all.host_s() * 1e3,
        split_all.dispatches
    );
    Ok(())
}

/// Where the time of a decode step of `--sequences` went (seconds; sums, then per step):
/// wall clocks around the steps and the engine's `ForwardTiming`, no GPU timestamps.
#[derive(Debug, Clone, Copy, Default)]
struct StepSplit {
    /// The whole step: building the chunks, `forward_batch_read`, picking the next tokens.
    step_s: f64,
    /// First submission to the fence (`ForwardTiming::gpu_s`; the engine records the next
    /// step meanwhile, so this would include that recording where it outlasted the GPU).
    gpu_s: f64,
    /// Writing the inputs before the first submission.
    inputs_s: f64,
    /// Fence to the results on the host (rows of logits or token ids).
    readback_s: f64,
    /// The argmax over every sequence's logits on the host (`--host-pick`; otherwise only
    /// taking the GPU's picks).
    pick_s: f64,
    /// Dispatches of one step (the last one's).
    dispatches: usize,
}

impl StepSplit {
    fn add(&mut self, t: &ForwardTiming, pick_s: f64, step_s: f64) {
        self.step_s += step_s;
        self.gpu_s += t.gpu_s;
        self.inputs_s += t.inputs_s;
        self.readback_s += t.readback_s;
        self.pick_s += pick_s;
        self.dispatches = t.dispatches;
    }

    fn per_step(self, steps: usize) -> StepSplit {
        let s = steps as f64;
        StepSplit {
            step_s: self.step_s / s,
            gpu_s: self.gpu_s / s,
            inputs_s: self.inputs_s / s,
            readback_s: self.readback_s / s,
            pick_s: self.pick_s / s,
            dispatches: self.dispatches,
        }
    }

    /// Everything but the GPU's time.
    fn host_s(&self) -> f64 {
        self.step_s - self.gpu_s
    }

    /// Host time outside the parts named: building the chunks and checking them.
    fn other_s(&self) -> f64 {
        self.host_s() - self.inputs_s - self.readback_s - self.pick_s
    }
}

fn run(args: &Args) -> Result<(), VulkanError> {
    let ctx = args.prompt + args.decode.max(16) + 1; // the kernel profile decodes 9 tokens
    let t = Instant::now();
    let mut model = LlamaModel::load(
        &args.model,
        &LoadOptions {
            ctx: Some(ctx),
            device: device_options(args)?,
            max_batch: args.max_batch,
            ..LoadOptions::default()
        },
    )?;
    let load_s = t.elapsed().as_secs_f64();
    println!("adapter:            {}", model.adapter_description());
    println!(
        "features:           subgroups {}, timestamps inside passes {}",
        if model.gpu().subgroups() {
            "used"
        } else {
            "not available (workgroup-memory reductions)"
        },
        if model.gpu().timestamps() {
            "yes"
        } else {
            "no"
        }
    );
    println!("matrix cores:       {}", model.gpu().cooperative_matrices());
    println!("prefill product:    {}", model.gpu().prefill_product());
    println!("load:               {load_s:.1} s");
    let map = model.device_map();
    for part in &map {
        println!(
            "device {}:           layers {}-{}{}{} ({:.1} MiB of weights)",
            part.index,
            part.layers.start,
            part.layers.end - 1,
            if part.embedding { ", embedding" } else { "" },
            if part.output { ", output head" } else { "" },
            part.weight_bytes as f64 / 1048576.0
        );
    }
    let dispatches = model.decode_dispatches(args.prompt);
    println!(
        "decode dispatches:  {dispatches} per step ({} layers)",
        model.config().n_layer
    );
    let vocab = model.config().vocab as u32;
    // The best of three: on a freshly started machine the first one can run before the
    // clocks have ramped up (seen on the H200: 1.7 TB/s once, 4.0 TB/s otherwise).
    let mut bandwidth: f64 = 0.0;
    for _ in 0..3 {
        bandwidth = bandwidth.max(testing::copy_bandwidth(model.gpu(), 1 << 30, 20)?);
    }
    println!(
        "copy bandwidth:     {:.1} GB/s (read + write)",
        bandwidth / 1e9
    );
    // 150 dependent copies of 4 KiB in one submission: the cost of one dispatch plus the
    // barrier between dispatches, which a decode step pays about 117 times (1B model).
    let tiny = 4096.0;
    let per_dispatch = 2.0 * tiny / testing::copy_bandwidth(model.gpu(), tiny as u64, 150)?;
    println!(
        "dispatch + barrier: {:.1} us (150 dependent 4 KiB copies in one submission)",
        per_dispatch * 1e6
    );
    let prompt = synthetic_prompt(args.prompt, vocab);
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    // One untimed warm-up pass compiles pipelines in the driver and touches every buffer.
    let t = Instant::now();
    model.forward(&prompt[..8.min(prompt.len())], 0)?;
    println!("warm-up (8 tokens): {:.2} s", t.elapsed().as_secs_f64());
    // Seconds spent crossing devices per decoded token and per prompt token (medians).
    let (mut cross_decode, mut cross_prefill) = (Vec::new(), Vec::new());
    // The greedy tokens of the first run, to compare a split with one device.
    let mut greedy = Vec::new();
    for run in 0..args.runs {
        model.reset();
        let t = Instant::now();
        let mut logits = model.forward(&prompt, 0)?;
        prefill.push(args.prompt as f64 / t.elapsed().as_secs_f64());
        cross_prefill.push(model.last_timing().cross_s / args.prompt as f64);
        let t = Instant::now();
        let (mut record_s, mut wait_s, mut cross_s) = (0.0, 0.0, 0.0);
        for i in 0..args.decode {
            let next = argmax(&logits);
            if run == 0 {
                greedy.push(next);
            }
            logits = model.forward(&[next], args.prompt + i)?;
            record_s += model.last_timing().record_s;
            wait_s += model.last_timing().wait_s;
            cross_s += model.last_timing().cross_s;
        }
        cross_decode.push(cross_s / args.decode as f64);
        println!(
            "decode step:        {:.2} ms recording + submitting, {:.2} ms waiting for the GPU + logits",
            record_s * 1e3 / args.decode as f64,
            wait_s * 1e3 / args.decode as f64
        );
        decode.push(args.decode as f64 / t.elapsed().as_secs_f64());
    }
    let (prefill, decode) = (median(prefill), median(decode));
    let (cross_decode, cross_prefill) = (median(cross_decode), median(cross_prefill));
    if map.len() > 1 {
        println!(
            "crossing devices:   {:.3} ms per decoded token, {:.4} ms per prompt token ({} hand-offs a pass)",
            cross_decode * 1e3,
            cross_prefill * 1e3,
            map.len() - 1
        );
    }
    profile_prefill(&mut model, &prompt, args.max_batch)?;
    let first = argmax(&logits_after(&mut model, &prompt)?);
    profile(&mut model, first, args.prompt)?;
    // Once more after the timed runs: on a freshly started H200 all three copies before them
    // have read 1.7 TB/s (clocks still ramping), which would make the bound far too low.
    let again = testing::copy_bandwidth(model.gpu(), 1 << 30, 20)?;
    if again > bandwidth * 1.05 {
        println!(
            "copy bandwidth:     {:.1} GB/s after the timed runs (used for the bound)",
            again / 1e9
        );
        bandwidth = again;
    }
    let bytes = model.weight_bytes_per_token();
    let bound = bandwidth / bytes as f64;
    println!(
        "model:              {} ({:.1} MiB of weights read per token)",
        args.model.display(),
        bytes as f64 / 1048576.0
    );
    println!(
        "prefill:            {prefill:.1} tok/s ({} tokens, median of {})",
        args.prompt, args.runs
    );
    println!(
        "decode:             {decode:.1} tok/s ({} tokens after the prompt, median of {})",
        args.decode, args.runs
    );
    println!("bandwidth bound:    {bound:.1} tok/s");
    println!("decode / bound:     {:.1} %", 100.0 * decode / bound);
    println!(
        "RESULT {{\"model\":\"{}\",\"adapter\":\"{}\",\"devices\":{},\"layers_per_device\":{:?},\"bandwidth_gbs\":{:.1},\"weight_bytes\":{bytes},\"prefill_tps\":{prefill:.2},\"decode_tps\":{decode:.2},\"bound_tps\":{bound:.2},\"decode_pct_of_bound\":{:.1},\"cross_ms_per_decode_token\":{:.4},\"cross_ms_per_prompt_token\":{:.5},\"greedy_tokens\":{:?},\"decode_dispatches\":{dispatches}}}",
        args.model.display(),
        model.adapter_description().replace('"', "'"),
        map.len(),
        map.iter().map(|p| p.layers.len()).collect::<Vec<_>>(),
        bandwidth / 1e9,
        100.0 * decode / bound,
        cross_decode * 1e3,
        cross_prefill * 1e3,
        greedy
    );
    Ok(())
}
