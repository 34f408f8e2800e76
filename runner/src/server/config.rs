//! The `serve` command line: one typed struct, built by clap, where every option can
//! also come from an `XPU_RUNNER_*` environment variable (what the NixOS module and
//! systemd units set).

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::ArgAction;

use super::device::DeviceChoice;
use super::listen::Host;

/// Options of `xpu-runner serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// GGUF model file to serve, or a hub reference (hf:OWNER/REPO/FILE.gguf[@REV],
    /// hf:OWNER/REPO:QUANT[@REV]) fetched into the model cache before loading.
    #[arg(long, env = "XPU_RUNNER_MODEL", value_name = "REF")]
    pub model: String,

    /// Name under which the model is listed in /v1/models and must be requested
    /// (default: the model's own id, from its metadata or file name).
    #[arg(long, env = "XPU_RUNNER_MODEL_ID", value_name = "ID")]
    pub model_id: Option<String>,

    /// Address to listen on: an IP address (`127.0.0.1`, `::1`, `[::1]`, `0.0.0.0`) or a
    /// host name (`localhost`), resolved at start-up. Keep the loopback default unless
    /// clients are remote; then also set --api-key-file.
    #[arg(long, env = "XPU_RUNNER_HOST", default_value = "127.0.0.1")]
    pub host: Host,

    /// TCP port (0 picks a free one; the bound address is logged). Ignored when
    /// systemd passes a listening socket (socket activation).
    #[arg(long, env = "XPU_RUNNER_PORT", default_value_t = 52415)]
    pub port: u16,

    /// Compute device; `auto` decides from the hardware facts and falls back to the
    /// CPU if the accelerator fails to initialise.
    #[arg(long, env = "XPU_RUNNER_DEVICE", value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,

    /// Hardware facts JSON written by `xpu-probe` (default: probe the machine live).
    #[arg(long, env = "XPU_RUNNER_FACTS", value_name = "FILE")]
    pub facts: Option<PathBuf>,

    /// File with the accepted API keys, one per line (empty lines and lines starting
    /// with `#` are ignored). Without it, no key is required.
    #[arg(long, env = "XPU_RUNNER_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Requests allowed to wait while one generates; more get 429 with Retry-After.
    #[arg(long, env = "XPU_RUNNER_MAX_QUEUE", default_value_t = 16)]
    pub max_queue: usize,

    /// Context size in tokens (prompt plus generated); default: the model's own, capped at
    /// 8192, and on a GPU at what fits its memory.
    #[arg(long, env = "XPU_RUNNER_CTX", value_name = "TOKENS")]
    pub ctx: Option<usize>,

    /// Most tokens generated for a request that sets neither `max_tokens` nor
    /// `max_completion_tokens` (the context still caps it). A request's own limit may
    /// be larger.
    #[arg(
        long,
        env = "XPU_RUNNER_MAX_TOKENS_DEFAULT",
        value_name = "TOKENS",
        default_value_t = 2048
    )]
    pub max_tokens_default: usize,

    /// Largest accepted request body; larger bodies get 413.
    #[arg(long, env = "XPU_RUNNER_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Seconds that in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "XPU_RUNNER_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,

    /// CPU threads for generation (default: the core's choice).
    #[arg(long, env = "XPU_RUNNER_THREADS")]
    pub threads: Option<usize>,

    /// Allow browsers on these origins to call the API (CORS); repeat or separate
    /// with commas; `*` allows any origin. Off by default.
    #[arg(long, env = "XPU_RUNNER_CORS_ALLOW_ORIGIN", value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,

    /// Do not read Intel GPU telemetry (Level Zero Sysman: memory, temperature,
    /// power) for /metrics and /health. Without an Intel GPU there is nothing to
    /// read anyway; this also saves the one helper process.
    #[arg(
        long,
        env = "XPU_RUNNER_NO_GPU_TELEMETRY",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    pub no_gpu_telemetry: bool,

    /// Seconds between two GPU telemetry readings (fractions allowed, 0.1 to 3600).
    #[arg(
        long,
        env = "XPU_RUNNER_GPU_TELEMETRY_INTERVAL",
        value_name = "SECS",
        default_value = "5",
        value_parser = parse_interval
    )]
    pub gpu_telemetry_interval: Duration,
}

/// Parses `--gpu-telemetry-interval`: seconds, 0.1 to 3600.
fn parse_interval(value: &str) -> Result<Duration, String> {
    match value.trim().parse::<f64>() {
        Ok(secs) if (0.1..=3600.0).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "{value:?} is not a number of seconds from 0.1 to 3600 (e.g. 5 or 0.5)"
        )),
    }
}

impl ServeArgs {
    /// Checks values that clap's types cannot express, with a message that says
    /// what to change.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_queue == 0 {
            anyhow::bail!(
                "--max-queue must be at least 1 (requests that wait for the one running)"
            );
        }
        if self.max_body_bytes < 1024 {
            anyhow::bail!("--max-body-bytes must be at least 1024");
        }
        if let Some(0) = self.ctx {
            anyhow::bail!("--ctx must be at least 1 token");
        }
        if self.max_tokens_default == 0 {
            anyhow::bail!("--max-tokens-default must be at least 1 (tokens generated when a request sets no max_tokens)");
        }
        if let Some(0) = self.threads {
            anyhow::bail!("--threads must be at least 1");
        }
        if let Some(id) = &self.model_id {
            if id.trim().is_empty() {
                anyhow::bail!("--model-id must not be empty");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn defaults_are_safe() {
        let cli = Cli::try_parse_from(["x", "--model", "m.gguf"]).unwrap();
        assert_eq!(cli.serve.host.to_string(), "127.0.0.1");
        assert_eq!(cli.serve.port, 52415);
        assert!(cli.serve.cors_allow_origin.is_empty());
        assert!(cli.serve.api_key_file.is_none());
        assert_eq!(cli.serve.max_tokens_default, 2048);
        cli.serve.validate().unwrap();
    }

    #[test]
    fn hosts_take_names_and_bracketed_ipv6() {
        for (value, shown) in [
            ("localhost", "localhost"),
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("0.0.0.0", "0.0.0.0"),
        ] {
            let cli = Cli::try_parse_from(["x", "--model", "m", "--host", value]).unwrap();
            assert_eq!(cli.serve.host.to_string(), shown);
        }
        let error = Cli::try_parse_from(["x", "--model", "m", "--host", "127.0.0.1:80"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("--port"), "{error}");
    }

    #[test]
    fn zero_max_tokens_default_is_rejected() {
        let cli = Cli::try_parse_from(["x", "--model", "m", "--max-tokens-default", "0"]).unwrap();
        assert!(cli
            .serve
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--max-tokens-default"));
    }

    #[test]
    fn zero_queue_is_rejected() {
        let cli = Cli::try_parse_from(["x", "--model", "m", "--max-queue", "0"]).unwrap();
        assert!(cli
            .serve
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--max-queue"));
    }

    #[test]
    fn gpu_telemetry_is_on_every_5_s_by_default() {
        let cli = Cli::try_parse_from(["x", "--model", "m"]).unwrap();
        assert!(!cli.serve.no_gpu_telemetry);
        assert_eq!(cli.serve.gpu_telemetry_interval, Duration::from_secs(5));
        let cli = Cli::try_parse_from([
            "x",
            "--model",
            "m",
            "--no-gpu-telemetry",
            "--gpu-telemetry-interval",
            "0.5",
        ])
        .unwrap();
        assert!(cli.serve.no_gpu_telemetry);
        assert_eq!(cli.serve.gpu_telemetry_interval, Duration::from_millis(500));
    }

    #[test]
    fn bad_intervals_say_what_is_expected() {
        for bad in ["0", "0.05", "-1", "abc", "", "3601", "NaN", "inf"] {
            let option = format!("--gpu-telemetry-interval={bad}");
            let error = Cli::try_parse_from(["x", "--model", "m", &option])
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was accepted"))
                .to_string();
            assert!(error.contains("--gpu-telemetry-interval"), "{error}");
            assert!(error.contains("from 0.1 to 3600"), "{error}");
        }
    }
}
