//! `xpu-probe`: writes this machine's hardware facts (JSON, Nix or text). See docs/probe.md.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use xpu_probe::render::{self, Format};

/// Hardware facts for local inference: PCI devices, GPUs, Level Zero, CPU and memory,
/// and the xpu variant to run here.
#[derive(Debug, Parser)]
#[command(name = "xpu-probe", version)]
struct Cli {
    /// Read DIR/sys and DIR/proc instead of /sys and /proc (a captured tree).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    format: OutputFormat,

    /// Write to FILE (atomically: a temporary file in the same directory, then renamed)
    /// instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,

    /// Do not query Level Zero (no child process; `level_zero.skipped` is true).
    #[arg(long)]
    no_level_zero: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    /// Pretty JSON, schema_version 1 (probe/schema/facts.schema.json).
    Json,
    /// A Nix attribute set with the same content.
    Nix,
    /// A short human summary.
    Text,
}

fn main() -> ExitCode {
    // When this process was started as the Level Zero child, it answers and exits here.
    xpu_probe::level_zero::run_child_if_requested();

    let cli = Cli::parse();
    if !cli.root.is_dir() {
        eprintln!(
            "xpu-probe: --root {}: not a directory; give the directory that holds sys/ and proc/",
            cli.root.display()
        );
        return ExitCode::from(2);
    }
    let facts = xpu_probe::probe(&xpu_probe::ProbeOptions {
        root: cli.root,
        level_zero: !cli.no_level_zero,
    });
    let format = match cli.format {
        OutputFormat::Json => Format::Json,
        OutputFormat::Nix => Format::Nix,
        OutputFormat::Text => Format::Text,
    };
    let rendered = match render::render(&facts, format) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("xpu-probe: {err}");
            return ExitCode::FAILURE;
        }
    };
    match &cli.output {
        Some(path) => {
            if let Err(err) = xpu_probe::output::write_atomically(path, rendered.as_bytes()) {
                eprintln!("xpu-probe: {err}");
                return ExitCode::FAILURE;
            }
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            if let Err(err) = stdout
                .write_all(rendered.as_bytes())
                .and_then(|_| stdout.flush())
            {
                // A closed pipe (`xpu-probe | head`) is not worth a message.
                if err.kind() != std::io::ErrorKind::BrokenPipe {
                    eprintln!("xpu-probe: cannot write to standard output: {err}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}
