//! The `xpu-runner` binary: parses the command line and hands over to the library.

#![forbid(unsafe_code)]

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // When the probe re-executes this binary to query Level Zero in a child
    // process, this call does that work and exits.
    xpu_probe::level_zero::run_child_if_requested();

    let args = cli::Cli::parse();
    if let Some(threads) = args.command.threads() {
        size_candle_pools(threads);
    }
    init_logging(args.command.default_log_level());
    match hand_over_to_cuda_if_chosen(&args.command).and_then(|()| cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the error and its causes, joined.
            eprintln!("error: {}", format!("{error:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// In the binary without CUDA, a command that comes to the CUDA engine continues as the
/// CUDA binary next to this one (`xpu_runner::cuda_binary`), before anything else starts.
fn hand_over_to_cuda_if_chosen(command: &cli::Command) -> anyhow::Result<()> {
    match command.device_request() {
        Some((choice, facts)) => xpu_runner::device::hand_over_to_cuda_if_chosen(choice, facts),
        None => Ok(()),
    }
}

/// candle sizes the thread pool of its quantized kernels only from these variables.
/// Setting them is sound here because no other thread exists yet: `main` calls this
/// right after parsing the command line, before logging, the model or the server start.
fn size_candle_pools(threads: usize) {
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
}

/// Logs go to stderr (stdout carries generated text); colours only on a terminal.
/// `RUST_LOG` overrides the command's default level.
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
