//! Prometheus metrics for `GET /metrics` (OpenMetrics text format). Names follow the
//! union of what vLLM, llama.cpp and TGI expose, with an `xpu_` prefix. Intel GPU
//! telemetry is rendered per scrape from the newest reading (see `telemetry`).

use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use xpu_probe::level_zero::{DeviceTelemetry, Telemetry};

use super::dashboard::LiveStats;
use super::pool::ModelStatus;

type Labels = Vec<(&'static str, String)>;

/// All metrics of one server. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<Labels, Counter>,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    pub queue_depth: Gauge,
    pub requests_in_flight: Gauge,
    pub generations_running: Gauge,
    pub cancellations: Counter,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
    pub request_duration: Histogram,
    pub queue_wait: Histogram,
    pub device_info: Family<Labels, Gauge>,
    pub slots_active: Gauge,
    pub slots_total: Gauge,
    pub batch_size: Histogram,
    pub kv_cache_usage: Gauge<f64, AtomicU64>,
    pub prompt_tokens_cached: Counter,
    /// The dashboard's figures (token history, first-token times, requests by status).
    pub live: LiveStats,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "xpu_requests",
            "HTTP requests answered, by route and status code",
            requests.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "xpu_prompt_tokens",
            "Prompt tokens processed",
            prompt_tokens.clone(),
        );
        let generated_tokens = Counter::default();
        registry.register(
            "xpu_generated_tokens",
            "Tokens generated",
            generated_tokens.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "xpu_queue_depth",
            "Generation requests waiting for the engine",
            queue_depth.clone(),
        );
        let requests_in_flight = Gauge::default();
        registry.register(
            "xpu_requests_in_flight",
            "HTTP requests being handled (including streams and queued requests)",
            requests_in_flight.clone(),
        );
        let generations_running = Gauge::default();
        registry.register(
            "xpu_generations_running",
            "Generations running on the engine",
            generations_running.clone(),
        );
        let cancellations = Counter::default();
        registry.register(
            "xpu_cancellations",
            "Generations stopped because the client went away",
            cancellations.clone(),
        );
        let time_to_first_token = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "xpu_time_to_first_token_seconds",
            "Time from request arrival to the first generated token",
            time_to_first_token.clone(),
        );
        let time_per_output_token = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "xpu_time_per_output_token_seconds",
            "Time between consecutive generated tokens",
            time_per_output_token.clone(),
        );
        let request_duration = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        registry.register(
            "xpu_request_duration_seconds",
            "Time from arrival to the end of a generation request",
            request_duration.clone(),
        );
        let queue_wait = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "xpu_queue_wait_seconds",
            "Time a generation request waited in the queue",
            queue_wait.clone(),
        );
        let device_info = Family::<Labels, Gauge>::default();
        registry.register(
            "xpu_device_info",
            "The device and model in use (value 1)",
            device_info.clone(),
        );
        let slots_active = Gauge::default();
        registry.register(
            "xpu_slots_active",
            "KV-cache slots holding a running sequence",
            slots_active.clone(),
        );
        let slots_total = Gauge::default();
        registry.register(
            "xpu_slots_total",
            "KV-cache slots of the loaded models (sequences that can run at once)",
            slots_total.clone(),
        );
        let batch_size = Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0]);
        registry.register(
            "xpu_batch_size",
            "Sequences in one forward pass (decoding ones and prompt chunks)",
            batch_size.clone(),
        );
        let kv_cache_usage = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "xpu_kv_cache_usage_ratio",
            "Share of the KV cache held by running sequences (0 to 1), after the last step",
            kv_cache_usage.clone(),
        );
        let prompt_tokens_cached = Counter::default();
        registry.register(
            "xpu_prompt_tokens_cached",
            "Prompt tokens whose keys and values were reused from a slot (prompt cache)",
            prompt_tokens_cached.clone(),
        );
        Metrics {
            registry,
            slots_active,
            slots_total,
            batch_size,
            kv_cache_usage,
            prompt_tokens_cached,
            requests,
            prompt_tokens,
            generated_tokens,
            queue_depth,
            requests_in_flight,
            generations_running,
            cancellations,
            time_to_first_token,
            time_per_output_token,
            request_duration,
            queue_wait,
            device_info,
            live: LiveStats::default(),
        }
    }

    pub fn count_request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("route", route.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
        self.live.count_request(route, status);
    }

    pub fn set_device(&self, device: &str, model: &str) {
        self.device_info
            .get_or_create(&vec![
                ("device", escape_label_value(device)),
                ("model", escape_label_value(model)),
            ])
            .set(1);
    }

    /// The exposition text, without GPU telemetry or models.
    pub fn render(&self) -> String {
        self.render_with(None, &[])
    }

    /// The exposition text, with a family of gauges per GPU value when there is a
    /// reading, and the served models' states.
    pub fn render_with(&self, gpu: Option<&Telemetry>, models: &[ModelStatus]) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        if !models.is_empty() {
            let _ = encode_registry(&mut out, &models_registry(models));
        }
        if let Some(reading) = gpu {
            let _ = encode_registry(&mut out, &gpu_registry(reading));
        }
        let _ = encode_eof(&mut out);
        out
    }
}

/// The served models: state (one sample per state, 1 for the current one), estimated
/// memory, last use and loads, each labelled with the model id.
fn models_registry(models: &[ModelStatus]) -> Registry {
    let mut registry = Registry::default();
    let state = Family::<Labels, Gauge>::default();
    let bytes = Family::<Labels, Gauge>::default();
    let last_used = Family::<Labels, Gauge>::default();
    let loads = Family::<Labels, Counter>::default();
    for model in models {
        let id = || ("model", escape_label_value(&model.id));
        for name in ["loaded", "loading", "unloaded"] {
            state
                .get_or_create(&vec![id(), ("state", name.to_owned())])
                .set(i64::from(model.state == name));
        }
        if let Some(b) = model.bytes {
            bytes
                .get_or_create(&vec![id()])
                .set(i64::try_from(b).unwrap_or(i64::MAX));
        }
        if let Some(t) = model.last_used {
            last_used
                .get_or_create(&vec![id()])
                .set(i64::try_from(t).unwrap_or(i64::MAX));
        }
        loads.get_or_create(&vec![id()]).inc_by(model.loads);
    }
    registry.register(
        "xpu_model_state",
        "Each served model's state: 1 for the current one of loaded, loading, unloaded",
        state,
    );
    registry.register(
        "xpu_model_memory_bytes",
        "Estimated memory of each model once loaded (weights plus KV cache)",
        bytes,
    );
    registry.register(
        "xpu_model_last_used_timestamp_seconds",
        "Unix time of the last request for each model",
        last_used,
    );
    registry.register("xpu_model_loads", "Completed loads of each model", loads);
    registry
}

/// The GPU gauges of one reading (see [`GpuSamples`]).
fn gpu_registry(reading: &Telemetry) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(GpuSamples(reading.clone())));
    registry
}

/// Encodes one reading as gauges, one sample per device (in Level Zero's order) and
/// reported value: a value the driver does not report has no sample, and a family
/// without samples is left out. Labels: `index` (Level Zero's device order, unique
/// even for identical cards without a PCI address), `device` (the name) and `pci`
/// (the address, empty when unknown).
#[derive(Debug)]
struct GpuSamples(Telemetry);

impl Collector for GpuSamples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let bytes = |value: Option<u64>| value.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
        let devices = &self.0.devices;
        encode_per_device(
            &mut encoder,
            "xpu_gpu_memory_used_bytes",
            "Intel GPU device memory in use (Level Zero Sysman).",
            devices,
            |d| bytes(d.memory_used_bytes),
        )?;
        encode_per_device(
            &mut encoder,
            "xpu_gpu_memory_total_bytes",
            "Intel GPU device memory in total (Level Zero Sysman).",
            devices,
            |d| bytes(d.memory_total_bytes),
        )?;
        encode_per_device(
            &mut encoder,
            "xpu_gpu_temperature_celsius",
            "Intel GPU temperature, the hottest sensor (Level Zero Sysman).",
            devices,
            |d| d.temperature_c,
        )?;
        encode_per_device(
            &mut encoder,
            "xpu_gpu_power_watts",
            "Intel GPU power draw over the last interval (Level Zero Sysman).",
            devices,
            |d| d.power_w,
        )
    }
}

/// Encodes gauge `name` with a sample for each device that has a `value`; nothing
/// when none has.
fn encode_per_device<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    devices: &[DeviceTelemetry],
    value: impl Fn(&DeviceTelemetry) -> Option<N>,
) -> Result<(), std::fmt::Error> {
    let samples: Vec<(Labels, N)> = devices
        .iter()
        .enumerate()
        .filter_map(|(index, device)| {
            let labels: Labels = vec![
                ("index", index.to_string()),
                ("device", escape_label_value(&device.name)),
                (
                    "pci",
                    escape_label_value(device.pci_address.as_deref().unwrap_or("")),
                ),
            ];
            Some((labels, value(device)?))
        })
        .collect();
    if samples.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Escapes a label value for the text format (the encoder writes values as given):
/// a driver's device name must not be able to break the exposition.
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_families() {
        let m = Metrics::new();
        m.count_request("/v1/chat/completions", 200);
        m.set_device("cpu (2 threads)", "smol");
        m.cancellations.inc();
        m.time_to_first_token.observe(0.1);
        let text = m.render();
        assert!(
            text.contains(r#"xpu_requests_total{route="/v1/chat/completions",status="200"} 1"#),
            "{text}"
        );
        assert!(text.contains("xpu_cancellations_total 1"));
        assert!(text.contains(r#"xpu_device_info{device="cpu (2 threads)",model="smol"} 1"#));
        assert!(text.contains("xpu_time_to_first_token_seconds_bucket"));
        assert!(text.contains("xpu_queue_depth 0"));
    }

    #[test]
    fn model_ids_with_quotes_do_not_break_the_exposition() {
        // `--model-id` is user input; a quote or backslash in it must be escaped.
        let m = Metrics::new();
        m.set_device("cpu", "my \"best\" model\\v2");
        let text = m.render();
        assert!(
            text.contains(r#"xpu_device_info{device="cpu",model="my \"best\" model\\v2"} 1"#),
            "{text}"
        );
    }

    fn two_devices() -> Telemetry {
        Telemetry::from_devices(vec![
            DeviceTelemetry {
                name: "Intel(R) Arc(TM) A770 Graphics".into(),
                pci_address: Some("0000:03:00.0".into()),
                memory_used_bytes: Some(4 << 30),
                memory_total_bytes: Some(16 << 30),
                temperature_c: Some(45.5),
                power_w: Some(100.25),
            },
            // A driver that reports only memory, under an awkward name.
            DeviceTelemetry {
                name: "Odd \"GPU\" \\ 2".into(),
                pci_address: None,
                memory_used_bytes: Some(0),
                memory_total_bytes: Some(128 << 30),
                temperature_c: None,
                power_w: None,
            },
        ])
    }

    #[test]
    fn gpu_gauges_per_device_with_help_and_type() {
        let m = Metrics::new();
        let text = m.render_with(Some(&two_devices()), &[]);
        let a770 = r#"{index="0",device="Intel(R) Arc(TM) A770 Graphics",pci="0000:03:00.0"}"#;
        let odd = r#"{index="1",device="Odd \"GPU\" \\ 2",pci=""}"#;
        for line in [
            format!("xpu_gpu_memory_used_bytes{a770} 4294967296"),
            format!("xpu_gpu_memory_total_bytes{a770} 17179869184"),
            format!("xpu_gpu_temperature_celsius{a770} 45.5"),
            format!("xpu_gpu_power_watts{a770} 100.25"),
            format!("xpu_gpu_memory_used_bytes{odd} 0"),
            format!("xpu_gpu_memory_total_bytes{odd} 137438953472"),
            "# TYPE xpu_gpu_memory_used_bytes gauge".into(),
            "# HELP xpu_gpu_power_watts Intel GPU power draw over the last interval (Level Zero Sysman).".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Samples come in device order.
        let first = text
            .find(&format!("xpu_gpu_memory_used_bytes{a770}"))
            .unwrap();
        let second = text
            .find(&format!("xpu_gpu_memory_used_bytes{odd}"))
            .unwrap();
        assert!(first < second, "{text}");
        // Values a device does not report have no sample.
        assert!(
            !text.contains(&format!("xpu_gpu_temperature_celsius{odd}")),
            "{text}"
        );
        assert!(
            !text.contains(&format!("xpu_gpu_power_watts{odd}")),
            "{text}"
        );
        // The server's own metrics are still there, and the exposition ends once.
        assert!(text.contains("xpu_queue_depth 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert_exposition_is_well_formed(&text);
    }

    #[test]
    fn families_without_any_value_are_left_out() {
        let only_memory = Telemetry::from_devices(vec![DeviceTelemetry {
            name: "x".into(),
            memory_used_bytes: Some(1),
            ..Default::default()
        }]);
        let text = Metrics::new().render_with(Some(&only_memory), &[]);
        assert!(
            text.contains(r#"xpu_gpu_memory_used_bytes{index="0",device="x",pci=""} 1"#),
            "{text}"
        );
        for absent in [
            "xpu_gpu_memory_total_bytes",
            "xpu_gpu_temperature_celsius",
            "xpu_gpu_power_watts",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        assert_exposition_is_well_formed(&text);
    }

    #[test]
    fn no_reading_no_gpu_lines() {
        let m = Metrics::new();
        let text = m.render_with(None, &[]);
        assert!(!text.contains("xpu_gpu_"), "{text}");
        assert_eq!(text, m.render());
        // A reading without devices (an empty driver) adds nothing either.
        assert_eq!(m.render_with(Some(&Telemetry::default()), &[]), text);
        assert_exposition_is_well_formed(&text);
    }

    /// Every line is a comment (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) or
    /// `name{labels} value` with a number, every sample's family has a TYPE line
    /// before it, and no family is declared twice.
    fn assert_exposition_is_well_formed(text: &str) {
        let mut declared: Vec<&str> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!declared.contains(&name), "{name} declared twice");
                declared.push(name);
                continue;
            }
            if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF" {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value: {line:?}"));
            assert!(value.parse::<f64>().is_ok(), "not a number in {line:?}");
            let name = series.split('{').next().unwrap();
            assert!(
                declared.iter().any(|d| name.starts_with(d)),
                "sample {name} before its TYPE line"
            );
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    assert!(
                        labels.starts_with('{') && labels.ends_with('}'),
                        "labels of {line:?}"
                    );
                    // Quotes inside values are escaped: an even number of unescaped quotes.
                    let unescaped = labels.replace("\\\\", "").replace("\\\"", "");
                    assert_eq!(unescaped.matches('"').count() % 2, 0, "quotes in {line:?}");
                }
            }
        }
    }
}
