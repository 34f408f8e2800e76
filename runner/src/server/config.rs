//! The `serve` command line: one typed struct, built by clap, where every option can
//! also come from an `XPU_RUNNER_*` environment variable (what the NixOS module and
//! systemd units set).

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::ArgAction;

use super::listen::Host;
use crate::device::DeviceChoice;
use crate::engine::{CpuEngine, EngineOptions};

/// Options of `xpu-runner serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model to serve: a GGUF file, a safetensors directory or a hub reference
    /// (hf:OWNER/REPO/FILE.gguf[@REV], hf:OWNER/REPO:QUANT[@REV], fetched into the model
    /// cache at start), optionally named `ID=REF`. Repeat, or separate with commas, to
    /// serve several; then each is loaded on its first request. One model alone is
    /// loaded at start.
    #[arg(
        long,
        env = "XPU_RUNNER_MODEL",
        value_name = "[ID=]REF",
        value_delimiter = ',',
        required_unless_present = "models_dir"
    )]
    pub model: Vec<String>,

    /// Name under which the one model is listed in /v1/models and must be requested
    /// (default: the model's own id, from its file name). With several models, name
    /// each with `--model ID=REF` instead.
    #[arg(long, env = "XPU_RUNNER_MODEL_ID", value_name = "ID")]
    pub model_id: Option<String>,

    /// Also serve every GGUF file under this directory (searched at start, with
    /// subdirectories), each loaded on its first request and named after its file.
    #[arg(long, env = "XPU_RUNNER_MODELS_DIR", value_name = "DIR")]
    pub models_dir: Option<PathBuf>,

    /// Most models kept in memory at once; loading one more first unloads the least
    /// recently used (default: no limit).
    #[arg(long, env = "XPU_RUNNER_MAX_LOADED_MODELS", value_name = "N")]
    pub max_loaded_models: Option<usize>,

    /// Memory that loaded models may take together, in bytes or with a unit (`8G`,
    /// `512M`, `1.5GiB`; K, M, G, T count in 1024s, KB, MB, GB, TB in 1000s). A model's
    /// share is estimated from its weights plus the KV cache of its --parallel slots;
    /// loading one that would not fit first unloads the least recently used (default: no
    /// limit).
    #[arg(
        long,
        env = "XPU_RUNNER_MEMORY_BUDGET",
        value_name = "SIZE",
        value_parser = parse_size
    )]
    pub memory_budget: Option<u64>,

    /// Address to listen on: an IP address (`127.0.0.1`, `::1`, `[::1]`, `0.0.0.0`) or a
    /// host name (`localhost`), resolved at start-up. Keep the loopback default unless
    /// clients are remote; then also set --api-key-file.
    #[arg(long, env = "XPU_RUNNER_HOST", default_value = "127.0.0.1")]
    pub host: Host,

    /// TCP port (0 picks a free one; the bound address is logged). Ignored when
    /// systemd passes a listening socket (socket activation).
    #[arg(long, env = "XPU_RUNNER_PORT", default_value_t = 52415)]
    pub port: u16,

    /// Compute device: auto, cpu, cuda or vulkan; `auto` decides from the hardware facts
    /// and falls back to the CPU if the accelerator fails to initialise.
    #[arg(
        long,
        env = "XPU_RUNNER_DEVICE",
        default_value = "auto",
        value_name = "DEVICE"
    )]
    pub device: DeviceChoice,

    /// Hardware facts JSON written by `xpu-probe` (default: probe the machine live).
    #[arg(long, env = "XPU_RUNNER_FACTS", value_name = "FILE")]
    pub facts: Option<PathBuf>,

    /// File with the accepted API keys, one per line (empty lines and lines starting
    /// with `#` are ignored). Without it, no key is required.
    #[arg(long, env = "XPU_RUNNER_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Requests allowed to wait for a free slot (see --parallel); more get 429 with
    /// Retry-After.
    #[arg(long, env = "XPU_RUNNER_MAX_QUEUE", default_value_t = 16)]
    pub max_queue: usize,

    /// Sequences generated at the same time (continuous batching): the KV cache holds
    /// this many slots of --ctx tokens each. Engines that cannot batch (candle) run one
    /// at a time and say so at start and in /health.
    #[arg(
        long,
        env = "XPU_RUNNER_PARALLEL",
        value_name = "N",
        default_value_t = 4
    )]
    pub parallel: usize,

    /// Context size in tokens (prompt plus generated) of each slot; default: the model's
    /// own, capped at 8192, and on a GPU at what fits its memory.
    #[arg(long, env = "XPU_RUNNER_CTX", value_name = "TOKENS")]
    pub ctx: Option<usize>,

    /// Total KV-cache budget in tokens, split over the --parallel slots: each then
    /// holds min(--ctx, TOKENS / N) tokens. Default: each slot holds --ctx tokens.
    #[arg(long, env = "XPU_RUNNER_KV_CACHE_TOKENS", value_name = "TOKENS")]
    pub kv_cache_tokens: Option<usize>,

    /// Most prompt tokens one step prefills (over all new requests), between the decode
    /// steps of running ones: a long prompt delays running streams by one chunk at most.
    #[arg(
        long,
        env = "XPU_RUNNER_PREFILL_CHUNK",
        value_name = "TOKENS",
        default_value_t = super::queue::DEFAULT_PREFILL_CHUNK
    )]
    pub prefill_chunk: usize,

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

    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Engine settings for tests, benchmarks and debugging, shared by every command that
/// loads a model; each also comes from the environment variable it names.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EngineArgs {
    /// The engine for GGUF files on the CPU: xpu (our own; every described architecture) or
    /// candle (slower, llama/qwen2/phi3 only, but it also runs the quantizations and the
    /// mixture-of-experts files ours refuses).
    #[arg(
        long,
        env = "XPU_CPU_ENGINE",
        value_enum,
        ignore_case = true,
        default_value_t = CpuEngine::Xpu,
        value_name = "ENGINE"
    )]
    pub cpu_engine: CpuEngine,

    /// Vulkan: accept a CPU adapter such as lavapipe (correct, but slower than the CPU
    /// engine; for tests and debugging).
    #[cfg(feature = "vulkan")]
    #[arg(
        long,
        env = xpu_vulkan::ALLOW_CPU_ADAPTER_ENV,
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    pub allow_cpu_adapter: bool,

    /// Vulkan: the GPUs to run on: `auto` (every discrete GPU; the one integrated GPU when
    /// there is none) or a comma-separated list of adapter indices and PCI addresses as
    /// xpu-probe reports them (0000:03:00.0). Several split the model's layers; an
    /// integrated GPU joins only when named. The adapters and their indices are logged at start.
    #[cfg(feature = "vulkan")]
    #[arg(long, env = xpu_vulkan::DEVICES_ENV, value_name = "LIST", default_value = "auto")]
    pub devices: xpu_vulkan::DeviceSelection,

    /// Vulkan: the share of the layers each device of --devices runs, e.g. 3,1; by default
    /// in proportion to each device's memory.
    #[cfg(feature = "vulkan")]
    #[arg(long, env = xpu_vulkan::SPLIT_ENV, value_name = "SHARES", value_parser = parse_split)]
    pub split: Option<LayerShares>,

    /// Vulkan kernel settings for benchmarks, comma-separated, e.g. units=2,tall=2048
    /// (see docs/vulkan.md); the defaults are what the engine is tuned for.
    #[cfg(feature = "vulkan")]
    #[arg(long, env = xpu_vulkan::MATVEC_TUNING_ENV, value_name = "SETTINGS")]
    pub vulkan_tuning: Option<xpu_vulkan::KernelTuning>,
}

impl EngineArgs {
    /// The options the model loader takes.
    pub fn options(&self) -> EngineOptions {
        EngineOptions {
            cpu_engine: self.cpu_engine,
            #[cfg(feature = "vulkan")]
            vulkan: xpu_vulkan::DeviceOptions {
                allow_cpu_adapter: self.allow_cpu_adapter,
                tuning: self.vulkan_tuning.unwrap_or_default(),
                devices: self.devices.clone(),
                split: self.split.clone().map(|s| s.0),
                ..Default::default()
            },
        }
    }
}

/// `--split`: a positive share of the layers per device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerShares(pub Vec<u32>);

#[cfg(feature = "vulkan")]
fn parse_split(value: &str) -> Result<LayerShares, String> {
    xpu_vulkan::parse_split(value).map(LayerShares)
}

/// Parses a size such as `8G`, `512MiB`, `1.5GB` or `1000000` into bytes.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let text = value.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KIB" => 1 << 10,
        "M" | "MIB" => 1 << 20,
        "G" | "GIB" => 1 << 30,
        "T" | "TIB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => u64::MAX,
    };
    let bytes = number.parse::<f64>().ok().map(|n| n * factor as f64);
    match bytes {
        Some(b) if factor != u64::MAX && b >= 1.0 && b < u64::MAX as f64 => Ok(b as u64),
        _ => Err(format!(
            "{value:?} is not a size; write bytes or a number with a unit, e.g. 8G, 512M, 1.5GiB or 4000000000"
        )),
    }
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

/// Most sequences `--parallel` accepts: beyond this a KV cache of even small slots takes
/// more memory than the batch gains.
pub const MAX_PARALLEL: usize = 256;
/// The smallest slot `--kv-cache-tokens` may leave: a short chat turn and its answer.
pub const MIN_SLOT_TOKENS: usize = 16;
/// Most prompt tokens per step `--prefill-chunk` accepts.
pub const MAX_PREFILL_CHUNK: usize = 65_536;

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
        if !(1..=MAX_PARALLEL).contains(&self.parallel) {
            anyhow::bail!(
                "--parallel {} is out of range: give 1 to {MAX_PARALLEL} sequences generated at once",
                self.parallel
            );
        }
        if let Some(tokens) = self.kv_cache_tokens {
            if tokens / self.parallel < MIN_SLOT_TOKENS {
                anyhow::bail!(
                    "--kv-cache-tokens {tokens} leaves {} tokens per slot for --parallel {}; \
                     give at least {} ({MIN_SLOT_TOKENS} per slot), or lower --parallel",
                    tokens / self.parallel,
                    self.parallel,
                    MIN_SLOT_TOKENS * self.parallel
                );
            }
        }
        if !(1..=MAX_PREFILL_CHUNK).contains(&self.prefill_chunk) {
            anyhow::bail!(
                "--prefill-chunk {} is out of range: give 1 to {MAX_PREFILL_CHUNK} prompt tokens per step (default {})",
                self.prefill_chunk,
                super::queue::DEFAULT_PREFILL_CHUNK
            );
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
            if self.model.len() != 1 || self.models_dir.is_some() {
                anyhow::bail!(
                    "--model-id names the one model; with several, name each as --model ID=REF"
                );
            }
        }
        if self.model.iter().any(|m| m.trim().is_empty()) {
            anyhow::bail!("--model must not be empty (a path, a hub reference or ID=REF)");
        }
        if let Some(0) = self.max_loaded_models {
            anyhow::bail!("--max-loaded-models must be at least 1");
        }
        Ok(())
    }

    /// Whether the one model is loaded at start (exactly one --model and no
    /// --models-dir); otherwise models load on their first request.
    pub fn single_model(&self) -> bool {
        self.model.len() == 1 && self.models_dir.is_none()
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
    fn engine_settings_are_read_and_bad_ones_named() {
        let cli = Cli::try_parse_from(["x", "--model", "m", "--cpu-engine", "Candle"]).unwrap();
        assert_eq!(cli.serve.engine.options().cpu_engine, CpuEngine::Candle);
        let error = Cli::try_parse_from(["x", "--model", "m", "--cpu-engine", "fast"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("xpu") && error.contains("candle"), "{error}");
        #[cfg(feature = "vulkan")]
        {
            let cli = Cli::try_parse_from([
                "x",
                "--model",
                "m",
                "--allow-cpu-adapter",
                "--vulkan-tuning",
                "dp4a=0",
            ])
            .unwrap();
            let vulkan = cli.serve.engine.options().vulkan;
            assert!(vulkan.allow_cpu_adapter);
            assert!(!vulkan
                .tuning
                .decode_quantizes_x(xpu_vulkan::WeightType::Q8_0));
            let error = Cli::try_parse_from(["x", "--model", "m", "--vulkan-tuning", "units=3"])
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains("expected units=1|2"), "{error}");

            assert_eq!(vulkan.devices, xpu_vulkan::DeviceSelection::Auto);
            assert_eq!(vulkan.split, None);
            let cli = Cli::try_parse_from([
                "x",
                "--model",
                "m",
                "--devices",
                "1,0000:03:00.0",
                "--split",
                "3,1",
            ])
            .unwrap();
            let vulkan = cli.serve.engine.options().vulkan;
            assert_eq!(
                vulkan.devices,
                xpu_vulkan::DeviceSelection::List(vec![
                    xpu_vulkan::AdapterSelector::Index(1),
                    xpu_vulkan::AdapterSelector::Pci("0000:03:00.0".into()),
                ])
            );
            assert_eq!(vulkan.split, Some(vec![3, 1]));
            for (flag, value, want) in [
                (
                    "--devices",
                    "gpu0",
                    "neither an adapter index nor a PCI address",
                ),
                ("--split", "3,0", "not a positive whole number"),
            ] {
                let error = Cli::try_parse_from(["x", "--model", "m", flag, value])
                    .err()
                    .unwrap()
                    .to_string();
                assert!(error.contains(want), "{error}");
            }
        }
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
    fn batching_flags_are_read_and_bad_values_named() {
        let cli = Cli::try_parse_from(["x", "--model", "m"]).unwrap();
        assert_eq!(
            (
                cli.serve.parallel,
                cli.serve.kv_cache_tokens,
                cli.serve.prefill_chunk
            ),
            (4, None, 512)
        );
        let cli = Cli::try_parse_from([
            "x",
            "--model",
            "m",
            "--parallel",
            "8",
            "--kv-cache-tokens",
            "4096",
            "--prefill-chunk",
            "64",
        ])
        .unwrap();
        cli.serve.validate().unwrap();
        assert_eq!(
            (
                cli.serve.parallel,
                cli.serve.kv_cache_tokens,
                cli.serve.prefill_chunk
            ),
            (8, Some(4096), 64)
        );
        for (args, named) in [
            (&["--parallel", "0"][..], "--parallel 0"),
            (&["--parallel", "100000"][..], "--parallel 100000"),
            (&["--prefill-chunk", "0"][..], "--prefill-chunk 0"),
            (
                &["--prefill-chunk", "9999999"][..],
                "--prefill-chunk 9999999",
            ),
            (&["--kv-cache-tokens", "0"][..], "--kv-cache-tokens 0"),
            (
                &["--kv-cache-tokens", "40", "--parallel", "4"][..],
                "10 tokens per slot",
            ),
        ] {
            let cli = Cli::try_parse_from([&["x", "--model", "m"][..], args].concat()).unwrap();
            let error = cli.serve.validate().unwrap_err().to_string();
            assert!(error.contains(named), "{args:?}: {error}");
        }
        let error = Cli::try_parse_from(["x", "--model", "m", "--parallel=-1"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("--parallel"), "{error}");
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

    #[test]
    fn several_models_repeat_or_split_at_commas() {
        let cli =
            Cli::try_parse_from(["x", "--model", "a=/m/a.gguf,/m/b.gguf", "--model", "c"]).unwrap();
        assert_eq!(cli.serve.model, ["a=/m/a.gguf", "/m/b.gguf", "c"]);
        assert!(!cli.serve.single_model());
        cli.serve.validate().unwrap();
        let cli =
            Cli::try_parse_from(["x", "--models-dir", "/m", "--memory-budget", "8G"]).unwrap();
        assert!(cli.serve.model.is_empty());
        assert_eq!(cli.serve.memory_budget, Some(8 << 30));
        assert!(!cli.serve.single_model());
        assert!(
            Cli::try_parse_from(["x"]).is_err(),
            "no model at all was accepted"
        );
    }

    #[test]
    fn model_id_names_only_a_single_model() {
        let cli =
            Cli::try_parse_from(["x", "--model", "a", "--model", "b", "--model-id", "m"]).unwrap();
        let error = cli.serve.validate().unwrap_err().to_string();
        assert!(error.contains("--model ID=REF"), "{error}");
        let cli = Cli::try_parse_from(["x", "--model", "m", "--max-loaded-models", "0"]).unwrap();
        assert!(cli
            .serve
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--max-loaded-models"));
        let error = Cli::try_parse_from(["x", "--model", "m", "--memory-budget", "lots"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("--memory-budget") && error.contains("e.g. 8G"),
            "{error}"
        );
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("8gib"), Ok(8 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 10 K "), Ok(10 << 10));
    }

    #[test]
    fn bad_sizes_say_what_is_expected() {
        for bad in ["", "G", "-1G", "8X", "0", "1.2.3M", "99999999999T"] {
            let error = parse_size(bad).unwrap_err();
            assert!(error.contains("e.g. 8G"), "{bad:?}: {error}");
        }
    }
}
