//! The dashboard: one page at `GET /` (and `/dashboard`) and the JSON document it
//! reads, `GET /v1/dashboard` (schema in docs/serve.md).
//!
//! The page is four files compiled into the binary (HTML, script, style, icon), so it
//! works offline and needs no build step. It is public even with `--api-key-file`
//! (it holds no data); the document and the chat need the key, which the page asks
//! for. The page writes every value with `textContent`, and a strict
//! Content-Security-Policy (scripts and styles from this server only) backs that up.

pub mod live;
pub mod machine;
pub mod model_info;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

use super::shutdown::Phase;
use super::state::AppState;
use super::telemetry;

pub use live::LiveStats;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");
const ICON: &str = include_str!("icon.svg");

/// Paths of the page and its assets: served without an API key.
const PUBLIC_PATHS: &[&str] = &[
    "/",
    "/dashboard",
    "/dashboard/app.js",
    "/dashboard/app.css",
    "/dashboard/icon.svg",
];

/// The policy for the page: nothing from other origins, no inline script or style,
/// and no framing (the page has an API-key field).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is part of the page (public) rather than its data.
pub fn is_page(path: &str) -> bool {
    PUBLIC_PATHS.contains(&path)
}

/// The metrics label of a dashboard path, if it is one.
pub fn route_label(path: &str) -> Option<&'static str> {
    match path {
        "/v1/dashboard" => Some("/v1/dashboard"),
        p if is_page(p) => Some("/dashboard"),
        _ => None,
    }
}

/// The dashboard's routes, merged into the application router.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard", get(page))
        .route("/dashboard/app.js", get(script))
        .route("/dashboard/app.css", get(style))
        .route("/dashboard/icon.svg", get(icon))
        .route("/v1/dashboard", get(document))
}

/// How the engine was chosen, recorded once the model is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineInfo {
    /// The `--device` value given (`auto`, `cpu`, `cuda`, `vulkan`).
    pub requested: String,
    /// The device the model runs on.
    pub device: &'static str,
    /// The engine's own description: adapter, driver, threads.
    pub description: String,
    /// Why this device (from `--device auto`'s decision).
    pub reasons: Vec<String>,
    /// Why `auto` fell back to the CPU, if it did.
    pub fallback_reason: Option<String>,
}

/// What the dashboard knows beyond the metrics, filled in during start-up.
pub struct Dashboard {
    started: Instant,
    facts: OnceLock<Result<Value, String>>,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            started: Instant::now(),
            facts: OnceLock::new(),
        }
    }
}

impl Dashboard {
    /// Records the probe's facts document, or why there is none.
    pub fn set_facts(&self, facts: Result<Value, String>) {
        let _ = self.facts.set(facts);
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

async fn document(State(state): State<Arc<AppState>>) -> Response {
    let mut response = Json(build_document(&state)).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The `/v1/dashboard` document (schema_version 1; see docs/serve.md).
pub fn build_document(state: &AppState) -> Value {
    let board = &state.dashboard;
    let facts = board.facts.get().and_then(|f| f.as_ref().ok());
    // The model in use: the one served, or the one used last of several.
    let served = state.models.latest();
    let served = served.as_ref();
    let engine = served.and_then(|served| served.engine.as_ref());
    let telemetry = state
        .gpu
        .latest()
        .map(|reading| telemetry::health_json(&reading));
    let metrics = &state.metrics;
    let live = metrics.live.snapshot();

    let model = served.map(|served| {
        let file = &served.facts;
        let needed = file.memory_needed(served.context_length);
        let suits = facts
            .map(|f| model_info::suitability(needed, machine::memory_places(f, telemetry.as_ref())))
            .unwrap_or_default();
        json!({
            "id": served.id,
            "context_length": served.context_length,
            "format": file.format,
            "architecture": file.architecture,
            "quantization": file.quantization,
            "parameters": file.parameters,
            "weights_bytes": file.weights_bytes,
            "layers": file.layers,
            "memory_needed_bytes": needed,
            "suits": suits,
        })
    });

    let kv_cache = served.map(|served| {
        let tokens: usize = live
            .running_sequences
            .iter()
            .map(|s| s.prompt_tokens + s.generated_tokens)
            .sum();
        let slots = served.scheduler.slots();
        json!({
            "sequences": live.running_sequences.len(),
            "max_sequences": slots,
            "tokens": tokens,
            "capacity_tokens": slots * served.context_length,
        })
    });

    json!({
        "schema_version": 1,
        "status": match state.lifecycle.phase() {
            Phase::Loading => "loading",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        },
        "server": {
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": board.started.elapsed().as_secs_f64(),
            "api_key_required": state.keys.is_some(),
        },
        "facts": facts,
        "facts_error": board.facts.get().and_then(|f| f.as_ref().err()),
        "intel_gpu": facts.is_some_and(machine::has_intel_gpu),
        "engines": machine::engine_options(facts, engine.map(|e| e.device)),
        "engine": engine,
        "devices": served.and_then(|s| s.device_map.as_ref()).map(|m| m.to_json()),
        "model": model,
        "models": state.models.status(),
        "live": {
            "tokens_per_second": live.tokens_per_second,
            "history_interval_s": live.history_interval_s,
            "history": live.history,
            "requests_running": metrics.generations_running.get(),
            "requests_queued": served.map_or(0, |s| s.scheduler.waiting()),
            "requests_in_flight": metrics.requests_in_flight.get(),
            "requests_total": live.requests_total,
            "requests_by_status": live.requests_by_status,
            "prompt_tokens_total": metrics.prompt_tokens.get(),
            "generated_tokens_total": metrics.generated_tokens.get(),
            "time_to_first_token": live.time_to_first_token,
            "last_generation": live.last_generation,
            "kv_cache": kv_cache,
        },
        "gpu_telemetry": telemetry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_assets_from_this_server_only() {
        for path in [
            "/dashboard/app.js",
            "/dashboard/app.css",
            "/dashboard/icon.svg",
        ] {
            assert!(
                PAGE.contains(&format!("\"{path}\"")),
                "page.html does not load {path}"
            );
        }
        // No inline script or style (the policy would block them) and no other origin.
        assert!(
            !PAGE.contains("<script>") && !PAGE.contains("<style"),
            "inline code in page.html"
        );
        for text in [PAGE, SCRIPT, STYLE, ICON] {
            // The SVG namespace is a name, not an address.
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "an external URL in the page"
            );
        }
        // Data goes into the page as text only.
        assert!(
            !SCRIPT.contains("innerHTML")
                && !SCRIPT.contains("outerHTML")
                && !SCRIPT.contains("insertAdjacentHTML")
        );
        assert!(!SCRIPT.contains("document.write") && !SCRIPT.contains("eval("));
    }

    #[test]
    fn page_paths_are_public_and_labelled() {
        assert!(is_page("/") && is_page("/dashboard") && is_page("/dashboard/app.js"));
        assert!(!is_page("/v1/dashboard") && !is_page("/dashboard/other"));
        assert_eq!(route_label("/v1/dashboard"), Some("/v1/dashboard"));
        assert_eq!(route_label("/"), Some("/dashboard"));
        assert_eq!(route_label("/v1/models"), None);
    }
}
