//! Command-line interface: one clap subcommand per module. Each subcommand module
//! only turns flags into library calls and prints results.

mod bench;
mod generate;
mod models;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use xpu_runner::device::DeviceChoice;
use xpu_runner::model::{LoadOptions, LoadedModel};
use xpu_runner::server::EngineArgs;

/// Local LLM inference on CPU, NVIDIA (CUDA) and Intel GPUs (Vulkan).
#[derive(Parser, Debug)]
#[command(name = "xpu-runner", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text from a prompt or a chat message and stream it to stdout.
    Generate(generate::GenerateArgs),
    /// Measure prefill and decode speed and time to first token.
    Bench(bench::BenchArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (a systemd-ready service).
    Serve(xpu_runner::server::ServeArgs),
    /// Download a model from the Hugging Face hub into the model cache.
    Pull(models::PullArgs),
    /// List the models in the model cache.
    List(models::ListArgs),
    /// Remove a model from the model cache.
    Rm(models::RmArgs),
}

impl Command {
    /// The CPU threads the user asked for, if any.
    pub fn threads(&self) -> Option<usize> {
        match self {
            Command::Generate(args) => args.model.threads,
            Command::Bench(args) => args.model.threads,
            Command::Serve(args) => args.threads,
            // Model-cache commands run no model.
            Command::Pull(_) | Command::List(_) | Command::Rm(_) => None,
        }
        .filter(|n| *n > 0)
    }

    /// The `--device` asked for and the facts file it is decided from (`None`: a live
    /// probe), for commands that load a model.
    pub fn device_request(&self) -> Option<(DeviceChoice, Option<&std::path::Path>)> {
        match self {
            Command::Generate(args) => Some((args.model.device, None)),
            Command::Bench(args) => Some((args.model.device, None)),
            Command::Serve(args) => Some((args.device, args.facts.as_deref())),
            Command::Pull(_) | Command::List(_) | Command::Rm(_) => None,
        }
    }

    /// The log level when `RUST_LOG` is not set.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            // Download progress is logged at info level when stderr is not a terminal.
            Command::Generate(_) | Command::Bench(_) => "warn,xpu_runner::hub=info",
            Command::Serve(_) | Command::Pull(_) => "info",
            Command::List(_) | Command::Rm(_) => "warn",
        }
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => xpu_runner::server::run(args),
        Command::Pull(args) => models::pull(args),
        Command::List(args) => models::list(args),
        Command::Rm(args) => models::rm(args),
    }
}

/// Options shared by every command that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF file, a directory with config.json, *.safetensors and tokenizer.json,
    /// or a hub reference (hf:OWNER/REPO/FILE.gguf[@REV], hf:OWNER/REPO:QUANT[@REV]),
    /// downloaded into the model cache on first use.
    #[arg(long, value_name = "REF")]
    pub model: String,

    /// Where to run: auto, cpu, cuda or vulkan; `auto` decides from the hardware facts
    /// (a live probe) and falls back to the CPU if the accelerator fails to initialise.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceChoice,

    /// CPU threads (default: the number of physical cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Context length in tokens, prompt plus output (default: the model's maximum, capped
    /// at 8192, and on a GPU at what fits its memory).
    #[arg(long, value_name = "N")]
    pub ctx: Option<usize>,

    /// A tokenizer.json to use instead of the model's own tokenizer.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    #[command(flatten)]
    pub engine: EngineArgs,
}

impl ModelArgs {
    /// The model's local path (a hub reference is fetched first).
    pub fn model_path(&self) -> anyhow::Result<PathBuf> {
        xpu_runner::hub::resolve_model(&self.model)
    }

    /// Fetches the model if needed and loads it on the device `--device` means.
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        let options = LoadOptions {
            threads: self.threads,
            ctx: self.ctx,
            tokenizer: self.tokenizer.clone(),
            engine: self.engine.options(),
            ..LoadOptions::default()
        };
        xpu_runner::device::decide_and_load(&self.model_path()?, self.device, &options)
    }
}
