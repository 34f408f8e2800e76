//! Prometheus metrics for `GET /metrics` (OpenMetrics text format). Names follow the
//! union of what vLLM, llama.cpp and TGI expose, with an `xpu_` prefix.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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
        registry.register("xpu_prompt_tokens", "Prompt tokens processed", prompt_tokens.clone());
        let generated_tokens = Counter::default();
        registry.register("xpu_generated_tokens", "Tokens generated", generated_tokens.clone());
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
        Metrics {
            registry,
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
        }
    }

    pub fn count_request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&vec![("route", route.to_owned()), ("status", status.to_string())])
            .inc();
    }

    pub fn set_device(&self, device: &str, model: &str) {
        self.device_info
            .get_or_create(&vec![("device", device.to_owned()), ("model", model.to_owned())])
            .set(1);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
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
        assert!(text.contains(r#"xpu_requests_total{route="/v1/chat/completions",status="200"} 1"#), "{text}");
        assert!(text.contains("xpu_cancellations_total 1"));
        assert!(text.contains(r#"xpu_device_info{device="cpu (2 threads)",model="smol"} 1"#));
        assert!(text.contains("xpu_time_to_first_token_seconds_bucket"));
        assert!(text.contains("xpu_queue_depth 0"));
    }
}
